//! Maintenance windows, labels and the announcements of scheduled moves.

use super::*;

/// One service's scheduled move (for the team's calendar feed).
#[derive(Clone, Debug)]
pub struct ScheduledMove {
    pub rollout: RolloutId,
    pub service: String,
    pub to_image: ImageId,
    pub window: Option<MaintenanceWindow>,
    pub required_by: Option<Timestamp>,
}

impl Engine {
    /// Tells the owners of the current wave's waiting services that the
    /// rollout will move them when their windows open: once each, when the
    /// opening is within `maintenance_notice` (at once when sooner, or for a
    /// service with no window). Members are in window order, so a cursor
    /// stops at the first one not yet due; after a restart (order by
    /// window unknown) it may stop early, and `start_moves` tells any
    /// member not yet told as it starts, so none moves untold.
    pub(super) fn announce_moves(&mut self, r: &mut Rollout, now: i64, out: &mut Outputs) {
        let end = r.record.spec.wave_end(r.record.wave as usize, r.members.len());
        let notice = crate::micros(self.config.maintenance_notice);
        let required_passed = r.record.spec.required_by.is_some_and(|t| now >= t.0);
        while r.announce_next < end {
            let k = r.announce_next;
            let m = &r.members[k];
            if m.announced_at != 0 || m.phase != MemberPhase::Waiting {
                r.announce_next += 1;
                continue;
            }
            if m.opens_at > now.saturating_add(notice) {
                break;
            }
            let Some(sslot) = self.slot_of(m.service, m.slot) else {
                r.announce_next += 1;
                continue;
            };
            let opens = match self.window_of(sslot) {
                Some(w) if !required_passed => w.next_opening(Timestamp(now)).0.max(now),
                _ => now,
            };
            if opens > now.saturating_add(notice) {
                break;
            }
            self.announce_member(r, k, sslot, opens, now, out);
            r.announce_next += 1;
        }
    }

    /// One `maintenance_scheduled` event for member `k`, made durable with
    /// its record so a restarted control plane does not tell it twice.
    pub(super) fn announce_member(
        &mut self,
        r: &mut Rollout,
        k: usize,
        sslot: u32,
        opens: i64,
        now: i64,
        out: &mut Outputs,
    ) {
        r.members[k].announced_at = now;
        let cause = format!(
            "rollout {}: maintenance scheduled: to be moved to image {} in its window from {}",
            r.record.id,
            self.images.id(r.target),
            Timestamp(opens)
        );
        let event = self.event(now, EventSubject::Service, Some(sslot), None, None, None, cause).with_kind(
            EventKind::MaintenanceScheduled { rollout: r.record.id.to_string(), window_start: Timestamp(opens) },
        );
        out.changes.events.push(event);
        if self.config.records {
            out.changes.rollout_members.push(member_record(&r.record, k, &r.members[k]));
        }
    }

    /// The zone of a service's writable primary (its first zone without one).
    pub(super) fn primary_zone(&self, sslot: u32) -> Option<u16> {
        self.current_primary(sslot)
            .and_then(|p| self.instances.get(p).map(|x| x.zone))
            .or_else(|| self.services.get(sslot).and_then(|s| s.zones.first().copied()))
    }

    /// Whether a service may be moved now by its maintenance window (its
    /// own, else its team's default); a service with neither: any time.
    pub(super) fn in_maintenance_window(&self, sslot: u32, now: i64) -> bool {
        self.window_of(sslot).is_none_or(|w| w.contains(Timestamp(now)))
    }

    pub(super) fn window_of(&self, sslot: u32) -> Option<&MaintenanceWindow> {
        let s = self.services.get(sslot)?;
        s.window.as_deref().or_else(|| self.config.team_windows.get(self.teams.name(s.team)))
    }

    pub(crate) fn set_maintenance_window(
        &mut self,
        name: &str,
        window: Option<MaintenanceWindow>,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        if let Some(w) = &window {
            w.validate().map_err(CommandError::Invalid)?;
        }
        let sslot = self.live_service(name)?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.window = window.map(Box::new);
        }
        self.service_changed(sslot, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    pub(crate) fn set_labels(
        &mut self,
        name: &str,
        labels: drover_model::Labels,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        drover_model::validate_labels(&labels).map_err(CommandError::Invalid)?;
        let sslot = self.live_service(name)?;
        if let Some(s) = self.services.get_mut(sslot) {
            s.labels = (!labels.is_empty()).then(|| Box::new(labels));
        }
        self.service_changed(sslot, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))
    }

    /// Scheduled maintenance of a team: each of its services still to be
    /// moved by an unfinished rollout, with its window (None: any time) and
    /// the rollout's deadline.
    pub fn maintenance_schedule(&self, team: &str) -> Vec<ScheduledMove> {
        let mut out = Vec::new();
        for r in self.rollouts.list.iter().filter(|r| !r.record.state.is_finished()) {
            for m in r.members.iter().filter(|m| matches!(m.phase, MemberPhase::Waiting | MemberPhase::Moving)) {
                let Some(&sslot) = self.service_ids.get(&m.service) else { continue };
                let Some(s) = self.services.get(sslot) else { continue };
                if self.teams.name(s.team) != team {
                    continue;
                }
                out.push(ScheduledMove {
                    rollout: r.record.id,
                    service: m.name.to_string(),
                    to_image: r.record.spec.to_image.clone(),
                    window: self.window_of(sslot).cloned(),
                    required_by: r.record.spec.required_by,
                });
            }
        }
        out
    }
}
