//! Images, rollouts and maintenance windows through the HTTP API, on the
//! sim provider, with an abrupt restart in the middle of a rollout.

mod common;

use common::poll;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn member_images(service: &Value) -> Vec<String> {
    service["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !matches!(i["state"].as_str(), Some("retiring" | "retired" | "archived" | "terminated")))
        .map(|i| i["image"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_register_once_by_content_and_show_what_runs_on_them() {
    let mut t = common::start().await;
    let body = json!({"engine": "postgres", "settings": {"work_mem": "8MB"}});
    let (status, image) = t.post("/v1/images", body.clone()).await;
    assert_eq!(status, 201, "{image}");
    let id = image["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sha256:"), "{image}");
    assert_eq!(image["settings"]["work_mem"], "8MB");
    let manifest = image["manifest"].as_array().expect("the host's dpkg manifest");
    assert!(manifest.iter().any(|p| p["name"].is_string() && p["source"].is_string()), "{image}");
    let (status, again) = t.post("/v1/images", body).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())), "same content, same image");

    let (status, shown) = t.get(&format!("/v1/images/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!((shown["services"].as_array().unwrap().len(), shown["instances"].as_array().unwrap().len()), (0, 0));
    let (status, list) = t.get("/v1/images").await;
    assert_eq!(status, 200);
    assert!(list.as_array().unwrap().iter().any(|i| i["id"] == id.as_str()));

    for bad in [
        json!({"engine": "postgres", "settings": {"work mem": "8MB"}}),
        json!({"engine": "postgres", "settings": {"work_mem": "8MB\nfsync = off"}}),
        json!({"engine": "postgres", "version": ""}),
        json!({"engine": "mysql"}),
        json!({"engine": "postgres", "colour": "blue"}),
    ] {
        let (status, error) = t.post("/v1/images", bad.clone()).await;
        assert!((400..500).contains(&status), "{bad} gave {status}");
        assert!(error["error"].is_string(), "{error}");
    }
    let (status, _) = t.get("/v1/images/sha256:nothing").await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_moves_services_by_switchover_and_resumes_after_an_abrupt_restart() {
    let mut t = common::start().await;
    let names = ["ra", "rb", "rc", "rd"];
    for n in names {
        t.create_service(n, 1).await;
    }
    for n in names {
        t.wait_available(n, Duration::from_secs(20)).await;
    }
    let ids: HashMap<&str, Value> = {
        let mut m = HashMap::new();
        for n in names {
            m.insert(n, t.service(n).await["id"].clone());
        }
        m
    };
    let (status, image) = t.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "8MB"}})).await;
    assert_eq!(status, 201, "{image}");
    let to = image["id"].as_str().unwrap().to_string();

    let bad = [
        json!({"to_image": to, "waves": [50, 10, 100]}),
        json!({"to_image": to, "waves": [50]}),
        json!({"to_image": "sha256:unknown"}),
        json!({"to_image": to, "selector": {"label": "tier"}}),
        json!({"to_image": to, "selector": {"labels": {"tier": "gold plated"}}}),
        json!({"to_image": to, "max_failures": 0}),
        json!({"to_image": to, "required_by": "not a time"}),
    ];
    for b in bad {
        let (status, error) = t.post("/v1/rollouts", b.clone()).await;
        assert!((400..500).contains(&status), "{b} gave {status}: {error}");
    }

    let (status, created) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"engine": "postgres"}, "waves": [25, 100], "soak_seconds": 1}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["state"].as_str(), created["total"].as_u64()), (Some("pending"), Some(4)), "{created}");
    let rid = created["id"].as_str().unwrap().to_string();

    // Abruptly, once the first service has started moving.
    poll(Duration::from_secs(30), "the first service moving", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        (r["moving"].as_u64().unwrap_or(0) + r["done"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    t.server.take().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut t = common::start_in(dir, |_| {}).await;

    let done = poll(Duration::from_secs(120), "rollout succeeded", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(
        (done["done"].as_u64(), done["failed"].as_u64(), done["remaining"].as_u64()),
        (Some(4), Some(0), Some(0))
    );
    assert_eq!(done["eta_seconds"].as_u64(), Some(0));
    for n in names {
        let s = t.wait_available(n, Duration::from_secs(30)).await;
        assert_eq!(s["id"], ids[n], "{n} is the same service");
        assert!(member_images(&s).iter().all(|i| *i == to), "{n}: {s}");
    }
    // Planned switchovers (graceful fences), one per service, no failover.
    let (_, actions) = t.get("/v1/actions?limit=1000").await;
    let fences: Vec<&Value> = actions.as_array().unwrap().iter().filter(|a| a["kind"] == "fence").collect();
    assert!(fences.iter().all(|a| a["immediate"] == false), "{fences:?}");
    let mut per_service: HashMap<String, usize> = HashMap::new();
    for a in fences.iter().filter(|a| a["state"] == "succeeded") {
        *per_service.entry(a["service"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(per_service.len(), 4, "{per_service:?}");
    assert!(per_service.values().all(|&n| n == 1), "each service switched over once: {per_service:?}");
    let (_, members) = t.get(&format!("/v1/rollouts/{rid}/services")).await;
    assert!(members.as_array().unwrap().iter().all(|m| m["phase"] == "done"), "{members}");

    let (_, shown) = t.get(&format!("/v1/images/{to}")).await;
    assert_eq!(shown["services"].as_array().unwrap().len(), 4, "{shown}");
    assert_eq!(shown["instances"].as_array().unwrap().len(), 8, "{shown}");
    let (status, list) = t.get("/v1/rollouts").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], rid.as_str());
    let (status, _) = t.post(&format!("/v1/rollouts/{rid}/pause"), json!({})).await;
    assert_eq!(status, 409, "a finished rollout does not change");
    let (status, _) = t.get("/v1/rollouts/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = t.get("/v1/rollouts/0190a0a0-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_hold_moves_and_the_team_feed_needs_its_key() {
    let mut t = common::start().await;
    t.create_service("win", 1).await;
    t.wait_available("win", Duration::from_secs(20)).await;
    // A window one minute long, a week away: the service must wait.
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(72)).unwrap();
    let window = drover_model::MaintenanceWindow::weekly_from(drover_model::Timestamp(later.as_microsecond()), 1);
    let start = window.start.clone();
    let window = json!({"window": window});
    let (status, s) = t
        .http
        .put(t.at("/v1/services/win/maintenance-window"))
        .json(&window)
        .send()
        .await
        .map(common::split)
        .unwrap()
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["maintenance_window"]["start"], start.as_str());
    let (status, _) = t
        .http
        .put(t.at("/v1/services/win/maintenance-window"))
        .json(&json!({"window": {"day": "someday", "start": "03:00", "duration_minutes": 1}}))
        .send()
        .await
        .map(common::split)
        .unwrap()
        .await;
    assert!(status == 400 || status == 422, "{status}");

    let (_, image) = t.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "16MB"}})).await;
    let to = image["id"].as_str().unwrap().to_string();
    let (status, r) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"names": ["win"]}, "waves": [100], "soak_seconds": 1}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
    assert_eq!(
        (r["state"].as_str(), r["moving"].as_u64(), r["done"].as_u64()),
        (Some("running"), Some(0), Some(0)),
        "{r}"
    );

    // The feed: the team's token as key; none, a wrong one, another team's: refused.
    let team = t.service("win").await["team"].as_str().unwrap().to_string();
    let key = t.token(json!({"name": "feed", "role": "viewer", "team": team})).await;
    let other = t.token(json!({"name": "feed-other", "role": "viewer", "team": "someone-else"})).await;
    let feed = |k: String| {
        let url = t.at(&format!("/v1/maintenance.ics?team={team}&key={k}"));
        async move { reqwest::get(url).await.unwrap() }
    };
    let ok = feed(key.clone()).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"].to_str().unwrap().starts_with("text/calendar"));
    let body = ok.text().await.unwrap();
    assert!(body.starts_with("BEGIN:VCALENDAR\r\n") && body.contains("BEGIN:VEVENT") && body.contains("win"), "{body}");
    assert_eq!(feed("drv_nope".into()).await.status(), 403);
    assert_eq!(feed(other.clone()).await.status(), 403);
    let no_key = reqwest::get(t.at(&format!("/v1/maintenance.ics?team={team}"))).await.unwrap();
    assert_eq!(no_key.status(), 403);
    // Revoking the token cuts the feed off.
    let (_, tokens) = t.get("/v1/tokens").await;
    let feed_id =
        tokens.as_array().unwrap().iter().find(|r| r["name"] == "feed").unwrap()["id"].as_str().unwrap().to_string();
    let (status, _) = t.delete(&format!("/v1/tokens/{feed_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(feed(key.clone()).await.status(), 403);

    // The deadline passed: the window no longer holds the move.
    let (status, r2) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"names": ["win"]}, "waves": [100], "soak_seconds": 1,
                   "required_by": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((status, r2["total"].as_u64()), (201, Some(0)), "already claimed by the first rollout: {r2}");
    let (status, _) = t.post(&format!("/v1/rollouts/{rid}/abort"), json!({})).await;
    assert_eq!(status, 200);
    let (_, r3) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"names": ["win"]}, "waves": [100], "soak_seconds": 1,
                   "required_by": "2020-01-01T00:00:00Z"}),
        )
        .await;
    let r3id = r3["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(60), "moved past its deadline", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{r3id}")).await;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    t.stop().await;
}

/// From an advisory to a fix in one step: `"fix"` instead of `to_image`
/// targets the newest registered image the advisory does not affect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_fix_moves_onto_the_newest_image_the_advisory_does_not_affect() {
    let mut t = common::start().await;
    t.create_service("fx", 1).await;
    t.wait_available("fx", Duration::from_secs(20)).await;
    let body = |fix: &str| json!({"fix": fix, "selector": {"names": ["fx"]}, "waves": [100], "soak_seconds": 1});

    let (status, err) = t.post("/v1/rollouts", body("DSA-6090-1")).await;
    assert_eq!(status, 404, "not imported yet: {err}");
    assert!(err["error"].as_str().unwrap().contains("DSA-6090-1"), "{err}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("DSA-6090-1.json")).unwrap()).unwrap();
    let (status, report) = t.post("/v1/advisories", record).await;
    assert_eq!(status, 201, "{report}");

    // Only the sim image (openssl 3.0.17) so far: nothing to move onto.
    let (status, err) = t.post("/v1/rollouts", body("DSA-6090-1")).await;
    assert_eq!(status, 409, "{err}");
    assert!(err["error"].is_string(), "{err}");
    let mut both = body("DSA-6090-1");
    both["to_image"] = json!("sha256:whatever");
    let (status, err) = t.post("/v1/rollouts", both).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = t.post("/v1/rollouts", json!({"fix": 7})).await;
    assert_eq!(status, 400, "{err}");
    // The sim registers images of several engines, all with this openssl:
    // without an engine to go by, which to fix is asked.
    let (status, err) = t.post("/v1/rollouts", json!({"fix": "DSA-6090-1"})).await;
    assert_eq!(status, 400, "{err}");

    // The sim image's `openssl` binary and `libssl3`, both built from openssl.
    let ssl = |version: &str| {
        json!([
            {"name": "libssl3", "version": version, "source": "openssl", "source_version": version},
            {"name": "openssl", "version": version, "source": "openssl", "source_version": version},
        ])
    };
    let register = |settings: Value, manifest: Value| {
        let t = &t;
        async move {
            let (status, image) =
                t.post("/v1/images", json!({"engine": "postgres", "settings": settings, "manifest": manifest})).await;
            assert_eq!(status, 201, "{image}");
            image["id"].as_str().unwrap().to_string()
        }
    };
    let _older_fix = register(json!({"work_mem": "4MB"}), ssl("3.0.19-1~deb12u3")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newest_fix = register(json!({"work_mem": "8MB"}), ssl("1:3.0.19-1~deb12u3")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Newer still, but one stable update behind (and a tilde sorts first).
    let affected = register(json!({"work_mem": "16MB"}), ssl("3.0.19-1~deb12u2")).await;

    let (status, created) = t.post("/v1/rollouts", body("DSA-6090-1")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["to_image"].as_str(), Some(newest_fix.as_str()), "not {affected}: {created}");
    let rid = created["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(60), "the fix rolled", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    let s = t.wait_available("fx", Duration::from_secs(30)).await;
    assert!(member_images(&s).iter().all(|i| *i == newest_fix), "{s}");
    let (_, audit) = t.get("/v1/advisories/audit").await;
    let finding = audit.as_array().unwrap().iter().find(|f| f["advisory"] == "DSA-6090-1").cloned();
    // The affected image registered last still shows, with no service on it.
    let finding = finding.expect("the affected image is still listed");
    assert_eq!(finding["services"], json!([]), "fx no longer runs an affected image: {finding}");
    t.stop().await;
}

/// Issue 12: the health gate between waves reads the pager and the
/// checks, which live outside the engine (`rollout_gate`): a page about a
/// moved service while it soaks fails its gate, which spends the wave's
/// failure budget and pauses the rollout before the next wave; the service
/// that soaked quietly is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_about_a_moved_service_while_it_soaks_fails_its_gate_and_pauses_the_rollout() {
    let mut t = common::start().await;
    let names = ["ga", "gb", "gc"];
    for n in names {
        t.create_service(n, 1).await;
    }
    for n in names {
        t.wait_available(n, Duration::from_secs(20)).await;
    }
    let (status, image) = t.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "6MB"}})).await;
    assert_eq!(status, 201, "{image}");
    let to = image["id"].as_str().unwrap().to_string();
    let body = json!({"to_image": to, "selector": {"names": ["ga", "gb", "gc"]}, "waves": [33, 66, 100],
                      "soak_seconds": 3, "max_failures": 1});
    let (status, created) = t.post("/v1/rollouts", body).await;
    assert_eq!(status, 201, "{created}");
    let rid = created["id"].as_str().unwrap().to_string();
    let members = |phase: &'static str| {
        let t = &t;
        let rid = rid.clone();
        async move {
            let (_, members) = t.get(&format!("/v1/rollouts/{rid}/services")).await;
            members
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["phase"] == phase)
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // Wave 1 soaks quietly: the gate's report of all well after the soak
    // finishes it.
    let first = poll(Duration::from_secs(60), "wave 1 done", || async { members("done").await.pop() }).await;
    // Wave 2: a page about the service while it soaks.
    let second = poll(Duration::from_secs(60), "wave 2 soaking", || async { members("soaking").await.pop() }).await;
    assert_ne!(first, second);
    let token = t.integration_token("platform").await;
    let alert = json!({"routing_key": token, "event_action": "trigger", "dedup_key": format!("disk-{second}"),
        "payload": {"summary": format!("{second}: disk 99% full"), "source": "node-exporter", "severity": "critical",
                    "custom_details": {"service": second}}});
    let (status, body) = t.post_as(None, "/v1/integrations/events-v2", alert).await;
    assert_eq!(status, 202, "{body}");
    let paused = poll(Duration::from_secs(30), "rollout paused", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        (r["state"] == "paused").then_some(r)
    })
    .await;
    assert_eq!((paused["done"].as_u64(), paused["failed"].as_u64()), (Some(1), Some(1)), "{paused}");
    let (_, list) = t.get(&format!("/v1/rollouts/{rid}/services")).await;
    let failed = list.as_array().unwrap().iter().find(|m| m["name"] == second.as_str()).unwrap();
    assert_eq!(failed["phase"], "failed", "{list}");
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("failed its health gate") && detail.contains("disk 99% full"), "{detail}");
    // Wave 3 never started: the budget of wave 2 is spent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(members("waiting").await.len(), 1, "{list}");
    t.stop().await;
}
