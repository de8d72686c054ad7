//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`)
//! sends its webhooks to Drover: one page per alert group, its repeats
//! deduplicated, and its resolved notification closes the page.

mod common;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BINARIES: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];

/// Alertmanager, stopped (and reaped) when dropped, also when a test fails.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary() -> Option<&'static str> {
    BINARIES
        .into_iter()
        .find(|b| Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

/// Alertmanager sends `token` (an integration token) as its bearer credential.
async fn start_alertmanager(receiver: &str, token: &str) -> Alertmanager {
    let binary = binary().expect(
        "prometheus-alertmanager is not installed: apt-get install prometheus-alertmanager (scripts/lib.sh installs it)",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    // Short waits so the test runs in seconds; send_resolved closes pages.
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: drover\n  group_by: ['alertname', 'service']\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 3s\n\
             receivers:\n  - name: drover\n    webhook_configs:\n      - url: '{receiver}/v1/integrations/alertmanager'\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials: '{token}'\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("alertmanager starts");
    let am = Alertmanager { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
    let http = drover_agent::tls::client();
    common::poll(Duration::from_secs(20), "alertmanager ready", || async {
        http.get(format!("{}/-/ready", am.url)).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    am
}

fn rfc3339(offset: Duration, past: bool) -> String {
    let now = jiff::Timestamp::now();
    let span = jiff::SignedDuration::try_from(offset).unwrap();
    if past { now - span } else { now + span }.to_string()
}

/// Posts alerts to Alertmanager's API, as Prometheus does.
async fn post_alerts(am: &Alertmanager, alerts: Value) {
    let r = drover_agent::tls::client().post(format!("{}/api/v2/alerts", am.url)).json(&alerts).send().await.unwrap();
    assert!(r.status().is_success(), "alertmanager refused alerts: {}", r.status());
}

fn alert(name: &str, service: &str, instance: &str, ends_in: Option<Duration>) -> Value {
    json!({
        "labels": {"alertname": name, "service": service, "instance": instance, "team": "platform", "severity": "critical"},
        "annotations": {"summary": format!("{name} on {service}")},
        "startsAt": rfc3339(Duration::from_secs(60), true),
        "endsAt": match ends_in { Some(d) => rfc3339(d, false), None => rfc3339(Duration::from_secs(1), true) },
    })
}

async fn alertmanager_pages(t: &common::TestServer) -> Vec<Value> {
    let (status, pages) = t.get("/v1/pages").await;
    assert_eq!(status, 200, "{pages}");
    pages.as_array().unwrap().iter().filter(|p| p["origin"] == "alertmanager").cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_groups_become_one_page_each_repeats_deduplicate_and_resolve_closes() {
    let mut t = common::start().await;
    let am = start_alertmanager(&t.url, &t.integration_token("platform").await).await;
    let firing = Some(Duration::from_secs(3600));

    // Two groups: DiskFull on orders (two instances), ReplicationLag on users.
    post_alerts(
        &am,
        json!([
            alert("DiskFull", "orders", "orders-1", firing),
            alert("DiskFull", "orders", "orders-2", firing),
            alert("ReplicationLag", "users", "users-1", firing),
        ]),
    )
    .await;
    let pages = common::poll(Duration::from_secs(30), "two pages from alertmanager", || async {
        let pages = alertmanager_pages(&t).await;
        (pages.len() == 2).then_some(pages)
    })
    .await;
    for p in &pages {
        assert_eq!(p["status"], "triggered", "{p}");
        assert_eq!(p["team"], "platform");
        assert!(p["dedup_key"].as_str().unwrap().starts_with("alertmanager:"), "{p}");
        assert!(p["id"].is_string() && p["level"].is_u64() && p["summary"].is_string(), "{p}");
    }
    let disk = pages.iter().find(|p| p["summary"] == "DiskFull on orders").expect("DiskFull page").clone();
    assert_eq!(disk["details"]["alerts"], 2, "both instances in one group: {disk}");

    // Prometheus keeps re-sending; Alertmanager repeats its notifications
    // every repeat_interval. Still two pages, the repeats counted on them.
    for _ in 0..3 {
        post_alerts(
            &am,
            json!([
                alert("DiskFull", "orders", "orders-1", firing),
                alert("ReplicationLag", "users", "users-1", firing)
            ]),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let pages = common::poll(Duration::from_secs(20), "repeats deduplicated", || async {
        let pages = alertmanager_pages(&t).await;
        pages.iter().all(|p| p["alerts"].as_u64().unwrap() >= 2).then_some(pages)
    })
    .await;
    assert_eq!(pages.len(), 2, "repeats opened new pages: {pages:?}");

    // The disk alerts end: Alertmanager sends the group resolved.
    post_alerts(
        &am,
        json!([alert("DiskFull", "orders", "orders-1", None), alert("DiskFull", "orders", "orders-2", None)]),
    )
    .await;
    let id = disk["id"].as_str().unwrap().to_string();
    let resolved = common::poll(Duration::from_secs(30), "DiskFull page resolved", || async {
        let (_, p) = t.get(&format!("/v1/pages/{id}")).await;
        (p["status"] == "resolved").then_some(p)
    })
    .await;
    assert_eq!(resolved["resolved_by"], "alertmanager");
    let transitions: Vec<&str> =
        resolved["transitions"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(transitions.first(), Some(&"triggered"));
    assert_eq!(transitions.last(), Some(&"resolved"));
    let open = alertmanager_pages(&t).await.into_iter().filter(|p| p["status"] != "resolved").count();
    assert_eq!(open, 1, "ReplicationLag still open");

    drop(am);
    t.stop().await;
}
