//! Issue 16, "real processes are carried out by the agent on each host for
//! whichever node holds the shard": two `drover serve --shards 2` nodes on
//! one PostgreSQL store and one `drover agent` that talks to one of them
//! only. Its host is registered through shard 0's holder and learned by
//! the other node; a service in each shard is placed on it; the agent's
//! long poll through its node gathers both holders' actions (each with its
//! shard's generation), builds both servers, and its heartbeats make both
//! services available through either node.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::host_agent::HostAgent;
use common::{admin_client, create_token, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const GENEROUS: Duration = Duration::from_secs(90);
const SHARDS: u16 = 2;

fn node(root: &Path, name: &str, store: &str) -> Serve {
    let cwd = root.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    #[rustfmt::skip]
    let args = [
        "--data-dir", "data", "--store", store, "--node", name, "--lease-ttl-secs", "3",
        "--no-local", "--shards", "2",
    ];
    common::share_the_key(&cwd.join("data"));
    Serve::start(&cwd, free_port(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_carries_out_the_actions_of_every_shard_s_holder() {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::Builder::new().prefix("dr-as").tempdir_in("/tmp").unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let a = node(root, "a", &store);
    a.wait_healthy(&plain, GENEROUS).await;
    let b = node(root, "b", &store);
    b.wait_healthy(&plain, GENEROUS).await;
    let http = admin_client(&root.join("a/data"));
    wait_for(GENEROUS, "one shard per node", &a, || async {
        let (_, cluster) = get(&http, &format!("{}/v1/cluster", a.api)).await?;
        let nodes = cluster["nodes"].as_array()?;
        let held: Vec<u64> = nodes.iter().filter(|n| n["alive"] == true).filter_map(|n| n["shards"].as_u64()).collect();
        (held.len() == 2 && held.iter().all(|&s| s == 1)).then_some(())
    })
    .await;
    // Each node learns the other's shard at its next round.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let token = create_token(&http, &a.api, json!({"name": "agent-h1", "role": "agent", "host": "h1"})).await;
    let agent = HostAgent::spawn(root, &a.api, "h1", "zone-a", "127.0.0.2", &token);
    // Registered through shard 0's holder, learned by each node's engine:
    // each is asked for its own view (`x-drover-part`: not sent on).
    for via in [&a, &b] {
        wait_for(GENEROUS, &format!("host h1 known to {}", via.api), via, || async {
            let r = http.get(format!("{}/v1/hosts", via.api)).header("x-drover-part", "1").send().await.ok()?;
            let hosts: Value = r.json().await.ok()?;
            (hosts.as_array()?.iter().any(|h| h["name"] == "h1" && h["state"] == "ready")).then_some(())
        })
        .await;
    }

    // A service in each shard, created through a node (not necessarily
    // the one that does not hold it: which holds which is the rounds'):
    // each holder's engine places its service on h1.
    let shard_of = |name: &str| drover_model::Slot::of_name(name).shard(SHARDS);
    let names: Vec<String> =
        (0..SHARDS).map(|s| (0..).map(|i| format!("db{i}")).find(|n| shard_of(n) == s).unwrap()).collect();
    for name in &names {
        let body = json!({"name": name, "engine": "postgres", "followers": 0, "provider": "local",
                          "zones": ["zone-a"]});
        let via = if shard_of(name) == 0 { &b } else { &a };
        let r = http.post(format!("{}/v1/services", via.api)).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "{name}: {}", r.text().await.unwrap_or_default());
    }
    for name in &names {
        for via in [&a, &b] {
            let service: Value = wait_for(GENEROUS, &format!("{name} available through {}", via.api), via, || async {
                let (_, s) = get(&http, &format!("{}/v1/services/{name}", via.api)).await?;
                (s["state"] == "available").then_some(s)
            })
            .await;
            let primary = &service["instances"][0];
            assert_eq!(primary["host"], "h1", "{service}");
            assert_eq!(primary["facts"]["writable"], true, "its facts come from the agent's heartbeats: {service}");
        }
    }
    let log = agent.log();
    let provisions =
        log.lines().filter(|l| l.contains("carrying out action") && l.contains("kind=\"provision\"")).count();
    assert_eq!(provisions, 2, "the agent built one server per shard's holder; its log:\n{log}");
    assert!(!log.contains("refused"), "no action refused by its generation; the agent's log:\n{log}");
    // The generations of both shards were seen and kept.
    let fences = std::fs::read_dir(agent.dir.join("data/agent"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("generation"))
        .count();
    assert_eq!(fences, 2, "a generation kept per shard");
}
