//! Issue 12 against the real local provider: the shipped `rebuild-follower`
//! runbook replaces a named follower of a real PostgreSQL service with a new
//! one that streams (dry run first: it changes nothing), the run audited in
//! the feed; and the images the local provider builds from carry what
//! really runs (Redis: dpkg's `redis-server`/`redis-tools` from source
//! `redis`; Kafka: the pinned tansu crate and its storage PostgreSQL's
//! packages), so the CVE audit of `fixtures/osv/engines` finds them.

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(120);

/// Kills, on drop, every process working under the test's directory or
/// naming it (PostgreSQL backends setsid; redis-server chdirs there).
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        let dir = self.0.to_string_lossy().into_owned();
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cwd.starts_with(&self.0) || String::from_utf8_lossy(&cmdline).contains(&dir) {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

async fn start_local() -> (common::TestServer, Reaper) {
    let dir = tempfile::Builder::new().prefix("dfc").tempdir_in("/tmp").unwrap();
    let t = common::start_in(dir, |opts| {
        opts.engine.default_provider = "local".into();
        opts.engine.uncertain_after = Duration::from_secs(2);
        opts.engine.install_timeout = Duration::from_secs(120);
        opts.engine.action_timeout = Duration::from_secs(60);
        opts.engine.backup_interval = None;
        opts.engine.verify_interval = None;
        opts.local = Some(drover_providers::local::LocalConfig {
            probe_interval: Duration::from_millis(300),
            kill_servers_on_drop: true,
            ..Default::default()
        });
    })
    .await;
    let reaper = Reaper(t.dir.path().to_path_buf());
    (t, reaper)
}

/// The members of a service that are not retired (or further).
fn live(service: &Value) -> Vec<Value> {
    service["instances"]
        .as_array()
        .map(|i| {
            i.iter()
                .filter(|x| !matches!(x["state"].as_str(), Some("retired" | "archived" | "terminated" | "retiring")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn streaming_follower(service: &Value, not: Option<&Value>) -> Option<Value> {
    followers(service).into_iter().find(|f| {
        f["state"] == "available" && f["facts"]["upstream_streaming"] == true && not.is_none_or(|n| &f["id"] != n)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_follower_runbook_replaces_the_named_follower_with_a_new_streaming_one_on_real_postgres() {
    let (mut t, _reaper) = start_local().await;
    let (status, body) = t
        .post(
            "/v1/services",
            json!({"name": "rbf", "engine": "postgres", "followers": 1, "provider": "local", "sync": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let s = poll(SLOW, "a primary with a streaming follower", || async {
        let s = t.service("rbf").await;
        (s["state"] == "available" && streaming_follower(&s, None).is_some()).then_some(s)
    })
    .await;
    let old = streaming_follower(&s, None).unwrap();
    let old_id = old["id"].clone();
    let primary_id = primary(&s)["id"].clone();
    let path = "/v1/runbooks/rebuild-follower/runs";
    let params = json!({"service": "rbf", "instance": old_id});

    // The dry run: the plan, and nothing changes.
    let (status, dry) = t.post(path, json!({"params": params, "dry_run": true})).await;
    assert_eq!((status, dry["state"].as_str()), (201, Some("planned")), "{dry}");
    assert_eq!(dry["plan"].as_array().map(Vec::len), Some(1), "{dry}");
    assert_eq!(dry["plan"][0]["target"], "rbf", "{dry}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_dry = t.service("rbf").await;
    let ids = |s: &Value| live(s).iter().map(|i| i["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after_dry), ids(&s), "a dry run builds and retires nothing: {after_dry}");

    // The run: not dangerous, so it runs at once for the admin.
    let (status, run) = t.post(path, json!({"params": params})).await;
    assert!(status == 201 || status == 202, "{status}: {run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_ne!(run["state"], "awaiting_approval", "{run}");
    let rebuilt = poll(SLOW, "a new follower streaming, the old one retired", || async {
        let s = t.service("rbf").await;
        let gone = !live(&s).iter().any(|i| i["id"] == old_id);
        let new = streaming_follower(&s, Some(&old_id));
        (gone && new.is_some() && s["state"] == "available").then_some(s)
    })
    .await;
    let new = streaming_follower(&rebuilt, Some(&old_id)).unwrap();
    assert_ne!(new["id"], old_id);
    assert_eq!(primary(&rebuilt)["id"], primary_id, "the primary kept serving: no failover");
    assert_eq!(live(&rebuilt).len(), 2, "back to its plan: {rebuilt}");
    let retired = rebuilt["instances"].as_array().unwrap().iter().find(|i| i["id"] == old_id).cloned();
    assert!(
        retired.is_none()
            || matches!(retired.as_ref().unwrap()["state"].as_str(), Some("retired" | "archived" | "terminated")),
        "the old follower is retired: {retired:?}"
    );

    // Audited: the run's states in the feed, the command under the caller.
    let (_, shown) = t.get(&format!("/v1/runbooks/runs/{run_id}")).await;
    assert_eq!(shown["state"], "succeeded", "{shown}");
    let events = t.events("limit=10000").await;
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"]["type"] == "runbook" && e["kind"]["run"] == run_id.as_str())
        .filter_map(|e| e["to"].as_str())
        .collect();
    assert!(states.contains(&"succeeded"), "{states:?}");
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let rebuilds: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["command"].as_str().is_some_and(|c| c.contains("rebuild")))
        .collect();
    assert_eq!(rebuilds.len(), 1, "one rebuild, the dry run none: {rebuilds:?}");
    assert_eq!(rebuilds[0]["outcome"], "ok", "{:?}", rebuilds[0]);
    t.stop().await;
}

/// dpkg's binary, version and source of `package` on this host.
fn dpkg(package: &str) -> (String, String) {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}\\t${source:Package}", package])
        .output()
        .expect("dpkg-query runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (version, source) = text.split_once('\t').expect("version and source");
    (version.to_string(), source.to_string())
}

fn in_manifest<'a>(image: &'a Value, name: &str) -> Option<&'a Value> {
    image["manifest"].as_array()?.iter().find(|p| p["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_kafka_images_carry_what_runs_and_the_audit_finds_them_by_debian_source_and_crate() {
    let (mut t, _reaper) = start_local().await;
    let (_, images) = t.get("/v1/images").await;
    let newest = |engine: &str| {
        images.as_array().unwrap().iter().rev().find(|i| i["engine"] == engine).cloned().expect("an image")
    };
    let (redis, kafka) = (newest("redis"), newest("kafka"));

    // Redis: what dpkg says runs, binaries from source `redis`.
    let (version, source) = dpkg("redis-server");
    assert_eq!(source, "redis");
    for binary in ["redis-server", "redis-tools"] {
        let p = in_manifest(&redis, binary).unwrap_or_else(|| panic!("{binary} in {redis}"));
        assert_eq!((p["version"].as_str(), p["source"].as_str()), (Some(version.as_str()), Some("redis")), "{p}");
        assert!(p.get("ecosystem").is_none(), "a Debian package: {p}");
    }
    assert!(version.contains(&format!(":{}", redis["version"].as_str().unwrap())), "{version} vs {redis}");
    // Kafka: the pinned tansu crate, and the storage PostgreSQL's packages.
    let tansu = in_manifest(&kafka, "tansu").unwrap_or_else(|| panic!("tansu in {kafka}"));
    assert_eq!(
        (tansu["ecosystem"].as_str(), tansu["version"].as_str(), tansu["source"].as_str()),
        (Some("crates.io"), Some(drover_providers::local::TANSU_VERSION), Some("tansu"))
    );
    let (pg_version, _) = dpkg("postgresql-15");
    assert_eq!(in_manifest(&kafka, "postgresql-15").unwrap()["version"].as_str(), Some(pg_version.as_str()));
    // A Kafka image registered through the API keeps the crate by default.
    let (status, rolled) = t.post("/v1/images", json!({"engine": "kafka", "settings": {"x_test": "1"}})).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(in_manifest(&rolled, "tansu").unwrap()["ecosystem"], "crates.io", "{rolled}");

    // A real Redis service (the local provider) and a Kafka service (sim:
    // it runs on the same newest Kafka image) on those images.
    let (status, body) =
        t.post("/v1/services", json!({"name": "cache", "engine": "redis", "followers": 0, "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        t.post("/v1/services", json!({"name": "events", "engine": "kafka", "followers": 0, "provider": "sim"})).await;
    assert_eq!(status, 201, "{body}");
    let cache = t.wait_available("cache", SLOW).await;
    let events = t.wait_available("events", SLOW).await;
    assert_eq!(cache["image"], redis["id"], "{cache}");
    assert_eq!(events["image"], rolled["id"], "built from the newest Kafka image: {events}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv/engines");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            records.push(serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap());
        }
    }
    let (status, report) = t.post("/v1/advisories", Value::Array(records)).await;
    assert_eq!(status, 201, "{report}");
    assert_eq!((report["imported"].as_u64(), report["other_ecosystems"].as_u64()), (Some(4), Some(0)), "{report}");
    let (status, audit) = t.get("/v1/advisories/audit").await;
    assert_eq!(status, 200, "{audit}");
    let find = |id: &str| audit.as_array().unwrap().iter().find(|f| f["advisory"] == id).cloned();
    let r = find("DEBIAN-CVE-2026-3311").unwrap_or_else(|| panic!("the redis record lists: {audit}"));
    assert_eq!((r["package"].as_str(), r["installed"].as_str()), (Some("redis"), Some(version.as_str())), "{r}");
    assert!(r["images"].as_array().unwrap().contains(&redis["id"]), "{r}");
    assert!(r["services"].as_array().unwrap().contains(&json!("cache")), "{r}");
    let k = find("RUSTSEC-2026-0101").unwrap_or_else(|| panic!("the tansu record lists: {audit}"));
    assert_eq!(
        (k["package"].as_str(), k["installed"].as_str(), k["fixed"].as_str()),
        (Some("tansu"), Some("0.6.0"), Some("0.6.1"))
    );
    let kafka_ids: Vec<&Value> = k["images"].as_array().unwrap().iter().collect();
    assert!(kafka_ids.contains(&&kafka["id"]) && kafka_ids.contains(&&rolled["id"]), "{k}");
    assert_eq!(k["services"], json!(["events"]), "{k}");
    // Fixed at or below what is installed: not listed.
    assert!(find("DEBIAN-CVE-2026-3312").is_none(), "{audit}");
    assert!(find("RUSTSEC-2026-0102").is_none(), "a semver pre-release fix before 0.6.0: {audit}");
    t.stop().await;
}
