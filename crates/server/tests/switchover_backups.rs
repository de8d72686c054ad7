//! Switchover and backups through the HTTP API on the sim provider.

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::time::Duration;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_moves_the_primary_to_the_follower_and_refuses_when_impossible() {
    let t = common::start().await;
    t.create_service("sw", 1).await;
    let before = t.wait_available("sw", Duration::from_secs(15)).await;
    let old_primary = id(&primary(&before));
    let follower = id(&followers(&before)[0]);

    let (status, body) = t.post("/v1/services/sw/switchover", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let after = poll(Duration::from_secs(30), "switchover done and a new follower available", || async {
        let s = t.service("sw").await;
        let fs = followers(&s);
        (id(&primary(&s)) == follower && s["state"] == "available" && fs.len() == 1 && id(&fs[0]) != old_primary)
            .then_some(s)
    })
    .await;
    assert_eq!(after["instances"].as_array().unwrap().iter().filter(|i| i["writable"] == true).count(), 1);

    t.create_service("solo", 0).await;
    t.wait_available("solo", Duration::from_secs(15)).await;
    let (status, body) = t.post("/v1/services/solo/switchover", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("follower"), "{body}");
    let (status, _) = t.post("/v1/services/nope/switchover", json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restore_tests_on_demand_are_recorded_on_the_service() {
    let t = common::start().await;
    t.create_service("bk", 1).await;
    t.wait_available("bk", Duration::from_secs(15)).await;
    let (status, checks) = t.get("/v1/services/bk/checks").await;
    assert_eq!(status, 200, "{checks}");
    assert_eq!(checks["backups"]["status"], "crit", "no backup yet is a finding: {checks}");
    assert!(checks["backups"]["last_backup_at"].is_null());
    assert_eq!(checks["replication"]["status"], "ok", "{checks}");
    assert_eq!(checks["security"]["status"], "unknown");
    assert_eq!(checks["performance"]["status"], "unknown");
    let (status, _) = t.get("/v1/services/nope/checks").await;
    assert_eq!(status, 404);
    let (status, action) = t.post("/v1/services/bk/backups", json!({})).await;
    assert_eq!(status, 202, "{action}");
    assert_eq!(action["kind"], "backup");
    poll(Duration::from_secs(10), "backup recorded", || async {
        let s = t.service("bk").await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    let (status, action) = t.post("/v1/services/bk/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{action}");
    assert_eq!(action["kind"], "verify_restore");
    let s = poll(Duration::from_secs(10), "restore test recorded", || async {
        let s = t.service("bk").await;
        (s["backups"]["last_verify_ok"] == true).then_some(s)
    })
    .await;
    assert!(!s["backups"]["last_verified_restore_at"].is_null());
    let (_, checks) = t.get("/v1/services/bk/checks").await;
    assert_eq!(checks["backups"]["status"], "ok", "fresh and verified: {checks}");
    assert!(!checks["backups"]["last_verified_restore_at"].is_null());
    let events = t.events("service=bk").await;
    assert!(events.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("restore test passed")), "{events:#?}");
}
