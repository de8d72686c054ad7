//! What several handlers read from a request the same way: the page size.

use crate::error::ApiError;

/// A header clients once sent to name who asks. Ignored since tokens
/// exist: the audit trail names the token's holder, whatever this says.
pub const ACTOR_HEADER: &str = "x-drover-actor";
pub(crate) const MAX_ACTOR_LEN: usize = 128;

/// The page size asked for, 1 to `max` (the range the query schemas state).
pub(crate) fn limit_in(requested: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be 1 to {max}, got {n}"))),
    }
}
