//! `POST /v1/services/{name}/credentials/rotate`: a new credential for the
//! service's URL, without downtime (issue 10, item 8). The engine opens a
//! `RotateCredentials` action on the primary (audited like every command);
//! the provider makes the new credential, switches the router and the URL,
//! and revokes the old one after its overlap.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_engine::{Command, Reply};
use drover_model::ActionRecord;

/// Rotate the service's credentials: the URL gets a new one now, the old
/// one keeps working for the overlap (`rotation_overlap`), then is revoked.
#[utoipa::path(post, path = "/v1/services/{name}/credentials/rotate", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_rotate_credentials(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    // A token limited to a team learns nothing of other teams' services;
    // for the others an unknown name is refused by the engine, audited.
    if caller.team.is_some() {
        ready.visible_service(&caller, &name).await?;
    }
    let lookup = name.clone();
    let view = ready.engine.query(move |engine| engine.service_view(&lookup)).await?;
    // A rotation still in its overlap lives in the provider: the engine
    // refuses the command with its reason, so the refusal is audited too.
    let in_progress = view
        .as_ref()
        .and_then(|v| ready.provider_objects.get(&v.provider))
        .and_then(|provider| provider.rotation_in_progress(&name));
    match ready.engine.call(caller.command(Command::RotateCredentials { name, in_progress })).await? {
        Reply::Action(action) => Ok((StatusCode::ACCEPTED, Json(*action)).into_response()),
        _ => Err(ApiError::internal("the engine answered a rotation with something other than an action")),
    }
}
