//! `/ui/incidents` and `/ui/incidents/{id}`: the incident commander's
//! workflow in the dashboard: the list, declaring one, posting a status
//! update (published once: status site, its feed, the company feed and the
//! teams' chat), notes, and the timeline that gathers the pages, the
//! engine's events and actions and the notes. The forms call the API's own
//! handlers under the session's identity. A viewer reads and gets no form.

use super::{csrf_ok, html, login_form, may_act, problem, viewer, Viewer};
use crate::auth::Caller;
use crate::error::Json as ApiJson;
use crate::state::AppState;
use crate::status::{DeclareIncident, PostNote, PostUpdate, COMPONENTS};
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use drover_model::Timestamp;
use drover_oncall::status::{Incident, IncidentSeverity, IncidentStatus};

/// Incidents listed (open ones and those of the last 90 days).
const LISTED: usize = 200;

struct IncidentRow {
    id: String,
    title: String,
    severity: String,
    status: String,
    commander: String,
    components: String,
    created: String,
}

#[derive(Template)]
#[template(path = "ui/incidents.html")]
struct IncidentsPage {
    me: Option<String>,
    csrf: String,
    may_act: bool,
    open: Vec<IncidentRow>,
    past: Vec<IncidentRow>,
    components: Vec<&'static str>,
}

struct Line {
    at: String,
    source: String,
    text: String,
}

#[derive(Template)]
#[template(path = "ui/incident.html")]
struct IncidentPage {
    me: Option<String>,
    csrf: String,
    may_act: bool,
    row: IncidentRow,
    resolved: bool,
    declared_by: String,
    commander_page: String,
    updates: Vec<Line>,
    timeline: Vec<Line>,
    statuses: Vec<String>,
    notice: String,
}

fn severity(s: IncidentSeverity) -> &'static str {
    match s {
        IncidentSeverity::Minor => "minor",
        IncidentSeverity::Major => "major",
        IncidentSeverity::Critical => "critical",
    }
}

fn row(i: &Incident) -> IncidentRow {
    IncidentRow {
        id: i.id.to_string(),
        title: i.title.clone(),
        severity: severity(i.severity).into(),
        status: i.status.as_str().into(),
        commander: i.commander.clone().unwrap_or_else(|| "nobody on call".into()),
        components: i.components.join(", "),
        created: i.created_at.to_rfc3339(),
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

pub(crate) async fn incidents(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    let since = Timestamp(crate::actor::now().0 - 90 * 86_400 * 1_000_000);
    let store = ready.oncall.store.clone();
    let Ok(Ok(list)) = tokio::task::spawn_blocking(move || store.incidents(since, LISTED)).await else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The on-call store did not answer.");
    };
    let page = IncidentsPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        may_act: may_act(&v),
        open: list.iter().filter(|i| i.resolved_at.is_none()).map(row).collect(),
        past: list.iter().filter(|i| i.resolved_at.is_some()).map(row).collect(),
        components: COMPONENTS.to_vec(),
    };
    html(StatusCode::OK, page.render())
}

/// The declare form: `title`, `severity`, `components` (repeated), `message`.
pub(crate) async fn declare(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let (_ready, v): (_, Viewer) = signed_in!(state, headers);
    if let Some(refusal) = csrf_ok(&headers, &v, &fields) {
        return refusal;
    }
    if !may_act(&v) {
        return problem(StatusCode::FORBIDDEN, Some(&v), "Declaring an incident needs an operator or admin token.");
    }
    let severity = match field(&fields, "severity") {
        "minor" => IncidentSeverity::Minor,
        "major" => IncidentSeverity::Major,
        "critical" => IncidentSeverity::Critical,
        other => {
            return problem(
                StatusCode::BAD_REQUEST,
                Some(&v),
                format!("Severity {other:?} is not one of minor, major, critical."),
            )
        }
    };
    let message = field(&fields, "message").trim();
    let body = DeclareIncident {
        title: field(&fields, "title").to_string(),
        severity,
        components: fields.iter().filter(|(k, _)| k == "components").map(|(_, c)| c.clone()).collect(),
        page: None,
        message: (!message.is_empty()).then(|| message.to_string()),
    };
    match crate::status::declare(State(state.clone()), Caller(v.who.clone()), ApiJson(body)).await {
        Ok((_, ApiJson(incident))) => {
            Redirect::to(&format!("/ui/incidents/{}?posted=declared", incident.id)).into_response()
        }
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Notice {
    posted: Option<String>,
}

pub(crate) async fn incident(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(notice): axum::extract::Query<Notice>,
) -> Response {
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    let Ok(incident_id) = id.parse() else {
        return problem(StatusCode::NOT_FOUND, Some(&v), format!("No incident {id}."));
    };
    let store = ready.oncall.store.clone();
    let incident = match tokio::task::spawn_blocking(move || store.incident(incident_id)).await {
        Ok(Ok(Some(i))) => i,
        Ok(Ok(None)) => return problem(StatusCode::NOT_FOUND, Some(&v), format!("No incident {id}.")),
        _ => return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The on-call store did not answer."),
    };
    let related = match crate::status::related(ready, &v.who, &incident).await {
        Ok(r) => r,
        Err(e) => return problem(e.status, Some(&v), e.message),
    };
    let timeline = drover_oncall::status::timeline(&incident, &related)
        .into_iter()
        .map(|e| Line { at: e.at.to_rfc3339(), source: e.source, text: e.text })
        .collect();
    let page = IncidentPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        may_act: may_act(&v),
        resolved: incident.resolved_at.is_some(),
        declared_by: incident.declared_by.clone(),
        commander_page: incident.commander_page.map(|p| p.to_string()).unwrap_or_default(),
        updates: incident
            .updates
            .iter()
            .rev()
            .map(|u| Line { at: u.at.to_rfc3339(), source: u.status.label().to_string(), text: u.message.clone() })
            .collect(),
        timeline,
        statuses: ["investigating", "identified", "monitoring", "resolved"].map(String::from).to_vec(),
        notice: match notice.posted.as_deref() {
            Some("declared") => "Incident declared; the incident commander was paged.".into(),
            Some("update") => "Update published on the status site, its feed, the company feed and chat.".into(),
            Some("note") => "Note added to the timeline.".into(),
            _ => String::new(),
        },
        row: row(&incident),
    };
    html(StatusCode::OK, page.render())
}

/// The update form: `status`, `message`.
pub(crate) async fn post_update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let (_ready, v): (_, Viewer) = signed_in!(state, headers);
    if let Some(refusal) = csrf_ok(&headers, &v, &fields) {
        return refusal;
    }
    if !may_act(&v) {
        return problem(StatusCode::FORBIDDEN, Some(&v), "Posting an update needs an operator or admin token.");
    }
    let status = match field(&fields, "status") {
        "investigating" => IncidentStatus::Investigating,
        "identified" => IncidentStatus::Identified,
        "monitoring" => IncidentStatus::Monitoring,
        "resolved" => IncidentStatus::Resolved,
        other => {
            return problem(
                StatusCode::BAD_REQUEST,
                Some(&v),
                format!("Status {other:?} is not one of investigating, identified, monitoring, resolved."),
            )
        }
    };
    let body = PostUpdate { status, message: field(&fields, "message").to_string() };
    let answer = crate::status::post_update(
        State(state.clone()),
        Caller(v.who.clone()),
        crate::error::Path(id.clone()),
        ApiJson(body),
    )
    .await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/incidents/{id}?posted=update")).into_response(),
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}

/// The note form: `message`.
pub(crate) async fn post_note(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let (_ready, v): (_, Viewer) = signed_in!(state, headers);
    if let Some(refusal) = csrf_ok(&headers, &v, &fields) {
        return refusal;
    }
    if !may_act(&v) {
        return problem(StatusCode::FORBIDDEN, Some(&v), "Adding a note needs an operator or admin token.");
    }
    let body = PostNote { message: field(&fields, "message").to_string() };
    let answer = crate::status::post_note(
        State(state.clone()),
        Caller(v.who.clone()),
        crate::error::Path(id.clone()),
        ApiJson(body),
    )
    .await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/incidents/{id}?posted=note")).into_response(),
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}
