//! Rollouts over HTTP: thin wrappers over the engine's rollout commands.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply};
use drover_model::{RolloutId, RolloutMember, RolloutSpec, RolloutView};

fn parse_id(text: &str) -> Result<RolloutId, ApiError> {
    text.parse::<RolloutId>().map_err(|e| ApiError::bad_request(format!("rollout id {text:?} is not a UUID: {e}")))
}

fn view(reply: Reply) -> Result<RolloutView, ApiError> {
    match reply {
        Reply::Rollout(v) => Ok(*v),
        _ => Err(ApiError::internal("the engine answered a rollout command with something else")),
    }
}

/// Start a rollout: the selected services move onto `to_image` in waves.
#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = RolloutSpec,
    responses((status = 201, body = RolloutView), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(spec): Json<RolloutSpec>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    spec.validate().map_err(ApiError::bad_request)?;
    if let Some(mine) = &caller.team {
        if spec.selector.team.as_deref() != Some(mine.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is limited to team {mine:?}: its rollouts must select \"team\": {mine:?}",
                    caller.name
                ),
            ));
        }
    }
    let v = view(ready.engine.call(caller.command(Command::CreateRollout(spec))).await?)?;
    let location = HeaderValue::from_str(&format!("/v1/rollouts/{}", v.id)).ok();
    let mut response = (StatusCode::CREATED, Json(v)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Every rollout, newest first.
#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts", responses((status = 200, body = Vec<RolloutView>)))]
pub(crate) async fn list_rollouts(State(state): State<AppState>) -> Result<Json<Vec<RolloutView>>, ApiError> {
    let ready = state.ready()?;
    let now = crate::runtime::now();
    Ok(Json(ready.engine.query(move |e| e.rollout_views(now)).await?))
}

/// One rollout's progress.
#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let ready = state.ready()?;
    let id = parse_id(&id)?;
    let now = crate::runtime::now();
    ready
        .engine
        .query(move |e| e.rollout_view(id, now))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

/// Each selected service's progress in a rollout, in order.
#[utoipa::path(get, path = "/v1/rollouts/{id}/services", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = Vec<RolloutMember>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn rollout_services(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<RolloutMember>>, ApiError> {
    let ready = state.ready()?;
    let id = parse_id(&id)?;
    ready
        .engine
        .query(move |e| e.rollout_members(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))
}

async fn steer(
    state: AppState,
    caller: crate::auth::Identity,
    command: Command,
) -> Result<Json<RolloutView>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(view(ready.engine.call(caller.command(command)).await?)?))
}

/// Pause: no new service starts moving; moves under way finish.
#[utoipa::path(post, path = "/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn pause_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = parse_id(&id)?;
    steer(state, caller, Command::PauseRollout { id }).await
}

/// Resume a paused rollout (with a fresh failure budget for its wave).
#[utoipa::path(post, path = "/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn resume_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = parse_id(&id)?;
    steer(state, caller, Command::ResumeRollout { id }).await
}

/// Abort: nothing more is moved; services already moved stay moved.
#[utoipa::path(post, path = "/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn abort_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = parse_id(&id)?;
    steer(state, caller, Command::AbortRollout { id }).await
}
