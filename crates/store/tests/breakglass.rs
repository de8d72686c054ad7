//! The CVE audit's and the break-glass runbooks' tables, on both stores.
//! On PostgreSQL they are the shared store's: two nodes see one freeze,
//! and of two approvals racing through two nodes only one moves a run.

mod common;
use common::pg::PgServer;
use common::TempDir;
use drover_model::Timestamp;
use drover_store::breakglass::{AdvisoryCounts, AdvisoryRow, BreakGlassStore, RunRow};
use drover_store::{PgStore, SqliteStore};
use std::sync::Arc;

/// `a` and `b` are two handles on the same tables (two nodes, or one).
fn exercise(a: &BreakGlassStore, b: &BreakGlassStore) {
    assert_eq!(a.advisory_counts().unwrap(), AdvisoryCounts::default());
    let row = |id: &str, w: Option<i64>| AdvisoryRow {
        id: id.into(),
        modified: Timestamp(1),
        withdrawn: w.map(Timestamp),
        record: format!("{{\"id\":\"{id}\"}}"),
    };
    a.import_advisories(&[row("A", None), row("B", Some(2))], Timestamp(10), Timestamp(20), "ops").unwrap();
    b.import_advisories(&[row("A", Some(3))], Timestamp(5), Timestamp(30), "ops").unwrap();
    let c = a.advisory_counts().unwrap();
    assert_eq!((c.records, c.withdrawn), (2, 2), "a record is replaced by id");
    assert_eq!(c.fetched_at, Some(Timestamp(10)), "the freshest data, not the last import, says how old it is");
    assert_eq!(c.imported_at, Some(Timestamp(20)));
    assert_eq!(b.advisories().unwrap(), [r#"{"id":"A"}"#, r#"{"id":"B"}"#]);

    let mut run = RunRow {
        id: "r1".into(),
        runbook: "freeze-automation".into(),
        state: "awaiting_approval".into(),
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
        record: "{}".into(),
    };
    a.insert_run(&run).unwrap();
    assert!(b.insert_run(&run).is_err(), "a run id is taken once");
    run.state = "approved".into();
    run.updated_at = Timestamp(2);
    assert!(b.transition_run("awaiting_approval", &run).unwrap());
    assert!(!a.transition_run("awaiting_approval", &run).unwrap(), "the second approval moves nothing");
    assert_eq!(a.run("r1").unwrap(), Some(run.clone()));
    assert_eq!(a.run("r2").unwrap(), None);
    let mut later = run.clone();
    later.id = "r2".into();
    later.created_at = Timestamp(5);
    b.insert_run(&later).unwrap();
    let ids: Vec<String> = a.runs(10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["r2", "r1"], "newest first");
    assert_eq!(a.runs(1).unwrap().len(), 1);

    a.set_freeze("zone-a", true, Timestamp(1), "r1").unwrap();
    b.set_freeze("fleet", true, Timestamp(2), "r1").unwrap();
    a.set_freeze("fleet", true, Timestamp(9), "r2").unwrap();
    assert_eq!(b.freezes().unwrap(), ["zone-a", "fleet"], "a freeze is kept once, from its first run");
    b.set_freeze("zone-a", false, Timestamp(3), "r2").unwrap();
    assert_eq!(a.freezes().unwrap(), ["fleet"]);
}

#[test]
fn on_sqlite() {
    let dir = TempDir::new("breakglass");
    SqliteStore::open(&dir.db()).unwrap();
    let a = BreakGlassStore::open(&dir.db()).unwrap();
    let b = BreakGlassStore::open(&dir.db()).unwrap();
    exercise(&a, &b);
}

#[test]
fn on_postgres_shared_by_two_nodes() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let a = BreakGlassStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    let b = BreakGlassStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    exercise(&a, &b);
}
