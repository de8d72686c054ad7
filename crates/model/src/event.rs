//! The append-only event log and the audit trail of operator commands.

use crate::{ActionId, InstanceId, ServiceId, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventSubject {
    Instance,
    Service,
    Action,
    /// Fleet-level: the mass-uncertainty brake, restarts of the control plane.
    Fleet,
}

/// What an event is, for machines: the pager and the simulator's checker
/// match on this (with `subject`, `from` and `to`), never on `cause`, which
/// is prose for people and may be reworded at will.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    /// An instance or a service changed state (`from` → `to`), or was created.
    Transition,
    /// An action changed state (`from` → `to`); `action` names its kind
    /// (`promote`, `provision`, `restart`, ...).
    ActionStep {
        action: String,
    },
    /// A follower became the primary.
    Promoted,
    /// The mass-uncertainty brake engaged for `scope` (a zone, or `fleet`).
    BrakeEngaged {
        scope: String,
    },
    /// The mass-uncertainty brake released for `scope`.
    BrakeReleased {
        scope: String,
    },
    /// The engine stopped trying remedies on the service: a person must look.
    NeedsHuman,
    /// An operator resumed a service that needed a human.
    Resumed,
    BackupTaken,
    BackupFailed,
    RestoreTestPassed,
    RestoreTestFailed,
    /// A safety invariant is at risk: the engine stopped and asks a human.
    InvariantAtRisk,
    /// The engine refused a transition its state table does not allow.
    IllegalTransition,
    /// The router reported something about a service.
    RouterReport,
    /// The control plane started (restored from the store).
    Started,
    /// Anything else; also what events stored before kinds existed read as.
    #[default]
    Other,
}

/// Every transition and every action step, with its cause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Position in the log, assigned by the store (0 until persisted).
    pub seq: u64,
    pub at: Timestamp,
    pub subject: EventSubject,
    pub service: Option<String>,
    pub service_id: Option<ServiceId>,
    pub instance: Option<InstanceId>,
    pub action: Option<ActionId>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Prose for people; no code matches on it (see `kind`).
    pub cause: String,
    /// What the event is, for machines.
    #[serde(default)]
    pub kind: EventKind,
    /// The team that owns the service, when the event concerns one.
    #[serde(default)]
    pub team: Option<String>,
}

impl Event {
    /// The same event with `kind` set.
    pub fn with_kind(mut self, kind: EventKind) -> Self {
        self.kind = kind;
        self
    }
}

/// One operator command, accepted or refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub command: String,
    pub target: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// `ok` or the error that refused it.
    pub outcome: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stored_before_kinds_existed_still_read_and_kinds_round_trip() {
        let old = r#"{"seq":7,"at":1,"subject":"service","service":"db1","service_id":null,"instance":null,
            "action":null,"from":"recovering","to":"unavailable","cause":"a remedy failed: a human is needed"}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!((e.kind.clone(), e.team.clone()), (EventKind::Other, None));
        let e = e.with_kind(EventKind::BrakeEngaged { scope: "zone-a".into() });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], serde_json::json!({"type": "brake_engaged", "scope": "zone-a"}));
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }
}
