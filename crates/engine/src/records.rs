//! Bookkeeping: zones, adding and removing instances, and the records and
//! events the engine hands to the store.

use crate::api::Outputs;
use crate::fleet::Inst;
use crate::{state_index, Engine, ZoneState};
use drover_model::{
    ActionRecord, ActionState, Event, EventId, EventKind, EventSubject, InstanceId, InstanceRecord, InstanceState,
    ServiceId, ServiceRecord, Timestamp,
};

impl Engine {
    /// Gives every event of `out` its stable id, in the order the engine
    /// produced them: the same seed and inputs mint the same ids (replay),
    /// and the store appends an id once (a retried commit is idempotent).
    pub(crate) fn mint_event_ids(&mut self, out: &mut Outputs) {
        for event in &mut out.changes.events {
            self.events_minted += 1;
            event.id = EventId::mint(self.seed, self.events_minted);
        }
    }

    pub(crate) fn zone(&mut self, name: &str) -> u16 {
        let z = self.zones.intern(name);
        while self.zone_state.len() < self.zones.len() {
            self.zone_state.push(ZoneState::default());
        }
        z
    }

    pub(crate) fn zone_mut(&mut self, z: u16) -> &mut ZoneState {
        let i = usize::from(z);
        if i >= self.zone_state.len() {
            self.zone_state.resize(i + 1, ZoneState::default());
        }
        &mut self.zone_state[i]
    }

    pub(crate) fn add_instance(&mut self, inst: Inst) -> u32 {
        let (id, zone, state, sslot, host) = (inst.id, inst.zone, inst.state, inst.service, inst.host);
        let slot = self.instances.insert(inst);
        self.host_used(host, true);
        self.instance_index.insert(id, slot);
        self.state_counts[state_index(state)] += 1;
        if state.is_member() {
            self.zone_mut(zone).members += 1;
            self.fleet_zone.members += 1;
        }
        if state == InstanceState::Uncertain {
            self.zone_mut(zone).uncertain += 1;
            self.fleet_zone.uncertain += 1;
        }
        if let Some(s) = self.services.get_mut(sslot) {
            if !s.instances.contains(&slot) {
                s.instances.push(slot);
            }
        }
        slot
    }

    pub(crate) fn remove_instance(&mut self, slot: u32) {
        let Some(inst) = self.instances.remove(slot) else { return };
        if inst.covered {
            let zs = self.zone_mut(inst.zone);
            zs.covered = zs.covered.saturating_sub(1);
        }
        self.instance_index.remove(&inst.id);
        self.state_counts[state_index(inst.state)] -= 1;
        self.host_used(inst.host, false);
        if let Some(s) = self.services.get_mut(inst.service) {
            s.instances.retain(|i| *i != slot);
        }
    }

    pub(crate) fn service_slot(&self, id: ServiceId) -> Option<u32> {
        self.service_ids.get(&id).copied()
    }

    pub(crate) fn instance_changed(&self, slot: u32, out: &mut Outputs) {
        if !self.config.records {
            return;
        }
        if let Some(rec) = self.instance_record(slot) {
            out.changes.instances.push(rec);
        }
    }

    pub(crate) fn service_changed(&self, sslot: u32, out: &mut Outputs) {
        if !self.config.records {
            return;
        }
        if let Some(rec) = self.service_record(sslot) {
            out.changes.services.push(rec);
        }
    }

    pub(crate) fn action_changed(&self, rec: ActionRecord, out: &mut Outputs) {
        if self.config.records {
            out.changes.actions.push(rec);
        }
    }

    pub(crate) fn instance_record(&self, slot: u32) -> Option<InstanceRecord> {
        let i = self.instances.get(slot)?;
        let s = self.services.get(i.service)?;
        Some(InstanceRecord {
            id: i.id,
            service: s.id,
            role: i.role,
            zone: self.zones.name(i.zone).into(),
            provider: self.providers.name(i.provider).into(),
            image: self.images.id(i.image),
            state: i.state,
            fenced: i.fenced,
            restarts: i.restarts,
            created_at: Timestamp(i.created_at),
            state_since: Timestamp(i.state_since),
            host: self.hosts.name(i.host).map(str::to_string),
            read_slot: (i.read_slot > 0).then_some(u32::from(i.read_slot)),
        })
    }

    pub(crate) fn service_record(&self, sslot: u32) -> Option<ServiceRecord> {
        let s = self.services.get(sslot)?;
        Some(ServiceRecord {
            id: s.id,
            name: String::from(&*s.name),
            engine: s.engine,
            plan: s.plan.clone(),
            team: self.teams.name(s.team).into(),
            zones: s.zones.iter().map(|&z| self.zones.name(z).to_string()).collect(),
            image: self.images.id(s.image),
            provider: self.providers.name(s.provider).into(),
            state: s.state,
            created_at: Timestamp(s.created_at),
            state_since: Timestamp(s.state_since),
            needs_human: s.needs_human,
            remedy_failures: s.remedy_failures,
            failing_since: (s.failing_since != 0).then_some(Timestamp(s.failing_since)),
            backups: s.backups.status(),
            credentials: s.credentials.as_deref().cloned().unwrap_or_default(),
            maintenance_window: s.window.as_deref().cloned(),
            forked_from: s.forked_from.as_deref().cloned(),
            read_slots: crate::followers::slots_list(s.read_slots),
            upgraded_from: s.upgraded_from.as_deref().cloned(),
            labels: s.labels.as_deref().cloned().unwrap_or_default(),
        })
    }

    /// An event, with the name and id of service `sslot` filled in.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &self,
        now: i64,
        subject: EventSubject,
        sslot: Option<u32>,
        instance: Option<InstanceId>,
        from: Option<&str>,
        to: Option<&str>,
        cause: impl Into<String>,
    ) -> Event {
        let service = sslot.and_then(|s| self.services.get(s));
        let kind = match subject {
            EventSubject::Instance | EventSubject::Service => EventKind::Transition,
            _ => EventKind::Other,
        };
        Event {
            id: EventId::UNSET,
            seq: 0,
            at: Timestamp(now),
            subject,
            service: service.map(|s| String::from(&*s.name)),
            service_id: service.map(|s| s.id),
            instance,
            action: None,
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            cause: cause.into(),
            kind,
            team: service.map(|s| self.teams.name(s.team).to_string()),
        }
    }

    pub(crate) fn action_event(
        &self,
        rec: &ActionRecord,
        from: ActionState,
        cause: impl Into<String>,
        now: i64,
    ) -> Event {
        let service = self
            .instance_index
            .get(&rec.instance)
            .and_then(|&i| self.instances.get(i))
            .and_then(|i| self.services.get(i.service));
        let (name, team) = match service {
            Some(s) => (Some(String::from(&*s.name)), Some(self.teams.name(s.team).to_string())),
            None => (None, None),
        };
        Event {
            id: EventId::UNSET,
            seq: 0,
            at: Timestamp(now),
            subject: EventSubject::Action,
            service: name,
            service_id: Some(rec.service),
            instance: Some(rec.instance),
            action: Some(rec.id),
            from: Some(from.as_str().into()),
            to: Some(rec.state.as_str().into()),
            cause: cause.into(),
            kind: EventKind::ActionStep { action: rec.kind.name().to_string() },
            team,
        }
    }
}

pub(crate) fn fleet_event(
    now: i64,
    kind: EventKind,
    from: impl Into<Option<&'static str>>,
    to: &str,
    cause: String,
) -> Event {
    Event {
        id: EventId::UNSET,
        seq: 0,
        at: Timestamp(now),
        subject: EventSubject::Fleet,
        service: None,
        service_id: None,
        instance: None,
        action: None,
        from: from.into().map(str::to_string),
        to: Some(to.into()),
        cause,
        kind,
        team: None,
    }
}
