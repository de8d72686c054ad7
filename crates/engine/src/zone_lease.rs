//! Zone heartbeat leases: one renewal vouches for every instance of a zone.

use crate::api::{HeartbeatReceipt, Outputs};
use crate::deadlines::UNCONDITIONAL;
use crate::fleet::Inst;
use crate::{micros, Engine};
use drover_model::{InstanceId, InstanceState};

impl Engine {
    /// When an instance was last heard: its own last beat, or its zone's
    /// lease renewal while the lease covers it.
    pub(crate) fn heard_at(&self, inst: &Inst) -> i64 {
        if inst.covered {
            inst.last_heartbeat.max(self.zone_state.get(usize::from(inst.zone)).map_or(0, |z| z.lease_at))
        } else {
            inst.last_heartbeat
        }
    }

    pub(crate) fn zone_lease(
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
    /// instance it covers is judged as silent since the last renewal (in
    /// bounded steps: they join the due checks, see `fire_timers`).
    pub(crate) fn check_zone_lease(&mut self, z: u16, now: i64) {
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
            self.check_due(UNCONDITIONAL, slot, now);
        }
    }
}
