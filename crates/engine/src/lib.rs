//! The pure core of Drover. `Engine::step(input, now)` takes one input and
//! the current time and returns what to persist, what to dispatch and what
//! to answer. It never reads a clock, sleeps, spawns, or touches a socket or
//! a file: the same code runs the server, the simulator and replays.
//!
//! How a failure becomes a remedy:
//! 1. silence past `uncertain_after` makes an instance `uncertain` and asks
//!    its provider for an out-of-band probe;
//! 2. corroboration (a failed probe, a follower whose stream from this
//!    primary broke, the provider saying it is gone) makes it `unavailable`;
//!    silence alone does so only after `presumed_dead_after` with no probe
//!    answering;
//! 3. `reconcile` looks at each touched service: a pure `decide` names the
//!    one `Remedy` its engine's topology needs (fence then promote, restart,
//!    rebuild, replace a follower or a peer, retire a leaver, or wait for
//!    the brake or a human), and `apply` opens it as an action, at most one
//!    remedy per service at a time;
//! 4. the action's result comes back as `Input::ActionResult` and moves the
//!    fleet on (a fenced primary, a promoted follower), which marks the
//!    service for reconcile again until nothing is left to do.
//!
//! The rooms, one `impl Engine` each: `heartbeats` and `zone_lease` (what is
//! heard), `deadlines` (silence), `transitions` (the one gate for state
//! changes), `brake`, `reconcile` (decide and apply), `actions` (open,
//! budget, dispatch, results), `backups`, `credentials` (scheduled
//! rotation and the end of its overlap), `commands`, `restore`, `rollouts`
//! (services moved onto an image in waves, by replacement), `records`
//! (records and events for the store), `views` (read-only, for the API).
//! `fleet` holds the compact in-memory fleet, `api` the contract, `policy`
//! what differs between engines (the seam every decision above asks).

mod actions;
mod api;
mod archives;
mod backups;
mod brake;
mod breakglass;
mod commands;
mod credentials;
mod deadlines;
mod fleet;
mod followers;
mod heartbeats;
mod hosts;
pub mod kafka_storage;
mod placement;
pub mod policy;
mod reconcile;
mod records;
mod restore;
mod rollouts;
pub mod shard_lease;
mod transitions;
pub mod upgrades;
mod views;
mod zone_lease;

pub use api::{Command, CommandError, Config, Dispatch, HeartbeatReceipt, Input, Outputs, Reply, Share};
pub use hosts::HostedService;
pub use rollouts::{GateWatch, RolloutPart, ScheduledMove};
pub use views::ImageUsage;

use crate::fleet::HashMap;
use commands::command_target;
use drover_model::EventKind;
use drover_model::{
    ActionId, ActionRecord, AuditEntry, EventSubject, InstanceId, InstanceState, ServiceId, ServiceState, Timestamp,
};
use fleet::{Images, Inst, Interner, Slab, Svc, Wheel};
use rand::SeedableRng;
use std::collections::VecDeque;
use std::time::Duration;

/// Width of a deadline bucket. Deadlines fire up to this late; 50 ms is far
/// below every timing that matters (heartbeats are seconds apart).
const BUCKET_MICROS: i64 = 50_000;

/// A deadline that passed without effect (it waits on an open action or on
/// the brake) is looked at again after this, not on every tick: with time
/// advancing tick by tick it was a busy loop per such instance.
const RECHECK_MICROS: i64 = 1_000_000;

/// Longest wait between retries of a failed action attempt.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// Counts for metrics and dashboards.
#[derive(Clone, Debug, Default)]
pub struct FleetStats {
    pub services_by_state: Vec<(ServiceState, u64)>,
    pub instances_by_state: Vec<(InstanceState, u64)>,
    pub open_actions: u64,
    /// Zones (and `"fleet"`) where the mass-uncertainty brake is engaged.
    pub braked: Vec<String>,
}

/// One engine's services as the status site sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineHealth {
    pub engine: drover_model::EngineKind,
    /// Services that exist for their owners: neither still being built
    /// for the first time nor being deleted.
    pub live: u64,
    /// Of those, services whose primary is uncertain, recovering or
    /// unavailable: writes may fail.
    pub down: u64,
    /// The mass-uncertainty brake holds a zone one of them lives in (or
    /// the whole fleet).
    pub braked: bool,
}

/// One shard's part of the fleet as its holder's engine sees it: what a
/// node of a split fleet publishes for the status site and the dashboard's
/// overview (summed over the shards, [`ShardHealth::sum`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardHealth {
    pub engines: Vec<EngineHealth>,
    /// Its services by state (`ServiceState::as_str`).
    pub services_by_state: std::collections::BTreeMap<String, u64>,
    pub open_actions: u64,
    /// Zones (and `"fleet"`) braked or frozen in its holder's engine.
    pub braked: Vec<String>,
    /// Its parts of split rollouts (`Input::RolloutProgress`); not summed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutPart>,
}

impl ShardHealth {
    /// The parts added up.
    pub fn sum(parts: impl IntoIterator<Item = ShardHealth>) -> ShardHealth {
        let mut total = ShardHealth::default();
        let mut engines = Vec::new();
        for part in parts {
            engines.extend(part.engines);
            for (state, n) in part.services_by_state {
                *total.services_by_state.entry(state).or_default() += n;
            }
            total.open_actions += part.open_actions;
            total.braked.extend(part.braked);
        }
        total.engines = EngineHealth::sum(engines);
        total.braked.sort();
        total.braked.dedup();
        total
    }
}

impl EngineHealth {
    /// Parts of one fleet (each shard's, on a fleet split between nodes)
    /// added up per engine, in the order each engine first appears.
    pub fn sum(parts: impl IntoIterator<Item = EngineHealth>) -> Vec<EngineHealth> {
        let mut total: Vec<EngineHealth> = Vec::new();
        for part in parts {
            match total.iter_mut().find(|t| t.engine == part.engine) {
                Some(t) => {
                    t.live += part.live;
                    t.down += part.down;
                    t.braked |= part.braked;
                }
                None => total.push(part),
            }
        }
        total
    }
}

/// What depends on a component of the lifecycle board: the images whose
/// manifest holds one of its packages, and the services on those images
/// or labelled `component=<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependents {
    pub images: Vec<String>,
    /// (service name, its state, its last restore test passed).
    pub services: Vec<(String, drover_model::ServiceState, bool)>,
}

/// An open action and what the engine keeps beside it.
struct OpenAction {
    record: ActionRecord,
    /// Counts against its service's one-remedy-at-a-time slot.
    remedy: bool,
    /// Counts against the zone budget (destructive remedies).
    budget_zone: Option<u16>,
    /// Probes are not persisted: losing one in a crash costs nothing.
    durable: bool,
}

/// Per-zone bookkeeping for budgets and the brake.
#[derive(Default, Clone)]
struct ZoneState {
    members: u32,
    uncertain: u32,
    /// Times instances turned uncertain, within `brake_window`.
    onsets: VecDeque<i64>,
    /// Times hosts turned uncertain as a whole, within `brake_window`.
    host_onsets: VecDeque<i64>,
    braked_since: Option<i64>,
    /// Frozen by hand (`Command::FreezeAutomation`): every remedy waits,
    /// whatever the evidence, until released by hand.
    frozen_since: Option<i64>,
    running_budgeted: u32,
    waiting: VecDeque<ActionId>,
    /// Last renewal of the zone's heartbeat lease (0: never).
    lease_at: i64,
    /// Instances covered by that lease.
    covered: u32,
}

pub struct Engine {
    config: Config,
    /// The seed `rng` started from; event ids are minted from it too.
    seed: u64,
    /// Events this engine has produced: the counter in their ids.
    events_minted: u64,
    rng: rand_chacha::ChaCha8Rng,
    instances: Slab<Inst>,
    instance_index: HashMap<InstanceId, u32>,
    services: Slab<Svc>,
    service_names: HashMap<Box<str>, u32>,
    service_ids: HashMap<ServiceId, u32>,
    zones: Interner,
    zone_state: Vec<ZoneState>,
    fleet_zone: ZoneState,
    providers: Interner,
    teams: Interner,
    images: Images,
    rollouts: rollouts::Rollouts,
    /// Boxed: the table grows to its peak (every probe of a lost zone) and
    /// keeps that capacity; boxed records are freed as actions finish.
    actions: HashMap<ActionId, Box<OpenAction>>,
    instance_timers: Wheel<u32>,
    /// Instance checks that are due but not yet done, oldest first, with the
    /// timer key they were due under (`UNCONDITIONAL`: check it whatever its
    /// timer says). See `fire_timers`: a step does at most `CHECKS_PER_STEP`.
    due_checks: VecDeque<(i64, u32)>,
    /// When the oldest of `due_checks` fell due (what `next_deadline` says).
    due_since: i64,
    action_timers: Wheel<ActionId>,
    /// Backup and restore-test schedules, per service.
    service_timers: Wheel<u32>,
    /// Credential rotations and the ends of their overlaps, per service.
    rotation_timers: Wheel<u32>,
    /// Expiry checks of zone heartbeat leases.
    zone_timers: Wheel<u16>,
    dirty: Vec<u32>,
    held: Vec<u32>,
    /// Silence is not held against instances restored at `restored_at`
    /// until `grace_until`; instances created later get no grace.
    grace_until: i64,
    restored_at: i64,
    state_counts: [u64; 10],
    /// Registered hosts and placement's bookkeeping (`hosts`).
    hosts: hosts::Hosts,
    /// Archives of deleted services and their purges (`archives`).
    archives: archives::Archives,
    /// Moves on every step that changed a record of a service, an
    /// instance, an action or a host (see [`Engine::records_epoch`]).
    records_epoch: u64,
}

fn state_index(s: InstanceState) -> usize {
    s as usize
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128 / 4) as i64
}

impl Engine {
    pub fn new(config: Config, seed: u64) -> Engine {
        let mut providers = Interner::default();
        for p in &config.providers {
            providers.intern(p);
        }
        Engine {
            config,
            seed,
            events_minted: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            instances: Slab::default(),
            instance_index: HashMap::default(),
            services: Slab::default(),
            service_names: HashMap::default(),
            service_ids: HashMap::default(),
            zones: Interner::default(),
            zone_state: Vec::new(),
            fleet_zone: ZoneState::default(),
            providers,
            teams: Interner::default(),
            images: Images::default(),
            rollouts: rollouts::Rollouts::default(),
            actions: HashMap::default(),
            instance_timers: Wheel::new(BUCKET_MICROS),
            due_checks: VecDeque::new(),
            due_since: 0,
            action_timers: Wheel::new(BUCKET_MICROS),
            service_timers: Wheel::new(BUCKET_MICROS),
            rotation_timers: Wheel::new(BUCKET_MICROS),
            zone_timers: Wheel::new(BUCKET_MICROS),
            dirty: Vec::new(),
            held: Vec::new(),
            grace_until: 0,
            restored_at: i64::MIN,
            state_counts: [0; 10],
            hosts: hosts::Hosts::default(),
            archives: archives::Archives::default(),
            records_epoch: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reserves room for `instances` more instances (bulk loads, benchmarks).
    pub fn reserve(&mut self, instances: usize) {
        self.instances.reserve(instances);
        self.instance_index.reserve(instances);
    }

    pub fn step(&mut self, input: Input, now: Timestamp) -> Outputs {
        let mut out = Outputs::default();
        self.step_into(input, now, &mut out);
        out
    }

    /// [`Self::step`] into a caller's buffer: `out` is cleared first, so
    /// the outputs are exactly those of `step`; its vectors keep their
    /// capacity, which spares a caller that steps millions of times (the
    /// simulator) growing them again on every step.
    pub fn step_into(&mut self, input: Input, now: Timestamp, out: &mut Outputs) {
        out.clear();
        let now = now.0;
        match input {
            Input::Heartbeats(beats) => {
                let receipt = self.heartbeats(&beats, now, out);
                out.reply = Some(Ok(Reply::Heartbeats(receipt)));
            }
            Input::ProviderReport { instance, gone, detail } => {
                if gone {
                    if let Some(&slot) = self.instance_index.get(&instance) {
                        self.evidence(slot, &format!("provider reports it gone: {detail}"), now, out);
                    }
                }
            }
            Input::RouterReport { service, detail } => {
                if let Some(sslot) = self.service_slot(service) {
                    let event = self
                        .event(now, EventSubject::Service, Some(sslot), None, None, None, detail)
                        .with_kind(EventKind::RouterReport);
                    out.changes.events.push(event);
                }
            }
            Input::GateReport { service, problem } => {
                self.gate_report(service, problem, now);
            }
            Input::ActionResult { action, attempt, outcome } => {
                self.action_result(action, attempt, outcome, now, out);
            }
            Input::Command { command, actor, .. } if !self.config.records => {
                // No store: no audit entry either (see `Config::records`).
                let result = self.command(command, &actor, now, out);
                out.reply = Some(result);
            }
            Input::Command { actor, role, command } => {
                let name = command.name();
                let detail = serde_json::to_value(&command).unwrap_or(serde_json::Value::Null);
                let target = command_target(&command);
                let result = self.command(command, &actor, now, out);
                out.changes.audit.push(AuditEntry {
                    seq: 0,
                    at: Timestamp(now),
                    actor,
                    role,
                    command: name.into(),
                    target,
                    detail,
                    outcome: match &result {
                        Ok(_) => "ok".into(),
                        Err(e) => e.to_string(),
                    },
                });
                out.reply = Some(result);
            }
            Input::Tick => {
                self.fire_timers(now, out);
                self.fire_archive_timers(now, out);
                self.update_brakes(now, out);
                self.drive_rollouts(now, out);
                self.drive_drains(now, out);
            }
            Input::ZoneLease { zone, cover, withdraw } => {
                let receipt = self.zone_lease(&zone, &cover, &withdraw, now, out);
                out.reply = Some(Ok(Reply::Heartbeats(receipt)));
            }
            Input::FleetRecords { images, hosts } => {
                let learned = self.learn_fleet_records(images, hosts, now);
                out.reply = Some(Ok(Reply::Noted(format!(
                    "learned {} images, {} hosts and {} host states",
                    learned.images, learned.hosts, learned.host_states
                ))));
            }
            Input::Rollouts { records, held } => {
                self.learn_rollouts(records, held, now, out);
            }
            Input::RolloutProgress { parts } => {
                self.coordinate_rollouts(parts, now, out);
            }
        }
        self.reconcile_dirty(now, out);
        self.mint_event_ids(out);
        let c = &out.changes;
        let changed = !(c.services.is_empty() && c.instances.is_empty() && c.actions.is_empty() && c.hosts.is_empty());
        // With records off nothing says what changed: every step counts.
        if changed || !self.config.records {
            self.records_epoch = self.records_epoch.wrapping_add(1);
        }
    }

    /// A number that moves whenever a step changed what the engine keeps
    /// of a service, an instance, an open action or a host: while it stands
    /// still, every answer derived from those alone (where each service's
    /// writable primary is, `services_on_agent_hosts`) stands too, so a
    /// shell loop that follows them asks again only when it moved. A
    /// healthy heartbeat changes no record and does not move it. (Anything
    /// the engine decides is in a record, or it would not survive a
    /// restart.)
    pub fn records_epoch(&self) -> u64 {
        self.records_epoch
    }

    /// The earliest time a `Tick` has work to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let backlog = (!self.due_checks.is_empty()).then_some(self.due_since);
        [
            backlog,
            self.instance_timers.next(),
            self.action_timers.next(),
            self.service_timers.next(),
            self.rotation_timers.next(),
            self.zone_timers.next(),
            self.rollouts.next_deadline(),
            self.archives.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Timestamp)
    }
}
