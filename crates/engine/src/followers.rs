//! Followers on demand (issue 17 item 2): read replicas an owner adds to
//! and removes from a service, besides its plan's followers.
//!
//! A service wants a set of read slots (1 to [`MAX_READ_REPLICAS`]); each
//! slot is kept filled by one asynchronous follower whose `read_slot` names
//! it. The provider gives each slot a stable read URL (the local provider: a
//! router database `app_read<slot>` pointing at the slot's replica), so a
//! replica rebuilt on another port or instance keeps its URL. Reconcile
//! heals read replicas like every other member (a lost one is retired and
//! rebuilt in the same slot) but never promotes one, never counts one as a
//! plan follower, and the provider never lists one among the synchronous
//! standbys: a read replica is asynchronous, so a slow one cannot hold
//! commits back (`policy::postgres::synchronous_standby_names`).

use crate::api::{CommandError, Outputs, Reply};
use crate::fleet::Svc;
use crate::Engine;
use drover_model::{EventSubject, InstanceId, Role, MAX_READ_REPLICAS};

/// The bit of read slot `slot` (1..=8) in `Svc::read_slots`.
fn bit(slot: u32) -> u16 {
    if (1..=MAX_READ_REPLICAS).contains(&slot) {
        1 << slot
    } else {
        0
    }
}

/// Read slots as stored (a sorted list) to the engine's bit set; slots out
/// of range are dropped.
pub(crate) fn slots_mask(slots: &[u32]) -> u16 {
    slots.iter().fold(0, |mask, &slot| mask | bit(slot))
}

/// The engine's bit set of read slots as a sorted list.
pub(crate) fn slots_list(mask: u16) -> Vec<u32> {
    (1..=MAX_READ_REPLICAS).filter(|&slot| mask & bit(slot) != 0).collect()
}

impl Engine {
    /// `POST /v1/services/{name}/followers`: `count` more read slots, the
    /// lowest free ones; reconcile builds their replicas one at a time.
    pub(crate) fn add_followers(
        &mut self,
        name: &str,
        count: u32,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if !self.policy_of(s).read_replicas() {
            return Err(CommandError::Conflict(format!(
                "{name:?} is a {} service: it has no read replicas on demand",
                s.engine
            )));
        }
        if self.on_agent_hosts(sslot) {
            // Its read URL would live in the agent's router, which no client
            // reaches by the service's URL: not built yet (docs/agent.md).
            return Err(CommandError::Conflict(format!(
                "{name:?} runs on agent hosts: read replicas on demand are not built for them yet (no read \
                 router beside the control plane)"
            )));
        }
        let have = s.read_slots.count_ones();
        if count == 0 {
            return Err(CommandError::Invalid("count must be at least 1".into()));
        }
        if u64::from(have) + u64::from(count) > u64::from(MAX_READ_REPLICAS) {
            return Err(CommandError::Invalid(format!(
                "{name:?} has {have} read replicas; {count} more would exceed the limit of {MAX_READ_REPLICAS}"
            )));
        }
        let mut mask = s.read_slots;
        let mut added = Vec::new();
        for slot in 1..=MAX_READ_REPLICAS {
            if added.len() as u32 == count {
                break;
            }
            if mask & bit(slot) == 0 {
                mask |= bit(slot);
                added.push(slot);
            }
        }
        if let Some(s) = self.services.get_mut(sslot) {
            s.read_slots = mask;
        }
        let cause = format!("read replicas added on demand (slots {added:?})");
        out.changes.events.push(self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause));
        self.service_changed(sslot, out);
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    /// `DELETE /v1/services/{name}/followers/{instance}`: frees the read slot of
    /// the read replica `instance`; reconcile retires it (after any remedy
    /// under way). The primary and the plan's followers are refused (409):
    /// the plan decides those.
    pub(crate) fn remove_follower(
        &mut self,
        name: &str,
        instance: InstanceId,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let x = s
            .instances
            .iter()
            .filter_map(|&i| self.instances.get(i))
            .find(|x| x.id == instance)
            .ok_or_else(|| CommandError::NotFound(format!("{instance} is not an instance of {name:?}")))?;
        // An instance of the service that is not a live member (still
        // provisioning, fenced, retiring) exists: a conflict, not a 404.
        if !x.state.is_member() || x.fenced {
            return Err(CommandError::Conflict(format!(
                "{instance} of {name:?} is not a live member ({}{}): only a serving read replica is removed this way",
                x.state,
                if x.fenced { ", fenced" } else { "" }
            )));
        }
        if x.read_slot == 0 {
            let what = match x.role {
                Role::Primary => "the primary",
                Role::Broker => "a broker (the plan's `brokers` decides those)",
                _ => "a follower of the plan",
            };
            return Err(CommandError::Conflict(format!(
                "{instance} is {what} of {name:?}: only read replicas added on demand are removed this way"
            )));
        }
        let slot = u32::from(x.read_slot);
        if s.read_slots & bit(slot) == 0 {
            return Err(CommandError::NotFound(format!("{instance} of {name:?} is being removed already")));
        }
        if let Some(s) = self.services.get_mut(sslot) {
            s.read_slots &= !bit(slot);
        }
        let cause = format!("read replica {instance} (slot {slot}) removed by its owner");
        out.changes.events.push(self.event(now, EventSubject::Service, Some(sslot), Some(instance), None, None, cause));
        self.service_changed(sslot, out);
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    /// A live read replica whose slot is no longer wanted: reconcile
    /// retires it.
    pub(crate) fn unwanted_read_replica(&self, s: &Svc) -> Option<u32> {
        s.instances.iter().copied().find(|&i| {
            self.instances.get(i).is_some_and(|x| {
                x.read_slot > 0 && x.state.is_member() && !x.fenced && s.read_slots & bit(u32::from(x.read_slot)) == 0
            })
        })
    }

    /// The lowest wanted read slot that no live member fills.
    pub(crate) fn vacant_read_slot(&self, s: &Svc) -> Option<u8> {
        if s.read_slots == 0 {
            return None;
        }
        let filled = s
            .instances
            .iter()
            .filter_map(|&i| self.instances.get(i))
            .filter(|x| x.read_slot > 0 && x.state.is_member() && !x.fenced)
            .fold(0u16, |mask, x| mask | bit(u32::from(x.read_slot)));
        (1..=MAX_READ_REPLICAS).find(|&slot| s.read_slots & bit(slot) != 0 && filled & bit(slot) == 0).map(|s| s as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_slots_round_trip_and_drop_what_is_out_of_range() {
        assert_eq!(slots_list(slots_mask(&[3, 1, 8])), vec![1, 3, 8]);
        assert_eq!(slots_list(slots_mask(&[0, 9, 2, 2])), vec![2]);
        assert_eq!(slots_mask(&[]), 0);
    }
}
