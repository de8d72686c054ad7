//! `drover store migrate` (issue 16 item 7): a fleet run on the embedded
//! SQLite store, moved into a real PostgreSQL 15 (started by the test), is
//! served from there with every service, event (same sequence numbers) and
//! token; the data dir's stale copy is never served again; a running
//! control plane, a second migration and a non-empty target are refused
//! with a clear error and change nothing.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{admin_client, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const GENEROUS: Duration = Duration::from_secs(60);

const SIM: [&str; 6] =
    ["--default-provider", "sim", "--no-local", "--heartbeat-interval-ms", "100", "--action-latency-ms"];

fn migrate(cwd: &Path, from: &str, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["store", "migrate", "--from", from, "--to", to])
        .current_dir(cwd)
        .env_remove("DROVER_DATA_DIR")
        .output()
        .expect("run drover store migrate")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn events(http: &reqwest::Client, api: &str) -> BTreeSet<(u64, String)> {
    match get(http, &format!("{api}/v1/events?limit=10000")).await {
        Some((200, Value::Array(events))) => events
            .iter()
            .map(|e| (e["seq"].as_u64().unwrap(), e["id"].as_str().unwrap_or_default().to_string()))
            .collect(),
        other => panic!("events: {other:?}"),
    }
}

async fn services(http: &reqwest::Client, api: &str) -> BTreeSet<(String, String)> {
    match get(http, &format!("{api}/v1/services")).await {
        Some((200, Value::Array(s))) => {
            s.iter().map(|s| (s["name"].as_str().unwrap().to_string(), s["id"].as_str().unwrap().to_string())).collect()
        }
        other => panic!("services: {other:?}"),
    }
}

fn count(pg: &pg::PgServer, sql: &str) -> u64 {
    pg.psql("postgres", sql).trim().parse().unwrap_or_else(|_| panic!("{sql}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_fleet_moves_to_postgres_losing_no_event_and_is_never_served_twice() {
    let pg = pg::PgServer::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut args: Vec<&str> = vec!["--data-dir", "d"];
    args.extend(SIM);
    args.push("20");
    let mut serve = Serve::start(cwd, free_port(), &args);
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&plain, GENEROUS).await;
    let data = cwd.join("d");
    let http = admin_client(&data);
    let api = serve.api.clone();
    for name in ["m1", "m2", "m3"] {
        let (status, body) =
            common::post(&http, &api, "/v1/services", json!({"name": name, "engine": "postgres", "followers": 1}))
                .await;
        assert_eq!(status, 201, "{body}");
    }
    wait_for(GENEROUS, "three services available", &serve, || async {
        let Some((200, Value::Array(s))) = get(&http, &format!("{api}/v1/services")).await else { return None };
        (s.len() == 3 && s.iter().all(|s| s["state"] == "available")).then_some(())
    })
    .await;
    let reader = common::create_token(&http, &api, json!({"name": "reader", "role": "viewer"})).await;
    // A page (oncall.db) moves with the fleet: the pager's tables are the
    // PostgreSQL store's too.
    let alerts =
        common::create_token(&http, &api, json!({"name": "alerts", "role": "integration", "team": "platform"})).await;
    let alert = json!({"routing_key": alerts, "event_action": "trigger", "dedup_key": "disk-m1",
                       "payload": {"summary": "m1's disk is full", "source": "m1", "severity": "critical"}});
    let (status, opened) = common::post(&plain, &api, "/v1/integrations/events-v2", alert).await;
    assert_eq!(status, 202, "{opened}");
    let page_id = opened["page"].as_str().expect("a page was opened").to_string();
    let (status, page_before) = get(&http, &format!("{api}/v1/pages/{page_id}")).await.unwrap();
    assert_eq!(status, 200, "{page_before}");

    // While the control plane runs, the data dir is locked: refused, and
    // PostgreSQL is not even touched.
    let out = migrate(cwd, "d", &url);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("another drover serve"), "{}", text(&out));
    assert_eq!(count(&pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'services'"), 0);

    let before_services = services(&http, &api).await;
    let before_events = events(&http, &api).await;
    serve.kill9();

    let out = migrate(cwd, "d", &url);
    assert!(out.status.success(), "{}", text(&out));
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("moved 3 services, "), "{last}");
    assert!(data.join("store-moved.json").is_file());
    let in_sqlite = drover_store::Store::events(
        &drover_store::SqliteStore::open(&data.join("drover.db")).unwrap(),
        &drover_store::EventFilter { limit: Some(10_000), ..Default::default() },
    )
    .unwrap()
    .len() as u64;
    assert_eq!(count(&pg, "SELECT count(*) FROM events"), in_sqlite, "every event row moved");

    // Moved once only; the stale copy is never served.
    let again = migrate(cwd, "d", &url);
    assert!(!again.status.success() && text(&again).contains("was moved already"), "{}", text(&again));
    let stale = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--data-dir", "d", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(SIM)
        .arg("20")
        .current_dir(cwd)
        .env_remove("DROVER_DATA_DIR")
        .env_remove("DROVER_STORE")
        .output()
        .unwrap();
    assert!(!stale.status.success(), "a serve on the stale SQLite copy started: {}", text(&stale));
    assert!(text(&stale).contains("was moved to"), "{}", text(&stale));

    // Served from PostgreSQL: the same services, every event with its
    // sequence number, the same tokens (kept in the data dir), and new
    // events numbered after the old ones.
    let mut args: Vec<&str> = vec!["--data-dir", "d", "--store", &url];
    args.extend(SIM);
    args.push("20");
    let serve = Serve::start(cwd, free_port(), &args);
    serve.wait_healthy(&plain, GENEROUS).await;
    let api = serve.api.clone();
    assert_eq!(services(&http, &api).await, before_services);
    let after = events(&http, &api).await;
    let lost: Vec<_> = before_events.difference(&after).collect();
    assert!(lost.is_empty(), "events lost by the move: {lost:?}");
    let (status, _) = get(&common::client_with(&reader), &format!("{api}/v1/services/m1")).await.unwrap();
    assert_eq!(status, 200, "the viewer token works on the moved fleet");
    let (status, page_after) = get(&http, &format!("{api}/v1/pages/{page_id}")).await.unwrap();
    assert_eq!(status, 200, "the page moved: {page_after}");
    assert_eq!(page_after["id"].as_str(), Some(page_id.as_str()), "{page_after}");
    assert_eq!(page_after["summary"], "m1's disk is full", "{page_after}");
    assert_eq!(page_after["transitions"], page_before["transitions"], "{page_after}");
    assert!(count(&pg, "SELECT count(*) FROM page_transitions") >= 1);
    let (status, body) =
        common::post(&http, &api, "/v1/services", json!({"name": "m4", "engine": "postgres", "followers": 0})).await;
    assert_eq!(status, 201, "{body}");
    let newest_before = before_events.iter().map(|(seq, _)| *seq).max().unwrap();
    let m4 = match get(&http, &format!("{api}/v1/events?service=m4")).await {
        Some((200, Value::Array(e))) => e,
        other => panic!("{other:?}"),
    };
    assert!(!m4.is_empty() && m4.iter().all(|e| e["seq"].as_u64().unwrap() > newest_before), "{m4:?}");
    wait_for(GENEROUS, "m1 available on the moved fleet", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/m1")).await?;
        (s["state"] == "available").then_some(())
    })
    .await;
    drop(serve);

    // Another fleet into the same, non-empty database: refused, nothing
    // changed, and that data dir is not marked.
    let rows = count(&pg, "SELECT count(*) FROM services");
    let mut other = Serve::start(cwd, free_port(), &["--data-dir", "other", "--no-local"]);
    other.wait_healthy(&plain, GENEROUS).await;
    other.kill9();
    let out = migrate(cwd, "other", &url);
    assert!(!out.status.success() && text(&out).contains("is not empty"), "{}", text(&out));
    assert_eq!(count(&pg, "SELECT count(*) FROM services"), rows);
    assert!(!cwd.join("other/store-moved.json").exists());
}
