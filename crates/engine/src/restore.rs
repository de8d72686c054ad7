//! Restore.

use crate::actions::is_remedy;
use crate::api::{Config, Outputs};
use crate::fleet::{Inst, Placement, ServicePlace, Svc};
use crate::records::fleet_event;
use crate::{micros, Engine, OpenAction};
use drover_model::{ActionKind, ActionRecord, ActionState, Image, ServiceId, ServiceRecord, Snapshot, Timestamp};
use hashbrown::HashMap;

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
        let mut service_by_id: HashMap<ServiceId, u32> = HashMap::new();
        for rec in snapshot.services {
            let image = match e.images.index.get(&rec.image) {
                Some(&i) => i,
                None => e.images.insert(placeholder_image(&rec)).0,
            };
            let place = ServicePlace {
                team: e.teams.intern(&rec.team),
                zones: rec.zones.iter().map(|z| e.zone(z)).collect(),
                image,
                provider: e.providers.intern(&rec.provider),
            };
            let id = rec.id;
            let svc = Svc::from_record(rec, place);
            let name = svc.name.clone();
            let slot = e.services.insert(svc);
            e.service_names.insert(name, slot);
            e.service_ids.insert(id, slot);
            service_by_id.insert(id, slot);
            e.schedule_backups(slot, now);
        }
        let mut orphans = 0;
        for rec in snapshot.instances {
            let Some(&sslot) = service_by_id.get(&rec.service) else {
                orphans += 1;
                continue;
            };
            let image = match e.images.index.get(&rec.image) {
                Some(&i) => i,
                None => 0,
            };
            let place = Placement { image, zone: e.zone(&rec.zone), provider: e.providers.intern(&rec.provider) };
            let inst = Inst::from_record(&rec, sslot, place, now);
            let slot = e.add_instance(inst);
            e.schedule_instance(slot, now);
        }
        let mut resumed = 0;
        let mut pending = 0;
        let mut actions: Vec<ActionRecord> = snapshot.actions;
        actions.sort_by_key(|a| (a.created_at, a.id));
        for mut rec in actions {
            let Some(&islot) = e.instance_index.get(&rec.instance) else {
                // Its instance is gone: nothing left to act on.
                let from = rec.state;
                rec.state = ActionState::Cancelled;
                rec.updated_at = Timestamp(now);
                rec.error = Some("its instance no longer exists".into());
                out.changes.events.push(e.action_event(&rec, from, "cancelled at restart: instance gone", now));
                out.changes.actions.push(rec);
                continue;
            };
            let sslot = e.instances.get(islot).map(|i| i.service).unwrap_or(0);
            let remedy = is_remedy(&rec.kind);
            let budget_zone = e.budget_zone(&rec.kind, islot);
            if let Some(s) = e.services.get_mut(sslot) {
                match rec.kind {
                    ActionKind::Backup => s.backup_running = true,
                    ActionKind::VerifyRestore => s.verify_running = true,
                    _ => {}
                }
            }
            if remedy {
                if let Some(s) = e.services.get_mut(sslot) {
                    s.open_remedies += 1;
                }
            }
            let id = rec.id;
            match rec.state {
                ActionState::Pending => {
                    pending += 1;
                    if let Some(z) = budget_zone {
                        e.zone_mut(z).waiting.push_back(id);
                    }
                    e.actions.insert(id, OpenAction { record: rec, remedy, budget_zone, durable: true });
                }
                _ => {
                    resumed += 1;
                    if let Some(z) = budget_zone {
                        e.zone_mut(z).running_budgeted += 1;
                    }
                    e.actions.insert(id, OpenAction { record: rec, remedy, budget_zone, durable: true });
                    e.redispatch(id, "resumed after control-plane restart", now, &mut out);
                }
            }
        }
        out.changes.events.push(fleet_event(
            now,
            None,
            "running",
            format!(
                "control plane started: {} services, {} instances, {} actions resumed, {} pending; \
                 silence ignored for {:?}{}",
                e.services.len(),
                e.instances.len(),
                resumed,
                pending,
                e.config.restart_grace,
                if orphans > 0 { format!("; {orphans} instances without a service skipped") } else { String::new() }
            ),
        ));
        let slots: Vec<u32> = e.services.iter().map(|(s, _)| s).collect();
        for s in slots {
            e.mark_dirty(s);
        }
        e.reconcile_dirty(now, &mut out);
        (e, out)
    }
}

/// A stand-in when a stored service names an image the store lost; keeps
/// the engine running and the gap visible.
pub(crate) fn placeholder_image(rec: &ServiceRecord) -> Image {
    let mut img = Image::new(rec.engine, "unknown", Default::default(), Default::default(), rec.created_at);
    img.id = rec.image.clone();
    img
}
