//! The router: one pgbouncer per service on a fixed loopback port, so the
//! service's URL never changes when its primary does. Switching primary is
//! PAUSE → rewrite `[databases]` → RELOAD → RESUME: clients queue during the
//! switch instead of seeing errors. A failover does not wait for the old
//! primary: `PAUSE <db>` holds new queries, the server is killed (its
//! connections close, the PAUSE completes), and `KILL <db>` ([`cut_off`])
//! drops what a dead server left open.
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

/// `PAUSE <db>`: new queries of the service wait; answers once none of its
/// server connections is active. The database is marked paused as soon as
/// pgbouncer reads the command ([`database_paused`] sees it), before the
/// answer.
pub async fn pause_database(service: &ServiceEntry, timeout: Duration) -> Result<(), String> {
    match admin(service, &format!("PAUSE {DATABASE}"), timeout).await {
        Ok(()) => Ok(()),
        // A global PAUSE (a switchover) already holds everything.
        Err(e) if e.contains("already") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the service's database is held (by `PAUSE <db>` or `KILL <db>`).
pub async fn database_paused(service: &ServiceEntry, timeout: Duration) -> Result<bool, String> {
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
