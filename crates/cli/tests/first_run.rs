//! The first run, as a newcomer types it: the real binary started with no
//! `--data-dir` from a fresh working directory (so its data dir is the
//! relative `./drover-data`), as whatever user runs the tests (root in CI,
//! whose servers then run as the unprivileged `drover`). A local PostgreSQL
//! service with a synchronous follower must become available and take a
//! write through its URL. Every other test uses an absolute temporary data
//! dir, which once hid a first run where initdb was handed a relative path.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::time::Duration;

/// Building a primary, its follower and the router takes a few seconds;
/// the margin is for a loaded 2-core CI machine.
const SLOW: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_data_dir_from_a_fresh_directory_runs_a_local_service_that_takes_writes() {
    let dir = tempfile::Builder::new().prefix("drover-first-run").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let serve = Serve::start(&cwd, free_port(), &[]);
    let api = serve.api.clone();
    let http = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&http, SLOW).await;
    assert!(cwd.join("drover-data").join("drover.db").is_file(), "the store is not in ./drover-data");
    // The first start wrote the admin token, readable by its user only.
    let token = cwd.join("drover-data").join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    let http = common::admin_client(&cwd.join("drover-data"));

    // Exactly the README's `drover services create db1 --engine postgres --followers 1 --sync`.
    let created = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "db1", "engine": "postgres", "followers": 1, "sync": true}))
        .send()
        .await
        .unwrap();
    let status = created.status().as_u16();
    let body: Value = created.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["provider"], "local", "the default provider is local: {body}");

    let service = wait_for(SLOW, "db1 with both instances available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/db1")).await?;
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        let available = instances.iter().filter(|i| i["state"] == "available").count();
        (s["state"] == "available" && instances.len() == 2 && available == 2).then_some(s)
    })
    .await;
    let url = service["url"].as_str().expect("a local service has a URL").to_string();
    assert!(url.starts_with("postgres://"), "{url}");

    // A write and its read back, through the stable URL (pgbouncer).
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect via URL");
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE first_run (n int); INSERT INTO first_run VALUES (42)").await.expect("write");
    let n: i32 = client.query_one("SELECT n FROM first_run", &[]).await.expect("read").get(0);
    assert_eq!(n, 42);

    // Every path it recorded for its servers is absolute.
    let state = std::fs::read_to_string(cwd.join("drover-data/local/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    for (id, entry) in state["instances"].as_object().unwrap() {
        let path = entry["dir"].as_str().unwrap_or_default();
        assert!(path.starts_with(cwd.to_str().unwrap()), "instance {id} dir {path} is not under {}", cwd.display());
    }
    drop(serve);
}
