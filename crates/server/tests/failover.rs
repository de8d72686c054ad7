//! Failover behaviour end to end: real HTTP, the real engine, the sim
//! provider, fast timings (uncertain after 400 ms, beats every 100 ms).

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::time::Duration;

const GENEROUS: Duration = Duration::from_secs(30);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_fails_over_to_its_follower_and_a_new_follower_is_built() {
    let mut t = common::start().await;
    t.create_service("fo", 1).await;
    let before = t.wait_available("fo", Duration::from_secs(15)).await;
    let old_primary = id(&primary(&before));
    let old_follower = id(&followers(&before)[0]);

    let (status, action) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{action}");

    let after = poll(GENEROUS, "follower promoted and a new follower available", || async {
        let s = t.service("fo").await;
        let p = primary(&s);
        let new_followers: Vec<Value> =
            followers(&s).into_iter().filter(|f| id(f) != old_primary && f["state"] == "available").collect();
        (id(&p) == old_follower && p["state"] == "available" && !new_followers.is_empty()).then_some(s)
    })
    .await;
    let writable: Vec<Value> =
        after["instances"].as_array().unwrap().iter().filter(|i| i["writable"] == true).cloned().collect();
    assert!(writable.len() <= 1, "more than one writable instance: {after}");

    let events = t.events(&format!("instance={old_primary}")).await;
    let lost: Vec<&Value> = events.iter().filter(|e| e["to"] == "uncertain" || e["to"] == "unavailable").collect();
    assert!(lost.iter().any(|e| e["to"] == "unavailable"), "the crashed primary never became unavailable: {events:#?}");
    assert!(
        lost.iter().all(|e| !e["cause"].as_str().unwrap_or_default().is_empty()),
        "a transition without a cause: {lost:#?}"
    );

    let (_, actions) = t.get("/v1/actions?service=fo").await;
    let promotes: Vec<&Value> =
        actions.as_array().unwrap().iter().filter(|a| a["kind"] == "promote" && a["state"] == "succeeded").collect();
    assert_eq!(promotes.len(), 1, "{actions:#}");
    assert_eq!(promotes[0]["instance"], old_follower.as_str());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_is_uncertain_but_not_failed_over() {
    let mut t = common::start().await;
    t.create_service("part", 1).await;
    let before = t.wait_available("part", Duration::from_secs(15)).await;
    let old_primary = id(&primary(&before));

    let (status, action) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "partition"})).await;
    assert_eq!(status, 202, "{action}");

    poll(GENEROUS, "partitioned primary uncertain", || async {
        let (_, i) = t.get(&format!("/v1/instances/{old_primary}")).await;
        (i["state"] == "uncertain").then_some(())
    })
    .await;

    // Five uncertain_after periods: silence alone must not cause a failover
    // while the follower still streams from the primary.
    tokio::time::sleep(Duration::from_millis(5 * 400)).await;
    let s = t.service("part").await;
    assert_eq!(id(&primary(&s)), old_primary, "failed over on silence alone: {s}");
    let (_, i) = t.get(&format!("/v1/instances/{old_primary}")).await;
    assert_eq!(i["state"], "uncertain", "{i}");
    let (_, actions) = t.get("/v1/actions?service=part").await;
    assert!(
        !actions.as_array().unwrap().iter().any(|a| a["kind"] == "promote" || a["kind"] == "fence"),
        "a destructive remedy ran on silence alone: {actions:#}"
    );

    let (status, _) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "heal"})).await;
    assert_eq!(status, 202);
    t.wait_available("part", GENEROUS).await;
    let events = t.events(&format!("instance={old_primary}")).await;
    assert!(
        events.iter().any(|e| e["to"] == "uncertain" && !e["cause"].as_str().unwrap_or_default().is_empty()),
        "{events:#?}"
    );
    t.stop().await;
}
