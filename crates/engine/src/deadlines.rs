//! Deadlines: when each instance next needs a look, and what a look finds
//! (silence makes it uncertain, longer silence unavailable).

use crate::api::Outputs;
use crate::fleet::{Inst, NEVER};
use crate::{micros, Engine, RECHECK_MICROS};
use drover_model::{ActionKind, ActionState, InstanceState};
use std::collections::VecDeque;
use std::time::Duration;

/// Instance checks done per engine step at most (see `fire_timers`).
pub(crate) const CHECKS_PER_STEP: usize = 8192;

/// A due check to make whatever the instance's timer says (a lapsed lease).
pub(crate) const UNCONDITIONAL: i64 = i64::MIN;

impl Engine {
    pub(crate) fn schedule_instance(&mut self, slot: u32, now: i64) {
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
    pub(crate) fn grace(&self, inst: &Inst) -> i64 {
        if inst.created_at < self.restored_at {
            self.grace_until
        } else {
            0
        }
    }

    pub(crate) fn reschedule_after_check(&mut self, slot: u32, now: i64) {
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
    pub(crate) fn instance_deadline(&self, inst: &Inst, _now: i64) -> i64 {
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

    /// Queues an instance check that is due now (see `fire_timers`).
    pub(crate) fn check_due(&mut self, key: i64, slot: u32, now: i64) {
        if self.due_checks.is_empty() {
            self.due_since = now;
        }
        self.due_checks.push_back((key, slot));
    }

    /// Due timers fire. Instance checks go through `due_checks` and at most
    /// [`CHECKS_PER_STEP`] are done per step, the rest in the next steps
    /// (`next_deadline` says they are due): when a zone of a large fleet goes
    /// silent at once (500k instances per engine at a million services), one
    /// step's outputs stay bounded, and other inputs are heard in between.
    /// A check whose instance moved on meanwhile (a heartbeat set a new
    /// deadline) is found stale and skipped, as in the wheel.
    pub(crate) fn fire_timers(&mut self, now: i64, out: &mut Outputs) {
        for (key, slots) in self.instance_timers.pop_due(now) {
            for slot in slots {
                self.check_due(key, slot, now);
            }
        }
        let mut done = 0;
        while done < CHECKS_PER_STEP {
            let Some((key, slot)) = self.due_checks.pop_front() else { break };
            match self.instances.get_mut(slot) {
                Some(_) if key == UNCONDITIONAL => {}
                Some(inst) if inst.check_at == key => inst.check_at = NEVER,
                _ => continue, // stale entry: the instance moved on
            }
            done += 1;
            self.check_instance(slot, now, out);
            if key == UNCONDITIONAL {
                self.schedule_instance(slot, now);
            } else {
                self.reschedule_after_check(slot, now);
            }
        }
        if self.due_checks.is_empty() {
            self.due_checks = VecDeque::new(); // give a lapse's memory back
        }
        for (_, zones) in self.zone_timers.pop_due(now) {
            for z in zones {
                self.check_zone_lease(z, now);
            }
        }
        for (_, slots) in self.service_timers.pop_due(now) {
            for sslot in slots {
                self.scheduled_backup_work(sslot, now, out);
            }
        }
        for (_, slots) in self.rotation_timers.pop_due(now) {
            for sslot in slots {
                self.scheduled_rotation_work(sslot, now, out);
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
    pub(crate) fn check_instance(&mut self, slot: u32, now: i64, out: &mut Outputs) {
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
                        self.probe_because(slot, "silent during the restart grace: probe it out of band", now, out);
                    }
                    return;
                }
                if !inst.covered && now >= silent_at.max(self.grace(inst)) {
                    let cause = format!("no heartbeat for {:.1}s", silent_for.as_secs_f64());
                    if self.transition(slot, InstanceState::Uncertain, &cause, now, out) {
                        self.host_silent(slot, now, out);
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

    pub(crate) fn request_probe(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        self.probe_because(slot, "instance is uncertain: probe it out of band", now, out);
    }

    /// Asks for an out-of-band probe (one at a time per instance) and sets
    /// when the next may be asked.
    fn probe_because(&mut self, slot: u32, cause: &str, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        inst.next_probe_at = now + micros(self.config.probe_interval);
        if inst.probing {
            return;
        }
        inst.probing = true;
        self.open_action(slot, ActionKind::Probe, cause, false, now, out);
    }
}
