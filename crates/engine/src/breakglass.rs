//! Break-glass commands: what an operator's runbook does when the engine's
//! own judgement must be overridden. The brake by hand, a forced failover,
//! a follower rebuilt on request, and the runbook runs' own record.

use crate::api::{CommandError, Outputs, Reply};
use crate::records::fleet_event;
use crate::Engine;
use drover_model::{ActionKind, EventKind, EventSubject, InstanceId, InstanceState, Role};

/// The scope that freezes every zone at once.
pub const FLEET_SCOPE: &str = "fleet";

impl Engine {
    /// The scopes whose automation is frozen by hand: [`FLEET_SCOPE`] and
    /// zone names.
    pub fn frozen_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = Vec::new();
        if self.fleet_zone.frozen_since.is_some() {
            scopes.push(FLEET_SCOPE.to_string());
        }
        for (z, zs) in self.zone_state.iter().enumerate() {
            if zs.frozen_since.is_some() {
                scopes.push(self.zones.name(z as u16).to_string());
            }
        }
        scopes
    }

    /// Freezes (or releases) automation in a zone or the fleet. Freezing a
    /// zone no service uses yet is allowed: a freeze may come first.
    pub(crate) fn freeze_automation(
        &mut self,
        scope: &str,
        freeze: bool,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        if scope.is_empty() || scope.len() > 63 {
            return Err(CommandError::Invalid(format!(
                "scope must be a zone name of 1 to 63 characters or {FLEET_SCOPE:?}, got {scope:?}"
            )));
        }
        let zs = if scope == FLEET_SCOPE {
            &mut self.fleet_zone
        } else {
            let z = self.zone(scope);
            self.zone_mut(z)
        };
        let was = zs.frozen_since.is_some();
        zs.frozen_since = if freeze { zs.frozen_since.or(Some(now)) } else { None };
        if was == freeze {
            let state = if freeze { "already frozen" } else { "not frozen" };
            return Ok(Reply::Noted(format!("automation of {scope} is {state}; nothing changed")));
        }
        let (kind, from, to, cause) = if freeze {
            (
                EventKind::BrakeEngaged { scope: scope.to_string() },
                "released",
                "frozen",
                format!("automation of {scope} frozen by hand: every remedy there waits until it is released"),
            )
        } else {
            (
                EventKind::BrakeReleased { scope: scope.to_string() },
                "frozen",
                "released",
                format!("automation of {scope} released by hand: remedies there resume"),
            )
        };
        out.changes.events.push(fleet_event(now, kind, from, to, cause.clone()));
        if !freeze {
            let held = std::mem::take(&mut self.held);
            for s in held {
                if let Some(svc) = self.services.get_mut(s) {
                    svc.held = false;
                }
                self.mark_dirty(s);
            }
        }
        Ok(Reply::Noted(cause))
    }

    /// Fences the primary at once and lets reconcile promote the most
    /// advanced follower. Refused without a follower to promote: a failover
    /// with nothing to fail over to is an outage.
    pub(crate) fn failover(&mut self, name: &str, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(name.to_string()))?;
        if s.open_remedies > 0 {
            return Err(CommandError::Conflict(format!(
                "a remedy of {name:?} is under way; fail over when it finishes"
            )));
        }
        let primary = self
            .current_primary(sslot)
            .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no writable primary to fail over from")))?;
        if self.best_follower(sslot, now).is_none() {
            return Err(CommandError::Conflict(format!(
                "{name:?} has no healthy follower within the lag bound to fail over to"
            )));
        }
        self.open_action(
            primary,
            ActionKind::Fence { immediate: true },
            "forced failover (break-glass): fence the primary at once, then promote the most advanced follower",
            true,
            now,
            out,
        );
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(name.to_string()))
    }

    /// Retires a follower; the plan's missing follower is then built anew.
    pub(crate) fn rebuild_follower(
        &mut self,
        name: &str,
        instance: Option<InstanceId>,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(name.to_string()))?;
        if s.open_remedies > 0 {
            return Err(CommandError::Conflict(format!(
                "a remedy of {name:?} is under way; rebuild a follower when it finishes"
            )));
        }
        let followers: Vec<u32> = s
            .instances
            .iter()
            .copied()
            .filter(|&i| {
                self.instances.get(i).is_some_and(|x| x.role == Role::Follower && x.state.is_member() && !x.fenced)
            })
            .collect();
        let target = match instance {
            Some(id) => *followers
                .iter()
                .find(|&&i| self.instances.get(i).is_some_and(|x| x.id == id))
                .ok_or_else(|| CommandError::NotFound(format!("{id} is not a live follower of {name:?}")))?,
            // The furthest behind (an unavailable one first): the one a
            // person would rebuild.
            None => *followers
                .iter()
                .min_by_key(|&&i| {
                    let x = self.instances.get(i);
                    let available = x.is_some_and(|x| x.state == InstanceState::Available);
                    (available, x.and_then(|x| x.reported.wal_position()).unwrap_or(0))
                })
                .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no follower to rebuild")))?,
        };
        self.open_action(
            target,
            ActionKind::Retire,
            "follower rebuild requested (break-glass): retire it, a replacement follows",
            true,
            now,
            out,
        );
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(name.to_string()))
    }

    /// One state change of a runbook run, as an event of the feed.
    pub(crate) fn record_runbook(
        &mut self,
        run: &str,
        runbook: &str,
        state: &str,
        detail: String,
        now: i64,
        out: &mut Outputs,
    ) -> Reply {
        let event = self
            .event(
                now,
                EventSubject::Fleet,
                None,
                None,
                None,
                Some(state),
                format!("runbook {runbook} run {run}: {detail}"),
            )
            .with_kind(EventKind::Runbook { run: run.to_string(), runbook: runbook.to_string() });
        out.changes.events.push(event);
        Reply::Noted(detail)
    }
}
