//! The on-call shell around the pure pager (`drover-oncall`): one actor
//! task owns the `Pager`, steps alerts, acknowledgements and ticks in
//! arrival order, commits each batch's outputs to `oncall.db` in one
//! transaction, and only then answers callers and hands notifications and
//! feed posts to the channels.
//!
//! - `drover_store::oncall`: `oncall.db` (SQLite, WAL, synchronous=FULL).
//! - `channels`: Slack-compatible and generic webhooks, SMTP; retries,
//!   fallback, the feed as the last resort.
//! - `routes`: the HTTP API (`/v1/integrations/*`, `/v1/pages`, `/v1/pager/*`).
//!
//! The pager runs in the generic actor loop (`actor.rs`), like the engine.
//! Engine events reach it from the engine's store: after a commit holding
//! events `drover_oncall::engine::is_relevant` accepts, the engine actor
//! wakes the bridge (a channel of one pending wake-up, never blocking the
//! engine), which reads the log from where it stopped and turns relevant
//! events into alerts with the team the event names, and announcements
//! (`drover_oncall::engine::is_announcement`: maintenance scheduled) into
//! posts in the team's chat and the feed, never pages.

pub mod channels;
pub mod cursor;
pub mod routes;

use crate::actor::{self, Limits, Machine};
use crate::error::ApiError;
use anyhow::Context;
use drover_model::Timestamp;
use drover_oncall::{Config, Input, Outputs, Pager, PagerError, Reply};
use drover_store::oncall::OncallStore;
use drover_store::{EventFilter, Store, MAX_READ_LIMIT};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Messages drained per loop: one commit (one fsync) covers them all.
pub const MAX_BATCH: usize = 4096;
/// Queue in front of the pager; when full, senders wait (backpressure).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// The pager actor's limits.
pub const LIMITS: Limits = Limits { max_batch: MAX_BATCH, queue_capacity: QUEUE_CAPACITY };
pub const CONFIG_FILE: &str = "oncall.toml";
pub const DB_FILE: &str = "oncall.db";
pub const SECRET_FILE: &str = "oncall.secret";
/// What sealed values of `oncall.toml` are bound to (`drover secrets seal`).
pub const CONFIG_CONTEXT: &str = "oncall.toml";
/// What the webhook addresses stored with notifications are bound to.
pub const CONTACT_CONTEXT: &str = "oncall.db/contact";
/// What a sealed `oncall.secret` (from an older version) is bound to.
const SECRET_FILE_CONTEXT: &str = "oncall.secret";
/// The label the link-signing key is derived under from the data dir's key.
const LINK_KEY_LABEL: &str = "oncall/link-signing";

/// The pager with its store and its channels: what the pager actor owns.
pub struct PagerMachine {
    pager: Pager,
    store: Arc<OncallStore>,
    deliverer: channels::Deliverer,
    key: drover_secrets::SecretKey,
}

/// Seals the webhook addresses of notifications before they are stored:
/// `oncall.db` and the API show them sealed, the deliverer opens them.
pub fn seal_contacts(key: &drover_secrets::SecretKey, notifications: &mut [drover_oncall::Notification]) {
    for n in notifications {
        let contacts = match &mut n.recipient {
            drover_oncall::Recipient::Person { contacts, .. } | drover_oncall::Recipient::TeamChat { contacts, .. } => {
                contacts
            }
        };
        for c in contacts.iter_mut().filter(|c| c.is_secret() && !drover_secrets::is_sealed(&c.address)) {
            c.address = key.seal_str(CONTACT_CONTEXT, &c.address);
        }
    }
}

impl Machine for PagerMachine {
    type Input = Input;
    type Reply = Reply;
    type Outputs = Outputs;
    type View = Pager;
    const NAME: &'static str = "pager";

    fn view(&self) -> &Pager {
        &self.pager
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        self.pager.next_deadline()
    }

    fn tick(&mut self, now: Timestamp, out: &mut Outputs) {
        out.extend(self.pager.step(Input::Tick, now));
    }

    fn step(&mut self, input: Input, now: Timestamp, out: &mut Outputs) -> Option<Result<Reply, ApiError>> {
        let mut stepped = self.pager.step(input, now);
        let answer = stepped.reply.take();
        out.extend(stepped);
        answer.map(|a| {
            a.map_err(|e| match e {
                PagerError::NotFound(m) => ApiError::not_found(m),
                PagerError::Invalid(m) => ApiError::bad_request(m),
            })
        })
    }

    async fn commit(&mut self, mut out: Outputs, _batch_size: usize) -> Result<(), String> {
        if out.is_empty() {
            return Ok(());
        }
        seal_contacts(&self.key, &mut out.notifications);
        let store = self.store.clone();
        let (seqs, out) = tokio::task::spawn_blocking(move || store.commit(&out).map(|seqs| (seqs, out)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the on-call store: {e}"))?;
        for n in out.notifications {
            self.deliverer.notify(n);
        }
        for (seq, post) in seqs.into_iter().zip(out.feed) {
            self.deliverer.post(seq, post);
        }
        Ok(())
    }
}

/// How handlers reach the pager actor, and what they read besides it.
#[derive(Clone)]
pub struct PagerHandle {
    actor: actor::Handle<PagerMachine>,
    pub store: Arc<OncallStore>,
    pub deliverer: channels::Deliverer,
    pub secret: Arc<Vec<u8>>,
    pub config: Arc<Config>,
}

impl PagerHandle {
    /// Steps `input`; answers once its effects are durable.
    pub async fn call(&self, input: Input) -> Result<Reply, ApiError> {
        self.actor.call(input).await
    }

    /// Queues an input without waiting.
    pub async fn send(&self, input: Input) -> bool {
        self.actor.send(input).await
    }

    pub async fn query<R: Send + 'static>(&self, f: impl FnOnce(&Pager) -> R + Send + 'static) -> Result<R, ApiError> {
        self.actor.query(f).await
    }
}

/// Reads `oncall.toml` from the data dir, or the built-in default, and
/// opens the values given sealed with `key`.
pub fn load_config(data_dir: &Path, key: &drover_secrets::SecretKey) -> anyhow::Result<Config> {
    let path = data_dir.join(CONFIG_FILE);
    let mut config = match std::fs::read_to_string(&path) {
        Ok(text) => Config::from_toml(&text).with_context(|| format!("in {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    config
        .open_sealed(|sealed| key.open_str(CONFIG_CONTEXT, sealed).map_err(|e| e.to_string()))
        .with_context(|| format!("in {}", path.display()))?;
    Ok(config)
}

/// The key for signed links: `delivery.secret` from the config; else an
/// `oncall.secret` an older version wrote (kept so the links already sent
/// stay valid; sealed in place if it was in clear); else derived from the
/// data dir's secret key, so no file holds it.
fn load_secret(data_dir: &Path, config: &Config, key: &drover_secrets::SecretKey) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &config.delivery.secret {
        return Ok(s.expose().as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if text.is_empty() {
        return Ok(key.derive(LINK_KEY_LABEL).to_vec());
    }
    if drover_secrets::is_sealed(&text) {
        let secret = key.open_str(SECRET_FILE_CONTEXT, &text).with_context(|| {
            format!(
                "{} was sealed under another key: restore the secret key (DROVER_SECRET_KEY or secret.key), \
                 or delete {} (the signed links already sent stop working)",
                path.display(),
                path.display()
            )
        })?;
        return Ok(secret.into_bytes());
    }
    // An older version's key in clear: seal it in place (0600, atomic).
    drover_secrets::write_private(&path, key.seal_str(SECRET_FILE_CONTEXT, &text).as_bytes())
        .with_context(|| format!("cannot seal {}", path.display()))?;
    tracing::warn!(path = %path.display(), "the link-signing key was stored in clear; sealed it in place");
    Ok(text.into_bytes())
}

/// Where the pager reads engine events from, and when: the engine's store
/// and the wake-up the engine actor sends after a commit with events the
/// pager may care about (see `runtime::PagerWakeup`).
pub struct EngineEvents {
    pub store: Arc<dyn Store>,
    pub wakeup: mpsc::Receiver<()>,
}

/// Opens `oncall.db` (or, with `shared`, the pager's tables of the
/// PostgreSQL store every node shares), restores the pager, re-sends
/// undelivered notifications, and starts the actor and the engine-event
/// bridge.
pub async fn start(
    data_dir: &Path,
    public_url: String,
    engine_events: Option<EngineEvents>,
    stop: watch::Receiver<bool>,
    key: &drover_secrets::SecretKey,
    shared: Option<Arc<drover_store::PgStore>>,
    shard_zero: Option<watch::Receiver<bool>>,
) -> anyhow::Result<(PagerHandle, JoinHandle<()>)> {
    let config = load_config(data_dir, key)?;
    let secret = load_secret(data_dir, &config, key)?;
    let shared_store = shared.is_some();
    let store = match shared {
        Some(pg) => Arc::new(OncallStore::postgres(pg)),
        None => {
            let db = data_dir.join(DB_FILE);
            Arc::new(tokio::task::spawn_blocking(move || OncallStore::open(&db)).await??)
        }
    };
    let now = actor::now();
    let public_url = config.delivery.public_url.clone().unwrap_or(public_url);
    let deliverer =
        channels::Deliverer::new(store.clone(), config.delivery.clone(), public_url, secret.clone(), key.clone())?;
    let pager = restore(&store, &config, &deliverer, now).await?;
    tracing::info!(open_pages = pager.open_pages().count(), shared = shared_store, "pager restored");
    let (actor, inbox) = actor::channel::<PagerMachine>(LIMITS);
    let handle = PagerHandle {
        actor,
        store: store.clone(),
        deliverer: deliverer.clone(),
        secret: Arc::new(secret),
        config: Arc::new(config),
    };
    let machine = PagerMachine { pager, store, deliverer, key: key.clone() };
    // On a split fleet: the other nodes' engines' events are read every second too.
    let poll = shard_zero.is_some().then_some(std::time::Duration::from_secs(1));
    let actor = actor::Actor { machine, inbox, shutdown: stop.clone(), limits: LIMITS };
    let zero_for_bridge = shard_zero.clone();
    let task = match shard_zero {
        None => tokio::spawn(actor.run()),
        Some(zero) => {
            tokio::spawn(follow_shard_zero(handle.actor.clone(), tokio::spawn(actor.run_to_end()), zero, stop))
        }
    };
    if let Some(events) = engine_events {
        let zero = zero_for_bridge.map(crate::held::ShardZero::follow).unwrap_or_default();
        tokio::spawn(bridge_engine_events(events, handle.clone(), poll, zero));
    }
    Ok((handle, task))
}

/// The pager as the store has it: its open pages and those opened within
/// the flapping window, and every notification and feed post not yet
/// delivered handed to `deliverer` again (a node that died before
/// delivering them, or this one's previous run).
async fn restore(
    store: &Arc<OncallStore>,
    config: &Config,
    deliverer: &channels::Deliverer,
    now: Timestamp,
) -> anyhow::Result<Pager> {
    let (open, recent, pending, pending_feed) = {
        let store = store.clone();
        let since = Timestamp(now.0 - config.flapping.window.as_micros() as i64);
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((
                store.open_pages()?,
                store.pages_opened_since(since)?,
                store.pending_notifications()?,
                store.pending_feed()?,
            ))
        })
        .await??
    };
    let seed = (now.0 as u64) ^ ((std::process::id() as u64) << 32) ^ 0x0ca1;
    let pager = Pager::restore(config.clone(), seed, open, &recent);
    for n in pending {
        deliverer.notify(n.notification);
    }
    for f in pending_feed {
        deliverer.post(f.seq, f.post);
    }
    Ok(pager)
}

/// On a fleet of several shards, the pager acts only on shard 0's holder
/// (its writes are fenced there: `held::Keeper`). Whenever this node takes
/// shard 0, its pager is restored again from the shared store (what the
/// previous holder's pager did since this one was last restored: pages
/// opened, acknowledged, notifications not yet delivered) behind the same
/// handle, inputs sent meanwhile kept for it (`Handle::redirect`).
async fn follow_shard_zero(
    handle: actor::Handle<PagerMachine>,
    mut running: JoinHandle<PagerMachine>,
    mut zero: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    let mut held = *zero.borrow_and_update();
    loop {
        tokio::select! {
            changed = zero.changed() => if changed.is_err() { break },
            _ = &mut running => return,
        }
        let now_held = *zero.borrow_and_update();
        if now_held && !held {
            let inbox = handle.redirect(LIMITS);
            let Ok(old) = (&mut running).await else { return };
            match restore(&old.store, old.pager.config(), &old.deliverer, actor::now()).await {
                Ok(pager) => {
                    tracing::info!(
                        open_pages = pager.open_pages().count(),
                        "this node took shard 0: its pager restored from the store"
                    );
                    let machine = PagerMachine { pager, ..old };
                    running = tokio::spawn(
                        actor::Actor { machine, inbox, shutdown: stop.clone(), limits: LIMITS }.run_to_end(),
                    );
                }
                Err(error) => {
                    // Its callers are answered 503 from here on; the node's
                    // pager is gone until it restarts.
                    tracing::error!(%error, "this node took shard 0 but cannot restore its pager");
                    return;
                }
            }
        }
        held = now_held;
    }
    let _ = running.await;
}

/// Turns committed engine events into alerts, each with the team it names.
/// Reads the engine's event log on from its cursor whenever woken (and
/// every `poll`, on a fleet split into shards: the other nodes' engines do
/// not wake it), on the node that runs the fleet's jobs (`zero`). Every
/// event committed is handed on at least once, in the order read, however
/// far behind the pager falls: the cursor is kept in the store and read
/// again after a restart or when this node takes shard 0 (`cursor`).
async fn bridge_engine_events(
    mut events: EngineEvents,
    pager: PagerHandle,
    poll: Option<std::time::Duration>,
    zero: crate::held::ShardZero,
) {
    use cursor::{EventCursor, SETTING};
    let second = std::time::Duration::from_secs(1);
    let mut reading: Option<EventCursor> = None;
    let mut kept = 0u64;
    let mut lost = false;
    // After the pager did not take an event: read again within a second,
    // not at the next wake-up (on one node, the next engine event).
    let mut retry = false;
    // The first pass at once: what was committed before a restart.
    let mut first = true;
    loop {
        let wait = if poll.is_some() || retry || reading.as_ref().is_some_and(EventCursor::waiting) {
            poll.unwrap_or(second)
        } else {
            std::time::Duration::from_secs(3600)
        };
        if !std::mem::take(&mut first) {
            tokio::select! {
                woken = events.wakeup.recv() => if woken.is_none() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if !zero.here() {
            // Another node reads them; its cursor is read when this node
            // takes shard 0 again.
            reading = None;
            continue;
        }
        let cursor = match &mut reading {
            Some(cursor) => cursor,
            None => {
                let store = events.store.clone();
                let low = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, bool)> {
                    match store.setting(SETTING)? {
                        Some(kept) => Ok((kept.parse()?, true)),
                        // The first start with a kept cursor: from the newest
                        // event on, as before there was one (kept at once).
                        None => Ok((store.last_event_seq()?, false)),
                    }
                })
                .await;
                match low {
                    Ok(Ok((low, stored))) => {
                        kept = if stored { low } else { u64::MAX };
                        reading.insert(EventCursor::at(low))
                    }
                    Ok(Err(error)) => {
                        tracing::error!(%error, "the pager cannot read where it stopped reading engine events; retrying");
                        tokio::time::sleep(second).await;
                        first = true;
                        continue;
                    }
                    Err(_) => return,
                }
            }
        };
        let mut after = cursor.low();
        loop {
            let store = events.store.clone();
            let filter = EventFilter { after_seq: Some(after), limit: Some(MAX_READ_LIMIT), ..Default::default() };
            let batch = match tokio::task::spawn_blocking(move || store.events(&filter)).await {
                Ok(Ok(batch)) => batch,
                Ok(Err(error)) => {
                    // Read again at the next wake-up (or the next second).
                    tracing::error!(%error, after, "the pager cannot read engine events; retrying");
                    tokio::time::sleep(second).await;
                    continue;
                }
                Err(_) => return,
            };
            let complete = batch.len() < MAX_READ_LIMIT;
            for event in batch {
                after = after.max(event.seq);
                if !cursor.take(event.seq) {
                    continue;
                }
                let input = match drover_oncall::engine::to_announcement(&event) {
                    Some(announcement) => Input::Announce(announcement),
                    None if !drover_oncall::engine::is_relevant(&event) => continue,
                    None => match drover_oncall::engine::to_alert(&event, event.team.clone()) {
                        Some(alert) => {
                            tracing::info!(key = %alert.dedup_key, action = ?alert.action, "engine event becomes an alert");
                            Input::Alert(alert)
                        }
                        None => continue,
                    },
                };
                // Answered once the pager has it durably: only then may the
                // cursor pass it.
                match pager.call(input).await {
                    Ok(_) => {}
                    Err(error) if error.status.is_client_error() => {
                        tracing::warn!(seq = event.seq, error = %error.message, "the pager refused an engine event");
                    }
                    Err(error) => {
                        // Its pager stopped or is fenced (shard 0 moved on):
                        // read again from the kept cursor next time.
                        tracing::warn!(seq = event.seq, error = %error.message, "the pager did not take an engine event");
                        lost = true;
                        break;
                    }
                }
            }
            if complete || lost {
                break;
            }
        }
        if std::mem::take(&mut lost) {
            reading = None;
            retry = true;
            continue;
        }
        retry = false;
        cursor.settle(std::time::Instant::now());
        if cursor.low() != kept {
            let (store, low) = (events.store.clone(), cursor.low());
            match tokio::task::spawn_blocking(move || store.put_setting(SETTING, &low.to_string())).await {
                Ok(Ok(())) => kept = low,
                // Kept at the next pass; meanwhile a restart reads some again.
                Ok(Err(error)) => tracing::warn!(%error, "the pager cannot keep where it read engine events to"),
                Err(_) => return,
            }
        }
    }
}

/// `drover bench alerts`: alerts through the pager actor with group commit
/// to a real `oncall.db`, `keys` distinct dedup keys (the rest are repeats).
/// Returns alerts per second.
pub async fn bench_alerts(dir: &Path, alerts: usize, keys: usize, producers: usize) -> anyhow::Result<BenchResult> {
    std::fs::create_dir_all(dir)?;
    let (_stop_tx, stop) = watch::channel(false);
    let (key, _) = drover_secrets::SecretKey::load_or_create(dir)?;
    let (handle, task) = start(dir, "http://127.0.0.1:0".into(), None, stop, &key, None, None).await?;
    let started = std::time::Instant::now();
    let per = alerts / producers.max(1);
    let mut tasks = Vec::new();
    for p in 0..producers.max(1) {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for i in 0..per {
                let key = format!("bench-{}", (p * per + i) % keys.max(1));
                let alert = drover_oncall::Alert {
                    class: Some("bench".into()),
                    ..drover_oncall::Alert::trigger(key, "benchmark alert")
                };
                let h = handle.clone();
                // Pipelined: many alerts in flight per producer, like many HTTP clients.
                waits.push(tokio::spawn(async move {
                    h.call(Input::Alert(alert)).await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
                }));
                if waits.len() >= 256 {
                    for w in waits.drain(..) {
                        w.await??;
                    }
                }
            }
            for w in waits {
                w.await??;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let total = per * producers.max(1);
    let open = handle.query(|p| p.open_pages().count()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(handle);
    task.abort();
    Ok(BenchResult {
        alerts: total,
        distinct_keys: keys,
        open_pages: open,
        seconds: elapsed.as_secs_f64(),
        alerts_per_sec: total as f64 / elapsed.as_secs_f64(),
    })
}

#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub alerts: usize,
    pub distinct_keys: usize,
    pub open_pages: usize,
    pub seconds: f64,
    pub alerts_per_sec: f64,
}
