//! Hosts: the machines instances are placed on, with what the engine keeps
//! beside each record (its interned zone, the instances on it). Which host
//! a new member goes to is `placement`; this room registers hosts, changes
//! their state (cordon, drain) and answers for them.
//!
//! An engine with no host registered (the simulator) places nothing: its
//! instances have no host and placement is skipped, as before hosts.

use crate::api::{CommandError, Outputs, Reply};
use crate::fleet::HashMap;
use crate::Engine;
use drover_model::{
    ActionKind, EventSubject, Fault, HostRecord, HostState, HostView, InstanceId, RegisterHost, ServiceId, Timestamp,
};

/// A service with members on agent hosts, as its router follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedService {
    pub id: ServiceId,
    pub name: String,
    /// Its writable primary and the address of that primary's host; None
    /// while it has none (being fenced, fenced, failing over).
    pub primary: Option<(InstanceId, String)>,
}

/// An instance not placed on any host.
pub(crate) const NO_HOST: u16 = u16::MAX;

/// One host as the engine holds it.
pub(crate) struct HostSlot {
    pub rec: HostRecord,
    pub zone: u16,
    /// Instances on it not yet terminated (what capacity counts).
    pub used: u32,
    /// When it last turned uncertain (0: not since this engine started;
    /// a host restored uncertain counts from the restart).
    pub uncertain_since: i64,
}

#[derive(Default)]
pub(crate) struct Hosts {
    /// In registration order; an index is the host's `u16` on instances.
    pub list: Vec<HostSlot>,
    pub index: HashMap<Box<str>, u16>,
    /// Services that could not place a member (no host with room), in the
    /// order they asked: reconciled again when a host registers or frees room.
    pub waiting: Vec<u32>,
}

impl Hosts {
    pub fn get(&self, h: u16) -> Option<&HostSlot> {
        self.list.get(usize::from(h))
    }
    pub fn get_mut(&mut self, h: u16) -> Option<&mut HostSlot> {
        self.list.get_mut(usize::from(h))
    }
    pub fn name(&self, h: u16) -> Option<&str> {
        self.get(h).map(|s| s.rec.name.as_str())
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// What an engine learned from the fleet's records (`Input::FleetRecords`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FleetLearned {
    pub images: usize,
    pub hosts: usize,
    /// Hosts it had that an operator cordoned or drained since.
    pub host_states: usize,
}

impl Engine {
    /// Hosts from their records, at a restart (before the instances, which
    /// name them).
    pub(crate) fn restore_hosts(&mut self, records: Vec<HostRecord>) {
        for rec in records {
            if self.hosts.index.contains_key(rec.name.as_str()) || self.hosts.list.len() >= usize::from(NO_HOST) {
                continue;
            }
            let zone = self.zone(&rec.zone);
            let h = self.hosts.list.len() as u16;
            self.hosts.index.insert(rec.name.as_str().into(), h);
            self.hosts.list.push(HostSlot { rec, zone, used: 0, uncertain_since: 0 });
        }
    }

    /// Images and hosts another node registered (`Input::FleetRecords`):
    /// those this engine lacks are added; a new host lets the services
    /// waiting for room try again. An operator's cordon or drain of a host
    /// (through shard 0's holder) is taken on as this engine's own: no new
    /// member of its services goes there, and a drain moves its members
    /// off. Nothing learned is written: the store has it. Returns how many
    /// images, hosts and host states were new.
    pub(crate) fn learn_fleet_records(
        &mut self,
        images: Vec<drover_model::Image>,
        hosts: Vec<HostRecord>,
        now: i64,
    ) -> FleetLearned {
        let mut learned = FleetLearned::default();
        for image in images {
            match self.images.index.get(&image.id) {
                // A stand-in for an image a record named before it was
                // learned (`restore::placeholder_image`): the real one now.
                Some(&i) => {
                    if let Some(held) = self.images.list.get_mut(i as usize) {
                        if crate::restore::is_placeholder(held) && !crate::restore::is_placeholder(&image) {
                            *held = image;
                            learned.images += 1;
                        }
                    }
                }
                None => {
                    self.images.insert(image);
                    learned.images += 1;
                }
            }
        }
        let before = self.hosts.list.len();
        let operator_states: Vec<(String, HostState)> = hosts
            .iter()
            .filter(|r| matches!(r.state, HostState::Cordoned | HostState::Draining))
            .map(|r| (r.name.clone(), r.state))
            .collect();
        self.restore_hosts(hosts);
        learned.hosts = self.hosts.list.len() - before;
        for (name, to) in operator_states {
            let Some(h) = self.host_index(&name) else { continue };
            let Some(slot) = self.hosts.get_mut(h) else { continue };
            let new = usize::from(h) >= before;
            let from = slot.rec.state;
            if !new && (from == to || (from == HostState::Draining && to == HostState::Cordoned)) {
                continue;
            }
            slot.rec.state = to;
            if !new {
                learned.host_states += 1;
            }
            if to == HostState::Draining {
                self.mark_services_on_host(h);
                self.wake_drains(now);
            }
        }
        if learned.hosts > 0 {
            self.wake_waiting();
        }
        learned
    }

    pub(crate) fn host_index(&self, name: &str) -> Option<u16> {
        self.hosts.index.get(name).copied()
    }

    /// Counts an instance added on (or removed from) host `h`; freed room
    /// lets the services waiting for a host try again.
    pub(crate) fn host_used(&mut self, h: u16, added: bool) {
        let Some(slot) = self.hosts.get_mut(h) else { return };
        if added {
            slot.used += 1;
        } else {
            slot.used = slot.used.saturating_sub(1);
            self.wake_waiting();
        }
    }

    /// Reconciles again every service that waits for a host with room.
    pub(crate) fn wake_waiting(&mut self) {
        for sslot in std::mem::take(&mut self.hosts.waiting) {
            self.mark_dirty(sslot);
        }
    }

    /// `drover agent` (or `drover serve` for its own host, `builtin`)
    /// registers a host, or registers it again after a restart: its zone
    /// cannot change while instances are on it; an uncertain or down host
    /// whose agent is back is ready again; a cordoned or draining one stays so.
    /// The built-in host adopts every instance that has no host (placed
    /// before hosts existed).
    pub(crate) fn register_host(
        &mut self,
        req: RegisterHost,
        builtin: bool,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        req.validate().map_err(CommandError::Invalid)?;
        let h = match self.host_index(&req.name) {
            Some(h) => {
                let zone = self.zone(&req.zone);
                let Some(slot) = self.hosts.get_mut(h) else {
                    return Err(CommandError::Invalid("host table out of step".into()));
                };
                if slot.rec.zone != req.zone && slot.used > 0 {
                    return Err(CommandError::Conflict(format!(
                        "host {:?} is in zone {:?} with {} instances on it: it cannot move to zone {:?}",
                        req.name, slot.rec.zone, slot.used, req.zone
                    )));
                }
                let from = slot.rec.state;
                slot.zone = zone;
                slot.rec.zone = req.zone;
                slot.rec.address = req.address;
                slot.rec.capacity = req.capacity;
                slot.rec.builtin = builtin;
                slot.rec.last_seen = Some(Timestamp(now));
                if matches!(from, HostState::Uncertain | HostState::Down) {
                    slot.rec.state = HostState::Ready;
                }
                let to = slot.rec.state;
                let cause = format!("host {} registered again ({} → {})", slot.rec.name, from, to);
                self.host_event(now, from, to, cause, out);
                h
            }
            None => {
                if self.hosts.list.len() >= usize::from(NO_HOST) {
                    return Err(CommandError::Conflict("no room for another host".into()));
                }
                let zone = self.zone(&req.zone);
                let h = self.hosts.list.len() as u16;
                let rec = HostRecord {
                    name: req.name,
                    zone: req.zone,
                    address: req.address,
                    capacity: req.capacity,
                    state: HostState::Ready,
                    registered_at: Timestamp(now),
                    last_seen: Some(Timestamp(now)),
                    builtin,
                };
                let cause = format!("host {} registered in zone {} (capacity {})", rec.name, rec.zone, rec.capacity);
                self.hosts.index.insert(rec.name.as_str().into(), h);
                self.hosts.list.push(HostSlot { rec, zone, used: 0, uncertain_since: 0 });
                out.changes.events.push(self.event(now, EventSubject::Fleet, None, None, None, Some("ready"), cause));
                h
            }
        };
        if builtin {
            self.adopt_hostless(h, out);
        }
        self.host_changed(h, out);
        self.wake_waiting();
        self.host_view(h).map(|v| Reply::Host(Box::new(v))).ok_or_else(|| CommandError::Invalid("host vanished".into()))
    }

    /// Every instance without a host goes on `h` (the built-in host): they
    /// were placed by the control plane on its own machine before hosts.
    fn adopt_hostless(&mut self, h: u16, out: &mut Outputs) {
        let slots: Vec<u32> =
            self.instances.iter().filter(|(_, i)| i.host == crate::hosts::NO_HOST).map(|(s, _)| s).collect();
        for slot in slots {
            if let Some(i) = self.instances.get_mut(slot) {
                i.host = h;
            }
            self.host_used(h, true);
            self.instance_changed(slot, out);
        }
    }

    /// An operator cordons (no new members) or drains (no new members, and
    /// the members on it are moved elsewhere) a host.
    pub(crate) fn set_host_state(
        &mut self,
        name: &str,
        to: HostState,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let h = self.host_index(name).ok_or_else(|| CommandError::NotFound(format!("no host named {name:?}")))?;
        let Some(slot) = self.hosts.get_mut(h) else { return Err(CommandError::NotFound(format!("no host {name:?}"))) };
        let from = slot.rec.state;
        if from == HostState::Draining && to == HostState::Cordoned {
            return Err(CommandError::Conflict(format!("host {name:?} is draining; it stays so")));
        }
        if from != to {
            slot.rec.state = to;
            let cause = format!("host {name} {} by an operator ({from} → {to})", to.as_str());
            self.host_event(now, from, to, cause, out);
            self.host_changed(h, out);
        }
        if to == HostState::Draining {
            self.mark_services_on_host(h);
            self.wake_drains(now);
        }
        self.host_view(h).map(|v| Reply::Host(Box::new(v))).ok_or_else(|| CommandError::Invalid("host vanished".into()))
    }

    /// Chaos for a whole host: `crash` or `hang` everything placed on it.
    /// `by_agent`: the host's agent does it as one action (the shell sends
    /// it; the engine records it, and learns of it as it would of a real
    /// host failure: silence). Otherwise the fault is injected into each
    /// instance on the host (what the provider that runs them can do). The
    /// reply is the host, with the actions opened in `out`.
    pub(crate) fn host_chaos(
        &mut self,
        name: &str,
        fault: Fault,
        by_agent: bool,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        if !matches!(fault, Fault::Crash | Fault::Hang) {
            return Err(CommandError::Invalid(format!("a host takes the faults crash and hang, not {fault}")));
        }
        let h = self.host_index(name).ok_or_else(|| CommandError::NotFound(format!("no host named {name:?}")))?;
        let on: Vec<u32> =
            self.instances.iter().filter(|(_, i)| i.host == h && i.state.is_member()).map(|(slot, _)| slot).collect();
        let cause = format!("chaos: {fault} host {name}");
        if by_agent {
            out.changes.events.push(self.event(
                now,
                EventSubject::Fleet,
                None,
                None,
                None,
                None,
                format!(
                    "{cause}: its agent {} itself and everything it runs",
                    if fault == Fault::Crash { "kills" } else { "freezes" }
                ),
            ));
            return self
                .host_view(h)
                .map(|v| Reply::Host(Box::new(v)))
                .ok_or_else(|| CommandError::Invalid("host vanished".into()));
        }
        for slot in on {
            self.open_action(slot, ActionKind::InjectFault { fault }, &cause, false, now, out);
        }
        self.host_view(h).map(|v| Reply::Host(Box::new(v))).ok_or_else(|| CommandError::Invalid("host vanished".into()))
    }

    /// Host silence (issue 11): instance `slot` turned uncertain for want
    /// of heartbeats. When every member on its agent's host is silent too,
    /// the host turns uncertain as a whole (its agent is what fell silent);
    /// each instance keeps its own corroboration rules. The built-in host
    /// (this control plane's own machine) is never judged by silence.
    pub(crate) fn host_silent(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(h) = self.instances.get(slot).map(|i| i.host) else { return };
        match self.hosts.get(h) {
            Some(s) if !s.rec.builtin && s.rec.state == HostState::Ready => {}
            _ => return,
        }
        let silent_since = now - crate::micros(self.config.uncertain_after);
        let all_silent = self
            .instances
            .iter()
            .filter(|(_, i)| i.host == h && i.state.is_member())
            .all(|(_, i)| i.last_heartbeat <= silent_since);
        if !all_silent {
            return;
        }
        let Some(slot) = self.hosts.get_mut(h) else { return };
        slot.rec.state = HostState::Uncertain;
        slot.uncertain_since = now;
        let zone = slot.zone;
        let cause = format!("host {}: its agent fell silent (no instance on it heard from)", slot.rec.name);
        // The brake counts hosts too: a few silent hosts holding few
        // instances each are a mass event all the same.
        if let Some(zs) = self.zone_state.get_mut(usize::from(zone)) {
            zs.host_onsets.push_back(now);
        }
        self.fleet_zone.host_onsets.push_back(now);
        self.host_event(now, HostState::Ready, HostState::Uncertain, cause, out);
        self.host_changed(h, out);
    }

    /// A heartbeat from an instance of an uncertain host: its agent is back.
    pub(crate) fn host_heard(&mut self, slot: u32, now: i64, out: &mut Outputs) {
        let Some(h) = self.instances.get(slot).map(|i| i.host) else { return };
        let Some(s) = self.hosts.get_mut(h) else { return };
        if s.rec.state != HostState::Uncertain {
            return;
        }
        s.rec.state = HostState::Ready;
        s.rec.last_seen = Some(Timestamp(now));
        let cause = format!("host {}: its agent is heard from again", s.rec.name);
        self.host_event(now, HostState::Uncertain, HostState::Ready, cause, out);
        self.host_changed(h, out);
    }

    /// Reconciles every service with an instance on host `h`.
    pub(crate) fn mark_services_on_host(&mut self, h: u16) {
        let mut services: Vec<u32> =
            self.instances.iter().filter(|(_, i)| i.host == h).map(|(_, i)| i.service).collect();
        services.sort_unstable();
        services.dedup();
        for s in services {
            self.mark_dirty(s);
        }
    }

    fn host_event(&self, now: i64, from: HostState, to: HostState, cause: String, out: &mut Outputs) {
        if from != to {
            out.changes.events.push(self.event(
                now,
                EventSubject::Fleet,
                None,
                None,
                Some(from.as_str()),
                Some(to.as_str()),
                cause,
            ));
        }
    }

    pub(crate) fn host_changed(&self, h: u16, out: &mut Outputs) {
        if !self.config.records {
            return;
        }
        if let Some(slot) = self.hosts.get(h) {
            out.changes.hosts.push(slot.rec.clone());
        }
    }

    pub(crate) fn host_view(&self, h: u16) -> Option<HostView> {
        let s = self.hosts.get(h)?;
        Some(HostView {
            name: s.rec.name.clone(),
            zone: s.rec.zone.clone(),
            state: s.rec.state,
            capacity: s.rec.capacity,
            instances: s.used,
        })
    }

    /// Every host, by name.
    pub fn host_views(&self) -> Vec<HostView> {
        let mut v: Vec<HostView> = (0..self.hosts.list.len() as u16).filter_map(|h| self.host_view(h)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The PostgreSQL services with a member on an agent host (any host
    /// but `builtin`), each with where its writable primary is, if it has
    /// one: what the routers beside the control plane follow (the shell
    /// repoints a router when the answer changes). One pass over the
    /// instances, no views built: it is asked several times a second.
    pub fn services_on_agent_hosts(&self, builtin: Option<&str>) -> Vec<HostedService> {
        // A control plane with no agent host (the default, the simulator's
        // million instances) answers without a pass over the instances.
        if self.hosts.list.iter().all(|h| h.rec.builtin || Some(h.rec.name.as_str()) == builtin) {
            return Vec::new();
        }
        let mut services: Vec<u32> = self
            .instances
            .iter()
            .filter(|(_, i)| self.hosts.name(i.host).is_some_and(|name| Some(name) != builtin))
            .map(|(_, i)| i.service)
            .collect();
        services.sort_unstable();
        services.dedup();
        if services.is_empty() {
            return Vec::new();
        }
        // A primary being fenced is no longer routed to: its router holds
        // clients until the next primary is writable.
        let fencing: std::collections::HashSet<InstanceId> = self
            .actions
            .values()
            .filter(|a| matches!(a.record.kind, ActionKind::Fence { .. }))
            .map(|a| a.record.instance)
            .collect();
        services
            .into_iter()
            .filter_map(|slot| {
                let s = self.services.get(slot)?;
                if s.engine != drover_model::EngineKind::Postgres {
                    return None;
                }
                let primary = s.instances.iter().find_map(|&i| {
                    let instance = self.instances.get(i).filter(|i| i.writable() && !fencing.contains(&i.id))?;
                    let address = self.hosts.get(instance.host)?.rec.address.clone();
                    Some((instance.id, address))
                });
                Some(HostedService { id: s.id, name: String::from(&*s.name), primary })
            })
            .collect()
    }

    /// Whether a member of service `sslot` runs on an agent host (any host
    /// but the built-in one of `drover serve`).
    pub(crate) fn on_agent_hosts(&self, sslot: u32) -> bool {
        self.services.get(sslot).is_some_and(|s| {
            s.instances
                .iter()
                .any(|&i| self.instances.get(i).and_then(|x| self.hosts.get(x.host)).is_some_and(|h| !h.rec.builtin))
        })
    }

    /// Of `ids`, the services this engine no longer has (deleted to the
    /// end): their routers beside the control plane can stop.
    pub fn services_gone(&self, ids: &[ServiceId]) -> Vec<ServiceId> {
        ids.iter().copied().filter(|&id| self.service_slot(id).is_none()).collect()
    }

    /// The record of host `name` (its address, last seen, ...).
    pub fn host_record(&self, name: &str) -> Option<HostRecord> {
        self.host_index(name).and_then(|h| self.hosts.get(h)).map(|s| s.rec.clone())
    }
}
