//! Followers on demand with real PostgreSQL 15 and pgbouncer (issue 17
//! item 2): a read replica added through the API serves reads through its
//! own read URL (the router's `app_read<slot>`), is never a synchronous
//! standby, is rebuilt after a kill -9 of its postmaster, and its read URL
//! serves reads again unchanged; removing it takes its URL away.

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(180);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// Kills, on drop, every process whose working directory is under `dir`:
/// no server outlives its test, also when the test fails.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                if cwd.starts_with(&self.0) {
                    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .ok()?
            .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// The first column of the first row of `sql` through `url` (simple
/// protocol: pgbouncer in transaction mode), None on any failure.
async fn one(url: &str, sql: &str) -> Option<String> {
    let c = connect(url).await?;
    let msgs = tokio::time::timeout(Duration::from_secs(5), c.simple_query(sql)).await.ok()?.ok()?;
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// The live read replica of `slot`, if one is available and streaming.
fn replica_in_slot(service: &Value, slot: u64) -> Option<Value> {
    followers(service)
        .into_iter()
        .find(|f| f["read_slot"] == slot && f["state"] == "available" && f["facts"]["upstream_streaming"] == true)
}

/// The pid in `<instance>/pgdata/postmaster.pid`, found under `dir`.
fn postmaster_pid(dir: &std::path::Path, instance: &str) -> Option<i32> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() || path.is_symlink() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == instance) {
                let text = std::fs::read_to_string(path.join("pgdata").join("postmaster.pid")).ok()?;
                return text.lines().next()?.trim().parse().ok();
            }
            stack.push(path);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_added_on_demand_serves_reads_through_its_url_and_is_rebuilt_after_kill_9_behind_the_same_url() {
    let dir = tempfile::Builder::new().prefix("dvf").tempdir_in("/tmp").unwrap();
    let mut t = common::start_in(dir, |opts| {
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
    let _reaper = Reaper(t.dir.path().to_path_buf());

    let (status, body) = t
        .post(
            "/v1/services",
            json!({"name": "pgrd", "engine": "postgres", "followers": 1, "provider": "local", "sync": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let service = t.wait_available("pgrd", SLOW).await;
    let url = service["url"].as_str().expect("a stable URL").to_string();
    let plan_follower = id(&followers(&service)[0]);
    let c = connect(&url).await.expect("connect through the URL");
    c.batch_execute(
        "CREATE TABLE notes (n int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'written on the primary')",
    )
    .await
    .unwrap();
    drop(c);

    // Refusals over HTTP, before anything is added.
    let (status, body) = t.post("/v1/services/pgrd/followers", json!({"count": 0})).await;
    assert_eq!((status, body["error"].is_string()), (400, true), "{body}");
    let (status, body) = t.post("/v1/services/pgrd/followers", json!({"count": 9})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t.post("/v1/services/nope/followers", json!({"count": 1})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = t.delete(&format!("/v1/services/pgrd/followers/{}", id(&primary(&service)))).await;
    assert_eq!(status, 409, "the primary: {body}");
    let (status, body) = t.delete(&format!("/v1/services/pgrd/followers/{plan_follower}")).await;
    assert_eq!(status, 409, "a plan follower: {body}");
    let (status, body) = t.delete("/v1/services/pgrd/followers/not-an-id").await;
    assert_eq!(status, 404, "a malformed id: {body}");

    // Add one read replica: slot 1, its read URL through the router.
    let (status, body) = t.post("/v1/services/pgrd/followers", json!({"count": 1})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["read_slots"], json!([1]), "{body}");
    let replica = poll(SLOW, "the read replica streams", || async {
        let s = t.service("pgrd").await;
        replica_in_slot(&s, 1).filter(|_| s["state"] == "available")
    })
    .await;
    let service = t.service("pgrd").await;
    let read_urls = service["read_urls"].as_array().cloned().unwrap_or_default();
    assert_eq!(read_urls.len(), 1, "{service}");
    let read_url = read_urls[0].as_str().unwrap().to_string();
    assert!(read_url.ends_with("/app_read1"), "{read_url}");
    assert_ne!(read_url, url);

    // A row written on the primary is read through the read URL, from a
    // server in recovery (the replica, not the primary).
    let seen = poll(SLOW, "the row through the read URL", || async {
        one(&read_url, "SELECT body FROM notes WHERE n = 1").await
    })
    .await;
    assert_eq!(seen, "written on the primary");
    assert_eq!(one(&read_url, "SELECT pg_is_in_recovery()").await.as_deref(), Some("t"), "served by a replica");
    assert_eq!(one(&url, "SELECT pg_is_in_recovery()").await.as_deref(), Some("f"), "the URL stays the primary's");

    // Asynchronous: the primary waits for its plan follower, never for the read replica.
    let replica_id = id(&replica);
    let names = poll(SLOW, "synchronous_standby_names names the plan's follower", || async {
        one(&url, "SHOW synchronous_standby_names").await.filter(|n| n.contains(&plan_follower))
    })
    .await;
    assert!(!names.contains(&replica_id) && !names.contains('*'), "{names}");

    // kill -9 of the replica's postmaster: rebuilt in slot 1, same read URL.
    let pid = postmaster_pid(t.dir.path(), &replica_id).expect("the replica's postmaster.pid");
    let killed_at = std::time::Instant::now();
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let rebuilt = poll(SLOW, "a new read replica in slot 1", || async {
        let s = t.service("pgrd").await;
        replica_in_slot(&s, 1).filter(|r| id(r) != replica_id)
    })
    .await;
    let service = t.service("pgrd").await;
    assert_eq!(service["read_urls"], json!([read_url.clone()]), "the read URL never changes");
    assert_eq!(service["url"], json!(url.clone()));
    let c = connect(&url).await.expect("the primary still writes");
    c.batch_execute("INSERT INTO notes VALUES (2, 'written after the kill')").await.unwrap();
    drop(c);
    let seen = poll(SLOW, "reads through the same read URL again", || async {
        one(&read_url, "SELECT body FROM notes WHERE n = 2").await
    })
    .await;
    assert_eq!(seen, "written after the kill");
    eprintln!(
        "kill -9 of read replica {replica_id}: the same read URL served reads again after {:?}",
        killed_at.elapsed()
    );
    let events = t.events(&format!("instance={replica_id}")).await;
    assert!(events.iter().any(|e| e["to"] == "unavailable"), "the kill was seen: {events:#?}");
    let names = one(&url, "SHOW synchronous_standby_names").await.unwrap_or_default();
    assert!(!names.contains(&id(&rebuilt)), "the rebuilt replica is not a sync standby either: {names}");

    // Remove it: its read URL goes, the plan's follower stays.
    let (status, body) = t.delete(&format!("/v1/services/pgrd/followers/{}", id(&rebuilt))).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "the read replica retired", || async {
        let s = t.service("pgrd").await;
        let gone = followers(&s).iter().all(|f| f["read_slot"].is_null() || f["state"] != "available");
        (gone && s["read_urls"] == json!([]) && s["state"] == "available").then_some(())
    })
    .await;
    // The engine forgets the slot when it decides the retirement; the
    // router drops the read database when the provider has stopped the
    // replica, a moment later (the Retire action in flight).
    poll(SLOW, "the read URL no longer serves", || async { one(&read_url, "SELECT 1").await.is_none().then_some(()) })
        .await;
    let audit = t.get("/v1/audit").await.1;
    let text = audit.to_string();
    assert!(text.contains("services.followers.add") && text.contains("services.followers.remove"), "{text}");
    t.stop().await;
}
