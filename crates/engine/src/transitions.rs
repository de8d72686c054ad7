//! Transitions: the one place an instance or a service changes state.

use crate::api::Outputs;
use crate::{micros, state_index, Engine};
use drover_model::EventKind;
use drover_model::{EventSubject, InstanceState, ServiceState};

impl Engine {
    /// The one place an instance changes state. Refuses what the table
    /// forbids (and logs it as a fleet event) rather than overwrite.
    pub(crate) fn transition(
        &mut self,
        slot: u32,
        to: InstanceState,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> bool {
        let Some(inst) = self.instances.get_mut(slot) else { return false };
        let from = inst.state;
        if !from.can_become(to) {
            let (id, sslot) = (inst.id, inst.service);
            out.changes.events.push(
                self.event(
                    now,
                    EventSubject::Fleet,
                    Some(sslot),
                    Some(id),
                    Some(from.as_str()),
                    Some(to.as_str()),
                    format!("illegal transition refused ({cause})"),
                )
                .with_kind(EventKind::IllegalTransition),
            );
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
        self.count_transition(zone, from, to, now, out);
        out.changes.events.push(self.event(
            now,
            EventSubject::Instance,
            Some(sslot),
            Some(id),
            Some(from.as_str()),
            Some(to.as_str()),
            cause,
        ));
        self.instance_changed(slot, out);
        self.schedule_instance(slot, now);
        self.mark_dirty(sslot);
        true
    }

    /// Keeps the fleet's counts in step with a transition in `zone`: per
    /// state, members and uncertain per zone and fleet, and the onsets the
    /// mass-uncertainty brake watches (which may engage or release it).
    fn count_transition(&mut self, zone: u16, from: InstanceState, to: InstanceState, now: i64, out: &mut Outputs) {
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
    }

    pub(crate) fn set_service_state(&mut self, sslot: u32, to: ServiceState, cause: &str, now: i64, out: &mut Outputs) {
        self.set_service_state_as(sslot, to, cause, EventKind::Transition, now, out);
    }

    /// [`Self::set_service_state`], with the event's kind given: `NeedsHuman`
    /// when the service is unavailable because the engine stopped trying.
    pub(crate) fn set_service_state_as(
        &mut self,
        sslot: u32,
        to: ServiceState,
        cause: &str,
        kind: EventKind,
        now: i64,
        out: &mut Outputs,
    ) {
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
        if matches!(to, ServiceState::Available | ServiceState::Degraded) {
            // A fork's data is in: a primary built later is not restored again.
            if let Some(fork) = s.forked_from.as_deref_mut() {
                fork.restored = true;
            }
        }
        out.changes.events.push(
            self.event(now, EventSubject::Service, Some(sslot), None, Some(from.as_str()), Some(to.as_str()), cause)
                .with_kind(kind),
        );
        self.service_changed(sslot, out);
    }
}
