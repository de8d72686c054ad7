//! Restore.

use crate::actions::is_remedy;
use crate::api::{Config, Outputs};
use crate::fleet::{Inst, Svc, NEVER};
use crate::records::fleet_event;
use crate::{micros, Engine, OpenAction};
use drover_model::{
    ActionKind, ActionRecord, ActionState, Image, ServiceId, ServiceRecord, ServiceState, Snapshot, Timestamp,
};
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
            let svc = Svc {
                id: rec.id,
                name: rec.name.clone().into(),
                engine: rec.engine,
                plan: rec.plan,
                team: e.teams.intern(&rec.team),
                zones: rec.zones.iter().map(|z| e.zone(z)).collect(),
                image,
                provider: e.providers.intern(&rec.provider),
                state: rec.state,
                created_at: rec.created_at.0,
                state_since: rec.state_since.0,
                instances: Vec::new(),
                open_remedies: 0,
                deleting: rec.state == ServiceState::Deleting,
                held: false,
                dirty: false,
                needs_human: rec.needs_human,
                remedy_failures: 0,
                failing_since: 0,
                backups: Box::new(rec.backups.clone()),
                backup_running: false,
                verify_running: false,
                verify_after_backup: false,
                verify_failures: 0,
                next_backup_at: NEVER,
                next_verify_at: NEVER,
            };
            let slot = e.services.insert(svc);
            e.service_names.insert(rec.name.into(), slot);
            e.service_ids.insert(rec.id, slot);
            service_by_id.insert(rec.id, slot);
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
            let inst = Inst {
                id: rec.id,
                service: sslot,
                image,
                zone: e.zone(&rec.zone),
                provider: e.providers.intern(&rec.provider),
                role: rec.role,
                state: rec.state,
                fenced: rec.fenced,
                probing: false,
                upstream_broken: false,
                covered: false,
                writable_fact: None,
                restarts: rec.restarts,
                created_at: rec.created_at.0,
                state_since: rec.state_since.0,
                // Heard "now": the grace period starts from the restart.
                last_heartbeat: now,
                last_seq: 0,
                check_at: NEVER,
                next_probe_at: now,
                last_probe_ok: 0,
                evidence_at: 0,
                wal_position: None,
                lag_bytes: None,
                connections: None,
                last_backup_at: None,
            };
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
