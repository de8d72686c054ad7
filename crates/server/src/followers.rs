//! Followers on demand (issue 17 item 2): `POST /v1/services/{name}/followers`
//! adds read replicas to a PostgreSQL service, `DELETE
//! /v1/services/{name}/followers/{instance}` removes one. Each read replica has
//! its own stable read URL (`read_urls` in the service's JSON). The engine
//! decides and audits (`services.followers.add` / `.remove`); these are
//! thin wrappers.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::response::Response;
use drover_engine::Command;
use drover_model::{InstanceId, ServiceView};
use serde::Deserialize;

/// The body of `POST /v1/services/{name}/followers`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFollowers {
    /// Read replicas to add: at least 1, and at most 8 in all per service.
    #[schema(minimum = 1, maximum = 8)]
    pub count: u32,
}

/// Add `count` read replicas on demand to a PostgreSQL service: each an
/// asynchronous follower in a read slot of its own, served through the
/// service's router at a stable read URL (`read_urls`), rebuilt in the same
/// slot when lost, never promoted and never a synchronous standby. 400 when
/// `count` is 0 or the service would have more than 8 read replicas; 409 for
/// a Redis or Kafka service (no read replicas on demand); 404 for an
/// unknown service.
#[utoipa::path(post, path = "/v1/services/{name}/followers", tag = "services", request_body = AddFollowers,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ServiceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn post_followers(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<AddFollowers>,
) -> Result<Response, ApiError> {
    let command = Command::AddFollowers { name: name.clone(), count: request.count };
    crate::http::service_command(state, caller, command, &name).await
}

/// Remove the read replica `instance` added on demand: its read slot (and read
/// URL) goes, the instance is retired. 404 for an unknown service, or an
/// id that is malformed or no instance of the service; 409 for the
/// primary, a follower of the plan or a broker (the plan decides those),
/// or an instance that is no longer a live member.
#[utoipa::path(delete, path = "/v1/services/{name}/followers/{instance}", tag = "services",
    params(("name" = String, Path, description = "Service name"),
        ("instance" = String, Path, description = "The read replica's instance id (UUID), as in the service's `instances`")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_follower(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // A malformed id names no instance: 404, like an unknown one.
    let instance = id
        .parse::<InstanceId>()
        .map_err(|_| ApiError::not_found(format!("{name:?} has no instance {id:?} (not an instance id)")))?;
    let command = Command::RemoveFollower { name: name.clone(), instance };
    crate::http::service_command(state, caller, command, &name).await
}
