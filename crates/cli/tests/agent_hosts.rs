//! Issue 11, the action channel end to end with the real binaries: a
//! control plane with no host of its own (`drover serve --no-local`) and a
//! `drover agent --host` with its own data dir. The agent registers its
//! host; a PostgreSQL service is placed on it; the provision action
//! travels to the agent (`GET /v1/hosts/{name}/actions`), the agent builds
//! the server with the local provider's code as its own child and answers
//! (`POST .../result`); its heartbeats make the service available. Only the
//! agent of that host may take its actions. When the agent dies (kill -9 of
//! it and its servers: a host crash) the instance turns uncertain, not dead,
//! and so does its host.

mod common;

use common::host_agent::HostAgent;
use common::{admin_client, client_with, create_token, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_host_builds_and_runs_the_instances_placed_on_it() {
    let tmp = tempfile::Builder::new().prefix("dr-ah").tempdir_in("/tmp").unwrap();
    let port = free_port();
    let serve = Serve::start(tmp.path(), port, &["--no-local", "--data-dir", "cp"]);
    serve.wait_healthy(&drover_agent::tls::client(), Duration::from_secs(30)).await;
    let admin = admin_client(&tmp.path().join("cp"));
    let api = serve.api.clone();

    // No host of its own.
    let (status, hosts) = get(&admin, &format!("{api}/v1/hosts")).await.unwrap();
    assert_eq!((status, hosts), (200, json!([])));

    let token = create_token(&admin, &api, json!({"name": "agent-h1", "role": "agent", "host": "h1"})).await;
    let other = create_token(&admin, &api, json!({"name": "agent-h2", "role": "agent", "host": "h2"})).await;
    let mut agent = HostAgent::spawn(tmp.path(), &api, "h1", "zone-a", "127.0.0.2", &token);
    wait_for(Duration::from_secs(30), "host h1 registered", &serve, || {
        let (admin, api) = (admin.clone(), api.clone());
        async move {
            let (_, hosts) = get(&admin, &format!("{api}/v1/hosts")).await?;
            (hosts[0]["name"] == "h1").then_some(())
        }
    })
    .await;
    let (_, hosts) = get(&admin, &format!("{api}/v1/hosts")).await.unwrap();
    assert_eq!(hosts, json!([{"name": "h1", "zone": "zone-a", "state": "ready", "capacity": 4, "instances": 0}]));

    // Only the agent of h1 takes h1's actions.
    let (status, body) = get(&client_with(&other), &format!("{api}/v1/hosts/h1/actions?wait_ms=0")).await.unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(&admin, &format!("{api}/v1/hosts/h1/actions?wait_ms=0")).await.unwrap();
    assert_eq!(status, 403, "an operator is no agent: {body}");

    let r = admin
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "db1", "engine": "postgres", "followers": 0, "provider": "local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());

    let service: Value = wait_for(Duration::from_secs(90), "db1 available on h1", &serve, || {
        let (admin, api) = (admin.clone(), api.clone());
        async move {
            let (_, s) = get(&admin, &format!("{api}/v1/services/db1")).await?;
            (s["state"] == "available").then_some(s)
        }
    })
    .await;
    let primary = &service["instances"][0];
    assert_eq!(primary["host"], "h1", "{service}");
    assert_eq!(primary["facts"]["role"], "primary", "its facts come from the agent's heartbeats: {service}");
    assert_eq!(primary["facts"]["writable"], true, "{service}");
    let log = agent.log();
    assert!(log.contains("carrying out action") && log.contains("kind=\"provision\""), "agent log:\n{log}");
    // The server is the agent's child, under the agent's data dir, and the
    // outcome is kept there before it was answered.
    let outcomes = std::fs::read_dir(agent.dir.join("data/agent/outcomes")).unwrap().count();
    assert!(outcomes >= 1, "no kept outcome");
    assert!(agent.dir.join("data/local/state.json").exists());
    assert!(!tmp.path().join("cp/local/state.json").exists(), "the control plane ran a server itself");

    // A host crash: the agent and its servers die. The instance turns
    // uncertain (silence), never straight to dead; the probe the control
    // plane then makes over the network (the port refuses) is the evidence.
    agent.crash();
    let id = primary["id"].as_str().unwrap().to_string();
    let transitions =
        wait_for(Duration::from_secs(15), "primary out of available after the host crash", &serve, || {
            let (admin, api, id) = (admin.clone(), api.clone(), id.clone());
            async move {
                let (_, events) = get(&admin, &format!("{api}/v1/events?instance={id}&limit=1000")).await?;
                let transitions: Vec<(String, String)> = events
                    .as_array()?
                    .iter()
                    .filter(|e| e["from"] == "available")
                    .map(|e| {
                        (e["to"].as_str().unwrap_or("").to_string(), e["cause"].as_str().unwrap_or("").to_string())
                    })
                    .collect();
                (!transitions.is_empty()).then_some(transitions)
            }
        })
        .await;
    assert_eq!(transitions[0].0, "uncertain", "silence makes an instance uncertain first: {transitions:?}");
    assert!(transitions[0].1.contains("no heartbeat"), "{transitions:?}");
    // The host as a whole: its agent fell silent.
    let (_, hosts) = get(&admin, &format!("{api}/v1/hosts")).await.unwrap();
    assert_eq!(hosts[0]["state"], "uncertain", "{hosts}");

    // The host comes back (its agent restarted over the same data dir, its
    // servers gone): it registers again, the engine's probe fails on the
    // agent, and the restart it decides runs there too.
    drop(agent);
    let agent = HostAgent::spawn(tmp.path(), &api, "h1", "zone-a", "127.0.0.2", &token);
    wait_for(Duration::from_secs(120), "db1 available again after the host came back", &serve, || {
        let (admin, api) = (admin.clone(), api.clone());
        async move {
            let (_, s) = get(&admin, &format!("{api}/v1/services/db1")).await?;
            (s["state"] == "available" && s["instances"][0]["state"] == "available").then_some(())
        }
    })
    .await;
    let (_, hosts) = get(&admin, &format!("{api}/v1/hosts")).await.unwrap();
    assert_eq!(hosts[0]["state"], "ready", "{hosts}");
    let log = agent.log();
    assert!(log.contains("kind=\"restart\""), "the restart ran on the agent; its log:\n{log}");
}
