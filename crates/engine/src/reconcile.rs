//! Reconcile: one remedy at a time per service.

use crate::api::Outputs;
use crate::fleet::new_instance;
use crate::{micros, Engine, MAX_RESTARTS};
use drover_model::{ActionKind, EventSubject, InstanceId, InstanceState, Role, ServiceState};
use rand::RngCore;

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

    /// The writable primary of a service, if any.
    pub(crate) fn current_primary(&self, sslot: u32) -> Option<u32> {
        let s = self.services.get(sslot)?;
        s.instances.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.writable()))
    }

    /// The follower to promote: available, fresh, within the lag bound,
    /// most advanced.
    pub(crate) fn best_follower(&self, sslot: u32, now: i64) -> Option<u32> {
        let s = self.services.get(sslot)?;
        let fresh = now - micros(self.config.uncertain_after);
        s.instances
            .iter()
            .copied()
            .filter_map(|i| self.instances.get(i).map(|x| (i, x)))
            .filter(|(_, x)| {
                x.role == Role::Follower
                    && !x.fenced
                    && x.state == InstanceState::Available
                    && self.heard_at(x) >= fresh
                    && x.lag_bytes.unwrap_or(0) <= s.plan.max_failover_lag_bytes
            })
            .max_by(|(_, a), (_, b)| {
                a.wal_position
                    .unwrap_or(0)
                    .cmp(&b.wal_position.unwrap_or(0))
                    .then(b.lag_bytes.unwrap_or(0).cmp(&a.lag_bytes.unwrap_or(0)))
                    .then(b.id.cmp(&a.id))
            })
            .map(|(i, _)| i)
    }

    /// Under the brake, a remedy against `target` runs only on evidence
    /// that arrived after the brake engaged.
    pub(crate) fn brake_allows(&mut self, sslot: u32, target: u32, now: i64, out: &mut Outputs) -> bool {
        let Some(inst) = self.instances.get(target) else { return true };
        let Some(since) = self.braked_since(inst.zone) else { return true };
        if inst.evidence_at >= since {
            return true;
        }
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.held {
                s.held = true;
                self.held.push(sslot);
            }
        }
        // Ask for the evidence that would let it go.
        if inst.state == InstanceState::Unavailable {
            self.request_probe_unavailable(target, now, out);
        }
        false
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

    pub(crate) fn reconcile(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.open_remedies > 0 || s.needs_human {
            return;
        }
        let members: Vec<u32> = s.instances.clone();
        if s.deleting {
            self.reconcile_deleting(sslot, &members, now, out);
            return;
        }
        let writable: Vec<u32> =
            members.iter().copied().filter(|&i| self.instances.get(i).is_some_and(|x| x.writable())).collect();
        if writable.len() > 1 {
            self.invariant_broken(sslot, "two writable primaries", now, out);
            return;
        }
        if let Some(&p) = writable.first() {
            let pstate = self.instances.get(p).map(|x| x.state);
            if pstate == Some(InstanceState::Unavailable) {
                if !self.brake_allows(sslot, p, now, out) {
                    return;
                }
                let restarts = self.instances.get(p).map(|x| x.restarts).unwrap_or(0);
                if self.best_follower(sslot, now).is_some() {
                    let fence = ActionKind::Fence { immediate: true };
                    self.open_action(p, fence, "failover: fence the unavailable primary", true, now, out);
                } else if restarts < MAX_RESTARTS {
                    self.open_action(
                        p,
                        ActionKind::Restart,
                        "primary unavailable and no follower can take over: restart it",
                        true,
                        now,
                        out,
                    );
                } else {
                    self.open_action(
                        p,
                        ActionKind::Fence { immediate: true },
                        "restart did not bring the primary back: fence it, then rebuild",
                        true,
                        now,
                        out,
                    );
                }
                return;
            }
        } else {
            // No writable primary: every primary is fenced (or none exists).
            if let Some(f) = self.best_follower(sslot, now) {
                debug_assert!(self.current_primary(sslot).is_none());
                self.open_action(
                    f,
                    ActionKind::Promote,
                    "failover: promote the most advanced healthy follower",
                    true,
                    now,
                    out,
                );
                return;
            }
            let anchor =
                members.iter().copied().find(|&i| self.instances.get(i).is_some_and(|x| x.role == Role::Primary));
            let zone = anchor
                .and_then(|a| self.instances.get(a).map(|x| x.zone))
                .or_else(|| self.services.get(sslot).and_then(|s| s.zones.first().copied()))
                .unwrap_or(0);
            self.provision(
                sslot,
                Role::Primary,
                zone,
                "no primary and no follower to promote: rebuild the primary from its image",
                now,
                out,
            );
            return;
        }
        // A writable primary exists. Followers next.
        let plan_followers = self.services.get(sslot).map(|s| s.plan.followers).unwrap_or(0);
        for &i in &members {
            let Some(x) = self.instances.get(i) else { continue };
            if x.role == Role::Follower && x.state == InstanceState::Unavailable {
                if !self.brake_allows(sslot, i, now, out) {
                    return;
                }
                self.open_action(
                    i,
                    ActionKind::Retire,
                    "follower unavailable: retire it, a replacement follows",
                    true,
                    now,
                    out,
                );
                return;
            }
        }
        let followers = members
            .iter()
            .filter(|&&i| {
                self.instances.get(i).is_some_and(|x| x.role == Role::Follower && x.state.is_member() && !x.fenced)
            })
            .count();
        if followers < usize::from(plan_followers) {
            let zone = self.zone_for_new_member(sslot);
            self.provision(
                sslot,
                Role::Follower,
                zone,
                "plan has fewer followers than it asks for: build one",
                now,
                out,
            );
            return;
        }
        // Leavers: fenced old primaries retire; retired archive; archived terminate.
        for &i in &members {
            let Some(x) = self.instances.get(i) else { continue };
            let (kind, cause) = match x.state {
                s if s.is_member() && x.fenced => (ActionKind::Retire, "replaced: retire the fenced old primary"),
                InstanceState::Retiring => (ActionKind::Retire, "finish retiring"),
                InstanceState::Retired => (ActionKind::Archive, "archive the retired instance"),
                InstanceState::Archived => (ActionKind::Terminate, "terminate the archived instance"),
                _ => continue,
            };
            self.open_action(i, kind, cause, true, now, out);
            return;
        }
    }

    pub(crate) fn reconcile_deleting(&mut self, sslot: u32, members: &[u32], now: i64, out: &mut Outputs) {
        for &i in members {
            let Some(x) = self.instances.get(i) else { continue };
            let kind = match x.state {
                InstanceState::Retiring => ActionKind::Retire,
                s if s.is_member() => ActionKind::Retire,
                InstanceState::Retired => ActionKind::Archive,
                InstanceState::Archived => ActionKind::Terminate,
                _ => continue,
            };
            self.open_action(i, kind, "service deleted by its owner", true, now, out);
            return;
        }
        if members.iter().all(|&i| self.instances.get(i).is_none()) {
            self.set_service_state(sslot, ServiceState::Deleted, "every instance terminated", now, out);
            if let Some(s) = self.services.remove(sslot) {
                self.service_names.remove(&s.name);
                self.service_ids.remove(&s.id);
            }
        }
    }

    pub(crate) fn provision_kind(&self, sslot: u32, role: Role, zone: u16, image: u32) -> ActionKind {
        let s = self.services.get(sslot);
        ActionKind::Provision {
            role,
            zone: self.zones.name(zone).to_string(),
            image: self.images.id(image),
            service_name: s.map(|s| s.name.to_string()).unwrap_or_default(),
            sync: s.is_some_and(|s| s.plan.sync),
        }
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
        let s = self.services.get(sslot)?;
        let (image, provider) = (s.image, s.provider);
        let id = InstanceId::new_at(now, self.rng.next_u64());
        let inst = new_instance(id, sslot, image, zone, provider, role, now);
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
        let kind = self.provision_kind(sslot, role, zone, image);
        let remedy = true;
        self.open_action(slot, kind, cause, remedy, now, out);
        Some(slot)
    }

    /// The coarse service state, derived from its instances and remedies.
    pub(crate) fn derive_service_state(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.deleting {
            self.set_service_state(sslot, ServiceState::Deleting, "deleted by its owner", now, out);
            return;
        }
        let primary = self.current_primary(sslot).and_then(|p| self.instances.get(p));
        let remedying = s.open_remedies > 0;
        let (to, cause): (ServiceState, String) = match primary {
            Some(p) if p.state == InstanceState::Available => {
                let available_followers = s
                    .instances
                    .iter()
                    .filter(|&&i| {
                        self.instances.get(i).is_some_and(|x| {
                            x.role == Role::Follower && x.state == InstanceState::Available && !x.fenced
                        })
                    })
                    .count();
                if available_followers >= usize::from(s.plan.followers) {
                    (ServiceState::Available, "primary and every planned follower available".into())
                } else {
                    (
                        ServiceState::Degraded,
                        format!("{available_followers} of {} followers available", s.plan.followers),
                    )
                }
            }
            Some(p) if p.state == InstanceState::Installing && s.state == ServiceState::Provisioning => {
                (ServiceState::Provisioning, "building".into())
            }
            Some(p) if p.state == InstanceState::Uncertain => (ServiceState::Uncertain, "primary is uncertain".into()),
            _ if s.needs_human => (ServiceState::Unavailable, "a remedy failed: a human is needed".into()),
            _ if s.held => (ServiceState::Unavailable, "remedy held by the mass-uncertainty brake".into()),
            _ if remedying => (ServiceState::Recovering, "primary down: remedy under way".into()),
            Some(p) => (ServiceState::Unavailable, format!("primary {}", p.state)),
            None => (ServiceState::Unavailable, "no writable primary".into()),
        };
        self.set_service_state(sslot, to, &cause, now, out);
    }
}
