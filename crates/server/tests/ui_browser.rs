//! The dashboard and the status site in a real browser: Debian's Chromium
//! driven by Playwright (`tests/ui/browser.py`, its `executable_path` the
//! system Chromium; nothing downloaded). A person logs in with a token,
//! watches a service page while its primary is crashed and sees the
//! failover appear without reloading, acknowledges a page with its button,
//! looks at the pager's weekly chart, declares an incident from the
//! dashboard, posts an update and a note there, and finds the update (not
//! the note) on the public status page without logging in. Screenshots of
//! each view are kept in the test's artifacts folder (`DROVER_SCREENSHOTS`
//! names a folder to keep them in, e.g. `docs/screenshots`).

mod common;

use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_watches_a_failover_acknowledges_a_page_and_sees_the_status_site() {
    let t = common::start().await;
    t.create_service("web1", 1).await;
    t.wait_available("web1", Duration::from_secs(20)).await;
    let key = t.integration_token("platform").await;
    let summary = "replication lag over 1 GB on web1";
    let (status, body) = t
        .post_as(
            None,
            "/v1/integrations/events-v2",
            json!({"routing_key": key, "event_action": "trigger", "dedup_key": "lag-web1",
                   "payload": {"summary": summary, "source": "exporter", "severity": "critical"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // The advisory fixtures, so the images view shows the CVE audit's finding.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap() {
                serde_json::Value::Array(items) => records.extend(items),
                one => records.push(one),
            }
        }
    }
    let (status, report) = t.post("/v1/advisories", serde_json::Value::Array(records)).await;
    assert_eq!(status, 201, "{report}");
    let artifacts = match std::env::var_os("DROVER_SCREENSHOTS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => t.dir.path().join("screenshots"),
    };
    std::fs::create_dir_all(&artifacts).unwrap();
    let token = common::admin_token(t.dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.py");
    let (url, s, a) = (t.url.clone(), summary.to_string(), artifacts.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args([url.as_str(), token.as_str(), "web1", s.as_str()]).arg(&a).output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the browser run failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "logged in",
        "failover seen on the page",
        "page acknowledged",
        "pager chart seen",
        "incident update posted from the dashboard",
        "status page shows the update",
    ] {
        assert!(stdout.contains(step), "step {step:?} missing: {stdout}");
    }
    // What the browser did, as the API sees it.
    let (_, pages) = t.get("/v1/pages").await;
    let page = pages.as_array().unwrap().iter().find(|p| p["summary"] == summary).expect("the page").clone();
    assert_eq!(page["status"], "acknowledged", "{page}");
    assert_eq!(page["acknowledged_by"], "admin", "{page}");
    let service = t.service("web1").await;
    assert!(
        service["instances"].as_array().unwrap().iter().any(|i| i["writable"] == true),
        "a writable primary after the failover: {service}"
    );
    // The incident the browser declared: its commander paged, its update by the session's person.
    let (_, incidents) = t.get("/v1/incidents").await;
    let drill =
        incidents.as_array().unwrap().iter().find(|i| i["title"] == "Failover drill in zone a").expect("declared");
    assert_eq!(
        (drill["status"].as_str(), drill["declared_by"].as_str()),
        (Some("monitoring"), Some("admin")),
        "{drill}"
    );
    assert!(drill["commander_page"].is_string(), "{drill}");
    assert_eq!(drill["notes"][0]["message"], "Drill run by the browser test.", "{drill}");
    for view in [
        "login",
        "overview",
        "service",
        "pages",
        "pager",
        "runbooks",
        "images",
        "incidents",
        "incident",
        "status",
        "service-phone",
    ] {
        let file = artifacts.join(format!("{view}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "screenshot {} missing or empty", file.display());
    }
}
