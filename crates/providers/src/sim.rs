//! The `sim` provider: simulated instances that heartbeat on their own and
//! can be made to crash, hang, or be cut off from the control plane.
//!
//! The simulated machines outlive the control-plane process: the world lives
//! in a JSON file rewritten atomically before any action reports its outcome,
//! so a control plane killed with -9 and restarted finds every machine as it
//! left it (primaries even wrote on while it was down).
//!
//! Meant for a few thousand instances: each heartbeat round and each state
//! write walks the whole world (3,000 instances: a 670 KB file, a round in
//! ~1.5 ms; an action costs one fsync'd rewrite, ~10 ms, shared by every
//! action that queued behind it). The million-instance simulator lives in
//! the `sim` crate and does not use this provider. One process per file:
//! nothing locks it.
//!
//! Only actions make the world durable. WAL positions and beat sequence
//! numbers are derived from the wall clock when the file is read (primaries
//! wrote on while nobody watched; seq restarts from now in microseconds), so
//! neither needs a write per beat and neither steps back across a restart.
//!
//! An action whose change could not be saved reports `Failed { retryable:
//! true }`: its effect may or may not hold (it stays in memory and reaches
//! the disk with the next successful write); the retry makes it durable.
//!
//! `Gone`: when an action other than Provision, Fence, Retire, Archive or
//! Terminate targets an id the world does not hold (never provisioned, or
//! already terminated: the world keeps no tombstones), the action fails
//! without retry and a `ProviderEvent::Gone` is sent to the sink given to
//! `start`. A crash never produces `Gone`: it is detected through evidence.

mod state_file;
mod world;

pub use world::{SimInstance, WAL_BYTES_PER_SECOND};

use crate::{BoxFuture, Provider, ProviderError, ProviderEvent};
use drover_model::{ActionOutcome, ActionRecord, InstanceId};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use world::World;

/// The shortest heartbeat interval honoured; a zero interval would spin.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How often every audible instance beats: by default as often as the
    /// local provider's agent ([`crate::local::HEARTBEAT_INTERVAL`]), so one
    /// control plane's silence bound fits both.
    pub heartbeat_interval: Duration,
    /// Each execute() sleeps this long before acting, so the engine sees
    /// actions in flight as it would with a real provider.
    pub action_latency: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { heartbeat_interval: crate::local::HEARTBEAT_INTERVAL, action_latency: Duration::from_millis(50) }
    }
}

pub struct SimProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: SimConfig,
    state_path: PathBuf,
    /// Never held across an .await, nor while writing the file.
    world: Mutex<Versioned>,
    /// The highest world version known to be on disk. Held while writing, so
    /// writes land in order; actions that queue here behind a write find
    /// their change already durable and skip their own (group commit). The
    /// heartbeat loop never takes it, so a slow fsync does not delay beats.
    persisted: Mutex<u64>,
    /// Where `Gone` reports go; set by `start`.
    sink: Mutex<Option<mpsc::Sender<ProviderEvent>>>,
    /// Bumped by each `start`; an older heartbeat loop sees it and stops.
    loop_generation: AtomicU64,
}

/// The world and a counter bumped by every action that changed it.
struct Versioned {
    world: World,
    version: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The world is plain data that no panic leaves half-updated in a way
    // worse than losing the process; keep serving rather than cascade.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros().min(i64::MAX as u128) as i64,
        Err(_) => 0,
    }
}

impl SimProvider {
    /// Opens (or creates) the simulated world persisted at `state_path` (a JSON file). The world models
    /// machines that keep running while the control plane restarts: it survives a kill -9 of the
    /// process, since every mutation is written atomically (write temp file, fsync, rename, fsync dir)
    /// before execute() returns its outcome.
    ///
    /// Two processes must not open the same file at once (nothing locks it).
    pub fn open(state_path: &Path, config: SimConfig) -> Result<Arc<SimProvider>, ProviderError> {
        let now = now_micros();
        let world = match state_file::read(state_path, now)? {
            Some(world) => world,
            None => {
                state_file::create_directory(state_path)?;
                let world = World::empty(now);
                // Written now so an unwritable path fails here, not at the first action.
                state_file::write_atomically(state_path, &state_file::encode(&world))?;
                world
            }
        };
        tracing::info!(
            path = %state_path.display(),
            instances = world.instances().count(),
            "sim provider opened its world"
        );
        Ok(Arc::new(SimProvider {
            inner: Arc::new(Inner {
                config,
                state_path: state_path.to_path_buf(),
                world: Mutex::new(Versioned { world, version: 0 }),
                persisted: Mutex::new(0),
                sink: Mutex::new(None),
                loop_generation: AtomicU64::new(0),
            }),
        }))
    }

    /// For tests and dashboards: a copy of one simulated instance.
    pub fn instance(&self, id: InstanceId) -> Option<SimInstance> {
        lock(&self.inner.world).world.get(id).cloned()
    }

    /// For tests and dashboards: a copy of every simulated instance, by id.
    pub fn instances(&self) -> Vec<SimInstance> {
        lock(&self.inner.world).world.instances().cloned().collect()
    }

    pub fn state_path(&self) -> &Path {
        &self.inner.state_path
    }

    /// One attempt of `action` (after the configured latency), with the
    /// detail of a `Gone` when the target's machine is known to be gone:
    /// what `execute` does, for a caller that reports `Gone` itself (the
    /// world served as its own process, `drover sim-provider`).
    pub async fn carry_out(&self, action: ActionRecord) -> (ActionOutcome, Option<String>) {
        if !self.inner.config.action_latency.is_zero() {
            tokio::time::sleep(self.inner.config.action_latency).await;
        }
        let worker = self.inner.clone();
        match tokio::task::spawn_blocking(move || worker.apply(&action)).await {
            Ok(applied) => applied,
            Err(error) => (
                ActionOutcome::Failed {
                    error: format!("the sim provider failed while applying the action: {error}"),
                    retryable: true,
                },
                None,
            ),
        }
    }

    /// One heartbeat round now: a beat for every instance the control plane
    /// can hear (what the loop `start` runs sends each period).
    pub fn heartbeat_round(&self) -> Vec<drover_model::Beat> {
        lock(&self.inner.world).world.heartbeat(now_micros())
    }
}

impl Inner {
    /// Applies one action and makes sure the world it saw is durable before
    /// answering. Blocking (fsync): run it off the async workers.
    ///
    /// Durability is checked against the world version, not this action's
    /// own change: a retry that finds its effect already in place still waits
    /// until that effect is on disk (an earlier write may have failed), so a
    /// Succeeded outcome always describes a world a restart would find.
    fn apply(&self, action: &ActionRecord) -> (ActionOutcome, Option<String>) {
        let (applied, needed) = {
            let mut versioned = lock(&self.world);
            let applied = versioned.world.apply(action, now_micros());
            if applied.changed {
                versioned.version += 1;
            }
            (applied, versioned.version)
        };
        if let Err(error) = self.persist(needed) {
            tracing::warn!(action = %action.id, instance = %action.instance, %error, "sim world not persisted");
            // The change stays in memory; the retry writes it (see above).
            return (
                ActionOutcome::Failed {
                    error: format!("the simulated world could not be saved: {error}"),
                    retryable: true,
                },
                None,
            );
        }
        tracing::debug!(
            action = %action.id,
            kind = action.kind.name(),
            instance = %action.instance,
            attempt = action.attempts,
            outcome = ?applied.outcome,
            "sim action executed"
        );
        (applied.outcome, applied.gone)
    }

    /// Writes the world unless version `needed` is on disk already.
    fn persist(&self, needed: u64) -> Result<(), ProviderError> {
        let mut persisted = lock(&self.persisted);
        if *persisted >= needed {
            return Ok(());
        }
        let (bytes, version) = {
            let versioned = lock(&self.world);
            (state_file::encode(&versioned.world), versioned.version)
        };
        state_file::write_atomically(&self.state_path, &bytes)?;
        *persisted = version;
        Ok(())
    }

    fn report_gone(&self, instance: InstanceId, detail: String) {
        let Some(sink) = lock(&self.sink).clone() else { return };
        // Sent from its own task: a full channel must not hold up the outcome.
        tokio::spawn(async move {
            let _ = sink.send(ProviderEvent::Gone { instance, detail }).await;
        });
    }
}

impl Provider for SimProvider {
    fn name(&self) -> &str {
        "sim"
    }

    /// Every engine: a simulated instance heartbeats and fails the same way
    /// whatever it would run.
    fn engines(&self) -> &'static [drover_model::EngineKind] {
        &[drover_model::EngineKind::Postgres, drover_model::EngineKind::Redis, drover_model::EngineKind::Kafka]
    }

    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome> {
        let this = SimProvider { inner: self.inner.clone() };
        Box::pin(async move {
            let target = action.instance;
            let (outcome, gone) = this.carry_out(action).await;
            if let Some(detail) = gone {
                this.inner.report_gone(target, detail);
            }
            outcome
        })
    }

    /// Starts the heartbeat loop. A second call replaces the first loop
    /// (and the sink `Gone` reports go to). Rounds with nothing audible send
    /// no event.
    fn start(&self, sink: mpsc::Sender<ProviderEvent>) {
        let generation = self.inner.loop_generation.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.inner.sink) = Some(sink.clone());
        let inner = self.inner.clone();
        let period = inner.config.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if sink.is_closed() || inner.loop_generation.load(Ordering::SeqCst) != generation {
                    break;
                }
                let beats = lock(&inner.world).world.heartbeat(now_micros());
                if beats.is_empty() {
                    continue;
                }
                if sink.send(ProviderEvent::Beats(beats)).await.is_err() {
                    break;
                }
            }
            tracing::debug!(generation, "sim heartbeat loop stopped");
        });
    }
}
