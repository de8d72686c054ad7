//! Providers carry out the engine's actions where instances run and feed back
//! what they see on their own (heartbeats, machines that vanished).
//!
//! Every provider sits behind [`Provider`]: the runtime shell hands it one
//! attempt of an action at a time and forwards its [`ProviderEvent`]s to the
//! engine. `sim` is the simulated fleet; `local` (real PostgreSQL processes)
//! and cloud providers plug in behind the same trait later.

pub mod checks;
pub mod local;
pub mod pgbackrest;
pub mod runas;
pub mod sim;

pub use sim::{SimConfig, SimInstance, SimProvider};

use drover_model::{ActionOutcome, ActionRecord, Beat, EngineKind, InstanceId, ServiceId};
use std::path::PathBuf;

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
    /// reports Succeeded if the effect already holds.
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
}

/// Why a provider could not be opened or could not keep its own state.
/// Failures of one action are not errors: they are `ActionOutcome::Failed`.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot {operation} {path}: {source}; check that the directory exists and is writable by this process")]
    Io {
        /// What was being done, e.g. "read the sim state file".
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "sim state file {path} is corrupt ({reason}); restore it from a copy, or move it aside to start \
         an empty simulated world (every simulated instance it held is then forgotten)"
    )]
    CorruptState { path: PathBuf, reason: String },
    #[error(
        "sim state file {path} has format version {found}, but this build of drover reads only version \
         {supported}; run the drover build that wrote it, or move the file aside to start an empty world"
    )]
    UnsupportedStateFormat { path: PathBuf, found: u64, supported: u64 },
}
