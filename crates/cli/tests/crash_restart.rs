//! kill -9 of the real `drover` binary in the middle of a failover: after a
//! restart on the same data dir the failover completes, with exactly one
//! writable primary and exactly one successful promote.

mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GENEROUS: Duration = Duration::from_secs(40);

/// The server process; killed (SIGKILL) when dropped so a failed test
/// leaves nothing behind.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(data_dir: &Path, port: u16, log: PathBuf) -> Server {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--uncertain-after-ms", "400"])
            .args(["--restart-grace-secs", "0.3"])
            .args(["--probe-interval-ms", "200"])
            .args(["--action-timeout-ms", "3000"])
            .args(["--heartbeat-interval-ms", "100"])
            // This test is about the control plane: the sim fleet only.
            .args(["--default-provider", "sim", "--no-local"])
            // Slower than other tests on purpose: the kill must land while a
            // fence or promote is in flight, so each needs a visible window.
            .args(["--action-latency-ms", "250"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn drover serve");
        Server { child, log }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn get(&self, path: &str) -> Option<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.url)).json(&body).send().await.expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn wait_healthy(&self, server: &Server) {
        let deadline = Instant::now() + GENEROUS;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/healthz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("drover never became healthy; log:\n{}", server.log_tail());
    }
    async fn service(&self, name: &str) -> Value {
        match self.get(&format!("/v1/services/{name}")).await {
            Some((200, v)) => v,
            other => panic!("show {name}: {other:?}"),
        }
    }
    async fn actions(&self, name: &str) -> Vec<Value> {
        match self.get(&format!("/v1/actions?service={name}")).await {
            Some((200, Value::Array(a))) => a,
            _ => Vec::new(),
        }
    }
}

fn with_role<'a>(service: &'a Value, role: &str) -> Vec<&'a Value> {
    service["instances"].as_array().map(|i| i.iter().filter(|i| i["role"] == role).collect()).unwrap_or_default()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_interrupted_by_kill_9_completes_after_restart_without_promoting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("drover.log");
    let port = free_port();
    let mut api = Api {
        http: { drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap() },
        url: format!("http://127.0.0.1:{port}"),
    };

    let mut first = Server::spawn(&data, port, log.clone());
    api.wait_healthy(&first).await;
    api.http = common::admin_client(&data);
    let (status, created) =
        api.post("/v1/services", json!({"name": "crashy", "engine": "postgres", "followers": 1})).await;
    assert_eq!(status, 201, "{created}");

    let deadline = Instant::now() + GENEROUS;
    let before = loop {
        let s = api.service("crashy").await;
        let all =
            s["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["state"] == "available"));
        if s["state"] == "available" && all {
            break s;
        }
        assert!(Instant::now() < deadline, "never available: {s}\n{}", first.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let old_primary = id(with_role(&before, "primary")[0]);
    let old_follower = id(with_role(&before, "follower")[0]);

    let (status, body) = api.post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");

    // Kill the server while the failover's fence or promote is in flight.
    let deadline = Instant::now() + GENEROUS;
    let in_flight = loop {
        let actions = api.actions("crashy").await;
        if let Some(a) =
            actions.iter().find(|a| (a["kind"] == "fence" || a["kind"] == "promote") && a["state"] == "running")
        {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no fence/promote ever ran: {actions:#?}\n{}", first.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    first.kill9();
    eprintln!("killed drover while {} {} was running", in_flight["kind"], in_flight["id"]);

    let second = Server::spawn(&data, port, log.clone());
    api.wait_healthy(&second).await;

    let deadline = Instant::now() + GENEROUS;
    let after = loop {
        let s = api.service("crashy").await;
        let primaries = with_role(&s, "primary");
        let done = primaries.len() == 1
            && id(primaries[0]) == old_follower
            && primaries[0]["state"] == "available"
            && primaries[0]["writable"] == true
            && s["state"] == "available";
        if done {
            break s;
        }
        assert!(Instant::now() < deadline, "failover never completed after restart: {s:#}\n{}", second.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let writable: Vec<&Value> =
        after["instances"].as_array().unwrap().iter().filter(|i| i["writable"] == true).collect();
    assert_eq!(writable.len(), 1, "exactly one writable primary: {after:#}");

    let actions = api.actions("crashy").await;
    let promoted: Vec<&Value> =
        actions.iter().filter(|a| a["kind"] == "promote" && a["state"] == "succeeded").collect();
    assert_eq!(promoted.len(), 1, "exactly one successful promote: {actions:#?}");
    assert_eq!(promoted[0]["instance"], old_follower.as_str());
    drop(second);
}

/// Pages survive a kill -9 of the control plane: a page acknowledged before
/// the kill is still open and acknowledged after the restart, and a repeat of
/// its alert is deduplicated into it rather than paging anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_survive_kill_9_and_still_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("drover.log");
    let port = free_port();
    let mut api = Api {
        http: { drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap() },
        url: format!("http://127.0.0.1:{port}"),
    };
    let event = json!({
        "routing_key": "platform",
        "event_action": "trigger",
        "dedup_key": "disk-db7",
        "payload": {"summary": "disk almost full on db7", "source": "db7", "severity": "critical"}
    });

    let mut first = Server::spawn(&data, port, log.clone());
    api.wait_healthy(&first).await;
    api.http = common::admin_client(&data);
    // An Events API sender: no bearer, an integration token as routing_key.
    let key =
        common::create_token(&api.http, &api.url, json!({"name": "alerts", "role": "integration", "team": "platform"}))
            .await;
    let mut event = event;
    event["routing_key"] = key.into();
    let sender = Api { http: drover_agent::tls::client(), url: api.url.clone() };
    let (status, body) = sender.post("/v1/integrations/events-v2", event.clone()).await;
    assert_eq!(status, 202, "{body}");
    let page_id = body["page"].as_str().map(str::to_string).unwrap_or_else(|| panic!("no page id in {body}"));
    let (status, body) = api.post(&format!("/v1/pages/{page_id}/ack"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    first.kill9();

    let second = Server::spawn(&data, port, log.clone());
    api.wait_healthy(&second).await;
    let pages = match api.get("/v1/pages").await {
        Some((200, Value::Array(p))) => p,
        other => panic!("pages after restart: {other:?}\n{}", second.log_tail()),
    };
    let page = pages
        .iter()
        .find(|p| p["id"] == page_id.as_str())
        .unwrap_or_else(|| panic!("page lost by kill -9: {pages:#?}"));
    assert_eq!(page["status"], "acknowledged", "{page}");
    let (status, body) = sender.post("/v1/integrations/events-v2", event).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["page"].as_str(), Some(page_id.as_str()), "the repeat joins the same page: {body}");
    let pages = match api.get("/v1/pages").await {
        Some((200, Value::Array(p))) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(pages.iter().filter(|p| p["dedup_key"].as_str().unwrap_or("").contains("disk-db7")).count(), 1);
}
