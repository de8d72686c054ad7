//! An agent host under two control-plane nodes on one PostgreSQL store
//! (issue 16): the agent talks to the standby, which forwards its fetches
//! and answers to the holder; the holder is killed, the standby takes the
//! fleet over and the agent's very next actions (a crash of its primary,
//! healed) are carried out at once. Each batch of actions carries the
//! lease generation of the node that queued it; the agent notes the newest
//! in its data dir (and refuses a batch of an older one: unit-tested in
//! `drover_agent::fence`). The sequence numbers of the new holder's
//! actions start above the old holder's, so the agent, which asks for
//! those after the last it saw, skips none.
//!
//! The second test gives the agent both nodes (`--server A,B`): it talks to
//! the holder itself, and once that is dead, to the other node.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::host_agent::HostAgent;
use common::{admin_client, create_token, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const GENEROUS: Duration = Duration::from_secs(120);

fn node(root: &Path, name: &str, store: &str) -> Serve {
    let cwd = root.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    #[rustfmt::skip]
    let args = [
        "--data-dir", "data", "--store", store, "--node", name, "--lease-ttl-secs", "3", "--no-local",
    ];
    common::share_the_key(&cwd.join("data"));
    Serve::start(&cwd, free_port(), &args)
}

fn noted_generation(agent: &HostAgent) -> String {
    std::fs::read_to_string(agent.dir.join("data/agent/generation")).unwrap_or_default().trim().to_string()
}

/// Which nodes the agent is told of.
enum Knows {
    /// Only the standby: everything it sends is forwarded to the holder.
    TheStandby,
    /// Both, the holder first.
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_host_is_driven_by_whichever_node_holds_the_fleet() {
    drive_an_agent_host_across_a_takeover(Knows::TheStandby).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_every_node_moves_on_to_another_when_its_node_dies() {
    drive_an_agent_host_across_a_takeover(Knows::Both).await;
}

async fn drive_an_agent_host_across_a_takeover(knows: Knows) {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let tmp = tempfile::Builder::new().prefix("dr-at").tempdir_in("/tmp").unwrap();
    let root = tmp.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let mut a = node(root, "a", &store);
    a.wait_healthy(&plain, GENEROUS).await;
    let http = admin_client(&root.join("a/data"));
    let b = node(root, "b", &store);
    wait_for(GENEROUS, "b answering as a standby", &b, || async {
        get(&plain, &format!("{}/healthz", b.api)).await.filter(|(s, h)| *s == 503 && common::is_standby(h))
    })
    .await;

    // Knowing only b, its registration, fetches and answers are forwarded
    // to a; knowing both, it talks to a.
    let token = create_token(&http, &b.api, json!({"name": "agent-h1", "role": "agent", "host": "h1"})).await;
    let servers = match knows {
        Knows::TheStandby => b.api.clone(),
        Knows::Both => format!("{},{}", a.api, b.api),
    };
    let agent = HostAgent::spawn(root, &servers, "h1", "zone-a", "127.0.0.2", &token);
    wait_for(GENEROUS, "host h1 registered", &a, || async {
        let (_, hosts) = get(&http, &format!("{}/v1/hosts", b.api)).await?;
        (hosts[0]["name"] == "h1").then_some(())
    })
    .await;
    let body = json!({"name": "db1", "engine": "postgres", "followers": 0, "provider": "local"});
    let (status, created) = common::post(&http, &b.api, "/v1/services", body).await;
    assert_eq!(status, 201, "{created}");
    let service: Value = wait_for(GENEROUS, "db1 available on h1", &a, || async {
        let (_, s) = get(&http, &format!("{}/v1/services/db1", b.api)).await?;
        (s["state"] == "available" && s["instances"][0]["state"] == "available").then_some(s)
    })
    .await;
    assert_eq!(service["instances"][0]["host"], "h1", "{service}");
    assert_eq!(noted_generation(&agent), "1", "agent log:\n{}", agent.log());

    // The holder dies; b takes over and drives the agent itself.
    a.kill9();
    b.wait_healthy(&plain, GENEROUS).await;
    let primary = service["instances"][0]["id"].as_str().unwrap().to_string();
    let crashed = Instant::now();
    let (status, body) = common::post(&http, &b.api, "/v1/chaos", json!({"instance": primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    wait_for(GENEROUS, "the crashed primary healed through b", &b, || async {
        let (_, actions) = get(&http, &format!("{}/v1/actions?service=db1", b.api)).await?;
        let done = |kind: &str| {
            actions.as_array().is_some_and(|a| a.iter().any(|a| a["kind"] == kind && a["state"] == "succeeded"))
        };
        let (_, s) = get(&http, &format!("{}/v1/services/db1", b.api)).await?;
        let healed = done("inject_fault")
            && done("restart")
            && s["state"] == "available"
            && s["instances"][0]["state"] == "available";
        healed.then_some(())
    })
    .await;
    eprintln!("crash of the primary to healed, through the new holder: {:.1} s", crashed.elapsed().as_secs_f64());
    assert_eq!(noted_generation(&agent), "2", "agent log:\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains("kind=\"inject_fault\""), "the chaos reached the agent:\n{log}");
    assert!(log.contains("kind=\"restart\""), "the restart ran on the agent:\n{log}");
    assert!(!log.contains("refused a batch"), "{log}");
    let moved_on = log.contains("now talking to another control-plane node");
    match knows {
        Knows::TheStandby => assert!(!moved_on, "one node known, none to move to:\n{log}"),
        Knows::Both => {
            assert!(moved_on, "the agent moved from the dead node to the other:\n{log}");
            assert!(log.contains(&format!("server={}", b.api)), "{log}");
        }
    }
}
