//! Placement: which host a new member of a service goes to. Pure: it reads
//! the hosts and the service's members and returns a choice; the callers
//! (`provision`, a new service's first members) record it on the instance
//! and put it on the Provision action.
//!
//! The rules, in order:
//! - only a `ready` host takes a new member (cordoned, draining, uncertain
//!   and down hosts get none), and only while it has room (`capacity`
//!   counts instances not yet terminated);
//! - never two members of one service on the same host (the built-in host
//!   excepted: it stands for one machine running every zone, see
//!   `HostRecord::builtin`);
//! - the member goes to the first zone of `zones` (the plan's zones, most
//!   wanted first, as `zone_order` ranks them) that has such a host; a host
//!   outside the plan's zones is never used;
//! - within a zone, the host with the most room left, then the earliest
//!   registered: deterministic, and it spreads load;
//! - the built-in host only when no other host fits; it takes the most
//!   wanted zone;
//! - a service's members are all on the built-in host or all on agent
//!   hosts, never some of each: the built-in host's members replicate and
//!   are routed through the local provider's own registry and router, the
//!   agent hosts' through the agents and the routers beside the control
//!   plane, and the two do not reach each other.

use crate::hosts::NO_HOST;
use crate::Engine;
use drover_model::HostState;

/// What placement reads of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub zone: u16,
    pub state: HostState,
    pub capacity: u32,
    pub used: u32,
    pub builtin: bool,
}

/// Where a new member goes: its zone and host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub zone: u16,
    pub host: u16,
}

/// Chooses a host among `hosts` (indexed by host number) for a new member
/// of a service whose members already sit on `taken`, in the first zone of
/// `zones` that has room. None: no host may take it.
pub(crate) fn choose_host(hosts: &[Candidate], taken: &[u16], zones: &[u16]) -> Option<Placed> {
    let on = |builtin: bool| taken.iter().any(|&h| hosts.get(usize::from(h)).is_some_and(|c| c.builtin == builtin));
    let (on_builtin, on_agents) = (on(true), on(false));
    let fits = |h: usize, c: &Candidate| {
        c.state.takes_new_members()
            && c.used < c.capacity
            && (c.builtin || !taken.contains(&(h as u16)))
            && if c.builtin { !on_agents } else { !on_builtin }
    };
    for &zone in zones {
        let best = hosts
            .iter()
            .enumerate()
            .filter(|&(h, c)| !c.builtin && c.zone == zone && fits(h, c))
            // Most room left, then the earliest registered (lowest index).
            .min_by_key(|&(h, c)| (std::cmp::Reverse(c.capacity - c.used), h));
        if let Some((h, _)) = best {
            return Some(Placed { zone, host: h as u16 });
        }
    }
    let zone = *zones.first()?;
    hosts.iter().enumerate().find(|&(h, c)| c.builtin && fits(h, c)).map(|(h, _)| Placed { zone, host: h as u16 })
}

/// Places `members` members of a new service one after another, member `k`
/// wanted in `zones[k % len]`; Err: how many could be placed.
fn place_members(mut hosts: Vec<Candidate>, zones: &[u16], members: usize) -> Result<Vec<Placed>, usize> {
    let mut taken = Vec::new();
    let mut placed = Vec::with_capacity(members);
    for k in 0..members {
        let wanted: Vec<u16> = zones.iter().cycle().skip(k % zones.len()).take(zones.len()).copied().collect();
        let p = choose_host(&hosts, &taken, &wanted).ok_or(k)?;
        if let Some(c) = hosts.get_mut(usize::from(p.host)) {
            c.used += 1;
        }
        taken.push(p.host);
        placed.push(p);
    }
    Ok(placed)
}

impl Engine {
    /// Where a new member of service `sslot` goes, preferring `zone` (what
    /// the zone spread asked for) then the service's other zones in the
    /// order `zone_order` ranks them. `Ok(None)`: no host is registered at
    /// all (the simulator), so nothing is placed and the member keeps
    /// `zone`. `Err(())`: hosts exist but none may take it now.
    pub(crate) fn place(&self, sslot: u32, zone: u16) -> Result<Option<Placed>, ()> {
        let Some(s) = self.services.get(sslot) else { return Err(()) };
        if self.hosts.is_empty() {
            // A provider that runs only on hosts waits for one.
            return if self.hosted(self.providers.name(s.provider)) { Err(()) } else { Ok(None) };
        }
        let taken: Vec<u16> = s
            .instances
            .iter()
            .filter_map(|&i| self.instances.get(i))
            .map(|x| x.host)
            .filter(|&h| h != NO_HOST)
            .collect();
        let mut zones = vec![zone];
        zones.extend(self.zone_order(sslot).into_iter().filter(|&z| z != zone));
        choose_host(&self.candidates(), &taken, &zones).map(Some).ok_or(())
    }

    /// Whether `provider`'s instances run only on a registered host
    /// (`Config::hosted_providers`).
    pub(crate) fn hosted(&self, provider: &str) -> bool {
        self.config.hosted_providers.iter().any(|p| p == provider)
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.hosts
            .list
            .iter()
            .map(|h| Candidate {
                zone: h.zone,
                state: h.rec.state,
                // This engine's part of the host (`Share`).
                capacity: self.config.share.of_capacity(h.rec.capacity),
                used: h.used,
                builtin: h.rec.builtin,
            })
            .collect()
    }

    /// Placements of a new service's `members` first members, member `k`
    /// wanted in `zones[k % len]` as before hosts, or why they do not fit.
    /// Empty where no host is registered (nothing is placed).
    pub(crate) fn place_new_service(
        &self,
        provider: &str,
        zones: &[u16],
        members: usize,
    ) -> Result<Vec<Placed>, String> {
        if self.hosts.is_empty() && self.hosted(provider) {
            return Err(format!(
                "no host is registered yet: a {provider:?} service runs on agent hosts (`drover agent`), and this \
                 control plane has no host of its own; register a host first"
            ));
        }
        if self.hosts.is_empty() || zones.is_empty() {
            return Ok(Vec::new());
        }
        let hosts = self.candidates();
        place_members(hosts.clone(), zones, members).or_else(|agents| {
            // Agent hosts could not take them all: all on the built-in
            // host, if it can (members are never split between the two).
            let builtin_only = hosts
                .into_iter()
                .map(|c| if c.builtin { c } else { Candidate { state: HostState::Cordoned, ..c } })
                .collect();
            place_members(builtin_only, zones, members).map_err(|_| {
                format!(
                    "no room for this service: {members} members need {members} ready hosts with room in its zones \
                     (one member per host), and only {agents} could be placed; register hosts or free room first"
                )
            })
        })
    }

    /// The service's zones, most wanted first for a new member: zones
    /// without a leaver of it (a member that just failed there: that zone
    /// may be down) before the others, then the fewest members.
    pub(crate) fn zone_order(&self, sslot: u32) -> Vec<u16> {
        let Some(s) = self.services.get(sslot) else { return Vec::new() };
        let mut count: Vec<(usize, usize)> = Vec::with_capacity(s.zones.len());
        let mut zones = s.zones.clone();
        for &z in &zones {
            let (mut members, mut leavers) = (0, 0);
            for x in s.instances.iter().filter_map(|&i| self.instances.get(i)).filter(|x| x.zone == z) {
                if x.state.is_member() && !x.fenced {
                    members += 1;
                } else {
                    leavers += 1;
                }
            }
            count.push((members, leavers));
        }
        let mut order: Vec<usize> = (0..zones.len()).collect();
        order.sort_by_key(|&k| (count[k].1 > 0, count[k].0, count[k].1));
        zones = order.into_iter().map(|k| zones[k]).collect();
        zones.into_vec()
    }

    /// No host may take a new member of `sslot` now: say so once, and try
    /// again when a host registers or frees room.
    pub(crate) fn wait_for_host(&mut self, sslot: u32, cause: &str, now: i64, out: &mut crate::Outputs) {
        if self.hosts.waiting.contains(&sslot) {
            return;
        }
        self.hosts.waiting.push(sslot);
        out.changes.events.push(self.event(
            now,
            drover_model::EventSubject::Service,
            Some(sslot),
            None,
            None,
            None,
            format!("{cause}: no ready host with room in the service's zones; waiting for one"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(zone: u16, capacity: u32, used: u32) -> Candidate {
        Candidate { zone, state: HostState::Ready, capacity, used, builtin: false }
    }

    #[test]
    fn the_wanted_zone_first_then_the_next_with_room() {
        let hosts = [host(0, 2, 2), host(1, 4, 1), host(1, 4, 0), host(2, 4, 0)];
        // Zone 0's only host is full: zone 1, the host with the most room.
        assert_eq!(choose_host(&hosts, &[], &[0, 1, 2]), Some(Placed { zone: 1, host: 2 }));
        // That host already has a member of the service: the other one.
        assert_eq!(choose_host(&hosts, &[2], &[0, 1, 2]), Some(Placed { zone: 1, host: 1 }));
        assert_eq!(choose_host(&hosts, &[1, 2], &[0, 1, 2]), Some(Placed { zone: 2, host: 3 }));
        assert_eq!(choose_host(&hosts, &[1, 2, 3], &[0, 1, 2]), None);
        // A zone the plan does not name is never used.
        assert_eq!(choose_host(&hosts, &[], &[0]), None);
    }

    #[test]
    fn only_ready_hosts_take_new_members() {
        for state in [HostState::Cordoned, HostState::Draining, HostState::Uncertain, HostState::Down] {
            let hosts = [Candidate { state, ..host(0, 8, 0) }, host(1, 8, 0)];
            assert_eq!(choose_host(&hosts, &[], &[0, 1]), Some(Placed { zone: 1, host: 1 }), "{state}");
        }
    }

    #[test]
    fn the_builtin_host_comes_last_takes_any_zone_and_several_members() {
        let builtin = Candidate { builtin: true, ..host(9, 1000, 3) };
        let hosts = [builtin, host(1, 8, 0)];
        assert_eq!(choose_host(&hosts, &[], &[0, 1]), Some(Placed { zone: 1, host: 1 }));
        assert_eq!(choose_host(&hosts, &[0], &[0, 1]), Some(Placed { zone: 0, host: 0 }));
        let cordoned = Candidate { state: HostState::Cordoned, ..builtin };
        assert_eq!(choose_host(&[cordoned], &[], &[0]), None);
    }

    #[test]
    fn a_service_is_never_split_between_the_builtin_host_and_agent_hosts() {
        let builtin = Candidate { builtin: true, ..host(9, 1000, 3) };
        let hosts = [builtin, host(1, 8, 0), host(2, 8, 0)];
        // A member on an agent host: the next goes to another agent host,
        // or nowhere, never to the built-in host.
        assert_eq!(choose_host(&hosts, &[1], &[1, 2]), Some(Placed { zone: 2, host: 2 }));
        assert_eq!(choose_host(&hosts, &[1, 2], &[1, 2]), None);
        // A member on the built-in host: the next stays there, though
        // agent hosts have room.
        assert_eq!(choose_host(&hosts, &[0], &[1, 2]), Some(Placed { zone: 1, host: 0 }));
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        (0u16..4, 0usize..5, 1u32..4, 0u32..4, prop::bool::weighted(0.1)).prop_map(
            |(zone, state, capacity, used, builtin)| Candidate {
                zone,
                state: [
                    HostState::Ready,
                    HostState::Cordoned,
                    HostState::Draining,
                    HostState::Uncertain,
                    HostState::Down,
                ][state],
                capacity,
                used: used.min(capacity),
                builtin,
            },
        )
    }

    proptest! {
        /// Placing the members of one service one after another: each goes
        /// to a ready host with room in one of the plan's zones, never
        /// beside another member (but on the built-in host), spread over
        /// the zones (a zone gets a second member only when the wanted one
        /// had no host), and a refusal means no host could take it.
        #[test]
        fn placements_keep_the_invariants(
            mut hosts in prop::collection::vec(candidate(), 0..12),
            zones in prop::collection::vec(0u16..4, 1..4),
            members in 1usize..6,
        ) {
            let mut taken: Vec<u16> = Vec::new();
            for k in 0..members {
                let wanted: Vec<u16> = zones.iter().cycle().skip(k % zones.len()).take(zones.len()).copied().collect();
                // Never some members on the built-in host and some on agents.
                let on_builtin = taken.first().map(|&h| hosts[usize::from(h)].builtin);
                let allowed = |o: &Candidate| on_builtin.is_none_or(|b| b == o.builtin);
                match choose_host(&hosts, &taken, &wanted) {
                    Some(p) => {
                        let c = hosts[usize::from(p.host)];
                        prop_assert!(allowed(&c), "a service's members are all built-in or all on agents");
                        prop_assert_eq!(c.state, HostState::Ready);
                        prop_assert!(c.used < c.capacity);
                        prop_assert!(zones.contains(&p.zone));
                        if !c.builtin {
                            prop_assert_eq!(c.zone, p.zone);
                            prop_assert!(!taken.contains(&p.host));
                            // No non-builtin host in a more wanted zone fitted.
                            let idx = wanted.iter().position(|&z| z == p.zone).unwrap();
                            for (h, o) in hosts.iter().enumerate() {
                                let fits = o.state == HostState::Ready && o.used < o.capacity
                                    && !o.builtin && !taken.contains(&(h as u16));
                                prop_assert!(!(fits && wanted[..idx].contains(&o.zone)));
                            }
                        } else {
                            // The built-in host only when no other host fits.
                            prop_assert!(on_builtin.is_some() || !hosts.iter().enumerate().any(|(h, o)| !o.builtin
                                && o.state == HostState::Ready && o.used < o.capacity
                                && !taken.contains(&(h as u16)) && wanted.contains(&o.zone)));
                        }
                        hosts[usize::from(p.host)].used += 1;
                        taken.push(p.host);
                    }
                    None => {
                        prop_assert!(!hosts.iter().enumerate().any(|(h, o)| o.state == HostState::Ready
                            && o.used < o.capacity && allowed(o)
                            && (o.builtin || (!taken.contains(&(h as u16)) && wanted.contains(&o.zone)))));
                    }
                }
            }
        }
    }
}
