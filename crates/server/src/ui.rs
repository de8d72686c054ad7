//! The web dashboard (`/ui/`), served by the binary itself: server-rendered
//! HTML (askama), one small script of our own that refreshes the live parts
//! of a page, no CDN and nothing fetched at run time.
//!
//! Login takes an API token once (`/ui/login`, a form with one input named
//! `token`) and opens a session: a random id in an HttpOnly, SameSite=Strict
//! cookie scoped to `/ui`, mapped in memory to the token, which is checked
//! again on every request (a revoked token ends its sessions at once). The
//! API itself never reads a cookie. Forms that change something (log in,
//! acknowledge) refuse a foreign `Origin` and carry the session's CSRF
//! token. A viewer's session shows everything it may read and no button it
//! may not press. The views read the engine and the stores directly, like
//! the API handlers; nothing here is the only way to do anything.

use crate::auth::Identity;
use crate::state::{AppState, Ready};
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use drover_model::TokenRole;
use drover_oncall::{Input, PageId};
use serde::Deserialize;
use std::time::Duration;

/// The cookie that carries a session id.
pub const COOKIE: &str = "drover_session";
/// A session lasts this long from its login.
const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// At most `drover_store::tokens::MAX_SESSIONS` sessions are kept at once
/// (the ones ending soonest go first).
/// The dashboard's own script: refreshes `[data-refresh]` parts.
const SCRIPT: &str = include_str!("../templates/ui/live.js");

/// What a session's token is sealed for (`drover_secrets`).
const SESSION_SEAL: &str = "drover ui session v1";

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: no session rather than a guessable one.
        return String::new();
    }
    hex::encode(bytes)
}

/// A session's id as its row is keyed: the cookie's secret is never stored.
fn id_hash(id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

/// The sessions are in the store (`ui_sessions`), the store every node
/// of a split fleet shares: a session opened through one node is good on
/// every node, and a logout ends it on all of them. A restart keeps them.
async fn open_session(ready: &Ready, token: String) -> Option<(String, String)> {
    let (id, csrf) = (random_hex(), random_hex());
    if id.is_empty() || csrf.is_empty() {
        return None;
    }
    let now = crate::actor::now().0;
    let session = drover_store::tokens::StoredSession {
        token_sealed: ready.node.key.seal_str(SESSION_SEAL, &token),
        csrf: csrf.clone(),
        until: now + SESSION_FOR.as_micros() as i64,
    };
    let (auth, key) = (ready.auth.clone(), id_hash(&id));
    match tokio::task::spawn_blocking(move || auth.store().open_session(&key, &session, now)).await {
        Ok(Ok(())) => Some((id, csrf)),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot store a dashboard session");
            None
        }
        Err(_) => None,
    }
}

/// The token and CSRF token of session `id`, while it lasts.
async fn session(ready: &Ready, id: &str) -> Option<(String, String)> {
    let (auth, key, now) = (ready.auth.clone(), id_hash(id), crate::actor::now().0);
    let stored = match tokio::task::spawn_blocking(move || auth.store().session(&key, now)).await {
        Ok(Ok(stored)) => stored?,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read a dashboard session");
            return None;
        }
        Err(_) => return None,
    };
    let token = ready.node.key.open_str(SESSION_SEAL, &stored.token_sealed).ok()?;
    Some((token, stored.csrf))
}

async fn close_session(ready: &Ready, id: &str) {
    let (auth, key) = (ready.auth.clone(), id_hash(id));
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || auth.store().close_session(&key)).await {
        tracing::warn!(%error, "cannot end a dashboard session");
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The caller of a dashboard request: who, and the session's CSRF token.
struct Viewer {
    who: Identity,
    csrf: String,
    session: String,
    /// The token the session acts with (the routed API is asked with it).
    token: String,
}

async fn viewer(ready: &Ready, headers: &HeaderMap) -> Option<Viewer> {
    let session_id = session_id(headers)?;
    let (token, csrf) = session(ready, &session_id).await?;
    match ready.auth.authenticate(&token, crate::actor::now()) {
        Ok(who) => Some(Viewer { who, csrf, session: session_id, token }),
        Err(_) => {
            close_session(ready, &session_id).await;
            None
        }
    }
}

fn html(status: StatusCode, body: Result<String, askama::Error>) -> Response {
    match body {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render the page: {e}")).into_response(),
    }
}

fn problem(status: StatusCode, who: Option<&Viewer>, message: impl Into<String>) -> Response {
    html(
        status,
        ProblemPage {
            me: who.map(|v| v.who.name.clone()),
            csrf: who.map(|v| v.csrf.clone()).unwrap_or_default(),
            message: message.into(),
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    me: Option<String>,
    csrf: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/problem.html")]
struct ProblemPage {
    me: Option<String>,
    csrf: String,
    message: String,
}

fn login_form(status: StatusCode, error: Option<String>) -> Response {
    html(status, LoginPage { me: None, csrf: String::new(), error }.render())
}

pub(crate) async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    let Ok(ready) = state.ready() else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, None, "Drover is starting; retry in a moment.");
    };
    if let Some(origin) = crate::auth::foreign_origin(&headers) {
        return problem(StatusCode::FORBIDDEN, None, format!("A login from another site ({origin}) is refused."));
    }
    let Some(Form(form)) = form else { return login_form(StatusCode::BAD_REQUEST, Some("Give a token.".into())) };
    let token = form.token.trim().to_string();
    if let Err(refusal) = ready.auth.authenticate(&token, crate::actor::now()) {
        return login_form(StatusCode::UNAUTHORIZED, Some(refusal.message()));
    }
    let Some((id, _)) = open_session(ready, token).await else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, None, "No randomness for a session id; try again.");
    };
    let cookie = format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_FOR.as_secs());
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

pub(crate) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    let Ok(ready) = state.ready() else { return Redirect::to("/ui/login").into_response() };
    if let Some(v) = viewer(ready, &headers).await {
        if form.is_some_and(|f| f.csrf == v.csrf) && crate::auth::foreign_origin(&headers).is_none() {
            close_session(ready, &v.session).await;
        }
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("drover_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        SCRIPT,
    )
        .into_response()
}

/// Resolves the session or answers with the login form.
macro_rules! signed_in {
    ($state:expr, $headers:expr) => {{
        let Ok(ready) = $state.ready() else {
            return problem(StatusCode::SERVICE_UNAVAILABLE, None, "Drover is starting; retry in a moment.");
        };
        match viewer(ready, &$headers).await {
            Some(v) => (ready, v),
            None => return login_form(StatusCode::OK, None),
        }
    }};
}

mod incidents;
mod pager;
mod runbooks;

pub(crate) use incidents::{
    declare as declare_incident, incident, incidents, post_note as incident_note, post_update as incident_update,
};
pub(crate) use pager::pager;
pub(crate) use runbooks::{approve_run, request_run, runbooks, show_run as runbook_run};

/// Operators and admins get forms; viewers read.
fn may_act(v: &Viewer) -> bool {
    matches!(v.who.role, TokenRole::Operator | TokenRole::Admin)
}

/// A form that changes something must come from this dashboard: no
/// foreign `Origin`, and the session's CSRF token among its fields. The
/// refusal to answer with, or `None` when it is fine.
fn csrf_ok(headers: &HeaderMap, v: &Viewer, fields: &[(String, String)]) -> Option<Response> {
    let token = fields.iter().find(|(k, _)| k == "csrf").map(|(_, t)| t.as_str());
    if crate::auth::foreign_origin(headers).is_some() || token != Some(v.csrf.as_str()) {
        return Some(problem(
            StatusCode::FORBIDDEN,
            Some(v),
            "This form did not come from this dashboard; reload the page and try again.",
        ));
    }
    None
}

// ----------------------------------------------------------------------
// Fleet overview
// ----------------------------------------------------------------------

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    me: Option<String>,
    csrf: String,
    by_state: Vec<(String, u64)>,
    by_engine: Vec<(String, u64, u64)>,
    braked: Vec<String>,
    open_pages: usize,
    open_actions: u64,
}

pub(crate) async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, v) = signed_in!(state, headers);
    let Ok((stats, health)) = ready.engine.query(|e| (e.stats(), e.engine_health())).await else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The engine did not answer.");
    };
    let mut by_state: Vec<(String, u64)> =
        stats.services_by_state.iter().map(|(s, n)| (s.as_str().to_string(), *n)).collect();
    let (mut health, mut braked, mut open_actions) = (health, stats.braked, stats.open_actions);
    // On a fleet split between nodes: every shard's part (`fleet_health`).
    let map = ready.node.shards.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some((pg, _)), false) = (&ready.node.shared, map.whole()) {
        match crate::fleet_health::whole(&ready.engine, pg, &map).await {
            Ok((whole, missing)) => {
                for (state, n) in &mut by_state {
                    *n = whole.services_by_state.get(state.as_str()).copied().unwrap_or(0);
                }
                (health, braked, open_actions) = (whole.engines, whole.braked, whole.open_actions);
                if !missing.is_empty() {
                    tracing::warn!(?missing, "the overview has no recent word of these shards: left out");
                }
            }
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), e.message),
        }
    }
    let store = ready.oncall.store.clone();
    let open_pages = match tokio::task::spawn_blocking(move || store.open_pages()).await {
        Ok(Ok(p)) => p.iter().filter(|p| v.who.sees_team(Some(&p.team))).count(),
        _ => 0,
    };
    let page = OverviewPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        by_state,
        by_engine: health
            .iter()
            .map(|h| (crate::status::component_name(h.engine).to_string(), h.live, h.down))
            .collect(),
        braked,
        open_pages,
        open_actions,
    };
    html(StatusCode::OK, page.render())
}

// ----------------------------------------------------------------------
// Services
// ----------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct ServicesFilter {
    state: Option<String>,
    engine: Option<String>,
    after: Option<String>,
}

struct ServiceRow {
    name: String,
    engine: String,
    state: String,
    team: String,
    members: usize,
}

#[derive(Template)]
#[template(path = "ui/services.html")]
struct ServicesPage {
    me: Option<String>,
    csrf: String,
    rows: Vec<ServiceRow>,
    state: String,
    engine: String,
    next: Option<String>,
}

/// Rows per page of the services list.
const SERVICES_PER_PAGE: usize = 200;

pub(crate) async fn services(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<ServicesFilter>,
) -> Response {
    let (ready, v) = signed_in!(state, headers);
    let team = v.who.team.clone();
    let (want_state, want_engine) = (f.state.clone().unwrap_or_default(), f.engine.clone().unwrap_or_default());
    let after = f.after.clone();
    // Filters apply to a page of names; a page may show fewer rows. On a
    // fleet split between nodes, the page of the whole fleet's list, as
    // the API merges it from every holder.
    let split = !ready.node.shards.read().unwrap_or_else(|p| p.into_inner()).whole();
    let page = if split {
        routed_services_page(ready, &v, after.as_deref()).await
    } else {
        ready
            .engine
            .query(move |e| e.service_views_page(after.as_deref(), SERVICES_PER_PAGE, team.as_deref()))
            .await
            .map_err(|e| e.message)
    };
    let (views, more) = match page {
        Ok(page) => page,
        Err(why) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&v),
                format!("The fleet's list is not at hand: {why}"),
            )
        }
    };
    let next = if more { views.last().map(|s| s.name.clone()) } else { None };
    let rows = views
        .into_iter()
        .filter(|s| want_state.is_empty() || s.state.as_str() == want_state)
        .filter(|s| want_engine.is_empty() || s.engine.as_str() == want_engine)
        .map(|s| ServiceRow {
            members: s.instances.iter().filter(|i| i.state.is_member()).count(),
            name: s.name,
            engine: s.engine.as_str().to_string(),
            state: s.state.as_str().to_string(),
            team: s.team,
        })
        .collect();
    html(
        StatusCode::OK,
        ServicesPage {
            me: Some(v.who.name.clone()),
            csrf: v.csrf.clone(),
            rows,
            state: want_state,
            engine: want_engine,
            next,
        }
        .render(),
    )
}

/// A page of the whole fleet's services through this node's own API (the
/// routed one: every holder's part, merged), asked with the session's token.
async fn routed_services_page(
    ready: &Ready,
    v: &Viewer,
    after: Option<&str>,
) -> Result<(Vec<drover_model::ServiceView>, bool), String> {
    let mut url = format!("{}/v1/services?limit={SERVICES_PER_PAGE}", ready.node.url.trim_end_matches('/'));
    if let Some(after) = after {
        url.push_str("&after=");
        url.extend(percent_encoding::utf8_percent_encode(after, percent_encoding::NON_ALPHANUMERIC));
    }
    let answer =
        crate::forward::node_client().get(&url).bearer_auth(&v.token).send().await.map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        return Err(format!("{status}: {text}"));
    }
    let more =
        answer.headers().get(header::LINK).and_then(|l| l.to_str().ok()).is_some_and(|l| l.contains("rel=\"next\""));
    let views = answer.json::<Vec<drover_model::ServiceView>>().await.map_err(|e| e.to_string())?;
    Ok((views, more))
}

struct InstanceRow {
    id: String,
    role: String,
    state: String,
    zone: String,
    host: String,
    image: String,
    writable: bool,
    lag: String,
}

struct EventRow {
    at: String,
    what: String,
    cause: String,
}

#[derive(Template)]
#[template(path = "ui/service_live.html")]
struct ServiceLive {
    state: String,
    remedy: String,
    instances: Vec<InstanceRow>,
    events: Vec<EventRow>,
}

struct CheckRow {
    facet: String,
    status: String,
    summary: String,
    evidence: String,
}

#[derive(Template)]
#[template(path = "ui/service.html")]
struct ServicePage {
    me: Option<String>,
    csrf: String,
    name: String,
    engine: String,
    team: String,
    url: String,
    live: String,
    checks: Vec<CheckRow>,
}

/// The service's checks (the same as `GET /v1/services/{name}/checks`),
/// one row per facet with its evidence.
async fn check_rows(ready: &Ready, view: &drover_model::ServiceView) -> Vec<CheckRow> {
    let checks = crate::checks::of_service(ready, view).await;
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&checks) else { return Vec::new() };
    map.into_iter()
        .filter(|(_, v)| v.is_object())
        .map(|(facet, v)| CheckRow {
            facet,
            status: v["status"].as_str().unwrap_or("unknown").to_string(),
            summary: v["summary"].as_str().unwrap_or("").to_string(),
            evidence: v.get("evidence").map(|e| e.to_string()).unwrap_or_default(),
        })
        .collect()
}

/// Events shown on a service page, newest first.
const SERVICE_EVENTS: usize = 50;

async fn service_live(ready: &Ready, v: &Viewer, name: &str) -> Result<(drover_model::ServiceView, String), Response> {
    let view = match ready.visible_service(&v.who, name).await {
        Ok(view) => ready.complete(view, &v.who),
        Err(e) => return Err(problem(e.status, Some(v), e.message)),
    };
    let filter = drover_store::EventFilter {
        service: Some(view.name.clone()),
        instance: None,
        after_seq: None,
        limit: Some(drover_store::MAX_READ_LIMIT),
    };
    let store = ready.store.clone();
    let events = match tokio::task::spawn_blocking(move || store.events(&filter)).await {
        Ok(Ok(events)) => events,
        _ => Vec::new(),
    };
    let live = ServiceLive {
        state: view.state.as_str().to_string(),
        remedy: view.remedy.clone().unwrap_or_default(),
        instances: view
            .instances
            .iter()
            .map(|i| InstanceRow {
                id: i.id.to_string(),
                role: serde_json::to_value(i.role)
                    .ok()
                    .and_then(|r| r.as_str().map(str::to_string))
                    .unwrap_or_default(),
                state: i.state.as_str().to_string(),
                zone: i.zone.clone(),
                host: i.host.clone().unwrap_or_default(),
                image: i.image.clone(),
                writable: i.writable,
                lag: i.facts.replication_lag_bytes.map(|b| format!("{b} B")).unwrap_or_default(),
            })
            .collect(),
        events: events
            .iter()
            .rev()
            .take(SERVICE_EVENTS)
            .map(|e| EventRow {
                at: e.at.to_rfc3339(),
                what: match (&e.from, &e.to) {
                    (Some(f), Some(t)) => format!("{:?} {f} → {t}", e.subject).to_lowercase(),
                    (None, Some(t)) => format!("{:?} → {t}", e.subject).to_lowercase(),
                    _ => format!("{:?}", e.subject).to_lowercase(),
                },
                cause: e.cause.clone(),
            })
            .collect(),
    };
    match live.render() {
        Ok(html) => Ok((view, html)),
        Err(e) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, Some(v), format!("cannot render: {e}"))),
    }
}

pub(crate) async fn service(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let (ready, v) = signed_in!(state, headers);
    let (view, live) = match service_live(ready, &v, &name).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let page = ServicePage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        name: view.name.clone(),
        engine: view.engine.as_str().to_string(),
        team: view.team.clone(),
        url: view.url.clone().unwrap_or_default(),
        checks: check_rows(ready, &view).await,
        live,
    };
    html(StatusCode::OK, page.render())
}

/// The live part of a service page alone (what the script swaps in).
pub(crate) async fn service_fragment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Ok(ready) = state.ready() else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    let Some(v) = viewer(ready, &headers).await else { return StatusCode::UNAUTHORIZED.into_response() };
    match service_live(ready, &v, &name).await {
        Ok((_, live)) => html(StatusCode::OK, Ok(live)),
        Err(r) => r,
    }
}

// ----------------------------------------------------------------------
// Rollouts and images
// ----------------------------------------------------------------------

struct RolloutRow {
    id: String,
    state: String,
    image: String,
    done: u64,
    total: u64,
    failed: u64,
    moving: u64,
    wave: String,
    eta: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "ui/rollouts_live.html")]
struct RolloutsLive {
    rows: Vec<RolloutRow>,
}

#[derive(Template)]
#[template(path = "ui/rollouts.html")]
struct RolloutsPage {
    me: Option<String>,
    csrf: String,
    live: String,
}

async fn rollouts_live(ready: &Ready) -> Result<String, Response> {
    let now = drover_model::Timestamp(crate::actor::now().0);
    let Ok(views) = ready.engine.query(move |e| e.rollout_views(now)).await else {
        return Err(problem(StatusCode::SERVICE_UNAVAILABLE, None, "The engine did not answer."));
    };
    let mut rows: Vec<RolloutRow> = views
        .into_iter()
        .map(|r| RolloutRow {
            id: r.id.to_string(),
            state: serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            image: r.to_image.to_string(),
            done: r.done,
            total: r.total,
            failed: r.failed,
            moving: r.moving,
            wave: format!("{} of {}", (r.wave as usize + 1).min(r.waves.len().max(1)), r.waves.len().max(1)),
            eta: r.eta_seconds.map(|s| format!("{}m {:02}s", s / 60, s % 60)).unwrap_or_else(|| "—".into()),
            reason: r.reason.unwrap_or_default(),
        })
        .collect();
    rows.reverse();
    RolloutsLive { rows }
        .render()
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, None, format!("cannot render: {e}")))
}

pub(crate) async fn rollouts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, v) = signed_in!(state, headers);
    match rollouts_live(ready).await {
        Ok(live) => {
            html(StatusCode::OK, RolloutsPage { me: Some(v.who.name.clone()), csrf: v.csrf.clone(), live }.render())
        }
        Err(r) => r,
    }
}

pub(crate) async fn rollouts_fragment(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Ok(ready) = state.ready() else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    if viewer(ready, &headers).await.is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match rollouts_live(ready).await {
        Ok(live) => html(StatusCode::OK, Ok(live)),
        Err(r) => r,
    }
}

struct ImageRow {
    id: String,
    engine: String,
    version: String,
    settings: String,
    packages: usize,
}

struct FindingRow {
    advisory: String,
    package: String,
    installed: String,
    fixed: String,
    images: Vec<String>,
    services: Vec<String>,
    instances: u64,
    owners: String,
    summary: String,
}

#[derive(Template)]
#[template(path = "ui/images.html")]
struct ImagesPage {
    me: Option<String>,
    csrf: String,
    rows: Vec<ImageRow>,
    findings: Vec<FindingRow>,
    stale: bool,
    audit_error: String,
}

pub(crate) async fn images(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, v) = signed_in!(state, headers);
    let Ok(list) = ready.engine.query(|e| e.images()).await else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The engine did not answer.");
    };
    let rows = list
        .iter()
        .map(|i| ImageRow {
            id: i.id.to_string(),
            engine: i.engine.as_str().to_string(),
            version: i.version.clone(),
            settings: i.settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
            packages: i.manifest.len(),
        })
        .collect();
    // The CVE audit, as `GET /v1/advisories/audit` answers this caller.
    let (findings, stale, audit_error) =
        match crate::advisories::audit(State(state.clone()), crate::auth::Caller(v.who.clone())).await {
            Ok(([(_, stale)], crate::error::Json(findings))) => (
                findings
                    .into_iter()
                    .map(|f| FindingRow {
                        advisory: f.advisory,
                        package: f.package,
                        installed: f.installed,
                        fixed: f.fixed.unwrap_or_else(|| "no fix yet".into()),
                        images: f.images.iter().map(|i| i.to_string()).collect(),
                        services: f.services,
                        instances: f.instances,
                        owners: f.owners.join(", "),
                        summary: f.summary.unwrap_or_default(),
                    })
                    .collect(),
                stale == "true",
                String::new(),
            ),
            Err(e) => (Vec::new(), false, e.message),
        };
    html(
        StatusCode::OK,
        ImagesPage { me: Some(v.who.name.clone()), csrf: v.csrf.clone(), rows, findings, stale, audit_error }.render(),
    )
}

// ----------------------------------------------------------------------
// Pages
// ----------------------------------------------------------------------

struct PageRow {
    id: String,
    summary: String,
    team: String,
    status: String,
    level: String,
    opened: String,
}

#[derive(Template)]
#[template(path = "ui/pages.html")]
struct PagesPage {
    me: Option<String>,
    csrf: String,
    may_act: bool,
    rows: Vec<PageRow>,
    notice: String,
}

#[derive(Deserialize)]
pub(crate) struct PagesNotice {
    acknowledged: Option<String>,
}

pub(crate) async fn pages(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<PagesNotice>) -> Response {
    let (ready, v) = signed_in!(state, headers);
    let store = ready.oncall.store.clone();
    let open = match tokio::task::spawn_blocking(move || store.open_pages()).await {
        Ok(Ok(p)) => p,
        _ => return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The on-call store did not answer."),
    };
    let mut rows: Vec<PageRow> = open
        .into_iter()
        .filter(|p| v.who.sees_team(Some(&p.team)))
        .map(|p| PageRow {
            id: p.id.to_string(),
            summary: p.summary.clone(),
            team: p.team.clone(),
            status: p.status.name().to_string(),
            level: p.level_name.clone(),
            opened: p.opened_at.to_rfc3339(),
        })
        .collect();
    rows.sort_by(|a, b| b.opened.cmp(&a.opened));
    let page = PagesPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        may_act: may_act(&v),
        rows,
        notice: q.acknowledged.map(|id| format!("Page {id} acknowledged.")).unwrap_or_default(),
    };
    html(StatusCode::OK, page.render())
}

pub(crate) async fn acknowledge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    let (ready, v) = signed_in!(state, headers);
    if crate::auth::foreign_origin(&headers).is_some() || form.is_none_or(|f| f.csrf != v.csrf) {
        return problem(
            StatusCode::FORBIDDEN,
            Some(&v),
            "This form did not come from this dashboard; reload the page and try again.",
        );
    }
    if !matches!(v.who.role, TokenRole::Operator | TokenRole::Admin) {
        return problem(StatusCode::FORBIDDEN, Some(&v), "Acknowledging a page needs an operator or admin token.");
    }
    let Ok(page) = id.parse::<PageId>() else {
        return problem(StatusCode::NOT_FOUND, Some(&v), format!("No page {id}."));
    };
    let store = ready.oncall.store.clone();
    let found = tokio::task::spawn_blocking(move || store.page(page)).await;
    if !matches!(&found, Ok(Ok(Some(p))) if v.who.sees_team(Some(&p.team))) {
        return problem(StatusCode::NOT_FOUND, Some(&v), format!("No page {id}."));
    }
    match ready.oncall.call(Input::Acknowledge { page, by: v.who.name.clone() }).await {
        Ok(_) => Redirect::to(&format!("/ui/pages?acknowledged={page}")).into_response(),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            problem(StatusCode::CONFLICT, Some(&v), format!("Page {id} is no longer open."))
        }
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; drover_session=abc; b=2"));
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        assert_eq!(session_id(&HeaderMap::new()), None);
        assert_eq!(random_hex().len(), 64);
        assert_ne!(id_hash("abc"), "abc");
    }
}
