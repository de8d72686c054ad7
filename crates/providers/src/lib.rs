//! Providers carry out the engine's actions where instances run and feed back
//! what they see on their own (heartbeats, machines that vanished).
//!
//! Every provider sits behind [`Provider`]: the runtime shell hands it one
//! attempt of an action at a time and forwards its [`ProviderEvent`]s to the
//! engine. `sim` is the simulated fleet; `local` runs real PostgreSQL
//! servers on this machine. One attempt that fails is an [`ActionError`],
//! which says whether trying again can help.

pub mod checks;
mod error;
pub mod local;
pub mod pgbackrest;
pub mod runas;
pub mod sim;

pub use error::{ActionError, ProviderError};
pub use sim::{SimConfig, SimInstance, SimProvider};

use drover_model::{ActionOutcome, ActionRecord, Beat, EngineKind, InstanceId, ServiceId};

/// What a provider tells the control plane on its own initiative.
#[derive(Clone, Debug)]
pub enum ProviderEvent {
    Beats(Vec<Beat>),
    /// The provider knows for sure the instance is gone (its machine/process no longer exists).
    Gone {
        instance: InstanceId,
        detail: String,
    },
    /// Something happened to a service's router (its stable URL) that the
    /// event log must show: it exited unasked and was started again, or
    /// could not be.
    Router {
        service: ServiceId,
        detail: String,
    },
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The database engines this provider can run (or, for `sim`,
    /// simulate). A service of any other engine is refused before anything
    /// is built: a provider never builds a different engine than asked.
    fn engines(&self) -> &'static [EngineKind];
    /// Carries out ONE attempt of `action`. Must be idempotent: executing the same action again (after a
    /// control-plane crash the engine re-dispatches running actions with attempts+1) is harmless and
    /// reports Succeeded if the effect already holds. A failed attempt is an [`ActionError`] reported as
    /// [`ActionError::outcome`], so the engine retries it only when `retryable()` says another attempt can help.
    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome>;
    /// Starts the provider's background work (the sim's heartbeat loop), sending into `sink`.
    /// Must be called from within a tokio runtime. The work stops when the sink is closed.
    fn start(&self, sink: tokio::sync::mpsc::Sender<ProviderEvent>);
    /// The stable endpoint clients use for a service (by name), if this
    /// provider gives one. It must not change across failover, switchover
    /// or replacement.
    fn service_url(&self, _service: &str) -> Option<String> {
        None
    }
    /// The stable read URL of a service's read slot `slot` (a read replica
    /// added on demand), if this provider gives one. Like the service's URL
    /// it must not change when the replica is rebuilt.
    fn read_url(&self, _service: &str, _slot: u32) -> Option<String> {
        None
    }
    /// The credential rotation of a service (by name) still in its overlap
    /// (the old credential not yet revoked), as a sentence; a new rotation
    /// is refused meanwhile. None for a provider that rotates nothing.
    fn rotation_in_progress(&self, _service: &str) -> Option<String> {
        None
    }
    /// What only the provider can see of a service's servers: security and
    /// performance checks, and its primary's view of replication. The
    /// default (the `sim` provider) sees nothing: those checks are `unknown`.
    fn service_checks(&self, _service: &str) -> BoxFuture<ProviderChecks> {
        Box::pin(async { ProviderChecks::default() })
    }
}

/// See [`Provider::service_checks`].
#[derive(Clone, Debug, Default)]
pub struct ProviderChecks {
    pub security: Option<checks::Check>,
    pub performance: Option<checks::Check>,
    /// The primary's `pg_stat_replication`, when it could be asked.
    pub followers: Option<Vec<checks::FollowerFacts>>,
    /// The service's router (its stable URL): running and answering.
    pub router: Option<checks::Check>,
    /// Whether what is written survives a restart, for engines whose
    /// persistence can fail apart from backups (Redis: RDB snapshots, AOF).
    pub persistence: Option<checks::Check>,
}
