//! Records to rows and back. Encoding happens on the caller's thread, before
//! the batch reaches the writer: the writer only runs SQL, and a record that
//! cannot be encoded fails its own commit instead of its whole group.

use crate::StoreError;
use drover_model::{AuditEntry, Changes, Event};
use rusqlite::{params, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) struct ServiceRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) state: &'static str,
    pub(crate) created_at: i64,
    pub(crate) state_since: i64,
    pub(crate) record: String,
}

pub(crate) struct InstanceRow {
    pub(crate) id: String,
    pub(crate) service_id: String,
    pub(crate) state: &'static str,
    pub(crate) created_at: i64,
    pub(crate) state_since: i64,
    pub(crate) record: String,
}

pub(crate) struct ActionRow {
    pub(crate) id: String,
    pub(crate) service_id: String,
    pub(crate) instance_id: String,
    pub(crate) kind: &'static str,
    pub(crate) state: &'static str,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) deadline: i64,
    pub(crate) record: String,
}

pub(crate) struct ImageRow {
    pub(crate) id: String,
    pub(crate) engine: &'static str,
    pub(crate) version: String,
    pub(crate) created_at: i64,
    pub(crate) record: String,
}

pub(crate) struct RolloutRow {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) record: String,
}

pub(crate) struct RolloutMemberRow {
    pub(crate) rollout_id: String,
    pub(crate) service_id: String,
    pub(crate) position: i64,
    pub(crate) phase: &'static str,
    pub(crate) record: String,
}
pub(crate) struct HostRow {
    pub(crate) name: String,
    pub(crate) zone: String,
    pub(crate) state: &'static str,
    pub(crate) registered_at: i64,
    pub(crate) record: String,
}

pub(crate) struct EventRow {
    /// NULL for an event without an id (built outside the engine): such
    /// events are always appended.
    pub(crate) event_id: Option<String>,
    pub(crate) at: i64,
    pub(crate) service: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) record: String,
}

pub(crate) struct AuditRow {
    pub(crate) at: i64,
    pub(crate) actor: String,
    pub(crate) record: String,
}

/// One caller's `Changes`, ready for SQL.
#[derive(Default)]
pub(crate) struct EncodedChanges {
    pub(crate) services: Vec<ServiceRow>,
    pub(crate) instances: Vec<InstanceRow>,
    pub(crate) actions: Vec<ActionRow>,
    pub(crate) images: Vec<ImageRow>,
    pub(crate) events: Vec<EventRow>,
    pub(crate) audit: Vec<AuditRow>,
    pub(crate) rollouts: Vec<RolloutRow>,
    pub(crate) rollout_members: Vec<RolloutMemberRow>,
    pub(crate) hosts: Vec<HostRow>,
    pub(crate) archives: Vec<ArchiveRow>,
}

pub(crate) struct ArchiveRow {
    pub(crate) id: String,
    pub(crate) service_name: String,
    pub(crate) state: &'static str,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) record: String,
}

fn to_json<T: Serialize>(table: &'static str, id: impl ToString, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { table, id: id.to_string(), source })
}

pub(crate) fn encode(changes: &Changes) -> Result<EncodedChanges, StoreError> {
    let mut out = EncodedChanges::default();
    for s in &changes.services {
        out.services.push(ServiceRow {
            id: s.id.to_string(),
            name: s.name.clone(),
            state: s.state.as_str(),
            created_at: s.created_at.micros(),
            state_since: s.state_since.micros(),
            record: to_json("services", s.id, s)?,
        });
    }
    for i in &changes.instances {
        out.instances.push(InstanceRow {
            id: i.id.to_string(),
            service_id: i.service.to_string(),
            state: i.state.as_str(),
            created_at: i.created_at.micros(),
            state_since: i.state_since.micros(),
            record: to_json("instances", i.id, i)?,
        });
    }
    for a in &changes.actions {
        out.actions.push(ActionRow {
            id: a.id.to_string(),
            service_id: a.service.to_string(),
            instance_id: a.instance.to_string(),
            kind: a.kind.name(),
            state: a.state.as_str(),
            created_at: a.created_at.micros(),
            updated_at: a.updated_at.micros(),
            deadline: a.deadline.micros(),
            record: to_json("actions", a.id, a)?,
        });
    }
    for m in &changes.images {
        out.images.push(ImageRow {
            id: m.id.0.clone(),
            engine: m.engine.as_str(),
            version: m.version.clone(),
            created_at: m.created_at.micros(),
            record: to_json("images", &m.id, m)?,
        });
    }
    for r in &changes.rollouts {
        out.rollouts.push(RolloutRow {
            id: r.id.to_string(),
            state: r.state.as_str(),
            created_at: r.created_at.micros(),
            updated_at: r.updated_at.micros(),
            record: to_json("rollouts", r.id, r)?,
        });
    }
    for m in &changes.rollout_members {
        out.rollout_members.push(RolloutMemberRow {
            rollout_id: m.rollout.to_string(),
            service_id: m.service.to_string(),
            position: m.position.min(i64::MAX as u64) as i64,
            phase: m.phase.as_str(),
            record: to_json("rollout_services", format_args!("{}/{}", m.rollout, m.service), m)?,
        });
    }
    for h in &changes.hosts {
        out.hosts.push(HostRow {
            name: h.name.clone(),
            zone: h.zone.clone(),
            state: h.state.as_str(),
            registered_at: h.registered_at.micros(),
            record: to_json("hosts", &h.name, h)?,
        });
    }
    for a in &changes.archives {
        out.archives.push(ArchiveRow {
            id: a.id.to_string(),
            service_name: a.service_name.clone(),
            state: a.state.as_str(),
            created_at: a.created_at.micros(),
            updated_at: a.updated_at.micros(),
            record: to_json("archives", a.id, a)?,
        });
    }
    for (n, e) in changes.events.iter().enumerate() {
        out.events.push(EventRow {
            event_id: (!e.id.is_unset()).then(|| e.id.to_string()),
            at: e.at.micros(),
            service: e.service.clone(),
            instance_id: e.instance.map(|i| i.to_string()),
            // The carried seq is ignored: the column is the truth, and reads
            // overwrite the field from it.
            record: to_json("events", format_args!("#{n} of the batch"), e)?,
        });
    }
    for (n, a) in changes.audit.iter().enumerate() {
        out.audit.push(AuditRow {
            at: a.at.micros(),
            actor: a.actor.clone(),
            record: to_json("audit", format_args!("#{n} of the batch"), a)?,
        });
    }
    Ok(out)
}

/// Writes one batch inside the writer's open transaction.
pub(crate) fn apply(tx: &Transaction<'_>, batch: &EncodedChanges) -> rusqlite::Result<()> {
    if !batch.services.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO services (id, name, state, created_at, state_since, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, state = excluded.state,
               created_at = excluded.created_at, state_since = excluded.state_since, record = excluded.record",
        )?;
        for r in &batch.services {
            stmt.execute(params![r.id, r.name, r.state, r.created_at, r.state_since, r.record])?;
        }
    }
    if !batch.instances.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO instances (id, service_id, state, created_at, state_since, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, state = excluded.state,
               created_at = excluded.created_at, state_since = excluded.state_since, record = excluded.record",
        )?;
        for r in &batch.instances {
            stmt.execute(params![r.id, r.service_id, r.state, r.created_at, r.state_since, r.record])?;
        }
    }
    if !batch.actions.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO actions (id, service_id, instance_id, kind, state, created_at, updated_at, deadline, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, instance_id = excluded.instance_id,
               kind = excluded.kind, state = excluded.state, created_at = excluded.created_at,
               updated_at = excluded.updated_at, deadline = excluded.deadline, record = excluded.record",
        )?;
        for r in &batch.actions {
            stmt.execute(params![
                r.id,
                r.service_id,
                r.instance_id,
                r.kind,
                r.state,
                r.created_at,
                r.updated_at,
                r.deadline,
                r.record
            ])?;
        }
    }
    if !batch.images.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO images (id, engine, version, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET engine = excluded.engine, version = excluded.version,
               created_at = excluded.created_at, record = excluded.record",
        )?;
        for r in &batch.images {
            stmt.execute(params![r.id, r.engine, r.version, r.created_at, r.record])?;
        }
    }
    // Headers before their members (the members' rows reference them).
    if !batch.rollouts.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO rollouts (id, state, created_at, updated_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, created_at = excluded.created_at,
               updated_at = excluded.updated_at, record = excluded.record",
        )?;
        for r in &batch.rollouts {
            stmt.execute(params![r.id, r.state, r.created_at, r.updated_at, r.record])?;
        }
    }
    if !batch.rollout_members.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO rollout_services (rollout_id, service_id, position, phase, record)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (rollout_id, service_id) DO UPDATE SET position = excluded.position,
               phase = excluded.phase, record = excluded.record",
        )?;
        for r in &batch.rollout_members {
            stmt.execute(params![r.rollout_id, r.service_id, r.position, r.phase, r.record])?;
        }
    }
    if !batch.hosts.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO hosts (name, zone, state, registered_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET zone = excluded.zone, state = excluded.state,
               registered_at = excluded.registered_at, record = excluded.record",
        )?;
        for r in &batch.hosts {
            stmt.execute(params![r.name, r.zone, r.state, r.registered_at, r.record])?;
        }
    }
    if !batch.archives.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO archives (id, service_name, state, created_at, updated_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET service_name = excluded.service_name, state = excluded.state,
               created_at = excluded.created_at, updated_at = excluded.updated_at, record = excluded.record",
        )?;
        for r in &batch.archives {
            stmt.execute(params![r.id, r.service_name, r.state, r.created_at, r.updated_at, r.record])?;
        }
    }
    if !batch.events.is_empty() {
        // OR IGNORE: an id already stored means this append is a retry of
        // one that did reach the disk; the first copy (and its seq) stays.
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (event_id, at, service, instance_id, record) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for r in &batch.events {
            stmt.execute(params![r.event_id, r.at, r.service, r.instance_id, r.record])?;
        }
    }
    if !batch.audit.is_empty() {
        let mut stmt = tx.prepare_cached("INSERT INTO audit (at, actor, record) VALUES (?1, ?2, ?3)")?;
        for r in &batch.audit {
            stmt.execute(params![r.at, r.actor, r.record])?;
        }
    }
    Ok(())
}

pub(crate) fn decode<T: DeserializeOwned>(table: &'static str, id: &str, record: &str) -> Result<T, StoreError> {
    serde_json::from_str(record).map_err(|source| StoreError::CorruptRecord { table, id: id.to_string(), source })
}

pub(crate) fn seq_from_column(table: &'static str, seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::CorruptColumn {
        table,
        id: seq.to_string(),
        column: "seq",
        detail: format!("{seq} is negative"),
    })
}

pub(crate) fn decode_event(seq: i64, record: &str) -> Result<Event, StoreError> {
    let seq_u = seq_from_column("events", seq)?;
    let mut event: Event = decode("events", &seq.to_string(), record)?;
    event.seq = seq_u;
    Ok(event)
}

pub(crate) fn decode_audit(seq: i64, record: &str) -> Result<AuditEntry, StoreError> {
    let seq_u = seq_from_column("audit", seq)?;
    let mut entry: AuditEntry = decode("audit", &seq.to_string(), record)?;
    entry.seq = seq_u;
    Ok(entry)
}
