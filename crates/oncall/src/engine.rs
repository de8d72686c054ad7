//! Engine events that need a person become alerts: a remedy failed (the
//! service needs a human), the mass-uncertainty brake engaged, a restore
//! test failed. The matching "all clear" events resolve them.

use crate::pager::{Alert, AlertAction, Severity};
use drover_model::{Event, EventSubject};

/// Whether an event could matter to the pager (cheap; runs on every commit).
pub fn is_relevant(event: &Event) -> bool {
    let to = event.to.as_deref().unwrap_or("");
    to == "needs_human"
        || to == "braked"
        || event.from.as_deref() == Some("braked")
        || event.cause.contains("needs_human")
        || event.cause.contains("a human is needed")
        || event.cause.contains("restore test FAILED")
        || event.cause.starts_with("restore test passed")
        || (event.subject == EventSubject::Service && matches!(to, "available" | "deleted"))
}

/// The zone (or `fleet`) a brake event names: "... brake engaged for zone-a: ...".
fn brake_scope(cause: &str) -> String {
    cause
        .split_once(" for ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(scope, _)| scope.trim().to_string())
        .unwrap_or_else(|| "fleet".into())
}

/// Maps one committed engine event to an alert; `team` is the service's team.
pub fn to_alert(event: &Event, team: Option<String>) -> Option<Alert> {
    let to = event.to.as_deref().unwrap_or("");
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
        group: None,
        class: Some(class.into()),
        origin: "engine".into(),
        details: serde_json::json!({ "event_seq": event.seq, "subject": event.subject, "from": event.from, "to": event.to }),
    };
    if to == "braked" {
        let scope = brake_scope(&event.cause);
        return Some(Alert {
            service: None,
            ..alert(format!("engine:brake:{scope}"), AlertAction::Trigger, "brake_engaged", Severity::Critical)
        });
    }
    if event.from.as_deref() == Some("braked") {
        let scope = brake_scope(&event.cause);
        return Some(Alert {
            service: None,
            ..alert(format!("engine:brake:{scope}"), AlertAction::Resolve, "brake_engaged", Severity::Info)
        });
    }
    let name = service.clone()?;
    if event.cause.contains("restore test FAILED") {
        return Some(alert(
            format!("engine:{name}:restore_test"),
            AlertAction::Trigger,
            "restore_test_failed",
            Severity::Error,
        ));
    }
    if event.cause.starts_with("restore test passed") {
        return Some(alert(
            format!("engine:{name}:restore_test"),
            AlertAction::Resolve,
            "restore_test_failed",
            Severity::Info,
        ));
    }
    if to == "needs_human" || event.cause.contains("needs_human") || event.cause.contains("a human is needed") {
        return Some(alert(
            format!("engine:{name}:needs_human"),
            AlertAction::Trigger,
            "needs_human",
            Severity::Critical,
        ));
    }
    if event.subject == EventSubject::Service && matches!(to, "available" | "deleted") {
        return Some(alert(format!("engine:{name}:needs_human"), AlertAction::Resolve, "needs_human", Severity::Info));
    }
    None
}
