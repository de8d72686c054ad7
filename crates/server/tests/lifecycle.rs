//! The software lifecycle board: a stage move with open required items is
//! refused with the list of what is missing; with the evidence in place
//! (links, a person's attestations, the dependent service's checks and a
//! verified restore test) it succeeds. Backstage's catalog-info.yaml goes
//! out and comes back with owner, lifecycle and links intact.

mod common;

use common::poll;
use serde_json::{json, Value};
use std::time::Duration;

fn open_items(body: &Value) -> Vec<String> {
    body["open"].as_array().unwrap().iter().map(|i| i["item"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_refuses_with_what_is_missing_and_passes_once_the_evidence_is_in() {
    let t = common::start().await;
    let (status, c) = t
        .post(
            "/v1/components",
            json!({"name": "pgbouncer", "owner": "platform", "stage": "development", "packages": ["pgbouncer"],
                   "links": [{"title": "code", "url": "https://git.example/pgbouncer", "kind": "repository"}]}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["next"]["to"], "production");
    let (status, _) = t.post("/v1/components", json!({"name": "pgbouncer", "owner": "x"})).await;
    assert_eq!(status, 409);
    // A service that depends on it, by label.
    let (status, s) = t
        .post(
            "/v1/services",
            json!({"name": "pool1", "engine": "postgres", "followers": 0, "labels": {"component": "pgbouncer"}}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    t.wait_available("pool1", Duration::from_secs(15)).await;
    let (_, list) = t.get("/v1/components").await;
    assert_eq!(list[0]["services"], json!(["pool1"]), "{list}");

    let (status, refused) = t.post("/v1/components/pgbouncer/stage", json!({"to": "production"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(open_items(&refused), ["docs", "logging", "backups", "runbook"], "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("docs"), "{refused}");
    let backups = refused["open"].as_array().unwrap().iter().find(|i| i["item"] == "backups").unwrap();
    assert!(backups["why"].as_str().unwrap().contains("pool1"), "{backups}");
    let (_, c) = t.get("/v1/components").await;
    assert_eq!(c[0]["stage"], "development", "nothing moved");
    // Skipping a stage is refused too.
    let (status, _) = t.post("/v1/components/pgbouncer/stage", json!({"to": "deprecated"})).await;
    assert_eq!(status, 409);

    // The evidence: links by a catalog import (attestations kept), a person's word, a verified restore test.
    let yaml = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: pgbouncer\n  links:\n    - url: https://git.example/pgbouncer\n      title: code\n      type: repository\n    - url: https://docs.example/pgbouncer\n      title: ops\n      type: docs\n    - url: https://docs.example/pgbouncer/playbook\n      title: playbook\n      type: playbook\n  annotations:\n    drover.dev/packages: pgbouncer\nspec:\n  type: service\n  lifecycle: development\n  owner: group:default/platform\n";
    let (status, outcome) = t.post("/v1/catalog/import", json!({"yaml": yaml})).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["updated"], json!(["pgbouncer"]));
    for item in ["logging", "runbook"] {
        let (status, body) = t.post("/v1/components/pgbouncer/attest", json!({"item": item, "note": "checked"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = t.post("/v1/components/pgbouncer/attest", json!({"item": "checks"})).await;
    assert_eq!(status, 422, "an automatic item cannot be attested: {body}");
    let (status, _) = t.post("/v1/services/pool1/backups", json!({})).await;
    assert!(status == 200 || status == 202, "{status}");
    poll(Duration::from_secs(20), "a backup", || async {
        let s = t.service("pool1").await;
        s["backups"]["last_backup_at"].as_str().map(|_| ())
    })
    .await;
    let (status, _) = t.post("/v1/services/pool1/backups/verify", json!({})).await;
    assert!(status == 200 || status == 202, "{status}");
    poll(Duration::from_secs(20), "a passed restore test", || async {
        let s = t.service("pool1").await;
        (s["backups"]["last_verify_ok"] == true).then_some(())
    })
    .await;
    let (status, moved) = t.post("/v1/components/pgbouncer/stage", json!({"to": "production"})).await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["stage"], "production");
    assert_eq!(moved["history"][0]["by"], "admin");
    assert_eq!(moved["attestations"].as_array().unwrap().len(), 2, "attestations survived the import");
    // Going back needs no gate.
    let (status, _) = t.post("/v1/components/pgbouncer/stage", json!({"to": "development"})).await;
    assert_eq!(status, 200);
    let (status, _) = t.post("/v1/components/nothing/stage", json!({"to": "development"})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstage_catalog_info_round_trips_owner_lifecycle_and_links() {
    let a = common::start().await;
    let yaml = r#"
apiVersion: backstage.io/v1alpha1
kind: System
metadata:
  name: data-platform
spec:
  owner: platform
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: pgbackrest
  description: Backups and restore tests
  links:
    - url: https://github.com/pgbackrest/pgbackrest
      title: Source
      type: repository
    - url: https://pgbackrest.org/user-guide.html
      title: User guide
      type: docs
spec:
  type: service
  lifecycle: production
  owner: group:default/storage
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: old-exporter
spec:
  type: service
  lifecycle: experimental
  owner: observability
"#;
    let (status, outcome) = a.post("/v1/catalog/import", json!({"yaml": yaml})).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!((outcome["created"].as_array().unwrap().len(), outcome["skipped"].as_u64()), (2, Some(1)), "{outcome}");
    let (_, list) = a.get("/v1/components").await;
    let old = list.as_array().unwrap().iter().find(|c| c["name"] == "old-exporter").unwrap();
    assert_eq!(old["stage"], "prototype", "Backstage's experimental is a prototype");

    let r = a.http.get(a.at("/v1/catalog/export")).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/yaml"));
    let exported = r.text().await.unwrap();
    assert!(exported.contains("lifecycle: production") && exported.contains("owner: storage"), "{exported}");

    // Into another control plane: the same owner, stage and links.
    let b = common::start().await;
    let (status, outcome) = b.post("/v1/catalog/import", json!({"yaml": exported})).await;
    assert_eq!(status, 200, "{outcome}");
    let (_, again) = b.get("/v1/components").await;
    let keep = |list: &Value| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| json!([c["name"], c["owner"], c["stage"], c["description"], c["links"]]))
            .collect()
    };
    assert_eq!(keep(&again), keep(&list));

    // Bad files are refused whole, with what is wrong.
    for (bad, says) in [
        ("kind: [", "not YAML"),
        ("apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\nspec:\n  owner: a\n", "lifecycle"),
        ("apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: x\nspec:\n  owner: a\n  lifecycle: retired\n", "not a stage"),
    ] {
        let (status, body) = b.post("/v1/catalog/import", json!({"yaml": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
}
