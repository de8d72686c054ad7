//! The engine's own alerts reach on-call: partitioning several primaries of
//! a zone at once engages the mass-uncertainty brake, which opens exactly one
//! fleet-level page (not one per service); healing resolves it.

mod common;

use common::poll;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brake_engaging_opens_one_page_and_releasing_resolves_it() {
    let t = common::start().await;
    let mut primaries = Vec::new();
    for i in 0..6 {
        let name = format!("br{i}");
        t.create_service(&name, 0).await;
        let s = t.wait_available(&name, Duration::from_secs(15)).await;
        primaries.push(s["instances"][0]["id"].as_str().unwrap().to_string());
    }
    for id in &primaries {
        let (status, body) = t.post("/v1/chaos", json!({"instance": id, "fault": "partition"})).await;
        assert_eq!(status, 202, "{body}");
    }
    let page = poll(Duration::from_secs(30), "a page for the brake", || async {
        let (_, pages) = t.get("/v1/pages").await;
        pages
            .as_array()
            .and_then(|p| p.iter().find(|p| p["dedup_key"].as_str().unwrap_or("").starts_with("engine:brake")).cloned())
    })
    .await;
    assert_eq!(page["status"], "triggered", "{page}");
    let (_, pages) = t.get("/v1/pages").await;
    let engine_pages: Vec<&Value> = pages
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["dedup_key"].as_str().unwrap_or("").starts_with("engine:"))
        .collect();
    assert!(
        engine_pages.iter().all(|p| p["dedup_key"].as_str().unwrap().starts_with("engine:brake")),
        "only brake pages, no page per service: {engine_pages:#?}"
    );
    for id in &primaries {
        t.post("/v1/chaos", json!({"instance": id, "fault": "heal"})).await;
    }
    let id = page["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(30), "the brake page resolved", || async {
        let (_, pages) = t.get("/v1/pages").await;
        pages.as_array().and_then(|p| p.iter().find(|p| p["id"] == id.as_str() && p["status"] == "resolved").cloned())
    })
    .await;
}
