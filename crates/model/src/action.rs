//! Actions: the only way the engine changes the fleet. Each is a durable
//! record with an id, a state and an attempt count; providers carry them out
//! idempotently, so a retry after a crash never harms.

use crate::{ActionId, ImageId, InstanceId, Role, ServiceId, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The process dies (kill -9).
    Crash,
    /// The process stops answering but stays (SIGSTOP).
    Hang,
    /// The instance runs but the control plane no longer hears it.
    Partition,
    /// Undo `hang` and `partition`.
    Heal,
}
impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Hang => "hang",
            Fault::Partition => "partition",
            Fault::Heal => "heal",
        }
    }
}
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a Provision action builds: the fields of its JSON object, beside
/// `kind`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisionSpec {
    pub role: Role,
    pub zone: String,
    pub image: ImageId,
    /// The service's name: providers name routers, databases and backup
    /// stanzas after it.
    #[serde(default)]
    pub service_name: String,
    /// The plan replicates synchronously.
    #[serde(default)]
    pub sync: bool,
    /// The image's engine settings, applied to the new instance.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: std::collections::BTreeMap<String, String>,
    /// The engine the service runs: a provider that runs several
    /// (`local`: PostgreSQL and Redis) builds this one. Records stored
    /// before this field existed were PostgreSQL's.
    #[serde(default)]
    pub engine: crate::EngineKind,
    /// The host placement chose (None: an engine without hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A primary built from another service's backups and archived WAL
    /// (a fork) instead of an empty cluster. None: a new database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<crate::RestoreFrom>,
    /// A read replica added on demand (`POST /v1/services/{name}/followers`):
    /// the read slot whose stable read URL (router database
    /// `app_read<slot>`) points at it. None: a member of the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_slot: Option<u32>,
    /// The image's engine version (`17.10`): a provider builds the
    /// member with that major's binaries, and a member of another major
    /// than the service's primary by logical replication (a major
    /// upgrade). Empty (records stored before this field existed): the
    /// provider's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// A member of a Kafka service's storage: the Kafka service whose
    /// records this PostgreSQL service holds (its brokers keep prepared
    /// statements across transactions, so the provider's router pools
    /// its sessions whole). None: any other member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_of: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionKind {
    /// Build a new instance from `image` (followers copy the primary).
    /// Boxed: a provision carries far more than any other action, and every
    /// open action (hundreds of thousands in a lost zone) would pay for it.
    Provision(Box<ProvisionSpec>),
    /// Ask the provider, out of band, whether the instance is alive.
    Probe,
    /// Make sure the instance can no longer accept writes.
    Fence {
        /// Cut it off at once: its clients are disconnected and it is
        /// stopped without a graceful shutdown. For a primary already judged
        /// `unavailable` (a failover): nothing it runs can finish, so waiting
        /// for its transactions only delays the promotion. False (a planned
        /// switchover, and every record stored before this field existed):
        /// running statements finish first and clients queue, none fails.
        #[serde(default)]
        immediate: bool,
    },
    /// Make a follower the primary.
    Promote,
    Restart,
    /// Stop the instance for good.
    Retire,
    /// Keep its logs and data, free its compute.
    Archive,
    /// Delete everything left of it.
    Terminate,
    /// Chaos: inject a fault.
    InjectFault {
        fault: Fault,
    },
    /// Take a base backup of the service now (target: its primary).
    Backup,
    /// Restore the latest backup into a scratch instance, check it, and
    /// record the result (target: the primary whose backups are verified).
    VerifyRestore,
    /// Give the service's URL a new credential; the old one keeps working
    /// for an overlap (target: the primary).
    RotateCredentials,
    /// The end of a rotation's overlap: revoke the credential it replaced
    /// (target: the primary). Idempotent: with nothing left to revoke it
    /// succeeds and changes nothing.
    RevokePreviousCredentials,
    /// Remove the backups of an archive past its retention: the pgBackRest
    /// stanza of the deleted service `service_name` (target: its last
    /// primary, long gone). Idempotent: nothing left to remove succeeds.
    PurgeArchive {
        service_name: String,
        #[serde(default)]
        engine: crate::EngineKind,
        archive: crate::ArchiveId,
    },
}

impl ActionKind {
    /// A Provision's fields (None for every other action).
    pub fn provision(&self) -> Option<&ProvisionSpec> {
        match self {
            ActionKind::Provision(spec) => Some(spec),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Provision(_) => "provision",
            ActionKind::Probe => "probe",
            ActionKind::Fence { .. } => "fence",
            ActionKind::Promote => "promote",
            ActionKind::Restart => "restart",
            ActionKind::Retire => "retire",
            ActionKind::Archive => "archive",
            ActionKind::Terminate => "terminate",
            ActionKind::InjectFault { .. } => "inject_fault",
            ActionKind::Backup => "backup",
            ActionKind::VerifyRestore => "verify_restore",
            ActionKind::RotateCredentials => "rotate_credentials",
            ActionKind::RevokePreviousCredentials => "revoke_previous_credentials",
            ActionKind::PurgeArchive { .. } => "purge_archive",
        }
    }
    /// Destructive actions change what serves the service; they pause under
    /// the mass-uncertainty brake and count against zone budgets.
    pub fn is_destructive(&self) -> bool {
        matches!(self, ActionKind::Provision(_) | ActionKind::Fence { .. } | ActionKind::Promote | ActionKind::Restart)
    }
}
impl fmt::Debug for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Decided and durable, waiting for a zone budget.
    Pending,
    /// Dispatched to its provider; a result is awaited.
    Running,
    Succeeded,
    /// Failed after its last attempt.
    Failed,
    /// No longer needed (the situation changed before it could run).
    Cancelled,
}
impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Running => "running",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::Cancelled => "cancelled",
        }
    }
    pub fn is_open(self) -> bool {
        matches!(self, ActionState::Pending | ActionState::Running)
    }
}
impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::str::FromStr for ActionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => ActionState::Pending,
            "running" => ActionState::Running,
            "succeeded" => ActionState::Succeeded,
            "failed" => ActionState::Failed,
            "cancelled" => ActionState::Cancelled,
            other => return Err(format!("unknown action state {other:?}")),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionRecord {
    pub id: ActionId,
    pub service: ServiceId,
    pub instance: InstanceId,
    #[serde(flatten)]
    pub kind: ActionKind,
    pub state: ActionState,
    /// Dispatches so far. A result for an older attempt is stale and dropped.
    pub attempts: u32,
    pub cause: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When a running attempt times out, or a retry is due.
    pub deadline: Timestamp,
    pub error: Option<String>,
}

/// What a provider reports for one attempt of an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ActionOutcome {
    Succeeded {
        detail: Option<String>,
    },
    /// `retryable` false means trying again cannot help.
    Failed {
        error: String,
        retryable: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Provision record keeps the flat JSON shape it had before its
    /// fields were boxed: stored records and API clients read it.
    #[test]
    fn a_provision_record_is_one_flat_object_with_its_kind() {
        let json = serde_json::json!({
            "id": "0190a0b0-0000-7000-8000-000000000001",
            "service": "0190a0b0-0000-7000-8000-000000000002",
            "instance": "0190a0b0-0000-7000-8000-000000000003",
            "kind": "provision",
            "role": "follower",
            "zone": "z1",
            "image": "img-1",
            "service_name": "orders",
            "sync": true,
            "engine": "postgres",
            "read_slot": 2,
            "version": "17.10",
            "state": "pending",
            "attempts": 0,
            "cause": "a follower is missing",
            "created_at": "1970-01-01T00:00:00.000001Z",
            "updated_at": "1970-01-01T00:00:00.000001Z",
            "deadline": "1970-01-01T00:00:00.000001Z",
            "error": null
        });
        let record: ActionRecord = serde_json::from_value(json.clone()).expect("the old shape parses");
        let ActionKind::Provision(spec) = &record.kind else { panic!("not a provision: {:?}", record.kind) };
        assert_eq!((spec.role, spec.zone.as_str(), spec.read_slot, spec.sync), (Role::Follower, "z1", Some(2), true));
        assert_eq!(serde_json::to_value(&record).unwrap(), json, "and is written back the same");
        // Records stored before the newer fields existed still load.
        let old = serde_json::json!({"kind": "provision", "role": "primary", "zone": "z1", "image": "img-1"});
        let kind: ActionKind = serde_json::from_value(old).expect("an old record loads");
        assert!(matches!(kind, ActionKind::Provision(s) if s.service_name.is_empty() && s.version.is_empty()));
    }

    #[test]
    fn an_action_kind_is_small() {
        assert!(std::mem::size_of::<ActionKind>() <= 64, "{}", std::mem::size_of::<ActionKind>());
    }
}
