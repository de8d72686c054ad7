//! The engine actor: the generic actor loop (`actor.rs`) around the pure
//! `Engine`. Everything that changes the fleet (HTTP commands, heartbeats,
//! provider results and reports, ticks) arrives on one channel and is stepped
//! in arrival order; each batch is committed in ONE store transaction (group
//! commit), and only after that commit are actions dispatched, the pager
//! woken and callers answered: nobody is told about a change that a crash
//! could lose.

use crate::actor::{self, Limits, Machine};
use crate::error::ApiError;
use crate::telemetry;
use drover_engine::{Dispatch, Engine, Input, Outputs, Reply};
use drover_model::{ActionOutcome, Changes, Timestamp};
use drover_providers::local::{Replication, UpstreamAddress};
use drover_providers::{Provider, ProviderEvent};
use drover_store::Store;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

pub use crate::actor::now;

/// Messages drained per loop: bounds the latency one loop adds to the first
/// caller in it, while still amortising one commit over many inputs.
pub const MAX_BATCH: usize = 1024;
/// Queue in front of the actor; when full, HTTP callers wait (backpressure).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// The engine actor's limits.
pub const LIMITS: Limits = Limits { max_batch: MAX_BATCH, queue_capacity: QUEUE_CAPACITY };

/// Provider calls (action attempts) running at once. Each attempt of the
/// local provider runs processes (initdb, pg_basebackup, pg_ctl) on this
/// host; a zone outage on a large fleet can dispatch thousands of promotes
/// in one batch, and starting them all at once would make every one of them
/// slow. The engine's per-zone action budgets already bound what runs; this
/// bounds what the host does at once (Neon's storage controller likewise
/// caps concurrent reconciles, at 128). When all permits are taken, further
/// attempts wait in FIFO order for one; the engine is never blocked. An
/// attempt that waits past its deadline is retried by the engine as a new
/// attempt, and the old attempt's late result is dropped as stale.
pub const MAX_ACTIONS_IN_FLIGHT: usize = 256;

pub type EngineHandle = actor::Handle<EngineMachine>;

/// Hands actions to the providers that carry them out and feeds the results
/// back to the engine, at most [`MAX_ACTIONS_IN_FLIGHT`] at once.
///
/// Each dispatched action names its provider (the one that built its
/// instance); a name this server has no provider for goes to the default.
#[derive(Clone)]
pub struct Dispatcher {
    providers: HashMap<String, Arc<dyn Provider>>,
    default_provider: Arc<dyn Provider>,
    engine: EngineHandle,
    in_flight: Arc<Semaphore>,
    /// The agents' action queues, and the host whose actions stay here
    /// (None: a control plane with no host of its own, `--no-local`).
    agents: crate::agents::AgentChannel,
    builtin_host: Option<String>,
    /// Derives each service's replication password for its members on
    /// agent hosts (see [`Dispatcher::replication_for`]).
    replication_key: Option<drover_secrets::SecretKey>,
    /// The routers beside the control plane of services on agent hosts: a
    /// Fence of a routed primary holds its router first.
    routers: Option<Arc<drover_providers::local::ControlPlaneRouters>>,
}

impl Dispatcher {
    pub fn new(
        providers: HashMap<String, Arc<dyn Provider>>,
        default_provider: Arc<dyn Provider>,
        engine: EngineHandle,
    ) -> Self {
        Dispatcher {
            providers,
            default_provider,
            engine,
            in_flight: Arc::new(Semaphore::new(MAX_ACTIONS_IN_FLIGHT)),
            agents: Default::default(),
            builtin_host: None,
            replication_key: None,
            routers: None,
        }
    }

    /// Actions for instances on another host than `builtin_host` go to
    /// that host's agent through `agents`.
    pub fn with_agents(mut self, agents: crate::agents::AgentChannel, builtin_host: Option<String>) -> Self {
        self.agents = agents;
        self.builtin_host = builtin_host;
        self
    }

    /// The key the replication passwords of services on agent hosts are
    /// derived from (HMAC of the service id).
    pub fn with_replication_key(mut self, key: drover_secrets::SecretKey) -> Self {
        self.replication_key = Some(key);
        self
    }

    /// The routers beside the control plane (`--no-local`).
    pub fn with_routers(mut self, routers: Arc<drover_providers::local::ControlPlaneRouters>) -> Self {
        self.routers = Some(routers);
        self
    }

    /// What a PostgreSQL member built on an agent host needs to replicate
    /// with members on other hosts: the service's replication password
    /// (derived, never stored) and, for a follower, where its primary is
    /// reached (its host's address; the port its agent reports, looked up
    /// when the action is queued, see [`Dispatcher::to_agent`]).
    fn replication_for(&self, engine: &Engine, action: &drover_model::ActionRecord) -> Option<PendingReplication> {
        let drover_model::ProvisionSpec { role, engine: kind, service_name, .. } = action.kind.provision()?;
        if *kind != drover_model::EngineKind::Postgres {
            return None;
        }
        let key = self.replication_key.as_ref()?;
        let password = replication_password(key, action.service);
        let login_password = login_password(key, action.service);
        // The verifier the router beside the control plane holds (made and
        // kept on first ask): the servers must hold the same one.
        let login = match &self.routers {
            Some(routers) => match routers.login_verifier(action.service, service_name, &login_password) {
                Ok(verifier) => Some(drover_providers::local::Login { password: login_password, verifier }),
                Err(error) => {
                    tracing::warn!(service = %service_name, %error, "cannot keep the service's login for its router");
                    None
                }
            },
            None => None,
        };
        let primary = (*role == drover_model::Role::Follower)
            .then(|| {
                let view = engine.service_view(service_name)?;
                let primary = view
                    .instances
                    .iter()
                    .find(|i| i.role == drover_model::Role::Primary && !i.fenced && i.id != action.instance)?;
                let address = engine.host_record(primary.host.as_deref()?)?.address;
                Some((primary.id, address))
            })
            .flatten();
        Some(PendingReplication { password, login, primary })
    }

    /// Dispatches `actions`, each to the agent of its instance's host
    /// (`engine` says which) unless that is the built-in host or none.
    pub fn dispatch_routed(&self, engine: &Engine, actions: Vec<Dispatch>) {
        let mut here = Vec::with_capacity(actions.len());
        for dispatch in actions {
            let host = engine.instance_host(dispatch.action.instance);
            match host {
                Some(host) if self.builtin_host.as_deref() != Some(host) => {
                    let replication = self.replication_for(engine, &dispatch.action);
                    let hold = self.hold_for(engine, &dispatch.action);
                    let address = engine.host_record(host).map(|h| h.address).filter(|a| !a.is_empty());
                    self.to_agent(host.to_string(), dispatch.action, replication, hold, address)
                }
                _ => here.push(dispatch),
            }
        }
        self.dispatch(here);
    }

    /// A Fence of a service's primary on an agent host: its router beside
    /// the control plane holds new queries before the fence runs (clients
    /// queue through the switch instead of meeting a stopping server), as
    /// the local provider's own fence does.
    fn hold_for(&self, engine: &Engine, action: &drover_model::ActionRecord) -> Option<RouterHold> {
        if !matches!(action.kind, drover_model::ActionKind::Fence { .. }) {
            return None;
        }
        let routers = self.routers.clone()?;
        let instance = engine.instance_view(action.instance)?;
        (instance.role == drover_model::Role::Primary).then_some(RouterHold { routers })
    }

    /// Queues `action` for the agent of `host`. A follower whose primary
    /// has not reported its port yet (both were decided together: the
    /// primary is still being built) waits for it, within the attempt's
    /// deadline, before it is queued; past that it goes without, and the
    /// agent fails the attempt retryably.
    ///
    /// Two actions do not wait for a silent host's agent
    /// ([`crate::silent_hosts`]): a probe is made from here over the network
    /// (at the host's `address`), and a fence is counted done once the
    /// agent has been silent past its lease.
    fn to_agent(
        &self,
        host: String,
        action: drover_model::ActionRecord,
        replication: Option<PendingReplication>,
        hold: Option<RouterHold>,
        address: Option<String>,
    ) {
        let kind = action.kind.name();
        metrics::counter!(telemetry::ACTIONS_DISPATCHED, "kind" => kind).increment(1);
        tracing::info!(action = %action.id, kind, instance = %action.instance, attempt = action.attempts,
            %host, "dispatching action to the host's agent");
        let (id, attempt) = (action.id, action.attempts);
        let handle = self.engine.clone();
        let agents = self.agents.clone();
        let probe = action.kind == drover_model::ActionKind::Probe;
        let login_password =
            self.replication_key.as_ref().filter(|_| probe).map(|key| login_password(key, action.service));
        tokio::spawn(async move {
            if probe {
                if let (Some(address), Some(port)) = (address.clone(), agents.port(action.instance)) {
                    let target = crate::silent_hosts::Target { address, port, login_password };
                    let outcome = crate::silent_hosts::probe(&target).await;
                    handle.send(Input::ActionResult { action: id, attempt, outcome }).await;
                    return;
                }
            }
            if let Some(RouterHold { routers }) = hold {
                routers.hold(action.service).await;
            }
            let replication = match replication {
                None => None,
                Some(PendingReplication { password, login, primary: None }) => {
                    Some(Replication { password, primary: None, login })
                }
                Some(PendingReplication { password, login, primary: Some((primary, address)) }) => {
                    let deadline = action.deadline.0 - now().0;
                    let until =
                        tokio::time::Instant::now() + std::time::Duration::from_micros(deadline.max(0) as u64 / 2);
                    let mut port = agents.port(primary);
                    while port.is_none() && tokio::time::Instant::now() < until {
                        tokio::time::sleep(PRIMARY_PORT_POLL).await;
                        port = agents.port(primary);
                    }
                    let primary = port.map(|port| UpstreamAddress { address, port });
                    Some(Replication { password, primary, login })
                }
            };
            let fence = matches!(action.kind, drover_model::ActionKind::Fence { .. });
            let instance = action.instance;
            let answered = agents.execute(host.clone(), action, replication);
            let outcome = if fence {
                tokio::select! {
                    outcome = answered => outcome,
                    why = crate::silent_hosts::fenced_by_silence(agents.clone(), host.clone(), instance, address) => {
                        agents.withdraw(&host, id, attempt);
                        tracing::warn!(action = %id, %instance, %host, %why, "fence counted done without the host's agent");
                        ActionOutcome::Succeeded { detail: Some(why) }
                    }
                }
            } else {
                answered.await
            };
            handle.send(Input::ActionResult { action: id, attempt, outcome }).await;
        });
    }

    pub fn dispatch(&self, actions: Vec<Dispatch>) {
        for Dispatch { provider, action } in actions {
            let provider = self.providers.get(&provider).cloned().unwrap_or_else(|| self.default_provider.clone());
            let kind = action.kind.name();
            metrics::counter!(telemetry::ACTIONS_DISPATCHED, "kind" => kind).increment(1);
            tracing::info!(action = %action.id, kind, instance = %action.instance, attempt = action.attempts,
                provider = provider.name(), "dispatching action");
            let (id, attempt) = (action.id, action.attempts);
            let handle = self.engine.clone();
            let in_flight = self.in_flight.clone();
            tokio::spawn(async move {
                // Never closed, so acquiring only waits.
                let Ok(_permit) = in_flight.acquire_owned().await else { return };
                let outcome = provider.execute(action).await;
                let label = match &outcome {
                    ActionOutcome::Succeeded { .. } => "succeeded",
                    ActionOutcome::Failed { .. } => "failed",
                };
                metrics::counter!(telemetry::ACTION_RESULTS, "kind" => kind, "outcome" => label).increment(1);
                tracing::debug!(action = %id, kind, attempt, outcome = label, "action attempt finished");
                handle.send(Input::ActionResult { action: id, attempt, outcome }).await;
            });
        }
    }
}

/// [`Replication`] before the primary's port is looked up.
struct PendingReplication {
    password: String,
    /// The service's login (see [`login_password`]), when its router
    /// beside the control plane keeps one.
    login: Option<drover_providers::local::Login>,
    /// The primary's id and its host's address.
    primary: Option<(drover_model::InstanceId, String)>,
}

/// A router to hold before an action runs (see [`Dispatcher::hold_for`]).
struct RouterHold {
    routers: Arc<drover_providers::local::ControlPlaneRouters>,
}

/// How often a follower's Provision looks for its primary's port while the
/// primary is being built (its agent reports it with each beat, every 250 ms).
const PRIMARY_PORT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The replication password of `service`'s members on agent hosts,
/// derived from the control plane's secret key and the service id (as hex):
/// nothing to store, the same after a restart, never in the store or a log.
fn replication_password(key: &drover_secrets::SecretKey, service: drover_model::ServiceId) -> String {
    key.derive(&format!("agents/replication/{service}")).iter().map(|b| format!("{b:02x}")).collect()
}

/// The password of the login role of `service`'s URL on agent hosts,
/// derived like [`replication_password`]: the router beside the control
/// plane and every host that builds a member agree on it, and nothing is
/// stored. (A credential rotation on agent hosts is not built yet.)
pub(crate) fn login_password(key: &drover_secrets::SecretKey, service: drover_model::ServiceId) -> String {
    key.derive(&format!("agents/login/{service}")).iter().map(|b| format!("{b:02x}")).collect()
}

/// Forwards what providers report on their own to the engine.
pub fn forward_provider_events(mut events: mpsc::Receiver<ProviderEvent>, engine: EngineHandle) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let input = match event {
                ProviderEvent::Beats(beats) => {
                    metrics::counter!(telemetry::HEARTBEATS_RECEIVED).increment(beats.len() as u64);
                    Input::Heartbeats(beats)
                }
                ProviderEvent::Gone { instance, detail } => {
                    tracing::warn!(%instance, %detail, "provider reports instance gone");
                    Input::ProviderReport { instance, gone: true, detail }
                }
                ProviderEvent::Router { service, detail } => {
                    tracing::warn!(%service, %detail, "provider reports on a router");
                    Input::RouterReport { service, detail }
                }
            };
            if !engine.send(input).await {
                break;
            }
        }
    });
}

/// Commits `changes` on a blocking thread; records latency and failures.
pub async fn commit(store: &Arc<dyn Store>, changes: Changes) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let store = store.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || store.commit(changes)).await;
    metrics::histogram!(telemetry::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    let result = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) => Err(format!("store commit task failed: {join}")),
    };
    if result.is_err() {
        metrics::counter!(telemetry::COMMIT_FAILURES).increment(1);
    }
    result
}

/// Wakes the pager's bridge after a commit that holds events it may care
/// about. The channel holds ONE pending wake-up: the events themselves are
/// read back from the store (the log of record), from where the bridge last
/// stopped. So the channel is never full of work: when a wake-up is already
/// pending, another adds nothing and is skipped; the engine never waits for
/// the pager, and no committed event is lost to a full queue (a slow pager
/// reads a longer stretch of the log the next time).
#[derive(Clone)]
pub struct PagerWakeup {
    pub filter: fn(&drover_model::Event) -> bool,
    pub tx: mpsc::Sender<()>,
}

/// A wake-up channel for [`PagerWakeup`]: capacity one, see there.
pub fn pager_wakeup(filter: fn(&drover_model::Event) -> bool) -> (PagerWakeup, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel(1);
    (PagerWakeup { filter, tx }, rx)
}

/// One line of the input log (`--input-log`): the engine's start, or one
/// input with the time it was stepped at. JSON, one record a line.
// One line at a time, written and dropped: the size of `Input` costs nothing here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLine {
    /// The engine was restored from the store with this seed at `at`.
    /// Replay from an empty store needs only what follows; replay of a later
    /// start also needs the store as it was at `at`.
    Start {
        at: Timestamp,
        seed: u64,
    },
    Input {
        at: Timestamp,
        input: Input,
    },
}

/// Appends every input the engine is given to a file, so the seed (also
/// kept in the store) and this log reproduce the event log exactly. A debug
/// aid: a write error is logged and turns the log off; it never stops the
/// engine. Lines are flushed before each batch's commit, so the log holds at
/// least what the store holds.
pub struct InputLog {
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl InputLog {
    pub fn open(path: &Path) -> std::io::Result<InputLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(InputLog { path: path.to_path_buf(), out: std::io::BufWriter::new(file) })
    }

    fn write(&mut self, line: &LogLine) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }
}

/// Reads an input log written by [`InputLog`].
pub fn read_input_log(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), n + 1)))
        .collect()
}

/// The engine with its store, its dispatcher, the pager's wake-up and the
/// optional input log: what the engine actor owns.
pub struct EngineMachine {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub pager: Option<PagerWakeup>,
    input_log: Option<InputLog>,
    /// Whether a commit failed since the engine was last loaded: its memory
    /// may hold what the store refused (a change on a shard this node no
    /// longer holds), so it is not merged with more (`absorb_into_engine`).
    refused: bool,
}

impl EngineMachine {
    pub fn new(
        engine: Engine,
        store: Arc<dyn Store>,
        dispatcher: Dispatcher,
        pager: Option<PagerWakeup>,
        input_log: Option<InputLog>,
    ) -> Self {
        EngineMachine { engine, store, dispatcher, pager, input_log, refused: false }
    }

    /// Writes the start line of the input log: the seed and restore time.
    pub fn log_start(&mut self, at: Timestamp, seed: u64) {
        self.log(|| LogLine::Start { at, seed });
    }

    fn log(&mut self, line: impl FnOnce() -> LogLine) {
        if let Some(log) = &mut self.input_log {
            if let Err(error) = log.write(&line()) {
                tracing::error!(path = %log.path.display(), %error, "cannot write the input log; it is off from here");
                self.input_log = None;
            }
        }
    }

    fn flush_log(&mut self) {
        if let Some(log) = &mut self.input_log {
            if let Err(error) = log.out.flush() {
                tracing::error!(path = %log.path.display(), %error, "cannot write the input log; it is off from here");
                self.input_log = None;
            }
        }
    }

    /// Steps one input, logging it first (start-up goes through here too).
    pub fn step_logged(&mut self, input: Input, now: Timestamp) -> Outputs {
        if let Some(log) = &mut self.input_log {
            let line = LogLine::Input { at: now, input };
            let result = log.write(&line);
            let LogLine::Input { input, .. } = line else { unreachable!("built just above") };
            if let Err(error) = result {
                tracing::error!(path = %log.path.display(), %error, "cannot write the input log; it is off from here");
                self.input_log = None;
            }
            return self.engine.step(input, now);
        }
        self.engine.step(input, now)
    }
}

/// What the engine of another part of the fleet starts from (a hand-over,
/// [`hand_over_engine`]): read from the store after the running engine's
/// last commit.
pub struct Reload {
    /// The shards now held: their services, instances, actions and
    /// archives, and the fleet-wide records (`PgStore::load_shards`).
    pub snapshot: drover_model::Snapshot,
    /// Which part of the fleet that is (`held` of all shards).
    pub share: drover_engine::Share,
    /// The freezes of automation made by hand (the break-glass store's):
    /// engine memory only, applied again before the new engine's first
    /// tick, as at start-up.
    pub freezes: Vec<String>,
}

impl EngineMachine {
    /// The same shell (store, dispatcher, pager wake-up, input log) around a
    /// new engine restored from `reload` at `now`: the old engine's
    /// configuration with the new share. Returns what the restore and the
    /// freezes decided, to commit before the new engine runs, and the
    /// running actions to dispatch again after that commit (the agents and
    /// providers answer a repeated action from their own record).
    pub fn reload(mut self, reload: Reload, seed: u64, now: Timestamp) -> (Self, Changes, Vec<Dispatch>) {
        let Reload { snapshot, share, freezes } = reload;
        let mut config = self.engine.config().clone();
        config.share = share;
        let (engine, restored) = Engine::restore(config, seed, snapshot, now);
        self.engine = engine;
        self.refused = false;
        self.log_start(now, seed);
        let (mut changes, mut dispatch) = (restored.changes, restored.dispatch);
        for scope in freezes {
            let command = drover_engine::Command::FreezeAutomation { scope: scope.clone() };
            let out = self.step_logged(Input::Command { actor: "drover".into(), role: None, command }, now);
            if let Some(Err(error)) = &out.reply {
                tracing::error!(scope, %error, "a freeze of automation could not be applied again");
            }
            changes.extend(out.changes);
            dispatch.extend(out.dispatch);
        }
        (self, changes, dispatch)
    }

    /// `part` merged into the running engine, its share now `share`
    /// (`Engine::absorb`). The input log cannot replay a merge (it starts
    /// from a restore of the store), so it ends here.
    pub fn absorb(&mut self, part: drover_model::Snapshot, share: drover_engine::Share, now: Timestamp) -> Outputs {
        if let Some(log) = self.input_log.take() {
            tracing::warn!(path = %log.path.display(), "the input log ends here: it cannot replay shards merged into the running engine");
        }
        self.engine.absorb(part, share, now)
    }
}

/// Hands the engine behind `handle` (its actor `running`) over to an engine
/// of another part of the fleet (issue 16: the shards a node holds
/// changed). Every input sent before is stepped and committed by the
/// running engine; every input sent once `redirected` is called waits for
/// the new one,
/// whose part is read by `load` only after that last commit, so it starts
/// from all of it. The new engine's restore is committed before its actor
/// starts and its running actions are dispatched after that commit, as at
/// start-up. On an error the handle's callers are answered 503 until the
/// next hand-over.
pub async fn hand_over_engine<L>(
    handle: &EngineHandle,
    running: tokio::task::JoinHandle<EngineMachine>,
    load: L,
    shutdown: tokio::sync::watch::Receiver<bool>,
    redirected: impl FnOnce(),
) -> anyhow::Result<tokio::task::JoinHandle<EngineMachine>>
where
    L: FnOnce() -> anyhow::Result<Reload> + Send + 'static,
{
    let (old, inbox) = stop_running(handle, running, redirected).await?;
    reload_machine(old, inbox, load, shutdown).await
}

/// Redirects `handle` to a new inbox (whatever is sent from then on waits
/// for the next engine), says so (`redirected`), and waits for the running
/// actor to step and commit every input sent before: its machine, and the
/// new inbox.
async fn stop_running(
    handle: &EngineHandle,
    running: tokio::task::JoinHandle<EngineMachine>,
    redirected: impl FnOnce(),
) -> anyhow::Result<(EngineMachine, tokio::sync::mpsc::Receiver<actor::Msg<EngineMachine>>)> {
    let inbox = handle.redirect(LIMITS);
    redirected();
    let machine = running.await.map_err(|e| anyhow::anyhow!("the running engine's task failed: {e}"))?;
    Ok((machine, inbox))
}

/// `machine`'s actor, started on `inbox`.
fn run_on(
    machine: EngineMachine,
    inbox: tokio::sync::mpsc::Receiver<actor::Msg<EngineMachine>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<EngineMachine> {
    tokio::spawn(actor::Actor { machine, inbox, shutdown, limits: LIMITS }.run_to_end())
}

/// The second half of [`hand_over_engine`]: `old`, its inputs all stepped
/// and committed, restored from what `load` reads now, and its actor
/// started again on `inbox`.
async fn reload_machine<L>(
    old: EngineMachine,
    inbox: tokio::sync::mpsc::Receiver<actor::Msg<EngineMachine>>,
    load: L,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<EngineMachine>>
where
    L: FnOnce() -> anyhow::Result<Reload> + Send + 'static,
{
    let reload = tokio::task::spawn_blocking(load).await??;
    let now = now();
    let seed = (now.0 as u64) ^ ((std::process::id() as u64) << 32);
    {
        let store = Arc::clone(&old.store);
        let start = drover_store::EngineStart { at: now, seed };
        tokio::task::spawn_blocking(move || store.record_start(start)).await??;
    }
    let (held, of, services) = (reload.share.held, reload.share.of, reload.snapshot.services.len());
    let (machine, changes, redispatch) = old.reload(reload, seed, now);
    commit(&machine.store, changes)
        .await
        .map_err(|e| anyhow::anyhow!("cannot persist the new engine's restore: {e}"))?;
    tracing::info!(
        held,
        of,
        services,
        redispatched = redispatch.len(),
        "the engine was handed over to the shards now held"
    );
    machine.dispatcher.dispatch_routed(&machine.engine, redispatch);
    Ok(run_on(machine, inbox, shutdown))
}

/// Takes shards over into the engine behind `handle` (its actor `running`)
/// without reloading what it already runs (issue 16: a node took the shards
/// of one that died): `part`, read beforehand while the engine ran on, is
/// merged into it (`Engine::absorb`) and its share becomes `share`. Every
/// input sent before is stepped and committed by the running actor; every
/// input sent once `redirected` is called waits for the merged engine. What
/// the merge decided is committed before the actor starts again and its
/// running actions are dispatched after that commit, as at start-up.
///
/// An engine a commit of which failed since its last load may hold in
/// memory what the store refused (a change on a shard this node had lost):
/// it is restored from `whole` instead, as [`hand_over_engine`] does.
pub async fn absorb_into_engine<L>(
    handle: &EngineHandle,
    running: tokio::task::JoinHandle<EngineMachine>,
    part: drover_model::Snapshot,
    share: drover_engine::Share,
    whole: L,
    shutdown: tokio::sync::watch::Receiver<bool>,
    redirected: impl FnOnce(),
) -> anyhow::Result<tokio::task::JoinHandle<EngineMachine>>
where
    L: FnOnce() -> anyhow::Result<Reload> + Send + 'static,
{
    let (mut machine, inbox) = stop_running(handle, running, redirected).await?;
    if machine.refused {
        tracing::warn!("a commit failed since the engine was loaded: it is loaded again whole rather than merged into");
        return reload_machine(machine, inbox, whole, shutdown).await;
    }
    let (services, instances) = (part.services.len(), part.instances.len());
    let out = machine.absorb(part, share, now());
    if let Err(error) = commit(&machine.store, out.changes).await {
        // As a batch's failed commit: nothing dispatched (the running
        // actions time out and are retried), later commits write the
        // newest records again, and the next hand-over loads it whole. The
        // engine runs on for the shards it kept.
        tracing::error!(%error, "what the engine decided on the shards it took could not be persisted");
        machine.refused = true;
        return Ok(run_on(machine, inbox, shutdown));
    }
    tracing::info!(
        held = share.held,
        of = share.of,
        services,
        instances,
        redispatched = out.dispatch.len(),
        "the shards taken over were merged into the running engine"
    );
    machine.dispatcher.dispatch_routed(&machine.engine, out.dispatch);
    Ok(run_on(machine, inbox, shutdown))
}

/// A batch's outputs: the changes to commit and the actions to dispatch.
#[derive(Default)]
pub struct Decided {
    changes: Changes,
    dispatch: Vec<Dispatch>,
    steps: u64,
}

impl Decided {
    pub fn absorb(&mut self, out: Outputs) {
        self.changes.extend(out.changes);
        self.dispatch.extend(out.dispatch);
        self.steps += 1;
    }
}

impl Machine for EngineMachine {
    type Input = Input;
    type Reply = Reply;
    type Outputs = Decided;
    type View = Engine;
    const NAME: &'static str = "engine";

    fn view(&self) -> &Engine {
        &self.engine
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.engine.next_deadline()
    }

    fn tick(&mut self, now: Timestamp, out: &mut Decided) {
        let stepped = self.step_logged(Input::Tick, now);
        out.absorb(stepped);
    }

    fn step(&mut self, input: Input, now: Timestamp, out: &mut Decided) -> Option<Result<Reply, ApiError>> {
        let mut stepped = self.step_logged(input, now);
        let reply = stepped.reply.take();
        out.absorb(stepped);
        reply.map(|r| r.map_err(ApiError::from))
    }

    async fn commit(&mut self, out: Decided, batch_size: usize) -> Result<(), String> {
        metrics::histogram!(telemetry::ENGINE_BATCH_SIZE).record(batch_size as f64);
        metrics::counter!(telemetry::ENGINE_STEPS).increment(out.steps);
        self.flush_log();
        let Decided { changes, dispatch, .. } = out;
        let wake_pager = match &self.pager {
            Some(p) => changes.events.iter().any(|e| (p.filter)(e)),
            None => false,
        };
        if let Err(error) = commit(&self.store, changes).await {
            // The running actions that were not dispatched time out and are
            // retried by the engine.
            tracing::error!(actions = dispatch.len(), "nothing dispatched: the commit failed");
            self.refused = true;
            return Err(error);
        }
        if let (Some(pager), true) = (&self.pager, wake_pager) {
            // Full means a wake-up is already pending: it will read these too.
            let _ = pager.tx.try_send(());
        }
        self.dispatcher.dispatch_routed(&self.engine, dispatch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::Msg;
    use drover_model::{
        ActionOutcome, ActionRecord, AuditEntry, CreateService, EngineKind, Event, ServiceId, Snapshot,
    };
    use drover_providers::BoxFuture;
    use drover_store::{EngineStart, EventFilter, StoreError};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::{oneshot, watch};

    /// A store whose commits fail while `broken` is set.
    #[derive(Default)]
    struct FlakyStore {
        broken: AtomicBool,
        commits: AtomicUsize,
    }
    impl Store for FlakyStore {
        fn load(&self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn commit(&self, _changes: Changes) -> Result<(), StoreError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(StoreError::WriterStopped);
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn events(&self, _filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
            Ok(Vec::new())
        }
        fn audit(&self, _limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
            Ok(Vec::new())
        }
        fn actions(&self, _service: Option<ServiceId>, _limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
            Ok(Vec::new())
        }
        fn last_event_seq(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn setting(&self, _name: &str) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        fn put_setting(&self, _name: &str, _value: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn record_start(&self, _start: EngineStart) -> Result<(), StoreError> {
            Ok(())
        }
        fn engine_starts(&self) -> Result<Vec<EngineStart>, StoreError> {
            Ok(Vec::new())
        }
        fn log_rows_before(
            &self,
            _log: drover_store::Log,
            _cutoff: drover_model::Timestamp,
            _limit: usize,
        ) -> Result<Vec<drover_store::LogRow>, StoreError> {
            Ok(Vec::new())
        }
        fn prune_log(
            &self,
            _log: drover_store::Log,
            _through: u64,
            _cutoff: drover_model::Timestamp,
        ) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    /// A provider that only counts what it is asked to do and never answers.
    #[derive(Default)]
    struct CountingProvider {
        executed: AtomicUsize,
    }
    impl Provider for CountingProvider {
        fn name(&self) -> &str {
            "sim"
        }
        fn engines(&self) -> &'static [drover_model::EngineKind] {
            &[drover_model::EngineKind::Postgres]
        }
        fn execute(&self, _action: ActionRecord) -> BoxFuture<ActionOutcome> {
            self.executed.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
        fn start(&self, _sink: mpsc::Sender<ProviderEvent>) {}
    }

    fn create(name: &str) -> Input {
        Input::Command {
            actor: "test".into(),
            role: None,
            command: drover_engine::Command::CreateService(CreateService {
                name: name.into(),
                engine: EngineKind::Postgres,
                followers: 1,
                provider: None,
                sync: None,
                team: None,
                zones: None,
                max_failover_lag_bytes: None,
                credential_rotation_days: None,
                labels: None,
                brokers: None,
            }),
        }
    }

    fn actor(store: Arc<FlakyStore>, provider: Arc<CountingProvider>) -> (EngineHandle, watch::Sender<bool>) {
        let now = now();
        let config = drover_engine::Config::default();
        let (mut engine, _) = Engine::restore(config, 7, Snapshot::default(), now);
        for image in crate::default_images(now) {
            engine.step(
                Input::Command {
                    actor: "system".into(),
                    role: None,
                    command: drover_engine::Command::RegisterImage(image),
                },
                now,
            );
        }
        let (handle, inbox) = actor::channel::<EngineMachine>(LIMITS);
        let provider: Arc<dyn Provider> = provider;
        let dispatcher =
            Dispatcher::new(HashMap::from([("sim".to_string(), provider.clone())]), provider, handle.clone());
        let (stop, shutdown) = watch::channel(false);
        let machine = EngineMachine::new(engine, store, dispatcher, None, None);
        tokio::spawn(actor::Actor { machine, inbox, shutdown, limits: LIMITS }.run());
        (handle, stop)
    }

    fn in_shard(name: &str, shard: u16, of: u16) -> bool {
        drover_model::Slot::of_name(name).shard(of) == shard
    }

    /// A node that now holds shard 0 of 2 hands its engine over while
    /// creates keep coming: every create is answered, the new engine has
    /// exactly shard 0's services (those committed by the old engine,
    /// read from the store after its last commit, and those sent during
    /// the hand-over), runs its share of the fleet, and has the freezes
    /// made by hand applied again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_handed_over_to_the_shards_now_held_starts_from_all_that_was_committed_and_loses_no_command() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(drover_store::SqliteStore::open(&dir.path().join("drover.db")).unwrap());
        let now = now();
        let (mut engine, _) = Engine::restore(drover_engine::Config::default(), 7, store.load().unwrap(), now);
        let mut images = Changes::default();
        for image in crate::default_images(now) {
            let command = drover_engine::Command::RegisterImage(image);
            images.extend(engine.step(Input::Command { actor: "system".into(), role: None, command }, now).changes);
        }
        commit(&store, images).await.unwrap();
        let (handle, inbox) = actor::channel::<EngineMachine>(LIMITS);
        let provider: Arc<dyn Provider> = Arc::new(CountingProvider::default());
        let dispatcher =
            Dispatcher::new(HashMap::from([("sim".to_string(), provider.clone())]), provider, handle.clone());
        let (_stop, shutdown) = watch::channel(false);
        let machine = EngineMachine::new(engine, Arc::clone(&store), dispatcher, None, None);
        let running =
            tokio::spawn(actor::Actor { machine, inbox, shutdown: shutdown.clone(), limits: LIMITS }.run_to_end());

        let early: Vec<String> = (0..16).map(|i| format!("early-{i}")).collect();
        for name in &early {
            handle.call(create(name)).await.expect("created");
        }
        // Sent while the engine is handed over: shard 0's only (routing
        // the others to their holders is not the engine's job).
        let late: Vec<String> = (0..200).map(|i| format!("late-{i}")).filter(|n| in_shard(n, 0, 2)).take(24).collect();
        let senders: Vec<_> = late
            .chunks(6)
            .map(|names| {
                let (handle, names) = (handle.clone(), names.to_vec());
                tokio::spawn(async move {
                    for name in names {
                        handle.call(create(&name)).await.expect("a create sent during the hand-over is answered");
                    }
                })
            })
            .collect();
        let from = Arc::clone(&store);
        let new = hand_over_engine(
            &handle,
            running,
            move || {
                let mut snapshot = from.load()?;
                let kept: std::collections::HashSet<ServiceId> =
                    snapshot.services.iter().filter(|s| in_shard(&s.name, 0, 2)).map(|s| s.id).collect();
                snapshot.services.retain(|s| kept.contains(&s.id));
                snapshot.instances.retain(|i| kept.contains(&i.service));
                snapshot.actions.retain(|a| kept.contains(&a.service));
                Ok(Reload { snapshot, share: drover_engine::Share::new(1, 2), freezes: vec!["fleet".into()] })
            },
            shutdown,
            || {},
        )
        .await
        .expect("handed over");
        for sender in senders {
            sender.await.unwrap();
        }
        let (names, share, braked) = handle
            .query(|e: &Engine| {
                let mut names: Vec<String> = e.service_views().into_iter().map(|v| v.name).collect();
                names.sort();
                (names, e.config().share, e.stats().braked)
            })
            .await
            .unwrap();
        let mut expected: Vec<String> =
            early.iter().filter(|n| in_shard(n, 0, 2)).chain(late.iter()).cloned().collect();
        expected.sort();
        assert!(early.iter().any(|n| !in_shard(n, 0, 2)), "some early service is in the other shard");
        assert_eq!(names, expected, "the new engine holds shard 0's services, none lost, none of shard 1");
        assert_eq!(share, drover_engine::Share::new(1, 2));
        assert_eq!(braked, vec!["fleet".to_string()], "the freeze made by hand applies again");
        // Everything the new engine did is in the store too.
        let stored: Vec<String> = store.load().unwrap().services.into_iter().map(|s| s.name).collect();
        assert!(late.iter().all(|n| stored.contains(n)), "the late creates were committed");
        drop(handle);
        drop(new);
    }

    #[tokio::test]
    async fn a_failed_commit_answers_503_and_dispatches_nothing() {
        let store = Arc::new(FlakyStore::default());
        let provider = Arc::new(CountingProvider::default());
        let (handle, _stop) = actor(store.clone(), provider.clone());

        store.broken.store(true, Ordering::SeqCst);
        let refused = handle.call(create("db1")).await.expect_err("a failed commit is not a success");
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(provider.executed.load(Ordering::SeqCst), 0, "dispatched before a durable commit");

        store.broken.store(false, Ordering::SeqCst);
        let created = handle.call(create("db2")).await.expect("created once the store works");
        assert!(matches!(created, Reply::Service(_)));
        assert!(store.commits.load(Ordering::SeqCst) >= 1);
        assert!(provider.executed.load(Ordering::SeqCst) >= 2, "provisions dispatched after the commit");
    }

    #[tokio::test]
    async fn a_query_queued_after_a_command_in_the_same_batch_sees_its_result() {
        let store = Arc::new(FlakyStore::default());
        let provider = Arc::new(CountingProvider::default());
        let (handle, _stop) = actor(store.clone(), provider);
        // Current-thread runtime: the actor cannot run before we yield, so
        // both messages land in one batch, the command first.
        let (reply, replied) = oneshot::channel();
        handle.sender().try_send(Msg::Input { input: create("db1"), reply: Some(reply) }).ok().unwrap();
        let (seen, saw) = oneshot::channel();
        let commits_before_query = store.clone();
        handle
            .sender()
            .try_send(Msg::Query(Box::new(move |e: &Engine| {
                let _ =
                    seen.send((e.service_view("db1").is_some(), commits_before_query.commits.load(Ordering::SeqCst)));
            })))
            .ok()
            .unwrap();
        assert!(replied.await.unwrap().is_ok());
        let (visible, commits) = saw.await.unwrap();
        assert!(visible, "the query did not see the command before it");
        assert!(commits >= 1, "the query ran before the command's commit");
    }
}
