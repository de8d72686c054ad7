//! A real PostgreSQL for the backup and checks tests: initdb and postgres run as
//! the server user (initdb refuses root), postgres is our child process (not
//! `pg_ctl start`), stopped in Drop even when the test fails.
#![allow(dead_code)]

use drover_providers::pgbackrest::{BackupRepo, PgTarget};
use drover_providers::runas::RunAs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

pub fn bin_dir() -> PathBuf {
    std::env::var_os("DROVER_PG_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(BIN_DIR))
}

/// A port nobody listens on now (the server also listens only on its socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct TestPg {
    pub run_as: RunAs,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl TestPg {
    /// initdb + postgres under `dir`. `archive_command`: archiving on with it.
    /// `hba`: the pg_hba.conf to write (None: local socket only, trust for the server user,
    /// which is who initdb made superuser; the test process may be root, so peer would not do).
    pub fn start(dir: &Path, archive_command: Option<&str>, hba: Option<&str>) -> TestPg {
        let run_as = RunAs::for_servers().expect("server user");
        let data_dir = dir.join("data");
        let socket_dir = dir.join("sock");
        run_as.prepare_dir(dir, 0o755).unwrap();
        run_as.prepare_dir(&socket_dir, 0o700).unwrap();
        let mut initdb = Command::new(bin_dir().join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions", "-E", "UTF8"])
            .current_dir(dir)
            .stdout(Stdio::null());
        run_as.apply(&mut initdb);
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        let hba = hba.map(str::to_string).unwrap_or_else(|| format!("local all {} trust\n", run_as.user));
        std::fs::write(data_dir.join("pg_hba.conf"), hba).unwrap();
        let mut conf =
            String::from("\n# drover test fixture\nlisten_addresses = ''\nwal_level = replica\nfsync = off\n");
        if let Some(cmd) = archive_command {
            conf.push_str(&format!("archive_mode = on\narchive_command = '{}'\n", cmd.replace('\'', "''")));
        }
        let mut existing = std::fs::read_to_string(data_dir.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data_dir.join("postgresql.conf"), existing).unwrap();

        let port = free_port();
        let log_path = dir.join("postgres.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin_dir().join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&socket_dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        run_as.apply(&mut cmd);
        let child = cmd.spawn().expect("start postgres");
        let mut pg = TestPg { run_as, data_dir, socket_dir, port, log_path, child: Some(child) };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(bin_dir().join("pg_isready"))
                .arg("-h")
                .arg(&self.socket_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({status}): {}", std::fs::read_to_string(&self.log_path).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready: {}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn target(&self) -> PgTarget {
        PgTarget {
            data_dir: self.data_dir.clone(),
            port: self.port,
            socket_dir: self.socket_dir.clone(),
            bin_dir: bin_dir(),
        }
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.socket_dir, self.port, &self.run_as.user).await
    }

    /// Reloads the configuration (pg_hba.conf too).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGHUP)
                .unwrap();
        }
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the postmaster takes its backends down with it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn connect(socket_dir: &Path, port: u16, user: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A repository and a running, archiving PostgreSQL with a ready stanza.
pub async fn archiving_instance(dir: &Path, stanza: &str) -> (BackupRepo, TestPg) {
    let run_as = RunAs::for_servers().unwrap();
    let repo = BackupRepo::open(&dir.join("backups"), run_as).expect("open backup repo");
    let data = dir.join("pg").join("data");
    let pg = TestPg::start(&dir.join("pg"), Some(&repo.archive_command(stanza, &data.to_string_lossy())), None);
    repo.ensure_stanza(stanza, &pg.target()).await.expect("stanza-create and check");
    (repo, pg)
}

/// Waits until `segment` is in the archive (pg_stat_archiver).
pub async fn wait_archived(client: &tokio_postgres::Client, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let archived: String = row.get(0);
        if archived.as_str() >= segment && archived.len() == segment.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "segment {segment} not archived (last archived {archived:?}, last failed {:?})",
            row.get::<_, String>(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A scratch temp dir the server user can reach.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("drover-backup-").tempdir().unwrap()
}
