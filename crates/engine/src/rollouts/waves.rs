//! Driving rollouts: each tick steps the moving services, closes waves
//! behind their health gate and starts new moves within the zones' limits.

use super::*;

impl Engine {
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

    pub(super) fn drive_rollout(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) {
        let before = (r.record.state, r.record.wave, r.record.done, r.record.failed, r.record.wave_failed);
        // A part of a split rollout: its state and waves are the record's,
        // kept by shard 0's holder (`split`).
        let part = r.shard.is_some();
        if r.record.state == RolloutState::Pending && !part {
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
        if part {
            // Its own failures at the budget: no new move here, before the
            // record pauses (it sums every shard's).
            if r.record.state == RolloutState::Running && r.record.wave_failed >= r.record.spec.max_failures {
                r.record.state = RolloutState::Paused;
            }
        } else {
            pause_on_failures(r, now, out);
        }
        if r.record.state == RolloutState::Running {
            self.start_moves(r, &mut per_zone, now, out);
            self.announce_moves(r, now, out);
            if !part {
                self.close_wave(r, &mut per_zone, now, out);
            }
        }
        let after = (r.record.state, r.record.wave, r.record.done, r.record.failed, r.record.wave_failed);
        if after != before {
            r.record.updated_at = Timestamp(now);
            if self.config.records && !part {
                out.changes.rollouts.push(r.record.clone());
            }
        }
    }

    /// Closes the current wave once every member of it started and none is
    /// still active (the health gate): the next wave starts, or the
    /// rollout ends.
    fn close_wave(&mut self, r: &mut Rollout, per_zone: &mut Vec<usize>, now: i64, out: &mut Outputs) {
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
                self.start_moves(r, per_zone, now, out);
                self.announce_moves(r, now, out);
            } else {
                self.finish_rollout(r, now, out);
            }
        }
    }

    /// The last wave passed: the rollout succeeded or failed, and its
    /// services may join another rollout.
    fn finish_rollout(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) {
        let (state, reason) = super::outcome(r.record.failed);
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
            format!("rollout {} {}: {} moved, {} failed", r.record.id, state.as_str(), r.record.done, r.record.failed),
        ));
    }

    /// Looks at every moving or soaking member once. Returns how many of
    /// the members still active have their primary in each zone (indexed by
    /// zone), counted while each service is at hand: `start_moves` needs
    /// them, and a second pass over a large active set costs a cache miss
    /// or more per member.
    pub(super) fn step_active(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) -> Vec<usize> {
        let active = std::mem::take(&mut r.active);
        let mut still = Vec::with_capacity(active.len());
        let mut per_zone = vec![0usize; self.zones.len().max(1)];
        for (n, &k) in active.iter().enumerate() {
            self.prefetch_member(r, &active, n);
            let phase = r.members[k].phase;
            let service = r.members[k].service;
            let sslot = self.slot_of(service, r.members[k].slot);
            let changed = match phase {
                MemberPhase::Moving => {
                    match self.step_move(sslot, moves::Goal::Image(r.target), r.members[k].started_at, now, out) {
                        Step::Wait | Step::Acted => None,
                        Step::Moved => {
                            r.members[k].moved_at = now;
                            Some((MemberPhase::Soaking, None))
                        }
                        Step::Failed(why) => Some((MemberPhase::Failed, Some(why))),
                    }
                }
                MemberPhase::Soaking => {
                    let soaked_at = r.members[k].moved_at + (r.record.spec.soak_seconds as i64) * 1_000_000;
                    // The control plane's own gate (checks and pages), when
                    // it reports: a problem fails the member; done needs a
                    // report of all well made once the soak was over.
                    let gate = r.gate.get(&k);
                    let health = match gate.and_then(|g| g.problem.as_deref()) {
                        Some(problem) => Err(problem.to_string()),
                        None => self.service_health(sslot),
                    };
                    let gate_passed = !self.config.rollout_gate_reports || gate.is_some_and(|g| g.ok_at >= soaked_at);
                    match health {
                        Err(why) => Some((MemberPhase::Failed, Some(format!("failed its health gate: {why}")))),
                        Ok(()) if now >= soaked_at && gate_passed => Some((MemberPhase::Done, None)),
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
                    if matches!(phase, MemberPhase::Done | MemberPhase::Failed) {
                        r.gate.remove(&k);
                    }
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
                            self.abandon_major_move(sslot, now, out);
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

    /// Fetches ahead what stepping the active members after the `n`-th
    /// reads: the service a few members on, and the instances of the one
    /// nearer (its service fetched by now). Hints only: nothing changes.
    fn prefetch_member(&self, r: &Rollout, active: &[usize], n: usize) {
        const AHEAD: usize = 8;
        if let Some(&k) = active.get(n + AHEAD) {
            self.services.prefetch(r.members[k].slot);
        }
        if let Some(s) = active.get(n + AHEAD / 2).and_then(|&k| self.services.get(r.members[k].slot)) {
            for &i in &s.instances {
                self.instances.prefetch(i);
            }
        }
    }

    /// The slot of a member's service: its `hint` when that slot still
    /// holds the service, else looked up by id (None: gone).
    pub(super) fn slot_of(&self, service: ServiceId, hint: u32) -> Option<u32> {
        match self.services.get(hint) {
            Some(s) if s.id == service => Some(hint),
            _ => self.service_ids.get(&service).copied(),
        }
    }

    pub(super) fn count_zone(&self, per_zone: &mut Vec<usize>, sslot: Option<u32>) {
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
    pub(super) fn start_moves(&mut self, r: &mut Rollout, per_zone: &mut Vec<usize>, now: i64, out: &mut Outputs) {
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
            // The brake, automatic or by hand (a freeze), holds new moves.
            if busy || self.is_braked(zone) || !(required_passed || self.in_maintenance_window(sslot, now)) {
                k += 1;
                continue;
            }
            per_zone[z] += 1;
            if per_zone[z] == limit && z < zones {
                full += 1;
            }
            self.start_member(r, k, sslot, now, out);
            if k == r.next {
                r.next += 1;
            }
            k += 1;
        }
    }

    /// Starts moving member `k` (its service in `sslot`): told to its
    /// owners if not yet, its replacements built from the new image from
    /// now on, and its first step taken in the same commit as the record
    /// saying it began.
    pub(super) fn start_member(&mut self, r: &mut Rollout, k: usize, sslot: u32, now: i64, out: &mut Outputs) {
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
        if let Step::Failed(why) = self.step_move(Some(sslot), moves::Goal::Image(r.target), now, now, out) {
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
            self.abandon_major_move(Some(sslot), now, out);
        }
    }

    pub(super) fn finish_member_unstarted(
        &mut self,
        r: &mut Rollout,
        k: usize,
        why: &str,
        now: i64,
        out: &mut Outputs,
    ) {
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
}

/// `max_failures` services failed in the wave: the rollout pauses itself
/// (a person resumes or aborts it).
fn pause_on_failures(r: &mut Rollout, now: i64, out: &mut Outputs) {
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
}
