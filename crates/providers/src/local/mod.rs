//! The `local` provider: real PostgreSQL 15 servers on this machine, one
//! pgbouncer router per service, streaming replication, fencing and
//! promotion.
//!
//! Two types own the processes: [`servers::Servers`] the postmasters (one
//! per instance, children of this process, see there) and
//! [`router::Routers`] the pgbouncers (one per service, the stable URL).
//! This module and `actions` orchestrate them: the registry, the locks, what
//! is reported to the engine. A postmaster that exits without being asked
//! to is reported at once as `ProviderEvent::Gone`, the evidence that makes
//! failover fast.
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
mod credentials;
mod heartbeat;
mod kafka;
pub use kafka::busiest_broker as kafka_busiest_broker;
pub use kafka::checks::{group_lags as kafka_group_lags, GroupLag as KafkaGroupLag};
mod postgres;
pub mod probe;
mod process;
mod redis;
pub mod registry;
mod router;
mod routers_beside;
mod servers;
mod upgrade;

use crate::runas::RunAs;
use crate::{ActionError, BoxFuture, Provider, ProviderError, ProviderEvent};
use drover_model::{ActionOutcome, ActionRecord, InstanceId, Role, ServiceId};
use nix::sys::signal::Signal;
use postgres::Binaries;
use process::ServerProcess;
use registry::{InstanceEntry, Registry};
use router::Routers;
use servers::Servers;

pub use kafka::TANSU_VERSION;
pub use postgres::{error_text as postgres_error_text, APP_DATABASE, APP_LOGINS, APP_OWNER, REPLICATION_ROLE, ROLE};
pub use process::running_pid;
pub use routers_beside::ControlPlaneRouters;

/// The major of the default PostgreSQL binaries (Debian's 15).
pub fn default_major() -> u32 {
    postgres::Binaries::find().map(|b| b.major()).unwrap_or(15)
}

/// Whether the binaries of PostgreSQL `major` are installed for upgrades
/// (`scripts/lib.sh` `ensure_pg_majors`).
pub fn major_installed(major: u32) -> bool {
    let bin = postgres::majors_dir().join(major.to_string()).join("bin");
    bin.join("postgres").is_file() && bin.join("initdb").is_file()
}
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

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
    /// name and `{pgdata}` by the instance's data directory; archiving is
    /// off when None.
    pub archive_command: Option<String>,
    /// Where Backup and VerifyRestore go (one stanza per service, named
    /// after it). When set and `archive_command` is None, WAL is archived
    /// into it too.
    pub backups: Option<crate::pgbackrest::BackupRepo>,
    /// `maxmemory` of every Redis server, in bytes (None: unbounded, the
    /// memory check then has no limit to compare with).
    pub redis_maxmemory: Option<u64>,
    /// The address other hosts reach this host's servers at (an agent's
    /// `--address`, e.g. `127.0.0.2`): PostgreSQL listens there besides
    /// 127.0.0.1, and admits replication over TCP from other loopback
    /// addresses with the service's replication credential. None: the
    /// built-in host, whose followers stream over the primary's socket.
    pub listen_address: Option<String>,
}

/// What a member built on one agent host needs to replicate with members on
/// others, handed to the agent with the Provision action by the control
/// plane (never stored: the password is derived again from the control
/// plane's secret key at each dispatch).
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Replication {
    /// The password of the replication role for this service.
    pub password: String,
    /// A follower's primary, where it is reached over TCP. None: the
    /// action builds a primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<UpstreamAddress>,
    /// The service's login (the URL's), chosen by the control plane whose
    /// router beside it serves the URL: a host registering the service for
    /// the first time uses it instead of a random one, so every host and
    /// the router agree. None: random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
}

/// The password of a service's login role and its SCRAM verifier (the
/// router's and the servers' must be the same one: same salt).
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Login {
    pub password: String,
    pub verifier: String,
}

/// Where a primary is reached: its host's address and its port.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UpstreamAddress {
    pub address: String,
    pub port: u16,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("password", &"<redacted>")
            .field("primary", &self.primary)
            .field("login", &self.login.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            probe_interval: HEARTBEAT_INTERVAL,
            same_host_evidence: true,
            stop_timeout: Duration::from_secs(10),
            kill_servers_on_drop: false,
            archive_command: None,
            redis_maxmemory: None,
            backups: None,
            listen_address: None,
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
    run_as: RunAs,
    /// The OS user of this process, peer-mapped to the `drover` role and
    /// the router's only admin console user.
    control_user: String,
    /// Seals and opens the services' passwords in the registry.
    key: drover_secrets::SecretKey,
    /// Never held across an .await.
    registry: Mutex<Registry>,
    /// Held while writing the state file, so writes land in order.
    persist_lock: Mutex<()>,
    /// The postmasters, one per instance.
    servers: Servers,
    /// The routers (pgbouncer), one per service.
    routers: Arc<Routers>,
    /// One action per instance at a time.
    instance_locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Router and synchronous-replication changes of one service, one at a time.
    service_locks: Mutex<HashMap<ServiceId, Arc<tokio::sync::Mutex<()>>>>,
    /// One pgBackRest stanza command at a time per stanza (`stanza-create`
    /// takes the stanza's lock and refuses a second one rather than wait):
    /// the stanza made in the background at provision and a backup soon
    /// after must not fail one another.
    stanza_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    /// The Redis services: their own registry, servers and routers.
    redis: redis::Redis,
    /// The Kafka services: brokers, storages and routers.
    kafka: kafka::Kafka,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps are plain data no panic leaves worse than losing the process.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl LocalProvider {
    /// Opens (or creates) the provider's state under `data_dir/local/` and
    /// adopts the servers and routers that still run. A server that should
    /// run but does not is reported as gone once the engine listens (the
    /// engine decides what follows); a missing router is started again in
    /// the background. Must be called inside a tokio runtime. One process
    /// per data dir: nothing locks it.
    pub fn open(data_dir: &Path, mut config: LocalConfig) -> Result<Arc<LocalProvider>, ProviderError> {
        if config.archive_command.is_none() {
            if let Some(repo) = &config.backups {
                config.archive_command = Some(repo.archive_command("{stanza}", "{pgdata}"));
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
            run_as.prepare_dir(&root.join(sub), 0o750).map_err(io("prepare the directory", &root.join(sub)))?;
        }
        let (key, _) = drover_secrets::SecretKey::load_or_create(&data_dir)
            .map_err(|e| io("load the secret key of", &data_dir)(std::io::Error::other(e)))?;
        let registry = match registry::read(&state_path)? {
            Some(mut registry) => {
                // A registry written before passwords were sealed: seal them now.
                let mut sealed = false;
                for service in registry.services.values_mut() {
                    if !drover_secrets::is_sealed(&service.password) {
                        if service.verifier.is_empty() {
                            service.verifier = postgres::scram_verifier(&service.password);
                        }
                        let context = registry::password_context(&service.name, &service.login);
                        service.password = key.seal_str(&context, &service.password);
                        sealed = true;
                    }
                }
                if sealed {
                    registry::write(&state_path, &registry)?;
                    tracing::info!(path = %state_path.display(), "service passwords sealed in the local registry");
                }
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
        let redis = redis::Redis::open(&root, &run_as)?;
        let kafka = kafka::Kafka::open(&root, &run_as)?;
        let closed = Arc::new(AtomicBool::new(false));
        let servers = Servers::new(binaries, run_as.clone(), config.stop_timeout, closed.clone());
        let routers = Arc::new(Routers::new(
            run_as.clone(),
            root.join("routers"),
            control_user.clone(),
            config.stop_timeout,
            closed.clone(),
        ));
        let inner = Arc::new(Inner {
            config,
            root,
            state_path,
            run_as,
            control_user,
            key,
            registry: Mutex::new(registry),
            persist_lock: Mutex::new(()),
            servers,
            routers,
            instance_locks: Mutex::new(HashMap::new()),
            service_locks: Mutex::new(HashMap::new()),
            stanza_locks: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            missing_at_open: Mutex::new(Vec::new()),
            closed,
            loop_generation: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            beat_clients: Mutex::new(HashMap::new()),
            redis,
            kafka,
        });
        let _entered = handle.enter();
        let (mut adopted, mut to_start) = inner.adopt_running();
        let (redis_adopted, redis_missing) = inner.redis_adopt();
        adopted += redis_adopted;
        to_start.extend(redis_missing);
        let (kafka_adopted, kafka_missing) = inner.kafka_adopt();
        adopted += kafka_adopted;
        to_start.extend(kafka_missing);
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
        let redis_routers = inner.clone();
        handle.spawn(async move { redis_routers.redis_start_missing_routers().await });
        let kafka = inner.clone();
        handle.spawn(async move { kafka.kafka_start_missing().await });
        Ok(Arc::new(LocalProvider { inner }))
    }

    /// The stable URL of the service named `service_name` (its router), as
    /// its current application login role, to the application's database.
    pub fn service_url(&self, service_name: &str) -> Option<String> {
        if let Some(url) = self.inner.redis_url(service_name) {
            return Some(url);
        }
        if let Some(url) = self.inner.kafka_url(service_name) {
            return Some(url);
        }
        self.inner.postgres_url(service_name)
    }

    /// The stable read URL of read slot `slot` of the PostgreSQL service
    /// named `service_name`: its router, database `app_read<slot>`, as the
    /// URL's login role. The same URL whichever replica fills the slot.
    pub fn read_url(&self, service_name: &str, slot: u32) -> Option<String> {
        let url = self.service_url(service_name)?;
        let base = url.strip_suffix(&format!("/{}", postgres::APP_DATABASE))?;
        Some(format!("{base}/{}", router::read_database(slot)))
    }

    /// Carries out `action` as [`Provider::execute`] does, with what a
    /// member on an agent host needs to replicate across hosts (an agent
    /// receives it beside a Provision).
    pub async fn execute_with(&self, action: ActionRecord, replication: Option<Replication>) -> ActionOutcome {
        self.inner.execute(action, replication).await
    }

    /// Strict synchronous replication for the primaries of this agent host
    /// (called every round by `drover agent --host`): a sync service's
    /// primary that has a streaming follower gets `ANY 1 (*)` and keeps it,
    /// even while no follower streams, so no write is acknowledged that
    /// only the primary holds (the built-in host keeps Patroni's non-strict
    /// mode, see `adjust_sync`). A primary just promoted starts without one
    /// until its new follower streams.
    pub async fn hold_strict_sync(&self) {
        self.inner.hold_strict_sync().await
    }

    pub fn instance_info(&self, id: InstanceId) -> Option<LocalInstanceInfo> {
        let entry = lock(&self.inner.registry).instances.get(&id).cloned()?;
        Some(entry.info(self.inner.servers.pid(id)))
    }

    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    /// Stops every server and router: fast shutdown (routers: immediate),
    /// SIGKILL of the group after `stop_timeout`. Blocks the calling thread.
    /// The registry is left as it is: a provider opened later reports the
    /// servers that should run as gone, and the engine restarts or replaces
    /// them.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let servers = self.inner.servers.drain();
        let routers = self.inner.routers.drain();
        let mut all: Vec<(ServerProcess, Signal)> = servers.into_iter().map(|p| (p, Signal::SIGINT)).collect();
        all.extend(routers.into_iter().map(|p| (p, Signal::SIGTERM)));
        all.extend(self.inner.redis_drain());
        all.extend(self.inner.kafka_drain());
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
    /// The stable URL of the PostgreSQL service named `service_name` (its
    /// router), as its current application login role, to the
    /// application's database.
    fn postgres_url(&self, service_name: &str) -> Option<String> {
        let service = lock(&self.registry).services.values().find(|s| s.name == service_name).cloned()?;
        let password = match self.password(&service) {
            Ok(password) => password,
            Err(error) => {
                tracing::warn!(service = %service_name, %error, "cannot open the service's sealed password");
                return None;
            }
        };
        Some(format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            service.login,
            password.expose(),
            service.router_port,
            postgres::APP_DATABASE
        ))
    }

    /// The service's current password, opened from the registry.
    fn password(&self, service: &registry::ServiceEntry) -> Result<drover_secrets::Secret, ActionError> {
        let context = registry::password_context(&service.name, &service.login);
        self.key.open_str(&context, &service.password).map(drover_secrets::Secret::new).map_err(|e| {
            ActionError::Config(format!(
                "cannot open the sealed password of service {}: {e}; the data dir's secret key (secret.key or \
                 DROVER_SECRET_KEY) is not the one it was sealed with",
                service.name
            ))
        })
    }

    fn save(&self) -> Result<(), ActionError> {
        let _writing = lock(&self.persist_lock);
        let snapshot = lock(&self.registry).clone();
        Ok(registry::write(&self.state_path, &snapshot)?)
    }

    fn entry(&self, id: InstanceId) -> Option<InstanceEntry> {
        lock(&self.registry).instances.get(&id).cloned()
    }

    fn instance_lock(&self, id: InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.instance_locks).entry(id).or_default().clone()
    }

    fn service_lock(&self, id: ServiceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.service_locks).entry(id).or_default().clone()
    }

    fn stanza_lock(&self, stanza: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.stanza_locks).entry(stanza.to_string()).or_default().clone()
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
            if self.servers.adopt(*id, entry, self.on_server_exit(*id)) {
                adopted += 1;
            } else {
                to_start.push(*id);
            }
        }
        adopted += self.routers.adopt(registry.services.keys().copied());
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
            let was_running = self.routers.running(service);
            let result = self.ensure_router(service).await;
            let detail = match (&result, was_running) {
                (Ok(()), true) => continue,
                (Ok(()), false) if !self.routers.known(service) => continue, // no primary yet
                (Ok(()), false) => {
                    "router (pgbouncer) was not running when the control plane started; started again on its port"
                        .to_string()
                }
                (Err(error), _) => format!("router (pgbouncer) cannot be started: {error}"),
            };
            self.report_router(service, detail);
        }
    }

    fn report_router(&self, service: ServiceId, detail: String) {
        self.report(ProviderEvent::Router { service, detail });
    }

    /// Starts the instance's postmaster (if none runs), reported as gone
    /// if it later exits unasked, and waits until it accepts connections.
    async fn start_server(self: &Arc<Self>, id: InstanceId, entry: &InstanceEntry) -> Result<(), ActionError> {
        self.servers.start(id, entry, self.on_server_exit(id)).await
    }

    /// Stops the instance's postmaster (fast shutdown), dropping its
    /// heartbeat connection.
    async fn stop_server(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), ActionError> {
        lock(&self.beat_clients).remove(&id);
        self.servers.stop(id, entry).await
    }

    /// Kills the instance's postmaster and its backends at once.
    async fn kill_server(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), ActionError> {
        lock(&self.beat_clients).remove(&id);
        self.servers.kill(id, entry).await
    }

    /// Makes sure the service's router runs and points at its primary.
    /// An agent host (one with a `listen_address`) runs no routers: they
    /// run beside the control plane ([`ControlPlaneRouters`]), so the URL
    /// survives the death of any database host.
    async fn ensure_router(&self, service_id: ServiceId) -> Result<(), ActionError> {
        if self.config.listen_address.is_some() {
            return Ok(());
        }
        let (service, primary_port, reads) = {
            let registry = lock(&self.registry);
            let Some(service) = registry.services.get(&service_id).cloned() else {
                return Err(ActionError::InvalidState(format!("unknown service {service_id}")));
            };
            let Some(port) = service.primary.and_then(|p| registry.instances.get(&p)).map(|e| e.port) else {
                return Ok(()); // nothing to route to yet
            };
            (service, port, registry.read_routes(service_id))
        };
        self.routers.ensure(service_id, &service, "127.0.0.1", primary_port, &reads).await
    }

    /// Points the router's read databases (`app_read<slot>`) at the
    /// service's active read replicas (a new one streaming, or one retired),
    /// under the service lock like every router change.
    pub(super) async fn route_reads(&self, service_id: ServiceId) -> Result<(), ActionError> {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        self.ensure_router(service_id).await
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    /// PostgreSQL 15, Redis 7.0 and Kafka (tansu brokers over PostgreSQL).
    fn engines(&self) -> &'static [drover_model::EngineKind] {
        &[drover_model::EngineKind::Postgres, drover_model::EngineKind::Redis, drover_model::EngineKind::Kafka]
    }

    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.execute(action, None).await })
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

    fn read_url(&self, service: &str, slot: u32) -> Option<String> {
        LocalProvider::read_url(self, service, slot)
    }

    fn service_url(&self, service: &str) -> Option<String> {
        LocalProvider::service_url(self, service)
    }

    fn rotation_in_progress(&self, service: &str) -> Option<String> {
        self.inner.rotation_in_progress(service)
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
                if let Some(checks) = inner.redis_checks(&service).await {
                    return checks;
                }
                return inner.kafka_checks(&service).await.unwrap_or_default();
            };
            let router = Some(inner.routers.check(service_id, &service_entry).await);
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
            crate::ProviderChecks {
                security: Some(security),
                performance: Some(performance),
                followers,
                router,
                persistence: None,
            }
        })
    }
}
