//! How long `PgStore::load` takes for a large fleet, and where the time
//! goes, printed (not a pass/fail figure):
//!
//! ```text
//! DROVER_BENCH_INSTANCES=300000 cargo nextest run --release -p drover-store --test load_bench --run-ignored only --no-capture
//! ```
//!
//! A takeover is mostly this load (issue 16: a node takes over a third of a
//! million-instance fleet within 5 s, the lease's TTL included). The fleet
//! is services of a primary and a synchronous follower, as the cluster
//! bench's; the records are the shapes the engine writes. Printed: the
//! whole load, then the instances' query alone (PostgreSQL reading,
//! sorting and sending the rows, no decoding) and the decoding alone.

mod common;
use common::fleet::seed;
use common::{Backend, DB};
use drover_model::{InstanceRecord, Timestamp};
use drover_store::{PgStore, ShardFilter, Store};
use std::time::Instant;

fn instances() -> usize {
    std::env::var("DROVER_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000)
}

#[test]
#[ignore = "a benchmark: run with --run-ignored only --no-capture"]
fn load_of_a_large_fleet_from_postgres() {
    let n = instances();
    let backend = Backend::postgres();
    let Backend::Postgres(pg) = &backend else { unreachable!() };
    let url = pg.url(DB);
    let store = PgStore::connect(&url).expect("the store");
    let started = Instant::now();
    seed(&store, n);
    println!("seeded {n} instances in {:.1} s", started.elapsed().as_secs_f64());
    pg.psql(DB, "VACUUM ANALYZE");
    for round in 0..3 {
        let started = Instant::now();
        let snapshot = store.load().expect("the load");
        assert_eq!(snapshot.instances.len(), n, "every instance loaded");
        assert_eq!(snapshot.services.len(), n / 2, "every service loaded");
        println!("load {round}: {:.3} s", started.elapsed().as_secs_f64());
    }
    // A takeover of a third of the fleet (issue 16: at most 5 s for a
    // third of a million instances, and ready): four shards of twelve
    // loaded, then the engine restored from them.
    for round in 0..3 {
        let started = Instant::now();
        let third = store.load_shards(&ShardFilter { shards: 12, held: vec![0, 3, 6, 9] }).expect("the load");
        let loaded = started.elapsed();
        let instances = third.instances.len();
        assert!(instances > n / 4 && instances < n * 5 / 12, "about a third: {instances} of {n}");
        let (engine, _out) = drover_engine::Engine::restore(
            drover_engine::Config::default(),
            round,
            third,
            Timestamp(common::fleet::T0 + 3_600_000_000),
        );
        let restored = started.elapsed();
        assert_eq!(engine.instance_count(), instances);
        println!(
            "a third (4 of 12 shards, {instances} instances): load {:.3} s, restored and ready {:.3} s",
            loaded.as_secs_f64(),
            restored.as_secs_f64()
        );
    }
    // The instances' query alone, and its rows' decoding alone.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let started = Instant::now();
        let rows = client
            .query(
                "SELECT id, record FROM instances WHERE state != 'terminated' ORDER BY created_at, id COLLATE \"C\"",
                &[],
            )
            .await
            .unwrap();
        println!("instances' query alone: {:.3} s ({} rows)", started.elapsed().as_secs_f64(), rows.len());
        let started = Instant::now();
        let bytes: usize = rows.iter().map(|r| r.get::<_, &str>(1).len()).sum();
        let decoded: Vec<InstanceRecord> =
            rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(1)).unwrap()).collect();
        assert_eq!(decoded.len(), n);
        println!(
            "instances' decoding alone, one thread: {:.3} s ({} bytes of JSON, {} per record)",
            started.elapsed().as_secs_f64(),
            bytes,
            bytes / n.max(1)
        );
        let started = Instant::now();
        let rows = client.query("SELECT id, record FROM instances WHERE state != 'terminated'", &[]).await.unwrap();
        println!("instances' query unsorted: {:.3} s ({} rows)", started.elapsed().as_secs_f64(), rows.len());
    });
}
