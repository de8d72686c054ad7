//! The on-call shell around the pure pager (`drover-oncall`): one actor
//! task owns the `Pager`, steps alerts, acknowledgements and ticks in
//! arrival order, commits each batch's outputs to `oncall.db` in one
//! transaction, and only then answers callers and hands notifications and
//! feed posts to the channels.
//!
//! - `store`: `oncall.db` (SQLite, WAL, synchronous=FULL).
//! - `channels`: Slack-compatible and generic webhooks, SMTP; retries,
//!   fallback, the feed as the last resort.
//! - `routes`: the HTTP API (`/v1/integrations/*`, `/v1/pages`, `/v1/pager/*`).
//!
//! Engine events reach the pager through a tap on the engine actor's
//! commits (`runtime::EventTap`): only events `drover_oncall::engine::is_relevant`
//! accepts cross over, after they are durable.

pub mod channels;
pub mod routes;

use crate::error::ApiError;
use crate::runtime::EngineHandle;
use anyhow::Context;
use drover_model::{Event, Timestamp};
use drover_oncall::{Config, Input, Pager, PagerError, Reply};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use drover_store::oncall::OncallStore;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use routes::routes;

/// Messages drained per loop: one commit (one fsync) covers them all.
pub const MAX_BATCH: usize = 4096;
/// Queue in front of the pager; when full, senders wait (backpressure).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// The loop wakes at least this often so new deadlines are never slept through.
const MAX_IDLE: Duration = Duration::from_secs(1);
const MIN_TICK_WAIT: Duration = Duration::from_millis(5);
pub const CONFIG_FILE: &str = "oncall.toml";
pub const DB_FILE: &str = "oncall.db";
pub const SECRET_FILE: &str = "oncall.secret";

type Answer = Result<Reply, ApiError>;
type Query = Box<dyn FnOnce(&Pager) + Send + 'static>;

#[allow(clippy::large_enum_variant)]
enum Msg {
    Step { input: Input, reply: Option<oneshot::Sender<Answer>> },
    Query(Query),
}

/// How handlers reach the pager actor.
#[derive(Clone)]
pub struct PagerHandle {
    tx: mpsc::Sender<Msg>,
    pub store: Arc<OncallStore>,
    pub deliverer: channels::Deliverer,
    pub secret: Arc<Vec<u8>>,
    pub config: Arc<Config>,
}

impl PagerHandle {
    /// Steps `input`; answers once its effects are durable.
    pub async fn call(&self, input: Input) -> Result<Reply, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Step { input, reply: Some(reply) })
            .await
            .map_err(|_| ApiError::unavailable("the pager is shutting down"))?;
        rx.await.map_err(|_| ApiError::unavailable("the pager stopped before answering"))?
    }

    /// Queues an input without waiting.
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(Msg::Step { input, reply: None }).await.is_ok()
    }

    pub async fn query<R: Send + 'static>(&self, f: impl FnOnce(&Pager) -> R + Send + 'static) -> Result<R, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Query(Box::new(move |p: &Pager| {
                let _ = tx.send(f(p));
            })))
            .await
            .map_err(|_| ApiError::unavailable("the pager is shutting down"))?;
        rx.await.map_err(|_| ApiError::unavailable("the pager stopped before answering"))
    }
}

/// Reads `oncall.toml` from the data dir, or the built-in default.
pub fn load_config(data_dir: &Path) -> anyhow::Result<Config> {
    let path = data_dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Config::from_toml(&text).with_context(|| format!("in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The secret for signed links: from the config, else `oncall.secret` in
/// the data dir, created on first start from the OS's randomness.
fn load_secret(data_dir: &Path, config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &config.delivery.secret {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the link secret")?;
    let text = drover_oncall::sign::sign(&bytes, drover_oncall::PageId::new_at(0, 0), "secret");
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(text.into_bytes())
}

/// Engine events relevant to the pager, as the engine actor commits them.
pub fn event_tap() -> (crate::runtime::EventTap, mpsc::UnboundedReceiver<Vec<Event>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (crate::runtime::EventTap { filter: drover_oncall::engine::is_relevant, tx }, rx)
}

/// Opens `oncall.db`, restores the pager, re-sends undelivered
/// notifications, and starts the actor and the engine-event bridge.
pub async fn start(
    data_dir: &Path,
    public_url: String,
    engine: Option<EngineHandle>,
    engine_events: Option<mpsc::UnboundedReceiver<Vec<Event>>>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(PagerHandle, JoinHandle<()>)> {
    let config = load_config(data_dir)?;
    let secret = load_secret(data_dir, &config)?;
    let db = data_dir.join(DB_FILE);
    let store = {
        let db = db.clone();
        Arc::new(tokio::task::spawn_blocking(move || OncallStore::open(&db)).await??)
    };
    let now = crate::runtime::now();
    let window = config.flapping.window;
    let (open, recent, pending, pending_feed) = {
        let store = store.clone();
        let since = Timestamp(now.0 - window.as_micros() as i64);
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
    tracing::info!(open_pages = open.len(), undelivered = pending.len(), db = %db.display(), "pager restored");
    let seed = (now.0 as u64) ^ ((std::process::id() as u64) << 32) ^ 0x0ca1;
    let pager = Pager::restore(config.clone(), seed, open, &recent);
    let public_url = config.delivery.public_url.clone().unwrap_or(public_url);
    let deliverer = channels::Deliverer::new(store.clone(), config.delivery.clone(), public_url, secret.clone())?;
    for n in pending {
        deliverer.notify(n.notification);
    }
    for f in pending_feed {
        deliverer.post(f.seq, f.post);
    }
    let (tx, inbox) = mpsc::channel(QUEUE_CAPACITY);
    let handle = PagerHandle {
        tx,
        store: store.clone(),
        deliverer: deliverer.clone(),
        secret: Arc::new(secret),
        config: Arc::new(config),
    };
    let actor = Actor { pager, store, deliverer, inbox, stop };
    let task = tokio::spawn(actor.run());
    if let (Some(engine), Some(events)) = (engine, engine_events) {
        tokio::spawn(bridge_engine_events(events, engine, handle.clone()));
    }
    Ok((handle, task))
}

/// Turns committed engine events into alerts, with the service's team.
async fn bridge_engine_events(
    mut events: mpsc::UnboundedReceiver<Vec<Event>>,
    engine: EngineHandle,
    pager: PagerHandle,
) {
    while let Some(batch) = events.recv().await {
        for event in batch {
            let team = match &event.service {
                Some(name) => {
                    let name = name.clone();
                    engine.query(move |e| e.service_view(&name).map(|v| v.team)).await.ok().flatten()
                }
                None => None,
            };
            if let Some(alert) = drover_oncall::engine::to_alert(&event, team) {
                tracing::info!(key = %alert.dedup_key, action = ?alert.action, "engine event becomes an alert");
                if !pager.send(Input::Alert(alert)).await {
                    return;
                }
            }
        }
    }
}

struct Actor {
    pager: Pager,
    store: Arc<OncallStore>,
    deliverer: channels::Deliverer,
    inbox: mpsc::Receiver<Msg>,
    stop: watch::Receiver<bool>,
}

impl Actor {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = match self.pager.next_deadline() {
                Some(d) => Duration::from_micros(d.0.saturating_sub(crate::runtime::now().0).max(0) as u64)
                    .clamp(MIN_TICK_WAIT, MAX_IDLE),
                None => MAX_IDLE,
            };
            tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                n = self.inbox.recv_many(&mut batch, MAX_BATCH) => if n == 0 { break },
                _ = tokio::time::sleep(wait) => {}
            }
            self.handle(&mut batch).await;
            if *self.stop.borrow() {
                break;
            }
        }
        tracing::info!("pager actor stopped");
    }

    async fn handle(&mut self, batch: &mut Vec<Msg>) {
        let now = crate::runtime::now();
        let mut outputs = drover_oncall::Outputs::default();
        let mut replies: Vec<(oneshot::Sender<Answer>, Answer)> = Vec::new();
        let mut deferred: Vec<Query> = Vec::new();
        if self.pager.next_deadline().is_some_and(|d| d <= now) {
            outputs.extend(self.pager.step(Input::Tick, now));
        }
        let mut stepped = false;
        for msg in batch.drain(..) {
            match msg {
                Msg::Step { input, reply } => {
                    let mut out = self.pager.step(input, now);
                    stepped = true;
                    let answer = out.reply.take();
                    outputs.extend(out);
                    if let Some(reply) = reply {
                        let answer = match answer {
                            Some(Ok(r)) => Ok(r),
                            Some(Err(PagerError::NotFound(m))) => Err(ApiError::not_found(m)),
                            Some(Err(PagerError::Invalid(m))) => Err(ApiError::bad_request(m)),
                            None => Err(ApiError::internal("the pager gave no answer")),
                        };
                        replies.push((reply, answer));
                    }
                }
                Msg::Query(q) => {
                    if stepped {
                        deferred.push(q)
                    } else {
                        q(&self.pager)
                    }
                }
            }
        }
        if !outputs.is_empty() {
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || store.commit(&outputs).map(|seqs| (seqs, outputs))).await;
            match result {
                Ok(Ok((seqs, outputs))) => {
                    for (reply, answer) in replies.drain(..) {
                        let _ = reply.send(answer);
                    }
                    for n in outputs.notifications {
                        self.deliverer.notify(n);
                    }
                    for (seq, post) in seqs.into_iter().zip(outputs.feed) {
                        self.deliverer.post(seq, post);
                    }
                }
                Ok(Err(e)) => self.refuse(&mut replies, e.to_string()),
                Err(e) => self.refuse(&mut replies, e.to_string()),
            }
        }
        for (reply, answer) in replies {
            let _ = reply.send(answer);
        }
        for q in deferred {
            q(&self.pager);
        }
    }

    fn refuse(&self, replies: &mut Vec<(oneshot::Sender<Answer>, Answer)>, error: String) {
        // The pager's memory is ahead of the store now; later commits upsert
        // the pages again. Callers are told to retry; nobody is notified.
        tracing::error!(%error, "on-call commit failed; callers told, nothing notified");
        for (reply, _) in replies.drain(..) {
            let _ = reply
                .send(Err(ApiError::unavailable(format!("the on-call store could not persist this: {error}; retry"))));
        }
    }
}

/// `drover bench alerts`: alerts through the pager actor with group commit
/// to a real `oncall.db`, `keys` distinct dedup keys (the rest are repeats).
/// Returns alerts per second.
pub async fn bench_alerts(dir: &Path, alerts: usize, keys: usize, producers: usize) -> anyhow::Result<BenchResult> {
    std::fs::create_dir_all(dir)?;
    let (_stop_tx, stop) = watch::channel(false);
    let (handle, task) = start(dir, "http://127.0.0.1:0".into(), None, None, stop).await?;
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
