//! The agent of one host (`drover agent`). Every interval it probes every
//! instance the local provider's registry lists under its data dir
//! (read-only: it never starts, stops or adopts a server), sends the facts
//! as one heartbeat batch to the control plane, and holds the primaries'
//! lease ([`lease`]): when no batch was acknowledged for the lease TTL it
//! fences its own primaries, and it un-fences one only when the control
//! plane confirms that instance is still its service's writable primary.
//! See docs/agent.md.
//!
//! The rooms: [`lease`] (the pure lease state machine), [`probe`] (the
//! facts of this host's instances), [`host`] (what the agent may read and
//! do on this host), [`control_plane`] (its HTTP channel), and this file's
//! loop, which ties them together one round at a time. Carrying out the
//! engine's actions on the host would be another room fed by the same
//! loop and channel.

pub mod actions;
pub mod control_plane;
pub mod fence;
pub mod holders;
pub mod host;
pub mod lease;
pub mod probe;
pub mod tls;

use control_plane::{ControlPlane, ControlPlaneError, InstanceAnswer};
use drover_model::{Beat, Facts, InstanceId, Role};
use drover_providers::local::LocalInstanceInfo;
use host::{fence_writes, read_instances, unfence_writes};
use lease::{Answer, Lease, Step};
use probe::probe_host;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest interval honoured; zero would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// The most one instance's probe may take: a hung server is silent this
/// round and never delays the others' beats.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Fencing and un-fencing are a few local statements; bounded so a hung
/// server never stalls the loop (the fence is tried again next round).
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct Options {
    /// The control plane's data dir: `local/state.json` lists the instances.
    pub data_dir: PathBuf,
    /// The control plane's base URL, or its nodes' separated by commas.
    pub server: String,
    pub interval: Duration,
    pub lease_ttl: Duration,
    /// This host's agent token (`drover tokens create NAME --role agent --host HOST`).
    pub token: String,
    /// The CA certificate that signed an https control plane's certificate
    /// (`None`: the system's roots; see [`tls::ca_cert_for`]).
    pub ca_cert: Option<PathBuf>,
    /// Register this host and carry out the actions of the instances
    /// placed on it (`--host`); None: only probe, heartbeat and hold the
    /// lease for the instances of a control plane on this machine.
    pub host: Option<actions::HostOptions>,
}

/// Why the agent could not start. Once it runs, nothing is fatal.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error("cannot open the local provider over the data dir: {0}")]
    Provider(#[from] drover_providers::ProviderError),
    #[error("{0}")]
    Backups(String),
}

/// How often the primaries of this host are looked at for strict
/// synchronous replication (`LocalProvider::hold_strict_sync`): the
/// heartbeat cadence, so a new follower counts within a beat.
const STRICT_SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// The pgBackRest repository of a host whose backup store is `store`
/// (shared by every host): its configuration, logs and locks stay under
/// this host's data dir, the backups and WAL go to the shared store.
fn shared_backup_repo(
    data_dir: &std::path::Path,
    store: &std::path::Path,
) -> Result<drover_providers::pgbackrest::BackupRepo, AgentError> {
    let run_as = drover_providers::runas::RunAs::for_servers()
        .map_err(|e| AgentError::Backups(format!("cannot choose the user servers run as: {e}")))?;
    let storage = drover_providers::pgbackrest::RepoStorage::Posix {
        path: std::path::absolute(store).map_err(|e| {
            AgentError::Backups(format!("cannot make the backup store path {} absolute: {e}", store.display()))
        })?,
    };
    drover_providers::pgbackrest::BackupRepo::open_with_storage(
        &data_dir.join("local").join("backups"),
        run_as,
        storage,
    )
    .map_err(|e| AgentError::Backups(format!("cannot prepare the pgBackRest repository on {}: {e}", store.display())))
}

/// Runs until `shutdown` completes. Network and database errors are
/// logged and retried next round, never fatal.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let interval = options.interval.max(MIN_INTERVAL);
    // With a host of its own, the agent owns the servers under its data dir:
    // it registers the host, then runs the provider's actions for it.
    let mut actions_task = None;
    // One channel for the beats and the actions: the node found to answer
    // is kept for both.
    let control_plane = std::sync::Arc::new(ControlPlane::new(
        &options.server,
        options.lease_ttl,
        &options.token,
        options.ca_cert.as_deref(),
    )?);
    if let Some(host) = &options.host {
        let control_plane = std::sync::Arc::clone(&control_plane);
        // Its servers listen on the host's address too: followers on other
        // hosts stream from them over TCP.
        let backups = match &host.backup_repo {
            Some(store) => Some(shared_backup_repo(&options.data_dir, store)?),
            None => None,
        };
        let config = drover_providers::local::LocalConfig {
            listen_address: Some(host.address.clone()),
            backups,
            ..drover_providers::local::LocalConfig::default()
        };
        let provider = drover_providers::local::LocalProvider::open(&options.data_dir, config)?;
        let sync_provider = provider.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STRICT_SYNC_INTERVAL).await;
                sync_provider.hold_strict_sync().await;
            }
        });
        let (host, data_dir) = (host.clone(), options.data_dir.clone());
        // In the background: the lease is held meanwhile, even while the
        // control plane is out of reach.
        actions_task = Some(tokio::spawn(async move {
            actions::register(&control_plane, &host).await;
            actions::run(control_plane, host.name, provider, data_dir).await
        }));
    }
    let mut agent = Agent {
        control_plane,
        data_dir: options.data_dir.clone(),
        lease: Lease::new(options.lease_ttl, Instant::now()),
        probe_timeout: (interval * 8 / 10).min(MAX_PROBE_TIMEOUT),
        instances: Vec::new(),
        first_round: true,
        reachable: None,
        last_seq: 0,
    };
    tracing::info!(
        data_dir = %options.data_dir.display(),
        server = %agent.control_plane.base(),
        interval_ms = interval.as_millis() as u64,
        lease_ms = options.lease_ttl.as_millis() as u64,
        "agent started"
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = agent.round() => {}
        }
    }
    if let Some(task) = actions_task {
        task.abort();
    }
    let fenced: Vec<String> = agent.lease.fenced().map(|i| i.to_string()).collect();
    tracing::info!(?fenced, "agent stopped; fenced primaries stay fenced");
    Ok(())
}

struct Agent {
    control_plane: std::sync::Arc<ControlPlane>,
    data_dir: PathBuf,
    lease: Lease,
    probe_timeout: Duration,
    /// The registry's instances as last read (kept when a read fails).
    instances: Vec<(InstanceId, LocalInstanceInfo)>,
    first_round: bool,
    /// Whether the last batch was acknowledged (None before the first).
    reachable: Option<bool>,
    last_seq: u64,
}

impl Agent {
    async fn round(&mut self) {
        match read_instances(&self.data_dir) {
            Ok(instances) => self.instances = instances,
            Err(error) => tracing::warn!(%error, "cannot read the local registry; using the last instances read"),
        }
        let mut facts = probe_host(&self.instances, self.probe_timeout).await;
        // Where other hosts reach each server (followers elsewhere stream from it).
        for (id, f) in &mut facts {
            f.port = self.instances.iter().find(|(i, _)| i == id).map(|(_, info)| info.port);
        }
        let primaries: Vec<(InstanceId, bool)> = facts
            .iter()
            .filter(|(_, f)| f.role == Some(Role::Primary))
            .map(|(id, f)| (*id, f.writable == Some(true)))
            .collect();
        self.settle(&facts, &primaries);
        // Fence first, so this very batch already says writable=false.
        for step in self.lease.plan(Instant::now(), &primaries) {
            if let Step::Fence(id) = step {
                self.fence(id, &mut facts).await;
            }
        }
        let sent_at = Instant::now();
        if self.send(&facts).await {
            self.lease.renewed(sent_at);
        }
        for step in self.lease.plan(Instant::now(), &primaries) {
            if let Step::Confirm(id) = step {
                self.confirm(id).await;
            }
        }
    }

    /// Bookkeeping before the lease decides: a primary found read-only
    /// when the agent starts (fenced by an earlier run) is held fenced until
    /// the control plane confirms it; a fenced instance that is no longer
    /// a primary here (demoted, retired, removed) is forgotten.
    fn settle(&mut self, facts: &[(InstanceId, Facts)], primaries: &[(InstanceId, bool)]) {
        if self.first_round {
            self.first_round = false;
            for (id, writable) in primaries {
                if !writable {
                    tracing::warn!(instance = %id, "primary found read-only at start: held fenced until the control plane confirms it");
                    self.lease.fenced_now(*id);
                }
            }
        }
        let gone: Vec<InstanceId> = self
            .lease
            .fenced()
            .filter(|id| {
                let listed = self.instances.iter().any(|(i, _)| i == id);
                let follower = facts.iter().any(|(i, f)| i == id && f.role == Some(Role::Follower));
                !listed || follower
            })
            .collect();
        for id in gone {
            tracing::info!(instance = %id, "fenced instance is no longer a primary here; forgotten");
            self.lease.forget(id);
        }
    }

    fn info(&self, id: InstanceId) -> Option<&LocalInstanceInfo> {
        self.instances.iter().find(|(i, _)| *i == id).map(|(_, info)| info)
    }

    async fn fence(&mut self, id: InstanceId, facts: &mut [(InstanceId, Facts)]) {
        let Some(info) = self.info(id).cloned() else { return };
        tracing::warn!(
            instance = %id,
            service = %info.service_name,
            lease_ms = self.lease.ttl().as_millis() as u64,
            "lease expired: fencing this primary"
        );
        match fence_writes(&info, FENCE_TIMEOUT).await {
            Ok(terminated) => {
                self.lease.fenced_now(id);
                for (_, f) in facts.iter_mut().filter(|(i, _)| *i == id) {
                    f.writable = Some(false);
                }
                tracing::warn!(instance = %id, service = %info.service_name, terminated, "primary fenced: read-only, client sessions terminated");
            }
            Err(error) => {
                tracing::error!(instance = %id, %error, "cannot fence this primary; trying again next round")
            }
        }
    }

    /// Asks the control plane about a fenced primary; un-fences it only on
    /// `writable: true` and not fenced.
    async fn confirm(&mut self, id: InstanceId) {
        let answer = match self.control_plane.instance(id).await {
            InstanceAnswer::WritablePrimary => Answer::WritablePrimary,
            InstanceAnswer::NotWritablePrimary => Answer::NotWritablePrimary,
            InstanceAnswer::Unknown => return,
        };
        let Some(Step::Unfence(id)) = self.lease.answer(id, answer, Instant::now()) else {
            return;
        };
        let Some(info) = self.info(id).cloned() else { return };
        match unfence_writes(&info, FENCE_TIMEOUT).await {
            Ok(()) => {
                self.lease.unfenced(id);
                tracing::info!(instance = %id, service = %info.service_name, "control plane confirmed this writable primary: un-fenced");
            }
            Err(error) => tracing::error!(instance = %id, %error, "cannot un-fence; trying again next round"),
        }
    }

    /// Sends one batch (also an empty one: it still renews the lease).
    /// True when the control plane acknowledged it.
    async fn send(&mut self, facts: &[(InstanceId, Facts)]) -> bool {
        let beats: Vec<Beat> = facts
            .iter()
            .map(|(instance, facts)| Beat { instance: *instance, seq: self.next_seq(), facts: facts.clone() })
            .collect();
        let outcome = self.control_plane.send_beats(&beats).await;
        let acknowledged = outcome.is_ok();
        if self.reachable != Some(acknowledged) {
            let server = self.control_plane.base();
            match &outcome {
                Ok(()) => tracing::info!(%server, beats = beats.len(), "heartbeats acknowledged; lease renewed"),
                Err(error) => {
                    tracing::warn!(%server, %error, "heartbeats not acknowledged; the lease runs out unless renewed")
                }
            }
        } else if let Err(error) = &outcome {
            tracing::debug!(%error, "heartbeats not acknowledged");
        }
        self.reachable = Some(acknowledged);
        acknowledged
    }

    /// Microseconds since the epoch, strictly growing: a restarted agent
    /// continues above its last run's seqs.
    fn next_seq(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }
}
