//! The engine decides; providers report. A primary that dies while the
//! control plane is down (here: the control plane is killed with -9, then
//! the primary's postmaster) is not quietly restarted in place by the local
//! provider when the control plane comes back: its death is evidence, it
//! appears in the event log with its cause, and the engine's remedy (a
//! failover to the synchronous follower) follows and is recorded.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(180);

fn postmaster_pid(cwd: &std::path::Path, instance: &str) -> i32 {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(cwd.join("d/local/state.json")).unwrap()).unwrap();
    let dir = state["instances"][instance]["dir"].as_str().expect("the instance is in the registry");
    let pid_file = std::fs::read_to_string(std::path::Path::new(dir).join("pgdata/postmaster.pid")).unwrap();
    pid_file.lines().next().unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_died_while_the_control_plane_was_down_is_evidence_and_the_engine_fails_over() {
    let dir = tempfile::Builder::new().prefix("drover-evidence").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let mut serve = Serve::start(&cwd, free_port(), &["--data-dir", "d"]);
    let api = serve.api.clone();
    let http = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&http, SLOW).await;
    let http = common::admin_client(&cwd.join("d"));
    let created = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "ev1", "engine": "postgres", "followers": 1, "sync": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let before = wait_for(SLOW, "ev1 available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/ev1")).await?;
        let streaming = s["instances"].as_array()?.iter().any(|i| i["facts"]["upstream_streaming"] == true);
        (s["state"] == "available" && streaming).then_some(s)
    })
    .await;
    let role = |s: &Value, role: &str| -> String {
        s["instances"].as_array().unwrap().iter().find(|i| i["role"] == role).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old_primary, follower) = (role(&before, "primary"), role(&before, "follower"));
    let pid = postmaster_pid(&cwd, &old_primary);

    // The control plane goes first, so nothing of what follows reaches it.
    serve.kill9();
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success(), "kill -9 of postmaster {pid}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve.spawn();
    serve.wait_healthy(&http, SLOW).await;

    let after = wait_for(SLOW, "the follower promoted and ev1 available again", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/ev1")).await?;
        let primary = s["instances"].as_array()?.iter().find(|i| i["role"] == "primary" && i["writable"] == true)?;
        (primary["id"] == follower.as_str() && s["state"] == "available").then_some(s)
    })
    .await;
    assert_eq!(after["url"], before["url"], "the URL never changes");

    let (_, events) = get(&http, &format!("{api}/v1/events?instance={old_primary}&limit=1000")).await.unwrap();
    let events = events.as_array().cloned().unwrap_or_default();
    let down = events
        .iter()
        .find(|e| e["to"] == "unavailable")
        .unwrap_or_else(|| panic!("the crash is not in the event log: {events:#?}"));
    let cause = down["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("not running when the control plane started"), "its cause: {cause}");
    let (_, actions) = get(&http, &format!("{api}/v1/actions?service=ev1&limit=1000")).await.unwrap();
    let actions = actions.as_array().cloned().unwrap_or_default();
    let done = |kind: &str, on: &str| {
        actions.iter().any(|a| a["kind"] == kind && a["instance"] == on && a["state"] == "succeeded")
    };
    assert!(done("fence", &old_primary), "the engine fenced the dead primary: {actions:#?}");
    assert!(done("promote", &follower), "the engine promoted the follower: {actions:#?}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(!log.contains("restarted a server that did not survive"), "the provider healed on its own");
}
