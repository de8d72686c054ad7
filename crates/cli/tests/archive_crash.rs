//! Issue 17, item 5: kill -9 of the real `drover serve` while a deleted
//! PostgreSQL service is being archived (its final backup in flight). The
//! restarted control plane resumes the archive from the store and finishes
//! it once (one `archived` event), terminates the service, then purges the
//! archive once past its retention (set tiny in drover.toml), and a further
//! restart purges nothing again.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(240);

fn arr(v: Option<(u16, Value)>) -> Vec<Value> {
    v.and_then(|(_, v)| v.as_array().cloned()).unwrap_or_default()
}

async fn archive_of(http: &reqwest::Client, api: &str, service: &str) -> Option<Value> {
    arr(get(http, &format!("{api}/v1/archives")).await).into_iter().find(|a| a["service"] == service)
}

async fn archive_events(http: &reqwest::Client, api: &str, service: &str) -> Vec<String> {
    arr(get(http, &format!("{api}/v1/events?service={service}&limit=10000")).await)
        .iter()
        .filter(|e| e["kind"]["type"] == "archive")
        .filter_map(|e| e["to"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_archive_resumes_and_finishes_it_once_then_purges_it_once() {
    let dir = tempfile::Builder::new().prefix("drover-arccrash").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(cwd.join("d")).unwrap();
    // 0.01 h: purged 36 s after the final backup.
    std::fs::write(cwd.join("d/drover.toml"), "archive_retention_hours = 0.01\nbackup_retention_full = 2\n").unwrap();
    let mut serve = Serve::start(&cwd, free_port(), &["--data-dir", "d", "--default-provider", "local"]);
    let api = serve.api.clone();
    let anon = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&anon, SLOW).await;
    let http = common::admin_client(&cwd.join("d"));

    let r = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "arc", "engine": "postgres", "followers": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    wait_for(SLOW, "available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/arc")).await?;
        (s["state"] == "available").then_some(())
    })
    .await;

    let r = http.delete(format!("{api}/v1/services/arc")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    let archiving = archive_of(&http, &api, "arc").await.expect("the archive is listed at once");
    assert_eq!(archiving["state"], "archiving", "{archiving}");
    serve.kill9();
    eprintln!("kill -9 while archiving");
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;

    let archived = wait_for(SLOW, "archived after the restart", &serve, || async {
        archive_of(&http, &api, "arc").await.filter(|a| a["state"] == "archived")
    })
    .await;
    assert_eq!(archived["id"], archiving["id"], "the same archive, resumed");
    assert!(archived["backup_label"].is_string(), "{archived}");
    wait_for(SLOW, "the service gone", &serve, || async {
        let (status, _) = get(&http, &format!("{api}/v1/services/arc")).await?;
        (status == 404).then_some(())
    })
    .await;

    wait_for(SLOW, "purged after its retention", &serve, || async {
        archive_of(&http, &api, "arc").await.filter(|a| a["state"] == "purged")
    })
    .await;
    let repo = cwd.join("d/local/backups/repo");
    assert!(!repo.join("backup/arc").exists() && !repo.join("archive/arc").exists(), "its backups are removed");

    // Once more: a restart finds it purged and does nothing to it.
    serve.kill9();
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let states = archive_events(&http, &api, "arc").await;
    assert_eq!(states, ["archiving", "archived", "purged"], "each step once");
    let purges: Vec<Value> = arr(get(&http, &format!("{api}/v1/actions?limit=1000")).await)
        .into_iter()
        .filter(|a| a["kind"] == "purge_archive")
        .collect();
    assert_eq!(purges.len(), 1, "one purge: {purges:#?}");
    assert_eq!(purges[0]["state"], "succeeded", "{purges:#?}");
    // The name is free again.
    let r = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "arc", "engine": "postgres", "followers": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
}
