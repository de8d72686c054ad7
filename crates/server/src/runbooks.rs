//! Break-glass runbooks: emergency procedures as code. Each is a TOML file
//! under `runbooks/` (shipped in the binary): a name, a description, its
//! parameters, and steps that are engine commands (never a shell string).
//! A run is planned first (a dry run shows the plan and changes nothing);
//! a dangerous runbook waits for a second person (another token holder)
//! to approve; every state of a run is an event of the feed and an entry
//! of the audit trail (`Command::RecordRunbook`), and every step goes
//! through the engine's durable commands, audited under the person who
//! made it happen.

use crate::auth::{Caller, Identity};
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::http::blocking;
use crate::state::{AppState, Ready};
use axum::extract::State;
use axum::http::StatusCode;
use drover_engine::Command;
use drover_model::{InstanceId, Timestamp};
use drover_store::breakglass::RunRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The runbooks shipped with Drover (the files under `runbooks/`).
const SHIPPED: &[(&str, &str)] = &[
    ("freeze-automation.toml", include_str!("../../../runbooks/freeze-automation.toml")),
    ("release-automation.toml", include_str!("../../../runbooks/release-automation.toml")),
    ("force-failover.toml", include_str!("../../../runbooks/force-failover.toml")),
    ("rebuild-follower.toml", include_str!("../../../runbooks/rebuild-follower.toml")),
    ("restore-into-new-service.toml", include_str!("../../../runbooks/restore-into-new-service.toml")),
];

/// Longest parameter value: names and ids are shorter.
const MAX_PARAM_LEN: usize = 128;

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: String,
    pub description: String,
    /// Can lose data, fail over or stop automation: a second person must
    /// approve a run.
    pub dangerous: bool,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    pub description: String,
    /// Optional parameters have a default (possibly empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One step: an engine command. Its fields may name parameters as
/// `{name}`; a value is a name or an id, checked before anything runs.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// The brake by hand for a zone or `fleet`.
    FreezeAutomation {
        scope: String,
    },
    ReleaseAutomation {
        scope: String,
    },
    /// Fence the primary at once, promote the best follower.
    Failover {
        service: String,
    },
    /// Planned: fence gracefully, promote the best follower.
    Switchover {
        service: String,
    },
    /// Retire a follower (empty `instance`: the furthest behind); a new one
    /// is built.
    RebuildFollower {
        service: String,
        #[serde(default)]
        instance: String,
    },
    TakeBackup {
        service: String,
    },
    VerifyBackup {
        service: String,
    },
    ResumeService {
        service: String,
    },
    /// A new service `name` with `service`'s plan and data, restored from
    /// its backups and archived WAL to `at` (exclusive; RFC 3339) or, with
    /// an empty `at`, to the latest archived moment.
    Fork {
        service: String,
        name: String,
        #[serde(default)]
        at: String,
    },
}

impl Step {
    fn templates(&self) -> Vec<&str> {
        match self {
            Step::FreezeAutomation { scope } | Step::ReleaseAutomation { scope } => vec![scope],
            Step::RebuildFollower { service, instance } => vec![service, instance],
            Step::Fork { service, name, at } => vec![service, name, at],
            Step::Failover { service }
            | Step::Switchover { service }
            | Step::TakeBackup { service }
            | Step::VerifyBackup { service }
            | Step::ResumeService { service } => vec![service],
        }
    }
}

/// `{name}` in `template` replaced by the parameter's value.
fn fill(template: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or_else(|| format!("unclosed '{{' in {template:?}"))? + open;
        let name = &rest[open + 1..close];
        out.push_str(params.get(name).ok_or_else(|| format!("{template:?} names no parameter {name:?}"))?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The shipped runbooks, checked: unique names, steps naming only their
/// parameters.
pub fn shipped() -> Result<Vec<Runbook>, String> {
    let mut out: Vec<Runbook> = Vec::new();
    for (file, text) in SHIPPED {
        add(&mut out, &format!("runbooks/{file}"), text).map_err(|e| format!("a shipped runbook is invalid: {e}"))?;
    }
    Ok(out)
}

/// The shipped runbooks and every `*.toml` file of `dir` (in name order),
/// each checked as the shipped ones are; an error names the file.
pub fn load_all(dir: Option<&std::path::Path>) -> Result<Vec<Runbook>, String> {
    let mut out = shipped()?;
    let Some(dir) = dir else { return Ok(out) };
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--runbooks-dir {}: cannot read it: {e}", dir.display()))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("runbook {label}: cannot read it: {e}"))?;
        add(&mut out, &label, &text).map_err(|e| format!("runbook {e}"))?;
    }
    Ok(out)
}

/// Parses and checks one runbook file and adds it to `out`.
fn add(out: &mut Vec<Runbook>, file: &str, text: &str) -> Result<(), String> {
    let r: Runbook = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let plain = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !plain(&r.name) {
        return Err(format!("{file}: name {:?} must be 1 to 63 of a-z, 0-9, '-', '_'", r.name));
    }
    if out.iter().any(|o| o.name == r.name) {
        return Err(format!("{file}: a runbook named {:?} exists already", r.name));
    }
    if r.steps.is_empty() {
        return Err(format!("{file}: no steps"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &r.parameters {
        if !plain(&p.name) || !seen.insert(p.name.as_str()) {
            return Err(format!("{file}: parameter {:?} is repeated or not 1 to 63 of a-z, 0-9, '-', '_'", p.name));
        }
    }
    let dummy: BTreeMap<String, String> = r.parameters.iter().map(|p| (p.name.clone(), String::new())).collect();
    for s in &r.steps {
        for t in s.templates() {
            fill(t, &dummy).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    out.push(r);
    Ok(())
}

/// A step as the plan shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedStep {
    /// The engine command (`automation.freeze`, `services.failover`, ...).
    pub command: String,
    /// The service, zone or scope it acts on.
    pub target: Option<String>,
    /// `null` until run; then `ok` or why it failed.
    pub outcome: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// A dry run: the plan only; nothing was or will be changed.
    Planned,
    /// Dangerous: waits for a second person.
    AwaitingApproval,
    Running,
    Succeeded,
    /// A step was refused or failed; the steps after it did not run.
    Failed,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Planned => "planned",
            RunState::AwaitingApproval => "awaiting_approval",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }
}

/// One run of a runbook.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunbookRun {
    pub id: String,
    pub runbook: String,
    pub params: BTreeMap<String, String>,
    pub dry_run: bool,
    pub dangerous: bool,
    pub state: RunState,
    /// The name of the token that asked.
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub plan: Vec<PlannedStep>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What is stored: the run, the engine commands its plan was made of, and
/// the requesting token (a different token holder must approve).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRun {
    run: RunbookRun,
    commands: Vec<Command>,
    requested_by_token: String,
}

impl StoredRun {
    fn row(&self) -> Result<RunRow, ApiError> {
        Ok(RunRow {
            id: self.run.id.clone(),
            runbook: self.run.runbook.clone(),
            state: self.run.state.as_str().into(),
            created_at: self.run.created_at,
            updated_at: self.run.updated_at,
            record: serde_json::to_string(self)
                .map_err(|e| ApiError::internal(format!("cannot encode runbook run: {e}")))?,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Show the plan, change nothing (default false).
    #[serde(default)]
    pub dry_run: bool,
}

/// The engine commands of `runbook` with `params`, checked.
fn plan(runbook: &Runbook, given: &BTreeMap<String, String>) -> Result<Vec<Command>, String> {
    for name in given.keys() {
        if !runbook.parameters.iter().any(|p| &p.name == name) {
            return Err(format!("runbook {} has no parameter {name:?}", runbook.name));
        }
    }
    let mut params = BTreeMap::new();
    for p in &runbook.parameters {
        let value = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(format!("parameter {:?} is required: {}", p.name, p.description)),
        };
        // Names, ids and RFC 3339 moments; a value only ever fills a typed
        // field, never a shell string.
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+');
        if value.len() > MAX_PARAM_LEN || !value.chars().all(allowed) || (value.is_empty() && p.default.is_none()) {
            return Err(format!(
                "parameter {:?} must be a name or an id: 1 to {MAX_PARAM_LEN} letters, digits, '-', '_', '.', ':' or '+'",
                p.name
            ));
        }
        params.insert(p.name.clone(), value);
    }
    let mut out = Vec::new();
    for step in &runbook.steps {
        let f = |t: &str| fill(t, &params);
        out.push(match step {
            Step::FreezeAutomation { scope } => Command::FreezeAutomation { scope: f(scope)? },
            Step::ReleaseAutomation { scope } => Command::ReleaseAutomation { scope: f(scope)? },
            Step::Failover { service } => Command::Failover { name: f(service)? },
            Step::Switchover { service } => Command::Switchover { name: f(service)? },
            Step::RebuildFollower { service, instance } => {
                let instance = f(instance)?;
                let instance = match instance.as_str() {
                    "" => None,
                    text => Some(
                        text.parse::<InstanceId>()
                            .map_err(|e| format!("instance {text:?} is not an instance id: {e}"))?,
                    ),
                };
                Command::RebuildFollower { name: f(service)?, instance }
            }
            Step::TakeBackup { service } => Command::TakeBackup { name: f(service)? },
            Step::VerifyBackup { service } => Command::VerifyBackup { name: f(service)? },
            Step::ResumeService { service } => Command::ResumeService { name: f(service)? },
            Step::Fork { service, name, at } => {
                let at = match f(at)?.as_str() {
                    "" => None,
                    text => Some(Timestamp::parse(text)?),
                };
                Command::ForkService { source: f(service)?, name: f(name)?, at }
            }
        });
    }
    Ok(out)
}

/// The service a command acts on, or the scope it freezes.
fn target(c: &Command) -> (Option<&str>, Option<&str>) {
    match c {
        Command::FreezeAutomation { scope } | Command::ReleaseAutomation { scope } => (None, Some(scope)),
        other => (crate::node_commands::service_of(other), None),
    }
}

/// The caller may act on every target: a team's token only on its team's
/// services, and never on a zone or the fleet.
async fn check_targets(ready: &Ready, caller: &Identity, commands: &[Command]) -> Result<(), ApiError> {
    for c in commands {
        match target(c) {
            // The service's holder says (`node_commands`: on a split
            // fleet, maybe another node).
            (Some(_), _) => {
                crate::node_commands::run_as(ready, caller, c.clone(), true).await?;
            }
            (None, Some(scope)) if caller.team.is_some() => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("token {:?} is limited to a team; it cannot act on {scope:?}", caller.name),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Records a state of the run in the feed and the audit trail.
async fn record(ready: &Ready, who: &Identity, run: &RunbookRun, detail: String) -> Result<(), ApiError> {
    let command = Command::RecordRunbook {
        run: run.id.clone(),
        runbook: run.runbook.clone(),
        state: run.state.as_str().into(),
        detail,
    };
    ready.engine.call(who.command(command)).await.map(|_| ())
}

/// Runs the steps in order, under `who` (the approver of a dangerous run);
/// stops at the first refusal.
async fn execute(ready: &Ready, who: &Identity, stored: &mut StoredRun) -> Result<(), ApiError> {
    let mut failed = false;
    for (i, command) in stored.commands.clone().into_iter().enumerate() {
        if failed {
            break;
        }
        let freeze = match &command {
            Command::FreezeAutomation { scope } => Some((scope.clone(), true)),
            Command::ReleaseAutomation { scope } => Some((scope.clone(), false)),
            _ => None,
        };
        // A step naming a service runs on the engine that holds it.
        let outcome = match crate::node_commands::run_as(ready, who, command, false).await {
            Ok(_) => {
                if let Some((scope, frozen)) = freeze {
                    // Applied to the engine again at every start.
                    let (store, run, now) = (ready.breakglass.clone(), stored.run.id.clone(), crate::runtime::now());
                    blocking(move || store.set_freeze(&scope, frozen, now, &run)).await?;
                }
                "ok".to_string()
            }
            Err(e) => {
                failed = true;
                e.message
            }
        };
        if let Some(p) = stored.run.plan.get_mut(i) {
            p.outcome = Some(outcome);
        }
    }
    stored.run.state = if failed { RunState::Failed } else { RunState::Succeeded };
    stored.run.updated_at = crate::runtime::now();
    let row = stored.row()?;
    let store = ready.breakglass.clone();
    blocking(move || store.transition_run(RunState::Running.as_str(), &row)).await?;
    let summary = stored
        .run
        .plan
        .iter()
        .map(|p| {
            format!(
                "{} {}: {}",
                p.command,
                p.target.as_deref().unwrap_or("-"),
                p.outcome.as_deref().unwrap_or("not run")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    record(ready, who, &stored.run, format!("{} ({summary})", stored.run.state.as_str())).await
}

/// Every runbook shipped with this Drover.
#[utoipa::path(get, path = "/v1/runbooks", tag = "runbooks", responses((status = 200, body = Vec<Runbook>)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Runbook>>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(ready.runbooks.clone()))
}

/// Run a runbook: `dry_run` shows the plan and changes nothing; a dangerous
/// runbook waits for another token holder's approval (202); any other runs
/// now (201).
#[utoipa::path(post, path = "/v1/runbooks/{name}/runs", tag = "runbooks", request_body = RunRequest,
    params(("name" = String, Path, description = "Runbook name")),
    responses((status = 201, body = RunbookRun), (status = 202, body = RunbookRun), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn run(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<RunRequest>,
) -> Result<(StatusCode, Json<RunbookRun>), ApiError> {
    let ready = state.ready()?;
    let runbook = ready
        .runbooks
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no runbook named {name:?}; GET /v1/runbooks lists them")))?;
    let commands = plan(runbook, &request.params).map_err(ApiError::bad_request)?;
    check_targets(ready, &caller, &commands).await?;
    let now = crate::runtime::now();
    let state = if request.dry_run {
        RunState::Planned
    } else if runbook.dangerous {
        RunState::AwaitingApproval
    } else {
        RunState::Running
    };
    let mut stored = StoredRun {
        run: RunbookRun {
            id: uuid::Uuid::now_v7().to_string(),
            runbook: runbook.name.clone(),
            params: request.params,
            dry_run: request.dry_run,
            dangerous: runbook.dangerous,
            state,
            requested_by: caller.name.clone(),
            approved_by: None,
            plan: commands
                .iter()
                .map(|c| {
                    let (service, scope) = target(c);
                    PlannedStep {
                        command: c.name().into(),
                        target: service.or(scope).map(str::to_string),
                        outcome: None,
                    }
                })
                .collect(),
            created_at: now,
            updated_at: now,
        },
        commands,
        requested_by_token: caller.token_id.clone(),
    };
    let row = stored.row()?;
    let store = ready.breakglass.clone();
    blocking(move || store.insert_run(&row)).await?;
    let detail = match state {
        RunState::Planned => format!("dry run by {}: plan shown, nothing changed", caller.name),
        RunState::AwaitingApproval => {
            format!("requested by {}; dangerous: waits for another person's approval", caller.name)
        }
        _ => format!("requested by {}; running", caller.name),
    };
    record(ready, &caller, &stored.run, detail).await?;
    match state {
        RunState::Planned => Ok((StatusCode::CREATED, Json(stored.run))),
        RunState::AwaitingApproval => Ok((StatusCode::ACCEPTED, Json(stored.run))),
        _ => {
            execute(ready, &caller, &mut stored).await?;
            Ok((StatusCode::CREATED, Json(stored.run)))
        }
    }
}

/// Approve a dangerous run: another token holder than the one who asked.
/// The steps then run, audited under the approver.
#[utoipa::path(post, path = "/v1/runbooks/runs/{id}/approve", tag = "runbooks",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunbookRun), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RunbookRun>, ApiError> {
    let ready = state.ready()?;
    let mut stored = load(ready, &id).await?;
    if stored.run.state != RunState::AwaitingApproval {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {id} is {}, not awaiting approval", stored.run.state.as_str()),
        ));
    }
    if caller.token_id == stored.requested_by_token || caller.name == stored.run.requested_by {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            format!("run {id} was requested by {:?}: another person (token) must approve it", stored.run.requested_by),
        );
        let path = format!("/v1/runbooks/runs/{id}/approve");
        return Err(crate::auth::refuse(&state, &caller, "POST /v1/runbooks/runs/{id}/approve", &path, e).await);
    }
    check_targets(ready, &caller, &stored.commands).await?;
    stored.run.state = RunState::Running;
    stored.run.approved_by = Some(caller.name.clone());
    stored.run.updated_at = crate::runtime::now();
    let row = stored.row()?;
    let store = ready.breakglass.clone();
    let moved = blocking(move || store.transition_run(RunState::AwaitingApproval.as_str(), &row)).await?;
    if !moved {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("run {id} was approved by someone else meanwhile")));
    }
    record(
        ready,
        &caller,
        &stored.run,
        format!("approved by {} (requested by {})", caller.name, stored.run.requested_by),
    )
    .await?;
    execute(ready, &caller, &mut stored).await?;
    Ok(Json(stored.run))
}

/// One run.
#[utoipa::path(get, path = "/v1/runbooks/runs/{id}", tag = "runbooks",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunbookRun), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunbookRun>, ApiError> {
    let ready = state.ready()?;
    Ok(Json(load(ready, &id).await?.run))
}

async fn load(ready: &Ready, id: &str) -> Result<StoredRun, ApiError> {
    let (store, key) = (ready.breakglass.clone(), id.to_string());
    let row = blocking(move || store.run(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no runbook run {id:?}")))?;
    serde_json::from_str(&row.record)
        .map_err(|e| ApiError::internal(format!("stored runbook run {id} cannot be read: {e}")))
}

/// At start-up: automation frozen by hand stays frozen across restarts,
/// and a run the previous process was executing is marked failed (the
/// steps the engine accepted stand, as the audit trail shows; the others
/// never ran: run it again if it is still needed).
pub(crate) async fn at_start(ready: &Ready) -> anyhow::Result<()> {
    let store = ready.breakglass.clone();
    let running = tokio::task::spawn_blocking(move || store.runs(drover_store::MAX_READ_LIMIT)).await??;
    for row in running.into_iter().filter(|r| r.state == RunState::Running.as_str()) {
        let Ok(mut stored) = serde_json::from_str::<StoredRun>(&row.record) else { continue };
        stored.run.state = RunState::Failed;
        stored.run.updated_at = crate::runtime::now();
        for p in stored.run.plan.iter_mut().filter(|p| p.outcome.is_none()) {
            p.outcome = Some("interrupted by a restart of the control plane: see the audit trail".into());
        }
        let Ok(new_row) = stored.row() else { continue };
        let store = ready.breakglass.clone();
        tokio::task::spawn_blocking(move || store.transition_run(RunState::Running.as_str(), &new_row)).await??;
    }
    let store = ready.breakglass.clone();
    let scopes = tokio::task::spawn_blocking(move || store.freezes()).await??;
    for scope in scopes {
        let input = drover_engine::Input::Command {
            actor: "drover".into(),
            role: None,
            command: Command::FreezeAutomation { scope: scope.clone() },
        };
        if let Err(e) = ready.engine.call(input).await {
            tracing::error!(scope, error = %e.message, "a freeze of automation could not be applied again");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_runbooks_parse_and_plan_only_typed_commands() {
        let all = shipped().expect("shipped runbooks are valid");
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "freeze-automation",
                "release-automation",
                "force-failover",
                "rebuild-follower",
                "restore-into-new-service"
            ]
        );
        let freeze = &all[0];
        assert!(freeze.dangerous);
        let p = BTreeMap::from([("scope".to_string(), "zone-a".to_string())]);
        assert!(matches!(&plan(freeze, &p).unwrap()[..], [Command::FreezeAutomation { scope }] if scope == "zone-a"));
        assert!(plan(freeze, &BTreeMap::new()).unwrap_err().contains("required"));
        let evil = BTreeMap::from([("scope".to_string(), "a; rm -rf /".to_string())]);
        assert!(plan(freeze, &evil).is_err());
        let unknown = BTreeMap::from([("scope".to_string(), "fleet".to_string()), ("x".to_string(), "y".to_string())]);
        assert!(plan(freeze, &unknown).is_err());
        let rebuild = &all[3];
        let p = BTreeMap::from([("service".to_string(), "orders".to_string())]);
        assert!(matches!(&plan(rebuild, &p).unwrap()[..], [Command::RebuildFollower { instance: None, .. }]));
        let bad = BTreeMap::from([("service".to_string(), "orders".to_string()), ("instance".into(), "x".into())]);
        assert!(plan(rebuild, &bad).is_err());

        let restore = &all[4];
        assert!(!restore.dangerous, "a restore into a new service loses, fails over and stops nothing");
        let p = |at: Option<&str>| {
            let mut p =
                BTreeMap::from([("service".to_string(), "orders".to_string()), ("name".into(), "orders-copy".into())]);
            if let Some(at) = at {
                p.insert("at".into(), at.into());
            }
            p
        };
        assert!(matches!(
            &plan(restore, &p(None)).unwrap()[..],
            [Command::ForkService { source, name, at: None }] if source == "orders" && name == "orders-copy"
        ));
        let moment = Timestamp::parse("2026-12-01T09:30:00.25+01:00").unwrap();
        assert!(matches!(
            &plan(restore, &p(Some("2026-12-01T09:30:00.25+01:00"))).unwrap()[..],
            [Command::ForkService { at: Some(at), .. }] if *at == moment
        ));
        assert!(plan(restore, &p(Some("yesterday"))).unwrap_err().contains("invalid timestamp"));
        assert!(plan(restore, &BTreeMap::from([("service".to_string(), "orders".to_string())])).is_err());
        let planned = plan(restore, &p(None)).unwrap();
        assert_eq!(target(&planned[0]), (Some("orders"), None), "a team's token may restore only its own service");
    }

    #[test]
    fn a_runbooks_dir_adds_checked_runbooks_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"
name = "drain-zone"
description = "freeze a zone by another name"
dangerous = true
[[parameters]]
name = "zone"
description = "the zone"
[[steps]]
do = "freeze_automation"
scope = "{zone}"
"#;
        std::fs::write(dir.path().join("drain-zone.toml"), good).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a runbook").unwrap();
        let all = load_all(Some(dir.path())).expect("a good file loads");
        let extra = all.iter().find(|r| r.name == "drain-zone").expect("loaded");
        let p = BTreeMap::from([("zone".to_string(), "zone-b".to_string())]);
        assert!(matches!(&plan(extra, &p).unwrap()[..], [Command::FreezeAutomation { scope }] if scope == "zone-b"));
        assert_eq!(all.len(), shipped().unwrap().len() + 1);

        let cases = [
            ("dup.toml", good.replace("drain-zone", "force-failover"), "exists already"),
            ("shell.toml", good.replace("freeze_automation", "shell"), "shell.toml"),
            ("param.toml", good.replace("{zone}", "{nope}"), "nope"),
            ("name.toml", good.replace("drain-zone", "../x"), "name"),
            ("syntax.toml", "name = ".to_string(), "syntax.toml"),
        ];
        for (file, text, says) in cases {
            let bad = tempfile::tempdir().unwrap();
            std::fs::write(bad.path().join(file), text).unwrap();
            let e = load_all(Some(bad.path())).expect_err(file);
            assert!(e.contains(file) && e.contains(says), "{file}: {e}");
        }
        let e = load_all(Some(&dir.path().join("missing"))).unwrap_err();
        assert!(e.contains("--runbooks-dir"), "{e}");
    }
}
