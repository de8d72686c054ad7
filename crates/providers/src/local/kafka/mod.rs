//! Kafka services of the `local` provider (issue 14): per service N `tansu`
//! brokers (a Kafka-protocol broker, pinned to 0.6.0, installed by
//! `scripts/lib.sh`'s `ensure_tansu`) over one PostgreSQL storage database,
//! and one HAProxy router on a fixed loopback port, the bootstrap address
//! `kafka://127.0.0.1:PORT` that never changes.
//!
//! tansu's brokers are stateless: each one is leader of every partition and
//! coordinator of every group, its records and offsets kept in the storage.
//! So every broker advertises the *router's* address (not its own port):
//! a client only ever connects to the bootstrap address, HAProxy hands each
//! connection to a live broker, and a broker that dies costs its clients a
//! reconnect to the same address, never a metadata refresh towards a dead
//! port. All brokers share one node id (tansu's), so the metadata a client
//! sees is the same whichever broker answers.
//!
//! The storage is the service's own PostgreSQL service, `<name>-storage`,
//! which the engine creates with it (`drover_engine::kafka_storage`): a
//! primary and a synchronous follower behind its pgbouncer router, fenced
//! failover, backups, all as for any PostgreSQL service. Brokers reach it
//! through that router's stable URL (sessions pooled whole: tansu keeps
//! prepared statements across transactions), so a storage failover costs
//! them a reconnect to the same address. The first broker applies the
//! schema of `storage.sql` (tansu's PostgreSQL engine does not create its
//! own), once, under an advisory lock.
//!
//! Brokers are this process's children, reaped at once: one that exits
//! unasked is reported `Gone`, the engine fences it (cut at the router:
//! `maint`, sessions shut) and provisions a replacement, which takes a free
//! router slot. Layout under `data_dir/local/kafka/`: `kafka.json` beside
//! it, `services/<service id>/router/`, `brokers/<id>/` (log,
//! pid).

pub mod checks;

use super::postgres::{tail, write_owned};
use super::process::{self, ProcState, ServerProcess};
use super::redis::router as haproxy;
use super::registry::Lifecycle;
use super::{lock, Inner};
use crate::{ActionError, ProviderError};
use drover_model::{ActionKind, ActionRecord, Beat, EngineKind, Facts, Fault, InstanceId, Role, ServiceId};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REGISTRY_FORMAT: u64 = 1;
/// The pinned broker (scripts/lib.sh installs this version).
pub const TANSU_VERSION: &str = "0.6.0";
/// The storage schema tansu's PostgreSQL engine needs.
const STORAGE_DDL: &str = include_str!("storage.sql");
/// Router slots: brokers a service may have at once, replacements included.
const SLOTS: u8 = 8;
/// How long a new broker may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker's provisioning waits for its service's storage to
/// take writes (it is created in the same moment: a primary and its
/// follower take a few seconds).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(40);
/// A probe: ApiVersions on a fresh connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a retiring broker drains at the router (no new connection
/// reaches it) before its remaining sessions are shut. Kafka clients keep
/// their connections open for good (librdkafka's `connections.max.idle.ms`
/// is off by default), so most drains end here: the shut sessions'
/// clients reconnect to the same bootstrap address, which hands them to a
/// peer, and resend what was in flight (a produce request the client
/// retries by itself). Long enough for requests in flight to be answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a draining broker's sessions are counted.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Where a retiring broker is in leaving the router (in memory only: a
/// Retire retried after a restart drains again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaving {
    /// `drain`: no new connection, its open sessions go on.
    Draining,
    /// `maint`, its sessions shut: about to be stopped.
    Cut,
}
/// The cluster id every broker of a service shares.
fn cluster_id(service: ServiceId) -> String {
    format!("drover-{}", service.0.simple())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KafkaBroker {
    pub service: ServiceId,
    pub service_name: String,
    pub port: u16,
    /// Its server in the router (`kafka/b<slot>`).
    pub slot: u8,
    pub dir: PathBuf,
    pub lifecycle: Lifecycle,
    pub fenced: bool,
    #[serde(default)]
    pub fault: Option<Fault>,
}

impl KafkaBroker {
    fn should_run(&self) -> bool {
        self.lifecycle == Lifecycle::Active && !self.fenced
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KafkaService {
    pub name: String,
    pub router_port: u16,
    /// Whether the storage's schema was applied.
    #[serde(default)]
    pub storage_ready: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KafkaRegistry {
    pub format: u64,
    pub instances: BTreeMap<InstanceId, KafkaBroker>,
    pub services: BTreeMap<ServiceId, KafkaService>,
    pub tombstones: BTreeSet<InstanceId>,
}

fn invalid(error: impl Into<String>) -> ActionError {
    ActionError::InvalidState(error.into())
}

type Done = Result<Option<String>, ActionError>;

/// The Kafka half of the local provider's state.
pub(super) struct Kafka {
    path: PathBuf,
    root: PathBuf,
    tansu: PathBuf,
    /// `tansu` as the server user can run it (see [`Inner::kafka_binary`]),
    /// found on first use.
    runnable: tokio::sync::Mutex<Option<PathBuf>>,
    haproxy: PathBuf,
    registry: Mutex<KafkaRegistry>,
    persist: Mutex<()>,
    brokers: Mutex<HashMap<InstanceId, ServerProcess>>,
    routers: Mutex<HashMap<ServiceId, ServerProcess>>,
    /// Retiring brokers on their way out of the router.
    leaving: Mutex<HashMap<InstanceId, Leaving>>,
}

/// Where the broker binary is: `DROVER_TANSU`, else cargo's bin directory,
/// else the PATH.
fn find_tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_TANSU") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(bin) = cargo_home.map(|h| h.join("bin").join("tansu")).filter(|p| p.is_file()) {
        return bin;
    }
    PathBuf::from("tansu")
}

/// `name` as the PATH finds it (a path with a `/` is taken as it is).
fn resolve_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return Some(name.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether `run_as`'s user can execute `path`: every ancestor traversable
/// and the file executable by it (its owner, primary group or others).
fn executable_by(run_as: &crate::runas::RunAs, path: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let allows = |meta: &std::fs::Metadata| {
        let mode = meta.permissions().mode();
        if meta.uid() == run_as.uid {
            mode & 0o100 != 0
        } else if meta.gid() == run_as.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    };
    let Ok(path) = std::fs::canonicalize(path) else { return false };
    path.ancestors().all(|p| std::fs::metadata(p).is_ok_and(|m| allows(&m)))
}

/// A copy of `source` at `staged` the server user can run: a hard link
/// when both are on one filesystem (nothing copied), else a copy; kept
/// while it is the same file (a link) or as new as the source (a copy).
fn stage_binary(source: &Path, staged: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let from = std::fs::metadata(source)?;
    if let Ok(at) = std::fs::metadata(staged) {
        let same = (at.dev(), at.ino()) == (from.dev(), from.ino());
        let fresh_copy = at.len() == from.len() && at.modified()? >= from.modified()?;
        if same || fresh_copy {
            return Ok(());
        }
        std::fs::remove_file(staged)?;
    }
    if std::fs::hard_link(source, staged).is_ok() {
        return Ok(());
    }
    let tmp = staged.with_extension("tmp");
    std::fs::copy(source, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, staged)
}

impl Kafka {
    pub fn open(local_root: &Path, run_as: &crate::runas::RunAs) -> Result<Kafka, ProviderError> {
        let path = local_root.join("kafka.json");
        let root = local_root.join("kafka");
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ProviderError::Io { operation, path, source }
        };
        for sub in ["", "services", "brokers"] {
            let dir = root.join(sub);
            run_as.prepare_dir(&dir, 0o750).map_err(io("prepare the directory", &dir))?;
        }
        let registry = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io("read the Kafka registry", &path)(std::io::Error::other(e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                KafkaRegistry { format: REGISTRY_FORMAT, ..Default::default() }
            }
            Err(e) => return Err(io("read the Kafka registry", &path)(e)),
        };
        Ok(Kafka {
            path,
            root,
            tansu: find_tansu(),
            runnable: tokio::sync::Mutex::new(None),
            haproxy: PathBuf::from(haproxy::DEFAULT_HAPROXY),
            registry: Mutex::new(registry),
            persist: Mutex::new(()),
            brokers: Mutex::new(HashMap::new()),
            routers: Mutex::new(HashMap::new()),
            leaving: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `action` is for a Kafka member.
    pub fn owns(&self, action: &ActionRecord) -> bool {
        match &action.kind {
            ActionKind::Provision(p) => p.engine == EngineKind::Kafka,
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
        let text = serde_json::to_vec_pretty(&snapshot).map_err(|e| ActionError::io("encode kafka.json", e.into()))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| ActionError::io(format_args!("cannot write {}", self.path.display()), e))
    }

    fn broker(&self, id: InstanceId) -> Option<KafkaBroker> {
        lock(&self.registry).instances.get(&id).cloned()
    }

    fn service(&self, id: ServiceId) -> Result<KafkaService, ActionError> {
        lock(&self.registry).services.get(&id).cloned().ok_or_else(|| invalid(format!("unknown Kafka service {id}")))
    }

    fn process(&self, id: InstanceId) -> Option<ServerProcess> {
        lock(&self.brokers).get(&id).cloned()
    }

    fn service_dir(&self, service: ServiceId) -> PathBuf {
        self.root.join("services").join(service.to_string())
    }

    pub fn find_service(&self, name: &str) -> Option<KafkaService> {
        lock(&self.registry).services.values().find(|s| s.name == name).cloned()
    }
}

/// `haproxy.cfg` of a Kafka service's router: every slot a server, the
/// unused ones (and fenced brokers) in maintenance.
fn router_config(socket: &Path, router_port: u16, slots: &BTreeMap<u8, u16>) -> String {
    let mut text = format!(
        "# Written by Drover: the bootstrap address of one Kafka service.\n\
         global\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   maxconn 4000\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 500ms\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 500ms\n\
         listen kafka\n\
         \x20   bind 127.0.0.1:{router_port}\n\
         \x20   balance leastconn\n\
         \x20   option redispatch\n\
         \x20   retries 3\n",
        socket = socket.display(),
    );
    for slot in 0..SLOTS {
        let (port, state) = match slots.get(&slot) {
            Some(port) => (*port, ""),
            None => (1, " disabled"),
        };
        text.push_str(&format!(
            "    server b{slot} 127.0.0.1:{port} check inter 200ms fastinter 100ms downinter 200ms rise 1 fall 2 \
             on-marked-down shutdown-sessions{state}\n"
        ));
    }
    text
}

/// The sessions the router holds open to server `b<slot>` (`show stat`,
/// `scur`).
async fn router_sessions(socket: &Path, slot: u8) -> Result<u64, String> {
    let stat = haproxy::command_line(socket, "show stat").await?;
    let server = format!("b{slot}");
    // pxname,svname,qcur,qmax,scur,...
    stat.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[0] == "kafka" && f[1] == server)
        .and_then(|f| f[4].parse().ok())
        .ok_or_else(|| format!("the router's `show stat` has no sessions count for kafka/{server}"))
}

/// The serving broker of the Kafka service `name` that holds the most
/// client sessions at the service's router, with that count, read from the
/// local provider's files under `local_root` (a data dir's `local/`): the
/// broker a producer writes through, which a benchmark or a test kills so
/// that the kill cuts a client rather than an idle broker.
pub async fn busiest_broker(local_root: &Path, name: &str) -> Result<(InstanceId, u64), String> {
    let path = local_root.join("kafka.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let registry: KafkaRegistry = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let (&service, _) = registry
        .services
        .iter()
        .find(|(_, s)| s.name == name)
        .ok_or_else(|| format!("no Kafka service {name} in {}", path.display()))?;
    let router = local_root.join("kafka").join("services").join(service.to_string()).join("router");
    let socket = haproxy::socket_path(&router, service);
    let mut best: Option<(InstanceId, u64)> = None;
    for (&id, broker) in registry.instances.iter().filter(|(_, b)| b.service == service && b.should_run() && !b.fenced)
    {
        let open = router_sessions(&socket, broker.slot).await?;
        if best.is_none_or(|(_, n)| open > n) {
            best = Some((id, open));
        }
    }
    best.ok_or_else(|| format!("the Kafka service {name} has no serving broker"))
}

impl Inner {
    pub(super) fn kafka_url(&self, name: &str) -> Option<String> {
        let service = self.kafka.find_service(name)?;
        Some(format!("kafka://127.0.0.1:{}", service.router_port))
    }

    fn kafka_on_exit(self: &Arc<Self>, id: InstanceId) -> process::OnUnexpectedExit {
        let weak = Arc::downgrade(self);
        Box::new(move |detail| {
            if let Some(inner) = weak.upgrade() {
                if inner.config.same_host_evidence {
                    inner.report_gone(id, format!("tansu broker exited: {detail}"));
                } else {
                    tracing::warn!(instance = %id, %detail, "tansu broker exited (not reported: same-host evidence is off)");
                }
            }
        })
    }

    /// Adopts the brokers and routers that survived a restart;
    /// returns how many, and the brokers that should run but do not.
    pub(super) fn kafka_adopt(self: &Arc<Self>) -> (usize, Vec<InstanceId>) {
        let registry = lock(&self.kafka.registry).clone();
        let mut adopted = 0;
        let mut missing = Vec::new();
        for (id, entry) in &registry.instances {
            if !entry.should_run() {
                continue;
            }
            match process::running_pid(&entry.dir.join("tansu.pid"), "tansu") {
                Some(pid) => {
                    let process = ServerProcess::adopt(pid, None, self.closed.clone(), self.kafka_on_exit(*id));
                    lock(&self.kafka.brokers).insert(*id, process);
                    adopted += 1;
                }
                None => missing.push(*id),
            }
        }
        for service in registry.services.keys() {
            let dir = self.kafka.service_dir(*service);
            if let Some(pid) = haproxy::adopt_pid(&dir.join("router")) {
                let process = ServerProcess::adopt(pid, None, self.closed.clone(), Box::new(|_| {}));
                lock(&self.kafka.routers).insert(*service, process);
                adopted += 1;
            }
        }
        (adopted, missing)
    }

    pub(super) async fn kafka_execute(self: &Arc<Self>, action: &ActionRecord) -> Done {
        let id = action.instance;
        match &action.kind {
            ActionKind::Provision(p) => self.kafka_provision(id, action.service, p.role, &p.service_name).await,
            ActionKind::Probe => self.kafka_probe(id).await,
            ActionKind::Fence { immediate } => self.kafka_fence(id, *immediate).await,
            ActionKind::Restart => self.kafka_restart(id).await,
            ActionKind::Retire => self.kafka_leave(id, Lifecycle::Retired).await,
            ActionKind::Archive => self.kafka_leave(id, Lifecycle::Archived).await,
            ActionKind::Terminate => self.kafka_terminate(id).await,
            ActionKind::InjectFault { fault } => self.kafka_inject(id, *fault).await,
            ActionKind::Promote => Err(invalid("a Kafka broker is never promoted: its peers serve already")),
            ActionKind::Backup | ActionKind::VerifyRestore => Err(ActionError::Config(
                "a Kafka service's records are in its storage, a PostgreSQL service of its own (`<name>-storage`): \
                 its backups are that service's"
                    .into(),
            )),
            ActionKind::RotateCredentials | ActionKind::RevokePreviousCredentials => Err(ActionError::Config(
                "a Kafka service of the local provider has no client credentials to rotate (no authentication yet)"
                    .into(),
            )),
            // Kafka services are deleted at once (no archive): never sent.
            ActionKind::PurgeArchive { .. } => Ok(Some("a Kafka service keeps no archive: nothing to remove".into())),
        }
    }

    async fn kafka_provision(self: &Arc<Self>, id: InstanceId, service_id: ServiceId, role: Role, name: &str) -> Done {
        if role != Role::Broker {
            return Err(ActionError::Config(format!("a Kafka service has brokers only, not a {role}")));
        }
        let existing = {
            let registry = lock(&self.kafka.registry);
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
                Lifecycle::Retired | Lifecycle::Archived => {
                    return Err(invalid(format!("instance {id} was retired; it is not provisioned again")))
                }
                Lifecycle::Active | Lifecycle::Provisioning => {}
            }
        }
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let entry = self.kafka_register(id, service_id, name, existing)?;
        self.run_as
            .prepare_dir(&entry.dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", entry.dir.display()), e))?;
        self.kafka_storage(service_id).await?;
        self.kafka_start(id, &entry).await?;
        if let Some(stored) = lock(&self.kafka.registry).instances.get_mut(&id) {
            stored.lifecycle = Lifecycle::Active;
        }
        self.kafka.save()?;
        self.kafka_route(service_id).await?;
        Ok(Some(format!("tansu broker on port {} (router slot b{})", entry.port, entry.slot)))
    }

    fn kafka_register(
        &self,
        id: InstanceId,
        service_id: ServiceId,
        name: &str,
        existing: Option<KafkaBroker>,
    ) -> Result<KafkaBroker, ActionError> {
        let mut used = lock(&self.registry).ports_in_use();
        used.extend(self.redis.ports_in_use());
        used.extend(self.kafka.ports_in_use());
        let entry = {
            let mut registry = lock(&self.kafka.registry);
            if let std::collections::btree_map::Entry::Vacant(slot) = registry.services.entry(service_id) {
                let router_port = super::actions::free_port(&used)?;
                used.insert(router_port);
                slot.insert(KafkaService { name: name.to_string(), router_port, storage_ready: false });
            }
            if let Some(e) = existing {
                return Ok(e);
            }
            let taken: BTreeSet<u8> = registry
                .instances
                .values()
                .filter(|b| {
                    b.service == service_id
                        && !b.fenced
                        && matches!(b.lifecycle, Lifecycle::Active | Lifecycle::Provisioning)
                })
                .map(|b| b.slot)
                .collect();
            let slot = (0..SLOTS)
                .find(|s| !taken.contains(s))
                .ok_or_else(|| ActionError::Unavailable(format!("all {SLOTS} router slots of {name} are taken")))?;
            let entry = KafkaBroker {
                service: service_id,
                service_name: name.to_string(),
                port: super::actions::free_port(&used)?,
                slot,
                dir: self.kafka.root.join("brokers").join(id.to_string()),
                lifecycle: Lifecycle::Provisioning,
                fenced: false,
                fault: None,
            };
            registry.instances.insert(id, entry.clone());
            entry
        };
        self.kafka.save()?;
        Ok(entry)
    }

    /// The storage URL brokers are given: the stable URL of the service's
    /// storage, a PostgreSQL service of this provider.
    fn kafka_storage_url(&self, service: &KafkaService) -> Result<String, ActionError> {
        let storage = drover_model::kafka_storage_name(&service.name);
        self.postgres_url(&storage).ok_or_else(|| {
            ActionError::Unavailable(format!(
                "the storage {storage} of the Kafka service {} is not built yet",
                service.name
            ))
        })
    }

    /// Waits until the service's storage takes writes through its URL, and
    /// applies tansu's schema there once (the first broker does it, under
    /// an advisory lock; the others find it).
    async fn kafka_storage(self: &Arc<Self>, service_id: ServiceId) -> Result<(), ActionError> {
        let service = self.kafka.service(service_id)?;
        let deadline = Instant::now() + STORAGE_TIMEOUT;
        let client = loop {
            let attempt = async {
                let url = self.kafka_storage_url(&service)?;
                let (client, connection) =
                    tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(&url, tokio_postgres::NoTls))
                        .await
                        .map_err(|_| ActionError::Unavailable("the storage did not answer within 3 s".into()))?
                        .map_err(|e| ActionError::Unavailable(super::postgres::error_text(&e)))?;
                tokio::spawn(connection);
                let row = client
                    .query_one("select pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| ActionError::Unavailable(super::postgres::error_text(&e)))?;
                if row.get::<_, bool>(0) {
                    return Err(ActionError::Unavailable("the storage's router leads to a standby".into()));
                }
                Ok(client)
            };
            match attempt.await {
                Ok(client) => break client,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ActionError::Timeout(format!(
                        "the storage of the Kafka service {} does not take writes after {STORAGE_TIMEOUT:?}: {e}",
                        service.name
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if service.storage_ready {
            return Ok(());
        }
        let sql_error = |what: &'static str| {
            move |e: tokio_postgres::Error| ActionError::Failed(format!("{what}: {}", super::postgres::error_text(&e)))
        };
        // One transaction: the lock is held until the schema is in (or
        // found), so brokers provisioned together apply it once.
        let mut client = client;
        let tx = client.transaction().await.map_err(sql_error("begin"))?;
        tx.batch_execute("select pg_advisory_xact_lock(7140514)").await.map_err(sql_error("lock the schema"))?;
        let missing = tx
            .query_one("select to_regclass('cluster') is null", &[])
            .await
            .map_err(sql_error("look for the schema"))?
            .get::<_, bool>(0);
        if missing {
            tx.batch_execute(STORAGE_DDL).await.map_err(sql_error("apply the storage schema"))?;
        }
        tx.commit().await.map_err(sql_error("commit the storage schema"))?;
        if let Some(stored) = lock(&self.kafka.registry).services.get_mut(&service_id) {
            stored.storage_ready = true;
        }
        self.kafka.save()
    }

    /// The broker binary as the server user can run it. As root, brokers run
    /// as the user `drover`, which cannot reach cargo's bin directory in
    /// root's home (`/root` is 0700): the binary is then linked (or copied)
    /// into `kafka/bin/` of the data dir, which that user can reach.
    async fn kafka_binary(&self) -> Result<PathBuf, ActionError> {
        let mut known = self.kafka.runnable.lock().await;
        if let Some(path) = known.as_ref() {
            return Ok(path.clone());
        }
        let source = resolve_in_path(&self.kafka.tansu).ok_or_else(|| {
            ActionError::Config(format!(
                "no {} found; install tansu {TANSU_VERSION} (scripts/lib.sh ensure_tansu) or name it in DROVER_TANSU",
                self.kafka.tansu.display()
            ))
        })?;
        let path = if executable_by(&self.run_as, &source) {
            source
        } else {
            let dir = self.kafka.root.join("bin");
            self.run_as
                .prepare_dir(&dir, 0o755)
                .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
            let staged = dir.join("tansu");
            let (from, to) = (source.clone(), staged.clone());
            tokio::task::spawn_blocking(move || stage_binary(&from, &to))
                .await
                .map_err(|e| ActionError::Failed(format!("staging tansu panicked: {e}")))?
                .map_err(|e| {
                    ActionError::io(format_args!("cannot stage {} at {}", source.display(), staged.display()), e)
                })?;
            staged
        };
        *known = Some(path.clone());
        Ok(path)
    }

    /// Spawns the broker (if none runs) and waits for ApiVersions.
    async fn kafka_start(self: &Arc<Self>, id: InstanceId, entry: &KafkaBroker) -> Result<(), ActionError> {
        let service = self.kafka.service(entry.service)?;
        let running = self.kafka.process(id).is_some_and(|p| p.is_running());
        let log_path = entry.dir.join("tansu.log");
        if !running {
            let storage = self.kafka_storage_url(&service)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| ActionError::io(format_args!("cannot open {}", log_path.display()), e))?;
            let log_err = log.try_clone().map_err(|e| ActionError::io("cannot share the log", e))?;
            let tansu = self.kafka_binary().await?;
            let mut command = tokio::process::Command::new(&tansu);
            command
                .arg("broker")
                .arg("--cluster-id")
                .arg(cluster_id(entry.service))
                .arg("--listener-url")
                .arg(format!("tcp://127.0.0.1:{}", entry.port))
                .arg("--advertised-listener-url")
                .arg(format!("tcp://127.0.0.1:{}", service.router_port))
                // Through the environment, not argv: the URL holds the password.
                .env("STORAGE_ENGINE", storage)
                .env("RUST_LOG", "warn")
                .current_dir(&entry.dir)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log_err);
            self.run_as.apply_tokio(&mut command);
            let process = ServerProcess::spawn(command, None, self.kafka_on_exit(id)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ActionError::Config(format!(
                    "cannot spawn {}: {e}; install tansu {TANSU_VERSION} (scripts/lib.sh ensure_tansu)",
                    tansu.display()
                )),
                std::io::ErrorKind::PermissionDenied => {
                    ActionError::Config(format!("user {} cannot run {}: {e}", self.run_as.user, tansu.display()))
                }
                _ => ActionError::io("cannot spawn tansu", e),
            })?;
            write_owned(&self.run_as, &entry.dir.join("tansu.pid"), &format!("{}\n", process.pid), 0o600)?;
            lock(&self.kafka.brokers).insert(id, process);
        }
        let process = self.kafka.process(id).ok_or_else(|| ActionError::Failed("the broker vanished".into()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if process.has_exited() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(ActionError::Failed(format!("tansu exited at start: {}", tail(&log, 800))));
            }
            match checks::api_versions(entry.port, PROBE_TIMEOUT).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    process.stop(Signal::SIGKILL, Duration::from_secs(1)).await?;
                    return Err(ActionError::Timeout(format!("tansu does not answer ApiVersions: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Router: the slots of the service's serving brokers, written to its
    /// config; started when not running, else told through its runtime API.
    async fn kafka_route(self: &Arc<Self>, service_id: ServiceId) -> Result<(), ActionError> {
        let service = self.kafka.service(service_id)?;
        let leaving = lock(&self.kafka.leaving).clone();
        let (mut slots, mut draining) = (BTreeMap::new(), BTreeMap::new());
        for (id, b) in lock(&self.kafka.registry).instances.iter() {
            if b.service != service_id || !b.should_run() {
                continue;
            }
            match leaving.get(id) {
                None => slots.insert(b.slot, b.port),
                Some(Leaving::Draining) => draining.insert(b.slot, b.port),
                Some(Leaving::Cut) => None,
            };
        }
        let dir = self.kafka.service_dir(service_id).join("router");
        self.run_as
            .prepare_dir(&dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
        let socket = haproxy::socket_path(&dir, service_id);
        haproxy::prepare_socket_dir(&self.run_as, &dir, &socket)?;
        write_owned(
            &self.run_as,
            &haproxy::config_path(&dir),
            &router_config(&socket, service.router_port, &slots),
            0o600,
        )?;
        let running = lock(&self.kafka.routers).get(&service_id).is_some_and(|p| p.is_running());
        if !running {
            let process = haproxy::spawn(&self.run_as, &self.kafka.haproxy, &dir, &socket, Box::new(|_| {})).await?;
            lock(&self.kafka.routers).insert(service_id, process);
            return Ok(());
        }
        let mut line = Vec::new();
        for slot in 0..SLOTS {
            match (slots.get(&slot), draining.contains_key(&slot)) {
                (Some(port), _) => line.push(format!(
                    "set server kafka/b{slot} addr 127.0.0.1 port {port}; set server kafka/b{slot} state ready; \
                     set server kafka/b{slot} health up"
                )),
                // A (re)started router never routes to it: it starts in maint.
                (None, true) => line.push(format!("set server kafka/b{slot} state drain")),
                (None, false) => {
                    line.push(format!("set server kafka/b{slot} state maint; shutdown sessions server kafka/b{slot}"))
                }
            }
        }
        let answer = haproxy::command_line(&socket, &line.join("; ")).await.map_err(ActionError::Unavailable)?;
        let refused: Vec<&str> = answer
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("IP changed") && !l.starts_with("no need to change"))
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(ActionError::Failed(format!("the Kafka router refused: {}", refused.join("; "))))
        }
    }

    async fn kafka_probe(&self, id: InstanceId) -> Done {
        let entry = self.kafka.broker(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid(format!("instance is {}", if entry.fenced { "fenced" } else { "not active" })));
        }
        if self.config.same_host_evidence {
            let process = self.kafka.process(id).ok_or_else(|| ActionError::Unhealthy("no tansu broker".into()))?;
            match process::proc_state(process.pid) {
                ProcState::Live if !process.has_exited() => {}
                state => return Err(ActionError::Unhealthy(format!("tansu {} is {state:?}", process.pid))),
            }
        }
        checks::api_versions(entry.port, PROBE_TIMEOUT).await.map_err(ActionError::Unhealthy)?;
        Ok(Some("answers ApiVersions".into()))
    }

    /// Cut at the router first (no new connection reaches it, the open
    /// ones are shut), then stopped; its replacement is the engine's.
    async fn kafka_fence(self: &Arc<Self>, id: InstanceId, immediate: bool) -> Done {
        let entry = self.kafka.broker(id).ok_or_else(|| invalid("unknown instance"))?;
        let newly = {
            let mut registry = lock(&self.kafka.registry);
            match registry.instances.get_mut(&id) {
                Some(stored) if !stored.fenced => {
                    stored.fenced = true;
                    true
                }
                _ => false,
            }
        };
        self.kafka.save()?;
        let guard = self.service_lock(entry.service);
        {
            let _held = guard.lock().await;
            if let Err(error) = self.kafka_route(entry.service).await {
                tracing::warn!(instance = %id, %error, "the Kafka router could not cut the fenced broker");
            }
        }
        self.kafka_stop(id, if immediate { Signal::SIGKILL } else { Signal::SIGTERM }).await?;
        Ok(Some(if newly { "cut at the router, stopped and fenced" } else { "already fenced" }.into()))
    }

    async fn kafka_stop(&self, id: InstanceId, first: Signal) -> Result<(), ActionError> {
        let process = lock(&self.kafka.brokers).remove(&id);
        if let Some(process) = process {
            process.signal_family(Signal::SIGCONT);
            process.stop(first, self.config.stop_timeout).await?;
        }
        Ok(())
    }

    async fn kafka_restart(self: &Arc<Self>, id: InstanceId) -> Done {
        let entry = self.kafka.broker(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid("a fenced or inactive broker is not restarted"));
        }
        self.kafka_stop(id, Signal::SIGTERM).await?;
        self.kafka_start(id, &entry).await?;
        let guard = self.service_lock(entry.service);
        let _held = guard.lock().await;
        self.kafka_route(entry.service).await?;
        Ok(Some("restarted".into()))
    }

    async fn kafka_leave(self: &Arc<Self>, id: InstanceId, to: Lifecycle) -> Done {
        let Some(entry) = self.kafka.broker(id) else {
            return Ok(Some("unknown instance: nothing to do".into()));
        };
        let serving = entry.should_run() && self.kafka.process(id).is_some_and(|p| p.is_running());
        let drained = if serving { Some(self.kafka_drain_at_router(id, &entry).await) } else { None };
        self.kafka_stop(id, Signal::SIGTERM).await?;
        if let Some(stored) = lock(&self.kafka.registry).instances.get_mut(&id) {
            stored.lifecycle = to;
        }
        self.kafka.save()?;
        lock(&self.kafka.leaving).remove(&id);
        let guard = self.service_lock(entry.service);
        let _held = guard.lock().await;
        if lock(&self.kafka.routers).contains_key(&entry.service) {
            self.kafka_route(entry.service).await?;
        }
        let how = match drained {
            Some(Ok(0)) => "drained at the router (its sessions ended), then stopped for good".to_string(),
            Some(Ok(n)) => format!(
                "drained at the router for {DRAIN_TIMEOUT:?}, its last {n} sessions shut (their clients reconnect \
                 to a peer), then stopped for good"
            ),
            Some(Err(e)) => format!("stopped for good (the router could not drain it: {e})"),
            None => "stopped for good".to_string(),
        };
        Ok(Some(format!("{how} (a broker keeps no data: its records are in the storage)")))
    }

    /// Takes a serving broker out of its router without cutting a request
    /// in flight: `drain` (no new connection reaches it) until its sessions
    /// end or [`DRAIN_TIMEOUT`], then `maint` with its sessions shut.
    /// Returns how many sessions were still open when cut.
    async fn kafka_drain_at_router(self: &Arc<Self>, id: InstanceId, entry: &KafkaBroker) -> Result<u64, String> {
        let socket = haproxy::socket_path(&self.kafka.service_dir(entry.service).join("router"), entry.service);
        let route = |state: Leaving| {
            let this = self.clone();
            async move {
                lock(&this.kafka.leaving).insert(id, state);
                let guard = this.service_lock(entry.service);
                let _held = guard.lock().await;
                this.kafka_route(entry.service).await.map_err(|e| e.to_string())
            }
        };
        route(Leaving::Draining).await?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut open = router_sessions(&socket, entry.slot).await?;
        while open > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            open = router_sessions(&socket, entry.slot).await?;
        }
        route(Leaving::Cut).await?;
        Ok(open)
    }

    /// Deletes the broker's directory; the last broker of a service takes
    /// its router with it (its storage is a service of its own, which the
    /// engine deletes with it).
    async fn kafka_terminate(self: &Arc<Self>, id: InstanceId) -> Done {
        let Some(entry) = self.kafka.broker(id) else {
            if lock(&self.kafka.registry).tombstones.insert(id) {
                self.kafka.save()?;
            }
            return Ok(Some("nothing left".into()));
        };
        self.kafka_stop(id, Signal::SIGTERM).await?;
        match std::fs::remove_dir_all(&entry.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ActionError::io(format_args!("cannot delete {}", entry.dir.display()), e)),
        }
        let service_empty = {
            let mut registry = lock(&self.kafka.registry);
            registry.instances.remove(&id);
            registry.tombstones.insert(id);
            let empty = !registry.instances.values().any(|e| e.service == entry.service);
            if empty {
                registry.services.remove(&entry.service);
            }
            empty
        };
        if service_empty {
            let router = lock(&self.kafka.routers).remove(&entry.service);
            if let Some(router) = router {
                router.stop(Signal::SIGTERM, self.config.stop_timeout).await?;
            }
            let dir = self.kafka.service_dir(entry.service);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(ActionError::io(format_args!("cannot delete {}", dir.display()), e));
                }
            }
        }
        self.kafka.save()?;
        Ok(Some(if service_empty { "deleted, with the service's router" } else { "deleted" }.into()))
    }

    async fn kafka_inject(&self, id: InstanceId, fault: Fault) -> Done {
        self.kafka.broker(id).ok_or_else(|| invalid("unknown instance"))?;
        let process = self.kafka.process(id).filter(|p| !p.has_exited());
        let detail = match (fault, &process) {
            (Fault::Crash, Some(p)) => {
                process::signal_process(p.pid, Signal::SIGKILL);
                "tansu killed (SIGKILL)"
            }
            (Fault::Crash, None) => "not running",
            (Fault::Hang, Some(p)) => {
                p.signal_family(Signal::SIGSTOP);
                "tansu stopped (SIGSTOP)"
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
        if let Some(stored) = lock(&self.kafka.registry).instances.get_mut(&id) {
            stored.fault = if fault == Fault::Heal { None } else { Some(fault) };
        }
        self.kafka.save()?;
        Ok(Some(detail.into()))
    }

    /// The provider's part of a Kafka service's checks (see `checks`);
    /// None when `name` is not a Kafka service of this provider.
    pub(super) async fn kafka_checks(&self, name: &str) -> Option<crate::ProviderChecks> {
        let (service_id, service) = {
            let registry = lock(&self.kafka.registry);
            registry.services.iter().find(|(_, s)| s.name == name).map(|(id, s)| (*id, s.clone()))?
        };
        let brokers: Vec<(InstanceId, KafkaBroker)> = lock(&self.kafka.registry)
            .instances
            .iter()
            .filter(|(_, b)| b.service == service_id && b.should_run())
            .map(|(id, b)| (*id, b.clone()))
            .collect();
        let t = Duration::from_secs(5);
        let mut asked = tokio::task::JoinSet::new();
        for (n, (_, b)) in brokers.iter().enumerate() {
            let port = b.port;
            asked.spawn(async move { (n, checks::broker_metadata(port, PROBE_TIMEOUT).await) });
        }
        let mut metadata: Vec<Result<checks::BrokerMetadata, String>> =
            vec![Err("the probe did not finish".to_string()); brokers.len()];
        while let Some(joined) = asked.join_next().await {
            if let Ok((n, answer)) = joined {
                metadata[n] = answer;
            }
        }
        let probes: Vec<(InstanceId, &KafkaBroker, Result<(), String>)> = brokers
            .iter()
            .zip(&metadata)
            .map(|((id, b), answer)| (*id, b, checks::judge_broker(service_id, service.router_port, answer)))
            .collect();
        let router_running = lock(&self.kafka.routers).get(&service_id).is_some_and(|p| p.is_running());
        let socket = haproxy::socket_path(&self.kafka.service_dir(service_id).join("router"), service_id);
        let stat = haproxy::command_line(&socket, "show stat").await;
        let router = checks::router_check(&probes, router_running, stat.as_deref().map_err(String::as_str));
        let canary = checks::canary(&format!("127.0.0.1:{}", service.router_port), t).await;
        let lags = match self.kafka_storage_url(&service) {
            Ok(url) => {
                if let Ok(c) = &canary {
                    // One canary record per check would grow the topic for
                    // ever (the rollout gate checks every second).
                    if let Err(error) = checks::trim_canary(&url, c.offset, t).await {
                        tracing::debug!(service = %service.name, %error, "canary records not trimmed");
                    }
                }
                checks::group_lags(&url, t).await
            }
            Err(e) => Err(e.to_string()),
        };
        let mut ports = vec![service.router_port];
        ports.extend(brokers.iter().map(|(_, b)| b.port));
        let listening = checks::listeners(&ports);
        let named: Vec<(InstanceId, &KafkaBroker)> = brokers.iter().map(|(id, b)| (*id, b)).collect();
        Some(crate::ProviderChecks {
            security: Some(checks::security_check(&service, &named, &listening)),
            performance: Some(checks::performance_check(&canary, &lags)),
            followers: None,
            router: Some(router),
            persistence: None,
        })
    }

    /// One heartbeat round of the brokers: ApiVersions on each, at once.
    pub(super) async fn kafka_beats(self: &Arc<Self>, timeout: Duration) -> Vec<Beat> {
        let audible: Vec<(InstanceId, KafkaBroker)> = {
            let registry = lock(&self.kafka.registry);
            let brokers = lock(&self.kafka.brokers);
            registry
                .instances
                .iter()
                .filter(|(id, e)| {
                    e.should_run()
                        && e.fault != Some(Fault::Partition)
                        && brokers.get(id).is_some_and(|p| p.is_running())
                })
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        let mut probes = tokio::task::JoinSet::new();
        for (id, entry) in audible {
            probes.spawn(async move { checks::api_versions(entry.port, timeout).await.ok().map(|()| id) });
        }
        let mut beats = Vec::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok(Some(instance)) = joined {
                let facts = Facts { role: Some(Role::Broker), writable: Some(true), ..Facts::default() };
                beats.push(Beat { instance, seq: self.next_seq(), facts });
            }
        }
        beats
    }

    /// Starts the routers of services whose brokers should run (after a
    /// control-plane restart): the storage is a PostgreSQL service, which
    /// starts with the provider's other servers.
    pub(super) async fn kafka_start_missing(self: Arc<Self>) {
        let services: Vec<ServiceId> = {
            let registry = lock(&self.kafka.registry);
            registry
                .instances
                .values()
                .filter(|b| b.should_run())
                .map(|b| b.service)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        for service in services {
            let guard = self.service_lock(service);
            let _held = guard.lock().await;
            if let Err(error) = self.kafka_route(service).await {
                self.report_router(service, format!("Kafka router cannot be started: {error}"));
            }
        }
    }

    /// Stops every broker and router (the provider's shutdown).
    pub(super) fn kafka_drain(&self) -> Vec<(ServerProcess, Signal)> {
        let mut all: Vec<(ServerProcess, Signal)> =
            lock(&self.kafka.brokers).drain().map(|(_, p)| (p, Signal::SIGTERM)).collect();
        all.extend(lock(&self.kafka.routers).drain().map(|(_, p)| (p, Signal::SIGTERM)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_binary_the_server_user_cannot_reach_is_staged_where_it_can() {
        let run_as = crate::runas::RunAs::for_servers().unwrap();
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let source = home.path().join("tansu");
        std::fs::write(&source, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !run_as.switch {
            // Not root: servers run as us, who can reach our own files.
            assert!(executable_by(&run_as, &source));
            return;
        }
        assert!(!executable_by(&run_as, &source), "a 0700 directory of root's hides it");
        let data = tempfile::tempdir().unwrap();
        let bin = data.path().join("kafka/bin");
        run_as.prepare_dir(&bin, 0o755).unwrap();
        let staged = bin.join("tansu");
        stage_binary(&source, &staged).unwrap();
        assert!(executable_by(&run_as, &staged));
        let inode = std::fs::metadata(&staged).unwrap().ino();
        stage_binary(&source, &staged).unwrap();
        assert_eq!(std::fs::metadata(&staged).unwrap().ino(), inode, "an up-to-date stage is kept");
        // A reinstall (a new file at the source) is staged again.
        std::fs::remove_file(&source).unwrap();
        std::fs::write(&source, b"#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
        stage_binary(&source, &staged).unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), std::fs::read(&source).unwrap());
        assert!(executable_by(&run_as, &staged));
    }
}
