//! The fleet's HTTP handlers: thin wrappers over the engine actor and the
//! store. The router that mounts them is `routes.rs`; every route is listed
//! in `openapi.rs`; every error is `{"error": "..."}`.

use crate::auth::{Caller, Identity};
use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::request::limit_in;
use crate::state::{AppState, Ready};
use crate::telemetry;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, HeartbeatReceipt, Input, Reply};
use drover_model::{
    ActionRecord, AuditEntry, Beat, CreateService, Event, Fault, Image, InstanceId, InstanceView, ServiceView,
};
use drover_store::EventFilter;
use serde::{Deserialize, Serialize};

/// Default and largest page of events, actions or audit entries.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

fn parse_instance_id(text: &str) -> Result<InstanceId, ApiError> {
    text.parse::<InstanceId>().map_err(|e| ApiError::bad_request(format!("instance id {text:?} is not a UUID: {e}")))
}

/// A service by name, if the caller may see it: a token limited to a team
/// sees only that team's services, and others are "not found" to it (it
/// learns nothing of them).
fn unexpected(reply: Reply) -> ApiError {
    let what = match reply {
        Reply::Service(_) => "a service",
        Reply::Action(_) => "an action",
        Reply::Image(_) => "an image",
        Reply::Heartbeats(_) => "a heartbeat receipt",
        Reply::Rollout(_) => "a rollout",
        Reply::Noted(_) => "a note",
        Reply::Host(_) => "a host",
    };
    ApiError::internal(format!("the engine answered with {what}, which this request does not expect"))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
}

/// Liveness and readiness: 200 once the engine is restored and ready.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub(crate) async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.ready.get().is_none() {
        // 503 all the same: what this node is doing instead of serving.
        if let Some(holder) = state.standby.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(ApiError::unavailable(format!(
                "this node is a standby: node {} ({}) holds the fleet, and requests are forwarded to it",
                holder.node, holder.url
            )));
        }
        if state.taking_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::unavailable(
                "this node holds the fleet's lease and is loading the fleet; retry in a moment",
            ));
        }
    }
    state.ready()?;
    Ok(Json(Health { status: "ok" }))
}

/// Create a service: a primary and its followers, built by a provider.
/// The engine must be one the provider runs (400 names each provider's
/// engines); a name taken by a live service is 409.
#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = CreateService,
    responses((status = 201, body = ServiceView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_service(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(mut request): Json<CreateService>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    request.validate().map_err(ApiError::bad_request)?;
    if let Some(mine) = &caller.team {
        match &request.team {
            None => request.team = Some(mine.clone()),
            Some(team) if team == mine => {}
            Some(team) => {
                let e = ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "token {:?} is limited to team {mine:?}; it cannot create a service of team {team:?}",
                        caller.name
                    ),
                );
                return Err(crate::auth::refuse(&state, &caller, "POST /v1/services", "/v1/services", e).await);
            }
        }
    }
    if let Some(provider) = &request.provider {
        if !ready.providers.iter().any(|p| p == provider) {
            return Err(ApiError::bad_request(format!(
                "unknown provider {provider:?}; this control plane knows: {}",
                ready.providers.join(", ")
            )));
        }
    }
    match ready.engine.call(caller.command(Command::CreateService(request))).await? {
        Reply::Service(view) => {
            let location = HeaderValue::from_str(&format!("/v1/services/{}", view.name)).ok();
            let mut response = (StatusCode::CREATED, Json(ready.complete(*view, &caller))).into_response();
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServicesQuery {
    /// Only services named after this one (the cursor: the last name of
    /// the previous page).
    after: Option<String>,
    /// At most this many (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The services, in name order, a page at a time: when more follow, the
/// `Link` header names the next page (`rel="next"`, RFC 8288), whose
/// cursor is the last name of this one. A team's token sees its team's.
#[utoipa::path(get, path = "/v1/services", tag = "services", params(ServicesQuery),
    responses((status = 200, body = Vec<ServiceView>,
        headers(("Link" = String, description = "`</v1/services?after=NAME&limit=N>; rel=\"next\"` when more follow"))),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn list_services(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ServicesQuery>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let limit = limit(query.limit)?;
    let team = caller.team.clone();
    let after = query.after;
    let (views, more) =
        ready.engine.query(move |engine| engine.service_views_page(after.as_deref(), limit, team.as_deref())).await?;
    let next = match (more, views.last()) {
        // A service name is a DNS label: nothing in it needs escaping.
        (true, Some(last)) => {
            HeaderValue::from_str(&format!("</v1/services?after={}&limit={limit}>; rel=\"next\"", last.name)).ok()
        }
        _ => None,
    };
    let views: Vec<ServiceView> = views.into_iter().map(|v| ready.complete(v, &caller)).collect();
    let mut response = Json(views).into_response();
    if let Some(next) = next {
        response.headers_mut().insert(header::LINK, next);
    }
    Ok(response)
}

/// One service with its instances.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_service(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(ready.complete(ready.visible_service(&caller, &name).await?, &caller)))
}

/// Planned switchover: fence the primary (routers pause clients), promote
/// the most advanced follower, build a new follower, retire the old primary.
#[utoipa::path(post, path = "/v1/services/{name}/switchover", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_switchover(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, caller, Command::Switchover { name: name.clone() }, &name).await
}

/// A fork: a new service `name` with the source's plan and its data as of
/// `at`, restored from the source's backups and archived WAL.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkService {
    /// The new service's name (a DNS label, like any service's).
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]*$", min_length = 1, max_length = 63)]
    pub name: String,
    /// RFC 3339, fractional seconds allowed: the fork holds what committed
    /// before this moment. Absent: everything the source committed until
    /// the fork starts (Drover archives it first).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub at: Option<String>,
}

/// Fork a PostgreSQL service, or roll it back into a new one: a new service
/// with the source's plan (engine, followers, team, zones, provider) and
/// its own URL and credential, holding the source's data as of `at` (to the
/// microsecond) or its latest. Needs a backup of the source taken before
/// `at` (409 when the source has none or cannot be forked); a name taken is 409.
#[utoipa::path(post, path = "/v1/services/{name}/fork", tag = "services", request_body = ForkService,
    params(("name" = String, Path, description = "The source service")),
    responses((status = 202, body = ServiceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn post_fork(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(source): Path<String>,
    Json(request): Json<ForkService>,
) -> Result<Response, ApiError> {
    let at = match request.at.as_deref() {
        Some(text) => Some(drover_model::Timestamp::parse(text).map_err(ApiError::bad_request)?),
        None => None,
    };
    let command = Command::ForkService { source: source.clone(), name: request.name, at };
    let ready = state.ready()?;
    ready.visible_service(&caller, &source).await?;
    // On a fleet split between nodes the new name may be in another
    // node's shard: planned here, created there (`node_commands`).
    match crate::node_commands::run_as(ready, &caller, command, false).await? {
        Some(view) => Ok((StatusCode::ACCEPTED, Json(ready.complete(view, &caller))).into_response()),
        None => Err(ApiError::internal("the engine answered a fork with something other than a service")),
    }
}

/// Clears "needs a human" after a person looked: the engine tries its
/// remedies again. Audited under the caller's name.
#[utoipa::path(post, path = "/v1/services/{name}/resume", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_resume(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, caller, Command::ResumeService { name: name.clone() }, &name).await
}

/// Backups, replication, security and performance checks of a service.
#[utoipa::path(get, path = "/v1/services/{name}/checks", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = crate::checks::ServiceChecks), (status = 404, body = ErrorBody)))]
pub(crate) async fn service_checks(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<crate::checks::ServiceChecks>, ApiError> {
    let ready = state.ready()?;
    let view = ready.visible_service(&caller, &name).await?;
    Ok(Json(crate::checks::of_service(ready, &view).await))
}

/// Take a base backup now.
#[utoipa::path(post, path = "/v1/services/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_backup(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    action_command(state, caller, Command::TakeBackup { name: name.clone() }, &name).await
}

/// Restore the latest backup into a scratch instance and check it, now.
#[utoipa::path(post, path = "/v1/services/{name}/backups/verify", tag = "backups",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_verify_backup(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    action_command(state, caller, Command::VerifyBackup { name: name.clone() }, &name).await
}

async fn action_command(state: AppState, caller: Identity, command: Command, name: &str) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.visible_service(&caller, name).await?;
    match ready.engine.call(caller.command(command)).await? {
        Reply::Action(action) => Ok((StatusCode::ACCEPTED, Json(*action)).into_response()),
        other => Err(unexpected(other)),
    }
}

/// Delete a service: its instances are retired, then archived.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_service(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, caller, Command::DeleteService { name: name.clone() }, &name).await
}

/// A command answered with the service, accepted (202).
pub(crate) async fn service_command(
    state: AppState,
    caller: Identity,
    command: Command,
    name: &str,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.visible_service(&caller, name).await?;
    match ready.engine.call(caller.command(command)).await? {
        Reply::Service(view) => Ok((StatusCode::ACCEPTED, Json(ready.complete(*view, &caller))).into_response()),
        other => Err(unexpected(other)),
    }
}

/// One instance, with the facts of its last heartbeat.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_instance(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceView>, ApiError> {
    let ready = state.ready()?;
    let id = parse_instance_id(&id)?;
    let not_found = || ApiError::not_found(format!("no instance {id}"));
    let view = ready.engine.query(move |engine| engine.instance_view(id)).await?.ok_or_else(not_found)?;
    // An agent reads only its own host's instances.
    if caller.host.as_deref().is_some_and(|host| host != instance_host(ready, &view)) {
        return Err(not_found());
    }
    if caller.team.is_some() {
        ready.visible_service(&caller, &view.service).await.map_err(|_| not_found())?;
    }
    Ok(Json(view))
}

/// The host an instance runs on: the one placement chose; an instance
/// with none (an engine without hosts) runs on the control plane's own.
fn instance_host<'a>(ready: &'a Ready, instance: &'a InstanceView) -> &'a str {
    instance.host.as_deref().unwrap_or(&ready.host)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this service (by name).
    service: Option<String>,
    /// Only events of this instance (UUID).
    #[param(format = Uuid)]
    instance: Option<String>,
    /// Only events with a sequence number above this.
    #[param(minimum = 0)]
    after: Option<u64>,
    /// At most this many (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    limit_in(requested, DEFAULT_LIMIT, MAX_LIMIT)
}

pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, drover_store::StoreError> + Send + 'static,
) -> Result<R, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store query failed");
            Err(ApiError::unavailable(format!("the store could not answer: {e}")))
        }
        Err(e) => Err(ApiError::internal(format!("store query task failed: {e}"))),
    }
}

/// The event log: every transition and action step, with its cause.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = Vec<Event>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let ready = state.ready()?;
    let instance = query.instance.as_deref().map(parse_instance_id).transpose()?;
    let filter =
        EventFilter { service: query.service, instance, after_seq: query.after, limit: Some(limit(query.limit)?) };
    let store = ready.store.clone();
    let mut events = blocking(move || store.events(&filter)).await?;
    events.retain(|e| caller.sees_team(e.team.as_deref()));
    Ok(Json(events))
}

/// A batch of heartbeats from agents.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatch {
    #[serde(deserialize_with = "drover_model::objects::objects")]
    pub beats: Vec<Beat>,
    /// The sending agent's lease in milliseconds: with no batch of its
    /// acknowledged for that long, it has fenced its primaries. An agent
    /// host's Fence is counted done once its agent has been silent past it
    /// (docs/agent.md, "A silent host").
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600000)]
    pub lease_ms: Option<u64>,
}

/// What the engine made of a heartbeat batch (mirrors `drover_engine::HeartbeatReceipt`).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct HeartbeatReceiptDoc {
    accepted: u32,
    /// Duplicates or reordered beats.
    stale: u32,
    /// Ids the engine does not know.
    #[schema(value_type = Vec<String>)]
    unknown: Vec<InstanceId>,
    /// Beats of this batch acknowledged before the engine took them (an
    /// agent host's batch, answered within its budget while the engine was
    /// slow): they are fed in order behind the host's earlier batches, or
    /// superseded by its newer ones. Not counted in `accepted`.
    pending: u32,
}

/// The answer to a heartbeat batch: the engine's receipt, and what of the
/// batch the engine has not taken yet.
#[derive(Debug, Serialize)]
pub struct HeartbeatAnswer {
    #[serde(flatten)]
    receipt: HeartbeatReceipt,
    pending: u32,
}

impl HeartbeatAnswer {
    fn fed(receipt: HeartbeatReceipt) -> Json<HeartbeatAnswer> {
        Json(HeartbeatAnswer { receipt, pending: 0 })
    }

    fn pending(beats: usize) -> Json<HeartbeatAnswer> {
        Json(HeartbeatAnswer {
            receipt: HeartbeatReceipt::default(),
            pending: u32::try_from(beats).unwrap_or(u32::MAX),
        })
    }
}

/// A heartbeat batch as the handler takes it: read from the body, or, on
/// a fleet split between nodes, this node's part of a batch the shard
/// router already parsed to take it apart (`forward::heartbeat_parts`), so
/// no beat is parsed twice on its way to the engine.
pub(crate) struct Batch(pub HeartbeatBatch);

/// This node's part of a batch, parsed by the shard router.
#[derive(Clone)]
pub(crate) struct Parsed(pub HeartbeatBatch);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Batch {
    type Rejection = ApiError;

    async fn from_request(mut req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(Parsed(batch)) = req.extensions_mut().remove::<Parsed>() {
            crate::error::json_content(req.headers())?;
            return Ok(Batch(batch));
        }
        let Json(batch) = <Json<HeartbeatBatch> as axum::extract::FromRequest<S>>::from_request(req, state).await?;
        Ok(Batch(batch))
    }
}

/// Post heartbeats (batched). Facts are kept in memory only. An agent
/// host's batch (one that tells `lease_ms`) is answered within a budget
/// (150 ms at most) whatever the engine's pace, so a stalled control plane
/// does not make the agents fence their primaries: what the engine has not
/// taken by then is `pending` (docs/agent.md).
#[utoipa::path(post, path = "/v1/heartbeats", tag = "heartbeats", request_body = HeartbeatBatch,
    responses((status = 200, body = HeartbeatReceiptDoc), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn post_heartbeats(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Batch(batch): Batch,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let ready = state.ready()?;
    // When the batch arrived: the agent sent it no later, so its lease,
    // renewed by this acknowledgement, runs out no later than this plus
    // its TTL (counted on for a silent host's Fence).
    let arrived = tokio::time::Instant::now();
    if let Some(ms) = batch.lease_ms.filter(|ms| !(1..=3_600_000).contains(ms)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("lease_ms must be between 1 and 3600000 (one hour), not {ms}"),
        ));
    }
    let agent_lease =
        caller.host.clone().filter(|h| *h != ready.host).zip(batch.lease_ms.map(std::time::Duration::from_millis));
    let Some((host, ttl)) = agent_lease else {
        // No lease hangs on this answer: it waits for the engine.
        return feed_heartbeats(&state, &caller, batch).await.map(HeartbeatAnswer::fed);
    };
    // Recorded before any answer can leave: the control plane's judgement
    // of this host's silence counts from this arrival (never later than
    // the lease the answer renews), whenever the engine takes the batch.
    ready.agents.heard(&host, arrived, ttl);
    let beats = batch.beats.len();
    let (answer, answered) = tokio::sync::oneshot::channel();
    let job = {
        let (state, caller) = (state.clone(), caller.clone());
        Box::pin(async move {
            let _ = answer.send(feed_heartbeats(&state, &caller, batch).await);
        })
    };
    let superseded = ready.agents.feeds().push(&host, job);
    if superseded > 0 {
        metrics::counter!(telemetry::HEARTBEAT_BATCHES_SUPERSEDED).increment(superseded as u64);
        tracing::warn!(%host, superseded, "the engine is behind: older heartbeat batches of this host dropped unfed, the newest supersedes them");
    }
    match tokio::time::timeout(crate::heartbeat_feed::ack_budget(ttl), answered).await {
        Ok(Ok(result)) => result.map(HeartbeatAnswer::fed),
        // Dropped unfed within the budget: a newer batch supersedes it.
        Ok(Err(_)) => Ok(HeartbeatAnswer::pending(beats)),
        Err(_) => {
            metrics::counter!(telemetry::HEARTBEAT_BATCHES_ANSWERED_EARLY).increment(1);
            tracing::debug!(%host, beats, "heartbeat batch acknowledged before the engine took it");
            Ok(HeartbeatAnswer::pending(beats))
        }
    }
}

/// What the engine does with one batch: an empty agent host heard again,
/// the ownership check, then the beats. Beats of an instance the caller's
/// host does not run never reach the engine (the batch is refused whole).
async fn feed_heartbeats(
    state: &AppState,
    caller: &Identity,
    batch: HeartbeatBatch,
) -> Result<HeartbeatReceipt, ApiError> {
    let ready = state.ready()?;
    // An agent host whose instances all fell silent turned uncertain; once
    // none is left on it (replaced elsewhere, terminated), no instance's
    // beat can make it ready again, but its agent's batch still arrives:
    // that is the host heard (as if it registered again).
    if let Some(host) = caller.host.clone().filter(|h| *h != ready.host) {
        let name = host.clone();
        let silent_and_empty = ready
            .engine
            .query(move |engine| {
                // Cheap first: only an uncertain host's instances are counted.
                let record = engine.host_record(&name).filter(|r| r.state == drover_model::HostState::Uncertain)?;
                let view = engine.host_views().into_iter().find(|v| v.name == name)?;
                (view.instances == 0).then_some(record)
            })
            .await?;
        if let Some(record) = silent_and_empty {
            let register = drover_model::RegisterHost {
                name: record.name,
                zone: record.zone,
                address: record.address,
                capacity: record.capacity,
            };
            tracing::info!(%host, "an empty agent host is heard again: ready");
            ready.engine.call(caller.command(Command::RegisterHost { host: register, builtin: false })).await?;
        }
    }
    if batch.beats.is_empty() {
        return Ok(HeartbeatReceipt::default());
    }
    // Only the agent of the host that runs an instance may report it.
    // Beats of instances the engine does not know pass (it answers them
    // `unknown` and does nothing with them).
    {
        let ids: Vec<InstanceId> = batch.beats.iter().map(|b| b.instance).collect();
        let (mine, own) = (caller.host.clone(), ready.host.clone());
        let foreign: Vec<(InstanceId, String)> = ready
            .engine
            .query(move |engine| {
                ids.into_iter()
                    // The common case first, without building a view: the
                    // instance is placed on the caller's own host.
                    .filter(|&id| mine.is_none() || engine.instance_host(id) != mine.as_deref())
                    .filter_map(|id| engine.instance_view(id).map(|v| (id, v.host.unwrap_or_else(|| own.clone()))))
                    .filter(|(_, host)| mine.as_deref() != Some(host.as_str()))
                    .take(5)
                    .collect()
            })
            .await?;
        if !foreign.is_empty() {
            let list = foreign.iter().map(|(i, h)| format!("{i} (on {h})")).collect::<Vec<_>>().join(", ");
            let e = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is the agent of host {:?}; instance(s) {list} run elsewhere: only their host's agent may report them",
                    caller.name,
                    caller.host.as_deref().unwrap_or("none"),
                ),
            );
            return Err(crate::auth::refuse(state, caller, "POST /v1/heartbeats", "/v1/heartbeats", e).await);
        }
    }
    // Provider beats are counted where they arrive (`runtime`).
    metrics::counter!(telemetry::HEARTBEATS_RECEIVED).increment(batch.beats.len() as u64);
    ready.agents.note_ports(&batch.beats);
    match ready.engine.call(Input::Heartbeats(batch.beats)).await? {
        Reply::Heartbeats(receipt) => Ok(receipt),
        other => Err(unexpected(other)),
    }
}

/// `{"instance": ID, "fault": ...}` or `{"host": NAME, "fault": "crash"|"hang"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosRequest {
    /// The instance to fault (or give `host`).
    #[schema(value_type = Option<String>, format = Uuid)]
    #[serde(default)]
    pub instance: Option<InstanceId>,
    /// A whole host to crash or hang (or give `instance`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 63)]
    pub host: Option<String>,
    pub fault: Fault,
}

/// Inject a fault into an instance (crash, hang, partition, heal), or into
/// a whole host (crash, hang: everything placed on it).
#[utoipa::path(post, path = "/v1/chaos", tag = "chaos", request_body = ChaosRequest,
    responses((status = 202, body = ActionRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn post_chaos(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<ChaosRequest>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let instance = match (request.instance, request.host) {
        (Some(instance), None) => instance,
        (None, Some(host)) => {
            // A whole host holds services of every team: operators without a team only.
            if caller.team.is_some() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "token {:?} is limited to a team; chaos for a whole host needs a token of no team",
                        caller.name
                    ),
                ));
            }
            // Any host but this control plane's own is an agent's: the
            // agent does it as one action, to itself and all it runs.
            let by_agent = host != ready.host;
            let command = Command::HostChaos { host: host.clone(), fault: request.fault, by_agent };
            let reply = ready.engine.call(caller.command(command)).await?;
            return match reply {
                Reply::Host(view) => {
                    if by_agent {
                        ready.agents.host_fault(&host, request.fault);
                    }
                    Ok((StatusCode::ACCEPTED, Json(*view)).into_response())
                }
                other => Err(unexpected(other)),
            };
        }
        _ => return Err(ApiError::bad_request("give exactly one of \"instance\" and \"host\"")),
    };
    if caller.team.is_some() {
        let id = instance;
        let service = ready.engine.query(move |engine| engine.instance_view(id).map(|v| v.service)).await?;
        let visible = match service {
            Some(name) => ready.visible_service(&caller, &name).await.is_ok(),
            None => true,
        };
        if !visible {
            return Err(ApiError::not_found(format!("no instance {id}")));
        }
    }
    let command = Command::Chaos { instance, fault: request.fault };
    match ready.engine.call(caller.command(command)).await? {
        Reply::Action(action) => Ok((StatusCode::ACCEPTED, Json(*action)).into_response()),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActionsQuery {
    /// Only actions of this service (by name).
    service: Option<String>,
    /// At most this many, newest first (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// Actions: what the engine decided to do and how it went.
#[utoipa::path(get, path = "/v1/actions", tag = "actions", params(ActionsQuery),
    responses((status = 200, body = Vec<ActionRecord>), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_actions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ActionsQuery>,
) -> Result<Json<Vec<ActionRecord>>, ApiError> {
    let ready = state.ready()?;
    let limit = limit(query.limit)?;
    let service = match query.service {
        None => None,
        Some(name) => Some(ready.visible_service(&caller, &name).await?.id),
    };
    let store = ready.store.clone();
    let mut actions = blocking(move || store.actions(service, limit)).await?;
    if let Some(team) = caller.team.clone() {
        let mine: std::collections::HashSet<drover_model::ServiceId> = ready
            .engine
            .query(move |engine| engine.service_views().into_iter().filter(|v| v.team == team).map(|v| v.id).collect())
            .await?;
        actions.retain(|a| mine.contains(&a.service));
    }
    Ok(Json(actions))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many, newest first (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The audit trail of operator commands, accepted or refused.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)))]
pub(crate) async fn list_audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let ready = state.ready()?;
    let limit = limit(query.limit)?;
    let store = ready.store.clone();
    let mut entries = blocking(move || store.audit(limit)).await?;
    // A team's token sees the entries about its team's services.
    if let Some(team) = caller.team.clone() {
        let mine: std::collections::HashSet<String> = ready
            .engine
            .query(move |engine| {
                engine.service_views().into_iter().filter(|v| v.team == team).map(|v| v.name).collect()
            })
            .await?;
        entries.retain(|e| e.target.as_ref().is_some_and(|t| mine.contains(t)));
    }
    Ok(Json(entries))
}

/// The image catalog.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = Vec<Image>)))]
pub(crate) async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<Image>>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(ready.engine.query(|engine| engine.images()).await?))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Some(ready) = state.ready.get() {
        if let Ok(stats) = ready.engine.query(|engine| engine.stats()).await {
            telemetry::record_stats(&stats);
        }
    }
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        state.metrics.render(),
    )
        .into_response()
}
