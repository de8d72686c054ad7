//! Break-glass runbooks and the CVE audit through the real server (sim
//! provider): a dangerous runbook does nothing until a second person
//! approves, the requester cannot approve, a dry run changes nothing; a
//! freeze by hand holds the remedies until it is released; the audit of
//! the shipped OSV fixtures lists what affects the running images.

mod common;

use common::{poll, primary};
use serde_json::{json, Value};
use std::time::Duration;

async fn actions_of(t: &common::TestServer, kind: &str) -> usize {
    let (status, actions) = t.get("/v1/actions?limit=10000").await;
    assert_eq!(status, 200);
    // An action's kind is flattened into it: `{"kind": "fence", "immediate": …}`.
    actions.as_array().unwrap().iter().filter(|a| a["kind"] == kind).count()
}

fn runbook_events<'a>(events: &'a [Value], run: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"]["type"] == "runbook" && e["kind"]["run"] == run).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangerous_runbook_does_nothing_until_a_second_person_approves_and_its_dry_run_changes_nothing() {
    let mut t = common::start().await;
    t.create_service("fo", 1).await;
    let before = t.wait_available("fo", Duration::from_secs(30)).await;
    let old_primary = primary(&before)["id"].clone();
    let alice = t.token(json!({"name": "alice", "role": "operator"})).await;
    let bob = t.token(json!({"name": "bob", "role": "operator"})).await;
    let fences = actions_of(&t, "fence").await;

    let (status, list) = t.get_as(Some(&alice), "/v1/runbooks").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    for want in ["freeze-automation", "release-automation", "force-failover", "rebuild-follower"] {
        assert!(names.contains(&want), "{want} listed: {names:?}");
    }

    // A dry run: the plan, nothing else.
    let body = json!({"params": {"service": "fo"}, "dry_run": true});
    let (status, dry) = t.post_as(Some(&alice), "/v1/runbooks/force-failover/runs", body).await;
    assert_eq!(status, 201, "{dry}");
    assert_eq!(dry["state"], "planned");
    assert_eq!(dry["plan"], json!([{"command": "services.failover", "target": "fo", "outcome": null}]));

    // The real run waits for a second person.
    let (status, run) =
        t.post_as(Some(&alice), "/v1/runbooks/force-failover/runs", json!({"params": {"service": "fo"}})).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["state"], "awaiting_approval");
    let id = run["id"].as_str().unwrap().to_string();
    let approve = format!("/v1/runbooks/runs/{id}/approve");

    // The requester cannot approve her own run.
    let (status, refused) = t.post_as(Some(&alice), &approve, json!({})).await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("another person"), "{refused}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(actions_of(&t, "fence").await, fences, "neither the dry run nor the unapproved run fenced anything");
    assert_eq!(primary(&t.service("fo").await)["id"], old_primary);
    let (_, shown) = t.get(&format!("/v1/runbooks/runs/{id}")).await;
    assert_eq!(shown["state"], "awaiting_approval");

    // Bob approves: the failover runs, audited under him.
    let (status, done) = t.post_as(Some(&bob), &approve, json!({})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["approved_by"], "bob");
    assert_eq!(done["plan"][0]["outcome"], "ok");
    poll(Duration::from_secs(30), "the follower promoted", || async {
        let s = t.service("fo").await;
        let p = primary(&s);
        (p["id"] != old_primary && p["state"] == "available").then_some(())
    })
    .await;
    let (status, _) = t.post_as(Some(&bob), &approve, json!({})).await;
    assert_eq!(status, 409, "a run is approved once");

    // Every state is in the feed, every step in the audit trail.
    let events = t.events("limit=10000").await;
    let states: Vec<&str> = runbook_events(&events, &id).iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(states, ["awaiting_approval", "running", "succeeded"]);
    assert_eq!(runbook_events(&events, dry["id"].as_str().unwrap()).len(), 1);
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let failover: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|a| a["command"] == "services.failover").collect();
    assert_eq!(failover.len(), 1);
    assert_eq!((failover[0]["actor"].as_str(), failover[0]["outcome"].as_str()), (Some("bob"), Some("ok")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automation_frozen_by_hand_holds_a_failover_until_released() {
    let mut t = common::start().await;
    t.create_service("fz", 1).await;
    let s = t.wait_available("fz", Duration::from_secs(30)).await;
    let old = primary(&s);
    let bob = t.token(json!({"name": "bob", "role": "operator"})).await;

    // Requested by the admin, approved by bob: the whole fleet frozen.
    let (status, run) = t.post("/v1/runbooks/freeze-automation/runs", json!({"params": {"scope": "fleet"}})).await;
    assert_eq!(status, 202, "{run}");
    let (status, done) =
        t.post_as(Some(&bob), &format!("/v1/runbooks/runs/{}/approve", run["id"].as_str().unwrap()), json!({})).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("succeeded")), "{done}");

    let (status, _) = t.post("/v1/chaos", json!({"instance": old["id"], "fault": "crash"})).await;
    assert!((200..300).contains(&status), "{status}");
    // Well past uncertain_after, probes and presumed_dead_after (5 s here).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let s = t.service("fz").await;
    assert_eq!(primary(&s)["id"], old["id"], "frozen: no failover ({s})");
    assert_eq!(actions_of(&t, "promote").await, 0);

    // Release (not dangerous: runs at once): the failover goes ahead.
    let (status, released) =
        t.post("/v1/runbooks/release-automation/runs", json!({"params": {"scope": "fleet"}})).await;
    assert_eq!((status, released["state"].as_str()), (201, Some("succeeded")), "{released}");
    poll(Duration::from_secs(30), "failover after the release", || async {
        let s = t.service("fz").await;
        (primary(&s)["id"] != old["id"] && primary(&s)["state"] == "available").then_some(())
    })
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_of_the_shipped_fixtures_lists_only_what_affects_the_running_images() {
    let mut t = common::start().await;
    t.create_service("cve", 1).await;
    t.wait_available("cve", Duration::from_secs(30)).await;

    let (_, status) = t.get("/v1/advisories").await;
    assert_eq!((status["records"].as_u64(), status["stale"].as_bool()), (Some(0), Some(true)), "{status}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap() {
                Value::Array(items) => records.extend(items),
                one => records.push(one),
            }
        }
    }
    // One record alone is accepted too; a bad one is refused with its id.
    let (status, one) = t.post("/v1/advisories?fetched_at=2026-01-01T00:00:00Z", records[0].clone()).await;
    assert_eq!((status, one["stale"].as_bool()), (201, Some(true)), "{one}");
    let mut bad = records[0].clone();
    bad["modified"] = json!("last tuesday");
    let (status, err) = t.post("/v1/advisories", json!([bad])).await;
    assert_eq!(status, 400, "{err}");

    let records_again = Value::Array(records.clone());
    let (status, report) = t.post("/v1/advisories", Value::Array(records)).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!((report["imported"].as_u64(), report["withdrawn"].as_u64()), (Some(8), Some(1)));

    // The sim image has openssl 3.0.17: DSA-6090-1 (fixed in 3.0.19-1~deb12u3)
    // affects it; the old fix, the withdrawn record and the 3.1 regression do
    // not; nothing else it holds is named by the fixtures.
    let (status, audit) = t.get("/v1/advisories/audit").await;
    assert_eq!(status, 200, "{audit}");
    let findings = audit.as_array().unwrap();
    let ids: Vec<&str> = findings.iter().map(|f| f["advisory"].as_str().unwrap()).collect();
    assert_eq!(ids, ["DSA-6090-1"], "{audit}");
    let f = &findings[0];
    assert_eq!((f["package"].as_str(), f["installed"].as_str()), (Some("openssl"), Some("3.0.17")));
    assert_eq!(f["fixed"], "3.0.19-1~deb12u3");
    assert_eq!(f["services"], json!(["cve"]));
    assert_eq!(f["instances"], 2);
    assert_eq!(f["owners"], json!(["platform"]));

    // Staleness is a finding of its own: the newest fixture was modified
    // on 2026-11-20, more than two days before now, so the database (and
    // the audit's header) says stale until fresh data is imported.
    let stale_header = |t: &common::TestServer| {
        let url = t.at("/v1/advisories/audit");
        let http = t.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["drover-advisories-stale"].to_str().unwrap().to_string()
        }
    };
    let (_, db) = t.get("/v1/advisories").await;
    assert_eq!(db["stale"], true, "{db}");
    assert!(db["fetched_at"].as_str().unwrap().starts_with("2026-11-20"), "{db}");
    assert_eq!(stale_header(&t).await, "true");
    let fresh = jiff::Timestamp::now().to_string();
    let (status, report) = t.post(&format!("/v1/advisories?fetched_at={fresh}"), records_again).await;
    assert_eq!((status, report["stale"].as_bool()), (201, Some(false)), "{report}");
    let (_, db) = t.get("/v1/advisories").await;
    assert_eq!((db["stale"].as_bool(), db["records"].as_u64()), (Some(false), Some(8)), "{db}");
    assert_eq!(stale_header(&t).await, "false");
    t.stop().await;
}

/// The restore runbook (issue 12): not dangerous, so it runs at once for an
/// operator; refused while the source has no backup (the run fails and
/// creates nothing); with a backup, a new service with the source's plan,
/// as of the moment given, which becomes available; a bad moment is a 400
/// before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_runbook_forks_a_service_into_a_new_one_as_of_a_moment() {
    let mut t = common::start().await;
    t.create_service("orders", 1).await;
    t.wait_available("orders", Duration::from_secs(30)).await;
    let path = "/v1/runbooks/restore-into-new-service/runs";

    let (status, bad) =
        t.post(path, json!({"params": {"service": "orders", "name": "orders-copy", "at": "yesterday"}})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("invalid timestamp"), "{bad}");

    let (status, refused) = t.post(path, json!({"params": {"service": "orders", "name": "orders-copy"}})).await;
    assert_eq!(status, 201, "{refused}");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["plan"][0]["outcome"].as_str().unwrap().contains("no backup"), "{refused}");
    let (status, _) = t.get("/v1/services/orders-copy").await;
    assert_eq!(status, 404, "a refused restore creates nothing");

    let (status, body) = t.post("/v1/services/orders/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(Duration::from_secs(30), "backup recorded", || async {
        let s = t.service("orders").await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    let at = "2026-01-01T00:00:00.5Z";
    let params = json!({"params": {"service": "orders", "name": "orders-copy", "at": at}});
    let (status, dry) = t.post(path, json!({"params": params["params"], "dry_run": true})).await;
    assert_eq!(status, 201, "{dry}");
    assert_eq!(dry["plan"], json!([{"command": "services.fork", "target": "orders", "outcome": null}]));
    let (status, _) = t.get("/v1/services/orders-copy").await;
    assert_eq!(status, 404, "a dry run creates nothing");

    let (status, run) = t.post(path, params).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    let copy = t.wait_available("orders-copy", Duration::from_secs(30)).await;
    assert_eq!(copy["forked_from"]["service"], "orders", "{copy}");
    assert!(copy["forked_from"]["at"].as_str().unwrap().starts_with("2026-01-01T00:00:00.5"), "{copy}");
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let forks: Vec<&Value> = audit.as_array().unwrap().iter().filter(|a| a["command"] == "services.fork").collect();
    assert_eq!(forks.iter().filter(|a| a["outcome"] == "ok").count(), 1, "{forks:#?}");
    t.stop().await;
}
