//! Three `drover serve` nodes on one PostgreSQL store and one simulated
//! world served as its own process (`drover sim-provider`), issue 16's
//! done-means: services created through one node are healed through the
//! others; kill -9 of the holder while primaries crash → the fleet is taken
//! over within 10 s and every crashed primary is failed over exactly once;
//! a holder paused past its lease and resumed acts on nothing (the store
//! refuses its commits, the world its actions of an older generation) and
//! stops itself (exit code 3).

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{admin_client, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const GENEROUS: Duration = Duration::from_secs(60);
const TTL_SECS: f64 = 3.0;

fn node(root: &Path, name: &str, store: &str, world: &str) -> Serve {
    node_with(root, name, store, world, &[])
}

fn node_with(root: &Path, name: &str, store: &str, world: &str, extra: &[&str]) -> Serve {
    let cwd = root.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    let ttl = TTL_SECS.to_string();
    #[rustfmt::skip]
    let args = [
        "--data-dir", "data", "--store", store, "--node", name, "--lease-ttl-secs", &ttl,
        "--sim-provider-url", world,
        "--default-provider", "sim", "--no-local", "--heartbeat-interval-ms", "100",
        "--uncertain-after-ms", "400", "--restart-grace-secs", "0.5", "--probe-interval-ms", "200",
        "--action-timeout-ms", "3000",
    ];
    let args: Vec<&str> = args.iter().copied().chain(extra.iter().copied()).collect();
    common::share_the_key(&cwd.join("data"));
    Serve::start(&cwd, free_port(), &args)
}

/// The simulated world as its own process (`drover sim-provider`), ready.
async fn start_world(root: &Path, http: &reqwest::Client) -> Serve {
    std::fs::create_dir_all(root.join("world")).unwrap();
    let world = Serve::start_command(
        &root.join("world"),
        free_port(),
        "sim-provider",
        &["--data-dir", "data", "--action-latency-ms", "20"],
    );
    world.wait_healthy(http, GENEROUS).await;
    world
}

fn with_role<'a>(service: &'a Value, role: &str) -> Vec<&'a Value> {
    service["instances"].as_array().map(|i| i.iter().filter(|i| i["role"] == role).collect()).unwrap_or_default()
}

fn id(instance: &Value) -> String {
    instance["id"].as_str().unwrap_or_default().to_string()
}

/// The service once it is available with every instance available.
async fn settled(http: &reqwest::Client, via: &Serve, name: &str) -> Value {
    wait_for(GENEROUS, &format!("{name} available through {}", via.api), via, || async {
        let (_, s) = get(http, &format!("{}/v1/services/{name}", via.api)).await?;
        let all =
            s["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["state"] == "available"));
        (s["state"] == "available" && all).then_some(s)
    })
    .await
}

/// Waits until `old_follower` is the service's one available primary.
async fn failed_over(http: &reqwest::Client, via: &Serve, name: &str, old_follower: &str) -> Value {
    wait_for(GENEROUS, &format!("{name} failed over to {old_follower}"), via, || async {
        let (_, s) = get(http, &format!("{}/v1/services/{name}", via.api)).await?;
        let primaries = with_role(&s, "primary");
        let done = primaries.len() == 1
            && id(primaries[0]) == old_follower
            && primaries[0]["state"] == "available"
            && s["state"] == "available";
        done.then_some(s)
    })
    .await
}

async fn actions(http: &reqwest::Client, via: &Serve, name: &str) -> Vec<Value> {
    match get(http, &format!("{}/v1/actions?service={name}", via.api)).await {
        Some((200, Value::Array(actions))) => actions,
        other => panic!("actions of {name}: {other:?}"),
    }
}

fn promotes(actions: &[Value]) -> Vec<&Value> {
    actions.iter().filter(|a| a["kind"] == "promote" && a["state"] == "succeeded").collect()
}

/// The world's own view: how many running, unfenced, unbroken primaries
/// the service of id `service` has.
async fn writable_primaries(http: &reqwest::Client, world: &str, service: &str) -> usize {
    let (status, instances) = get(http, &format!("{world}/v1/instances")).await.expect("the world answers");
    assert_eq!(status, 200, "{instances}");
    let instances = instances.as_array().expect("a list of instances").clone();
    instances
        .iter()
        .filter(|i| i["service"] == service && i["role"] == "primary" && i["running"] == true && i["fenced"] == false)
        .filter(|i| i["fault"].is_null())
        .count()
}

async fn chaos(http: &reqwest::Client, world: &str, instance: &str) {
    let (status, body) = common::post(http, world, "/v1/chaos", json!({"instance": instance, "fault": "crash"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["outcome"], "succeeded", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_heal_one_fleet_through_a_holder_killed_and_a_holder_paused() {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let world = start_world(root, &plain).await;
    let w = world.api.clone();

    let mut a = node(root, "a", &store, &w);
    a.wait_healthy(&plain, GENEROUS).await;
    assert_eq!(pg.lease(), ("a".to_string(), 1));
    let http = admin_client(&root.join("a/data"));
    let mut b = node(root, "b", &store, &w);
    let mut c = node(root, "c", &store, &w);
    for standby in [&b, &c] {
        wait_for(GENEROUS, "the standby answering (503)", standby, || async {
            get(&plain, &format!("{}/healthz", standby.api)).await.filter(|(s, h)| *s == 503 && common::is_standby(h))
        })
        .await;
    }

    // Created through every node; the standbys forward to a.
    for (via, name) in [(&b, "s1"), (&c, "s2"), (&a, "s3")] {
        let body = json!({"name": name, "engine": "postgres", "followers": 1});
        let (status, created) = common::post(&http, &via.api, "/v1/services", body).await;
        assert_eq!(status, 201, "{name} through {}: {created}", via.api);
    }
    let mut followers = std::collections::BTreeMap::new();
    let mut primaries = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeMap::new();
    for name in ["s1", "s2", "s3"] {
        let s = settled(&http, &c, name).await;
        ids.insert(name, s["id"].as_str().unwrap().to_string());
        primaries.insert(name, id(with_role(&s, "primary")[0]));
        followers.insert(name, id(with_role(&s, "follower")[0]));
    }
    assert!(!b.healthy(&plain).await && !c.healthy(&plain).await, "b and c are standbys");
    // A page opened through a standby (the holder's pager): it is the
    // shared store's, so whoever takes over has it.
    let alerts =
        common::create_token(&http, &c.api, json!({"name": "alerts", "role": "integration", "team": "platform"})).await;
    let alert = json!({"routing_key": alerts, "event_action": "trigger", "dedup_key": "disk-s1",
                       "payload": {"summary": "s1's disk is full", "source": "s1", "severity": "critical"}});
    let (status, opened) = common::post(&plain, &b.api, "/v1/integrations/events-v2", alert).await;
    assert_eq!(status, 202, "{opened}");
    let page_id = opened["page"].as_str().expect("a page was opened").to_string();

    // kill -9 of the holder, and two primaries crash with it: the machines
    // live in the world, not in a, so whoever takes over must heal them.
    a.kill9();
    let killed = Instant::now();
    chaos(&plain, &w, &primaries["s1"]).await;
    chaos(&plain, &w, &primaries["s2"]).await;
    let deadline = killed + GENEROUS;
    let (holder, standby) = loop {
        if b.healthy(&plain).await {
            break (&mut b, &mut c);
        }
        if c.healthy(&plain).await {
            break (&mut c, &mut b);
        }
        assert!(Instant::now() < deadline, "nobody took over:\n{}\n{}", b.log_tail(), c.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = killed.elapsed();
    eprintln!("takeover after kill -9 of the holder: {:.2} s (lease TTL {TTL_SECS} s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let (new_holder, generation) = pg.lease();
    assert_eq!(generation, 2);
    assert!(holder.log_tail().contains("holds the fleet's lease"), "{}", holder.log_tail());
    // Healed by the new holder, asked through the other standby.
    for name in ["s1", "s2"] {
        failed_over(&http, standby, name, &followers[name]).await;
        assert_eq!(writable_primaries(&plain, &w, &ids[name]).await, 1, "{name}: one writable primary in the world");
    }
    let s3 = settled(&http, standby, "s3").await;
    assert_eq!(id(with_role(&s3, "primary")[0]), primaries["s3"], "s3 was not touched");
    eprintln!("failed over after kill -9 of the holder: {:.2} s", killed.elapsed().as_secs_f64());
    // Exactly once each (a's engine may have been in the middle of nothing:
    // it died before the crash was seen).
    for name in ["s1", "s2"] {
        let done = actions(&http, standby, name).await;
        let promoted = promotes(&done);
        assert_eq!(promoted.len(), 1, "{name}: exactly one promote: {done:#?}");
        assert_eq!(promoted[0]["instance"], followers[name].as_str());
    }
    assert!(promotes(&actions(&http, standby, "s3").await).is_empty());
    // The page a's pager opened, acknowledged through the new holder.
    let (status, page) = get(&http, &format!("{}/v1/pages/{page_id}", standby.api)).await.unwrap();
    assert_eq!((status, page["summary"].as_str()), (200, Some("s1's disk is full")), "{page}");
    let (status, acked) = common::post(&http, &holder.api, &format!("/v1/pages/{page_id}/ack"), json!({})).await;
    assert_eq!((status, acked["status"].as_str()), (200, Some("acknowledged")), "{acked}");

    // The world refuses an action of the old generation (a's, had it
    // woken up with one in flight), and takes the same from the holder.
    let resent = promotes(&actions(&http, standby, "s1").await)[0].clone();
    let send = |generation: i64| {
        plain
            .post(format!("{w}/v1/actions"))
            .header("x-drover-generation", generation.to_string())
            .header("x-drover-node", "a")
            .json(&resent)
            .send()
    };
    let refused = send(1).await.unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or_default().contains("generation 1"), "{body}");
    assert_eq!(send(2).await.unwrap().status().as_u16(), 200, "the holder's generation is taken");

    // The cluster, asked through the standby: a dead, the holder with the shard.
    let cluster = wait_for(GENEROUS, "a seen dead", standby, || async {
        let (_, c) = get(&http, &format!("{}/v1/cluster", standby.api)).await?;
        let a = c["nodes"].as_array()?.iter().find(|n| n["name"] == "a")?.clone();
        (a["alive"] == false).then_some(c)
    })
    .await;
    let shards_of =
        |n: &str| cluster["nodes"].as_array().unwrap().iter().find(|x| x["name"] == n).map(|x| x["shards"].clone());
    assert_eq!(shards_of(&new_holder), Some(json!(1)), "{cluster}");
    assert_eq!(cluster["generation"].as_i64(), Some(2), "{cluster}");

    // The holder paused past its lease: the standby takes over (generation
    // 3) and heals a primary that crashes meanwhile; the paused node,
    // resumed, stops (exit code 3) and acts on nothing.
    holder.signal("-STOP");
    let paused = Instant::now();
    chaos(&plain, &w, &primaries["s3"]).await;
    standby.wait_healthy(&plain, GENEROUS).await;
    eprintln!("takeover from a paused holder: {:.2} s", paused.elapsed().as_secs_f64());
    assert_eq!(pg.lease().1, 3);
    failed_over(&http, standby, "s3", &followers["s3"]).await;
    holder.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = holder.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the paused holder still runs:\n{}", holder.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(3), "{}", holder.log_tail());
    let done = actions(&http, standby, "s3").await;
    assert_eq!(promotes(&done).len(), 1, "s3: exactly one promote: {done:#?}");
    assert_eq!(writable_primaries(&plain, &w, &ids["s3"]).await, 1);
    for name in ["s1", "s2"] {
        assert_eq!(promotes(&actions(&http, standby, name).await).len(), 1, "{name} was not failed over again");
    }
    // Every holder sent its generation: the world noted the newest.
    let noted = std::fs::read_to_string(root.join("world/data/sim-generation")).unwrap();
    assert_eq!(noted.trim(), "3");
    let refusals = std::fs::read_to_string(&world.log).unwrap().matches("refused: a stale generation").count();
    eprintln!("actions the world refused for a stale generation: {refusals} (1 sent by the test)");
    assert!(refusals >= 1);
    let (status, _) = get(&plain, &format!("{w}/v1/nonsense")).await.unwrap();
    assert_eq!(status, 404);
    let (status, body) = common::post(&plain, &w, "/v1/chaos", json!({"instance": "nope", "fault": "crash"})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

/// The holder of each shard, as `/v1/cluster` reads the leases (live ones).
async fn holders(http: &reqwest::Client, via: &Serve) -> Option<std::collections::BTreeMap<u16, String>> {
    let (status, cluster) = get(http, &format!("{}/v1/cluster", via.api)).await?;
    (status == 200).then_some(())?;
    Some(
        cluster["leases"]
            .as_array()?
            .iter()
            .filter(|l| l["expires_in_ms"].as_i64().unwrap_or(0) > 0)
            .map(|l| (l["shard"].as_u64().unwrap_or(0) as u16, l["holder"].as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

const SHARDS: u16 = 3;

fn shard_of(name: &str) -> u16 {
    drover_model::Slot::of_name(name).shard(SHARDS)
}

/// Three nodes on three shards, one each (their holders by shard), and
/// two services with a follower in each shard, each created through a node
/// that does not hold it (forwarded by name).
async fn three_nodes_two_services_a_shard(
    root: &Path,
    store: &str,
    world: &str,
    plain: &reqwest::Client,
) -> (Vec<(&'static str, Serve)>, reqwest::Client, std::collections::BTreeMap<u16, String>, Vec<String>) {
    let shards = SHARDS.to_string();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let n = node_with(root, name, store, world, &["--shards", &shards]);
        n.wait_healthy(plain, GENEROUS).await;
        nodes.push((name, n));
    }
    let http = admin_client(&root.join("a/data"));
    let spread = wait_for(GENEROUS, "one shard per node", &nodes[0].1, || async {
        let h = holders(&http, &nodes[0].1).await?;
        let mut by: Vec<&String> = h.values().collect();
        by.sort();
        by.dedup();
        (h.len() == SHARDS as usize && by.len() == 3).then_some(h)
    })
    .await;
    // Each node learns the others' shards at its next round (every TTL/8).
    tokio::time::sleep(Duration::from_secs_f64(TTL_SECS / 2.0)).await;
    let mut names = Vec::new();
    for shard in 0..SHARDS {
        names.extend((0..).map(|i| format!("s{i}")).filter(|n| shard_of(n) == shard).take(2));
    }
    for name in &names {
        let holder = &spread[&shard_of(name)];
        let (_, via) = nodes.iter().find(|(n, _)| *n != holder.as_str()).unwrap();
        let body = json!({"name": name, "engine": "postgres", "followers": 1});
        let (status, created) = common::post(&http, &via.api, "/v1/services", body).await;
        assert_eq!(status, 201, "{name} through {}: {created}", via.api);
    }
    (nodes, http, spread, names)
}

/// Issue 16 on a fleet split into three shards, one per node: services
/// created through any node land on their shard's holder and are read
/// and listed through any other; kill -9 of a node while the primaries
/// of its shard crash → its shard is taken over within 10 s and each of
/// those primaries is failed over exactly once, through the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_three_shards_heal_the_fleet_through_a_node_killed() {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let world = start_world(root, &plain).await;
    let w = world.api.clone();
    let (mut nodes, http, spread, names) = three_nodes_two_services_a_shard(root, &store, &w, &plain).await;
    let mut followers = std::collections::BTreeMap::new();
    let mut primaries = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let via = &nodes[i % 3].1;
        let s = settled(&http, via, name).await;
        ids.insert(name.clone(), s["id"].as_str().unwrap().to_string());
        primaries.insert(name.clone(), id(with_role(&s, "primary")[0]));
        followers.insert(name.clone(), id(with_role(&s, "follower")[0]));
    }
    // The whole fleet's list, through any node.
    for (_, via) in &nodes {
        let (status, list) = get(&http, &format!("{}/v1/services", via.api)).await.unwrap();
        assert_eq!(status, 200, "{list}");
        let mut listed: Vec<String> =
            list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
        listed.sort();
        let mut all = names.clone();
        all.sort();
        assert_eq!(listed, all, "the list through {}", via.api);
    }

    // kill -9 of the holder of c's shard, and its shard's primaries crash.
    let (victim_shard, victim) = spread.iter().find(|(_, n)| n.as_str() == "c").map(|(s, n)| (*s, n.clone())).unwrap();
    let crashed: Vec<String> = names.iter().filter(|n| shard_of(n) == victim_shard).cloned().collect();
    let (_, mut c) = nodes.pop().unwrap();
    assert_eq!(victim, "c");
    c.kill9();
    let killed = Instant::now();
    for name in &crashed {
        chaos(&plain, &w, &primaries[name]).await;
    }
    let survivor = &nodes[0].1;
    let taken = wait_for(GENEROUS, "c's shard taken over", survivor, || async {
        let h = holders(&http, survivor).await?;
        h.get(&victim_shard).filter(|n| n.as_str() != "c").cloned()
    })
    .await;
    let took = killed.elapsed();
    eprintln!("shard {victim_shard} of a node killed -9 taken over by {taken} in {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    for (i, name) in crashed.iter().enumerate() {
        let via = &nodes[i % 2].1;
        failed_over(&http, via, name, &followers[name]).await;
        assert_eq!(writable_primaries(&plain, &w, &ids[name]).await, 1, "{name}: one writable primary in the world");
    }
    eprintln!("failed over after kill -9 of a node: {:.2} s", killed.elapsed().as_secs_f64());
    for name in &names {
        let promoted = promotes(&actions(&http, survivor, name).await).len();
        let want = usize::from(crashed.contains(name));
        assert_eq!(promoted, want, "{name}: {promoted} promotes");
    }

    // A page opened through either node (the pager of shard 0's holder);
    // that holder killed, the survivor takes shard 0 and its pager is
    // restored from the store: it knows the page and acknowledges it.
    let alerts = common::create_token(
        &http,
        &nodes[1].1.api,
        json!({"name": "alerts", "role": "integration", "team": "platform"}),
    )
    .await;
    let alert = json!({"routing_key": alerts, "event_action": "trigger", "dedup_key": "disk-1",
                       "payload": {"summary": "a disk is full", "source": "s1", "severity": "critical"}});
    let (status, opened) = common::post(&plain, &nodes[1].1.api, "/v1/integrations/events-v2", alert).await;
    assert_eq!(status, 202, "{opened}");
    let page_id = opened["page"].as_str().expect("a page was opened").to_string();
    let zero_holder = holders(&http, &nodes[0].1).await.unwrap()[&0].clone();
    let at = nodes.iter().position(|(n, _)| *n == zero_holder.as_str()).expect("shard 0's holder is alive");
    let (_, mut zero) = nodes.remove(at);
    let (_, other) = &nodes[0];
    zero.kill9();
    wait_for(GENEROUS, "the survivor holds every shard", other, || async {
        let h = holders(&http, other).await?;
        (h.len() == SHARDS as usize && h.values().all(|n| n.as_str() != zero_holder.as_str())).then_some(())
    })
    .await;
    let acked = wait_for(GENEROUS, "the page acknowledged through the survivor", other, || async {
        let (status, acked) = common::post(&http, &other.api, &format!("/v1/pages/{page_id}/ack"), json!({})).await;
        (status == 200).then_some(acked)
    })
    .await;
    assert_eq!(acked["status"].as_str(), Some("acknowledged"), "{acked}");
    assert_eq!(acked["summary"].as_str(), Some("a disk is full"), "{acked}");
}

/// A rollout on a fleet split into three shards, one per node (issue 16:
/// every route behaves the same on every node): created through a node
/// that does not keep its record, it moves every shard's services onto the
/// new image wave by wave, each moved by its own shard's holder, and shard
/// 0's holder opens the second wave only once every shard closed the
/// first. Its record, read through any node, is the fleet's sums. The
/// holder of another shard is killed (-9) as the rollout starts: the node
/// that takes its shard over moves its services, each started once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_on_three_shards_moves_every_shard_s_services_wave_by_wave() {
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let world = start_world(root, &plain).await;
    let (mut nodes, http, spread, names) = three_nodes_two_services_a_shard(root, &store, &world.api, &plain).await;
    for (i, name) in names.iter().enumerate() {
        settled(&http, &nodes[i % 3].1, name).await;
    }
    let zero = spread[&0].clone();
    // Shard 0's holder keeps the record; one of the others dies as the
    // rollout starts, and the rollout is asked about through the third.
    let (victim_shard, victim) = spread.iter().find(|(_, n)| **n != zero).map(|(s, n)| (*s, n.clone())).unwrap();
    let at = nodes.iter().position(|(n, _)| *n == victim.as_str()).unwrap();
    let (_, mut doomed) = nodes.remove(at);
    let (_, other) = nodes.iter().find(|(n, _)| *n != zero.as_str()).unwrap();
    let body = json!({"engine": "postgres", "settings": {"work_mem": "16MB"}});
    let (status, image) = common::post(&http, &other.api, "/v1/images", body).await;
    assert_eq!(status, 201, "{image}");
    let image = image["id"].as_str().unwrap().to_string();
    // Every holder learns the image within a poll (half a second).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let body = json!({"to_image": image, "waves": [34, 100], "soak_seconds": 1, "max_failures": 2});
    let (status, created) = common::post(&http, &other.api, "/v1/rollouts", body).await;
    assert_eq!(status, 201, "a rollout through {other:?}, not shard 0's holder: {created}", other = other.api);
    let id = created["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.kill9();
    eprintln!("killed {victim}, the holder of shard {victim_shard}, 1.5 s into the rollout");
    // Read through the third node until it ends, noting each wave and
    // how many were done then.
    let mut waves_seen = std::collections::BTreeSet::new();
    let asked = Instant::now();
    let done = loop {
        let (status, r) = get(&http, &format!("{}/v1/rollouts/{id}", other.api)).await.expect("an answer");
        assert_eq!(status, 200, "{r}");
        waves_seen.insert((r["wave"].as_u64().unwrap(), r["done"].as_u64().unwrap()));
        if r["state"] != "pending" && r["state"] != "running" {
            break r;
        }
        assert!(asked.elapsed() < Duration::from_secs(180), "the rollout never ended: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("rollout over three shards: {:.1} s; (wave, done) seen: {waves_seen:?}", asked.elapsed().as_secs_f64());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!((done["total"].as_u64(), done["done"].as_u64(), done["failed"].as_u64()), (Some(6), Some(6), Some(0)));
    assert_eq!(done["wave"], 2, "{done}");
    // Wave 2 opened only after wave 1 was done in every shard: no look at
    // the record saw wave 2 with fewer done than the three shards' first
    // waves (one service of each).
    assert!(waves_seen.iter().filter(|(wave, _)| *wave == 2).all(|(_, done)| *done >= 3), "{waves_seen:?}");
    for (i, name) in names.iter().enumerate() {
        let api = &nodes[i % 2].1.api;
        let (_, s) = get(&http, &format!("{api}/v1/services/{name}")).await.unwrap();
        assert_eq!(s["image"], image.as_str(), "{name}: {s}");
        let (_, events) = get(&http, &format!("{api}/v1/events?service={name}&limit=10000")).await.unwrap();
        let started = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cause"].as_str().is_some_and(|c| c.contains("moving onto image")))
            .count();
        assert_eq!(started, 1, "{name} (shard {}) started moving once", shard_of(name));
        let instances = s["instances"].as_array().unwrap();
        assert!(instances.iter().all(|i| i["image"] == image.as_str()), "{name}: every instance on the image: {s}");
    }
    let (status, moved) = get(&http, &format!("{}/v1/rollouts/{id}/services", other.api)).await.unwrap();
    assert_eq!(status, 200, "{moved}");
    let mut listed: Vec<&str> = moved.as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    listed.sort();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.sort();
    assert_eq!(listed, all, "every shard's services, done: {moved}");
    assert!(moved.as_array().unwrap().iter().all(|m| m["phase"] == "done"), "{moved}");
}

/// A node of a split fleet paused (SIGSTOP) past its lease: the other takes
/// its shard and fails over the primary that crashed meanwhile, exactly
/// once; resumed, the paused node acts on nothing it lost (no second
/// promote), keeps running (no restart needed) and rejoins with a shard of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_a_split_fleet_paused_past_its_lease_acts_on_nothing_and_rejoins() {
    const SHARDS: u16 = 2;
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let world = start_world(root, &plain).await;
    let w = world.api.clone();
    let shards = SHARDS.to_string();
    let a = node_with(root, "a", &store, &w, &["--shards", &shards]);
    a.wait_healthy(&plain, GENEROUS).await;
    let mut b = node_with(root, "b", &store, &w, &["--shards", &shards]);
    b.wait_healthy(&plain, GENEROUS).await;
    let http = admin_client(&root.join("a/data"));
    let one_each = |h: &std::collections::BTreeMap<u16, String>| {
        h.len() == SHARDS as usize && h.values().any(|n| n == "a") && h.values().any(|n| n == "b")
    };
    let spread = wait_for(GENEROUS, "one shard each", &a, || async {
        let h = holders(&http, &a).await?;
        one_each(&h).then_some(h)
    })
    .await;
    tokio::time::sleep(Duration::from_secs_f64(TTL_SECS / 2.0)).await;
    let b_shard = *spread.iter().find(|(_, n)| n.as_str() == "b").unwrap().0;
    let name =
        (0..).map(|i| format!("p{i}")).find(|n| drover_model::Slot::of_name(n).shard(SHARDS) == b_shard).unwrap();
    let body = json!({"name": name, "engine": "postgres", "followers": 1});
    let (status, created) = common::post(&http, &a.api, "/v1/services", body).await;
    assert_eq!(status, 201, "{created}");
    let s = settled(&http, &a, &name).await;
    let (primary, follower) = (id(with_role(&s, "primary")[0]), id(with_role(&s, "follower")[0]));

    b.signal("-STOP");
    let paused = Instant::now();
    chaos(&plain, &w, &primary).await;
    failed_over(&http, &a, &name, &follower).await;
    eprintln!("failed over by a while b was paused: {:.2} s after the pause", paused.elapsed().as_secs_f64());
    assert!(paused.elapsed() >= Duration::from_secs_f64(TTL_SECS * 0.8), "taken before b's lease could expire");
    b.signal("-CONT");
    // b rejoins (its process still running) with a shard of its own.
    wait_for(GENEROUS, "b rejoins with a shard", &a, || async {
        let h = holders(&http, &a).await?;
        one_each(&h).then_some(())
    })
    .await;
    assert!(b.child.as_mut().unwrap().try_wait().unwrap().is_none(), "b stopped:\n{}", b.log_tail());
    b.wait_healthy(&plain, GENEROUS).await;
    // Nothing acted twice: one promote, one writable primary in the world.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = actions(&http, &b, &name).await;
    assert_eq!(promotes(&done).len(), 1, "exactly one promote: {done:#?}");
    let s_id = s["id"].as_str().unwrap().to_string();
    assert_eq!(writable_primaries(&plain, &w, &s_id).await, 1);
    assert!(b.log_tail().contains("shards lost") || b.log_tail().contains("could not be renewed"), "{}", b.log_tail());
}
