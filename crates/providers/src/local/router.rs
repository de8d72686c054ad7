//! The router: one pgbouncer per service on a fixed loopback port, so the
//! service's URL never changes when its primary does. Switching primary is
//! PAUSE → rewrite `[databases]` → RELOAD → RESUME: clients queue during the
//! switch instead of seeing errors. A failover cuts the old primary off
//! with `KILL` instead of PAUSE (see [`cut_off`]).
//!
//! pgbouncer 1.18 (Debian bookworm) does not track prepared statements in
//! transaction pooling: clients of the URL must use the simple protocol or
//! unnamed statements (psql, `batch_execute`, `query_typed`).

use super::postgres::{error_text, write_owned, ROLE};
use super::registry::ServiceEntry;
use crate::runas::RunAs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::NoTls;

const DEFAULT_PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// The one database a router serves (the name in the service's URL).
const DATABASE: &str = "postgres";

pub fn binary() -> PathBuf {
    let default = PathBuf::from(DEFAULT_PGBOUNCER);
    if default.is_file() {
        return default;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("pgbouncer")).find(|p| p.is_file()))
        .unwrap_or(default)
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.ini")
}
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.pid")
}
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("pgbouncer.log")
}

/// Writes pgbouncer.ini (pointing at `primary_port`) and the userlist.
pub fn write_config(run_as: &RunAs, dir: &Path, service: &ServiceEntry, primary_port: u16) -> Result<(), String> {
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
pub async fn admin(service: &ServiceEntry, command: &str, timeout: Duration) -> Result<(), String> {
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
        client.simple_query(command).await.map_err(|e| error_text(&e))?;
        Ok::<(), String>(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("router command {command} did not finish within {timeout:?}"))?
        .map_err(|e| format!("router command {command}: {e}"))
}

/// Ends both kinds of hold: RESUME (after PAUSE) and `RESUME <db>` (after
/// [`cut_off`]), treating "not paused" as success.
pub async fn resume(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    for command in ["RESUME".to_string(), format!("RESUME {DATABASE}")] {
        match admin(service, &command, timeout).await {
            Ok(()) => {}
            Err(e) if e.contains("not paused") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `KILL <db>`: drops every client and server connection of the service at
/// once and holds new clients (they wait, as behind PAUSE) until
/// [`resume`]. For a primary already judged unavailable: PAUSE would wait
/// for transactions that can never finish on it. KILL is refused while a
/// PAUSE is under way; that PAUSE is ended first.
pub async fn cut_off(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
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
pub async fn pause(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    match admin(service, "PAUSE", timeout).await {
        Ok(()) => Ok(()),
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}
