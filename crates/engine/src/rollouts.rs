//! Rollouts: services moved onto an image by replacement, in waves.
//!
//! A service moves in steps the engine takes one at a time, each a remedy
//! action of the service (so it never overlaps a repair): build a follower
//! from the new image; once it streams, retire an old follower (there is
//! always one spare while the old goes); when no old follower is left, a
//! planned switchover (fence the primary gracefully, promote a follower of
//! the new image) and the fenced old primary retires as any leaver does.
//! Peers (Kafka's brokers) move the same way without the switchover: a
//! broker of the new image serves before an old one retires, until none
//! is left (the topology's `rolled_role`). Never in place, never by
//! failover. Each step is decided from the fleet as
//! it is, so a step repeated after a restart finds it already done.
//!
//! The rollout moves a prefix of its services per wave (cumulative
//! percentages). A moved service soaks: it must stay available for
//! `soak_seconds` before it counts as done, and the next wave starts only
//! when every service of this one is done or failed (the health gate).
//! `max_failures` failed services in one wave pause the rollout and page.
//! New moves start only within per-zone concurrency, outside the brake,
//! and inside each service's maintenance window (unless `required_by` has
//! passed). Each service's progress is a durable record written in the same
//! commit as the actions that move it: a restarted control plane resumes and
//! never starts a service again once its record says it was started.

use crate::api::{CommandError, Outputs, Reply};
use crate::fleet::HashMap;
use crate::records::fleet_event;
use crate::Engine;
use drover_model::{
    ActionKind, EventKind, EventSubject, ImageId, InstanceState, MaintenanceWindow, MemberPhase, Role, RolloutId,
    RolloutMember, RolloutRecord, RolloutSpec, RolloutState, RolloutView, ServiceId, ServiceState, Timestamp,
};
use rand::RngCore;

/// A service not moved within this is failed (it counts against the wave's
/// budget): a new follower that never streams must not hold a wave forever.
/// An hour: a base backup of a large database takes tens of minutes.
const MOVE_TIMEOUT_MICROS: i64 = 3600 * 1_000_000;

/// Members looked at per zone-capacity slot when starting moves: bounds
/// the scan when many waiting services are outside their windows.
const START_SCAN_FACTOR: usize = 8;

pub(crate) struct Member {
    service: ServiceId,
    /// The service's slot when last seen (a hint checked against `service`
    /// before use): a fleet-wide roll looks at thousands of moving services
    /// every tick, and a hash lookup of a random id misses the cache.
    slot: u32,
    name: Box<str>,
    phase: MemberPhase,
    started_at: i64,
    moved_at: i64,
    detail: Option<String>,
    /// When its maintenance window next opens (0: any time, or unknown
    /// after a restart): members are ordered by it, so waves follow time.
    opens_at: i64,
    /// When its owners were told of the move (0: not yet).
    announced_at: i64,
}

pub(crate) struct Rollout {
    record: RolloutRecord,
    target: u32,
    members: Vec<Member>,
    /// Indices of members moving or soaking.
    active: Vec<usize>,
    /// Members before this index are started or finished.
    next: usize,
    /// Members before this index were announced or looked at for it
    /// (`announce_moves`).
    announce_next: usize,
}

#[derive(Default)]
pub(crate) struct Rollouts {
    list: Vec<Rollout>,
    /// Services in an unfinished rollout: one rollout moves a service at a time.
    pub(crate) claimed: HashMap<ServiceId, RolloutId>,
    /// When running rollouts are looked at next (0: none is running).
    next_at: i64,
}

impl Rollouts {
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        (self.next_at > 0).then_some(self.next_at)
    }
}

fn member_record(r: &RolloutRecord, position: usize, m: &Member) -> RolloutMember {
    RolloutMember {
        rollout: r.id,
        service: m.service,
        name: m.name.to_string(),
        position: position as u64,
        phase: m.phase,
        started_at: (m.started_at != 0).then_some(Timestamp(m.started_at)),
        moved_at: (m.moved_at != 0).then_some(Timestamp(m.moved_at)),
        detail: m.detail.clone(),
        announced_at: (m.announced_at != 0).then_some(Timestamp(m.announced_at)),
    }
}

/// One service's scheduled move (for the team's calendar feed).
#[derive(Clone, Debug)]
pub struct ScheduledMove {
    pub rollout: RolloutId,
    pub service: String,
    pub to_image: ImageId,
    pub window: Option<MaintenanceWindow>,
    pub required_by: Option<Timestamp>,
}

/// What one look at a moving service decided.
enum Step {
    Wait,
    /// Opened the next action of the move.
    Acted,
    /// On the image, every member available: start the soak.
    Moved,
    Failed(String),
}

impl Engine {
    /// Creates a rollout of the services `spec` selects (those not already
    /// on the image and not in another unfinished rollout).
    pub(crate) fn create_rollout(
        &mut self,
        spec: RolloutSpec,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        spec.validate().map_err(CommandError::Invalid)?;
        let &target = self.images.index.get(&spec.to_image).ok_or_else(|| {
            CommandError::Invalid(format!("no image {}; register it first (POST /v1/images)", spec.to_image))
        })?;
        let engine = self.images.list[target as usize].engine;
        if spec.selector.engine.is_some_and(|e| e != engine) {
            return Err(CommandError::Invalid(format!(
                "image {} is a {engine} image: the selector's engine must be {engine}",
                spec.to_image
            )));
        }
        let from_image = match &spec.selector.image {
            Some(id) => Some(
                *self
                    .images
                    .index
                    .get(id)
                    .ok_or_else(|| CommandError::Invalid(format!("selector names an unknown image {id}")))?,
            ),
            None => None,
        };
        if let Some(names) = &spec.selector.names {
            if let Some(missing) = names.iter().find(|n| !self.service_names.contains_key(n.as_str())) {
                return Err(CommandError::Invalid(format!("selector names {missing:?}, which is no service")));
            }
        }
        let wanted_labels = spec.selector.wanted_labels().map_err(CommandError::Invalid)?;
        let names: Option<std::collections::HashSet<&str>> =
            spec.selector.names.as_ref().map(|n| n.iter().map(String::as_str).collect());
        let mut members = Vec::new();
        for (sslot, s) in self.services.iter() {
            let team_ok = spec.selector.team.as_deref().is_none_or(|t| self.teams.name(s.team) == t);
            let name_ok = names.as_ref().is_none_or(|n| n.contains(&*s.name));
            let labels_ok = drover_model::labels_match(s.labels.as_deref(), &wanted_labels);
            let on_image = |img: u32| {
                s.image == img || s.instances.iter().any(|&i| self.instances.get(i).is_some_and(|x| x.image == img))
            };
            let image_ok = from_image.is_none_or(on_image);
            let there = s.image == target
                && s.instances
                    .iter()
                    .all(|&i| self.instances.get(i).is_none_or(|x| x.image == target || !x.state.is_member()));
            if s.engine == engine
                && !s.deleting
                && team_ok
                && name_ok
                && labels_ok
                && image_ok
                && !there
                && !self.rollouts.claimed.contains_key(&s.id)
            {
                members.push((sslot, s.id, s.name.clone()));
            }
        }
        // Soonest window first (stable: creation order among equals), so
        // each wave is the services whose windows open next.
        let mut members: Vec<(i64, (u32, ServiceId, crate::fleet::Name))> = members
            .into_iter()
            .map(|m| (self.window_of(m.0).map_or(0, |w| w.next_opening(Timestamp(now)).0.max(now)), m))
            .collect();
        members.sort_by_key(|(opens, _)| *opens);
        let id = RolloutId::new_at(now, self.rng.next_u64());
        let total = members.len() as u64;
        let record = RolloutRecord {
            id,
            spec,
            state: if total == 0 { RolloutState::Succeeded } else { RolloutState::Pending },
            reason: (total == 0).then(|| "no service selected needs moving".to_string()),
            wave: 0,
            wave_failed: 0,
            total,
            done: 0,
            failed: 0,
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            moved_micros: 0,
        };
        let members: Vec<Member> = members
            .into_iter()
            .map(|(opens_at, (slot, service, name))| Member {
                service,
                slot,
                name: String::from(&*name).into(),
                phase: MemberPhase::Waiting,
                started_at: 0,
                moved_at: 0,
                detail: None,
                opens_at,
                announced_at: 0,
            })
            .collect();
        if total > 0 {
            for m in &members {
                self.rollouts.claimed.insert(m.service, id);
            }
            self.rollouts.next_at = now;
        }
        let rollout = Rollout { record, target, members, active: Vec::new(), next: 0, announce_next: 0 };
        if self.config.records {
            out.changes.rollouts.push(rollout.record.clone());
            out.changes
                .rollout_members
                .extend(rollout.members.iter().enumerate().map(|(i, m)| member_record(&rollout.record, i, m)));
        }
        out.changes.events.push(fleet_event(
            now,
            EventKind::Other,
            None,
            rollout.record.state.as_str(),
            format!("rollout {id} created: {total} services to move onto image {}", rollout.record.spec.to_image),
        ));
        let view = self.rollout_view_of(&rollout, now);
        self.rollouts.list.push(rollout);
        Ok(Reply::Rollout(Box::new(view)))
    }

    /// A resize (issue 17): `name` moved onto `image` now, as a rollout of
    /// that one service (one wave, no soak: no later wave waits on it; its
    /// window ignored: a person asked for it now). Refused, and nothing
    /// opened, for an image not registered (not found), an image of another
    /// engine, a service being deleted or already on the image, or one
    /// another rollout is moving (conflicts).
    pub(crate) fn resize_service(
        &mut self,
        name: &str,
        image: ImageId,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let &sslot =
            self.service_names.get(name).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let &target =
            self.images.index.get(&image).ok_or_else(|| {
                CommandError::NotFound(format!("no image {image}; register it first (POST /v1/images)"))
            })?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let engine = self.images.list[target as usize].engine;
        if s.engine != engine {
            return Err(CommandError::Conflict(format!(
                "{name:?} is a {} service and image {image} is a {engine} image",
                s.engine
            )));
        }
        if s.deleting {
            return Err(CommandError::Conflict(format!("{name:?} is being deleted")));
        }
        if let Some(other) = self.rollouts.claimed.get(&s.id) {
            return Err(CommandError::Conflict(format!(
                "rollout {other} is moving {name:?}: pause or abort it first, or wait for it"
            )));
        }
        let there = s.image == target
            && s.instances
                .iter()
                .all(|&i| self.instances.get(i).is_none_or(|x| x.image == target || !x.state.is_member()));
        if there {
            return Err(CommandError::Conflict(format!("{name:?} is on image {image} already")));
        }
        let spec = RolloutSpec {
            to_image: image,
            selector: drover_model::Selector { names: Some(vec![name.to_string()]), ..Default::default() },
            waves: vec![100],
            soak_seconds: 0,
            max_failures: 1,
            required_by: Some(Timestamp(now)),
        };
        self.create_rollout(spec, now, out)
    }

    /// Pause, resume or abort by a person.
    pub(crate) fn steer_rollout(
        &mut self,
        id: RolloutId,
        to: RolloutState,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let r = self
            .rollouts
            .list
            .iter_mut()
            .find(|r| r.record.id == id)
            .ok_or_else(|| CommandError::NotFound(format!("no rollout {id}")))?;
        let from = r.record.state;
        if from.is_finished() {
            return Err(CommandError::Conflict(format!("rollout {id} is {}: it cannot change", from.as_str())));
        }
        let (to, reason) = match to {
            RolloutState::Paused if from == RolloutState::Paused => (from, r.record.reason.clone()),
            RolloutState::Paused => (to, Some("paused by an operator (see the audit trail)".to_string())),
            RolloutState::Running if from == RolloutState::Paused => {
                // A fresh failure budget for the wave: a person looked.
                r.record.wave_failed = 0;
                (RolloutState::Running, None)
            }
            RolloutState::Running => (from, r.record.reason.clone()),
            _ => (RolloutState::Aborted, Some("aborted by an operator (see the audit trail)".to_string())),
        };
        if to != from {
            r.record.state = to;
            r.record.reason = reason;
            r.record.updated_at = Timestamp(now);
            if to == RolloutState::Aborted {
                for m in &r.members {
                    self.rollouts.claimed.remove(&m.service);
                }
                r.active.clear();
            }
            if self.config.records {
                out.changes.rollouts.push(r.record.clone());
            }
            out.changes.events.push(fleet_event(
                now,
                EventKind::Other,
                None,
                to.as_str(),
                format!("rollout {id}: {} by an operator", to.as_str()),
            ));
            self.rollouts.next_at = now;
        }
        let view = self
            .rollouts
            .list
            .iter()
            .find(|r| r.record.id == id)
            .map(|r| self.rollout_view_of(r, now))
            .ok_or_else(|| CommandError::NotFound(format!("no rollout {id}")))?;
        Ok(Reply::Rollout(Box::new(view)))
    }

    /// Drives every running rollout one step; called on ticks.
    pub(crate) fn drive_rollouts(&mut self, now: i64, out: &mut Outputs) {
        if self.rollouts.next_at == 0 || now < self.rollouts.next_at {
            return;
        }
        let mut list = std::mem::take(&mut self.rollouts.list);
        let mut any_running = false;
        for r in list.iter_mut() {
            if r.record.state.is_finished() {
                continue;
            }
            self.drive_rollout(r, now, out);
            any_running |= !r.record.state.is_finished();
        }
        self.rollouts.list = list;
        let interval = crate::micros(self.config.rollout_interval).max(1);
        self.rollouts.next_at = if any_running { now + interval } else { 0 };
    }

    fn drive_rollout(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) {
        let before = (r.record.state, r.record.wave, r.record.done, r.record.failed, r.record.wave_failed);
        if r.record.state == RolloutState::Pending {
            r.record.state = RolloutState::Running;
            out.changes.events.push(fleet_event(
                now,
                EventKind::Other,
                Some("pending"),
                "running",
                format!("rollout {} started: wave 1 of {}", r.record.id, r.record.spec.waves.len()),
            ));
        }
        // In-flight moves finish even while paused: a half-moved service
        // (an extra follower) is healthy, but finishing is cleaner.
        let mut per_zone = self.step_active(r, now, out);
        if r.record.state == RolloutState::Running && r.record.wave_failed >= r.record.spec.max_failures {
            r.record.state = RolloutState::Paused;
            let reason = format!(
                "paused itself: {} services failed in wave {} (max_failures {})",
                r.record.wave_failed,
                r.record.wave + 1,
                r.record.spec.max_failures
            );
            r.record.reason = Some(reason.clone());
            out.changes.events.push(fleet_event(
                now,
                EventKind::RolloutPaused { rollout: r.record.id.to_string() },
                Some("running"),
                "paused",
                format!("rollout {}: {reason}", r.record.id),
            ));
        }
        if r.record.state == RolloutState::Running {
            self.start_moves(r, &mut per_zone, now, out);
            self.announce_moves(r, now, out);
            let end = r.record.spec.wave_end(r.record.wave as usize, r.members.len());
            if r.next >= end && r.active.is_empty() {
                if (r.record.wave as usize) + 1 < r.record.spec.waves.len() {
                    r.record.wave += 1;
                    r.record.wave_failed = 0;
                    out.changes.events.push(fleet_event(
                        now,
                        EventKind::Other,
                        None,
                        "running",
                        format!(
                            "rollout {}: wave {} passed its health gate; wave {} of {} starts",
                            r.record.id,
                            r.record.wave,
                            r.record.wave + 1,
                            r.record.spec.waves.len()
                        ),
                    ));
                    // No member is active here: every zone is free.
                    per_zone.iter_mut().for_each(|n| *n = 0);
                    self.start_moves(r, &mut per_zone, now, out);
                    self.announce_moves(r, now, out);
                } else {
                    let (state, reason) = if r.record.failed == 0 {
                        (RolloutState::Succeeded, None)
                    } else {
                        (RolloutState::Failed, Some(format!("{} services could not be moved", r.record.failed)))
                    };
                    r.record.state = state;
                    r.record.reason = reason;
                    for m in &r.members {
                        self.rollouts.claimed.remove(&m.service);
                    }
                    out.changes.events.push(fleet_event(
                        now,
                        EventKind::Other,
                        Some("running"),
                        state.as_str(),
                        format!(
                            "rollout {} {}: {} moved, {} failed",
                            r.record.id,
                            state.as_str(),
                            r.record.done,
                            r.record.failed
                        ),
                    ));
                }
            }
        }
        let after = (r.record.state, r.record.wave, r.record.done, r.record.failed, r.record.wave_failed);
        if after != before {
            r.record.updated_at = Timestamp(now);
            if self.config.records {
                out.changes.rollouts.push(r.record.clone());
            }
        }
    }

    /// Looks at every moving or soaking member once. Returns how many of
    /// the members still active have their primary in each zone (indexed by
    /// zone), counted while each service is at hand: `start_moves` needs
    /// them, and a second pass over a large active set costs a cache miss
    /// or more per member.
    fn step_active(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) -> Vec<usize> {
        let active = std::mem::take(&mut r.active);
        let mut still = Vec::with_capacity(active.len());
        let mut per_zone = vec![0usize; self.zones.len().max(1)];
        for k in active {
            let phase = r.members[k].phase;
            let service = r.members[k].service;
            let sslot = self.slot_of(service, r.members[k].slot);
            let changed = match phase {
                MemberPhase::Moving => match self.step_move(sslot, r.target, r.members[k].started_at, now, out) {
                    Step::Wait | Step::Acted => None,
                    Step::Moved => {
                        r.members[k].moved_at = now;
                        Some((MemberPhase::Soaking, None))
                    }
                    Step::Failed(why) => Some((MemberPhase::Failed, Some(why))),
                },
                MemberPhase::Soaking => {
                    let m = &r.members[k];
                    match self.service_health(sslot) {
                        Err(why) => Some((MemberPhase::Failed, Some(format!("failed its health gate: {why}")))),
                        Ok(()) if now >= m.moved_at + (r.record.spec.soak_seconds as i64) * 1_000_000 => {
                            Some((MemberPhase::Done, None))
                        }
                        Ok(()) => None,
                    }
                }
                _ => None,
            };
            match changed {
                None => {
                    still.push(k);
                    self.count_zone(&mut per_zone, sslot);
                }
                Some((phase, detail)) => {
                    let m = &mut r.members[k];
                    m.phase = phase;
                    m.detail = detail.clone();
                    match phase {
                        MemberPhase::Done => {
                            r.record.done += 1;
                            r.record.moved_micros += (m.moved_at - m.started_at).max(0);
                        }
                        MemberPhase::Failed => {
                            r.record.failed += 1;
                            r.record.wave_failed += 1;
                            if m.moved_at == 0 {
                                m.moved_at = now;
                            }
                        }
                        _ => {
                            still.push(k);
                            self.count_zone(&mut per_zone, sslot);
                        }
                    }
                    let cause = match (phase, &detail) {
                        (MemberPhase::Failed, Some(why)) => format!("rollout {}: not moved: {why}", r.record.id),
                        _ => format!("rollout {}: {}", r.record.id, phase.as_str()),
                    };
                    out.changes.events.push(self.event(now, EventSubject::Service, sslot, None, None, None, cause));
                    if self.config.records {
                        out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
                    }
                }
            }
        }
        r.active = still;
        per_zone
    }

    /// The slot of a member's service: its `hint` when that slot still
    /// holds the service, else looked up by id (None: gone).
    fn slot_of(&self, service: ServiceId, hint: u32) -> Option<u32> {
        match self.services.get(hint) {
            Some(s) if s.id == service => Some(hint),
            _ => self.service_ids.get(&service).copied(),
        }
    }

    fn count_zone(&self, per_zone: &mut Vec<usize>, sslot: Option<u32>) {
        if let Some(z) = sslot.and_then(|s| self.primary_zone(s)) {
            let z = usize::from(z);
            if z >= per_zone.len() {
                per_zone.resize(z + 1, 0);
            }
            per_zone[z] += 1;
        }
    }

    /// Starts the waiting members of the current wave that may start now.
    /// `per_zone`: the active members' primaries per zone (`step_active`).
    fn start_moves(&mut self, r: &mut Rollout, per_zone: &mut Vec<usize>, now: i64, out: &mut Outputs) {
        let end = r.record.spec.wave_end(r.record.wave as usize, r.members.len());
        let limit = self.config.rollout_zone_concurrency.max(1) as usize;
        let zones = self.zones.len().max(1);
        if per_zone.len() < zones {
            per_zone.resize(zones, 0);
        }
        // Zones at their limit: once every zone is, no waiting member can
        // start this tick, so the scan stops (it used to look up each
        // waiting member's service only to skip it, tick after tick).
        let mut full = per_zone.iter().take(zones).filter(|&&n| n >= limit).count();
        let required_passed = r.record.spec.required_by.is_some_and(|t| now >= t.0);
        let budget = limit * self.zones.len().max(1) * START_SCAN_FACTOR;
        let mut k = r.next;
        let mut scanned = 0;
        while k < end && scanned < budget && full < zones {
            scanned += 1;
            if r.members[k].phase != MemberPhase::Waiting {
                if k == r.next {
                    r.next += 1;
                }
                k += 1;
                continue;
            }
            if !required_passed && r.members[k].opens_at > now {
                // Ordered by window: every later one opens later still.
                break;
            }
            let service = r.members[k].service;
            let Some(sslot) = self.slot_of(service, r.members[k].slot) else {
                self.finish_member_unstarted(r, k, "the service was deleted before its turn", now, out);
                continue;
            };
            let zone = self.primary_zone(sslot).unwrap_or(0);
            let z = usize::from(zone);
            if z >= per_zone.len() {
                per_zone.resize(z + 1, 0);
            }
            // Cheapest test first: the window's is a calendar computation.
            let busy = per_zone[z] >= limit;
            if busy || self.braked_since(zone).is_some() || !(required_passed || self.in_maintenance_window(sslot, now))
            {
                k += 1;
                continue;
            }
            per_zone[z] += 1;
            if per_zone[z] == limit && z < zones {
                full += 1;
            }
            if r.members[k].announced_at == 0 {
                // Not told ahead (its window opened sooner than the notice,
                // or the rollout was just resumed): told as it starts.
                self.announce_member(r, k, sslot, now, now, out);
            }
            let m = &mut r.members[k];
            m.phase = MemberPhase::Moving;
            m.started_at = now;
            r.active.push(k);
            if let Some(s) = self.services.get_mut(sslot) {
                // Replacements built from now on (by this move or by any
                // repair) come from the new image.
                s.image = r.target;
            }
            self.service_changed(sslot, out);
            let cause = format!("rollout {}: moving onto image {}", r.record.id, self.images.id(r.target));
            out.changes.events.push(self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause));
            if self.config.records {
                out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
            }
            // The first step in the same commit as the record saying it began.
            if let Step::Failed(why) = self.step_move(Some(sslot), r.target, now, now, out) {
                let m = &mut r.members[k];
                m.phase = MemberPhase::Failed;
                m.detail = Some(why);
                m.moved_at = now;
                r.record.failed += 1;
                r.record.wave_failed += 1;
                r.active.pop();
                if self.config.records {
                    out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
                }
            }
            if k == r.next {
                r.next += 1;
            }
            k += 1;
        }
    }

    fn finish_member_unstarted(&mut self, r: &mut Rollout, k: usize, why: &str, now: i64, out: &mut Outputs) {
        let m = &mut r.members[k];
        m.phase = MemberPhase::Failed;
        m.detail = Some(why.to_string());
        m.moved_at = now;
        r.record.failed += 1;
        r.record.wave_failed += 1;
        if self.config.records {
            out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
        }
    }

    /// Tells the owners of the current wave's waiting services that the
    /// rollout will move them when their windows open: once each, when the
    /// opening is within `maintenance_notice` (at once when sooner, or for a
    /// service with no window). Members are in window order, so a cursor
    /// stops at the first one not yet due; after a restart (order by
    /// window unknown) it may stop early, and `start_moves` tells any
    /// member not yet told as it starts, so none moves untold.
    fn announce_moves(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) {
        let end = r.record.spec.wave_end(r.record.wave as usize, r.members.len());
        let notice = crate::micros(self.config.maintenance_notice);
        let required_passed = r.record.spec.required_by.is_some_and(|t| now >= t.0);
        while r.announce_next < end {
            let k = r.announce_next;
            let m = &r.members[k];
            if m.announced_at != 0 || m.phase != MemberPhase::Waiting {
                r.announce_next += 1;
                continue;
            }
            if m.opens_at > now.saturating_add(notice) {
                break;
            }
            let Some(sslot) = self.slot_of(m.service, m.slot) else {
                r.announce_next += 1;
                continue;
            };
            let opens = match self.window_of(sslot) {
                Some(w) if !required_passed => w.next_opening(Timestamp(now)).0.max(now),
                _ => now,
            };
            if opens > now.saturating_add(notice) {
                break;
            }
            self.announce_member(r, k, sslot, opens, now, out);
            r.announce_next += 1;
        }
    }

    /// One `maintenance_scheduled` event for member `k`, made durable with
    /// its record so a restarted control plane does not tell it twice.
    fn announce_member(&mut self, r: &mut Rollout, k: usize, sslot: u32, opens: i64, now: i64, out: &mut Outputs) {
        r.members[k].announced_at = now;
        let cause = format!(
            "rollout {}: maintenance scheduled: to be moved to image {} in its window from {}",
            r.record.id,
            self.images.id(r.target),
            Timestamp(opens)
        );
        let event = self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause).with_kind(
            EventKind::MaintenanceScheduled { rollout: r.record.id.to_string(), window_start: Timestamp(opens) },
        );
        out.changes.events.push(event);
        if self.config.records {
            out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
        }
    }

    /// The zone of a service's writable primary (its first zone without one).
    fn primary_zone(&self, sslot: u32) -> Option<u16> {
        self.current_primary(sslot)
            .and_then(|p| self.instances.get(p).map(|x| x.zone))
            .or_else(|| self.services.get(sslot).and_then(|s| s.zones.first().copied()))
    }

    /// Whether a service may be moved now by its maintenance window (its
    /// own, else its team's default); a service with neither: any time.
    fn in_maintenance_window(&self, sslot: u32, now: i64) -> bool {
        self.window_of(sslot).is_none_or(|w| w.contains(Timestamp(now)))
    }

    fn window_of(&self, sslot: u32) -> Option<&MaintenanceWindow> {
        let s = self.services.get(sslot)?;
        s.window.as_deref().or_else(|| self.config.team_windows.get(self.teams.name(s.team)))
    }

    pub(crate) fn set_maintenance_window(
        &mut self,
        name: &str,
        window: Option<MaintenanceWindow>,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        if let Some(w) = &window {
            w.validate().map_err(CommandError::Invalid)?;
        }
        let sslot = self.live_service(name)?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.window = window.map(Box::new);
        }
        self.service_changed(sslot, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    pub(crate) fn set_labels(
        &mut self,
        name: &str,
        labels: drover_model::Labels,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        drover_model::validate_labels(&labels).map_err(CommandError::Invalid)?;
        let sslot = self.live_service(name)?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.labels = (!labels.is_empty()).then(|| Box::new(labels));
        }
        self.service_changed(sslot, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    /// Scheduled maintenance of a team: each of its services still to be
    /// moved by an unfinished rollout, with its window (None: any time) and
    /// the rollout's deadline.
    pub fn maintenance_schedule(&self, team: &str) -> Vec<ScheduledMove> {
        let mut out = Vec::new();
        for r in self.rollouts.list.iter().filter(|r| !r.record.state.is_finished()) {
            for m in r.members.iter().filter(|m| matches!(m.phase, MemberPhase::Waiting | MemberPhase::Moving)) {
                let Some(&sslot) = self.service_ids.get(&m.service) else { continue };
                let Some(s) = self.services.get(sslot) else { continue };
                if self.teams.name(s.team) != team {
                    continue;
                }
                out.push(ScheduledMove {
                    rollout: r.record.id,
                    service: m.name.to_string(),
                    to_image: r.record.spec.to_image.clone(),
                    window: self.window_of(sslot).cloned(),
                    required_by: r.record.spec.required_by,
                });
            }
        }
        out
    }

    /// Ok when the service passes the health gate now.
    fn service_health(&self, sslot: Option<u32>) -> Result<(), String> {
        let s = sslot.and_then(|s| self.services.get(s)).ok_or("the service is gone")?;
        if s.needs_human {
            return Err("it needs a human".into());
        }
        if s.state != ServiceState::Available {
            return Err(format!("it is {}", s.state.as_str()));
        }
        Ok(())
    }

    /// The next step of moving one service onto image `target`. Decided
    /// from the fleet as it is, so a repeat (after a restart) finds a step
    /// done and goes on from there.
    fn step_move(&mut self, sslot: Option<u32>, target: u32, started_at: i64, now: i64, out: &mut Outputs) -> Step {
        let Some(sslot) = sslot else { return Step::Failed("the service is gone".into()) };
        let Some(s) = self.services.get(sslot) else { return Step::Failed("the service is gone".into()) };
        if s.deleting {
            return Step::Failed("the service is being deleted".into());
        }
        if s.needs_human {
            return Step::Failed("a step failed and the service needs a human".into());
        }
        if now - started_at > MOVE_TIMEOUT_MICROS {
            return Step::Failed(format!("not moved within {} minutes", MOVE_TIMEOUT_MICROS / 60_000_000));
        }
        if s.open_remedies > 0 {
            return Step::Wait;
        }
        // What the policy's topology replaces side by side (followers, or
        // every peer broker), and whether a switchover finishes the move.
        let topology = self.policy_of(s).topology();
        let rolled = topology.rolled_role();
        let planned = usize::from(self.policy_of(s).members(&s.plan).count(rolled));
        let mut primary = None;
        let mut old_members = Vec::new();
        // Read replicas added on demand are not the plan's: replaced one at
        // a time after the plan's members (reconcile rebuilds each in its
        // slot from the service's image, the new one).
        let mut old_read_replicas = Vec::new();
        let mut new_members = 0usize;
        let mut old_leavers = 0usize;
        for &i in &s.instances {
            let Some(x) = self.instances.get(i) else { continue };
            if !x.state.is_member() {
                if x.image != target && x.state == InstanceState::Retiring {
                    old_leavers += 1;
                }
                continue;
            }
            if x.fenced {
                if x.image != target {
                    old_leavers += 1;
                }
                continue;
            }
            if x.state != InstanceState::Available {
                return Step::Wait;
            }
            match x.role {
                _ if x.read_slot > 0 && x.image != target => old_read_replicas.push(i),
                _ if x.read_slot > 0 => {}
                Role::Primary => primary = Some(i),
                r if r == rolled && x.image == target => new_members += 1,
                r if r == rolled => old_members.push(i),
                _ => {}
            }
        }
        // The brake holds moves in the zone of the primary (of an old peer
        // when there is no primary).
        let anchor = if topology.rolls_by_switchover() {
            let Some(p) = primary else { return Step::Wait };
            Some(p)
        } else {
            old_members.first().copied()
        };
        if anchor.and_then(|a| self.instances.get(a)).is_some_and(|x| self.braked_since(x.zone).is_some()) {
            return Step::Wait;
        }
        let primary_old = primary.and_then(|p| self.instances.get(p)).is_some_and(|x| x.image != target);
        let id = self.images.id(target);
        if let Some(&old) = old_members.first() {
            if new_members > 0 && new_members + old_members.len() > planned {
                // Followers keep their words (the simulator's digests hash them).
                let ready = if topology.rolls_by_switchover() { "streams" } else { "serves" };
                let cause = format!("rollout onto {id}: retire an old {rolled}, a {rolled} of the new image {ready}");
                self.open_action(old, ActionKind::Retire, &cause, true, now, out);
            } else {
                self.build_new_member(sslot, rolled, &id, now, out);
            }
            return Step::Acted;
        }
        if let Some(&old) = old_read_replicas.first() {
            let cause =
                format!("rollout onto {id}: retire an old read replica, rebuilt in its slot from the new image");
            self.open_action(old, ActionKind::Retire, &cause, true, now, out);
            return Step::Acted;
        }
        if let Some(p) = primary.filter(|_| primary_old) {
            if new_members == 0 {
                self.build_new_member(sslot, rolled, &id, now, out);
                return Step::Acted;
            }
            if self.best_follower(sslot, now).is_none() {
                return Step::Wait;
            }
            let cause = format!("rollout onto {id}: planned switchover onto a follower of the new image");
            self.open_action(p, ActionKind::Fence { immediate: false }, &cause, true, now, out);
            self.mark_dirty(sslot);
            return Step::Acted;
        }
        if new_members < planned || old_leavers > 0 {
            // Reconcile builds the missing member and retires the leavers.
            self.mark_dirty(sslot);
            return Step::Wait;
        }
        match self.services.get(sslot) {
            Some(s) if s.state == ServiceState::Available => Step::Moved,
            _ => Step::Wait,
        }
    }

    fn build_new_member(&mut self, sslot: u32, role: Role, image: &ImageId, now: i64, out: &mut Outputs) {
        let zone = self.zone_for_new_member(sslot);
        let cause = format!("rollout onto {image}: build a {role} from the new image");
        self.provision(sslot, role, zone, &cause, now, out);
    }

    /// Rollouts and their members from the store after a restart: a member
    /// the records say was started is moving (its next step is read from
    /// the fleet); one done or failed is never started again.
    pub(crate) fn restore_rollouts(&mut self, records: Vec<RolloutRecord>, members: Vec<RolloutMember>, now: i64) {
        let mut by_rollout: HashMap<RolloutId, Vec<RolloutMember>> = HashMap::default();
        for m in members {
            by_rollout.entry(m.rollout).or_default().push(m);
        }
        for record in records {
            let target = match self.images.index.get(&record.spec.to_image) {
                Some(&t) => t,
                None => continue,
            };
            let mut stored = by_rollout.remove(&record.id).unwrap_or_default();
            stored.sort_by_key(|m| m.position);
            let mut r = Rollout { record, target, members: Vec::new(), active: Vec::new(), next: 0, announce_next: 0 };
            for (k, m) in stored.into_iter().enumerate() {
                if matches!(m.phase, MemberPhase::Moving | MemberPhase::Soaking) {
                    r.active.push(k);
                }
                if !r.record.state.is_finished() {
                    self.rollouts.claimed.insert(m.service, r.record.id);
                }
                r.members.push(Member {
                    service: m.service,
                    slot: self.service_ids.get(&m.service).copied().unwrap_or(u32::MAX),
                    name: m.name.into(),
                    phase: m.phase,
                    started_at: m.started_at.map_or(0, |t| t.0),
                    moved_at: m.moved_at.map_or(0, |t| t.0),
                    detail: m.detail,
                    opens_at: 0,
                    announced_at: m.announced_at.map_or(0, |t| t.0),
                });
            }
            r.next = r.members.iter().position(|m| m.phase == MemberPhase::Waiting).unwrap_or(r.members.len());
            if !r.record.state.is_finished() {
                self.rollouts.next_at = now;
            }
            self.rollouts.list.push(r);
        }
    }

    fn rollout_view_of(&self, r: &Rollout, now: i64) -> RolloutView {
        let rec = &r.record;
        let remaining = rec.total.saturating_sub(rec.done + rec.failed);
        let eta_seconds = if remaining == 0 {
            Some(0)
        } else if rec.done == 0 {
            None
        } else {
            // Average move plus soak, over the moves that run side by side.
            let per = rec.moved_micros / rec.done as i64 + rec.spec.soak_seconds as i64 * 1_000_000;
            let parallel = (r.active.len() as u64).max(1);
            Some(((per.max(0) as u64) * remaining / parallel) / 1_000_000)
        };
        let _ = now;
        RolloutView {
            id: rec.id,
            state: rec.state,
            reason: rec.reason.clone(),
            to_image: rec.spec.to_image.clone(),
            total: rec.total,
            done: rec.done,
            failed: rec.failed,
            remaining,
            moving: r.active.len() as u64,
            wave: rec.wave + 1,
            waves: rec.spec.waves.clone(),
            eta_seconds,
            spec: rec.spec.clone(),
            created_at: rec.created_at,
            updated_at: rec.updated_at,
        }
    }

    pub fn rollout_view(&self, id: RolloutId, now: Timestamp) -> Option<RolloutView> {
        self.rollouts.list.iter().find(|r| r.record.id == id).map(|r| self.rollout_view_of(r, now.0))
    }

    /// Every rollout, newest first.
    pub fn rollout_views(&self, now: Timestamp) -> Vec<RolloutView> {
        self.rollouts.list.iter().rev().map(|r| self.rollout_view_of(r, now.0)).collect()
    }

    /// Services moved onto their image by rollouts so far (the simulator's figure).
    pub fn rolled_services(&self) -> u64 {
        self.rollouts.list.iter().map(|r| r.record.done).sum()
    }

    /// The durable progress of one rollout's services, in order.
    pub fn rollout_members(&self, id: RolloutId) -> Option<Vec<RolloutMember>> {
        let r = self.rollouts.list.iter().find(|r| r.record.id == id)?;
        Some(r.members.iter().enumerate().map(|(k, m)| member_record(&r.record, k, m)).collect())
    }
}
