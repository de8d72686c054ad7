//! Every error the API returns is `{"error": "<what is wrong>"}` with a 4xx
//! for the client's mistakes and a 5xx only for ours. The extractors here wrap
//! axum's so that their rejections take the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_engine::CommandError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong and, where it helps, what to do.
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.message })).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            CommandError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            CommandError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // axum picks the right status: 400 syntax, 415 content type,
        // 422 wrong shape (missing or unknown fields), 413 too large.
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a request body with `Content-Type: application/json`".to_string()
            }
            _ => r.body_text(),
        };
        ApiError::new(r.status(), message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let status = if r.status().is_client_error() { StatusCode::BAD_REQUEST } else { r.status() };
        ApiError::new(status, r.body_text())
    }
}

/// `axum::Json`, with rejections as JSON errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with rejections as JSON errors. A query string
/// whose percent-decoded bytes are not UTF-8 is refused (400) rather than
/// decoded lossily into something the client never sent.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        check_query_utf8(parts.uri.query().unwrap_or_default())?;
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Percent-decodes `query` (as `application/x-www-form-urlencoded`) and
/// checks that what it names is UTF-8 text.
fn check_query_utf8(query: &str) -> Result<(), ApiError> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let raw = query.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let pair = raw.get(i + 1).copied().and_then(hex).zip(raw.get(i + 2).copied().and_then(hex));
        match (raw[i], pair) {
            (b'%', Some((hi, lo))) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    match std::str::from_utf8(&decoded) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::bad_request("the query string is not UTF-8 text once percent-decoded")),
    }
}

/// `axum::extract::Path`, with rejections as JSON errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[cfg(test)]
mod tests {
    use super::check_query_utf8;

    #[test]
    fn query_strings_must_decode_to_utf8() {
        for ok in ["", "service=db1&limit=5", "service=%C3%A9t%C3%A9", "a=%", "a=%4", "a=%zz", "a=%00", "a=+%2B"] {
            assert!(check_query_utf8(ok).is_ok(), "{ok:?} is UTF-8");
        }
        for bad in ["service=%00%ff", "a=%C3", "a=%e2%82", "x=%80&y=1"] {
            assert!(check_query_utf8(bad).is_err(), "{bad:?} is not UTF-8");
        }
    }
}
