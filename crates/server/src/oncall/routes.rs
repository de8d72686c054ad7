//! On-call HTTP routes: integrations in, pages, acknowledgements (API and
//! signed links), the feed, pager metrics and their chart.

use super::PagerHandle;
use crate::auth::permissions::Permission;
use crate::auth::{Caller, Identity};
use crate::error::{ApiError, Json, Path, Query};
use crate::request::limit_in;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use drover_oncall::integrations::{self, AlertmanagerPayload, EventV2};
use drover_oncall::{metrics, sign, AlertOutcome, Input, Page, PageId, PageStatus, Reply};
use serde::{Deserialize, Serialize};

/// Default and largest number of pages or feed posts listed.
pub const DEFAULT_LIMIT: usize = 200;
pub const MAX_LIMIT: usize = 10_000;
/// Weeks of metrics by default and at most.
pub const DEFAULT_WEEKS: usize = 8;
pub const MAX_WEEKS: usize = 104;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/integrations/alertmanager", post(post_alertmanager))
        .route("/v1/integrations/events-v2", post(post_event_v2))
        .route("/v1/pages", get(list_pages))
        .route("/v1/pages/{id}", get(show_page))
        .route("/v1/pages/{id}/ack", post(post_ack).get(link_ack))
        .route("/v1/pages/{id}/resolve", post(post_resolve).get(link_resolve))
        .route("/v1/pager/metrics", get(pager_metrics))
        .route("/v1/pager/metrics.svg", get(pager_metrics_svg))
        .route("/v1/pager/feed", get(pager_feed))
        .route("/v1/pager/oncall", get(on_call_now))
}

fn pager(state: &AppState) -> Result<&PagerHandle, ApiError> {
    state.ready.get().map(|r| &r.oncall).ok_or_else(|| ApiError::unavailable("Drover is starting; retry in a moment"))
}

/// Runs an `oncall.db` call on a blocking thread; its errors as 503 (the
/// store could not answer) or 500 (the task failed).
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, drover_store::oncall::OncallStoreError> + Send + 'static,
) -> Result<R, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("the on-call store could not answer: {e}"))),
        Err(e) => Err(ApiError::internal(format!("on-call store task failed: {e}"))),
    }
}

fn parse_page_id(text: &str) -> Result<PageId, ApiError> {
    text.parse().map_err(|e| ApiError::bad_request(format!("page id {text:?} is not a UUID: {e}")))
}

/// Alertmanager's webhook receiver (payload version 4): one page per group.
/// Alertmanager sends an integration token as its bearer credential
/// (`http_config.authorization`); the token's team is where the page goes.
#[utoipa::path(post, path = "/v1/integrations/alertmanager", tag = "oncall",
    request_body(content = AlertmanagerPayload, description = "Prometheus Alertmanager webhook payload, version 4"),
    responses((status = 200, description = "Alerts taken: one page per alert group", body = AlertOutcome)))]
pub(crate) async fn post_alertmanager(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(payload): Json<AlertmanagerPayload>,
) -> Result<Json<AlertOutcome>, ApiError> {
    let pager = pager(&state)?;
    let mut alert = integrations::from_alertmanager(&payload).map_err(ApiError::bad_request)?;
    if caller.team.is_some() {
        alert.team = caller.team.clone();
    }
    match pager.call(Input::Alert(alert)).await? {
        Reply::Alert(outcome) => Ok(Json(outcome)),
        Reply::Page(_) | Reply::Announced => Err(ApiError::internal("the pager answered an alert with no outcome")),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventResponse {
    status: &'static str,
    message: &'static str,
    dedup_key: String,
    /// What Drover did with it (`opened`, `deduplicated`, …) and the page.
    result: String,
    page: Option<PageId>,
}

/// Events API v2: trigger, acknowledge, resolve by `dedup_key`. The
/// `routing_key` is an integration token (or the token comes as the bearer
/// credential); the token's team is where the page goes.
#[utoipa::path(post, path = "/v1/integrations/events-v2", tag = "oncall",
    request_body(content = EventV2, description = "PagerDuty Events API v2 shaped event: routing_key (an integration token), event_action, dedup_key, payload"),
    responses((status = 202, description = "Event processed", body = EventResponse)))]
pub(crate) async fn post_event_v2(
    State(state): State<AppState>,
    caller: Option<Caller>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let pager = pager(&state)?;
    // Without a bearer token the routing_key is the credential: checked
    // before anything else of the body (a body without one is a 401).
    let caller = match caller {
        Some(Caller(id)) => id,
        None => {
            let key = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("routing_key").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_default();
            let path = "/v1/integrations/events-v2";
            crate::auth::authenticate_key(&state, &key, Permission::Alert, &format!("POST {path}"), path).await?
        }
    };
    if !crate::auth::is_json(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a request body with `Content-Type: application/json`",
        ));
    }
    let mut event: EventV2 = crate::error::parse_json_body(&body)?;
    // The token names the team: the event goes to it whatever else it says.
    event.routing_key = caller.team.clone().unwrap_or_else(|| pager.config.default_team.clone());
    let alert = integrations::from_event_v2(&event, &pager.config, || {
        drover_oncall::PageId::new_at(crate::actor::now().0, rand_u64()).to_string()
    })
    .map_err(ApiError::bad_request)?;
    match pager.call(Input::Alert(alert)).await? {
        Reply::Alert(o) => Ok((
            StatusCode::ACCEPTED,
            Json(EventResponse {
                status: "success",
                message: "Event processed",
                dedup_key: o.dedup_key,
                result: o.result,
                page: o.page,
            }),
        )
            .into_response()),
        Reply::Page(_) | Reply::Announced => Err(ApiError::internal("the pager answered an event with no outcome")),
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(crate::actor::now().0);
    h.finish()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PagesQuery {
    /// `triggered`, `acknowledged`, `resolved`, or `open` (the first two).
    #[param(inline, value_type = Option<PagesStatus>)]
    status: Option<String>,
    /// Only this team's pages.
    team: Option<String>,
    /// At most this many (default 200).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The `status` filter of `GET /v1/pages` (documentation only).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum PagesStatus {
    Triggered,
    Acknowledged,
    Resolved,
    Open,
}

/// Pages, newest first.
#[utoipa::path(get, path = "/v1/pages", tag = "oncall", params(PagesQuery),
    responses((status = 200, description = "Pages, newest first", body = Vec<Page>)))]
pub(crate) async fn list_pages(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(mut q): Query<PagesQuery>,
) -> Result<Json<Vec<Page>>, ApiError> {
    let pager = pager(&state)?;
    if let Some(mine) = &caller.team {
        match &q.team {
            Some(team) if team != mine => return Ok(Json(Vec::new())),
            _ => q.team = Some(mine.clone()),
        }
    }
    let limit = limit_in(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let (status, open_only) = match q.status.as_deref() {
        None => (None, false),
        Some("open") => (None, true),
        Some("triggered") => (Some(PageStatus::Triggered), false),
        Some("acknowledged") => (Some(PageStatus::Acknowledged), false),
        Some("resolved") => (Some(PageStatus::Resolved), false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status {other:?} must be triggered, acknowledged, resolved or open"
            )))
        }
    };
    let store = pager.store.clone();
    let team = q.team.clone();
    let mut pages =
        blocking(move || store.pages(status, team.as_deref(), if open_only { MAX_LIMIT } else { limit })).await?;
    if open_only {
        pages.retain(|p| p.is_open());
        pages.truncate(limit);
    }
    Ok(Json(pages))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PageDetail {
    #[serde(flatten)]
    page: Page,
    transitions: Vec<drover_oncall::Transition>,
    notifications: Vec<drover_store::oncall::NotificationRecord>,
}

/// One page with its transitions and notifications.
#[utoipa::path(get, path = "/v1/pages/{id}", tag = "oncall", params(("id" = String, Path, description = "Page id (UUID)")),
    responses((status = 200, description = "A page with its transitions and notifications", body = PageDetail),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn show_page(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<PageDetail>, ApiError> {
    let pager = pager(&state)?;
    let id = parse_page_id(&id)?;
    let store = pager.store.clone();
    let mut detail = blocking(move || {
        let Some(page) = store.page(id)? else { return Ok(None) };
        Ok(Some(PageDetail { page, transitions: store.transitions(id)?, notifications: store.notifications(id)? }))
    })
    .await?;
    // Webhook URLs are stored sealed; the API names them by host only.
    for n in detail.iter_mut().flat_map(|d| d.notifications.iter_mut()) {
        n.notification.recipient.redact_contacts(|c| pager.deliverer.shown_address(c));
    }
    detail
        .filter(|d| caller.sees_team(Some(&d.page.team)))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no page {id}")))
}

async fn act(pager: &PagerHandle, id: PageId, input: Input) -> Result<Page, ApiError> {
    match pager.call(input).await {
        Ok(Reply::Page(p)) => Ok(*p),
        Ok(Reply::Alert(_) | Reply::Announced) => Err(ApiError::internal("the pager answered with no page")),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            // Not open: say whether it exists at all.
            let store = pager.store.clone();
            match blocking(move || store.page(id)).await? {
                Some(p) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "page {id} is already {} (at {})",
                        p.status.name(),
                        p.resolved_at.map(|t| t.to_string()).unwrap_or_default()
                    ),
                )),
                None => Err(ApiError::not_found(format!("no page {id}"))),
            }
        }
        Err(e) => Err(e),
    }
}

/// A page the caller may act on: a team's token acts on its team's pages.
async fn visible_page(pager: &PagerHandle, caller: &Identity, id: PageId) -> Result<(), ApiError> {
    if caller.team.is_none() {
        return Ok(());
    }
    let store = pager.store.clone();
    match blocking(move || store.page(id)).await? {
        Some(p) if caller.sees_team(Some(&p.team)) => Ok(()),
        _ => Err(ApiError::not_found(format!("no page {id}"))),
    }
}

/// Acknowledge a page.
#[utoipa::path(post, path = "/v1/pages/{id}/ack", tag = "oncall",
    params(("id" = String, Path, description = "Page id (UUID)")),
    responses((status = 200, description = "The acknowledged page", body = Page), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn post_ack(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Page>, ApiError> {
    let pager = pager(&state)?;
    let id = parse_page_id(&id)?;
    visible_page(pager, &caller, id).await?;
    let by = caller.name;
    Ok(Json(act(pager, id, Input::Acknowledge { page: id, by }).await?))
}

/// Resolve a page.
#[utoipa::path(post, path = "/v1/pages/{id}/resolve", tag = "oncall",
    params(("id" = String, Path, description = "Page id (UUID)")),
    responses((status = 200, description = "The resolved page", body = Page), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn post_resolve(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Page>, ApiError> {
    let pager = pager(&state)?;
    let id = parse_page_id(&id)?;
    visible_page(pager, &caller, id).await?;
    let by = caller.name;
    Ok(Json(act(pager, id, Input::Resolve { page: id, by }).await?))
}

#[derive(Debug, Deserialize)]
pub struct SignedQuery {
    sig: Option<String>,
}

async fn signed(state: AppState, id: String, q: SignedQuery, action: &'static str) -> Result<Json<Page>, ApiError> {
    let pager = pager(&state)?;
    let id = parse_page_id(&id)?;
    let sig = q.sig.ok_or_else(|| {
        ApiError::new(StatusCode::FORBIDDEN, "this link needs its sig parameter; use the link from the notification")
    })?;
    if !sign::verify(&pager.secret, id, action, &sig) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "the link's signature does not match this page and action"));
    }
    let input = match action {
        "ack" => Input::Acknowledge { page: id, by: "signed link".into() },
        _ => Input::Resolve { page: id, by: "signed link".into() },
    };
    Ok(Json(act(pager, id, input).await?))
}

/// The acknowledge link in a notification (`?sig=` is HMAC of page id and action).
#[utoipa::path(get, path = "/v1/pages/{id}/ack", tag = "oncall",
    params(("id" = String, Path, description = "Page id (UUID)"), ("sig" = String, Query, description = "The link's signature")),
    responses((status = 200, description = "Acknowledged through a signed link", body = Page),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn link_ack(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SignedQuery>,
) -> Result<Json<Page>, ApiError> {
    signed(state, id, q, "ack").await
}

#[utoipa::path(get, path = "/v1/pages/{id}/resolve", tag = "oncall",
    params(("id" = String, Path, description = "Page id (UUID)"), ("sig" = String, Query, description = "The link's signature")),
    responses((status = 200, description = "Resolved through a signed link", body = Page),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn link_resolve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SignedQuery>,
) -> Result<Json<Page>, ApiError> {
    signed(state, id, q, "resolve").await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// The team (default: the default team).
    team: Option<String>,
    /// Weeks back (default 8).
    #[param(minimum = 1, maximum = 104)]
    weeks: Option<usize>,
    /// RFC 3339: metrics as of this instant (default: now).
    #[param(format = DateTime)]
    at: Option<String>,
}

async fn compute_metrics(
    state: &AppState,
    caller: &Identity,
    q: MetricsQuery,
) -> Result<(String, Vec<metrics::WeekMetrics>), ApiError> {
    let pager = pager(state)?;
    let team_name = q.team.or_else(|| caller.team.clone()).unwrap_or_else(|| pager.config.default_team.clone());
    if !caller.sees_team(Some(&team_name)) {
        return Err(ApiError::not_found(format!("no team {team_name:?}")));
    }
    let team = pager.config.team(&team_name).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "no team {team_name:?}; teams: {}",
            pager.config.teams.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let weeks = q.weeks.unwrap_or(DEFAULT_WEEKS);
    if weeks == 0 || weeks > MAX_WEEKS {
        return Err(ApiError::bad_request(format!("weeks must be 1 to {MAX_WEEKS}")));
    }
    let now = match q.at {
        Some(t) => drover_model::Timestamp::parse(&t).map_err(ApiError::bad_request)?,
        None => crate::actor::now(),
    };
    // Three extra weeks feed the first week's rolling average; one more for zone slack.
    let since = drover_model::Timestamp(now.0 - (weeks as i64 + 4) * 7 * 86_400_000_000);
    let store = pager.store.clone();
    let name = team_name.clone();
    let pages = blocking(move || store.team_pages_since(&name, since)).await?;
    Ok((team_name, metrics::weekly(&team, &pages, now, weeks)))
}

/// Pager metrics per week for a team, oldest week first.
#[utoipa::path(get, path = "/v1/pager/metrics", tag = "oncall", params(MetricsQuery),
    responses((status = 200, description = "One object per week", body = Vec<metrics::WeekMetrics>),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn pager_metrics(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<Vec<metrics::WeekMetrics>>, ApiError> {
    Ok(Json(compute_metrics(&state, &caller, q).await?.1))
}

/// The same as an SVG bar chart.
#[utoipa::path(get, path = "/v1/pager/metrics.svg", tag = "oncall", params(MetricsQuery),
    responses((status = 200, description = "The weekly pager chart", content_type = "image/svg+xml", body = String),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn pager_metrics_svg(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<MetricsQuery>,
) -> Result<Response, ApiError> {
    let (team, weeks) = compute_metrics(&state, &caller, q).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"))], metrics::svg(&team, &weeks))
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// At most this many, newest first (default 200).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// Only posts with a sequence number above this.
    after: Option<i64>,
}

/// The company-wide feed, newest first: every page event (a token limited
/// to a team: that team's posts only).
#[utoipa::path(get, path = "/v1/pager/feed", tag = "oncall", params(FeedQuery),
    responses((status = 200, description = "The company-wide feed: every page change (a team's token: its team's)", body = Vec<drover_store::oncall::FeedRecord>)))]
pub(crate) async fn pager_feed(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(q): Query<FeedQuery>,
) -> Result<Json<Vec<drover_store::oncall::FeedRecord>>, ApiError> {
    let pager = pager(&state)?;
    let store = pager.store.clone();
    let limit = limit_in(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok(Json(
        blocking(move || match &caller.team {
            Some(team) => store.team_feed(team, limit, q.after),
            None => store.feed(limit, q.after),
        })
        .await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OnCall {
    team: String,
    schedule: String,
    person: Option<String>,
    next_handoff: Option<drover_model::Timestamp>,
}

/// Who is on call now, per team schedule (and the incident commander); a
/// token limited to a team sees its team's schedules (and the commander).
#[utoipa::path(get, path = "/v1/pager/oncall", tag = "oncall",
    responses((status = 200, description = "Who is on call now, per team schedule; team `*` is the incident commander", body = Vec<OnCall>)))]
pub(crate) async fn on_call_now(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<OnCall>>, ApiError> {
    let pager = pager(&state)?;
    let now = crate::actor::now();
    let mut out = Vec::new();
    for t in pager.config.teams.iter().filter(|t| caller.sees_team(Some(&t.name))) {
        for s in &t.schedules {
            out.push(OnCall {
                team: t.name.clone(),
                schedule: s.name.clone(),
                person: s.on_call(now).map(str::to_string),
                next_handoff: s.next_handoff(now),
            });
        }
    }
    let ic = &pager.config.incident_commanders;
    out.push(OnCall {
        team: "*".into(),
        schedule: ic.name.clone(),
        person: ic.on_call(now).map(str::to_string),
        next_handoff: ic.next_handoff(now),
    });
    Ok(Json(out))
}
