//! Archives: what is left of a deleted service whose engine keeps its data
//! (PostgreSQL): its final backup, kept for a retention period during which
//! the owner can restore it into a new service, then purged.

use crate::{ActionId, ArchiveId, EngineKind, InstanceId, Labels, Plan, ServiceId, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an archive stands. `archiving` → `archived` or `failed` →
/// `purged`; nothing else (see [`ArchiveState::can_become`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveState {
    /// The final backup is being taken; the service's instances still run.
    Archiving,
    /// The final backup is kept: the archive can be restored until purged.
    Archived,
    /// The final backup could not be taken (`error` says why). Older
    /// backups, if any, are kept until the purge; it cannot be restored.
    Failed,
    /// The backups are removed; the service's name is free again.
    Purged,
}

impl ArchiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveState::Archiving => "archiving",
            ArchiveState::Archived => "archived",
            ArchiveState::Failed => "failed",
            ArchiveState::Purged => "purged",
        }
    }

    /// The transition table: the one gate every change of state goes through.
    pub fn can_become(self, to: ArchiveState) -> bool {
        use ArchiveState::*;
        matches!((self, to), (Archiving, Archived) | (Archiving, Failed) | (Archived, Purged) | (Failed, Purged))
    }
}

impl fmt::Display for ArchiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for ArchiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An archive as persisted: what the API shows plus what the engine needs
/// to restore the service (its plan) and to resume after a crash (the
/// actions it waits for).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub id: ArchiveId,
    pub service_id: ServiceId,
    /// The deleted service's name: its backups are kept under it, and no
    /// new service takes it until the archive is purged.
    pub service_name: String,
    pub engine: EngineKind,
    pub plan: Plan,
    pub team: String,
    pub zones: Vec<String>,
    pub provider: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: Labels,
    pub state: ArchiveState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the final backup was kept (or failed).
    #[serde(default)]
    pub archived_at: Option<Timestamp>,
    /// When the engine purges it.
    #[serde(default)]
    pub purge_after: Option<Timestamp>,
    /// pgBackRest's label of the final backup.
    #[serde(default)]
    pub backup_label: Option<String>,
    /// Why the final backup or the last purge attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The final backup's action (None: not opened yet).
    #[serde(default)]
    pub final_backup: Option<ActionId>,
    /// The purge's action, once opened.
    #[serde(default)]
    pub purge_action: Option<ActionId>,
    /// The primary the final backup was taken from: the purge is addressed
    /// to it (an action names an instance; this one is gone by then).
    #[serde(default)]
    pub primary: Option<InstanceId>,
}

impl ArchiveRecord {
    pub fn view(&self) -> ArchiveView {
        ArchiveView {
            id: self.id,
            service: self.service_name.clone(),
            engine: self.engine,
            team: self.team.clone(),
            state: self.state,
            created_at: self.created_at,
            archived_at: self.archived_at,
            purge_after: self.purge_after,
            backup_label: self.backup_label.clone(),
            error: self.error.clone(),
        }
    }
}

/// An archive as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchiveView {
    pub id: ArchiveId,
    /// The deleted service's name.
    pub service: String,
    pub engine: EngineKind,
    /// The team that owned the service (and may restore it).
    pub team: String,
    pub state: ArchiveState,
    pub created_at: Timestamp,
    pub archived_at: Option<Timestamp>,
    pub purge_after: Option<Timestamp>,
    pub backup_label: Option<String>,
    pub error: Option<String>,
}

/// The detail a provider reports for a backup it took: `backup LABEL of N
/// bytes`. One definition for the provider that writes it and the engine
/// that reads the label back ([`backup_label_of`]).
pub fn backup_detail(label: &str, size_bytes: u64) -> String {
    format!("backup {label} of {size_bytes} bytes")
}

/// The label in a [`backup_detail`], if the detail is one.
pub fn backup_label_of(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("backup ")?;
    let (label, _) = rest.split_once(" of ")?;
    (!label.is_empty() && !label.contains(' ')).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_ends_purged_and_never_leaves_it() {
        use ArchiveState::*;
        let all = [Archiving, Archived, Failed, Purged];
        let allowed: Vec<_> =
            all.iter().flat_map(|&a| all.iter().map(move |&b| (a, b))).filter(|&(a, b)| a.can_become(b)).collect();
        assert_eq!(allowed, [(Archiving, Archived), (Archiving, Failed), (Archived, Purged), (Failed, Purged)]);
    }

    #[test]
    fn the_label_is_read_back_from_the_detail_a_provider_wrote() {
        assert_eq!(backup_label_of(&backup_detail("20261201-102030F", 42)), Some("20261201-102030F"));
        assert_eq!(backup_label_of("simulated backup"), None);
        assert_eq!(backup_label_of("backup  of 3 bytes"), None);
    }
}
