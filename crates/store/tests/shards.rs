//! Several shards on one PostgreSQL store (issue 16): nodes share them out
//! evenly, a killed node's shards are taken at once through its free
//! locks, a paused one's once its leases expire (and it finds them lost
//! when it resumes), and a node that joins gets its share handed over a
//! few at a time; no shard is ever held by two nodes, and every shard's
//! generation only rises.

mod common;
use common::pg::PgServer;
use drover_store::{PgStore, ShardRound};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SHARDS: u32 = 12;
const MOVING: u32 = 2;
const TTL: Duration = Duration::from_secs(3);

struct Node {
    name: String,
    store: PgStore,
    held: Vec<(u32, i64)>,
}

impl Node {
    fn start(url: &str, name: &str) -> Node {
        Node { name: name.into(), store: PgStore::connect(url).unwrap(), held: Vec::new() }
    }

    fn round(&mut self) -> ShardRound {
        let address = format!("http://{}.test:7700", self.name);
        let r = self.store.shard_round(&self.name, &address, 1, TTL, SHARDS, MOVING, &self.held).unwrap();
        assert!(r.to_release.len() <= MOVING as usize, "{}: {r:?}", self.name);
        let mut held = r.held();
        if !r.to_release.is_empty() {
            held.retain(|h| !r.to_release.contains(h));
            self.store.release_shards(&self.name, &r.to_release).unwrap();
        }
        self.held = held;
        r
    }
}

/// What the nodes have held so far: (shard, generation) -> node, and the
/// newest generation per shard.
#[derive(Default)]
struct Ledger {
    issued: HashMap<(u32, i64), String>,
}

impl Ledger {
    fn check(&mut self, nodes: &[&Node]) {
        let mut holder: HashMap<u32, &str> = HashMap::new();
        for n in nodes {
            for &(s, g) in &n.held {
                if let Some(other) = holder.insert(s, &n.name) {
                    panic!("shard {s} held by {other} and {}", n.name);
                }
                let owner = self.issued.entry((s, g)).or_insert_with(|| n.name.clone());
                assert_eq!(owner, &n.name, "shard {s} generation {g} issued to {owner} and {}", n.name);
            }
        }
    }
}

/// Rounds every 100 ms until the nodes hold `want` shards each; returns
/// how long it took.
fn settle(nodes: &mut [&mut Node], want: &[usize], ledger: &mut Ledger, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        for n in nodes.iter_mut() {
            n.round();
        }
        let view: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
        ledger.check(&view);
        let counts: Vec<usize> = nodes.iter().map(|n| n.held.len()).collect();
        if counts == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not {want:?} within {within:?}: {counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn newest(ledger: &Ledger, shard: u32) -> i64 {
    ledger.issued.keys().filter(|(s, _)| *s == shard).map(|(_, g)| *g).max().unwrap_or(0)
}

#[test]
fn nodes_share_the_shards_take_a_dead_ones_at_once_and_hand_over_to_a_new_one() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let mut ledger = Ledger::default();
    let (mut a, mut b, mut c) = (Node::start(&url, "a"), Node::start(&url, "b"), Node::start(&url, "c"));

    // Three nodes: four shards each.
    settle(&mut [&mut a, &mut b, &mut c], &[4, 4, 4], &mut ledger, Duration::from_secs(20));

    // c is killed: its connections close, its locks with them; a and b
    // take its shards long before its leases (3 s) expire.
    let c_shards: Vec<(u32, i64)> = c.held.clone();
    drop(c);
    let took = settle(&mut [&mut a, &mut b], &[6, 6], &mut ledger, Duration::from_secs(20));
    eprintln!("a killed node's four shards taken over in {took:?}");
    assert!(took < TTL / 2, "a killed node's shards taken in {took:?}, not before its leases expired");
    for (s, g) in &c_shards {
        assert!(newest(&ledger, *s) > *g, "shard {s} was taken with a higher generation than {g}");
    }

    // b pauses past its leases: a holds everything once they expired
    // (b still connected, but not seen: not live); b resumes, finds every
    // lease lost, and gets its share back.
    let b_before = b.held.clone();
    let paused = Instant::now();
    settle(&mut [&mut a], &[12], &mut ledger, Duration::from_secs(20));
    assert!(paused.elapsed() >= TTL - Duration::from_millis(500), "taken before b's leases expired");
    let r = b.round();
    let mut lost = r.lost.clone();
    lost.sort();
    assert_eq!(lost, b_before, "a paused node's leases are all lost when it resumes");
    settle(&mut [&mut a, &mut b], &[6, 6], &mut ledger, Duration::from_secs(20));

    // a's lease connection is ended (an administrator, a database
    // restart): its locks go with it; its next round takes them again on
    // a new connection and keeps its shards.
    let ended = pg.psql(
        common::DB,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'drover-lease:a'",
    );
    assert_eq!(ended.trim(), "1", "a's lease connection");
    let a_before = a.held.clone();
    let start = Instant::now();
    while !a.store.lease_session_lost() {
        assert!(start.elapsed() < Duration::from_secs(5), "a never noticed its lease connection ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = a.round();
    assert!(r.lost.is_empty(), "{r:?}");
    assert_eq!(a.held, a_before);
    let locks = pg.psql(
        common::DB,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid WHERE l.locktype = 'advisory' \
         AND l.objsubid = 2 AND l.granted AND s.application_name = 'drover-lease:a'",
    );
    assert_eq!(locks.trim(), "6", "a's six locks, taken again");
    let rb = b.round();
    assert!(rb.taken.is_empty(), "b took shards of a live a: {rb:?}");
    settle(&mut [&mut a, &mut b], &[6, 6], &mut ledger, Duration::from_secs(5));

    // d joins: shares of four, at most two shards moving at once.
    let mut d = Node::start(&url, "d");
    settle(&mut [&mut a, &mut b, &mut d], &[4, 4, 4], &mut ledger, Duration::from_secs(30));
    let last = a.round();
    assert_eq!(last.live, vec!["a".to_string(), "b".to_string(), "d".to_string()], "{last:?}");
    // The round names the other nodes' shards, where a forwards them.
    let mut others: Vec<(u32, String, String)> = [&b, &d]
        .iter()
        .flat_map(|n| n.held.iter().map(|&(s, _)| (s, n.name.clone(), format!("http://{}.test:7700", n.name))))
        .collect();
    others.sort();
    let mut holders = last.holders.clone();
    holders.sort();
    assert_eq!(holders, others, "{last:?}");
    // The cluster view (GET /v1/cluster) reads every shard's lease: the
    // holders and generations the nodes hold.
    let cluster = a.store.cluster().unwrap();
    assert_eq!(cluster.leases.len(), SHARDS as usize, "{cluster:?}");
    for n in [&a, &b, &d] {
        for &(s, g) in &n.held {
            let (_, lease) = cluster.leases.iter().find(|(shard, _)| *shard == s as i64).expect("a lease row");
            assert_eq!((lease.holder.as_str(), lease.generation), (n.name.as_str(), g), "shard {s}");
            assert!(lease.expires_in_micros > 0, "shard {s}: {lease:?}");
        }
    }
}

#[test]
fn a_bad_number_of_shards_is_refused() {
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url(common::DB)).unwrap();
    for shards in [0, drover_store::MAX_SHARDS + 1] {
        let err = store.shard_round("a", "http://a.test:7700", 1, TTL, shards, 1, &[]).unwrap_err();
        assert!(err.to_string().contains("shards must be"), "{err}");
    }
}

/// A node that takes some shards loads their services, instances, actions
/// and archives only (issue 16: a takeover loads a third of the fleet, not
/// all of it): the loads of every shard, one by one, are disjoint and
/// together the whole load; a service whose id predates slots is loaded
/// with its instances and actions by its own id's slot.
#[test]
fn a_node_loads_only_the_shards_it_takes() {
    use common::fleet;
    use drover_model::{ActionState, Changes, InstanceId, Role, ServiceId, Slot};
    use drover_store::{ShardFilter, Store};
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url(common::DB)).unwrap();
    let mut changes = Changes::default();
    for n in 0..600u64 {
        let mut svc = fleet::service(n);
        if n % 100 == 7 {
            // Minted before slots: random bits where the slot goes, and
            // instances whose own bits disagree with their service's.
            svc.id = ServiceId::new_at(fleet::T0 + n as i64, 0x9e37_79b9_7f4a_7c15 ^ n);
        }
        let primary = fleet::instance(2 * n, &svc, Role::Primary);
        let mut follower = fleet::instance(2 * n + 1, &svc, Role::Follower);
        if n % 100 == 7 {
            follower.id = InstanceId::new_at(fleet::T0, 0x1234_5678 ^ n);
        }
        changes.actions.push(fleet::action(n, &primary, ActionState::Running));
        changes.instances.push(primary);
        changes.instances.push(follower);
        changes.services.push(svc);
    }
    store.commit(changes).unwrap();
    let all = store.load().unwrap();
    assert_eq!((all.services.len(), all.instances.len(), all.actions.len()), (600, 1200, 600));

    const COUNT: u16 = 12;
    let mut seen = std::collections::HashSet::new();
    let mut loaded = 0;
    for shard in 0..COUNT {
        let part = store.load_shards(&ShardFilter { shards: COUNT, held: vec![shard] }).unwrap();
        assert!(!part.services.is_empty(), "600 services leave no shard of 12 empty");
        for s in &part.services {
            assert_eq!(s.id.slot().shard(COUNT), shard, "{}", s.name);
            assert!(seen.insert(s.id), "{} loaded by two shards", s.name);
        }
        let ids: std::collections::HashSet<ServiceId> = part.services.iter().map(|s| s.id).collect();
        assert_eq!(part.instances.len(), 2 * part.services.len(), "shard {shard}: every instance of its services");
        assert!(part.instances.iter().all(|i| ids.contains(&i.service)));
        assert_eq!(part.actions.len(), part.services.len());
        assert!(part.actions.iter().all(|a| ids.contains(&a.service)));
        // In creation order, as the whole load gives them.
        assert!(part.instances.windows(2).all(|w| (w[0].created_at, w[0].id) <= (w[1].created_at, w[1].id)));
        loaded += part.services.len();
    }
    assert_eq!(loaded, 600);

    // Several shards at once: a third of the fleet.
    let third = store.load_shards(&ShardFilter { shards: COUNT, held: vec![0, 3, 6, 9] }).unwrap();
    let want = all.services.iter().filter(|s| s.id.slot().shard(COUNT) % 3 == 0).count();
    assert_eq!(third.services.len(), want);
    assert!((150..250).contains(&want), "about a third: {want}");
    // Names route as ids do.
    let minted_with_slots = |name: &str| name.trim_start_matches("svc-").parse::<u64>().unwrap() % 100 != 7;
    assert!(third
        .services
        .iter()
        .filter(|s| minted_with_slots(&s.name))
        .all(|s| Slot::of_name(&s.name) == s.id.slot()));
}

/// The shard count is fixed by the first node: another count is refused
/// with the stored one named, a node that names none reads it.
#[test]
fn the_shard_count_is_fixed_by_the_first_node() {
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url(common::DB)).unwrap();
    assert_eq!(store.shard_count(None).unwrap(), 1, "a store nobody set has one shard");
    assert_eq!(store.shard_count(Some(12)).unwrap(), 12);
    assert_eq!(store.shard_count(Some(12)).unwrap(), 12);
    assert_eq!(store.shard_count(None).unwrap(), 12);
    let err = store.shard_count(Some(16)).unwrap_err().to_string();
    assert!(err.contains("has 12 shards") && err.contains("--shards 12"), "{err}");
    for bad in [0, 4096] {
        let err = store.shard_count(Some(bad)).unwrap_err().to_string();
        assert!(err.contains("between 1 and 2048"), "{err}");
    }
    assert_eq!(store.shard_count(None).unwrap(), 12, "a refused count changed nothing");

    // A fleet with a service from before slots stays one shard.
    let pg2 = PgServer::start();
    let store = PgStore::connect(&pg2.url(common::DB)).unwrap();
    let mut old = common::fleet::service(3);
    old.id = drover_model::ServiceId::new_at(common::fleet::T0, 0x5eed);
    assert_ne!(old.id.slot(), drover_model::Slot::of_name(&old.name), "the test's premise");
    use drover_store::Store;
    let changes = drover_model::Changes { services: vec![common::fleet::service(1), old], ..Default::default() };
    store.commit(changes).unwrap();
    let err = store.shard_count(Some(3)).unwrap_err().to_string();
    assert!(err.contains("\"svc-3\"") && err.contains("before slots"), "{err}");
    assert_eq!(store.shard_count(None).unwrap(), 1, "nothing was stored");
    assert_eq!(store.shard_count(Some(1)).unwrap(), 1, "one shard is always possible");
}

/// A node fenced on its shards writes the services of those shards only:
/// a batch of a shard another node holds, or one this node held and lost
/// (its lease now someone else's), is refused and writes nothing, while
/// its other shards' batches and the fleet's records go on being written.
#[test]
fn a_node_writes_only_the_shards_it_holds() {
    use common::fleet;
    use drover_model::{Changes, Role, Slot};
    use drover_store::{ShardFence, Store, StoreError};
    const COUNT: u32 = 4;
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let (a, b) = (PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap());
    let mut held_a: Vec<(u32, i64)> = Vec::new();
    let mut held_b: Vec<(u32, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held_a.len() != 2 || held_b.len() != 2 {
        assert!(Instant::now() < deadline, "a {held_a:?}, b {held_b:?}");
        for (store, name, held) in [(&a, "a", &mut held_a), (&b, "b", &mut held_b)] {
            let r = store.shard_round(name, "http://x.test", 1, TTL, COUNT, 1, held).unwrap();
            let mut now = r.held();
            if !r.to_release.is_empty() {
                now.retain(|h| !r.to_release.contains(h));
                store.release_shards(name, &r.to_release).unwrap();
            }
            *held = now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    a.fence_shards(ShardFence { node: "a".into(), shards: COUNT as u16, held: held_a.iter().copied().collect() });

    // One service per shard, its name chosen so.
    let named_in = |shard: u32| {
        (0u64..).map(fleet::service).find(|s| u32::from(Slot::of_name(&s.name).shard(COUNT as u16)) == shard).unwrap()
    };
    let commit = |store: &PgStore, shard: u32| {
        let svc = named_in(shard);
        let changes = Changes {
            instances: vec![fleet::instance(1, &svc, Role::Primary)],
            services: vec![svc],
            ..Default::default()
        };
        store.commit(changes)
    };
    let written = |shard: u32| {
        let svc = named_in(shard);
        b.load().unwrap().services.iter().any(|s| s.id == svc.id)
    };
    let (mine, theirs) = (held_a[0].0, held_b[0].0);
    commit(&a, mine).expect("a writes a service of its own shard");
    assert!(written(mine));
    match commit(&a, theirs) {
        Err(StoreError::ShardNotHeld { node, shard }) => assert_eq!((node.as_str(), shard), ("a", theirs)),
        other => panic!("a wrote into b's shard {theirs}: {other:?}"),
    }
    assert!(!written(theirs), "nothing of the refused batch was written");
    // The fleet's records need no shard.
    let image = drover_model::Image::new(
        drover_model::EngineKind::Postgres,
        "15.8",
        Default::default(),
        [("postgresql-15".to_string(), "15.8".to_string())].into(),
        drover_model::Timestamp(fleet::T0),
    );
    let image = Changes { images: vec![image], ..Default::default() };
    a.commit(image).expect("a writes the fleet's records");

    // a hands its other shard over and b takes it: a's fence still names
    // it, with the generation b's take raised past.
    let (lost, old_generation) = held_a[1];
    a.release_shards("a", &[(lost, old_generation)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held_b.iter().any(|(s, _)| *s == lost) {
        assert!(Instant::now() < deadline, "b never took shard {lost}: {held_b:?}");
        let r = b.shard_round("b", "http://x.test", 1, TTL, COUNT, 4, &held_b).unwrap();
        held_b = r.held();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(held_b.iter().any(|&(s, g)| s == lost && g > old_generation));
    match commit(&a, lost) {
        Err(StoreError::ShardNotHeld { shard, .. }) => assert_eq!(shard, lost),
        other => panic!("a wrote into the shard it lost: {other:?}"),
    }
    assert!(!written(lost));
    commit(&a, mine).expect("a still writes the shard it holds");
    // b, which holds it now and is not fenced, writes it.
    commit(&b, lost).expect("b writes its new shard");
    assert!(written(lost));
}

/// A host's operator state (cordoned, draining) only moves forward in the
/// store: a write from an engine that has not learned it yet (its own
/// judgement of the host's silence, or an older view) is dropped, and
/// `fleet_record_counts` changes with every step, so every node's poll
/// learns it (`drover_server::fleet_records`).
#[test]
fn an_operator_s_cordon_or_drain_is_never_taken_back_by_a_node_that_has_not_learned_it() {
    use drover_model::{Changes, HostRecord, HostState, Timestamp};
    use drover_store::{FleetRecordCounts, Store};
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url(common::DB)).unwrap();
    let host = |state: HostState, capacity: u32| HostRecord {
        name: "h1".into(),
        zone: "zone-a".into(),
        address: "127.0.0.2".into(),
        capacity,
        state,
        registered_at: Timestamp(1),
        last_seen: None,
        builtin: false,
    };
    let write = |state: HostState, capacity: u32| {
        store.commit(Changes { hosts: vec![host(state, capacity)], ..Default::default() }).unwrap();
    };
    let stored = || {
        let hosts = store.load().unwrap().hosts;
        assert_eq!(hosts.len(), 1);
        (hosts[0].state, hosts[0].capacity)
    };
    let counts = |cordoned, draining| FleetRecordCounts { images: 0, hosts: 1, cordoned, draining };

    write(HostState::Ready, 4);
    assert_eq!(store.fleet_record_counts().unwrap(), counts(0, 0));
    write(HostState::Uncertain, 5);
    assert_eq!(stored(), (HostState::Uncertain, 5), "a host's own states are written as they come");
    write(HostState::Cordoned, 6);
    assert_eq!(store.fleet_record_counts().unwrap(), counts(1, 0));
    for stale in [HostState::Ready, HostState::Uncertain, HostState::Down] {
        write(stale, 7);
        assert_eq!(stored(), (HostState::Cordoned, 6), "{stale} took a cordon back");
    }
    write(HostState::Draining, 8);
    assert_eq!(store.fleet_record_counts().unwrap(), counts(0, 1));
    for stale in [HostState::Ready, HostState::Cordoned, HostState::Uncertain] {
        write(stale, 9);
        assert_eq!(stored(), (HostState::Draining, 8), "{stale} took a drain back");
    }
    write(HostState::Draining, 10);
    assert_eq!(stored(), (HostState::Draining, 10), "the holder of a drain still writes its host");
}

/// Each node writes its shards' health for the status site
/// (`drover_server::fleet_health`): a node that lost a shard (an older
/// generation) does not write over its new holder's row, and only rows
/// written within the freshness asked for are read.
#[test]
fn a_shard_s_health_is_written_by_its_newest_holder_only() {
    let pg = PgServer::start();
    let store = PgStore::connect(&pg.url(common::DB)).unwrap();
    assert_eq!(store.put_shard_health("a", &[(0, 2, "[a0]".into()), (1, 2, "[a1]".into())]).unwrap(), 2);
    let read = || store.shard_health(Duration::from_secs(60)).unwrap();
    assert_eq!(read(), vec![(0, "a".to_string(), "[a0]".to_string()), (1, "a".to_string(), "[a1]".to_string())]);
    // b held shard 1 before a took it (generation 1): its late write is dropped.
    assert_eq!(store.put_shard_health("b", &[(1, 1, "[b1]".into())]).unwrap(), 0);
    assert_eq!(read()[1], (1, "a".to_string(), "[a1]".to_string()));
    // b takes it over (generation 3).
    assert_eq!(store.put_shard_health("b", &[(1, 3, "[b1]".into())]).unwrap(), 1);
    assert_eq!(read()[1], (1, "b".to_string(), "[b1]".to_string()));
    assert_eq!(store.put_shard_health("a", &[(0, 2, "[a0 again]".into())]).unwrap(), 1, "the holder writes again");
    std::thread::sleep(Duration::from_millis(20));
    assert!(store.shard_health(Duration::from_millis(10)).unwrap().is_empty(), "nothing written within 10 ms");
}
