//! The public status site (`/status`, `/status/feed.atom`) and the
//! incidents behind it (`/v1/incidents`).
//!
//! Components are derived from the fleet: one per engine in use, named as
//! people say it (PostgreSQL, Redis, Kafka), its state from the share of
//! its services that are down and from the mass-uncertainty brake
//! (`drover_oncall::status`). A sampler stores each component's state
//! every `sample_every` into `oncall.db`, which gives the 90-day uptime
//! bars. The page is plain HTML without JavaScript, cacheable for a few
//! seconds, and names no service, instance, host or team.

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path, Query};
use crate::oncall::routes::blocking;
use crate::request::limit_in;
use crate::state::{AppState, Ready};
use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_model::{EngineKind, IncidentId, PageId, Timestamp};
use drover_oncall::status::{
    component_state, uptime_over, ComponentState, Incident, IncidentError, IncidentSeverity, IncidentStatus,
    Thresholds, TimelineEntry, UptimeDay,
};
use drover_oncall::FeedPost;
use serde::Deserialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Days of uptime history on the page.
pub const HISTORY_DAYS: usize = 90;
/// Resolved incidents stay on the page this long.
const PAST_INCIDENTS: Duration = Duration::from_secs(14 * 86_400);
/// The page's own answer is reused this long (and cacheable as long).
const CACHE_FOR: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct StatusOptions {
    pub thresholds: Thresholds,
    /// How often each component's state is sampled for its uptime.
    pub sample_every: Duration,
    /// The page's title.
    pub title: String,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            thresholds: Thresholds::default(),
            sample_every: Duration::from_secs(60),
            title: "Drover status".into(),
        }
    }
}

/// What the handlers keep between requests.
pub struct StatusSite {
    pub options: StatusOptions,
    cache: Mutex<Option<(Instant, Arc<String>)>>,
}

impl StatusSite {
    pub fn new(options: StatusOptions) -> StatusSite {
        StatusSite { options, cache: Mutex::new(None) }
    }
}

/// The component of an engine, as people say it.
pub fn component_name(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Postgres => "PostgreSQL",
        EngineKind::Redis => "Redis",
        EngineKind::Kafka => "Kafka",
    }
}

/// Every component name an incident may name.
pub const COMPONENTS: [&str; 3] = ["PostgreSQL", "Redis", "Kafka"];

/// Each component in use and its state now: the whole fleet's, summed
/// from every shard's holder on a fleet split between nodes
/// (`fleet_health`).
pub async fn components_now(ready: &Ready, t: &Thresholds) -> Result<Vec<(String, ComponentState)>, ApiError> {
    let map = ready.node.shards.read().unwrap_or_else(|p| p.into_inner()).clone();
    let health = match &ready.node.shared {
        Some((pg, _)) if !map.whole() => {
            let (health, missing) = crate::fleet_health::whole(&ready.engine, pg, &map).await?;
            if !missing.is_empty() {
                tracing::warn!(?missing, "the status site has no recent word of these shards: left out");
            }
            health.engines
        }
        _ => ready.engine.query(|engine| engine.engine_health()).await?,
    };
    Ok(health
        .iter()
        .map(|h| (component_name(h.engine).to_string(), component_state(h.live, h.down, h.braked, t)))
        .collect())
}

fn day_of(t: Timestamp) -> String {
    match jiff::Timestamp::from_microsecond(t.0) {
        Ok(ts) => ts.to_zoned(jiff::tz::TimeZone::UTC).date().to_string(),
        Err(_) => "1970-01-01".into(),
    }
}

/// Samples every component's state every `every` into `oncall.db`, on
/// the node that runs the fleet's jobs (`zero`).
pub fn spawn_sampler(ready: Arc<OnceLock<Ready>>, zero: crate::held::ShardZero, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let every = ready.get().map_or(Duration::from_secs(1), |r| r.status.options.sample_every);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let Some(r) = ready.get() else { continue };
            if !zero.here() {
                continue;
            }
            let Ok(components) = components_now(r, &r.status.options.thresholds).await else { continue };
            let store = r.oncall.store.clone();
            let day = day_of(crate::actor::now());
            let stored = tokio::task::spawn_blocking(move || store.add_component_samples(&day, &components)).await;
            if let Ok(Err(e)) = stored {
                tracing::warn!(error = %e, "cannot store the status components' samples");
            }
        }
    });
}

// ----------------------------------------------------------------------
// The page
// ----------------------------------------------------------------------

struct Bar {
    day: String,
    class: &'static str,
    title: String,
}

struct ComponentRow {
    name: String,
    state: ComponentState,
    uptime: String,
    bars: Vec<Bar>,
}

struct IncidentRow {
    title: String,
    status: IncidentStatus,
    severity: IncidentSeverity,
    components: String,
    updates: Vec<(String, IncidentStatus, String)>,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    title: String,
    overall: ComponentState,
    components: Vec<ComponentRow>,
    open: Vec<IncidentRow>,
    past: Vec<IncidentRow>,
    generated: String,
}

fn bar_class(day: Option<&UptimeDay>) -> &'static str {
    match day.filter(|d| d.samples > 0).map(UptimeDay::worst) {
        None => "none",
        Some(ComponentState::Operational) => "ok",
        Some(ComponentState::DegradedPerformance) => "degraded",
        Some(ComponentState::PartialOutage) => "partial",
        Some(ComponentState::MajorOutage) => "major",
    }
}

fn incident_row(i: &Incident) -> IncidentRow {
    IncidentRow {
        title: i.title.clone(),
        status: i.status,
        severity: i.severity,
        components: i.components.join(", "),
        updates: i.updates.iter().rev().map(|u| (u.at.to_rfc3339(), u.status, u.message.clone())).collect(),
    }
}

async fn render(ready: &Ready) -> Result<String, ApiError> {
    let site = &ready.status;
    let now = crate::actor::now();
    let mut components = components_now(ready, &site.options.thresholds).await?;
    // An incident names components by hand: show those too.
    let since = Timestamp(now.0 - PAST_INCIDENTS.as_micros() as i64);
    let store = ready.oncall.store.clone();
    let incidents = blocking(move || store.incidents(since, 50)).await?;
    for i in &incidents {
        for c in &i.components {
            if !components.iter().any(|(n, _)| n == c) {
                components.push((c.clone(), ComponentState::Operational));
            }
        }
    }
    // Open incidents raise a component to at least what their severity says.
    for i in incidents.iter().filter(|i| i.resolved_at.is_none()) {
        let floor = match i.severity {
            IncidentSeverity::Minor => ComponentState::DegradedPerformance,
            IncidentSeverity::Major => ComponentState::PartialOutage,
            IncidentSeverity::Critical => ComponentState::MajorOutage,
        };
        for (_, state) in components.iter_mut().filter(|(n, _)| i.components.contains(n)) {
            *state = (*state).max(floor);
        }
    }
    let days: Vec<String> =
        (0..HISTORY_DAYS).rev().map(|k| day_of(Timestamp(now.0 - (k as i64) * 86_400 * 1_000_000))).collect();
    let first = days[0].clone();
    let mut rows = Vec::new();
    for (name, state) in &components {
        let (store, n, f) = (ready.oncall.store.clone(), name.clone(), first.clone());
        let history = blocking(move || store.component_days(&n, &f)).await?;
        let bars = days
            .iter()
            .map(|d| {
                let day = history.iter().find(|h| &h.day == d);
                let title = match day.and_then(UptimeDay::uptime) {
                    Some(u) => {
                        format!("{d}: {:.2}% up, worst {}", u * 100.0, day.map(|x| x.worst().label()).unwrap_or(""))
                    }
                    None => format!("{d}: no data"),
                };
                Bar { day: d.clone(), class: bar_class(day), title }
            })
            .collect();
        let uptime = match uptime_over(&history) {
            Some(u) => format!("{:.2}% uptime", u * 100.0),
            None => "no data yet".into(),
        };
        rows.push(ComponentRow { name: name.clone(), state: *state, uptime, bars });
    }
    let overall = rows.iter().map(|r| r.state).max().unwrap_or(ComponentState::Operational);
    let page = StatusPage {
        title: site.options.title.clone(),
        overall,
        components: rows,
        open: incidents.iter().filter(|i| i.resolved_at.is_none()).map(incident_row).collect(),
        past: incidents.iter().filter(|i| i.resolved_at.is_some()).map(incident_row).collect(),
        generated: now.to_rfc3339(),
    };
    page.render().map_err(|e| ApiError::internal(format!("cannot render the status page: {e}")))
}

/// The public status page: no login, no JavaScript.
#[utoipa::path(get, path = "/status", tag = "status",
    responses((status = 200, description = "The public status page (HTML)", content_type = "text/html", body = String)))]
pub(crate) async fn status_page(State(state): State<AppState>) -> Response {
    let ready = match state.ready() {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let cached = {
        let cache = ready.status.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.as_ref().filter(|(at, _)| at.elapsed() < CACHE_FOR).map(|(_, html)| html.clone())
    };
    let html = match cached {
        Some(html) => html,
        None => match render(ready).await {
            Ok(html) => {
                let html = Arc::new(html);
                *ready.status.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), html.clone()));
                html
            }
            Err(e) => return e.into_response(),
        },
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=5")),
        ],
        (*html).clone(),
    )
        .into_response()
}

fn forget_page(ready: &Ready) {
    *ready.status.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The status site's Atom feed: one entry per incident update, newest first.
#[utoipa::path(get, path = "/status/feed.atom", tag = "status",
    responses((status = 200, description = "Incident updates (Atom 1.0)", content_type = "application/atom+xml", body = String)))]
pub(crate) async fn status_feed(State(state): State<AppState>) -> Response {
    use atom_syndication::{Content, Entry, Feed, FixedDateTime, Link, Text};
    let ready = match state.ready() {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let now = crate::actor::now();
    let store = ready.oncall.store.clone();
    let since = Timestamp(now.0 - 90 * 86_400 * 1_000_000);
    let incidents = match blocking(move || store.incidents(since, 200)).await {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let time = |t: Timestamp| -> FixedDateTime {
        t.to_rfc3339().parse().unwrap_or_else(|_| "1970-01-01T00:00:00Z".parse().expect("a valid date"))
    };
    let mut entries: Vec<Entry> = Vec::new();
    for i in &incidents {
        for u in &i.updates {
            let mut e = Entry::default();
            e.set_id(format!("urn:uuid:{}#update-{}", i.id, u.seq));
            e.set_title(Text::plain(format!("{} — {}", i.title, u.status.label())));
            e.set_updated(time(u.at));
            e.set_published(Some(time(u.at)));
            let mut content = Content::default();
            content.set_content_type(Some("text".to_string()));
            content.set_value(Some(format!(
                "{}: {} (components: {})",
                u.status.label(),
                u.message,
                i.components.join(", ")
            )));
            e.set_content(Some(content));
            let mut link = Link::default();
            link.set_href("/status");
            e.set_links(vec![link]);
            entries.push(e);
        }
    }
    entries.sort_by(|a, b| b.updated().cmp(a.updated()).then_with(|| b.id().cmp(a.id())));
    let mut feed = Feed::default();
    feed.set_id("urn:drover:status");
    feed.set_title(Text::plain(ready.status.options.title.clone()));
    feed.set_updated(entries.first().map(|e| *e.updated()).unwrap_or_else(|| time(now)));
    let mut link = Link::default();
    link.set_href("/status");
    feed.set_links(vec![link]);
    feed.set_entries(entries);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/atom+xml; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=5")),
        ],
        feed.to_string(),
    )
        .into_response()
}

// ----------------------------------------------------------------------
// Incidents
// ----------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareIncident {
    /// Not blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub title: String,
    pub severity: IncidentSeverity,
    /// Status-site components it affects: `PostgreSQL`, `Redis`, `Kafka`.
    #[serde(default)]
    pub components: Vec<String>,
    /// The page it is declared from.
    #[serde(default)]
    pub page: Option<PageId>,
    /// The first public update (default: "We are investigating: TITLE.").
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub message: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostUpdate {
    pub status: IncidentStatus,
    /// Not blank.
    #[schema(min_length = 1, max_length = 5000, pattern = r"\S")]
    pub message: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IncidentsQuery {
    /// At most this many (default 100, at most 1000), newest first.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

fn parse_incident_id(text: &str) -> Result<IncidentId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("no incident {text:?}")))
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    if text.chars().count() > max {
        return Err(ApiError::bad_request(format!("{what} is longer than {max} characters")));
    }
    Ok(())
}

/// Pages the incident commander on call for `incident`: a page straight to
/// the incident-commander schedule, in `team`'s pages (the default team
/// when None), whose id is kept on the incident as `commander_page`. The
/// incident is stored before this is asked, so a crash between the two
/// leaves an incident without its page (paged at the next start, see
/// [`at_start`]), never a page about an incident that does not exist; the
/// alert's key names the incident, so asking twice is one page. A pager
/// that does not answer is logged: the incident stands without its page.
async fn page_the_commander(
    ready: &Ready,
    mut incident: Incident,
    team: Option<String>,
    by: &str,
) -> Result<Incident, ApiError> {
    let alert = drover_oncall::Alert::incident_commander(
        &incident.id.to_string(),
        &incident.title,
        pager_severity(incident.severity),
        team,
        by,
    );
    match ready.oncall.call(drover_oncall::Input::Alert(alert)).await {
        Ok(drover_oncall::Reply::Alert(outcome)) if outcome.page.is_some() => {
            let (store, id, page) = (ready.oncall.store.clone(), incident.id, outcome.page);
            if let Some((updated, _)) = blocking(move || {
                store.update_incident(id, move |i| {
                    i.commander_page = page;
                })
            })
            .await?
            {
                incident = updated;
            }
        }
        Ok(_) => tracing::error!(incident = %incident.id, "the pager opened no page for the incident commander"),
        Err(e) => tracing::error!(incident = %incident.id, error = %e.message, "cannot page the incident commander"),
    }
    Ok(incident)
}

/// At start-up: an open incident whose commander was never paged (the
/// control plane stopped between storing it and paging) is paged now.
pub(crate) async fn at_start(ready: &Ready) {
    let since = Timestamp(crate::actor::now().0 - 90 * 86_400 * 1_000_000);
    let store = ready.oncall.store.clone();
    let open = match blocking(move || store.incidents(since, 1000)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::error!(error = %e.message, "cannot read the incidents to page their commanders");
            return;
        }
    };
    for incident in open.into_iter().filter(|i| i.resolved_at.is_none() && i.commander_page.is_none()) {
        tracing::warn!(incident = %incident.id, "an open incident's commander was never paged; paging now");
        let by = incident.declared_by.clone();
        if let Err(e) = page_the_commander(ready, incident, None, &by).await {
            tracing::error!(error = %e.message, "cannot page an incident's commander at start");
        }
    }
}

/// How urgent the commander's page is, from the incident's severity.
fn pager_severity(s: IncidentSeverity) -> drover_oncall::Severity {
    match s {
        IncidentSeverity::Critical => drover_oncall::Severity::Critical,
        IncidentSeverity::Major => drover_oncall::Severity::Error,
        IncidentSeverity::Minor => drover_oncall::Severity::Warning,
    }
}

/// Publishes an update where people look: the company-wide feed and the
/// teams' chat (the feed's channels).
async fn publish(ready: &Ready, incident: &Incident, text: String) {
    let post = FeedPost { at: crate::actor::now(), page: incident.page, team: None, text };
    let store = ready.oncall.store.clone();
    let stored = post.clone();
    match tokio::task::spawn_blocking(move || store.add_feed(&stored)).await {
        Ok(Ok(seq)) => ready.oncall.deliverer.post(seq, post),
        Ok(Err(e)) => tracing::error!(error = %e, "cannot store an incident's feed post"),
        Err(e) => tracing::error!(error = %e, "incident feed post task failed"),
    }
}

/// Declares an incident: `investigating`, its commander the one on call in
/// the company-wide incident-commander schedule, paged (a page straight to
/// that schedule, in `GET /v1/pages`, acknowledged like any page; its id is
/// `commander_page`), its first update published.
#[utoipa::path(post, path = "/v1/incidents", tag = "status", request_body = DeclareIncident,
    responses((status = 201, description = "The incident", body = Incident),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, description = "An unknown component or page", body = crate::error::ErrorBody)))]
pub(crate) async fn declare(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<DeclareIncident>,
) -> Result<(StatusCode, Json<Incident>), ApiError> {
    let ready = state.ready()?;
    check_text("title", &body.title, 200)?;
    if let Some(m) = &body.message {
        if m.chars().count() > 5000 {
            return Err(ApiError::bad_request("message is longer than 5000 characters"));
        }
    }
    let mut components: Vec<String> = Vec::new();
    for c in &body.components {
        let Some(known) = COMPONENTS.iter().find(|k| k.eq_ignore_ascii_case(c)) else {
            return Err(ApiError::not_found(format!("no component {c:?}; components are {}", COMPONENTS.join(", "))));
        };
        if !components.iter().any(|x| x == known) {
            components.push(known.to_string());
        }
    }
    let mut from_page = None;
    if let Some(page) = body.page {
        let store = ready.oncall.store.clone();
        let found = blocking(move || store.page(page)).await?;
        match found {
            Some(p) if caller.sees_team(Some(&p.team)) => from_page = Some(p),
            _ => return Err(ApiError::not_found(format!("no page {page}"))),
        }
    }
    let now = crate::actor::now();
    let commander = ready.oncall.config.incident_commanders.on_call(now).map(str::to_string);
    let incident = Incident::declare(
        IncidentId(uuid::Uuid::now_v7()),
        body.title.trim().to_string(),
        body.severity,
        components,
        body.message,
        caller.name.clone(),
        commander,
        body.page,
        now,
    );
    let store = ready.oncall.store.clone();
    let stored = incident.clone();
    blocking(move || store.put_incident(&stored)).await?;
    // The commander is paged, not only named (see `page_the_commander`),
    // in the declaring page's team, else the caller's, else the default.
    let team = match &from_page {
        Some(p) => Some(p.team.clone()),
        None => caller.team.clone(),
    };
    let incident = page_the_commander(ready, incident, team, &caller.name).await?;
    forget_page(ready);
    let who = incident.commander.as_deref().unwrap_or("nobody on call");
    publish(
        ready,
        &incident,
        format!(
            "Incident declared ({:?}): {} — incident commander: {who}. {}",
            incident.severity, incident.title, incident.updates[0].message
        ),
    )
    .await;
    Ok((StatusCode::CREATED, Json(incident)))
}

/// Posts a status update, written once: on the status page, in its Atom
/// feed, in the company-wide feed and the teams' chat.
#[utoipa::path(post, path = "/v1/incidents/{id}/updates", tag = "status", request_body = PostUpdate,
    params(("id" = String, Path, description = "Incident id (UUID)")),
    responses((status = 201, description = "The incident with its new update", body = Incident),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "The incident is resolved", body = crate::error::ErrorBody)))]
pub(crate) async fn post_update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(body): Json<PostUpdate>,
) -> Result<(StatusCode, Json<Incident>), ApiError> {
    let ready = state.ready()?;
    let id = parse_incident_id(&id)?;
    check_text("message", &body.message, 5000)?;
    let (by, now, message, status) = (caller.name.clone(), crate::actor::now(), body.message.clone(), body.status);
    let store = ready.oncall.store.clone();
    let updated =
        blocking(move || store.update_incident(id, move |i| i.update(status, message, by, now).map(|u| u.seq))).await?;
    let (incident, result) = updated.ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
    match result {
        Ok(_) => {}
        Err(e @ IncidentError::Resolved(_)) => return Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    }
    forget_page(ready);
    // A resolved incident needs no commander any more: its page resolves
    // too (already resolved or acknowledged and resolved by hand: nothing).
    if status == IncidentStatus::Resolved {
        if let Some(page) = incident.commander_page {
            let by = caller.name.clone();
            if let Err(e) = ready.oncall.call(drover_oncall::Input::Resolve { page, by }).await {
                if e.status != StatusCode::NOT_FOUND {
                    tracing::warn!(%page, error = %e.message, "cannot resolve the incident commander's page");
                }
            }
        }
    }
    publish(ready, &incident, format!("Incident {}: {} — {}", incident.title, status.label(), body.message)).await;
    Ok((StatusCode::CREATED, Json(incident)))
}

/// Incidents: every open one and those of the last 90 days, newest first.
#[utoipa::path(get, path = "/v1/incidents", tag = "status", params(IncidentsQuery),
    responses((status = 200, description = "Incidents, newest first", body = Vec<Incident>),
        (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<IncidentsQuery>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    let ready = state.ready()?;
    let limit = limit_in(q.limit, 100, 1000)?;
    let since = Timestamp(crate::actor::now().0 - 90 * 86_400 * 1_000_000);
    let store = ready.oncall.store.clone();
    Ok(Json(blocking(move || store.incidents(since, limit)).await?))
}

/// One incident with its updates.
#[utoipa::path(get, path = "/v1/incidents/{id}", tag = "status",
    params(("id" = String, Path, description = "Incident id (UUID)")),
    responses((status = 200, description = "The incident", body = Incident),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Incident>, ApiError> {
    let ready = state.ready()?;
    let id = parse_incident_id(&id)?;
    let store = ready.oncall.store.clone();
    blocking(move || store.incident(id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))
}

/// The timeline reaches back this far before the declaration: the trouble
/// that led to it (a page, a failover) began before anyone declared.
const TIMELINE_LEAD_IN: Duration = Duration::from_secs(30 * 60);
/// At most this many services' events and actions on one timeline.
const TIMELINE_SERVICES: usize = 20;
/// At most this many engine events and actions per service.
const TIMELINE_PER_SERVICE: usize = 500;

/// Everything an incident's timeline gathers besides the incident: the
/// page it was declared from and its commander's page; the pages opened
/// in its window (from `TIMELINE_LEAD_IN` before it until it resolved)
/// of the declaring page's service or of services of the components it
/// names; and the engine's events and actions of those services in that
/// window. What the caller may not see (another team's) is left out.
pub(crate) async fn related(
    ready: &Ready,
    caller: &crate::auth::Identity,
    incident: &Incident,
) -> Result<drover_oncall::status::Related, ApiError> {
    use drover_oncall::status::Related;
    let now = crate::actor::now();
    let start = Timestamp(incident.created_at.0 - TIMELINE_LEAD_IN.as_micros() as i64);
    let end = incident.resolved_at.unwrap_or(now).max(incident.created_at);
    let in_window = move |t: Timestamp| t >= start && t <= end;
    let store = ready.oncall.store.clone();
    let own: Vec<PageId> = incident.page.iter().chain(incident.commander_page.iter()).copied().collect();
    let (mut candidates, own_pages) = blocking(move || {
        let opened = store.pages_opened_since(start)?;
        let mut mine = Vec::new();
        for id in own {
            if let Some(p) = store.page(id)? {
                mine.push(p);
            }
        }
        Ok((opened, mine))
    })
    .await?;
    candidates.retain(|p| p.opened_at <= end && !own_pages.iter().any(|o| o.id == p.id));
    // The services of pages in the window, with their engine's component.
    let mut names: Vec<String> = candidates.iter().filter_map(|p| p.service.clone()).collect();
    names.extend(own_pages.iter().filter_map(|p| p.service.clone()));
    names.sort();
    names.dedup();
    let lookup = names.clone();
    let views =
        ready.engine.query(move |e| lookup.iter().filter_map(|n| e.service_view(n)).collect::<Vec<_>>()).await?;
    let component_of =
        |service: &str| views.iter().find(|v| v.name == service).map(|v| component_name(v.engine).to_string());
    let declared_service = own_pages.iter().find(|p| Some(p.id) == incident.page).and_then(|p| p.service.clone());
    let mut pages: Vec<drover_oncall::Page> = own_pages;
    pages.extend(candidates.into_iter().filter(|p| match &p.service {
        Some(s) => {
            declared_service.as_deref() == Some(s.as_str())
                || component_of(s).is_some_and(|c| incident.components.contains(&c))
        }
        None => false,
    }));
    pages.retain(|p| caller.sees_team(Some(&p.team)));
    let mut services: Vec<String> = pages.iter().filter_map(|p| p.service.clone()).collect();
    services.sort();
    services.dedup();
    services.truncate(TIMELINE_SERVICES);
    let store = ready.oncall.store.clone();
    let with_transitions = blocking(move || {
        let mut out = Vec::new();
        for p in pages {
            let t = store.transitions(p.id)?;
            out.push((p, t));
        }
        Ok(out)
    })
    .await?;
    // The engine's log, read forward by service from its start, keeping the window.
    let engine_store = ready.store.clone();
    let ids: Vec<(String, Option<drover_model::ServiceId>)> =
        services.iter().map(|n| (n.clone(), views.iter().find(|v| &v.name == n).map(|v| v.id))).collect();
    let (events, actions) = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let mut actions = Vec::new();
        for (name, id) in ids {
            let mut after = None;
            let mut kept = Vec::new();
            let mut service_id = id;
            'read: for _ in 0..64 {
                let filter = drover_store::EventFilter {
                    service: Some(name.clone()),
                    instance: None,
                    after_seq: after,
                    limit: Some(drover_store::MAX_READ_LIMIT),
                };
                let batch = engine_store.events(&filter)?;
                let full = batch.len() >= drover_store::MAX_READ_LIMIT;
                for e in batch {
                    after = Some(e.seq);
                    if e.at > end {
                        break 'read;
                    }
                    service_id = service_id.or(e.service_id);
                    if in_window(e.at) {
                        kept.push(e);
                    }
                }
                if !full {
                    break;
                }
            }
            if kept.len() > TIMELINE_PER_SERVICE {
                kept.drain(..kept.len() - TIMELINE_PER_SERVICE);
            }
            events.extend(kept);
            if let Some(id) = service_id {
                let mut mine: Vec<_> = engine_store
                    .actions(Some(id), drover_store::MAX_READ_LIMIT)?
                    .into_iter()
                    .filter(|a| in_window(a.created_at))
                    .collect();
                mine.truncate(TIMELINE_PER_SERVICE);
                actions.extend(mine);
            }
        }
        Ok::<_, drover_store::StoreError>((events, actions))
    })
    .await
    .map_err(|e| ApiError::internal(format!("timeline task failed: {e}")))?
    .map_err(|e| ApiError::unavailable(format!("the store could not answer: {e}")))?;
    let events = events.into_iter().filter(|e| caller.sees_team(e.team.as_deref())).collect();
    Ok(Related { pages: with_transitions, events, actions })
}

async fn visible_incident(ready: &Ready, id: &str) -> Result<Incident, ApiError> {
    let id = parse_incident_id(id)?;
    let store = ready.oncall.store.clone();
    blocking(move || store.incident(id)).await?.ok_or_else(|| ApiError::not_found(format!("no incident {id}")))
}

/// An incident's timeline, oldest first: its updates and notes, the
/// transitions of its pages (the one it was declared from, its
/// commander's, and those of the services of its components opened from
/// 30 minutes before it until it resolved), and the engine's events and
/// actions of those services in that window.
#[utoipa::path(get, path = "/v1/incidents/{id}/timeline", tag = "status",
    params(("id" = String, Path, description = "Incident id (UUID)")),
    responses((status = 200, description = "The timeline, oldest first", body = Vec<TimelineEntry>),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn timeline(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<TimelineEntry>>, ApiError> {
    let ready = state.ready()?;
    let incident = visible_incident(ready, &id).await?;
    let related = related(ready, &caller, &incident).await?;
    Ok(Json(drover_oncall::status::timeline(&incident, &related)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostNote {
    /// Not blank.
    #[schema(min_length = 1, max_length = 5000, pattern = r"\S")]
    pub message: String,
}

/// Adds a responder's note to the incident's timeline (internal: not on
/// the status site; also after it resolved, for the review).
#[utoipa::path(post, path = "/v1/incidents/{id}/notes", tag = "status", request_body = PostNote,
    params(("id" = String, Path, description = "Incident id (UUID)")),
    responses((status = 201, description = "The incident with its new note", body = Incident),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn post_note(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(body): Json<PostNote>,
) -> Result<(StatusCode, Json<Incident>), ApiError> {
    let ready = state.ready()?;
    let id = parse_incident_id(&id)?;
    check_text("message", &body.message, 5000)?;
    let (by, now, message) = (caller.name.clone(), crate::actor::now(), body.message.trim().to_string());
    let store = ready.oncall.store.clone();
    let updated = blocking(move || store.update_incident(id, move |i| i.note(message, by, now).map(|n| n.seq))).await?;
    let (incident, result) = updated.ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
    result.map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(incident)))
}

/// The post-incident review template, filled with the incident's timeline
/// (the same as `GET /v1/incidents/{id}/timeline`).
#[utoipa::path(get, path = "/v1/incidents/{id}/review", tag = "status",
    params(("id" = String, Path, description = "Incident id (UUID)")),
    responses((status = 200, description = "The review, Markdown", content_type = "text/markdown", body = String),
        (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn review(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let incident = visible_incident(ready, &id).await?;
    let related = related(ready, &caller, &incident).await?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/markdown; charset=utf-8"))],
        drover_oncall::status::review(&incident, &related),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(Timestamp(0)), "1970-01-01");
        assert_eq!(day_of(Timestamp(1_796_083_199_000_000)), "2026-11-30");
        assert_eq!(day_of(Timestamp(1_796_083_200_000_000)), "2026-12-01");
    }
}
