//! API tokens: who may call the control plane, and for what. The secret
//! itself is never part of these records (the store keeps its SHA-256).

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// What a token may do (the permission table in the server maps each route
/// to the roles allowed). Not to be confused with an instance's [`crate::Role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Reads fleet data.
    Viewer,
    /// Viewer, plus the day-to-day commands.
    Operator,
    /// Every human permission, tokens included.
    Admin,
    /// One host's agent: heartbeats and reads of its own instances.
    Agent,
    /// An alert source: posts alerts, nothing else.
    Integration,
}

impl TokenRole {
    pub const ALL: [TokenRole; 5] =
        [TokenRole::Viewer, TokenRole::Operator, TokenRole::Admin, TokenRole::Agent, TokenRole::Integration];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Operator => "operator",
            TokenRole::Admin => "admin",
            TokenRole::Agent => "agent",
            TokenRole::Integration => "integration",
        }
    }

    pub fn parse(text: &str) -> Option<TokenRole> {
        TokenRole::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as stored and listed: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: TokenRole,
    /// Limits the token to this team's services (for an integration token:
    /// the team its alerts go to).
    pub team: Option<String>,
    /// For an agent token: the host whose instances it may report.
    pub host: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used: Option<Timestamp>,
}

impl TokenRecord {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now.0 < e.0)
    }
}
