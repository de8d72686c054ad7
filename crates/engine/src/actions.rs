//! Actions: opened, budgeted per zone, dispatched, retried, finished, and
//! what their results mean for the fleet.

use crate::api::{Dispatch, Outputs};
use crate::{micros, Engine, OpenAction, MAX_RETRY_BACKOFF};
use drover_model::EventKind;
use drover_model::{
    ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, EventSubject, InstanceState, Role, Timestamp,
};
use rand::RngCore;
use std::time::Duration;

impl Engine {
    pub(crate) fn budget_zone(&self, kind: &ActionKind, target: u32) -> Option<u16> {
        if !is_remedy(kind) || !kind.is_destructive() {
            return None;
        }
        match kind {
            ActionKind::Provision(p) => self.zones.get(&p.zone),
            _ => self.instances.get(target).map(|i| i.zone),
        }
    }

    /// Opens an action on `slot`: running and dispatched at once, or pending
    /// behind its zone's budget.
    pub(crate) fn open_action(
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
        let id = ActionId::new_at(now, self.rng.next_u64()).in_slot(service_id.slot());
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
            if let Some(i) = self.instances.get_mut(slot) {
                i.open_remedies += 1;
            }
        }
        self.actions.insert(id, Box::new(OpenAction { record, remedy, budget_zone, durable }));
        let over_budget = budget_zone.is_some_and(|z| {
            let zs = &self.zone_state[usize::from(z)];
            zs.running_budgeted >= self.config.share.of_budget(self.config.zone_budget) || !zs.waiting.is_empty()
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
            self.action_changed(rec, out);
        } else {
            if let Some(z) = budget_zone {
                self.zone_mut(z).running_budgeted += 1;
            }
            self.start_action(id, now, out);
        }
        Some(id)
    }

    /// Pending → running: apply its immediate effect and dispatch.
    pub(crate) fn start_action(&mut self, id: ActionId, now: i64, out: &mut Outputs) {
        let Some(a) = self.actions.get(&id) else { return };
        let slot = self.instance_index.get(&a.record.instance).copied();
        // Only a restart or a retire changes the instance at once; other
        // kinds need no copy of the record's kind and cause.
        let immediate = matches!(a.record.kind, ActionKind::Restart | ActionKind::Retire);
        if let (Some(slot), true) = (slot, immediate) {
            let (kind, cause) = (a.record.kind.clone(), a.record.cause.clone());
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
    pub(crate) fn redispatch(&mut self, id: ActionId, why: &str, now: i64, out: &mut Outputs) {
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
            let cause = attempt_cause(rec.kind.name(), rec.attempts, why);
            out.changes.events.push(self.action_event(&rec, from, cause, now));
            if self.config.records {
                out.changes.actions.push(rec.clone());
            }
        }
        let provider = match self.instance_index.get(&rec.instance).and_then(|&i| self.instances.get(i)) {
            Some(inst) => self.providers.name(inst.provider).to_string(),
            None => self.provider_without_instance(&rec),
        };
        out.dispatch.push(Dispatch { provider, action: rec });
    }

    pub(crate) fn finish_action(
        &mut self,
        id: ActionId,
        state: ActionState,
        error: Option<String>,
        now: i64,
        out: &mut Outputs,
    ) {
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
            if let Some(i) = slot.and_then(|s| self.instances.get_mut(s)) {
                i.open_remedies = i.open_remedies.saturating_sub(1);
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
        if let (Some(s), ActionKind::RotateCredentials | ActionKind::RevokePreviousCredentials) =
            (sslot, &a.record.kind)
        {
            self.rotation_finished(s, &a.record, state, now, out);
        }
        if matches!(a.record.kind, ActionKind::Backup | ActionKind::PurgeArchive { .. }) {
            self.archive_action_ended(&a.record, state, now, out);
        }
        if a.durable {
            let cause = match &a.record.error {
                Some(e) if state != ActionState::Succeeded => format!("{}: {e}", a.record.kind.name()),
                // Once per action: concatenated, not formatted.
                _ => [a.record.kind.name(), " ", state.as_str()].concat(),
            };
            out.changes.events.push(self.action_event(&a.record, from, cause, now));
        }
        let (budget_zone, durable) = (a.budget_zone, a.durable);
        if durable {
            self.action_changed(a.record, out);
        }
        // A budget slot freed: start whoever waits in that zone.
        if let Some(z) = budget_zone {
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

    pub(crate) fn start_waiting(&mut self, zone: u16, now: i64, out: &mut Outputs) {
        loop {
            let budget = self.config.share.of_budget(self.config.zone_budget);
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
    pub(crate) fn still_needed(&self, id: ActionId) -> bool {
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

    pub(crate) fn action_result(
        &mut self,
        id: ActionId,
        attempt: u32,
        outcome: ActionOutcome,
        now: i64,
        out: &mut Outputs,
    ) {
        let Some(a) = self.actions.get(&id) else { return };
        if a.record.state != ActionState::Running || a.record.attempts != attempt {
            return; // a stale attempt's answer
        }
        let kind = a.record.kind.clone();
        let slot = self.instance_index.get(&a.record.instance).copied();
        match outcome {
            ActionOutcome::Succeeded { detail } => {
                if let (Some(slot), ActionKind::Backup) = (slot, &kind) {
                    // This attempt's dispatch: no later than the backup's start.
                    let started = a.record.updated_at;
                    if let Some(sslot) = self.instances.get(slot).map(|i| i.service) {
                        self.note_backup_started(sslot, started);
                    }
                }
                if matches!(kind, ActionKind::Backup | ActionKind::PurgeArchive { .. }) {
                    if let Some(rec) = self.actions.get(&id).map(|a| a.record.clone()) {
                        self.archive_action_succeeded(&rec, detail.as_deref(), now, out);
                    }
                }
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

    pub(crate) fn apply_success(
        &mut self,
        slot: u32,
        kind: &ActionKind,
        detail: Option<&str>,
        now: i64,
        out: &mut Outputs,
    ) {
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
            ActionKind::Promote => self.promoted(slot, detail, now, out),
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
            ActionKind::Provision(_) | ActionKind::Restart => {
                // The instance proves itself with a heartbeat; the install
                // deadline (already scheduled) catches one that never comes.
                self.schedule_instance(slot, now);
            }
            ActionKind::Backup | ActionKind::VerifyRestore => {
                let Some(sslot) = self.instances.get(slot).map(|i| i.service) else { return };
                self.backup_result(sslot, kind, None, detail, now, out);
            }
            // Their outcome is taken in `finish_action` (`rotation_finished`).
            ActionKind::InjectFault { .. }
            | ActionKind::RotateCredentials
            | ActionKind::RevokePreviousCredentials
            | ActionKind::PurgeArchive { .. } => {}
        }
    }

    /// A follower's promotion succeeded: it is the primary now.
    fn promoted(&mut self, slot: u32, detail: Option<&str>, now: i64, out: &mut Outputs) {
        // Safety: promotion was only opened with no writable primary
        // left; re-check and refuse to produce two.
        let Some(sslot) = self.instances.get(slot).map(|i| i.service) else { return };
        if let Some(p) = self.current_primary(sslot) {
            if p != slot {
                self.invariant_broken(sslot, "a promotion succeeded while another primary is writable", now, out);
            }
        }
        let id = {
            let Some(i) = self.instances.get_mut(slot) else { return };
            i.role = Role::Primary;
            i.upstream_broken = false;
            i.id
        };
        out.changes.events.push(
            self.event(
                now,
                EventSubject::Instance,
                Some(sslot),
                Some(id),
                Some("follower"),
                Some("primary"),
                format!("promoted{}", detail.map(|d| format!(": {d}")).unwrap_or_default()),
            )
            .with_kind(EventKind::Promoted),
        );
        self.instance_changed(slot, out);
    }

    pub(crate) fn apply_failure(&mut self, slot: u32, kind: &ActionKind, error: &str, now: i64, out: &mut Outputs) {
        let sslot = self.instances.get(slot).map(|i| i.service);
        match kind {
            ActionKind::Provision(_) => {
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
            ActionKind::Probe
            | ActionKind::InjectFault { .. }
            | ActionKind::RotateCredentials
            | ActionKind::RevokePreviousCredentials
            | ActionKind::PurgeArchive { .. } => {}
        }
    }

    pub(crate) fn invariant_broken(&mut self, sslot: u32, what: &str, now: i64, out: &mut Outputs) {
        self.set_needs_human(sslot, out);
        out.changes.events.push(
            self.event(
                now,
                EventSubject::Fleet,
                Some(sslot),
                None,
                None,
                Some("needs_human"),
                format!("safety invariant at risk: {what}"),
            )
            .with_kind(EventKind::InvariantAtRisk),
        );
    }

    /// A remedy of service `sslot` failed for good (after its own attempts).
    /// Failures in a row are counted until the service is available again;
    /// past `max_remedy_failures` of them, or `max_action_failure` after the
    /// first, the engine stops trying and asks for a human, once, with the
    /// last error as evidence. `ResumeService` clears it.
    pub(crate) fn remedy_failed(&mut self, sslot: u32, failed: &ActionRecord, now: i64, out: &mut Outputs) {
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
            // Durable, so a restarted control plane goes on counting.
            self.service_changed(sslot, out);
            return;
        }
        self.set_needs_human(sslot, out);
        let error = failed.error.as_deref().unwrap_or("no result");
        out.changes.events.push(
            self.event(
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
            )
            .with_kind(EventKind::NeedsHuman),
        );
    }

    pub(crate) fn set_needs_human(&mut self, sslot: u32, out: &mut Outputs) {
        let Some(svc) = self.services.get_mut(sslot) else { return };
        if !svc.needs_human {
            svc.needs_human = true;
            self.service_changed(sslot, out);
        }
        self.mark_dirty(sslot);
    }

    pub(crate) fn has_open_action_on(&self, slot: u32) -> bool {
        let Some(inst) = self.instances.get(slot) else { return false };
        inst.open_remedies > 0
    }
}

/// Remedies hold their service's one slot; chaos and probes do not.
pub(crate) fn is_remedy(kind: &ActionKind) -> bool {
    // A rotation changes no server: it must never hold up a failover.
    // A purge belongs to an archive, not to a service that could need one.
    !matches!(
        kind,
        ActionKind::Probe
            | ActionKind::InjectFault { .. }
            | ActionKind::RotateCredentials
            | ActionKind::RevokePreviousCredentials
            | ActionKind::PurgeArchive { .. }
    )
}

/// `"{kind} attempt {n}: {why}"`, the cause of every dispatch, built without
/// the formatting machinery (one of the simulator's most frequent strings).
fn attempt_cause(kind: &str, attempts: u32, why: &str) -> String {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = attempts;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let n = std::str::from_utf8(&digits[at..]).unwrap_or("?");
    let mut s = String::with_capacity(kind.len() + 10 + n.len() + 2 + why.len());
    for part in [kind, " attempt ", n, ": ", why] {
        s.push_str(part);
    }
    s
}

#[cfg(test)]
mod cause_tests {
    #[test]
    fn attempt_cause_reads_as_the_format_it_replaces() {
        for n in [0, 1, 9, 10, 42, 100, u32::MAX] {
            assert_eq!(super::attempt_cause("promote", n, "dispatched"), format!("promote attempt {n}: dispatched"));
        }
    }
}
