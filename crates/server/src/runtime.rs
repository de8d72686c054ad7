//! The engine actor: one task owns the `Engine`. Everything that changes the
//! fleet (HTTP commands, heartbeats, provider results and reports, ticks)
//! arrives on one channel and is stepped in arrival order. Each loop drains
//! what is queued, commits everything it decided in ONE store transaction
//! (group commit), and only after that commit answers callers and dispatches
//! actions: nobody is told about a change that a crash could lose.

use crate::error::ApiError;
use crate::telemetry;
use drover_engine::{Dispatch, Engine, Input, Reply};
use drover_model::{Changes, Timestamp};
use drover_providers::{Provider, ProviderEvent};
use drover_store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Messages drained per loop: bounds the latency one loop adds to the first
/// caller in it, while still amortising one commit over many inputs.
pub const MAX_BATCH: usize = 1024;
/// Queue in front of the actor; when full, HTTP callers wait (backpressure).
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// The loop wakes at least this often even when the engine has no deadline,
/// so a deadline added by an input is never slept through for long.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Floor on the wait before a tick: an engine that keeps reporting a past
/// deadline must not spin a core.
const MIN_TICK_WAIT: Duration = Duration::from_millis(5);

pub type ReplySender = oneshot::Sender<Result<Reply, ApiError>>;
pub type Query = Box<dyn FnOnce(&Engine) + Send + 'static>;

pub enum Msg {
    Input {
        input: Input,
        reply: Option<ReplySender>,
    },
    /// Read-only look at the engine. Run after the commit of any input that
    /// came before it (read-your-writes).
    Query(Query),
}

pub fn now() -> Timestamp {
    Timestamp(jiff::Timestamp::now().as_microsecond())
}

/// The handle HTTP handlers and providers use to reach the actor.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
}

impl EngineHandle {
    pub fn new(tx: mpsc::Sender<Msg>) -> Self {
        EngineHandle { tx }
    }

    /// Steps `input` and waits until what it decided is durable.
    pub async fn call(&self, input: Input) -> Result<Reply, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Input { input, reply: Some(reply) })
            .await
            .map_err(|_| ApiError::unavailable("the engine is shutting down"))?;
        rx.await.map_err(|_| ApiError::unavailable("the engine stopped before answering"))?
    }

    /// Runs `f` on the engine, after every input queued before it is committed.
    pub async fn query<R, F>(&self, f: F) -> Result<R, ApiError>
    where
        R: Send + 'static,
        F: FnOnce(&Engine) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let query: Query = Box::new(move |engine: &Engine| {
            let _ = tx.send(f(engine));
        });
        self.tx.send(Msg::Query(query)).await.map_err(|_| ApiError::unavailable("the engine is shutting down"))?;
        rx.await.map_err(|_| ApiError::unavailable("the engine stopped before answering"))
    }

    /// Queues an input without waiting for its outcome.
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(Msg::Input { input, reply: None }).await.is_ok()
    }
}

/// Hands actions to the providers that carry them out and feeds the results
/// back to the engine.
///
/// Each dispatched action names its provider (the one that built its
/// instance); a name this server has no provider for goes to the default.
#[derive(Clone)]
pub struct Dispatcher {
    providers: HashMap<String, Arc<dyn Provider>>,
    default_provider: Arc<dyn Provider>,
    engine: EngineHandle,
}

impl Dispatcher {
    pub fn new(
        providers: HashMap<String, Arc<dyn Provider>>,
        default_provider: Arc<dyn Provider>,
        engine: EngineHandle,
    ) -> Self {
        Dispatcher { providers, default_provider, engine }
    }

    pub fn dispatch(&self, actions: Vec<Dispatch>) {
        for Dispatch { provider, action } in actions {
            let provider = self.providers.get(&provider).cloned().unwrap_or_else(|| self.default_provider.clone());
            let kind = action.kind.name();
            metrics::counter!(telemetry::ACTIONS_DISPATCHED, "kind" => kind).increment(1);
            tracing::info!(action = %action.id, kind, instance = %action.instance, attempt = action.attempts,
                provider = provider.name(), "dispatching action");
            let (id, attempt) = (action.id, action.attempts);
            let execution = provider.execute(action);
            let handle = self.engine.clone();
            tokio::spawn(async move {
                let outcome = execution.await;
                let label = match &outcome {
                    drover_model::ActionOutcome::Succeeded { .. } => "succeeded",
                    drover_model::ActionOutcome::Failed { .. } => "failed",
                };
                metrics::counter!(telemetry::ACTION_RESULTS, "kind" => kind, "outcome" => label).increment(1);
                tracing::debug!(action = %id, kind, attempt, outcome = label, "action attempt finished");
                handle.send(Input::ActionResult { action: id, attempt, outcome }).await;
            });
        }
    }
}

/// Forwards what providers report on their own to the engine.
pub fn forward_provider_events(mut events: mpsc::Receiver<ProviderEvent>, engine: EngineHandle) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let input = match event {
                ProviderEvent::Beats(beats) => {
                    metrics::counter!(telemetry::HEARTBEATS_RECEIVED).increment(beats.len() as u64);
                    Input::Heartbeats(beats)
                }
                ProviderEvent::Gone { instance, detail } => {
                    tracing::warn!(%instance, %detail, "provider reports instance gone");
                    Input::ProviderReport { instance, gone: true, detail }
                }
                ProviderEvent::Router { service, detail } => {
                    tracing::warn!(%service, %detail, "provider reports on a router");
                    Input::RouterReport { service, detail }
                }
            };
            if !engine.send(input).await {
                break;
            }
        }
    });
}

/// Commits `changes` on a blocking thread; records latency and failures.
pub async fn commit(store: &Arc<dyn Store>, changes: Changes) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let store = store.clone();
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || store.commit(changes)).await;
    metrics::histogram!(telemetry::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    let result = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) => Err(format!("store commit task failed: {join}")),
    };
    if result.is_err() {
        metrics::counter!(telemetry::COMMIT_FAILURES).increment(1);
    }
    result
}

/// Where committed engine events that pass `filter` are copied (the pager
/// turns some into alerts). Sent only after the commit, never blocking.
pub struct EventTap {
    pub filter: fn(&drover_model::Event) -> bool,
    pub tx: mpsc::UnboundedSender<Vec<drover_model::Event>>,
}

pub struct Actor {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub inbox: mpsc::Receiver<Msg>,
    pub shutdown: watch::Receiver<bool>,
    pub tap: Option<EventTap>,
}

impl Actor {
    pub async fn run(mut self) {
        let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = self.wait_for_deadline();
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                received = self.inbox.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            self.handle_batch(&mut batch).await;
            if *self.shutdown.borrow() {
                break;
            }
        }
        tracing::info!("engine actor stopped");
    }

    fn wait_for_deadline(&self) -> Duration {
        match self.engine.next_deadline() {
            Some(deadline) => {
                let micros = deadline.0.saturating_sub(now().0).max(0) as u64;
                Duration::from_micros(micros).clamp(MIN_TICK_WAIT, MAX_IDLE)
            }
            None => MAX_IDLE,
        }
    }

    async fn handle_batch(&mut self, batch: &mut Vec<Msg>) {
        let now = now();
        metrics::histogram!(telemetry::ENGINE_BATCH_SIZE).record(batch.len() as f64);
        let mut changes = Changes::default();
        let mut dispatch = Vec::new();
        let mut replies: Vec<(ReplySender, Result<Reply, ApiError>)> = Vec::new();
        let mut deferred: Vec<Query> = Vec::new();
        let mut steps = 0u64;

        if self.engine.next_deadline().is_some_and(|d| d <= now) {
            let out = self.engine.step(Input::Tick, now);
            steps += 1;
            changes.extend(out.changes);
            dispatch.extend(out.dispatch);
        }
        for msg in batch.drain(..) {
            match msg {
                Msg::Input { input, reply } => {
                    if let Input::Heartbeats(beats) = &input {
                        if reply.is_some() {
                            // Provider beats are counted where they arrive.
                            metrics::counter!(telemetry::HEARTBEATS_RECEIVED).increment(beats.len() as u64);
                        }
                    }
                    let out = self.engine.step(input, now);
                    steps += 1;
                    changes.extend(out.changes);
                    dispatch.extend(out.dispatch);
                    if let Some(reply) = reply {
                        let answer = match out.reply {
                            Some(Ok(r)) => Ok(r),
                            Some(Err(e)) => Err(ApiError::from(e)),
                            None => Err(ApiError::internal("the engine gave no answer to this request")),
                        };
                        replies.push((reply, answer));
                    }
                }
                Msg::Query(query) => {
                    if steps == 0 {
                        query(&self.engine);
                    } else {
                        deferred.push(query);
                    }
                }
            }
        }
        metrics::counter!(telemetry::ENGINE_STEPS).increment(steps);

        let tapped: Vec<drover_model::Event> = match &self.tap {
            Some(tap) => changes.events.iter().filter(|e| (tap.filter)(e)).cloned().collect(),
            None => Vec::new(),
        };
        match commit(&self.store, changes).await {
            Ok(()) => {
                if let (Some(tap), false) = (&self.tap, tapped.is_empty()) {
                    let _ = tap.tx.send(tapped);
                }
                for (reply, answer) in replies {
                    let _ = reply.send(answer);
                }
                self.dispatcher.dispatch(dispatch);
            }
            Err(error) => {
                // The engine's memory is now ahead of the store. Later commits
                // upsert the newest records again; the running actions that
                // were not dispatched time out and are retried by the engine.
                tracing::error!(%error, actions = dispatch.len(), "group commit failed; nothing dispatched, callers told");
                for (reply, _) in replies {
                    let _ = reply.send(Err(ApiError::unavailable(format!(
                        "the store could not persist this change: {error}; retry later"
                    ))));
                }
            }
        }
        for query in deferred {
            query(&self.engine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{ActionOutcome, ActionRecord, AuditEntry, CreateService, EngineKind, Event, ServiceId, Snapshot};
    use drover_providers::BoxFuture;
    use drover_store::{EventFilter, StoreError};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A store whose commits fail while `broken` is set.
    #[derive(Default)]
    struct FlakyStore {
        broken: AtomicBool,
        commits: AtomicUsize,
    }
    impl Store for FlakyStore {
        fn load(&self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        fn commit(&self, _changes: Changes) -> Result<(), StoreError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(StoreError::WriterStopped);
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn events(&self, _filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
            Ok(Vec::new())
        }
        fn audit(&self, _limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
            Ok(Vec::new())
        }
        fn actions(&self, _service: Option<ServiceId>, _limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// A provider that only counts what it is asked to do and never answers.
    #[derive(Default)]
    struct CountingProvider {
        executed: AtomicUsize,
    }
    impl Provider for CountingProvider {
        fn name(&self) -> &str {
            "sim"
        }
        fn engines(&self) -> &'static [drover_model::EngineKind] {
            &[drover_model::EngineKind::Postgres]
        }
        fn execute(&self, _action: ActionRecord) -> BoxFuture<ActionOutcome> {
            self.executed.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
        fn start(&self, _sink: mpsc::Sender<ProviderEvent>) {}
    }

    fn create(name: &str) -> Input {
        Input::Command {
            actor: "test".into(),
            command: drover_engine::Command::CreateService(CreateService {
                name: name.into(),
                engine: EngineKind::Postgres,
                followers: 1,
                provider: None,
                sync: None,
                team: None,
                zones: None,
                max_failover_lag_bytes: None,
            }),
        }
    }

    fn actor(store: Arc<FlakyStore>, provider: Arc<CountingProvider>) -> (EngineHandle, watch::Sender<bool>) {
        let now = now();
        let config = drover_engine::Config::default();
        let (mut engine, _) = Engine::restore(config, 7, Snapshot::default(), now);
        for image in crate::default_images(now) {
            engine.step(
                Input::Command { actor: "system".into(), command: drover_engine::Command::RegisterImage(image) },
                now,
            );
        }
        let (tx, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let handle = EngineHandle::new(tx);
        let provider: Arc<dyn Provider> = provider;
        let dispatcher =
            Dispatcher::new(HashMap::from([("sim".to_string(), provider.clone())]), provider, handle.clone());
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(Actor { engine, store, dispatcher, inbox, shutdown, tap: None }.run());
        (handle, stop)
    }

    #[tokio::test]
    async fn a_failed_commit_answers_503_and_dispatches_nothing() {
        let store = Arc::new(FlakyStore::default());
        let provider = Arc::new(CountingProvider::default());
        let (handle, _stop) = actor(store.clone(), provider.clone());

        store.broken.store(true, Ordering::SeqCst);
        let refused = handle.call(create("db1")).await.expect_err("a failed commit is not a success");
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(provider.executed.load(Ordering::SeqCst), 0, "dispatched before a durable commit");

        store.broken.store(false, Ordering::SeqCst);
        let created = handle.call(create("db2")).await.expect("created once the store works");
        assert!(matches!(created, Reply::Service(_)));
        assert!(store.commits.load(Ordering::SeqCst) >= 1);
        assert!(provider.executed.load(Ordering::SeqCst) >= 2, "provisions dispatched after the commit");
    }

    #[tokio::test]
    async fn a_query_queued_after_a_command_in_the_same_batch_sees_its_result() {
        let store = Arc::new(FlakyStore::default());
        let provider = Arc::new(CountingProvider::default());
        let (handle, _stop) = actor(store.clone(), provider);
        // Current-thread runtime: the actor cannot run before we yield, so
        // both messages land in one batch, the command first.
        let (reply, replied) = oneshot::channel();
        handle.tx.try_send(Msg::Input { input: create("db1"), reply: Some(reply) }).ok().unwrap();
        let (seen, saw) = oneshot::channel();
        let commits_before_query = store.clone();
        handle
            .tx
            .try_send(Msg::Query(Box::new(move |e: &Engine| {
                let _ =
                    seen.send((e.service_view("db1").is_some(), commits_before_query.commits.load(Ordering::SeqCst)));
            })))
            .ok()
            .unwrap();
        assert!(replied.await.unwrap().is_ok());
        let (visible, commits) = saw.await.unwrap();
        assert!(visible, "the query did not see the command before it");
        assert!(commits >= 1, "the query ran before the command's commit");
    }
}
