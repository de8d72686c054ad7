//! Services (what a customer holds) and instances (its servers).

use crate::{Facts, ImageId, InstanceId, InstanceState, ServiceId, ServiceState, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    Postgres,
    Redis,
    Kafka,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Postgres => "postgres",
            EngineKind::Redis => "redis",
            EngineKind::Kafka => "kafka",
        }
    }
}
impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The one member that takes writes; followers stream from it.
    Primary,
    /// Streams from the primary; may be promoted in its place.
    Follower,
    /// One of several peers that each serve clients (Kafka's brokers):
    /// none streams from another and none is promoted.
    Broker,
}
impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Follower => "follower",
            Role::Broker => "broker",
        }
    }
}
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the customer bought: how many followers and how they replicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub followers: u8,
    /// Synchronous replication: a commit is acknowledged once a follower has it.
    pub sync: bool,
    /// A follower further behind than this is not promoted (data loss bound).
    pub max_failover_lag_bytes: u64,
    /// Rotate the URL's credential every this many days, scheduled by the
    /// engine; `0`: only on demand. None (plans from before this field, and
    /// services created without it): the control plane's
    /// `credential_rotation_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_rotation_days: Option<u32>,
    /// Kafka: the peer brokers of the cluster (None: the engine's default,
    /// three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<u8>,
}

/// What a Kafka service's storage (the PostgreSQL service holding its
/// records, created and deleted with it) is named after it.
pub const KAFKA_STORAGE_SUFFIX: &str = "-storage";

/// The name of the Kafka service `kafka`'s storage.
pub fn kafka_storage_name(kafka: &str) -> String {
    format!("{kafka}{KAFKA_STORAGE_SUFFIX}")
}

/// The most brokers a Kafka plan may ask for: the router has eight slots
/// and a rolling replacement builds one broker more before one retires.
pub const MAX_BROKERS: u8 = 7; // also in CreateService's schema

/// The longest rotation period a plan may ask for (ten years).
pub const MAX_CREDENTIAL_ROTATION_DAYS: u32 = 3650;

/// The body of `POST /v1/services`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    /// A DNS label: lowercase letters, digits and '-', not starting with '-'.
    #[schema(pattern = r"^[a-z0-9][a-z0-9-]*$", min_length = 1, max_length = 63)]
    pub name: String,
    pub engine: EngineKind,
    /// Followers of the primary (at most 8); `sync: true` needs at least one.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 8)]
    pub followers: u8,
    #[serde(default)]
    pub provider: Option<String>,
    /// PostgreSQL: a commit is acknowledged once a follower has it
    /// (synchronous replication). Redis, whose replication is always
    /// asynchronous: the primary refuses writes while no replica
    /// acknowledged within 2 s (`min-replicas-to-write 1`), so a primary cut
    /// off from its replicas fences itself.
    #[serde(default)]
    pub sync: Option<bool>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 63)]
    pub team: Option<String>,
    /// 1 to 16 zone names of 1 to 63 characters (the item rule is added in the server's openapi.rs).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 16)]
    pub zones: Option<Vec<String>>,
    #[serde(default)]
    pub max_failover_lag_bytes: Option<u64>,
    /// Rotate the URL's credential every this many days (0: only on demand;
    /// absent: the control plane's default).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3650)]
    pub credential_rotation_days: Option<u32>,
    /// Labels (`{"tier":"gold"}`): keys and values of 1 to 63 characters of
    /// `[A-Za-z0-9._-/]`, at most 32 pairs; rollouts select by them.
    #[serde(default)]
    pub labels: Option<crate::Labels>,
    /// Kafka only: the peer brokers of the cluster (1 to 7; default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 7)]
    pub brokers: Option<u8>,
}

/// The most followers a plan may ask for; more is a typo, not a plan.
pub const MAX_FOLLOWERS: u8 = 8; // also in CreateService's schema

impl CreateService {
    /// Checks what can be checked without the fleet; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() || name.len() > 63 {
            return Err(format!("name must be 1 to 63 characters, got {}", name.len()));
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') || name.starts_with('-') {
            return Err(format!(
                "name {name:?} may hold only lowercase letters, digits and '-', and must not start with '-'"
            ));
        }
        if self.followers > MAX_FOLLOWERS {
            return Err(format!("followers must be at most {MAX_FOLLOWERS}, got {}", self.followers));
        }
        if self.sync == Some(true) && self.followers == 0 {
            return Err("sync replication needs at least one follower".into());
        }
        if let Some(zones) = &self.zones {
            if zones.is_empty() || zones.len() > 16 {
                return Err("zones must list 1 to 16 zones".into());
            }
            if zones.iter().any(|z| z.is_empty() || z.chars().count() > 63) {
                return Err("each zone name must be 1 to 63 characters".into());
            }
        }
        if let Some(team) = &self.team {
            if team.is_empty() || team.chars().count() > 63 {
                return Err("team must be 1 to 63 characters".into());
            }
        }
        if self.credential_rotation_days.is_some_and(|d| d > MAX_CREDENTIAL_ROTATION_DAYS) {
            return Err(format!("credential_rotation_days must be at most {MAX_CREDENTIAL_ROTATION_DAYS}"));
        }
        if let Some(labels) = &self.labels {
            crate::validate_labels(labels)?;
        }
        match self.brokers {
            Some(_) if self.engine != crate::EngineKind::Kafka => {
                return Err(format!("brokers is for Kafka services; a {} service has followers", self.engine));
            }
            Some(b) if b == 0 || b > MAX_BROKERS => {
                return Err(format!("brokers must be 1 to {MAX_BROKERS}, got {b}"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A service as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: ServiceId,
    pub name: String,
    pub engine: EngineKind,
    pub plan: Plan,
    pub team: String,
    pub zones: Vec<String>,
    pub image: ImageId,
    pub provider: String,
    pub state: ServiceState,
    pub created_at: Timestamp,
    pub state_since: Timestamp,
    /// A remedy failed for good; automation stops until a person acts.
    #[serde(default)]
    pub needs_human: bool,
    /// Remedies that failed in a row since the service was last available,
    /// and when the first of them failed: kept so that a control plane that
    /// restarts (or crash-loops) cannot retry a broken remedy forever.
    #[serde(default)]
    pub remedy_failures: u32,
    #[serde(default)]
    pub failing_since: Option<Timestamp>,
    #[serde(default)]
    pub backups: BackupStatus,
    #[serde(default)]
    pub credentials: CredentialStatus,
    /// When a rollout may move it (None: its team's default, else any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<crate::MaintenanceWindow>,
    /// Its labels (absent in records from before labels existed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::Labels,
    /// The service and moment its data was forked from (None: created empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<RestoreFrom>,
    /// The read slots (1 to [`MAX_READ_REPLICAS`]) whose read replicas the
    /// owner added on demand: each slot is kept filled by one asynchronous
    /// follower, rebuilt in the same slot when lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_slots: Vec<u32>,
    /// The image it ran before its last major-version upgrade: what
    /// `POST /v1/services/{name}/upgrade/rollback` moves it back onto.
    /// None: never upgraded, or rolled back already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<crate::ImageId>,
}

/// The most read replicas a service may have on demand, besides its plan's
/// followers (Heroku allows 5 followers per leader, RDS 15 read replicas;
/// 8 is the plan's own bound on followers, and the machine's ports).
pub const MAX_READ_REPLICAS: u32 = 8;

/// Where a fork's data comes from: the backups and archived WAL of
/// `service`, replayed up to `at` (exclusive: what committed before that
/// moment), or to the end of what is archived when `at` is None.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreFrom {
    /// The source service's name (its backups are kept under it).
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// The fork's first primary came up with the data: a primary built
    /// after that is not restored from the source again.
    #[serde(default)]
    pub restored: bool,
    /// The backup set to restore (an archive's final backup), replayed to
    /// the end of what is archived: the source service is gone, there is
    /// no primary to archive its latest WAL first. None: a fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// Where a service's credential rotation stands (persisted: a control plane
/// restarted in an overlap revokes the old credential when it ends).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialStatus {
    /// When the URL's credential was last rotated (None: never).
    #[serde(default)]
    pub last_rotated_at: Option<Timestamp>,
    /// The previous credential is still accepted until then, then revoked.
    #[serde(default)]
    pub overlap_ends_at: Option<Timestamp>,
    /// When the schedule rotates it next (None: only on demand).
    #[serde(default)]
    pub next_rotation_at: Option<Timestamp>,
}

/// What is known of a service's backups and their restore tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupStatus {
    pub last_backup_at: Option<Timestamp>,
    pub last_backup_error: Option<String>,
    pub last_verified_restore_at: Option<Timestamp>,
    /// Outcome of the latest restore test (None: never tested).
    pub last_verify_ok: Option<bool>,
    pub last_verify_error: Option<String>,
    /// When each full backup pgBackRest keeps started, oldest first (at
    /// most `backup_retention_full`): the first is `recoverable_since`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_backups_started: Vec<Timestamp>,
}

/// An instance as persisted: everything but heartbeat facts, which live in
/// memory only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub service: ServiceId,
    pub role: Role,
    pub zone: String,
    pub provider: String,
    pub image: ImageId,
    pub state: InstanceState,
    /// The provider confirmed this instance can no longer accept writes.
    pub fenced: bool,
    /// Restarts tried since it was last available; a restart that does not
    /// bring it back leads to a rebuild.
    pub restarts: u32,
    pub created_at: Timestamp,
    pub state_since: Timestamp,
    /// The host it was placed on. None: placed before hosts existed (the
    /// built-in host adopts it) or by an engine with no hosts (the simulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The read slot of a read replica added on demand (None: a member of
    /// the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_slot: Option<u32>,
}

/// An instance as shown by the API: the record plus what memory knows.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: InstanceId,
    pub service: String,
    pub role: Role,
    pub zone: String,
    /// The host it runs on (null where there are no hosts: the simulator).
    pub host: Option<String>,
    pub provider: String,
    pub image: String,
    pub state: InstanceState,
    pub fenced: bool,
    pub writable: bool,
    pub state_since: Timestamp,
    pub last_heartbeat_at: Option<Timestamp>,
    pub facts: Facts,
    /// A read replica added on demand: its read slot (its stable read URL
    /// is `read_urls[slot]`'s database `app_read<slot>`). Absent for the
    /// primary and the plan's followers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_slot: Option<u32>,
}

/// A service as shown by the API.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub id: ServiceId,
    pub name: String,
    pub engine: EngineKind,
    pub state: ServiceState,
    pub plan: Plan,
    pub team: String,
    pub zones: Vec<String>,
    pub provider: String,
    pub image: String,
    pub created_at: Timestamp,
    pub state_since: Timestamp,
    /// What the engine is doing about it right now, if anything.
    pub remedy: Option<String>,
    pub needs_human: bool,
    /// The stable endpoint clients use; it never changes across failover,
    /// switchover or replacement. Filled by the provider (none for `sim`).
    pub url: Option<String>,
    pub backups: BackupStatus,
    #[serde(default)]
    pub credentials: CredentialStatus,
    pub instances: Vec<InstanceView>,
    /// Its own maintenance window, if it has one (else its team's default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<crate::MaintenanceWindow>,
    /// The service and moment its data was forked from, if it is a fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<RestoreFrom>,
    /// Its labels (`{}` when it has none).
    #[serde(default)]
    pub labels: crate::Labels,
    /// The read slots of its read replicas added on demand (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_slots: Vec<u32>,
    /// One stable read URL per read replica added on demand, in slot order,
    /// through the router: it stays the same when the replica is rebuilt.
    /// Filled by the provider (empty for `sim`).
    #[serde(default)]
    pub read_urls: Vec<String>,
    /// The oldest moment a fork can go back to: the start of the oldest
    /// backup kept. Null without a backup.
    #[serde(default)]
    pub recoverable_since: Option<Timestamp>,
    /// The image it ran before its last major-version upgrade, which
    /// `upgrade/rollback` moves it back onto (absent: nothing to roll back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<String>,
    /// A Kafka service: the PostgreSQL service that holds its records
    /// (`<name>-storage`, created and deleted with it), whose members are
    /// listed in `instances` after the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// A Kafka service's storage: that Kafka service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_of: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> CreateService {
        CreateService {
            name: name.into(),
            engine: EngineKind::Postgres,
            followers: 1,
            provider: None,
            sync: None,
            team: None,
            zones: None,
            max_failover_lag_bytes: None,
            credential_rotation_days: None,
            labels: None,
            brokers: None,
        }
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(req("db1").validate().is_ok());
        assert!(req("").validate().is_err());
        assert!(req("DB").validate().is_err());
        assert!(req("-x").validate().is_err());
        assert!(req(&"a".repeat(64)).validate().is_err());
        assert!(req("a b").validate().is_err());
    }

    #[test]
    fn bad_labels_are_refused_with_what_is_wrong() {
        let mut r = req("db1");
        r.labels = Some([("tier".to_string(), "gold".to_string())].into_iter().collect());
        assert!(r.validate().is_ok());
        r.labels = Some([("tier".to_string(), "g old".to_string())].into_iter().collect());
        assert!(r.validate().unwrap_err().contains("label value"));
        let old = r#"{"id":"0190c8a0-0000-7000-8000-000000000001","name":"a","engine":"postgres","plan":{"followers":0,"sync":false,"max_failover_lag_bytes":1},"team":"t","zones":[],"image":"i","provider":"sim","state":"available","created_at":1,"state_since":1}"#;
        let rec: ServiceRecord = serde_json::from_str(old).unwrap();
        assert!(rec.labels.is_empty(), "records from before labels read with none");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<CreateService>(r#"{"name":"a","engine":"postgres","folowers":1}"#).unwrap_err();
        assert!(e.to_string().contains("folowers"), "{e}");
        assert!(serde_json::from_str::<CreateService>(r#"{"name":"a","engine":"mysql"}"#).is_err());
    }
}
