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
use super::postgres::{self, error_text, write_owned, APP_DATABASE};
use super::process::{running_pid, ServerProcess};
use super::registry::{ReadRoute, ServiceEntry};
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
const DATABASE: &str = APP_DATABASE;

/// The router database of read slot `slot`: the path of its read URL. It
/// names a slot, not an instance, so the URL survives the replica's rebuild.
pub fn read_database(slot: u32) -> String {
    format!("{DATABASE}_read{slot}")
}

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
pub(crate) struct Routers {
    pgbouncer: PathBuf,
    run_as: RunAs,
    /// `data_dir/local/routers`: one directory per service.
    root: PathBuf,
    /// The OS user of the control plane: the console's only user, over the
    /// router's unix socket with peer auth (no password).
    control_user: String,
    stop_timeout: Duration,
    /// Set when the provider shuts down: nothing is started after it.
    closed: Arc<AtomicBool>,
    processes: Mutex<HashMap<ServiceId, ServerProcess>>,
    /// When each held router was paused (by a fence).
    paused: Mutex<HashMap<ServiceId, Instant>>,
}

impl Routers {
    pub fn new(
        run_as: RunAs,
        root: PathBuf,
        control_user: String,
        stop_timeout: Duration,
        closed: Arc<AtomicBool>,
    ) -> Routers {
        Routers {
            pgbouncer: binary(),
            run_as,
            root,
            control_user,
            stop_timeout,
            closed,
            processes: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self, service: ServiceId) -> PathBuf {
        self.root.join(service.to_string())
    }

    /// Where the router's unix socket (its admin console) lives: its own
    /// directory when the socket path fits, else a short one of its own.
    fn socket_dir(&self, service: ServiceId) -> PathBuf {
        let dir = self.dir(service);
        if dir.join(".s.PGSQL.65535").as_os_str().len() <= super::registry::MAX_SOCKET_PATH {
            return dir;
        }
        let uid = nix::unistd::Uid::effective();
        std::env::temp_dir().join(format!("drover-sockets-{uid}")).join(format!("r{}", service.0.simple()))
    }

    /// How to reach the admin console of the service's router.
    fn console(&self, service_id: ServiceId, service: &ServiceEntry) -> Console {
        Console { socket_dir: self.socket_dir(service_id), port: service.router_port, user: self.control_user.clone() }
    }

    /// Rewrites the router's auth files for the service's current login
    /// roles and RELOADs it (a credential rotation), when it runs.
    pub async fn reload_logins(
        &self,
        service_id: ServiceId,
        service: &ServiceEntry,
        reads: &[ReadRoute],
    ) -> Result<(), ActionError> {
        let dir = self.dir(service_id);
        write_auth(&self.run_as, &dir, service, reads, &self.control_user)?;
        if self.running(service_id) {
            admin(&self.console(service_id, service), "RELOAD", COMMAND_TIMEOUT)
                .await
                .map_err(ActionError::Unavailable)?;
        }
        Ok(())
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

    /// Makes sure the service's router runs and points at `primary_host`
    /// port `primary_port` (127.0.0.1 on this host; another host's address
    /// for a router beside the control plane): rewrites its config, then
    /// RELOADs a running router or spawns one and waits for its console.
    pub async fn ensure(
        &self,
        service_id: ServiceId,
        service: &ServiceEntry,
        primary_host: &str,
        primary_port: u16,
        reads: &[ReadRoute],
    ) -> Result<(), ActionError> {
        let dir = self.dir(service_id);
        self.run_as
            .prepare_dir(&dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))?;
        let socket_dir = self.socket_dir(service_id);
        if socket_dir != dir {
            self.run_as
                .prepare_dir(&socket_dir, 0o755)
                .map_err(|e| ActionError::io(format_args!("cannot prepare {}", socket_dir.display()), e))?;
        }
        write_config(
            &self.run_as,
            &dir,
            &socket_dir,
            service,
            (primary_host, primary_port),
            reads,
            &self.control_user,
        )?;
        let console = self.console(service_id, service);
        if self.running(service_id) {
            return admin(&console, "RELOAD", COMMAND_TIMEOUT).await.map_err(ActionError::Unavailable);
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
            match admin(&console, "SHOW VERSION", Duration::from_secs(1)).await {
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
        if let Some(process) = process {
            process.stop(Signal::SIGTERM, self.stop_timeout).await?;
        }
        // A short socket directory of its own (a deep data dir) goes with
        // it; one inside the router's directory stays with that.
        let socket_dir = self.socket_dir(service);
        if socket_dir != self.dir(service) {
            let _ = std::fs::remove_dir_all(&socket_dir);
        }
        Ok(())
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
        match admin(&self.console(service_id, service), "SHOW VERSION", CHECK_TIMEOUT).await {
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
        if let Err(error) = pause(&self.console(service_id, service), COMMAND_TIMEOUT).await {
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
        let console = self.console(service_id, service);
        let pausing = {
            let console = console.clone();
            let name = service.name.clone();
            tokio::spawn(async move {
                if let Err(error) = pause_database(&console, COMMAND_TIMEOUT).await {
                    tracing::info!(service = %name, %error, "router pause not confirmed");
                }
            })
        };
        self.arm_pause_watchdog(service_id, service);
        let deadline = Instant::now() + HOLD_CONFIRM_TIMEOUT;
        loop {
            match database_paused(&console, HOLD_CONFIRM_TIMEOUT).await {
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
    pub async fn release_dead_connections(
        &self,
        service_id: ServiceId,
        service: &ServiceEntry,
        pausing: JoinHandle<()>,
    ) {
        if tokio::time::timeout(DEAD_CONNECTIONS_WAIT, pausing).await.is_ok() {
            return;
        }
        tracing::info!(service = %service.name, "connections to the killed primary still open: cutting them off");
        if let Err(error) = cut_off(&self.console(service_id, service), COMMAND_TIMEOUT).await {
            tracing::warn!(service = %service.name, %error, "router cut-off failed");
        }
        // The hold may have ended meanwhile (the router already points at
        // the new primary: a frozen host's failover is that quick); the
        // KILL held the database again, and nothing else would resume it.
        if !lock(&self.paused).contains_key(&service_id) {
            self.resume(service_id, service).await;
        }
    }

    /// Resumes the router if nothing else does within [`MAX_PAUSE`]:
    /// clients must never stay held forever.
    fn arm_pause_watchdog(self: &Arc<Self>, service_id: ServiceId, service: &ServiceEntry) {
        let paused_at = Instant::now();
        lock(&self.paused).insert(service_id, paused_at);
        let weak = Arc::downgrade(self);
        // A service's router port never changes.
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
        if let Err(error) = resume(&self.console(service_id, service), COMMAND_TIMEOUT).await {
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

/// How to reach a router's admin console: its unix socket, as the control
/// plane's OS user (pgbouncer checks it with peer auth).
#[derive(Clone, Debug)]
struct Console {
    socket_dir: PathBuf,
    port: u16,
    user: String,
}

/// Writes the router's auth_file (SCRAM verifiers of the service's login
/// roles, never a password) and its hba file: the application's roles over
/// TCP loopback with SCRAM, to the service's database only; the console
/// (database `pgbouncer`) only over the unix socket, to the control plane's
/// OS user by peer auth.
fn write_auth(
    run_as: &RunAs,
    dir: &Path,
    service: &ServiceEntry,
    reads: &[ReadRoute],
    control_user: &str,
) -> Result<(), ActionError> {
    let logins = service.logins();
    let mut userlist = String::new();
    for (login, verifier) in &logins {
        userlist.push_str(&format!("\"{login}\" \"{verifier}\"\n"));
    }
    // pgbouncer looks the console user up in its auth_file before the hba
    // rule (peer) applies: a verifier of a random password nobody keeps.
    let unusable = postgres::scram_verifier(&super::actions::random_password()?);
    userlist.push_str(&format!("\"{control_user}\" \"{unusable}\"\n"));
    write_owned(run_as, &dir.join("userlist.txt"), &userlist, 0o600)?;
    let names: Vec<&str> = logins.iter().map(|(login, _)| login.as_str()).collect();
    let databases: Vec<String> =
        std::iter::once(DATABASE.to_string()).chain(reads.iter().map(|(slot, _)| read_database(*slot))).collect();
    let hba = format!(
        "# Written by drover's local provider.\n\
         local pgbouncer {control_user} peer\n\
         host {databases} {users} 127.0.0.1/32 scram-sha-256\n",
        databases = databases.join(","),
        users = names.join(","),
    );
    write_owned(run_as, &dir.join("pgbouncer_hba.conf"), &hba, 0o600)
}

/// Writes pgbouncer.ini (pointing at `primary` (host, port), and each read
/// slot's database at its replica's port on this host) and its auth files.
fn write_config(
    run_as: &RunAs,
    dir: &Path,
    socket_dir: &Path,
    service: &ServiceEntry,
    (primary_host, primary_port): (&str, u16),
    reads: &[ReadRoute],
    control_user: &str,
) -> Result<(), ActionError> {
    write_auth(run_as, dir, service, reads, control_user)?;
    let read_databases: String = reads
        .iter()
        .map(|(slot, port)| format!("{} = host=127.0.0.1 port={port} dbname={DATABASE}\n", read_database(*slot)))
        .collect();
    let ini = format!(
        "; Written by drover's local provider for service {name}; changes here are overwritten.\n\
         [databases]\n\
         ; No user=: each client's own login role logs in to the server, with\n\
         ; the SCRAM keys of its own login (pgbouncer's SCRAM pass-through).\n\
         {DATABASE} = host={primary_host} port={primary_port} dbname={DATABASE}{pooling}\n\
         ; Read replicas added on demand: one database per read slot.\n\
         {read_databases}\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {router_port}\n\
         unix_socket_dir = {socket_dir}\n\
         auth_type = hba\n\
         auth_hba_file = {hba}\n\
         auth_file = {userlist}\n\
         admin_users = {control_user}\n\
         stats_users =\n\
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
        // A Kafka service's storage: tansu keeps named prepared statements
        // on its connections across transactions, which transaction
        // pooling would hand to other server connections. Each session
        // holds a server connection (a broker pools at most 16).
        pooling = if service.session_pool { " pool_mode=session pool_size=90" } else { "" },
        router_port = service.router_port,
        userlist = dir.join("userlist.txt").display(),
        hba = dir.join("pgbouncer_hba.conf").display(),
        socket_dir = socket_dir.display(),
        pidfile = pid_path(dir).display(),
    );
    write_owned(run_as, &config_path(dir), &ini, 0o600)
}

/// Runs one admin console command (PAUSE, RELOAD, RESUME, SHOW …) within `timeout`.
async fn admin(console: &Console, command: &str, timeout: Duration) -> Result<(), String> {
    admin_rows(console, command, timeout).await.map(|_| ())
}

/// [`admin`], returning the rows it answered.
async fn admin_rows(
    console: &Console,
    command: &str,
    timeout: Duration,
) -> Result<Vec<tokio_postgres::SimpleQueryRow>, String> {
    let attempt = async {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&console.socket_dir)
            .port(console.port)
            .user(&console.user)
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
async fn resume(console: &Console, timeout: Duration) -> Result<(), String> {
    for command in ["RESUME".to_string(), format!("RESUME {DATABASE}")] {
        match admin(console, &command, timeout).await {
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
async fn pause_database(console: &Console, timeout: Duration) -> Result<(), String> {
    match admin(console, &format!("PAUSE {DATABASE}"), timeout).await {
        Ok(()) => Ok(()),
        // A global PAUSE (a switchover) already holds everything.
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the service's database is held (by `PAUSE <db>` or `KILL <db>`).
async fn database_paused(console: &Console, timeout: Duration) -> Result<bool, String> {
    let rows = admin_rows(console, "SHOW DATABASES", timeout).await?;
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
async fn cut_off(console: &Console, timeout: Duration) -> Result<(), String> {
    let kill = format!("KILL {DATABASE}");
    match admin(console, &kill, timeout).await {
        Err(e) if e.contains("already suspended/paused") => {
            resume(console, timeout).await?;
            admin(console, &kill, timeout).await
        }
        other => other,
    }
}

/// PAUSE, treating "already paused" as success.
async fn pause(console: &Console, timeout: Duration) -> Result<(), String> {
    match admin(console, "PAUSE", timeout).await {
        Ok(()) => Ok(()),
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}
