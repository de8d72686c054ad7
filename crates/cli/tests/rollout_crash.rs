//! Issue 12: kill -9 of the real `drover serve` in the middle of a rollout
//! on real PostgreSQL. Two services with a synchronous follower each are
//! rolled onto an image with a changed setting under a steady write load
//! through their URLs; the control plane is killed twice (while the first
//! service's new follower is being built, then while the second service
//! moves) and restarted on the same data dir. The rollout resumes and
//! succeeds; no service is moved twice (one planned switchover and two
//! new members each, one "moving" record each); every member ends on the
//! new image with the setting in effect; no statement failed, no
//! acknowledged write is lost, the URLs are the same.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(240);
const NAMES: [&str; 2] = ["rka", "rkb"];

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .ok()?
            .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Inserts 1, 2, 3, ... through `url`, one autocommit statement each,
/// recording every acknowledged value, every failed statement (an error
/// answered, a connection refused or lost) and the slowest answer. A
/// statement held while the control plane is down is slow, not failed:
/// it has 60 s.
struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    failures: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, sl, s) = (acked.clone(), failures.clone(), slowest_ms.clone(), stop.clone());
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
                let sql = format!("INSERT INTO writes VALUES ({next}) ON CONFLICT DO NOTHING");
                let began = Instant::now();
                match tokio::time::timeout(Duration::from_secs(60), c.batch_execute(&sql)).await {
                    Ok(Ok(())) => {
                        sl.fetch_max(began.elapsed().as_millis() as u64, Ordering::SeqCst);
                        a.lock().unwrap().push(next);
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        f.fetch_add(1, Ordering::SeqCst);
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Writer { acked, failures, slowest_ms, stop, task }
    }
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    async fn finish(self) -> (Vec<u64>, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failures.load(Ordering::SeqCst), self.slowest_ms.load(Ordering::SeqCst))
    }
}

async fn rows(url: &str) -> BTreeSet<u64> {
    let c = connect(url).await.expect("connect to read back");
    let msgs = c.simple_query("SELECT n FROM writes").await.expect("read back");
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect()
}

fn arr(v: Option<(u16, Value)>) -> Vec<Value> {
    v.and_then(|(_, v)| v.as_array().cloned()).unwrap_or_default()
}

fn is_member(i: &Value) -> bool {
    !matches!(i["state"].as_str(), Some("retiring" | "retired" | "archived" | "terminated"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_plane_mid_rollout_resumes_without_moving_a_service_twice_or_failing_a_statement() {
    let dir = tempfile::Builder::new().prefix("drover-rollcrash").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let mut serve = Serve::start(&cwd, free_port(), &["--data-dir", "d", "--default-provider", "local"]);
    let api = serve.api.clone();
    let anon = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&anon, SLOW).await;
    let http = common::admin_client(&cwd.join("d"));

    let mut urls = Vec::new();
    let mut ids = Vec::new();
    for name in NAMES {
        let r = http
            .post(format!("{api}/v1/services"))
            .json(&json!({"name": name, "engine": "postgres", "followers": 1, "sync": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    }
    for name in NAMES {
        let s = wait_for(SLOW, "available and streaming", &serve, || async {
            let (_, s) = get(&http, &format!("{api}/v1/services/{name}")).await?;
            let streaming = s["instances"].as_array()?.iter().any(|i| i["facts"]["upstream_streaming"] == true);
            (s["state"] == "available" && streaming).then_some(s)
        })
        .await;
        urls.push(s["url"].as_str().unwrap().to_string());
        ids.push(s["id"].clone());
    }
    let mut writers = Vec::new();
    for url in &urls {
        let c = connect(url).await.expect("the URL works");
        c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
        drop(c);
        writers.push(Writer::start(url.clone()));
    }
    for w in &writers {
        wait_for(SLOW, "writes flowing", &serve, || async { (w.acked() > 50).then_some(()) }).await;
    }

    let r = http
        .post(format!("{api}/v1/images"))
        .json(&json!({"engine": "postgres", "settings": {"work_mem": "9MB"}}))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 201));
    let image: Value = r.json().await.unwrap();
    let to = image["id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{api}/v1/rollouts"))
        .json(&json!({"to_image": to, "selector": {"names": NAMES}, "waves": [50, 100], "soak_seconds": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let rid = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    // Kill 1: the first service's new follower is being built (a base
    // backup in flight).
    let first = wait_for(SLOW, "a follower of the new image being built", &serve, || async {
        let actions = arr(get(&http, &format!("{api}/v1/actions?limit=1000")).await);
        actions
            .iter()
            .find(|a| a["kind"] == "provision" && a["image"] == to.as_str() && a["state"] != "succeeded")
            .map(|a| a["service"].clone())
    })
    .await;
    let members_before = arr(get(&http, &format!("{api}/v1/rollouts/{rid}/services")).await);
    serve.kill9();
    eprintln!("kill -9 #1 while {first} builds its new follower");
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;

    // Kill 2: the first service is moved and the second is moving.
    wait_for(Duration::from_secs(600), "the second service moving", &serve, || async {
        let (_, r) = get(&http, &format!("{api}/v1/rollouts/{rid}")).await?;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["done"] == 1 && r["moving"] == 1).then_some(())
    })
    .await;
    // Let its first step open, so the kill lands inside a move.
    wait_for(SLOW, "the second service's first step", &serve, || async {
        let actions = arr(get(&http, &format!("{api}/v1/actions?limit=1000")).await);
        let n = actions
            .iter()
            .filter(|a| a["kind"] == "provision" && a["image"] == to.as_str() && a["service"] != first)
            .count();
        (n >= 1).then_some(())
    })
    .await;
    serve.kill9();
    eprintln!("kill -9 #2 while the second service moves");
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;

    let done = wait_for(Duration::from_secs(900), "rollout succeeded", &serve, || async {
        let (_, r) = get(&http, &format!("{api}/v1/rollouts/{rid}")).await?;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!((done["done"].as_u64(), done["failed"].as_u64()), (Some(2), Some(0)), "{done}");

    // Writes go on after the roll, then stop.
    for w in &writers {
        let at = w.acked();
        wait_for(SLOW, "writes after the roll", &serve, || async { (w.acked() > at + 20).then_some(()) }).await;
    }
    let mut figures = Vec::new();
    for (w, url) in writers.into_iter().zip(&urls) {
        let (acked, failures, slowest) = w.finish().await;
        assert_eq!(failures, 0, "no statement failed during the roll and the kills");
        let present = rows(url).await;
        let lost = acked.iter().filter(|n| !present.contains(n)).count();
        assert_eq!(lost, 0, "acknowledged writes lost");
        let c = connect(url).await.unwrap();
        let shown = c.simple_query("SHOW work_mem").await.unwrap();
        let value = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("9MB"), "the image's setting is in effect");
        figures.push(format!("{} acknowledged, 0 failed, 0 lost, slowest {slowest} ms", acked.len()));
    }

    let actions = arr(get(&http, &format!("{api}/v1/actions?limit=10000")).await);
    for (k, name) in NAMES.iter().enumerate() {
        let s = get(&http, &format!("{api}/v1/services/{name}")).await.unwrap().1;
        assert_eq!(s["id"], ids[k], "{name} is the same service");
        assert_eq!(s["url"].as_str(), Some(urls[k].as_str()), "{name}: the URL is unchanged");
        assert_eq!(s["state"], "available", "{s}");
        let members: Vec<&Value> = s["instances"].as_array().unwrap().iter().filter(|i| is_member(i)).collect();
        assert_eq!(members.len(), 2, "{name}: a primary and a follower: {s}");
        for i in members {
            assert_eq!(i["image"].as_str(), Some(to.as_str()), "{name}: {i}");
        }
        let mine: Vec<&Value> = actions.iter().filter(|a| a["service"] == s["id"] || a["service"] == *name).collect();
        let count = |pred: &dyn Fn(&Value) -> bool| mine.iter().filter(|a| pred(a)).count();
        assert_eq!(
            count(&|a| a["kind"] == "fence" && a["state"] == "succeeded"),
            1,
            "{name}: one planned switchover: {mine:#?}"
        );
        assert_eq!(count(&|a| a["kind"] == "fence" && a["immediate"] == true), 0, "{name}: no failover");
        assert_eq!(
            count(&|a| a["kind"] == "provision" && a["image"] == to.as_str() && a["state"] == "succeeded"),
            2,
            "{name}: two members built from the new image, no more: {mine:#?}"
        );
        let events = arr(get(&http, &format!("{api}/v1/events?service={name}&limit=10000")).await);
        let moving =
            events.iter().filter(|e| e["cause"].as_str().is_some_and(|c| c.contains("moving onto image"))).count();
        assert_eq!(moving, 1, "{name} started moving once: {events:#?}");
    }
    // A member's start, once recorded, is never rewritten by a restart.
    let members_after = arr(get(&http, &format!("{api}/v1/rollouts/{rid}/services")).await);
    let started: HashMap<String, Value> =
        members_after.iter().map(|m| (m["name"].as_str().unwrap().to_string(), m["started_at"].clone())).collect();
    for m in members_before.iter().filter(|m| m["started_at"].is_string()) {
        assert_eq!(started[m["name"].as_str().unwrap()], m["started_at"], "{m}");
    }
    assert!(members_after.iter().all(|m| m["phase"] == "done"), "{members_after:#?}");
    eprintln!("rollout through two kill -9: {}", figures.join("; "));
    serve.kill9();
}
