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

/// Nodes a and b, one shard each and each knowing the other's, and the
/// admin's client.
async fn two_nodes_a_shard_each(root: &Path, store: &str) -> (Serve, Serve, reqwest::Client) {
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let a = node(root, "a", store);
    a.wait_healthy(&plain, GENEROUS).await;
    let b = node(root, "b", store);
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
    (a, b, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_carries_out_the_actions_of_every_shard_s_holder() {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::Builder::new().prefix("dr-as").tempdir_in("/tmp").unwrap();
    let root = dir.path();
    let (a, b, http) = two_nodes_a_shard_each(root, &store).await;

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
    // The hosts through either node: h1 with both shards' instances.
    for via in [&a, &b] {
        let (status, hosts) = get(&http, &format!("{}/v1/hosts", via.api)).await.unwrap();
        assert_eq!(status, 200, "{hosts}");
        let h1 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "h1").expect("h1 listed").clone();
        assert_eq!(h1["instances"], 2, "one primary of each shard's service, through {}: {hosts}", via.api);
        assert_eq!(h1["state"], "ready", "{hosts}");
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

/// The count `name` on `api`'s `/metrics` (0 before it is first counted).
async fn counted(http: &reqwest::Client, api: &str, name: &str) -> u64 {
    let r = http.get(format!("{api}/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET {api}/metrics");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Issue 16, "agents told which node holds their shard": an agent given
/// both nodes sends its first batch whole to the node it knows (which
/// passes the other shard's part on) and learns the holders from the
/// answer; from then on each holder gets its shard's beats straight, and
/// nothing is passed on. With a holder killed, its part goes to a node
/// that answers (pending until the shard is taken over) and the batch is
/// still acknowledged: the agent's lease does not lapse for a takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_the_holders_sends_each_holder_its_shard_s_beats() {
    use drover_model::{Beat, InstanceId, Slot};
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::Builder::new().prefix("dr-ah").tempdir_in("/tmp").unwrap();
    let root = dir.path();
    let (a, mut b, http) = two_nodes_a_shard_each(root, &store).await;
    let token = create_token(&http, &a.api, json!({"name": "agent-h1", "role": "agent", "host": "h1"})).await;
    let servers = format!("{},{}", a.api, b.api);
    let agent =
        drover_agent::control_plane::ControlPlane::new(&servers, Duration::from_secs(10), &token, None).unwrap();
    // Ten instances of each shard (none known to an engine: each answered
    // `unknown`, which is routed all the same).
    let ids: Vec<InstanceId> = (0..SHARDS)
        .flat_map(|s| (0..).map(|i| format!("svc{i}")).filter(move |n| Slot::of_name(n).shard(SHARDS) == s).take(10))
        .enumerate()
        .map(|(i, n)| InstanceId::new_at(1_700_000_000_000_000, i as u64).in_slot(Slot::of_name(&n)))
        .collect();
    let beats = |seq: u64| -> Vec<Beat> {
        ids.iter().map(|&instance| Beat { instance, seq, facts: Default::default() }).collect()
    };
    let forwarded = |api: String| {
        let http = http.clone();
        async move { counted(&http, &api, "drover_heartbeats_forwarded_total").await }
    };
    let received = |api: String| {
        let http = http.clone();
        async move { counted(&http, &api, "drover_heartbeats_received_total").await }
    };

    // The first batch: whole, to the node the agent knows first (a), which
    // passes b's shard's ten on.
    let (fa, ra, rb) = (forwarded(a.api.clone()).await, received(a.api.clone()).await, received(b.api.clone()).await);
    agent.send_beats(&beats(1)).await.expect("the first batch acknowledged");
    assert_eq!(forwarded(a.api.clone()).await - fa, 10, "a passed the other shard's part on");
    assert_eq!(received(a.api.clone()).await - ra, 10);
    assert_eq!(received(b.api.clone()).await - rb, 10);
    // Then each holder its own: nothing passed on by either.
    let (fa, fb) = (forwarded(a.api.clone()).await, forwarded(b.api.clone()).await);
    let (ra, rb) = (received(a.api.clone()).await, received(b.api.clone()).await);
    for seq in 2..5 {
        agent.send_beats(&beats(seq)).await.expect("a batch in parts acknowledged");
    }
    assert_eq!(forwarded(a.api.clone()).await, fa, "a passed nothing on");
    assert_eq!(forwarded(b.api.clone()).await, fb, "b passed nothing on");
    assert_eq!(received(a.api.clone()).await - ra, 30, "a got its shard's beats straight");
    assert_eq!(received(b.api.clone()).await - rb, 30, "b got its shard's beats straight");

    // b dies: its part goes to a, and the batch is still acknowledged.
    b.kill9();
    agent.send_beats(&beats(5)).await.expect("a batch acknowledged with a holder dead");
    agent.send_beats(&beats(6)).await.expect("and the next, whole, to the node that answers");
}
