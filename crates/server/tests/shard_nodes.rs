//! Nodes of one control plane on a PostgreSQL store split into shards
//! (issue 16, item 1): each runs one engine over the shards it holds
//! (`held::Keeper`), handed over as shards move between nodes, its commits
//! fenced on what it holds. A real PostgreSQL; the engines' actions go to a
//! provider that never answers (what is tested is who holds what).

#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use drover_engine::{Command, Config, Engine, Input};
use drover_model::{ActionOutcome, ActionRecord, CreateService, EngineKind, HostState, Slot};
use drover_providers::{BoxFuture, Provider, ProviderEvent};
use drover_server::runtime::{self, EngineHandle, EngineMachine};
use drover_server::{actor, held, lease};
use drover_store::{PgStore, Store};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const SHARDS: u16 = 4;
const TTL: Duration = Duration::from_secs(3);

/// Takes every action and never answers.
struct Idle;
impl Provider for Idle {
    fn name(&self) -> &str {
        "sim"
    }
    fn engines(&self) -> &'static [EngineKind] {
        &[EngineKind::Postgres, EngineKind::Redis]
    }
    fn execute(&self, _action: ActionRecord) -> BoxFuture<ActionOutcome> {
        Box::pin(std::future::pending())
    }
    fn start(&self, _sink: mpsc::Sender<ProviderEvent>) {}
}

struct Node {
    name: String,
    store: Arc<PgStore>,
    handle: EngineHandle,
    map: lease::Shards,
    stop: watch::Sender<bool>,
    keeper: JoinHandle<JoinHandle<EngineMachine>>,
}

impl Node {
    async fn start(url: &str, name: &str) -> Node {
        let store = {
            let url = url.to_string();
            Arc::new(tokio::task::spawn_blocking(move || PgStore::connect(&url)).await.unwrap().unwrap())
        };
        let counted = Arc::clone(&store);
        let count = tokio::task::spawn_blocking(move || counted.shard_count(Some(SHARDS))).await.unwrap().unwrap();
        assert_eq!(count, SHARDS);
        let map = lease::Shards::default();
        let address = format!("http://{name}.test:7700");
        let mut keeper = held::Keeper::new(Arc::clone(&store), name.into(), address, TTL, SHARDS, Arc::clone(&map));
        let (filter, share) = keeper.first().await.expect("the first round");
        let snapshot = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.load_shards(&filter)).await.unwrap().unwrap()
        };
        let now = runtime::now();
        let config = Config { share, ..Config::default() };
        let (engine, restored) = Engine::restore(config, 7, snapshot, now);
        let dyn_store: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
        runtime::commit(&dyn_store, restored.changes).await.unwrap();
        let (handle, inbox) = actor::channel::<EngineMachine>(runtime::LIMITS);
        let provider: Arc<dyn Provider> = Arc::new(Idle);
        let dispatcher =
            runtime::Dispatcher::new(HashMap::from([("sim".to_string(), provider.clone())]), provider, handle.clone());
        let machine = EngineMachine::new(engine, dyn_store, dispatcher, None, None);
        let (stop, shutdown) = watch::channel(false);
        let running = tokio::spawn(
            actor::Actor { machine, inbox, shutdown: shutdown.clone(), limits: runtime::LIMITS }.run_to_end(),
        );
        let freezes: held::Freezes = Arc::new(|| Ok(Vec::new()));
        let breakglass = Arc::new(drover_store::breakglass::BreakGlassStore::postgres(Arc::clone(&store)));
        drover_server::fleet_records::spawn(
            handle.clone(),
            Arc::clone(&store),
            breakglass,
            Arc::clone(&map),
            shutdown.clone(),
        );
        let health = (Arc::clone(&store), Arc::clone(&map), name.to_string());
        drover_server::fleet_health::spawn(handle.clone(), health.0, health.1, health.2, shutdown.clone());
        let keeper = tokio::spawn(keeper.keep(handle.clone(), running, freezes, shutdown));
        Node { name: name.into(), store, handle, map, stop, keeper }
    }

    fn held(&self) -> BTreeSet<u16> {
        self.map.read().unwrap().held.clone()
    }

    async fn services(&self) -> BTreeSet<String> {
        self.handle.query(|e: &Engine| e.service_views().into_iter().map(|v| v.name).collect()).await.unwrap()
    }

    /// Stops its rounds and its engine, and lets go of its store (its
    /// lease connection closes, its locks with it): as a node killed.
    async fn kill(self) {
        let _ = self.stop.send(true);
        let running = self.keeper.await.unwrap();
        drop(running.await.unwrap());
        drop(self.handle);
    }
}

fn create(name: &str) -> Input {
    create_of(name, EngineKind::Postgres)
}

fn create_of(name: &str, engine: EngineKind) -> Input {
    Input::Command {
        actor: "test".into(),
        role: None,
        command: Command::CreateService(CreateService {
            name: name.into(),
            engine,
            followers: 0,
            provider: None,
            sync: None,
            team: None,
            zones: None,
            max_failover_lag_bytes: None,
            credential_rotation_days: None,
            labels: None,
            brokers: None,
        }),
    }
}

fn shard_of(name: &str) -> u16 {
    Slot::of_name(name).shard(SHARDS)
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_runs_one_engine_over_the_shards_it_holds_and_hands_it_over_as_they_move() {
    let pg = tokio::task::spawn_blocking(pg::PgServer::start).await.unwrap();
    let url = pg.url("postgres");

    // Alone, a holds every shard and creates the whole fleet.
    let a = Node::start(&url, "a").await;
    assert_eq!(a.held(), (0..SHARDS).collect(), "alone, a node holds every shard");
    for image in drover_server::default_images(runtime::now()) {
        let command = Command::RegisterImage(image);
        a.handle.call(Input::Command { actor: "system".into(), role: None, command }).await.unwrap();
    }
    let fleet: BTreeSet<String> = (0..16).map(|i| format!("svc-{i}")).collect();
    for name in &fleet {
        a.handle.call(create(name)).await.expect("created on a");
    }
    assert_eq!(a.services().await, fleet);

    // b joins: a hands two shards over, b takes them, and each engine
    // then has exactly its shards' services.
    let b = Node::start(&url, "b").await;
    until("two shards each", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let (a_held, b_held) = (a.held(), b.held());
    assert!(a_held.is_disjoint(&b_held));
    let on = |held: &BTreeSet<u16>| -> BTreeSet<String> {
        fleet.iter().filter(|n| held.contains(&shard_of(n))).cloned().collect()
    };
    assert_eq!(a.services().await, on(&a_held), "a's engine was handed over to a's shards");
    assert_eq!(b.services().await, on(&b_held), "b's engine loaded b's shards, all that a committed on them");
    // a's next round sees b holding them: where a routes them.
    until("a routes b's shards to b", Duration::from_secs(5), || {
        let map = a.map.read().unwrap();
        b_held.iter().all(|s| map.holders.get(s).is_some_and(|h| h.url == "http://b.test:7700" && h.node == "b"))
    })
    .await;

    // The singletons' writes are fenced to shard 0's holder; the other
    // node's engine commits on its own shards all the same.
    let (zero, other) = if a_held.contains(&0) { (&a, &b) } else { (&b, &a) };
    let generation = zero.store.holder().expect("fenced").1;
    assert!(generation > 0, "shard 0's holder is fenced with its generation");
    assert_eq!(other.store.holder(), Some((other.name.clone(), 0)), "no lease has generation 0");
    let other_held = other.held();
    let name = (0..).map(|i| format!("own-{i}")).find(|n| other_held.contains(&shard_of(n))).unwrap();
    other.handle.call(create(&name)).await.expect("a node without shard 0 commits on its own shards");
    let mut fleet = fleet;
    fleet.insert(name);

    // b acts on its shards; a's commits on them are refused by the fence.
    let b_name = (0..).map(|i| format!("late-{i}")).find(|n| b_held.contains(&shard_of(n))).unwrap();
    b.handle.call(create(&b_name)).await.expect("b creates in its own shard");
    let a_name = (0..).map(|i| format!("stray-{i}")).find(|n| b_held.contains(&shard_of(n))).unwrap();
    let refused = a.handle.call(create(&a_name)).await.expect_err("a cannot write b's shard");
    assert!(format!("{refused:?}").contains("persist"), "{refused:?}");

    // b is killed: its locks go with its connection and a takes its
    // shards at once, its engine handed over to the whole fleet as the
    // store has it (b's service in, a's refused one not).
    let b_name_kept = b_name.clone();
    let b_node = b.name.clone();
    b.kill().await;
    let killed = Instant::now();
    until(&format!("a takes {b_node}'s shards"), Duration::from_secs(10), || a.held().len() == SHARDS as usize).await;
    eprintln!("a killed node's shards taken in {:?}", killed.elapsed());
    let mut whole = fleet.clone();
    whole.insert(b_name_kept);
    // The map is published once new requests wait for the new engine.
    assert_eq!(a.services().await, whole);
    let _ = a.stop.send(true);
    drop(a.keeper.await.unwrap().await.unwrap());
}

/// A node that keeps all it held and takes a dead node's shards merges
/// them into its running engine (`Engine::absorb`) instead of loading its
/// own again: the engine then runs the whole fleet as the store has it,
/// says what it took in the event log, and commits on the shards it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taking_a_dead_node_s_shards_merges_them_into_its_running_engine() {
    let pg = tokio::task::spawn_blocking(pg::PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let a = Node::start(&url, "a").await;
    for image in drover_server::default_images(runtime::now()) {
        let command = Command::RegisterImage(image);
        a.handle.call(Input::Command { actor: "system".into(), role: None, command }).await.unwrap();
    }
    let mut fleet: BTreeSet<String> = (0..12).map(|i| format!("svc-{i}")).collect();
    for name in &fleet {
        a.handle.call(create(name)).await.expect("created on a");
    }
    let b = Node::start(&url, "b").await;
    until("two shards each", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let (a_held, b_held) = (a.held(), b.held());
    // Each creates in its own shards only: no commit of either is refused.
    let b_name = (0..).map(|i| format!("late-{i}")).find(|n| b_held.contains(&shard_of(n))).unwrap();
    b.handle.call(create(&b_name)).await.expect("b creates in its own shard");
    fleet.insert(b_name);
    let a_name = (0..).map(|i| format!("own-{i}")).find(|n| a_held.contains(&shard_of(n))).unwrap();
    a.handle.call(create(&a_name)).await.expect("a creates in its own shard");
    fleet.insert(a_name);

    b.kill().await;
    until("a takes b's shards", Duration::from_secs(10), || a.held().len() == SHARDS as usize).await;
    assert_eq!(a.services().await, fleet, "a's engine runs the whole fleet, each service once");
    let share = a.handle.query(|e: &Engine| e.config().share).await.unwrap();
    assert_eq!(share, drover_engine::Share::new(SHARDS, SHARDS), "a's engine's share is the whole fleet");
    let events = {
        let store = Arc::clone(&a.store);
        tokio::task::spawn_blocking(move || {
            store.events(&drover_store::EventFilter { limit: Some(1000), ..Default::default() })
        })
        .await
        .unwrap()
        .unwrap()
    };
    let merged: Vec<&drover_model::Event> =
        events.iter().filter(|e| e.cause.starts_with("control plane took over")).collect();
    assert_eq!(merged.len(), 1, "the shards were merged into the running engine once: {merged:#?}");
    assert!(merged[0].cause.contains(&format!("took over {SHARDS}/{SHARDS} of the fleet")), "{merged:#?}");
    let reloaded: Vec<&drover_model::Event> =
        events.iter().filter(|e| e.cause.starts_with("control plane started") && e.seq > merged[0].seq).collect();
    assert!(reloaded.is_empty(), "no engine was loaded again after the merge: {reloaded:#?}");
    // a commits on a shard it took.
    let taken = (0..).map(|i| format!("after-{i}")).find(|n| b_held.contains(&shard_of(n))).unwrap();
    a.handle.call(create(&taken)).await.expect("a creates in a shard it took over");
    let _ = a.stop.send(true);
    drop(a.keeper.await.unwrap().await.unwrap());
}

/// Images and hosts are registered through shard 0's holder; the other
/// node's engine learns them from the store (`fleet_records`) and creates
/// its own shards' services on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_hosts_registered_through_shard_zero_s_holder_are_learned_by_every_node() {
    let pg = tokio::task::spawn_blocking(pg::PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let a = Node::start(&url, "a").await;
    for image in drover_server::default_images(runtime::now()) {
        let command = Command::RegisterImage(image);
        a.handle.call(Input::Command { actor: "system".into(), role: None, command }).await.unwrap();
    }
    let b = Node::start(&url, "b").await;
    until("two shards each", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let (zero, other) = if a.held().contains(&0) { (&a, &b) } else { (&b, &a) };

    let newer = drover_model::Image::new(
        EngineKind::Postgres,
        "15-newer",
        Default::default(),
        [("postgresql-15".to_string(), "15.99".to_string())].into(),
        runtime::now(),
    );
    let host = drover_model::RegisterHost {
        name: "h9".into(),
        zone: "zone-a".into(),
        address: "127.0.0.9".into(),
        capacity: 8,
    };
    for command in [Command::RegisterImage(newer.clone()), Command::RegisterHost { host, builtin: false }] {
        zero.handle.call(Input::Command { actor: "test".into(), role: None, command }).await.expect("registered");
    }
    let learned = Instant::now();
    loop {
        let id = newer.id.clone();
        let knows = other
            .handle
            .query(move |e: &Engine| e.images().iter().any(|i| i.id == id) && e.host_record("h9").is_some())
            .await
            .unwrap();
        if knows {
            break;
        }
        assert!(learned.elapsed() < Duration::from_secs(5), "{} never learned the image and the host", other.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("learned in {:?}", learned.elapsed());
    let held = other.held();
    let name = (0..).map(|i| format!("new-{i}")).find(|n| held.contains(&shard_of(n))).unwrap();
    let created = other.handle.call(create(&name)).await.expect("created in its own shard");
    let drover_engine::Reply::Service(view) = created else { panic!("{created:?}") };
    assert_eq!(view.image, newer.id.0, "created on the image registered through the other node");
    assert!(
        view.instances.iter().all(|i| i.host.as_deref() == Some("h9")),
        "placed on the host registered through the other node: {view:#?}"
    );

    // A cordon, then a drain, ordered through shard 0's holder: the other
    // node's engine takes them on (its own services' moves are
    // `split_fleet`'s, in the engine's tests).
    for (command, state) in [
        (Command::CordonHost { name: "h9".into() }, HostState::Cordoned),
        (Command::DrainHost { name: "h9".into() }, HostState::Draining),
    ] {
        zero.handle.call(Input::Command { actor: "test".into(), role: None, command }).await.expect("ordered");
        let ordered = Instant::now();
        loop {
            let now = other.handle.query(|e: &Engine| e.host_record("h9").map(|r| r.state)).await.unwrap();
            if now == Some(state) {
                break;
            }
            assert!(ordered.elapsed() < Duration::from_secs(5), "{} never learned h9 {state}: {now:?}", other.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for node in [a, b] {
        node.kill().await;
    }
}

/// A freeze of automation made through shard 0's holder (a runbook's
/// step: the engine, then the shared store) is learned by every other
/// node's engine, and so is its release; the status site's components on
/// shard 0's holder are the whole fleet's, every node's shards summed
/// (`fleet_health`): an engine kind only the other node's shards run is
/// there, and once the other node is killed and its shards taken, nothing
/// is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezes_and_the_status_site_s_health_reach_across_the_nodes_of_a_split_fleet() {
    let pg = tokio::task::spawn_blocking(pg::PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let a = Node::start(&url, "a").await;
    for image in drover_server::default_images(runtime::now()) {
        let command = Command::RegisterImage(image);
        a.handle.call(Input::Command { actor: "system".into(), role: None, command }).await.unwrap();
    }
    let b = Node::start(&url, "b").await;
    until("two shards each", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let (zero, other) = if a.held().contains(&0) { (a, b) } else { (b, a) };

    // The freeze, as a runbook's step makes it on shard 0's holder.
    let breakglass = drover_store::breakglass::BreakGlassStore::postgres(Arc::clone(&zero.store));
    let breakglass = Arc::new(breakglass);
    for (freeze, scope) in [(true, "zone-b"), (false, "zone-b")] {
        let command = if freeze {
            Command::FreezeAutomation { scope: scope.into() }
        } else {
            Command::ReleaseAutomation { scope: scope.into() }
        };
        zero.handle.call(Input::Command { actor: "test".into(), role: None, command }).await.expect("applied");
        let store = Arc::clone(&breakglass);
        tokio::task::spawn_blocking(move || store.set_freeze(scope, freeze, runtime::now(), "run-1"))
            .await
            .unwrap()
            .unwrap();
        let asked = Instant::now();
        loop {
            let scopes = other.handle.query(|e: &Engine| e.frozen_scopes()).await.unwrap();
            if scopes.contains(&scope.to_string()) == freeze {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{} never learned freeze={freeze}: {scopes:?}",
                other.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let on_zero = zero.handle.query(|e: &Engine| e.frozen_scopes()).await.unwrap();
        assert_eq!(on_zero.contains(&scope.to_string()), freeze, "shard 0's holder's own engine: {on_zero:?}");
    }

    // A Redis service in a shard only the other node holds.
    let held = other.held();
    let cache = (0..).map(|i| format!("cache-{i}")).find(|n| held.contains(&shard_of(n))).unwrap();
    other.handle.call(create_of(&cache, EngineKind::Redis)).await.expect("created in its own shard");
    let zero_held = zero.held();
    let db = (0..).map(|i| format!("db-{i}")).find(|n| zero_held.contains(&shard_of(n))).unwrap();
    zero.handle.call(create(&db)).await.expect("created in its own shard");
    let kinds = |health: &[drover_engine::EngineHealth]| -> BTreeSet<String> {
        health.iter().map(|h| h.engine.to_string()).collect()
    };
    let own = zero.handle.query(|e: &Engine| e.engine_health()).await.unwrap();
    assert_eq!(kinds(&own), ["postgres".to_string()].into(), "shard 0's holder's own engine runs no Redis");
    let summed = Instant::now();
    loop {
        let map = zero.map.read().unwrap().clone();
        let (health, missing) = drover_server::fleet_health::whole(&zero.handle, &zero.store, &map).await.unwrap();
        if kinds(&health.engines) == ["postgres".to_string(), "redis".to_string()].into() {
            assert!(missing.is_empty(), "every shard has a recent word: {missing:?}");
            break;
        }
        assert!(
            summed.elapsed() < drover_server::fleet_health::PUBLISH_EVERY * 3,
            "the other node's shards never reached the sum: {health:?} (missing {missing:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.kill().await;
    until("the survivor holds every shard", Duration::from_secs(10), || zero.held().len() == SHARDS as usize).await;
    let map = zero.map.read().unwrap().clone();
    let (health, missing) = drover_server::fleet_health::whole(&zero.handle, &zero.store, &map).await.unwrap();
    assert_eq!(kinds(&health.engines), ["postgres".to_string(), "redis".to_string()].into(), "{health:?}");
    assert_eq!(health.services_by_state.values().sum::<u64>(), 2, "both services, once: {health:?}");
    assert!(health.open_actions >= 2, "their creations' actions: {health:?}");
    assert!(missing.is_empty(), "{missing:?}");
    zero.kill().await;
}

/// A relay between a node and PostgreSQL that can hold every byte both
/// ways: its connections and their locks stay open and nothing gets
/// through, as for a node cut off by the network or whose every thread is
/// stopped (SIGSTOP: `three_nodes` sends a real one to a real process).
struct Relay {
    url: String,
    held: watch::Sender<bool>,
}

/// Bytes from one end to the other, waiting while `holding`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut holding: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if holding.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn to(pg: &pg::PgServer) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = pg
            .url("postgres")
            .replace(&format!(":{}/", pg.port), &format!(":{}/", listener.local_addr().unwrap().port()));
        let (held, holding) = watch::channel(false);
        let port = pg.port;
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { continue };
                let ((cr, cw), (sr, sw)) = (client.into_split(), server.into_split());
                tokio::spawn(pipe(cr, sw, holding.clone()));
                tokio::spawn(pipe(sr, cw, holding.clone()));
            }
        });
        Relay { url, held }
    }
}

/// A node cut off from the database past its leases (its rounds hang, its
/// connections and locks stay open) is fenced by its own watchdog before
/// they can expire and has its shards taken over once they do; back, it
/// does not act on them (a command it was asked meanwhile is refused and
/// the store never has it), and it rejoins: its share is handed back to it
/// and its engine loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_past_its_leases_acts_on_nothing_it_lost_and_rejoins() {
    let pg = tokio::task::spawn_blocking(pg::PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let a = Node::start(&url, "a").await;
    for image in drover_server::default_images(runtime::now()) {
        let command = Command::RegisterImage(image);
        a.handle.call(Input::Command { actor: "system".into(), role: None, command }).await.unwrap();
    }
    let fleet: BTreeSet<String> = (0..16).map(|i| format!("svc-{i}")).collect();
    for name in &fleet {
        a.handle.call(create(name)).await.expect("created on a");
    }
    let relay = Relay::to(&pg).await;
    let b = Node::start(&relay.url, "b").await;
    until("two shards each", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let b_held = b.held();
    // b's engine has taken them (answered after the hand-over's commit).
    let expected: BTreeSet<String> = fleet.iter().filter(|n| b_held.contains(&shard_of(n))).cloned().collect();
    assert_eq!(b.services().await, expected);

    // Cut off for longer than a lease.
    let cut = TTL + Duration::from_secs(4);
    relay.held.send_replace(true);
    let paused = Instant::now();
    let stray = (0..).map(|i| format!("paused-{i}")).find(|n| b_held.contains(&shard_of(n))).unwrap();
    let queued = {
        let (handle, stray) = (b.handle.clone(), stray.clone());
        tokio::spawn(async move { handle.call(create(&stray)).await })
    };
    // Its watchdog fences it 4/5 of a TTL after its last renewal was sent
    // (the bound here is generous for a loaded machine); no lease of it can
    // have expired by then, so a holds what it held.
    until("b fences itself", TTL * 2, || b.held().is_empty()).await;
    assert!(a.held().len() == 2, "b fenced itself before its leases could expire: a holds {:?}", a.held());
    until("a takes the cut-off node's shards", cut, || a.held().len() == SHARDS as usize).await;
    assert!(paused.elapsed() >= TTL - TTL / 5, "taken before b's leases could expire: {:?}", paused.elapsed());
    tokio::time::sleep(cut.saturating_sub(paused.elapsed())).await;
    relay.held.send_replace(false);

    // Back: what it was asked while cut off is refused, not written.
    let answer = tokio::time::timeout(Duration::from_secs(15), queued).await.expect("answered").unwrap();
    let refused = format!("{:?}", answer.expect_err("a paused node acted on a shard it lost"));
    assert!(refused.contains("does not hold shard"), "refused by the fence: {refused}");
    let check = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || PgStore::connect(&url).unwrap().load().unwrap()).await.unwrap()
    };
    assert!(!check.services.iter().any(|s| s.name == stray), "the store has what the paused node was asked");

    // And it rejoins with its share, its engine over it.
    until("b rejoins with two shards", Duration::from_secs(20), || a.held().len() == 2 && b.held().len() == 2).await;
    let b_now = b.held();
    let expected: BTreeSet<String> = fleet.iter().filter(|n| b_now.contains(&shard_of(n))).cloned().collect();
    assert_eq!(b.services().await, expected);
    b.kill().await;
    let _ = a.stop.send(true);
    drop(a.keeper.await.unwrap().await.unwrap());
}
