//! The mass-uncertainty brake: when many instances of a zone (or the
//! fleet) turn uncertain at once, destructive remedies wait for evidence.

use crate::api::Outputs;
use crate::records::fleet_event;
use crate::{micros, Engine};
use drover_model::{EventKind, HostState};

impl Engine {
    pub(crate) fn brake_threshold(&self, members: u32) -> u32 {
        let share = (self.config.brake_share * f64::from(members)).ceil() as u32;
        share.max(self.config.brake_min_instances).max(1)
    }

    pub(crate) fn is_braked(&self, zone: u16) -> bool {
        self.fleet_zone.braked_since.is_some()
            || self.zone_state.get(usize::from(zone)).is_some_and(|z| z.braked_since.is_some())
            || self.is_frozen(zone)
    }

    /// Frozen by hand, the zone itself or the whole fleet.
    pub(crate) fn is_frozen(&self, zone: u16) -> bool {
        self.fleet_zone.frozen_since.is_some()
            || self.zone_state.get(usize::from(zone)).is_some_and(|z| z.frozen_since.is_some())
    }

    pub(crate) fn braked_since(&self, zone: u16) -> Option<i64> {
        let z = self.zone_state.get(usize::from(zone)).and_then(|z| z.braked_since);
        match (z, self.fleet_zone.braked_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hosts per zone (the last entry: the fleet) that count for the
    /// brake, and how many of them are uncertain: agent hosts only (the
    /// built-in host is never judged by silence), and an uncertain host
    /// only until `presumed_dead_after` (as its instances would be), so a
    /// host that never comes back does not hold the brake for ever.
    fn host_counts(&self, now: i64) -> Vec<(u32, u32)> {
        let mut counts = vec![(0u32, 0u32); self.zone_state.len() + 1];
        let dead_after = micros(self.config.presumed_dead_after);
        for h in self.hosts.list.iter().filter(|h| !h.rec.builtin && h.rec.state != HostState::Down) {
            let uncertain = h.rec.state == HostState::Uncertain && now - h.uncertain_since < dead_after;
            for z in [usize::from(h.zone), self.zone_state.len()] {
                if let Some(c) = counts.get_mut(z) {
                    c.0 += 1;
                    c.1 += u32::from(uncertain);
                }
            }
        }
        counts
    }

    fn host_threshold(&self, hosts: u32) -> u32 {
        let share = (self.config.brake_share * f64::from(hosts)).ceil() as u32;
        share.max(self.config.brake_min_hosts).max(1)
    }

    /// Engages or releases the brake per zone and for the whole fleet: by
    /// instances turning uncertain, or by whole hosts doing so.
    pub(crate) fn update_brakes(&mut self, now: i64, out: &mut Outputs) {
        let window = micros(self.config.brake_window);
        let hosts = if self.hosts.is_empty() { Vec::new() } else { self.host_counts(now) };
        for z in 0..=self.zone_state.len() {
            let fleet = z == self.zone_state.len();
            let (members, uncertain, onsets, host_onsets, braked) = {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                while zs.onsets.front().is_some_and(|&t| t < now - window) {
                    zs.onsets.pop_front();
                }
                while zs.host_onsets.front().is_some_and(|&t| t < now - window) {
                    zs.host_onsets.pop_front();
                }
                (
                    zs.members,
                    zs.uncertain,
                    zs.onsets.len() as u32,
                    zs.host_onsets.len() as u32,
                    zs.braked_since.is_some(),
                )
            };
            let threshold = self.brake_threshold(members);
            let (host_total, hosts_uncertain) = hosts.get(z).copied().unwrap_or((0, 0));
            let host_threshold = self.host_threshold(host_total);
            let by_instances = onsets >= threshold && uncertain >= threshold;
            let by_hosts = host_total > 0 && host_onsets >= host_threshold && hosts_uncertain >= host_threshold;
            let name = if fleet { "fleet".to_string() } else { self.zones.name(z as u16).to_string() };
            if !braked && (by_instances || by_hosts) {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                zs.braked_since = Some(now);
                let what = if by_instances {
                    format!("{onsets} of {members} instances turned uncertain")
                } else {
                    format!("{host_onsets} of {host_total} hosts turned uncertain as a whole ({uncertain} instances)")
                };
                out.changes.events.push(fleet_event(
                    now,
                    EventKind::BrakeEngaged { scope: name.clone() },
                    "released",
                    "braked",
                    format!(
                        "mass-uncertainty brake engaged for {name}: {what} within {:?}; destructive remedies there \
                         wait for fresh evidence",
                        self.config.brake_window
                    ),
                ));
            } else if braked && uncertain * 2 < threshold && hosts_uncertain * 2 < host_threshold {
                let zs = if fleet { &mut self.fleet_zone } else { &mut self.zone_state[z] };
                zs.braked_since = None;
                out.changes.events.push(fleet_event(
                    now,
                    EventKind::BrakeReleased { scope: name.clone() },
                    "braked",
                    "released",
                    format!(
                        "mass-uncertainty brake released for {name}: {uncertain} instances and {hosts_uncertain} \
                         hosts still uncertain"
                    ),
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
}
