//! Service labels: `PUT /v1/services/{name}/labels` replaces a service's
//! labels through the engine (a command, audited under the caller, durable
//! with the service's record). Rollouts select by them (`selector.labels`).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use drover_engine::{Command, Reply};
use drover_model::{Labels, ServiceView};
use serde::Deserialize;

/// `{"labels": {"tier": "gold"}}`: the service's whole set of labels
/// afterwards (`{}` clears them).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsBody {
    /// Keys and values of 1 to 63 characters of `[A-Za-z0-9._-/]`, at most 32 pairs.
    pub labels: Labels,
}

/// Replace a service's labels.
#[utoipa::path(put, path = "/v1/services/{name}/labels", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body = LabelsBody,
    responses((status = 200, body = ServiceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn put_labels(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(LabelsBody { labels }): Json<LabelsBody>,
) -> Result<Json<ServiceView>, ApiError> {
    let ready = state.ready()?;
    drover_model::validate_labels(&labels).map_err(ApiError::bad_request)?;
    ready.visible_service(&caller, &name).await?;
    match ready.engine.call(caller.command(Command::SetLabels { name, labels })).await? {
        Reply::Service(view) => Ok(Json(ready.complete(*view, &caller))),
        _ => Err(ApiError::internal("the engine answered a label change with something else")),
    }
}
