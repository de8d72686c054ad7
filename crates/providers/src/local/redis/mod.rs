//! Redis services of the `local` provider (issue 13): per service a primary
//! and N replicas (Debian `redis-server` 7.0, run as the server user like
//! PostgreSQL), and one HAProxy 2.6 router on a fixed port, so the URL
//! `redis://app:PASSWORD@127.0.0.1:PORT` never changes.
//!
//! Same shape as the PostgreSQL half: every server and router is a child of
//! this process, reaped at once (a primary that exits unasked is reported
//! `Gone`: the evidence that makes failover fast), adopted after a
//! control-plane restart through its pid file. What it built is kept in
//! `data_dir/local/redis.json` (passwords sealed with the data dir's key),
//! apart from PostgreSQL's registry so neither half sees the other's
//! members. Layout under `data_dir/local/redis/`: `instances/<id>/` (config,
//! log, pid, `data/` with the RDB and AOF), `routers/<service id>/`.
//!
//! Failover, fenced: the router cuts the old primary and shuts its
//! sessions, then the old server is stopped (killed when the failover is
//! immediate, i.e. it was judged unavailable); a planned switchover hands
//! over with Redis's own `FAILOVER TO host port TIMEOUT ms` first, so no
//! acknowledged write is lost. Promotion is `REPLICAOF NO ONE` on the
//! replica the engine chose (its policy: the highest offset), the router
//! pointed at it, and the other replicas repointed.

mod backup;
mod checks;
mod credentials;
/// Shared with the Kafka half (its router is HAProxy too).
pub(in crate::local) mod router;
pub mod server;

use super::process::{self, ProcState, ServerProcess};
use super::registry::Lifecycle;
use super::{lock, Inner};
use crate::checks::{Check, Status};
use crate::runas::RunAs;
use crate::{ActionError, ProviderError};
use drover_model::{ActionKind, ActionRecord, Beat, Facts, Fault, InstanceId, Role, ServiceId};
use nix::sys::signal::Signal;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REGISTRY_FORMAT: u64 = 1;
/// How long a new server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new replica may take to report its link up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// A probe: PING on a fresh connection (see the PostgreSQL probe's bound).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// One admin command of an action.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a planned switchover's `FAILOVER` may take to hand over.
const FAILOVER_TIMEOUT_MS: u64 = 5000;
/// How long a `BGSAVE` may take.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a switchover waits for the old primary's sessions to end by
/// themselves (a client's command in flight completes; a connection per
/// command closes) before it closes those idle between commands.
const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// After this every session left is closed, busy or not.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(1000);

/// What a switchover's drain did to the old primary's sessions.
#[derive(Clone, Copy, Debug, Default)]
struct Drain {
    ended: u32,
    closed_idle: u32,
    closed_busy: u32,
    millis: u64,
}

/// A connection through the router to its current server that holds the
/// one slot a switchover leaves (see `router::hold`); it sends PING and
/// waits for the answer (NOAUTH: it never logs in), so the slot is taken.
async fn plug(router_port: u16) -> Result<tokio::net::TcpStream, ActionError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", router_port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            if byte[0] == b'\n' {
                return Ok(stream);
            }
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ActionError::Unavailable(format!("cannot hold the router's slot: {e}"))),
        Err(_) => Err(ActionError::Timeout("the router's slot connection did not answer".into())),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisInstance {
    pub service: ServiceId,
    pub service_name: String,
    pub role: Role,
    pub port: u16,
    pub dir: PathBuf,
    pub lifecycle: Lifecycle,
    pub fenced: bool,
    #[serde(default)]
    pub fault: Option<Fault>,
}

impl RedisInstance {
    fn should_run(&self) -> bool {
        self.lifecycle == Lifecycle::Active && !self.fenced
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisService {
    pub name: String,
    pub router_port: u16,
    /// The application's password (the URL's), sealed.
    pub app_password: String,
    /// Drover's admin password, sealed.
    pub admin_password: String,
    pub primary: Option<InstanceId>,
    /// The application's ACL user the URL names (one of
    /// [`server::APP_LOGINS`]; a registry from before rotation: `app`).
    #[serde(default = "default_app_login")]
    pub login: String,
    /// The application user a rotation replaced, still accepted until the
    /// engine revokes it (issue 10 item 8; see `credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<RedisPrevious>,
    /// When the current credential was made (unix ms; 0: at creation).
    #[serde(default)]
    pub rotated_at_ms: u64,
    /// The RotateCredentials action that made the current credential: a
    /// repeat of it (after a crash) finds its work done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_action: Option<drover_model::ActionId>,
    /// The plan's `sync`: for Redis, every member runs with
    /// `min-replicas-to-write 1` (see [`server::ServerConfig`]). Fixed at
    /// creation (a registry from before: false).
    #[serde(default)]
    pub sync: bool,
}

/// The application user a rotation replaced, valid until its overlap ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisPrevious {
    pub login: String,
    /// The SHA-256 hex of its password, as the ACL rule takes it (it is not
    /// a password: it cannot be used to log in).
    pub hash: String,
    /// When it was rotated out (unix ms).
    pub since_ms: u64,
}

fn default_app_login() -> String {
    server::APP_USER.to_string()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisRegistry {
    pub format: u64,
    pub instances: BTreeMap<InstanceId, RedisInstance>,
    pub services: BTreeMap<ServiceId, RedisService>,
    pub tombstones: BTreeSet<InstanceId>,
}

fn context(service: &str, user: &str) -> String {
    format!("service/{service}/redis/{user}")
}

/// The Redis half of the local provider's state.
pub(super) struct Redis {
    path: PathBuf,
    root: PathBuf,
    redis_server: PathBuf,
    haproxy: PathBuf,
    registry: Mutex<RedisRegistry>,
    persist: Mutex<()>,
    servers: Mutex<HashMap<InstanceId, ServerProcess>>,
    routers: Mutex<HashMap<ServiceId, ServerProcess>>,
    /// The primary port each running router was last pointed at: a router
    /// already sending clients to the primary is left alone (pointing it
    /// again would shut the sessions a switchover just kept).
    routed: Mutex<HashMap<ServiceId, u16>>,
    /// Kept-open admin connections for heartbeats.
    beat_clients: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>>>,
}

impl Redis {
    /// Reads (or creates) `local/redis.json`.
    pub fn open(local_root: &Path, run_as: &RunAs) -> Result<Redis, ProviderError> {
        let path = local_root.join("redis.json");
        let root = local_root.join("redis");
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ProviderError::Io { operation, path, source }
        };
        for sub in ["", "instances", "routers"] {
            let dir = root.join(sub);
            run_as.prepare_dir(&dir, 0o750).map_err(io("prepare the directory", &dir))?;
        }
        let registry = match std::fs::read(&path) {
            Ok(bytes) => {
                let registry: RedisRegistry = serde_json::from_slice(&bytes).map_err(|e| {
                    ProviderError::CorruptState { path: path.clone(), reason: format!("not a Redis registry: {e}") }
                })?;
                if registry.format != REGISTRY_FORMAT {
                    return Err(ProviderError::UnsupportedStateFormat {
                        path,
                        found: registry.format,
                        supported: REGISTRY_FORMAT,
                    });
                }
                registry
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                RedisRegistry { format: REGISTRY_FORMAT, ..RedisRegistry::default() }
            }
            Err(e) => return Err(io("read the Redis registry", &path)(e)),
        };
        Ok(Redis {
            path,
            root,
            redis_server: PathBuf::from(server::DEFAULT_REDIS_SERVER),
            haproxy: PathBuf::from(router::DEFAULT_HAPROXY),
            registry: Mutex::new(registry),
            persist: Mutex::new(()),
            servers: Mutex::new(HashMap::new()),
            routers: Mutex::new(HashMap::new()),
            routed: Mutex::new(HashMap::new()),
            beat_clients: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `action` is for a Redis member.
    pub fn owns(&self, action: &ActionRecord) -> bool {
        match &action.kind {
            ActionKind::Provision(p) => p.engine == drover_model::EngineKind::Redis,
            _ => {
                let registry = lock(&self.registry);
                registry.instances.contains_key(&action.instance) || registry.tombstones.contains(&action.instance)
            }
        }
    }

    pub fn ports_in_use(&self) -> BTreeSet<u16> {
        let registry = lock(&self.registry);
        let mut ports: BTreeSet<u16> = registry.instances.values().map(|i| i.port).collect();
        ports.extend(registry.services.values().map(|s| s.router_port));
        ports
    }

    fn save(&self) -> Result<(), ActionError> {
        let _writing = lock(&self.persist);
        let snapshot = lock(&self.registry).clone();
        let bytes = serde_json::to_vec_pretty(&snapshot).expect("the Redis registry always serializes");
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let temporary = dir.join(".redis.json.tmp");
        let error = |e| ActionError::io(format_args!("cannot write {}", self.path.display()), e);
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(error)?;
            file.write_all(&bytes).map_err(error)?;
            file.sync_all().map_err(error)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(error)?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(error)?;
        Ok(())
    }

    fn instance(&self, id: InstanceId) -> Option<RedisInstance> {
        lock(&self.registry).instances.get(&id).cloned()
    }

    fn service(&self, id: ServiceId) -> Result<RedisService, ActionError> {
        lock(&self.registry)
            .services
            .get(&id)
            .cloned()
            .ok_or_else(|| ActionError::InvalidState(format!("unknown Redis service {id}")))
    }

    fn process(&self, id: InstanceId) -> Option<ServerProcess> {
        lock(&self.servers).get(&id).cloned()
    }

    fn alive(&self, id: InstanceId) -> bool {
        self.process(id).is_some_and(|p| !p.has_exited())
    }

    fn router_dir(&self, service: ServiceId) -> PathBuf {
        self.root.join("routers").join(service.to_string())
    }

    fn router_socket(&self, service: ServiceId) -> PathBuf {
        router::socket_path(&self.router_dir(service), service)
    }

    /// The service (by name) and its URL's parts.
    pub fn find_service(&self, name: &str) -> Option<RedisService> {
        lock(&self.registry).services.values().find(|s| s.name == name).cloned()
    }
}

type Done = Result<Option<String>, ActionError>;

fn invalid(error: impl Into<String>) -> ActionError {
    ActionError::InvalidState(error.into())
}

impl Inner {
    fn redis_password(&self, service: &RedisService, user: &str) -> Result<String, ActionError> {
        let sealed = if user == server::ADMIN_USER {
            &service.admin_password
        } else if user == service.login {
            &service.app_password
        } else {
            return Err(ActionError::InvalidState(format!(
                "Redis service {} has no password for {user}: its application user is {}",
                service.name, service.login
            )));
        };
        self.key.open_str(&context(&service.name, user), sealed).map_err(|e| {
            ActionError::Config(format!(
                "cannot open the sealed {user} password of Redis service {}: {e}; the data dir's secret key is not \
                 the one it was sealed with",
                service.name
            ))
        })
    }

    /// The stable URL of a Redis service, as its application user.
    pub(super) fn redis_url(&self, name: &str) -> Option<String> {
        let service = self.redis.find_service(name)?;
        let password = self.redis_password(&service, &service.login).ok()?;
        Some(format!("redis://{}:{password}@127.0.0.1:{}", service.login, service.router_port))
    }

    /// An admin connection to a member.
    async fn redis_admin(
        &self,
        entry: &RedisInstance,
        timeout: Duration,
    ) -> Result<MultiplexedConnection, ActionError> {
        let service = self.redis.service(entry.service)?;
        let password = self.redis_password(&service, server::ADMIN_USER)?;
        server::connect(entry.port, server::ADMIN_USER, &password, Some(timeout)).await
    }

    fn redis_on_exit(self: &Arc<Self>, id: InstanceId) -> process::OnUnexpectedExit {
        let weak = Arc::downgrade(self);
        Box::new(move |detail| {
            if let Some(inner) = weak.upgrade() {
                if inner.config.same_host_evidence {
                    inner.report_gone(id, format!("redis-server exited: {detail}"));
                } else {
                    tracing::warn!(instance = %id, %detail, "redis-server exited (not reported: same-host evidence is off)");
                }
            }
        })
    }

    /// Adopts the Redis servers and routers that survived a restart;
    /// returns how many, and the members that should run but do not.
    pub(super) fn redis_adopt(self: &Arc<Self>) -> (usize, Vec<InstanceId>) {
        let registry = lock(&self.redis.registry).clone();
        let mut adopted = 0;
        let mut missing = Vec::new();
        for (id, entry) in &registry.instances {
            if !entry.should_run() {
                continue;
            }
            match process::running_pid(&server::pid_path(&entry.dir), "redis-server") {
                Some(pid) => {
                    let process = ServerProcess::adopt(
                        pid,
                        Some(&server::data_dir(&entry.dir)),
                        self.closed.clone(),
                        self.redis_on_exit(*id),
                    );
                    lock(&self.redis.servers).insert(*id, process);
                    adopted += 1;
                }
                None => missing.push(*id),
            }
        }
        for service in registry.services.keys() {
            if let Some(pid) = router::adopt_pid(&self.redis.router_dir(*service)) {
                let process = ServerProcess::adopt(pid, None, self.closed.clone(), Box::new(|_| {}));
                lock(&self.redis.routers).insert(*service, process);
                adopted += 1;
            }
        }
        (adopted, missing)
    }

    pub(super) async fn redis_execute(self: &Arc<Self>, action: &ActionRecord) -> Done {
        let id = action.instance;
        match &action.kind {
            ActionKind::Provision(p) => self.redis_provision(id, action.service, p.role, &p.service_name, p.sync).await,
            ActionKind::Probe => self.redis_probe(id).await,
            ActionKind::Fence { immediate } => self.redis_fence(id, *immediate).await,
            ActionKind::Promote => self.redis_promote(id).await,
            ActionKind::Restart => self.redis_restart(id).await,
            ActionKind::Retire => self.redis_retire(id).await,
            ActionKind::Archive => self.redis_archive(id).await,
            ActionKind::Terminate => self.redis_terminate(id).await,
            ActionKind::InjectFault { fault } => self.redis_inject(id, *fault).await,
            ActionKind::Backup => self.redis_backup(id).await,
            ActionKind::VerifyRestore => self.redis_verify_restore(id, action.id).await,
            ActionKind::RotateCredentials => self.redis_rotate_credentials(action.service, action.id).await,
            ActionKind::RevokePreviousCredentials => self.redis_revoke_previous(action.service).await,
            // Redis services are deleted at once (no archive): never sent.
            ActionKind::PurgeArchive { .. } => Ok(Some("a Redis service keeps no archive: nothing to remove".into())),
        }
    }

    async fn redis_provision(
        self: &Arc<Self>,
        id: InstanceId,
        service_id: ServiceId,
        role: Role,
        name: &str,
        sync: bool,
    ) -> Done {
        if role == Role::Broker {
            return Err(ActionError::Config("a Redis service has no brokers".into()));
        }
        let existing = {
            let registry = lock(&self.redis.registry);
            if registry.tombstones.contains(&id) {
                return Err(invalid(format!("instance {id} was terminated; it is never provisioned again")));
            }
            registry.instances.get(&id).cloned()
        };
        if let Some(entry) = &existing {
            match entry.lifecycle {
                Lifecycle::Active if entry.fenced => {
                    return Err(invalid(format!("instance {id} is fenced; provision a new instance instead")))
                }
                Lifecycle::Active => {
                    self.redis_start(id, entry).await?;
                    if entry.role == Role::Follower {
                        self.redis_follow(entry).await?;
                    } else {
                        self.redis_route(entry.service).await?;
                    }
                    return Ok(Some("already provisioned".into()));
                }
                Lifecycle::Retired | Lifecycle::Archived => {
                    return Err(invalid(format!("instance {id} was retired; it is not provisioned again")))
                }
                Lifecycle::Provisioning => {
                    self.redis_stop(id, entry, Signal::SIGKILL).await?;
                    let _ = std::fs::remove_dir_all(&entry.dir);
                }
            }
        }
        let entry = self.redis_register(id, service_id, role, name, sync, existing)?;
        for dir in [entry.dir.clone(), server::data_dir(&entry.dir)] {
            self.run_as
                .prepare_dir(&dir, 0o700)
                .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
        }
        if role == Role::Follower && self.redis_current_primary(service_id).is_none() {
            return Err(ActionError::Unavailable(format!(
                "Redis service {name} has no running, unfenced primary for a replica to follow"
            )));
        }
        self.redis_start(id, &entry).await?;
        if role == Role::Follower {
            self.redis_follow(&entry).await?;
        }
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.lifecycle = Lifecycle::Active;
            }
            if role == Role::Primary {
                if let Some(service) = registry.services.get_mut(&service_id) {
                    service.primary = Some(id);
                }
            }
        }
        self.redis.save()?;
        if role == Role::Primary {
            self.redis_route(service_id).await?;
        }
        Ok(Some(format!("Redis {role} on port {}", entry.port)))
    }

    fn redis_register(
        &self,
        id: InstanceId,
        service_id: ServiceId,
        role: Role,
        name: &str,
        sync: bool,
        existing: Option<RedisInstance>,
    ) -> Result<RedisInstance, ActionError> {
        let mut used = lock(&self.registry).ports_in_use();
        used.extend(self.redis.ports_in_use());
        let entry = {
            let mut registry = lock(&self.redis.registry);
            if let std::collections::btree_map::Entry::Vacant(slot) = registry.services.entry(service_id) {
                let router_port = super::actions::free_port(&used)?;
                used.insert(router_port);
                let app = super::actions::random_password()?;
                let admin = super::actions::random_password()?;
                slot.insert(RedisService {
                    name: name.to_string(),
                    router_port,
                    app_password: self.key.seal_str(&context(name, server::APP_USER), &app),
                    admin_password: self.key.seal_str(&context(name, server::ADMIN_USER), &admin),
                    primary: None,
                    login: server::APP_USER.to_string(),
                    previous: None,
                    rotated_at_ms: 0,
                    rotation_action: None,
                    sync,
                });
            }
            let port = match &existing {
                Some(e) => e.port,
                None => super::actions::free_port(&used)?,
            };
            let entry = RedisInstance {
                service: service_id,
                service_name: name.to_string(),
                role,
                port,
                dir: self.redis.root.join("instances").join(id.to_string()),
                lifecycle: Lifecycle::Provisioning,
                fenced: false,
                fault: None,
            };
            registry.instances.insert(id, entry.clone());
            entry
        };
        self.redis.save()?;
        Ok(entry)
    }

    /// The service's primary when active, unfenced and running.
    fn redis_current_primary(&self, service: ServiceId) -> Option<(InstanceId, RedisInstance)> {
        let id = lock(&self.redis.registry).services.get(&service)?.primary?;
        let entry = self.redis.instance(id)?;
        (entry.should_run() && self.redis.process(id).is_some_and(|p| p.is_running())).then_some((id, entry))
    }

    /// Writes the config and spawns the server (if none runs), then waits
    /// for PING as Drover's admin.
    async fn redis_start(self: &Arc<Self>, id: InstanceId, entry: &RedisInstance) -> Result<(), ActionError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ActionError::Unavailable("the local provider is shut down".into()));
        }
        let service = self.redis.service(entry.service)?;
        if !self.redis.alive(id) {
            let data = server::data_dir(&entry.dir);
            process::kill_leftovers(&data).await?;
            let admin = self.redis_password(&service, server::ADMIN_USER)?;
            let app = self.redis_password(&service, &service.login)?;
            server::write_config(
                &self.run_as,
                &server::ServerConfig {
                    port: entry.port,
                    dir: &entry.dir,
                    admin_password: &admin,
                    app: (&service.login, &app),
                    app_previous: service.previous.as_ref().map(|p| (p.login.as_str(), p.hash.as_str())),
                    refuse_writes_without_replica: service.sync,
                },
            )?;
            let log_path = server::log_path(&entry.dir);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| ActionError::io(format_args!("cannot open {}", log_path.display()), e))?;
            let log_err = log.try_clone().map_err(|e| ActionError::io("cannot share the log file", e))?;
            let mut command = tokio::process::Command::new(&self.redis.redis_server);
            command
                .arg(server::conf_path(&entry.dir))
                .current_dir(&entry.dir)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log_err);
            self.run_as.apply_tokio(&mut command);
            let process =
                ServerProcess::spawn(command, Some(&data), self.redis_on_exit(id)).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ActionError::Config(format!(
                        "cannot spawn {}: {e}; install Redis (Debian: apt-get install redis-server)",
                        self.redis.redis_server.display()
                    )),
                    _ => ActionError::io("cannot spawn redis-server", e),
                })?;
            tracing::info!(instance = %id, pid = process.pid, port = entry.port, "redis-server started");
            lock(&self.redis.servers).insert(id, process);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let Some(process) = self.redis.process(id) else {
                return Err(ActionError::Failed("the server was stopped while starting".into()));
            };
            if process.has_exited() {
                let log = std::fs::read_to_string(server::log_path(&entry.dir)).unwrap_or_default();
                return Err(ActionError::Failed(format!(
                    "redis-server exited while starting ({}); log: {}",
                    process.exit_detail().unwrap_or_default(),
                    super::postgres::tail(&log, 800)
                )));
            }
            let ping = async {
                let mut c = self.redis_admin(entry, Duration::from_secs(1)).await?;
                server::run::<String>(&mut c, &redis::cmd("PING"), Duration::from_secs(1)).await
            };
            match ping.await {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ActionError::Timeout(format!(
                        "redis-server not answering after {START_TIMEOUT:?}: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // Every member may have to follow another one day (a switchover's
        // FAILOVER makes the old primary a replica): its credentials for
        // that are set at run time, never written.
        let admin = self.redis_password(&service, server::ADMIN_USER)?;
        let mut c = self.redis_admin(entry, COMMAND_TIMEOUT).await?;
        let t = COMMAND_TIMEOUT;
        server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("masteruser").arg(server::ADMIN_USER), t).await?;
        server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("masterauth").arg(&admin), t).await?;
        if let Some(bytes) = self.config.redis_maxmemory {
            server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes), t).await?;
        }
        // An adopted server started before the plan's rule was written.
        let min_replicas = server::min_replicas_to_write(service.sync);
        server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("min-replicas-to-write").arg(min_replicas), t)
            .await?;
        // A server already running (adopted, or a repeated provision) has
        // the application users the registry names, as a new one has.
        self.redis_set_logins(entry).await?;
        Ok(())
    }

    /// Points a replica at the service's primary and waits until its link
    /// is up.
    async fn redis_follow(&self, entry: &RedisInstance) -> Result<(), ActionError> {
        let (_, primary) = self.redis_current_primary(entry.service).ok_or_else(|| {
            ActionError::Unavailable(format!("Redis service {} has no running primary to follow", entry.service_name))
        })?;
        let service = self.redis.service(entry.service)?;
        let admin = self.redis_password(&service, server::ADMIN_USER)?;
        let mut c = self.redis_admin(entry, COMMAND_TIMEOUT).await?;
        let t = COMMAND_TIMEOUT;
        server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("masteruser").arg(server::ADMIN_USER), t).await?;
        server::run::<()>(&mut c, redis::cmd("CONFIG").arg("SET").arg("masterauth").arg(&admin), t).await?;
        let now = server::replication(&mut c, t).await?;
        if now.master || now.master_port != Some(primary.port) {
            server::run::<()>(&mut c, redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port), t).await?;
        }
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let r = server::replication(&mut c, t).await?;
            if !r.master && r.link_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!("replica's link not up after {STREAM_TIMEOUT:?}: {r:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes sure the service's router runs and sends clients to its primary.
    async fn redis_route(self: &Arc<Self>, service_id: ServiceId) -> Result<(), ActionError> {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let service = self.redis.service(service_id)?;
        let Some(primary) = service.primary.and_then(|p| self.redis.instance(p)) else {
            return Ok(());
        };
        let dir = self.redis.router_dir(service_id);
        self.run_as
            .prepare_dir(&dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
        let socket = self.redis.router_socket(service_id);
        router::prepare_socket_dir(&self.run_as, &dir, &socket)?;
        router::write_config(&self.run_as, &dir, &socket, service.router_port, primary.port)?;
        let running = lock(&self.redis.routers).get(&service_id).is_some_and(|p| !p.has_exited());
        if running {
            if lock(&self.redis.routed).get(&service_id) == Some(&primary.port) {
                return Ok(());
            }
            router::point(&socket, primary.port).await?;
            lock(&self.redis.routed).insert(service_id, primary.port);
            return Ok(());
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ActionError::Unavailable("the local provider is shut down".into()));
        }
        let name = service.name.clone();
        let process = router::spawn(
            &self.run_as,
            &self.redis.haproxy,
            &dir,
            &socket,
            Box::new(move |detail| tracing::warn!(service = %name, %detail, "Redis router exited unasked")),
        )
        .await?;
        tracing::info!(service = %service.name, pid = process.pid, port = service.router_port, "Redis router started");
        lock(&self.redis.routers).insert(service_id, process);
        lock(&self.redis.routed).insert(service_id, primary.port);
        Ok(())
    }

    /// Cuts the service's router off its primary (a fence), when it runs.
    async fn redis_cut(&self, service_id: ServiceId) {
        let running = lock(&self.redis.routers).get(&service_id).is_some_and(|p| !p.has_exited());
        lock(&self.redis.routed).remove(&service_id);
        if running {
            if let Err(error) = router::cut(&self.redis.router_socket(service_id)).await {
                tracing::warn!(%service_id, %error, "cannot cut the Redis router off its primary; fencing anyway");
            }
        }
    }

    async fn redis_stop(&self, id: InstanceId, entry: &RedisInstance, first: Signal) -> Result<(), ActionError> {
        lock(&self.redis.beat_clients).remove(&id);
        let process = lock(&self.redis.servers).get(&id).cloned();
        let timeout = if first == Signal::SIGKILL { Duration::ZERO } else { self.config.stop_timeout };
        match process {
            Some(process) => {
                process.stop(first, timeout).await?;
                lock(&self.redis.servers).remove(&id);
            }
            None => {
                if let Some(pid) = process::running_pid(&server::pid_path(&entry.dir), "redis-server") {
                    let p = ServerProcess::adopt(pid, None, self.closed.clone(), Box::new(|_| {}));
                    p.stop(first, timeout).await?;
                }
            }
        }
        Ok(())
    }

    async fn redis_probe(&self, id: InstanceId) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid(format!("instance is {}", if entry.fenced { "fenced" } else { "not active" })));
        }
        if self.config.same_host_evidence {
            let process = self.redis.process(id).ok_or_else(|| ActionError::Unhealthy("no redis-server".into()))?;
            match process::proc_state(process.pid) {
                ProcState::Live if !process.has_exited() => {}
                state => return Err(ActionError::Unhealthy(format!("redis-server {} is {state:?}", process.pid))),
            }
        }
        let answer = async {
            let mut c = self.redis_admin(&entry, PROBE_TIMEOUT).await?;
            server::run::<String>(&mut c, &redis::cmd("PING"), PROBE_TIMEOUT).await
        };
        match tokio::time::timeout(PROBE_TIMEOUT * 2, answer).await {
            Ok(Ok(_)) => Ok(Some("answers PING".into())),
            Ok(Err(e)) => Err(ActionError::Unhealthy(e.to_string())),
            Err(_) => Err(ActionError::Unhealthy(format!("no answer to PING within {PROBE_TIMEOUT:?}"))),
        }
    }

    /// Never two writable primaries: the router stops sending it clients
    /// and shuts their sessions first; then a planned switchover hands
    /// over with `FAILOVER TO` (the most advanced replica catches up while
    /// writes are paused, nothing acknowledged is lost), and the old
    /// server is stopped (killed at once when `immediate`).
    async fn redis_fence(self: &Arc<Self>, id: InstanceId, immediate: bool) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        let service = self.redis.service(entry.service)?;
        let routed_here = service.primary == Some(id);
        let mut handed_over = None;
        if routed_here && !immediate && entry.should_run() {
            match self.redis_hand_over(id, &entry).await {
                Ok(to) => handed_over = Some(to),
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "FAILOVER did not hand over; stopping the primary")
                }
            }
        }
        if routed_here && handed_over.is_none() {
            self.redis_cut(entry.service).await;
        }
        self.redis_stop(id, &entry, if immediate { Signal::SIGKILL } else { Signal::SIGTERM }).await?;
        let newly = {
            let mut registry = lock(&self.redis.registry);
            match registry.instances.get_mut(&id) {
                Some(stored) if !stored.fenced => {
                    stored.fenced = true;
                    true
                }
                _ => false,
            }
        };
        self.redis.save()?;
        Ok(Some(match (newly, handed_over) {
            (false, _) => "already fenced".into(),
            (true, Some((port, drain))) => format!(
                "handed over (FAILOVER TO port {port}; clients held at the router while {} sessions ended, {} idle \
                 and {} busy were closed in {} ms), stopped and fenced",
                drain.ended, drain.closed_idle, drain.closed_busy, drain.millis
            ),
            (true, None) => "cut at the router, stopped and fenced".into(),
        }))
    }

    /// `FAILOVER TO` the most advanced replica whose link is up, without
    /// failing a client's command: the router holds new sessions in its
    /// queue, the old primary's application sessions drain (those that end
    /// by themselves first; then those idle between commands are closed,
    /// which a pooled client sees before its next command), `FAILOVER TO`
    /// pauses the primary's writes until the replica has them all and swaps
    /// the roles, and the router releases the queued sessions to the new
    /// primary. Returns its port and what the drain did.
    ///
    /// A TCP router cannot move a session, so a kept (pooled) connection
    /// is closed between two of its commands; a client that sends its next
    /// command at that very moment reads EOF with no reply (the command
    /// was not run, or run once: SET-like commands are safe to send
    /// again). Clients that retry on a network error (go-redis by default,
    /// Lettuce) see nothing; the test's pooled client does the same.
    async fn redis_hand_over(
        self: &Arc<Self>,
        id: InstanceId,
        entry: &RedisInstance,
    ) -> Result<(u16, Drain), ActionError> {
        let replicas: Vec<(InstanceId, RedisInstance)> = lock(&self.redis.registry)
            .instances
            .iter()
            .filter(|(o, e)| **o != id && e.service == entry.service && e.role == Role::Follower && e.should_run())
            .map(|(o, e)| (*o, e.clone()))
            .collect();
        let mut best: Option<(u64, InstanceId, RedisInstance)> = None;
        for (other, e) in replicas {
            let Ok(mut c) = self.redis_admin(&e, PROBE_TIMEOUT).await else { continue };
            let Ok(r) = server::replication(&mut c, PROBE_TIMEOUT).await else { continue };
            let offset = r.offset.unwrap_or(0);
            if !r.master && r.link_up && best.as_ref().is_none_or(|(b, _, _)| offset > *b) {
                best = Some((offset, other, e));
            }
        }
        let (_, target, target_entry) = best.ok_or_else(|| ActionError::Unavailable("no replica streams".into()))?;
        let service = self.redis.service(entry.service)?;
        let socket = self.redis.router_socket(entry.service);
        let routed = lock(&self.redis.routers).get(&entry.service).is_some_and(|p| !p.has_exited());
        // The slot the queue waits behind: a connection of our own.
        let plug = if routed {
            let plug = plug(service.router_port).await?;
            router::hold(&socket).await?;
            Some(plug)
        } else {
            None
        };
        let handed = async {
            let drain = self.redis_drain_sessions(entry).await?;
            let mut c = self.redis_admin(entry, COMMAND_TIMEOUT).await?;
            server::run::<()>(
                &mut c,
                redis::cmd("FAILOVER")
                    .arg("TO")
                    .arg("127.0.0.1")
                    .arg(target_entry.port)
                    .arg("TIMEOUT")
                    .arg(FAILOVER_TIMEOUT_MS),
                COMMAND_TIMEOUT,
            )
            .await?;
            let deadline = Instant::now() + Duration::from_millis(FAILOVER_TIMEOUT_MS + 2000);
            let mut t = self.redis_admin(&target_entry, COMMAND_TIMEOUT).await?;
            loop {
                if server::replication(&mut t, COMMAND_TIMEOUT).await?.master {
                    return Ok(drain);
                }
                if Instant::now() >= deadline {
                    // FAILOVER ABORT keeps the old primary; the caller stops it.
                    let _ = server::run::<()>(&mut c, redis::cmd("FAILOVER").arg("ABORT"), COMMAND_TIMEOUT).await;
                    return Err(ActionError::Timeout("the replica did not become primary".into()));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        .await;
        let drain = match handed {
            Ok(drain) => drain,
            Err(error) => {
                if routed {
                    // The queued sessions go on to the old primary; the caller cuts it.
                    let _ = router::release(&socket, None).await;
                }
                return Err(error);
            }
        };
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&target) {
                stored.role = Role::Primary;
            }
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.role = Role::Follower;
            }
            if let Some(service) = registry.services.get_mut(&entry.service) {
                service.primary = Some(target);
            }
        }
        self.redis.save()?;
        if routed {
            router::write_config(
                &self.run_as,
                &self.redis.router_dir(entry.service),
                &socket,
                service.router_port,
                target_entry.port,
            )?;
            router::release(&socket, Some(target_entry.port)).await?;
            lock(&self.redis.routed).insert(entry.service, target_entry.port);
        } else {
            self.redis_route(entry.service).await?;
        }
        drop(plug);
        Ok((target_entry.port, drain))
    }

    /// Waits until no application session is left on `entry` (the router
    /// holds new ones): sessions that end by themselves within
    /// [`DRAIN_GRACE`]; after it, sessions idle between commands are
    /// closed; after [`DRAIN_TIMEOUT`], every one left is.
    async fn redis_drain_sessions(&self, entry: &RedisInstance) -> Result<Drain, ActionError> {
        let mut c = self.redis_admin(entry, COMMAND_TIMEOUT).await?;
        let start = Instant::now();
        let mut drain = Drain::default();
        let mut seen = BTreeSet::new();
        loop {
            let list: String =
                server::run(&mut c, redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal"), COMMAND_TIMEOUT)
                    .await?;
            let sessions: Vec<server::Session> =
                list.lines().filter_map(server::Session::parse).filter(|s| s.is_application()).collect();
            let now: BTreeSet<u64> = sessions.iter().map(|s| s.id).collect();
            drain.ended += seen.difference(&now).count() as u32;
            seen = now;
            if sessions.is_empty() {
                drain.millis = start.elapsed().as_millis() as u64;
                return Ok(drain);
            }
            let waited = start.elapsed();
            for session in &sessions {
                let close = if waited >= DRAIN_TIMEOUT {
                    Some(&mut drain.closed_busy)
                } else if waited >= DRAIN_GRACE && session.idle_between_commands() {
                    Some(&mut drain.closed_idle)
                } else {
                    None
                };
                if let Some(count) = close {
                    let killed: i64 = server::run(
                        &mut c,
                        redis::cmd("CLIENT").arg("KILL").arg("ID").arg(session.id),
                        COMMAND_TIMEOUT,
                    )
                    .await?;
                    *count += killed as u32;
                    seen.remove(&session.id);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The provider's part of a Redis service's checks (see `checks`);
    /// None when `name` is not a Redis service of this provider.
    pub(super) async fn redis_checks(&self, name: &str) -> Option<crate::ProviderChecks> {
        let (service_id, _) = {
            let registry = lock(&self.redis.registry);
            registry.services.iter().find(|(_, s)| s.name == name).map(|(id, s)| (*id, s.clone()))?
        };
        let running = lock(&self.redis.routers).get(&service_id).is_some_and(|p| !p.has_exited());
        let router = Some(if !running {
            Check {
                status: Status::Crit,
                summary: "the router (haproxy) does not run: the URL answers nobody".into(),
                evidence: serde_json::json!({}),
            }
        } else {
            match router::command_line(&self.redis.router_socket(service_id), "show stat").await {
                Ok(stat) => {
                    let line = stat.lines().find(|l| l.starts_with("redis,primary,")).unwrap_or_default().to_string();
                    let up = line.split(',').nth(17) == Some("UP");
                    Check {
                        status: if up { Status::Ok } else { Status::Crit },
                        summary: if up {
                            "the router sends clients to a primary that answers its role:master check".into()
                        } else {
                            "the router has no primary up behind it: clients are refused".into()
                        },
                        evidence: serde_json::json!({ "server": line }),
                    }
                }
                Err(e) => Check {
                    status: Status::Warn,
                    summary: format!("the router's admin socket does not answer: {e}"),
                    evidence: serde_json::json!({}),
                },
            }
        });
        let Some((_, primary)) = self.redis_current_primary(service_id) else {
            return Some(crate::ProviderChecks { router, ..Default::default() });
        };
        let t = Duration::from_secs(3);
        let inspected = async {
            let mut c = self.redis_admin(&primary, t).await?;
            let text: String = server::run(&mut c, redis::cmd("INFO").arg("everything"), t).await?;
            let info = checks::parse_info(&text);
            let default: redis::Value = server::run(&mut c, redis::cmd("ACL").arg("GETUSER").arg("default"), t).await?;
            let default_flags = acl_flags(&default);
            let protected: Vec<String> =
                server::run(&mut c, redis::cmd("CONFIG").arg("GET").arg("protected-mode"), t).await?;
            let mut app_allowed_dangerous = Vec::new();
            for command in checks::DANGEROUS {
                let mut dry = redis::cmd("ACL");
                dry.arg("DRYRUN").arg(server::APP_USER);
                for a in *command {
                    dry.arg(*a);
                }
                if let Ok(redis::Value::Okay) = server::run::<redis::Value>(&mut c, &dry, t).await {
                    app_allowed_dangerous.push(command.join(" "));
                }
            }
            let facts = checks::SecurityFacts {
                default_flags,
                protected_mode: protected.get(1).cloned(),
                app_allowed_dangerous,
            };
            Ok::<_, ActionError>((info, facts))
        };
        let Ok((info, facts)) = inspected.await else {
            return Some(crate::ProviderChecks { router, ..Default::default() });
        };
        let by_port: HashMap<u16, InstanceId> = lock(&self.redis.registry)
            .instances
            .iter()
            .filter(|(_, e)| e.service == service_id)
            .map(|(id, e)| (e.port, *id))
            .collect();
        let followers = checks::followers(&info, |port| {
            by_port.get(&port).map(|i| i.to_string()).unwrap_or_else(|| format!("port {port}"))
        });
        Some(crate::ProviderChecks {
            security: Some(checks::security(&facts)),
            performance: Some(checks::performance(&info)),
            followers: Some(followers),
            router,
            persistence: Some(checks::persistence(&info)),
        })
    }

    /// The backup repository of a service.
    fn redis_repo(&self, service: ServiceId) -> PathBuf {
        self.redis.root.join("backups").join(service.to_string())
    }

    /// `BGSAVE` on the member, then its snapshot into the service's backup
    /// repository (see `backup`).
    async fn redis_backup(&self, id: InstanceId) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() || !self.redis.alive(id) {
            return Err(invalid("the instance does not run: back up from the running primary"));
        }
        let mut c = self.redis_admin(&entry, COMMAND_TIMEOUT).await?;
        let persistence = |text: String| -> HashMap<String, String> {
            text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let info = redis::cmd("INFO").arg("persistence").clone();
        let saves = |p: &HashMap<String, String>| p.get("rdb_saves").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let before = saves(&persistence(server::run(&mut c, &info, COMMAND_TIMEOUT).await?));
        match server::run::<String>(&mut c, &redis::cmd("BGSAVE"), COMMAND_TIMEOUT).await {
            Ok(_) => {}
            // One under way (the `save` rules): the next finished one serves.
            Err(ActionError::Failed(e)) if e.contains("in progress") => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + BACKUP_TIMEOUT;
        let taken_at = loop {
            let p = persistence(server::run(&mut c, &info, COMMAND_TIMEOUT).await?);
            let running = p.get("rdb_bgsave_in_progress").is_some_and(|v| v == "1");
            if !running && saves(&p) > before {
                if p.get("rdb_last_bgsave_status").is_some_and(|v| v != "ok") {
                    return Err(ActionError::Failed("BGSAVE failed: see the server's log".into()));
                }
                break p.get("rdb_last_save_time").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!("BGSAVE not done after {BACKUP_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let label = format!("rdb-{}", jiff::Timestamp::now().as_millisecond());
        let repo = self.redis_repo(entry.service);
        let manifest = backup::store(&repo, &server::data_dir(&entry.dir).join("dump.rdb"), &label, taken_at).await?;
        Ok(Some(format!(
            "RDB backup {label}: {} bytes, {} keys, SHA-256 {}",
            manifest.bytes, manifest.keys, manifest.sha256
        )))
    }

    /// Restore-tests the service's latest backup in a throwaway server.
    async fn redis_verify_restore(&self, id: InstanceId, action: drover_model::ActionId) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        let repo = self.redis_repo(entry.service);
        let latest = backup::list(&repo)
            .pop()
            .ok_or_else(|| invalid(format!("Redis service {} has no backup to test yet", entry.service_name)))?;
        let port = {
            let mut used = lock(&self.registry).ports_in_use();
            used.extend(self.redis.ports_in_use());
            super::actions::free_port(&used)?
        };
        let scratch = self.redis.root.join("scratch").join(action.to_string());
        let detail = backup::verify(&self.run_as, &self.redis.redis_server, &repo, &latest, &scratch, port).await?;
        Ok(Some(detail))
    }

    async fn redis_promote(self: &Arc<Self>, id: InstanceId) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid(format!(
                "cannot promote: instance is {}",
                if entry.fenced { "fenced" } else { "not active" }
            )));
        }
        if !self.redis.process(id).is_some_and(|p| p.is_running()) {
            return Err(invalid("cannot promote: its redis-server is not running"));
        }
        let old = lock(&self.redis.registry).services.get(&entry.service).and_then(|s| s.primary).filter(|p| *p != id);
        if let Some(old) = old {
            if self.redis.instance(old).is_some_and(|e| e.should_run()) && self.redis.alive(old) {
                return Err(invalid(format!("cannot promote: the primary {old} still runs unfenced; fence it first")));
            }
        }
        let mut c = self.redis_admin(&entry, COMMAND_TIMEOUT).await?;
        let was_replica = !server::replication(&mut c, COMMAND_TIMEOUT).await?.master;
        if was_replica {
            server::run::<()>(&mut c, redis::cmd("REPLICAOF").arg("NO").arg("ONE"), COMMAND_TIMEOUT).await?;
        }
        let others: Vec<RedisInstance> = {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.role = Role::Primary;
            }
            if let Some(service) = registry.services.get_mut(&entry.service) {
                service.primary = Some(id);
            }
            registry
                .instances
                .iter()
                .filter(|(o, e)| **o != id && e.service == entry.service && e.role == Role::Follower && e.should_run())
                .map(|(_, e)| e.clone())
                .collect()
        };
        self.redis.save()?;
        self.redis_route(entry.service).await?;
        // The other replicas follow the new primary (a partial resync when
        // its replication history covers them, a full one otherwise).
        for other in others {
            let repoint = async {
                let mut o = self.redis_admin(&other, COMMAND_TIMEOUT).await?;
                server::run::<()>(&mut o, redis::cmd("REPLICAOF").arg("127.0.0.1").arg(entry.port), COMMAND_TIMEOUT)
                    .await
            };
            if let Err(error) = repoint.await {
                tracing::warn!(follower = other.port, %error, "cannot repoint a Redis replica at the new primary");
            }
        }
        Ok(Some(
            if was_replica {
                "promoted (REPLICAOF NO ONE); router switched"
            } else {
                "already primary; router switched"
            }
            .into(),
        ))
    }

    async fn redis_restart(self: &Arc<Self>, id: InstanceId) -> Done {
        let entry = self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        if entry.fenced {
            return Err(invalid("instance is fenced: it is never started again"));
        }
        if entry.lifecycle != Lifecycle::Active {
            return Err(invalid(format!("instance is {:?}, not active", entry.lifecycle)));
        }
        let healthy = self.redis.process(id).is_some_and(|p| p.is_running()) && self.redis_probe(id).await.is_ok();
        if !healthy {
            self.redis_stop(id, &entry, Signal::SIGKILL).await?;
            self.redis_start(id, &entry).await?;
        }
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                if matches!(stored.fault, Some(Fault::Hang) | Some(Fault::Crash)) {
                    stored.fault = None;
                }
            }
        }
        self.redis.save()?;
        if entry.role == Role::Follower {
            self.redis_follow(&entry).await?;
        } else {
            self.redis_route(entry.service).await?;
        }
        Ok(Some(if healthy { "already running" } else { "restarted" }.into()))
    }

    async fn redis_retire(&self, id: InstanceId) -> Done {
        let Some(entry) = self.redis.instance(id) else {
            return Ok(Some("unknown instance: nothing to retire".into()));
        };
        self.redis_stop(id, &entry, Signal::SIGTERM).await?;
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                if matches!(stored.lifecycle, Lifecycle::Active | Lifecycle::Provisioning) {
                    stored.lifecycle = Lifecycle::Retired;
                }
            }
        }
        self.redis.save()?;
        Ok(Some("stopped for good".into()))
    }

    async fn redis_archive(&self, id: InstanceId) -> Done {
        let Some(entry) = self.redis.instance(id) else {
            return Ok(Some("unknown instance: nothing to archive".into()));
        };
        if entry.lifecycle == Lifecycle::Archived {
            return Ok(Some("already archived".into()));
        }
        self.redis_stop(id, &entry, Signal::SIGTERM).await?;
        let target = self.root.join("archive").join(id.to_string());
        if entry.dir.exists() {
            if target.exists() {
                return Err(ActionError::Config(format!("{} already exists; move it aside", target.display())));
            }
            std::fs::rename(&entry.dir, &target).map_err(|e| {
                ActionError::io(format_args!("cannot move {} to {}", entry.dir.display(), target.display()), e)
            })?;
        }
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.dir = target.clone();
                stored.lifecycle = Lifecycle::Archived;
            }
        }
        self.redis.save()?;
        Ok(Some(format!("data kept in {}", target.display())))
    }

    async fn redis_terminate(&self, id: InstanceId) -> Done {
        let Some(entry) = self.redis.instance(id) else {
            if lock(&self.redis.registry).tombstones.insert(id) {
                self.redis.save()?;
            }
            return Ok(Some("nothing left".into()));
        };
        self.redis_stop(id, &entry, Signal::SIGTERM).await?;
        for dir in [entry.dir.clone(), self.root.join("archive").join(id.to_string())] {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ActionError::io(format_args!("cannot delete {}", dir.display()), e)),
            }
        }
        let service_empty = {
            let mut registry = lock(&self.redis.registry);
            registry.instances.remove(&id);
            registry.tombstones.insert(id);
            if let Some(service) = registry.services.get_mut(&entry.service) {
                if service.primary == Some(id) {
                    service.primary = None;
                }
            }
            !registry.instances.values().any(|e| e.service == entry.service)
        };
        self.redis.save()?;
        if service_empty {
            let router = lock(&self.redis.routers).remove(&entry.service);
            if let Some(router) = router {
                router.stop(Signal::SIGTERM, self.config.stop_timeout).await?;
            }
        }
        Ok(Some("deleted".into()))
    }

    async fn redis_inject(&self, id: InstanceId, fault: Fault) -> Done {
        self.redis.instance(id).ok_or_else(|| invalid("unknown instance"))?;
        let process = self.redis.process(id).filter(|p| !p.has_exited());
        let detail = match (fault, &process) {
            (Fault::Crash, Some(p)) => {
                process::signal_process(p.pid, Signal::SIGKILL);
                "redis-server killed (SIGKILL)"
            }
            (Fault::Crash, None) => "not running",
            (Fault::Hang, Some(p)) => {
                p.signal_family(Signal::SIGSTOP);
                "redis-server stopped (SIGSTOP)"
            }
            (Fault::Hang, None) => return Err(invalid("cannot hang: not running")),
            (Fault::Partition, _) => "heartbeats withheld",
            (Fault::Heal, _) => {
                if let Some(p) = &process {
                    p.signal_family(Signal::SIGCONT);
                }
                "healed"
            }
        };
        {
            let mut registry = lock(&self.redis.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.fault = if fault == Fault::Heal { None } else { Some(fault) };
            }
        }
        if matches!(fault, Fault::Heal | Fault::Hang) {
            lock(&self.redis.beat_clients).remove(&id);
        }
        self.redis.save()?;
        Ok(Some(detail.into()))
    }

    /// One heartbeat round of the Redis members: `INFO replication` on a
    /// kept-open admin connection each, concurrently, within `timeout`.
    pub(super) async fn redis_beats(self: &Arc<Self>, timeout: Duration) -> Vec<Beat> {
        let audible: Vec<(InstanceId, RedisInstance)> = {
            let registry = lock(&self.redis.registry);
            registry
                .instances
                .iter()
                .filter(|(id, e)| e.should_run() && e.fault != Some(Fault::Partition) && self.redis.alive(**id))
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        if audible.is_empty() {
            self.redis_keep_routers();
            return Vec::new();
        }
        let mut probes = tokio::task::JoinSet::new();
        for (id, entry) in audible {
            let inner = self.clone();
            probes.spawn(async move {
                let slot = lock(&inner.redis.beat_clients).entry(id).or_default().clone();
                let mut client = slot.try_lock().ok()?;
                let attempt = async {
                    if client.is_none() {
                        *client = Some(inner.redis_admin(&entry, timeout).await?);
                    }
                    let connection = client.as_mut().expect("connected just above");
                    server::replication(connection, timeout).await
                };
                match tokio::time::timeout(timeout, attempt).await {
                    Ok(Ok(r)) => Some((id, entry.service, r)),
                    _ => {
                        *client = None;
                        None
                    }
                }
            });
        }
        let mut samples = Vec::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok(Some(sample)) = joined {
                samples.push(sample);
            }
        }
        self.redis_keep_routers();
        let primary_offset: HashMap<ServiceId, u64> =
            samples.iter().filter(|(_, _, r)| r.master).filter_map(|(_, s, r)| Some((*s, r.offset?))).collect();
        samples
            .into_iter()
            .map(|(instance, service, r)| {
                let lag = (!r.master).then(|| Some(primary_offset.get(&service)?.saturating_sub(r.offset?))).flatten();
                let facts = Facts {
                    role: Some(if r.master { Role::Primary } else { Role::Follower }),
                    writable: Some(r.master),
                    wal_position: r.offset,
                    replication_lag_bytes: lag,
                    upstream_streaming: (!r.master).then_some(r.link_up),
                    connections: r.connected_clients,
                    last_backup_at: None,
                    port: None,
                };
                Beat { instance, seq: self.next_seq(), facts }
            })
            .collect()
    }

    /// A router that exited unasked is started again on the same port.
    fn redis_keep_routers(self: &Arc<Self>) {
        let exited: Vec<(ServiceId, String)> = {
            let mut routers = lock(&self.redis.routers);
            let dead: Vec<(ServiceId, String)> = routers
                .iter()
                .filter(|(_, p)| p.has_exited())
                .map(|(s, p)| (*s, p.exit_detail().unwrap_or_else(|| "exited".into())))
                .collect();
            for (service, _) in &dead {
                routers.remove(service);
            }
            dead
        };
        for (service, exit) in exited {
            let why = format!("exited unasked ({exit})");
            let inner = self.clone();
            tokio::spawn(async move {
                let detail = match inner.redis_route(service).await {
                    Ok(()) => format!("router (haproxy) {why}; started again on the same port"),
                    Err(error) => format!("router (haproxy) {why} and cannot be started again: {error}"),
                };
                inner.report_router(service, detail);
            });
        }
    }

    /// Starts the router of every service with a primary that has none
    /// running (after a control-plane restart), and says so.
    pub(super) async fn redis_start_missing_routers(self: Arc<Self>) {
        let services: Vec<ServiceId> = {
            let registry = lock(&self.redis.registry);
            let routers = lock(&self.redis.routers);
            registry
                .services
                .iter()
                .filter(|(id, s)| s.primary.is_some() && !routers.contains_key(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for service in services {
            let detail = match self.redis_route(service).await {
                Ok(()) => "router (haproxy) was not running when the control plane started; started again on its port"
                    .to_string(),
                Err(error) => format!("router (haproxy) cannot be started: {error}"),
            };
            self.report_router(service, detail);
        }
    }

    /// Stops every Redis server and router (the provider's shutdown).
    pub(super) fn redis_drain(&self) -> Vec<(ServerProcess, Signal)> {
        let mut all: Vec<(ServerProcess, Signal)> =
            lock(&self.redis.servers).drain().map(|(_, p)| (p, Signal::SIGTERM)).collect();
        all.extend(lock(&self.redis.routers).drain().map(|(_, p)| (p, Signal::SIGTERM)));
        all
    }
}

/// The flags of an `ACL GETUSER` answer (a map, RESP2: a flat array).
fn acl_flags(value: &redis::Value) -> Vec<String> {
    let items: Vec<&redis::Value> = match value {
        redis::Value::Array(items) => items.iter().collect(),
        redis::Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Vec::new(),
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    items
        .chunks(2)
        .find(|pair| pair.len() == 2 && text(pair[0]) == "flags")
        .map(|pair| match pair[1] {
            redis::Value::Array(flags) | redis::Value::Set(flags) => flags.iter().map(text).collect(),
            _ => Vec::new(),
        })
        .unwrap_or_default()
}
