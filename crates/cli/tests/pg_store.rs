//! `drover serve --store postgres://…`: the fleet's state lives in a real
//! PostgreSQL 15 (started by the test), a service created through the API is
//! there, and after kill -9 of the control plane a restart on the same
//! store finds the service and every event it had.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{admin_client, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const GENEROUS: Duration = Duration::from_secs(60);

async fn service_events(http: &reqwest::Client, api: &str, name: &str) -> Vec<Value> {
    match get(http, &format!("{api}/v1/events?service={name}&limit=10000")).await {
        Some((200, Value::Array(events))) => events,
        other => panic!("events of {name}: {other:?}"),
    }
}

fn ids(events: &[Value]) -> BTreeSet<(u64, String)> {
    events.iter().map(|e| (e["seq"].as_u64().unwrap(), e["id"].as_str().unwrap_or_default().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_postgres_store_keeps_services_and_events_across_kill_9() {
    // Declared first, dropped last: the store outlives every control plane.
    let pg = pg::PgServer::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let data_arg = data.to_str().unwrap().to_string();
    let mut serve = Serve::start(
        dir.path(),
        port,
        &[
            "--data-dir",
            &data_arg,
            "--store",
            &url,
            "--default-provider",
            "sim",
            "--no-local",
            "--heartbeat-interval-ms",
            "100",
            "--action-latency-ms",
            "50",
        ],
    );
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&plain, GENEROUS).await;
    let http = admin_client(&data);
    let api = serve.api.clone();

    let (status, created) =
        common::post(&http, &api, "/v1/services", json!({"name": "kept", "engine": "postgres", "followers": 1})).await;
    assert_eq!(status, 201, "{created}");
    let service_id = created["id"].as_str().expect("the new service's id").to_string();

    wait_for(GENEROUS, "the service to be available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/kept")).await?;
        (s["state"] == "available").then_some(())
    })
    .await;
    let before = service_events(&http, &api, "kept").await;
    assert!(!before.is_empty(), "a created service has events");

    // The state is in PostgreSQL, not in the data dir's SQLite file.
    let in_pg = pg.psql("postgres", "SELECT count(*) FROM services WHERE name = 'kept'");
    assert_eq!(in_pg.trim(), "1");
    let events_in_pg: usize =
        pg.psql("postgres", "SELECT count(*) FROM events WHERE service = 'kept'").trim().parse().unwrap();
    assert!(events_in_pg >= before.len(), "{events_in_pg} events in PostgreSQL, {} through the API", before.len());
    let sqlite = rusqlite_count(&data.join("drover.db"));
    assert_eq!(sqlite, 0, "drover.db must hold no services when the store is PostgreSQL");

    serve.kill9();
    serve.spawn();
    serve.wait_healthy(&plain, GENEROUS).await;

    // The same admin token (kept in the data dir) still works, and the
    // service and every event acknowledged before the kill are there.
    let (status, s) = get(&http, &format!("{api}/v1/services/kept")).await.expect("show after restart");
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["id"].as_str(), Some(service_id.as_str()));
    let after = service_events(&http, &api, "kept").await;
    let lost: Vec<_> = ids(&before).difference(&ids(&after)).cloned().collect();
    assert!(lost.is_empty(), "events lost across kill -9: {lost:?}");
    wait_for(GENEROUS, "the service to be available after the restart", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/kept")).await?;
        (s["state"] == "available").then_some(())
    })
    .await;
    let starts: usize = pg.psql("postgres", "SELECT count(*) FROM engine_starts").trim().parse().unwrap();
    assert_eq!(starts, 2, "both starts of the engine are recorded in PostgreSQL");
    drop(serve);
}

/// Services in the SQLite file beside, read with the sqlite3-free way the
/// store itself offers: open it and load.
fn rusqlite_count(path: &std::path::Path) -> usize {
    drover_store::Store::load(&drover_store::SqliteStore::open(path).unwrap()).unwrap().services.len()
}

fn with_role<'a>(service: &'a Value, role: &str) -> Vec<&'a Value> {
    service["instances"].as_array().map(|i| i.iter().filter(|i| i["role"] == role).collect()).unwrap_or_default()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// crash_restart's failover case on a PostgreSQL store: kill -9 while the
/// failover's fence or promote runs; after the restart the failover
/// completes with exactly one writable primary and one successful promote
/// (nothing acknowledged was lost, nothing harmful was repeated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_interrupted_by_kill_9_completes_once_on_a_postgres_store() {
    let pg = pg::PgServer::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let port = free_port();
    #[rustfmt::skip]
    let args = [
        "--data-dir", &data_arg, "--store", &url,
        "--uncertain-after-ms", "400", "--restart-grace-secs", "0.3", "--probe-interval-ms", "200",
        "--action-timeout-ms", "3000", "--heartbeat-interval-ms", "100",
        "--default-provider", "sim", "--no-local",
        // A visible window for the kill to land in a fence or promote.
        "--action-latency-ms", "250",
    ];
    let mut serve = Serve::start(dir.path(), port, &args);
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&plain, GENEROUS).await;
    let http = admin_client(&data);
    let api = serve.api.clone();
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{api}{path}")).json(&body).send();
        async move {
            let r = request.await.expect("POST");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, created) = post("/v1/services", json!({"name": "crashy", "engine": "postgres", "followers": 1})).await;
    assert_eq!(status, 201, "{created}");
    let before = wait_for(GENEROUS, "crashy available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/crashy")).await?;
        let all =
            s["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["state"] == "available"));
        (s["state"] == "available" && all).then_some(s)
    })
    .await;
    let old_primary = id(with_role(&before, "primary")[0]);
    let old_follower = id(with_role(&before, "follower")[0]);
    let (status, body) = post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");

    let deadline = std::time::Instant::now() + GENEROUS;
    loop {
        if let Some((200, Value::Array(actions))) = get(&http, &format!("{api}/v1/actions?service=crashy")).await {
            if actions.iter().any(|a| (a["kind"] == "fence" || a["kind"] == "promote") && a["state"] == "running") {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no fence/promote ever ran\n{}", serve.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.kill9();
    serve.spawn();
    serve.wait_healthy(&plain, GENEROUS).await;

    let after = wait_for(GENEROUS, "the failover to complete after the restart", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/crashy")).await?;
        let primaries = with_role(&s, "primary");
        let done = primaries.len() == 1
            && id(primaries[0]) == old_follower
            && primaries[0]["state"] == "available"
            && primaries[0]["writable"] == true
            && s["state"] == "available";
        done.then_some(s)
    })
    .await;
    let writable = after["instances"].as_array().unwrap().iter().filter(|i| i["writable"] == true).count();
    assert_eq!(writable, 1, "exactly one writable primary: {after:#}");
    let Some((200, Value::Array(actions))) = get(&http, &format!("{api}/v1/actions?service=crashy")).await else {
        panic!("actions after the restart")
    };
    let promoted: Vec<&Value> =
        actions.iter().filter(|a| a["kind"] == "promote" && a["state"] == "succeeded").collect();
    assert_eq!(promoted.len(), 1, "exactly one successful promote: {actions:#?}");
    assert_eq!(promoted[0]["instance"], old_follower.as_str());
    // And PostgreSQL agrees with the API.
    let in_pg = pg.psql("postgres", "SELECT count(*) FROM actions WHERE kind = 'promote' AND state = 'succeeded'");
    assert_eq!(in_pg.trim(), "1");
    drop(serve);
}
