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

mod drains;
mod moves;
mod split;
mod waves;
mod windows;

pub use split::RolloutPart;
pub use windows::ScheduledMove;

/// A service a rollout is moving or soaking (`Engine::gate_watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateWatch {
    pub rollout: RolloutId,
    pub service: ServiceId,
    pub name: String,
    /// Moved, and soaking: the gate's reports count now.
    pub soaking: bool,
    /// When its move started.
    pub started_at: Timestamp,
    pub moved_at: Option<Timestamp>,
}

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
    /// What the control plane's health gate said of soaking members, by
    /// index (`Engine::gate_report`). Not durable: after a restart the next
    /// report comes within seconds. Empty unless the gate reports.
    gate: HashMap<usize, Gate>,
    /// None: the whole rollout. Some: this engine's part of a split
    /// rollout in that shard (`split`): `record` is the part's own, its
    /// counters the part's, its state and wave following the fleet's.
    shard: Option<u16>,
    /// When the fleet's record a part last followed was written (micros).
    record_at: i64,
    /// The state of the fleet's record a part last followed: a part acts
    /// on the record's changes of state only (its own pause at its budget
    /// holds until the record pauses and is resumed).
    followed: RolloutState,
}

impl Rollout {
    /// A rollout (or, with `shard`, a part of a split one) that has
    /// started nothing yet: what it tracks while it runs starts empty.
    fn new(
        record: RolloutRecord,
        target: u32,
        members: Vec<Member>,
        shard: Option<u16>,
        record_at: i64,
        followed: RolloutState,
    ) -> Rollout {
        Rollout {
            record,
            target,
            members,
            active: Vec::new(),
            next: 0,
            announce_next: 0,
            gate: HashMap::default(),
            shard,
            record_at,
            followed,
        }
    }
}

/// How a rollout ends once nothing is left to move: succeeded, or failed
/// naming how many of its services could not be moved.
fn outcome(failed: u64) -> (RolloutState, Option<String>) {
    if failed == 0 {
        (RolloutState::Succeeded, None)
    } else {
        (RolloutState::Failed, Some(format!("{failed} services could not be moved")))
    }
}

/// What the health gate last said of one soaking member.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate {
    /// When it last found the service well (0: not since it moved).
    ok_at: i64,
    /// What it found wrong, if anything: the member fails its gate.
    problem: Option<String>,
}

#[derive(Default)]
pub(crate) struct Rollouts {
    list: Vec<Rollout>,
    /// Services in an unfinished rollout: one rollout moves a service at a time.
    pub(crate) claimed: HashMap<ServiceId, RolloutId>,
    /// When running rollouts are looked at next (0: none is running).
    next_at: i64,
    /// When draining hosts are looked at next (0: none holds a member).
    drains_at: i64,
    /// The fleet-wide records of split rollouts (`split`), summed counters.
    split: Vec<RolloutRecord>,
    /// The shards this engine holds, as the shell last said (split fleets).
    held: Vec<u16>,
    /// When shard 0's holder resumed each split rollout (micros): a part's
    /// failures count against the budget once it followed the resume.
    resumed: HashMap<RolloutId, i64>,
}

impl Rollouts {
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        [self.next_at, self.drains_at].into_iter().filter(|&t| t > 0).min()
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
        let members = self.select_members(&spec, target, engine, true)?;
        let members = self.waiting_members(members, now);
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
            parts: 0,
        };
        if total > 0 {
            for m in &members {
                self.rollouts.claimed.insert(m.service, id);
            }
            self.rollouts.next_at = now;
        }
        let rollout = Rollout::new(record, target, members, None, 0, RolloutState::Pending);
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

    /// The services `picked` as members that wait to move, soonest window
    /// first (stable: the selection's order among equals), so each wave is
    /// the services whose windows open next.
    fn waiting_members(&self, picked: Vec<(u32, ServiceId, crate::fleet::Name)>, now: i64) -> Vec<Member> {
        let mut picked: Vec<(i64, (u32, ServiceId, crate::fleet::Name))> = picked
            .into_iter()
            .map(|m| (self.window_of(m.0).map_or(0, |w| w.next_opening(Timestamp(now)).0.max(now)), m))
            .collect();
        picked.sort_by_key(|(opens, _)| *opens);
        picked
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
            .collect()
    }

    /// The services a rollout's selector picks: of the image's engine, not
    /// being deleted, not already wholly on the target image and not in
    /// another unfinished rollout. An unknown image or service named in the
    /// selector is the caller's mistake (a name only when `strict_names`:
    /// a part of a split rollout has only its shard's services).
    fn select_members(
        &self,
        spec: &RolloutSpec,
        target: u32,
        engine: drover_model::EngineKind,
        strict_names: bool,
    ) -> Result<Vec<(u32, ServiceId, crate::fleet::Name)>, CommandError> {
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
        if let Some(names) = spec.selector.names.as_ref().filter(|_| strict_names) {
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
        Ok(members)
    }

    /// Pause, resume or abort by a person.
    pub(crate) fn steer_rollout(
        &mut self,
        id: RolloutId,
        to: RolloutState,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        if self.rollouts.split.iter().any(|r| r.id == id) {
            return self.steer_split(id, to, now, out);
        }
        let r = self
            .rollouts
            .list
            .iter_mut()
            .find(|r| r.record.id == id && r.shard.is_none())
            .ok_or_else(|| CommandError::NotFound(format!("no rollout {id}")))?;
        let from = r.record.state;
        if from.is_finished() {
            return Err(CommandError::Conflict(format!("rollout {id} is {}: it cannot change", from.as_str())));
        }
        let mut moving: Vec<(ServiceId, u32)> = Vec::new();
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
                moving = r.active.iter().map(|&k| (r.members[k].service, r.members[k].slot)).collect();
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
        // A member left halfway onto another major goes back to its
        // primary's (the others finish as reconcile finds them).
        for (service, hint) in moving {
            let sslot = self.slot_of(service, hint);
            self.abandon_major_move(sslot, now, out);
        }
        let view = self
            .rollouts
            .list
            .iter()
            .find(|r| r.record.id == id && r.shard.is_none())
            .map(|r| self.rollout_view_of(r, now))
            .ok_or_else(|| CommandError::NotFound(format!("no rollout {id}")))?;
        Ok(Reply::Rollout(Box::new(view)))
    }

    /// Rollouts and their members from the store after a restart: a member
    /// the records say was started is moving (its next step is read from
    /// the fleet); one done or failed is never started again.
    ///
    /// On a split fleet (a share of more than one shard, or a part taken
    /// over: `absorb`) only members of services this engine has are
    /// restored: a split rollout's record is kept and a part made per shard
    /// its members are in; a whole rollout (a resize) is restored where its
    /// service is. What this engine runs already is left as it is.
    pub(crate) fn restore_rollouts(&mut self, records: Vec<RolloutRecord>, members: Vec<RolloutMember>, now: i64) {
        let split_fleet = self.config.share.of > 1;
        let mut by_rollout: HashMap<RolloutId, Vec<RolloutMember>> = HashMap::default();
        for m in members {
            if split_fleet && !self.service_ids.contains_key(&m.service) {
                continue;
            }
            by_rollout.entry(m.rollout).or_default().push(m);
        }
        for record in records {
            let target = match self.images.index.get(&record.spec.to_image) {
                Some(&t) => t,
                None => continue,
            };
            let mut stored = by_rollout.remove(&record.id).unwrap_or_default();
            stored.sort_by_key(|m| m.position);
            if record.parts > 1 {
                self.restore_parts(record, target, stored, now);
                continue;
            }
            let known = self.rollouts.list.iter().any(|r| r.record.id == record.id);
            if known || (split_fleet && stored.is_empty() && !record.state.is_finished()) {
                continue;
            }
            let r = Rollout::new(record, target, Vec::new(), None, 0, RolloutState::Pending);
            self.restore_members(r, stored, now);
        }
    }

    /// A split rollout's record kept, and a part per shard of `stored`
    /// that has none here yet, its counters its members'.
    fn restore_parts(&mut self, record: RolloutRecord, target: u32, stored: Vec<RolloutMember>, now: i64) {
        if !self.rollouts.split.iter().any(|r| r.id == record.id) {
            self.rollouts.split.push(record.clone());
        }
        let mut by_shard: std::collections::BTreeMap<u16, Vec<RolloutMember>> = Default::default();
        for m in stored {
            by_shard.entry(m.service.slot().shard(record.parts)).or_default().push(m);
        }
        for (shard, members) in by_shard {
            if self.rollouts.list.iter().any(|r| r.record.id == record.id && r.shard == Some(shard)) {
                continue;
            }
            let count = |phase: MemberPhase| members.iter().filter(|m| m.phase == phase).count() as u64;
            let part = RolloutRecord {
                total: members.len() as u64,
                done: count(MemberPhase::Done),
                failed: count(MemberPhase::Failed),
                wave_failed: 0,
                moved_micros: members
                    .iter()
                    .filter(|m| m.phase == MemberPhase::Done)
                    .map(|m| m.moved_at.zip(m.started_at).map_or(0, |(a, b)| (a.0 - b.0).max(0)))
                    .sum(),
                ..record.clone()
            };
            let r = Rollout::new(part, target, Vec::new(), Some(shard), record.updated_at.0, record.state);
            self.restore_members(r, members, now);
        }
    }

    /// `r` with its members' records, pushed.
    fn restore_members(&mut self, mut r: Rollout, stored: Vec<RolloutMember>, now: i64) {
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
        if let Some(record) = self.rollouts.split.iter().find(|r| r.id == id) {
            return Some(self.split_view(record));
        }
        self.rollouts.list.iter().find(|r| r.record.id == id).map(|r| self.rollout_view_of(r, now.0))
    }

    /// Every rollout, newest first (a split one once, as its record).
    pub fn rollout_views(&self, now: Timestamp) -> Vec<RolloutView> {
        let mut views: Vec<RolloutView> = self
            .rollouts
            .list
            .iter()
            .filter(|r| r.shard.is_none())
            .map(|r| self.rollout_view_of(r, now.0))
            .chain(self.rollouts.split.iter().map(|r| self.split_view(r)))
            .collect();
        views.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.to_string().cmp(&a.id.to_string())));
        views
    }

    /// The services rollouts are moving or soaking, for the control plane's
    /// health gate (`Input::GateReport`): it takes each one's checks when
    /// its move starts, and reports on the soaking ones.
    pub fn gate_watch(&self) -> Vec<GateWatch> {
        let mut out = Vec::new();
        for r in self.rollouts.list.iter().filter(|r| !r.record.state.is_finished()) {
            for &k in &r.active {
                let m = &r.members[k];
                out.push(GateWatch {
                    rollout: r.record.id,
                    service: m.service,
                    name: m.name.to_string(),
                    soaking: m.phase == MemberPhase::Soaking,
                    started_at: Timestamp(m.started_at),
                    moved_at: (m.moved_at != 0).then_some(Timestamp(m.moved_at)),
                });
            }
        }
        out
    }

    /// The health gate's word on a soaking service: `problem` None when all
    /// is well, else why not (the member fails at the next step). A report
    /// on a service that is not soaking is ignored: the gate judges a move
    /// once it is over.
    pub(crate) fn gate_report(&mut self, service: ServiceId, problem: Option<String>, now: i64) {
        let Some(&id) = self.rollouts.claimed.get(&service) else { return };
        // A split rollout has a part per shard: the one moving the service.
        let Some((r, k)) = self.rollouts.list.iter_mut().filter(|r| r.record.id == id).find_map(|r| {
            let k = r.active.iter().copied().find(|&k| r.members[k].service == service)?;
            Some((r, k))
        }) else {
            return;
        };
        if r.members[k].phase != MemberPhase::Soaking {
            return;
        }
        let gate = r.gate.entry(k).or_default();
        match problem {
            None => gate.ok_at = now,
            Some(p) => {
                gate.problem.get_or_insert(p);
            }
        }
        // Looked at on the next drive, at most `rollout_interval` away.
    }

    /// Services moved onto their image by rollouts so far (the simulator's figure).
    pub fn rolled_services(&self) -> u64 {
        self.rollouts.list.iter().map(|r| r.record.done).sum()
    }

    /// The durable progress of one rollout's services, in order.
    /// Of a split rollout, those of the parts this engine runs.
    pub fn rollout_members(&self, id: RolloutId) -> Option<Vec<RolloutMember>> {
        let known = self.rollouts.split.iter().any(|r| r.id == id);
        let mut parts = self.rollouts.list.iter().filter(|r| r.record.id == id).peekable();
        if parts.peek().is_none() && !known {
            return None;
        }
        Some(parts.flat_map(|r| r.members.iter().enumerate().map(|(k, m)| member_record(&r.record, k, m))).collect())
    }
}
