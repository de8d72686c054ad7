//! The agent's lease on its primaries, as a pure state machine: no clock,
//! no I/O; `now` is passed in and the caller carries out the [`Step`]s.
//!
//! - Every heartbeat batch the control plane acknowledged (HTTP 200)
//!   renews the lease ([`Lease::renewed`], with the time the batch was sent).
//! - When the last renewal is older than the TTL, every primary this agent
//!   runs must be fenced ([`Step::Fence`]) and stays fenced.
//! - Reaching the control plane again never un-fences by itself: while the
//!   lease is held, each fenced primary is a [`Step::Confirm`] (ask the
//!   control plane), and only an answer that this instance is still its
//!   service's writable primary, arriving while the lease is still held,
//!   yields [`Step::Unfence`]. Meanwhile the engine may have promoted a
//!   follower: un-fencing on reachability alone would make two primaries.

use drover_model::InstanceId;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a primary keeps accepting writes without an acknowledged
/// heartbeat. Ten 1-second heartbeat intervals: a few lost batches, a slow
/// engine commit or a quick control-plane restart do not fence a healthy
/// primary, while it stays far below the engine's presumed-dead silence
/// (300 s by default) so a primary cut off from the control plane has
/// fenced itself long before the engine may fail it over.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The lease of an agent with a host of its own (`--host`), whose servers
/// the control plane fails over: once its agent has been silent this long
/// (and a margin), a host's Fence is counted done without it, so a dead or
/// frozen host's failover takes about this long, not `DEFAULT_LEASE_TTL`.
/// Four heartbeat intervals (250 ms): a lost batch or a slow answer is
/// survived, two seconds of a control plane out of reach are not (the
/// primaries are fenced, and un-fenced once it confirms them).
pub const HOST_LEASE_TTL: Duration = Duration::from_secs(1);

/// What the agent must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The lease expired: stop this primary's writes now.
    Fence(InstanceId),
    /// Fenced by us, lease held again: ask the control plane whether this
    /// instance is still its service's writable primary.
    Confirm(InstanceId),
    /// The control plane confirmed it: accept writes again.
    Unfence(InstanceId),
}

/// The control plane's answer about one fenced primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `writable: true` and not fenced: still the service's primary.
    WritablePrimary,
    /// Anything else: demoted, fenced, retired, or unknown to it.
    NotWritablePrimary,
}

/// One agent's lease; the instances are those it fenced and not yet
/// un-fenced.
#[derive(Clone, Debug)]
pub struct Lease {
    ttl: Duration,
    renewed_at: Instant,
    fenced: BTreeSet<InstanceId>,
}

impl Lease {
    /// A new agent counts its start as a renewal: it gets one TTL to reach
    /// the control plane before fencing.
    pub fn new(ttl: Duration, now: Instant) -> Lease {
        Lease { ttl, renewed_at: now, fenced: BTreeSet::new() }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A heartbeat batch sent at `sent_at` was acknowledged. Never moves
    /// the renewal back (a slow answer to an older batch).
    pub fn renewed(&mut self, sent_at: Instant) {
        self.renewed_at = self.renewed_at.max(sent_at);
    }

    /// Whether the last renewal is older than the TTL.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed_at) > self.ttl
    }

    /// Whether this agent fenced `instance` and has not un-fenced it.
    pub fn is_fenced(&self, instance: InstanceId) -> bool {
        self.fenced.contains(&instance)
    }

    pub fn fenced(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.fenced.iter().copied()
    }

    /// The steps for this round, given the primaries this host runs and
    /// whether each was seen accepting writes. Expired: fence every primary
    /// (again if it is writable again, e.g. someone reset the setting; an
    /// already fenced, read-only one needs nothing). Held: confirm each
    /// fenced primary with the control plane.
    pub fn plan(&self, now: Instant, primaries: &[(InstanceId, bool)]) -> Vec<Step> {
        let expired = self.expired(now);
        let mut steps: Vec<Step> = primaries
            .iter()
            .filter_map(|&(id, writable)| match (expired, self.is_fenced(id)) {
                (true, false) => Some(Step::Fence(id)),
                (true, true) if writable => Some(Step::Fence(id)),
                (true, true) => None,
                (false, true) => Some(Step::Confirm(id)),
                (false, false) => None,
            })
            .collect();
        steps.sort();
        steps.dedup();
        steps
    }

    /// The fence of `instance` succeeded (or a primary was found already
    /// read-only at start: it is held fenced until confirmed).
    pub fn fenced_now(&mut self, instance: InstanceId) {
        self.fenced.insert(instance);
    }

    /// The control plane's answer about a fenced primary. An answer that
    /// arrives after the lease expired again is not trusted (it may predate
    /// a failover the agent has not heard of): nothing changes.
    pub fn answer(&mut self, instance: InstanceId, answer: Answer, now: Instant) -> Option<Step> {
        if !self.is_fenced(instance) || self.expired(now) {
            return None;
        }
        match answer {
            Answer::WritablePrimary => Some(Step::Unfence(instance)),
            Answer::NotWritablePrimary => None,
        }
    }

    /// The un-fence of `instance` succeeded.
    pub fn unfenced(&mut self, instance: InstanceId) {
        self.fenced.remove(&instance);
    }

    /// `instance` is no longer a primary on this host (demoted, retired,
    /// gone): nothing of ours to un-fence any more.
    pub fn forget(&mut self, instance: InstanceId) {
        self.fenced.remove(&instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn id(n: u64) -> InstanceId {
        InstanceId::new_at(1_000_000, n)
    }

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_ttl_is_ten_heartbeats() {
        assert_eq!(DEFAULT_LEASE_TTL, Duration::from_secs(10));
    }

    #[test]
    fn a_fresh_agent_gets_one_ttl_to_reach_the_control_plane() {
        let t0 = Instant::now();
        let lease = Lease::new(TTL, t0);
        let primaries = [(id(1), true)];
        assert!(!lease.expired(at(t0, 10.0)));
        assert!(lease.plan(at(t0, 10.0), &primaries).is_empty());
        assert!(lease.expired(at(t0, 10.001)));
        assert_eq!(lease.plan(at(t0, 10.001), &primaries), vec![Step::Fence(id(1))]);
    }

    #[test]
    fn every_acknowledged_batch_renews() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        let primaries = [(id(1), true)];
        for second in 1..=60 {
            let now = at(t0, second as f64);
            lease.renewed(now);
            assert!(lease.plan(now, &primaries).is_empty(), "second {second}");
        }
        assert!(!lease.expired(at(t0, 70.0)));
        assert!(lease.expired(at(t0, 70.5)));
    }

    #[test]
    fn a_late_answer_to_an_old_batch_never_moves_the_renewal_back() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.renewed(at(t0, 8.0));
        lease.renewed(at(t0, 3.0));
        assert!(!lease.expired(at(t0, 17.0)));
    }

    #[test]
    fn expiry_fences_every_primary_and_no_follower() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        // Only primaries are passed in; two services on one host.
        let primaries = [(id(2), true), (id(1), true)];
        let now = at(t0, 11.0);
        assert_eq!(lease.plan(now, &primaries), vec![Step::Fence(id(1)), Step::Fence(id(2))]);
        lease.fenced_now(id(1));
        // The fence of 2 failed (server busy): asked again next round.
        assert_eq!(lease.plan(at(t0, 12.0), &[(id(1), false), (id(2), true)]), vec![Step::Fence(id(2))]);
        lease.fenced_now(id(2));
        assert!(lease.plan(at(t0, 13.0), &[(id(1), false), (id(2), false)]).is_empty());
        assert!(lease.plan(at(t0, 13.0), &[]).is_empty());
    }

    #[test]
    fn a_fenced_primary_seen_writable_again_while_expired_is_fenced_again() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        assert_eq!(lease.plan(at(t0, 20.0), &[(id(1), true)]), vec![Step::Fence(id(1))]);
    }

    #[test]
    fn renewal_alone_never_unfences() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        lease.renewed(at(t0, 30.0));
        let steps = lease.plan(at(t0, 30.0), &[(id(1), false)]);
        assert_eq!(steps, vec![Step::Confirm(id(1))]);
        assert!(!steps.iter().any(|s| matches!(s, Step::Unfence(_))));
        assert!(lease.is_fenced(id(1)));
        // Many renewals later, still only questions.
        for second in 31..100 {
            lease.renewed(at(t0, second as f64));
            assert_eq!(lease.plan(at(t0, second as f64), &[(id(1), false)]), vec![Step::Confirm(id(1))]);
        }
    }

    #[test]
    fn confirmed_as_writable_primary_unfences() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        lease.renewed(at(t0, 30.0));
        assert_eq!(lease.answer(id(1), Answer::WritablePrimary, at(t0, 30.1)), Some(Step::Unfence(id(1))));
        // Still fenced until the un-fence itself succeeded.
        assert!(lease.is_fenced(id(1)));
        lease.unfenced(id(1));
        assert!(!lease.is_fenced(id(1)));
        assert!(lease.plan(at(t0, 30.2), &[(id(1), true)]).is_empty());
    }

    #[test]
    fn refused_stays_fenced() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        lease.renewed(at(t0, 30.0));
        assert_eq!(lease.answer(id(1), Answer::NotWritablePrimary, at(t0, 30.1)), None);
        assert!(lease.is_fenced(id(1)));
        assert_eq!(lease.plan(at(t0, 31.0), &[(id(1), false)]), vec![Step::Confirm(id(1))]);
    }

    #[test]
    fn an_answer_arriving_after_the_lease_expired_again_is_not_trusted() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        lease.renewed(at(t0, 30.0));
        assert_eq!(lease.answer(id(1), Answer::WritablePrimary, at(t0, 40.5)), None);
        assert!(lease.is_fenced(id(1)));
    }

    #[test]
    fn answers_about_instances_we_did_not_fence_change_nothing() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        assert_eq!(lease.answer(id(7), Answer::WritablePrimary, at(t0, 1.0)), None);
        assert!(!lease.is_fenced(id(7)));
    }

    #[test]
    fn flapping_control_plane_never_unfences_without_confirmation() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        let p = id(1);
        let mut writable = true;
        let mut unfences = 0;
        // Reachable for 3 s, unreachable for 12 s, over and over; the
        // control plane never confirms.
        for tick in 0..600 {
            let now = at(t0, tick as f64 * 0.25);
            let reachable = (tick / 4) % 15 < 3;
            if reachable {
                lease.renewed(now);
            }
            for step in lease.plan(now, &[(p, writable)]) {
                match step {
                    Step::Fence(i) => {
                        writable = false;
                        lease.fenced_now(i);
                    }
                    Step::Confirm(i) => {
                        if let Some(Step::Unfence(_)) = lease.answer(i, Answer::NotWritablePrimary, now) {
                            unfences += 1;
                        }
                    }
                    Step::Unfence(_) => unfences += 1,
                }
            }
            if tick > 60 {
                assert!(!writable, "tick {tick}: un-fenced without confirmation");
            }
        }
        assert_eq!(unfences, 0);
        assert!(lease.is_fenced(p));
    }

    #[test]
    fn flapping_then_confirmed_unfences_once_and_fences_again_on_the_next_expiry() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        let p = id(1);
        // Unreachable from the start: fenced after the TTL.
        assert_eq!(lease.plan(at(t0, 11.0), &[(p, true)]), vec![Step::Fence(p)]);
        lease.fenced_now(p);
        // Reachable again, confirmed: un-fenced.
        lease.renewed(at(t0, 15.0));
        assert_eq!(lease.plan(at(t0, 15.0), &[(p, false)]), vec![Step::Confirm(p)]);
        assert_eq!(lease.answer(p, Answer::WritablePrimary, at(t0, 15.1)), Some(Step::Unfence(p)));
        lease.unfenced(p);
        // Unreachable again: fenced again after another TTL, not before.
        assert!(lease.plan(at(t0, 25.0), &[(p, true)]).is_empty());
        assert_eq!(lease.plan(at(t0, 25.2), &[(p, true)]), vec![Step::Fence(p)]);
    }

    #[test]
    fn a_primary_that_went_away_is_forgotten() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL, t0);
        lease.fenced_now(id(1));
        lease.forget(id(1));
        assert!(!lease.is_fenced(id(1)));
        assert!(lease.plan(at(t0, 1.0), &[]).is_empty());
    }

    #[test]
    fn every_state_and_observation_combination() {
        // (expired, fenced by us, seen writable) -> step
        let t0 = Instant::now();
        for expired in [false, true] {
            for fenced in [false, true] {
                for writable in [false, true] {
                    let mut lease = Lease::new(TTL, t0);
                    if fenced {
                        lease.fenced_now(id(1));
                    }
                    let now = if expired { at(t0, 11.0) } else { at(t0, 1.0) };
                    let steps = lease.plan(now, &[(id(1), writable)]);
                    let expected = match (expired, fenced, writable) {
                        (true, false, _) => vec![Step::Fence(id(1))],
                        (true, true, true) => vec![Step::Fence(id(1))],
                        (true, true, false) => vec![],
                        (false, true, _) => vec![Step::Confirm(id(1))],
                        (false, false, _) => vec![],
                    };
                    assert_eq!(steps, expected, "expired={expired} fenced={fenced} writable={writable}");
                }
            }
        }
    }
}
