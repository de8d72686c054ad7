//! Replay: a real server (sim provider) runs through some activity with
//! `--input-log`; a fresh engine given the seed the store recorded and the
//! logged inputs, in order and at their times, produces exactly the events
//! the server's store holds (ids and times included).

mod common;

use drover_engine::{Engine, Input};
use drover_model::{EngineKind, Event, Snapshot};
use drover_server::runtime::{read_input_log, LogLine};
use drover_store::{EventFilter, SqliteStore, Store, MAX_READ_LIMIT};
use serde_json::json;
use std::time::Duration;

/// Every event of the store, in seq order.
fn stored_events(store: &dyn Store) -> Vec<Event> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let filter =
            EventFilter { after_seq: all.last().map(|e| e.seq), limit: Some(MAX_READ_LIMIT), ..Default::default() };
        let page = store.events(&filter).unwrap();
        let done = page.len() < MAX_READ_LIMIT;
        all.extend(page);
        if done {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_seed_and_input_log_reproduce_its_event_log_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("inputs.jsonl");
    let data_dir = tempfile::TempDir::new_in(dir.path()).unwrap();
    let opts_log = log.clone();
    let mut t = common::start_in(data_dir, move |o| o.input_log = Some(opts_log)).await;

    // Some activity: two services built, a primary crashed and replaced by a
    // failover, a planned switchover, a service deleted.
    t.create_service("alpha", 1).await;
    t.create_service("beta", 1).await;
    let alpha = t.wait_available("alpha", Duration::from_secs(20)).await;
    t.wait_available("beta", Duration::from_secs(20)).await;
    let old_primary = common::primary(&alpha)["id"].clone();
    let (status, body) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    common::poll(Duration::from_secs(30), "alpha fails over", || async {
        let s = t.service("alpha").await;
        let p = common::primary(&s);
        (p["id"] != old_primary && p["state"] == "available").then_some(())
    })
    .await;
    let (status, body) = t.post("/v1/services/beta/switchover", json!({})).await;
    assert!(status == 200 || status == 202, "switchover: {status} {body}");
    let (status, body) = t.delete("/v1/services/beta").await;
    assert!(status == 200 || status == 202, "delete: {status} {body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = t.dir.path().join("drover.db");
    t.server.take().unwrap().stop().await.unwrap();

    // What the server recorded: its seed in the store, its inputs in the log
    // (DROVER_TEST_STORE=postgres: its PostgreSQL store, connected on a
    // thread of its own, as it runs its own runtime).
    let store: Box<dyn Store> = match &t.pg {
        Some(pg) => {
            let url = pg.url("postgres");
            Box::new(std::thread::spawn(move || drover_store::PgStore::connect(&url).unwrap()).join().unwrap())
        }
        None => Box::new(SqliteStore::open(&db).unwrap()),
    };
    let starts = store.engine_starts().unwrap();
    assert_eq!(starts.len(), 1, "one start: {starts:?}");
    let stored = stored_events(store.as_ref());
    assert!(stored.len() > 20, "too little activity to prove anything: {} events", stored.len());
    let lines = read_input_log(&log).unwrap();
    let (at, seed) = match lines.first() {
        Some(LogLine::Start { at, seed }) => (*at, *seed),
        other => panic!("the log starts with the engine's start, not {other:?}"),
    };
    assert_eq!((at, seed), (starts[0].at, starts[0].seed), "the log and the store name the same start");

    // A fresh engine, configured as the server configures it for the sim
    // provider alone (`lib.rs`, start_up), replays them.
    let mut config = common::fast_options(dir.path()).engine;
    config.providers = vec!["sim".into()];
    config.provider_engines =
        [("sim".to_string(), vec![EngineKind::Postgres, EngineKind::Redis, EngineKind::Kafka])].into();
    let (mut engine, restored) = Engine::restore(config, seed, Snapshot::default(), at);
    let mut replayed = restored.changes.events;
    let (mut commands, mut results, mut ticks) = (0, 0, 0);
    for line in lines.into_iter().skip(1) {
        match line {
            LogLine::Input { at, input } => {
                match &input {
                    Input::Command { .. } => commands += 1,
                    Input::ActionResult { .. } => results += 1,
                    Input::Tick => ticks += 1,
                    _ => {}
                }
                replayed.extend(engine.step(input, at).changes.events);
            }
            LogLine::Start { .. } => panic!("one start only"),
        }
    }
    assert!(
        commands >= 5 && results >= 4 && ticks >= 1,
        "logged {commands} commands, {results} results, {ticks} ticks"
    );

    let stored: Vec<Event> = stored.into_iter().map(|e| Event { seq: 0, ..e }).collect();
    assert_eq!(replayed.len(), stored.len(), "as many events replayed as stored");
    for (n, (r, s)) in replayed.iter().zip(&stored).enumerate() {
        assert_eq!(r, s, "event #{n} differs");
    }
}
