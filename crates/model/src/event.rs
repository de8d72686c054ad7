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
    /// A rollout paused itself: a wave spent its failure budget. Pages.
    RolloutPaused {
        rollout: String,
    },
    /// A running rollout will move the service when its maintenance window
    /// opens at `window_start` (now, for a service with no window or whose
    /// window is open): its owners are told ahead, in the feed and in the
    /// team's chat. Informational: never a page.
    MaintenanceScheduled {
        rollout: String,
        window_start: crate::Timestamp,
    },
    /// A break-glass runbook run changed state (`to`: requested, approved,
    /// succeeded, failed, ...).
    Runbook {
        run: String,
        runbook: String,
    },
    /// An archive of a deleted service changed state (`to`: archived,
    /// failed or purged).
    Archive {
        archive: crate::ArchiveId,
        state: crate::ArchiveState,
    },
    /// Anything else; also what events stored before kinds existed read as.
    #[default]
    Other,
}

/// A stable id for one event, minted by the engine from its seed and a
/// counter of the events it produced ([`EventId::mint`]): the same seed and
/// the same inputs give the same ids (replay), and a retried append of the
/// same event is recognised by the store and written once. Events stored
/// before ids existed read as the nil id ([`EventId::UNSET`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    /// No id: an event built outside the engine, or stored before ids existed.
    pub const UNSET: EventId = EventId(uuid::Uuid::nil());

    /// The `n`-th event of the engine seeded with `seed`: the seed fills the
    /// high 64 bits, the counter the low 64, so ids never repeat within a
    /// run and runs with different seeds never share one.
    pub fn mint(seed: u64, n: u64) -> EventId {
        EventId(uuid::Uuid::from_u64_pair(seed, n))
    }

    pub fn is_unset(&self) -> bool {
        self.0.is_nil()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// Every transition and every action step, with its cause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Stable id (see [`EventId`]); the store appends an id only once.
    #[serde(default)]
    pub id: EventId,
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
    /// The name of the token that asked (`anonymous` without one, `invalid
    /// token` for one the server does not know), or `system` for Drover itself.
    pub actor: String,
    /// The role of that token (`None` for Drover itself and unknown callers;
    /// entries written before tokens existed have none).
    #[serde(default)]
    pub role: Option<String>,
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
        assert_eq!((e.kind.clone(), e.team.clone(), e.id), (EventKind::Other, None, EventId::UNSET));
        let e = e.with_kind(EventKind::BrakeEngaged { scope: "zone-a".into() });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], serde_json::json!({"type": "brake_engaged", "scope": "zone-a"}));
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
    }

    #[test]
    fn minted_ids_differ_by_counter_and_by_seed_and_round_trip_as_strings() {
        let a = EventId::mint(7, 1);
        assert_ne!(a, EventId::mint(7, 2));
        assert_ne!(a, EventId::mint(8, 1));
        assert!(!a.is_unset() && EventId::UNSET.is_unset());
        let json = serde_json::to_value(a).unwrap();
        assert!(json.is_string(), "{json}");
        assert_eq!(serde_json::from_value::<EventId>(json).unwrap(), a);
    }
}
