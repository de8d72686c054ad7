//! Engine events that need a person become alerts: a remedy failed (the
//! service needs a human), the mass-uncertainty brake engaged, a restore
//! test failed. The matching "all clear" events resolve them. Events that
//! only inform a team (maintenance scheduled) become announcements: a post
//! in the team's chat, never a page.

use crate::pager::{Alert, AlertAction, Announcement, Severity};
use drover_model::{Event, EventKind, EventSubject};

/// Whether an event could matter to the pager (cheap; runs on every commit).
/// Matches on the event's kind, subject and target state, never on `cause`.
pub fn is_relevant(event: &Event) -> bool {
    match &event.kind {
        EventKind::BrakeEngaged { .. }
        | EventKind::BrakeReleased { .. }
        | EventKind::NeedsHuman
        | EventKind::InvariantAtRisk
        | EventKind::RestoreTestFailed
        | EventKind::RestoreTestPassed
        | EventKind::RolloutPaused { .. } => true,
        EventKind::Transition => is_all_clear(event),
        _ => false,
    }
}

/// A service became available or was deleted: whatever needed a human is over.
fn is_all_clear(event: &Event) -> bool {
    event.subject == EventSubject::Service && matches!(event.to.as_deref(), Some("available" | "deleted"))
}

/// Maps one committed engine event to an alert; `team` is the service's
/// team (the event's own `team` when `None`).
pub fn to_alert(event: &Event, team: Option<String>) -> Option<Alert> {
    let team = team.or_else(|| event.team.clone());
    let service = event.service.clone();
    let alert = |key: String, action: AlertAction, class: &str, severity: Severity| Alert {
        dedup_key: key,
        action,
        summary: match &service {
            Some(s) => format!("{s}: {}", event.cause),
            None => event.cause.clone(),
        },
        source: "drover-engine".into(),
        severity,
        team: team.clone(),
        service: service.clone(),
        component: None,
        // One open page per team for the engine's trouble: what fails
        // together (a zone's brake, services a remedy gave up on) is one incident.
        group: Some("engine".into()),
        class: Some(class.into()),
        origin: "engine".into(),
        details: serde_json::json!({
            "event_seq": event.seq, "subject": event.subject, "from": event.from, "to": event.to,
            // The engine stopped (needs a human, an invariant at risk) or paused
            // its destructive remedies (the brake): no bot tier to wait for.
            "needs_person": matches!(event.kind, EventKind::NeedsHuman | EventKind::InvariantAtRisk | EventKind::BrakeEngaged { .. }),
        }),
    };
    match &event.kind {
        EventKind::BrakeEngaged { scope } => Some(Alert {
            service: None,
            ..alert(format!("engine:brake:{scope}"), AlertAction::Trigger, "brake_engaged", Severity::Critical)
        }),
        EventKind::BrakeReleased { scope } => Some(Alert {
            service: None,
            ..alert(format!("engine:brake:{scope}"), AlertAction::Resolve, "brake_engaged", Severity::Info)
        }),
        EventKind::RestoreTestFailed => Some(alert(
            format!("engine:{}:restore_test", service.clone()?),
            AlertAction::Trigger,
            "restore_test_failed",
            Severity::Error,
        )),
        EventKind::RestoreTestPassed => Some(alert(
            format!("engine:{}:restore_test", service.clone()?),
            AlertAction::Resolve,
            "restore_test_failed",
            Severity::Info,
        )),
        // One page per rollout that paused itself, however often it pauses.
        EventKind::RolloutPaused { rollout } => Some(Alert {
            service: None,
            ..alert(format!("engine:rollout:{rollout}"), AlertAction::Trigger, "rollout_paused", Severity::Error)
        }),
        EventKind::NeedsHuman | EventKind::InvariantAtRisk => Some(alert(
            format!("engine:{}:needs_human", service.clone()?),
            AlertAction::Trigger,
            "needs_human",
            Severity::Critical,
        )),
        EventKind::Transition if is_all_clear(event) => Some(alert(
            format!("engine:{}:needs_human", service.clone()?),
            AlertAction::Resolve,
            "needs_human",
            Severity::Info,
        )),
        _ => None,
    }
}

/// Whether an event is news for a team's chat (cheap; runs on every commit).
pub fn is_announcement(event: &Event) -> bool {
    matches!(event.kind, EventKind::MaintenanceScheduled { .. })
}

/// Maps a committed engine event to an announcement for its team's chat.
pub fn to_announcement(event: &Event) -> Option<Announcement> {
    match &event.kind {
        EventKind::MaintenanceScheduled { rollout, window_start } => Some(Announcement {
            team: event.team.clone(),
            text: format!(
                "Maintenance scheduled: rollout {rollout} will move {} onto a new image in its maintenance window \
                 starting {window_start} (replacement and a planned switchover; its URL does not change)",
                event.service.as_deref().unwrap_or("a service")
            ),
        }),
        _ => None,
    }
}
