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
