//! Stable event ids: a retried append of an event the store already holds is
//! ignored, and databases written before ids existed keep working.

mod common;
use common::{Backend, TempDir};
use drover_model::{Changes, Event, EventId, EventKind, EventSubject, Timestamp};
use drover_store::{EventFilter, SqliteStore, Store};

mod embedded {
    refinery::embed_migrations!("migrations");
}

fn event(id: EventId, cause: &str) -> Event {
    Event {
        id,
        seq: 0,
        at: Timestamp(1_763_700_000_000_000),
        subject: EventSubject::Service,
        service: Some("orders".into()),
        service_id: None,
        instance: None,
        action: None,
        from: Some("available".into()),
        to: Some("degraded".into()),
        cause: cause.into(),
        kind: EventKind::Transition,
        team: Some("db".into()),
    }
}

fn events(store: &dyn Store) -> Vec<Event> {
    store.events(&EventFilter::default()).unwrap()
}

fn a_retried_append_writes_each_event_once_and_keeps_its_first_seq(b: &Backend) {
    let store = b.open();
    let batch: Vec<Event> = (1..=3).map(|n| event(EventId::mint(42, n), &format!("e{n}"))).collect();
    store.commit(Changes { events: batch.clone(), ..Default::default() }).unwrap();
    let first = events(&*store);
    assert_eq!(first.len(), 3);

    // The same batch again (a commit whose answer was lost and is retried),
    // this time with a new event after it: only the new one is appended.
    let mut retry = batch.clone();
    retry.push(event(EventId::mint(42, 4), "e4"));
    store.commit(Changes { events: retry, ..Default::default() }).unwrap();
    let after = events(&*store);
    assert_eq!(after.iter().map(|e| e.cause.as_str()).collect::<Vec<_>>(), ["e1", "e2", "e3", "e4"]);
    assert_eq!(&after[..3], &first[..], "the first copies keep their seqs and content");
    assert_eq!(after[3].id, EventId::mint(42, 4));

    // Across a reopen too: the index is on disk.
    drop(store);
    let store = b.open();
    store.commit(Changes { events: batch, ..Default::default() }).unwrap();
    assert_eq!(events(&*store).len(), 4);
}

fn a_duplicate_within_one_commit_is_written_once(b: &Backend) {
    let store = b.open();
    let id = EventId::mint(7, 1);
    store.commit(Changes { events: vec![event(id, "first"), event(id, "again")], ..Default::default() }).unwrap();
    let all = events(&*store);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].cause, "first");
}

fn events_without_an_id_are_always_appended(b: &Backend) {
    let store = b.open();
    for _ in 0..2 {
        store.commit(Changes { events: vec![event(EventId::UNSET, "no id")], ..Default::default() }).unwrap();
    }
    assert_eq!(events(&*store).len(), 2);
}

#[test]
fn a_database_from_before_event_ids_migrates_and_its_old_events_read_with_no_id() {
    let dir = TempDir::new("old-db");
    {
        // The schema as the previous Drover left it (migration 1 only), with
        // an event as it stored them (no id in the record).
        let mut conn = rusqlite::Connection::open(dir.db()).unwrap();
        embedded::migrations::runner().set_target(refinery::Target::Version(1)).run(&mut conn).unwrap();
        let old = r#"{"seq":0,"at":5,"subject":"fleet","service":null,"service_id":null,"instance":null,
            "action":null,"from":null,"to":"running","cause":"control plane started"}"#;
        conn.execute("INSERT INTO events (at, service, instance_id, record) VALUES (5, NULL, NULL, ?1)", [old])
            .unwrap();
    }
    let store = SqliteStore::open(&dir.db()).unwrap();
    let id = EventId::mint(9, 1);
    for _ in 0..2 {
        store.commit(Changes { events: vec![event(id, "new")], ..Default::default() }).unwrap();
    }
    let all = events(&store);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[0].id, all[0].cause.as_str()), (EventId::UNSET, "control plane started"));
    assert_eq!((all[1].id, all[1].cause.as_str()), (id, "new"));
}

fn engine_starts_and_their_seeds_survive_a_reopen(b: &Backend) {
    let store = b.open();
    assert_eq!(store.last_event_seq().unwrap(), 0);
    let first = drover_store::EngineStart { at: Timestamp(10), seed: u64::MAX - 3 };
    store.record_start(first).unwrap();
    store.commit(Changes { events: vec![event(EventId::mint(1, 1), "e")], ..Default::default() }).unwrap();
    drop(store);
    let store = b.open();
    let second = drover_store::EngineStart { at: Timestamp(20), seed: 7 };
    store.record_start(second).unwrap();
    assert_eq!(store.engine_starts().unwrap(), vec![first, second]);
    assert_eq!(store.last_event_seq().unwrap(), events(&*store)[0].seq);
}

on_both_stores!(
    a_retried_append_writes_each_event_once_and_keeps_its_first_seq,
    a_duplicate_within_one_commit_is_written_once,
    events_without_an_id_are_always_appended,
    engine_starts_and_their_seeds_survive_a_reopen,
);
