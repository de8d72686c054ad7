//! Hosts: the machines instances run on, each with an agent that carries
//! out the provider actions for the instances placed on it.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Takes new members.
    Ready,
    /// Keeps what runs on it, takes no new members (an operator asked).
    Cordoned,
    /// Takes no new members; its members are being replaced elsewhere.
    Draining,
    /// Its agent fell silent: nothing on it is trusted until corroborated.
    Uncertain,
    /// Known lost: its members are replaced.
    Down,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::Cordoned => "cordoned",
            HostState::Draining => "draining",
            HostState::Uncertain => "uncertain",
            HostState::Down => "down",
        }
    }
    /// Only a ready host is given new members.
    pub fn takes_new_members(self) -> bool {
        self == HostState::Ready
    }
}
impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host as persisted (the store's `hosts` table, by name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub zone: String,
    /// The address its servers are reached at (e.g. `127.0.0.2`).
    pub address: String,
    /// Instances it may hold (members and leavers not yet terminated).
    pub capacity: u32,
    pub state: HostState,
    pub registered_at: Timestamp,
    /// When its agent was last heard (registration, heartbeats).
    pub last_seen: Option<Timestamp>,
    /// The control plane's own machine, registered by `drover serve` for
    /// its built-in agent. It stands for that one machine running a whole
    /// fleet as Drover did before hosts: it takes members of every zone
    /// (each keeps the zone it was placed in) and several members of one
    /// service. Placement prefers every other ready host to it.
    #[serde(default)]
    pub builtin: bool,
}

/// What an agent (or `drover serve` for its own host) registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    /// 1 to 63 characters: letters, digits, '-', '_' and '.'.
    #[schema(min_length = 1, max_length = 63)]
    pub name: String,
    #[schema(min_length = 1, max_length = 63)]
    pub zone: String,
    /// The address its servers are reached at.
    #[schema(min_length = 1, max_length = 255)]
    pub address: String,
    /// Instances it may hold (at least 1).
    #[schema(minimum = 1)]
    pub capacity: u32,
}

impl RegisterHost {
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !ok_name(&self.name) {
            return Err(format!(
                "host name {:?} must be 1 to 63 characters of letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        if self.zone.is_empty() || self.zone.chars().count() > 63 {
            return Err("zone must be 1 to 63 characters".into());
        }
        if self.address.is_empty() || self.address.len() > 255 || self.address.contains(char::is_whitespace) {
            return Err("address must be 1 to 255 characters without spaces".into());
        }
        if self.capacity == 0 {
            return Err("capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// A host as `GET /v1/hosts` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    pub name: String,
    pub zone: String,
    pub state: HostState,
    pub capacity: u32,
    /// Instances on it now (not yet terminated).
    pub instances: u32,
}
