//! Reconcile: one remedy at a time per service.

use crate::api::Outputs;
use crate::fleet::{Inst, Placement, Svc};
use crate::policy::{Candidate, EnginePolicy, Topology};
use crate::{micros, Engine};
use drover_model::EventKind;
use drover_model::{ActionKind, EventSubject, InstanceId, InstanceState, Role, ServiceState};
use rand::RngCore;

/// What reconcile decided for one service, before anything is done. A
/// service has at most one remedy open at a time, so this is one value.
// Short-lived, one per decision and never stored: the size of `Leave`'s
// `ActionKind` (a `Provision` carries a fork's `RestoreFrom`) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Remedy {
    /// Nothing a remedy could fix now.
    Nothing,
    /// A remedy is already open, or a human must look first.
    Wait,
    /// The mass-uncertainty brake holds the remedy against `target` until
    /// evidence newer than the brake arrives.
    Held { target: u32 },
    /// A safety invariant is at risk: stop and ask a human.
    InvariantBroken { what: &'static str },
    /// Fence the unavailable `member` (the writable primary, or a peer),
    /// then `then`.
    Fence { member: u32, then: AfterFence },
    /// Restart the unavailable primary: no follower can take over and it
    /// has not been restarted yet.
    Restart { primary: u32 },
    /// No writable primary: promote the most advanced healthy follower.
    Promote { follower: u32 },
    /// No primary and no follower to promote: build a primary in `zone`
    /// from the service's image.
    RebuildPrimary { zone: u16 },
    /// A follower is unavailable: retire it, a replacement follows.
    RetireFollower { follower: u32 },
    /// Fewer members of `role` (followers, or peers) than the plan asks
    /// for, or a wanted read slot (`read_slot` > 0) without its replica:
    /// build one in `zone`.
    Provision { role: Role, zone: u16, read_slot: u8 },
    /// Move a leaver one step out (retire, archive or terminate).
    Leave { instance: u32, kind: ActionKind, cause: &'static str },
    /// A deleted service whose instances are all gone: forget it.
    Forget,
}

/// What a fence of the primary makes way for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterFence {
    /// A healthy follower is promoted (failover).
    Promote,
    /// Restarting did not help and no follower can take over: rebuild.
    Rebuild,
    /// A failed peer is cut off; another is built in its place.
    Replace,
}

impl Remedy {
    /// Why, in words, for the action's and the events' `cause`.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            Remedy::Nothing | Remedy::Wait | Remedy::Held { .. } | Remedy::InvariantBroken { .. } => "",
            Remedy::Fence { then: AfterFence::Promote, .. } => "failover: fence the unavailable primary",
            Remedy::Fence { then: AfterFence::Rebuild, .. } => {
                "restart did not bring the primary back: fence it, then rebuild"
            }
            Remedy::Restart { .. } => "primary unavailable and no follower can take over: restart it",
            Remedy::Promote { .. } => "failover: promote the most advanced healthy follower",
            Remedy::RebuildPrimary { .. } => {
                "no primary and no follower to promote: rebuild the primary from its image"
            }
            Remedy::RetireFollower { .. } => "follower unavailable: retire it, a replacement follows",
            Remedy::Fence { then: AfterFence::Replace, .. } => "peer unavailable: fence it, a replacement follows",
            Remedy::Provision { read_slot: 1.., .. } => "a read replica's slot is empty: build one in it",
            Remedy::Provision { role: Role::Follower, .. } => "plan has fewer followers than it asks for: build one",
            Remedy::Provision { .. } => "plan has fewer peers than it asks for: build one",
            Remedy::Leave { cause, .. } => cause,
            Remedy::Forget => "every instance terminated",
        }
    }
}

impl Engine {
    pub(crate) fn mark_dirty(&mut self, sslot: u32) {
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(sslot);
            }
        }
    }

    pub(crate) fn reconcile_dirty(&mut self, now: i64, out: &mut Outputs) {
        while !self.dirty.is_empty() {
            let batch = std::mem::take(&mut self.dirty);
            for sslot in batch {
                if let Some(s) = self.services.get_mut(sslot) {
                    s.dirty = false;
                } else {
                    continue;
                }
                self.reconcile(sslot, now, out);
                self.derive_service_state(sslot, now, out);
            }
        }
    }

    /// The policy of service `sslot`'s engine: what differs between
    /// engines is asked here, never by testing the engine's kind.
    pub(crate) fn policy_of(&self, s: &Svc) -> &dyn EnginePolicy {
        self.config.policies.get(s.engine)
    }

    /// The writable primary of a service, if any.
    pub(crate) fn current_primary(&self, sslot: u32) -> Option<u32> {
        let s = self.services.get(sslot)?;
        s.instances.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.writable()))
    }

    /// The follower to promote: available, fresh, and the first in its
    /// engine's promotion order among those its policy lets be promoted.
    pub(crate) fn best_follower(&self, sslot: u32, now: i64) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let policy = self.policy_of(s);
        let fresh = now - micros(self.config.uncertain_after);
        let candidate =
            |x: &Inst| Candidate { id: x.id, position: x.reported.wal_position(), lag_bytes: x.reported.lag_bytes() };
        s.instances
            .iter()
            .copied()
            .filter_map(|i| self.instances.get(i).map(|x| (i, x)))
            .filter(|(_, x)| {
                x.role == Role::Follower
                    && x.read_slot == 0
                    && !x.fenced
                    && x.state == InstanceState::Available
                    && self.heard_at(x) >= fresh
                    && policy.can_promote(&candidate(x), &s.plan)
            })
            .max_by(|(_, a), (_, b)| policy.promotion_order(&candidate(a), &candidate(b)))
            .map(|(i, _)| i)
    }

    /// Whether the brake holds a remedy against `target`: under the brake,
    /// a remedy runs only on evidence that arrived after it engaged.
    pub(crate) fn brake_holds(&self, target: u32) -> bool {
        let Some(inst) = self.instances.get(target) else { return false };
        self.is_frozen(inst.zone) || self.braked_since(inst.zone).is_some_and(|since| inst.evidence_at < since)
    }

    /// Marks the service held by the brake (released with it) and asks for
    /// the evidence that would let the remedy against `target` go.
    fn hold_for_evidence(&mut self, sslot: u32, target: u32, now: i64, out: &mut Outputs) {
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.held {
                s.held = true;
                self.held.push(sslot);
            }
        }
        if self.instances.get(target).is_some_and(|i| i.state == InstanceState::Unavailable) {
            self.request_probe_unavailable(target, now, out);
        }
    }

    pub(crate) fn request_probe_unavailable(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(inst) = self.instances.get_mut(slot) else { return };
        if inst.probing || now < inst.next_probe_at {
            return;
        }
        inst.next_probe_at = now + micros(self.config.probe_interval);
        inst.probing = true;
        self.open_action(slot, ActionKind::Probe, "held by the brake: fresh evidence needed", false, now, out);
    }

    /// Decides what service `sslot` needs, then does it.
    pub(crate) fn reconcile(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        if self.archive_holds_deletion(sslot, now, out) {
            return;
        }
        let remedy = self.decide(sslot, now);
        self.apply(sslot, remedy, now, out);
    }

    /// What service `sslot` needs now, in the order that keeps it safe for
    /// its engine's topology. Pure: reads the fleet and changes nothing.
    pub(crate) fn decide(&self, sslot: u32, now: i64) -> Remedy {
        let Some(s) = self.services.get(sslot) else { return Remedy::Nothing };
        if s.open_remedies > 0 || s.needs_human {
            return Remedy::Wait;
        }
        if s.deleting {
            return self.decide_deleting(&s.instances);
        }
        match self.policy_of(s).topology() {
            Topology::PrimaryWithFollowers => self.decide_with_primary(s, sslot, now),
            Topology::PeerBrokers => self.decide_for_peers(s, sslot).unwrap_or_else(|| self.decide_for_leavers(sslot)),
        }
    }

    /// One writable primary first, then its followers, then the leavers.
    fn decide_with_primary(&self, s: &Svc, sslot: u32, now: i64) -> Remedy {
        let mut writable = s.instances.iter().copied().filter(|&i| self.instances.get(i).is_some_and(|x| x.writable()));
        let primary = writable.next();
        if writable.next().is_some() {
            return Remedy::InvariantBroken { what: "two writable primaries" };
        }
        let Some(p) = primary else { return self.decide_without_primary(sslot, now) };
        if let Some(remedy) = self.decide_for_primary(sslot, p, now) {
            return remedy;
        }
        self.decide_for_followers(sslot).unwrap_or_else(|| self.decide_for_leavers(sslot))
    }

    /// The writable primary `p` is unavailable: fail over to a follower,
    /// else restart it once, else fence it so it can be rebuilt.
    fn decide_for_primary(&self, sslot: u32, p: u32, now: i64) -> Option<Remedy> {
        let x = self.instances.get(p)?;
        if x.state != InstanceState::Unavailable {
            return None;
        }
        if self.brake_holds(p) {
            return Some(Remedy::Held { target: p });
        }
        let restarts = self.services.get(sslot).map_or(0, |s| self.policy_of(s).restarts_before_rebuild());
        Some(if self.best_follower(sslot, now).is_some() {
            Remedy::Fence { member: p, then: AfterFence::Promote }
        } else if x.restarts < restarts {
            Remedy::Restart { primary: p }
        } else {
            Remedy::Fence { member: p, then: AfterFence::Rebuild }
        })
    }

    /// No writable primary: every primary is fenced (or none exists).
    fn decide_without_primary(&self, sslot: u32, now: i64) -> Remedy {
        if let Some(follower) = self.best_follower(sslot, now) {
            // Checked in release builds too (it was a debug_assert): a
            // promotion beside a writable primary would make two. Not a
            // panic, which would take the control plane down with every
            // other service: the service stops and a human is asked.
            if self.current_primary(sslot).is_some() {
                return Remedy::InvariantBroken { what: "a promotion was chosen while a writable primary remains" };
            }
            return Remedy::Promote { follower };
        }
        let Some(s) = self.services.get(sslot) else { return Remedy::Nothing };
        let anchor =
            s.instances.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.role == Role::Primary));
        let zone = anchor
            .and_then(|a| self.instances.get(a).map(|x| x.zone))
            .or_else(|| s.zones.first().copied())
            .unwrap_or(0);
        Remedy::RebuildPrimary { zone }
    }

    /// A writable primary exists: replace an unavailable follower, build
    /// the followers the plan lacks, retire a read replica no longer
    /// wanted, fill an empty read slot.
    fn decide_for_followers(&self, sslot: u32) -> Option<Remedy> {
        let s = self.services.get(sslot)?;
        for &i in &s.instances {
            let Some(x) = self.instances.get(i) else { continue };
            if x.role == Role::Follower && x.state == InstanceState::Unavailable {
                if self.brake_holds(i) {
                    return Some(Remedy::Held { target: i });
                }
                return Some(Remedy::RetireFollower { follower: i });
            }
        }
        let followers = s
            .instances
            .iter()
            .filter(|&&i| {
                self.instances
                    .get(i)
                    .is_some_and(|x| x.role == Role::Follower && x.read_slot == 0 && x.state.is_member() && !x.fenced)
            })
            .count();
        if self.awaits_major_cut_over(sslot) {
            // An upgrade's move builds its one subscriber itself; no
            // follower of the new major can be built before its cut-over.
            return self.unwanted_read_replica(s).map(|instance| Remedy::Leave {
                instance,
                kind: ActionKind::Retire,
                cause: "read replica removed by its owner: retire it",
            });
        }
        if let Some(instance) = self.stray_of_another_major(sslot) {
            // Counted as a follower above, yet it can follow nothing here.
            return Some(Remedy::Leave {
                instance,
                kind: ActionKind::Retire,
                cause: "a member of another major than the primary (a move onto it ended): retire it",
            });
        }
        if followers < usize::from(self.policy_of(s).members(&s.plan).count(Role::Follower)) {
            return Some(Remedy::Provision {
                role: Role::Follower,
                zone: self.zone_for_new_member(sslot),
                read_slot: 0,
            });
        }
        if let Some(instance) = self.unwanted_read_replica(s) {
            return Some(Remedy::Leave {
                instance,
                kind: ActionKind::Retire,
                cause: "read replica removed by its owner: retire it",
            });
        }
        if let Some(read_slot) = self.vacant_read_slot(s) {
            return Some(Remedy::Provision { role: Role::Follower, zone: self.zone_for_new_member(sslot), read_slot });
        }
        None
    }

    /// Peers: an unavailable one is fenced (its replacement follows), then
    /// the plan's count of serving peers is kept.
    fn decide_for_peers(&self, s: &Svc, sslot: u32) -> Option<Remedy> {
        for &i in &s.instances {
            let Some(x) = self.instances.get(i) else { continue };
            if x.state == InstanceState::Unavailable && !x.fenced {
                if self.brake_holds(i) {
                    return Some(Remedy::Held { target: i });
                }
                return Some(Remedy::Fence { member: i, then: AfterFence::Replace });
            }
        }
        let planned = self.policy_of(s).members(&s.plan);
        planned.roles().find_map(|role| {
            let serving = s
                .instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.role == role && x.state.is_member() && !x.fenced))
                .count();
            (serving < usize::from(planned.count(role))).then(|| Remedy::Provision {
                role,
                zone: self.zone_for_new_member(sslot),
                read_slot: 0,
            })
        })
    }

    /// Leavers: fenced old primaries retire; retired archive; archived terminate.
    fn decide_for_leavers(&self, sslot: u32) -> Remedy {
        let Some(s) = self.services.get(sslot) else { return Remedy::Nothing };
        for &i in &s.instances {
            let Some(x) = self.instances.get(i) else { continue };
            let (kind, cause) = match x.state {
                s if s.is_member() && x.fenced && x.role == Role::Primary => {
                    (ActionKind::Retire, "replaced: retire the fenced old primary")
                }
                s if s.is_member() && x.fenced => (ActionKind::Retire, "replaced: retire the fenced member"),
                InstanceState::Retiring => (ActionKind::Retire, "finish retiring"),
                InstanceState::Retired => (ActionKind::Archive, "archive the retired instance"),
                InstanceState::Archived => (ActionKind::Terminate, "terminate the archived instance"),
                _ => continue,
            };
            return Remedy::Leave { instance: i, kind, cause };
        }
        Remedy::Nothing
    }

    /// A deleted service: every instance steps out, then the service goes.
    fn decide_deleting(&self, members: &[u32]) -> Remedy {
        for &i in members {
            let Some(x) = self.instances.get(i) else { continue };
            let kind = match x.state {
                InstanceState::Retiring => ActionKind::Retire,
                s if s.is_member() => ActionKind::Retire,
                InstanceState::Retired => ActionKind::Archive,
                InstanceState::Archived => ActionKind::Terminate,
                _ => continue,
            };
            return Remedy::Leave { instance: i, kind, cause: "service deleted by its owner" };
        }
        if members.iter().all(|&i| self.instances.get(i).is_none()) {
            Remedy::Forget
        } else {
            Remedy::Nothing
        }
    }

    /// Does what `decide` chose: opens the one remedy, holds the service
    /// for the brake, asks for a human, or forgets a deleted service.
    fn apply(&mut self, sslot: u32, remedy: Remedy, now: i64, out: &mut Outputs) {
        let cause = remedy.cause();
        match remedy {
            Remedy::Nothing | Remedy::Wait => {}
            Remedy::Held { target } => self.hold_for_evidence(sslot, target, now, out),
            Remedy::InvariantBroken { what } => self.invariant_broken(sslot, what, now, out),
            Remedy::Fence { member, .. } => {
                self.open_action(member, ActionKind::Fence { immediate: true }, cause, true, now, out);
            }
            Remedy::Restart { primary } => {
                self.open_action(primary, ActionKind::Restart, cause, true, now, out);
            }
            Remedy::Promote { follower } => {
                self.open_action(follower, ActionKind::Promote, cause, true, now, out);
            }
            Remedy::RebuildPrimary { zone } => {
                self.provision(sslot, Role::Primary, zone, cause, now, out);
            }
            Remedy::RetireFollower { follower } => {
                self.open_action(follower, ActionKind::Retire, cause, true, now, out);
            }
            Remedy::Provision { role, zone, read_slot } => {
                self.provision_member(sslot, role, read_slot, zone, cause, now, out);
            }
            Remedy::Leave { instance, kind, .. } => {
                self.open_action(instance, kind, cause, true, now, out);
            }
            Remedy::Forget => {
                self.set_service_state(sslot, ServiceState::Deleted, cause, now, out);
                if let Some(s) = self.services.remove(sslot) {
                    self.service_names.remove(&*s.name);
                    self.service_ids.remove(&s.id);
                }
            }
        }
    }

    pub(crate) fn provision_kind(&self, sslot: u32, role: Role, zone: u16, image: u32, host: u16) -> ActionKind {
        let s = self.services.get(sslot);
        ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
            role,
            zone: self.zones.name(zone).to_string(),
            image: self.images.id(image),
            service_name: s.map(|s| String::from(&*s.name)).unwrap_or_default(),
            sync: s.is_some_and(|s| s.plan.sync),
            settings: self.images.list.get(image as usize).map(|im| im.settings.clone()).unwrap_or_default(),
            engine: s.map(|s| s.engine).unwrap_or_default(),
            host: self.hosts.name(host).map(str::to_string),
            // A fork's primary restores the source's data until the fork
            // first has a working primary (however many attempts and
            // replacements that takes); one built later is not restored.
            restore_from: s
                .filter(|_| role == Role::Primary)
                .and_then(|s| s.forked_from.as_deref().filter(|f| !f.restored).cloned()),
            read_slot: None,
            version: self.images.list.get(image as usize).map(|im| im.version.clone()).unwrap_or_default(),
            storage_of: s
                .and_then(|s| self.kafka_of_storage(s))
                .and_then(|k| self.services.get(k))
                .map(|k| String::from(&*k.name)),
        }))
    }

    pub(crate) fn zone_for_new_member(&self, sslot: u32) -> u16 {
        let Some(s) = self.services.get(sslot) else { return 0 };
        let count = |z: u16| {
            s.instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.zone == z && x.state.is_member() && !x.fenced))
                .count()
        };
        // A zone where a member of this service just failed (a leaver:
        // fenced or retiring, still present) comes last: it may be the zone
        // that is down, and provisioning into it would fail and repeat.
        let leavers = |z: u16| {
            s.instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.zone == z && (!x.state.is_member() || x.fenced)))
                .count()
        };
        s.zones.iter().copied().min_by_key(|&z| (leavers(z) > 0, count(z), leavers(z))).unwrap_or(0)
    }

    pub(crate) fn provision(
        &mut self,
        sslot: u32,
        role: Role,
        zone: u16,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Option<u32> {
        self.provision_member(sslot, role, 0, zone, cause, now, out)
    }

    /// [`Engine::provision`] of a member of the plan (`read_slot` 0) or of
    /// the read replica of `read_slot`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn provision_member(
        &mut self,
        sslot: u32,
        role: Role,
        read_slot: u8,
        zone: u16,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let (image, provider, service_slot) = (s.image, s.provider, s.id.slot());
        let (zone, host) = match self.place(sslot, zone) {
            Ok(None) => (zone, crate::hosts::NO_HOST),
            Ok(Some(p)) => (p.zone, p.host),
            Err(()) => {
                self.wait_for_host(sslot, cause, now, out);
                return None;
            }
        };
        let id = InstanceId::new_at(now, self.rng.next_u64()).in_slot(service_slot);
        let inst = Inst { read_slot, ..Inst::new(id, sslot, Placement { image, zone, provider, host }, role, now) };
        let slot = self.add_instance(inst);
        out.changes.events.push(self.event(
            now,
            EventSubject::Instance,
            Some(sslot),
            Some(id),
            None,
            Some(InstanceState::Installing.as_str()),
            format!("{cause} ({role} in {})", self.zones.name(zone)),
        ));
        self.instance_changed(slot, out);
        self.schedule_instance(slot, now);
        let mut kind = self.provision_kind(sslot, role, zone, image, host);
        if let ActionKind::Provision(spec) = &mut kind {
            spec.read_slot = (read_slot > 0).then_some(u32::from(read_slot));
        }
        let remedy = true;
        self.open_action(slot, kind, cause, remedy, now, out);
        Some(slot)
    }

    /// The coarse service state, derived from its instances and remedies
    /// as its engine's topology reads them.
    pub(crate) fn derive_service_state(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.deleting {
            self.set_service_state(sslot, ServiceState::Deleting, "deleted by its owner", now, out);
            return;
        }
        let needs_human = s.needs_human;
        let (to, cause) = match self.policy_of(s).topology() {
            Topology::PrimaryWithFollowers => self.state_with_primary(s, sslot),
            Topology::PeerBrokers => self.state_of_peers(s),
        };
        // Only the `needs_human` arms yield `Unavailable` while the service
        // needs a human (the arms before them never yield `Unavailable`).
        let kind =
            if to == ServiceState::Unavailable && needs_human { EventKind::NeedsHuman } else { EventKind::Transition };
        self.set_service_state_as(sslot, to, &cause, kind, now, out);
    }

    /// A primary with followers: available when the primary and every
    /// planned follower are.
    fn state_with_primary(&self, s: &Svc, sslot: u32) -> (ServiceState, String) {
        let primary = self.current_primary(sslot).and_then(|p| self.instances.get(p));
        let planned = self.policy_of(s).members(&s.plan).count(Role::Follower);
        match primary {
            Some(p) if p.state == InstanceState::Available => {
                let available_followers = s
                    .instances
                    .iter()
                    .filter(|&&i| {
                        self.instances.get(i).is_some_and(|x| {
                            x.role == Role::Follower
                                && x.read_slot == 0
                                && x.state == InstanceState::Available
                                && !x.fenced
                        })
                    })
                    .count();
                if available_followers >= usize::from(planned) {
                    (ServiceState::Available, "primary and every planned follower available".into())
                } else {
                    (ServiceState::Degraded, format!("{available_followers} of {planned} followers available"))
                }
            }
            Some(p) if p.state == InstanceState::Installing && s.state == ServiceState::Provisioning => {
                (ServiceState::Provisioning, "building".into())
            }
            Some(p) if p.state == InstanceState::Uncertain => (ServiceState::Uncertain, "primary is uncertain".into()),
            _ if s.needs_human => (ServiceState::Unavailable, "a remedy failed: a human is needed".into()),
            _ if s.held => (ServiceState::Unavailable, "remedy held by the mass-uncertainty brake".into()),
            _ if s.open_remedies > 0 => (ServiceState::Recovering, "primary down: remedy under way".into()),
            Some(p) => (ServiceState::Unavailable, format!("primary {}", p.state)),
            None => (ServiceState::Unavailable, "no writable primary".into()),
        }
    }

    /// Peers: available when every planned peer serves, degraded while at
    /// least one does.
    fn state_of_peers(&self, s: &Svc) -> (ServiceState, String) {
        let planned = self.policy_of(s).members(&s.plan).total();
        let count = |state: InstanceState| {
            s.instances
                .iter()
                .filter(|&&i| self.instances.get(i).is_some_and(|x| x.state == state && !x.fenced))
                .count()
        };
        let available = count(InstanceState::Available);
        if available > 0 {
            return if available >= planned {
                (ServiceState::Available, "every planned peer available".into())
            } else {
                (ServiceState::Degraded, format!("{available} of {planned} peers available"))
            };
        }
        if s.state == ServiceState::Provisioning && count(InstanceState::Installing) > 0 {
            (ServiceState::Provisioning, "building".into())
        } else if count(InstanceState::Uncertain) > 0 {
            (ServiceState::Uncertain, "no peer available; some are uncertain".into())
        } else if s.needs_human {
            (ServiceState::Unavailable, "a remedy failed: a human is needed".into())
        } else if s.held {
            (ServiceState::Unavailable, "remedy held by the mass-uncertainty brake".into())
        } else if s.open_remedies > 0 {
            (ServiceState::Recovering, "no peer available: remedy under way".into())
        } else {
            (ServiceState::Unavailable, "no peer available".into())
        }
    }
}
