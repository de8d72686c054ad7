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
use common::{Backend, DB};
use drover_model::{
    BackupStatus, Changes, CredentialStatus, EngineKind, ImageId, InstanceId, InstanceRecord, InstanceState, Plan,
    Role, ServiceId, ServiceRecord, ServiceState, Timestamp,
};
use drover_store::{PgStore, Store};
use std::time::Instant;

const T0: i64 = 1_763_700_000_000_000;

fn instances() -> usize {
    std::env::var("DROVER_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000)
}

fn service(n: u64) -> ServiceRecord {
    ServiceRecord {
        upgraded_from: None,
        id: ServiceId::new_at(T0 + n as i64, n),
        name: format!("svc-{n}"),
        engine: EngineKind::Postgres,
        plan: Plan {
            followers: 1,
            sync: true,
            max_failover_lag_bytes: 16 << 20,
            credential_rotation_days: None,
            brokers: None,
        },
        team: "default".into(),
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        image: ImageId("sha256:0f5c2a9d1e7b4c3a8f6e5d4c3b2a19087f6e5d4c3b2a19087f6e5d4c3b2a1908".into()),
        provider: "local".into(),
        state: ServiceState::Available,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 10 + n as i64),
        needs_human: false,
        remedy_failures: 0,
        failing_since: None,
        backups: BackupStatus { last_backup_at: Some(Timestamp(T0 + 5)), ..Default::default() },
        credentials: CredentialStatus { last_rotated_at: Some(Timestamp(T0 + 6)), ..Default::default() },
        maintenance_window: None,
        forked_from: None,
        labels: Default::default(),
        read_slots: Vec::new(),
    }
}

fn instance(n: u64, service: &ServiceRecord, role: Role) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::new_at(T0 + n as i64, n),
        service: service.id,
        role,
        zone: service.zones[(n % 3) as usize].clone(),
        provider: "local".into(),
        image: service.image.clone(),
        state: InstanceState::Available,
        fenced: false,
        restarts: 0,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 5 + n as i64),
        host: Some(format!("h{:02}", n % 30)),
        read_slot: None,
    }
}

fn seed(store: &PgStore, instances: usize) {
    let mut changes = Changes::default();
    for s in 0..(instances / 2) as u64 {
        let svc = service(s);
        changes.instances.push(instance(2 * s, &svc, Role::Primary));
        changes.instances.push(instance(2 * s + 1, &svc, Role::Follower));
        changes.services.push(svc);
        if changes.services.len() == 5_000 {
            store.commit(std::mem::take(&mut changes)).expect("seeding");
        }
    }
    store.commit(changes).expect("seeding");
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
