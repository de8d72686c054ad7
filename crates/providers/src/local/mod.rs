//! The `local` provider: real PostgreSQL 15 servers on this machine, one
//! pgbouncer router per service, streaming replication, fencing and
//! promotion.
//!
//! Every server is a child of this process (postmasters spawned directly,
//! never `pg_ctl start`, which daemonizes), runs as [`RunAs`] (PostgreSQL
//! refuses root) in its own process group, and is watched by a reaper task:
//! a postmaster that exits without being asked to is reported at once as
//! `ProviderEvent::Gone`, the evidence that makes failover fast.
//!
//! What it built is remembered in `data_dir/local/state.json` (see
//! [`registry`]), written before an action reports its outcome. After a
//! control-plane restart, [`LocalProvider::open`] adopts the servers and
//! routers that still run (found through their pid files, checked in /proc).
//! A server the registry says should run but that did not survive is not
//! restarted here: it is reported as gone once the engine listens
//! ([`Provider::start`]), and the engine decides (fail over or restart) and
//! records why. The provider reports; the engine decides.
//!
//! Layout under `data_dir/local/`: `state.json`, `instances/<id>/{pgdata,
//! socket,logs}`, `routers/<service id>/` (pgbouncer.ini, userlist, log, pid)
//! and `archive/<id>/` for archived instances.

mod actions;
mod heartbeat;
pub mod host;
pub mod lease;
mod postgres;
pub mod probe;
mod process;
pub mod registry;
mod router;

use crate::runas::RunAs;
use crate::{BoxFuture, Provider, ProviderError, ProviderEvent};
use drover_model::{ActionOutcome, ActionRecord, InstanceId, Role, ServiceId};
use nix::sys::signal::Signal;
use postgres::Binaries;
use process::ServerProcess;
use registry::{InstanceEntry, Registry};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How long a starting server may take to accept connections. Crash
/// recovery of a busy server can take a while; a fresh one needs ~1 s.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a router may take to answer its console after being spawned.
const ROUTER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin console commands are local and instant; PAUSE waits for running
/// transactions, bounded so a hung server never blocks a fence.
const ROUTER_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// A router paused by a fence is resumed after this long even if no
/// promotion followed: clients must never stay paused forever. Below
/// pgbouncer's query_wait_timeout (120 s) so queued clients get an answer.
const MAX_ROUTER_PAUSE: Duration = Duration::from_secs(60);

/// How often the in-process agent beats for every running instance. A
/// beat is one query on a kept-open local connection (well under a
/// millisecond of server work), so four a second cost nothing, and they let
/// [`UNCERTAIN_AFTER`] be short: a frozen primary must be writable elsewhere
/// within 2 s (DESIGN.md), and silence is half of that budget.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// The engine's `uncertain_after` for a control plane whose instances beat
/// every [`HEARTBEAT_INTERVAL`]: four missed beats. Patroni's defaults
/// (loop_wait 10 s, ttl 30 s) tolerate three missed loops; one more here
/// because a beat's own timeout is short (80% of the interval) and a busy
/// machine misses one now and then. Uncertain is not unavailable: a failover
/// still needs a failed probe.
pub const UNCERTAIN_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// How often every running instance is probed for its heartbeat
    /// ([`HEARTBEAT_INTERVAL`] by default).
    pub probe_interval: Duration,
    /// Use what only the same host can see as evidence: a postmaster's exit
    /// reaped by this process (reported at once as `Gone`) and a stopped
    /// (SIGSTOP, `T`) state in /proc, which fails a probe without waiting
    /// for its timeout. True for `drover serve`: the servers are its own
    /// children. False measures what a remote control plane would see when
    /// a host freezes with its agent on it: silence, then a probe over the
    /// network (a query with a timeout) that fails. `drover bench failover
    /// --fault hang` runs with it off.
    pub same_host_evidence: bool,
    /// How long a fast shutdown (SIGINT) may take before SIGKILL of the group.
    pub stop_timeout: Duration,
    /// Stop every server and router when the provider is dropped. Tests want
    /// this; a control plane does not (its servers must outlive a restart).
    pub kill_servers_on_drop: bool,
    /// PostgreSQL's archive_command, `{stanza}` replaced by the service
    /// name; archiving is off when None.
    pub archive_command: Option<String>,
    /// Where Backup and VerifyRestore go (one stanza per service, named
    /// after it). When set and `archive_command` is None, WAL is archived
    /// into it too.
    pub backups: Option<crate::pgbackrest::BackupRepo>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            probe_interval: HEARTBEAT_INTERVAL,
            same_host_evidence: true,
            stop_timeout: Duration::from_secs(10),
            kill_servers_on_drop: false,
            archive_command: None,
            backups: None,
        }
    }
}

/// What the checks and backups work needs to reach one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInstanceInfo {
    pub service: ServiceId,
    pub service_name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub role: Role,
    /// The postmaster's pid when one runs (alive, maybe hung).
    pub pid: Option<i32>,
    pub fenced: bool,
}

pub struct LocalProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: LocalConfig,
    /// `data_dir/local`.
    root: PathBuf,
    state_path: PathBuf,
    binaries: Binaries,
    pgbouncer: PathBuf,
    run_as: RunAs,
    /// The OS user of this process, peer-mapped to the `drover` role.
    control_user: String,
    /// Never held across an .await.
    registry: Mutex<Registry>,
    /// Held while writing the state file, so writes land in order.
    persist_lock: Mutex<()>,
    servers: Mutex<HashMap<InstanceId, ServerProcess>>,
    routers: Mutex<HashMap<ServiceId, ServerProcess>>,
    /// One action per instance at a time.
    instance_locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Router and synchronous-replication changes of one service, one at a time.
    service_locks: Mutex<HashMap<ServiceId, Arc<tokio::sync::Mutex<()>>>>,
    /// When each paused router was paused (by a fence).
    paused: Mutex<HashMap<ServiceId, Instant>>,
    sink: Mutex<Option<mpsc::Sender<ProviderEvent>>>,
    /// Servers that should have been running at open but were not, with
    /// what was found; reported as gone when the sink is set.
    missing_at_open: Mutex<Vec<(InstanceId, String)>>,
    /// Set on shutdown or drop: loops stop, exits are no longer news.
    closed: Arc<AtomicBool>,
    loop_generation: AtomicU64,
    /// The last heartbeat seq handed out.
    last_seq: AtomicU64,
    /// Kept-open heartbeat connections.
    beat_clients: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps are plain data no panic leaves worse than losing the process.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl LocalProvider {
    /// Opens (or creates) the provider's state under `data_dir/local/`, adopts
    /// the servers and routers that still run and restarts (in the
    /// background) those that should run but do not. Must be called inside a
    /// tokio runtime. One process per data dir: nothing locks it.
    pub fn open(data_dir: &Path, mut config: LocalConfig) -> Result<Arc<LocalProvider>, ProviderError> {
        if config.archive_command.is_none() {
            if let Some(repo) = &config.backups {
                config.archive_command = Some(repo.archive_command("{stanza}"));
            }
        }
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ProviderError::Io { operation, path, source }
        };
        // Paths go to servers that run as another user in another working
        // directory: only absolute ones mean the same thing to them.
        let data_dir = std::path::absolute(data_dir).map_err(io("make absolute the data directory", data_dir))?;
        let root = data_dir.join("local");
        let state_path = root.join("state.json");
        let handle = tokio::runtime::Handle::try_current().map_err(|e| {
            io("open the local provider (it needs a tokio runtime) at", &root)(std::io::Error::other(e))
        })?;
        let binaries = Binaries::find().map_err(io("find PostgreSQL's binaries for", &root))?;
        let run_as = RunAs::for_servers().map_err(io("choose the server user for", &root))?;
        std::fs::create_dir_all(&root).map_err(io("create the directory", &root))?;
        for sub in ["instances", "routers", "archive"] {
            run_as.prepare_dir(&root.join(sub), 0o755).map_err(io("prepare the directory", &root.join(sub)))?;
        }
        let registry = match registry::read(&state_path)? {
            Some(mut registry) => {
                // A registry written by a build that kept relative paths.
                for entry in registry.instances.values_mut() {
                    if entry.dir.is_relative() {
                        entry.dir = std::path::absolute(&entry.dir).map_err(io("make absolute", &entry.dir))?;
                    }
                }
                registry
            }
            None => {
                let registry = Registry::empty();
                registry::write(&state_path, &registry)?;
                registry
            }
        };
        let control_user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::Uid::effective().to_string());
        let inner = Arc::new(Inner {
            config,
            root,
            state_path,
            binaries,
            pgbouncer: router::binary(),
            run_as,
            control_user,
            registry: Mutex::new(registry),
            persist_lock: Mutex::new(()),
            servers: Mutex::new(HashMap::new()),
            routers: Mutex::new(HashMap::new()),
            instance_locks: Mutex::new(HashMap::new()),
            service_locks: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            missing_at_open: Mutex::new(Vec::new()),
            closed: Arc::new(AtomicBool::new(false)),
            loop_generation: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            beat_clients: Mutex::new(HashMap::new()),
        });
        let _entered = handle.enter();
        let (adopted, to_start) = inner.adopt_running();
        tracing::info!(
            path = %inner.state_path.display(),
            instances = lock(&inner.registry).instances.len(),
            adopted,
            to_start = to_start.len(),
            "local provider opened"
        );
        *lock(&inner.missing_at_open) = to_start
            .into_iter()
            .map(|id| {
                (
                    id,
                    "its server was not running when the control plane started (it died while nobody watched)"
                        .to_string(),
                )
            })
            .collect();
        let routers = inner.clone();
        handle.spawn(async move { routers.start_missing_routers().await });
        Ok(Arc::new(LocalProvider { inner }))
    }

    /// The stable URL of the service named `service_name` (its router).
    pub fn service_url(&self, service_name: &str) -> Option<String> {
        let registry = lock(&self.inner.registry);
        registry
            .services
            .values()
            .find(|s| s.name == service_name)
            .map(|s| format!("postgres://{}:{}@127.0.0.1:{}/postgres", postgres::ROLE, s.password, s.router_port))
    }

    pub fn instance_info(&self, id: InstanceId) -> Option<LocalInstanceInfo> {
        let entry = lock(&self.inner.registry).instances.get(&id).cloned()?;
        let pid = lock(&self.inner.servers).get(&id).filter(|p| !p.has_exited()).map(|p| p.pid);
        Some(LocalInstanceInfo {
            service: entry.service,
            service_name: entry.service_name.clone(),
            port: entry.port,
            data_dir: entry.pgdata(),
            socket_dir: entry.socket_dir(),
            role: entry.role,
            pid,
            fenced: entry.fenced,
        })
    }

    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    /// Stops every server and router: fast shutdown (routers: immediate),
    /// SIGKILL of the group after `stop_timeout`. Blocks the calling thread.
    /// The registry is left as it is: a provider opened later restarts the
    /// servers that should run.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let servers: Vec<ServerProcess> = lock(&self.inner.servers).drain().map(|(_, p)| p).collect();
        let routers: Vec<ServerProcess> = lock(&self.inner.routers).drain().map(|(_, p)| p).collect();
        let mut all: Vec<(ServerProcess, Signal)> = servers.into_iter().map(|p| (p, Signal::SIGINT)).collect();
        all.extend(routers.into_iter().map(|p| (p, Signal::SIGTERM)));
        for (process, first) in &all {
            process.expect_exit();
            process::signal_process(process.pid, *first);
        }
        let deadline = Instant::now() + self.inner.config.stop_timeout;
        while all.iter().any(|(p, _)| !p.has_exited()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (process, first) in &all {
            // Leftover backends, or a server that ignored `first`.
            process.stop_blocking(*first, Duration::ZERO);
        }
        tracing::info!(processes = all.len(), "local provider stopped its servers and routers");
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if self.inner.config.kill_servers_on_drop {
            self.shutdown();
        }
    }
}

impl Inner {
    fn save(&self) -> Result<(), String> {
        let _writing = lock(&self.persist_lock);
        let snapshot = lock(&self.registry).clone();
        registry::write(&self.state_path, &snapshot).map_err(|e| e.to_string())
    }

    fn entry(&self, id: InstanceId) -> Option<InstanceEntry> {
        lock(&self.registry).instances.get(&id).cloned()
    }

    fn server(&self, id: InstanceId) -> Option<ServerProcess> {
        lock(&self.servers).get(&id).cloned()
    }

    fn instance_lock(&self, id: InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.instance_locks).entry(id).or_default().clone()
    }

    fn service_lock(&self, id: ServiceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.service_locks).entry(id).or_default().clone()
    }

    fn router_dir(&self, service: ServiceId) -> PathBuf {
        self.root.join("routers").join(service.to_string())
    }

    fn next_seq(&self) -> u64 {
        let now = now_micros();
        let mut last = self.last_seq.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self.last_seq.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    fn report_gone(&self, instance: InstanceId, detail: String) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        tracing::warn!(%instance, %detail, "server gone");
        self.report(ProviderEvent::Gone { instance, detail });
    }

    /// Hands `event` to the engine's sink without blocking the caller (a
    /// full sink is waited on in a task). Nothing is reported after close.
    fn report(&self, event: ProviderEvent) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(sink) = lock(&self.sink).clone() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(event)) = sink.try_send(event) {
            tokio::spawn(async move {
                let _ = sink.send(event).await;
            });
        }
    }

    /// What the reaper calls when a postmaster exits unasked.
    fn on_server_exit(self: &Arc<Self>, id: InstanceId) -> process::OnUnexpectedExit {
        let weak: Weak<Inner> = Arc::downgrade(self);
        Box::new(move |detail| {
            if let Some(inner) = weak.upgrade() {
                if inner.config.same_host_evidence {
                    inner.report_gone(id, format!("postmaster exited: {detail}"));
                } else {
                    // A remote control plane would not hear of it: silence
                    // and a failed probe tell the engine instead.
                    tracing::warn!(instance = %id, %detail, "postmaster exited (not reported: same-host evidence is off)");
                }
            }
        })
    }

    /// Finds the postmasters and routers that survived a control-plane
    /// restart. Returns how many were adopted and the instances to start.
    fn adopt_running(self: &Arc<Self>) -> (usize, Vec<InstanceId>) {
        let registry = lock(&self.registry).clone();
        let mut adopted = 0;
        let mut to_start = Vec::new();
        for (id, entry) in &registry.instances {
            if !entry.should_run() {
                continue;
            }
            match running_pid(&entry.pgdata().join("postmaster.pid"), "postgres") {
                Some(pid) => {
                    let process =
                        ServerProcess::adopt(pid, Some(&entry.pgdata()), self.closed.clone(), self.on_server_exit(*id));
                    lock(&self.servers).insert(*id, process);
                    adopted += 1;
                }
                None => to_start.push(*id),
            }
        }
        for service in registry.services.keys() {
            if let Some(pid) = running_pid(&router::pid_path(&self.router_dir(*service)), "pgbouncer") {
                let process = ServerProcess::adopt(pid, None, self.closed.clone(), Box::new(|_| {}));
                lock(&self.routers).insert(*service, process);
                adopted += 1;
            }
        }
        (adopted, to_start)
    }

    /// Makes sure every service with a primary has its router (the URL
    /// must answer, if only to queue clients until a failover), and says so
    /// for each one that was not running.
    async fn start_missing_routers(self: Arc<Self>) {
        let services: Vec<ServiceId> = lock(&self.registry).services.keys().copied().collect();
        for service in services {
            let guard = self.service_lock(service);
            let _held = guard.lock().await;
            let was_running = lock(&self.routers).get(&service).is_some_and(|p| !p.has_exited());
            let result = self.ensure_router(service).await;
            let detail = match (&result, was_running) {
                (Ok(()), true) => continue,
                (Ok(()), false) if !lock(&self.routers).contains_key(&service) => continue, // no primary yet
                (Ok(()), false) => {
                    "router (pgbouncer) was not running when the control plane started; started again on its port"
                        .to_string()
                }
                (Err(error), _) => format!("router (pgbouncer) cannot be started: {error}"),
            };
            self.report_router(service, detail);
        }
    }

    /// The router of a service: its process runs and its console answers.
    async fn router_check(&self, service: ServiceId, entry: &registry::ServiceEntry) -> crate::checks::Check {
        use crate::checks::{Check, Status};
        let pid = lock(&self.routers).get(&service).filter(|p| !p.has_exited()).map(|p| p.pid);
        let evidence = serde_json::json!({ "port": entry.router_port, "pid": pid });
        let Some(_) = pid else {
            return Check {
                status: Status::Crit,
                summary: "the router (pgbouncer) is not running: clients cannot reach the service; the provider \
                          starts it again within a heartbeat round"
                    .into(),
                evidence,
            };
        };
        match router::admin(entry, "SHOW VERSION", Duration::from_secs(2)).await {
            Ok(()) => Check {
                status: Status::Ok,
                summary: format!("the router answers on port {}", entry.router_port),
                evidence,
            },
            Err(error) => Check {
                status: Status::Crit,
                summary: format!("the router runs but does not answer its console: {error}"),
                evidence,
            },
        }
    }

    fn report_router(&self, service: ServiceId, detail: String) {
        self.report(ProviderEvent::Router { service, detail });
    }

    /// Spawns the postmaster (if none runs) and waits until it accepts connections.
    async fn start_server(self: &Arc<Self>, id: InstanceId, entry: &InstanceEntry) -> Result<(), String> {
        if self.closed.load(Ordering::SeqCst) {
            return Err("the local provider is shut down".into());
        }
        let existing = self.server(id).filter(|p| !p.has_exited());
        if existing.is_none() {
            postgres::check_socket_path(entry)?;
            process::kill_leftovers(&entry.pgdata()).await?;
            self.run_as.prepare_dir(&entry.socket_dir(), 0o755).map_err(|e| format!("socket dir: {e}"))?;
            self.run_as.prepare_dir(&entry.log_dir(), 0o700).map_err(|e| format!("log dir: {e}"))?;
            let log_path = entry.log_dir().join("postgres.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            self.run_as.chown(&log_path).map_err(|e| format!("cannot chown {}: {e}", log_path.display()))?;
            let log_err = log.try_clone().map_err(|e| e.to_string())?;
            let mut command = tokio::process::Command::new(self.binaries.path("postgres"));
            command
                .arg("-D")
                .arg(entry.pgdata())
                .current_dir(&entry.dir)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .env_remove("PGDATA")
                .env("LC_ALL", "C");
            self.run_as.apply_tokio(&mut command);
            let process = ServerProcess::spawn(command, Some(&entry.pgdata()), self.on_server_exit(id))
                .map_err(|e| format!("cannot spawn postgres: {e}"))?;
            tracing::info!(instance = %id, pid = process.pid, port = entry.port, "postmaster started");
            lock(&self.servers).insert(id, process);
        }
        self.wait_ready(id, entry, START_TIMEOUT).await
    }

    async fn wait_ready(&self, id: InstanceId, entry: &InstanceEntry, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(process) = self.server(id) else {
                return Err("no postmaster".into());
            };
            if process.has_exited() {
                return Err(format!(
                    "postmaster exited while starting ({}); log: {}",
                    process.exit_detail().unwrap_or_default(),
                    postgres::log_tail(entry)
                ));
            }
            let last_error = match postgres::answers(entry, Duration::from_secs(1)).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("not accepting connections after {timeout:?}: {last_error}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the instance's postmaster (if any) with a fast shutdown,
    /// confirming the whole group dead.
    async fn stop_server(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), String> {
        self.end_server(id, entry, Signal::SIGINT, self.config.stop_timeout).await
    }

    /// Kills the instance's postmaster and its backends at once (no
    /// shutdown checkpoint, nothing waited for), confirming the group dead.
    async fn kill_server(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), String> {
        self.end_server(id, entry, Signal::SIGKILL, Duration::ZERO).await
    }

    async fn end_server(
        &self,
        id: InstanceId,
        entry: Option<&InstanceEntry>,
        first: Signal,
        timeout: Duration,
    ) -> Result<(), String> {
        lock(&self.beat_clients).remove(&id);
        if let Some(process) = self.server(id) {
            process.stop(first, timeout).await?;
            lock(&self.servers).remove(&id);
            return Ok(());
        }
        // Not known to us (should not happen after adoption): still make sure.
        if let Some(entry) = entry {
            if let Some(pid) = running_pid(&entry.pgdata().join("postmaster.pid"), "postgres") {
                let process = ServerProcess::adopt(pid, Some(&entry.pgdata()), self.closed.clone(), Box::new(|_| {}));
                process.stop(first, timeout).await?;
            }
        }
        Ok(())
    }

    /// Makes sure the service's router runs and points at its primary.
    async fn ensure_router(self: &Arc<Self>, service_id: ServiceId) -> Result<(), String> {
        let (service, primary_port) = {
            let registry = lock(&self.registry);
            let Some(service) = registry.services.get(&service_id).cloned() else {
                return Err("unknown service".into());
            };
            let Some(port) = service.primary.and_then(|p| registry.instances.get(&p)).map(|e| e.port) else {
                return Ok(()); // nothing to route to yet
            };
            (service, port)
        };
        let dir = self.router_dir(service_id);
        self.run_as.prepare_dir(&dir, 0o700).map_err(|e| format!("router dir: {e}"))?;
        router::write_config(&self.run_as, &dir, &service, primary_port)?;
        let running = lock(&self.routers).get(&service_id).filter(|p| !p.has_exited()).cloned();
        if running.is_some() {
            return router::admin(&service, "RELOAD", ROUTER_COMMAND_TIMEOUT).await;
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err("the local provider is shut down".into());
        }
        let log_path = router::log_path(&dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(&self.pgbouncer);
        command
            .arg(router::config_path(&dir))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        self.run_as.apply_tokio(&mut command);
        let name = service.name.clone();
        let process = ServerProcess::spawn(
            command,
            None,
            Box::new(move |detail| tracing::warn!(service = %name, %detail, "router exited unasked")),
        )
        .map_err(|e| format!("cannot spawn pgbouncer: {e}"))?;
        tracing::info!(service = %service.name, pid = process.pid, port = service.router_port, "router started");
        lock(&self.routers).insert(service_id, process.clone());
        let deadline = Instant::now() + ROUTER_START_TIMEOUT;
        loop {
            if process.has_exited() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("pgbouncer exited at start: {}", postgres::tail(&log, 800)));
            }
            match router::admin(&service, "SHOW VERSION", Duration::from_secs(1)).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(format!("router not answering: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The pid in a postmaster.pid / pgbouncer.pid file when that process is
/// alive (not a zombie) and its command line names `program`.
fn running_pid(pid_file: &Path, program: &str) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if process::proc_state(pid).is_dead() {
        return None;
    }
    process::cmdline(pid).filter(|c| c.contains(program)).map(|_| pid)
}

impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    /// PostgreSQL 15 only, for now: Redis and Kafka are later issues.
    fn engines(&self) -> &'static [drover_model::EngineKind] {
        &[drover_model::EngineKind::Postgres]
    }

    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.execute(action).await })
    }

    /// Starts the heartbeat loop (and sets where `Gone` reports go). A second
    /// call replaces the first loop.
    fn start(&self, sink: mpsc::Sender<ProviderEvent>) {
        let generation = self.inner.loop_generation.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.inner.sink) = Some(sink.clone());
        // What died while nobody listened is evidence for the engine.
        let missing = std::mem::take(&mut *lock(&self.inner.missing_at_open));
        for (instance, detail) in missing {
            self.inner.report_gone(instance, detail);
        }
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.heartbeat_loop(sink, generation).await });
    }

    fn service_url(&self, service: &str) -> Option<String> {
        LocalProvider::service_url(self, service)
    }

    /// Security, performance and replication as the service's primary sees
    /// them, over its local socket.
    fn service_checks(&self, service: &str) -> BoxFuture<crate::ProviderChecks> {
        let inner = self.inner.clone();
        let service = service.to_string();
        Box::pin(async move {
            let found = {
                let registry = lock(&inner.registry);
                registry.services.iter().find(|(_, s)| s.name == service).map(|(id, s)| (*id, s.clone()))
            };
            let Some((service_id, service_entry)) = found else {
                return crate::ProviderChecks::default();
            };
            let router = Some(inner.router_check(service_id, &service_entry).await);
            let Some(entry) = inner.current_primary_entry(service_id) else {
                return crate::ProviderChecks { router, ..Default::default() };
            };
            let client = match postgres::connect(&entry, Duration::from_secs(3)).await {
                Ok(c) => c,
                Err(_) => return crate::ProviderChecks { router, ..Default::default() },
            };
            let policy = crate::checks::SecurityPolicy { require_tls: false, service_user: None };
            let security = crate::checks::security(&client, &entry.pgdata(), &policy).await;
            let performance = crate::checks::performance(&client).await;
            let followers = crate::checks::follower_facts(&client).await.ok();
            crate::ProviderChecks { security: Some(security), performance: Some(performance), followers, router }
        })
    }
}
