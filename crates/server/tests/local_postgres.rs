//! The local provider end to end: real PostgreSQL 15 processes (as user
//! `drover` when run as root), pgbouncer as the stable URL, pgBackRest, all
//! driven through the HTTP API of an in-process server.

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(120);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// Kills, on drop, every process whose working directory is under `dir`
/// (PostgreSQL backends setsid(), so process groups are not enough): no
/// server outlives its test, also when the test fails.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                if cwd.starts_with(&self.0) {
                    unsafe_kill(pid);
                }
            }
        }
    }
}

fn unsafe_kill(pid: i32) {
    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
}

async fn start_local() -> (common::TestServer, Reaper) {
    start_local_with(true).await
}

/// `same_host_evidence` off: the control plane learns of a failure as a
/// remote one would, from silence and a failed probe over a connection.
async fn start_local_with(same_host_evidence: bool) -> (common::TestServer, Reaper) {
    start_local_tweaked(move |opts| {
        if let Some(local) = opts.local.as_mut() {
            local.same_host_evidence = same_host_evidence;
        }
    })
    .await
}

/// The local provider with test timings, then `tweak`.
async fn start_local_tweaked(tweak: impl FnOnce(&mut drover_server::ServeOptions)) -> (common::TestServer, Reaper) {
    let dir = tempfile::Builder::new().prefix("dv").tempdir_in("/tmp").unwrap();
    let t = common::start_in(dir, move |opts| {
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
        tweak(opts);
    })
    .await;
    let reaper = Reaper(t.dir.path().to_path_buf());
    (t, reaper)
}

async fn create_pg(t: &common::TestServer, name: &str) -> Value {
    let (status, body) = t
        .post(
            "/v1/services",
            json!({"name": name, "engine": "postgres", "followers": 1, "provider": "local", "sync": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    t.wait_available(name, SLOW).await
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

/// Inserts 1, 2, 3, ... through `url`, one autocommit statement each
/// (simple protocol: pgbouncer in transaction mode), recording every
/// acknowledged value and every failed statement.
struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// The longest wait for an acknowledged statement's answer, in ms.
    longest: Arc<AtomicU64>,
}

/// How long the writer waits for one statement's answer before it counts
/// it failed. Clients queue at the router while the primary changes
/// (pgbouncer's query_wait_timeout is 120 s): a wait is no failure, and
/// on a loaded machine (CI: two cores, every real-process test at once) a
/// switchover's pause once passed 5 s. The longest wait is printed.
const STATEMENT_WAIT: Duration = Duration::from_secs(30);

impl Writer {
    fn start(url: String) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let longest = Arc::new(AtomicU64::new(0));
        let (a, f, s, l) = (acked.clone(), failures.clone(), stop.clone(), longest.clone());
        let task = tokio::spawn(async move {
            let mut next = 1u64;
            let mut client = None;
            while !s.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = connect(&url).await;
                    if client.is_none() {
                        f.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_ref().unwrap();
                // A commit whose answer was lost in the crash is retried: it
                // must not fail forever on its own row.
                let sql = format!("INSERT INTO writes VALUES ({next}) ON CONFLICT DO NOTHING");
                let sent = std::time::SystemTime::now();
                let started = std::time::Instant::now();
                match tokio::time::timeout(STATEMENT_WAIT, c.batch_execute(&sql)).await {
                    Ok(Ok(())) => {
                        let waited = started.elapsed().as_millis() as u64;
                        if waited >= 1000 {
                            eprintln!("writer: statement {next} waited {waited} ms for its answer");
                        }
                        l.fetch_max(waited, Ordering::SeqCst);
                        a.lock().unwrap().push(next);
                        next += 1;
                    }
                    failed => {
                        // Said, so a counted failure can be explained.
                        let why = match failed {
                            Ok(Err(e)) => format!("{e:?}"),
                            _ => format!("no answer within {STATEMENT_WAIT:?}"),
                        };
                        // When it was sent (UTC, as the server's log lines), to
                        // find what the server was doing.
                        let at = sent.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        let day = at.as_secs() % 86_400;
                        eprintln!(
                            "writer: statement {next} sent at {:02}:{:02}:{:02}.{:03} UTC failed: {why}",
                            day / 3600,
                            day / 60 % 60,
                            day % 60,
                            at.subsec_millis()
                        );
                        f.fetch_add(1, Ordering::SeqCst);
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Writer { acked, failures, stop, task, longest }
    }
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    async fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        eprintln!("writer: longest wait for an acknowledged statement {} ms", self.longest.load(Ordering::SeqCst));
        (self.acked.lock().unwrap().clone(), self.failures.load(Ordering::SeqCst))
    }
}

async fn rows(url: &str) -> std::collections::BTreeSet<u64> {
    let c = connect(url).await.expect("connect to read back");
    let msgs = c.simple_query("SELECT n FROM writes").await.expect("read back");
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_fails_over_behind_the_same_url_without_losing_an_acknowledged_write() {
    let events = fail_over_under_load("crash", true).await;
    assert!(
        events.iter().any(|e| e["to"] == "unavailable" && e["cause"].as_str().unwrap_or("").contains("provider")),
        "{events:#?}"
    );
}

/// A frozen host takes its agent with it: no reaped exit, no /proc. The
/// evidence is silence, then a probe over a connection that times out; the
/// failover cuts the frozen primary off without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_without_same_host_evidence_fails_over_on_a_failed_probe_without_losing_an_acknowledged_write() {
    let events = fail_over_under_load("hang", false).await;
    let unavailable: Vec<&Value> = events.iter().filter(|e| e["to"] == "unavailable").collect();
    assert!(
        unavailable.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("probe failed")),
        "the evidence is a failed probe: {events:#?}"
    );
    assert!(
        !unavailable.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("provider")),
        "no same-host report: {events:#?}"
    );
}

/// Creates a sync pair, writes through its URL, injects `fault` into the
/// primary, and checks that writes resume through the same URL on a new
/// primary with a new follower and that no acknowledged write is lost.
/// Returns the old primary's events.
async fn fail_over_under_load(fault: &str, same_host_evidence: bool) -> Vec<Value> {
    let (mut t, _reaper) = start_local_with(same_host_evidence).await;
    let before = create_pg(&t, "pgfo").await;
    let url = before["url"].as_str().expect("a local service has a stable URL").to_string();
    assert!(url.starts_with("postgres://"), "{url}");
    let old_primary = id(&primary(&before));
    let c = connect(&url).await.expect("connect through the URL");
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();

    let writer = Writer::start(url.clone());
    poll(SLOW, "writes flowing", || async { (writer.acked() > 50).then_some(()) }).await;
    let (status, body) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": fault})).await;
    assert_eq!(status, 202, "{body}");
    let acked_at_kill = writer.acked();
    poll(SLOW, "writes resume through the same URL", || async { (writer.acked() > acked_at_kill + 50).then_some(()) })
        .await;
    let after = poll(SLOW, "a new follower streams", || async {
        let s = t.service("pgfo").await;
        let fs = followers(&s);
        let streaming = fs.iter().any(|f| f["state"] == "available" && f["facts"]["upstream_streaming"] == true);
        (id(&primary(&s)) != old_primary && streaming && s["state"] == "available").then_some(s)
    })
    .await;
    assert_eq!(after["url"], Value::String(url.clone()), "the URL never changes");
    let (acked, _failures) = writer.finish().await;
    let present = rows(&url).await;
    let lost: Vec<&u64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost (sync mode): {:?}", lost.len(), &lost[..lost.len().min(10)]);
    let events = t.events(&format!("instance={old_primary}")).await;
    t.stop().await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_fails_no_statement_and_backups_restore_and_corruption_is_caught() {
    let (mut t, _reaper) = start_local().await;
    let before = create_pg(&t, "pgsw").await;
    let url = before["url"].as_str().unwrap().to_string();
    let old_primary = id(&primary(&before));
    let c = connect(&url).await.unwrap();
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    drop(c);
    let writer = Writer::start(url.clone());
    poll(SLOW, "writes flowing", || async { (writer.acked() > 50).then_some(()) }).await;
    let (status, body) = t.post("/v1/services/pgsw/switchover", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "switched over with a new follower streaming", || async {
        let s = t.service("pgsw").await;
        let streaming =
            followers(&s).iter().any(|f| f["state"] == "available" && f["facts"]["upstream_streaming"] == true);
        (id(&primary(&s)) != old_primary && streaming && s["state"] == "available").then_some(())
    })
    .await;
    let at = writer.acked();
    poll(SLOW, "writes after the switchover", || async { (writer.acked() > at + 20).then_some(()) }).await;
    let (acked, failures) = writer.finish().await;
    assert_eq!(failures, 0, "the router paused clients: no statement failed");
    let present = rows(&url).await;
    assert!(acked.iter().all(|n| present.contains(n)), "an acknowledged write is missing");

    // Backups: take one, restore-test it, then corrupt it and see it caught.
    let (status, body) = t.post("/v1/services/pgsw/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "backup recorded", || async {
        let s = t.service("pgsw").await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    let (status, body) = t.post("/v1/services/pgsw/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "restore test passed", || async {
        let s = t.service("pgsw").await;
        (s["backups"]["last_verify_ok"] == true).then_some(())
    })
    .await;
    let (_, checks) = t.get("/v1/services/pgsw/checks").await;
    assert_eq!(checks["backups"]["status"], "ok", "{checks}");
    assert_ne!(checks["security"]["status"], "unknown", "a real server is inspected: {checks}");
    assert_ne!(checks["performance"]["status"], "unknown", "{checks}");
    assert_eq!(checks["replication"]["status"], "ok", "{checks}");
    assert_eq!(checks["router"]["status"], "ok", "{checks}");

    // Corrupt one data file of the backup set in the repository.
    let repo = t.dir.path().join("local/backups/repo/backup/pgsw");
    let victim = walk(&repo)
        .into_iter()
        .find(|p| {
            p.to_string_lossy().contains("pg_data/base/")
                && std::fs::metadata(p).map(|m| m.len() > 1000).unwrap_or(false)
        })
        .expect("a data file in the backup set");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&victim, bytes).unwrap();
    let (status, body) = t.post("/v1/services/pgsw/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let s = poll(SLOW, "the corrupted backup is caught", || async {
        let s = t.service("pgsw").await;
        (s["backups"]["last_verify_ok"] == false).then_some(s)
    })
    .await;
    let error = s["backups"]["last_verify_error"].as_str().unwrap_or("").to_string();
    assert!(!error.is_empty(), "{s}");
    let events = t.events("service=pgsw").await;
    assert!(events.iter().any(|e| e["cause"].as_str().unwrap_or("").contains("restore test FAILED")), "{events:#?}");
    t.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A follower that can never be rebuilt (its primary refuses replication
/// connections, as a broken pg_hba.conf would): the engine stops after a few
/// failed rebuilds instead of retrying forever, marks the service as needing a
/// human with the last error, pages its team once; `resume` after the fix
/// makes it try again and the service heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_failing_forever_needs_a_human_pages_once_and_resume_heals_it() {
    let (t, _reaper) = start_local_tweaked(|opts| {
        // Small limits so the test takes seconds, not minutes.
        opts.engine.max_action_attempts = 2;
        opts.engine.max_remedy_failures = 2;
    })
    .await;
    let before = create_pg(&t, "pgnh").await;
    let url = before["url"].as_str().unwrap().to_string();
    let primary_id = id(&primary(&before));
    let follower_id = id(&followers(&before)[0]);

    // Break replication on the primary, the way a bad config change would.
    let (hba_path, good_hba, c) = reject_replication(&t, &primary_id, &url).await;

    let (status, body) = t.post("/v1/chaos", json!({"instance": follower_id, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    let s = poll(SLOW, "the service needs a human", || async {
        let s = t.service("pgnh").await;
        (s["needs_human"] == true).then_some(s)
    })
    .await;
    // Its primary still serves: degraded (one follower short), not down.
    assert_eq!(s["state"], "degraded", "{s}");
    let events = t.events("service=pgnh").await;
    let asks: Vec<&Value> = events.iter().filter(|e| e["to"] == "needs_human").collect();
    assert_eq!(asks.len(), 1, "{asks:#?}");
    let cause = asks[0]["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("provision") && cause.contains("pg_basebackup"), "the last error as evidence: {cause}");

    // No retries while it waits, and exactly one page for its team.
    let (_, actions) = t.get("/v1/actions?service=pgnh").await;
    let provisions = |a: &Value| a.as_array().unwrap().iter().filter(|a| a["kind"] == "provision").count();
    let tried = provisions(&actions);
    let page = poll(SLOW, "a page for the service", || async {
        let (_, pages) = t.get("/v1/pages").await;
        pages.as_array().and_then(|p| p.iter().find(|p| p["dedup_key"] == "engine:pgnh:needs_human").cloned())
    })
    .await;
    assert_eq!(page["status"], "triggered", "{page}");
    assert_eq!(page["team"], "platform", "{page}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, actions) = t.get("/v1/actions?service=pgnh").await;
    assert_eq!(provisions(&actions), tried, "the engine stopped trying: {actions:#}");
    let (_, pages) = t.get("/v1/pages").await;
    let for_service: Vec<&Value> = pages
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["service"] == "pgnh" || p["dedup_key"] == page["dedup_key"])
        .collect();
    assert_eq!(for_service.len(), 1, "one page, not one per failure: {for_service:#?}");

    // A person fixes pg_hba.conf and resumes the service.
    std::fs::write(&hba_path, good_hba).unwrap();
    c.simple_query("SELECT pg_reload_conf()").await.unwrap();
    let alice = t.token(json!({"name": "alice", "role": "operator"})).await;
    let (status, body) = t.post_as(Some(&alice), "/v1/services/pgnh/resume", json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["needs_human"], false, "{body}");
    poll(SLOW, "the service heals after resume", || async {
        let s = t.service("pgnh").await;
        (s["state"] == "available").then_some(())
    })
    .await;
    let (_, audit) = t.get("/v1/audit").await;
    assert!(
        audit.as_array().unwrap().iter().any(|a| a["command"] == "services.resume" && a["actor"] == "alice"),
        "{audit:#}"
    );
    poll(SLOW, "the page resolved once the service is available", || async {
        let (_, pages) = t.get("/v1/pages").await;
        pages.as_array().and_then(|p| p.iter().find(|p| p["id"] == page["id"] && p["status"] == "resolved").cloned())
    })
    .await;
}

/// A cause no retry can cure is not retried: a follower rebuild that the
/// primary's pg_hba.conf refuses fails its one attempt (the provider calls
/// the refusal permanent), so with one failed remedy allowed the service
/// needs a human after a single provision attempt, not after
/// `max_action_attempts` of them with backoff in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_refused_by_pg_hba_is_not_retried_and_needs_a_human_after_one_attempt() {
    const ATTEMPTS: u32 = 5;
    let (t, _reaper) = start_local_tweaked(|opts| {
        opts.engine.max_action_attempts = ATTEMPTS;
        opts.engine.max_remedy_failures = 1;
    })
    .await;
    let before = create_pg(&t, "pgperm").await;
    let url = before["url"].as_str().unwrap().to_string();
    let primary_id = id(&primary(&before));
    let follower_id = id(&followers(&before)[0]);
    let _ = reject_replication(&t, &primary_id, &url).await;

    let (status, body) = t.post("/v1/chaos", json!({"instance": follower_id, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "the service needs a human", || async {
        let s = t.service("pgperm").await;
        (s["needs_human"] == true).then_some(s)
    })
    .await;
    let (_, actions) = t.get("/v1/actions?service=pgperm").await;
    let failed: Vec<&Value> =
        actions.as_array().unwrap().iter().filter(|a| a["kind"] == "provision" && a["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "one failed rebuild: {actions:#}");
    assert_eq!(failed[0]["attempts"], 1, "a refused login is not retried ({ATTEMPTS} allowed): {:#}", failed[0]);
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("pg_hba.conf rejects"), "the refusal is the evidence: {error}");
}

/// The router is a member of the service like its servers: killed, it is
/// started again on the same port within a second or two, and the event log
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_comes_back_on_the_same_url_and_the_event_log_says_so() {
    let (t, _reaper) = start_local().await;
    let (status, body) = t
        .post("/v1/services", json!({"name": "pgrt", "engine": "postgres", "followers": 0, "provider": "local"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let s = t.wait_available("pgrt", SLOW).await;
    let url = s["url"].as_str().unwrap().to_string();
    let pid_file = t.dir.path().join("local/routers").join(id(&s)).join("pgbouncer.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    unsafe_kill(pid.parse().unwrap());
    let event = poll(SLOW, "the router restart in the event log", || async {
        t.events("service=pgrt").await.into_iter().find(|e| {
            e["subject"] == "service" && e["cause"].as_str().unwrap_or("").contains("router (pgbouncer) exited unasked")
        })
    })
    .await;
    assert!(event["cause"].as_str().unwrap().contains("started again"), "{event}");
    let c = poll(SLOW, "the same URL answers again", || async { connect(&url).await }).await;
    c.simple_query("SELECT 1").await.unwrap();
    let (_, checks) = t.get("/v1/services/pgrt/checks").await;
    assert_eq!(checks["router"]["status"], "ok", "{checks}");
}

/// A new database nobody has written to yet: its backup restores as empty,
/// and the restore test passes (the source has no user table either) rather
/// than turning the backups check critical and, on the second try, paging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_passes_its_restore_test_as_empty() {
    let (mut t, _reaper) = start_local().await;
    let (status, body) = t
        .post("/v1/services", json!({"name": "pgnew", "engine": "postgres", "followers": 0, "provider": "local"}))
        .await;
    assert_eq!(status, 201, "{body}");
    t.wait_available("pgnew", SLOW).await;
    let (status, body) = t.post("/v1/services/pgnew/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "backup recorded", || async {
        (!t.service("pgnew").await["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    let (status, body) = t.post("/v1/services/pgnew/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let s = poll(SLOW, "the restore test's outcome", || async {
        let s = t.service("pgnew").await;
        (!s["backups"]["last_verify_ok"].is_null()).then_some(s)
    })
    .await;
    assert_eq!(s["backups"]["last_verify_ok"], true, "an empty database restores as empty: {s}");
    let (_, checks) = t.get("/v1/services/pgnew/checks").await;
    assert_eq!(checks["backups"]["status"], "ok", "{checks}");
    t.stop().await;
}

/// Makes the primary's pg_hba.conf reject replication (followers stream
/// over its unix socket), the way a bad config change would, and reloads
/// it: the path, the good file to restore, and an administrator's client
/// (Drover's `drover` role over the socket: the URL's role may not reload).
async fn reject_replication(
    t: &common::TestServer,
    primary_id: &str,
    _url: &str,
) -> (std::path::PathBuf, String, tokio_postgres::Client) {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(t.dir.path().join("local/state.json")).unwrap()).unwrap();
    let entry = &state["instances"][primary_id];
    let primary_dir = std::path::PathBuf::from(entry["dir"].as_str().unwrap());
    let socket = entry["socket"].as_str().map(std::path::PathBuf::from).unwrap_or_else(|| primary_dir.join("socket"));
    let port = entry["port"].as_u64().unwrap() as u16;
    let hba_path = primary_dir.join("pgdata/pg_hba.conf");
    let good_hba = std::fs::read_to_string(&hba_path).unwrap();
    std::fs::write(&hba_path, format!("local replication all reject\n{good_hba}")).unwrap();
    let mut config = tokio_postgres::Config::new();
    config.host_path(&socket).port(port).user("drover").dbname("postgres");
    let (c, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect over the socket as drover");
    tokio::spawn(connection);
    c.simple_query("SELECT pg_reload_conf()").await.unwrap();
    (hba_path, good_hba, c)
}

/// The attack of issue 10: a hung primary kept "available" by forged
/// heartbeats (`writable: true`, an ever higher seq). Sent with another
/// host's agent token and with an integration token, they are refused and
/// audited, and the engine fails over as if they had never been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_with_forged_heartbeats_still_fails_over_and_the_forgery_is_audited() {
    let (mut t, _reaper) = start_local_with(false).await;
    let before = create_pg(&t, "pgforged").await;
    let old_primary = id(&primary(&before));
    // The URL's password only for roles that may connect.
    let url = before["url"].as_str().unwrap().to_string();
    let password = url.split("://").nth(1).and_then(|r| r.split('@').next()).and_then(|u| u.split(':').nth(1)).unwrap();
    let viewer = t.token(json!({"name": "watcher", "role": "viewer"})).await;
    for path in ["/v1/services/pgforged", "/v1/services"] {
        let (_, seen) = t.get_as(Some(&viewer), path).await;
        assert!(!seen.to_string().contains(password), "a viewer sees the password: {seen}");
        assert!(seen.to_string().contains("@127.0.0.1:"), "the URL without its password: {seen}");
    }
    let elsewhere = t.token(json!({"name": "agent-elsewhere", "role": "agent", "host": "elsewhere"})).await;
    let integration = t.integration_token("platform").await;
    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let (stop, url, target) = (stop.clone(), t.at("/v1/heartbeats"), old_primary.clone());
        tokio::spawn(async move {
            let (mut sent, mut refused) = (0u64, 0u64);
            let mut seq = 1u64 << 40;
            while !stop.load(Ordering::Relaxed) {
                for token in [&elsewhere, &integration] {
                    seq += 1;
                    let beat = json!({"beats": [{"instance": target, "seq": seq,
                        "facts": {"role": "primary", "writable": true}}]});
                    let r = common::client_with(token).post(&url).json(&beat).send().await;
                    sent += 1;
                    refused += u64::from(r.is_ok_and(|r| r.status() == 403));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (sent, refused)
        })
    };
    let (status, body) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "hang"})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "a failover despite the forged heartbeats", || async {
        let s = t.service("pgforged").await;
        (id(&primary(&s)) != old_primary && primary(&s)["writable"] == true).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (sent, refused) = forger.await.unwrap();
    assert!(sent > 10 && refused == sent, "{refused} of {sent} forged batches refused");
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let forged: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["command"] == "POST /v1/heartbeats" && a["outcome"].as_str().unwrap_or("").starts_with("refused (403)")
        })
        .collect();
    for actor in ["agent-elsewhere", "alerts-platform"] {
        assert!(forged.iter().any(|a| a["actor"] == actor), "no refused heartbeat of {actor} in the audit trail");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_credentials_through_the_api_switches_the_url_refuses_a_second_rotation_and_is_audited() {
    let (mut t, _reaper) = start_local_tweaked(|opts| opts.engine.rotation_overlap = Duration::from_secs(4)).await;
    let before = create_pg(&t, "pgrot").await;
    let old_url = before["url"].as_str().unwrap().to_string();
    assert!(old_url.starts_with("postgres://app_a:") && old_url.ends_with("/app"), "{old_url}");
    let c = connect(&old_url).await.expect("the URL works");
    c.batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)").await.unwrap();
    drop(c);

    let (status, body) = t.post("/v1/services/nosuch/credentials/rotate", json!({})).await;
    assert_eq!(status, 404, "{body}");
    let (status, action) = t.post("/v1/services/pgrot/credentials/rotate", json!({})).await;
    assert_eq!(status, 202, "{action}");
    assert_eq!(action["kind"], "rotate_credentials", "{action}");
    let (status, body) = t.post("/v1/services/pgrot/credentials/rotate", json!({})).await;
    assert_eq!(status, 409, "a second rotation while the first runs or drains: {body}");
    let new_url = poll(SLOW, "the URL names the new credential", || async {
        let s = t.service("pgrot").await;
        let url = s["url"].as_str().unwrap_or_default().to_string();
        (url != old_url).then_some(url)
    })
    .await;
    assert!(new_url.starts_with("postgres://app_b:"), "{new_url}");
    let c = connect(&new_url).await.expect("the new URL works");
    let rows = c.simple_query("SELECT n FROM kept").await.expect("the new role reads the old role's table");
    assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    drop(c);
    poll(SLOW, "the old password refused after the overlap", || async {
        connect(&old_url).await.is_none().then_some(())
    })
    .await;
    let (status, body) = t.post("/v1/services/pgrot/credentials/rotate", json!({})).await;
    assert_eq!(status, 202, "a new rotation once the overlap is over: {body}");

    let (_, audit) = t.get("/v1/audit").await;
    let rotations: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|e| e["command"] == "services.rotate_credentials").collect();
    assert!(rotations.iter().filter(|e| e["outcome"] == "ok").count() >= 2, "{rotations:#?}");
    assert!(
        rotations.iter().any(|e| e["outcome"] != "ok" && e["target"] == "pgrot"),
        "the 409 is audited: {rotations:#?}"
    );
    assert!(rotations.iter().any(|e| e["target"] == "nosuch"), "the 404 is audited: {rotations:#?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_changes_the_password_and_the_old_one_is_refused_after_the_overlap_audited_as_the_schedule(
) {
    // Every 10 s (the control plane's default for plans that do not say), a
    // 5 s overlap: the engine opens both actions itself.
    let (mut t, _reaper) = start_local_tweaked(|opts| {
        opts.engine.credential_rotation = Some(Duration::from_secs(10));
        opts.engine.rotation_overlap = Duration::from_secs(5);
    })
    .await;
    let before = create_pg(&t, "pgsched").await;
    assert!(before["credentials"]["next_rotation_at"].is_string(), "scheduled: {}", before["credentials"]);
    // On a loaded machine the first rotation may come before the service is
    // available: start from whatever the URL names now.
    let old_url = t.service("pgsched").await["url"].as_str().unwrap().to_string();
    let c = connect(&old_url).await.expect("the URL works");
    c.batch_execute("CREATE TABLE IF NOT EXISTS kept (n int); INSERT INTO kept VALUES (1)").await.unwrap();
    drop(c);

    let new_url = poll(SLOW, "the schedule rotates the URL's credential", || async {
        let s = t.service("pgsched").await;
        let url = s["url"].as_str().unwrap_or_default().to_string();
        (url != old_url).then_some(url)
    })
    .await;
    let rotated = Instant::now();
    let login = |url: &str| url.split_once("://").and_then(|(_, r)| r.split_once(':')).unwrap().0.to_string();
    assert_ne!(login(&new_url), login(&old_url), "the other login role: {old_url} -> {new_url}");
    assert_ne!(password_of(&new_url), password_of(&old_url), "a new password");
    connect(&old_url).await.expect("the old password works in the overlap");
    let c = connect(&new_url).await.expect("the new URL works");
    c.simple_query("SELECT n FROM kept").await.expect("the new role reads the old role's table");
    drop(c);
    poll(SLOW, "the old password refused after the overlap", || async {
        connect(&old_url).await.is_none().then_some(())
    })
    .await;
    let refused_after = rotated.elapsed();
    assert!(
        refused_after >= Duration::from_secs(4),
        "revoked {refused_after:?} after the URL changed: overlap cut short"
    );
    let s = t.service("pgsched").await;
    assert!(s["credentials"]["last_rotated_at"].is_string(), "{}", s["credentials"]);

    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let by_schedule = |command: &str| {
        audit.as_array().unwrap().iter().any(|e| {
            e["actor"] == "schedule" && e["command"] == command && e["target"] == "pgsched" && e["outcome"] == "ok"
        })
    };
    assert!(by_schedule("services.rotate_credentials"), "the rotation is audited as the schedule's: {audit:#}");
    assert!(by_schedule("services.revoke_previous_credentials"), "so is the revocation: {audit:#}");
    eprintln!("scheduled rotation: the old password refused {refused_after:?} after the URL changed (overlap 5 s)");
    t.stop().await;
}

fn password_of(url: &str) -> String {
    let userinfo = url.split_once("://").and_then(|(_, rest)| rest.split_once('@')).map(|(u, _)| u).unwrap();
    userinfo.split_once(':').map(|(_, password)| password.to_string()).unwrap()
}
/// Issue 12: two services with a synchronous follower each, rolled onto an
/// image with a changed setting under a steady write load through their
/// URLs: every member ends on the image, the setting is in effect, no
/// statement failed, no acknowledged write is lost, the URLs are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_moves_two_services_onto_a_new_setting_without_a_failed_statement() {
    let (mut t, _reaper) = start_local().await;
    let mut urls = Vec::new();
    let mut writers = Vec::new();
    for name in ["pgra", "pgrb"] {
        let s = create_pg(&t, name).await;
        let url = s["url"].as_str().unwrap().to_string();
        let c = connect(&url).await.unwrap();
        c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
        drop(c);
        writers.push(Writer::start(url.clone()));
        urls.push(url);
    }
    for w in &writers {
        poll(SLOW, "writes flowing", || async { (w.acked() > 50).then_some(()) }).await;
    }
    let (status, image) = t.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "8MB"}})).await;
    assert!(status == 201 || status == 200, "{image}");
    let to = image["id"].as_str().unwrap().to_string();
    let (status, r) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"names": ["pgra", "pgrb"]}, "waves": [50, 100], "soak_seconds": 2}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    let done = poll(Duration::from_secs(600), "rollout succeeded", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(done["done"], 2, "{done}");
    for (w, (name, url)) in writers.iter().zip(["pgra", "pgrb"].iter().zip(&urls)) {
        let at = w.acked();
        poll(SLOW, "writes after the roll", || async { (w.acked() > at + 20).then_some(()) }).await;
        let s = t.service(name).await;
        assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
        let members = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| !matches!(i["state"].as_str(), Some("retiring" | "retired" | "archived" | "terminated")));
        for i in members {
            assert_eq!(i["image"].as_str(), Some(to.as_str()), "{name}: {i}");
        }
    }
    for (w, url) in writers.into_iter().zip(&urls) {
        let (acked, failures) = w.finish().await;
        assert_eq!(failures, 0, "no statement failed during the roll");
        let present = rows(url).await;
        assert!(acked.iter().all(|n| present.contains(n)), "an acknowledged write is missing");
        let c = connect(url).await.unwrap();
        let shown = c.simple_query("SHOW work_mem").await.unwrap();
        let value = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("8MB"), "the image's setting is in effect");
    }
    t.stop().await;
}

/// Issue 17, item 3: a resize under a steady write load through the URL:
/// the service moves onto an image with other settings by replacement
/// (a planned switchover, never a failover), the URL is the same, no
/// statement fails, no acknowledged write is lost, the setting is in effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_under_load_keeps_the_url_and_fails_no_statement() {
    let (mut t, _reaper) = start_local().await;
    let s = create_pg(&t, "pgsize").await;
    let url = s["url"].as_str().unwrap().to_string();
    let c = connect(&url).await.unwrap();
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    drop(c);
    let writer = Writer::start(url.clone());
    poll(SLOW, "writes flowing", || async { (writer.acked() > 50).then_some(()) }).await;
    let (status, image) = t
        .post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "12MB", "max_connections": "120"}}))
        .await;
    assert!(status == 201 || status == 200, "{image}");
    let to = image["id"].as_str().unwrap().to_string();
    let (status, bad) = t.post("/v1/services/pgsize/resize", json!({"image": "sha256:nope"})).await;
    assert_eq!(status, 404, "an image not registered: {bad}");
    let (status, bad) = t.post("/v1/services/pgsize/resize", json!({"image": ""})).await;
    assert_eq!(status, 400, "{bad}");
    let (status, r) = t.post("/v1/services/pgsize/resize", json!({"image": to})).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(r["total"], 1, "{r}");
    let rid = r["id"].as_str().unwrap().to_string();
    poll(Duration::from_secs(600), "resize done", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    let at = writer.acked();
    poll(SLOW, "writes after the resize", || async { (writer.acked() > at + 20).then_some(()) }).await;
    let s = t.service("pgsize").await;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
    for i in s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !matches!(i["state"].as_str(), Some("retiring" | "retired" | "archived" | "terminated")))
    {
        assert_eq!(i["image"].as_str(), Some(to.as_str()), "{i}");
    }
    let (acked, failures) = writer.finish().await;
    assert_eq!(failures, 0, "no statement failed during the resize");
    let present = rows(&url).await;
    assert!(acked.iter().all(|n| present.contains(n)), "an acknowledged write is missing");
    let c = connect(&url).await.unwrap();
    for (setting, want) in [("work_mem", "12MB"), ("max_connections", "120")] {
        let shown = c.simple_query(&format!("SHOW {setting}")).await.unwrap();
        let value = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some(want), "the image's {setting} is in effect");
    }
    let (_, actions) = t.get("/v1/actions?limit=10000").await;
    let fences: Vec<&Value> =
        actions.as_array().unwrap().iter().filter(|a| a["kind"] == "fence" && a["service"] == s["id"]).collect();
    assert_eq!(fences.len(), 1, "one fence, the switchover's: {fences:#?}");
    assert!(fences.iter().all(|a| a["immediate"] == false), "a switchover, not a failover: {fences:#?}");
    let (status, again) = t.post("/v1/services/pgsize/resize", json!({"image": to})).await;
    assert_eq!(status, 409, "already on the image: {again}");
    eprintln!("resize under load: {} writes acknowledged, 0 failed", acked.len());
    t.stop().await;
}

/// Waits for a fork to be available; if it never is, shows why.
async fn wait_fork(t: &common::TestServer, name: &str) -> Value {
    let deadline = Instant::now() + SLOW;
    loop {
        let s = t.service(name).await;
        let all =
            s["instances"].as_array().is_some_and(|i| !i.is_empty() && i.iter().all(|i| i["state"] == "available"));
        if s["state"] == "available" && all {
            return s;
        }
        if Instant::now() > deadline {
            let events = t.events(&format!("service={name}")).await;
            let causes: Vec<_> = events.iter().filter_map(|e| e["cause"].as_str()).collect();
            panic!("fork {name} not available: {s:#}\nevents: {causes:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Inserts `range` through `url`, one autocommit statement each.
async fn insert(url: &str, range: std::ops::RangeInclusive<u64>) {
    let c = connect(url).await.expect("connect to write");
    for n in range {
        c.execute("INSERT INTO writes VALUES ($1)", &[&(n as i64)]).await.expect("insert");
    }
}

/// The fork contract (issue 17): a fork at a given moment holds exactly the
/// rows committed before it, a fork of "latest" holds every acknowledged
/// row, each fork has its own URL and credential (the source's password is
/// refused there) and writes to it leave the source alone; forking a
/// service with no backup, from the future, or of a name taken is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_at_a_moment_holds_exactly_what_committed_before_it_and_a_fork_of_latest_everything() {
    let (t, _reaper) = start_local().await;
    let src = create_pg(&t, "pgsrc").await;
    let url = src["url"].as_str().unwrap().to_string();
    let c = connect(&url).await.unwrap();
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    insert(&url, 1..=100).await;
    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pgtoo-early"})).await;
    assert_eq!(status, 409, "no backup yet: {body}");
    assert!(body["error"].as_str().unwrap().contains("no backup"), "{body}");
    let (status, body) = t.post("/v1/services/pgsrc/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "backup recorded", || async {
        let s = t.service("pgsrc").await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    // Rows after the backup live only in archived WAL.
    insert(&url, 101..=200).await;
    let moment: String = c
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    insert(&url, 201..=300).await;

    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pgsrc", "at": moment})).await;
    assert_eq!(status, 409, "the name is taken: {body}");
    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pgf", "at": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(status, 400, "a moment in the future: {body}");
    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pgf", "at": "yesterday"})).await;
    assert_eq!(status, 400, "not a time: {body}");

    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pgat", "at": moment})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["forked_from"]["service"], "pgsrc", "{body}");
    let at = wait_fork(&t, "pgat").await;
    let at_url = at["url"].as_str().unwrap().to_string();
    assert_ne!(at_url, url, "a fork has its own URL");
    let expected: std::collections::BTreeSet<u64> = (1..=200).collect();
    assert_eq!(rows(&at_url).await, expected, "the fork at {moment} holds exactly rows 1..=200");

    // Latest: a row acknowledged a moment before the fork is in it.
    insert(&url, 301..=301).await;
    let (status, body) = t.post("/v1/services/pgsrc/fork", json!({"name": "pglatest"})).await;
    assert_eq!(status, 202, "{body}");
    let latest = wait_fork(&t, "pglatest").await;
    let latest_url = latest["url"].as_str().unwrap().to_string();
    let expected: std::collections::BTreeSet<u64> = (1..=301).collect();
    assert_eq!(rows(&latest_url).await, expected, "the fork of latest holds every acknowledged row");

    // Its own credential: the source's password does not open the fork.
    let port = |u: &str| u.rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let borrowed = url.replace(&format!(":{}/", port(&url)), &format!(":{}/", port(&latest_url)));
    assert!(connect(&borrowed).await.is_none(), "the source's credential is refused by the fork");
    // Writes to the fork leave the source alone.
    insert(&latest_url, 1000..=1000).await;
    assert!(!rows(&url).await.contains(&1000), "a write to the fork reached the source");
    let events = t.events("service=pglatest").await;
    assert!(events.iter().any(|e| e["cause"].as_str().is_some_and(|c| c.contains("forked from pgsrc"))), "{events:#?}");
}

/// Deprovision keeps the data (issue 17, item 5): a deleted service is
/// archived (its final backup), listed, restorable into a new service that
/// holds its rows, its name held meanwhile; past its retention the archive
/// is purged and its backups are gone from the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_is_archived_restored_with_its_rows_then_purged_with_its_backups() {
    let retention = Duration::from_secs(30);
    let (t, _reaper) = start_local_tweaked(move |opts| opts.engine.archive_retention = retention).await;
    let src = create_pg(&t, "pgdel").await;
    assert!(src["recoverable_since"].is_null(), "no backup yet: {src}");
    let url = src["url"].as_str().unwrap().to_string();
    let c = connect(&url).await.unwrap();
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    insert(&url, 1..=250).await;
    drop(c);

    let (status, body) = t.delete("/v1/services/pgdel").await;
    assert_eq!(status, 202, "{body}");
    let archive = poll(SLOW, "the archive archived", || async {
        let (_, list) = t.get("/v1/archives").await;
        list.as_array()
            .and_then(|l| l.iter().find(|a| a["service"] == "pgdel").cloned())
            .filter(|a| a["state"] == "archived")
    })
    .await;
    let id = archive["id"].as_str().unwrap().to_string();
    assert_eq!(archive["engine"], "postgres", "{archive}");
    let label = archive["backup_label"].as_str().expect("the final backup's label").to_string();
    assert!(!archive["purge_after"].is_null(), "{archive}");
    poll(SLOW, "the service gone", || async { (t.get("/v1/services/pgdel").await.0 == 404).then_some(()) }).await;
    let store = t.dir.path().join("local/backups/repo");
    assert!(store.join("backup/pgdel").join(&label).exists(), "the final backup is in the repository");

    // The name is held; bad restores are refused.
    let (status, body) =
        t.post("/v1/services", json!({"name": "pgdel", "engine": "postgres", "provider": "local"})).await;
    assert_eq!(status, 409, "the name is held by the archive: {body}");
    let (status, body) =
        t.post("/v1/archives/01890000-0000-7000-8000-000000000000/restore", json!({"name": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = t.post(&format!("/v1/archives/{id}/restore"), json!({"name": "Not A Name"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t.post(&format!("/v1/archives/{id}/restore"), json!({"name": "pgdel"})).await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = t.post(&format!("/v1/archives/{id}/restore"), json!({"name": "pgback"})).await;
    assert_eq!(status, 202, "{body}");
    let back = wait_fork(&t, "pgback").await;
    let back_url = back["url"].as_str().unwrap().to_string();
    let expected: std::collections::BTreeSet<u64> = (1..=250).collect();
    assert_eq!(rows(&back_url).await, expected, "the restored service holds every row of the deleted one");

    // Past its retention: purged, its backups gone, the restored service's own kept.
    let purged = poll(SLOW + retention, "the archive purged", || async {
        let (_, list) = t.get("/v1/archives").await;
        list.as_array()
            .and_then(|l| l.iter().find(|a| a["id"] == id.as_str()).cloned())
            .filter(|a| a["state"] == "purged")
    })
    .await;
    assert!(purged["error"].is_null(), "{purged}");
    assert!(!store.join("backup/pgdel").exists(), "its backups are removed");
    assert!(!store.join("archive/pgdel").exists(), "its archived WAL is removed");
    assert!(store.join("archive/pgback").exists(), "the restored service archives under its own name");
    let events = t.events("service=pgdel").await;
    let states: Vec<&str> =
        events.iter().filter(|e| e["kind"]["type"] == "archive").filter_map(|e| e["to"].as_str()).collect();
    assert_eq!(states, ["archiving", "archived", "purged"], "{events:#?}");
}

async fn server_version(url: &str) -> String {
    scalar(url, "SHOW server_version").await.unwrap_or_default()
}

/// The first column of the first row of `sql` through `url`; None when it
/// cannot connect or the statement fails (a poll tries again).
async fn scalar(url: &str, sql: &str) -> Option<String> {
    let c = connect(url).await?;
    let shown = c.simple_query(sql).await.ok()?;
    shown.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Takes a backup of `name` and waits for it to be recorded (a newer
/// `last_backup_at` than before), then restore-tests it and waits for the
/// outcome; returns the service after both.
async fn backup_and_restore_test(t: &common::TestServer, name: &str) -> Value {
    let before = t.service(name).await["backups"]["last_backup_at"].clone();
    let verified_before = t.service(name).await["backups"]["last_verified_restore_at"].clone();
    let (status, body) = t.post(&format!("/v1/services/{name}/backups"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "backup recorded", || async {
        let s = t.service(name).await;
        let checks = t.get(&format!("/v1/services/{name}/checks")).await.1;
        assert!(
            !checks["backups"].to_string().contains("the latest backup attempt failed"),
            "the backup failed: {checks}"
        );
        (!s["backups"]["last_backup_at"].is_null() && s["backups"]["last_backup_at"] != before).then_some(())
    })
    .await;
    let (status, body) = t.post(&format!("/v1/services/{name}/backups/verify"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "the restore test's outcome", || async {
        let s = t.service(name).await;
        (!s["backups"]["last_verify_ok"].is_null() && s["backups"]["last_verified_restore_at"] != verified_before)
            .then_some(s)
    })
    .await
}

async fn wait_rollout(t: &common::TestServer, r: &Value) {
    let rid = id(r);
    poll(Duration::from_secs(600), "the upgrade's rollout done", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
}

/// Issue 17 item 4: PostgreSQL 15 → 17 under a steady write load through
/// the URL (a logical subscriber of 17, a planned switchover), then back to
/// 15 the same way with the writes made on 17. Needs PostgreSQL 17 in
/// /var/cache/drover/postgresql/17 (scripts/lib.sh ensure_pg_majors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_major_upgrade_under_load_keeps_the_url_and_loses_no_write_and_rolls_back() {
    assert!(
        drover_providers::local::major_installed(17),
        "PostgreSQL 17 is not installed: run scripts/lib.sh's ensure_pg_majors (scripts/test does)"
    );
    let (mut t, _reaper) = start_local().await;
    let (status, body) = t
        .post("/v1/services", json!({"name": "pgup", "engine": "postgres", "followers": 0, "provider": "local"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let s = t.wait_available("pgup", SLOW).await;
    let url = s["url"].as_str().unwrap().to_string();
    assert!(server_version(&url).await.starts_with("15."), "starts on 15");
    let c = connect(&url).await.unwrap();
    c.batch_execute(
        "CREATE TABLE writes (n bigint PRIMARY KEY); \
         CREATE TABLE notes (id bigserial PRIMARY KEY, note text NOT NULL); \
         INSERT INTO notes (note) VALUES ('one'), ('two'), ('three')",
    )
    .await
    .unwrap();
    drop(c);
    let writer = Writer::start(url.clone());
    poll(SLOW, "writes flowing", || async { (writer.acked() > 50).then_some(()) }).await;
    // A backup on 15 first: the stanza the upgrade must move onto 17.
    let s = backup_and_restore_test(&t, "pgup").await;
    assert_eq!(s["backups"]["last_verify_ok"], true, "15's backup restores: {s}");

    let (status, bad) = t.post("/v1/services/pgup/upgrade", json!({"version": "99"})).await;
    assert_eq!(status, 409, "a major not installed: {bad}");
    let (status, bad) = t.post("/v1/services/pgup/upgrade", json!({"version": "latest"})).await;
    assert_eq!(status, 400, "not a major version: {bad}");
    let (status, bad) = t.post("/v1/services/pgup/upgrade", json!({"version": "15"})).await;
    assert_eq!(status, 409, "not newer: {bad}");
    let (status, bad) = t.post("/v1/services/pgup/upgrade/rollback", json!({})).await;
    assert_eq!(status, 409, "nothing to roll back yet: {bad}");
    let started = Instant::now();
    let (status, r) = t.post("/v1/services/pgup/upgrade", json!({"version": "17"})).await;
    assert_eq!(status, 202, "{r}");
    wait_rollout(&t, &r).await;
    let upgrade_took = started.elapsed();
    let at = writer.acked();
    poll(SLOW, "writes after the upgrade", || async { (writer.acked() > at + 20).then_some(()) }).await;
    let s = t.service("pgup").await;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
    let version = server_version(&url).await;
    assert!(version.starts_with("17."), "the URL serves 17 now: {version}");
    assert!(s["upgraded_from"].is_string(), "the way back is kept: {s}");
    let c = connect(&url).await.unwrap();
    let next = c.simple_query("INSERT INTO notes (note) VALUES ('on 17') RETURNING id").await.unwrap();
    let next: Vec<String> = next
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(next, vec!["4".to_string()], "the sequence continues where 15 left it");
    drop(c);
    let (status, again) = t.post("/v1/services/pgup/upgrade", json!({"version": "17"})).await;
    assert_eq!(status, 409, "on 17 already: {again}");
    // pgBackRest 2.55 archives 17's WAL once the promotion moved the
    // stanza onto 17 (stanza-upgrade), before any backup is asked for.
    let archived = poll(SLOW, "17's WAL archived", || async {
        let sql = "SELECT last_archived_wal FROM pg_stat_archiver \
                   WHERE last_archived_time > coalesce(last_failed_time, '-infinity')";
        scalar(&url, sql).await
    })
    .await;
    eprintln!("17 archives WAL after the cut-over: {archived}");
    // 17 is backed up and its backup restores (with 17's binaries).
    let s = backup_and_restore_test(&t, "pgup").await;
    assert_eq!(s["backups"]["last_verify_ok"], true, "17's backup restores: {s}");
    let (_, checks) = t.get("/v1/services/pgup/checks").await;
    assert_eq!(checks["backups"]["status"], "ok", "{checks}");
    let acked_on_17 = writer.acked();

    let started = Instant::now();
    let (status, r) = t.post("/v1/services/pgup/upgrade/rollback", json!({})).await;
    assert_eq!(status, 202, "{r}");
    wait_rollout(&t, &r).await;
    let rollback_took = started.elapsed();
    let at = writer.acked();
    poll(SLOW, "writes after the rollback", || async { (writer.acked() > at + 20).then_some(()) }).await;
    let s = t.service("pgup").await;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
    let version = server_version(&url).await;
    assert!(version.starts_with("15."), "back on 15: {version}");
    assert!(s["upgraded_from"].is_null(), "rolled back: {s}");
    // The stanza follows the way back too (a new 15 cluster).
    let s = backup_and_restore_test(&t, "pgup").await;
    assert_eq!(s["backups"]["last_verify_ok"], true, "15's backup after the rollback restores: {s}");
    let (acked, failures) = writer.finish().await;
    let present = rows(&url).await;
    let missing: Vec<&u64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(missing.is_empty(), "{} acknowledged writes are missing (first {:?})", missing.len(), missing.first());
    assert!(acked.len() > acked_on_17, "writes were made on 17 and after");
    let c = connect(&url).await.unwrap();
    let notes = c.simple_query("SELECT note FROM notes WHERE id = 4").await.unwrap();
    assert!(
        notes.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("on 17"))),
        "the row written on 17 came back to 15"
    );
    let (_, actions) = t.get("/v1/actions?limit=10000").await;
    let fences: Vec<&Value> =
        actions.as_array().unwrap().iter().filter(|a| a["kind"] == "fence" && a["service"] == s["id"]).collect();
    assert_eq!(fences.len(), 2, "one switchover each way: {fences:#?}");
    assert!(fences.iter().all(|a| a["immediate"] == false), "switchovers, not failovers: {fences:#?}");
    eprintln!(
        "major upgrade under load: 15 -> 17 in {upgrade_took:?}, back to 15 in {rollback_took:?}; \
         {} writes acknowledged, {failures} statements failed, 0 lost",
        acked.len()
    );
    assert_eq!(failures, 0, "no statement failed during the upgrade and its rollback");
    t.stop().await;
}

/// Issue 17: PostgreSQL 15 → 17 of a service with a follower under a
/// steady write load through the URL. Before the cut-over the one member
/// of 17 is the logical subscriber (the old follower is retired: it cannot
/// follow 17); after it the plan's follower is restored on 17 from the new
/// primary's first pgBackRest backup (npm's 17 has no pg_basebackup) and
/// streams; a read replica added on 17 serves reads through its own URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_of_a_service_with_a_follower_under_load_rebuilds_it_on_17_and_a_replica_of_17_serves_reads() {
    assert!(
        drover_providers::local::major_installed(17),
        "PostgreSQL 17 is not installed: run scripts/lib.sh's ensure_pg_majors (scripts/test does)"
    );
    let (mut t, _reaper) = start_local().await;
    let (status, body) = t
        .post("/v1/services", json!({"name": "pgupf", "engine": "postgres", "followers": 1, "provider": "local"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let s = t.wait_available("pgupf", SLOW).await;
    let url = s["url"].as_str().unwrap().to_string();
    let old_follower = followers(&s).first().map(|f| f["id"].clone()).expect("a follower on 15");
    let c = connect(&url).await.unwrap();
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    drop(c);
    let writer = Writer::start(url.clone());
    poll(SLOW, "writes flowing", || async { (writer.acked() > 50).then_some(()) }).await;

    let started = Instant::now();
    let (status, r) = t.post("/v1/services/pgupf/upgrade", json!({"version": "17"})).await;
    assert_eq!(status, 202, "{r}");
    wait_rollout(&t, &r).await;
    let upgrade_took = started.elapsed();
    let s = t.service("pgupf").await;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
    assert!(server_version(&url).await.starts_with("17."), "the URL serves 17");
    // The follower of 17: restored from a backup, then streaming.
    let s = poll(Duration::from_secs(300), "a follower of 17 streams", || async {
        let s = t.service("pgupf").await;
        let checks = t.get("/v1/services/pgupf/checks").await.1;
        let fs = followers(&s);
        (s["state"] == "available"
            && fs.len() == 1
            && fs[0]["id"] != old_follower
            && fs[0]["state"] == "available"
            && checks["replication"]["status"] == "ok")
            .then_some(s)
    })
    .await;
    let follower_after = started.elapsed();
    assert!(
        s["instances"].as_array().unwrap().iter().all(|i| i["id"] != old_follower),
        "the follower of 15 is gone: {s}"
    );
    // (The application's role sees pg_stat_replication's rows, not their state.)
    let streaming = scalar(&url, "SELECT count(*) FROM pg_stat_replication").await;
    assert_eq!(streaming.as_deref(), Some("1"), "the new follower streams from the 17 primary");

    // A read replica added on 17 serves reads through its own URL.
    let (status, body) = t.post("/v1/services/pgupf/followers", json!({"count": 1})).await;
    assert_eq!(status, 202, "{body}");
    let read_url = poll(Duration::from_secs(300), "the read replica of 17 serves its URL", || async {
        let s = t.service("pgupf").await;
        let urls = s["read_urls"].as_array().cloned().unwrap_or_default();
        (s["state"] == "available" && urls.len() == 1).then(|| urls[0].as_str().unwrap_or_default().to_string())
    })
    .await;
    let at = writer.acked();
    poll(SLOW, "writes after", || async { (writer.acked() > at + 20).then_some(()) }).await;
    let (acked, failures) = writer.finish().await;
    let last = *acked.iter().max().expect("writes acknowledged");
    let seen = poll(SLOW, "the last acknowledged write through the read URL", || async {
        scalar(&read_url, &format!("SELECT n FROM writes WHERE n = {last}")).await
    })
    .await;
    assert_eq!(seen, last.to_string());
    assert_eq!(scalar(&read_url, "SELECT pg_is_in_recovery()").await.as_deref(), Some("t"), "served by a replica");
    assert!(server_version(&read_url).await.starts_with("17."), "a replica of 17");
    let present = rows(&url).await;
    let missing: Vec<&u64> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(missing.is_empty(), "{} acknowledged writes are missing (first {:?})", missing.len(), missing.first());
    eprintln!(
        "major upgrade of a service with a follower under load: 15 -> 17 in {upgrade_took:?}, a follower of 17 \
         streaming {follower_after:?} after the request; {} writes acknowledged, {failures} statements failed, 0 lost",
        acked.len()
    );
    assert_eq!(failures, 0, "no statement failed during the upgrade");
    t.stop().await;
}
