//! The HTTP API: thin handlers over the engine actor and the store. Every
//! route is listed in `openapi.rs`; every error is `{"error": "..."}`.

use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::runtime::EngineHandle;
use crate::telemetry;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use drover_engine::{Command, HeartbeatReceipt, Input, Reply};
use drover_model::{
    ActionRecord, AuditEntry, Beat, CreateService, Event, Fault, Image, InstanceId, InstanceView, ServiceView,
};
use drover_store::{EventFilter, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// Largest request body: a heartbeat batch of ~100k beats fits.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default and largest page of events, actions or audit entries.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;
/// Header naming who issues a command, for the audit trail.
pub const ACTOR_HEADER: &str = "x-drover-actor";
const DEFAULT_ACTOR: &str = "api";
pub(crate) const MAX_ACTOR_LEN: usize = 128;

/// What the handlers reach, filled once start-up is done.
pub struct Ready {
    pub engine: EngineHandle,
    pub store: Arc<dyn Store>,
    pub providers: Vec<String>,
    pub provider_objects: std::collections::HashMap<String, Arc<dyn drover_providers::Provider>>,
    /// The pager actor (on-call).
    pub oncall: crate::oncall::PagerHandle,
}

impl Ready {
    /// Adds what only the provider knows (the stable URL) to a view.
    fn complete(&self, mut view: ServiceView) -> ServiceView {
        if let Some(p) = self.provider_objects.get(&view.provider) {
            view.url = p.service_url(&view.name);
        }
        view
    }
}

#[derive(Clone)]
pub struct AppState {
    pub ready: Arc<OnceLock<Ready>>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| ApiError::unavailable("Drover is starting; retry in a moment"))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/services", post(create_service).get(list_services))
        .route("/v1/services/{name}", get(show_service).delete(delete_service))
        .route("/v1/services/{name}/switchover", post(post_switchover))
        .route("/v1/services/{name}/resume", post(post_resume))
        .route("/v1/services/{name}/checks", get(service_checks))
        .route("/v1/services/{name}/backups", post(post_backup))
        .route("/v1/services/{name}/backups/verify", post(post_verify_backup))
        .route("/v1/instances/{id}", get(show_instance))
        .route("/v1/events", get(list_events))
        .route("/v1/heartbeats", post(post_heartbeats))
        .route("/v1/chaos", post(post_chaos))
        .route("/v1/actions", get(list_actions))
        .route("/v1/audit", get(list_audit))
        .route("/v1/images", get(list_images))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .merge(crate::oncall::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(errors_as_json))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

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

fn parse_instance_id(text: &str) -> Result<InstanceId, ApiError> {
    text.parse::<InstanceId>().map_err(|e| ApiError::bad_request(format!("instance id {text:?} is not a UUID: {e}")))
}

fn unexpected(reply: Reply) -> ApiError {
    let what = match reply {
        Reply::Service(_) => "a service",
        Reply::Action(_) => "an action",
        Reply::Image(_) => "an image",
        Reply::Heartbeats(_) => "a heartbeat receipt",
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
    state.ready()?;
    Ok(Json(Health { status: "ok" }))
}

/// Create a service: a primary and its followers, built by a provider.
#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = CreateService,
    params(("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 201, body = ServiceView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<CreateService>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let actor = actor(&headers)?;
    request.validate().map_err(ApiError::bad_request)?;
    if let Some(provider) = &request.provider {
        if !ready.providers.iter().any(|p| p == provider) {
            return Err(ApiError::bad_request(format!(
                "unknown provider {provider:?}; this control plane knows: {}",
                ready.providers.join(", ")
            )));
        }
    }
    match ready.engine.call(Input::Command { actor, command: Command::CreateService(request) }).await? {
        Reply::Service(view) => {
            let location = HeaderValue::from_str(&format!("/v1/services/{}", view.name)).ok();
            let mut response = (StatusCode::CREATED, Json(ready.complete(*view))).into_response();
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        other => Err(unexpected(other)),
    }
}

/// Every service the engine holds.
#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses((status = 200, body = Vec<ServiceView>)))]
pub(crate) async fn list_services(State(state): State<AppState>) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let ready = state.ready()?;
    let views = ready.engine.query(|engine| engine.service_views()).await?;
    Ok(Json(views.into_iter().map(|v| ready.complete(v)).collect()))
}

/// One service with its instances.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    let ready = state.ready()?;
    let lookup = name.clone();
    ready
        .engine
        .query(move |engine| engine.service_view(&lookup))
        .await?
        .map(|v| Json(ready.complete(v)))
        .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))
}

/// Planned switchover: fence the primary (routers pause clients), promote
/// the most advanced follower, build a new follower, retire the old primary.
#[utoipa::path(post, path = "/v1/services/{name}/switchover", tag = "services",
    params(("name" = String, Path, description = "Service name"),
        ("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_switchover(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, headers, Command::Switchover { name }).await
}

/// Clears "needs a human" after a person looked: the engine tries its
/// remedies again. Audited under the caller's name.
#[utoipa::path(post, path = "/v1/services/{name}/resume", tag = "services",
    params(("name" = String, Path, description = "Service name"),
        ("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, headers, Command::ResumeService { name }).await
}

/// Backups, replication, security and performance checks of a service.
#[utoipa::path(get, path = "/v1/services/{name}/checks", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = crate::checks::ServiceChecks), (status = 404, body = ErrorBody)))]
pub(crate) async fn service_checks(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<crate::checks::ServiceChecks>, ApiError> {
    let ready = state.ready()?;
    let lookup = name.clone();
    let view = ready
        .engine
        .query(move |engine| engine.service_view(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))?;
    let provider = match ready.provider_objects.get(&view.provider) {
        Some(p) => p.service_checks(&view.name).await,
        None => drover_providers::ProviderChecks::default(),
    };
    Ok(Json(crate::checks::compose(&view, provider, crate::runtime::now())))
}

/// Take a base backup now.
#[utoipa::path(post, path = "/v1/services/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Service name"),
        ("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_backup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    action_command(state, headers, Command::TakeBackup { name }).await
}

/// Restore the latest backup into a scratch instance and check it, now.
#[utoipa::path(post, path = "/v1/services/{name}/backups/verify", tag = "backups",
    params(("name" = String, Path, description = "Service name"),
        ("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_verify_backup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    action_command(state, headers, Command::VerifyBackup { name }).await
}

async fn action_command(state: AppState, headers: HeaderMap, command: Command) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let actor = actor(&headers)?;
    match ready.engine.call(Input::Command { actor, command }).await? {
        Reply::Action(action) => Ok((StatusCode::ACCEPTED, Json(*action)).into_response()),
        other => Err(unexpected(other)),
    }
}

/// Delete a service: its instances are retired, then archived.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name"),
        ("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ServiceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    service_command(state, headers, Command::DeleteService { name }).await
}

/// A command answered with the service, accepted (202).
async fn service_command(state: AppState, headers: HeaderMap, command: Command) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let actor = actor(&headers)?;
    match ready.engine.call(Input::Command { actor, command }).await? {
        Reply::Service(view) => Ok((StatusCode::ACCEPTED, Json(ready.complete(*view))).into_response()),
        other => Err(unexpected(other)),
    }
}

/// One instance, with the facts of its last heartbeat.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id (UUID)")),
    responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InstanceView>, ApiError> {
    let ready = state.ready()?;
    let id = parse_instance_id(&id)?;
    ready
        .engine
        .query(move |engine| engine.instance_view(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no instance {id}")))
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

/// The page size asked for, 1 to `max` (the range the query schemas state).
pub(crate) fn limit_in(requested: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match requested {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be 1 to {max}, got {n}"))),
    }
}

fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    limit_in(requested, DEFAULT_LIMIT, MAX_LIMIT)
}

async fn blocking<R: Send + 'static>(
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
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let ready = state.ready()?;
    let instance = query.instance.as_deref().map(parse_instance_id).transpose()?;
    let filter =
        EventFilter { service: query.service, instance, after_seq: query.after, limit: Some(limit(query.limit)?) };
    let store = ready.store.clone();
    Ok(Json(blocking(move || store.events(&filter)).await?))
}

/// A batch of heartbeats from agents.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatch {
    #[serde(deserialize_with = "drover_model::objects::objects")]
    pub beats: Vec<Beat>,
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
}

/// Post heartbeats (batched). Facts are kept in memory only.
#[utoipa::path(post, path = "/v1/heartbeats", tag = "heartbeats", request_body = HeartbeatBatch,
    responses((status = 200, body = HeartbeatReceiptDoc), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn post_heartbeats(
    State(state): State<AppState>,
    Json(batch): Json<HeartbeatBatch>,
) -> Result<Json<HeartbeatReceipt>, ApiError> {
    let ready = state.ready()?;
    if batch.beats.is_empty() {
        return Ok(Json(HeartbeatReceipt::default()));
    }
    match ready.engine.call(Input::Heartbeats(batch.beats)).await? {
        Reply::Heartbeats(receipt) => Ok(Json(receipt)),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosRequest {
    #[schema(value_type = String, format = Uuid)]
    pub instance: InstanceId,
    pub fault: Fault,
}

/// Inject a fault into an instance (crash, hang, partition, heal).
#[utoipa::path(post, path = "/v1/chaos", tag = "chaos", request_body = ChaosRequest,
    params(("x-drover-actor" = Option<String>, Header, description = "Who asks, for the audit trail")),
    responses((status = 202, body = ActionRecord), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn post_chaos(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<ChaosRequest>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let actor = actor(&headers)?;
    let command = Command::Chaos { instance: request.instance, fault: request.fault };
    match ready.engine.call(Input::Command { actor, command }).await? {
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
    Query(query): Query<ActionsQuery>,
) -> Result<Json<Vec<ActionRecord>>, ApiError> {
    let ready = state.ready()?;
    let limit = limit(query.limit)?;
    let service = match query.service {
        None => None,
        Some(name) => {
            let lookup = name.clone();
            let id = ready.engine.query(move |engine| engine.service_view(&lookup).map(|v| v.id)).await?;
            Some(id.ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))?)
        }
    };
    let store = ready.store.clone();
    Ok(Json(blocking(move || store.actions(service, limit)).await?))
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
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let ready = state.ready()?;
    let limit = limit(query.limit)?;
    let store = ready.store.clone();
    Ok(Json(blocking(move || store.audit(limit)).await?))
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Response {
    let providers = state.ready.get().map(|r| r.providers.as_slice());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], crate::openapi::document_json(providers))
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}; the API is described at /openapi.json", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}; the API is described at /openapi.json", uri.path()),
    )
}

/// Last line of defence: any error response that is not JSON yet (a
/// rejection or status from a layer we did not write) becomes `{"error"}`.
async fn errors_as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let body = serde_json::to_vec(&ErrorBody { error: text }).unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec());
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "a request handler panicked");
    ApiError::internal("internal error: the server hit a bug while handling this request; it is logged").into_response()
}
