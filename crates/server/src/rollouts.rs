//! Rollouts over HTTP: thin wrappers over the engine's rollout commands.

use crate::auth::Caller;
use crate::error::{parse_json_body, ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply};
use drover_model::{EngineKind, ImageId, RolloutId, RolloutMember, RolloutSpec, RolloutView};
use serde_json::Value;

fn parse_id(text: &str) -> Result<RolloutId, ApiError> {
    text.parse::<RolloutId>().map_err(|e| ApiError::bad_request(format!("rollout id {text:?} is not a UUID: {e}")))
}

fn view(reply: Reply) -> Result<RolloutView, ApiError> {
    match reply {
        Reply::Rollout(v) => Ok(*v),
        _ => Err(ApiError::internal("the engine answered a rollout command with something else")),
    }
}

/// `POST /v1/rollouts`: a [`RolloutSpec`], where `fix` (an advisory id)
/// may stand instead of `to_image`. Documentation only: the handler reads
/// the body as a spec after resolving `fix`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateRollout {
    /// The image to move onto; required unless `fix` is given.
    to_image: Option<String>,
    /// An imported advisory's id (`DSA-5532-1`): the target is the newest
    /// registered image of the selector's engine that it does not affect.
    /// Not with `to_image`.
    #[schema(min_length = 1, max_length = 128)]
    fix: Option<String>,
    selector: Option<drover_model::Selector>,
    waves: Option<Vec<u8>>,
    soak_seconds: Option<u64>,
    #[schema(minimum = 1)]
    max_failures: Option<u32>,
    #[schema(format = DateTime)]
    required_by: Option<String>,
}

/// Start a rollout: the selected services move onto `to_image` in waves;
/// with `"fix": ADVISORY` instead, onto the newest registered image the
/// advisory does not affect (404: no such advisory; 409: no such image).
#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = CreateRollout,
    responses((status = 201, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(mut body): Json<serde_json::Map<String, Value>>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let fix = match body.remove("fix") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(other) => return Err(ApiError::bad_request(format!("fix must be an advisory id, not {other}"))),
    };
    if fix.is_some() {
        if body.get("to_image").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request("give to_image or fix, not both"));
        }
        // Resolved below, once the selector is read.
        body.insert("to_image".into(), Value::String(String::new()));
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut spec: RolloutSpec = parse_json_body(&bytes)?;
    spec.validate().map_err(ApiError::bad_request)?;
    if let Some(fix) = fix {
        // The engine to fix: the selector's, else that of the services it names.
        let mut engine = spec.selector.engine;
        if let (None, Some(names)) = (engine, spec.selector.names.clone()) {
            let engines = ready
                .engine
                .query(move |e| {
                    let mut v: Vec<EngineKind> =
                        names.iter().filter_map(|n| e.service_view(n)).map(|s| s.engine).collect();
                    v.sort_by_key(|k| k.as_str());
                    v.dedup();
                    v
                })
                .await?;
            if let [one] = engines.as_slice() {
                engine = Some(*one);
            }
        }
        spec.to_image = resolve_fix(ready, &fix, engine).await?;
    }
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

/// The image a rollout fixing advisory `fix` moves onto: the newest
/// registered image of `engine` (by default the engine of the images the
/// advisory affects, when that is one) that the advisory does not affect.
async fn resolve_fix(ready: &crate::state::Ready, fix: &str, engine: Option<EngineKind>) -> Result<ImageId, ApiError> {
    let records = ready.advisory_cache.records(&ready.breakglass).await?;
    let record =
        records.iter().filter(|r| r.id == fix).max_by(|a, b| a.modified.cmp(&b.modified)).ok_or_else(|| {
            ApiError::not_found(format!("no advisory {fix:?}: import it first (POST /v1/advisories)"))
        })?;
    if record.withdrawn.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("advisory {fix} is withdrawn: there is nothing to fix"),
        ));
    }
    let images = ready.engine.query(|e| e.images()).await?;
    let engine = match engine {
        Some(e) => e,
        None => {
            let mut affected: Vec<EngineKind> =
                images.iter().filter(|i| drover_advisories::image_affected(record, i)).map(|i| i.engine).collect();
            affected.sort_by_key(|e| e.as_str());
            affected.dedup();
            match affected.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("advisory {fix} affects no registered image: there is nothing to fix"),
                    ))
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "advisory {fix} affects images of several engines: say which with selector.engine"
                    )))
                }
            }
        }
    };
    let candidates: Vec<drover_model::Image> = images.into_iter().filter(|i| i.engine == engine).collect();
    drover_advisories::newest_unaffected_image(record, &candidates).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "every registered {engine} image is affected by {fix}: register one with the fixed packages \
                 first (POST /v1/images)"
            ),
        )
    })
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

/// `POST /v1/services/{name}/resize`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeService {
    /// The image to move onto: the same engine, other settings or
    /// resources (`POST /v1/images` registers it; 404 when it is not).
    #[schema(min_length = 1)]
    pub image: String,
}

/// Resize a service by replacement, now (its maintenance window does not
/// hold a resize back): a new member built from `image`, caught up, a
/// planned switchover, the old member retired; the URL stays. Carried out
/// as a rollout of this one service, which the answer shows (`Location`
/// names it; `drover rollouts watch ID` follows it). 404: no such service
/// or no such image; 409: the image is of another engine, the service is on
/// it already, or another rollout is moving it. A service a rollout still
/// holds back (its window, its wave) resized onto that rollout's image
/// starts moving now, inside that rollout (the answer shows it): how
/// owners move their service earlier by hand.
#[utoipa::path(post, path = "/v1/services/{name}/resize", tag = "services", request_body = ResizeService,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn resize_service(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<ResizeService>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.visible_service(&caller, &name).await?;
    if request.image.is_empty() {
        return Err(ApiError::bad_request("image is empty: name a registered image's id"));
    }
    let command = Command::ResizeService { name, image: ImageId(request.image) };
    let v = view(ready.engine.call(caller.command(command)).await?)?;
    let location = HeaderValue::from_str(&format!("/v1/rollouts/{}", v.id)).ok();
    let mut response = (StatusCode::ACCEPTED, Json(v)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/services/{name}/upgrade`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeService {
    /// The major version to move onto (`"17"`): newer than the service's.
    /// Anything but a major (with a minor at most) is the client's mistake
    /// (400); a major not installed here is a conflict (409).
    #[schema(min_length = 1, max_length = 16, pattern = r"^[1-9][0-9]{0,8}(\.[0-9]{1,6})?$")]
    pub version: String,
}

/// Upgrade a service to a newer major version by replacement, now, with
/// its URL unchanged: a new member of the new major (PostgreSQL: a logical
/// subscriber of the primary), caught up, a planned switchover, the old
/// member retired; followers and read replicas are rebuilt on the new major
/// after the cut-over (PostgreSQL: from its first pgBackRest backup).
/// Carried out as a rollout of this one service (`Location` names it).
/// `upgrade/rollback` moves it back the same way. 400: not a major version;
/// 404: no such service; 409: that major is not installed here, the
/// service runs that major or a newer one, or a rollout is moving it.
#[utoipa::path(post, path = "/v1/services/{name}/upgrade", tag = "services", request_body = UpgradeService,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = RolloutView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn upgrade_service(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<UpgradeService>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.visible_service(&caller, &name).await?;
    let major = drover_engine::upgrades::major_of(&request.version)
        .filter(|_| request.version.chars().all(|c| c.is_ascii_digit() || c == '.'));
    let Some(major) = major else {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a major version (give one such as \"17\")",
            request.version
        )));
    };
    // The local provider's binaries of that major (scripts/lib.sh
    // ensure_pg_majors): an upgrade to a major not installed would fail
    // only when its member is built.
    let default = drover_providers::local::default_major();
    if major != default && !drover_providers::local::major_installed(major) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("PostgreSQL {major} is not installed here (scripts/lib.sh ensure_pg_majors installs it)"),
        ));
    }
    let command = Command::UpgradeService { name, version: request.version };
    accepted(view(ready.engine.call(caller.command(command)).await?)?)
}

/// Roll an upgraded service back onto the image it ran before its last
/// major-version upgrade, the same way (a new member of the old major fed
/// by logical replication from the new one, a planned switchover): writes
/// made since the upgrade come back with it. 409: it was not upgraded, or a
/// rollout is moving it.
#[utoipa::path(post, path = "/v1/services/{name}/upgrade/rollback", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = RolloutView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn rollback_upgrade(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.visible_service(&caller, &name).await?;
    let command = Command::RollbackUpgrade { name };
    accepted(view(ready.engine.call(caller.command(command)).await?)?)
}

fn accepted(v: RolloutView) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(&format!("/v1/rollouts/{}", v.id)).ok();
    let mut response = (StatusCode::ACCEPTED, Json(v)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
