//! Heartbeats and evidence: what instances say about themselves, and what
//! corroborates that one is down (a failed probe, a follower whose stream
//! broke, its provider).

use crate::api::{HeartbeatReceipt, Outputs};
use crate::fleet::NEVER;
use crate::{micros, Engine};
use drover_model::{Beat, InstanceState, Role};

impl Engine {
    pub(crate) fn heartbeats(&mut self, beats: &[Beat], now: i64, out: &mut Outputs) -> HeartbeatReceipt {
        let mut receipt = HeartbeatReceipt::default();
        let uncertain_after = micros(self.config.uncertain_after);
        for beat in beats {
            let Some(&slot) = self.instance_index.get(&beat.instance) else {
                if receipt.unknown.len() < 100 {
                    receipt.unknown.push(beat.instance);
                }
                continue;
            };
            let Some(inst) = self.instances.get_mut(slot) else { continue };
            // A seq not newer is a duplicate or reordered beat, unless the
            // agent restarted (its seq starts over) after a silence.
            let heard = if inst.covered {
                inst.last_heartbeat.max(self.zone_state.get(usize::from(inst.zone)).map_or(0, |z| z.lease_at))
            } else {
                inst.last_heartbeat
            };
            if beat.seq <= inst.last_seq && now - heard < uncertain_after {
                receipt.stale += 1;
                continue;
            }
            receipt.accepted += 1;
            inst.last_seq = beat.seq;
            inst.last_heartbeat = now;
            let f = &beat.facts;
            inst.reported.update(f);
            let broke = match f.upstream_streaming {
                Some(streaming) if inst.role == Role::Follower => {
                    let was = inst.upstream_broken;
                    inst.upstream_broken = !streaming;
                    !streaming && !was
                }
                _ => false,
            };
            let state = inst.state;
            let fenced = inst.fenced;
            let needs_schedule = inst.check_at == NEVER;
            // The hot path ends here for a healthy instance.
            match state {
                InstanceState::Available => {}
                InstanceState::Uncertain | InstanceState::Installing | InstanceState::Restarting => {
                    self.transition(slot, InstanceState::Available, "heartbeat received", now, out);
                    self.host_heard(slot, now, out);
                }
                InstanceState::Unavailable if !fenced && !self.has_open_action_on(slot) => {
                    self.transition(slot, InstanceState::Available, "heartbeat received again", now, out);
                }
                _ => {}
            }
            if broke {
                self.follower_reports_broken_stream(slot, now, out);
            }
            if needs_schedule {
                self.schedule_instance(slot, now);
            }
        }
        receipt
    }

    /// A follower says its stream from the primary broke. If the primary is
    /// already silent, that corroborates it is down.
    pub(crate) fn follower_reports_broken_stream(&mut self, follower: u32, now: i64, out: &mut Outputs) {
        let Some(f) = self.instances.get(follower) else { return };
        let (sslot, fid) = (f.service, f.id);
        let Some(primary) = self.current_primary(sslot) else { return };
        if self.instances.get(primary).map(|p| p.state) == Some(InstanceState::Uncertain) {
            self.evidence(primary, &format!("follower {fid} reports its replication stream from it broke"), now, out);
        }
    }

    /// Corroborating evidence that an instance is down.
    pub(crate) fn evidence(&mut self, slot: u32, cause: &str, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        inst.evidence_at = now;
        let (state, sslot) = (inst.state, inst.service);
        match state {
            InstanceState::Available
            | InstanceState::Uncertain
            | InstanceState::Installing
            | InstanceState::Restarting
            | InstanceState::Upgrading => {
                self.transition(slot, InstanceState::Unavailable, cause, now, out);
            }
            _ => self.mark_dirty(sslot),
        }
    }

    /// Evidence already heard about a primary that just turned uncertain.
    pub(crate) fn corroborate_from_followers(&mut self, primary: u32, now: i64, out: &mut Outputs) {
        let Some(p) = self.instances.get(primary) else { return };
        if p.role != Role::Primary {
            return;
        }
        let fresh = now - micros(self.config.uncertain_after);
        let witness = self.services.get(p.service).and_then(|s| {
            s.instances.iter().copied().find(|&i| {
                self.instances.get(i).is_some_and(|f| {
                    f.role == Role::Follower
                        && f.state == InstanceState::Available
                        && f.upstream_broken
                        && self.heard_at(f) >= fresh
                })
            })
        });
        if let Some(w) = witness {
            let wid = self.instances.get(w).map(|f| f.id);
            if let Some(wid) = wid {
                self.evidence(
                    primary,
                    &format!("follower {wid} reports its replication stream from it broke"),
                    now,
                    out,
                );
            }
        }
    }
}
