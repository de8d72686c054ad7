//! Issue 12: a freeze by hand (the `freeze-automation` runbook, approved by a
//! second person) survives kill -9 of the real `drover serve` and a restart
//! on the same data dir: the rollout it holds is still held afterwards, and
//! `release-automation` after the restart lets it finish.

mod common;

use common::{create_token, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(60);

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.expect("the API answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn rollout(http: &reqwest::Client, serve: &Serve, id: &str) -> Value {
    get(http, &format!("{}/v1/rollouts/{id}", serve.api)).await.expect("the API answers").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_by_hand_survives_kill_9_and_restart_and_a_release_after_it_lets_the_rollout_finish() {
    let dir = tempfile::Builder::new().prefix("dfz").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().to_path_buf();
    // The control plane is what is tested: the sim fleet only.
    let mut serve = Serve::start(&cwd, free_port(), &["--data-dir", "d", "--default-provider", "sim", "--no-local"]);
    let anon = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&anon, SLOW).await;
    let admin = common::admin_client(&cwd.join("d"));
    let api = serve.api.clone();
    let bob = common::client_with(&create_token(&admin, &api, json!({"name": "bob", "role": "operator"})).await);

    for name in ["fa", "fb"] {
        let (status, body) = post(
            &admin,
            format!("{api}/v1/services"),
            json!({"name": name, "engine": "postgres", "followers": 1, "provider": "sim"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    wait_for(SLOW, "both services available", &serve, || async {
        let (_, list) = get(&admin, &format!("{api}/v1/services")).await?;
        let n = list.as_array()?.iter().filter(|s| s["state"] == "available").count();
        (n == 2).then_some(())
    })
    .await;
    let (status, image) =
        post(&admin, format!("{api}/v1/images"), json!({"engine": "postgres", "settings": {"work_mem": "8MB"}})).await;
    assert!(status == 201 || status == 200, "{image}");
    let to = image["id"].as_str().unwrap().to_string();

    // Frozen by the runbook: requested by the admin, approved by bob.
    let (status, run) =
        post(&admin, format!("{api}/v1/runbooks/freeze-automation/runs"), json!({"params": {"scope": "fleet"}})).await;
    assert_eq!((status, run["state"].as_str()), (202, Some("awaiting_approval")), "{run}");
    let approve = format!("{api}/v1/runbooks/runs/{}/approve", run["id"].as_str().unwrap());
    let (status, done) = post(&bob, approve, json!({})).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("succeeded")), "{done}");

    let (status, r) = post(
        &admin,
        format!("{api}/v1/rollouts"),
        json!({"to_image": to, "selector": {"engine": "postgres"}, "waves": [100], "soak_seconds": 1}),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = rollout(&admin, &serve, &id).await;
    assert_eq!((held["done"].as_u64(), held["moving"].as_u64()), (Some(0), Some(0)), "frozen: {held}");

    // kill -9 and restart on the same data dir.
    serve.kill9();
    serve.spawn();
    serve.wait_healthy(&anon, SLOW).await;
    // Well past the restart's grace and a few rollout ticks.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = rollout(&admin, &serve, &id).await;
    assert_eq!(
        (held["state"].as_str(), held["done"].as_u64(), held["moving"].as_u64()),
        (Some("running"), Some(0), Some(0)),
        "still frozen after the restart: {held}"
    );
    let (_, list) = get(&admin, &format!("{api}/v1/services")).await.unwrap();
    for s in list.as_array().unwrap() {
        assert!(
            s["instances"].as_array().unwrap().iter().all(|i| i["image"] != to.as_str()),
            "nothing built from the new image while frozen: {s}"
        );
    }

    // Released after the restart (not dangerous: at once): the rollout ends.
    let (status, released) =
        post(&admin, format!("{api}/v1/runbooks/release-automation/runs"), json!({"params": {"scope": "fleet"}})).await;
    assert_eq!((status, released["state"].as_str()), (201, Some("succeeded")), "{released}");
    assert!(
        !released.to_string().contains("nothing changed"),
        "the release found the freeze the restart kept: {released}"
    );
    let v = wait_for(SLOW, "the rollout to finish after the release", &serve, || async {
        let v = rollout(&admin, &serve, &id).await;
        (v["state"] != "running" && v["state"] != "pending").then_some(v)
    })
    .await;
    assert_eq!((v["state"].as_str(), v["done"].as_u64()), (Some("succeeded"), Some(2)), "{v}");
}
