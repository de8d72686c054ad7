//! Credential rotation: on demand and on a schedule per plan, and the end of
//! each rotation's overlap, all as durable, audited actions.
//!
//! A rotation is two actions on the service's primary:
//! 1. `RotateCredentials`: the provider makes a new credential and the URL
//!    takes it; the old one keeps working. When it succeeds the engine
//!    records (durably, in the service's record) when the overlap ends:
//!    `Config::rotation_overlap` later.
//! 2. `RevokePreviousCredentials`, opened by the engine when the overlap
//!    ends: the provider revokes the old credential. Idempotent, so a
//!    control plane killed anywhere in between opens or re-dispatches it
//!    after its restart, and a repeat finds nothing left to revoke.
//!
//! No rotation opens while an overlap is open. The schedule is
//! `Plan::credential_rotation_days` (0: on demand only), or
//! `Config::credential_rotation` for plans that do not say: due that long
//! after the last rotation (or after creation, spread by the service's id so
//! a fleet created at once does not rotate at once). Deadlines only: no
//! randomness is drawn, so a fleet without rotation steps exactly as before.

use crate::api::{CommandError, Outputs, Reply};
use crate::{micros, Engine};
use drover_model::{
    ActionId, ActionKind, ActionRecord, ActionState, AuditEntry, CredentialStatus, EventKind, EventSubject, Timestamp,
};
use std::time::Duration;

/// A due rotation or revocation that cannot open now (no primary, say) is
/// tried again this much later.
const RETRY: Duration = Duration::from_secs(60);

/// The actor audit entries name for what the schedule does.
pub const SCHEDULE_ACTOR: &str = "schedule";

/// Who asked for a rotation.
enum Who<'a> {
    Schedule,
    Caller(&'a str),
}

impl Engine {
    /// `POST /v1/services/{name}/credentials/rotate`: refused while a
    /// rotation is open or in its overlap (the engine's record, or the
    /// provider's word in `in_progress`).
    pub(crate) fn rotate_credentials(
        &mut self,
        name: &str,
        in_progress: Option<String>,
        actor: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        self.rotation_allowed(sslot)?;
        if let Some(why) = in_progress {
            return Err(CommandError::Conflict(why));
        }
        let id = self.open_rotation(sslot, Who::Caller(actor), now, out)?;
        let rec = match self.actions.get(&id) {
            Some(a) => Some(a.record.clone()),
            None => out.changes.actions.iter().rev().find(|a| a.id == id).cloned(),
        };
        rec.map(|r| Reply::Action(Box::new(r)))
            .ok_or_else(|| CommandError::Invalid("rotation action could not be opened".into()))
    }

    /// The rotation period of service `sslot` in micros (None: on demand).
    fn rotation_period(&self, sslot: u32) -> Option<i64> {
        let s = self.services.get(sslot)?;
        let every = match s.plan.credential_rotation_days {
            Some(0) => None,
            Some(days) => Some(Duration::from_secs(u64::from(days) * 86_400)),
            None => self.config.credential_rotation,
        };
        every.filter(|d| !d.is_zero()).map(micros)
    }

    /// Computes the next rotation of service `sslot` and arms its timer for
    /// the end of the open overlap, else for that rotation.
    pub(crate) fn schedule_rotation(&mut self, sslot: u32, now: i64) {
        let period = self.rotation_period(sslot);
        let Some(s) = self.services.get_mut(sslot) else { return };
        let next = period.map(|every| match s.credentials.as_ref().and_then(|c| c.last_rotated_at) {
            Some(t) => t.0.saturating_add(every),
            None => {
                // Spread over a tenth of the period (at most an hour).
                let spread = (every / 10).clamp(1, 3_600_000_000);
                let jitter = (s.id.0.as_u64_pair().1 % spread as u64) as i64;
                s.created_at.saturating_add(every).saturating_add(jitter)
            }
        });
        if s.credentials.is_none() && next.is_none() {
            return;
        }
        let c = s.credentials.get_or_insert_with(Default::default);
        c.next_rotation_at = next.map(Timestamp);
        let wake = c.overlap_ends_at.map(|t| t.0).or(next);
        if **c == CredentialStatus::default() {
            s.credentials = None;
        }
        if let Some(at) = wake {
            self.rotation_timers.schedule(at.max(now), sslot);
        }
    }

    /// A rotation timer fired: revoke at the end of an overlap, or rotate
    /// when the schedule says. A stale entry finds nothing due.
    pub(crate) fn scheduled_rotation_work(&mut self, sslot: u32, now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        let Some(c) = s.credentials.as_deref() else { return };
        if s.deleting {
            return;
        }
        if let Some(end) = c.overlap_ends_at {
            if end.0 <= now && !s.revoke_running && self.open_revoke(sslot, now, out).is_err() {
                self.rotation_timers.schedule(now + micros(RETRY), sslot);
            }
            return;
        }
        let due = c.next_rotation_at.is_some_and(|t| t.0 <= now);
        if due && !s.rotation_running && self.open_rotation(sslot, Who::Schedule, now, out).is_err() {
            if let Some(c) = self.services.get_mut(sslot).and_then(|s| s.credentials.as_deref_mut()) {
                c.next_rotation_at = Some(Timestamp(now + micros(RETRY)));
            }
            self.rotation_timers.schedule(now + micros(RETRY), sslot);
        }
    }

    /// Refuses a rotation while another is open or in its overlap.
    fn rotation_allowed(&self, sslot: u32) -> Result<(), CommandError> {
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound("no such service".into()))?;
        if self.on_agent_hosts(sslot) {
            // The rotation would run on the agent's own router and registry,
            // while the URL logs in through the router beside the control
            // plane with the verifier it keeps: the URL would stop working.
            return Err(CommandError::Conflict(format!(
                "{:?} runs on agent hosts: credential rotation is not built for them yet (the router beside the \
                 control plane keeps its own login); its credential is unchanged",
                &*s.name
            )));
        }
        if s.rotation_running {
            return Err(CommandError::Conflict(format!("a credential rotation of {:?} is already running", &*s.name)));
        }
        if let Some(end) = s.credentials.as_ref().and_then(|c| c.overlap_ends_at) {
            return Err(CommandError::Conflict(format!(
                "the previous credential rotation of {:?} is still in its overlap: the old credential is revoked \
                 at {}; rotate again after",
                &*s.name,
                end.to_rfc3339()
            )));
        }
        if s.revoke_running {
            return Err(CommandError::Conflict(format!(
                "the previous credential of {:?} is being revoked; rotate again after",
                &*s.name
            )));
        }
        Ok(())
    }

    /// Opens a RotateCredentials action on the primary, with an event that
    /// says who asked, and an audit entry when it is the schedule (a
    /// caller's command is audited by `step`).
    fn open_rotation(&mut self, sslot: u32, who: Who, now: i64, out: &mut Outputs) -> Result<ActionId, CommandError> {
        self.rotation_allowed(sslot)?;
        let name = self.services.get(sslot).map(|s| String::from(&*s.name)).unwrap_or_default();
        let target = self
            .current_primary(sslot)
            .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no primary to rotate its credentials on")))?;
        let cause = match who {
            Who::Schedule => format!(
                "scheduled credential rotation (every {})",
                every_text(self.rotation_period(sslot).unwrap_or_default())
            ),
            Who::Caller(actor) => format!("credential rotation requested by {actor}"),
        };
        let id = self
            .open_action(target, ActionKind::RotateCredentials, &cause, false, now, out)
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.rotation_running = true;
        }
        out.changes.events.push(
            self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause.clone())
                .with_kind(EventKind::Other),
        );
        if let Who::Schedule = who {
            self.audit_schedule("services.rotate_credentials", &name, id, &cause, now, out);
        }
        Ok(id)
    }

    /// Opens the RevokePreviousCredentials action that ends an overlap.
    fn open_revoke(&mut self, sslot: u32, now: i64, out: &mut Outputs) -> Result<ActionId, CommandError> {
        let name = self.services.get(sslot).map(|s| String::from(&*s.name)).unwrap_or_default();
        let target = self
            .current_primary(sslot)
            .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no primary to revoke on")))?;
        let cause = "the credential rotation's overlap ended: revoke the previous credential";
        let id = self
            .open_action(target, ActionKind::RevokePreviousCredentials, cause, false, now, out)
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.revoke_running = true;
        }
        self.audit_schedule("services.revoke_previous_credentials", &name, id, cause, now, out);
        Ok(id)
    }

    fn audit_schedule(&self, command: &str, name: &str, id: ActionId, cause: &str, now: i64, out: &mut Outputs) {
        if !self.config.records {
            return;
        }
        out.changes.audit.push(AuditEntry {
            seq: 0,
            at: Timestamp(now),
            actor: SCHEDULE_ACTOR.into(),
            role: None,
            command: command.into(),
            target: Some(name.into()),
            detail: serde_json::json!({ "action": id, "cause": cause }),
            outcome: "ok".into(),
        });
    }

    /// A rotation or revocation finished (called from `finish_action`, so
    /// also when it failed or was cancelled). A rotation that succeeded
    /// opens its overlap; a revocation that succeeded closes it; anything
    /// else is tried again later by the timer (a revocation is never given
    /// up: the old credential must go).
    pub(crate) fn rotation_finished(
        &mut self,
        sslot: u32,
        rec: &ActionRecord,
        state: ActionState,
        now: i64,
        out: &mut Outputs,
    ) {
        let overlap = micros(self.config.rotation_overlap);
        let Some(s) = self.services.get_mut(sslot) else { return };
        let rotate = rec.kind == ActionKind::RotateCredentials;
        if rotate {
            s.rotation_running = false;
        } else {
            s.revoke_running = false;
        }
        if state != ActionState::Succeeded {
            if !s.deleting {
                self.rotation_timers.schedule(now + micros(RETRY), sslot);
            }
            return;
        }
        let c = s.credentials.get_or_insert_with(Default::default);
        let what = if rotate {
            c.last_rotated_at = Some(Timestamp(now));
            c.overlap_ends_at = Some(Timestamp(now + overlap));
            format!(
                "credentials rotated; the previous credential keeps working for {}s, then is revoked",
                self.config.rotation_overlap.as_secs()
            )
        } else {
            c.overlap_ends_at = None;
            "the previous credential was revoked: the rotation's overlap is over".to_string()
        };
        self.schedule_rotation(sslot, now);
        out.changes.events.push(
            self.event(now, EventSubject::Service, Some(sslot), Some(rec.instance), None, None, what)
                .with_kind(EventKind::Other),
        );
        self.service_changed(sslot, out);
    }
}

/// A period as people say it: whole days in days, else seconds.
fn every_text(micros: i64) -> String {
    let secs = micros / 1_000_000;
    if secs > 0 && secs % 86_400 == 0 {
        let days = secs / 86_400;
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else {
        format!("{secs}s")
    }
}
