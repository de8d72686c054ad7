//! The store through its public API. Every case runs against both stores:
//! SQLite on real files (`sqlite::`) and a real PostgreSQL 15 started for
//! the case (`postgres::`).

mod common;
use common::{quote, Backend, TempDir, DB};
use drover_model::{
    ActionId, ActionKind, ActionRecord, ActionState, AuditEntry, BackupStatus, Changes, CredentialStatus, EngineKind,
    Event, EventSubject, Fault, HostRecord, HostState, Image, InstanceId, InstanceRecord, InstanceState, Plan, Role,
    ServiceId, ServiceRecord, ServiceState, Timestamp,
};
use drover_store::{EventFilter, PgStore, SqliteStore, Store, StoreError, MAX_READ_LIMIT};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const T0: i64 = 1_763_700_000_000_000;

fn image(version: &str) -> Image {
    let packages = BTreeMap::from([("postgresql-15".to_string(), version.to_string())]);
    let configuration = BTreeMap::from([("max_connections".to_string(), "200".to_string())]);
    Image::new(EngineKind::Postgres, version, configuration, packages, Timestamp(T0))
}

fn service(n: u64, name: &str, state: ServiceState) -> ServiceRecord {
    ServiceRecord {
        upgraded_from: None,
        id: ServiceId::new_at(T0 + n as i64, n),
        name: name.into(),
        engine: EngineKind::Postgres,
        plan: Plan {
            followers: 2,
            sync: true,
            max_failover_lag_bytes: 16 << 20,
            credential_rotation_days: None,
            brokers: None,
        },
        team: "payments".into(),
        zones: vec!["a".into(), "b".into()],
        image: image("15.18").id,
        provider: "local".into(),
        state,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 10 + n as i64),
        needs_human: n.is_multiple_of(2),
        remedy_failures: (n % 3) as u32,
        failing_since: (!n.is_multiple_of(3)).then_some(Timestamp(T0 + 7)),
        backups: BackupStatus { last_backup_at: Some(Timestamp(T0 + 5)), ..Default::default() },
        credentials: CredentialStatus { last_rotated_at: Some(Timestamp(T0 + 6)), ..Default::default() },
        maintenance_window: None,
        forked_from: None,
        labels: Default::default(),
        // Read replicas added on demand survive a restart with the record.
        read_slots: if n % 2 == 1 { vec![1, 3] } else { Vec::new() },
    }
}

fn instance(n: u64, service: ServiceId, state: InstanceState) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::new_at(T0 + n as i64, n),
        service,
        role: [Role::Primary, Role::Follower][(n % 2) as usize],
        zone: "a".into(),
        provider: "local".into(),
        image: image("15.18").id,
        state,
        fenced: matches!(n % 3, 0),
        restarts: n as u32,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 5 + n as i64),
        host: (n % 2 == 1).then(|| format!("host-{n}")),
        read_slot: (n % 2 == 1).then_some(3),
    }
}

fn host(name: &str, state: HostState) -> HostRecord {
    HostRecord {
        name: name.into(),
        zone: "zone-a".into(),
        address: "127.0.0.2".into(),
        capacity: 8,
        state,
        registered_at: Timestamp(T0),
        last_seen: Some(Timestamp(T0 + 1)),
        builtin: false,
    }
}

fn action(n: u64, service: ServiceId, instance: InstanceId, kind: ActionKind, state: ActionState) -> ActionRecord {
    ActionRecord {
        id: ActionId::new_at(T0 + n as i64 * 1000, n),
        service,
        instance,
        kind,
        state,
        attempts: 2,
        cause: format!("cause {n}"),
        created_at: Timestamp(T0 + n as i64 * 1000),
        updated_at: Timestamp(T0 + n as i64 * 1000 + 1),
        deadline: Timestamp(T0 + n as i64 * 1000 + 30_000_000),
        error: (n % 2 == 1).then(|| "timed out".to_string()),
    }
}

fn event(service: Option<&str>, instance: Option<InstanceId>, cause: &str) -> Event {
    Event {
        id: Default::default(),
        seq: 4242, // must be ignored
        at: Timestamp(T0),
        subject: EventSubject::Instance,
        service: service.map(str::to_string),
        service_id: None,
        instance,
        action: None,
        from: Some("available".into()),
        to: Some("uncertain".into()),
        cause: cause.into(),
        kind: drover_model::EventKind::Transition,
        team: Some("db".into()),
    }
}

fn audit_entry(n: u64) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Timestamp(T0 + n as i64),
        actor: "alice".into(),
        role: Some("operator".into()),
        command: "failover".into(),
        target: Some(format!("db{n}")),
        detail: serde_json::json!({"n": n, "force": false}),
        outcome: "ok".into(),
    }
}

fn sorted<T: Clone, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort_by_key(key);
    v
}

fn commit_then_load_round_trips_every_record_exactly(b: &Backend) {
    let store = b.open();
    let s1 = service(1, "orders", ServiceState::Available);
    let s2 = service(2, "carts", ServiceState::Degraded);
    let i1 = instance(1, s1.id, InstanceState::Available);
    let i2 = instance(2, s2.id, InstanceState::Uncertain);
    let provision = ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
        role: Role::Follower,
        zone: "b".into(),
        image: image("15.18").id,
        service_name: "db1".into(),
        sync: true,
        settings: Default::default(),
        engine: drover_model::EngineKind::Postgres,
        host: Some("host-b".into()),
        restore_from: None,
        read_slot: None,
        version: String::new(),
        storage_of: None,
    }));
    let a1 = action(1, s1.id, i1.id, provision, ActionState::Pending);
    let a2 = action(2, s2.id, i2.id, ActionKind::InjectFault { fault: Fault::Hang }, ActionState::Running);
    let images = vec![image("15.18"), image("15.19")];
    let changes = Changes {
        services: vec![s1.clone(), s2.clone()],
        instances: vec![i1.clone(), i2.clone()],
        actions: vec![a1.clone(), a2.clone()],
        images: images.clone(),
        events: vec![],
        audit: vec![],
        hosts: vec![host("h1", HostState::Ready), host("h2", HostState::Ready), host("h2", HostState::Cordoned)],
        ..Default::default()
    };
    store.commit(changes).unwrap();

    // Through a fresh open too: what load returns came from disk, not memory.
    drop(store);
    let store = b.open();
    let snap = store.load().unwrap();
    assert_eq!(sorted(&snap.services, |s| s.id), sorted(&[s1, s2], |s| s.id));
    assert_eq!(sorted(&snap.instances, |i| i.id), sorted(&[i1, i2], |i| i.id));
    assert_eq!(sorted(&snap.actions, |a| a.id), sorted(&[a1, a2], |a| a.id));
    assert_eq!(sorted(&snap.images, |m| m.id.clone()), sorted(&images, |m| m.id.clone()));
    // Upserts by name: the last record of h2 wins.
    assert_eq!(snap.hosts, vec![host("h1", HostState::Ready), host("h2", HostState::Cordoned)]);
}

fn records_written_before_hosts_existed_load_without_a_host(b: &Backend) {
    let store = b.open();
    let s = service(1, "orders", ServiceState::Available);
    let i = InstanceRecord { host: None, ..instance(2, s.id, InstanceState::Available) };
    store.commit(Changes { services: vec![s], instances: vec![i.clone()], ..Default::default() }).unwrap();
    drop(store);
    // A record as Drover wrote it before V5: no `host` key at all.
    let json = serde_json::to_value(&i).unwrap();
    assert!(json.get("host").is_none(), "{json}");
    b.raw(&format!("UPDATE instances SET record = {}", quote(&json.to_string())));
    let snap = b.open().load().unwrap();
    assert_eq!(snap.instances, vec![i]);
    assert!(snap.hosts.is_empty());
}

fn upsert_replaces_and_the_last_entry_for_an_id_wins(b: &Backend) {
    let store = b.open();
    let s = service(1, "orders", ServiceState::Provisioning);
    let i = instance(1, s.id, InstanceState::Installing);
    store.commit(Changes { services: vec![s.clone()], instances: vec![i.clone()], ..Default::default() }).unwrap();

    // Same batch, same id twice: the later one wins.
    let mut degraded = s.clone();
    degraded.state = ServiceState::Degraded;
    let mut available = s.clone();
    available.state = ServiceState::Available;
    available.team = "checkout".into();
    let mut i_up = i.clone();
    i_up.state = InstanceState::Available;
    i_up.restarts = 7;
    store
        .commit(Changes {
            services: vec![degraded, available.clone()],
            // An instance too (PostgreSQL writes a group's instances in one
            // statement: the last row of an id must still win).
            instances: vec![InstanceRecord { restarts: 99, ..i_up.clone() }, i_up.clone()],
            ..Default::default()
        })
        .unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.services, vec![available]);
    assert_eq!(snap.instances, vec![i_up]);
}

fn load_skips_deleted_services_terminated_instances_and_finished_actions(b: &Backend) {
    let store = b.open();
    let live = service(1, "live", ServiceState::Deleting);
    let gone = service(2, "gone", ServiceState::Available);
    let i_live = instance(1, live.id, InstanceState::Archived);
    let i_gone = instance(2, live.id, InstanceState::Archived);
    let mk = |n, state| action(n, live.id, i_live.id, ActionKind::Probe, state);
    let all_actions: Vec<_> = [
        ActionState::Pending,
        ActionState::Running,
        ActionState::Succeeded,
        ActionState::Failed,
        ActionState::Cancelled,
    ]
    .into_iter()
    .enumerate()
    .map(|(n, s)| mk(n as u64, s))
    .collect();
    store
        .commit(Changes {
            services: vec![live.clone(), gone.clone()],
            instances: vec![i_live.clone(), i_gone.clone()],
            actions: all_actions.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.load().unwrap().services.len(), 2, "both services are live before the upsert");

    // A later commit moves them to their terminal states: the state column
    // must follow the record, or load would still return them.
    let mut gone_deleted = gone.clone();
    gone_deleted.state = ServiceState::Deleted;
    let mut i_gone_terminated = i_gone.clone();
    i_gone_terminated.state = InstanceState::Terminated;
    let mut first_done = all_actions[0].clone();
    first_done.state = ActionState::Succeeded;
    store
        .commit(Changes {
            services: vec![gone_deleted],
            instances: vec![i_gone_terminated],
            actions: vec![first_done.clone()],
            ..Default::default()
        })
        .unwrap();

    let snap = store.load().unwrap();
    assert_eq!(snap.services, vec![live]);
    assert_eq!(snap.instances, vec![i_live]);
    assert_eq!(snap.actions, vec![all_actions[1].clone()], "only the running one is still open");
    // Finished actions are still there for the history.
    let history = store.actions(None, 100).unwrap();
    assert_eq!(history.len(), 5);
    assert!(history.contains(&first_done));
}

fn events_get_increasing_seq_across_commits_whatever_seq_they_carry(b: &Backend) {
    let store = b.open();
    for round in 0..3 {
        let events = (0..4).map(|k| event(Some("orders"), None, &format!("r{round} e{k}"))).collect();
        store.commit(Changes { events, ..Default::default() }).unwrap();
    }
    drop(store);
    let store = b.open();
    store.commit(Changes { events: vec![event(Some("orders"), None, "after reopen")], ..Default::default() }).unwrap();

    let all = store.events(&EventFilter::default()).unwrap();
    assert_eq!(all.len(), 13);
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs must increase: {:?}",
        all.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|e| e.seq != 4242 && e.seq > 0));
    let causes: Vec<_> = all.iter().map(|e| e.cause.as_str()).collect();
    assert_eq!(causes[0], "r0 e0");
    assert_eq!(causes[4], "r1 e0");
    assert_eq!(causes[12], "after reopen");
    // Apart from seq, the event is what was committed.
    let mut expected = event(Some("orders"), None, "r0 e0");
    expected.seq = all[0].seq;
    assert_eq!(all[0], expected);
}

fn event_filters_by_service_instance_after_seq_and_limit(b: &Backend) {
    let store = b.open();
    let x = InstanceId::new_at(T0, 1);
    let y = InstanceId::new_at(T0, 2);
    let mut events = Vec::new();
    for k in 0..30 {
        let (svc, inst) = match k % 3 {
            0 => (Some("orders"), Some(x)),
            1 => (Some("orders"), Some(y)),
            _ => (Some("carts"), None),
        };
        events.push(event(svc, inst, &format!("e{k}")));
    }
    events.push(event(None, None, "fleet brake"));
    store.commit(Changes { events, ..Default::default() }).unwrap();

    let orders = store.events(&EventFilter { service: Some("orders".into()), ..Default::default() }).unwrap();
    assert_eq!(orders.len(), 20);
    assert!(orders.iter().all(|e| e.service.as_deref() == Some("orders")));
    assert!(orders.windows(2).all(|w| w[0].seq < w[1].seq));

    let on_x = store.events(&EventFilter { instance: Some(x), ..Default::default() }).unwrap();
    assert_eq!(on_x.len(), 10);
    assert!(on_x.iter().all(|e| e.instance == Some(x)));

    let both =
        store.events(&EventFilter { service: Some("orders".into()), instance: Some(y), ..Default::default() }).unwrap();
    assert_eq!(both.len(), 10);
    assert!(both.iter().all(|e| e.instance == Some(y)));
    let none =
        store.events(&EventFilter { service: Some("carts".into()), instance: Some(y), ..Default::default() }).unwrap();
    assert!(none.is_empty());

    let all = store.events(&EventFilter::default()).unwrap();
    assert_eq!(all.len(), 31);
    let cut = all[9].seq;
    let after = store.events(&EventFilter { after_seq: Some(cut), ..Default::default() }).unwrap();
    assert_eq!(after.len(), 21);
    assert!(after.iter().all(|e| e.seq > cut));
    assert_eq!(after[0].seq, all[10].seq);

    let page = store.events(&EventFilter { after_seq: Some(cut), limit: Some(5), ..Default::default() }).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), all[10..15].iter().map(|e| e.seq).collect::<Vec<_>>());

    let huge = store.events(&EventFilter { after_seq: Some(u64::MAX), ..Default::default() }).unwrap();
    assert!(huge.is_empty(), "an after_seq past i64::MAX must not wrap around");
    assert!(store.events(&EventFilter { limit: Some(0), ..Default::default() }).unwrap().is_empty());
}

fn event_limit_defaults_to_1000_and_is_clamped(b: &Backend) {
    let store = b.open();
    let events: Vec<_> = (0..MAX_READ_LIMIT + 5).map(|k| event(Some("orders"), None, &format!("e{k}"))).collect();
    store.commit(Changes { events, ..Default::default() }).unwrap();
    assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 1000);
    let clamped = store.events(&EventFilter { limit: Some(usize::MAX), ..Default::default() }).unwrap();
    assert_eq!(clamped.len(), MAX_READ_LIMIT);
    // One commit's events keep their order in seq (PostgreSQL's writer
    // pipelines them, in flights of 1024).
    let causes: Vec<String> = clamped.into_iter().map(|e| e.cause).collect();
    let expected: Vec<String> = (0..MAX_READ_LIMIT).map(|k| format!("e{k}")).collect();
    assert_eq!(causes, expected);
}

fn a_setting_is_absent_until_put_then_replaced_and_kept_across_a_reopen(b: &Backend) {
    let store = b.open();
    assert_eq!(store.setting("pager_event_cursor").unwrap(), None);
    store.put_setting("pager_event_cursor", "17").unwrap();
    store.put_setting("pager_event_cursor", "42").unwrap();
    store.put_setting("another", "x'; DROP TABLE events; --").unwrap();
    drop(store);
    let store = b.open();
    assert_eq!(store.setting("pager_event_cursor").unwrap().as_deref(), Some("42"));
    assert_eq!(store.setting("another").unwrap().as_deref(), Some("x'; DROP TABLE events; --"));
    assert_eq!(store.last_event_seq().unwrap(), 0, "the events table is still there, empty");
}

fn audit_returns_the_most_recent_entries_in_ascending_seq(b: &Backend) {
    let store = b.open();
    for chunk in 0..3 {
        let audit = (0..4).map(|k| audit_entry(chunk * 4 + k)).collect();
        store.commit(Changes { audit, ..Default::default() }).unwrap();
    }
    let last5 = store.audit(5).unwrap();
    assert_eq!(last5.len(), 5);
    assert!(last5.windows(2).all(|w| w[0].seq < w[1].seq));
    let targets: Vec<_> = last5.iter().map(|a| a.target.clone().unwrap()).collect();
    assert_eq!(targets, ["db7", "db8", "db9", "db10", "db11"]);
    let mut expected = audit_entry(11);
    expected.seq = last5[4].seq;
    assert_eq!(last5[4], expected);
    assert_eq!(store.audit(100).unwrap().len(), 12);
}

fn actions_are_listed_newest_first_and_filtered_by_service(b: &Backend) {
    let store = b.open();
    let s1 = ServiceId::new_at(T0, 1);
    let s2 = ServiceId::new_at(T0, 2);
    let i = InstanceId::new_at(T0, 1);
    let actions: Vec<_> = (0..10)
        .map(|n| action(n, if n % 2 == 0 { s1 } else { s2 }, i, ActionKind::Restart, ActionState::Succeeded))
        .collect();
    // Committed out of order: the listing must sort, not echo insertion.
    let mut shuffled = actions.clone();
    shuffled.reverse();
    shuffled.swap(2, 7);
    store.commit(Changes { actions: shuffled, ..Default::default() }).unwrap();

    let all = store.actions(None, 100).unwrap();
    let want: Vec<_> = actions.iter().rev().cloned().collect();
    assert_eq!(all, want);
    let top3 = store.actions(None, 3).unwrap();
    assert_eq!(top3, want[..3].to_vec());
    let of_s1 = store.actions(Some(s1), 2).unwrap();
    assert_eq!(of_s1, vec![actions[8].clone(), actions[6].clone()]);
}

fn concurrent_commits_all_succeed_are_grouped_and_store_each_event_once(b: &Backend) {
    const THREADS: u64 = 16;
    const COMMITS: u64 = 40;
    let store = b.open();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for c in 0..COMMITS {
                    let events =
                        (0..2).map(|k| event(Some(&format!("t{t}")), None, &format!("t{t} c{c} k{k}"))).collect();
                    store.commit(Changes { events, ..Default::default() }).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut after = None;
    loop {
        let page = store.events(&EventFilter { after_seq: after, limit: Some(500), ..Default::default() }).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for e in page {
            *seen.entry(e.cause).or_default() += 1;
        }
    }
    assert_eq!(seen.len() as u64, THREADS * COMMITS * 2);
    assert!(seen.values().all(|&n| n == 1), "an event was stored twice");
    // Events of one thread keep their commit order.
    let t3 = store.events(&EventFilter { service: Some("t3".into()), ..Default::default() }).unwrap();
    let expect: Vec<_> = (0..COMMITS).flat_map(|c| (0..2).map(move |k| format!("t3 c{c} k{k}"))).collect();
    assert_eq!(t3.into_iter().map(|e| e.cause).collect::<Vec<_>>(), expect);

    let counters = store.writer_counters().expect("both stores group-commit");
    assert_eq!(counters.batches, THREADS * COMMITS);
    assert!(counters.transactions <= counters.batches);
}

#[test]
fn opening_a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = TempDir::new("not-a-db");
    let path = dir.0.join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database; ".repeat(200)).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("notes.txt") && msg.contains("not a SQLite database"), "{msg}");
    // And the file was left alone.
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("these are my notes"));

    let err = SqliteStore::open(&dir.0.join("missing-dir").join("drover.db")).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("missing-dir"), "{err}");
}

#[test]
fn a_postgres_store_that_cannot_be_reached_is_a_clear_error_without_the_password() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err =
        PgStore::connect(&format!("postgres://alice:s3cret@127.0.0.1:{port}/fleet?connect_timeout=5")).unwrap_err();
    assert!(matches!(err, StoreError::PgConnect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("postgres://alice@127.0.0.1:{port}/fleet")), "{msg}");
    assert!(!msg.contains("s3cret"), "the password must not be shown: {msg}");

    let err = PgStore::connect("mysql://alice@127.0.0.1/fleet").unwrap_err();
    assert!(matches!(err, StoreError::PgConnect { .. }), "{err:?}");
    assert!(err.to_string().contains("postgres://USER@HOST:PORT/DB"), "{err}");
}

#[test]
fn a_postgres_store_fails_commits_while_the_server_is_down_and_recovers_when_it_returns() {
    let mut pg = common::pg::PgServer::start();
    let store = PgStore::connect(&pg.url(DB)).unwrap();
    store.commit(Changes { audit: vec![audit_entry(1)], ..Default::default() }).unwrap();

    pg.stop();
    // Refused promptly, not hung and not a panic: the pooled connections
    // are closed, and a new one cannot be opened.
    let started = Instant::now();
    let err = store.commit(Changes { audit: vec![audit_entry(2)], ..Default::default() }).unwrap_err();
    assert!(matches!(err, StoreError::CommitFailed { .. }), "{err:?}");
    assert!(store.load().is_err());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());

    pg.restart();
    // Fresh connections replace the closed ones (the first try may still
    // draw a connection the pool has not yet seen closed).
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.commit(Changes { audit: vec![audit_entry(3)], ..Default::default() }).is_err() {
        assert!(Instant::now() < deadline, "the store never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let targets: Vec<_> = store.audit(10).unwrap().into_iter().map(|a| a.target.unwrap()).collect();
    assert_eq!(targets, ["db1", "db3"], "the refused commit wrote nothing");
}

fn a_record_that_does_not_decode_is_an_error_naming_table_and_id(b: &Backend) {
    let store = b.open();
    let s = service(1, "orders", ServiceState::Available);
    let i = instance(1, s.id, InstanceState::Available);
    store.commit(Changes { services: vec![s.clone()], instances: vec![i.clone()], ..Default::default() }).unwrap();
    drop(store);

    b.raw(&format!("UPDATE instances SET record = '{{\"id\": 42}}' WHERE id = {}", quote(&i.id.to_string())));

    let store = b.open();
    let err = store.load().unwrap_err();
    match &err {
        StoreError::CorruptRecord { table, id, .. } => {
            assert_eq!(*table, "instances");
            assert_eq!(id, &i.id.to_string());
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    assert!(err.to_string().contains(&i.id.to_string()), "{err}");
}

fn a_database_migrated_by_a_newer_drover_is_refused(b: &Backend) {
    drop(b.open());
    b.raw(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
    );
    let Err(err) = b.try_open() else { panic!("a store migrated by a newer Drover opened") };
    assert!(matches!(err, StoreError::Migration { .. } | StoreError::PgMigration { .. }), "{err:?}");
}

fn dropping_the_store_stops_the_writer_and_keeps_what_was_committed(b: &Backend) {
    for round in 0..5 {
        let store = b.open();
        store.commit(Changes { audit: vec![audit_entry(round)], ..Default::default() }).unwrap();
        drop(store); // joins the writer thread; a hang here fails the test by timeout
    }
    let store = b.open();
    assert_eq!(store.audit(10).unwrap().len(), 5);
}

// ---- crash safety: a child process committing, killed with SIGKILL ----

/// Set in the child's environment to the database path: tells the
/// `crash_child_writer_loop` test to run the writer loop instead of returning.
const CRASH_CHILD_ENV: &str = "DROVER_STORE_CRASH_CHILD_DB";
const EVENTS_PER_BATCH: usize = 3;
const CRASH_SERVICE: &str = "crash";

fn crash_instance_id(batch: u64) -> InstanceId {
    InstanceId::new_at(T0, batch)
}

fn crash_batch(batch: u64) -> Changes {
    let id = crash_instance_id(batch);
    // Padding makes each batch span several pages, so a kill is likely to land
    // while a transaction is half-written to the WAL.
    let padding = "x".repeat(1500);
    Changes {
        instances: vec![InstanceRecord { id, ..instance(batch, ServiceId::new_at(T0, 0), InstanceState::Available) }],
        events: (0..EVENTS_PER_BATCH)
            .map(|k| {
                let mut e = event(Some(CRASH_SERVICE), Some(id), &format!("batch {batch}"));
                e.from = Some(format!("{k} {padding}"));
                e
            })
            .collect(),
        ..Default::default()
    }
}

/// Not a test of its own: the body of the child process of
/// `kill_9_loses_no_acknowledged_batch_and_leaves_no_partial_one`. Returns at
/// once unless that test started it.
#[test]
fn crash_child_writer_loop() {
    let Ok(spec) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let store = common::open_spec(&spec).unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let next = Arc::clone(&next);
            std::thread::spawn(move || loop {
                let batch = next.fetch_add(1, Ordering::SeqCst);
                store.commit(crash_batch(batch)).unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {batch}").unwrap();
                out.flush().unwrap();
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
}

fn kill_9_loses_no_acknowledged_batch_and_leaves_no_partial_one(b: &Backend) {
    const ACKS_BEFORE_KILL: usize = 300;
    // Create the schema first so the child's kill cannot land in a migration.
    drop(b.open());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer_loop", "--nocapture", "--test-threads", "1"])
        .env(CRASH_CHILD_ENV, b.spec())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("acked ") {
                let _ = tx.send(n.trim().parse::<u64>().unwrap());
            }
        }
    });

    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < ACKS_BEFORE_KILL {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) => {
                acked.insert(n);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the child writer exited early ({status}) after {} acks", acked.len());
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("only {} acks before giving up: {e:?}", acked.len());
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks still in the pipe were printed before the kill: they count too.
    reader.join().unwrap();
    acked.extend(rx.try_iter());

    let store = b.open();
    let mut per_batch: BTreeMap<u64, usize> = BTreeMap::new();
    let mut after = None;
    let mut last_seq = 0;
    loop {
        let filter = EventFilter {
            service: Some(CRASH_SERVICE.into()),
            after_seq: after,
            limit: Some(MAX_READ_LIMIT),
            ..Default::default()
        };
        let page = store.events(&filter).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        for e in page {
            assert!(e.seq > last_seq);
            last_seq = e.seq;
            let batch: u64 = e.cause.strip_prefix("batch ").unwrap().parse().unwrap();
            assert_eq!(e.instance, Some(crash_instance_id(batch)));
            *per_batch.entry(batch).or_default() += 1;
        }
    }
    let partial: Vec<_> = per_batch.iter().filter(|(_, &n)| n != EVENTS_PER_BATCH).collect();
    assert!(partial.is_empty(), "batches with a partial set of events: {partial:?}");
    let lost: Vec<_> = acked.iter().filter(|b| !per_batch.contains_key(b)).collect();
    assert!(lost.is_empty(), "acknowledged batches missing after kill -9: {lost:?}");

    // The instance of a batch exists exactly when its events do.
    let stored_instances: BTreeSet<InstanceId> = store.load().unwrap().instances.iter().map(|i| i.id).collect();
    let expected_instances: BTreeSet<InstanceId> = per_batch.keys().map(|&b| crash_instance_id(b)).collect();
    assert_eq!(stored_instances, expected_instances);
    assert!(per_batch.len() >= acked.len());

    match b {
        Backend::Sqlite(dir) => {
            let raw = rusqlite::Connection::open(dir.db()).unwrap();
            let check: String = raw.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(check, "ok");
        }
        Backend::Postgres(pg) => {
            // Every batch is whole in the table too, not only through the API.
            let counts = pg.psql(
                DB,
                &format!("SELECT count(*) FROM events WHERE service = '{CRASH_SERVICE}' GROUP BY record::json->>'cause' HAVING count(*) <> {EVENTS_PER_BATCH}"),
            );
            assert_eq!(counts.trim(), "", "partial batches in the events table");
        }
    }
}

/// The engine is restored from the load in creation order (ties by id, an
/// id's text order), whatever order the rows were written and rewritten in.
fn load_gives_records_in_creation_order_then_by_id(b: &Backend) {
    let store = b.open();
    // Ids whose order disagrees with their creation times, and ties.
    let n = 60u64;
    let made = |k: u64| (k * 7919) % n;
    let services: Vec<ServiceRecord> = (0..n)
        .map(|k| {
            let mut s = service(made(k), &format!("s{k}"), ServiceState::Available);
            s.created_at = Timestamp(T0 + (k % 4) as i64);
            s
        })
        .collect();
    let instances: Vec<InstanceRecord> = (0..n)
        .map(|k| {
            let mut i = instance(made(k), services[k as usize].id, InstanceState::Available);
            i.created_at = Timestamp(T0 + (k % 3) as i64);
            i
        })
        .collect();
    let actions: Vec<ActionRecord> = (0..n)
        .map(|k| {
            let mut a = action(made(k), services[0].id, instances[0].id, ActionKind::Probe, ActionState::Pending);
            a.created_at = Timestamp(T0 + (k % 5) as i64);
            a
        })
        .collect();
    // Written in three commits, backwards, then half of them rewritten.
    for part in [2, 1, 0] {
        fn range<T: Clone>(v: &[T], part: usize) -> Vec<T> {
            v.iter().skip(part * 20).take(20).rev().cloned().collect()
        }
        store
            .commit(Changes {
                services: range(&services, part),
                instances: range(&instances, part),
                actions: range(&actions, part),
                ..Default::default()
            })
            .unwrap();
    }
    store
        .commit(Changes {
            services: services.iter().step_by(2).cloned().collect(),
            instances: instances.iter().step_by(2).cloned().collect(),
            actions: actions.iter().step_by(2).cloned().collect(),
            ..Default::default()
        })
        .unwrap();
    let loaded = store.load().unwrap();
    let order = |mut keys: Vec<(Timestamp, String)>| {
        keys.sort();
        keys
    };
    let got: Vec<_> = loaded.services.iter().map(|s| (s.created_at, s.id.to_string())).collect();
    assert_eq!(got, order(services.iter().map(|s| (s.created_at, s.id.to_string())).collect()));
    let got: Vec<_> = loaded.instances.iter().map(|i| (i.created_at, i.id.to_string())).collect();
    assert_eq!(got, order(instances.iter().map(|i| (i.created_at, i.id.to_string())).collect()));
    let got: Vec<_> = loaded.actions.iter().map(|a| (a.created_at, a.id.to_string())).collect();
    assert_eq!(got, order(actions.iter().map(|a| (a.created_at, a.id.to_string())).collect()));
}

on_both_stores!(
    load_gives_records_in_creation_order_then_by_id,
    commit_then_load_round_trips_every_record_exactly,
    records_written_before_hosts_existed_load_without_a_host,
    upsert_replaces_and_the_last_entry_for_an_id_wins,
    load_skips_deleted_services_terminated_instances_and_finished_actions,
    events_get_increasing_seq_across_commits_whatever_seq_they_carry,
    event_filters_by_service_instance_after_seq_and_limit,
    event_limit_defaults_to_1000_and_is_clamped,
    a_setting_is_absent_until_put_then_replaced_and_kept_across_a_reopen,
    audit_returns_the_most_recent_entries_in_ascending_seq,
    actions_are_listed_newest_first_and_filtered_by_service,
    concurrent_commits_all_succeed_are_grouped_and_store_each_event_once,
    a_record_that_does_not_decode_is_an_error_naming_table_and_id,
    a_database_migrated_by_a_newer_drover_is_refused,
    dropping_the_store_stops_the_writer_and_keeps_what_was_committed,
    kill_9_loses_no_acknowledged_batch_and_leaves_no_partial_one,
);
