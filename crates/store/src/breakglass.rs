//! The tables of the CVE audit and the break-glass runbooks in `drover.db`:
//! advisories and their imports, runbook runs, automation frozen by hand.
//! Writes are rare (an import, a run), so this keeps a connection of its
//! own beside the engine's writer, as the token store does. Records are
//! stored as JSON text; their types belong to the server and the
//! `drover-advisories` crate.
//!
//! With a PostgreSQL store (several nodes, issue 16) the same tables are
//! the shared store's ([`BreakGlassStore::postgres`]): a freeze made
//! through one node holds on the node that takes the fleet over, and a run
//! approved on one cannot be approved again on another.

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
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(std::sync::Arc<crate::PgStore>),
}

fn pg_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres { operation, detail: crate::pg::pg_detail(&e) }
}

fn pg_run(r: &tokio_postgres::Row) -> RunRow {
    RunRow {
        id: r.get(0),
        runbook: r.get(1),
        state: r.get(2),
        created_at: Timestamp(r.get(3)),
        updated_at: Timestamp(r.get(4)),
        record: r.get(5),
    }
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
        Ok(BreakGlassStore { backend: Backend::Sqlite(Mutex::new(conn)) })
    }

    /// The tables of the PostgreSQL store `store` (its migrations made them).
    pub fn postgres(store: std::sync::Arc<crate::PgStore>) -> BreakGlassStore {
        BreakGlassStore { backend: Backend::Postgres(store) }
    }

    /// The SQLite connection, or the PostgreSQL store.
    fn sqlite(&self) -> Result<std::sync::MutexGuard<'_, Connection>, &crate::PgStore> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Postgres(pg) => Err(pg),
        }
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
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_import(pg, rows.to_vec(), fetched_at, imported_at, actor.to_string()),
        };
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return pg.with_client(|client| async move {
                    let rows = client
                        .query("SELECT record FROM advisories ORDER BY id", &[])
                        .await
                        .map_err(pg_error("reading advisories"))?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
            }
        };
        let mut stmt = conn.prepare_cached("SELECT record FROM advisories ORDER BY id").map_err(&read)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }

    pub fn advisory_counts(&self) -> Result<AdvisoryCounts, StoreError> {
        let read = db("counting advisories");
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_counts(pg),
        };
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let (run, holder) = (run.clone(), pg.holder());
                return pg.with_client(move |mut client| async move {
                    let write = pg_error("storing a runbook run");
                    let tx = client.transaction().await.map_err(&write)?;
                    crate::pg::check_lease(&tx, holder.as_ref()).await?;
                    tx.execute(
                        &format!("INSERT INTO runbook_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                        &[&run.id, &run.runbook, &run.state, &run.created_at.0, &run.updated_at.0, &run.record],
                    )
                    .await
                    .map_err(&write)?;
                    tx.commit().await.map_err(&write)
                });
            }
        };
        conn.execute(
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let (run, from, holder) = (run.clone(), from.to_string(), pg.holder());
                return pg.with_client(move |mut client| async move {
                    let write = pg_error("updating a runbook run");
                    let tx = client.transaction().await.map_err(&write)?;
                    crate::pg::check_lease(&tx, holder.as_ref()).await?;
                    let n = tx
                        .execute(
                            "UPDATE runbook_runs SET state = $3, updated_at = $4, record = $5 WHERE id = $1 AND state = $2",
                            &[&run.id, &from, &run.state, &run.updated_at.0, &run.record],
                        )
                        .await
                        .map_err(&write)?;
                    tx.commit().await.map_err(&write)?;
                    Ok(n == 1)
                });
            }
        };
        let n = conn
            .execute(
                "UPDATE runbook_runs SET state = ?3, updated_at = ?4, record = ?5 WHERE id = ?1 AND state = ?2",
                rusqlite::params![run.id, from, run.state, run.updated_at.0, run.record],
            )
            .map_err(db("updating a runbook run"))?;
        Ok(n == 1)
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let read = db("reading a runbook run");
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let id = id.to_string();
                return pg.with_client(move |client| async move {
                    let row = client
                        .query_opt(&format!("SELECT {RUN_COLUMNS} FROM runbook_runs WHERE id = $1"), &[&id])
                        .await
                        .map_err(pg_error("reading a runbook run"))?;
                    Ok(row.as_ref().map(pg_run))
                });
            }
        };
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runbook_runs WHERE id = ?1")).map_err(&read)?;
        stmt.query_row([id], row_to_run).optional().map_err(&read)
    }

    /// The newest runs first, at most `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let read = db("reading runbook runs");
        let limit = limit.min(crate::MAX_READ_LIMIT) as i64;
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return pg.with_client(move |client| async move {
                    let rows = client
                        .query(
                            &format!(
                                "SELECT {RUN_COLUMNS} FROM runbook_runs ORDER BY created_at DESC, id DESC LIMIT $1"
                            ),
                            &[&limit],
                        )
                        .await
                        .map_err(pg_error("reading runbook runs"))?;
                    Ok(rows.iter().map(pg_run).collect())
                });
            }
        };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runbook_runs ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))
            .map_err(&read)?;
        let rows = stmt.query_map([limit], row_to_run).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }

    /// Records (or clears, `frozen: false`) automation frozen by hand.
    pub fn set_freeze(&self, scope: &str, frozen: bool, since: Timestamp, run: &str) -> Result<(), StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let (scope, run, holder) = (scope.to_string(), run.to_string(), pg.holder());
                return pg.with_client(move |mut client| async move {
                    let write = pg_error("recording a freeze of automation");
                    let tx = client.transaction().await.map_err(&write)?;
                    crate::pg::check_lease(&tx, holder.as_ref()).await?;
                    if frozen {
                        tx.execute(
                            "INSERT INTO automation_freezes (scope, since, run) VALUES ($1, $2, $3) \
                                 ON CONFLICT (scope) DO NOTHING",
                            &[&scope, &since.0, &run],
                        )
                        .await
                        .map_err(&write)?;
                    } else {
                        tx.execute("DELETE FROM automation_freezes WHERE scope = $1", &[&scope])
                            .await
                            .map_err(&write)?;
                    }
                    tx.commit().await.map_err(&write)
                });
            }
        };
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return pg.with_client(|client| async move {
                    let rows = client
                        .query("SELECT scope FROM automation_freezes ORDER BY since, scope", &[])
                        .await
                        .map_err(pg_error("reading freezes of automation"))?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                });
            }
        };
        let mut stmt =
            conn.prepare_cached("SELECT scope FROM automation_freezes ORDER BY since, scope").map_err(&read)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&read)
    }
}

fn pg_import(
    pg: &crate::PgStore,
    rows: Vec<AdvisoryRow>,
    fetched_at: Timestamp,
    imported_at: Timestamp,
    actor: String,
) -> Result<(), StoreError> {
    pg.with_client(move |mut client| async move {
        let write = pg_error("importing advisories");
        let tx = client.transaction().await.map_err(&write)?;
        let upsert = tx
            .prepare(
                "INSERT INTO advisories (id, modified, withdrawn, imported_at, record) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET modified = excluded.modified, withdrawn = excluded.withdrawn, \
                 imported_at = excluded.imported_at, record = excluded.record",
            )
            .await
            .map_err(&write)?;
        for r in &rows {
            let withdrawn = r.withdrawn.map(|t| t.0);
            tx.execute(&upsert, &[&r.id, &r.modified.0, &withdrawn, &imported_at.0, &r.record])
                .await
                .map_err(&write)?;
        }
        tx.execute(
            "INSERT INTO advisory_imports (fetched_at, imported_at, actor, records) VALUES ($1, $2, $3, $4)",
            &[&fetched_at.0, &imported_at.0, &actor, &(rows.len() as i64)],
        )
        .await
        .map_err(&write)?;
        tx.commit().await.map_err(&write)
    })
}

fn pg_counts(pg: &crate::PgStore) -> Result<AdvisoryCounts, StoreError> {
    pg.with_client(|client| async move {
        let read = pg_error("counting advisories");
        let counts = client.query_one("SELECT COUNT(*), COUNT(withdrawn) FROM advisories", &[]).await.map_err(&read)?;
        let (records, withdrawn): (i64, i64) = (counts.get(0), counts.get(1));
        let last = client
            .query_opt(
                "SELECT fetched_at, imported_at FROM advisory_imports ORDER BY fetched_at DESC, seq DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(&read)?;
        let last: Option<(i64, i64)> = last.map(|r| (r.get(0), r.get(1)));
        Ok(AdvisoryCounts {
            records: records as u64,
            withdrawn: withdrawn as u64,
            fetched_at: last.map(|l| Timestamp(l.0)),
            imported_at: last.map(|l| Timestamp(l.1)),
        })
    })
}
