//! Plain data shared by every layer of Drover: what is persisted, sent over
//! HTTP and handed between the engine and its shell. No behaviour beyond
//! parsing and naming lives here.

mod action;
mod archive;
mod event;
mod facts;
mod host;
mod ids;
mod image;
mod labels;
mod maintenance;
pub mod objects;
mod rollout;
mod service;
mod slots;
mod states;
mod time;
mod token;

pub use action::{ActionKind, ActionOutcome, ActionRecord, ActionState, Fault, ProvisionSpec};
pub use archive::{backup_detail, backup_label_of, ArchiveRecord, ArchiveState, ArchiveView};
pub use event::{AuditEntry, Event, EventId, EventKind, EventSubject};
pub use facts::{Beat, Facts};
pub use host::{HostRecord, HostState, HostView, RegisterHost};
pub use ids::{ActionId, ArchiveId, IncidentId, InstanceId, NotificationId, PageId, RolloutId, ServiceId};
pub use image::{Image, ImageId, Package, SourcePackage, CRATES_IO};
pub use labels::{labels_match, parse_label, validate_labels, Labels, MAX_LABELS, MAX_LABEL_LEN};
pub use maintenance::{MaintenanceWindow, Weekday};
pub use rollout::{
    default_waves, MemberPhase, RolloutMember, RolloutRecord, RolloutSpec, RolloutState, RolloutView, Selector,
};
pub use service::{
    kafka_storage_name, BackupStatus, CreateService, CredentialStatus, EngineKind, InstanceRecord, InstanceView, Plan,
    RestoreFrom, Role, ServiceRecord, ServiceView, KAFKA_STORAGE_SUFFIX, MAX_READ_REPLICAS,
};
pub use slots::{slot_sql, Slot, SLOTS};
pub use states::{InstanceState, ServiceState};
pub use time::Timestamp;
pub use token::{TokenRecord, TokenRole};

/// Everything the engine needs to resume after a restart: what the store
/// holds of live services, instances, open actions and images.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services not yet deleted.
    pub services: Vec<ServiceRecord>,
    /// Instances not yet terminated.
    pub instances: Vec<InstanceRecord>,
    /// Actions still pending or running.
    pub actions: Vec<ActionRecord>,
    pub images: Vec<Image>,
    /// Every rollout (finished ones too: they are few and kept as history).
    pub rollouts: Vec<RolloutRecord>,
    /// The members of rollouts not finished.
    pub rollout_members: Vec<RolloutMember>,
    /// Every registered host.
    pub hosts: Vec<HostRecord>,
    /// Every archive of a deleted service (purged ones too: the history).
    pub archives: Vec<ArchiveRecord>,
}

/// What one engine step decided that must be durable before anyone is told:
/// the current record of everything that changed, plus the log entries.
/// Records are upserts by id; applying the same `Changes` twice is harmless.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub services: Vec<ServiceRecord>,
    pub instances: Vec<InstanceRecord>,
    pub actions: Vec<ActionRecord>,
    pub images: Vec<Image>,
    pub events: Vec<Event>,
    pub audit: Vec<AuditEntry>,
    pub rollouts: Vec<RolloutRecord>,
    pub rollout_members: Vec<RolloutMember>,
    pub hosts: Vec<HostRecord>,
    pub archives: Vec<ArchiveRecord>,
}

impl Changes {
    /// The slots of the services these changes write records of (services,
    /// instances, actions, archives, rollouts' members), sorted, once each:
    /// on a store of several shards a commit needs the lease of each one's
    /// shard. Images, hosts, rollouts, audit and events belong to the fleet.
    pub fn slots(&self) -> Vec<Slot> {
        let mut slots: Vec<Slot> = self
            .services
            .iter()
            .map(|s| s.id.slot())
            .chain(self.instances.iter().map(|i| i.service.slot()))
            .chain(self.actions.iter().map(|a| a.service.slot()))
            .chain(self.archives.iter().map(|a| a.service_id.slot()))
            .chain(self.rollout_members.iter().map(|m| m.service.slot()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.instances.is_empty()
            && self.actions.is_empty()
            && self.images.is_empty()
            && self.events.is_empty()
            && self.audit.is_empty()
            && self.rollouts.is_empty()
            && self.rollout_members.is_empty()
            && self.hosts.is_empty()
            && self.archives.is_empty()
    }
    /// Appends `other`, keeping order (later records win on upsert).
    pub fn extend(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.instances.extend(other.instances);
        self.actions.extend(other.actions);
        self.images.extend(other.images);
        self.events.extend(other.events);
        self.audit.extend(other.audit);
        self.rollouts.extend(other.rollouts);
        self.rollout_members.extend(other.rollout_members);
        self.hosts.extend(other.hosts);
        self.archives.extend(other.archives);
    }
}
