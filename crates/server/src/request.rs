//! What several handlers read from a request the same way: who asks (the
//! actor header, for the audit trail) and the page size.

use crate::error::ApiError;
use axum::http::HeaderMap;

/// Header naming who issues a command, for the audit trail.
pub const ACTOR_HEADER: &str = "x-drover-actor";
const DEFAULT_ACTOR: &str = "api";
pub(crate) const MAX_ACTOR_LEN: usize = 128;

/// Who issues a command: the actor header (printable ASCII, 1 to 128
/// characters, as its schema in `openapi.rs` says) or `api` without one.
pub(crate) fn actor(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(ACTOR_HEADER) {
        None => Ok(DEFAULT_ACTOR.to_string()),
        Some(value) => {
            let bytes = value.as_bytes();
            if bytes.is_empty() || bytes.len() > MAX_ACTOR_LEN {
                return Err(ApiError::bad_request(format!(
                    "header {ACTOR_HEADER} must be 1 to {MAX_ACTOR_LEN} characters"
                )));
            }
            let printable = bytes.iter().all(|b| (b' '..=b'~').contains(b));
            let text = std::str::from_utf8(bytes).ok().filter(|t| printable && t.trim() == *t);
            let text = text.ok_or_else(|| {
                ApiError::bad_request(format!(
                    "header {ACTOR_HEADER} must be printable ASCII without leading or trailing spaces"
                ))
            })?;
            Ok(text.to_string())
        }
    }
}

/// The page size asked for, 1 to `max` (the range the query schemas state).
pub(crate) fn limit_in(requested: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be 1 to {max}, got {n}"))),
    }
}
