//! Restore: the engine rebuilt from the store after a restart.

use crate::actions::is_remedy;
use crate::api::{Config, Outputs};
use crate::fleet::HashMap;
use crate::fleet::{Inst, Placement, ServicePlace, Svc};
use crate::records::fleet_event;
use crate::{micros, Engine, OpenAction};
use drover_model::EventKind;
use drover_model::{
    ActionKind, ActionRecord, ActionState, Image, InstanceRecord, ServiceId, ServiceRecord, Snapshot, Timestamp,
};

impl Engine {
    /// Rebuilds the engine from the store after a restart. Every instance
    /// gets `restart_grace` before silence counts against it; every action
    /// that was running is dispatched again (providers are idempotent).
    pub fn restore(config: Config, seed: u64, snapshot: Snapshot, now: Timestamp) -> (Engine, Outputs) {
        let mut e = Engine::new(config, seed);
        let now = now.0;
        let mut out = Outputs::default();
        e.grace_until = now + micros(e.config.restart_grace);
        e.restored_at = now;
        for image in snapshot.images {
            e.images.insert(image);
        }
        e.restore_hosts(snapshot.hosts);
        // A drain under way goes on (nothing but the host's state says so).
        if e.hosts.list.iter().any(|h| h.rec.state == drover_model::HostState::Draining) {
            e.wake_drains(now);
        }
        let service_by_id = e.restore_services(snapshot.services, now);
        let orphans = e.restore_instances(snapshot.instances, &service_by_id, now);
        e.restore_archives(snapshot.archives, now);
        let (resumed, pending) = e.resume_actions(snapshot.actions, now, &mut out);
        e.restore_rollouts(snapshot.rollouts, snapshot.rollout_members, now);
        let what = format!("control plane started: {} services, {} instances", e.services.len(), e.instances.len());
        out.changes.events.push(started(now, what, (resumed, pending), e.config.restart_grace, orphans));
        let slots: Vec<u32> = e.services.iter().map(|(s, _)| s).collect();
        for s in slots {
            e.mark_dirty(s);
        }
        e.reconcile_dirty(now, &mut out);
        e.mint_event_ids(&mut out);
        (e, out)
    }

    /// Takes another part of the fleet into the running engine (issue 16:
    /// a node took shards over from one that died): `part`'s services,
    /// instances, open actions and archives are added as [`Engine::restore`]
    /// would have restored them, and the engine's share of the fleet becomes
    /// `share`. The fleet-wide records (images, hosts) are this engine's
    /// already and are not read from `part`; rollouts' members of the
    /// part's services are (`restore_rollouts`). A record already here
    /// is skipped. As after a restart, every instance gets `restart_grace`
    /// before silence counts against it (the kept ones too: one window for
    /// the whole engine). Returns what to commit (the part's actions
    /// reopened, the reconciliation of its services) and the running
    /// actions to dispatch again after that commit.
    pub fn absorb(&mut self, part: Snapshot, share: crate::api::Share, now: Timestamp) -> Outputs {
        let now = now.0;
        let mut out = Outputs::default();
        self.config.share = share;
        self.grace_until = now + micros(self.config.restart_grace);
        self.restored_at = now;
        let services: Vec<ServiceRecord> =
            part.services.into_iter().filter(|s| !self.service_ids.contains_key(&s.id)).collect();
        let instances: Vec<InstanceRecord> =
            part.instances.into_iter().filter(|i| !self.instance_index.contains_key(&i.id)).collect();
        let actions: Vec<ActionRecord> =
            part.actions.into_iter().filter(|a| !self.actions.contains_key(&a.id)).collect();
        let archives = part.archives.into_iter().filter(|a| !self.archives.by_id.contains_key(&a.id)).collect();
        let service_by_id = self.restore_services(services, now);
        let orphans = self.restore_instances(instances, &service_by_id, now);
        self.restore_archives(archives, now);
        let (resumed, pending) = self.resume_actions(actions, now, &mut out);
        // The parts of split rollouts (and resizes) the shards' members
        // were in: resumed where their records say.
        self.restore_rollouts(part.rollouts, part.rollout_members, now);
        // A larger share has room for more of what waits for a zone's budget.
        for zone in 0..self.zone_state.len() as u16 {
            self.start_waiting(zone, now, &mut out);
        }
        let instances =
            service_by_id.values().filter_map(|&s| self.services.get(s)).map(|s| s.instances.len()).sum::<usize>();
        let what = format!(
            "control plane took over {}/{} of the fleet: {} services and {} instances added",
            share.held,
            share.of,
            service_by_id.len(),
            instances
        );
        out.changes.events.push(started(now, what, (resumed, pending), self.config.restart_grace, orphans));
        for &slot in service_by_id.values() {
            self.mark_dirty(slot);
        }
        self.reconcile_dirty(now, &mut out);
        self.mint_event_ids(&mut out);
        out
    }

    /// Services from their records, with their backup schedules armed.
    fn restore_services(&mut self, records: Vec<ServiceRecord>, now: i64) -> HashMap<ServiceId, u32> {
        let mut service_by_id: HashMap<ServiceId, u32> = HashMap::default();
        for rec in records {
            let image = match self.images.index.get(&rec.image) {
                Some(&i) => i,
                None => self.images.insert(placeholder_image(&rec)).0,
            };
            let place = ServicePlace {
                team: self.teams.intern(&rec.team),
                zones: rec.zones.iter().map(|z| self.zone(z)).collect(),
                image,
                provider: self.providers.intern(&rec.provider),
            };
            let id = rec.id;
            let svc = Svc::from_record(rec, place);
            let name: Box<str> = (*svc.name).into();
            let slot = self.services.insert(svc);
            self.service_names.insert(name, slot);
            self.service_ids.insert(id, slot);
            service_by_id.insert(id, slot);
            self.schedule_backups(slot, now);
            self.schedule_rotation(slot, now);
        }
        service_by_id
    }

    /// Instances from their records, each with its deadline. Returns how
    /// many were skipped because their service is not in the store.
    fn restore_instances(
        &mut self,
        records: Vec<InstanceRecord>,
        service_by_id: &HashMap<ServiceId, u32>,
        now: i64,
    ) -> usize {
        let mut orphans = 0;
        for rec in records {
            let Some(&sslot) = service_by_id.get(&rec.service) else {
                orphans += 1;
                continue;
            };
            let image = match self.images.index.get(&rec.image) {
                Some(&i) => i,
                None => 0,
            };
            let host = rec.host.as_deref().and_then(|h| self.host_index(h)).unwrap_or(crate::hosts::NO_HOST);
            let place =
                Placement { image, zone: self.zone(&rec.zone), provider: self.providers.intern(&rec.provider), host };
            let inst = Inst::from_record(&rec, sslot, place, now);
            let slot = self.add_instance(inst);
            self.schedule_instance(slot, now);
        }
        orphans
    }

    /// Reopens the stored actions, oldest first: pending ones queue for
    /// their zone's budget again, running ones are dispatched again.
    /// Returns how many were resumed and how many are pending.
    fn resume_actions(&mut self, mut actions: Vec<ActionRecord>, now: i64, out: &mut Outputs) -> (usize, usize) {
        let (mut resumed, mut pending) = (0, 0);
        actions.sort_by_key(|a| (a.created_at, a.id));
        for rec in actions {
            match self.resume_action(rec, now, out) {
                Some(ActionState::Pending) => pending += 1,
                Some(_) => resumed += 1,
                None => {}
            }
        }
        (resumed, pending)
    }

    /// One stored action: cancelled if its instance is gone, else open again
    /// with its service's and zone's counts. Returns its state if reopened.
    fn resume_action(&mut self, mut rec: ActionRecord, now: i64, out: &mut Outputs) -> Option<ActionState> {
        if matches!(rec.kind, ActionKind::PurgeArchive { .. }) {
            // Its instance is gone by design; the archive is what it acts on.
            if let Some(state) = self.resume_purge(rec.clone(), now, out) {
                return Some(state);
            }
        }
        let Some(&islot) = self.instance_index.get(&rec.instance) else {
            // Its instance is gone: nothing left to act on.
            let from = rec.state;
            rec.state = ActionState::Cancelled;
            rec.updated_at = Timestamp(now);
            rec.error = Some("its instance no longer exists".into());
            out.changes.events.push(self.action_event(&rec, from, "cancelled at restart: instance gone", now));
            self.action_changed(rec, out);
            return None;
        };
        let sslot = self.instances.get(islot).map(|i| i.service).unwrap_or(0);
        let remedy = is_remedy(&rec.kind);
        let budget_zone = self.budget_zone(&rec.kind, islot);
        if let Some(s) = self.services.get_mut(sslot) {
            match rec.kind {
                ActionKind::Backup => s.backup_running = true,
                ActionKind::VerifyRestore => s.verify_running = true,
                ActionKind::RotateCredentials => s.rotation_running = true,
                ActionKind::RevokePreviousCredentials => s.revoke_running = true,
                _ => {}
            }
            if remedy {
                s.open_remedies += 1;
            }
        }
        if remedy {
            if let Some(i) = self.instances.get_mut(islot) {
                i.open_remedies += 1;
            }
        }
        let (id, state) = (rec.id, rec.state);
        self.actions.insert(id, Box::new(OpenAction { record: rec, remedy, budget_zone, durable: true }));
        if state == ActionState::Pending {
            if let Some(z) = budget_zone {
                self.zone_mut(z).waiting.push_back(id);
            }
        } else {
            if let Some(z) = budget_zone {
                self.zone_mut(z).running_budgeted += 1;
            }
            self.redispatch(id, "resumed after control-plane restart", now, out);
        }
        Some(state)
    }
}

/// A stand-in when a stored service names an image the store lost (or
/// this engine has not learned yet: a split fleet); keeps the engine
/// running and the gap visible.
pub(crate) fn placeholder_image(rec: &ServiceRecord) -> Image {
    let mut img = Image::new(rec.engine, PLACEHOLDER_VERSION, Default::default(), Default::default(), rec.created_at);
    img.id = rec.image.clone();
    img
}

const PLACEHOLDER_VERSION: &str = "unknown";

/// Whether `image` is a [`placeholder_image`].
pub(crate) fn is_placeholder(image: &Image) -> bool {
    image.version == PLACEHOLDER_VERSION && image.packages.is_empty() && image.configuration.is_empty()
}

/// The event a restore or a merge ends with: `what` it took, the actions
/// it resumed and left pending, and how long silence is ignored.
fn started(
    now: i64,
    what: String,
    (resumed, pending): (usize, usize),
    grace: std::time::Duration,
    orphans: usize,
) -> drover_model::Event {
    let skipped = if orphans > 0 { format!("; {orphans} instances without a service skipped") } else { String::new() };
    fleet_event(
        now,
        EventKind::Started,
        None,
        "running",
        format!("{what}, {resumed} actions resumed, {pending} pending; silence ignored for {grace:?}{skipped}"),
    )
}
