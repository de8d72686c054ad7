//! The router of a Redis service: one HAProxy 2.6 per service, a child of
//! this process, listening on the service's fixed loopback port so its URL
//! never changes.
//!
//! The backend has one server, `redis/primary`, whose address is the
//! service's primary. Traffic is moved through HAProxy's runtime API on an
//! admin unix socket: a fence puts the server in `maint` and shuts its
//! sessions (no client keeps writing to the old primary), a promotion sets
//! the new address (`set server … addr`) and makes it `ready`. A
//! `tcp-check` that expects `role:master` every 100 ms is the second guard:
//! a server that is not a primary is marked down and its sessions shut
//! (`on-marked-down shutdown-sessions`). The config file is rewritten with
//! the current primary too, so a router started again points at it.

use super::super::postgres::{tail, write_owned};
use super::super::process::{running_pid, ServerProcess};
use super::server::CHECK_USER;
use crate::runas::RunAs;
use crate::ActionError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DEFAULT_HAPROXY: &str = "/usr/sbin/haproxy";
/// The backend and server the runtime API commands name.
const SERVER: &str = "redis/primary";
/// The server's connection limit in normal times (the global one is 4000);
/// a switchover lowers it to 1, with one connection of its own holding the
/// slot, so clients that connect meanwhile wait in HAProxy's queue.
const MAXCONN: u32 = 3900;
/// How long a client may wait in that queue (a switchover holds it for
/// its drain and hand-over, bounded well below this).
pub const QUEUE_MS: u64 = 10_000;
/// How long a router may take to answer its admin socket after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Runtime API commands are local and instant.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("haproxy.cfg")
}
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("haproxy.pid")
}
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("haproxy.log")
}

/// The longest `stats socket` path HAProxy accepts: it binds
/// `<path>.<pid>.tmp` first and renames, so it refuses anything over 97
/// bytes ("socket path too long (max 97)") though the kernel takes 107.
pub const MAX_HAPROXY_SOCKET_PATH: usize = 97;

/// Where the admin socket of the router in `dir` goes: there when the path
/// fits, else a short directory of its own (made ready for the server user
/// by [`prepare_socket_dir`] before HAProxy starts).
pub fn socket_path(dir: &Path, service: drover_model::ServiceId) -> PathBuf {
    let path = dir.join("admin.sock");
    if path.as_os_str().len() <= MAX_HAPROXY_SOCKET_PATH {
        return path;
    }
    let uid = nix::unistd::Uid::effective();
    std::env::temp_dir().join(format!("drover-sockets-{uid}")).join(format!("h{}.sock", service.0.simple()))
}

/// Makes the directory of `socket` writable by the server user HAProxy
/// runs as, when it is not the router's own `dir` (already prepared).
pub fn prepare_socket_dir(run_as: &RunAs, dir: &Path, socket: &Path) -> Result<(), ActionError> {
    match socket.parent().filter(|p| *p != dir) {
        Some(parent) => run_as
            .prepare_dir(parent, 0o755)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", parent.display()), e)),
        None => Ok(()),
    }
}

/// Writes `haproxy.cfg` (0600, the server user's) for a router on
/// `router_port` sending clients to `primary_port`.
pub fn write_config(
    run_as: &RunAs,
    dir: &Path,
    socket: &Path,
    router_port: u16,
    primary_port: u16,
) -> Result<(), ActionError> {
    let text = format!(
        "# Written by Drover: the stable URL of one Redis service.\n\
         global\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \x20   maxconn 4000\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 500ms\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout check 500ms\n\
         \x20   timeout queue {QUEUE_MS}ms\n\
         listen redis\n\
         \x20   bind 127.0.0.1:{router_port}\n\
         \x20   option tcp-check\n\
         \x20   tcp-check connect\n\
         \x20   tcp-check send AUTH\\ {CHECK_USER}\\ check\\r\\n\n\
         \x20   tcp-check expect string +OK\n\
         \x20   tcp-check send INFO\\ replication\\r\\n\n\
         \x20   tcp-check expect string role:master\n\
         \x20   tcp-check send QUIT\\r\\n\n\
         \x20   tcp-check expect string +OK\n\
         \x20   server primary 127.0.0.1:{primary_port} check inter 100ms fastinter 50ms downinter 100ms rise 1 fall 2 maxconn {MAXCONN} on-marked-down shutdown-sessions\n",
        socket = socket.display(),
    );
    write_owned(run_as, &config_path(dir), &text, 0o600)
}

/// Spawns HAProxy in the foreground on `dir`'s config, records its pid,
/// and waits until its admin socket answers.
pub async fn spawn(
    run_as: &RunAs,
    binary: &Path,
    dir: &Path,
    socket: &Path,
    on_exit: super::super::process::OnUnexpectedExit,
) -> Result<ServerProcess, ActionError> {
    let log_path = log_path(dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| ActionError::io(format_args!("cannot open {}", log_path.display()), e))?;
    let log_err = log.try_clone().map_err(|e| ActionError::io("cannot share the log file", e))?;
    let _ = std::fs::remove_file(socket);
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("-db")
        .arg("-f")
        .arg(config_path(dir))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    run_as.apply_tokio(&mut command);
    let process = ServerProcess::spawn(command, None, on_exit).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ActionError::Config(format!(
            "cannot spawn {}: {e}; install HAProxy (Debian: apt-get install haproxy)",
            binary.display()
        )),
        _ => ActionError::io("cannot spawn haproxy", e),
    })?;
    // HAProxy writes no pid file in the foreground: ours finds it after a restart.
    write_owned(run_as, &pid_path(dir), &format!("{}\n", process.pid), 0o600)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if process.has_exited() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(ActionError::Failed(format!("haproxy exited at start: {}", tail(&log, 800))));
        }
        match command_line(socket, "show info").await {
            Ok(_) => return Ok(process),
            Err(e) if Instant::now() >= deadline => {
                let _ = process.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(1)).await;
                return Err(ActionError::Timeout(format!("haproxy not answering its admin socket: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(30)).await,
        }
    }
}

/// The pid of a router that survived a control-plane restart.
pub fn adopt_pid(dir: &Path) -> Option<i32> {
    running_pid(&pid_path(dir), "haproxy")
}

/// Sends one line of runtime API commands (`;`-separated) and returns the
/// answer. An answer that is not empty and not a plain acknowledgement is
/// an error for the commands that change state.
pub async fn command_line(socket: &Path, line: &str) -> Result<String, String> {
    let attempt = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| e.to_string())?;
        stream.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    tokio::time::timeout(COMMAND_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("the router's admin socket did not answer within {COMMAND_TIMEOUT:?}"))?
}

async fn change(socket: &Path, line: &str) -> Result<(), ActionError> {
    let answer = command_line(socket, line).await.map_err(ActionError::Unavailable)?;
    let unexpected: Vec<&str> = answer
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("IP changed") && !l.starts_with("no need to change"))
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(ActionError::Failed(format!("router refused `{line}`: {}", unexpected.join("; "))))
    }
}

/// Cuts the primary off: no new session reaches it, and the open ones
/// are shut.
pub async fn cut(socket: &Path) -> Result<(), ActionError> {
    change(socket, &format!("set server {SERVER} state maint; shutdown sessions server {SERVER}")).await
}

/// Sends clients to the primary on `port`: its address, then ready, its
/// health taken as up (the role:master check confirms it within 100 ms or
/// marks it down again).
pub async fn point(socket: &Path, port: u16) -> Result<(), ActionError> {
    change(
        socket,
        &format!(
            "set server {SERVER} state maint; shutdown sessions server {SERVER}; \
             set server {SERVER} addr 127.0.0.1 port {port}; set server {SERVER} state ready; \
             set server {SERVER} health up"
        ),
    )
    .await
}

/// New sessions wait in the router's queue (the caller holds the one slot
/// with a connection of its own), and the `role:master` check is paused so
/// the old primary turning replica does not shut the queued clients out.
/// Existing sessions are untouched.
pub async fn hold(socket: &Path) -> Result<(), ActionError> {
    change(socket, &format!("disable health {SERVER}; set maxconn server {SERVER} 1")).await
}

/// Ends a [`hold`]: the queued clients go to the server on `port` (when
/// given), the check resumes. No session is shut.
pub async fn release(socket: &Path, port: Option<u16>) -> Result<(), ActionError> {
    let to = port.map(|p| format!("set server {SERVER} addr 127.0.0.1 port {p}; ")).unwrap_or_default();
    change(socket, &format!("{to}set maxconn server {SERVER} {MAXCONN}; enable health {SERVER}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_socket_fits_haproxys_limit_from_any_data_dir() {
        let service = drover_model::ServiceId::new_at(1_764_000_000_000_000, 7);
        let short = Path::new("/tmp/d/local/kafka/services/x/router");
        assert_eq!(socket_path(short, service), short.join("admin.sock"));
        // A clone in a home directory: `<data>/local/kafka/services/<uuid>/router/admin.sock`.
        let deep = Path::new("/root/work/checkouts/drover/drover-data/local/kafka/services")
            .join(service.to_string())
            .join("router");
        assert!(deep.join("admin.sock").as_os_str().len() > MAX_HAPROXY_SOCKET_PATH);
        let socket = socket_path(&deep, service);
        assert!(socket.as_os_str().len() <= MAX_HAPROXY_SOCKET_PATH, "{}", socket.display());
        assert_ne!(socket.parent(), Some(deep.as_path()));
    }
}
