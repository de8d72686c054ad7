//! Starts a real server in process on port 0 with a temp data dir, the sim
//! provider and fast timings, and talks to it over real HTTP.
#![allow(dead_code)]

#[path = "../../../store/tests/common/pg.rs"]
pub mod pg;
pub mod receiver;

use drover_server::{RunningServer, ServeOptions};
use serde_json::Value;
use std::future::Future;
use std::time::{Duration, Instant};

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL server of its store, with `DROVER_TEST_STORE=postgres`
    /// (dropped after the control plane: fields drop in order).
    pub pg: Option<std::sync::Arc<pg::PgServer>>,
}

/// The PostgreSQL server of each data dir's store while a test holds it:
/// a server restarted on the same data dir finds the same store.
fn stores() -> &'static std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Weak<pg::PgServer>>> {
    static STORES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Weak<pg::PgServer>>>,
    > = std::sync::OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// The PostgreSQL server of `dir`'s store, started on first use.
pub fn pg_for(dir: &std::path::Path) -> std::sync::Arc<pg::PgServer> {
    let mut stores = stores().lock().unwrap();
    if let Some(pg) = stores.get(dir).and_then(std::sync::Weak::upgrade) {
        return pg;
    }
    let pg = std::sync::Arc::new(pg::PgServer::start());
    stores.insert(dir.to_path_buf(), std::sync::Arc::downgrade(&pg));
    pg
}

/// `DROVER_TEST_STORE=postgres`: every test server keeps its fleet in a
/// PostgreSQL store of its own (a fresh cluster), as one node holding the
/// lease; else the embedded SQLite store. The same suite runs on both.
pub fn on_postgres() -> bool {
    std::env::var("DROVER_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// Timings short enough for tests, in the ratios of the defaults.
pub fn fast_options(dir: &std::path::Path) -> ServeOptions {
    let mut opts = ServeOptions::new(dir, "127.0.0.1:0".parse().unwrap());
    // On PostgreSQL: the store a test holds for this data dir (`pg_for`).
    if let Some(pg) = stores().lock().unwrap().get(dir).and_then(std::sync::Weak::upgrade) {
        opts.store = Some(pg.url("postgres"));
        opts.node = Some("test".into());
    }
    opts.engine.uncertain_after = Duration::from_millis(400);
    opts.engine.presumed_dead_after = Duration::from_secs(5);
    opts.engine.restart_grace = Duration::from_millis(300);
    opts.engine.probe_interval = Duration::from_millis(200);
    opts.engine.action_timeout = Duration::from_secs(2);
    opts.engine.install_timeout = Duration::from_secs(5);
    opts.sim.heartbeat_interval = Duration::from_millis(100);
    opts.sim.action_latency = Duration::from_millis(30);
    opts
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
    start_in(tempfile::tempdir().expect("temp dir"), tweak).await
}

/// Like [`start_with`], in a given temp dir (the local provider wants short
/// paths: unix socket paths are limited to ~100 bytes).
pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
    init_logs();
    let pg = on_postgres().then(|| pg_for(dir.path()));
    let mut opts = fast_options(dir.path());
    tweak(&mut opts);
    let server = drover_server::start(opts).await.expect("server starts");
    let url = server.url();
    let http = drover_agent::tls::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut t = TestServer { server: Some(server), url, http, dir, pg };
    t.wait_healthy().await;
    // Every request of `t.http` carries the admin token of its data dir.
    t.http = client_with(&admin_token(t.dir.path()));
    t
}

/// The admin token a server wrote to its data dir on first start.
pub fn admin_token(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token")).expect("admin.token").trim().to_string()
}

/// An HTTP client that sends `token` as its bearer credential.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    drover_agent::tls::builder().timeout(Duration::from_secs(20)).default_headers(headers).build().unwrap()
}

impl TestServer {
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(self.at("/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET, returning status and JSON body (Null if the body is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.at(path)).send().await.expect("GET sent");
        split(r).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(self.at(path)).json(&body).send().await.expect("POST sent");
        split(r).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.at(path)).send().await.expect("DELETE sent");
        split(r).await
    }

    /// POST with `token` as the bearer credential, or with none.
    pub async fn post_as(&self, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        let http = match token {
            Some(t) => client_with(t),
            None => drover_agent::tls::builder().timeout(Duration::from_secs(20)).build().unwrap(),
        };
        split(http.post(self.at(path)).json(&body).send().await.expect("POST sent")).await
    }

    /// GET with `token` as the bearer credential, or with none.
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let http = match token {
            Some(t) => client_with(t),
            None => drover_agent::tls::builder().timeout(Duration::from_secs(20)).build().unwrap(),
        };
        split(http.get(self.at(path)).send().await.expect("GET sent")).await
    }

    /// An integration token of `team`, made once per server (kept in its data dir).
    pub async fn integration_token(&self, team: &str) -> String {
        let path = self.dir.path().join(format!("test-integration-{team}.token"));
        if let Ok(t) = std::fs::read_to_string(&path) {
            return t;
        }
        let token = self
            .token(serde_json::json!({"name": format!("alerts-{team}"), "role": "integration", "team": team}))
            .await;
        std::fs::write(&path, &token).unwrap();
        token
    }

    /// Creates a token (as admin) and returns its secret.
    pub async fn token(&self, body: Value) -> String {
        let (status, created) = self.post("/v1/tokens", body.clone()).await;
        assert_eq!(status, 201, "create token {body}: {created}");
        created["token"].as_str().unwrap().to_string()
    }

    /// An agent token of this machine (the host of every local and sim instance).
    pub async fn agent_token(&self) -> String {
        self.token(serde_json::json!({"name": format!("agent-{}", rand_suffix()), "role": "agent", "host": drover_server::host_name()}))
            .await
    }

    /// Creates a service and asserts 201.
    pub async fn create_service(&self, name: &str, followers: u8) -> Value {
        let (status, body) = self
            .post(
                "/v1/services",
                serde_json::json!({"name": name, "engine": "postgres", "followers": followers, "provider": "sim"}),
            )
            .await;
        assert_eq!(status, 201, "create {name}: {body}");
        body
    }

    pub async fn service(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/services/{name}")).await;
        assert_eq!(status, 200, "show {name}: {body}");
        body
    }

    /// Waits until the service is `available` with every instance `available`.
    pub async fn wait_available(&self, name: &str, timeout: Duration) -> Value {
        poll(timeout, &format!("service {name} available"), || async {
            let s = self.service(name).await;
            let all =
                s["instances"].as_array().is_some_and(|i| !i.is_empty() && i.iter().all(|i| i["state"] == "available"));
            (s["state"] == "available" && all).then_some(s)
        })
        .await
    }

    pub async fn events(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/events?{query}")).await;
        assert_eq!(status, 200, "events: {body}");
        body.as_array().cloned().unwrap_or_default()
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }
}

pub async fn split(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `check` every 50 ms until it yields a value; panics after `timeout`
/// with `what` (the last value seen is the caller's to print).
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn primary(service: &Value) -> Value {
    service["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["role"] == "primary").cloned())
        .unwrap_or(Value::Null)
}

pub fn followers(service: &Value) -> Vec<Value> {
    service["instances"]
        .as_array()
        .map(|i| i.iter().filter(|i| i["role"] == "follower").cloned().collect())
        .unwrap_or_default()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
