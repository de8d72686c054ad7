//! The real `drover serve` binary as a child of the test, with the local
//! provider: started, killed with -9, restarted; and every server it left
//! behind killed when the test ends, whatever happened.
#![allow(dead_code)]

pub mod host_agent;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `drover serve` started in `cwd` with `args`; on drop it and every
/// process working under `cwd` (postmasters, backends, routers) are killed.
pub struct Serve {
    pub child: Option<Child>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub api: String,
    args: Vec<String>,
}

impl Serve {
    pub fn start(cwd: &Path, port: u16, args: &[&str]) -> Serve {
        Serve::start_command(cwd, port, "serve", args)
    }

    /// Another long-running command of the binary (`sim-provider`), run
    /// and cleaned up the same way; its log is `<command>.log`.
    pub fn start_command(cwd: &Path, port: u16, command: &str, args: &[&str]) -> Serve {
        let mut serve = Serve {
            child: None,
            cwd: cwd.to_path_buf(),
            log: cwd.join(format!("{command}.log")),
            api: format!("http://127.0.0.1:{port}"),
            args: std::iter::once(command.to_string())
                .chain(args.iter().map(|s| s.to_string()))
                .chain(["--listen".into(), format!("127.0.0.1:{port}")])
                .collect(),
        };
        serve.spawn();
        serve
    }

    /// Starts the binary (again) with the same arguments and directory.
    pub fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(&self.args)
            .current_dir(&self.cwd)
            // Nothing from the environment may point it elsewhere.
            .env_remove("DROVER_DATA_DIR")
            .env_remove("DROVER_DEFAULT_PROVIDER")
            .env_remove("DROVER_NO_LOCAL")
            .env_remove("DROVER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn drover serve");
        self.child = Some(child);
    }

    /// Sends `sig` (`-STOP`, `-CONT`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Whether it answers `/healthz` with 200 (a standby says 503).
    pub async fn healthy(&self, http: &reqwest::Client) -> bool {
        matches!(get(http, &format!("{}/healthz", self.api)).await, Some((200, _)))
    }

    /// SIGKILL of the control plane only: its servers live on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub async fn wait_healthy(&self, http: &reqwest::Client, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !matches!(get(http, &format!("{}/healthz", self.api)).await, Some((200, _))) {
            assert!(Instant::now() < deadline, "drover never became healthy; log:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `/healthz` answer of a standby that knows the holder it forwards to.
pub fn is_standby(health: &serde_json::Value) -> bool {
    health["error"].as_str().is_some_and(|e| e.contains("is a standby"))
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
        kill_everything_under(&self.cwd);
    }
}

/// PostgreSQL backends setsid(), so process groups are not enough: find
/// them by their working directory.
pub fn kill_everything_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Gives a node's data dir the key every node of the test's control plane
/// shares (as an operator copies `secret.key`, or sets DROVER_SECRET_KEY).
#[allow(dead_code)]
pub fn share_the_key(data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(data_dir.join("secret.key"), format!("{}\n", "5e".repeat(32))).unwrap();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

/// Polls `check` every 250 ms until it returns Some, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, serve: &Serve, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", serve.log_tail());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client that sends the admin token `drover serve` wrote to `data_dir`
/// on its first start (call once the server is healthy).
pub fn admin_client(data_dir: &Path) -> reqwest::Client {
    client_with(&admin_token(data_dir))
}

pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token")).expect("admin.token in the data dir").trim().to_string()
}

/// A client that sends `token` as its bearer credential.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    drover_agent::tls::builder().timeout(Duration::from_secs(10)).default_headers(headers).build().unwrap()
}

/// Creates a token through the API with `admin` and returns its secret.
pub async fn create_token(admin: &reqwest::Client, api: &str, body: Value) -> String {
    let r = admin.post(format!("{api}/v1/tokens")).json(&body).send().await.expect("POST /v1/tokens");
    let status = r.status().as_u16();
    let created: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "create token {body}: {created}");
    created["token"].as_str().unwrap().to_string()
}

/// POSTs `body` to `api` + `path` with `http`: the status and the JSON
/// answer (Null when it is none).
pub async fn post(http: &reqwest::Client, api: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http.post(format!("{api}{path}")).json(&body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
