//! The engine's inputs and outputs: the whole contract with its shell.

use crate::policy::Policies;
use drover_model::{
    ActionId, ActionOutcome, ActionRecord, Beat, Changes, CreateService, EngineKind, Fault, HostView, Image,
    InstanceId, RegisterHost, RolloutId, RolloutSpec, RolloutView, ServiceId, ServiceView,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tunables. Each default says where it comes from.
#[derive(Clone, Debug)]
pub struct Config {
    /// Silence after which an instance is `uncertain`. Agents beat every
    /// second; three missed beats is Patroni's loop_wait-scale reaction.
    pub uncertain_after: Duration,
    /// Silence after which an instance is presumed `unavailable` without any
    /// corroboration (and no probe answered). Heroku waits two minutes on a
    /// confirmed-dead primary; with no evidence at all we wait longer.
    pub presumed_dead_after: Duration,
    /// After a control-plane restart, silence is not held against anyone for
    /// this long: agents need time to find the new process.
    pub restart_grace: Duration,
    /// How often an uncertain instance is probed out of band.
    pub probe_interval: Duration,
    /// A running action attempt without a result is retried after this.
    pub action_timeout: Duration,
    /// Attempts of one action before it is failed.
    pub max_action_attempts: u32,
    /// Remedies of one service that may fail in a row (each after its own
    /// attempts) before the engine stops and a human is needed: a rebuild
    /// that cannot work (a broken host, a bad image) must not loop forever.
    /// Three: a failed restart, then the fence-and-rebuild it escalates to,
    /// then one more rebuild elsewhere; a fourth would only repeat them.
    pub max_remedy_failures: u32,
    /// A service whose remedies have kept failing for this long needs a
    /// human, however few failures that was (slow attempts, long backoffs).
    /// Ten minutes: past it, a person would already want to know.
    pub max_action_failure: Duration,
    /// A provisioned or restarted instance must heartbeat within this.
    pub install_timeout: Duration,
    /// Share of a zone's (or the fleet's) instances turning uncertain within
    /// `brake_window` that engages the mass-uncertainty brake.
    pub brake_share: f64,
    pub brake_window: Duration,
    /// Fewer uncertain instances than this never engage the brake: in a
    /// tiny fleet one failure is already over 10%.
    pub brake_min_instances: u32,
    /// The brake counts hosts as well: `brake_share` of a zone's (or the
    /// fleet's) agent hosts, and at least this many, turning uncertain as
    /// a whole within `brake_window` engage it too, however few instances
    /// they hold.
    pub brake_min_hosts: u32,
    /// Destructive actions running at once per zone.
    pub zone_budget: u32,
    /// This engine's part of the fleet: the shards its node holds of all
    /// (issue 16). The whole fleet on one node, as the server runs today.
    /// A part places against its share of each host's room and runs its
    /// share of each zone's budget, so the engines of several nodes,
    /// each seeing only its own shards' instances, never fill the same
    /// room twice (see [`Share`]).
    pub share: Share,
    /// Default bound on a follower's lag for it to be promoted.
    pub max_failover_lag_bytes: u64,
    /// Base backups are taken this often per service (None: only on demand).
    pub backup_interval: Option<Duration>,
    /// Restore tests run this often per service (None: only on demand). An
    /// unexercised backup is not a backup.
    pub verify_interval: Option<Duration>,
    /// Credentials are rotated this often per service whose plan does not
    /// say (`Plan::credential_rotation_days` None); None: only on demand.
    pub credential_rotation: Option<Duration>,
    /// After a rotation the previous credential keeps working this long
    /// (connected applications drain), then the engine revokes it.
    pub rotation_overlap: Duration,
    /// Providers this control plane can dispatch to.
    pub providers: Vec<String>,
    /// The engines each provider runs (`Provider::engines`); a service of
    /// another engine is refused. A provider missing here runs every engine
    /// (configurations built by hand, as in the simulator and tests).
    pub provider_engines: std::collections::BTreeMap<String, Vec<EngineKind>>,
    /// Providers whose instances run only on a registered host (the
    /// `local` provider of a control plane with no host of its own,
    /// `drover serve --no-local`): while no host is registered, a service
    /// of one is refused (no room) and a new member waits for a host,
    /// rather than being built nowhere. Others (the simulator) are placed
    /// on no host while there is none.
    pub hosted_providers: Vec<String>,
    pub default_provider: String,
    pub default_zones: Vec<String>,
    pub default_team: String,
    /// What differs between engines (`crate::policy`): PostgreSQL's policy
    /// by default; a test or a new engine puts its own in with `with`.
    pub policies: Policies,
    /// Services a rollout moves at once per zone (the zone of each one's
    /// primary). A move costs a base backup's I/O in its zone; the same
    /// bound as destructive remedies (`zone_budget`) keeps a rollout from
    /// starving repairs.
    pub rollout_zone_concurrency: u32,
    /// How often running rollouts are looked at. A step waits at most this
    /// after the action before it finished; a second is far below a move's
    /// minutes (a follower's base backup).
    pub rollout_interval: Duration,
    /// Whether a rollout's health gate waits for the control plane's own
    /// word (`Input::GateReport`: the service's checks and pages, which
    /// live outside the engine) before a soaked service counts as done.
    /// Off, the gate is the engine's view alone (available, no human
    /// needed): the simulator has no checks to report.
    pub rollout_gate_reports: bool,
    /// Each team's default maintenance window, for its services without one.
    pub team_windows: std::collections::BTreeMap<String, drover_model::MaintenanceWindow>,
    /// How long before a rollout moves a service in its maintenance window
    /// its owners are told (a `maintenance_scheduled` event, sent to the
    /// team's chat); at once when the window opens sooner. A day, as
    /// Heroku's maintenance notices: time to move the service earlier by
    /// hand, short enough to be remembered.
    pub maintenance_notice: Duration,
    /// How long the final backup of a deleted PostgreSQL service is kept
    /// (state `archived`) before the engine purges it. A week: Heroku keeps
    /// a deleted database's backups recoverable for about that long.
    pub archive_retention: Duration,
    /// Full backups pgBackRest keeps per service (`repo1-retention-full`):
    /// the oldest one's start is a service's `recoverable_since`. Four
    /// daily fulls keep four days of point-in-time recovery (Heroku's
    /// `pg:fork`/rollback window: 4 days to a week).
    pub backup_retention_full: u32,
    /// Put the store's records (services, instances, actions, audit) in
    /// `Outputs::changes`. A caller that keeps no store (the simulator)
    /// turns this off and saves building a record per transition; events,
    /// dispatches and replies are the same either way.
    pub records: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            uncertain_after: Duration::from_secs(3),
            presumed_dead_after: Duration::from_secs(300),
            restart_grace: Duration::from_secs(30),
            probe_interval: Duration::from_secs(5),
            action_timeout: Duration::from_secs(60),
            max_action_attempts: 5,
            max_remedy_failures: 3,
            max_action_failure: Duration::from_secs(600),
            install_timeout: Duration::from_secs(600),
            brake_share: 0.10,
            brake_window: Duration::from_secs(60),
            brake_min_instances: 5,
            brake_min_hosts: 2,
            zone_budget: 16,
            share: Share::WHOLE,
            max_failover_lag_bytes: 16 * 1024 * 1024,
            // Heroku takes daily base backups and keeps WAL continuously.
            backup_interval: Some(Duration::from_secs(24 * 3600)),
            verify_interval: Some(Duration::from_secs(7 * 24 * 3600)),
            credential_rotation: None,
            rotation_overlap: Duration::from_secs(300),
            providers: vec!["sim".into()],
            provider_engines: std::collections::BTreeMap::new(),
            hosted_providers: Vec::new(),
            default_provider: "sim".into(),
            default_zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
            default_team: "platform".into(),
            policies: Policies::default(),
            rollout_zone_concurrency: 16,
            rollout_interval: Duration::from_secs(1),
            rollout_gate_reports: false,
            team_windows: std::collections::BTreeMap::new(),
            maintenance_notice: Duration::from_secs(24 * 3600),
            archive_retention: Duration::from_secs(168 * 3600),
            backup_retention_full: 4,
            records: true,
        }
    }
}

/// The part of the fleet one engine runs: `held` of `of` shards.
///
/// Each node's engine sees only the instances of the shards it holds, so
/// it cannot see what the others put on a host. It places against
/// `capacity * held / of` of each host (rounded down: the parts' rooms add
/// up to at most the host's capacity, whichever shards they hold) and
/// runs at most `zone_budget * held / of` destructive actions at once in
/// a zone, but never fewer than one, so a part's repairs never stop: the
/// parts together may then run one more per node than the budget. The
/// price of a fixed share: a part whose shards hold more than their share
/// of services finds a host full while the others still have room there
/// (rebalancing by shard count does not follow load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub held: u16,
    pub of: u16,
}

impl Share {
    /// The whole fleet.
    pub const WHOLE: Share = Share { held: 1, of: 1 };

    /// `held` of `of` shards (`held` at most `of`, `of` at least one).
    pub fn new(held: u16, of: u16) -> Share {
        let of = of.max(1);
        Share { held: held.min(of), of }
    }

    /// This part's room on a host of `capacity`.
    pub fn of_capacity(self, capacity: u32) -> u32 {
        let of = u64::from(self.of.max(1));
        (u64::from(capacity) * u64::from(self.held.min(self.of)) / of) as u32
    }

    /// This part's share of a zone's budget of destructive actions: at
    /// least one (none only when the budget is none).
    pub fn of_budget(self, budget: u32) -> u32 {
        if budget == 0 {
            return 0;
        }
        self.of_capacity(budget).max(1)
    }
}

/// Everything that can happen to the engine. Serializable so the server can
/// log every input for replay (`--input-log`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A batch of heartbeats from agents or a provider.
    Heartbeats(Vec<Beat>),
    /// A provider says, on its own, that an instance is gone.
    ProviderReport { instance: InstanceId, gone: bool, detail: String },
    /// A provider reports on a service's router (its stable URL): it exited
    /// unasked and was restarted, or could not be. Recorded as an event.
    RouterReport { service: ServiceId, detail: String },
    /// The control plane's health gate on a service a rollout moved and
    /// that soaks: `problem` None when its checks are no worse than before
    /// the move and no page opened since it started, else what is wrong
    /// (the service fails its gate). Counted only with
    /// `Config::rollout_gate_reports`.
    GateReport { service: ServiceId, problem: Option<String> },
    /// A provider finished one attempt of an action.
    ActionResult { action: ActionId, attempt: u32, outcome: ActionOutcome },
    /// An operator (or API client) asks for something.
    /// `role` is the asking token's role, for the audit trail (`None` for
    /// Drover's own commands; inputs logged before tokens existed have none).
    Command {
        actor: String,
        #[serde(default)]
        role: Option<String>,
        command: Command,
    },
    /// Time passed: fire whatever deadlines are due.
    Tick,
    /// A zone's heartbeat collector renews its lease. Agents beat to a
    /// collector in their zone; it forwards only beats whose facts changed
    /// (as `Heartbeats`) and, once a second, this one lease: "every instance
    /// I cover is alive now". `cover` adds instances it heard (each counts
    /// as a heartbeat without new facts); `withdraw` removes instances it no
    /// longer hears: they count as last heard at the previous renewal and
    /// are judged on their own deadlines again. When the lease itself is
    /// not renewed within `uncertain_after`, every covered instance of the
    /// zone is judged as silent since the last renewal. A covered instance
    /// costs nothing per second: one deadline per zone, not per instance.
    ZoneLease { zone: String, cover: Vec<InstanceId>, withdraw: Vec<InstanceId> },
    /// Records of the whole fleet another node committed (a fleet split
    /// into shards: images and hosts are registered through shard 0's
    /// holder, and every other holder's engine learns them from the store).
    /// An image or a host this engine does not have is added, as at a
    /// restore; what it has stays as it is. Nothing is committed: the
    /// store has them.
    FleetRecords { images: Vec<drover_model::Image>, hosts: Vec<drover_model::HostRecord> },
    /// Split rollouts' records (a fleet split into shards: rollouts are
    /// created and steered through shard 0's holder) and the shards this
    /// engine holds now: each of its parts follows its record, and a held
    /// shard with no part of an unfinished rollout gets one (its members
    /// selected and written).
    Rollouts { records: Vec<drover_model::RolloutRecord>, held: Vec<u16> },
    /// To shard 0's holder: the other shards' parts of split rollouts, as
    /// their holders last reported them. It opens waves, pauses and ends
    /// rollouts on the sums (`rollouts::split`).
    RolloutProgress { parts: std::collections::BTreeMap<u16, Vec<crate::RolloutPart>> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    CreateService(CreateService),
    DeleteService {
        name: String,
    },
    Chaos {
        instance: InstanceId,
        fault: Fault,
    },
    /// Planned: fence the primary, promote the most advanced follower.
    Switchover {
        name: String,
    },
    /// A new service `name` with the plan of `source` and its data: the
    /// source's backups and archived WAL replayed to `at` (exclusive), or
    /// to the end of what is archived.
    ForkService {
        source: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<drover_model::Timestamp>,
    },
    /// A new service restored from another's data, planned by the engine
    /// that holds the source (`Engine::fork_plan`, `Engine::archive_plan`)
    /// and created by the one that holds the new name's shard: a fork or
    /// an archive's restore across the shards of a split fleet.
    CreateRestored {
        request: Box<CreateService>,
        from: drover_model::RestoreFrom,
    },
    /// Add `count` read replicas on demand (`crate::followers`): each an
    /// asynchronous follower in a read slot of its own, with a stable read
    /// URL, rebuilt in the same slot when lost.
    AddFollowers {
        name: String,
        count: u32,
    },
    /// Remove one read replica added on demand (never the primary nor a
    /// follower of the plan): its slot is freed and the instance retired.
    RemoveFollower {
        name: String,
        instance: InstanceId,
    },
    /// Take a base backup now.
    TakeBackup {
        name: String,
    },
    /// Restore the latest backup into a scratch instance and check it now.
    VerifyBackup {
        name: String,
    },
    /// Add an image to the catalog (idempotent: images are content-addressed).
    RegisterImage(Image),
    /// Give the service's URL a new credential now; the old one keeps
    /// working for `Config::rotation_overlap`, then the engine revokes it.
    RotateCredentials {
        name: String,
        /// Set by the caller when the provider says a rotation is still in
        /// its overlap: the command is refused (409) and audited as such.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_progress: Option<String>,
    },
    /// A person looked at a service that needs a human: clear that, and let
    /// the engine try its remedies again.
    ResumeService {
        name: String,
    },
    /// Set (or clear, with None) a service's weekly maintenance window.
    SetMaintenanceWindow {
        name: String,
        window: Option<drover_model::MaintenanceWindow>,
    },
    /// Replace a service's labels with `labels` (an empty map clears them).
    SetLabels {
        name: String,
        labels: drover_model::Labels,
    },
    /// Move the selected services onto an image, in waves.
    CreateRollout(RolloutSpec),
    /// Resize one service: move it onto `image` (other settings or
    /// resources) by replacement, now, as a rollout of that one service:
    /// a new member from the image, catch-up, a planned switchover, the old
    /// member retired. The URL stays.
    ResizeService {
        name: String,
        image: drover_model::ImageId,
    },
    /// Upgrade one service to a newer major `version` of its engine
    /// (`"17"`), by replacement with its URL unchanged (`crate::upgrades`).
    UpgradeService {
        name: String,
        version: String,
    },
    /// Move an upgraded service back onto the image it was upgraded from.
    RollbackUpgrade {
        name: String,
    },
    PauseRollout {
        id: RolloutId,
    },
    ResumeRollout {
        id: RolloutId,
    },
    AbortRollout {
        id: RolloutId,
    },
    /// Break-glass: the brake by hand. Holds every remedy in a zone, or in
    /// the whole fleet (`scope: "fleet"`), whatever the evidence, until
    /// `ReleaseAutomation` of the same scope (`breakglass.rs`).
    FreezeAutomation {
        scope: String,
    },
    ReleaseAutomation {
        scope: String,
    },
    /// Break-glass: fence the primary at once (its clients are cut off),
    /// then promote the most advanced follower; unlike `Switchover` the
    /// primary need not be available.
    Failover {
        name: String,
    },
    /// Break-glass: retire a follower (`instance`, or the one furthest
    /// behind); the plan then builds a replacement from the service's image.
    RebuildFollower {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<InstanceId>,
    },
    /// A runbook run changed state (requested, approved, ran, failed):
    /// recorded as an event of the feed and in the audit trail.
    RecordRunbook {
        run: String,
        runbook: String,
        state: String,
        detail: String,
    },
    /// An agent registers its host (again after a restart); `builtin`:
    /// `drover serve` registers its own machine (`HostRecord::builtin`).
    RegisterHost {
        host: RegisterHost,
        #[serde(default)]
        builtin: bool,
    },
    /// No new members on the host; what runs there stays.
    CordonHost {
        name: String,
    },
    /// No new members on the host, and its members move elsewhere, one
    /// service at a time.
    DrainHost {
        name: String,
    },
    /// Chaos for a whole host (`crash` or `hang`).
    HostChaos {
        host: String,
        fault: Fault,
        /// The host's agent carries the fault out as one action (kill -9
        /// or SIGSTOP of itself and everything it runs), sent by the shell:
        /// no action is opened per instance. False: each instance on the
        /// host gets the fault from its provider (the built-in host, the
        /// simulator's hosts).
        #[serde(default)]
        by_agent: bool,
    },
    /// A new service `name` with the plan and data of a deleted service,
    /// restored from its archive's final backup.
    RestoreArchive {
        id: drover_model::ArchiveId,
        name: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateService(_) => "services.create",
            Command::DeleteService { .. } => "services.delete",
            Command::Chaos { .. } => "chaos",
            Command::Switchover { .. } => "services.switchover",
            Command::ForkService { .. } => "services.fork",
            Command::AddFollowers { .. } => "services.followers.add",
            Command::RemoveFollower { .. } => "services.followers.remove",
            Command::TakeBackup { .. } => "backups.take",
            Command::VerifyBackup { .. } => "backups.verify",
            Command::RegisterImage(_) => "images.register",
            Command::ResumeService { .. } => "services.resume",
            Command::RotateCredentials { .. } => "services.rotate_credentials",
            Command::CreateRollout(_) => "rollouts.create",
            Command::ResizeService { .. } => "services.resize",
            Command::UpgradeService { .. } => "services.upgrade",
            Command::RollbackUpgrade { .. } => "services.upgrade_rollback",
            Command::SetMaintenanceWindow { .. } => "services.maintenance_window",
            Command::SetLabels { .. } => "services.labels",
            Command::PauseRollout { .. } => "rollouts.pause",
            Command::ResumeRollout { .. } => "rollouts.resume",
            Command::AbortRollout { .. } => "rollouts.abort",
            Command::FreezeAutomation { .. } => "automation.freeze",
            Command::ReleaseAutomation { .. } => "automation.release",
            Command::Failover { .. } => "services.failover",
            Command::RebuildFollower { .. } => "services.rebuild_follower",
            Command::RecordRunbook { .. } => "runbooks.run",
            Command::RegisterHost { .. } => "hosts.register",
            Command::CordonHost { .. } => "hosts.cordon",
            Command::DrainHost { .. } => "hosts.drain",
            Command::HostChaos { .. } => "chaos.host",
            Command::RestoreArchive { .. } => "archives.restore",
            Command::CreateRestored { .. } => "services.create_restored",
        }
    }
}

/// What the engine answers a command with.
#[derive(Clone, Debug)]
pub enum Reply {
    Service(Box<ServiceView>),
    Action(Box<ActionRecord>),
    Image(Box<Image>),
    Heartbeats(HeartbeatReceipt),
    Rollout(Box<RolloutView>),
    /// Done, with what was done in words (commands that change no record).
    Noted(String),
    Host(Box<HostView>),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReceipt {
    pub accepted: u32,
    /// Duplicates or reordered beats (seq not newer than the last one).
    pub stale: u32,
    /// Ids the engine does not know (terminated, or never existed).
    pub unknown: Vec<InstanceId>,
}

/// A command the engine refused, and why; the shell maps these to 4xx.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// An action to hand to a provider, with the provider that carries it out
/// (the one its instance was built by), so the shell routes it without
/// asking the engine again. Reads as the action it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    pub provider: String,
    pub action: ActionRecord,
}

impl std::ops::Deref for Dispatch {
    type Target = ActionRecord;
    fn deref(&self) -> &ActionRecord {
        &self.action
    }
}

/// Everything one step decided.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Must be durable before `dispatch` is sent or `reply` is given.
    pub changes: Changes,
    /// Actions to hand to providers once `changes` are durable.
    pub dispatch: Vec<Dispatch>,
    pub reply: Option<Result<Reply, CommandError>>,
}

impl Outputs {
    /// Empties every part, keeping the vectors' capacity.
    pub fn clear(&mut self) {
        let Changes { services, instances, actions, images, events, audit, rollouts, rollout_members, hosts, archives } =
            &mut self.changes;
        archives.clear();
        rollouts.clear();
        rollout_members.clear();
        hosts.clear();
        services.clear();
        instances.clear();
        actions.clear();
        images.clear();
        events.clear();
        audit.clear();
        self.dispatch.clear();
        self.reply = None;
    }

    pub fn extend(&mut self, other: Outputs) {
        self.changes.extend(other.changes);
        self.dispatch.extend(other.dispatch);
        if other.reply.is_some() {
            self.reply = other.reply;
        }
    }
}

#[cfg(test)]
mod share_tests {
    use super::Share;

    proptest::proptest! {
        /// Whichever shards the nodes hold, their rooms on a host add up to
        /// at most its capacity, and the whole fleet's room is all of it;
        /// each part's budget is at least one.
        #[test]
        fn parts_never_exceed_a_host_and_each_keeps_a_budget(
            cuts in proptest::collection::vec(0u16..64, 0..8),
            capacity in 0u32..2_000_000,
            budget in 1u32..64,
        ) {
            let of: u16 = cuts.iter().sum::<u16>().max(1);
            let total: u64 = cuts.iter().map(|&held| u64::from(Share::new(held, of).of_capacity(capacity))).sum();
            proptest::prop_assert!(total <= u64::from(capacity));
            proptest::prop_assert_eq!(Share::WHOLE.of_capacity(capacity), capacity);
            proptest::prop_assert_eq!(Share::new(of, of).of_capacity(capacity), capacity);
            for &held in &cuts {
                let part = Share::new(held, of).of_budget(budget);
                proptest::prop_assert!(part >= 1 && part <= budget);
            }
        }
    }

    #[test]
    fn a_share_is_clamped_and_no_budget_stays_none() {
        assert_eq!(Share::new(9, 4), Share { held: 4, of: 4 });
        assert_eq!(Share::new(1, 0), Share { held: 1, of: 1 });
        assert_eq!(Share::new(1, 3).of_budget(0), 0);
        assert_eq!(Share::new(1, 3).of_budget(16), 5);
        assert_eq!(Share::new(1, 100).of_budget(16), 1);
        assert_eq!(Share::new(1, 3).of_capacity(u32::MAX), u32::MAX / 3);
    }
}
