//! Rollouts on a fleet split into shards (issue 16): one fleet-wide record,
//! and a part per shard.
//!
//! Each node's engine has only the services of the shards it holds, so a
//! rollout cannot be driven by one engine. The record (spec, state, wave,
//! the summed counters, `parts` = the shard count) is created and kept by
//! shard 0's holder, through which every rollout route goes. Every engine
//! learns it from the store (`Input::Rollouts`, the `fleet_records` poll)
//! and, for each shard it holds, selects that shard's services with the
//! same selector into a part: a [`Rollout`] with `shard` set, moving its
//! members exactly as a whole rollout does (the same steps, zone limits,
//! windows, soak and gate), each member's record written in the commit
//! that moves it (fenced by the member's shard).
//!
//! A part never opens a wave nor ends the rollout: it reports its progress
//! ([`RolloutPart`], in its shard's health row) and shard 0's holder
//! (`Input::RolloutProgress`) opens wave k+1 only once every shard's part
//! closed wave k (all of its members in the wave done or failed), pauses the
//! rollout on the failures of the wave summed over the shards, and ends it
//! after the last wave. A shard nobody reports (its holder died and it is
//! not taken yet) holds the wave: unknown, not done. A part stops starting
//! moves by itself as soon as its own failures reach the budget, without
//! waiting for the record.
//!
//! Pause, resume and abort change the record on shard 0's holder; each part
//! follows the record it learns. A shard taken over brings its members'
//! records with it: the taker's part resumes where they say (a member
//! started is never started again), and a shard no part ever selected is
//! selected by its new holder.

use super::*;
use std::collections::BTreeMap;

/// One shard's part of a split rollout, as its holder reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RolloutPart {
    pub rollout: RolloutId,
    /// The wave the part is in (it follows the record's).
    pub wave: u32,
    /// Every member of the part's `wave` was started and none is moving or
    /// soaking: the wave passed its gate in this shard.
    pub closed: bool,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    /// Failures in `wave` since it opened or the rollout was resumed.
    pub wave_failed: u32,
    pub moving: u64,
    pub moved_micros: i64,
    /// When the record the part last followed was written (micros): the
    /// coordinator counts a part's failures only once it followed a resume.
    pub record_at: i64,
}

impl Engine {
    /// A rollout of the whole split fleet, created on shard 0's holder: the
    /// record only. Every engine (this one too) selects its shards' members
    /// once it learns the record from the store. Names the selector gives
    /// are not checked here: their services may be in other shards.
    pub(crate) fn create_split_rollout(
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
        if let Some(id) = &spec.selector.image {
            if !self.images.index.contains_key(id) {
                return Err(CommandError::Invalid(format!("selector names an unknown image {id}")));
            }
        }
        spec.selector.wanted_labels().map_err(CommandError::Invalid)?;
        let id = RolloutId::new_at(now, self.rng.next_u64());
        let record = RolloutRecord {
            id,
            spec,
            state: RolloutState::Pending,
            reason: None,
            wave: 0,
            wave_failed: 0,
            total: 0,
            done: 0,
            failed: 0,
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            moved_micros: 0,
            parts: self.config.share.of,
        };
        out.changes.events.push(fleet_event(
            now,
            EventKind::Other,
            None,
            "pending",
            format!(
                "rollout {id} created onto image {}: each of the {} shards' holders selects its services",
                record.spec.to_image, record.parts
            ),
        ));
        out.changes.rollouts.push(record.clone());
        let view = self.split_view(&record);
        self.follow_split(record, now, out);
        Ok(Reply::Rollout(Box::new(view)))
    }

    /// Split rollouts' records another node wrote (or this one), and the
    /// shards this engine holds now: each part follows its record, and a
    /// held shard with no part of an unfinished rollout gets one. Records
    /// of whole rollouts are not for this (their engine has them).
    pub(crate) fn learn_rollouts(&mut self, records: Vec<RolloutRecord>, held: Vec<u16>, now: i64, out: &mut Outputs) {
        self.rollouts.held = held;
        for record in records.into_iter().filter(|r| r.parts > 1) {
            self.follow_split(record, now, out);
        }
        let open: Vec<RolloutRecord> = self.rollouts.split.iter().filter(|r| !r.state.is_finished()).cloned().collect();
        for record in open {
            for shard in self.rollouts.held.clone() {
                if shard < record.parts && self.part_index(record.id, shard).is_none() {
                    self.select_part(&record, shard, now, out);
                }
            }
        }
    }

    fn part_index(&self, id: RolloutId, shard: u16) -> Option<usize> {
        self.rollouts.list.iter().position(|r| r.record.id == id && r.shard == Some(shard))
    }

    /// Keeps `record` (unless an older copy of one kept) and makes every
    /// part of it here follow it.
    fn follow_split(&mut self, record: RolloutRecord, now: i64, out: &mut Outputs) {
        match self.rollouts.split.iter_mut().find(|r| r.id == record.id) {
            Some(kept) if kept.updated_at > record.updated_at => return,
            Some(kept) => *kept = record.clone(),
            None => self.rollouts.split.push(record.clone()),
        }
        let mut list = std::mem::take(&mut self.rollouts.list);
        for r in list.iter_mut().filter(|r| r.shard.is_some() && r.record.id == record.id) {
            self.follow_record(r, &record, now, out);
        }
        self.rollouts.list = list;
        if !record.state.is_finished() {
            self.rollouts.next_at = now;
        }
    }

    /// One part takes on what its record says: its state (a finished
    /// record lets its services go; an aborted one leaves a move halfway
    /// onto another major back where it was), its wave and its reason.
    fn follow_record(&mut self, r: &mut Rollout, record: &RolloutRecord, now: i64, out: &mut Outputs) {
        r.record_at = record.updated_at.0;
        r.record.reason = record.reason.clone();
        if record.wave > r.record.wave {
            r.record.wave = record.wave;
            r.record.wave_failed = 0;
        }
        let from = r.record.state;
        let changed = record.state != r.followed;
        r.followed = record.state;
        if from.is_finished() || !changed {
            return;
        }
        match record.state {
            RolloutState::Pending => {}
            RolloutState::Running => {
                if from == RolloutState::Paused {
                    // Resumed: a fresh budget, as the record's.
                    r.record.wave_failed = 0;
                }
                r.record.state = RolloutState::Running;
            }
            RolloutState::Paused => r.record.state = RolloutState::Paused,
            finished => {
                r.record.state = finished;
                for m in &r.members {
                    if self.rollouts.claimed.get(&m.service) == Some(&r.record.id) {
                        self.rollouts.claimed.remove(&m.service);
                    }
                }
                if finished == RolloutState::Aborted {
                    let moving: Vec<(ServiceId, u32)> =
                        r.active.iter().map(|&k| (r.members[k].service, r.members[k].slot)).collect();
                    r.active.clear();
                    for (service, hint) in moving {
                        let sslot = self.slot_of(service, hint);
                        self.abandon_major_move(sslot, now, out);
                    }
                }
            }
        }
    }

    /// This engine's part of `record` in `shard`: the shard's services the
    /// selector picks, soonest window first. Not made while the record's
    /// image is not known here yet (the images' poll brings it).
    fn select_part(&mut self, record: &RolloutRecord, shard: u16, now: i64, out: &mut Outputs) {
        let Some(&target) = self.images.index.get(&record.spec.to_image) else { return };
        let engine = self.images.list[target as usize].engine;
        let Ok(picked) = self.select_members(&record.spec, target, engine, false) else { return };
        let picked: Vec<_> = picked.into_iter().filter(|(_, id, _)| id.slot().shard(record.parts) == shard).collect();
        let members = self.waiting_members(picked, now);
        let part = RolloutRecord {
            total: members.len() as u64,
            done: 0,
            failed: 0,
            wave: record.wave,
            wave_failed: 0,
            moved_micros: 0,
            ..record.clone()
        };
        for m in &members {
            self.rollouts.claimed.insert(m.service, record.id);
        }
        let r = Rollout::new(part, target, members, Some(shard), record.updated_at.0, record.state);
        if self.config.records {
            out.changes
                .rollout_members
                .extend(r.members.iter().enumerate().map(|(i, m)| member_record(&r.record, i, m)));
        }
        if !r.members.is_empty() {
            out.changes.events.push(fleet_event(
                now,
                EventKind::Other,
                None,
                r.record.state.as_str(),
                format!("rollout {}: {} services of shard {shard} to move", record.id, r.members.len()),
            ));
        }
        self.rollouts.list.push(r);
        self.rollouts.next_at = now;
    }

    /// How each part this engine runs stands, by shard.
    pub fn rollout_parts(&self) -> BTreeMap<u16, Vec<RolloutPart>> {
        let mut out: BTreeMap<u16, Vec<RolloutPart>> = BTreeMap::new();
        for r in &self.rollouts.list {
            if let Some(shard) = r.shard {
                out.entry(shard).or_default().push(part_of(r));
            }
        }
        out
    }

    /// Shard 0's holder looks at every unfinished split rollout with the
    /// other shards' parts as their holders reported them (`others`) and
    /// its own: opens the next wave once every shard closed this one, ends
    /// the rollout after the last, pauses it on the failures of the wave
    /// summed over the shards, and writes the summed counters.
    pub(crate) fn coordinate_rollouts(&mut self, others: BTreeMap<u16, Vec<RolloutPart>>, now: i64, out: &mut Outputs) {
        if !self.rollouts.held.contains(&0) {
            return;
        }
        let own = self.rollout_parts();
        let open: Vec<RolloutRecord> = self.rollouts.split.iter().filter(|r| !r.state.is_finished()).cloned().collect();
        for record in open {
            let mut parts = Vec::new();
            for shard in 0..record.parts {
                let list = if self.rollouts.held.contains(&shard) { own.get(&shard) } else { others.get(&shard) };
                if let Some(p) = list.and_then(|l| l.iter().find(|p| p.rollout == record.id)) {
                    parts.push(p.clone());
                }
            }
            let mut next = record.clone();
            next.total = parts.iter().map(|p| p.total).sum();
            next.done = parts.iter().map(|p| p.done).sum();
            next.failed = parts.iter().map(|p| p.failed).sum();
            next.moved_micros = parts.iter().map(|p| p.moved_micros).sum();
            let resumed = self.rollouts.resumed.get(&record.id).copied().unwrap_or(0);
            next.wave_failed =
                parts.iter().filter(|p| p.wave == next.wave && p.record_at >= resumed).map(|p| p.wave_failed).sum();
            let all_reported = parts.len() == usize::from(record.parts);
            let id = record.id;
            if next.state == RolloutState::Pending {
                next.state = RolloutState::Running;
                out.changes.events.push(fleet_event(
                    now,
                    EventKind::Other,
                    Some("pending"),
                    "running",
                    format!("rollout {id} started: wave 1 of {}", next.spec.waves.len()),
                ));
            }
            if next.state == RolloutState::Running && next.wave_failed >= next.spec.max_failures {
                let reason = format!(
                    "paused itself: {} services failed in wave {} over the shards (max_failures {})",
                    next.wave_failed,
                    next.wave + 1,
                    next.spec.max_failures
                );
                next.state = RolloutState::Paused;
                next.reason = Some(reason.clone());
                out.changes.events.push(fleet_event(
                    now,
                    EventKind::RolloutPaused { rollout: id.to_string() },
                    Some("running"),
                    "paused",
                    format!("rollout {id}: {reason}"),
                ));
            } else if next.state == RolloutState::Running
                && all_reported
                && parts.iter().all(|p| p.wave == next.wave && p.closed)
            {
                if (next.wave as usize) + 1 < next.spec.waves.len() {
                    next.wave += 1;
                    next.wave_failed = 0;
                    out.changes.events.push(fleet_event(
                        now,
                        EventKind::Other,
                        None,
                        "running",
                        format!(
                            "rollout {id}: wave {} passed its health gate in every shard; wave {} of {} starts",
                            next.wave,
                            next.wave + 1,
                            next.spec.waves.len()
                        ),
                    ));
                } else {
                    let (state, reason) = super::outcome(next.failed);
                    next.state = state;
                    next.reason = reason;
                    out.changes.events.push(fleet_event(
                        now,
                        EventKind::Other,
                        Some("running"),
                        state.as_str(),
                        format!("rollout {id} {}: {} moved, {} failed", state.as_str(), next.done, next.failed),
                    ));
                }
            }
            if next != record {
                next.updated_at = Timestamp(now.max(record.updated_at.0 + 1));
                if self.config.records {
                    out.changes.rollouts.push(next.clone());
                }
                self.follow_split(next, now, out);
            }
        }
    }

    /// Pause, resume or abort of a split rollout, on shard 0's holder.
    pub(super) fn steer_split(
        &mut self,
        id: RolloutId,
        to: RolloutState,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let record = self
            .rollouts
            .split
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("no rollout {id}")))?;
        let from = record.state;
        if from.is_finished() {
            return Err(CommandError::Conflict(format!("rollout {id} is {}: it cannot change", from.as_str())));
        }
        let mut next = record.clone();
        match to {
            RolloutState::Paused if from != RolloutState::Paused => {
                next.state = RolloutState::Paused;
                next.reason = Some("paused by an operator (see the audit trail)".to_string());
            }
            RolloutState::Running if from == RolloutState::Paused => {
                next.state = RolloutState::Running;
                next.reason = None;
                next.wave_failed = 0;
                self.rollouts.resumed.insert(id, now.max(record.updated_at.0 + 1));
            }
            RolloutState::Paused | RolloutState::Running => {}
            _ => {
                next.state = RolloutState::Aborted;
                next.reason = Some("aborted by an operator (see the audit trail)".to_string());
            }
        }
        if next.state != from {
            next.updated_at = Timestamp(now.max(record.updated_at.0 + 1));
            if self.config.records {
                out.changes.rollouts.push(next.clone());
            }
            out.changes.events.push(fleet_event(
                now,
                EventKind::Other,
                None,
                next.state.as_str(),
                format!("rollout {id}: {} by an operator", next.state.as_str()),
            ));
            self.follow_split(next.clone(), now, out);
        }
        Ok(Reply::Rollout(Box::new(self.split_view(&next))))
    }

    /// A split rollout's view: the record's summed counters; moving, this
    /// engine's parts' (shard 0's holder's view is the one the routes give).
    pub(super) fn split_view(&self, record: &RolloutRecord) -> RolloutView {
        let moving: u64 = self
            .rollouts
            .list
            .iter()
            .filter(|r| r.record.id == record.id && r.shard.is_some())
            .map(|r| r.active.len() as u64)
            .sum();
        let remaining = record.total.saturating_sub(record.done + record.failed);
        let eta_seconds = if remaining == 0 && record.total > 0 {
            Some(0)
        } else if record.done == 0 {
            None
        } else {
            let per = record.moved_micros / record.done as i64 + record.spec.soak_seconds as i64 * 1_000_000;
            Some(((per.max(0) as u64) * remaining / moving.max(1)) / 1_000_000)
        };
        RolloutView {
            id: record.id,
            state: record.state,
            reason: record.reason.clone(),
            to_image: record.spec.to_image.clone(),
            total: record.total,
            done: record.done,
            failed: record.failed,
            remaining,
            moving,
            wave: record.wave + 1,
            waves: record.spec.waves.clone(),
            eta_seconds,
            spec: record.spec.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

fn part_of(r: &Rollout) -> RolloutPart {
    let end = r.record.spec.wave_end(r.record.wave as usize, r.members.len());
    RolloutPart {
        rollout: r.record.id,
        wave: r.record.wave,
        closed: r.next >= end && r.active.is_empty(),
        total: r.members.len() as u64,
        done: r.record.done,
        failed: r.record.failed,
        wave_failed: r.record.wave_failed,
        moving: r.active.len() as u64,
        moved_micros: r.record.moved_micros,
        record_at: r.record_at,
    }
}
