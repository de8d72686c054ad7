//! The tokens API: create (the secret is shown once), list (no secrets,
//! no hashes), revoke (at once). Admin only (see the permission table).

use super::{NewToken, Tokens};
use crate::error::blocking_task as blocking;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_model::{Timestamp, TokenRecord, TokenRole};
use drover_store::tokens::TokenError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest `expires_in`: 9999 days.
const MAX_EXPIRY_SECS: i64 = 9999 * 86_400;
/// The syntax of `expires_in` (every such value is accepted).
pub const EXPIRY_PATTERN: &str = "^[1-9][0-9]{0,3}[dhms]$";
pub const MAX_NAME_LEN: usize = 64;
/// The syntax of token names, team and host names.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Unique among live tokens; names the holder in the audit trail.
    pub name: String,
    pub role: TokenRole,
    /// Limits the token to one team's services; for an integration token,
    /// the team its alerts go to (default: the pager's default team).
    pub team: Option<String>,
    /// Agent tokens only (and required for them): the host whose instances it reports.
    pub host: Option<String>,
    /// `30d`, `12h`, `15m` or `90s`; none: no expiry.
    pub expires_in: Option<String>,
}

/// A token just created: `token` is the secret, shown only this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub record: TokenRecord,
}

/// Parses `30d`, `12h`, `15m`, `90s` into seconds.
pub fn parse_expiry(text: &str) -> Result<i64, String> {
    let bad =
        || format!("expires_in {text:?} must be a number of days, hours, minutes or seconds, like 30d, 12h, 15m, 90s");
    let unit = text.chars().last().ok_or_else(bad)?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        'd' => number.checked_mul(86_400),
        'h' => number.checked_mul(3_600),
        'm' => number.checked_mul(60),
        's' => Some(number),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs <= 0 || secs > MAX_EXPIRY_SECS {
        return Err(format!("expires_in must be between 1s and 9999d, got {text:?}"));
    }
    Ok(secs)
}

fn check_name(what: &str, text: &str) -> Result<(), ApiError> {
    let ok = !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {text:?} must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

fn tokens(state: &AppState) -> Result<Arc<Tokens>, ApiError> {
    Ok(state.ready()?.auth.clone())
}

/// Create a token. The answer holds the token itself: it is shown only once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Json(request): Json<CreateToken>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    check_name("name", &request.name)?;
    if let Some(team) = &request.team {
        check_name("team", team)?;
    }
    match (&request.host, request.role) {
        (Some(host), TokenRole::Agent) => check_name("host", host)?,
        (None, TokenRole::Agent) => {
            return Err(ApiError::bad_request("an agent token needs `host`: the host whose instances it reports"))
        }
        (Some(_), role) => return Err(ApiError::bad_request(format!("`host` is for agent tokens only, not {role}"))),
        (None, _) => {}
    }
    let mut team = request.team.clone();
    if request.role == TokenRole::Integration {
        let config = &ready.oncall.config;
        let name = team.clone().unwrap_or_else(|| config.default_team.clone());
        if config.team(&name).is_none() {
            return Err(ApiError::bad_request(format!(
                "no team {name:?} in the pager's configuration; teams: {}",
                config.teams.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        team = Some(name);
    }
    let now = crate::actor::now();
    let expires_at = match &request.expires_in {
        None => None,
        Some(text) => Some(Timestamp(now.0 + parse_expiry(text).map_err(ApiError::bad_request)? * 1_000_000)),
    };
    let new = NewToken { name: request.name, role: request.role, team, host: request.host, expires_at };
    let tokens = tokens(&state)?;
    match blocking(move || tokens.create(new, now)).await? {
        Ok((record, token)) => Ok((StatusCode::CREATED, Json(CreatedToken { token, record })).into_response()),
        Err(e @ TokenError::NameTaken(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(TokenError::Store(e)) => Err(ApiError::unavailable(format!("the store could not create the token: {e}"))),
    }
}

/// Every token, revoked and expired ones too: no secrets, no hashes.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<TokenRecord>)))]
pub(crate) async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    Ok(Json(tokens(&state)?.list()))
}

/// Revoke a token: refused from the next request on.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, body = TokenRecord), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    let tokens = tokens(&state)?;
    let now = crate::actor::now();
    let lookup = id.clone();
    match blocking(move || tokens.revoke(&lookup, now)).await? {
        Ok(Some(record)) => Ok(Json(record)),
        Ok(None) => Err(ApiError::not_found(format!("no token with id {id:?}"))),
        Err(e) => Err(ApiError::unavailable(format!("the store could not revoke the token: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiries_parse() {
        assert_eq!(super::parse_expiry("30d"), Ok(30 * 86_400));
        assert_eq!(super::parse_expiry("90s"), Ok(90));
        assert_eq!(super::parse_expiry("9999d"), Ok(9999 * 86_400));
        for bad in ["", "d", "0d", "-1h", "5w", "99999999999999d", "1.5h", "10000d"] {
            assert!(super::parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
