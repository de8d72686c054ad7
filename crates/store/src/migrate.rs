//! `drover store migrate` (issue 16 item 7): a fleet kept in the embedded
//! SQLite store moved, table by table and row for row, into an empty
//! PostgreSQL store.
//!
//! Both schemas come from the same migrations (same versions, same tables
//! and columns): each side is opened by its own store first, so both are at
//! this release's version, and the copy refuses any difference it would
//! have to paper over (a table or a column on one side only, a value of
//! another type than its column). The SQLite side is read in one read
//! transaction (one snapshot of the whole file); the PostgreSQL side is
//! written in one transaction with binary `COPY` and checked (rows per
//! table) before it commits: a migration that fails leaves the target as
//! empty as it found it. The target must be empty: nothing is merged or
//! overwritten. Event sequence numbers are kept (readers page by them) and
//! the identity behind them continues after the highest.
//!
//! The caller holds the data dir's lock (no control plane writes the file
//! meanwhile) and marks the data dir afterwards ([`MOVED_MARKER`]).

use crate::StoreError;
use std::path::Path;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

/// A file in the data dir saying where its fleet went (JSON: `to`, `at`):
/// a control plane on the data dir's SQLite store refuses to start beside
/// it, so the fleet is never served twice.
pub const MOVED_MARKER: &str = "store-moved.json";

/// The migrations' bookkeeping: each side has its own, never copied.
const HISTORY: &str = "refinery_schema_history";

/// The pager's SQLite file beside `drover.db`: its tables are the
/// PostgreSQL store's too (V10), so they move with the fleet.
pub const ONCALL_DB: &str = "oncall.db";

/// Rows sent per `COPY` before the next read of the SQLite side.
const CHUNK: usize = 10_000;

/// What was moved: rows per table, in the order copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub tables: Vec<(String, u64)>,
    /// The target without its password: `user@host:port/db`.
    pub target: String,
}

impl MigrateReport {
    pub fn rows(&self, table: &str) -> u64 {
        self.tables.iter().find(|(t, _)| t == table).map_or(0, |(_, n)| *n)
    }
}

fn db(context: &'static str) -> impl Fn(String) -> StoreError {
    move |message| StoreError::Migrate { step: context, detail: message }
}

/// Moves everything in the SQLite store at `sqlite` into the empty
/// PostgreSQL store at `url` (see the module).
pub async fn sqlite_to_postgres(sqlite: &Path, url: &str) -> Result<MigrateReport, StoreError> {
    // Each store brings its schema to this release's version.
    let path = sqlite.to_path_buf();
    let pg_url = url.to_string();
    let target = tokio::task::spawn_blocking(move || -> Result<String, StoreError> {
        if !path.exists() {
            return Err(StoreError::Migrate {
                step: "opening the SQLite store",
                detail: format!("{} does not exist: nothing to migrate", path.display()),
            });
        }
        drop(crate::SqliteStore::open(&path)?);
        // The pager's tables live beside it (created empty if the pager
        // never ran, so there is always something to read).
        let oncall = path.with_file_name(ONCALL_DB);
        drop(crate::oncall::OncallStore::open(&oncall).map_err(|e| db("opening the on-call store")(e.to_string()))?);
        let pg = crate::PgStore::connect(&pg_url)?;
        Ok(pg.target().to_string())
    })
    .await
    .map_err(|e| db("opening the stores")(e.to_string()))??;

    let config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| db("parsing the PostgreSQL URL")(e.to_string()))?;
    let (mut client, connection) =
        config.connect(NoTls).await.map_err(|e| db("connecting to PostgreSQL")(e.to_string()))?;
    let conn_task = tokio::spawn(connection);
    let result = copy_all(sqlite, &mut client).await;
    drop(client);
    let _ = conn_task.await;
    Ok(MigrateReport { tables: result?, target })
}

async fn copy_all(sqlite: &Path, client: &mut tokio_postgres::Client) -> Result<Vec<(String, u64)>, StoreError> {
    let pg_err = db("copying into PostgreSQL");
    let lite_err = db("reading the SQLite store");
    let mut lite = rusqlite::Connection::open_with_flags(sqlite, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| lite_err(e.to_string()))?;
    // Read-only like the main file; one read transaction over both.
    let oncall = sqlite.with_file_name(ONCALL_DB);
    lite.execute("ATTACH DATABASE ?1 AS oncall", [oncall.to_string_lossy()]).map_err(|e| lite_err(e.to_string()))?;
    // One snapshot of the whole file.
    let lite_tx = lite.transaction().map_err(|e| lite_err(e.to_string()))?;
    let tx = client.transaction().await.map_err(|e| pg_err(e.to_string()))?;

    let pg_tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> $1 \
             ORDER BY table_name",
            &[&HISTORY],
        )
        .await
        .map_err(|e| pg_err(e.to_string()))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Each SQLite table with the schema (file) it is read from.
    let mut sources: std::collections::BTreeMap<String, &'static str> = std::collections::BTreeMap::new();
    for schema in ["main", "oncall"] {
        let mut stmt = lite_tx
            .prepare(&format!(
                "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 AND name <> ?1 ORDER BY name"
            ))
            .map_err(|e| lite_err(e.to_string()))?;
        let names = stmt
            .query_map([HISTORY], |r| r.get::<_, String>(0))
            .map_err(|e| lite_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| lite_err(e.to_string()))?;
        for name in names {
            if let Some(other) = sources.insert(name.clone(), schema) {
                return Err(StoreError::Migrate {
                    step: "comparing the schemas",
                    detail: format!("table {name} is in both drover.db and {ONCALL_DB} ({other}): nothing was copied"),
                });
            }
        }
    }
    let lite_tables: Vec<String> = sources.keys().cloned().collect();
    let source = |table: &str| format!("{}.{}", sources.get(table).copied().unwrap_or("main"), ident(table));
    if pg_tables != lite_tables {
        return Err(StoreError::Migrate {
            step: "comparing the schemas",
            detail: format!(
                "the two stores have different tables (SQLite: {lite_tables:?}; PostgreSQL: {pg_tables:?}): \
                 nothing was copied"
            ),
        });
    }

    // The target is empty, all of it: nothing is merged or overwritten.
    let mut not_empty = Vec::new();
    for table in &pg_tables {
        let row = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", ident(table)), &[])
            .await
            .map_err(|e| pg_err(e.to_string()))?;
        if row.get::<_, bool>(0) {
            not_empty.push(table.clone());
        }
    }
    if !not_empty.is_empty() {
        return Err(StoreError::Migrate {
            step: "checking the target",
            detail: format!(
                "the PostgreSQL store is not empty (rows in {}): migrate into a new, empty database; \
                 nothing was copied",
                not_empty.join(", ")
            ),
        });
    }

    let mut report = Vec::new();
    for table in &pg_tables {
        let columns: Vec<(String, Type)> = tx
            .query(
                "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(|e| pg_err(e.to_string()))?
            .iter()
            .map(|r| {
                let oid: u32 = r.get(1);
                (r.get::<_, String>(0), Type::from_oid(oid).unwrap_or(Type::UNKNOWN))
            })
            .collect();
        let lite_columns: Vec<String> = {
            let schema = sources.get(table.as_str()).copied().unwrap_or("main");
            let mut stmt = lite_tx
                .prepare(&format!("PRAGMA {schema}.table_info({})", ident(table)))
                .map_err(|e| lite_err(e.to_string()))?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(1))
                .map_err(|e| lite_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| lite_err(e.to_string()))?;
            names
        };
        let mut pg_names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
        let mut lite_names: Vec<&str> = lite_columns.iter().map(String::as_str).collect();
        pg_names.sort_unstable();
        lite_names.sort_unstable();
        if pg_names != lite_names {
            return Err(StoreError::Migrate {
                step: "comparing the schemas",
                detail: format!(
                    "table {table} has other columns in SQLite ({lite_names:?}) than in PostgreSQL \
                     ({pg_names:?}): nothing was copied"
                ),
            });
        }
        for (column, ty) in &columns {
            if *ty != Type::TEXT && *ty != Type::INT8 {
                return Err(StoreError::Migrate {
                    step: "comparing the schemas",
                    detail: format!("column {table}.{column} is of type {ty}, which this release does not copy"),
                });
            }
        }
        let copied = copy_table(&lite_tx, &tx, table, &source(table), &columns).await?;
        // The identity behind `events.seq` (and any other) continues after
        // the highest copied value.
        for (column, _) in &columns {
            let seq = tx
                .query_one("SELECT pg_get_serial_sequence($1, $2)", &[&ident(table), &column])
                .await
                .map_err(|e| pg_err(e.to_string()))?;
            if let Some(seq) = seq.get::<_, Option<String>>(0) {
                if copied > 0 {
                    tx.execute(
                        &format!(
                            "SELECT setval($1::text::regclass, (SELECT max({}) FROM {}))",
                            ident(column),
                            ident(table)
                        ),
                        &[&seq],
                    )
                    .await
                    .map_err(|e| pg_err(e.to_string()))?;
                }
            }
        }
        let counted = tx
            .query_one(&format!("SELECT count(*) FROM {}", ident(table)), &[])
            .await
            .map_err(|e| pg_err(e.to_string()))?
            .get::<_, i64>(0);
        let in_sqlite: i64 = lite_tx
            .query_row(&format!("SELECT count(*) FROM {}", source(table)), [], |r| r.get(0))
            .map_err(|e| lite_err(e.to_string()))?;
        if counted != in_sqlite || counted as u64 != copied {
            return Err(StoreError::Migrate {
                step: "checking the copy",
                detail: format!(
                    "table {table}: {in_sqlite} rows in SQLite, {copied} sent, {counted} in PostgreSQL: rolled back"
                ),
            });
        }
        report.push((table.clone(), copied));
    }
    tx.commit().await.map_err(|e| pg_err(e.to_string()))?;
    Ok(report)
}

/// One table's rows, in chunks of [`CHUNK`] by rowid, through binary COPY.
async fn copy_table(
    lite: &rusqlite::Transaction<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    source: &str,
    columns: &[(String, Type)],
) -> Result<u64, StoreError> {
    let lite_err = db("reading the SQLite store");
    let pg_err = db("copying into PostgreSQL");
    let list = columns.iter().map(|(c, _)| ident(c)).collect::<Vec<_>>().join(", ");
    let types: Vec<Type> = columns.iter().map(|(_, t)| t.clone()).collect();
    let select = format!("SELECT rowid, {list} FROM {source} WHERE rowid > ?1 ORDER BY rowid LIMIT {CHUNK}");
    let mut after: i64 = i64::MIN;
    let mut copied = 0u64;
    loop {
        let mut rows: Vec<Vec<Value>> = Vec::new();
        {
            let mut stmt = lite.prepare_cached(&select).map_err(|e| lite_err(e.to_string()))?;
            let mut cursor = stmt.query([after]).map_err(|e| lite_err(e.to_string()))?;
            while let Some(row) = cursor.next().map_err(|e| lite_err(e.to_string()))? {
                after = row.get(0).map_err(|e| lite_err(e.to_string()))?;
                let mut values = Vec::with_capacity(columns.len());
                for (k, (column, ty)) in columns.iter().enumerate() {
                    let raw = row.get_ref(k + 1).map_err(|e| lite_err(e.to_string()))?;
                    values.push(Value::of(raw, ty).ok_or_else(|| StoreError::Migrate {
                        step: "reading the SQLite store",
                        detail: format!(
                            "{table}.{column} of row {after} holds a {} where PostgreSQL takes {ty}: nothing was \
                             copied",
                            raw.data_type()
                        ),
                    })?);
                }
                rows.push(values);
            }
        }
        if rows.is_empty() {
            return Ok(copied);
        }
        let sink = tx
            .copy_in(&format!("COPY {} ({list}) FROM STDIN (FORMAT binary)", ident(table)))
            .await
            .map_err(|e| pg_err(e.to_string()))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        for values in &rows {
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::as_sql).collect();
            writer.as_mut().write(&params).await.map_err(|e| pg_err(format!("table {table}: {e}")))?;
        }
        copied += writer.finish().await.map_err(|e| pg_err(format!("table {table}: {e}")))?;
    }
}

/// One SQLite value, as its PostgreSQL column takes it.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Value {
    fn of(raw: rusqlite::types::ValueRef<'_>, ty: &Type) -> Option<Value> {
        use rusqlite::types::ValueRef;
        Some(match (raw, ty) {
            (ValueRef::Null, t) if *t == Type::TEXT => Value::Text(None),
            (ValueRef::Null, _) => Value::Int(None),
            (ValueRef::Text(t), ty) if *ty == Type::TEXT => Value::Text(Some(String::from_utf8(t.to_vec()).ok()?)),
            (ValueRef::Integer(n), ty) if *ty == Type::INT8 => Value::Int(Some(n)),
            _ => return None,
        })
    }
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Text(t) => t,
            Value::Int(n) => n,
        }
    }
}

/// A table or column name as a quoted identifier (the names come from the
/// schemas themselves; quoting keeps any of them harmless).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
