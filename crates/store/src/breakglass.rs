//! The tables of the CVE audit and the break-glass runbooks in `drover.db`:
//! advisories and their imports, runbook runs, automation frozen by hand.
//! Writes are rare (an import, a run), so this keeps a connection of its
//! own beside the engine's writer, as the token store does. Records are
//! stored as JSON text; their types belong to the server and the
//! `drover-advisories` crate.

use crate::StoreError;
use drover_model::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// One advisory row to import.
#[derive(Clone, Debug)]
pub struct AdvisoryRow {
    pub id: String,
    pub modified: Timestamp,
    pub withdrawn: Option<Timestamp>,
    pub record: String,
}

/// What the advisory tables hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdvisoryCounts {
    pub records: u64,
    pub withdrawn: u64,
    /// The newest import's fetch time, and when it was imported.
    pub fetched_at: Option<Timestamp>,
    pub imported_at: Option<Timestamp>,
}

/// One runbook run row.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub runbook: String,
    pub state: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub record: String,
}

pub struct BreakGlassStore {
    conn: Mutex<Connection>,
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

fn row_to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        runbook: r.get(1)?,
        state: r.get(2)?,
        created_at: Timestamp(r.get(3)?),
        updated_at: Timestamp(r.get(4)?),
        record: r.get(5)?,
    })
}

const RUN_COLUMNS: &str = "id, runbook, state, created_at, updated_at, record";

impl BreakGlassStore {
    /// Opens `drover.db` (the migrations must have run: open it with
    /// [`crate::SqliteStore::open`] first).
    pub fn open(path: &Path) -> Result<BreakGlassStore, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db("setting the break-glass store's busy timeout"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db("setting synchronous=FULL"))?;
        Ok(BreakGlassStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the records (replacing those with the same id) and the
    /// import itself, in one transaction.
    pub fn import_advisories(
        &self,
        rows: &[AdvisoryRow],
        fetched_at: Timestamp,
        imported_at: Timestamp,
        actor: &str,
    ) -> Result<(), StoreError> {
        let write = db("importing advisories");
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&write)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO advisories (id, modified, withdrawn, imported_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO UPDATE SET modified = excluded.modified, withdrawn = excluded.withdrawn,
                     imported_at = excluded.imported_at, record = excluded.record",
                )
                .map_err(&write)?;
            for r in rows {
                stmt.execute(rusqlite::params![r.id, r.modified.0, r.withdrawn.map(|t| t.0), imported_at.0, r.record])
                    .map_err(&write)?;
            }
        }
        tx.execute(
            "INSERT INTO advisory_imports (fetched_at, imported_at, actor, records) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![fetched_at.0, imported_at.0, actor, rows.len() as i64],
        )
        .map_err(&write)?;
        tx.commit().map_err(&write)?;
        Ok(())
    }

    /// Every advisory record (JSON), by id.
    pub fn advisories(&self) -> Result<Vec<String>, StoreError> {
        let read = db("reading advisories");
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT record FROM advisories ORDER BY id").map_err(&read)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }

    pub fn advisory_counts(&self) -> Result<AdvisoryCounts, StoreError> {
        let read = db("counting advisories");
        let conn = self.conn();
        let (records, withdrawn): (i64, i64) = conn
            .query_row("SELECT COUNT(*), COUNT(withdrawn) FROM advisories", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&read)?;
        let last: Option<(i64, i64)> = conn
            .query_row(
                "SELECT fetched_at, imported_at FROM advisory_imports ORDER BY fetched_at DESC, seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(&read)?;
        Ok(AdvisoryCounts {
            records: records as u64,
            withdrawn: withdrawn as u64,
            fetched_at: last.map(|l| Timestamp(l.0)),
            imported_at: last.map(|l| Timestamp(l.1)),
        })
    }

    /// Stores a new run.
    pub fn insert_run(&self, run: &RunRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!("INSERT INTO runbook_runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                rusqlite::params![run.id, run.runbook, run.state, run.created_at.0, run.updated_at.0, run.record],
            )
            .map_err(db("storing a runbook run"))?;
        Ok(())
    }

    /// Moves a run from state `from` to the state and record of `run`;
    /// false (nothing written) if it is not in `from` any more: two
    /// approvals at once, only one goes through.
    pub fn transition_run(&self, from: &str, run: &RunRow) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE runbook_runs SET state = ?3, updated_at = ?4, record = ?5 WHERE id = ?1 AND state = ?2",
                rusqlite::params![run.id, from, run.state, run.updated_at.0, run.record],
            )
            .map_err(db("updating a runbook run"))?;
        Ok(n == 1)
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let read = db("reading a runbook run");
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runbook_runs WHERE id = ?1")).map_err(&read)?;
        stmt.query_row([id], row_to_run).optional().map_err(&read)
    }

    /// The newest runs first, at most `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let read = db("reading runbook runs");
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runbook_runs ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))
            .map_err(&read)?;
        let rows = stmt.query_map([limit.min(crate::MAX_READ_LIMIT) as i64], row_to_run).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }

    /// Records (or clears, `frozen: false`) automation frozen by hand.
    pub fn set_freeze(&self, scope: &str, frozen: bool, since: Timestamp, run: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let write = db("recording a freeze of automation");
        if frozen {
            conn.execute(
                "INSERT INTO automation_freezes (scope, since, run) VALUES (?1, ?2, ?3) ON CONFLICT (scope) DO NOTHING",
                rusqlite::params![scope, since.0, run],
            )
            .map_err(&write)?;
        } else {
            conn.execute("DELETE FROM automation_freezes WHERE scope = ?1", [scope]).map_err(&write)?;
        }
        Ok(())
    }

    /// Scopes frozen by hand, oldest first.
    pub fn freezes(&self) -> Result<Vec<String>, StoreError> {
        let read = db("reading freezes of automation");
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT scope FROM automation_freezes ORDER BY since, scope").map_err(&read)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_replace_by_id_and_only_one_of_two_racing_approvals_moves_a_run() {
        let dir = std::env::temp_dir().join(format!("drover-breakglass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drover.db");
        let _ = std::fs::remove_file(&path);
        crate::SqliteStore::open(&path).unwrap();
        let s = BreakGlassStore::open(&path).unwrap();
        assert_eq!(s.advisory_counts().unwrap(), AdvisoryCounts::default());
        let row = |id: &str, w: Option<i64>| AdvisoryRow {
            id: id.into(),
            modified: Timestamp(1),
            withdrawn: w.map(Timestamp),
            record: format!("{{\"id\":\"{id}\"}}"),
        };
        s.import_advisories(&[row("A", None), row("B", Some(2))], Timestamp(10), Timestamp(20), "ops").unwrap();
        s.import_advisories(&[row("A", Some(3))], Timestamp(5), Timestamp(30), "ops").unwrap();
        let c = s.advisory_counts().unwrap();
        assert_eq!((c.records, c.withdrawn), (2, 2));
        assert_eq!(c.fetched_at, Some(Timestamp(10)), "the freshest data, not the last import, says how old it is");
        assert_eq!(s.advisories().unwrap().len(), 2);

        let mut run = RunRow {
            id: "r1".into(),
            runbook: "freeze-automation".into(),
            state: "awaiting_approval".into(),
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            record: "{}".into(),
        };
        s.insert_run(&run).unwrap();
        run.state = "approved".into();
        assert!(s.transition_run("awaiting_approval", &run).unwrap());
        assert!(!s.transition_run("awaiting_approval", &run).unwrap());
        assert_eq!(s.run("r1").unwrap().unwrap().state, "approved");
        assert_eq!(s.runs(10).unwrap().len(), 1);

        s.set_freeze("zone-a", true, Timestamp(1), "r1").unwrap();
        s.set_freeze("fleet", true, Timestamp(2), "r1").unwrap();
        assert_eq!(s.freezes().unwrap(), ["zone-a", "fleet"]);
        s.set_freeze("zone-a", false, Timestamp(3), "r2").unwrap();
        assert_eq!(s.freezes().unwrap(), ["fleet"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
