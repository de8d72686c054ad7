//! The runtime shell of Drover: it feeds the pure engine from HTTP,
//! providers and timers, persists what the engine decides before anyone is
//! told, and dispatches the engine's actions to providers.
//!
//! - `actor`: the one actor loop (group commit, then effects, then answers)
//!   that both the engine and the pager run in.
//! - `runtime`: the engine in that loop, action dispatch, provider events,
//!   the input log; `oncall`: the pager in that loop, its channels, routes.
//! - `state`: what handlers share; `request`: what they read alike;
//!   `http`: the fleet's handlers; `routes`: the router over all handlers;
//!   `openapi`: the OpenAPI document. Handler modules import `state` and
//!   `request`, never each other; only `routes` and `openapi` import them.
//! - `error`: the `{"error"}` shape and the extractors that produce it.
//! - `telemetry`: Prometheus metrics.
//! - `listen`: the accept loop (connection bound, timeouts, JSON refusals);
//!   `tls`: the API's certificate.
//! - `data_dir`: the data dir locked, private, and the secret key loaded.

pub mod actor;
pub mod advisories;
pub mod agents;
mod archives;
pub mod auth;
pub mod checks;
pub mod cluster;
mod credentials;
pub mod data_dir;
pub mod deferred;
mod error;
pub mod fleet_health;
pub mod fleet_records;
mod followers;
pub mod forward;
pub mod heartbeat_feed;
pub mod held;
pub mod hosts;
pub mod http;
mod images;
mod labels;
pub mod lease;
pub mod lifecycle;
pub mod listen;
mod maintenance;
pub mod node_commands;
pub mod oncall;
pub mod openapi;
pub mod request;
pub mod retention;
pub mod rollout_gate;
mod rollouts;
pub mod routers;
pub mod routes;
pub mod runbooks;
pub mod runtime;
pub mod shard_route;
pub mod silent_hosts;
pub mod sim_provider;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod ui;

use anyhow::Context;
use drover_engine::{Command, Engine, Input};
use drover_model::{EngineKind, Image};
use drover_providers::local::{LocalConfig, LocalProvider};
use drover_providers::pgbackrest::BackupRepo;
use drover_providers::runas::RunAs;
use drover_providers::{Provider, SimConfig, SimProvider};
use drover_store::{SqliteStore, Store};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use request::ACTOR_HEADER;

/// [`ServeOptions::lease_ttl`] unless told.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(6);

/// Everything `drover serve` is told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Holds `drover.db` (the store) and `sim-provider.json` (the sim fleet).
    pub data_dir: PathBuf,
    /// Keep the fleet's state in this PostgreSQL database
    /// (`postgres://USER@HOST:PORT/DB`) instead of `DATA_DIR/drover.db`.
    /// The API tokens with it; break-glass runs and on-call pages stay in the data dir's
    /// SQLite files either way.
    pub store: Option<String>,
    /// This node's name in the fleet's lease (PostgreSQL store only):
    /// unique among the nodes sharing the store [default: the host name].
    pub node: Option<String>,
    /// How long the fleet's lease lasts unrenewed (PostgreSQL store): a
    /// standby takes over about this long after the holder died; the
    /// holder stops itself before it can expire.
    pub lease_ttl: std::time::Duration,
    /// Split the fleet into this many shards (PostgreSQL store; the first
    /// node fixes the count). `None`: the store's count, one if unset.
    pub shards: Option<u16>,
    /// The simulated world served by `drover sim-provider` at this URL
    /// (shared by the nodes) instead of `DATA_DIR/sim-provider.json`.
    pub sim_provider_url: Option<String>,
    /// At most this many routers (one pgbouncer each) beside the control
    /// plane, for services on agent hosts [`DEFAULT_MAX_ROUTERS_BESIDE`].
    pub max_routers_beside: usize,
    pub listen: SocketAddr,
    pub engine: drover_engine::Config,
    pub sim: SimConfig,
    /// Run real PostgreSQL processes here (the `local` provider). `None`
    /// keeps only the sim (fast in-process tests).
    pub local: Option<LocalConfig>,
    /// Append every input the engine is given to this file (JSON lines,
    /// `runtime::LogLine`), for replay with the seed the store records.
    /// `None`: no log.
    pub input_log: Option<PathBuf>,
    /// Revoke the live `admin` token and write a new one to
    /// `DATA_DIR/admin.token` (the way back in when that file is lost).
    pub reset_admin_token: bool,
    /// Serve HTTPS with this certificate; `None`: plain HTTP.
    pub tls: Option<tls::TlsSource>,
    /// Connection bound, timeouts, header size (`listen`).
    pub http: listen::HttpLimits,
    /// More runbooks: every `*.toml` file here, loaded and checked at start
    /// beside the shipped ones (a bad file stops the start).
    pub runbooks_dir: Option<PathBuf>,
    /// A control plane with no host of its own (`--no-local`): no built-in
    /// host is registered, and the `local` provider's actions all go to the
    /// agents of the hosts their instances are placed on (`agents`).
    pub agents_only: bool,
    /// How long the event log and the audit trail are kept in the store
    /// before they are archived to compressed files (`retention`).
    pub retention: retention::Retention,
    /// The public status site: thresholds, sampling, title (`status`).
    pub status: status::StatusOptions,
}

/// [`ServeOptions::max_routers_beside`] unless told: a pgbouncer takes a few
/// megabytes and a process; past a thousand, routers belong on hosts of
/// their own.
pub const DEFAULT_MAX_ROUTERS_BESIDE: usize = 1000;

impl ServeOptions {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServeOptions {
            data_dir: data_dir.into(),
            store: None,
            node: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            shards: None,
            sim_provider_url: None,
            max_routers_beside: DEFAULT_MAX_ROUTERS_BESIDE,
            listen,
            engine: serve_engine_config(),
            sim: SimConfig::default(),
            local: None,
            input_log: None,
            reset_admin_token: false,
            tls: None,
            http: listen::HttpLimits::default(),
            runbooks_dir: None,
            agents_only: false,
            retention: retention::Retention::default(),
            status: status::StatusOptions::default(),
        }
    }
}

/// The engine's defaults, with the silence bounds of this control plane's
/// own agents: the local provider (and the sim provider, at the same
/// cadence) beat every `local::HEARTBEAT_INTERVAL`, so silence counts after
/// `local::UNCERTAIN_AFTER` instead of the engine's generic 3 s (agents that
/// beat once a second). The simulator keeps the engine's defaults.
pub fn serve_engine_config() -> drover_engine::Config {
    drover_engine::Config {
        uncertain_after: drover_providers::local::UNCERTAIN_AFTER,
        // An uncertain instance is probed again every second: a probe is one
        // connection and one query, and a frozen primary that a first probe
        // missed (it froze while uncertain) costs one second, not five.
        probe_interval: SERVE_PROBE_INTERVAL,
        // The health gate reads the checks and pages, kept here
        // (`rollout_gate`).
        rollout_gate_reports: true,
        ..drover_engine::Config::default()
    }
}

/// See [`serve_engine_config`].
const SERVE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds `opts.listen`, starts up, serves until `shutdown` completes, then
/// stops cleanly (in-flight requests finish, the engine's last batch commits).
pub async fn serve(mut opts: ServeOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let prepared = data_dir::prepare(&mut opts)?;
    let tls = tls_acceptor(&opts)?;
    let listener = listen::bind(opts.listen).with_context(|| format!("cannot listen on {}", opts.listen))?;
    run(listener, tls, opts, prepared, Arc::default(), shutdown).await
}

/// The TLS acceptor of `opts.tls` (the self-signed pair generated if asked
/// and missing), before anything binds: a bad certificate stops the start.
fn tls_acceptor(opts: &ServeOptions) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    tls::install_crypto_provider();
    let Some(source) = &opts.tls else { return Ok(None) };
    let (acceptor, cert) = tls::acceptor(source, &opts.data_dir, opts.listen)?;
    tracing::info!(cert = %cert.display(), "serving HTTPS");
    Ok(Some(acceptor))
}

/// The PostgreSQL store at `url`. The data dir's `drover.db` is still
/// opened (and migrated) first: the break-glass tables
/// stay there in this release. A fleet found in it is not the one served
/// (moving it is `drover store migrate`): say so loudly, unless that
/// command moved it from there.
async fn open_postgres_store(url: String, db_path: PathBuf) -> anyhow::Result<drover_store::PgStore> {
    let path = db_path.clone();
    // Moved by `drover store migrate`: the copy left in the file is known.
    // A data dir that never had an SQLite store gets none: nothing of a node
    // on a shared store lives in drover.db.
    let moved = db_path.with_file_name(drover_store::migrate::MOVED_MARKER).exists();
    let left_behind = if moved || !db_path.exists() {
        0
    } else {
        tokio::task::spawn_blocking(move || -> Result<usize, drover_store::StoreError> {
            Ok(SqliteStore::open(&path)?.load()?.services.len())
        })
        .await?
        .with_context(|| format!("cannot read {} to see whether it holds a fleet", db_path.display()))?
    };
    let store = tokio::task::spawn_blocking(move || drover_store::PgStore::connect(&url))
        .await?
        .context("cannot open the PostgreSQL store")?;
    if left_behind > 0 {
        tracing::warn!(
            services = left_behind,
            sqlite = %db_path.display(),
            store = store.target(),
            "the SQLite store in the data dir holds services that the PostgreSQL store does not serve"
        );
    }
    tracing::info!(store = store.target(), "fleet state in PostgreSQL");
    Ok(store)
}

/// A server started in the background (tests use port 0 and read `addr`).
pub struct RunningServer {
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// The shards this node holds and the other shards' holders, as its
    /// HTTP layer routes by them (not split by default).
    pub shards: lease::Shards,
}

impl RunningServer {
    /// Base URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("server task panicked")?
    }
    /// Aborts the server task without a clean shutdown (not a real crash:
    /// blocking store work already started still finishes).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Binds (port 0 picks a free port) and starts serving in a background
/// task; returns once the address is bound. `/healthz` answers 503 until
/// start-up is done, then 200.
pub async fn start(mut opts: ServeOptions) -> anyhow::Result<RunningServer> {
    let prepared = data_dir::prepare(&mut opts)?;
    let tls = tls_acceptor(&opts)?;
    let listener = listen::bind(opts.listen).with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let has_tls = tls.is_some();
    let shards = lease::Shards::default();
    let task = tokio::spawn(run(listener, tls, opts, prepared, Arc::clone(&shards), async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer { addr, tls: has_tls, stop: Some(stop), task, shards })
}

/// The sim images registered at start-up, one per engine kind. Images are
/// content-addressed, so registering them again on every start is a no-op.
pub fn default_images(now: drover_model::Timestamp) -> Vec<Image> {
    let image = |engine, version: &str, packages: &[(&str, &str)]| {
        let packages: BTreeMap<String, String> = packages.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Image::new(engine, version, BTreeMap::new(), packages, now)
    };
    vec![
        image(EngineKind::Postgres, "15-sim", &[("postgresql-15", "15.18"), ("openssl", "3.0.17")]),
        image(EngineKind::Redis, "7.0-sim", &[("redis-server", "7.0.15"), ("openssl", "3.0.17")]),
        image(EngineKind::Kafka, "3.7-sim", &[("kafka", "3.7.2"), ("openjdk-17-jre", "17.0.16")]),
    ]
}

async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    opts: ServeOptions,
    prepared: data_dir::Prepared,
    shards: lease::Shards,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Held until this function returns: one control plane per data dir.
    let data_dir::Prepared { lock: _lock, key } = prepared;
    let addr = listener.local_addr()?;
    let node_name = lease::node_name(opts.node.as_deref());
    let state = state::AppState {
        ready: Arc::new(OnceLock::new()),
        metrics: telemetry::install(),
        standby: Arc::default(),
        shards,
        node: node_name.as_str().into(),
        key: key.clone(),
        desk: Arc::default(),
        failures: Arc::default(),
        taking_over: Arc::default(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    // Serve from the first moment so /healthz can say 503 while we start.
    let mut http_stop = stop_rx.clone();
    let app = routes::router(state.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let limits = opts.http.clone();
    let http_task = tokio::spawn(async move {
        listen::serve(listener, app, tls, limits, async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        })
        .await
    });
    tracing::info!(%addr, data_dir = %opts.data_dir.display(), "drover listening; starting up");

    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutdown requested");
    };
    tokio::pin!(shutdown);

    let actor_task = tokio::select! {
        started = start_up(&opts, &state, stop_rx.clone(), format!("{scheme}://{addr}"), key) => match started {
            Ok(task) => Some(task),
            Err(e) => {
                let _ = stop_tx.send(true);
                let _ = http_task.await;
                return Err(e);
            }
        },
        _ = &mut shutdown => None,
    };
    if actor_task.is_some() {
        tracing::info!(%addr, "drover ready");
        (&mut shutdown).await;
    }

    let _ = stop_tx.send(true);
    if let Some(actor) = actor_task {
        let _ = actor.await;
    }
    match http_task.await {
        Ok(result) => result.context("HTTP server failed")?,
        Err(e) => return Err(anyhow::anyhow!("HTTP server task panicked: {e}")),
    }
    tracing::info!("drover stopped");
    Ok(())
}

/// Opens the store and the provider, restores the engine, registers the
/// default images, starts the actor and the provider, then marks ready.
async fn start_up(
    opts: &ServeOptions,
    state: &state::AppState,
    stop: watch::Receiver<bool>,
    base_url: String,
    key: drover_secrets::SecretKey,
) -> anyhow::Result<JoinHandle<()>> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let db_path = opts.data_dir.join("drover.db");
    // The PostgreSQL store, when the fleet is kept there: the API tokens
    // are too (shared by the nodes).
    let mut shared: Option<Arc<drover_store::PgStore>> = None;
    let mut generation: Option<i64> = None;
    // A fleet of several shards: this node's hold on its own.
    let mut split: Option<(held::Keeper, drover_store::ShardFilter, drover_engine::Share)> = None;
    let node_name = lease::node_name(opts.node.as_deref());
    let node_url = lease::advertised_url(&base_url);
    let store: Arc<dyn Store> = match &opts.store {
        None => {
            // A fleet moved to PostgreSQL is served from there only: this
            // file's copy is stale, and acting on it would act twice.
            let moved = opts.data_dir.join(drover_store::migrate::MOVED_MARKER);
            if let Ok(text) = std::fs::read_to_string(&moved) {
                let to = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["to"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "a PostgreSQL store".into());
                anyhow::bail!(
                    "the fleet of {} was moved to {to} by `drover store migrate` ({}): start with --store \
                     postgres://... (the tokens moved with the fleet; the data dir keeps the key); the SQLite copy is stale \
                     and is not served",
                    opts.data_dir.display(),
                    moved.display()
                );
            }
            let path = db_path.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                .await?
                .with_context(|| format!("cannot open the store at {}", db_path.display()))?;
            Arc::new(store)
        }
        Some(url) => {
            lease::check_node_name(&node_name).map_err(|e| anyhow::anyhow!(e))?;
            let store = open_postgres_store(url.clone(), db_path.clone()).await?;
            let check: String = key.derive("drover key check v1").iter().map(|b| format!("{b:02x}")).collect();
            let (store, other) = {
                let node = node_name.clone();
                tokio::task::spawn_blocking(move || {
                    let other = store.agree_on_key(&node, &check);
                    (store, other)
                })
                .await?
            };
            if let Some(by) = other.context("cannot check this node's secret key against the store's")? {
                anyhow::bail!(
                    "this node's secret key is not the one the other nodes of this store use (node {by:?} started with \
                     another): what one node seals the others could not open. Give every node the same key: \
                     DROVER_SECRET_KEY, or a copy of {by}'s secret.key in this data dir"
                );
            }
            let (node, address) = (node_name.clone(), node_url.clone());
            let store = Arc::new(store);
            // A standby keeps commands its holder could not take (`deferred`).
            let _ = state.desk.set(Arc::clone(&store));
            let count = {
                let (store, requested) = (Arc::clone(&store), opts.shards);
                tokio::task::spawn_blocking(move || store.shard_count(requested))
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            };
            if count > 1 {
                // A fleet split into shards: ready at once, over the
                // shards the first round gives (maybe none), handed over
                // as they move (`held`).
                let mut keeper = held::Keeper::new(
                    Arc::clone(&store),
                    node,
                    address,
                    opts.lease_ttl,
                    count,
                    Arc::clone(&state.shards),
                );
                let (filter, share) = keeper.first().await.context("cannot take this node's shards")?;
                tracing::info!(node = %node_name, shards = count, held = ?filter.held, "this node holds its shards of the fleet");
                split = Some((keeper, filter, share));
                shared = Some(Arc::clone(&store));
                store
            } else {
                let standby = Arc::clone(&state.standby);
                let (store, held) = lease::hold_the_fleet(store, node, address, opts.lease_ttl, standby).await?;
                state.taking_over.store(true, std::sync::atomic::Ordering::SeqCst);
                shared = Some(Arc::clone(&store));
                generation = Some(held);
                store
            }
        }
    };
    let this_node = cluster::ThisNode {
        name: node_name,
        url: node_url,
        shared: shared.clone().map(|store| (store, opts.lease_ttl)),
        shards: Arc::clone(&state.shards),
        key: key.clone(),
    };
    // Tokens before anything answers: the first start writes admin.token.
    let auth = {
        let (db, dir, reset) = (db_path.clone(), opts.data_dir.clone(), opts.reset_admin_token);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<auth::Tokens>> {
            let tokens = match shared {
                Some(pg) => auth::Tokens::with_store(drover_store::tokens::TokenStore::postgres(pg)),
                None => auth::Tokens::open(&db),
            }
            .context("cannot read the API tokens")?;
            auth::ensure_admin_token(&dir, &tokens, reset, runtime::now())?;
            Ok(Arc::new(tokens))
        })
        .await??
    };
    // Shared by the nodes with a PostgreSQL store: a freeze of automation
    // made through one node holds on the node that takes the fleet over.
    let breakglass = match &this_node.shared {
        Some((pg, _)) => Arc::new(drover_store::breakglass::BreakGlassStore::postgres(Arc::clone(pg))),
        None => {
            let db = db_path.clone();
            let store = tokio::task::spawn_blocking(move || drover_store::breakglass::BreakGlassStore::open(&db))
                .await?
                .context("cannot open the advisory and runbook tables")?;
            Arc::new(store)
        }
    };
    let runbooks = runbooks::load_all(opts.runbooks_dir.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sim: Arc<dyn Provider> = match &opts.sim_provider_url {
        // The world as its own process, shared by every node (issue 16).
        Some(url) if split.is_some() => sim_provider::RemoteSim::with_shards(
            url,
            this_node.name.clone(),
            opts.sim.heartbeat_interval,
            Arc::clone(&state.shards),
        ),
        Some(url) => sim_provider::RemoteSim::new(url, this_node.name.clone(), generation, opts.sim.heartbeat_interval),
        None => {
            let sim_path = opts.data_dir.join("sim-provider.json");
            SimProvider::open(&sim_path, opts.sim.clone())
                .with_context(|| format!("cannot open the sim provider at {}", sim_path.display()))?
        }
    };
    let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    providers.insert("sim".into(), sim.clone());
    let mut extra_images = Vec::new();
    // The routers of the services on agent hosts run here, beside the
    // control plane, whether or not it has a host of its own.
    let routers_beside = match drover_providers::local::ControlPlaneRouters::open(&opts.data_dir) {
        Ok(routers) => {
            routers.limit_to(opts.max_routers_beside);
            Some(agents::RoutersBeside { routers, key: key.clone() })
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the routers beside the control plane: services on agent hosts have no URL");
            None
        }
    };
    if opts.agents_only {
        providers.insert("local".into(), Arc::new(agents::AgentsProvider { routers: routers_beside.clone() }));
    }
    if let Some(local_config) = opts.local.as_ref().filter(|_| !opts.agents_only) {
        match open_local(&opts.data_dir, local_config.clone(), opts.engine.backup_retention_full).await {
            Ok((local, images)) => {
                providers.insert("local".into(), local);
                extra_images.extend(images);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the local provider is not available; only `sim` services can be created")
            }
        }
    }
    // The engine may assign only providers that opened.
    let mut engine_config = opts.engine.clone();
    engine_config.providers = {
        let mut names: Vec<String> = providers.keys().cloned().collect();
        names.sort();
        names
    };
    engine_config.provider_engines = providers.iter().map(|(name, p)| (name.clone(), p.engines().to_vec())).collect();
    // Without a host of its own, a service goes to the agents only when asked
    // (`"provider": "local"`): the sim stays the default, as before.
    if opts.agents_only && engine_config.default_provider == "local" {
        engine_config.default_provider = "sim".into();
    }
    if opts.agents_only {
        // Its `local` services run on agent hosts only: none is built
        // nowhere before the first host registers (or, on a split fleet,
        // before this node learns it).
        engine_config.hosted_providers = vec!["local".into()];
    }
    if !providers.contains_key(&engine_config.default_provider) {
        tracing::warn!(wanted = %engine_config.default_provider, "default provider not available; using sim");
        engine_config.default_provider = "sim".into();
    }

    let snapshot = match (&split, &this_node.shared) {
        (Some((_, filter, share)), Some((pg, _))) => {
            engine_config.share = *share;
            let (pg, filter) = (Arc::clone(pg), filter.clone());
            tokio::task::spawn_blocking(move || pg.load_shards(&filter))
                .await?
                .context("cannot load this node's shards")?
        }
        _ => {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load()).await?.context("cannot load the store")?
        }
    };
    tracing::info!(
        services = snapshot.services.len(),
        instances = snapshot.instances.len(),
        open_actions = snapshot.actions.len(),
        images = snapshot.images.len(),
        "store loaded"
    );
    let now = runtime::now();
    let seed = (now.0 as u64) ^ ((std::process::id() as u64) << 32);
    {
        // Before the engine decides anything: its seed is what makes its
        // decisions (and event ids) reproducible from an input log.
        let store = store.clone();
        let start = drover_store::EngineStart { at: now, seed };
        tokio::task::spawn_blocking(move || store.record_start(start))
            .await?
            .context("cannot record the engine's start in the store")?;
    }
    let input_log = match &opts.input_log {
        Some(path) => Some(
            runtime::InputLog::open(path).with_context(|| format!("cannot open the input log {}", path.display()))?,
        ),
        None => None,
    };
    let (engine, restored) = Engine::restore(engine_config, seed, snapshot, now);

    let (handle, inbox) = actor::channel::<runtime::EngineMachine>(runtime::LIMITS);
    let default_provider = providers.get(&engine.config().default_provider).cloned().unwrap_or_else(|| sim.clone());
    let agent_channel = agents::AgentChannel::new(generation);
    let builtin_host_name = (!opts.agents_only).then(host_name);
    let mut dispatcher = runtime::Dispatcher::new(providers.clone(), default_provider, handle.clone())
        .with_agents(agent_channel.clone(), builtin_host_name.clone())
        .with_replication_key(key.clone());
    if let Some(beside) = &routers_beside {
        dispatcher = dispatcher.with_routers(beside.routers.clone());
    }
    let (pager_wakeup, wakeup) =
        runtime::pager_wakeup(|e| drover_oncall::engine::is_relevant(e) || drover_oncall::engine::is_announcement(e));
    let mut machine =
        runtime::EngineMachine::new(engine, store.clone(), dispatcher.clone(), Some(pager_wakeup), input_log);
    machine.log_start(now, seed);
    let mut changes = restored.changes;
    // Dispatched only after the commit below, like every other output.
    let mut redispatch = restored.dispatch;

    // The real image last: the engine builds new services from the newest.
    for image in default_images(now).into_iter().chain(extra_images) {
        let out = machine.step_logged(
            Input::Command { actor: "system".into(), role: None, command: Command::RegisterImage(image.clone()) },
            now,
        );
        if let Some(Err(e)) = &out.reply {
            tracing::warn!(image = %image.id, error = %e, "default image refused");
        }
        changes.extend(out.changes);
        redispatch.extend(out.dispatch);
    }
    // Freezes of automation by hand, applied before the engine's first
    // tick: once the actor runs, a rollout's tick or a remedy would act in
    // a frozen zone before a freeze applied later (runbooks::at_start)
    // caught up (seen: a held rollout started both its moves after a
    // kill -9 and restart).
    let freezes = {
        let store = breakglass.clone();
        tokio::task::spawn_blocking(move || store.freezes())
            .await?
            .context("cannot read the freezes of automation made by hand")?
    };
    for scope in freezes {
        let out = machine.step_logged(
            Input::Command {
                actor: "drover".into(),
                role: None,
                command: Command::FreezeAutomation { scope: scope.clone() },
            },
            now,
        );
        if let Some(Err(e)) = &out.reply {
            tracing::error!(scope, error = %e, "a freeze of automation could not be applied again");
        }
        changes.extend(out.changes);
        redispatch.extend(out.dispatch);
    }
    // This machine is a host: the built-in agent's (the local and sim
    // providers run their instances here). It adopts the instances placed
    // before hosts existed; registering it again on every start is harmless.
    // A control plane with no host of its own (`--no-local`) registers none.
    if !opts.agents_only {
        let builtin = builtin_host(machine.engine.config());
        let out = machine.step_logged(
            Input::Command {
                actor: "system".into(),
                role: None,
                command: Command::RegisterHost { host: builtin.clone(), builtin: true },
            },
            now,
        );
        if let Some(Err(e)) = &out.reply {
            tracing::warn!(host = %builtin.name, error = %e, "the built-in host was refused");
        }
        changes.extend(out.changes);
        redispatch.extend(out.dispatch);
    }
    runtime::commit(&store, changes).await.map_err(|e| anyhow::anyhow!("cannot persist the restored state: {e}"))?;
    if !redispatch.is_empty() {
        tracing::info!(actions = redispatch.len(), "re-dispatching actions that were running before the restart");
    }
    dispatcher.dispatch_routed(&machine.engine, redispatch);

    // On-call: engine events that need a person become alerts.
    let engine_events = oncall::EngineEvents { store: store.clone(), wakeup };
    let shared_pager = this_node.shared.as_ref().map(|(pg, _)| Arc::clone(pg));
    let shard_zero = split.as_ref().map(|(keeper, _, _)| keeper.shard_zero());
    let fleet_jobs = shard_zero.clone().map(held::ShardZero::follow).unwrap_or_default();
    let (oncall, oncall_task) =
        oncall::start(&opts.data_dir, base_url, Some(engine_events), stop.clone(), &key, shared_pager, shard_zero)
            .await
            .context("cannot start the pager")?;
    retention::spawn(store.clone(), opts.data_dir.clone(), opts.retention, fleet_jobs.clone(), stop.clone());
    let stop_for_status = stop.clone();
    if let Some(beside) = &routers_beside {
        let (routers, builtin) = (beside.routers.clone(), builtin_host_name.clone());
        routers::follow_primaries(handle.clone(), agent_channel.clone(), routers, builtin, key.clone(), stop.clone());
    }
    if let (Some(_), Some((pg, _))) = (&split, &this_node.shared) {
        // Images, hosts, freezes and rollouts' records kept by shard 0's holder.
        let shards = Arc::clone(&state.shards);
        fleet_records::spawn(handle.clone(), Arc::clone(pg), breakglass.clone(), Arc::clone(&shards), stop.clone());
        // What the status site sums: this node's shards' health (and
        // their parts of rollouts, which shard 0's holder drives on).
        fleet_health::spawn(handle.clone(), Arc::clone(pg), shards, this_node.name.clone(), stop.clone());
    }
    if split.is_some() {
        // Tokens created or revoked through the other nodes (the shared
        // store's): learned here within a second.
        let (tokens, mut stop) = (Arc::clone(&auth), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                let tokens = Arc::clone(&tokens);
                if let Ok(Err(error)) = tokio::task::spawn_blocking(move || tokens.refresh()).await {
                    tracing::warn!(%error, "cannot read the API tokens again from the store");
                }
            }
        });
    }
    let engine_task = match split {
        None => tokio::spawn(actor::Actor { machine, inbox, shutdown: stop, limits: runtime::LIMITS }.run()),
        Some((keeper, _, _)) => {
            let running = tokio::spawn(
                actor::Actor { machine, inbox, shutdown: stop.clone(), limits: runtime::LIMITS }.run_to_end(),
            );
            let read = Arc::clone(&breakglass);
            let freezes: held::Freezes = Arc::new(move || Ok(read.freezes()?));
            let kept = tokio::spawn(keeper.keep(handle.clone(), running, freezes, stop));
            tokio::spawn(async move {
                if let Ok(last) = kept.await {
                    let _ = last.await;
                }
            })
        }
    };
    let actor_task = tokio::spawn(async move {
        let _ = engine_task.await;
        let _ = oncall_task.await;
    });

    let (provider_tx, provider_rx) = mpsc::channel(1024);
    runtime::forward_provider_events(provider_rx, handle.clone());
    for provider in providers.values() {
        provider.start(provider_tx.clone());
    }
    drop(provider_tx);

    let mut names: Vec<String> = providers.keys().cloned().collect();
    names.sort();
    let ready = state::Ready {
        engine: handle,
        store,
        providers: names,
        provider_objects: providers,
        oncall,
        auth,
        host: host_name(),
        breakglass,
        advisory_cache: Default::default(),
        runbooks,
        agents: agent_channel,
        status: status::StatusSite::new(opts.status.clone()),
        routers_beside,
        node: this_node,
    };
    // What a kill -9 left half done is finished before the first request is
    // served: nobody reads an incident as unpaged, or automation as unfrozen,
    // in the moment after a restart.
    runbooks::at_start(&ready).await.context("cannot apply the freezes of automation made by hand")?;
    status::at_start(&ready).await;
    let _ = state.ready.set(ready);
    rollout_gate::spawn(state.ready.clone(), stop_for_status.clone());
    // What standbys kept while no node held the fleet, carried out now.
    if let Some(store) = state.desk.get() {
        deferred::spawn_carry_out(state.clone(), Arc::clone(store), fleet_jobs.clone(), stop_for_status.clone());
    }
    status::spawn_sampler(state.ready.clone(), fleet_jobs, stop_for_status);
    Ok(actor_task)
}

/// Instances the built-in host may hold: as many as one machine ran before
/// hosts existed (no bound of its own).
pub const BUILTIN_HOST_CAPACITY: u32 = 1_000_000;

/// The control plane's own machine as a host: named [`host_name`], in the
/// engine's first default zone (it takes members of every zone, see
/// `HostRecord::builtin`), reached at 127.0.0.1 (the local provider binds
/// there).
pub fn builtin_host(config: &drover_engine::Config) -> drover_model::RegisterHost {
    drover_model::RegisterHost {
        name: host_name(),
        zone: config.default_zones.first().cloned().unwrap_or_else(|| "zone-a".into()),
        address: "127.0.0.1".into(),
        capacity: BUILTIN_HOST_CAPACITY,
    }
}

/// This machine's host name: the host of every instance the providers of
/// this control plane run (an agent token's `host` must name it).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Opens the local provider with continuous WAL archiving into a pgBackRest
/// repository under the data dir, and describes the images it builds from,
/// one per engine whose servers this host has: the binaries' own version,
/// the configuration it writes, and the package manifest as dpkg reports it
/// (Kafka's with the tansu crate besides).
async fn open_local(
    data_dir: &std::path::Path,
    mut config: LocalConfig,
    retention_full: u32,
) -> anyhow::Result<(Arc<dyn Provider>, Vec<Image>)> {
    let run_as = RunAs::for_servers().context("cannot find or create the user servers run as")?;
    let repo = BackupRepo::open(&data_dir.join("local").join("backups"), run_as)
        .and_then(|repo| repo.with_retention_full(retention_full))
        .context("cannot prepare the pgBackRest repository")?;
    if config.backups.is_none() {
        config.backups = Some(repo);
    }
    let local = LocalProvider::open(data_dir, config).context("cannot open the local provider")?;
    let manifest = images::host_manifest().await;
    let postgres = local_postgres_image(&manifest).await;
    // Kafka's brokers keep their records in a PostgreSQL of this host.
    let kafka = postgres.as_ref().map(|pg| local_kafka_image(pg, &manifest));
    let images = [postgres, local_redis_image(&manifest).await, kafka];
    Ok((local, images.into_iter().flatten().collect()))
}

/// `dpkg-query`'s `package version` of each named package this host has.
async fn dpkg_versions(packages: &[&str]) -> BTreeMap<String, String> {
    let Ok(output) = tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .args(packages)
        .output()
        .await
    else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(p, v)| (p.to_string(), v.to_string())))
        .collect()
}

fn text_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The image of the local provider's Redis (Debian's `redis-server`), with
/// the host's dpkg manifest (binaries `redis-server`, `redis-tools` from
/// source `redis`), so the CVE audit sees what runs. None without Redis.
async fn local_redis_image(manifest: &[drover_model::Package]) -> Option<Image> {
    let output = tokio::process::Command::new("redis-server").arg("--version").output().await.ok()?;
    // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=…"
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let version = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?.to_string();
    let packages = dpkg_versions(&["redis-server", "redis-tools", "openssl", "libc6"]).await;
    let configuration = text_map(&[
        ("template", "drover local provider v1"),
        ("replication", "replicaof the primary, min-replicas-to-write for synchronous plans"),
        ("persistence", "RDB snapshots"),
        ("router", "HAProxy"),
    ]);
    Some(
        Image::new(EngineKind::Redis, version, configuration, packages, runtime::now())
            .with_settings_and_manifest(BTreeMap::new(), manifest.to_vec()),
    )
}

/// The image of the local provider's Kafka services: tansu brokers (the
/// pinned crate, `crates.io` in the manifest, so advisories of RustSec's
/// OSV export match it) storing their records in a PostgreSQL of this host
/// (`postgres`, the local PostgreSQL image: its packages are the host's).
fn local_kafka_image(postgres: &Image, manifest: &[drover_model::Package]) -> Image {
    let tansu = drover_providers::local::TANSU_VERSION;
    let mut packages = postgres.packages.clone();
    packages.insert("tansu".into(), tansu.into());
    let configuration = text_map(&[
        ("template", "drover local provider v1"),
        ("broker", "tansu (cargo install tansu --features postgres)"),
        ("storage", postgres.version.as_str()),
        ("router", "HAProxy"),
    ]);
    Image::new(EngineKind::Kafka, format!("tansu {tansu}"), configuration, packages, runtime::now())
        .with_settings_and_manifest(BTreeMap::new(), images::kafka_manifest(manifest))
}

/// The image of the local provider's PostgreSQL, content-addressed, with
/// the host's dpkg `manifest`.
async fn local_postgres_image(manifest: &[drover_model::Package]) -> Option<Image> {
    let bindir = tokio::process::Command::new("pg_config").arg("--bindir").output().await.ok()?;
    let bindir = String::from_utf8_lossy(&bindir.stdout).trim().to_string();
    let version = tokio::process::Command::new(format!("{bindir}/postgres")).arg("--version").output().await.ok()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let packages = dpkg_versions(&["postgresql-15", "libpq5", "pgbouncer", "pgbackrest", "openssl", "libc6"]).await;
    let configuration = text_map(&[
        ("bindir", bindir.as_str()),
        ("template", "drover local provider v1"),
        ("wal_level", "logical"),
        ("synchronous_commit", "on"),
        ("synchronous_mode", "non-strict (async while no follower streams)"),
        ("archive", "pgbackrest"),
        ("router", "pgbouncer, pool_mode=transaction"),
        ("auth", "scram-sha-256 over TCP, peer on the local socket"),
    ]);
    Some(
        Image::new(EngineKind::Postgres, version, configuration, packages, runtime::now())
            .with_settings_and_manifest(BTreeMap::new(), manifest.to_vec()),
    )
}
