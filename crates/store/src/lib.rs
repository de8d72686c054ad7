//! The durable store of the control plane.
//!
//! The engine holds the fleet in memory; after each step the runtime shell
//! hands the store a [`Changes`] and waits for [`Store::commit`] to return
//! before it dispatches or acknowledges anything. On restart the shell calls
//! [`Store::load`] and hands the [`Snapshot`] to the engine.
//!
//! [`SqliteStore`] is the embedded backend (one file, WAL mode, one writer
//! thread that group-commits concurrent callers).
//!
//! [`PgStore`] is the PostgreSQL backend (the same tables, a pool of direct
//! connections, one writer task that group-commits), for fleets that
//! outgrow one node. The tokens, break-glass and on-call tables stay in
//! SQLite files in the data dir in either case (docs/architecture.md).
//!
//! [`oncall::OncallStore`] holds the pager's tables (`oncall.db`: pages,
//! their transitions, notifications, the feed), in a file of their own.

pub mod breakglass;
pub mod deferred;
pub mod migrate;
pub mod oncall;
mod oncall_pg;
mod pg;
mod rows;
mod shards;
mod sqlite;
mod status;
pub mod tokens;
mod writer;

pub use pg::{Cluster, LeaseHeld, LeaseNow, NodeSeen, PgStore, ShardFence, FLEET_SHARD, HOLDER_LOCK};
pub use shards::{FleetRecordCounts, ShardFilter, ShardRound, MAX_SHARDS};
pub use sqlite::{SqliteStore, WriterCounters};

use drover_model::{ActionRecord, AuditEntry, Changes, Event, InstanceId, ServiceId, Snapshot, Timestamp};
use std::path::PathBuf;
use std::sync::Arc;

/// Events returned when a filter names no limit: a page a dashboard can show.
pub const DEFAULT_EVENT_LIMIT: usize = 1000;
/// The most rows any single read returns (events, audit, actions), whatever
/// the caller asks: bounds the memory and the time one request can take. Page
/// with `after_seq` for more.
pub const MAX_READ_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store database {path}: {source}; check that the directory exists and is writable by this process")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} is not a SQLite database (or it is encrypted or damaged); point the store at the Drover database file, or at a path that does not exist yet to start an empty store")]
    NotADatabase { path: PathBuf },
    #[error("cannot set up the store database {path} ({step}): {detail}; check that the file and its directory are writable and that no other program holds an exclusive lock on it")]
    Setup { path: PathBuf, step: &'static str, detail: String },
    #[error("migrating the schema of {path} failed: {source}; if the database was last used by a newer Drover, run that version or restore a backup made by this one")]
    Migration {
        path: PathBuf,
        #[source]
        source: refinery::Error,
    },
    #[error("store database error while {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot encode {table} record {id} as JSON: {source}; this is a bug in the model's serialization, nothing of this commit was written")]
    Encode {
        table: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the stored {table} record {id} cannot be decoded: {source}; the database was written by an incompatible Drover or edited by hand: restore a backup or fix the row")]
    CorruptRecord {
        table: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the stored {table} row {id} has an invalid {column}: {detail}; the database was written by an incompatible Drover or edited by hand")]
    CorruptColumn { table: &'static str, id: String, column: &'static str, detail: String },
    /// Every caller whose batch was in the failed transaction gets this, all
    /// sharing one cause; none of their changes were written.
    #[error("commit of {batches} batch(es) failed and none of them was written: {cause}")]
    CommitFailed {
        batches: usize,
        #[source]
        cause: Arc<StoreError>,
    },
    #[error("cannot use the PostgreSQL store {target}: {detail}; check that the server runs, that the URL names it (postgres://USER@HOST:PORT/DB, connecting directly, not through a transaction-pooling router) and that the user may connect and create tables in that database")]
    PgConnect { target: String, detail: String },
    #[error("migrating the schema of the PostgreSQL store {target} failed: {source}; if the database was last used by a newer Drover, run that version or restore a backup made by this one")]
    PgMigration {
        target: String,
        #[source]
        source: refinery::Error,
    },
    #[error("PostgreSQL store error while {operation}: {detail}")]
    Postgres { operation: &'static str, detail: String },
    #[error("this node ({node}, lease generation {generation}) no longer holds the fleet's lease: another node took the fleet over, and nothing of this commit was written")]
    LeaseLost { node: String, generation: i64 },
    #[error("this node ({node}) does not hold shard {shard} of the fleet (or no longer: another node took it over), so nothing of this commit was written")]
    ShardNotHeld { node: String, shard: u32 },
    /// `drover store migrate` could not move the fleet; the target was
    /// left as it was found (one transaction).
    /// A setting or an argument the store refuses (the message says why).
    #[error("{0}")]
    Invalid(String),
    #[error("cannot migrate the store ({step}): {detail}")]
    Migrate { step: &'static str, detail: String },
    #[error("the store's writer thread has stopped, so nothing can be committed; restart the control plane (the logs say why it stopped)")]
    WriterStopped,
}

#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Matches `Event.service` (the service name).
    pub service: Option<String>,
    pub instance: Option<InstanceId>,
    /// Only events with `seq` greater than this.
    pub after_seq: Option<u64>,
    /// Defaults to [`DEFAULT_EVENT_LIMIT`], clamped to [`MAX_READ_LIMIT`].
    pub limit: Option<usize>,
}

/// The two append-only logs a retention policy trims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// The event log (`GET /v1/events`).
    Events,
    /// The audit trail (`GET /v1/audit`).
    Audit,
}

impl Log {
    pub fn table(self) -> &'static str {
        match self {
            Log::Events => "events",
            Log::Audit => "audit",
        }
    }
}

/// One row of a log as the API shows it (an [`Event`] or an
/// [`AuditEntry`], with its `seq`), for archiving before it is pruned.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    pub seq: u64,
    pub at: Timestamp,
    /// The row as JSON, the same shape the API serves.
    pub json: String,
}

/// One start of the engine: when, and the seed its randomness (and its
/// event ids) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStart {
    pub at: Timestamp,
    pub seed: u64,
}

pub trait Store: Send + Sync + 'static {
    /// Live state to resume from: services whose state != deleted, instances
    /// whose state != terminated, actions whose state is pending or running,
    /// all images.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Durably applies `changes` in ONE transaction: upserts each record by id
    /// (later entries in the same Vec win), appends events and audit entries,
    /// assigning them increasing `seq` (the seq they carry is ignored).
    /// Returns only once on disk. Concurrent callers are group-committed.
    fn commit(&self, changes: Changes) -> Result<(), StoreError>;
    /// Events in ascending seq order, filtered.
    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError>;
    /// The most recent audit entries, in ascending seq, at most `limit`
    /// (itself clamped to [`MAX_READ_LIMIT`]).
    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Actions in any state, newest first, optionally of one service, at most
    /// `limit` (itself clamped to [`MAX_READ_LIMIT`]).
    fn actions(&self, service: Option<ServiceId>, limit: usize) -> Result<Vec<ActionRecord>, StoreError>;
    /// The seq of the newest event (0 for none): where a reader that only
    /// wants what comes next starts.
    fn last_event_seq(&self) -> Result<u64, StoreError>;
    /// A setting of the control plane as a whole (`cluster_settings`), if
    /// one was put.
    fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Durably puts a setting of the control plane as a whole (replacing
    /// its value).
    fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;
    /// Durably records a start of the engine (its seed), before the engine
    /// steps anything.
    fn record_start(&self, start: EngineStart) -> Result<(), StoreError>;
    /// Every recorded start, oldest first.
    fn engine_starts(&self) -> Result<Vec<EngineStart>, StoreError>;
    /// The oldest rows of `log` stamped before `cutoff`, in ascending seq,
    /// at most `limit` (clamped to [`MAX_READ_LIMIT`]): what a retention
    /// pass archives before it prunes them.
    fn log_rows_before(&self, log: Log, cutoff: Timestamp, limit: usize) -> Result<Vec<LogRow>, StoreError>;
    /// Durably deletes the rows of `log` with `seq <= through` stamped
    /// before `cutoff`; returns how many. A row stamped later is kept even
    /// with a lower seq (a clock set back), so nothing recent goes.
    fn prune_log(&self, log: Log, through: u64, cutoff: Timestamp) -> Result<u64, StoreError>;
    /// Transactions and batches the group-committing writer has done since
    /// open (`None` for a store without one): batches per transaction shows
    /// what group commit saves.
    fn writer_counters(&self) -> Option<WriterCounters> {
        None
    }
}
