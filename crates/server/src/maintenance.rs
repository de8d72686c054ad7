//! Maintenance windows: set a service's weekly window, and the team's
//! calendar of scheduled maintenance as an iCalendar feed. Calendar apps
//! cannot send headers, so the feed takes its key in the URL: the key is an
//! API token that may read the team (a viewer token limited to the team is
//! the one to hand out), revocable like any token (`DELETE /v1/tokens/{id}`).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply, ScheduledMove};
use drover_model::{MaintenanceWindow, ServiceView, Timestamp};
use serde::Deserialize;

/// Weeks of window occurrences the feed lists ahead.
const FEED_WEEKS: i64 = 4;

/// `{"window": {...}}` sets a service's window, `{"window": null}` clears it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    pub window: Option<MaintenanceWindow>,
}

/// Set (a window) or clear (`null`) a service's weekly maintenance window.
#[utoipa::path(put, path = "/v1/services/{name}/maintenance-window", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body = WindowBody,
    responses((status = 200, body = ServiceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn put_window(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(WindowBody { window }): Json<WindowBody>,
) -> Result<Json<ServiceView>, ApiError> {
    let ready = state.ready()?;
    if let Some(w) = &window {
        w.validate().map_err(ApiError::bad_request)?;
    }
    ready.visible_service(&caller, &name).await?;
    match ready.engine.call(caller.command(Command::SetMaintenanceWindow { name, window })).await? {
        Reply::Service(view) => Ok(Json(ready.complete(*view, &caller))),
        _ => Err(ApiError::internal("the engine answered a window change with something else")),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// The team whose maintenance is listed.
    pub team: Option<String>,
    /// The feed key: an API token that may read this team.
    pub key: Option<String>,
}

/// The team's scheduled maintenance as iCalendar (`text/calendar`).
#[utoipa::path(get, path = "/v1/maintenance.ics", tag = "rollouts", params(FeedQuery),
    responses((status = 200, description = "iCalendar", body = String, content_type = "text/calendar"),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn calendar(State(state): State<AppState>, Query(q): Query<FeedQuery>) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let now = crate::actor::now();
    // Refused alike (403) whatever is wrong with the key: a feed URL is a
    // capability, and its answer says nothing about which keys exist.
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "this feed URL needs a valid feed key for its team: ?team=T&key=K, K a token that may read team T",
        )
    };
    let (Some(team), Some(key)) = (q.team, q.key) else { return Err(refused()) };
    let identity = ready.auth.authenticate(&key, now).map_err(|_| refused())?;
    let may_read = crate::auth::permissions::Permission::Read.allows(identity.role);
    if !may_read || !identity.sees_team(Some(&team)) {
        return Err(refused());
    }
    let name = team.clone();
    let moves = ready.engine.query(move |e| e.maintenance_schedule(&name)).await?;
    let body = ics(&team, &moves, now);
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/calendar; charset=utf-8"));
    Ok(response)
}

fn stamp(t: Timestamp) -> String {
    match jiff::Timestamp::from_microsecond(t.0) {
        Ok(t) => t.strftime("%Y%m%dT%H%M%SZ").to_string(),
        Err(_) => "19700101T000000Z".into(),
    }
}

/// Escapes a text value (RFC 5545 §3.3.11).
fn text(s: &str) -> String {
    s.replace('\\', "\\\\").replace(';', "\\;").replace(',', "\\,").replace('\n', "\\n")
}

/// The calendar: one event per upcoming window occurrence of each service
/// still to be moved (until its rollout's deadline), and one event at the
/// deadline itself, after which the move happens whatever the window.
pub fn ics(team: &str, moves: &[ScheduledMove], now: Timestamp) -> String {
    let mut out =
        String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Drover//Maintenance//EN\r\nCALSCALE:GREGORIAN\r\n");
    out.push_str(&format!("X-WR-CALNAME:{}\r\n", text(&format!("Drover maintenance: {team}"))));
    let mut event = |uid: String, start: Timestamp, end: Timestamp, summary: String, description: String| {
        out.push_str("BEGIN:VEVENT\r\n");
        out.push_str(&format!("UID:{uid}\r\nDTSTAMP:{}\r\n", stamp(now)));
        out.push_str(&format!("DTSTART:{}\r\nDTEND:{}\r\n", stamp(start), stamp(end)));
        out.push_str(&format!("SUMMARY:{}\r\nDESCRIPTION:{}\r\n", text(&summary), text(&description)));
        out.push_str("END:VEVENT\r\n");
    };
    for m in moves {
        let what = format!("{} moves onto image {} (rollout {})", m.service, m.to_image, m.rollout);
        match &m.window {
            Some(w) => {
                for (start, end) in w.occurrences_around(now, FEED_WEEKS) {
                    if end <= now || m.required_by.is_some_and(|d| start >= d) {
                        continue;
                    }
                    event(
                        format!("{}-{}-{}@drover", m.rollout, m.service, start.0),
                        start,
                        end,
                        format!("Maintenance window: {}", m.service),
                        format!("{what}: a switchover to a new member, a few seconds of paused connections."),
                    );
                }
            }
            None => {
                event(
                    format!("{}-{}@drover", m.rollout, m.service),
                    now,
                    now.plus(std::time::Duration::from_secs(3600)),
                    format!("Maintenance any time: {}", m.service),
                    format!("{what}; it has no maintenance window, so it may move at any time."),
                );
            }
        }
        if let Some(deadline) = m.required_by {
            event(
                format!("{}-{}-deadline@drover", m.rollout, m.service),
                deadline,
                deadline.plus(std::time::Duration::from_secs(900)),
                format!("Maintenance deadline: {}", m.service),
                format!(
                    "{what}; from this time it moves whatever its window. Move it earlier by hand: \
                     drover services resize {} --image {}",
                    m.service, m.to_image
                ),
            );
        }
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}
