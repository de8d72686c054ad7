//! The local provider's memory of what it built: instances and services,
//! persisted as one JSON file replaced atomically (temp file, fsync, rename,
//! fsync of the directory) before an action reports its outcome, so a
//! control plane killed with -9 finds on restart every server it started,
//! its port, its data directory and whether it should be running.
//!
//! The file holds the services' passwords sealed with the data dir's secret
//! key (drover-secrets), never in clear; it is written with mode 0600.

use crate::ProviderError;
use drover_model::{Fault, InstanceId, Role, ServiceId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bumped when the file's shape changes in a way older builds cannot read.
pub const REGISTRY_FORMAT: u64 = 1;

/// Where an instance is in its life, as far as this provider is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Being built: its data directory may be half-made; a repeat Provision
    /// starts over.
    Provisioning,
    /// Built; runs unless fenced.
    Active,
    /// Stopped for good; its data directory is where it was.
    Retired,
    /// Stopped; its data directory moved under `archive/`.
    Archived,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub service: ServiceId,
    pub service_name: String,
    pub role: Role,
    pub port: u16,
    /// `instances/<id>`: holds `pgdata/`, `socket/` and `logs/`.
    pub dir: PathBuf,
    pub lifecycle: Lifecycle,
    /// Confirmed unable to accept writes; never started again.
    pub fenced: bool,
    /// The chaos fault in force (hang or partition), if any.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Where its unix socket lives when `dir/socket` would be too long for
    /// one (see [`InstanceEntry::socket_dir`]); None: `dir/socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Its image's engine settings (`work_mem = 8MB`), written after the
    /// provider's own so they take effect; kept so a rebuild writes them again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: std::collections::BTreeMap<String, String>,
    /// A read replica added on demand: the read slot whose router database
    /// (`app_read<slot>`) points at it. None: the primary or a plan follower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_slot: Option<u32>,
    /// The PostgreSQL major it runs when it is not the provider's default
    /// (Debian's): a major-version upgrade's member, built with the binaries
    /// in `postgres::majors_dir()/<major>`. None: the default binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    /// A logical subscriber (an upgrade's new member) that a planned
    /// switchover caught up with its primary (the primary stopped after
    /// it had applied everything, sequences copied): only then may it be
    /// promoted (a failover onto a subscriber could lose writes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
}

/// A read slot and the port of the active read replica that fills it.
pub type ReadRoute = (u32, u16);

impl Registry {
    /// The service's read slots filled by an active read replica, by slot
    /// (the newest replica of a slot if two are active for a moment).
    pub fn read_routes(&self, service: ServiceId) -> Vec<ReadRoute> {
        let mut routes: std::collections::BTreeMap<u32, u16> = std::collections::BTreeMap::new();
        for entry in self.instances.values() {
            if let (true, Some(slot)) = (entry.service == service && entry.should_run(), entry.read_slot) {
                routes.insert(slot, entry.port);
            }
        }
        routes.into_iter().collect()
    }
}

impl InstanceEntry {
    /// What the provider and the agent tell of this instance, with the pid
    /// of its postmaster as the caller found it.
    pub fn info(&self, pid: Option<i32>) -> super::LocalInstanceInfo {
        super::LocalInstanceInfo {
            service: self.service,
            service_name: self.service_name.clone(),
            port: self.port,
            data_dir: self.pgdata(),
            socket_dir: self.socket_dir(),
            role: self.role,
            pid,
            fenced: self.fenced,
        }
    }
    pub fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.dir.join("socket"))
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// Whether the registry says a postmaster should be running for it.
    pub fn should_run(&self) -> bool {
        self.lifecycle == Lifecycle::Active && !self.fenced
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    /// The pgbouncer port clients use: fixed for the service's life.
    pub router_port: u16,
    /// The password of [`ServiceEntry::login`], the role the URL names,
    /// sealed with the data dir's secret key (context
    /// [`password_context`]). A registry written before sealing holds it in
    /// clear: it is sealed when the provider opens it.
    pub password: String,
    /// The application's login role the URL names (`app_a` or `app_b`).
    #[serde(default = "default_login")]
    pub login: String,
    /// The SCRAM verifier of `password`, as in pg_authid and the router's
    /// auth_file (not a password: it cannot be used to log in).
    #[serde(default)]
    pub verifier: String,
    /// The credential being drained after a rotation: still accepted by
    /// the router and the server until the engine revokes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousLogin>,
    /// When the current credential was made (unix ms; 0: unknown).
    #[serde(default)]
    pub rotated_at_ms: u64,
    /// The RotateCredentials action that made the current credential: a
    /// repeat of it (after a crash) finds its work done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_action: Option<drover_model::ActionId>,
    /// The instance the router sends clients to.
    pub primary: Option<InstanceId>,
    /// The plan replicates synchronously.
    pub sync: bool,
    /// The router pools whole client sessions for it, not transactions:
    /// a Kafka service's storage, whose brokers (tansu) keep named
    /// prepared statements across transactions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_pool: bool,
}

/// The login role a rotation replaced, valid until its overlap ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousLogin {
    pub login: String,
    pub verifier: String,
    /// When it was rotated out (unix ms). The engine decides when it is
    /// revoked (`RevokePreviousCredentials`).
    #[serde(default)]
    pub since_ms: u64,
}

fn default_login() -> String {
    super::postgres::APP_LOGINS[0].to_string()
}

/// The context a service's password is sealed under: bound to the service
/// and the login role, so a sealed value moved elsewhere does not open.
pub fn password_context(service: &str, login: &str) -> String {
    format!("service/{service}/password/{login}")
}

impl ServiceEntry {
    /// The login roles the router accepts: the current one, then the one
    /// in its overlap.
    pub fn logins(&self) -> Vec<(String, String)> {
        let mut logins = vec![(self.login.clone(), self.verifier.clone())];
        if let Some(previous) = &self.previous {
            logins.push((previous.login.clone(), previous.verifier.clone()));
        }
        logins
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    pub format: u64,
    pub instances: BTreeMap<InstanceId, InstanceEntry>,
    pub services: BTreeMap<ServiceId, ServiceEntry>,
    /// Terminated ids: a late duplicate Provision of one is refused.
    pub tombstones: BTreeSet<InstanceId>,
}

impl Registry {
    pub fn empty() -> Registry {
        Registry { format: REGISTRY_FORMAT, ..Registry::default() }
    }

    /// Every port the registry holds, so a new one is never handed out twice.
    pub fn ports_in_use(&self) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = self.instances.values().map(|i| i.port).collect();
        ports.extend(self.services.values().map(|s| s.router_port));
        ports
    }
}

fn io_error<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ProviderError + 'a {
    move |source| ProviderError::Io { operation, path: path.to_path_buf(), source }
}

/// Reads the registry at `path`; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Registry>, ProviderError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read the local provider's state file", path)(e)),
    };
    #[derive(Deserialize)]
    struct Header {
        format: u64,
    }
    let corrupt = |reason: String| ProviderError::CorruptState { path: path.to_path_buf(), reason };
    let header: Header = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a local registry: {e}")))?;
    if header.format != REGISTRY_FORMAT {
        return Err(ProviderError::UnsupportedStateFormat {
            path: path.to_path_buf(),
            found: header.format,
            supported: REGISTRY_FORMAT,
        });
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| corrupt(e.to_string()))
}

/// Replaces the file at `path` with the registry: temp file (mode 0600: it
/// holds passwords), fsync, rename, fsync of the directory.
pub fn write(path: &Path, registry: &Registry) -> Result<(), ProviderError> {
    // Plain structs with string keys: serializing cannot fail.
    let bytes = serde_json::to_vec_pretty(registry).expect("the local registry always serializes to JSON");
    let directory = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let temporary = directory.join(".state.json.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(&bytes).map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("fsync", &temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error("rename the new local registry over", path))?;
    File::open(&directory).and_then(|d| d.sync_all()).map_err(io_error("fsync the directory", &directory))?;
    Ok(())
}

/// The longest path of a unix socket (`sun_path` holds 108 bytes on Linux;
/// PostgreSQL refuses paths near that).
pub const MAX_SOCKET_PATH: usize = 100;

/// Where the socket of instance `id` (built in `dir`, listening on `port`)
/// goes: `dir/socket` when that fits the unix socket limit, otherwise a
/// short directory of its own under the system's temporary directory
/// (instance ids are unique, so two data dirs never share one). A data dir
/// in a deep working directory must not stop a server from starting.
pub fn socket_dir_for(id: InstanceId, dir: &Path, port: u16) -> Option<PathBuf> {
    let fits = |d: &Path| d.join(format!(".s.PGSQL.{port}")).as_os_str().len() <= MAX_SOCKET_PATH;
    if fits(&dir.join("socket")) {
        return None;
    }
    let uid = nix::unistd::Uid::effective();
    Some(std::env::temp_dir().join(format!("drover-sockets-{uid}")).join(id.0.simple().to_string()))
}
