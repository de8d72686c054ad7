//! Draining a host (issue 11): its members are moved elsewhere one service
//! at a time, by the moves rollouts make (a follower: a new one on another
//! host, then the old one retired; a primary: a planned switchover onto a
//! follower on another host, then reconcile builds the missing follower
//! and retires the old primary). Nothing about a drain is stored but the
//! host's state: each look decides from the fleet as it is, so a control
//! plane restarted mid-drain goes on from where the fleet is.

use super::moves::Goal;
use super::*;
use drover_model::HostState;

impl Engine {
    /// Looks at the draining hosts when due (every `rollout_interval`
    /// while one still holds a member); called on ticks.
    pub(crate) fn drive_drains(&mut self, now: i64, out: &mut Outputs) {
        if self.rollouts.drains_at == 0 || now < self.rollouts.drains_at {
            return;
        }
        let draining: Vec<u16> = (0..self.hosts.list.len())
            .filter(|&h| self.hosts.list[h].rec.state == HostState::Draining)
            .filter_map(|h| u16::try_from(h).ok())
            .collect();
        let mut holding = false;
        for h in draining {
            holding |= self.drain_step(h, now, out);
        }
        let interval = crate::micros(self.config.rollout_interval).max(1);
        self.rollouts.drains_at = if holding { now + interval } else { 0 };
    }

    /// Asks for a look at the draining hosts on the next tick (a drain
    /// began, or the engine was restored with one draining).
    pub(crate) fn wake_drains(&mut self, now: i64) {
        if self.rollouts.drains_at == 0 || self.rollouts.drains_at > now {
            self.rollouts.drains_at = now.max(1);
        }
    }

    /// One step of draining host `h`: the first service (in slot order)
    /// with a member there that can move takes its next step; the others
    /// wait their turn. A service that cannot move (being deleted, needing
    /// a human) is passed over. False once no member is left on the host.
    fn drain_step(&mut self, h: u16, now: i64, out: &mut Outputs) -> bool {
        let mut services: Vec<u32> =
            self.instances.iter().filter(|(_, i)| i.host == h && i.state.is_member()).map(|(_, i)| i.service).collect();
        if services.is_empty() {
            return false;
        }
        services.sort_unstable();
        services.dedup();
        for sslot in services {
            let claimed = self.services.get(sslot).is_some_and(|s| self.rollouts.claimed.contains_key(&s.id));
            if claimed {
                // A rollout moves it (off this host too: placement avoids it).
                return true;
            }
            match self.step_move(Some(sslot), Goal::OffHost(h), now, now, out) {
                Step::Failed(_) | Step::Moved => continue,
                Step::Acted | Step::Wait => return true,
            }
        }
        true
    }
}
