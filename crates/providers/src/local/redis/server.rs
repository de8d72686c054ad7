//! One Redis 7.0 server per instance: its configuration, its process (a
//! child of this process, run as the server user), and Drover's admin
//! connection to it.
//!
//! Nothing secret is written in clear: the ACL users in `redis.conf` carry
//! SHA-256 hashes of their passwords, and what a replica needs to log in to
//! its primary (`masteruser`/`masterauth`) and whom it follows are set at
//! run time over the admin connection (`CONFIG SET`, `REPLICAOF`), never
//! written to the file. Every server therefore starts as a primary of its
//! own data and is pointed at the service's primary by the provider.

use super::super::postgres::write_owned;
use crate::runas::RunAs;
use crate::ActionError;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Debian binary (`apt-get install redis-server`; the packaged service
/// is not used: Drover runs its own servers).
pub const DEFAULT_REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Drover's own administrative ACL user (replication, fencing, promotion).
pub const ADMIN_USER: &str = "drover";
/// The router's health check: `nopass`, allowed only `PING` and
/// `INFO replication` (it sees roles and offsets, nothing else).
pub const CHECK_USER: &str = "drover_check";
/// The application's ACL user the service URL names when it is created.
pub const APP_USER: &str = "app";
/// The two application users a credential rotation alternates between
/// (issue 10 item 8): the URL names one; the other is absent, or still
/// accepted during a rotation's overlap.
pub const APP_LOGINS: [&str; 2] = [APP_USER, "app_b"];
/// What the application's user may run: every key and channel, every
/// command but the administrative and dangerous ones (CONFIG, MODULE, ACL,
/// DEBUG, SHUTDOWN, REPLICAOF, FAILOVER, CLIENT KILL, FLUSHALL, KEYS, …).
pub const APP_RULES: &str = "~* &* +@all -@admin -@dangerous";

/// The paths of one instance under `local/redis/instances/<id>/`.
pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}
pub fn conf_path(dir: &Path) -> PathBuf {
    dir.join("redis.conf")
}
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("redis.pid")
}

/// The SHA-256 of a password as an ACL rule takes it (`#<hex>`): what
/// redis.conf and `ACL SETUSER` carry, never the password itself.
pub fn sha256_hex(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// What a server's configuration is made of.
pub struct ServerConfig<'a> {
    pub port: u16,
    pub dir: &'a Path,
    pub admin_password: &'a str,
    /// The application's ACL user the URL names, and its password.
    pub app: (&'a str, &'a str),
    /// The application user a rotation replaced and the SHA-256 hex of its
    /// password ([`sha256_hex`]): still accepted during the overlap.
    pub app_previous: Option<(&'a str, &'a str)>,
}

/// Writes `redis.conf` (owned by the server user, 0600).
pub fn write_config(run_as: &RunAs, config: &ServerConfig<'_>) -> Result<(), ActionError> {
    let ServerConfig { port, dir, admin_password, app: (app_login, app_password), app_previous } = config;
    let data = data_dir(dir);
    let mut app = format!("user {app_login} on #{} {APP_RULES}", sha256_hex(app_password));
    if let Some((login, hash)) = app_previous {
        app = format!("{app}\nuser {login} on #{hash} {APP_RULES}");
    }
    let text = format!(
        "# Written by Drover; rewritten on every start. Replication is set at run time.\n\
         bind 127.0.0.1\n\
         port {port}\n\
         protected-mode yes\n\
         daemonize no\n\
         pidfile {pid}\n\
         logfile \"\"\n\
         dir {data}\n\
         # Persistence: RDB snapshots and an append-only file fsynced every second.\n\
         dbfilename dump.rdb\n\
         save 3600 1 300 100 60 10000\n\
         appendonly yes\n\
         appendfsync everysec\n\
         # Replicas: full syncs over the socket at once, read-only, and an\n\
         # offset that moves every second so lag is measured.\n\
         repl-diskless-sync yes\n\
         repl-diskless-sync-delay 0\n\
         repl-ping-replica-period 1\n\
         repl-timeout 10\n\
         replica-read-only yes\n\
         # Users: nobody unauthenticated; Drover's admin; the router's check; the application.\n\
         user default off resetchannels -@all\n\
         user {ADMIN_USER} on #{admin} ~* &* +@all\n\
         user {CHECK_USER} on nopass -@all +ping +info|replication\n\
         {app}\n",
        pid = pid_path(dir).display(),
        data = data.display(),
        admin = sha256_hex(admin_password),
    );
    write_owned(run_as, &conf_path(dir), &text, 0o600)
}

/// A connection as `user` to the server on `port`; commands time out after
/// `timeout` (None: only the caller's own bound).
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    timeout: Option<Duration>,
) -> Result<MultiplexedConnection, ActionError> {
    let url = format!("redis://{user}:{password}@127.0.0.1:{port}/");
    let client = redis::Client::open(url).map_err(|e| ActionError::Config(format!("bad Redis address: {e}")))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.unwrap_or(Duration::from_secs(2))))
        .set_response_timeout(timeout);
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(timeout.unwrap_or(Duration::from_secs(5)) + Duration::from_millis(100), connecting).await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(ActionError::Unavailable(format!("cannot connect to Redis on port {port}: {e}"))),
        Err(_) => Err(ActionError::Timeout(format!("connecting to Redis on port {port} timed out"))),
    }
}

/// Runs `cmd` with a bound.
pub async fn run<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<T, ActionError> {
    let name = cmd.args_iter().next().map(|a| match a {
        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    });
    let name = name.unwrap_or_default();
    match tokio::time::timeout(timeout, cmd.query_async::<T>(connection)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
            Err(ActionError::Unavailable(format!("Redis {name}: {e}")))
        }
        Ok(Err(e)) => Err(ActionError::Failed(format!("Redis {name}: {e}"))),
        Err(_) => Err(ActionError::Timeout(format!("Redis {name} did not answer within {timeout:?}"))),
    }
}

/// What `INFO replication` (and `clients`) says of a server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// `role:master`.
    pub master: bool,
    /// A master's `master_repl_offset`, a replica's `slave_repl_offset`.
    pub offset: Option<u64>,
    /// A replica: `master_link_status:up`.
    pub link_up: bool,
    /// A replica: the port of the primary it follows.
    pub master_port: Option<u16>,
    /// A master: replicas connected and online.
    pub online_replicas: u32,
    pub connected_clients: Option<u32>,
}

impl Replication {
    pub fn parse(text: &str) -> Replication {
        let mut r = Replication::default();
        let mut master_offset = None;
        let mut replica_offset = None;
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else { continue };
            match key {
                "role" => r.master = value == "master",
                "master_repl_offset" => master_offset = value.parse().ok(),
                "slave_repl_offset" => replica_offset = value.parse().ok(),
                "master_link_status" => r.link_up = value == "up",
                "master_port" => r.master_port = value.parse().ok(),
                "connected_clients" => r.connected_clients = value.parse().ok(),
                k if k.starts_with("slave") && value.contains("state=online") => r.online_replicas += 1,
                _ => {}
            }
        }
        r.offset = if r.master { master_offset } else { replica_offset.or(master_offset) };
        r
    }
}

pub async fn replication(
    connection: &mut MultiplexedConnection,
    timeout: Duration,
) -> Result<Replication, ActionError> {
    let text: String = run(connection, redis::cmd("INFO").arg("replication").arg("clients"), timeout).await?;
    Ok(Replication::parse(&text))
}

/// One line of `CLIENT LIST`: what a switchover's drain needs of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    pub user: String,
    pub flags: String,
    pub cmd: String,
    pub multi: i64,
    pub qbuf: u64,
    pub pending_output: bool,
}

impl Session {
    pub fn parse(line: &str) -> Option<Session> {
        let mut s = Session { multi: -1, ..Session::default() };
        let mut id = None;
        for field in line.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else { continue };
            match key {
                "id" => id = value.parse().ok(),
                "user" => s.user = value.to_string(),
                "flags" => s.flags = value.to_string(),
                "cmd" => s.cmd = value.to_string(),
                "multi" => s.multi = value.parse().unwrap_or(-1),
                "qbuf" => s.qbuf = value.parse().unwrap_or(0),
                "obl" | "oll" => s.pending_output |= value != "0",
                _ => {}
            }
        }
        s.id = id?;
        Some(s)
    }
    /// A client's session: not Drover's admin, not the router's check, not
    /// a connection that never logged in.
    pub fn is_application(&self) -> bool {
        ![ADMIN_USER, CHECK_USER, "default"].contains(&self.user.as_str())
    }
    /// Between two commands as the server sees it: nothing read and not
    /// executed, nothing left to send, no transaction or blocking command
    /// open, and past its login (a new connection's first command is on
    /// its way).
    pub fn idle_between_commands(&self) -> bool {
        self.qbuf == 0
            && !self.pending_output
            && self.multi == -1
            && self.flags == "N"
            && !["NULL", "auth", "hello"].contains(&self.cmd.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_and_which_sessions_are_idle() {
        let idle = "id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=9 name= age=3 idle=0 flags=N db=0 sub=0 \
                    psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=5 obl=0 oll=0 \
                    omem=0 tot-mem=1800 events=r cmd=set user=app redir=-1 resp=2";
        let s = Session::parse(idle).unwrap();
        assert_eq!((s.id, s.user.as_str(), s.cmd.as_str()), (7, "app", "set"));
        assert!(s.is_application() && s.idle_between_commands());
        let blocked = idle.replace("flags=N", "flags=b").replace("cmd=set", "cmd=blpop");
        assert!(!Session::parse(&blocked).unwrap().idle_between_commands());
        let in_multi = idle.replace("multi=-1", "multi=2");
        assert!(!Session::parse(&in_multi).unwrap().idle_between_commands());
        let just_in = idle.replace("cmd=set", "cmd=auth");
        assert!(!Session::parse(&just_in).unwrap().idle_between_commands());
        let check = idle.replace("user=app", "user=drover_check");
        assert!(!Session::parse(&check).unwrap().is_application());
        assert_eq!(Session::parse("garbage"), None);
    }

    #[test]
    fn info_replication_of_a_master_and_a_replica() {
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
                      slave0:ip=127.0.0.1,port=7001,state=online,offset=420,lag=0\r\n\
                      master_repl_offset:420\r\n# Clients\r\nconnected_clients:7\r\n";
        let r = Replication::parse(master);
        assert!(r.master);
        assert_eq!((r.offset, r.online_replicas, r.connected_clients), (Some(420), 1, Some(7)));
        let replica = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:down\r\n\
                       slave_repl_offset:400\r\nmaster_repl_offset:400\r\n";
        let r = Replication::parse(replica);
        assert!(!r.master && !r.link_up);
        assert_eq!((r.offset, r.master_port), (Some(400), Some(7000)));
    }
}
