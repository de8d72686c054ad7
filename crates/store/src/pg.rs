//! The PostgreSQL backend: the same tables as SQLite (migrations in
//! `migrations_pg`, with the same version numbers), a small pool of direct
//! connections, and one writer task that group-commits concurrent callers in
//! one transaction, as [`crate::SqliteStore`] does.
//!
//! The [`Store`] trait is synchronous and is called from blocking threads
//! and async tasks alike, so the store owns a runtime of its own (two
//! threads): each call runs its query there and the caller waits on a
//! channel. Nothing here ever runs on the caller's runtime, so no call can
//! panic for blocking inside it.
//!
//! Connect directly to PostgreSQL, not through a transaction-pooling router:
//! the writer holds one connection for a whole transaction and the
//! migrations hold a session-level advisory lock.

use crate::rows::{self, decode, EncodedChanges};
use crate::writer::{Request, WriterStats, MAX_BATCHES_PER_GROUP};
use crate::{
    EngineStart, EventFilter, Log, LogRow, Store, StoreError, WriterCounters, DEFAULT_EVENT_LIMIT, MAX_READ_LIMIT,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use drover_engine::shard_lease::{self, Claim, LeaseView, Take};
use drover_model::{
    ActionRecord, ActionState, AuditEntry, Changes, Event, HostRecord, Image, InstanceRecord, InstanceState,
    RolloutMember, RolloutRecord, ServiceId, ServiceRecord, ServiceState, Snapshot, Timestamp,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, IsolationLevel, NoTls, Row, Statement};

pub(crate) mod embedded_pg {
    refinery::embed_migrations!("migrations_pg");
}

/// How long a fenced commit's transaction may wait for the node's next
/// statement before the server ends it (`commit_group`): far above the
/// gaps of a live node's pipelined commit, below the default lease (3 s).
const FENCED_COMMIT_IDLE: &str = "SET LOCAL idle_in_transaction_session_timeout = '2s'";

/// Connections in the pool: the writer's, and a few for readers,
/// `record_start` and `prune_log`.
const POOL_SIZE: usize = 4;
/// How long opening a connection may take before the call fails (unless the
/// URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose server stops answering is found out by TCP keepalives
/// after about this long of silence, instead of the kernel's two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
/// Key of the session-level advisory lock the migrations hold, so two
/// control planes starting at once on one database migrate one at a time.
/// ("drover" as ASCII.)
const MIGRATION_LOCK: i64 = 0x6472_6f76_6572;
/// First key of the session-level advisory lock a node takes, on a
/// connection of its own, for the lease generation it is about to hold
/// (the second key), and keeps for as long as it lives: a holder whose
/// process died (its connection closed with it) has let go of it at once,
/// so a standby finding it free takes the lease over without waiting for
/// the TTL. ("Drov" as ASCII; the two-key form never meets
/// [`MIGRATION_LOCK`]'s.)
pub const HOLDER_LOCK: i32 = 0x4472_6f76;

pub struct PgStore {
    /// `user@host:port/db`, never the password: for messages and logs.
    pub(crate) target: String,
    pool: Pool,
    /// `None` only while dropping: dropping the sender ends the writer task.
    queue: Option<UnboundedSender<Request>>,
    /// Disconnected when the writer task ends.
    writer_done: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    stats: Arc<WriterStats>,
    /// The lease every commit must still hold (node, generation), once
    /// [`PgStore::fence_commits`] set it.
    fence: Fence,
    /// The shards every commit must still hold, once
    /// [`PgStore::fence_shards`] set them.
    shard_fence: ShardFenceCell,
    /// For the lease's own connection ([`LeaseSession`]).
    pub(crate) config: Config,
    pub(crate) lease_session: Arc<tokio::sync::Mutex<Option<LeaseSession>>>,
    /// Whether the lease's connection closed (false before it opened).
    pub(crate) lease_session_closed: Arc<std::sync::Mutex<Arc<std::sync::atomic::AtomicBool>>>,
}

/// The lease's own connection, never pooled: the holder's advisory lock
/// ([`HOLDER_LOCK`]) lives and dies with it.
pub(crate) struct LeaseSession {
    client: tokio_postgres::Client,
    pub(crate) closed: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseSession {
    async fn connect(config: &Config, target: &str) -> Result<LeaseSession, StoreError> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::PgConnect { target: target.to_string(), detail: pg_detail(&e) })?;
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        tokio::spawn(async move {
            let _ = connection.await;
            flag.store(true, Ordering::SeqCst);
        });
        Ok(LeaseSession { client, closed })
    }

    /// Takes the lock of `shard`'s `generation` unless another session holds it.
    pub(crate) async fn try_lock(&self, shard: i64, generation: i64) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&HOLDER_LOCK, &lock_key(shard, generation)])
            .await
            .map_err(pg("taking the lease generation's lock"))?;
        Ok(row.get(0))
    }

    pub(crate) async fn unlock(&self, shard: i64, generation: i64) -> Result<(), StoreError> {
        self.client
            .execute("SELECT pg_advisory_unlock($1, $2)", &[&HOLDER_LOCK, &lock_key(shard, generation)])
            .await
            .map_err(pg("letting go of the lease generation's lock"))?;
        Ok(())
    }
}

/// The lease's connection in `slot`, opened (again) when there is none or
/// it closed; `closed` then follows the new one's state. Named
/// [`lease_application_name`] of `node`: other nodes see it alive by it.
pub(crate) async fn open_lease_session<'a>(
    slot: &'a mut Option<LeaseSession>,
    closed: &std::sync::Mutex<Arc<std::sync::atomic::AtomicBool>>,
    config: &Config,
    target: &str,
    node: &str,
) -> Result<&'a LeaseSession, StoreError> {
    if slot.as_ref().is_none_or(|s| s.closed.load(Ordering::SeqCst)) {
        let mut config = config.clone();
        config.application_name(lease_application_name(node));
        let fresh = LeaseSession::connect(&config, target).await?;
        *closed.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh.closed);
        return Ok(slot.insert(fresh));
    }
    match slot.as_ref() {
        Some(session) => Ok(session),
        None => unreachable!("opened above"),
    }
}

/// The second key of [`HOLDER_LOCK`] for `shard`'s `generation`: the
/// shard in the 11 bits above the generation's low 20 (a generation wraps
/// after a million takeovers of one shard; two live holders a million
/// generations apart cannot be).
pub(crate) fn lock_key(shard: i64, generation: i64) -> i32 {
    (((shard & 0x7ff) << 20) | (generation & 0xf_ffff)) as i32
}

/// The `application_name` of a node's lease connection (at most 63 bytes,
/// as PostgreSQL keeps): a node is alive while it is connected.
pub(crate) fn lease_application_name(node: &str) -> String {
    let mut name = format!("drover-lease:{node}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// What the writer checks in each commit's transaction.
type Fence = Arc<std::sync::RwLock<Option<(String, i64)>>>;

/// The shards a node of a store of several shards holds, which its commits
/// must still hold ([`PgStore::fence_shards`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFence {
    pub node: String,
    /// The store's shard count.
    pub shards: u16,
    /// Shard -> the generation this node holds it with.
    pub held: std::collections::BTreeMap<u32, i64>,
}

type ShardFenceCell = Arc<std::sync::RwLock<Option<ShardFence>>>;

/// The shard of the whole fleet: this release has one.
pub const FLEET_SHARD: i64 = 0;

/// The database's clock in microseconds, in SQL.
pub(crate) const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// A node as the store last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub name: String,
    pub address: String,
    /// Microseconds since the Unix epoch, by the node's clock.
    pub started_at: i64,
    /// How long ago, by the database's clock.
    pub seen_ago: Duration,
}

/// The fleet's lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseNow {
    pub holder: String,
    pub generation: i64,
    /// Negative: expired that long ago.
    pub expires_in_micros: i64,
}

/// What `GET /v1/cluster` shows of a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: Vec<NodeSeen>,
    /// The fleet's lease ([`FLEET_SHARD`]).
    pub lease: Option<LeaseNow>,
    /// Every shard's lease, by shard (the fleet's among them).
    pub leases: Vec<(i64, LeaseNow)>,
}

/// Who holds the fleet's lease, when this node asked and did not get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHeld {
    pub holder: String,
    /// The holder's API URL, as it published it.
    pub address: String,
    pub generation: i64,
    /// Until it expires by the database's clock (zero when it has).
    pub expires_in: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

/// `user@host:port/db` of a parsed URL (the password left out).
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// The server's own message for a database error, else the client's error
/// and its causes.
pub(crate) fn pg_detail(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    detail
}

pub(crate) fn pg(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres { operation, detail: pg_detail(&e) }
}

fn pool_error(target: &str) -> impl Fn(deadpool_postgres::PoolError) -> StoreError + '_ {
    move |e| {
        let detail = match &e {
            deadpool_postgres::PoolError::Backend(e) => pg_detail(e),
            other => other.to_string(),
        };
        StoreError::PgConnect { target: target.to_string(), detail }
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, or any
    /// form `tokio_postgres::Config` parses), runs the migrations under an
    /// advisory lock and starts the writer. Without TLS: the store is meant
    /// for a server on the same host or a private network.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| StoreError::PgConnect {
            target: "(the URL given)".into(),
            detail: format!("{}; expected postgres://USER@HOST:PORT/DB", pg_detail(&e)),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(KEEPALIVES_IDLE);
        config.application_name("drover");
        let target = describe(&config);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("drover-pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::PgConnect {
                target: target.clone(),
                detail: format!("cannot start its runtime: {e}"),
            })?;

        // Migrations on a connection of their own, under a session lock that
        // ends with the connection.
        runtime.block_on(migrate(config.clone(), target.clone()))?;

        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::PgConnect { target: target.clone(), detail: e.to_string() })?;

        let (queue, requests) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer_pool = pool.clone();
        let writer_target = target.clone();
        let fence: Fence = Arc::default();
        let writer_fence = Arc::clone(&fence);
        let shard_fence: ShardFenceCell = Arc::default();
        let writer_shard_fence = Arc::clone(&shard_fence);
        runtime.spawn(async move {
            run_writer(writer_pool, writer_target, requests, writer_stats, writer_fence, writer_shard_fence).await;
            drop(done_tx);
        });
        tracing::info!(store = %target, "PostgreSQL store opened");
        Ok(PgStore {
            target,
            pool,
            queue: Some(queue),
            writer_done: Some(std::sync::Mutex::new(done_rx)),
            runtime: Some(runtime),
            stats,
            fence,
            shard_fence,
            config,
            lease_session: Arc::default(),
            lease_session_closed: Arc::default(),
        })
    }

    /// Takes the fleet's lease for `node` for `ttl` (by the database's
    /// clock) when nobody holds it, its holder let it expire, its holder's
    /// connection to the database is gone (its process died: see
    /// [`HOLDER_LOCK`]), or `node` held it (a restart of the same node):
    /// the generation rises every time. `Ok(Err(held))`: another node holds
    /// it, or is taking it over at this moment.
    /// `address` is this node's API URL, published with the lease.
    pub fn try_acquire_lease(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Result<i64, LeaseHeld>, StoreError> {
        let (node, address) = (node.to_string(), address.to_string());
        let ttl = ttl.as_micros().min(i64::MAX as u128) as i64;
        let (session, closed_flag) = (Arc::clone(&self.lease_session), Arc::clone(&self.lease_session_closed));
        let (config, target) = (self.config.clone(), self.target.clone());
        self.with_client(move |client| async move {
            let current = read_lease(&client).await?;
            let mut session_slot = session.lock().await;
            if session_slot.as_ref().is_none_or(|s| s.closed.load(Ordering::SeqCst)) {
                let probe_first =
                    |h: &&LeaseHeld| matches!(shard_lease::claim(Some(&view(h)), &node), Claim::Probe { .. });
                if let Some(held) = current.as_ref().filter(probe_first) {
                    // Who holds it first (a standby forwards to it from
                    // then on); its lock is probed from the next try, on a
                    // connection opened meanwhile.
                    drop(session_slot);
                    tokio::spawn(async move {
                        let mut slot = session.lock().await;
                        if let Err(error) = open_lease_session(&mut slot, &closed_flag, &config, &target, &node).await {
                            tracing::warn!(%error, "cannot open the lease's own connection; retrying");
                        }
                    });
                    return Ok(Err(held.clone()));
                }
            }
            let session = open_lease_session(&mut session_slot, &closed_flag, &config, &target, &node).await?;
            let Take { observed, next, orphaned } = match shard_lease::claim(current.as_ref().map(view).as_ref(), &node)
            {
                Claim::Take(take) => take,
                Claim::Probe { generation } => {
                    // A live holder keeps its generation's lock: free, the
                    // holder's connection (and so its process) is gone.
                    if !session.try_lock(FLEET_SHARD, generation).await? {
                        return Ok(Err(current.clone().expect("a holder to probe was read")));
                    }
                    session.unlock(FLEET_SHARD, generation).await?;
                    shard_lease::orphaned(generation)
                }
            };
            // Taken before the lease names it, and held while this node lives.
            if !session.try_lock(FLEET_SHARD, next).await? {
                // Another node is taking the lease over right now.
                return Ok(Err(read_lease(&client).await?.unwrap_or_else(|| LeaseHeld {
                    holder: String::new(),
                    address: String::new(),
                    generation: observed,
                    expires_in: Duration::ZERO,
                })));
            }
            let take = Take { observed, next, orphaned };
            if take_lease_row(&client, FLEET_SHARD, &node, &address, ttl, &take).await? {
                return Ok(Ok(next));
            }
            // Renewed, or taken by another node, since it was read.
            session.unlock(FLEET_SHARD, next).await?;
            match read_lease(&client).await? {
                Some(held) => Ok(Err(held)),
                None => Err(StoreError::Postgres {
                    operation: "taking the fleet's lease",
                    detail: "the lease row vanished while it was taken".into(),
                }),
            }
        })
    }

    /// Whether the lease's own connection closed (the database restarted,
    /// the network failed, an administrator ended it): the holder's lock
    /// is gone with it, so another node may take the fleet over at once.
    pub fn lease_session_lost(&self) -> bool {
        self.lease_session_closed.lock().unwrap_or_else(|p| p.into_inner()).load(Ordering::SeqCst)
    }

    /// After [`PgStore::lease_session_lost`]: takes the lock of
    /// `generation` again on a new connection. True: nobody took it
    /// meanwhile (whether the lease is still this node's is for its
    /// renewal to say: a node that took the fleet over in between holds a
    /// higher generation, and the renewal fails).
    pub fn reclaim_lease_lock(&self, generation: i64) -> Result<bool, StoreError> {
        let (session, closed_flag) = (Arc::clone(&self.lease_session), Arc::clone(&self.lease_session_closed));
        let (config, target) = (self.config.clone(), self.target.clone());
        let node = self.holder().map(|(node, _)| node).unwrap_or_default();
        self.with_client(move |_client| async move {
            let mut slot = session.lock().await;
            open_lease_session(&mut slot, &closed_flag, &config, &target, &node)
                .await?
                .try_lock(FLEET_SHARD, generation)
                .await
        })
    }

    /// Extends `node`'s lease of generation `generation` by `ttl` from now
    /// (the database's clock). False: it is not held any more (another
    /// node took it over).
    pub fn renew_lease(&self, node: &str, generation: i64, ttl: Duration) -> Result<bool, StoreError> {
        let (node, ttl) = (node.to_string(), ttl.as_micros().min(i64::MAX as u128) as i64);
        self.with_client(move |client| async move {
            let renewed = client
                .query_opt(
                    &format!(
                        "UPDATE leases SET expires_at = {DB_NOW} + $4 \
                         WHERE shard = $1 AND holder = $2 AND generation = $3 RETURNING 1"
                    ),
                    &[&FLEET_SHARD, &node, &generation, &ttl],
                )
                .await
                .map_err(pg("renewing the fleet's lease"))?;
            Ok(renewed.is_some())
        })
    }

    /// Whether this node's key agrees with the other nodes': the first
    /// node to ask writes `check` (derived from its key); later ones get
    /// `Ok(None)` when theirs is the same, else `Ok(Some(node))`, the node
    /// that wrote the other one.
    pub fn agree_on_key(&self, node: &str, check: &str) -> Result<Option<String>, StoreError> {
        let (node, check) = (node.to_string(), check.to_string());
        self.with_client(move |client| async move {
            let err = pg("checking this node's key against the store's");
            client
                .execute(
                    &format!(
                        "INSERT INTO key_check (id, check_value, node, at) VALUES (0, $1, $2, {DB_NOW}) \
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    &[&check, &node],
                )
                .await
                .map_err(&err)?;
            let row =
                client.query_one("SELECT check_value, node FROM key_check WHERE id = 0", &[]).await.map_err(&err)?;
            let (stored, by): (String, String) = (row.get(0), row.get(1));
            Ok((stored != check).then_some(by))
        })
    }

    /// Notes that `node` (at `address`, started at `started_at` by its own
    /// clock) is alive now, by the database's clock.
    pub fn node_seen(&self, node: &str, address: &str, started_at: i64) -> Result<(), StoreError> {
        let (node, address) = (node.to_string(), address.to_string());
        self.with_client(move |client| async move { note_node(&client, &node, &address, started_at).await })
    }

    /// The nodes sharing the store and the fleet's lease, as the database
    /// sees them now.
    pub fn cluster(&self) -> Result<Cluster, StoreError> {
        self.with_client(|client| async move {
            let read = pg("reading the cluster");
            let nodes = client
                .query(
                    &format!(
                        "SELECT name, address, started_at, greatest({DB_NOW} - last_seen, 0) FROM nodes ORDER BY name"
                    ),
                    &[],
                )
                .await
                .map_err(&read)?
                .iter()
                .map(|r| NodeSeen {
                    name: r.get(0),
                    address: r.get(1),
                    started_at: r.get(2),
                    seen_ago: Duration::from_micros(r.get::<_, i64>(3).max(0) as u64),
                })
                .collect();
            let leases: Vec<(i64, LeaseNow)> = client
                .query(
                    &format!("SELECT shard, holder, generation, expires_at - {DB_NOW} FROM leases ORDER BY shard"),
                    &[],
                )
                .await
                .map_err(&read)?
                .iter()
                .map(|r| (r.get(0), LeaseNow { holder: r.get(1), generation: r.get(2), expires_in_micros: r.get(3) }))
                .collect();
            let lease = leases.iter().find(|(shard, _)| *shard == FLEET_SHARD).map(|(_, l)| l.clone());
            Ok(Cluster { nodes, lease, leases })
        })
    }

    /// This node's fencing token, once [`PgStore::fence_commits`] set it:
    /// the pager's and break-glass's writes check it like the fleet's.
    pub fn holder(&self) -> Option<(String, i64)> {
        self.fence.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on every commit checks, in its own transaction, that
    /// `node` still holds the lease of `generation` (shard 0's, the
    /// fleet's); one that does not writes nothing ([`StoreError::LeaseLost`]).
    /// On a fleet of several shards ([`PgStore::fence_shards`] set) the
    /// engine's commits are fenced by their shards instead, and this token
    /// fences only what runs on shard 0's holder alone: the pager's and
    /// break-glass's writes (a node without shard 0 sets a generation no
    /// lease has, 0, and they are refused there).
    pub fn fence_commits(&self, node: &str, generation: i64) {
        *self.fence.write().unwrap_or_else(|p| p.into_inner()) = Some((node.to_string(), generation));
    }

    /// From now on every commit checks, in its own transaction, that this
    /// node still holds the shard of every service it writes, with the
    /// generation `fence` gives: a batch that touches a shard not in
    /// `fence`, or one whose lease the transaction no longer finds so, is
    /// refused ([`StoreError::ShardNotHeld`]) and writes nothing; the other
    /// batches of its group are written. Records of the whole fleet
    /// (images, hosts, rollouts, audit, events) need no shard.
    pub fn fence_shards(&self, fence: ShardFence) {
        *self.shard_fence.write().unwrap_or_else(|p| p.into_inner()) = Some(fence);
    }

    /// `postgres://user@host:port/db` (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What the writer has done since connect.
    pub fn writer_counters(&self) -> WriterCounters {
        WriterCounters {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `work` with a pooled connection on the store's runtime and
    /// waits for it.
    pub(crate) fn with_client<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let runtime = self.runtime.as_ref().ok_or(StoreError::WriterStopped)?;
        let pool = self.pool.clone();
        let target = self.target.clone();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let result = match pool.get().await {
                Ok(client) => work(client).await,
                Err(e) => Err(pool_error(&target)(e)),
            };
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| StoreError::WriterStopped)?
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Callers wait for their commit, so nothing is queued once the last
        // reference is gone; the writer ends when the queue closes.
        drop(self.queue.take());
        if let Some(done) = self.writer_done.take() {
            let done = done.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = done.recv_timeout(Duration::from_secs(30));
        }
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so dropping the store inside an async task is fine.
            runtime.shutdown_background();
        }
    }
}

async fn migrate(config: Config, target: String) -> Result<(), StoreError> {
    let connect_error =
        |e: tokio_postgres::Error| StoreError::PgConnect { target: target.clone(), detail: pg_detail(&e) };
    let (mut client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
    let driver = tokio::spawn(connection);
    let result = async {
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(connect_error)?;
        embedded_pg::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|source| StoreError::PgMigration { target: target.clone(), source })?;
        Ok(())
    }
    .await;
    // Closing the connection releases the lock.
    drop(client);
    let _ = driver.await;
    result
}

async fn run_writer(
    pool: Pool,
    target: String,
    mut queue: UnboundedReceiver<Request>,
    stats: Arc<WriterStats>,
    fence: Fence,
    shard_fence: ShardFenceCell,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_BATCHES_PER_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let batches = group.len();
        let holder = fence.read().unwrap_or_else(|p| p.into_inner()).clone();
        let shards = shard_fence.read().unwrap_or_else(|p| p.into_inner()).clone();
        match commit_group(&pool, &target, &group, holder.as_ref(), shards.as_ref()).await {
            Ok(admitted) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                stats.batches.fetch_add(batches as u64, Ordering::Relaxed);
                for (request, admitted) in group.into_iter().zip(admitted) {
                    let answer = admitted.map_err(|shard| StoreError::ShardNotHeld {
                        node: shards.as_ref().map(|f| f.node.clone()).unwrap_or_default(),
                        shard,
                    });
                    let _ = request.reply.send(answer);
                }
            }
            Err(error) => {
                tracing::error!(batches, %error, "store commit failed; every batch of the group is refused");
                let cause = Arc::new(error);
                for request in group {
                    let _ = request.reply.send(Err(StoreError::CommitFailed { batches, cause: Arc::clone(&cause) }));
                }
            }
        }
    }
    tracing::debug!("PostgreSQL store writer stopped: the store was dropped");
}

async fn commit_group(
    pool: &Pool,
    target: &str,
    group: &[Request],
    holder: Option<&(String, i64)>,
    shards: Option<&ShardFence>,
) -> Result<Vec<Result<(), u32>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error(target))?;
    let tx = client.transaction().await.map_err(pg("beginning a commit"))?;
    // Several shards: each batch is fenced by the shards it writes, and
    // the fleet's token (shard 0's) fences only the singletons' writes.
    let fenced = async {
        match shards {
            None => {
                check_lease(&tx, holder).await?;
                Ok(vec![Ok(()); group.len()])
            }
            Some(fence) => check_shards(&tx, group, fence).await,
        }
    };
    let admitted = if holder.is_some() || shards.is_some() {
        // The fence holds its lease rows FOR SHARE until the commit: a node
        // cut off or stopped in the middle of one must not keep them locked
        // (and the next holder from taking them) until TCP gives up. The
        // server ends the transaction once it waited this long for the
        // node's next statement. Sent ahead of the fence in one pipeline
        // (tokio-postgres sends both before it reads an answer): no round
        // trip of its own.
        let idle = async { tx.batch_execute(FENCED_COMMIT_IDLE).await.map_err(pg("beginning a commit")) };
        tokio::try_join!(idle, fenced)?.1
    } else {
        fenced.await?
    };
    let written: Vec<&Request> = group.iter().zip(&admitted).filter(|(_, a)| a.is_ok()).map(|(r, _)| r).collect();
    if written.is_empty() {
        return Ok(admitted);
    }
    // Prepared once per connection (deadpool caches them), before any write.
    let stmts = Statements::prepare(&tx).await.map_err(pg("preparing a commit"))?;
    let mut pipeline = Pipeline::default();
    for request in &written {
        pipeline.apply(&tx, &stmts, &request.batch).await.map_err(pg("writing a commit"))?;
    }
    pipeline.finish().await.map_err(pg("writing a commit"))?;
    write_instances_and_events(&tx, &written).await.map_err(pg("writing a commit"))?;
    // On error the dropped transaction rolls back: nothing of the group stays.
    tx.commit().await.map_err(pg("committing"))?;
    Ok(admitted)
}

/// Which batches of `group` a node fenced on `fence` may write
/// ([`shard_lease::batches_admitted`]): the leases of the shards the group
/// touches are read share-locked in the commit's transaction, so a node
/// that takes one over waits for this commit, or, done first, makes the
/// batches that need it write nothing.
async fn check_shards(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &[Request],
    fence: &ShardFence,
) -> Result<Vec<Result<(), u32>>, StoreError> {
    let batches: Vec<Vec<u32>> = group
        .iter()
        .map(|r| {
            let mut shards: Vec<u32> = r.slots.iter().map(|s| u32::from(s.shard(fence.shards))).collect();
            shards.dedup();
            shards
        })
        .collect();
    let mut wanted: Vec<u32> = batches.iter().flatten().copied().filter(|s| fence.held.contains_key(s)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = std::collections::BTreeSet::new();
    if !wanted.is_empty() {
        let shards: Vec<i64> = wanted.iter().map(|&s| i64::from(s)).collect();
        let generations: Vec<i64> = wanted.iter().map(|s| fence.held[s]).collect();
        let rows = tx
            .query(
                "SELECT l.shard FROM leases l \
                 JOIN unnest($2::bigint[], $3::bigint[]) AS f(shard, generation) \
                   ON l.shard = f.shard AND l.generation = f.generation \
                 WHERE l.holder = $1 FOR SHARE OF l",
                &[&fence.node, &shards, &generations],
            )
            .await
            .map_err(pg("checking the shards' leases"))?;
        for row in rows {
            let shard: i64 = row.try_get(0).map_err(pg("checking the shards' leases"))?;
            found.insert(shard as u32);
        }
    }
    Ok(shard_lease::batches_admitted(&batches, &fence.held, &found))
}

/// The fleet's lease row now (`expires_in` zero once expired).
/// Notes that `node` is alive now, by the database's clock.
pub(crate) async fn note_node(
    client: &tokio_postgres::Client,
    node: &str,
    address: &str,
    started_at: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "INSERT INTO nodes (name, address, started_at, last_seen) VALUES ($1, $2, $3, {DB_NOW}) \
                 ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, \
                   started_at = EXCLUDED.started_at, last_seen = EXCLUDED.last_seen"
            ),
            &[&node, &address, &started_at],
        )
        .await
        .map_err(pg("noting a node"))?;
    Ok(())
}

/// The conditional write of a take ([`shard_lease::take_applies`] in SQL):
/// true if `shard`'s lease is now `node`'s, of generation `take.next`,
/// expiring `ttl` microseconds from now.
pub(crate) async fn take_lease_row(
    client: &tokio_postgres::Client,
    shard: i64,
    node: &str,
    address: &str,
    ttl: i64,
    take: &Take,
) -> Result<bool, StoreError> {
    let taken = client
        .query_opt(
            &format!(
                "INSERT INTO leases (shard, holder, generation, expires_at, address) \
                 VALUES ($1, $2, $5, {DB_NOW} + $3, $4) \
                 ON CONFLICT (shard) DO UPDATE SET holder = EXCLUDED.holder, \
                   generation = EXCLUDED.generation, expires_at = EXCLUDED.expires_at, \
                   address = EXCLUDED.address \
                 WHERE leases.generation = $6 \
                   AND (leases.expires_at <= {DB_NOW} OR leases.holder = EXCLUDED.holder OR $7) \
                 RETURNING generation"
            ),
            &[&shard, &node, &ttl, &address, &take.next, &take.observed, &take.orphaned],
        )
        .await
        .map_err(pg("taking a lease"))?;
    Ok(taken.is_some())
}

/// A lease as the shard logic reads it ([`drover_engine::shard_lease`]).
fn view(held: &LeaseHeld) -> LeaseView {
    LeaseView { holder: held.holder.clone(), generation: held.generation, expired: held.expires_in.is_zero() }
}

async fn read_lease(client: &tokio_postgres::Client) -> Result<Option<LeaseHeld>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT holder, generation, greatest(expires_at - {DB_NOW}, 0), address FROM leases WHERE shard = $1"
            ),
            &[&FLEET_SHARD],
        )
        .await
        .map_err(pg("reading the fleet's lease"))?;
    Ok(row.map(|row| LeaseHeld {
        holder: row.get(0),
        address: row.get(3),
        generation: row.get(1),
        expires_in: Duration::from_micros(row.get::<_, i64>(2).max(0) as u64),
    }))
}

/// The fencing token, checked inside `tx` before it writes: `holder`
/// (this node and its lease's generation, once it holds the fleet) still
/// holds it; a takeover waits for `tx` (the lease row is share-locked) or,
/// done first, makes it write nothing. `None`: not fenced (a store no
/// node holds yet, or a tool such as `store migrate`).
pub(crate) async fn check_lease(
    tx: &tokio_postgres::Transaction<'_>,
    holder: Option<&(String, i64)>,
) -> Result<(), StoreError> {
    let Some((node, generation)) = holder else { return Ok(()) };
    let held = tx
        .query_opt(
            "SELECT 1 FROM leases WHERE shard = $1 AND holder = $2 AND generation = $3 FOR SHARE",
            &[&FLEET_SHARD, node, generation],
        )
        .await
        .map_err(pg("checking the fleet's lease"))?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost { node: node.clone(), generation: *generation }),
    }
}

/// A host's record, written by whichever node's engine changed it. An
/// operator's cordon or drain (ordered through shard 0's holder) is never
/// taken back by a write from an engine that has not learned it yet (a
/// silence judged on another node, `fleet_records`): such a write is
/// dropped, and that engine learns the operator's state within a poll.
pub(crate) const HOSTS_UPSERT: &str =
    "INSERT INTO hosts (name, zone, state, registered_at, record) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (name) DO UPDATE SET zone = excluded.zone, state = excluded.state,
       registered_at = excluded.registered_at, record = excluded.record
     WHERE NOT (hosts.state IN ('cordoned', 'draining') AND excluded.state NOT IN ('cordoned', 'draining'))
       AND NOT (hosts.state = 'draining' AND excluded.state = 'cordoned')";

/// The upserts and appends of `rows::apply`, in PostgreSQL's dialect.
struct Statements {
    services: Statement,
    actions: Statement,
    images: Statement,
    rollouts: Statement,
    rollout_members: Statement,
    hosts: Statement,
    archives: Statement,
    audit: Statement,
}

impl Statements {
    async fn prepare(tx: &deadpool_postgres::Transaction<'_>) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            services: tx
                .prepare_cached(
                    "INSERT INTO services (id, name, state, created_at, state_since, record)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, state = excluded.state,
                       created_at = excluded.created_at, state_since = excluded.state_since, record = excluded.record",
                )
                .await?,
            actions: tx
                .prepare_cached(
                    "INSERT INTO actions (id, service_id, instance_id, kind, state, created_at, updated_at, deadline, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, instance_id = excluded.instance_id,
                       kind = excluded.kind, state = excluded.state, created_at = excluded.created_at,
                       updated_at = excluded.updated_at, deadline = excluded.deadline, record = excluded.record",
                )
                .await?,
            images: tx
                .prepare_cached(
                    "INSERT INTO images (id, engine, version, created_at, record) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET engine = excluded.engine, version = excluded.version,
                       created_at = excluded.created_at, record = excluded.record",
                )
                .await?,
            rollouts: tx
                .prepare_cached(
                    "INSERT INTO rollouts (id, state, created_at, updated_at, record) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, created_at = excluded.created_at,
                       updated_at = excluded.updated_at, record = excluded.record",
                )
                .await?,
            rollout_members: tx
                .prepare_cached(
                    "INSERT INTO rollout_services (rollout_id, service_id, position, phase, record)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (rollout_id, service_id) DO UPDATE SET position = excluded.position,
                       phase = excluded.phase, record = excluded.record",
                )
                .await?,
            hosts: tx
                .prepare_cached(
                    HOSTS_UPSERT,
                )
                .await?,
            archives: tx
                .prepare_cached(
                    "INSERT INTO archives (id, service_name, state, created_at, updated_at, record)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET service_name = excluded.service_name, state = excluded.state,
                       created_at = excluded.created_at, updated_at = excluded.updated_at, record = excluded.record",
                )
                .await?,
            audit: tx.prepare_cached("INSERT INTO audit (at, actor, record) VALUES ($1, $2, $3)").await?,
        })
    }
}

/// The rows the engine writes most (an instance's transition and its
/// events, for every heartbeat that changes a state) in one multi-row
/// statement per table for the whole group, instead of one per row.
/// Instances: the last row of an id wins, as with one upsert per row.
/// Events: appended in the group's order (`WITH ORDINALITY ... ORDER BY`),
/// so their seqs follow the commit order; an id already stored, or twice
/// in the group, is appended once.
async fn write_instances_and_events(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &[&Request],
) -> Result<(), tokio_postgres::Error> {
    let mut last: std::collections::HashMap<&str, &rows::InstanceRow> = std::collections::HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in group.iter().flat_map(|g| &g.batch.instances) {
        if last.insert(r.id.as_str(), r).is_none() {
            order.push(r.id.as_str());
        }
    }
    if !order.is_empty() {
        let rows: Vec<&rows::InstanceRow> = order.iter().map(|id| last[id]).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO instances (id, service_id, state, created_at, state_since, record)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[])
                 ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, state = excluded.state,
                   created_at = excluded.created_at, state_since = excluded.state_since, record = excluded.record",
            )
            .await?;
        let id: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let service_id: Vec<&str> = rows.iter().map(|r| r.service_id.as_str()).collect();
        let state: Vec<&str> = rows.iter().map(|r| r.state).collect();
        let created_at: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
        let state_since: Vec<i64> = rows.iter().map(|r| r.state_since).collect();
        let record: Vec<&str> = rows.iter().map(|r| r.record.as_str()).collect();
        tx.execute(&stmt, &[&id, &service_id, &state, &created_at, &state_since, &record]).await?;
    }
    let events: Vec<&rows::EventRow> = group.iter().flat_map(|g| &g.batch.events).collect();
    if !events.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO events (event_id, at, service, instance_id, record)
                 SELECT e, a, s, i, r
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u (e, a, s, i, r, n)
                 ORDER BY n
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .await?;
        let event_id: Vec<Option<&str>> = events.iter().map(|r| r.event_id.as_deref()).collect();
        let at: Vec<i64> = events.iter().map(|r| r.at).collect();
        let service: Vec<Option<&str>> = events.iter().map(|r| r.service.as_deref()).collect();
        let instance_id: Vec<Option<&str>> = events.iter().map(|r| r.instance_id.as_deref()).collect();
        let record: Vec<&str> = events.iter().map(|r| r.record.as_str()).collect();
        tx.execute(&stmt, &[&event_id, &at, &service, &instance_id, &record]).await?;
    }
    Ok(())
}

/// Statements the writer sends before it waits for their answers.
const MAX_IN_FLIGHT: usize = 1024;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Statements sent back to back on the writer's connection without waiting
/// for each answer (one round trip for the whole group, not one per row).
/// Order is kept: a statement is written to the connection on its first
/// poll, which `send` does at once, and PostgreSQL runs a connection's
/// statements in the order received; so a later upsert of the same id still
/// wins and events get their seqs in commit order.
#[derive(Default)]
struct Pipeline<'a> {
    pending: Vec<Pending<'a>>,
}

impl<'a> Pipeline<'a> {
    async fn send<const N: usize>(
        &mut self,
        tx: &'a deadpool_postgres::Transaction<'_>,
        statement: &'a Statement,
        params: [&'a (dyn ToSql + Sync); N],
    ) -> Result<(), tokio_postgres::Error> {
        if self.pending.len() >= MAX_IN_FLIGHT {
            // Bounds the memory and the unread answers of a huge group.
            for future in self.pending.drain(..) {
                future.await?;
            }
        }
        let mut future: Pending<'a> = Box::pin(tx.execute_raw(statement, params));
        match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
            Poll::Ready(done) => done.map(drop),
            Poll::Pending => {
                self.pending.push(future);
                Ok(())
            }
        }
    }

    /// Waits for every answer, in order: the first error is the one that
    /// aborted the transaction.
    async fn finish(self) -> Result<(), tokio_postgres::Error> {
        for future in self.pending {
            future.await?;
        }
        Ok(())
    }

    /// Sends one batch's statements, in `rows::apply`'s order.
    async fn apply(
        &mut self,
        tx: &'a deadpool_postgres::Transaction<'_>,
        s: &'a Statements,
        batch: &'a EncodedChanges,
    ) -> Result<(), tokio_postgres::Error> {
        for r in &batch.services {
            self.send(tx, &s.services, [&r.id, &r.name, &r.state, &r.created_at, &r.state_since, &r.record]).await?;
        }
        // Instances and events: one statement each for the whole group
        // (`write_instances_and_events`).
        for r in &batch.actions {
            self.send(
                tx,
                &s.actions,
                [
                    &r.id,
                    &r.service_id,
                    &r.instance_id,
                    &r.kind,
                    &r.state,
                    &r.created_at,
                    &r.updated_at,
                    &r.deadline,
                    &r.record,
                ],
            )
            .await?;
        }
        for r in &batch.images {
            self.send(tx, &s.images, [&r.id, &r.engine, &r.version, &r.created_at, &r.record]).await?;
        }
        // Headers before their members (the members' rows reference them).
        for r in &batch.rollouts {
            self.send(tx, &s.rollouts, [&r.id, &r.state, &r.created_at, &r.updated_at, &r.record]).await?;
        }
        for r in &batch.rollout_members {
            self.send(tx, &s.rollout_members, [&r.rollout_id, &r.service_id, &r.position, &r.phase, &r.record]).await?;
        }
        for r in &batch.hosts {
            self.send(tx, &s.hosts, [&r.name, &r.zone, &r.state, &r.registered_at, &r.record]).await?;
        }
        for r in &batch.archives {
            self.send(tx, &s.archives, [&r.id, &r.service_name, &r.state, &r.created_at, &r.updated_at, &r.record])
                .await?;
        }
        for r in &batch.audit {
            self.send(tx, &s.audit, [&r.at, &r.actor, &r.record]).await?;
        }
        Ok(())
    }
}

fn clamp_limit(limit: usize) -> i64 {
    limit.min(MAX_READ_LIMIT) as i64
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    operation: &'static str,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(pg(operation))
}

/// Decodes `rows` (id, record) of `table`; a large table on every core at
/// once: a takeover's load is mostly this (a million instances' JSON).
pub(crate) fn records<T: serde::de::DeserializeOwned + Send>(
    table: &'static str,
    rows: &[Row],
) -> Result<Vec<T>, StoreError> {
    const PARALLEL_FROM: usize = 20_000;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if rows.len() < PARALLEL_FROM || threads < 2 {
        return decode_rows(table, rows);
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = rows
            .chunks(rows.len().div_ceil(threads))
            .map(|part| scope.spawn(move || decode_rows(table, part)))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for part in parts {
            out.extend(part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?);
        }
        Ok(out)
    })
}

fn decode_rows<T: serde::de::DeserializeOwned>(table: &'static str, rows: &[Row]) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: &str = column(row, 0, "loading the live state")?;
        let record: &str = column(row, 1, "loading the live state")?;
        out.push(decode(table, id, record)?);
    }
    Ok(out)
}

fn seq_records<'a>(rows: &'a [Row], operation: &'static str) -> Result<Vec<(i64, &'a str)>, StoreError> {
    rows.iter().map(|row| Ok((column::<i64>(row, 0, operation)?, column::<&str>(row, 1, operation)?))).collect()
}

/// A load's parameters: `first`, then the shard count and the held shards
/// of a filtered load (`$2`, `$3`).
fn with_shards<'a>(
    first: &'a (dyn ToSql + Sync),
    shards: Option<(&'a i32, &'a Vec<i32>)>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    match shards {
        Some((count, held)) => vec![first, count, held],
        None => vec![first],
    }
}

impl PgStore {
    /// The live state, all of it (`None`) or that of the shards `filter`
    /// names: services by their id's slot, instances and actions by their
    /// service's (see `drover_model::Slot`), archives by their service's id.
    /// Images, hosts and rollouts belong to the whole fleet: every load
    /// reads them all.
    pub(crate) fn load_where(
        &self,
        filter: Option<&crate::shards::ShardFilter>,
        fleet_wide: bool,
    ) -> Result<Snapshot, StoreError> {
        let filter = filter.cloned();
        self.with_client(move |mut client| async move {
            let (count, held): (i32, Vec<i32>) = match &filter {
                Some(f) => (i32::from(f.shards), f.held.iter().map(|&s| i32::from(s)).collect()),
                None => (1, vec![0]),
            };
            // The whole load reads every row as before: no expression per row.
            let in_shards = |column: &str| match filter {
                Some(_) => format!(" AND {} % $2 = ANY($3)", drover_model::slot_sql(column)),
                None => String::new(),
            };
            let shards = filter.as_ref().map(|_| (&count, &held));
            let (deleted, terminated) = (ServiceState::Deleted.as_str(), InstanceState::Terminated.as_str());
            let open_actions = vec![ActionState::Pending.as_str(), ActionState::Running.as_str()];
            let read = pg("loading the live state");
            // One snapshot: every table as of the same commit.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(&read)?;
            let services: Vec<ServiceRecord> = records(
                "services",
                &tx.query(
                    &format!("SELECT id, record FROM services WHERE state != $1{}", in_shards("id")),
                    &with_shards(&deleted, shards),
                )
                .await
                .map_err(&read)?,
            )?;
            let instances: Vec<InstanceRecord> = records(
                "instances",
                &tx.query(
                    &format!("SELECT id, record FROM instances WHERE state != $1{}", in_shards("service_id")),
                    &with_shards(&terminated, shards),
                )
                .await
                .map_err(&read)?,
            )?;
            let actions: Vec<ActionRecord> = records(
                "actions",
                &tx.query(
                    &format!("SELECT id, record FROM actions WHERE state = ANY($1){}", in_shards("service_id")),
                    &with_shards(&open_actions, shards),
                )
                .await
                .map_err(&read)?,
            )?;
            // Rollouts and their members, every load: a part taken over
            // brings its services' members (the records name the rollouts).
            let (rollouts, rollout_members) = {
                let rollouts: Vec<RolloutRecord> = records(
                    "rollouts",
                    &tx.query("SELECT id, record FROM rollouts ORDER BY created_at, id COLLATE \"C\"", &[]).await.map_err(&read)?,
                )?;
                let rollout_members: Vec<RolloutMember> = records(
                    "rollout_services",
                    &tx.query(
                        "SELECT m.service_id, m.record FROM rollout_services m JOIN rollouts r ON r.id = m.rollout_id
                         WHERE r.state NOT IN ('succeeded', 'aborted', 'failed') ORDER BY m.rollout_id COLLATE \"C\", m.position",
                        &[],
                    )
                    .await
                    .map_err(&read)?,
                )?;
                let rollout_members: Vec<RolloutMember> = match &filter {
                    Some(f) => rollout_members.into_iter().filter(|m| f.holds(m.service.slot())).collect(),
                    None => rollout_members,
                };
                (rollouts, rollout_members)
            };
            // The fleet-wide records, unless the engine has them (a part taken over).
            let (images, hosts) = if fleet_wide {
                let images: Vec<Image> = records(
                    "images",
                    &tx.query("SELECT id, record FROM images ORDER BY created_at, id COLLATE \"C\"", &[]).await.map_err(&read)?,
                )?;
                let hosts: Vec<HostRecord> = records(
                    "hosts",
                    &tx.query("SELECT name, record FROM hosts ORDER BY registered_at, name COLLATE \"C\"", &[]).await.map_err(&read)?,
                )?;
                (images, hosts)
            } else {
                (Vec::new(), Vec::new())
            };
            let archives: Vec<drover_model::ArchiveRecord> = records(
                "archives",
                &tx.query("SELECT id, record FROM archives ORDER BY created_at, id COLLATE \"C\"", &[]).await.map_err(&read)?,
            )?;
            tx.commit().await.map_err(pg("finishing the load"))?;
            let archives = match &filter {
                Some(f) => archives.into_iter().filter(|a| f.holds(a.service_id.slot())).collect(),
                None => archives,
            };
            // In creation order, as SQLite's load gives them; sorted here
            // rather than by PostgreSQL (a third less time for a million
            // instances' query): an id's text sorts as its bytes do.
            let mut services = services;
            services.sort_unstable_by_key(|s| (s.created_at, s.id));
            let mut instances = instances;
            instances.sort_unstable_by_key(|i| (i.created_at, i.id));
            let mut actions = actions;
            actions.sort_unstable_by_key(|a| (a.created_at, a.id));
            Ok(Snapshot { services, instances, actions, images, rollouts, rollout_members, hosts, archives })
        })
    }
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_where(None, true)
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let batch = rows::encode(&changes)?;
        let slots = changes.slots();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let queue = self.queue.as_ref().ok_or(StoreError::WriterStopped)?;
        queue.send(Request { batch, slots, reply }).map_err(|_| StoreError::WriterStopped)?;
        answer.recv().map_err(|_| StoreError::WriterStopped)?
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let limit = clamp_limit(filter.limit.unwrap_or(DEFAULT_EVENT_LIMIT));
        let after = filter.after_seq.map_or(0, |s| s.min(i64::MAX as u64) as i64);
        let mut sql = String::from("SELECT seq, record FROM events WHERE seq > $1");
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(after)];
        if let Some(service) = &filter.service {
            params.push(Box::new(service.clone()));
            sql.push_str(&format!(" AND service = ${}", params.len()));
        }
        if let Some(instance) = &filter.instance {
            params.push(Box::new(instance.to_string()));
            sql.push_str(&format!(" AND instance_id = ${}", params.len()));
        }
        params.push(Box::new(limit));
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", params.len()));
        self.with_client(move |client| async move {
            let read = "reading events";
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            let stmt = client.prepare_cached(&sql).await.map_err(pg(read))?;
            let rows = client.query(&stmt, &refs).await.map_err(pg(read))?;
            seq_records(&rows, read)?.into_iter().map(|(seq, record)| rows::decode_event(seq, record)).collect()
        })
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = clamp_limit(limit);
        self.with_client(move |client| async move {
            let read = "reading the audit trail";
            let rows = client
                .query("SELECT seq, record FROM audit ORDER BY seq DESC LIMIT $1", &[&limit])
                .await
                .map_err(pg(read))?;
            let mut out = seq_records(&rows, read)?
                .into_iter()
                .map(|(seq, record)| rows::decode_audit(seq, record))
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn actions(&self, service: Option<ServiceId>, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let limit = clamp_limit(limit);
        self.with_client(move |client| async move {
            let read = pg("reading actions");
            // UUID v7 text sorts by creation time, so `id` breaks ties in order.
            // COLLATE "C": byte order, as SQLite compares text.
            let rows = match service {
                Some(service) => client
                    .query(
                        "SELECT id, record FROM actions WHERE service_id = $1
                         ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $2",
                        &[&service.to_string(), &limit],
                    )
                    .await
                    .map_err(&read)?,
                None => client
                    .query(
                        "SELECT id, record FROM actions ORDER BY created_at DESC, id COLLATE \"C\" DESC LIMIT $1",
                        &[&limit],
                    )
                    .await
                    .map_err(&read)?,
            };
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: &str = column(row, 0, "reading actions")?;
                let record: &str = column(row, 1, "reading actions")?;
                out.push(decode("actions", id, record)?);
            }
            Ok(out)
        })
    }

    fn last_event_seq(&self) -> Result<u64, StoreError> {
        self.with_client(|client| async move {
            let operation = "reading the newest event's seq";
            let row = client.query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[]).await.map_err(pg(operation))?;
            rows::seq_from_column("events", column(&row, 0, operation)?)
        })
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.with_client(move |client| async move {
            let operation = "reading a setting";
            let row = client
                .query_opt("SELECT value FROM cluster_settings WHERE name = $1", &[&name])
                .await
                .map_err(pg(operation))?;
            row.map(|r| column(&r, 0, operation)).transpose()
        })
    }

    fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let (name, value) = (name.to_string(), value.to_string());
        self.with_client(move |client| async move {
            client
                .execute(
                    "INSERT INTO cluster_settings (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    &[&name, &value],
                )
                .await
                .map_err(pg("putting a setting"))?;
            Ok(())
        })
    }

    fn record_start(&self, start: EngineStart) -> Result<(), StoreError> {
        // Its own pooled connection: once per start, before the engine commits
        // anything, and it must not wait behind the writer's queue.
        self.with_client(move |client| async move {
            client
                .execute(
                    "INSERT INTO engine_starts (at, seed) VALUES ($1, $2)",
                    &[&start.at.micros(), &(start.seed as i64)],
                )
                .await
                .map_err(pg("recording the engine's start"))?;
            Ok(())
        })
    }

    fn engine_starts(&self) -> Result<Vec<EngineStart>, StoreError> {
        self.with_client(|client| async move {
            let operation = "reading the engine's starts";
            let rows =
                client.query("SELECT at, seed FROM engine_starts ORDER BY seq", &[]).await.map_err(pg(operation))?;
            rows.iter()
                .map(|r| {
                    Ok(EngineStart {
                        at: Timestamp(column(r, 0, operation)?),
                        seed: column::<i64>(r, 1, operation)? as u64,
                    })
                })
                .collect()
        })
    }

    fn log_rows_before(&self, log: Log, cutoff: Timestamp, limit: usize) -> Result<Vec<LogRow>, StoreError> {
        let limit = clamp_limit(limit);
        self.with_client(move |client| async move {
            let operation = "reading old log rows";
            let sql = format!("SELECT seq, at, record FROM {} WHERE at < $1 ORDER BY seq LIMIT $2", log.table());
            let rows = client.query(&sql, &[&cutoff.micros(), &limit]).await.map_err(pg(operation))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: i64 = column(row, 0, operation)?;
                let at: i64 = column(row, 1, operation)?;
                let record: &str = column(row, 2, operation)?;
                let json = match log {
                    Log::Events => serde_json::to_string(&rows::decode_event(seq, record)?),
                    Log::Audit => serde_json::to_string(&rows::decode_audit(seq, record)?),
                }
                .map_err(|source| StoreError::CorruptRecord {
                    table: log.table(),
                    id: seq.to_string(),
                    source,
                })?;
                out.push(LogRow { seq: rows::seq_from_column(log.table(), seq)?, at: Timestamp(at), json });
            }
            Ok(out)
        })
    }

    fn prune_log(&self, log: Log, through: u64, cutoff: Timestamp) -> Result<u64, StoreError> {
        let through = i64::try_from(through).unwrap_or(i64::MAX);
        self.with_client(move |client| async move {
            let sql = format!("DELETE FROM {} WHERE seq <= $1 AND at < $2", log.table());
            client.execute(&sql, &[&through, &cutoff.micros()]).await.map_err(pg("pruning a log"))
        })
    }

    fn writer_counters(&self) -> Option<WriterCounters> {
        Some(PgStore::writer_counters(self))
    }
}
