//! Issue 17 item 4: kill -9 of the real `drover serve` in the middle of a
//! major-version upgrade (PostgreSQL 15 -> 17 by logical replication) under
//! a steady write load through the URL: once while the 17 subscriber is
//! being built, once at the cut-over. The upgrade resumes and succeeds with
//! one planned switchover (the cut-over is never repeated); no statement
//! failed, no acknowledged write is lost, the URL is the same and serves 17.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(240);

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
async fn kill_9_of_the_control_plane_mid_upgrade_resumes_with_one_cut_over_and_no_failed_statement() {
    assert!(
        drover_providers::local::major_installed(17),
        "PostgreSQL 17 is not installed: run scripts/lib.sh's ensure_pg_majors (scripts/test does)"
    );
    let dir = tempfile::Builder::new().prefix("drover-upcrash").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let mut serve = Serve::start(&cwd, free_port(), &["--data-dir", "d", "--default-provider", "local"]);
    let api = serve.api.clone();
    let anon = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&anon, SLOW).await;
    let http = common::admin_client(&cwd.join("d"));
    let name = "upk";
    let r = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": name, "engine": "postgres", "followers": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    let s = wait_for(SLOW, "available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/{name}")).await?;
        (s["state"] == "available").then_some(s)
    })
    .await;
    let url = s["url"].as_str().unwrap().to_string();
    let c = connect(&url).await.expect("the URL works");
    c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY)").await.unwrap();
    drop(c);
    let writer = Writer::start(url.clone());
    wait_for(SLOW, "writes flowing", &serve, || async { (writer.acked() > 50).then_some(()) }).await;

    let r =
        http.post(format!("{api}/v1/services/{name}/upgrade")).json(&json!({"version": "17"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let rollout: Value = r.json().await.unwrap();
    let rid = rollout["id"].as_str().unwrap().to_string();
    let to = rollout["to_image"].as_str().unwrap().to_string();

    // Kill 1: the 17 subscriber is being built.
    wait_for(SLOW, "the 17 member being built", &serve, || async {
        let actions = arr(get(&http, &format!("{api}/v1/actions?limit=1000")).await);
        actions
            .iter()
            .any(|a| a["kind"] == "provision" && a["image"] == to.as_str() && a["state"] == "running")
            .then_some(())
    })
    .await;
    serve.kill9();
    eprintln!("kill -9 #1 while the 17 subscriber is built");
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;

    // Kill 2: at the cut-over (the switchover's fence opened).
    wait_for(Duration::from_secs(600), "the cut-over", &serve, || async {
        let actions = arr(get(&http, &format!("{api}/v1/actions?limit=1000")).await);
        actions.iter().any(|a| a["kind"] == "fence").then_some(())
    })
    .await;
    serve.kill9();
    eprintln!("kill -9 #2 at the cut-over");
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;

    let done = wait_for(Duration::from_secs(600), "upgrade succeeded", &serve, || async {
        let (_, r) = get(&http, &format!("{api}/v1/rollouts/{rid}")).await?;
        if r["state"] == "paused" || r["state"] == "failed" {
            // Why, in full: the member's detail, the service's story and
            // the control plane's log (the temp dir goes with the test).
            let members = get(&http, &format!("{api}/v1/rollouts/{rid}/services")).await;
            let events = get(&http, &format!("{api}/v1/events?limit=1000")).await;
            panic!("{r}\nmembers: {members:?}\nevents: {events:#?}\nlog:\n{}", serve.log_tail());
        }
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(done["failed"].as_u64(), Some(0), "{done}");
    let at = writer.acked();
    wait_for(SLOW, "writes after the upgrade", &serve, || async { (writer.acked() > at + 20).then_some(()) }).await;
    let (acked, failures, slowest) = writer.finish().await;
    let present = rows(&url).await;
    let lost = acked.iter().filter(|n| !present.contains(n)).count();
    assert_eq!(lost, 0, "acknowledged writes lost");
    let c = connect(&url).await.unwrap();
    let shown = c.simple_query("SHOW server_version").await.unwrap();
    let version = shown.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert!(version.as_deref().is_some_and(|v| v.starts_with("17.")), "the URL serves 17: {version:?}");
    let s = get(&http, &format!("{api}/v1/services/{name}")).await.unwrap().1;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL is unchanged");
    let members: Vec<&Value> = s["instances"].as_array().unwrap().iter().filter(|i| is_member(i)).collect();
    assert_eq!(members.len(), 1, "one primary: {s}");
    assert_eq!(members[0]["image"].as_str(), Some(to.as_str()));
    let actions = arr(get(&http, &format!("{api}/v1/actions?limit=10000")).await);
    let fences: Vec<&Value> = actions.iter().filter(|a| a["kind"] == "fence" && a["service"] == s["id"]).collect();
    assert_eq!(fences.len(), 1, "one cut-over, never repeated: {fences:#?}");
    assert!(fences.iter().all(|a| a["immediate"] == false), "a switchover, not a failover");
    eprintln!(
        "upgrade through two kill -9: {} acknowledged, {failures} failed, 0 lost, slowest {slowest} ms",
        acked.len()
    );
    assert_eq!(failures, 0, "no statement failed during the upgrade and the kills");
    serve.kill9();
}
