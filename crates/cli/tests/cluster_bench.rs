//! Issue 16's benchmark: heartbeats through HTTP into three `drover serve`
//! nodes on one PostgreSQL store holding a fleet of simulated-size
//! instances, and the time a node needs to take that fleet over after a
//! kill -9 of its holder. Ignored (minutes and gigabytes at full size); run
//! with
//!
//! ```sh
//! DROVER_BENCH_INSTANCES=1000000 cargo nextest run --release -p drover \
//!   --test cluster_bench --run-ignored only --no-capture
//! ```
//!
//! The fleet is built by the real engine in this process (services of a
//! primary and a synchronous follower, placed on 30 agent hosts in three
//! zones, provisioned, one round of beats) and committed to the store
//! through `PgStore`'s own commits: the rows are those a node writes. The
//! nodes then load it as they load any fleet. The heartbeats are those an
//! agent sends (`POST /v1/heartbeats` with its host's agent token, batches
//! of [`BATCH`] beats), spread evenly over the three nodes: the two
//! standbys forward theirs to the holder. Everything runs on this one
//! machine (PostgreSQL, three nodes, the sender), as the issue asks.
//!
//! Printed: the first load, beats per second over [`ROUNDS`] rounds, the
//! holder's resident memory per instance (the whole process), and the
//! takeover (kill -9 of the holder to a standby answering `/healthz` 200).
//! The last line is one JSON object with the figures.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{free_port, get, Serve};
use drover_engine::{Command, Config, Engine, Input, Reply};
use drover_model::{
    ActionKind, ActionOutcome, Beat, Changes, CreateService, EngineKind, Facts, Image, InstanceId, RegisterHost, Role,
    Timestamp,
};
use drover_store::Store;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: usize = 30;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Beats per request, as an agent of a large host sends them.
const BATCH: usize = 5_000;
/// Rounds of beats unless `DROVER_BENCH_ROUNDS` says.
const ROUNDS: u64 = 5;
/// Requests in flight at once, over all nodes, unless
/// `DROVER_BENCH_IN_FLIGHT` says.
const IN_FLIGHT: usize = 12;

fn in_flight() -> usize {
    std::env::var("DROVER_BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(IN_FLIGHT)
}
const TTL_SECS: &str = "3";
/// The lines of a node's log that mark the phases of a takeover.
const PHASES: [&str; 6] =
    ["lease", "fleet state in", "store loaded", "re-dispatching", "drover ready", "holds the fleet"];

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn host_name(h: usize) -> String {
    format!("h{h:02}")
}

fn merge(into: &mut Changes, from: Changes) {
    into.services.extend(from.services);
    into.instances.extend(from.instances);
    into.actions.extend(from.actions);
    into.images.extend(from.images);
    into.events.extend(from.events);
    into.audit.extend(from.audit);
    into.rollouts.extend(from.rollouts);
    into.rollout_members.extend(from.rollout_members);
    into.hosts.extend(from.hosts);
    into.archives.extend(from.archives);
}

fn facts(role: Role, seq: u64) -> Facts {
    Facts {
        role: Some(role),
        writable: Some(role == Role::Primary),
        wal_position: Some(seq * 8192),
        replication_lag_bytes: (role == Role::Follower).then_some(0),
        upstream_streaming: (role == Role::Follower).then_some(true),
        connections: Some(12),
        last_backup_at: None,
        port: Some(5432),
    }
}

/// Builds the fleet with the engine and commits what it decided to the
/// store, a chunk of services per commit (on another thread, so building
/// and writing overlap). Returns every instance with its host and role.
fn seed(store_url: &str, instances: usize) -> Vec<(InstanceId, usize, Role)> {
    let store = drover_store::PgStore::connect(store_url).expect("the store");
    let (tx, rx) = std::sync::mpsc::sync_channel::<Changes>(4);
    let writer = std::thread::spawn(move || {
        for changes in rx {
            store.commit(changes).expect("seeding commit");
        }
    });
    let config =
        Config { default_provider: "local".into(), providers: vec!["sim".into(), "local".into()], ..Config::default() };
    let mut engine = Engine::new(config, 16);
    engine.reserve(instances);
    let now = Timestamp(now_micros());
    let mut pending = Changes::default();
    let step = |engine: &mut Engine, input: Input, pending: &mut Changes| {
        let mut out = engine.step(input, now);
        merge(pending, std::mem::take(&mut out.changes));
        out
    };
    let image = Image::new(EngineKind::Postgres, "15-bench", Default::default(), Default::default(), now);
    step(
        &mut engine,
        Input::Command { actor: "bench".into(), role: None, command: Command::RegisterImage(image) },
        &mut pending,
    );
    let capacity = (instances / HOSTS * 2 + 100) as u32;
    for h in 0..HOSTS {
        let host = RegisterHost {
            name: host_name(h),
            zone: ZONES[h % 3].into(),
            address: format!("127.0.1.{}", h + 1),
            capacity,
        };
        let out = step(
            &mut engine,
            Input::Command {
                actor: "bench".into(),
                role: None,
                command: Command::RegisterHost { host, builtin: false },
            },
            &mut pending,
        );
        assert!(matches!(out.reply, Some(Ok(_))), "registering a host: {:?}", out.reply);
    }
    let host_index: std::collections::HashMap<String, usize> = (0..HOSTS).map(|h| (host_name(h), h)).collect();
    let mut placed: Vec<(InstanceId, usize, Role)> = Vec::with_capacity(instances);
    for s in 0..instances / 2 {
        let req = CreateService {
            name: format!("svc-{s}"),
            engine: EngineKind::Postgres,
            followers: 1,
            provider: Some("local".into()),
            sync: Some(true),
            team: None,
            zones: None,
            max_failover_lag_bytes: None,
            credential_rotation_days: None,
            labels: None,
            brokers: None,
        };
        let out = step(
            &mut engine,
            Input::Command { actor: "bench".into(), role: None, command: Command::CreateService(req) },
            &mut pending,
        );
        match out.reply {
            Some(Ok(Reply::Service(v))) => placed.extend(v.instances.iter().map(|i| {
                let host = i.host.as_deref().and_then(|h| host_index.get(h)).copied();
                (
                    i.id,
                    host.unwrap_or_else(|| panic!("instance {} placed on no agent host: {:?}", i.id, i.host)),
                    i.role,
                )
            })),
            other => panic!("creating a service failed: {other:?}"),
        }
        for a in out.dispatch {
            if matches!(a.kind, ActionKind::Provision(_)) {
                let result = Input::ActionResult {
                    action: a.id,
                    attempt: a.attempts,
                    outcome: ActionOutcome::Succeeded { detail: None },
                };
                step(&mut engine, result, &mut pending);
            }
        }
        if s % 2_000 == 1_999 {
            tx.send(std::mem::take(&mut pending)).unwrap();
        }
    }
    // One round of beats: everyone available, as a running fleet is.
    for chunk in placed.chunks(BATCH) {
        let beats = chunk.iter().map(|&(id, _, role)| Beat { instance: id, seq: 1, facts: facts(role, 1) }).collect();
        step(&mut engine, Input::Heartbeats(beats), &mut pending);
    }
    tx.send(pending).unwrap();
    drop(tx);
    writer.join().expect("the seeding writer");
    placed
}

/// The fleet's size and the rounds of beats, from `DROVER_BENCH_INSTANCES`
/// and `DROVER_BENCH_ROUNDS`.
fn sizes() -> (usize, u64) {
    let instances: usize =
        std::env::var("DROVER_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: u64 = std::env::var("DROVER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROUNDS);
    assert!(instances >= 2 * HOSTS, "DROVER_BENCH_INSTANCES must be at least {}", 2 * HOSTS);
    (instances, rounds)
}

/// [`seed`] off the test's runtime: the instances placed, and how long it took.
async fn seeded(store: &str, instances: usize) -> (Vec<(InstanceId, usize, Role)>, f64) {
    let started = Instant::now();
    let store = store.to_string();
    let placed = tokio::task::spawn_blocking(move || seed(&store, instances)).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    eprintln!("fleet of {} instances on {HOSTS} hosts built and committed to the store in {took:.1} s", placed.len());
    (placed, took)
}

fn node(root: &Path, name: &str, store: &str, extra: &[&str]) -> Serve {
    let cwd = root.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    #[rustfmt::skip]
    let args = [
        "--data-dir", "data", "--store", store, "--node", name, "--lease-ttl-secs", TTL_SECS,
        "--no-local",
        // The hosts are addresses with no server behind them: a router
        // (a pgbouncer) per service would measure forks, not ingest.
        "--max-routers-beside", "0",
        // The bench measures ingest, not failure detection: a round of a
        // million beats may take longer than the default silence bounds.
        "--uncertain-after-ms", "120000", "--presumed-dead-after-secs", "300", "--restart-grace-secs", "300",
    ];
    common::share_the_key(&cwd.join("data"));
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    Serve::start(&cwd, free_port(), &args)
}

fn rss_bytes(serve: &Serve) -> u64 {
    let pid = serve.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The node answering `/healthz` 200 among `nodes`, waiting up to `timeout`.
async fn holder(http: &reqwest::Client, nodes: &[Serve], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.child.is_some() && n.healthy(http).await {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node holds the fleet:\n{}",
            nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One round's request bodies: per host, batches of [`BATCH`] beats. With
/// the shards' holders (as a node tells an agent, `drover_agent::holders`),
/// each host's beats by holder, each batch for its holder's URL (as the
/// agent sends them); without, for any node.
fn round_bodies(
    placed: &[(InstanceId, usize, Role)],
    seq: u64,
    holders: Option<&drover_agent::holders::Holders>,
) -> Vec<(usize, Option<String>, Vec<u8>)> {
    let mut by_host: Vec<Vec<Beat>> = vec![Vec::new(); HOSTS];
    for &(id, host, role) in placed {
        by_host[host].push(Beat { instance: id, seq, facts: facts(role, seq) });
    }
    let mut bodies = Vec::new();
    for (host, beats) in by_host.into_iter().enumerate() {
        let parts = match holders {
            Some(map) => map.split(&beats).into_iter().map(|(url, part)| (url.map(str::to_string), part)).collect(),
            None => vec![(None, beats)],
        };
        for (url, part) in parts {
            for chunk in part.chunks(BATCH) {
                let body = serde_json::to_vec(&json!({ "beats": chunk })).unwrap();
                bodies.push((host, url.clone(), body));
            }
        }
    }
    bodies
}

/// Sends one round's bodies, [`in_flight`] at once, each host's batches to
/// the nodes in turn; every beat must be taken by its holder's engine (none
/// stale, unknown or pending). Returns how long the round took.
async fn send_round(
    http: &reqwest::Client,
    nodes: &[Serve],
    apis: &[String],
    tokens: &[String],
    bodies: Vec<(usize, Option<String>, Vec<u8>)>,
    accepted: &Arc<AtomicU64>,
) -> Duration {
    let began = Instant::now();
    let work = Arc::new(std::sync::Mutex::new(bodies.into_iter().enumerate()));
    let mut senders = Vec::new();
    for _ in 0..in_flight() {
        let (work, apis, tokens, http, accepted) =
            (work.clone(), apis.to_vec(), tokens.to_vec(), http.clone(), accepted.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let Some((i, (host, url, body))) = work.lock().unwrap().next() else { return };
                let api = url.as_ref().unwrap_or(&apis[i % apis.len()]);
                let r = http
                    .post(format!("{api}/v1/heartbeats"))
                    .header("authorization", &tokens[host])
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST /v1/heartbeats to {api}: {e}"));
                let status = r.status().as_u16();
                let answer: serde_json::Value = r.json().await.unwrap_or_default();
                assert_eq!(status, 200, "POST /v1/heartbeats to {api}: {answer}");
                assert_eq!(answer["stale"], 0, "{answer}");
                assert_eq!(answer["unknown"].as_array().map(Vec::len), Some(0), "{answer}");
                assert_eq!(answer["pending"].as_u64().unwrap_or(0), 0, "{answer}");
                accepted.fetch_add(answer["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
        }));
    }
    for s in senders {
        if let Err(e) = s.await {
            // Say why: a node that stopped answering left its reason in its log.
            for node in nodes {
                eprintln!("--- {}:\n{}", node.api, node.log_tail());
            }
            panic!("a sender: {e}");
        }
    }
    began.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes and gigabytes at full size (run with --run-ignored only)"]
async fn heartbeats_into_three_nodes_and_a_takeover_of_the_fleet() {
    let (instances, rounds) = sizes();
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(120)).build().unwrap();

    let (placed, seeded) = seeded(&store, instances).await;
    let n = placed.len();

    let start = Instant::now();
    let mut nodes = vec![node(root, "a", &store, &[])];
    let first = holder(&plain, &nodes, Duration::from_secs(900)).await;
    let first_load = start.elapsed().as_secs_f64();
    eprintln!("node a loaded the fleet and holds it after {first_load:.1} s");
    nodes.push(node(root, "b", &store, &[]));
    nodes.push(node(root, "c", &store, &[]));
    let admin = common::admin_client(&root.join("a/data"));
    for n in &nodes[1..] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !matches!(get(&plain, &format!("{}/healthz", n.api)).await, Some((503, _))) {
            assert!(Instant::now() < deadline, "the standby never answered:\n{}", n.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut tokens = Vec::with_capacity(HOSTS);
    for h in 0..HOSTS {
        let body = json!({"name": format!("agent-{}", host_name(h)), "role": "agent", "host": host_name(h)});
        tokens.push(format!("Bearer {}", common::create_token(&admin, &nodes[first].api, body).await));
    }
    let holder_rss_loaded = rss_bytes(&nodes[first]);

    // The rounds: every instance beats once per round; each host's batches
    // go to the nodes in turn, [`IN_FLIGHT`] requests at once.
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let accepted = Arc::new(AtomicU64::new(0));
    let mut busy = Duration::ZERO;
    let mut sent = 0u64;
    for round in 0..rounds {
        let took = send_round(&plain, &nodes, &apis, &tokens, round_bodies(&placed, round + 2, None), &accepted).await;
        busy += took;
        sent += n as u64;
        eprintln!("round {round}: {n} beats in {:.2} s ({:.0}/s)", took.as_secs_f64(), n as f64 / took.as_secs_f64());
    }
    let accepted = accepted.load(Ordering::Relaxed);
    assert_eq!(accepted, sent, "every beat accepted by the holder's engine");
    let per_sec = accepted as f64 / busy.as_secs_f64();
    let holder_rss = rss_bytes(&nodes[first]);
    let per_instance = holder_rss as f64 / n as f64;
    eprintln!("{accepted} heartbeats in {:.1} s: {per_sec:.0} per second through three nodes", busy.as_secs_f64());
    eprintln!(
        "holder's resident memory: {} MiB loaded, {} MiB after the rounds: {per_instance:.0} bytes per instance",
        holder_rss_loaded >> 20,
        holder_rss >> 20
    );
    // Every instance is still available: the beats were taken, not dropped.
    let (status, cluster) = get(&admin, &format!("{}/v1/cluster", nodes[first].api)).await.unwrap();
    assert_eq!(status, 200, "{cluster}");

    // The takeover: kill -9 of the holder, until another answers 200.
    nodes[first].kill9();
    let killed = Instant::now();
    let next = holder(&plain, &nodes, Duration::from_secs(900)).await;
    let takeover = killed.elapsed().as_secs_f64();
    let next_rss = rss_bytes(&nodes[next]);
    eprintln!(
        "takeover of {n} instances: {takeover:.2} s from kill -9 to {} ready (lease TTL {TTL_SECS} s), {} MiB resident",
        ["a", "b", "c"][next],
        next_rss >> 20
    );
    // Where the takeover's time went, as the new holder's log says.
    let log = std::fs::read_to_string(&nodes[next].log).unwrap_or_default();
    for line in log.lines().filter(|l| PHASES.iter().any(|p| l.contains(p))).take(20) {
        eprintln!("  {line}");
    }
    let (generation, holder_name) = {
        let (h, g) = pg.lease();
        (g, h)
    };
    assert_eq!(generation, 2, "one takeover");
    assert_eq!(holder_name, ["a", "b", "c"][next]);
    println!(
        "{}",
        json!({
            "bench": "cluster",
            "nodes": 3,
            "instances": n,
            "hosts": HOSTS,
            "batch": BATCH,
            "rounds": rounds,
            "seed_seconds": seeded,
            "first_load_seconds": first_load,
            "heartbeats": accepted,
            "heartbeats_per_sec": per_sec.round(),
            "holder_rss_bytes": holder_rss,
            "bytes_per_instance": per_instance.round(),
            "takeover_seconds": takeover,
            "lease_ttl_seconds": TTL_SECS.parse::<f64>().unwrap(),
        })
    );
}

/// The holder and generation of each shard's lease, from the store.
fn shard_leases(pg: &pg::PgServer) -> std::collections::BTreeMap<u16, (String, i64)> {
    pg.psql("postgres", "SELECT shard || ' ' || holder || ' ' || generation FROM leases ORDER BY shard")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, (f.next()?.to_string(), f.next()?.parse().ok()?)))
        })
        .collect()
}

/// Sends one beat of `instance` (on `host`) through `api`: whether its
/// holder's engine took it.
async fn beat_taken(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    instance: InstanceId,
    role: Role,
    seq: u64,
) -> bool {
    let body = json!({"beats": [Beat { instance, seq, facts: facts(role, seq) }]});
    let Ok(r) = http.post(format!("{api}/v1/heartbeats")).header("authorization", token).json(&body).send().await
    else {
        return false;
    };
    let ok = r.status().as_u16() == 200;
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    ok && answer["accepted"].as_u64() == Some(1)
}

/// Issue 16's benchmark on a fleet split over the nodes (`--shards 3`, one
/// shard each): heartbeats through HTTP into the three, each host's beats
/// sent to their shards' holders as a node's answer names them, as the
/// agent sends them (`DROVER_BENCH_ROUTE=any`: each batch to any node,
/// which keeps its part and forwards the rest to their holders), and the
/// time a survivor needs to take over the third of a node killed -9 and
/// take its beats. Run with
///
/// ```sh
/// DROVER_BENCH_INSTANCES=1000000 cargo nextest run --release -p drover \
///   --test cluster_bench --run-ignored only --no-capture split
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes and gigabytes at full size (run with --run-ignored only)"]
async fn heartbeats_into_a_fleet_split_over_three_nodes_and_a_takeover_of_a_third() {
    const SHARDS: u16 = 3;
    let (instances, rounds) = sizes();
    let pg = pg::PgServer::start();
    let store = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    // DROVER_BENCH_KEEP=1 keeps the nodes' directories and logs.
    let dir = if std::env::var_os("DROVER_BENCH_KEEP").is_some() {
        eprintln!("the nodes' directories are kept in {}", dir.path().display());
        tempfile::Builder::new().disable_cleanup(true).tempdir_in(dir.keep()).unwrap()
    } else {
        dir
    };
    let root = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(120)).build().unwrap();

    let (placed, seeded) = seeded(&store, instances).await;
    let n = placed.len();
    let shard_of = |id: InstanceId| id.slot().shard(SHARDS);
    let mut per_shard = [0usize; SHARDS as usize];
    for &(id, _, _) in &placed {
        per_shard[shard_of(id) as usize] += 1;
    }
    eprintln!("instances per shard: {per_shard:?}");

    // a first (it makes the admin token), then b and c: the shards spread
    // one per node, each move a hand-over of the engines concerned.
    let shards = SHARDS.to_string();
    let extra = ["--shards", shards.as_str()];
    let start = Instant::now();
    let mut nodes = vec![node(root, "a", &store, &extra)];
    nodes[0].wait_healthy(&plain, Duration::from_secs(900)).await;
    nodes.push(node(root, "b", &store, &extra));
    nodes.push(node(root, "c", &store, &extra));
    let names = ["a", "b", "c"];
    let deadline = Instant::now() + Duration::from_secs(900);
    let spread = loop {
        let leases = shard_leases(&pg);
        let mut by: Vec<&String> = leases.values().map(|(h, _)| h).collect();
        by.sort();
        by.dedup();
        if leases.len() == SHARDS as usize && by.len() == 3 {
            break leases;
        }
        assert!(Instant::now() < deadline, "the shards never spread: {leases:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let admin = common::admin_client(&root.join("a/data"));
    let mut tokens = Vec::with_capacity(HOSTS);
    for h in 0..HOSTS {
        let body = json!({"name": format!("agent-{}", host_name(h)), "role": "agent", "host": host_name(h)});
        tokens.push(format!("Bearer {}", common::create_token(&admin, &nodes[0].api, body).await));
    }
    // Ready: a beat of each shard taken through every node.
    let probes: Vec<(InstanceId, usize, Role)> =
        (0..SHARDS).map(|s| *placed.iter().find(|p| shard_of(p.0) == s).unwrap()).collect();
    // (Each beat a later `seq`: a repeated one is stale, not taken.)
    let mut seq = 2;
    for node in &nodes {
        for &(id, host, role) in &probes {
            let deadline = Instant::now() + Duration::from_secs(900);
            loop {
                seq += 1;
                if beat_taken(&plain, &node.api, &tokens[host], id, role, seq).await {
                    break;
                }
                assert!(Instant::now() < deadline, "shard {} never ready through {}", shard_of(id), node.api);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let spread_at = start.elapsed().as_secs_f64();
    eprintln!("the shards spread one per node ({spread:?}) and every node ready after {spread_at:.1} s");
    let rss_loaded: Vec<u64> = nodes.iter().map(rss_bytes).collect();

    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    // Where each shard's beats go, as a node tells an agent in its answer
    // (DROVER_BENCH_ROUTE=any: every batch to any node, split there).
    let direct = std::env::var("DROVER_BENCH_ROUTE").map_or(true, |r| r != "any");
    let holders = if direct {
        seq += 1;
        let (probe, host, role) = probes[0];
        let body = json!({"beats": [Beat { instance: probe, seq, facts: facts(role, seq) }]});
        let r = plain
            .post(format!("{}/v1/heartbeats", nodes[1].api))
            .header("authorization", &tokens[host])
            .json(&body)
            .send()
            .await
            .unwrap();
        let told = r.headers().get(drover_agent::holders::HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let told =
            told.unwrap_or_else(|| panic!("no {} in the answer of a split fleet", drover_agent::holders::HEADER));
        let map = drover_agent::holders::Holders::parse(&told).unwrap_or_else(|| panic!("{told:?} is not a map"));
        let map = map.among(&apis);
        assert_eq!(map.render().split(' ').count(), 1 + SHARDS as usize, "every holder one of the nodes: {told}");
        eprintln!("the nodes' map of holders: {told}");
        Some(map)
    } else {
        None
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let mut busy = Duration::ZERO;
    let mut sent = 0u64;
    for round in 0..rounds {
        let bodies = round_bodies(&placed, seq + 1 + round, holders.as_ref());
        let took = send_round(&plain, &nodes, &apis, &tokens, bodies, &accepted).await;
        busy += took;
        sent += n as u64;
        eprintln!("round {round}: {n} beats in {:.2} s ({:.0}/s)", took.as_secs_f64(), n as f64 / took.as_secs_f64());
    }
    seq += rounds + 1;
    let accepted = accepted.load(Ordering::Relaxed);
    assert_eq!(accepted, sent, "every beat accepted by its holder's engine");
    let per_sec = accepted as f64 / busy.as_secs_f64();
    let rss: Vec<u64> = nodes.iter().map(rss_bytes).collect();
    let per_instance = rss.iter().sum::<u64>() as f64 / n as f64;
    eprintln!("{accepted} heartbeats in {:.1} s: {per_sec:.0} per second through three nodes", busy.as_secs_f64());
    eprintln!(
        "resident memory: {:?} MiB loaded, {:?} MiB after the rounds: {per_instance:.0} bytes per instance over the three",
        rss_loaded.iter().map(|r| r >> 20).collect::<Vec<_>>(),
        rss.iter().map(|r| r >> 20).collect::<Vec<_>>()
    );

    // The takeover: kill -9 of c, until a beat of its shard is taken
    // through a survivor (its new holder's engine has it loaded).
    let (victim_shard, _) = spread.iter().find(|(_, (h, _))| h == "c").map(|(s, l)| (*s, l.clone())).unwrap();
    let (probe, host, role) = probes[victim_shard as usize];
    let mut victim = nodes.pop().unwrap();
    victim.kill9();
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        seq += 1;
        if beat_taken(&plain, &nodes[(seq % 2) as usize].api, &tokens[host], probe, role, seq).await {
            break;
        }
        assert!(Instant::now() < deadline, "c's shard {victim_shard} never taken over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let takeover = killed.elapsed().as_secs_f64();
    let leases = shard_leases(&pg);
    let (taker, generation) = leases[&victim_shard].clone();
    assert_ne!(taker, "c", "{leases:?}");
    assert_eq!(generation, spread[&victim_shard].1 + 1, "one takeover of shard {victim_shard}: {leases:?}");
    let third = per_shard[victim_shard as usize];
    eprintln!(
        "takeover of shard {victim_shard} ({third} instances) by {taker}: {takeover:.2} s from kill -9 to its beats taken"
    );
    let taker_node = &nodes[names.iter().position(|n| *n == taker).unwrap()];
    let log = std::fs::read_to_string(&taker_node.log).unwrap_or_default();
    let phases: Vec<&str> =
        log.lines().filter(|l| l.contains("handing its engine over") || l.contains("handed over")).collect();
    for line in &phases[phases.len().saturating_sub(2)..] {
        eprintln!("  {line}");
    }
    println!(
        "{}",
        json!({
            "bench": "cluster-split",
            "nodes": 3,
            "shards": SHARDS,
            "instances": n,
            "hosts": HOSTS,
            "batch": BATCH,
            "in_flight": in_flight(),
            "rounds": rounds,
            "route": if direct { "each holder its shard's beats" } else { "any node, split there" },
            "seed_seconds": seeded,
            "spread_seconds": spread_at,
            "heartbeats": accepted,
            "heartbeats_per_sec": per_sec.round(),
            "rss_bytes": rss,
            "bytes_per_instance": per_instance.round(),
            "takeover_instances": third,
            "takeover_seconds": takeover,
            "lease_ttl_seconds": TTL_SECS.parse::<f64>().unwrap(),
        })
    );
}
