//! The embedded backend: one SQLite file in WAL mode, one writer thread with
//! its own connection, and one read connection so reads never wait for a
//! commit (WAL lets a reader see the last committed state while the writer
//! appends).

use crate::rows::{self, decode};
use crate::writer::{self, Request, WriterStats};
use crate::{EngineStart, EventFilter, Log, LogRow, Store, StoreError, DEFAULT_EVENT_LIMIT, MAX_READ_LIMIT};
use drover_model::{
    ActionRecord, ActionState, AuditEntry, Changes, Event, HostRecord, Image, InstanceRecord, InstanceState,
    RolloutMember, RolloutRecord, ServiceId, ServiceRecord, ServiceState, Snapshot, Timestamp,
};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long a connection waits for a lock held by another connection before
/// failing. Our own writer is the only writer, so this only covers brief
/// WAL-index locks around checkpoints and the first open of the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts of [`SqliteStore::writer_counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterCounters {
    /// Transactions committed.
    pub transactions: u64,
    /// Caller batches those transactions held.
    pub batches: u64,
}

pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while dropping: dropping the sender ends the writer loop.
    queue: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn is_not_a_database(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::NotADatabase)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, sets WAL mode and
    /// `synchronous=FULL`, runs the migrations and starts the writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let owned = path.to_path_buf();
        let setup = |step: &'static str| {
            let path = owned.clone();
            move |source: rusqlite::Error| {
                if is_not_a_database(&source) {
                    StoreError::NotADatabase { path }
                } else {
                    StoreError::Setup { path, step, detail: source.to_string() }
                }
            }
        };

        let mut conn = Connection::open(path).map_err(|source| {
            if is_not_a_database(&source) {
                StoreError::NotADatabase { path: owned.clone() }
            } else {
                StoreError::Open { path: owned.clone(), source }
            }
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(setup("setting the busy timeout"))?;
        // Setting the journal mode reads the file header: this is where a
        // file that is not a database is found out.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(setup("switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Setup {
                path: owned,
                step: "switching to WAL mode",
                detail: format!("SQLite kept journal mode {mode:?}; the file system may not support the shared memory WAL needs (network file systems often do not): use a local disk"),
            });
        }
        // FULL, not NORMAL. In WAL mode NORMAL already survives kill -9 (a
        // commit is in the OS page cache once written), but it skips the fsync
        // of the WAL at each commit, so a power loss or kernel crash can undo
        // commits we already acknowledged -- and an acknowledged commit is
        // what lets the engine dispatch a failover or tell an operator "done".
        // FULL fsyncs the WAL at every commit. Group commit pays that one
        // fsync per group, not per caller, which is what makes FULL affordable
        // (CRATES.md measured ~4k single-row commits/s with FULL).
        conn.pragma_update(None, "synchronous", "FULL").map_err(setup("setting synchronous=FULL"))?;
        // No foreign keys in the schema; set explicitly so nobody relies on them.
        conn.pragma_update(None, "foreign_keys", false).map_err(setup("disabling foreign keys"))?;

        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|source| StoreError::Migration { path: owned.clone(), source })?;

        // The read connection opens after the migrations, so it sees the schema.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|source| StoreError::Open { path: owned.clone(), source })?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(setup("setting the reader's busy timeout"))?;
        // Belt and braces: only the writer thread may write.
        reader.pragma_update(None, "query_only", true).map_err(setup("making the reader read-only"))?;

        let (queue, requests) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("drover-store-writer".into())
            .spawn(move || writer::run(conn, requests, writer_stats))
            .map_err(|e| StoreError::Setup {
                path: owned.clone(),
                step: "starting the writer thread",
                detail: e.to_string(),
            })?;

        tracing::info!(path = %owned.display(), "store opened");
        Ok(SqliteStore { path: owned, queue: Some(queue), writer: Some(writer), reader: Mutex::new(reader), stats })
    }

    /// The database file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection half-used
        // (statements are finalized on unwind), so a poisoned lock is usable.
        self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the writer has done since open: for metrics (batches per
    /// transaction shows how much group commit saves) and tests.
    pub fn writer_counters(&self) -> WriterCounters {
        WriterCounters {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Dropping the only sender makes the writer's recv fail once the queue
        // is empty; it then returns and we wait for it.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(path = %self.path.display(), "the store writer thread panicked");
            }
        }
    }
}

fn database(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

/// Reads `(id, record)` rows and decodes each record.
fn load_records<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    table: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let read = database("loading the live state");
    let mut stmt = conn.prepare_cached(sql).map_err(&read)?;
    let mut rows = stmt.query(params).map_err(&read)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(&read)? {
        let id: String = row.get(0).map_err(&read)?;
        let record: String = row.get(1).map_err(&read)?;
        out.push(decode(table, &id, &record)?);
    }
    Ok(out)
}

fn clamp_limit(limit: usize) -> i64 {
    limit.min(MAX_READ_LIMIT) as i64
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.reader();
        // One read transaction: the four tables come from the same commit.
        let tx = conn.transaction().map_err(database("starting to load the live state"))?;
        let services: Vec<ServiceRecord> = load_records(
            &tx,
            "services",
            "SELECT id, record FROM services WHERE state != ?1 ORDER BY created_at, id",
            [ServiceState::Deleted.as_str()],
        )?;
        let instances: Vec<InstanceRecord> = load_records(
            &tx,
            "instances",
            "SELECT id, record FROM instances WHERE state != ?1 ORDER BY created_at, id",
            [InstanceState::Terminated.as_str()],
        )?;
        let actions: Vec<ActionRecord> = load_records(
            &tx,
            "actions",
            "SELECT id, record FROM actions WHERE state IN (?1, ?2) ORDER BY created_at, id",
            [ActionState::Pending.as_str(), ActionState::Running.as_str()],
        )?;
        let images: Vec<Image> =
            load_records(&tx, "images", "SELECT id, record FROM images ORDER BY created_at, id", [])?;
        let rollouts: Vec<RolloutRecord> =
            load_records(&tx, "rollouts", "SELECT id, record FROM rollouts ORDER BY created_at, id", [])?;
        let rollout_members: Vec<RolloutMember> = load_records(
            &tx,
            "rollout_services",
            "SELECT m.service_id, m.record FROM rollout_services m JOIN rollouts r ON r.id = m.rollout_id
             WHERE r.state NOT IN ('succeeded', 'aborted', 'failed') ORDER BY m.rollout_id, m.position",
            [],
        )?;
        let hosts: Vec<HostRecord> =
            load_records(&tx, "hosts", "SELECT name, record FROM hosts ORDER BY registered_at, name", [])?;
        let archives: Vec<drover_model::ArchiveRecord> =
            load_records(&tx, "archives", "SELECT id, record FROM archives ORDER BY created_at, id", [])?;
        tx.finish().map_err(database("finishing the load"))?;
        Ok(Snapshot { services, instances, actions, images, rollouts, rollout_members, hosts, archives })
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let batch = rows::encode(&changes)?;
        let (reply, answer) = mpsc::sync_channel(1);
        let queue = self.queue.as_ref().ok_or(StoreError::WriterStopped)?;
        queue.send(Request { batch, slots: Vec::new(), reply }).map_err(|_| StoreError::WriterStopped)?;
        // The writer drops `reply` unanswered only if it died mid-group.
        answer.recv().map_err(|_| StoreError::WriterStopped)?
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let limit = clamp_limit(filter.limit.unwrap_or(DEFAULT_EVENT_LIMIT));
        let after = filter.after_seq.map_or(0, |s| s.min(i64::MAX as u64) as i64);
        // Built from fixed fragments so each filter uses its own index.
        let mut sql = String::from("SELECT seq, record FROM events WHERE seq > ?");
        let mut params: Vec<Value> = vec![Value::Integer(after)];
        if let Some(service) = &filter.service {
            sql.push_str(" AND service = ?");
            params.push(Value::Text(service.clone()));
        }
        if let Some(instance) = &filter.instance {
            sql.push_str(" AND instance_id = ?");
            params.push(Value::Text(instance.to_string()));
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        params.push(Value::Integer(limit));

        let read = database("reading events");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql).map_err(&read)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(&read)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(&read)? {
            let seq: i64 = row.get(0).map_err(&read)?;
            let record: String = row.get(1).map_err(&read)?;
            out.push(rows::decode_event(seq, &record)?);
        }
        Ok(out)
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let read = database("reading the audit trail");
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT seq, record FROM audit ORDER BY seq DESC LIMIT ?1").map_err(&read)?;
        let mut rows = stmt.query([clamp_limit(limit)]).map_err(&read)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(&read)? {
            let seq: i64 = row.get(0).map_err(&read)?;
            let record: String = row.get(1).map_err(&read)?;
            out.push(rows::decode_audit(seq, &record)?);
        }
        out.reverse();
        Ok(out)
    }

    fn actions(&self, service: Option<ServiceId>, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let read = database("reading actions");
        let conn = self.reader();
        let limit = clamp_limit(limit);
        // UUID v7 text sorts by creation time, so `id` breaks ties in order.
        let mut stmt;
        let mut rows = match service {
            Some(service) => {
                stmt = conn
                    .prepare_cached(
                        "SELECT id, record FROM actions WHERE service_id = ?1
                         ORDER BY created_at DESC, id DESC LIMIT ?2",
                    )
                    .map_err(&read)?;
                stmt.query(rusqlite::params![service.to_string(), limit]).map_err(&read)?
            }
            None => {
                stmt = conn
                    .prepare_cached("SELECT id, record FROM actions ORDER BY created_at DESC, id DESC LIMIT ?1")
                    .map_err(&read)?;
                stmt.query([limit]).map_err(&read)?
            }
        };
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(&read)? {
            let id: String = row.get(0).map_err(&read)?;
            let record: String = row.get(1).map_err(&read)?;
            out.push(decode("actions", &id, &record)?);
        }
        Ok(out)
    }

    fn last_event_seq(&self) -> Result<u64, StoreError> {
        let read = database("reading the newest event's seq");
        let seq: i64 =
            self.reader().query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)).map_err(read)?;
        rows::seq_from_column("events", seq)
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let read = database("reading a setting");
        self.reader()
            .query_row("SELECT value FROM cluster_settings WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(read)
    }

    fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        // Its own connection, as `record_start`: not behind the writer's queue.
        let write = database("putting a setting");
        let conn = Connection::open(&self.path).map_err(&write)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&write)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(&write)?;
        conn.execute(
            "INSERT INTO cluster_settings (name, value) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            rusqlite::params![name, value],
        )
        .map_err(&write)?;
        Ok(())
    }

    fn record_start(&self, start: EngineStart) -> Result<(), StoreError> {
        // Its own connection: this happens once per start, before the engine
        // commits anything, and must not wait behind the writer's queue.
        let write = database("recording the engine's start");
        let conn = Connection::open(&self.path).map_err(&write)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&write)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(&write)?;
        conn.execute(
            "INSERT INTO engine_starts (at, seed) VALUES (?1, ?2)",
            rusqlite::params![start.at.micros(), start.seed as i64],
        )
        .map_err(&write)?;
        Ok(())
    }

    fn log_rows_before(&self, log: Log, cutoff: Timestamp, limit: usize) -> Result<Vec<LogRow>, StoreError> {
        let read = database("reading old log rows");
        let conn = self.reader();
        let sql = format!("SELECT seq, at, record FROM {} WHERE at < ?1 ORDER BY seq LIMIT ?2", log.table());
        let mut stmt = conn.prepare_cached(&sql).map_err(&read)?;
        let mut rows = stmt.query(rusqlite::params![cutoff.micros(), clamp_limit(limit)]).map_err(&read)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(&read)? {
            let seq: i64 = row.get(0).map_err(&read)?;
            let at: i64 = row.get(1).map_err(&read)?;
            let record: String = row.get(2).map_err(&read)?;
            let json = match log {
                Log::Events => serde_json::to_string(&rows::decode_event(seq, &record)?),
                Log::Audit => serde_json::to_string(&rows::decode_audit(seq, &record)?),
            }
            .map_err(|source| StoreError::CorruptRecord {
                table: log.table(),
                id: seq.to_string(),
                source,
            })?;
            out.push(LogRow { seq: rows::seq_from_column(log.table(), seq)?, at: Timestamp(at), json });
        }
        Ok(out)
    }

    fn prune_log(&self, log: Log, through: u64, cutoff: Timestamp) -> Result<u64, StoreError> {
        // Its own short connection, like `record_start`: one bounded DELETE
        // (a caller prunes in batches), so the writer's next group waits at
        // most that long for the lock (within BUSY_TIMEOUT).
        let write = database("pruning a log");
        let conn = Connection::open(&self.path).map_err(&write)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&write)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(&write)?;
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        let sql = format!("DELETE FROM {} WHERE seq <= ?1 AND at < ?2", log.table());
        let deleted = conn.execute(&sql, rusqlite::params![through, cutoff.micros()]).map_err(&write)?;
        Ok(deleted as u64)
    }

    fn engine_starts(&self) -> Result<Vec<EngineStart>, StoreError> {
        let read = database("reading the engine's starts");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT at, seed FROM engine_starts ORDER BY seq").map_err(&read)?;
        let rows = stmt
            .query_map([], |r| Ok(EngineStart { at: Timestamp(r.get::<_, i64>(0)?), seed: r.get::<_, i64>(1)? as u64 }))
            .map_err(&read)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(read)
    }

    fn writer_counters(&self) -> Option<WriterCounters> {
        Some(SqliteStore::writer_counters(self))
    }
}
