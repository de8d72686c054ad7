//! Backups and restore tests: their schedules and their results.

use crate::api::{CommandError, Outputs};
use crate::fleet::{Svc, NEVER};
use crate::policy::BackupSource;
use crate::{micros, Engine};
use drover_model::EventKind;
use drover_model::{ActionId, ActionKind, EventSubject, InstanceState};
use rand::RngCore;
use std::time::Duration;

impl Engine {
    /// Computes when the next backup and restore test are due, and arms the
    /// service's timer for the earlier one.
    pub(crate) fn schedule_backups(&mut self, sslot: u32, now: i64) {
        let (mut backup_every, mut verify_every) = (self.config.backup_interval, self.config.verify_interval);
        // Spread first backups over an hour so a fleet created at once does
        // not back up at once.
        let jitter = (self.rng.next_u64() % 3_600_000_000) as i64;
        let Some(s) = self.services.get(sslot) else { return };
        if let BackupSource::NotOwn { .. } = self.policy_of(s).backups() {
            (backup_every, verify_every) = (None, None);
        }
        let Some(s) = self.services.get_mut(sslot) else { return };
        s.next_backup_at = match backup_every {
            None => NEVER,
            Some(every) => match s.backups.last_backup() {
                Some(t) => t.0 + micros(every),
                None => now + micros(every.min(Duration::from_secs(600))) + jitter,
            },
        };
        s.next_verify_at = match verify_every {
            None => NEVER,
            Some(every) => match (s.backups.last_verified_restore(), s.backups.last_backup()) {
                (Some(t), _) => t.0 + micros(every),
                // Never tested: test the first backup within the hour.
                (None, Some(b)) => b.0 + micros(every.min(Duration::from_secs(3600))),
                (None, None) => s.next_backup_at.saturating_add(micros(every.min(Duration::from_secs(3600)))),
            },
        };
        let next = s.next_backup_at.min(s.next_verify_at);
        if next != NEVER {
            self.service_timers.schedule(next.max(now), sslot);
        }
    }

    pub(crate) fn scheduled_backup_work(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        let (backup_due, verify_due) = (s.next_backup_at <= now, s.next_verify_at <= now);
        if !backup_due && !verify_due {
            // A stale timer entry; the schedule moved on.
            if s.next_backup_at.min(s.next_verify_at) != NEVER {
                let next = s.next_backup_at.min(s.next_verify_at);
                self.service_timers.schedule(next, sslot);
            }
            return;
        }
        let healthy = !s.deleting && self.backup_target(sslot).is_ok();
        if !healthy {
            // Try again later; a backup of a failing service waits for it.
            self.service_timers.schedule(now + micros(Duration::from_secs(600)), sslot);
            return;
        }
        if backup_due {
            let _ = self.open_backup_action(sslot, ActionKind::Backup, "scheduled base backup", now, out);
        } else if verify_due {
            let _ = self.open_backup_action(sslot, ActionKind::VerifyRestore, "scheduled restore test", now, out);
        }
        // Re-arm from the current schedule (results move it forward).
        if let Some(s) = self.services.get_mut(sslot) {
            if backup_due {
                s.next_backup_at = now + micros(Duration::from_secs(600));
            } else {
                s.next_verify_at = now + micros(Duration::from_secs(600));
            }
            let next = s.next_backup_at.min(s.next_verify_at);
            self.service_timers.schedule(next, sslot);
        }
    }

    pub(crate) fn open_backup_action(
        &mut self,
        sslot: u32,
        kind: ActionKind,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<ActionId, CommandError> {
        // The name only for an error (a scheduled backup needs none).
        let name = |e: &Engine| e.services.get(sslot).map(|s| String::from(&*s.name)).unwrap_or_default();
        let running = self.services.get(sslot).is_some_and(|s| match kind {
            ActionKind::Backup => s.backup_running,
            _ => s.verify_running,
        });
        if running {
            return Err(CommandError::Conflict(format!("a {} of {:?} is already running", kind.name(), name(self))));
        }
        let target = self.backup_target(sslot)?;
        let Some(id) = self.open_action(target, kind.clone(), cause, false, now, out) else {
            return Err(CommandError::NotFound(format!("no service named {:?}", name(self))));
        };
        if let Some(s) = self.services.get_mut(sslot) {
            match kind {
                ActionKind::Backup => s.backup_running = true,
                _ => s.verify_running = true,
            }
        }
        Ok(id)
    }

    /// The member backups are taken from and restore tests check, as its
    /// engine's policy says: the available primary, or none of its own.
    pub(crate) fn backup_target(&self, sslot: u32) -> Result<u32, CommandError> {
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound("no such service".into()))?;
        let name = &s.name;
        match self.policy_of(s).backups() {
            BackupSource::NotOwn { why } => {
                Err(CommandError::Conflict(format!("{name:?} is a {} service that keeps no backups: {why}", s.engine)))
            }
            BackupSource::Primary => self
                .current_primary(sslot)
                .filter(|&p| self.instances.get(p).is_some_and(|i| i.state == InstanceState::Available))
                .ok_or_else(|| {
                    CommandError::Conflict(format!("{name:?} has no available primary to work from right now"))
                }),
        }
    }

    /// Records a backup or restore-test outcome. A failed restore test is a
    /// finding with a remedy: take a fresh backup, then test that one.
    pub(crate) fn backup_result(
        &mut self,
        sslot: u32,
        kind: &ActionKind,
        error: Option<&str>,
        detail: Option<&str>,
        now: i64,
        out: &mut Outputs,
    ) {
        let Some(s) = self.services.get_mut(sslot) else { return };
        let (follow_up, escalate) = note_backup_outcome(s, kind, error, now);
        let event_kind = match (kind, error) {
            (ActionKind::Backup, None) => EventKind::BackupTaken,
            (ActionKind::Backup, Some(_)) => EventKind::BackupFailed,
            (_, None) => EventKind::RestoreTestPassed,
            (_, Some(_)) => EventKind::RestoreTestFailed,
        };
        let what = match (kind, error) {
            (ActionKind::Backup, None) => {
                format!("base backup taken{}", detail.map(|d| format!(": {d}")).unwrap_or_default())
            }
            (ActionKind::Backup, Some(e)) => format!("base backup failed: {e}"),
            (_, None) => format!("restore test passed{}", detail.map(|d| format!(": {d}")).unwrap_or_default()),
            (_, Some(e)) => format!("restore test FAILED: {e}"),
        };
        out.changes.events.push(
            self.event(
                now,
                EventSubject::Service,
                Some(sslot),
                None,
                None,
                Some(if error.is_none() { "ok" } else { "failed" }),
                what,
            )
            .with_kind(event_kind),
        );
        if escalate {
            out.changes.events.push(
                self.event(
                    now,
                    EventSubject::Fleet,
                    Some(sslot),
                    None,
                    None,
                    Some("needs_human"),
                    "restore tests keep failing, also on a fresh backup: a human must look at the backups",
                )
                .with_kind(EventKind::NeedsHuman),
            );
        }
        self.service_changed(sslot, out);
        self.schedule_backups(sslot, now);
        if let Some((kind, cause)) = follow_up {
            // The running flag of the finished action is cleared after this
            // returns; clear it now so the follow-up can open.
            if let Some(s) = self.services.get_mut(sslot) {
                s.backup_running = false;
                s.verify_running = false;
            }
            let _ = self.open_backup_action(sslot, kind, cause, now, out);
        }
    }
}

/// What a backup or restore-test outcome follows up with: another action
/// (a fresh backup after a failed test, a test of that backup), and
/// whether to ask a human (a test failed again on a fresh backup).
type FollowUp = (Option<(ActionKind, &'static str)>, bool);

/// Writes a backup or restore-test outcome into the service's status.
fn note_backup_outcome(s: &mut Svc, kind: &ActionKind, error: Option<&str>, now: i64) -> FollowUp {
    let mut follow_up = None;
    let mut escalate = false;
    match (kind, error) {
        (ActionKind::Backup, None) => {
            s.backups.last_backup_at = now;
            s.backups.set_backup_error(None);
            if s.verify_after_backup {
                s.verify_after_backup = false;
                follow_up =
                    Some((ActionKind::VerifyRestore, "restore test of the fresh backup taken after a failed test"));
            }
        }
        (ActionKind::Backup, Some(e)) => s.backups.set_backup_error(Some(e.to_string())),
        (_, None) => {
            s.backups.last_verified_restore_at = now;
            s.backups.last_verify_ok = Some(true);
            s.backups.set_verify_error(None);
            s.verify_failures = 0;
        }
        (_, Some(e)) => {
            s.backups.last_verify_ok = Some(false);
            s.backups.set_verify_error(Some(e.to_string()));
            s.verify_failures = s.verify_failures.saturating_add(1);
            if s.verify_failures == 1 {
                s.verify_after_backup = true;
                follow_up = Some((ActionKind::Backup, "restore test failed: take a fresh full backup, then test it"));
            } else {
                escalate = true;
            }
        }
    }
    (follow_up, escalate)
}

/// What the engine knows of a service's backups, compact: every service of
/// a big fleet backs up daily, so this is paid a million times. Times are
/// micros (0: never); the rare error texts are boxed; the kept backups'
/// start times (`backup_retention_full`, 4 by default) inline.
#[derive(Clone, Debug, Default)]
pub struct Backups {
    pub last_backup_at: i64,
    pub last_verified_restore_at: i64,
    /// Outcome of the latest restore test (None: never tested).
    pub last_verify_ok: Option<bool>,
    errors: Option<Box<BackupErrors>>,
    /// When each full backup kept started, oldest first.
    pub kept: smallvec::SmallVec<[i64; 4]>,
}

#[derive(Clone, Debug, Default)]
struct BackupErrors {
    backup: Option<String>,
    verify: Option<String>,
}

fn at(t: i64) -> Option<drover_model::Timestamp> {
    (t != 0).then_some(drover_model::Timestamp(t))
}

impl Backups {
    pub fn from_status(b: drover_model::BackupStatus) -> Backups {
        let errors = (b.last_backup_error.is_some() || b.last_verify_error.is_some())
            .then(|| Box::new(BackupErrors { backup: b.last_backup_error, verify: b.last_verify_error }));
        Backups {
            last_backup_at: b.last_backup_at.map_or(0, |t| t.0),
            last_verified_restore_at: b.last_verified_restore_at.map_or(0, |t| t.0),
            last_verify_ok: b.last_verify_ok,
            errors,
            kept: b.kept_backups_started.iter().map(|t| t.0).collect(),
        }
    }
    pub fn status(&self) -> drover_model::BackupStatus {
        let errors = self.errors.as_deref();
        drover_model::BackupStatus {
            last_backup_at: at(self.last_backup_at),
            last_backup_error: errors.and_then(|e| e.backup.clone()),
            last_verified_restore_at: at(self.last_verified_restore_at),
            last_verify_ok: self.last_verify_ok,
            last_verify_error: errors.and_then(|e| e.verify.clone()),
            kept_backups_started: self.kept.iter().map(|&t| drover_model::Timestamp(t)).collect(),
        }
    }
    pub fn last_backup(&self) -> Option<drover_model::Timestamp> {
        at(self.last_backup_at)
    }
    pub fn last_verified_restore(&self) -> Option<drover_model::Timestamp> {
        at(self.last_verified_restore_at)
    }
    /// The oldest moment a fork or restore can reach.
    pub fn recoverable_since(&self) -> Option<drover_model::Timestamp> {
        self.kept.first().copied().map(drover_model::Timestamp).or(self.last_backup())
    }
    fn errors_mut(&mut self) -> &mut BackupErrors {
        self.errors.get_or_insert_with(Default::default)
    }
    fn tidy_errors(&mut self) {
        if self.errors.as_deref().is_some_and(|e| e.backup.is_none() && e.verify.is_none()) {
            self.errors = None;
        }
    }
    pub fn set_backup_error(&mut self, e: Option<String>) {
        if e.is_none() && self.errors.is_none() {
            return;
        }
        self.errors_mut().backup = e;
        self.tidy_errors();
    }
    pub fn set_verify_error(&mut self, e: Option<String>) {
        if e.is_none() && self.errors.is_none() {
            return;
        }
        self.errors_mut().verify = e;
        self.tidy_errors();
    }
}
