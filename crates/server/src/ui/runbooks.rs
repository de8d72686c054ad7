//! `/ui/runbooks`: the runbooks with their steps and parameters, a dry run
//! (the plan, nothing changed) and the approval flow as the API has it: a
//! run is requested; a dangerous one waits until another person approves
//! it, then runs. The forms call the API's own handlers
//! (`POST /v1/runbooks/{name}/runs`, `POST /v1/runbooks/runs/{id}/approve`)
//! under the session's identity, so the checks and the audit are theirs.
//! A viewer reads and gets no form.

use super::{csrf_ok, html, login_form, may_act, problem, viewer, Viewer};
use crate::auth::Caller;
use crate::runbooks::{RunRequest, RunState, RunbookRun};
use crate::state::AppState;
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::BTreeMap;

/// Recent runs listed under the runbooks.
const RECENT_RUNS: usize = 20;

struct ParamRow {
    name: String,
    description: String,
    default: String,
    required: bool,
}

struct RunbookRow {
    name: String,
    description: String,
    dangerous: bool,
    steps: Vec<String>,
    params: Vec<ParamRow>,
}

struct RunRow {
    id: String,
    runbook: String,
    state: String,
    dry_run: bool,
    requested_by: String,
    approved_by: String,
    created: String,
}

#[derive(Template)]
#[template(path = "ui/runbooks.html")]
struct RunbooksPage {
    me: Option<String>,
    csrf: String,
    may_act: bool,
    runbooks: Vec<RunbookRow>,
    runs: Vec<RunRow>,
}

#[derive(Template)]
#[template(path = "ui/runbook_run.html")]
struct RunPage {
    me: Option<String>,
    csrf: String,
    run: RunRow,
    params: Vec<(String, String)>,
    plan: Vec<(String, String, String)>,
    may_approve: bool,
    awaiting: bool,
}

fn state_name(s: RunState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn run_row(r: &RunbookRun) -> RunRow {
    RunRow {
        id: r.id.clone(),
        runbook: r.runbook.clone(),
        state: state_name(r.state),
        dry_run: r.dry_run,
        requested_by: r.requested_by.clone(),
        approved_by: r.approved_by.clone().unwrap_or_default(),
        created: r.created_at.to_rfc3339(),
    }
}

/// A stored run's public part (the record also keeps the commands and
/// the requesting token's id, which a page never shows).
fn stored_run(record: &str) -> Option<RunbookRun> {
    let v: serde_json::Value = serde_json::from_str(record).ok()?;
    serde_json::from_value(v.get("run")?.clone()).ok()
}

fn step_text(step: &crate::runbooks::Step) -> String {
    match serde_json::to_value(step) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::Object(fields) => format!(
                    "{k}({})",
                    fields
                        .iter()
                        .map(|(f, x)| format!("{f}={}", x.as_str().unwrap_or(&x.to_string())))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => format!("{k} {other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub(crate) async fn runbooks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    let store = ready.breakglass.clone();
    let runs = match tokio::task::spawn_blocking(move || store.runs(RECENT_RUNS)).await {
        Ok(Ok(rows)) => rows.iter().filter_map(|r| stored_run(&r.record)).map(|r| run_row(&r)).collect(),
        _ => return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The runbook store did not answer."),
    };
    let runbooks = ready
        .runbooks
        .iter()
        .map(|r| RunbookRow {
            name: r.name.clone(),
            description: r.description.clone(),
            dangerous: r.dangerous,
            steps: r.steps.iter().map(step_text).collect(),
            params: r
                .parameters
                .iter()
                .map(|p| ParamRow {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    default: p.default.clone().unwrap_or_default(),
                    required: p.default.is_none(),
                })
                .collect(),
        })
        .collect();
    let page =
        RunbooksPage { me: Some(v.who.name.clone()), csrf: v.csrf.clone(), may_act: may_act(&v), runbooks, runs };
    html(StatusCode::OK, page.render())
}

/// The run form: `csrf`, `mode` (`dry_run` or `run`), and one field per
/// parameter named `param.NAME` (an empty optional one takes its default).
pub(crate) async fn request_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(f)| f).unwrap_or_default();
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    if let Some(refusal) = csrf_ok(&headers, &v, &fields) {
        return refusal;
    }
    if !may_act(&v) {
        return problem(StatusCode::FORBIDDEN, Some(&v), "Running a runbook needs an operator or admin token.");
    }
    let Some(runbook) = ready.runbooks.iter().find(|r| r.name == name) else {
        return problem(StatusCode::NOT_FOUND, Some(&v), format!("No runbook {name:?}."));
    };
    let mut params = BTreeMap::new();
    for (k, value) in &fields {
        let Some(p) = k.strip_prefix("param.") else { continue };
        let value = value.trim();
        let optional = runbook.parameters.iter().any(|x| x.name == p && x.default.is_some());
        if value.is_empty() && optional {
            continue;
        }
        params.insert(p.to_string(), value.to_string());
    }
    let dry_run = fields.iter().any(|(k, v)| k == "mode" && v == "dry_run");
    let request = RunRequest { params, dry_run };
    let answer = crate::runbooks::run(
        State(state.clone()),
        Caller(v.who.clone()),
        crate::error::Path(name),
        crate::error::Json(request),
    )
    .await;
    match answer {
        Ok((_, crate::error::Json(run))) => Redirect::to(&format!("/ui/runbooks/runs/{}", run.id)).into_response(),
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}

pub(crate) async fn show_run(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    let (store, key) = (ready.breakglass.clone(), id.clone());
    let run = match tokio::task::spawn_blocking(move || store.run(&key)).await {
        Ok(Ok(Some(row))) => match stored_run(&row.record) {
            Some(run) => run,
            None => return problem(StatusCode::INTERNAL_SERVER_ERROR, Some(&v), format!("Run {id} cannot be read.")),
        },
        Ok(Ok(None)) => return problem(StatusCode::NOT_FOUND, Some(&v), format!("No runbook run {id:?}.")),
        _ => return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The runbook store did not answer."),
    };
    let awaiting = run.state == RunState::AwaitingApproval;
    let page = RunPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        may_approve: awaiting && may_act(&v) && v.who.name != run.requested_by,
        awaiting,
        params: run.params.iter().map(|(k, x)| (k.clone(), x.clone())).collect(),
        plan: run
            .plan
            .iter()
            .map(|s| {
                (
                    s.command.clone(),
                    s.target.clone().unwrap_or_default(),
                    s.outcome.clone().unwrap_or_else(|| "not run".into()),
                )
            })
            .collect(),
        run: run_row(&run),
    };
    html(StatusCode::OK, page.render())
}

pub(crate) async fn approve_run(
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
        return problem(StatusCode::FORBIDDEN, Some(&v), "Approving a run needs an operator or admin token.");
    }
    let answer =
        crate::runbooks::approve(State(state.clone()), Caller(v.who.clone()), crate::error::Path(id.clone())).await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/runbooks/runs/{id}")).into_response(),
        Err(e) => problem(e.status, Some(&v), e.message),
    }
}
