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
//! 3. `reconcile` looks at each touched service and opens at most one remedy
//!    at a time: fence then promote, restart, rebuild, replace, retire.

mod api;
mod fleet;
mod views;

pub use api::{Command, CommandError, Config, HeartbeatReceipt, Input, Outputs, Reply};

use drover_model::{
    ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, AuditEntry, Beat, CreateService, Event,
    EventSubject, Fault, Image, InstanceId, InstanceRecord, InstanceState, Plan, Role, ServiceId, ServiceRecord,
    ServiceState, Snapshot, Timestamp,
};
use fleet::{Images, Inst, Interner, Slab, Svc, Wheel, NEVER};
use hashbrown::HashMap;
use rand::{RngCore, SeedableRng};
use std::collections::VecDeque;
use std::time::Duration;

/// Width of a deadline bucket. Deadlines fire up to this late; 50 ms is far
/// below every timing that matters (heartbeats are seconds apart).
const BUCKET_MICROS: i64 = 50_000;

/// Restarts tried on a primary with no eligible follower before it is
/// rebuilt from its image (Heroku: restart first, replace when that fails).
const MAX_RESTARTS: u32 = 1;

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
    braked_since: Option<i64>,
    running_budgeted: u32,
    waiting: VecDeque<ActionId>,
    /// Last renewal of the zone's heartbeat lease (0: never).
    lease_at: i64,
    /// Instances covered by that lease.
    covered: u32,
}

pub struct Engine {
    config: Config,
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
    actions: HashMap<ActionId, OpenAction>,
    instance_timers: Wheel<u32>,
    action_timers: Wheel<ActionId>,
    /// Backup and restore-test schedules, per service.
    service_timers: Wheel<u32>,
    /// Expiry checks of zone heartbeat leases.
    zone_timers: Wheel<u16>,
    dirty: Vec<u32>,
    held: Vec<u32>,
    /// Silence is not held against instances restored at `restored_at`
    /// until `grace_until`; instances created later get no grace.
    grace_until: i64,
    restored_at: i64,
    state_counts: [u64; 10],
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
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            instances: Slab::default(),
            instance_index: HashMap::new(),
            services: Slab::default(),
            service_names: HashMap::new(),
            service_ids: HashMap::new(),
            zones: Interner::default(),
            zone_state: Vec::new(),
            fleet_zone: ZoneState::default(),
            providers,
            teams: Interner::default(),
            images: Images::default(),
            actions: HashMap::new(),
            instance_timers: Wheel::new(BUCKET_MICROS),
            action_timers: Wheel::new(BUCKET_MICROS),
            service_timers: Wheel::new(BUCKET_MICROS),
            zone_timers: Wheel::new(BUCKET_MICROS),
            dirty: Vec::new(),
            held: Vec::new(),
            grace_until: 0,
            restored_at: i64::MIN,
            state_counts: [0; 10],
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

    // ------------------------------------------------------------------
    // Restore
    // ------------------------------------------------------------------

    /// Rebuilds the engine from the store after a restart. Every instance
    /// gets `restart_grace` before silence counts against it; every action
    /// that was running is dispatched again (providers are idempotent).
    pub fn restore(config: Config, seed: u64, snapshot: Snapshot, now: Timestamp) -> (Engine, Outputs) {
        let mut e = Engine::new(config, seed);
        let now = now.0;
        let mut out = Outputs::default();
        e.grace_until = now + micros(e.config.restart_grace);
        e.restored_at = now;
        for image in snapshot.images {
            e.images.insert(image);
        }
        let mut service_by_id: HashMap<ServiceId, u32> = HashMap::new();
        for rec in snapshot.services {
            let image = match e.images.index.get(&rec.image) {
                Some(&i) => i,
                None => e.images.insert(placeholder_image(&rec)).0,
            };
            let svc = Svc {
                id: rec.id,
                name: rec.name.clone().into(),
                engine: rec.engine,
                plan: rec.plan,
                team: e.teams.intern(&rec.team),
                zones: rec.zones.iter().map(|z| e.zone(z)).collect(),
                image,
                provider: e.providers.intern(&rec.provider),
                state: rec.state,
                created_at: rec.created_at.0,
                state_since: rec.state_since.0,
                instances: Vec::new(),
                open_remedies: 0,
                deleting: rec.state == ServiceState::Deleting,
                held: false,
                dirty: false,
                needs_human: rec.needs_human,
                remedy_failures: 0,
                failing_since: 0,
                backups: Box::new(rec.backups.clone()),
                backup_running: false,
                verify_running: false,
                verify_after_backup: false,
                verify_failures: 0,
                next_backup_at: NEVER,
                next_verify_at: NEVER,
            };
            let slot = e.services.insert(svc);
            e.service_names.insert(rec.name.into(), slot);
            e.service_ids.insert(rec.id, slot);
            service_by_id.insert(rec.id, slot);
            e.schedule_backups(slot, now);
        }
        let mut orphans = 0;
        for rec in snapshot.instances {
            let Some(&sslot) = service_by_id.get(&rec.service) else {
                orphans += 1;
                continue;
            };
            let image = match e.images.index.get(&rec.image) {
                Some(&i) => i,
                None => 0,
            };
            let inst = Inst {
                id: rec.id,
                service: sslot,
                image,
                zone: e.zone(&rec.zone),
                provider: e.providers.intern(&rec.provider),
                role: rec.role,
                state: rec.state,
                fenced: rec.fenced,
                probing: false,
                upstream_broken: false,
                covered: false,
                writable_fact: None,
                restarts: rec.restarts,
                created_at: rec.created_at.0,
                state_since: rec.state_since.0,
                // Heard "now": the grace period starts from the restart.
                last_heartbeat: now,
                last_seq: 0,
                check_at: NEVER,
                next_probe_at: now,
                last_probe_ok: 0,
                evidence_at: 0,
                wal_position: None,
                lag_bytes: None,
                connections: None,
                last_backup_at: None,
            };
            let slot = e.add_instance(inst);
            e.schedule_instance(slot, now);
        }
        let mut resumed = 0;
        let mut pending = 0;
        let mut actions: Vec<ActionRecord> = snapshot.actions;
        actions.sort_by_key(|a| (a.created_at, a.id));
        for mut rec in actions {
            let Some(&islot) = e.instance_index.get(&rec.instance) else {
                // Its instance is gone: nothing left to act on.
                let from = rec.state;
                rec.state = ActionState::Cancelled;
                rec.updated_at = Timestamp(now);
                rec.error = Some("its instance no longer exists".into());
                out.changes.events.push(e.action_event(&rec, from, "cancelled at restart: instance gone", now));
                out.changes.actions.push(rec);
                continue;
            };
            let sslot = e.instances.get(islot).map(|i| i.service).unwrap_or(0);
            let remedy = is_remedy(&rec.kind);
            let budget_zone = e.budget_zone(&rec.kind, islot);
            if let Some(s) = e.services.get_mut(sslot) {
                match rec.kind {
                    ActionKind::Backup => s.backup_running = true,
                    ActionKind::VerifyRestore => s.verify_running = true,
                    _ => {}
                }
            }
            if remedy {
                if let Some(s) = e.services.get_mut(sslot) {
                    s.open_remedies += 1;
                }
            }
            let id = rec.id;
            match rec.state {
                ActionState::Pending => {
                    pending += 1;
                    if let Some(z) = budget_zone {
                        e.zone_mut(z).waiting.push_back(id);
                    }
                    e.actions.insert(id, OpenAction { record: rec, remedy, budget_zone, durable: true });
                }
                _ => {
                    resumed += 1;
                    if let Some(z) = budget_zone {
                        e.zone_mut(z).running_budgeted += 1;
                    }
                    e.actions.insert(id, OpenAction { record: rec, remedy, budget_zone, durable: true });
                    e.redispatch(id, "resumed after control-plane restart", now, &mut out);
                }
            }
        }
        out.changes.events.push(fleet_event(
            now,
            None,
            "running",
            format!(
                "control plane started: {} services, {} instances, {} actions resumed, {} pending; \
                 silence ignored for {:?}{}",
                e.services.len(),
                e.instances.len(),
                resumed,
                pending,
                e.config.restart_grace,
                if orphans > 0 { format!("; {orphans} instances without a service skipped") } else { String::new() }
            ),
        ));
        let slots: Vec<u32> = e.services.iter().map(|(s, _)| s).collect();
        for s in slots {
            e.mark_dirty(s);
        }
        e.reconcile_dirty(now, &mut out);
        (e, out)
    }

    // ------------------------------------------------------------------
    // Step
    // ------------------------------------------------------------------

    pub fn step(&mut self, input: Input, now: Timestamp) -> Outputs {
        let now = now.0;
        let mut out = Outputs::default();
        match input {
            Input::Heartbeats(beats) => {
                let receipt = self.heartbeats(&beats, now, &mut out);
                out.reply = Some(Ok(Reply::Heartbeats(receipt)));
            }
            Input::ProviderReport { instance, gone, detail } => {
                if gone {
                    if let Some(&slot) = self.instance_index.get(&instance) {
                        self.evidence(slot, &format!("provider reports it gone: {detail}"), now, &mut out);
                    }
                }
            }
            Input::RouterReport { service, detail } => {
                if let Some(sslot) = self.service_slot(service) {
                    let event = self.event(now, EventSubject::Service, Some(sslot), None, None, None, detail);
                    out.changes.events.push(event);
                }
            }
            Input::ActionResult { action, attempt, outcome } => {
                self.action_result(action, attempt, outcome, now, &mut out);
            }
            Input::Command { actor, command } => {
                let name = command.name();
                let detail = serde_json::to_value(&command).unwrap_or(serde_json::Value::Null);
                let target = command_target(&command);
                let result = self.command(command, now, &mut out);
                out.changes.audit.push(AuditEntry {
                    seq: 0,
                    at: Timestamp(now),
                    actor,
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
                self.fire_timers(now, &mut out);
                self.update_brakes(now, &mut out);
            }
            Input::ZoneLease { zone, cover, withdraw } => {
                let receipt = self.zone_lease(&zone, &cover, &withdraw, now, &mut out);
                out.reply = Some(Ok(Reply::Heartbeats(receipt)));
            }
        }
        self.reconcile_dirty(now, &mut out);
        out
    }

    /// The earliest time a `Tick` has work to do.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        [self.instance_timers.next(), self.action_timers.next(), self.service_timers.next(), self.zone_timers.next()]
            .into_iter()
            .flatten()
            .min()
            .map(Timestamp)
    }

    // ------------------------------------------------------------------
    // Heartbeats and evidence
    // ------------------------------------------------------------------

    fn heartbeats(&mut self, beats: &[Beat], now: i64, out: &mut Outputs) -> HeartbeatReceipt {
        let mut receipt = HeartbeatReceipt::default();
        let uncertain_after = micros(self.config.uncertain_after);
        for beat in beats {
            let Some(&slot) = self.instance_index.get(&beat.instance) else {
                if receipt.unknown.len() < 100 {
                    receipt.unknown.push(beat.instance);
                }
                continue;
            };
            let Some(inst) = self.instances.get_mut(slot) else { continue };
            // A seq not newer is a duplicate or reordered beat, unless the
            // agent restarted (its seq starts over) after a silence.
            let heard = if inst.covered {
                inst.last_heartbeat.max(self.zone_state.get(usize::from(inst.zone)).map_or(0, |z| z.lease_at))
            } else {
                inst.last_heartbeat
            };
            if beat.seq <= inst.last_seq && now - heard < uncertain_after {
                receipt.stale += 1;
                continue;
            }
            receipt.accepted += 1;
            inst.last_seq = beat.seq;
            inst.last_heartbeat = now;
            let f = &beat.facts;
            if f.writable.is_some() {
                inst.writable_fact = f.writable;
            }
            if f.wal_position.is_some() {
                inst.wal_position = f.wal_position;
            }
            if f.replication_lag_bytes.is_some() {
                inst.lag_bytes = f.replication_lag_bytes;
            }
            if f.connections.is_some() {
                inst.connections = f.connections;
            }
            if let Some(t) = f.last_backup_at {
                inst.last_backup_at = Some(t.0);
            }
            let broke = match f.upstream_streaming {
                Some(streaming) if inst.role == Role::Follower => {
                    let was = inst.upstream_broken;
                    inst.upstream_broken = !streaming;
                    !streaming && !was
                }
                _ => false,
            };
            let state = inst.state;
            let fenced = inst.fenced;
            let needs_schedule = inst.check_at == NEVER;
            // The hot path ends here for a healthy instance.
            match state {
                InstanceState::Available => {}
                InstanceState::Uncertain | InstanceState::Installing | InstanceState::Restarting => {
                    self.transition(slot, InstanceState::Available, "heartbeat received", now, out);
                }
                InstanceState::Unavailable if !fenced && !self.has_open_action_on(slot) => {
                    self.transition(slot, InstanceState::Available, "heartbeat received again", now, out);
                }
                _ => {}
            }
            if broke {
                self.follower_reports_broken_stream(slot, now, out);
            }
            if needs_schedule {
                self.schedule_instance(slot, now);
            }
        }
        receipt
    }

    /// A follower says its stream from the primary broke. If the primary is
    /// already silent, that corroborates it is down.
    fn follower_reports_broken_stream(&mut self, follower: u32, now: i64, out: &mut Outputs) {
        let Some(f) = self.instances.get(follower) else { return };
        let (sslot, fid) = (f.service, f.id);
        let Some(primary) = self.current_primary(sslot) else { return };
        if self.instances.get(primary).map(|p| p.state) == Some(InstanceState::Uncertain) {
            self.evidence(primary, &format!("follower {fid} reports its replication stream from it broke"), now, out);
        }
    }

    /// Corroborating evidence that an instance is down.
    fn evidence(&mut self, slot: u32, cause: &str, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        inst.evidence_at = now;
        let (state, sslot) = (inst.state, inst.service);
        match state {
            InstanceState::Available
            | InstanceState::Uncertain
            | InstanceState::Installing
            | InstanceState::Restarting
            | InstanceState::Upgrading => {
                self.transition(slot, InstanceState::Unavailable, cause, now, out);
            }
            _ => self.mark_dirty(sslot),
        }
    }

    /// Evidence already heard about a primary that just turned uncertain.
    fn corroborate_from_followers(&mut self, primary: u32, now: i64, out: &mut Outputs) {
        let Some(p) = self.instances.get(primary) else { return };
        if p.role != Role::Primary {
            return;
        }
        let fresh = now - micros(self.config.uncertain_after);
        let witness = self.services.get(p.service).and_then(|s| {
            s.instances.iter().copied().find(|&i| {
                self.instances.get(i).is_some_and(|f| {
                    f.role == Role::Follower
                        && f.state == InstanceState::Available
                        && f.upstream_broken
                        && self.heard_at(f) >= fresh
                })
            })
        });
        if let Some(w) = witness {
            let wid = self.instances.get(w).map(|f| f.id);
            if let Some(wid) = wid {
                self.evidence(
                    primary,
                    &format!("follower {wid} reports its replication stream from it broke"),
                    now,
                    out,
                );
            }
        }
    }

    // ------------------------------------------------------------------
    // Zone heartbeat leases
    // ------------------------------------------------------------------

    /// When an instance was last heard: its own last beat, or its zone's
    /// lease renewal while the lease covers it.
    fn heard_at(&self, inst: &Inst) -> i64 {
        if inst.covered {
            inst.last_heartbeat.max(self.zone_state.get(usize::from(inst.zone)).map_or(0, |z| z.lease_at))
        } else {
            inst.last_heartbeat
        }
    }

    fn zone_lease(
        &mut self,
        zone: &str,
        cover: &[InstanceId],
        withdraw: &[InstanceId],
        now: i64,
        out: &mut Outputs,
    ) -> HeartbeatReceipt {
        let mut receipt = HeartbeatReceipt::default();
        let z = self.zone(zone);
        let previous = self.zone_state[usize::from(z)].lease_at;
        for id in withdraw {
            let Some(&slot) = self.instance_index.get(id) else { continue };
            let Some(inst) = self.instances.get_mut(slot) else { continue };
            if inst.covered && inst.zone == z {
                inst.covered = false;
                inst.last_heartbeat = inst.last_heartbeat.max(previous);
                let zs = self.zone_mut(z);
                zs.covered = zs.covered.saturating_sub(1);
                self.schedule_instance(slot, now);
            }
        }
        self.zone_state[usize::from(z)].lease_at = now;
        self.zone_timers.schedule((now + micros(self.config.uncertain_after)).max(self.grace_until), z);
        for id in cover {
            let Some(&slot) = self.instance_index.get(id) else {
                if receipt.unknown.len() < 100 {
                    receipt.unknown.push(*id);
                }
                continue;
            };
            let Some(inst) = self.instances.get_mut(slot) else { continue };
            if inst.zone != z {
                receipt.stale += 1;
                continue;
            }
            receipt.accepted += 1;
            inst.last_heartbeat = now;
            let (state, fenced) = (inst.state, inst.fenced);
            match state {
                InstanceState::Uncertain | InstanceState::Installing | InstanceState::Restarting => {
                    self.transition(
                        slot,
                        InstanceState::Available,
                        "heard through its zone's heartbeat lease",
                        now,
                        out,
                    );
                }
                InstanceState::Unavailable if !fenced && !self.has_open_action_on(slot) => {
                    self.transition(
                        slot,
                        InstanceState::Available,
                        "heard again through its zone's heartbeat lease",
                        now,
                        out,
                    );
                }
                _ => {}
            }
            let Some(inst) = self.instances.get_mut(slot) else { continue };
            if inst.state == InstanceState::Available && !inst.covered {
                inst.covered = true;
                self.zone_mut(z).covered += 1;
            }
        }
        receipt
    }

    /// A zone's lease deadline: if it was not renewed in time, every
    /// instance it covers is judged as silent since the last renewal.
    fn check_zone_lease(&mut self, z: u16, now: i64, out: &mut Outputs) {
        let Some(zs) = self.zone_state.get(usize::from(z)) else { return };
        let expires = (zs.lease_at + micros(self.config.uncertain_after)).max(self.grace_until);
        if zs.covered == 0 || now < expires {
            return;
        }
        let lease_at = zs.lease_at;
        // Proportional to the fleet, but only when a whole zone's lease
        // lapses: rare, and every instance found is about to change anyway.
        let lapsed: Vec<u32> =
            self.instances.iter().filter(|(_, i)| i.covered && i.zone == z).map(|(slot, _)| slot).collect();
        self.zone_mut(z).covered = 0;
        for slot in lapsed {
            if let Some(inst) = self.instances.get_mut(slot) {
                inst.covered = false;
                inst.last_heartbeat = inst.last_heartbeat.max(lease_at);
            }
            self.check_instance(slot, now, out);
            self.schedule_instance(slot, now);
        }
    }

    // ------------------------------------------------------------------
    // Deadlines
    // ------------------------------------------------------------------

    fn schedule_instance(&mut self, slot: u32, now: i64) {
        let Some(inst) = self.instances.get(slot) else { return };
        let at = self.instance_deadline(inst, now);
        if at == NEVER {
            return;
        }
        let key = self.instance_timers.key(at);
        let Some(inst) = self.instances.get_mut(slot) else { return };
        if inst.check_at == key {
            return;
        }
        inst.check_at = key;
        self.instance_timers.schedule(at, slot);
    }

    /// Until when silence is forgiven for this instance: only instances that
    /// existed before a restart get the grace period.
    fn grace(&self, inst: &Inst) -> i64 {
        if inst.created_at < self.restored_at {
            self.grace_until
        } else {
            0
        }
    }

    fn reschedule_after_check(&mut self, slot: u32, now: i64) {
        let Some(inst) = self.instances.get(slot) else { return };
        let at = self.instance_deadline(inst, now);
        if at == NEVER {
            return;
        }
        let at = if at <= now { now + RECHECK_MICROS } else { at };
        let key = self.instance_timers.key(at);
        let Some(inst) = self.instances.get_mut(slot) else { return };
        if inst.check_at == key {
            return;
        }
        inst.check_at = key;
        self.instance_timers.schedule(at, slot);
    }

    /// When this instance next needs a look, given its state.
    fn instance_deadline(&self, inst: &Inst, _now: i64) -> i64 {
        let c = &self.config;
        match inst.state {
            // A covered instance is judged by its zone's lease deadline.
            InstanceState::Available if inst.covered => NEVER,
            InstanceState::Available => {
                let silent_at = inst.last_heartbeat + micros(c.uncertain_after);
                let grace = self.grace(inst);
                if silent_at < grace {
                    // The grace excuses silence, not evidence: a silent
                    // instance is probed meanwhile (see check_instance).
                    silent_at.max(inst.next_probe_at).min(grace)
                } else {
                    silent_at
                }
            }
            InstanceState::Uncertain => {
                let probe = inst.next_probe_at.max(self.grace(inst));
                if self.is_braked(inst.zone) {
                    // Silence does not count under the brake: only probes do.
                    return probe;
                }
                let dead =
                    (inst.last_heartbeat.max(inst.last_probe_ok) + micros(c.presumed_dead_after)).max(self.grace(inst));
                dead.min(probe)
            }
            InstanceState::Installing | InstanceState::Restarting | InstanceState::Upgrading => {
                inst.state_since + micros(c.install_timeout)
            }
            _ => NEVER,
        }
    }

    fn fire_timers(&mut self, now: i64, out: &mut Outputs) {
        for (key, slots) in self.instance_timers.pop_due(now) {
            for slot in slots {
                match self.instances.get_mut(slot) {
                    Some(inst) if inst.check_at == key => inst.check_at = NEVER,
                    _ => continue, // stale entry: the instance moved on
                }
                self.check_instance(slot, now, out);
                self.reschedule_after_check(slot, now);
            }
        }
        for (_, zones) in self.zone_timers.pop_due(now) {
            for z in zones {
                self.check_zone_lease(z, now, out);
            }
        }
        for (_, slots) in self.service_timers.pop_due(now) {
            for sslot in slots {
                self.scheduled_backup_work(sslot, now, out);
            }
        }
        for (_, ids) in self.action_timers.pop_due(now) {
            for id in ids {
                let due = match self.actions.get(&id) {
                    Some(a) => a.record.state == ActionState::Running && a.record.deadline.0 <= now,
                    None => false,
                };
                if due {
                    self.redispatch(id, "no result before its deadline, or retry due", now, out);
                }
            }
        }
    }

    // One arm per state with its own condition inside reads as the state table; guards would scatter it.
    #[allow(clippy::collapsible_match)]
    fn check_instance(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get(slot) else { return };
        let c = &self.config;
        let silent_for = Duration::from_micros((now - self.heard_at(inst)).max(0) as u64);
        match inst.state {
            InstanceState::Available => {
                let silent_at = inst.last_heartbeat + micros(c.uncertain_after);
                if !inst.covered && now >= silent_at && now < self.grace(inst) {
                    // Within the restart grace: silence does not make it
                    // uncertain (agents are still finding the new control
                    // plane), but a probe may find evidence, which counts.
                    if now >= inst.next_probe_at {
                        let inst = self.instances.get_mut(slot).expect("looked up above");
                        inst.next_probe_at = now + micros(c.probe_interval);
                        if !inst.probing {
                            inst.probing = true;
                            self.open_action(
                                slot,
                                ActionKind::Probe,
                                "silent during the restart grace: probe it out of band",
                                false,
                                now,
                                out,
                            );
                        }
                    }
                    return;
                }
                if !inst.covered && now >= silent_at.max(self.grace(inst)) {
                    let cause = format!("no heartbeat for {:.1}s", silent_for.as_secs_f64());
                    if self.transition(slot, InstanceState::Uncertain, &cause, now, out) {
                        self.corroborate_from_followers(slot, now, out);
                        if self.instances.get(slot).map(|i| i.state) == Some(InstanceState::Uncertain) {
                            self.request_probe(slot, now, out);
                        }
                    }
                }
            }
            InstanceState::Uncertain => {
                let dead_at =
                    (inst.last_heartbeat.max(inst.last_probe_ok) + micros(c.presumed_dead_after)).max(self.grace(inst));
                let braked = self.is_braked(inst.zone);
                if now >= dead_at && !braked {
                    let cause = format!(
                        "presumed dead: no heartbeat for {:.0}s and no probe answered",
                        silent_for.as_secs_f64()
                    );
                    self.transition(slot, InstanceState::Unavailable, &cause, now, out);
                } else if now >= inst.next_probe_at {
                    self.request_probe(slot, now, out);
                }
            }
            InstanceState::Installing | InstanceState::Restarting | InstanceState::Upgrading => {
                if now >= inst.state_since + micros(c.install_timeout) && !self.has_open_action_on(slot) {
                    let cause = format!("no heartbeat within {:?} of {}", c.install_timeout, inst.state);
                    self.evidence(slot, &cause, now, out);
                }
            }
            _ => {}
        }
    }

    fn request_probe(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        inst.next_probe_at = now + micros(self.config.probe_interval);
        if inst.probing {
            return;
        }
        inst.probing = true;
        self.open_action(slot, ActionKind::Probe, "instance is uncertain: probe it out of band", false, now, out);
    }

    // ------------------------------------------------------------------
    // Transitions
    // ------------------------------------------------------------------

    /// The one place an instance changes state. Refuses what the table
    /// forbids (and logs it as a fleet event) rather than overwrite.
    fn transition(&mut self, slot: u32, to: InstanceState, cause: &str, now: i64, out: &mut Outputs) -> bool {
        let Some(inst) = self.instances.get_mut(slot) else { return false };
        let from = inst.state;
        if !from.can_become(to) {
            let (id, sslot) = (inst.id, inst.service);
            out.changes.events.push(self.event(
                now,
                EventSubject::Fleet,
                Some(sslot),
                Some(id),
                Some(from.as_str()),
                Some(to.as_str()),
                format!("illegal transition refused ({cause})"),
            ));
            return false;
        }
        let uncovered_zone = if inst.covered { Some(inst.zone) } else { None };
        inst.state = to;
        inst.state_since = now;
        if to == InstanceState::Available {
            inst.restarts = 0;
        }
        if let Some(z) = uncovered_zone {
            // Only an available instance is covered: leaving `available`
            // ends the cover; it was last heard at the lease's renewal.
            let lease_at = self.zone_state.get(usize::from(z)).map_or(0, |zs| zs.lease_at);
            if let Some(inst) = self.instances.get_mut(slot) {
                inst.covered = false;
                inst.last_heartbeat = inst.last_heartbeat.max(lease_at);
            }
            let zs = self.zone_mut(z);
            zs.covered = zs.covered.saturating_sub(1);
        }
        let Some(inst) = self.instances.get_mut(slot) else { return false };
        let (zone, sslot, id) = (inst.zone, inst.service, inst.id);
        self.state_counts[state_index(from)] -= 1;
        self.state_counts[state_index(to)] += 1;
        if from.is_member() && !to.is_member() {
            self.zone_mut(zone).members -= 1;
            self.fleet_zone.members -= 1;
        }
        if from == InstanceState::Uncertain {
            self.zone_mut(zone).uncertain -= 1;
            self.fleet_zone.uncertain -= 1;
            if self.is_braked(zone) {
                self.update_brakes(now, out);
            }
        }
        if to == InstanceState::Uncertain {
            let window = micros(self.config.brake_window);
            for z in [Some(zone), None] {
                let zs = match z {
                    Some(z) => self.zone_mut(z),
                    None => &mut self.fleet_zone,
                };
                zs.uncertain += 1;
                zs.onsets.push_back(now);
                while zs.onsets.front().is_some_and(|&t| t < now - window) {
                    zs.onsets.pop_front();
                }
            }
            self.update_brakes(now, out);
        }
        out.changes.events.push(self.event(
            now,
            EventSubject::Instance,
            Some(sslot),
            Some(id),
            Some(from.as_str()),
            Some(to.as_str()),
            cause,
        ));
        if let Some(rec) = self.instance_record(slot) {
            out.changes.instances.push(rec);
        }
        self.schedule_instance(slot, now);
        self.mark_dirty(sslot);
        true
    }

    fn set_service_state(&mut self, sslot: u32, to: ServiceState, cause: &str, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get_mut(sslot) else { return };
        if s.state == to {
            return;
        }
        let from = s.state;
        if from == ServiceState::Deleted || (from == ServiceState::Deleting && to != ServiceState::Deleted) {
            return;
        }
        s.state = to;
        s.state_since = now;
        if to == ServiceState::Available {
            // Healthy again: a later failure starts a new count.
            s.remedy_failures = 0;
            s.failing_since = 0;
        }
        out.changes.events.push(self.event(
            now,
            EventSubject::Service,
            Some(sslot),
            None,
            Some(from.as_str()),
            Some(to.as_str()),
            cause,
        ));
        if let Some(rec) = self.service_record(sslot) {
            out.changes.services.push(rec);
        }
    }

    // ------------------------------------------------------------------
    // Brake
    // ------------------------------------------------------------------

    fn brake_threshold(&self, members: u32) -> u32 {
        let share = (self.config.brake_share * f64::from(members)).ceil() as u32;
        share.max(self.config.brake_min_instances).max(1)
    }

    fn is_braked(&self, zone: u16) -> bool {
        self.fleet_zone.braked_since.is_some()
            || self.zone_state.get(usize::from(zone)).is_some_and(|z| z.braked_since.is_some())
    }

    fn braked_since(&self, zone: u16) -> Option<i64> {
        let z = self.zone_state.get(usize::from(zone)).and_then(|z| z.braked_since);
        match (z, self.fleet_zone.braked_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Engages or releases the brake per zone and for the whole fleet.
    fn update_brakes(&mut self, now: i64, out: &mut Outputs) {
        let window = micros(self.config.brake_window);
        for z in 0..=self.zone_state.len() {
            let fleet = z == self.zone_state.len();
            let (members, uncertain, onsets, braked) = {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                while zs.onsets.front().is_some_and(|&t| t < now - window) {
                    zs.onsets.pop_front();
                }
                (zs.members, zs.uncertain, zs.onsets.len() as u32, zs.braked_since.is_some())
            };
            let threshold = self.brake_threshold(members);
            let name = if fleet { "fleet".to_string() } else { self.zones.name(z as u16).to_string() };
            if !braked && onsets >= threshold && uncertain >= threshold {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                zs.braked_since = Some(now);
                out.changes.events.push(fleet_event(
                    now,
                    "released",
                    "braked",
                    format!(
                        "mass-uncertainty brake engaged for {name}: {onsets} of {members} instances turned uncertain \
                         within {:?}; destructive remedies there wait for fresh evidence",
                        self.config.brake_window
                    ),
                ));
            } else if braked && uncertain * 2 < threshold {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                zs.braked_since = None;
                out.changes.events.push(fleet_event(
                    now,
                    "braked",
                    "released",
                    format!("mass-uncertainty brake released for {name}: {uncertain} instances still uncertain"),
                ));
                let held = std::mem::take(&mut self.held);
                for s in held {
                    if let Some(svc) = self.services.get_mut(s) {
                        svc.held = false;
                    }
                    self.mark_dirty(s);
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Actions
    // ------------------------------------------------------------------

    fn budget_zone(&self, kind: &ActionKind, target: u32) -> Option<u16> {
        if !is_remedy(kind) || !kind.is_destructive() {
            return None;
        }
        match kind {
            ActionKind::Provision { zone, .. } => self.zones.get(zone),
            _ => self.instances.get(target).map(|i| i.zone),
        }
    }

    /// Opens an action on `slot`: running and dispatched at once, or pending
    /// behind its zone's budget.
    fn open_action(
        &mut self,
        slot: u32,
        kind: ActionKind,
        cause: &str,
        remedy: bool,
        now: i64,
        out: &mut Outputs,
    ) -> Option<ActionId> {
        let inst = self.instances.get(slot)?;
        let (iid, sslot) = (inst.id, inst.service);
        let service_id = self.services.get(sslot)?.id;
        let id = ActionId::new_at(now, self.rng.next_u64());
        let durable = kind != ActionKind::Probe;
        let budget_zone = if remedy { self.budget_zone(&kind, slot) } else { None };
        let record = ActionRecord {
            id,
            service: service_id,
            instance: iid,
            kind,
            state: ActionState::Pending,
            attempts: 0,
            cause: cause.into(),
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            deadline: Timestamp(now),
            error: None,
        };
        if remedy {
            if let Some(s) = self.services.get_mut(sslot) {
                s.open_remedies += 1;
            }
        }
        self.actions.insert(id, OpenAction { record, remedy, budget_zone, durable });
        let over_budget = budget_zone.is_some_and(|z| {
            let zs = &self.zone_state[usize::from(z)];
            zs.running_budgeted >= self.config.zone_budget || !zs.waiting.is_empty()
        });
        if over_budget {
            let z = budget_zone.unwrap_or_default();
            self.zone_mut(z).waiting.push_back(id);
            let rec = self.actions[&id].record.clone();
            out.changes.events.push(self.action_event(
                &rec,
                ActionState::Pending,
                "waiting for the zone's remedy budget",
                now,
            ));
            out.changes.actions.push(rec);
        } else {
            if let Some(z) = budget_zone {
                self.zone_mut(z).running_budgeted += 1;
            }
            self.start_action(id, now, out);
        }
        Some(id)
    }

    /// Pending → running: apply its immediate effect and dispatch.
    fn start_action(&mut self, id: ActionId, now: i64, out: &mut Outputs) {
        let Some(a) = self.actions.get(&id) else { return };
        let slot = self.instance_index.get(&a.record.instance).copied();
        let kind = a.record.kind.clone();
        let cause = a.record.cause.clone();
        if let Some(slot) = slot {
            match kind {
                ActionKind::Restart => {
                    if let Some(i) = self.instances.get_mut(slot) {
                        i.restarts += 1;
                    }
                    self.transition(slot, InstanceState::Restarting, &cause, now, out);
                }
                ActionKind::Retire => {
                    let state = self.instances.get(slot).map(|i| i.state);
                    if state.is_some_and(|s| s.is_member()) {
                        self.transition(slot, InstanceState::Retiring, &cause, now, out);
                    }
                }
                _ => {}
            }
        }
        self.redispatch(id, "dispatched", now, out);
    }

    /// Dispatches the next attempt of a running (or starting) action, or
    /// fails it when its attempts are spent.
    fn redispatch(&mut self, id: ActionId, why: &str, now: i64, out: &mut Outputs) {
        let max = self.config.max_action_attempts;
        let timeout = micros(self.config.action_timeout);
        let Some(a) = self.actions.get_mut(&id) else { return };
        if a.record.attempts >= max {
            let error = a.record.error.clone().unwrap_or_else(|| "no result".into());
            self.finish_action(
                id,
                ActionState::Failed,
                Some(format!("gave up after {max} attempts: {error}")),
                now,
                out,
            );
            return;
        }
        let from = a.record.state;
        a.record.state = ActionState::Running;
        a.record.attempts += 1;
        a.record.updated_at = Timestamp(now);
        a.record.deadline = Timestamp(now + timeout);
        let rec = a.record.clone();
        let durable = a.durable;
        self.action_timers.schedule(now + timeout, id);
        if durable {
            let cause = format!("{} attempt {}: {why}", rec.kind.name(), rec.attempts);
            out.changes.events.push(self.action_event(&rec, from, &cause, now));
            out.changes.actions.push(rec.clone());
        }
        out.dispatch.push(rec);
    }

    fn finish_action(&mut self, id: ActionId, state: ActionState, error: Option<String>, now: i64, out: &mut Outputs) {
        let Some(mut a) = self.actions.remove(&id) else { return };
        let from = a.record.state;
        a.record.state = state;
        a.record.updated_at = Timestamp(now);
        if error.is_some() {
            a.record.error = error;
        }
        let slot = self.instance_index.get(&a.record.instance).copied();
        // Found by id, not through the instance: a terminated instance has
        // already left memory when its action finishes.
        let sslot = self.service_slot(a.record.service);
        if a.remedy {
            if let Some(s) = sslot.and_then(|s| self.services.get_mut(s)) {
                s.open_remedies = s.open_remedies.saturating_sub(1);
            }
            if state == ActionState::Failed {
                if let Some(s) = sslot {
                    self.remedy_failed(s, &a.record, now, out);
                }
            }
        }
        if a.record.kind == ActionKind::Probe {
            if let Some(i) = slot.and_then(|s| self.instances.get_mut(s)) {
                i.probing = false;
            }
        }
        if let Some(svc) = sslot.and_then(|s| self.services.get_mut(s)) {
            match a.record.kind {
                ActionKind::Backup => svc.backup_running = false,
                ActionKind::VerifyRestore => svc.verify_running = false,
                _ => {}
            }
        }
        if a.durable {
            let cause = match &a.record.error {
                Some(e) if state != ActionState::Succeeded => format!("{}: {e}", a.record.kind.name()),
                _ => format!("{} {}", a.record.kind.name(), state),
            };
            out.changes.events.push(self.action_event(&a.record, from, &cause, now));
            out.changes.actions.push(a.record.clone());
        }
        // A budget slot freed: start whoever waits in that zone.
        if let Some(z) = a.budget_zone {
            if from == ActionState::Running {
                let zs = self.zone_mut(z);
                zs.running_budgeted = zs.running_budgeted.saturating_sub(1);
            } else {
                let zs = self.zone_mut(z);
                zs.waiting.retain(|w| *w != id);
            }
            self.start_waiting(z, now, out);
        }
        if let Some(s) = sslot {
            self.mark_dirty(s);
        }
    }

    fn start_waiting(&mut self, zone: u16, now: i64, out: &mut Outputs) {
        loop {
            let budget = self.config.zone_budget;
            let zs = self.zone_mut(zone);
            if zs.running_budgeted >= budget {
                return;
            }
            let Some(next) = zs.waiting.pop_front() else { return };
            if !self.actions.contains_key(&next) {
                continue;
            }
            if self.still_needed(next) {
                self.zone_mut(zone).running_budgeted += 1;
                self.start_action(next, now, out);
            } else {
                // Not counted as running: finish_action must not free a slot.
                if let Some(a) = self.actions.get_mut(&next) {
                    a.budget_zone = None;
                }
                self.finish_action(next, ActionState::Cancelled, Some("no longer needed".into()), now, out);
            }
        }
    }

    /// Whether a pending remedy still fits the fleet when its turn comes.
    fn still_needed(&self, id: ActionId) -> bool {
        let Some(a) = self.actions.get(&id) else { return false };
        let Some(&slot) = self.instance_index.get(&a.record.instance) else { return false };
        let Some(inst) = self.instances.get(slot) else { return false };
        match a.record.kind {
            ActionKind::Fence { .. } => inst.state == InstanceState::Unavailable && !inst.fenced,
            ActionKind::Restart => inst.state == InstanceState::Unavailable,
            ActionKind::Promote => {
                inst.state == InstanceState::Available && self.current_primary(inst.service).is_none()
            }
            _ => true,
        }
    }

    fn action_result(&mut self, id: ActionId, attempt: u32, outcome: ActionOutcome, now: i64, out: &mut Outputs) {
        let Some(a) = self.actions.get(&id) else { return };
        if a.record.state != ActionState::Running || a.record.attempts != attempt {
            return; // a stale attempt's answer
        }
        let kind = a.record.kind.clone();
        let slot = self.instance_index.get(&a.record.instance).copied();
        match outcome {
            ActionOutcome::Succeeded { detail } => {
                if let Some(slot) = slot {
                    self.apply_success(slot, &kind, detail.as_deref(), now, out);
                }
                self.finish_action(id, ActionState::Succeeded, None, now, out);
            }
            ActionOutcome::Failed { error, retryable } => {
                if kind == ActionKind::Probe {
                    self.finish_action(id, ActionState::Failed, Some(error.clone()), now, out);
                    if let Some(slot) = slot {
                        let silent = self.instances.get(slot).is_some_and(|i| {
                            i.state == InstanceState::Uncertain
                                || (i.state == InstanceState::Available
                                    && !i.covered
                                    && now >= i.last_heartbeat + micros(self.config.uncertain_after))
                        });
                        if silent {
                            self.evidence(slot, &format!("probe failed: {error}"), now, out);
                        }
                    }
                    return;
                }
                let attempts = a.record.attempts;
                if retryable && attempts < self.config.max_action_attempts {
                    let backoff =
                        (Duration::from_secs(1) * 2u32.saturating_pow(attempts.min(6))).min(MAX_RETRY_BACKOFF);
                    let Some(a) = self.actions.get_mut(&id) else { return };
                    a.record.error = Some(error);
                    a.record.deadline = Timestamp(now + micros(backoff));
                    self.action_timers.schedule(now + micros(backoff), id);
                } else {
                    self.finish_action(id, ActionState::Failed, Some(error.clone()), now, out);
                    if let Some(slot) = slot {
                        self.apply_failure(slot, &kind, &error, now, out);
                    }
                }
            }
        }
    }

    fn apply_success(&mut self, slot: u32, kind: &ActionKind, detail: Option<&str>, now: i64, out: &mut Outputs) {
        match kind {
            ActionKind::Probe => {
                if let Some(i) = self.instances.get_mut(slot) {
                    i.last_probe_ok = now;
                }
                self.schedule_instance(slot, now);
            }
            ActionKind::Fence { .. } => {
                if let Some(i) = self.instances.get_mut(slot) {
                    i.fenced = true;
                }
                self.instance_changed(slot, out);
            }
            ActionKind::Promote => {
                // Safety: promotion was only opened with no writable primary
                // left; re-check and refuse to produce two.
                let Some(sslot) = self.instances.get(slot).map(|i| i.service) else { return };
                if let Some(p) = self.current_primary(sslot) {
                    if p != slot {
                        self.invariant_broken(
                            sslot,
                            "a promotion succeeded while another primary is writable",
                            now,
                            out,
                        );
                    }
                }
                let id = {
                    let Some(i) = self.instances.get_mut(slot) else { return };
                    i.role = Role::Primary;
                    i.upstream_broken = false;
                    i.id
                };
                out.changes.events.push(self.event(
                    now,
                    EventSubject::Instance,
                    Some(sslot),
                    Some(id),
                    Some("follower"),
                    Some("primary"),
                    format!("promoted{}", detail.map(|d| format!(": {d}")).unwrap_or_default()),
                ));
                self.instance_changed(slot, out);
            }
            ActionKind::Retire => {
                self.transition(slot, InstanceState::Retired, "retired: stopped by its provider", now, out);
            }
            ActionKind::Archive => {
                self.transition(slot, InstanceState::Archived, "archived: logs and data kept, compute freed", now, out);
            }
            ActionKind::Terminate => {
                if self.transition(slot, InstanceState::Terminated, "terminated", now, out) {
                    self.remove_instance(slot);
                }
            }
            ActionKind::Provision { .. } | ActionKind::Restart => {
                // The instance proves itself with a heartbeat; the install
                // deadline (already scheduled) catches one that never comes.
                self.schedule_instance(slot, now);
            }
            ActionKind::Backup | ActionKind::VerifyRestore => {
                let Some(sslot) = self.instances.get(slot).map(|i| i.service) else { return };
                self.backup_result(sslot, kind, None, detail, now, out);
            }
            ActionKind::InjectFault { .. } => {}
        }
    }

    fn apply_failure(&mut self, slot: u32, kind: &ActionKind, error: &str, now: i64, out: &mut Outputs) {
        let sslot = self.instances.get(slot).map(|i| i.service);
        match kind {
            ActionKind::Provision { .. } => {
                self.evidence(slot, &format!("provisioning failed: {error}"), now, out);
            }
            ActionKind::Restart => {
                self.evidence(slot, &format!("restart failed: {error}"), now, out);
            }
            ActionKind::Promote => {
                self.evidence(slot, &format!("promotion failed: {error}"), now, out);
            }
            ActionKind::Fence { .. } | ActionKind::Retire | ActionKind::Archive | ActionKind::Terminate => {
                // Without a confirmed fence nothing may be promoted; without
                // a retire the instance lingers. Both need a person.
                if let Some(s) = sslot {
                    self.set_needs_human(s, out);
                }
            }
            ActionKind::Backup | ActionKind::VerifyRestore => {
                if let Some(s) = sslot {
                    self.backup_result(s, kind, Some(error), None, now, out);
                }
            }
            ActionKind::Probe | ActionKind::InjectFault { .. } => {}
        }
    }

    fn invariant_broken(&mut self, sslot: u32, what: &str, now: i64, out: &mut Outputs) {
        self.set_needs_human(sslot, out);
        out.changes.events.push(self.event(
            now,
            EventSubject::Fleet,
            Some(sslot),
            None,
            None,
            Some("needs_human"),
            format!("safety invariant at risk: {what}"),
        ));
    }

    /// A remedy of service `sslot` failed for good (after its own attempts).
    /// Failures in a row are counted until the service is available again;
    /// past `max_remedy_failures` of them, or `max_action_failure` after the
    /// first, the engine stops trying and asks for a human, once, with the
    /// last error as evidence. `ResumeService` clears it.
    fn remedy_failed(&mut self, sslot: u32, failed: &ActionRecord, now: i64, out: &mut Outputs) {
        let (max_failures, max_time) = (self.config.max_remedy_failures, micros(self.config.max_action_failure));
        let Some(s) = self.services.get_mut(sslot) else { return };
        if s.deleting {
            return;
        }
        s.remedy_failures += 1;
        if s.failing_since == 0 {
            s.failing_since = now;
        }
        let (failures, since, already) = (s.remedy_failures, s.failing_since, s.needs_human);
        let failing_for = now - since;
        if already || (failures < max_failures && failing_for < max_time) {
            return;
        }
        self.set_needs_human(sslot, out);
        let error = failed.error.as_deref().unwrap_or("no result");
        out.changes.events.push(self.event(
            now,
            EventSubject::Service,
            Some(sslot),
            Some(failed.instance),
            None,
            Some("needs_human"),
            format!(
                "{failures} remedies failed in a row over {:.0}s; the engine stopped trying and a human is \
                 needed (resume the service once it is fixed). Last: {} attempt {}: {error}",
                Duration::from_micros(failing_for.max(0) as u64).as_secs_f64(),
                failed.kind.name(),
                failed.attempts,
            ),
        ));
    }

    fn has_open_action_on(&self, slot: u32) -> bool {
        let Some(inst) = self.instances.get(slot) else { return false };
        let Some(s) = self.services.get(inst.service) else { return false };
        s.open_remedies > 0 && self.actions.values().any(|a| a.remedy && a.record.instance == inst.id)
    }

    // ------------------------------------------------------------------
    // Reconcile: one remedy at a time per service
    // ------------------------------------------------------------------

    fn mark_dirty(&mut self, sslot: u32) {
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(sslot);
            }
        }
    }

    fn reconcile_dirty(&mut self, now: i64, out: &mut Outputs) {
        while !self.dirty.is_empty() {
            let batch = std::mem::take(&mut self.dirty);
            for sslot in batch {
                if let Some(s) = self.services.get_mut(sslot) {
                    s.dirty = false;
                } else {
                    continue;
                }
                self.reconcile(sslot, now, out);
                self.derive_service_state(sslot, now, out);
            }
        }
    }

    /// The writable primary of a service, if any.
    fn current_primary(&self, sslot: u32) -> Option<u32> {
        let s = self.services.get(sslot)?;
        s.instances.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.writable()))
    }

    /// The follower to promote: available, fresh, within the lag bound,
    /// most advanced.
    fn best_follower(&self, sslot: u32, now: i64) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let fresh = now - micros(self.config.uncertain_after);
        s.instances
            .iter()
            .copied()
            .filter_map(|i| self.instances.get(i).map(|x| (i, x)))
            .filter(|(_, x)| {
                x.role == Role::Follower
                    && !x.fenced
                    && x.state == InstanceState::Available
                    && self.heard_at(x) >= fresh
                    && x.lag_bytes.unwrap_or(0) <= s.plan.max_failover_lag_bytes
            })
            .max_by(|(_, a), (_, b)| {
                a.wal_position
                    .unwrap_or(0)
                    .cmp(&b.wal_position.unwrap_or(0))
                    .then(b.lag_bytes.unwrap_or(0).cmp(&a.lag_bytes.unwrap_or(0)))
                    .then(b.id.cmp(&a.id))
            })
            .map(|(i, _)| i)
    }

    /// Under the brake, a remedy against `target` runs only on evidence
    /// that arrived after the brake engaged.
    fn brake_allows(&mut self, sslot: u32, target: u32, now: i64, out: &mut Outputs) -> bool {
        let Some(inst) = self.instances.get(target) else { return true };
        let Some(since) = self.braked_since(inst.zone) else { return true };
        if inst.evidence_at >= since {
            return true;
        }
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.held {
                s.held = true;
                self.held.push(sslot);
            }
        }
        // Ask for the evidence that would let it go.
        if inst.state == InstanceState::Unavailable {
            self.request_probe_unavailable(target, now, out);
        }
        false
    }

    fn request_probe_unavailable(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        if inst.probing || now < inst.next_probe_at {
            return;
        }
        inst.next_probe_at = now + micros(self.config.probe_interval);
        inst.probing = true;
        self.open_action(slot, ActionKind::Probe, "held by the brake: fresh evidence needed", false, now, out);
    }

    fn reconcile(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.open_remedies > 0 || s.needs_human {
            return;
        }
        let members: Vec<u32> = s.instances.clone();
        if s.deleting {
            self.reconcile_deleting(sslot, &members, now, out);
            return;
        }
        let writable: Vec<u32> =
            members.iter().copied().filter(|&i| self.instances.get(i).is_some_and(|x| x.writable())).collect();
        if writable.len() > 1 {
            self.invariant_broken(sslot, "two writable primaries", now, out);
            return;
        }
        if let Some(&p) = writable.first() {
            let pstate = self.instances.get(p).map(|x| x.state);
            if pstate == Some(InstanceState::Unavailable) {
                if !self.brake_allows(sslot, p, now, out) {
                    return;
                }
                let restarts = self.instances.get(p).map(|x| x.restarts).unwrap_or(0);
                if self.best_follower(sslot, now).is_some() {
                    let fence = ActionKind::Fence { immediate: true };
                    self.open_action(p, fence, "failover: fence the unavailable primary", true, now, out);
                } else if restarts < MAX_RESTARTS {
                    self.open_action(
                        p,
                        ActionKind::Restart,
                        "primary unavailable and no follower can take over: restart it",
                        true,
                        now,
                        out,
                    );
                } else {
                    self.open_action(
                        p,
                        ActionKind::Fence { immediate: true },
                        "restart did not bring the primary back: fence it, then rebuild",
                        true,
                        now,
                        out,
                    );
                }
                return;
            }
        } else {
            // No writable primary: every primary is fenced (or none exists).
            if let Some(f) = self.best_follower(sslot, now) {
                debug_assert!(self.current_primary(sslot).is_none());
                self.open_action(
                    f,
                    ActionKind::Promote,
                    "failover: promote the most advanced healthy follower",
                    true,
                    now,
                    out,
                );
                return;
            }
            let anchor =
                members.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.role == Role::Primary));
            let zone = anchor
                .and_then(|a| self.instances.get(a).map(|x| x.zone))
                .or_else(|| self.services.get(sslot).and_then(|s| s.zones.first().copied()))
                .unwrap_or(0);
            self.provision(
                sslot,
                Role::Primary,
                zone,
                "no primary and no follower to promote: rebuild the primary from its image",
                now,
                out,
            );
            return;
        }
        // A writable primary exists. Followers next.
        let plan_followers = self.services.get(sslot).map(|s| s.plan.followers).unwrap_or(0);
        for &i in &members {
            let Some(x) = self.instances.get(i) else { continue };
            if x.role == Role::Follower && x.state == InstanceState::Unavailable {
                if !self.brake_allows(sslot, i, now, out) {
                    return;
                }
                self.open_action(
                    i,
                    ActionKind::Retire,
                    "follower unavailable: retire it, a replacement follows",
                    true,
                    now,
                    out,
                );
                return;
            }
        }
        let followers = members
            .iter()
            .filter(|&&i| {
                self.instances.get(i).is_some_and(|x| x.role == Role::Follower && x.state.is_member() && !x.fenced)
            })
            .count();
        if followers < usize::from(plan_followers) {
            let zone = self.zone_for_new_member(sslot);
            self.provision(
                sslot,
                Role::Follower,
                zone,
                "plan has fewer followers than it asks for: build one",
                now,
                out,
            );
            return;
        }
        // Leavers: fenced old primaries retire; retired archive; archived terminate.
        for &i in &members {
            let Some(x) = self.instances.get(i) else { continue };
            let (kind, cause) = match x.state {
                s if s.is_member() && x.fenced => (ActionKind::Retire, "replaced: retire the fenced old primary"),
                InstanceState::Retiring => (ActionKind::Retire, "finish retiring"),
                InstanceState::Retired => (ActionKind::Archive, "archive the retired instance"),
                InstanceState::Archived => (ActionKind::Terminate, "terminate the archived instance"),
                _ => continue,
            };
            self.open_action(i, kind, cause, true, now, out);
            return;
        }
    }

    fn reconcile_deleting(&mut self, sslot: u32, members: &[u32], now: i64, out: &mut Outputs) {
        for &i in members {
            let Some(x) = self.instances.get(i) else { continue };
            let kind = match x.state {
                InstanceState::Retiring => ActionKind::Retire,
                s if s.is_member() => ActionKind::Retire,
                InstanceState::Retired => ActionKind::Archive,
                InstanceState::Archived => ActionKind::Terminate,
                _ => continue,
            };
            self.open_action(i, kind, "service deleted by its owner", true, now, out);
            return;
        }
        if members.iter().all(|&i| self.instances.get(i).is_none()) {
            self.set_service_state(sslot, ServiceState::Deleted, "every instance terminated", now, out);
            if let Some(s) = self.services.remove(sslot) {
                self.service_names.remove(&s.name);
                self.service_ids.remove(&s.id);
            }
        }
    }

    fn provision_kind(&self, sslot: u32, role: Role, zone: u16, image: u32) -> ActionKind {
        let s = self.services.get(sslot);
        ActionKind::Provision {
            role,
            zone: self.zones.name(zone).to_string(),
            image: self.images.id(image),
            service_name: s.map(|s| s.name.to_string()).unwrap_or_default(),
            sync: s.is_some_and(|s| s.plan.sync),
        }
    }

    fn zone_for_new_member(&self, sslot: u32) -> u16 {
        let Some(s) = self.services.get(sslot) else { return 0 };
        let count = |z: u16| {
            s.instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.zone == z && x.state.is_member() && !x.fenced))
                .count()
        };
        // A zone where a member of this service just failed (a leaver:
        // fenced or retiring, still present) comes last: it may be the zone
        // that is down, and provisioning into it would fail and repeat.
        let leavers = |z: u16| {
            s.instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.zone == z && (!x.state.is_member() || x.fenced)))
                .count()
        };
        s.zones.iter().copied().min_by_key(|&z| (leavers(z) > 0, count(z), leavers(z))).unwrap_or(0)
    }

    fn provision(
        &mut self,
        sslot: u32,
        role: Role,
        zone: u16,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let (image, provider) = (s.image, s.provider);
        let id = InstanceId::new_at(now, self.rng.next_u64());
        let inst = new_instance(id, sslot, image, zone, provider, role, now);
        let slot = self.add_instance(inst);
        out.changes.events.push(self.event(
            now,
            EventSubject::Instance,
            Some(sslot),
            Some(id),
            None,
            Some(InstanceState::Installing.as_str()),
            format!("{cause} ({role} in {})", self.zones.name(zone)),
        ));
        self.instance_changed(slot, out);
        self.schedule_instance(slot, now);
        let kind = self.provision_kind(sslot, role, zone, image);
        let remedy = true;
        self.open_action(slot, kind, cause, remedy, now, out);
        Some(slot)
    }

    /// The coarse service state, derived from its instances and remedies.
    fn derive_service_state(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.deleting {
            self.set_service_state(sslot, ServiceState::Deleting, "deleted by its owner", now, out);
            return;
        }
        let primary = self.current_primary(sslot).and_then(|p| self.instances.get(p));
        let remedying = s.open_remedies > 0;
        let (to, cause): (ServiceState, String) = match primary {
            Some(p) if p.state == InstanceState::Available => {
                let available_followers = s
                    .instances
                    .iter()
                    .filter(|&&i| {
                        self.instances.get(i).is_some_and(|x| {
                            x.role == Role::Follower && x.state == InstanceState::Available && !x.fenced
                        })
                    })
                    .count();
                if available_followers >= usize::from(s.plan.followers) {
                    (ServiceState::Available, "primary and every planned follower available".into())
                } else {
                    (
                        ServiceState::Degraded,
                        format!("{available_followers} of {} followers available", s.plan.followers),
                    )
                }
            }
            Some(p) if p.state == InstanceState::Installing && s.state == ServiceState::Provisioning => {
                (ServiceState::Provisioning, "building".into())
            }
            Some(p) if p.state == InstanceState::Uncertain => (ServiceState::Uncertain, "primary is uncertain".into()),
            _ if s.needs_human => (ServiceState::Unavailable, "a remedy failed: a human is needed".into()),
            _ if s.held => (ServiceState::Unavailable, "remedy held by the mass-uncertainty brake".into()),
            _ if remedying => (ServiceState::Recovering, "primary down: remedy under way".into()),
            Some(p) => (ServiceState::Unavailable, format!("primary {}", p.state)),
            None => (ServiceState::Unavailable, "no writable primary".into()),
        };
        self.set_service_state(sslot, to, &cause, now, out);
    }

    // ------------------------------------------------------------------
    // Backups and restore tests
    // ------------------------------------------------------------------

    fn set_needs_human(&mut self, sslot: u32, out: &mut Outputs) {
        let Some(svc) = self.services.get_mut(sslot) else { return };
        if !svc.needs_human {
            svc.needs_human = true;
            if let Some(rec) = self.service_record(sslot) {
                out.changes.services.push(rec);
            }
        }
        self.mark_dirty(sslot);
    }

    /// Computes when the next backup and restore test are due, and arms the
    /// service's timer for the earlier one.
    fn schedule_backups(&mut self, sslot: u32, now: i64) {
        let (backup_every, verify_every) = (self.config.backup_interval, self.config.verify_interval);
        // Spread first backups over an hour so a fleet created at once does
        // not back up at once.
        let jitter = (self.rng.next_u64() % 3_600_000_000) as i64;
        let Some(s) = self.services.get_mut(sslot) else { return };
        s.next_backup_at = match backup_every {
            None => NEVER,
            Some(every) => match s.backups.last_backup_at {
                Some(t) => t.0 + micros(every),
                None => now + micros(every.min(Duration::from_secs(600))) + jitter,
            },
        };
        s.next_verify_at = match verify_every {
            None => NEVER,
            Some(every) => match (s.backups.last_verified_restore_at, s.backups.last_backup_at) {
                (Some(t), _) => t.0 + micros(every),
                // Never tested: test the first backup within the hour.
                (None, Some(b)) => b.0 + micros(every.min(Duration::from_secs(3600))),
                (None, None) => s.next_backup_at.saturating_add(micros(every.min(Duration::from_secs(3600)))),
            },
        };
        let next = s.next_backup_at.min(s.next_verify_at);
        if next != NEVER {
            self.service_timers.schedule(next.max(now), sslot);
        }
    }

    fn scheduled_backup_work(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        let (backup_due, verify_due) = (s.next_backup_at <= now, s.next_verify_at <= now);
        if !backup_due && !verify_due {
            // A stale timer entry; the schedule moved on.
            if s.next_backup_at.min(s.next_verify_at) != NEVER {
                let next = s.next_backup_at.min(s.next_verify_at);
                self.service_timers.schedule(next, sslot);
            }
            return;
        }
        let healthy = !s.deleting
            && self
                .current_primary(sslot)
                .and_then(|p| self.instances.get(p))
                .is_some_and(|p| p.state == InstanceState::Available);
        if !healthy {
            // Try again later; a backup of a failing service waits for it.
            self.service_timers.schedule(now + micros(Duration::from_secs(600)), sslot);
            return;
        }
        if backup_due {
            let _ = self.open_backup_action(sslot, ActionKind::Backup, "scheduled base backup", now, out);
        } else if verify_due {
            let _ = self.open_backup_action(sslot, ActionKind::VerifyRestore, "scheduled restore test", now, out);
        }
        // Re-arm from the current schedule (results move it forward).
        if let Some(s) = self.services.get_mut(sslot) {
            if backup_due {
                s.next_backup_at = now + micros(Duration::from_secs(600));
            } else {
                s.next_verify_at = now + micros(Duration::from_secs(600));
            }
            let next = s.next_backup_at.min(s.next_verify_at);
            self.service_timers.schedule(next, sslot);
        }
    }

    fn open_backup_action(
        &mut self,
        sslot: u32,
        kind: ActionKind,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<ActionId, CommandError> {
        let name = self.services.get(sslot).map(|s| s.name.to_string()).unwrap_or_default();
        let running = self.services.get(sslot).is_some_and(|s| match kind {
            ActionKind::Backup => s.backup_running,
            _ => s.verify_running,
        });
        if running {
            return Err(CommandError::Conflict(format!("a {} of {name:?} is already running", kind.name())));
        }
        let target = self
            .current_primary(sslot)
            .filter(|&p| self.instances.get(p).is_some_and(|i| i.state == InstanceState::Available))
            .ok_or_else(|| {
                CommandError::Conflict(format!("{name:?} has no available primary to work from right now"))
            })?;
        let id = self
            .open_action(target, kind.clone(), cause, false, now, out)
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if let Some(s) = self.services.get_mut(sslot) {
            match kind {
                ActionKind::Backup => s.backup_running = true,
                _ => s.verify_running = true,
            }
        }
        Ok(id)
    }

    /// Records a backup or restore-test outcome. A failed restore test is a
    /// finding with a remedy: take a fresh backup, then test that one.
    fn backup_result(
        &mut self,
        sslot: u32,
        kind: &ActionKind,
        error: Option<&str>,
        detail: Option<&str>,
        now: i64,
        out: &mut Outputs,
    ) {
        let Some(s) = self.services.get_mut(sslot) else { return };
        let mut follow_up = None;
        let mut escalate = false;
        match (kind, error) {
            (ActionKind::Backup, None) => {
                s.backups.last_backup_at = Some(Timestamp(now));
                s.backups.last_backup_error = None;
                if s.verify_after_backup {
                    s.verify_after_backup = false;
                    follow_up =
                        Some((ActionKind::VerifyRestore, "restore test of the fresh backup taken after a failed test"));
                }
            }
            (ActionKind::Backup, Some(e)) => s.backups.last_backup_error = Some(e.to_string()),
            (_, None) => {
                s.backups.last_verified_restore_at = Some(Timestamp(now));
                s.backups.last_verify_ok = Some(true);
                s.backups.last_verify_error = None;
                s.verify_failures = 0;
            }
            (_, Some(e)) => {
                s.backups.last_verify_ok = Some(false);
                s.backups.last_verify_error = Some(e.to_string());
                s.verify_failures = s.verify_failures.saturating_add(1);
                if s.verify_failures == 1 {
                    s.verify_after_backup = true;
                    follow_up =
                        Some((ActionKind::Backup, "restore test failed: take a fresh full backup, then test it"));
                } else {
                    escalate = true;
                }
            }
        }
        let what = match (kind, error) {
            (ActionKind::Backup, None) => {
                format!("base backup taken{}", detail.map(|d| format!(": {d}")).unwrap_or_default())
            }
            (ActionKind::Backup, Some(e)) => format!("base backup failed: {e}"),
            (_, None) => format!("restore test passed{}", detail.map(|d| format!(": {d}")).unwrap_or_default()),
            (_, Some(e)) => format!("restore test FAILED: {e}"),
        };
        out.changes.events.push(self.event(
            now,
            EventSubject::Service,
            Some(sslot),
            None,
            None,
            Some(if error.is_none() { "ok" } else { "failed" }),
            what,
        ));
        if escalate {
            out.changes.events.push(self.event(
                now,
                EventSubject::Fleet,
                Some(sslot),
                None,
                None,
                Some("needs_human"),
                "restore tests keep failing, also on a fresh backup: a human must look at the backups",
            ));
        }
        if let Some(rec) = self.service_record(sslot) {
            out.changes.services.push(rec);
        }
        self.schedule_backups(sslot, now);
        if let Some((kind, cause)) = follow_up {
            // The running flag of the finished action is cleared after this
            // returns; clear it now so the follow-up can open.
            if let Some(s) = self.services.get_mut(sslot) {
                s.backup_running = false;
                s.verify_running = false;
            }
            let _ = self.open_backup_action(sslot, kind, cause, now, out);
        }
    }

    // ------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------

    fn command(&mut self, command: Command, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        match command {
            Command::CreateService(req) => self.create_service(req, now, out),
            Command::DeleteService { name } => {
                let Some(&sslot) = self.service_names.get(name.as_str()) else {
                    return Err(CommandError::NotFound(format!("no service named {name:?}")));
                };
                let waiting: Vec<ActionId> = {
                    let sid = self.services.get(sslot).map(|s| s.id);
                    self.actions
                        .values()
                        .filter(|a| Some(a.record.service) == sid && a.record.state == ActionState::Pending)
                        .map(|a| a.record.id)
                        .collect()
                };
                for id in waiting {
                    self.finish_action(id, ActionState::Cancelled, Some("service deleted".into()), now, out);
                }
                if let Some(s) = self.services.get_mut(sslot) {
                    s.deleting = true;
                    s.needs_human = false;
                }
                self.mark_dirty(sslot);
                self.reconcile_dirty(now, out);
                self.service_view_slot(sslot, now)
                    .map(|v| Reply::Service(Box::new(v)))
                    .ok_or_else(|| CommandError::NotFound(format!("service {name:?} is gone")))
            }
            Command::Chaos { instance, fault } => {
                let Some(&slot) = self.instance_index.get(&instance) else {
                    return Err(CommandError::NotFound(format!("no instance {instance}")));
                };
                let id = self
                    .open_action(
                        slot,
                        ActionKind::InjectFault { fault },
                        &format!("chaos: inject {fault}"),
                        false,
                        now,
                        out,
                    )
                    .ok_or_else(|| CommandError::NotFound(format!("no instance {instance}")))?;
                let rec = out.changes.actions.iter().rev().find(|a| a.id == id).cloned();
                rec.map(|r| Reply::Action(Box::new(r)))
                    .ok_or_else(|| CommandError::Invalid("chaos action could not be opened".into()))
            }
            Command::Switchover { name } => {
                let sslot = self.live_service(&name)?;
                let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(name.clone()))?;
                if s.open_remedies > 0 {
                    return Err(CommandError::Conflict(format!(
                        "a remedy of {name:?} is under way; switch over when it finishes"
                    )));
                }
                let primary = self
                    .current_primary(sslot)
                    .filter(|&p| self.instances.get(p).is_some_and(|i| i.state == InstanceState::Available))
                    .ok_or_else(|| {
                        CommandError::Conflict(format!("{name:?} has no available primary to switch over from"))
                    })?;
                if self.best_follower(sslot, now).is_none() {
                    return Err(CommandError::Conflict(format!(
                        "{name:?} has no healthy follower within the lag bound to switch over to"
                    )));
                }
                self.open_action(
                    primary,
                    ActionKind::Fence { immediate: false },
                    "switchover: fence the primary, then promote the most advanced follower",
                    true,
                    now,
                    out,
                );
                self.mark_dirty(sslot);
                self.reconcile_dirty(now, out);
                self.service_view_slot(sslot, now)
                    .map(|v| Reply::Service(Box::new(v)))
                    .ok_or_else(|| CommandError::NotFound(name.clone()))
            }
            Command::TakeBackup { name } => {
                self.backup_command(&name, ActionKind::Backup, "backup requested", now, out)
            }
            Command::VerifyBackup { name } => {
                self.backup_command(&name, ActionKind::VerifyRestore, "restore test requested", now, out)
            }
            Command::ResumeService { name } => {
                let sslot = self.live_service(&name)?;
                let Some(s) = self.services.get_mut(sslot) else {
                    return Err(CommandError::NotFound(format!("no service named {name:?}")));
                };
                let was = s.needs_human;
                s.needs_human = false;
                s.remedy_failures = 0;
                s.failing_since = 0;
                s.verify_failures = 0;
                if was {
                    let ids: Vec<u32> = s.instances.clone();
                    for i in ids {
                        // A fresh start: a restart already tried may be tried again.
                        if let Some(inst) = self.instances.get_mut(i) {
                            inst.restarts = 0;
                        }
                    }
                    out.changes.events.push(self.event(
                        now,
                        EventSubject::Service,
                        Some(sslot),
                        None,
                        Some("needs_human"),
                        None,
                        "resumed by an operator (see the audit trail): the engine tries its remedies again",
                    ));
                    if let Some(rec) = self.service_record(sslot) {
                        out.changes.services.push(rec);
                    }
                }
                self.mark_dirty(sslot);
                self.reconcile_dirty(now, out);
                self.service_view_slot(sslot, now)
                    .map(|v| Reply::Service(Box::new(v)))
                    .ok_or_else(|| CommandError::NotFound(name.clone()))
            }
            Command::RegisterImage(image) => {
                let expected = Image::new(
                    image.engine,
                    image.version.clone(),
                    image.configuration.clone(),
                    image.packages.clone(),
                    image.created_at,
                );
                if expected.id != image.id {
                    return Err(CommandError::Invalid(format!(
                        "image id {} does not match its content (expected {})",
                        image.id, expected.id
                    )));
                }
                let (i, new) = self.images.insert(image);
                let image = self.images.list[i as usize].clone();
                if new {
                    out.changes.images.push(image.clone());
                }
                Ok(Reply::Image(Box::new(image)))
            }
        }
    }

    fn live_service(&self, name: &str) -> Result<u32, CommandError> {
        let &sslot =
            self.service_names.get(name).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if self.services.get(sslot).is_some_and(|s| s.deleting) {
            return Err(CommandError::Conflict(format!("service {name:?} is being deleted")));
        }
        Ok(sslot)
    }

    fn backup_command(
        &mut self,
        name: &str,
        kind: ActionKind,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let id = self.open_backup_action(sslot, kind, cause, now, out)?;
        let rec = self.actions.get(&id).map(|a| a.record.clone());
        rec.map(|r| Reply::Action(Box::new(r)))
            .ok_or_else(|| CommandError::Invalid("the action finished before it could be shown".into()))
    }

    fn create_service(&mut self, req: CreateService, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        req.validate().map_err(CommandError::Invalid)?;
        if self.service_names.contains_key(req.name.as_str()) {
            return Err(CommandError::Conflict(format!("a service named {:?} already exists", req.name)));
        }
        let provider_name = req.provider.clone().unwrap_or_else(|| self.config.default_provider.clone());
        if !self.config.providers.contains(&provider_name) {
            return Err(CommandError::Invalid(format!(
                "provider {provider_name:?} is not available here; available: {}",
                self.config.providers.join(", ")
            )));
        }
        if let Some(engines) = self.config.provider_engines.get(&provider_name) {
            if !engines.contains(&req.engine) {
                let offered: Vec<String> = self
                    .config
                    .provider_engines
                    .iter()
                    .map(|(p, e)| format!("{p} ({})", e.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")))
                    .collect();
                return Err(CommandError::Invalid(format!(
                    "provider {provider_name:?} cannot run {} services; providers here and their engines: {}",
                    req.engine,
                    offered.join("; ")
                )));
            }
        }
        let image = self
            .images
            .latest_for(req.engine)
            .ok_or_else(|| CommandError::Invalid(format!("no image registered for engine {}", req.engine)))?;
        let zone_names = req.zones.clone().unwrap_or_else(|| self.config.default_zones.clone());
        let zones: Vec<u16> = zone_names.iter().map(|z| self.zone(z)).collect();
        let team = self.teams.intern(req.team.as_deref().unwrap_or(&self.config.default_team.clone()));
        let provider = self.providers.intern(&provider_name);
        let id = ServiceId::new_at(now, self.rng.next_u64());
        let svc = Svc {
            id,
            name: req.name.clone().into(),
            engine: req.engine,
            plan: Plan {
                followers: req.followers,
                sync: req.sync.unwrap_or(false),
                max_failover_lag_bytes: req.max_failover_lag_bytes.unwrap_or(self.config.max_failover_lag_bytes),
            },
            team,
            zones: zones.clone(),
            image,
            provider,
            state: ServiceState::Provisioning,
            created_at: now,
            state_since: now,
            instances: Vec::new(),
            open_remedies: 0,
            deleting: false,
            held: false,
            dirty: false,
            needs_human: false,
            remedy_failures: 0,
            failing_since: 0,
            backups: Box::default(),
            backup_running: false,
            verify_running: false,
            verify_after_backup: false,
            verify_failures: 0,
            next_backup_at: NEVER,
            next_verify_at: NEVER,
        };
        let sslot = self.services.insert(svc);
        self.service_names.insert(req.name.clone().into(), sslot);
        self.service_ids.insert(id, sslot);
        self.schedule_backups(sslot, now);
        out.changes.events.push(self.event(
            now,
            EventSubject::Service,
            Some(sslot),
            None,
            None,
            Some(ServiceState::Provisioning.as_str()),
            "created",
        ));
        if let Some(rec) = self.service_record(sslot) {
            out.changes.services.push(rec);
        }
        // Initial members are built at once, outside the remedy budget.
        let n = 1 + usize::from(req.followers);
        for k in 0..n {
            let role = if k == 0 { Role::Primary } else { Role::Follower };
            let zone = zones[k % zones.len()];
            let iid = InstanceId::new_at(now, self.rng.next_u64());
            let slot = self.add_instance(new_instance(iid, sslot, image, zone, provider, role, now));
            out.changes.events.push(self.event(
                now,
                EventSubject::Instance,
                Some(sslot),
                Some(iid),
                None,
                Some(InstanceState::Installing.as_str()),
                format!("service created ({role} in {})", self.zones.name(zone)),
            ));
            self.instance_changed(slot, out);
            self.schedule_instance(slot, now);
            let kind = self.provision_kind(sslot, role, zone, image);
            self.open_action(slot, kind, "service created", false, now, out);
        }
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::Invalid("service vanished while being created".into()))
    }

    // ------------------------------------------------------------------
    // Bookkeeping
    // ------------------------------------------------------------------

    fn zone(&mut self, name: &str) -> u16 {
        let z = self.zones.intern(name);
        while self.zone_state.len() < self.zones.len() {
            self.zone_state.push(ZoneState::default());
        }
        z
    }

    fn zone_mut(&mut self, z: u16) -> &mut ZoneState {
        let i = usize::from(z);
        if i >= self.zone_state.len() {
            self.zone_state.resize(i + 1, ZoneState::default());
        }
        &mut self.zone_state[i]
    }

    fn add_instance(&mut self, inst: Inst) -> u32 {
        let (id, zone, state, sslot) = (inst.id, inst.zone, inst.state, inst.service);
        let slot = self.instances.insert(inst);
        self.instance_index.insert(id, slot);
        self.state_counts[state_index(state)] += 1;
        if state.is_member() {
            self.zone_mut(zone).members += 1;
            self.fleet_zone.members += 1;
        }
        if state == InstanceState::Uncertain {
            self.zone_mut(zone).uncertain += 1;
            self.fleet_zone.uncertain += 1;
        }
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.instances.contains(&slot) {
                s.instances.push(slot);
            }
        }
        slot
    }

    fn remove_instance(&mut self, slot: u32) {
        let Some(inst) = self.instances.remove(slot) else { return };
        if inst.covered {
            let zs = self.zone_mut(inst.zone);
            zs.covered = zs.covered.saturating_sub(1);
        }
        self.instance_index.remove(&inst.id);
        self.state_counts[state_index(inst.state)] -= 1;
        if let Some(s) = self.services.get_mut(inst.service) {
            s.instances.retain(|&i| i != slot);
        }
    }

    fn service_slot(&self, id: ServiceId) -> Option<u32> {
        self.service_ids.get(&id).copied()
    }

    fn instance_changed(&self, slot: u32, out: &mut Outputs) {
        if let Some(rec) = self.instance_record(slot) {
            out.changes.instances.push(rec);
        }
    }

    fn instance_record(&self, slot: u32) -> Option<InstanceRecord> {
        let i = self.instances.get(slot)?;
        let s = self.services.get(i.service)?;
        Some(InstanceRecord {
            id: i.id,
            service: s.id,
            role: i.role,
            zone: self.zones.name(i.zone).into(),
            provider: self.providers.name(i.provider).into(),
            image: self.images.id(i.image),
            state: i.state,
            fenced: i.fenced,
            restarts: i.restarts,
            created_at: Timestamp(i.created_at),
            state_since: Timestamp(i.state_since),
        })
    }

    fn service_record(&self, sslot: u32) -> Option<ServiceRecord> {
        let s = self.services.get(sslot)?;
        Some(ServiceRecord {
            id: s.id,
            name: s.name.to_string(),
            engine: s.engine,
            plan: s.plan.clone(),
            team: self.teams.name(s.team).into(),
            zones: s.zones.iter().map(|&z| self.zones.name(z).to_string()).collect(),
            image: self.images.id(s.image),
            provider: self.providers.name(s.provider).into(),
            state: s.state,
            created_at: Timestamp(s.created_at),
            state_since: Timestamp(s.state_since),
            needs_human: s.needs_human,
            backups: (*s.backups).clone(),
        })
    }

    /// An event, with the name and id of service `sslot` filled in.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        now: i64,
        subject: EventSubject,
        sslot: Option<u32>,
        instance: Option<InstanceId>,
        from: Option<&str>,
        to: Option<&str>,
        cause: impl Into<String>,
    ) -> Event {
        let service = sslot.and_then(|s| self.services.get(s));
        Event {
            seq: 0,
            at: Timestamp(now),
            subject,
            service: service.map(|s| s.name.to_string()),
            service_id: service.map(|s| s.id),
            instance,
            action: None,
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            cause: cause.into(),
        }
    }

    fn action_event(&self, rec: &ActionRecord, from: ActionState, cause: &str, now: i64) -> Event {
        let name = self
            .instance_index
            .get(&rec.instance)
            .and_then(|&i| self.instances.get(i))
            .and_then(|i| self.services.get(i.service))
            .map(|s| s.name.to_string());
        Event {
            seq: 0,
            at: Timestamp(now),
            subject: EventSubject::Action,
            service: name,
            service_id: Some(rec.service),
            instance: Some(rec.instance),
            action: Some(rec.id),
            from: Some(from.as_str().into()),
            to: Some(rec.state.as_str().into()),
            cause: cause.into(),
        }
    }

    /// The open actions, for checks and tests.
    pub fn open_actions(&self) -> Vec<ActionRecord> {
        let mut v: Vec<ActionRecord> = self.actions.values().map(|a| a.record.clone()).collect();
        v.sort_by_key(|a| a.id);
        v
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn stats(&self) -> FleetStats {
        let mut services = [0u64; 8];
        for (_, s) in self.services.iter() {
            services[s.state as usize] += 1;
        }
        let mut braked: Vec<String> = self
            .zone_state
            .iter()
            .enumerate()
            .filter(|(_, z)| z.braked_since.is_some())
            .map(|(i, _)| self.zones.name(i as u16).to_string())
            .collect();
        if self.fleet_zone.braked_since.is_some() {
            braked.push("fleet".into());
        }
        FleetStats {
            services_by_state: ServiceState::ALL.iter().map(|&s| (s, services[s as usize])).collect(),
            instances_by_state: InstanceState::ALL.iter().map(|&s| (s, self.state_counts[state_index(s)])).collect(),
            open_actions: self.actions.len() as u64,
            braked,
        }
    }

    pub fn images(&self) -> Vec<Image> {
        self.images.list.clone()
    }
}

fn new_instance(id: InstanceId, sslot: u32, image: u32, zone: u16, provider: u16, role: Role, now: i64) -> Inst {
    Inst {
        id,
        service: sslot,
        image,
        zone,
        provider,
        role,
        state: InstanceState::Installing,
        fenced: false,
        probing: false,
        upstream_broken: false,
        covered: false,
        writable_fact: None,
        restarts: 0,
        created_at: now,
        state_since: now,
        last_heartbeat: 0,
        last_seq: 0,
        check_at: NEVER,
        next_probe_at: 0,
        last_probe_ok: 0,
        evidence_at: 0,
        wal_position: None,
        lag_bytes: None,
        connections: None,
        last_backup_at: None,
    }
}

/// Remedies hold their service's one slot; chaos and probes do not.
fn is_remedy(kind: &ActionKind) -> bool {
    !matches!(kind, ActionKind::Probe | ActionKind::InjectFault { .. })
}

fn command_target(c: &Command) -> Option<String> {
    match c {
        Command::CreateService(r) => Some(r.name.clone()),
        Command::DeleteService { name }
        | Command::Switchover { name }
        | Command::TakeBackup { name }
        | Command::VerifyBackup { name }
        | Command::ResumeService { name } => Some(name.clone()),
        Command::Chaos { instance, .. } => Some(instance.to_string()),
        Command::RegisterImage(i) => Some(i.id.to_string()),
    }
}

fn fleet_event(now: i64, from: impl Into<Option<&'static str>>, to: &str, cause: String) -> Event {
    Event {
        seq: 0,
        at: Timestamp(now),
        subject: EventSubject::Fleet,
        service: None,
        service_id: None,
        instance: None,
        action: None,
        from: from.into().map(str::to_string),
        to: Some(to.into()),
        cause,
    }
}

/// A stand-in when a stored service names an image the store lost; keeps
/// the engine running and the gap visible.
fn placeholder_image(rec: &ServiceRecord) -> Image {
    let mut img = Image::new(rec.engine, "unknown", Default::default(), Default::default(), rec.created_at);
    img.id = rec.image.clone();
    img
}

#[allow(unused)]
fn _assert_fault_used(_: Fault) {}
