//! The archives' handlers: what is kept of deleted PostgreSQL services
//! (their final backup, until purged), and the restore of one into a new
//! service. The archive's life is the engine's (`drover-engine`'s `archives`).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply};
use drover_model::{ArchiveId, ArchiveView, ServiceView};
use serde::Deserialize;

/// The restore of an archive into a new service.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreArchive {
    /// The new service's name (a DNS label, like any service's).
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]*$", min_length = 1, max_length = 63)]
    pub name: String,
}

fn parse_archive_id(text: &str) -> Result<ArchiveId, ApiError> {
    text.parse::<ArchiveId>().map_err(|e| ApiError::bad_request(format!("archive id {text:?} is not a UUID: {e}")))
}

/// Every archive of a deleted service, oldest first: `archiving` (its final
/// backup is being taken), `archived` (restorable until `purge_after`),
/// `failed` (no final backup: `error` says why) or `purged`.
#[utoipa::path(get, path = "/v1/archives", tag = "archives", responses((status = 200, body = Vec<ArchiveView>)))]
pub(crate) async fn list_archives(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<ArchiveView>>, ApiError> {
    let ready = state.ready()?;
    let all = ready.engine.query(|engine| engine.archives()).await?;
    Ok(Json(all.into_iter().filter(|a| caller.sees_team(Some(&a.team))).collect()))
}

/// Restore an archive into a new service `name`: the deleted service's
/// plan, its own URL and credential, its primary restored from the
/// archive's final backup. 404: no such archive; 400: a bad name; 409: the
/// name is taken (by a service or another archive) or the archive is not
/// `archived` (still archiving, failed or purged).
#[utoipa::path(post, path = "/v1/archives/{id}/restore", tag = "archives", request_body = RestoreArchive,
    params(("id" = String, Path, description = "Archive id (UUID)")),
    responses((status = 202, body = ServiceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn restore_archive(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(request): Json<RestoreArchive>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let id = parse_archive_id(&id)?;
    let archive = ready.engine.query(move |engine| engine.archive_record(id)).await?;
    // A token limited to a team learns nothing of other teams' archives.
    if archive.is_none_or(|a| !caller.sees_team(Some(&a.team))) {
        return Err(ApiError::not_found(format!("no archive {id}")));
    }
    // On a fleet split between nodes the new name may be in another node's
    // shard: planned here (the archive is here), created there.
    let name = request.name;
    let created = if crate::node_commands::is_across(ready, &name) {
        let (request, from) = ready.engine.query(move |e| e.archive_plan(id, name)).await?.map_err(ApiError::from)?;
        crate::node_commands::create_restored(ready, &caller, request, from).await?.map(|v| Reply::Service(Box::new(v)))
    } else {
        Some(ready.engine.call(caller.command(Command::RestoreArchive { id, name })).await?)
    };
    match created {
        Some(Reply::Service(view)) => {
            let location = HeaderValue::from_str(&format!("/v1/services/{}", view.name)).ok();
            let mut response = (StatusCode::ACCEPTED, Json(ready.complete(*view, &caller))).into_response();
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        _ => Err(ApiError::internal("the engine answered a restore with something other than a service")),
    }
}
