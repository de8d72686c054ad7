//! PostgreSQL itself: finding its binaries, initdb, the configuration files
//! this provider owns, and the SQL it runs over an instance's unix socket.

use super::registry::InstanceEntry;
use crate::runas::RunAs;
use crate::ActionError;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Debian's postgresql-15, used when `pg_config` is missing or names a
/// folder without a `postgres` binary.
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// Drover's own administrative role (initdb's bootstrap superuser): the
/// provider, the agent and pgBackRest log in as it over the instance's unix
/// socket with peer auth only; its password is random and thrown away at
/// initdb, so no TCP login can ever use it.
pub const ROLE: &str = "drover";
/// Drover's replication role: followers (walreceiver, pg_basebackup) run as
/// the server user on the same host and connect over the primary's socket
/// with peer auth; it has no password.
pub const REPLICATION_ROLE: &str = "drover_replication";
/// The application's database: owned by [`APP_OWNER`], named in the URL.
pub const APP_DATABASE: &str = "app";
/// The NOLOGIN role that owns the application's database and objects; the
/// two login roles are its members and act as it ([`APP_LOGINS`]).
pub const APP_OWNER: &str = "app";
/// The two login roles of the application that alternate on each credential
/// rotation: the URL names one, the other is NOLOGIN (or in its overlap).
/// Each has `role = app` as its session default, so what either creates is
/// owned by `app` and stays reachable by the other.
pub const APP_LOGINS: [&str; 2] = ["app_a", "app_b"];
/// The pg_ident.conf map that lets the control plane's OS user (root in CI)
/// and the server user log in over the socket as `drover` with peer auth,
/// and the server user as [`REPLICATION_ROLE`].
const IDENT_MAP: &str = "drover";
/// A follower (and pg_basebackup) gives up connecting to a primary that does
/// not answer after this long, and tries again (walreceiver) or fails (the
/// Provision is retried) instead of hanging on a hung primary.
const REPLICATION_CONNECT_TIMEOUT_SECONDS: u32 = 10;
use super::registry::MAX_SOCKET_PATH;

#[derive(Clone, Debug)]
pub struct Binaries {
    pub bindir: PathBuf,
}

impl Binaries {
    /// From `pg_config --bindir`, falling back to Debian's postgresql-15.
    pub fn find() -> io::Result<Binaries> {
        let from_pg_config = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        for candidate in from_pg_config.into_iter().chain([PathBuf::from(DEFAULT_BINDIR)]) {
            if candidate.join("postgres").is_file() && candidate.join("initdb").is_file() {
                return Ok(Binaries { bindir: candidate });
            }
        }
        Err(io::Error::other(format!(
            "no PostgreSQL binaries found (pg_config --bindir, then {DEFAULT_BINDIR}); install postgresql-15"
        )))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
    /// The major of these binaries, from their folder (`.../postgresql/15/bin`);
    /// Debian's 15 when the folder does not say.
    pub fn major(&self) -> u32 {
        self.bindir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or(DEFAULT_MAJOR)
    }
    /// The folder of `entry`'s binaries: its own major's, or these.
    pub fn bindir_for(&self, entry: &InstanceEntry) -> PathBuf {
        self.bindir_of_major(entry.major)
    }
    /// The folder of the binaries of `major` (these when None or theirs).
    pub fn bindir_of_major(&self, major: Option<u32>) -> PathBuf {
        match major {
            Some(major) if major != self.major() => majors_dir().join(major.to_string()).join("bin"),
            _ => self.bindir.clone(),
        }
    }
}

/// The major of [`DEFAULT_BINDIR`].
const DEFAULT_MAJOR: u32 = 15;

/// Where newer PostgreSQL majors are installed (`scripts/lib.sh`
/// `ensure_pg_majors`: npm's @embedded-postgres builds, one folder per major
/// with `bin/ lib/ share/`); `DROVER_PG_MAJORS_DIR` names another.
pub fn majors_dir() -> PathBuf {
    std::env::var_os("DROVER_PG_MAJORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/drover/postgresql"))
}

/// Runs a short command to completion; an error carries the tail of its output.
pub async fn run(mut command: tokio::process::Command, what: &str) -> Result<(), ActionError> {
    command.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = command.output().await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ActionError::Config(format!("cannot run {what}: {e}; install postgresql-15")),
        _ => ActionError::io(format_args!("cannot run {what}"), e),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(ActionError::command(what, output.status, &tail(&text, 1500)))
}

pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The last lines of an instance's server log, for error messages.
pub fn log_tail(entry: &InstanceEntry) -> String {
    std::fs::read_to_string(entry.log_dir().join("postgres.log")).map(|t| tail(&t, 800)).unwrap_or_default()
}

/// Writes `contents` to `path`, owned by the server user, with `mode`.
pub fn write_owned(run_as: &RunAs, path: &Path, contents: &str, mode: u32) -> Result<(), ActionError> {
    let error = |e: io::Error| ActionError::io(format_args!("cannot write {}", path.display()), e);
    std::fs::write(path, contents).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)?;
    run_as.chown(path).map_err(error)
}

/// A value quoted for postgresql.conf.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Refuses setting names that are not plain PostgreSQL parameter names
/// (letters, digits, `_` and `.`): a name is written into postgresql.conf
/// unquoted. Values are quoted. PostgreSQL itself refuses unknown names.
pub fn check_settings(settings: &std::collections::BTreeMap<String, String>) -> Result<(), ActionError> {
    for name in settings.keys() {
        let plain = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(ActionError::Config(format!("image setting {name:?} is not a PostgreSQL parameter name")));
        }
    }
    Ok(())
}

/// Checks the socket path fits before PostgreSQL fails with a vaguer error.
pub fn check_socket_path(entry: &InstanceEntry) -> Result<(), ActionError> {
    let path = entry.socket_dir().join(format!(".s.PGSQL.{}", entry.port));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ActionError::Config(format!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes (the unix socket limit); open the local \
             provider on a shorter data directory",
            path.display()
        )));
    }
    Ok(())
}

pub struct ServerSettings<'a> {
    pub archive_command: Option<&'a str>,
    /// An agent host's address (see `LocalConfig::listen_address`).
    pub listen_address: Option<&'a str>,
    /// The OS user of this process (peer-mapped to `drover`).
    pub control_user: &'a str,
}

/// Writes postgresql.conf, pg_hba.conf and pg_ident.conf: the whole
/// configuration this provider wants, the same for primaries and followers
/// (a follower's copies came from its primary and name the primary's port).
pub fn write_config(run_as: &RunAs, entry: &InstanceEntry, settings: &ServerSettings<'_>) -> Result<(), ActionError> {
    let pgdata = entry.pgdata();
    let socket = entry.socket_dir();
    let listen = match settings.listen_address {
        Some(address) if address != "127.0.0.1" => format!("127.0.0.1,{address}"),
        _ => "127.0.0.1".to_string(),
    };
    let mut conf = format!(
        "# Written by drover's local provider; changes here are overwritten.\n\
         listen_addresses = {listen}\n\
         port = {port}\n\
         unix_socket_directories = {socket}\n\
         unix_socket_permissions = 0777\n\
         max_connections = 100\n\
         # Many small servers share one machine.\n\
         shared_buffers = 32MB\n\
         dynamic_shared_memory_type = posix\n\
         # logical: a major-version upgrade copies the data by logical\n\
         # replication from a running primary (a restart under load would fail statements).\n\
         wal_level = logical\n\
         # An upgrade's subscriber reports what it applied every second, so\n\
         # the switchover sees it caught up at once.\n\
         wal_receiver_status_interval = 1s\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         # Lets a follower that fell behind catch up without a slot.\n\
         wal_keep_size = 256MB\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         # pg_rewind needs it; cheap.\n\
         wal_log_hints = on\n\
         fsync = on\n\
         synchronous_commit = on\n\
         log_destination = 'stderr'\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] '\n\
         datestyle = 'iso, mdy'\n\
         timezone = 'UTC'\n\
         lc_messages = 'C'\n",
        port = entry.port,
        socket = conf_quote(&socket.to_string_lossy()),
        listen = conf_quote(&listen),
    );
    // Every major archives (pgBackRest 2.55, `pgbackrest::TRIXIE_PGBACKREST`):
    // an upgrade's new member is refused by the stanza until its promotion
    // moves the stanza onto its major (`BackupRepo::follow_major`), and
    // PostgreSQL keeps its WAL and retries until then.
    if let Some(template) = settings.archive_command {
        let command =
            template.replace("{stanza}", &entry.service_name).replace("{pgdata}", &entry.pgdata().to_string_lossy());
        conf.push_str(&format!("archive_mode = on\narchive_command = {}\n", conf_quote(&command)));
    }
    if !entry.settings.is_empty() {
        // Last: a later line of postgresql.conf wins over an earlier one.
        conf.push_str("# The image's settings.\n");
        for (name, value) in &entry.settings {
            conf.push_str(&format!("{name} = {}\n", conf_quote(value)));
        }
    }
    write_owned(run_as, &pgdata.join("postgresql.conf"), &conf, 0o600)?;
    // Drover's roles over the socket only (peer), the application's login
    // roles over TCP loopback only (SCRAM), to their own database; nothing else.
    // On an agent host (several hosts stand on this machine's loopback
    // addresses), the replication role also over TCP from the other hosts
    // (SCRAM, the service's replication password), and the application's
    // roles from the router beside the control plane.
    let clients = if settings.listen_address.is_some() { LOOPBACK_NETWORK } else { "127.0.0.1/32" };
    let mut hba = format!(
        "# Written by drover's local provider.\n\
         local all {ROLE} peer map={IDENT_MAP}\n\
         local replication {REPLICATION_ROLE} peer map={IDENT_MAP}\n\
         host {APP_DATABASE} {logins} {clients} scram-sha-256\n",
        logins = APP_LOGINS.join(","),
    );
    if settings.listen_address.is_some() {
        hba.push_str(&format!("host replication {REPLICATION_ROLE} {LOOPBACK_NETWORK} scram-sha-256\n"));
    }
    write_owned(run_as, &pgdata.join("pg_hba.conf"), &hba, 0o600)?;
    let mut ident = format!(
        "# Written by drover's local provider.\n{IDENT_MAP} {user} {ROLE}\n{IDENT_MAP} {user} {REPLICATION_ROLE}\n",
        user = run_as.user
    );
    if settings.control_user != run_as.user {
        ident.push_str(&format!("{IDENT_MAP} {} {ROLE}\n", settings.control_user));
    }
    write_owned(run_as, &pgdata.join("pg_ident.conf"), &ident, 0o600)
}

/// The conninfo a follower streams with: the primary's unix socket, as
/// [`REPLICATION_ROLE`] with peer auth (no password anywhere).
pub fn primary_conninfo(primary: &InstanceEntry, application_name: &str) -> String {
    format!(
        "host={socket} port={port} user={REPLICATION_ROLE} application_name={application_name} \
         connect_timeout={REPLICATION_CONNECT_TIMEOUT_SECONDS}",
        socket = conninfo_quote(&primary.socket_dir().to_string_lossy()),
        port = primary.port,
    )
}

/// The agent hosts of one machine: every loopback address.
const LOOPBACK_NETWORK: &str = "127.0.0.0/8";

/// Where a follower on an agent host keeps the replication password for
/// its primary on another host (in its instance directory, 0600, owned by
/// the server user: libpq's passfile format).
pub const REPLICATION_PASSFILE: &str = "replication.pgpass";

/// The passfile line that gives `password` for the replication role at
/// `upstream` (database `replication`, as walreceiver and pg_basebackup ask).
pub fn passfile_line(upstream: &super::UpstreamAddress, password: &str) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{}:replication:{REPLICATION_ROLE}:{}\n*:*:*:{REPLICATION_ROLE}:{}\n",
        escape(&upstream.address),
        upstream.port,
        escape(password),
        escape(password)
    )
}

/// The conninfo a follower on an agent host streams with: its primary on
/// another host over TCP, the password from `passfile`.
pub fn remote_primary_conninfo(upstream: &super::UpstreamAddress, passfile: &Path, application_name: &str) -> String {
    format!(
        "host={address} port={port} user={REPLICATION_ROLE} passfile={passfile} \
         application_name={application_name} connect_timeout={REPLICATION_CONNECT_TIMEOUT_SECONDS}",
        address = conninfo_quote(&upstream.address),
        port = upstream.port,
        passfile = conninfo_quote(&passfile.to_string_lossy()),
    )
}

/// A value quoted for a libpq conninfo string.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SCRAM-SHA-256 verifier of `password` (random salt, 4096 iterations),
/// as PostgreSQL stores it in pg_authid and pgbouncer reads it in its
/// auth_file: the password itself is never sent to the server nor written.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// The SQL that makes the service's roles and database on its primary, run
/// over the socket as [`ROLE`]; idempotent (a repeated Provision runs it
/// again). `login` gets the verifier and LOGIN; the other login role is left
/// as it is (NOLOGIN on a new service).
pub async fn ensure_app_roles(entry: &InstanceEntry, login: &str, verifier: &str) -> Result<(), ActionError> {
    let timeout = Duration::from_secs(10);
    let mut roles = format!(
        "DO $$ BEGIN\n\
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_ROLE}') THEN \
           CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION; END IF;\n\
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_OWNER}') THEN \
           CREATE ROLE {APP_OWNER} NOLOGIN; END IF;\n"
    );
    for role in APP_LOGINS {
        roles.push_str(&format!(
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
               CREATE ROLE {role} NOLOGIN IN ROLE {APP_OWNER}; END IF;\n"
        ));
    }
    roles.push_str("END $$;\n");
    for role in APP_LOGINS {
        roles.push_str(&format!("ALTER ROLE {role} SET role = '{APP_OWNER}';\n"));
    }
    execute(entry, &roles, timeout).await?;
    execute(entry, &set_login_sql(login, verifier), timeout).await?;
    let exists =
        execute(entry, &format!("SELECT 1 FROM pg_database WHERE datname = '{APP_DATABASE}'"), timeout).await?;
    if exists.is_empty() {
        execute(entry, &format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_OWNER}"), timeout).await?;
    }
    // Nobody but Drover connects to the maintenance databases (pg_hba
    // already says so; this holds even if it is loosened by hand).
    execute(
        entry,
        "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC; REVOKE CONNECT ON DATABASE template1 FROM PUBLIC",
        timeout,
    )
    .await?;
    Ok(())
}

/// Lets `login` in with the SCRAM `verifier`.
pub fn set_login_sql(login: &str, verifier: &str) -> String {
    format!("ALTER ROLE {login} LOGIN PASSWORD {}", sql_quote(verifier))
}

/// A string literal for SQL.
pub fn sql_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Sets `primary_conninfo` in postgresql.auto.conf (where pg_basebackup -R
/// and ALTER SYSTEM put it) before the server first starts.
pub fn set_primary_conninfo(run_as: &RunAs, pgdata: &Path, conninfo: &str) -> Result<(), ActionError> {
    let path = pgdata.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|line| !line.trim_start().starts_with("primary_conninfo"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("primary_conninfo = {}\n", conf_quote(conninfo)));
    write_owned(run_as, &path, &text, 0o600)?;
    let signal = pgdata.join("standby.signal");
    if !signal.exists() {
        write_owned(run_as, &signal, "", 0o600)?;
    }
    Ok(())
}

/// Removes `names` from postgresql.auto.conf (what ALTER SYSTEM wrote)
/// before the server starts.
pub fn drop_auto_conf(run_as: &RunAs, pgdata: &Path, names: &[&str]) -> Result<(), ActionError> {
    let path = pgdata.join("postgresql.auto.conf");
    let Ok(old) = std::fs::read_to_string(&path) else { return Ok(()) };
    let text: String = old
        .lines()
        .filter(|line| !names.iter().any(|n| line.trim_start().starts_with(n)))
        .map(|line| format!("{line}\n"))
        .collect();
    write_owned(run_as, &path, &text, 0o600)
}

/// Connects over the instance's unix socket (peer auth) within `timeout`.
pub async fn connect(entry: &InstanceEntry, timeout: Duration) -> Result<Client, ActionError> {
    connect_to(entry, "postgres", timeout).await
}

/// [`connect`] to database `dbname`.
pub async fn connect_to(entry: &InstanceEntry, dbname: &str, timeout: Duration) -> Result<Client, ActionError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(entry.socket_dir())
        .port(entry.port)
        .user(ROLE)
        .dbname(dbname)
        .application_name("drover-local-provider")
        .connect_timeout(timeout);
    let connecting = config.connect(NoTls);
    let (client, connection) = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ActionError::Timeout(format!("no connection within {timeout:?}")))?
        .map_err(|e| sql_error("cannot connect", &e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The server's own message when there is one (tokio-postgres' Display
/// says only "db error").
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

/// A PostgreSQL error while doing `what`, classified by its SQLSTATE: a
/// login or a statement refused for lack of rights (class 28, 42501) is
/// permanent until a person acts, a server that is starting, shutting down
/// or out of resources (classes 08, 53, 57) is not; so is a connection that
/// could not be made at all (no server listens yet).
pub fn sql_error(what: &str, error: &tokio_postgres::Error) -> ActionError {
    let text = format!("{what}: {}", error_text(error));
    let Some(code) = error.code() else {
        return ActionError::Unavailable(text);
    };
    let code = code.code();
    if code.starts_with("28") || code == "42501" {
        ActionError::Denied(text)
    } else if ["08", "53", "57"].iter().any(|class| code.starts_with(class)) {
        ActionError::Unavailable(text)
    } else {
        ActionError::Failed(text)
    }
}

/// Connects and runs `SELECT 1`, all within `timeout`.
pub async fn answers(entry: &InstanceEntry, timeout: Duration) -> Result<(), ActionError> {
    let attempt = async {
        let client = connect(entry, timeout).await?;
        client.simple_query("SELECT 1").await.map_err(|e| sql_error("SELECT 1", &e))?;
        Ok::<(), ActionError>(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ActionError::Timeout(format!("no answer to SELECT 1 within {timeout:?}")))?
}

/// Runs one statement (simple protocol) on a fresh socket connection.
pub async fn execute(entry: &InstanceEntry, sql: &str, timeout: Duration) -> Result<Vec<Option<String>>, ActionError> {
    execute_in(entry, "postgres", sql, timeout).await
}

/// [`execute`] in database `dbname`.
pub async fn execute_in(
    entry: &InstanceEntry,
    dbname: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Option<String>>, ActionError> {
    let attempt = async {
        let client = connect_to(entry, dbname, timeout).await?;
        let messages = client.simple_query(sql).await.map_err(|e| sql_error(sql, &e))?;
        let mut values = Vec::new();
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                values.push(row.get(0).map(str::to_string));
            }
        }
        Ok::<_, ActionError>(values)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ActionError::Timeout(format!("`{sql}` did not finish within {timeout:?}")))?
}

/// "16/B374D848" → 0x16_B374D848.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_becomes_a_byte_position() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("junk"), None);
    }

    #[test]
    fn conf_values_escape_quotes() {
        assert_eq!(conf_quote("it's"), "'it''s'");
    }
}
