//! The hosts' handlers: the list, an agent's registration of its own host,
//! and the operator's cordon and drain. Placement itself is the engine's
//! (`drover-engine`'s `placement`).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply};
use drover_model::{HostView, RegisterHost};

fn host_reply(reply: Reply, status: StatusCode) -> Result<Response, ApiError> {
    match reply {
        Reply::Host(view) => Ok((status, Json(*view)).into_response()),
        _ => Err(ApiError::internal("the engine answered a host command with something else")),
    }
}

/// Every registered host, by name: its zone, state, capacity (instances it
/// may hold) and the instances on it now.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, body = Vec<HostView>)))]
pub(crate) async fn list_hosts(State(state): State<AppState>) -> Result<Json<Vec<HostView>>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(ready.engine.query(|engine| engine.host_views()).await?))
}

/// An agent registers its host (again after each restart): only the agent
/// token of that host (`host` of the token equals `name`).
#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = RegisterHost,
    responses((status = 200, body = HostView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn register_host(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<RegisterHost>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    request.validate().map_err(ApiError::bad_request)?;
    if caller.host.as_deref() != Some(request.name.as_str()) {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} is the agent of host {:?}; only the agent of host {:?} may register it",
                caller.name,
                caller.host.as_deref().unwrap_or("none"),
                request.name
            ),
        );
        return Err(crate::auth::refuse(&state, &caller, "POST /v1/hosts", "/v1/hosts", e).await);
    }
    if request.name == ready.host {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("host {:?} is this control plane's own (built-in) host; an agent registers another", request.name),
        ));
    }
    let reply = ready.engine.call(caller.command(Command::RegisterHost { host: request, builtin: false })).await?;
    host_reply(reply, StatusCode::OK)
}

/// Drain a host: it takes no new members, and its members are replaced
/// elsewhere, one service at a time.
#[utoipa::path(post, path = "/v1/hosts/{name}/drain", tag = "hosts",
    params(("name" = String, Path, description = "Host name")),
    responses((status = 202, body = HostView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_drain(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    host_reply(ready.engine.call(caller.command(Command::DrainHost { name })).await?, StatusCode::ACCEPTED)
}

/// Cordon a host: it takes no new members; what runs there stays.
#[utoipa::path(post, path = "/v1/hosts/{name}/cordon", tag = "hosts",
    params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = HostView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_cordon(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    host_reply(ready.engine.call(caller.command(Command::CordonHost { name })).await?, StatusCode::OK)
}
