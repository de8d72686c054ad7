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
    pub cause: String,
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
