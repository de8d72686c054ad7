//! The dashboard and the status site in a real browser: Debian's Chromium
//! driven by Playwright (`tests/ui/browser.py`, its `executable_path` the
//! system Chromium; nothing downloaded). A person logs in with a token,
//! watches a service page while its primary is crashed and sees the
//! failover appear without reloading, acknowledges a page with its button,
//! and finds an incident update on the public status page without logging
//! in. Screenshots of each view are kept in the test's artifacts folder
//! (`DROVER_SCREENSHOTS` names a folder to keep them in, e.g.
//! `docs/screenshots`).

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
    for step in ["logged in", "failover seen on the page", "page acknowledged", "status page shows the update"] {
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
    for view in ["login", "overview", "service", "pages", "status", "service-phone"] {
        let file = artifacts.join(format!("{view}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "screenshot {} missing or empty", file.display());
    }
}
