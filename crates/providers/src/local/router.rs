//! The routers: one pgbouncer per service on a fixed loopback port, so the
//! service's URL never changes when its primary does. [`Routers`] owns
//! their processes (spawn, adopt, reap, stop) and every hold put on them. Switching primary is
//! PAUSE → rewrite `[databases]` → RELOAD → RESUME: clients queue during the
//! switch instead of seeing errors. A failover does not wait for the old
//! primary: `PAUSE <db>` holds new queries, the server is killed (its
//! connections close, the PAUSE completes), and `KILL <db>` ([`cut_off`])
//! drops what a dead server left open.
//!
//! pgbouncer 1.18 (Debian bookworm) does not track prepared statements in
//! transaction pooling: clients of the URL must use the simple protocol or
//! unnamed statements (psql, `batch_execute`, `query_typed`).

use super::lock;
use super::postgres::{self, error_text, write_owned, ROLE};
use super::process::{running_pid, ServerProcess};
use super::registry::ServiceEntry;
use crate::checks::{Check, Status};
use crate::runas::RunAs;
use crate::ActionError;
use drover_model::ServiceId;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

const DEFAULT_PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// The one database a router serves (the name in the service's URL).
const DATABASE: &str = "postgres";

/// How long a router may take to answer its console after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin console commands are local and instant; PAUSE waits for running
/// transactions, bounded so a hung server never blocks a fence.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// A router paused by a fence is resumed after this long even if no
/// promotion followed: clients must never stay paused forever. Below
/// pgbouncer's query_wait_timeout (120 s) so queued clients get an answer.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// How long a failover fence waits for the router to show that it holds new
/// queries before killing the primary anyway. The admin console answers in
/// milliseconds.
const HOLD_CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after the kill of a held primary its connections may take to
/// close at the router before they are dropped (`KILL <db>`). A killed local
/// process closes its sockets at once; this bound is for a server that
/// leaves them open.
const DEAD_CONNECTIONS_WAIT: Duration = Duration::from_millis(200);
/// How long the router check waits for the console's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The routers of this host's services: their processes and their holds.
/// Callers serialize the changes of one service (the provider's service
/// lock); a router's config comes from the service's registry entry.
pub(super) struct Routers {
    pgbouncer: PathBuf,
    run_as: RunAs,
    /// `data_dir/local/routers`: one directory per service.
    root: PathBuf,
    stop_timeout: Duration,
    /// Set when the provider shuts down: nothing is started after it.
    closed: Arc<AtomicBool>,
    processes: Mutex<HashMap<ServiceId, ServerProcess>>,
    /// When each held router was paused (by a fence).
    paused: Mutex<HashMap<ServiceId, Instant>>,
}

impl Routers {
    pub fn new(run_as: RunAs, root: PathBuf, stop_timeout: Duration, closed: Arc<AtomicBool>) -> Routers {
        Routers {
            pgbouncer: binary(),
            run_as,
            root,
            stop_timeout,
            closed,
            processes: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, service: ServiceId) -> PathBuf {
        self.root.join(service.to_string())
    }

    fn get(&self, service: ServiceId) -> Option<ServerProcess> {
        lock(&self.processes).get(&service).cloned()
    }

    /// Its router process has not exited.
    pub fn running(&self, service: ServiceId) -> bool {
        self.get(service).is_some_and(|p| !p.has_exited())
    }

    /// A router process is known for the service (it may have exited).
    pub fn known(&self, service: ServiceId) -> bool {
        lock(&self.processes).contains_key(&service)
    }

    /// Adopts the routers that survived a control-plane restart (found
    /// through their pid files, checked in /proc). Returns how many.
    pub fn adopt(&self, services: impl IntoIterator<Item = ServiceId>) -> usize {
        let mut adopted = 0;
        for service in services {
            if let Some(pid) = running_pid(&pid_path(&self.dir(service)), "pgbouncer") {
                let process = ServerProcess::adopt(pid, None, self.closed.clone(), Box::new(|_| {}));
                lock(&self.processes).insert(service, process);
                adopted += 1;
            }
        }
        adopted
    }

    /// Makes sure the service's router runs and points at `primary_port`:
    /// rewrites its config, then RELOADs a running router or spawns one and
    /// waits for its console.
    pub async fn ensure(
        &self,
        service_id: ServiceId,
        service: &ServiceEntry,
        primary_port: u16,
    ) -> Result<(), ActionError> {
        let dir = self.dir(service_id);
        self.run_as
            .prepare_dir(&dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
        write_config(&self.run_as, &dir, service, primary_port)?;
        if self.running(service_id) {
            return admin(service, "RELOAD", COMMAND_TIMEOUT).await.map_err(ActionError::Unavailable);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(ActionError::Unavailable("the local provider is shut down".into()));
        }
        let log_path = log_path(&dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ActionError::io(format_args!("cannot open {}", log_path.display()), e))?;
        let log_err = log.try_clone().map_err(|e| ActionError::io("cannot share the log file", e))?;
        let mut command = tokio::process::Command::new(&self.pgbouncer);
        command.arg(config_path(&dir)).current_dir(&dir).stdin(std::process::Stdio::null()).stdout(log).stderr(log_err);
        self.run_as.apply_tokio(&mut command);
        let name = service.name.clone();
        let process = ServerProcess::spawn(
            command,
            None,
            Box::new(move |detail| tracing::warn!(service = %name, %detail, "router exited unasked")),
        )
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ActionError::Config(format!(
                "cannot spawn {}: {e}; install pgbouncer (Debian: apt-get install pgbouncer)",
                self.pgbouncer.display()
            )),
            _ => ActionError::io("cannot spawn pgbouncer", e),
        })?;
        tracing::info!(service = %service.name, pid = process.pid, port = service.router_port, "router started");
        lock(&self.processes).insert(service_id, process.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if process.has_exited() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(ActionError::Failed(format!("pgbouncer exited at start: {}", postgres::tail(&log, 800))));
            }
            match admin(service, "SHOW VERSION", Duration::from_secs(1)).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ActionError::Timeout(format!("router not answering: {e}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The routers that exited unasked, with how; forgotten here so the
    /// next [`Routers::ensure`] starts them again.
    pub fn take_exited(&self) -> Vec<(ServiceId, String)> {
        let mut processes = lock(&self.processes);
        let dead: Vec<(ServiceId, String)> = processes
            .iter()
            .filter(|(_, p)| p.has_exited())
            .map(|(service, p)| (*service, p.exit_detail().unwrap_or_else(|| "exited".into())))
            .collect();
        for (service, _) in &dead {
            processes.remove(service);
        }
        dead
    }

    /// Stops the service's router for good (nothing left to route to).
    pub async fn stop(&self, service: ServiceId) -> Result<(), ActionError> {
        let process = lock(&self.processes).remove(&service);
        lock(&self.paused).remove(&service);
        match process {
            Some(process) => process.stop(Signal::SIGTERM, self.stop_timeout).await,
            None => Ok(()),
        }
    }

    /// The router of a service: its process runs and its console answers.
    pub async fn check(&self, service_id: ServiceId, service: &ServiceEntry) -> Check {
        let pid = self.get(service_id).filter(|p| !p.has_exited()).map(|p| p.pid);
        let evidence = serde_json::json!({ "port": service.router_port, "pid": pid });
        if pid.is_none() {
            return Check {
                status: Status::Crit,
                summary: "the router (pgbouncer) is not running: clients cannot reach the service; the provider \
                          starts it again within a heartbeat round"
                    .into(),
                evidence,
            };
        }
        match admin(service, "SHOW VERSION", CHECK_TIMEOUT).await {
            Ok(()) => Check {
                status: Status::Ok,
                summary: format!("the router answers on port {}", service.router_port),
                evidence,
            },
            Err(error) => Check {
                status: Status::Crit,
                summary: format!("the router runs but does not answer its console: {error}"),
                evidence,
            },
        }
    }

    /// Pauses the service's router, waiting (bounded) for running
    /// statements to finish, and arms the watchdog.
    pub async fn pause(self: &Arc<Self>, service_id: ServiceId, service: &ServiceEntry) {
        if !self.running(service_id) {
            return;
        }
        // PAUSE waits for running transactions: on a dead or hung primary
        // it may never complete. The admin connection is dropped on timeout,
        // but pgbouncer stays in "pausing" and queues new clients: enough.
        if let Err(error) = pause(service, COMMAND_TIMEOUT).await {
            tracing::info!(service = %service.name, %error, "router pause not confirmed; fencing anyway");
        }
        self.arm_pause_watchdog(service_id, service);
    }

    /// Holds new queries of the service at its router without waiting for
    /// the running ones (`PAUSE <db>`, whose answer comes only once they end,
    /// is left running: the returned task). Returns once the router shows the
    /// hold (bounded by [`HOLD_CONFIRM_TIMEOUT`]), None without a router.
    pub async fn hold(self: &Arc<Self>, service_id: ServiceId, service: &ServiceEntry) -> Option<JoinHandle<()>> {
        if !self.running(service_id) {
            return None;
        }
        let pausing = {
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(error) = pause_database(&service, COMMAND_TIMEOUT).await {
                    tracing::info!(service = %service.name, %error, "router pause not confirmed");
                }
            })
        };
        self.arm_pause_watchdog(service_id, service);
        let deadline = Instant::now() + HOLD_CONFIRM_TIMEOUT;
        loop {
            match database_paused(service, HOLD_CONFIRM_TIMEOUT).await {
                Ok(true) => break,
                Ok(false) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
                other => {
                    // Fence anyway: the kill does not depend on the router.
                    tracing::warn!(service = %service.name, answer = ?other, "router hold not confirmed");
                    break;
                }
            }
        }
        Some(pausing)
    }

    /// After the kill of a held service's primary: its server connections
    /// close with it and the PAUSE completes, keeping idle clients connected
    /// (transaction pooling sends their next transaction to the new
    /// primary). Connections a dead server left open (a powered-off host
    /// closes nothing) would keep the PAUSE waiting: past
    /// [`DEAD_CONNECTIONS_WAIT`] the router drops them (`KILL <db>`).
    pub async fn release_dead_connections(&self, service: &ServiceEntry, pausing: JoinHandle<()>) {
        if tokio::time::timeout(DEAD_CONNECTIONS_WAIT, pausing).await.is_ok() {
            return;
        }
        tracing::info!(service = %service.name, "connections to the killed primary still open: cutting them off");
        if let Err(error) = cut_off(service, COMMAND_TIMEOUT).await {
            tracing::warn!(service = %service.name, %error, "router cut-off failed");
        }
    }

    /// Resumes the router if nothing else does within [`MAX_PAUSE`]:
    /// clients must never stay held forever.
    fn arm_pause_watchdog(self: &Arc<Self>, service_id: ServiceId, service: &ServiceEntry) {
        let paused_at = Instant::now();
        lock(&self.paused).insert(service_id, paused_at);
        let weak = Arc::downgrade(self);
        // A service's router port and password never change.
        let service = service.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MAX_PAUSE).await;
            let Some(routers) = weak.upgrade() else { return };
            let still = lock(&routers.paused).get(&service_id) == Some(&paused_at);
            if still {
                tracing::warn!(%service_id, "router paused too long (no promotion followed): resuming");
                routers.resume(service_id, &service).await;
            }
        });
    }

    /// Ends every hold on the service's router (and disarms the watchdog).
    pub async fn resume(&self, service_id: ServiceId, service: &ServiceEntry) {
        lock(&self.paused).remove(&service_id);
        if !self.running(service_id) {
            return;
        }
        if let Err(error) = resume(service, COMMAND_TIMEOUT).await {
            tracing::warn!(service = %service.name, %error, "cannot resume router");
        }
    }

    /// Every process, forgotten here: the provider's shutdown stops them.
    pub fn drain(&self) -> Vec<ServerProcess> {
        lock(&self.processes).drain().map(|(_, p)| p).collect()
    }
}

fn binary() -> PathBuf {
    let default = PathBuf::from(DEFAULT_PGBOUNCER);
    if default.is_file() {
        return default;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("pgbouncer")).find(|p| p.is_file()))
        .unwrap_or(default)
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.ini")
}
fn pid_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.pid")
}
fn log_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.log")
}

/// Writes pgbouncer.ini (pointing at `primary_port`) and the userlist.
fn write_config(run_as: &RunAs, dir: &Path, service: &ServiceEntry, primary_port: u16) -> Result<(), ActionError> {
    let userlist = dir.join("userlist.txt");
    write_owned(run_as, &userlist, &format!("\"{ROLE}\" \"{}\"\n", service.password), 0o600)?;
    let ini = format!(
        "; Written by drover's local provider for service {name}; changes here are overwritten.\n\
         [databases]\n\
         {DATABASE} = host=127.0.0.1 port={primary_port} dbname=postgres user={ROLE}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {router_port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {userlist}\n\
         admin_users = {ROLE}\n\
         pool_mode = transaction\n\
         max_client_conn = 500\n\
         default_pool_size = 20\n\
         pidfile = {pidfile}\n\
         ; Clients queued behind a PAUSE (a failover) wait up to this long.\n\
         query_wait_timeout = 120\n\
         ; A login to the server that failed (the old primary, in the moment\n\
         ; it died) is retried after this, and until then clients are refused.\n\
         ; The default 15 s (and even 1 s) outlasts a whole failover: after the\n\
         ; switch the new primary must be tried at once. Loopback connects\n\
         ; are cheap, so retrying a dead server ten times a second costs nothing.\n\
         server_login_retry = 0.1\n\
         server_connect_timeout = 5\n\
         ignore_startup_parameters = extra_float_digits,options\n",
        name = service.name,
        router_port = service.router_port,
        userlist = userlist.display(),
        pidfile = pid_path(dir).display(),
    );
    write_owned(run_as, &config_path(dir), &ini, 0o600)
}

/// Runs one admin console command (PAUSE, RELOAD, RESUME, SHOW …) within `timeout`.
async fn admin(service: &ServiceEntry, command: &str, timeout: Duration) -> Result<(), String> {
    admin_rows(service, command, timeout).await.map(|_| ())
}

/// [`admin`], returning the rows it answered.
async fn admin_rows(
    service: &ServiceEntry,
    command: &str,
    timeout: Duration,
) -> Result<Vec<tokio_postgres::SimpleQueryRow>, String> {
    let attempt = async {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(service.router_port)
            .user(ROLE)
            .password(service.password.as_str())
            .dbname("pgbouncer")
            .connect_timeout(timeout);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| format!("cannot reach the router's console: {}", error_text(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let messages = client.simple_query(command).await.map_err(|e| error_text(&e))?;
        let rows = messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        Ok::<_, String>(rows)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("router command {command} did not finish within {timeout:?}"))?
        .map_err(|e| format!("router command {command}: {e}"))
}

/// Ends both kinds of hold: RESUME (after PAUSE) and `RESUME <db>` (after
/// [`cut_off`]), treating "not paused" as success.
async fn resume(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    for command in ["RESUME".to_string(), format!("RESUME {DATABASE}")] {
        match admin(service, &command, timeout).await {
            Ok(()) => {}
            Err(e) if e.contains("not paused") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `PAUSE <db>`: new queries of the service wait; answers once none of its
/// server connections is active. The database is marked paused as soon as
/// pgbouncer reads the command ([`database_paused`] sees it), before the
/// answer.
async fn pause_database(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    match admin(service, &format!("PAUSE {DATABASE}"), timeout).await {
        Ok(()) => Ok(()),
        // A global PAUSE (a switchover) already holds everything.
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the service's database is held (by `PAUSE <db>` or `KILL <db>`).
async fn database_paused(service: &ServiceEntry, timeout: Duration) -> Result<bool, String> {
    let rows = admin_rows(service, "SHOW DATABASES", timeout).await?;
    let row = rows
        .iter()
        .find(|r| r.try_get("name").ok().flatten() == Some(DATABASE))
        .ok_or_else(|| format!("the router does not list the database {DATABASE}"))?;
    Ok(row.try_get("paused").ok().flatten() == Some("1"))
}

/// `KILL <db>`: drops every client and server connection of the service at
/// once and holds new clients (they wait, as behind PAUSE) until
/// [`resume`]. For server connections a dead primary left open (a host
/// powered off closes nothing): PAUSE would wait for them until its
/// timeout. Idle clients lose their connections too, which is why it is the
/// last resort. KILL is refused during a global PAUSE; that is ended first.
async fn cut_off(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    let kill = format!("KILL {DATABASE}");
    match admin(service, &kill, timeout).await {
        Err(e) if e.contains("already suspended/paused") => {
            resume(service, timeout).await?;
            admin(service, &kill, timeout).await
        }
        other => other,
    }
}

/// PAUSE, treating "already paused" as success.
async fn pause(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    match admin(service, "PAUSE", timeout).await {
        Ok(()) => Ok(()),
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}
