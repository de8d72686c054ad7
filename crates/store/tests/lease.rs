//! The fleet's lease on a PostgreSQL store (issue 16): one holder at a
//! time, a generation that rises on every takeover, and commits fenced by
//! it: a node that lost the lease writes nothing, whatever it believes.

mod common;
use common::pg::PgServer;
use drover_model::{AuditEntry, Changes, Timestamp};
use drover_store::{PgStore, Store, StoreError};
use std::time::Duration;

fn audit(n: u64) -> Changes {
    Changes {
        audit: vec![AuditEntry {
            seq: 0,
            at: Timestamp(1_763_700_000_000_000 + n as i64),
            actor: "test".into(),
            role: None,
            command: "lease.test".into(),
            target: Some(format!("row {n}")),
            detail: serde_json::json!({}),
            outcome: "ok".into(),
        }],
        ..Default::default()
    }
}

#[test]
fn one_holder_at_a_time_and_a_stale_holders_commits_are_refused() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let a = PgStore::connect(&url).unwrap();
    let b = PgStore::connect(&url).unwrap();
    let ttl = Duration::from_millis(600);

    let ga = a.try_acquire_lease("a", "http://a.test:7700", ttl).unwrap().expect("a takes the free lease");
    a.fence_commits("a", ga);
    a.commit(audit(1)).unwrap();
    // Held and not expired: b waits, told by whom.
    let held = b.try_acquire_lease("b", "http://b.test:7700", ttl).unwrap().expect_err("b must not take a held lease");
    assert_eq!((held.holder.as_str(), held.address.as_str(), held.generation), ("a", "http://a.test:7700", ga));
    assert!(held.expires_in > Duration::ZERO && held.expires_in <= ttl, "{held:?}");
    assert!(a.renew_lease("a", ga, ttl).unwrap(), "the holder renews");

    // a stops renewing (paused, partitioned): once expired, b takes over
    // with a higher generation.
    std::thread::sleep(ttl + Duration::from_millis(200));
    let gb = b.try_acquire_lease("b", "http://b.test:7700", ttl).unwrap().expect("b takes the expired lease");
    assert!(gb > ga, "generation {gb} after {ga}");
    b.fence_commits("b", gb);

    // a comes back believing it holds the lease: its commit is refused and
    // nothing of it is written; its renewal fails; b's commits go through.
    let before = a.audit(100).unwrap().len();
    match a.commit(audit(2)) {
        Err(StoreError::CommitFailed { cause, .. }) => {
            assert!(
                matches!(*cause, StoreError::LeaseLost { ref node, generation } if node == "a" && generation == ga),
                "{cause}"
            )
        }
        other => panic!("a stale holder's commit must be refused: {other:?}"),
    }
    assert!(!a.renew_lease("a", ga, ttl).unwrap(), "a stale holder cannot renew");
    b.commit(audit(3)).unwrap();
    let rows = b.audit(100).unwrap();
    assert_eq!(rows.len(), before + 1, "only b's commit was written");
    assert!(rows.iter().all(|r| r.target.as_deref() != Some("row 2")));

    // The same node restarting takes its own lease back at once, with a
    // new generation that fences its previous process.
    let gb2 = b.try_acquire_lease("b", "http://b.test:7700", ttl).unwrap().expect("b's restart takes its own lease");
    assert!(gb2 > gb);
    assert!(matches!(b.commit(audit(4)), Err(StoreError::CommitFailed { .. })), "the old process's fence is stale");
    b.fence_commits("b", gb2);
    b.commit(audit(5)).unwrap();
}

fn deferred(id: &str) -> drover_store::deferred::NewDeferred {
    drover_store::deferred::NewDeferred {
        id: id.into(),
        received_by: "c".into(),
        token_id: "tok-1".into(),
        method: "POST".into(),
        path: "/v1/services".into(),
        request: format!("sealed request {id}"),
    }
}

#[test]
fn deferred_commands_are_taken_in_order_by_the_holder_only_and_never_twice() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let (a, b, c) = (PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap());
    let ttl = Duration::from_millis(400);
    let ga = a.try_acquire_lease("a", "http://a.test", ttl).unwrap().expect("free");
    a.fence_commits("a", ga);

    // A standby queues without holding anything.
    let first = c.defer_command(deferred("cmd-1")).unwrap();
    assert_eq!((first.state.as_str(), first.received_by.as_str()), ("pending", "c"));
    assert!(first.received_at > 0);
    c.defer_command(deferred("cmd-2")).unwrap();
    assert!(c.defer_command(deferred("cmd-1")).is_err(), "an id is stored once");
    assert!(c.take_deferred_command(Duration::from_secs(300)).is_err(), "a node holding no lease takes nothing");

    let taken = a.take_deferred_command(Duration::from_secs(300)).unwrap().expect("the oldest");
    assert_eq!((taken.id.as_str(), taken.state.as_str()), ("cmd-1", "running"));
    assert_eq!((taken.taken_by.as_deref(), taken.generation), (Some("a"), Some(ga)));
    assert_eq!(taken.request, "sealed request cmd-1");
    assert!(a.finish_deferred_command("cmd-1", 201, "sealed answer").unwrap());
    assert!(!a.finish_deferred_command("cmd-1", 201, "again").unwrap(), "finished once");
    let done = c.deferred_command("cmd-1").unwrap().unwrap();
    assert_eq!((done.state.as_str(), done.status, done.answer.as_deref()), ("done", Some(201), Some("sealed answer")));
    assert!(done.finished_at.is_some());

    // a takes cmd-2 and stops before it finishes; b takes the fleet over.
    assert_eq!(a.take_deferred_command(Duration::from_secs(300)).unwrap().unwrap().id, "cmd-2");
    std::thread::sleep(ttl * 2);
    let gb = b.try_acquire_lease("b", "http://b.test", ttl).unwrap().expect("expired");
    b.fence_commits("b", gb);
    c.defer_command(deferred("cmd-3")).unwrap();
    let next = b.take_deferred_command(Duration::from_secs(300)).unwrap().expect("cmd-3");
    assert_eq!(next.id, "cmd-3", "cmd-2 is not run again");
    let cut = c.deferred_command("cmd-2").unwrap().unwrap();
    assert_eq!(cut.state, "interrupted", "its outcome is unknown: never run twice");
    assert!(matches!(a.finish_deferred_command("cmd-2", 201, "late"), Err(StoreError::LeaseLost { .. })));
    assert!(matches!(a.take_deferred_command(Duration::from_secs(300)), Err(StoreError::LeaseLost { .. })));
    assert_eq!(c.deferred_command("cmd-2").unwrap().unwrap().state, "interrupted");

    // Nobody took it in time: expired, not run.
    c.defer_command(deferred("cmd-4")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b.take_deferred_command(Duration::from_millis(10)).unwrap(), None);
    assert_eq!(c.deferred_command("cmd-4").unwrap().unwrap().state, "expired");
    assert_eq!(c.deferred_command("nope").unwrap(), None);
}

/// Takes the lease for `node`, trying for up to 5 s (PostgreSQL lets go of
/// a closed connection's locks once its backend has noticed).
fn take_within_5s(store: &PgStore, node: &str, ttl: Duration) -> i64 {
    let start = std::time::Instant::now();
    loop {
        match store.try_acquire_lease(node, &format!("http://{node}.test"), ttl).unwrap() {
            Ok(generation) => return generation,
            Err(held) if start.elapsed() > Duration::from_secs(5) => {
                panic!("{node} could not take the lease: {held:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_holder_whose_connection_is_gone_is_taken_over_long_before_its_lease_expires() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let (a, b, c) = (PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap(), PgStore::connect(&url).unwrap());
    let ttl = Duration::from_secs(120);
    let ga = a.try_acquire_lease("a", "http://a.test", ttl).unwrap().expect("free");
    assert!(!a.lease_session_lost());
    // Alive (its lock held): nobody takes it, however often they try.
    for _ in 0..3 {
        let held = b.try_acquire_lease("b", "http://b.test", ttl).unwrap().expect_err("a is alive");
        assert_eq!((held.holder.as_str(), held.generation), ("a", ga));
        assert!(held.expires_in > Duration::from_secs(100), "{held:?}");
    }

    // a's process ends, its connections with it: b takes the fleet over
    // now, not in two minutes.
    drop(a);
    let gb = take_within_5s(&b, "b", ttl);
    assert_eq!(gb, ga + 1);
    b.fence_commits("b", gb);
    b.commit(audit(1)).unwrap();
    let held = c.try_acquire_lease("c", "http://c.test", ttl).unwrap().expect_err("b is alive");
    assert_eq!((held.holder.as_str(), held.generation), ("b", gb));

    // b's lease connection is ended from the database's side while b goes
    // on: b finds out (and the server stops itself on it), c takes over,
    // and b's commits are refused from then on.
    let ended = pg.psql(
        common::DB,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted",
    );
    assert_eq!(ended.trim(), "1", "one holder lock, on b's lease connection");
    let start = std::time::Instant::now();
    while !b.lease_session_lost() {
        assert!(start.elapsed() < Duration::from_secs(5), "b never noticed its lease connection ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gc = take_within_5s(&c, "c", ttl);
    assert_eq!(gc, gb + 1);
    assert!(matches!(b.commit(audit(2)), Err(StoreError::CommitFailed { .. })), "b is fenced");
    // b takes its old generation's lock again (nobody holds it), but the
    // lease is c's: its renewal fails, and the server stops on that.
    assert!(b.reclaim_lease_lock(gb).unwrap());
    assert!(!b.renew_lease("b", gb, ttl).unwrap());

    // c's connection is cut the same way, and c takes its lock again
    // before anyone noticed: the lease stays c's.
    let ended = pg.psql(
        common::DB,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
             AND granted AND objid = {gc}"
        ),
    );
    assert_eq!(ended.trim(), "1", "c's lock");
    let start = std::time::Instant::now();
    while !c.lease_session_lost() {
        assert!(start.elapsed() < Duration::from_secs(5), "c never noticed its lease connection ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.reclaim_lease_lock(gc).unwrap());
    assert!(c.renew_lease("c", gc, ttl).unwrap());
    let held = b.try_acquire_lease("b", "http://b.test", ttl).unwrap().expect_err("c holds it, lock and all");
    assert_eq!((held.holder.as_str(), held.generation), ("c", gc));
}
