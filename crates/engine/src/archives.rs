//! Archives: deleting a service whose engine keeps its data (the policy's
//! `archives_on_delete`: PostgreSQL) takes a final backup first, keeps it
//! for `Config::archive_retention` (state `archived`), lets the owner
//! restore it into a new service, and only then purges it for good.
//!
//! The steps, each durable in the same commit as the decision:
//! 1. `DeleteService` opens an `ArchiveRecord` (`archiving`) and the final
//!    `Backup` action on the primary; the service's instances stay until
//!    the archive leaves `archiving` (`archive_holds_deletion`);
//! 2. the backup's result makes it `archived` (with pgBackRest's label) or
//!    `failed` (with the cause), and the instances are taken apart;
//! 3. at `purge_after` a durable `PurgeArchive` action removes the backups;
//!    its success makes it `purged` and frees the service's name.
//!
//! A restart resumes whichever step was open: the final backup's or the
//! purge's action is dispatched again (both are idempotent), and a purged
//! archive is never purged again.

use crate::api::{CommandError, Outputs, Reply};
use crate::fleet::{HashMap, Wheel};
use crate::{micros, Engine, OpenAction, BUCKET_MICROS};
use drover_model::{
    backup_label_of, ActionId, ActionKind, ActionRecord, ActionState, ArchiveId, ArchiveRecord, ArchiveState,
    ArchiveView, CreateService, Event, EventId, EventKind, EventSubject, InstanceId, RestoreFrom, ServiceId, Timestamp,
};
use rand::RngCore;
use std::collections::BTreeMap;
use std::time::Duration;

/// A purge that failed (after its own attempts) is tried again after this:
/// the backups are kept meanwhile, which costs space, never data.
const PURGE_RETRY: Duration = Duration::from_secs(3600);

/// A purge due while a service is still being restored from the archive
/// waits this long: a restore reads the backups the purge removes.
const PURGE_WAIT_FOR_RESTORE: Duration = Duration::from_secs(60);

/// pgBackRest's name for the newest backup set, for an archive whose final
/// backup's label is not known (a provider that reports none).
const LATEST_SET: &str = "latest";

/// Every archive, with the indexes the engine asks.
pub(crate) struct Archives {
    pub(crate) by_id: BTreeMap<ArchiveId, ArchiveRecord>,
    /// Archives still `archiving`, by the service being deleted.
    archiving: HashMap<ServiceId, ArchiveId>,
    /// Names held by archives not yet purged.
    held_names: HashMap<Box<str>, ArchiveId>,
    /// Purges due.
    timers: Wheel<ArchiveId>,
}

impl Default for Archives {
    fn default() -> Self {
        Archives {
            by_id: BTreeMap::new(),
            archiving: HashMap::default(),
            held_names: HashMap::default(),
            timers: Wheel::new(BUCKET_MICROS),
        }
    }
}

impl Archives {
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        self.timers.next()
    }

    fn insert(&mut self, rec: ArchiveRecord) {
        if rec.state == ArchiveState::Archiving {
            self.archiving.insert(rec.service_id, rec.id);
        } else {
            self.archiving.remove(&rec.service_id);
        }
        if rec.state == ArchiveState::Purged {
            if self.held_names.get(rec.service_name.as_str()) == Some(&rec.id) {
                self.held_names.remove(rec.service_name.as_str());
            }
        } else {
            self.held_names.insert(rec.service_name.as_str().into(), rec.id);
        }
        self.by_id.insert(rec.id, rec);
    }
}

impl Engine {
    /// Opens the archive of service `sslot`, which is being deleted, if its
    /// engine keeps data on delete: the record, then its final backup.
    pub(crate) fn start_archive(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        if s.deleting || !self.policy_of(s).archives_on_delete() || self.archives.archiving.contains_key(&s.id) {
            return;
        }
        let rec = ArchiveRecord {
            id: ArchiveId::new_at(now, self.rng.next_u64()).in_slot(s.id.slot()),
            service_id: s.id,
            service_name: String::from(&*s.name),
            engine: s.engine,
            plan: s.plan.clone(),
            team: self.teams.name(s.team).to_string(),
            zones: s.zones.iter().map(|&z| self.zones.name(z).to_string()).collect(),
            provider: self.providers.name(s.provider).to_string(),
            labels: s.labels.as_deref().cloned().unwrap_or_default(),
            state: ArchiveState::Archiving,
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            archived_at: None,
            purge_after: None,
            backup_label: None,
            error: None,
            final_backup: None,
            purge_action: None,
            primary: None,
        };
        let id = rec.id;
        out.changes.events.push(archive_event(
            &rec,
            None,
            "deleted by its owner: a final backup is taken before its instances are terminated",
            now,
        ));
        self.archives.insert(rec);
        self.archive_changed(id, out);
        self.open_final_backup(id, sslot, now, out);
    }

    /// Opens the archive's final backup, unless a backup of the service is
    /// running (it waits for that one to end: pgBackRest takes one at a
    /// time per stanza); with no primary to take it from, the archive fails.
    fn open_final_backup(&mut self, id: ArchiveId, sslot: u32, now: i64, out: &mut Outputs) {
        if self.services.get(sslot).is_none_or(|s| s.backup_running) {
            return;
        }
        let target = match self.backup_target(sslot) {
            Ok(target) => target,
            Err(e) => {
                self.archive_done(id, Err(format!("no final backup could be taken: {e}")), now, out);
                return;
            }
        };
        let primary = self.instances.get(target).map(|i| i.id);
        let cause = "final backup before the service's instances are terminated";
        let Some(action) = self.open_action(target, ActionKind::Backup, cause, false, now, out) else { return };
        if let Some(s) = self.services.get_mut(sslot) {
            s.backup_running = true;
        }
        if let Some(rec) = self.archives.by_id.get_mut(&id) {
            rec.final_backup = Some(action);
            rec.primary = primary;
            rec.updated_at = Timestamp(now);
        }
        self.archive_changed(id, out);
    }

    /// Whether the deletion of service `sslot` waits for its archive (the
    /// final backup), opening that backup when its turn has come.
    pub(crate) fn archive_holds_deletion(&mut self, sslot: u32, now: i64, out: &mut Outputs) -> bool {
        let Some(s) = self.services.get(sslot) else { return false };
        if !s.deleting {
            return false;
        }
        let service = s.id;
        let Some(&id) = self.archives.archiving.get(&service) else { return false };
        let opened = self.archives.by_id.get(&id).and_then(|a| a.final_backup);
        match opened {
            Some(action) if self.actions.contains_key(&action) => {}
            // Its action ended without a result reaching the archive (a
            // store written before archives existed): take it again.
            _ => self.open_final_backup(id, sslot, now, out),
        }
        self.archives.archiving.contains_key(&service)
    }

    /// A successful result of `action`: the archive's final backup (with
    /// its label in `detail`) or its purge.
    pub(crate) fn archive_action_succeeded(
        &mut self,
        action: &ActionRecord,
        detail: Option<&str>,
        now: i64,
        out: &mut Outputs,
    ) {
        match &action.kind {
            ActionKind::Backup => {
                let Some(&id) = self.archives.archiving.get(&action.service) else { return };
                if self.archives.by_id.get(&id).and_then(|a| a.final_backup) != Some(action.id) {
                    return;
                }
                let label = detail.and_then(backup_label_of).map(str::to_string);
                self.archive_done(id, Ok(label), now, out);
            }
            ActionKind::PurgeArchive { archive, .. } => {
                let id = *archive;
                let Some(was) = self.archives.by_id.get(&id).map(|a| a.state) else { return };
                if !self.set_archive_state(id, ArchiveState::Purged, now) {
                    return;
                }
                if let Some(rec) = self.archives.by_id.get_mut(&id) {
                    rec.purge_action = None;
                    rec.error = None;
                    let rec = rec.clone();
                    out.changes.events.push(archive_event(
                        &rec,
                        Some(was),
                        format!("purged: its backups are removed and the name {:?} is free again", rec.service_name),
                        now,
                    ));
                    self.archives.insert(rec);
                }
                self.archive_changed(id, out);
            }
            _ => {}
        }
    }

    /// `action` ended without success (failed, cancelled, or its attempts
    /// spent): a final backup fails its archive; a purge is tried later.
    pub(crate) fn archive_action_ended(
        &mut self,
        action: &ActionRecord,
        state: ActionState,
        now: i64,
        out: &mut Outputs,
    ) {
        if state == ActionState::Succeeded {
            return;
        }
        let error = action.error.clone().unwrap_or_else(|| state.as_str().to_string());
        match &action.kind {
            ActionKind::Backup => {
                let Some(&id) = self.archives.archiving.get(&action.service) else { return };
                if self.archives.by_id.get(&id).and_then(|a| a.final_backup) != Some(action.id) {
                    return;
                }
                self.archive_done(id, Err(format!("the final backup failed: {error}")), now, out);
            }
            ActionKind::PurgeArchive { archive, .. } => {
                let Some(rec) = self.archives.by_id.get_mut(archive) else { return };
                rec.purge_action = None;
                rec.error = Some(format!("purge failed ({error}); tried again in {}s", PURGE_RETRY.as_secs()));
                rec.updated_at = Timestamp(now);
                let rec = rec.clone();
                out.changes.events.push(archive_event(&rec, None, rec.error.clone().unwrap_or_default(), now));
                self.archives.timers.schedule(now + micros(PURGE_RETRY), rec.id);
                self.archive_changed(rec.id, out);
            }
            _ => {}
        }
    }

    /// The final backup's outcome: `archived` with its label, or `failed`
    /// with the cause; either way the purge is scheduled and the service's
    /// deletion goes on.
    fn archive_done(&mut self, id: ArchiveId, result: Result<Option<String>, String>, now: i64, out: &mut Outputs) {
        let to = if result.is_ok() { ArchiveState::Archived } else { ArchiveState::Failed };
        if !self.set_archive_state(id, to, now) {
            return;
        }
        let purge_after = now.saturating_add(micros(self.config.archive_retention));
        let Some(rec) = self.archives.by_id.get_mut(&id) else { return };
        rec.archived_at = Some(Timestamp(now));
        rec.purge_after = Some(Timestamp(purge_after));
        let cause = match result {
            Ok(label) => {
                let cause = format!(
                    "archived: final backup {} kept until {}; restore it with POST /v1/archives/{id}/restore",
                    label.as_deref().unwrap_or("(unlabelled)"),
                    Timestamp(purge_after).to_rfc3339()
                );
                rec.backup_label = label;
                cause
            }
            Err(e) => {
                let cause = format!("archive failed: {e}; older backups, if any, are kept until the purge");
                rec.error = Some(e);
                cause
            }
        };
        let rec = rec.clone();
        out.changes.events.push(archive_event(&rec, Some(ArchiveState::Archiving), cause, now));
        let service = rec.service_id;
        self.archives.insert(rec);
        self.archives.timers.schedule(purge_after, id);
        self.archive_changed(id, out);
        if let Some(sslot) = self.service_slot(service) {
            self.mark_dirty(sslot);
        }
    }

    /// The one gate of archive states (`ArchiveState::can_become`).
    fn set_archive_state(&mut self, id: ArchiveId, to: ArchiveState, now: i64) -> bool {
        let Some(rec) = self.archives.by_id.get_mut(&id) else { return false };
        if !rec.state.can_become(to) {
            return false;
        }
        rec.state = to;
        rec.updated_at = Timestamp(now);
        true
    }

    /// Purges archives past their retention (a `Tick`).
    pub(crate) fn fire_archive_timers(&mut self, now: i64, out: &mut Outputs) {
        for (_, ids) in self.archives.timers.pop_due(now) {
            for id in ids {
                self.purge_if_due(id, now, out);
            }
        }
    }

    fn purge_if_due(&mut self, id: ArchiveId, now: i64, out: &mut Outputs) {
        let Some(rec) = self.archives.by_id.get(&id) else { return };
        let due = matches!(rec.state, ArchiveState::Archived | ArchiveState::Failed)
            && rec.purge_after.is_some_and(|t| t.0 <= now);
        let purging = rec.purge_action.is_some_and(|a| self.actions.contains_key(&a));
        if !due || purging {
            return;
        }
        let restoring = self
            .services
            .iter()
            .any(|(_, s)| s.forked_from.as_deref().is_some_and(|f| !f.restored && f.service == rec.service_name));
        if restoring {
            self.archives.timers.schedule(now + micros(PURGE_WAIT_FOR_RESTORE), id);
            return;
        }
        let record = ActionRecord {
            id: ActionId::new_at(now, self.rng.next_u64()).in_slot(rec.service_id.slot()),
            service: rec.service_id,
            instance: rec.primary.unwrap_or(InstanceId::NIL),
            kind: ActionKind::PurgeArchive { service_name: rec.service_name.clone(), engine: rec.engine, archive: id },
            state: ActionState::Pending,
            attempts: 0,
            cause: format!("archive of {} past its retention: remove its backups", rec.service_name),
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            deadline: Timestamp(now),
            error: None,
        };
        let action = record.id;
        self.actions.insert(action, Box::new(OpenAction { record, remedy: false, budget_zone: None, durable: true }));
        if let Some(rec) = self.archives.by_id.get_mut(&id) {
            rec.purge_action = Some(action);
            rec.updated_at = Timestamp(now);
        }
        self.archive_changed(id, out);
        self.redispatch(action, "archive past its retention", now, out);
    }

    /// The provider of an action whose instance is gone: an archive's purge
    /// goes to the provider that ran the service.
    pub(crate) fn provider_without_instance(&self, action: &ActionRecord) -> String {
        match &action.kind {
            ActionKind::PurgeArchive { archive, .. } => self.archives.by_id.get(archive).map(|a| a.provider.clone()),
            _ => None,
        }
        .unwrap_or_else(|| self.config.default_provider.clone())
    }

    /// A stored purge, reopened after a restart and dispatched again (the
    /// provider's purge is idempotent).
    pub(crate) fn resume_purge(&mut self, rec: ActionRecord, now: i64, out: &mut Outputs) -> Option<ActionState> {
        let ActionKind::PurgeArchive { archive, .. } = &rec.kind else { return None };
        let open = self.archives.by_id.get(archive).is_some_and(|a| a.state != ArchiveState::Purged);
        let (id, state) = (rec.id, rec.state);
        if !open {
            return None;
        }
        self.actions.insert(id, Box::new(OpenAction { record: rec, remedy: false, budget_zone: None, durable: true }));
        self.redispatch(id, "resumed after control-plane restart", now, out);
        Some(state)
    }

    /// The archives from the store (before the actions are resumed).
    pub(crate) fn restore_archives(&mut self, records: Vec<ArchiveRecord>, now: i64) {
        for rec in records {
            if let (ArchiveState::Archived | ArchiveState::Failed, Some(at)) = (rec.state, rec.purge_after) {
                self.archives.timers.schedule(at.0.max(now), rec.id);
            }
            self.archives.insert(rec);
        }
    }

    /// Refuses a name an archive of a deleted service still holds.
    pub(crate) fn name_not_held_by_archive(&self, name: &str) -> Result<(), CommandError> {
        match self.archives.held_names.get(name).and_then(|id| self.archives.by_id.get(id)) {
            Some(a) => Err(CommandError::Conflict(format!(
                "the name {name:?} is held by archive {} of a deleted service until it is purged{}",
                a.id,
                a.purge_after.map(|t| format!(" (after {})", t.to_rfc3339())).unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }

    /// A new service `name` with the archived service's plan, its primary
    /// restored from the archive's final backup (the fork path).
    pub(crate) fn restore_archive(
        &mut self,
        id: ArchiveId,
        name: String,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let (req, from) = self.archive_plan(id, name)?;
        self.create_service(req, Some(from), now, out)
    }

    /// What the restore of archive `id` into `name` creates: the new
    /// service's request (the deleted service's plan) and where its data
    /// comes from. The name is checked where it is created
    /// (`Command::CreateRestored` on a fleet split between nodes).
    pub fn archive_plan(&self, id: ArchiveId, name: String) -> Result<(CreateService, RestoreFrom), CommandError> {
        let rec = self.archives.by_id.get(&id).ok_or_else(|| CommandError::NotFound(format!("no archive {id}")))?;
        let req = CreateService {
            name,
            engine: rec.engine,
            followers: rec.plan.followers,
            sync: Some(rec.plan.sync),
            max_failover_lag_bytes: Some(rec.plan.max_failover_lag_bytes),
            credential_rotation_days: rec.plan.credential_rotation_days,
            team: Some(rec.team.clone()),
            zones: Some(rec.zones.clone()),
            provider: Some(rec.provider.clone()),
            labels: (!rec.labels.is_empty()).then(|| rec.labels.clone()),
            brokers: rec.plan.brokers,
        };
        req.validate().map_err(CommandError::Invalid)?;
        if rec.state != ArchiveState::Archived {
            return Err(CommandError::Conflict(format!(
                "archive {id} is {}: only an archived one can be restored{}",
                rec.state,
                rec.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        let from = RestoreFrom {
            service: rec.service_name.clone(),
            at: None,
            restored: false,
            backup: Some(rec.backup_label.clone().unwrap_or_else(|| LATEST_SET.to_string())),
        };
        Ok((req, from))
    }

    /// Every archive, oldest first.
    pub fn archives(&self) -> Vec<ArchiveView> {
        self.archives.by_id.values().map(ArchiveRecord::view).collect()
    }

    /// One archive as persisted (tests, the crash check).
    pub fn archive_record(&self, id: ArchiveId) -> Option<ArchiveRecord> {
        self.archives.by_id.get(&id).cloned()
    }

    fn archive_changed(&self, id: ArchiveId, out: &mut Outputs) {
        if !self.config.records {
            return;
        }
        if let Some(rec) = self.archives.by_id.get(&id) {
            out.changes.archives.push(rec.clone());
        }
    }

    /// Notes the start of a successful full backup of service `sslot`:
    /// pgBackRest keeps the newest `backup_retention_full` of them.
    pub(crate) fn note_backup_started(&mut self, sslot: u32, started: Timestamp) {
        let keep = self.config.backup_retention_full.max(1) as usize;
        let Some(s) = self.services.get_mut(sslot) else { return };
        let starts = &mut s.backups.kept;
        starts.push(started.0);
        if starts.len() > keep {
            let extra = starts.len() - keep;
            starts.drain(..extra);
        }
    }
}

/// An `Archive` event: the service may be gone, so its name and team come
/// from the record.
fn archive_event(rec: &ArchiveRecord, from: Option<ArchiveState>, cause: impl Into<String>, now: i64) -> Event {
    Event {
        id: EventId::UNSET,
        seq: 0,
        at: Timestamp(now),
        subject: EventSubject::Service,
        service: Some(rec.service_name.clone()),
        service_id: Some(rec.service_id),
        instance: None,
        action: None,
        from: from.map(|s| s.as_str().to_string()),
        to: Some(rec.state.as_str().to_string()),
        cause: cause.into(),
        kind: EventKind::Archive { archive: rec.id, state: rec.state },
        team: Some(rec.team.clone()),
    }
}
