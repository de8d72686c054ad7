//! Every error the API returns is `{"error": "<what is wrong>"}` with a 4xx
//! for the client's mistakes and a 5xx only for ours. The extractors here wrap
//! axum's so that their rejections take the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_engine::CommandError;
use drover_model::objects::ObjectOnly;
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

/// `axum::Json`, with rejections as JSON errors. JSON Schema counts `2.0` as
/// an integer, and so does this extractor: a body refused only because an
/// integer field holds an integral float is read again with such numbers
/// as integers (only refused bodies pay for the second reading).
pub struct Json<T>(pub T);

/// A request says its body is JSON (`application/json` or `application/*+json`), or 415.
pub(crate) fn json_content(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a request body with `Content-Type: application/json`",
        ));
    }
    Ok(())
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        json_content(req.headers())?;
        let bytes =
            axum::body::Bytes::from_request(req, state).await.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        parse_json_body(&bytes).map(Json)
    }
}

/// Reads a JSON object body already taken as bytes, like [`Json`] does
/// (400 for bad syntax, 422 for the wrong shape). The content type was
/// checked by the auth middleware.
pub(crate) fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // A body is an object: serde would also read a struct from an array.
    // The plain parse first (a heartbeat batch is megabytes); only a body
    // it refuses is parsed again for the path of what is wrong.
    if let Ok(ObjectOnly(value)) = serde_json::from_slice::<ObjectOnly<T>>(bytes) {
        return Ok(value);
    }
    match axum::Json::<ObjectOnly<T>>::from_bytes(bytes) {
        Ok(axum::Json(ObjectOnly(value))) => Ok(value),
        Err(rejection) => {
            if matches!(rejection, JsonRejection::JsonDataError(_)) {
                if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                    if integral_floats_as_integers(&mut value) {
                        if let Ok(ObjectOnly(parsed)) = serde_json::from_value(value) {
                            return Ok(parsed);
                        }
                    }
                }
            }
            Err(rejection.into())
        }
    }
}

/// Rewrites every float with no fractional part (that fits) as an integer;
/// says whether it changed anything.
fn integral_floats_as_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let integer = if f.fract() != 0.0 || !f.is_finite() {
                None
            } else if f >= 0.0 && f < u64::MAX as f64 {
                Some(Value::from(f as u64))
            } else if f < 0.0 && f >= i64::MIN as f64 {
                Some(Value::from(f as i64))
            } else {
                None
            };
            integer.map(|i| *value = i).is_some()
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| integral_floats_as_integers(v) | changed),
        Value::Object(fields) => fields.values_mut().fold(false, |changed, v| integral_floats_as_integers(v) | changed),
        _ => false,
    }
}

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

/// Runs `f` on the blocking pool (store and token reads); a panic in it
/// answers 500.
pub(crate) async fn blocking_task<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::check_query_utf8;

    #[test]
    fn integral_floats_become_integers() {
        let mut v = serde_json::json!({"a": 2.0, "b": [1.5, -3.0, 7], "c": "4.0", "d": 1e300});
        assert!(super::integral_floats_as_integers(&mut v));
        assert_eq!(v, serde_json::json!({"a": 2, "b": [1.5, -3, 7], "c": "4.0", "d": 1e300}));
        assert!(v["a"].is_u64() && v["b"][1].is_i64());
        let mut unchanged = serde_json::json!({"x": 1, "y": 0.5});
        assert!(!super::integral_floats_as_integers(&mut unchanged));
    }

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
