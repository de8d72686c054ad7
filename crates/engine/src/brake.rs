//! The mass-uncertainty brake: when many instances of a zone (or the
//! fleet) turn uncertain at once, destructive remedies wait for evidence.

use crate::api::Outputs;
use crate::records::fleet_event;
use crate::{micros, Engine};
use drover_model::EventKind;

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

    /// Engages or releases the brake per zone and for the whole fleet.
    pub(crate) fn update_brakes(&mut self, now: i64, out: &mut Outputs) {
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
                    EventKind::BrakeEngaged { scope: name.clone() },
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
                    EventKind::BrakeReleased { scope: name.clone() },
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
}
