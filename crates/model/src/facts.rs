//! Heartbeats and the facts they carry. Facts live in memory only.

use crate::{InstanceId, Role, Timestamp};
use serde::{Deserialize, Serialize};

/// What an agent saw of one instance. Every field is optional: an agent
/// sends what its engine knows. Unknown fields are ignored so that newer
/// agents can talk to an older control plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Whether the server accepts writes right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable: Option<bool>,
    /// Write-ahead log position in bytes (PostgreSQL LSN as a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_position: Option<u64>,
    /// A follower: how far behind its primary it is, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_bytes: Option<u64>,
    /// A follower: whether its replication stream from the primary is up.
    /// `false` is evidence against the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_streaming: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<Timestamp>,
    /// The TCP port the server listens on at its host's address: an agent
    /// host reports it so followers on other hosts can be pointed at it.
    /// Not kept by the engine (the control plane's shell remembers the
    /// last one heard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 65535)]
    pub port: Option<u16>,
}

/// One heartbeat: `seq` grows with every beat an agent sends for an instance,
/// so a duplicate or reordered beat is recognised and dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    pub instance: InstanceId,
    pub seq: u64,
    #[serde(default, deserialize_with = "crate::objects::object")]
    pub facts: Facts,
}
