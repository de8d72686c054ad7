//! The router: every handler module's routes under one `AppState`, the
//! fallbacks, and the layers that make every error `{"error": "..."}`.

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::{advisories, agents, auth, hosts, http, oncall, openapi, runbooks};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

/// Largest request body: a heartbeat batch of ~100k beats fits.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/v1/services", post(http::create_service).get(http::list_services))
        .route("/v1/services/{name}", get(http::show_service).delete(http::delete_service))
        .route("/v1/services/{name}/switchover", post(http::post_switchover))
        .route("/v1/services/{name}/fork", post(http::post_fork))
        .route("/v1/services/{name}/resize", post(crate::rollouts::resize_service))
        .route("/v1/services/{name}/upgrade", post(crate::rollouts::upgrade_service))
        .route("/v1/services/{name}/upgrade/rollback", post(crate::rollouts::rollback_upgrade))
        .route("/v1/services/{name}/followers", post(crate::followers::post_followers))
        .route("/v1/services/{name}/followers/{instance}", delete(crate::followers::delete_follower))
        .route("/v1/services/{name}/resume", post(http::post_resume))
        .route("/v1/services/{name}/checks", get(http::service_checks))
        .route("/v1/services/{name}/backups", post(http::post_backup))
        .route("/v1/services/{name}/backups/verify", post(http::post_verify_backup))
        .route("/v1/services/{name}/credentials/rotate", post(crate::credentials::post_rotate_credentials))
        .route("/v1/instances/{id}", get(http::show_instance))
        .route("/v1/events", get(http::list_events))
        .route("/v1/heartbeats", post(http::post_heartbeats))
        .route("/v1/chaos", post(http::post_chaos))
        .route("/v1/actions", get(http::list_actions))
        .route("/v1/audit", get(http::list_audit))
        .route("/v1/images", get(http::list_images).post(crate::images::create_image))
        .route("/v1/images/{id}", get(crate::images::show_image))
        .route("/v1/rollouts", post(crate::rollouts::create_rollout).get(crate::rollouts::list_rollouts))
        .route("/v1/rollouts/{id}", get(crate::rollouts::show_rollout))
        .route("/v1/rollouts/{id}/services", get(crate::rollouts::rollout_services))
        .route("/v1/rollouts/{id}/pause", post(crate::rollouts::pause_rollout))
        .route("/v1/rollouts/{id}/resume", post(crate::rollouts::resume_rollout))
        .route("/v1/rollouts/{id}/abort", post(crate::rollouts::abort_rollout))
        .route("/v1/services/{name}/maintenance-window", axum::routing::put(crate::maintenance::put_window))
        .route("/v1/services/{name}/labels", axum::routing::put(crate::labels::put_labels))
        .route("/v1/maintenance.ics", get(crate::maintenance::calendar))
        .route("/metrics", get(http::metrics_text))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/tokens", post(auth::tokens::create_token).get(auth::tokens::list_tokens))
        .route("/v1/tokens/{id}", axum::routing::delete(auth::tokens::revoke_token))
        .route("/v1/advisories", post(advisories::import).get(advisories::status))
        .route("/v1/advisories/audit", get(advisories::audit))
        .route("/v1/runbooks", get(runbooks::list))
        .route("/v1/runbooks/{name}/runs", post(runbooks::run))
        .route("/v1/runbooks/runs/{id}", get(runbooks::show_run))
        .route("/v1/runbooks/runs/{id}/approve", post(runbooks::approve))
        .merge(oncall::routes::routes())
        .route("/status", get(crate::status::status_page))
        .route("/ui/", get(crate::ui::overview))
        .route("/ui/login", get(crate::ui::login_page).post(crate::ui::login))
        .route("/ui/logout", post(crate::ui::logout))
        .route("/ui/live.js", get(crate::ui::script))
        .route("/ui/services", get(crate::ui::services))
        .route("/ui/services/{name}", get(crate::ui::service))
        .route("/ui/services/{name}/live", get(crate::ui::service_fragment))
        .route("/ui/pages", get(crate::ui::pages))
        .route("/ui/rollouts", get(crate::ui::rollouts))
        .route("/ui/rollouts/live", get(crate::ui::rollouts_fragment))
        .route("/ui/images", get(crate::ui::images))
        .route("/ui/pages/{id}/ack", post(crate::ui::acknowledge))
        .route("/ui/pager", get(crate::ui::pager))
        .route("/ui/runbooks", get(crate::ui::runbooks))
        .route("/ui/runbooks/{name}/runs", post(crate::ui::request_run))
        .route("/ui/runbooks/runs/{id}", get(crate::ui::runbook_run))
        .route("/ui/runbooks/runs/{id}/approve", post(crate::ui::approve_run))
        .route("/ui/incidents", get(crate::ui::incidents).post(crate::ui::declare_incident))
        .route("/ui/incidents/{id}", get(crate::ui::incident))
        .route("/ui/incidents/{id}/updates", post(crate::ui::incident_update))
        .route("/ui/incidents/{id}/notes", post(crate::ui::incident_note))
        .route("/status/feed.atom", get(crate::status::status_feed))
        .route("/v1/incidents", post(crate::status::declare).get(crate::status::list))
        .route("/v1/incidents/{id}", get(crate::status::show))
        .route("/v1/incidents/{id}/review", get(crate::status::review))
        .route("/v1/incidents/{id}/updates", post(crate::status::post_update))
        .route("/v1/incidents/{id}/notes", post(crate::status::post_note))
        .route("/v1/incidents/{id}/timeline", get(crate::status::timeline))
        .route("/v1/components", get(crate::lifecycle::list).post(crate::lifecycle::create))
        .route("/v1/components/{name}/stage", post(crate::lifecycle::move_stage))
        .route("/v1/components/{name}/attest", post(crate::lifecycle::attest))
        .route("/v1/catalog/import", post(crate::lifecycle::import))
        .route("/v1/catalog/export", get(crate::lifecycle::export))
        .route("/v1/hosts", get(hosts::list_hosts).post(hosts::register_host))
        .route("/v1/cluster", get(crate::cluster::show_cluster))
        .route("/v1/cluster/commands", post(crate::node_commands::take))
        .route("/v1/commands/{id}", get(crate::deferred::show_command))
        .route("/v1/hosts/{name}/drain", post(hosts::post_drain))
        .route("/v1/hosts/{name}/cordon", post(hosts::post_cordon))
        .route("/v1/archives", get(crate::archives::list_archives))
        .route("/v1/archives/{id}/restore", post(crate::archives::restore_archive))
        // Every route above, and only they, pass the auth middleware: add
        .route("/v1/hosts/{name}/actions", get(agents::fetch_actions))
        .route("/v1/hosts/{name}/actions/{id}/result", post(agents::post_action_result))
        // new routes above this line (and to auth::permissions::TABLE).
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authorize))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(errors_as_json))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        // Outermost: a standby hands every request to the fleet's holder.
        .layer(middleware::from_fn_with_state(state.clone(), crate::forward::to_the_holder))
        .with_state(state)
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
/// The dashboard's own error pages (HTML under `/ui/`) are for people and
/// stay HTML.
async fn errors_as_json(request: Request, next: Next) -> Response {
    let dashboard = request.uri().path().starts_with("/ui/");
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let kind = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if kind.starts_with("application/json") || (dashboard && kind.starts_with("text/html")) {
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
