//! A real PostgreSQL 15 server for one test: Debian's binaries, a fresh
//! cluster in a temp dir, listening on 127.0.0.1 and a free port (its unix
//! socket in the temp dir), stopped and reaped when the value is dropped.
//! PostgreSQL refuses to run as root: as root it runs as the system user
//! `drover` (created if missing, like the providers' `RunAs`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";
const USER: &str = "drover";

pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    who: Option<(u32, u32)>,
    /// Holds the data dir and the socket; removed after the server stops.
    _dir: tempfile::TempDir,
}

/// `(uid, gid)` to run the server as, `None` when we are not root.
fn run_as() -> Option<(u32, u32)> {
    use nix::unistd::{Uid, User};
    if !Uid::effective().is_root() {
        return None;
    }
    if User::from_name(USER).unwrap().is_none() {
        let _ = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            .status();
    }
    let user = User::from_name(USER).unwrap().expect("the drover user exists");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn as_server_user(cmd: &mut Command, who: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp").env("USER", USER);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgServer {
    pub fn start() -> PgServer {
        let who = run_as();
        let dir = tempfile::Builder::new().prefix("drover-store-pg-").tempdir().unwrap();
        if let Some((uid, gid)) = who {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        // --no-sync: a test cluster need not survive a power cut while it is
        // created; the server itself runs with fsync on.
        let out = as_server_user(
            Command::new(Path::new(BIN).join("initdb")).args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]),
            who,
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        let mut server = PgServer { child: None, port: 0, data, who, _dir: dir };
        for _attempt in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        let log = std::fs::read_to_string(server._dir.path().join("server.log")).unwrap_or_default();
        panic!("postgres did not start: {log}");
    }

    /// Starts the postmaster on `self.port`; false if it exited at once
    /// (most likely the port was taken meanwhile).
    fn spawn(&mut self) -> bool {
        let dir = self._dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
        let mut child = as_server_user(
            Command::new(Path::new(BIN).join("postgres")).args([
                "-D",
                self.data.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", dir.display()),
                "-c",
                "max_connections=50",
            ]),
            self.who,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("postgres exited ({status}) on port {}", self.port);
                return false;
            }
            let ready = Command::new(Path::new(BIN).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", "postgres", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                self.child = Some(child);
                return true;
            }
            assert!(Instant::now() < deadline, "postgres did not become ready on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: sessions are ended) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.spawn(), "postgres did not restart on port {}", self.port);
    }

    /// The store URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with psql on database `db`; panics if it fails. Returns
    /// what it printed (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl PgServer {
    /// The fleet's lease in the `postgres` database, as (holder, generation)
    /// (empty and 0 while nobody took it).
    pub fn lease(&self) -> (String, i64) {
        let row = self.psql("postgres", "SELECT holder || ' ' || generation FROM leases WHERE shard = 0");
        let mut parts = row.split_whitespace();
        (parts.next().unwrap_or_default().to_string(), parts.next().and_then(|g| g.parse().ok()).unwrap_or(0))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
