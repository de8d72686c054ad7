//! Service labels and rollouts that select by them, through the HTTP API;
//! owners told ahead of a rollout's move in their team's chat (a real HTTP
//! receiver) and in the event feed, with no page.

mod common;

use common::receiver::Receiver;
use serde_json::{json, Value};
use std::time::Duration;

fn oncall_toml(receiver: &str) -> String {
    format!(
        r#"
default_team = "platform"

[delivery]
secret = "test-secret"
attempts = 2
backoff = "50ms"

[incident_commanders]
rotation = ["dave"]

[[people]]
name = "dave"
webhook = "{receiver}/dave"

[[teams]]
name = "platform"
manager = "alice"
chat = {{ slack = "{receiver}/chat" }}

[[teams.people]]
name = "alice"
webhook = "{receiver}/alice"

[[teams.schedules]]
name = "level1"
rotation = ["alice"]

[[teams.escalation]]
target = "bot"
timeout = "1h"
[[teams.escalation]]
target = "schedule:level1"
timeout = "1h"
"#
    )
}

async fn put(t: &common::TestServer, path: &str, body: Value) -> (u16, Value) {
    t.http.put(t.at(path)).json(&body).send().await.map(common::split).unwrap().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_set_checked_and_audited_and_a_label_selector_moves_only_matching_services_with_owners_told() {
    let (receiver, url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oncall.toml"), oncall_toml(&url)).unwrap();
    let mut t = common::start_in(dir, |_| {}).await;

    let (status, gold) = t
        .post("/v1/services", json!({"name": "gold", "engine": "postgres", "followers": 1, "labels": {"tier": "gold", "app.example.com/owner": "billing"}}))
        .await;
    assert_eq!(status, 201, "{gold}");
    assert_eq!(gold["labels"], json!({"tier": "gold", "app.example.com/owner": "billing"}));
    t.create_service("plain", 1).await;
    for bad in [json!({"tier": "gold plated"}), json!({"": "x"}), json!({"tier": "x".repeat(64)}), json!({"tier": 3})] {
        let (status, body) =
            t.post("/v1/services", json!({"name": "bad", "engine": "postgres", "labels": bad.clone()})).await;
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = put(&t, "/v1/services/plain/labels", json!({"labels": {"tier": "gold plated"}})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("label value"), "{body}");
    let (status, _) = put(&t, "/v1/services/nosuch/labels", json!({"labels": {"tier": "gold"}})).await;
    assert_eq!(status, 404);
    let (status, plain) = put(&t, "/v1/services/plain/labels", json!({"labels": {"tier": "silver"}})).await;
    assert_eq!((status, &plain["labels"]), (200, &json!({"tier": "silver"})), "{plain}");
    assert_eq!(t.service("plain").await["labels"], json!({"tier": "silver"}));
    let (_, audit) = t.get("/v1/audit").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["command"] == "services.labels" && a["target"] == "plain" && a["outcome"] == "ok"),
        "{audit}"
    );

    // The OpenAPI document says what the API takes.
    let (_, doc) = t.get("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["CreateService"]["properties"]["labels"].is_object(), "{}", schemas["CreateService"]);
    assert!(schemas["Selector"]["properties"]["labels"].is_object(), "{}", schemas["Selector"]);
    assert!(schemas["ServiceView"]["properties"]["labels"].is_object());
    assert!(doc["paths"]["/v1/services/{name}/labels"]["put"].is_object());

    t.wait_available("gold", Duration::from_secs(20)).await;
    t.wait_available("plain", Duration::from_secs(20)).await;
    let (_, image) = t.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "16MB"}})).await;
    let to = image["id"].as_str().unwrap().to_string();
    let (status, r) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"labels": {"tier": "gold"}}, "waves": [100], "soak_seconds": 1}),
        )
        .await;
    assert_eq!((status, r["total"].as_u64()), (201, Some(1)), "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    common::poll(Duration::from_secs(60), "the rollout succeeds", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    let plain = t.service("plain").await;
    assert!(plain["instances"].as_array().unwrap().iter().all(|i| i["image"] != to.as_str()), "{plain}");

    // Told once, in the feed, with the window's start (no window: now).
    let told: Vec<Value> =
        t.events("service=gold").await.into_iter().filter(|e| e["kind"]["type"] == "maintenance_scheduled").collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["kind"]["rollout"], rid.as_str());
    assert!(told[0]["kind"]["window_start"].is_string(), "{told:?}");
    assert_eq!(told[0]["team"], "platform");
    // And in the team's chat, through the pager's delivery; no page.
    let chat = common::poll(Duration::from_secs(20), "the chat post", || async {
        let got = receiver.at("/chat");
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(chat.len(), 1, "{chat:?}");
    let text = chat[0]["text"].as_str().unwrap();
    assert!(text.contains("Maintenance scheduled") && text.contains("gold") && text.contains(&rid), "{text}");
    assert!(!text.contains("Acknowledge"), "information, nothing to acknowledge: {text}");
    let (_, pages) = t.get("/v1/pages").await;
    assert_eq!(pages.as_array().map(Vec::len), Some(0), "no page: {pages}");
    assert!(receiver.at("/alice").is_empty() && receiver.at("/dave").is_empty(), "nobody paged");
    t.stop().await;
}
