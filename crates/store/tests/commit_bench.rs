//! Commits per second of each store, printed (not a pass/fail figure):
//!
//! ```text
//! cargo nextest run --release -p drover-store --test commit_bench --run-ignored only --no-capture
//! ```
//!
//! Each commit is what the engine writes for one instance transition: the
//! instance's record and three events (about 1 KB of JSON). One caller shows
//! the latency of a durable commit; 16 callers show what group commit makes
//! of it. SQLite runs with synchronous=FULL, PostgreSQL with its defaults
//! (fsync and synchronous_commit on), on the same disk.

mod common;
use common::Backend;
use drover_model::{
    Changes, Event, EventSubject, InstanceId, InstanceRecord, InstanceState, Role, ServiceId, Timestamp,
};
use drover_store::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(4);

fn batch(n: u64) -> Changes {
    let id = InstanceId::new_at(1_763_700_000_000_000, n);
    let instance = InstanceRecord {
        id,
        service: ServiceId::new_at(1_763_700_000_000_000, n % 100),
        role: Role::Follower,
        zone: "a".into(),
        provider: "sim".into(),
        image: drover_model::ImageId("sha256:bench".into()),
        state: InstanceState::Available,
        fenced: false,
        restarts: 0,
        created_at: Timestamp(1),
        state_since: Timestamp(2),
        host: None,
        read_slot: None,
    };
    let events = (0..3)
        .map(|k| Event {
            id: Default::default(),
            seq: 0,
            at: Timestamp(3),
            subject: EventSubject::Instance,
            service: Some(format!("svc-{}", n % 100)),
            service_id: None,
            instance: Some(id),
            action: None,
            from: Some("uncertain".into()),
            to: Some("available".into()),
            cause: format!("heartbeat resumed {n}/{k}"),
            kind: drover_model::EventKind::Transition,
            team: Some("db".into()),
        })
        .collect();
    Changes { instances: vec![instance], events, ..Default::default() }
}

/// Commits per second with `callers` threads committing for [`RUN`].
fn measure(store: &Arc<dyn Store>, callers: usize) -> (f64, f64) {
    let before = store.writer_counters().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let (store, stop, next) = (Arc::clone(store), Arc::clone(&stop), Arc::clone(&next));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store.commit(batch(next.fetch_add(1, Ordering::Relaxed))).unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let after = store.writer_counters().unwrap();
    let batches = after.batches - before.batches;
    let transactions = (after.transactions - before.transactions).max(1);
    (batches as f64 / secs, batches as f64 / transactions as f64)
}

fn bench(name: &str, backend: &Backend) {
    let store = backend.open();
    for callers in [1, 16] {
        let (per_sec, per_tx) = measure(&store, callers);
        println!("{name:<10} {callers:>2} caller(s): {per_sec:>8.0} commits/s ({per_tx:.1} commits per transaction)");
    }
}

#[test]
#[ignore = "a benchmark: run with --run-ignored only --no-capture"]
fn commits_per_second_sqlite_and_postgres() {
    bench("sqlite", &Backend::sqlite("bench"));
    bench("postgres", &Backend::postgres());
}
