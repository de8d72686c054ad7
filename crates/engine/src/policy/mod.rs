//! Engines as policies: what differs between PostgreSQL, Redis and Kafka,
//! asked through one seam. The engine's remedies, budgets, brake, backup
//! schedules and commands never test which engine a service runs; they ask
//! its [`EnginePolicy`] (found in [`Policies`] by the service's
//! `EngineKind`), and branch only on the [`Topology`] it names.
//!
//! What is *not* here, and why: how a member is probed, fenced, promoted,
//! backed up or restore-tested is the provider's work (one `ActionKind` per
//! step, carried out per engine by the provider that runs it); the engine
//! only decides *that* and *when*. Checks are composed by the server from
//! what the engine records and the provider inspects.

mod kafka;
mod postgres;
mod redis;

pub use kafka::{KafkaPolicy, BROKERS as KAFKA_BROKERS};
pub use postgres::{quoted_standby_name, synchronous_standby_names, PostgresPolicy, SYNC_STANDBYS};
pub use redis::RedisPolicy;

use drover_model::{EngineKind, InstanceId, Plan, Role};
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// How the members of a service relate: what a remedy may do to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One writable primary; followers stream from it and the most advanced
    /// healthy one is promoted when it fails (fence first, always).
    /// PostgreSQL and Redis.
    PrimaryWithFollowers,
    /// Peers that each serve clients; none streams from another and none is
    /// promoted. A failed peer is fenced (cut at the router) and replaced.
    /// Kafka's brokers.
    PeerBrokers,
}

impl Topology {
    /// The members a rolling replacement replaces one at a time, each new
    /// one built from the new image (and serving) before an old one
    /// retires: followers of a primary, or every peer.
    pub fn rolled_role(self) -> Role {
        match self {
            Topology::PrimaryWithFollowers => Role::Follower,
            Topology::PeerBrokers => Role::Broker,
        }
    }
    /// Whether a roll ends with a planned switchover: a primary is the one
    /// member not replaced side by side (fence it gracefully, promote a
    /// follower of the new image). Peers have none: the roll is done when
    /// the last old peer has retired.
    pub fn rolls_by_switchover(self) -> bool {
        self == Topology::PrimaryWithFollowers
    }
}

/// How many members of each role a plan asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub primaries: u8,
    pub followers: u8,
    pub brokers: u8,
}

impl Members {
    /// Planned members of `role`.
    pub fn count(&self, role: Role) -> u8 {
        match role {
            Role::Primary => self.primaries,
            Role::Follower => self.followers,
            Role::Broker => self.brokers,
        }
    }
    /// Every planned member's role, in the order a new service builds them
    /// (the primary first: followers copy it).
    pub fn roles(&self) -> impl Iterator<Item = Role> {
        let Members { primaries, followers, brokers } = *self;
        std::iter::repeat_n(Role::Primary, usize::from(primaries))
            .chain(std::iter::repeat_n(Role::Follower, usize::from(followers)))
            .chain(std::iter::repeat_n(Role::Broker, usize::from(brokers)))
    }
    pub fn total(&self) -> usize {
        usize::from(self.primaries) + usize::from(self.followers) + usize::from(self.brokers)
    }
}

/// A follower that could be promoted, as its heartbeats describe it. The
/// engine has already checked what holds for every engine (available, not
/// fenced, heard recently); the policy judges the replication facts.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub id: InstanceId,
    /// How far it has replayed (PostgreSQL: WAL position; Redis: offset).
    pub position: Option<u64>,
    /// How far it trails its primary, in bytes.
    pub lag_bytes: Option<u64>,
}

/// Where a service's backups come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSource {
    /// Taken from (and restore-tested against) the available primary, on
    /// the engine's backup schedule.
    Primary,
    /// The service keeps none of its own; says where they are instead.
    NotOwn { why: &'static str },
}

/// What differs between engines, as the engine's decisions need it. Pure:
/// every answer is a function of its arguments.
pub trait EnginePolicy: Send + Sync + fmt::Debug {
    /// The engine this policy is for.
    fn engine(&self) -> EngineKind;
    /// How members relate; decides which remedies exist.
    fn topology(&self) -> Topology;
    /// The members a plan asks for. A new service builds them in
    /// `Members::roles` order; reconcile keeps their counts.
    fn members(&self, plan: &Plan) -> Members;
    /// Whether a healthy follower may be promoted: the data-loss bound.
    fn can_promote(&self, candidate: &Candidate, plan: &Plan) -> bool;
    /// Orders promotable followers: the greatest is promoted. Must be a
    /// total order (tie-break on the id) so replays choose the same one.
    fn promotion_order(&self, a: &Candidate, b: &Candidate) -> Ordering;
    /// Restarts tried on a primary that no follower can replace before it
    /// is fenced and rebuilt from its image.
    fn restarts_before_rebuild(&self) -> u32;
    /// Where the service's backups come from.
    fn backups(&self) -> BackupSource;
    /// Whether a new service can be forked from this one's backups and
    /// archived log, to a moment (PostgreSQL: base backup + WAL replay).
    /// Engines whose backups are snapshots only cannot.
    fn forks_to_a_moment(&self) -> bool {
        false
    }
    /// Whether read replicas can be added on demand (`crate::followers`):
    /// asynchronous followers beside the plan, each with its own read URL.
    /// Redis (its replicas are the plan's failover targets) and Kafka
    /// (peers) have none.
    fn read_replicas(&self) -> bool {
        false
    }
    /// Whether deleting a service first takes a final backup and keeps it
    /// for `archive_retention` (an archive the owner can restore). Engines
    /// whose data is a cache or lives elsewhere are deleted at once.
    fn archives_on_delete(&self) -> bool {
        false
    }
    /// Whether a service can be moved onto a newer major version of its
    /// engine (`crate::upgrades`): its provider copies the data into a member
    /// of the new major while the old one serves (PostgreSQL: logical
    /// replication), and back on a rollback.
    fn upgrades_major_versions(&self) -> bool {
        false
    }
}

/// The policy of each engine kind, looked up per service.
#[derive(Clone, Debug)]
pub struct Policies {
    by_engine: [Arc<dyn EnginePolicy>; 3],
}

fn index(engine: EngineKind) -> usize {
    match engine {
        EngineKind::Postgres => 0,
        EngineKind::Redis => 1,
        EngineKind::Kafka => 2,
    }
}

/// The policy a service of `engine` runs under unless `Config.policies`
/// says otherwise; for callers outside the engine (the simulator) that need
/// to know, say, which members a plan makes.
pub fn builtin(engine: EngineKind) -> &'static dyn EnginePolicy {
    match engine {
        EngineKind::Postgres => &PostgresPolicy,
        EngineKind::Redis => &RedisPolicy,
        EngineKind::Kafka => &KafkaPolicy,
    }
}

impl Default for Policies {
    /// The [`builtin`] policy of every engine.
    fn default() -> Self {
        Policies { by_engine: [Arc::new(PostgresPolicy), Arc::new(RedisPolicy), Arc::new(KafkaPolicy)] }
    }
}

impl Policies {
    /// The policy services of `engine` run under.
    pub fn get(&self, engine: EngineKind) -> &dyn EnginePolicy {
        &*self.by_engine[index(engine)]
    }
    /// These policies with `policy` in place of its engine's.
    pub fn with(mut self, policy: Arc<dyn EnginePolicy>) -> Policies {
        let i = index(policy.engine());
        self.by_engine[i] = policy;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policies_are_the_builtin_ones_and_with_replaces_only_its_engine() {
        let plan =
            Plan { followers: 2, sync: true, max_failover_lag_bytes: 0, credential_rotation_days: None, brokers: None };
        let defaults = Policies::default();
        for engine in [EngineKind::Postgres, EngineKind::Redis, EngineKind::Kafka] {
            assert_eq!(defaults.get(engine).members(&plan), builtin(engine).members(&plan));
            assert_eq!(defaults.get(engine).topology(), builtin(engine).topology());
        }
        #[derive(Debug)]
        struct Peers;
        impl EnginePolicy for Peers {
            fn engine(&self) -> EngineKind {
                EngineKind::Kafka
            }
            fn topology(&self) -> Topology {
                Topology::PeerBrokers
            }
            fn members(&self, plan: &Plan) -> Members {
                Members { brokers: plan.followers, ..Members::default() }
            }
            fn can_promote(&self, _: &Candidate, _: &Plan) -> bool {
                false
            }
            fn promotion_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
                a.id.cmp(&b.id)
            }
            fn restarts_before_rebuild(&self) -> u32 {
                0
            }
            fn backups(&self) -> BackupSource {
                BackupSource::NotOwn { why: "test" }
            }
        }
        let mixed = Policies::default().with(Arc::new(Peers));
        assert_eq!(mixed.get(EngineKind::Kafka).topology(), Topology::PeerBrokers);
        assert_eq!(mixed.get(EngineKind::Kafka).members(&plan).roles().collect::<Vec<_>>(), [Role::Broker; 2]);
        assert_eq!(mixed.get(EngineKind::Postgres).topology(), Topology::PrimaryWithFollowers);
        assert_eq!(mixed.get(EngineKind::Redis).engine(), EngineKind::Redis, "Redis runs under its own policy");
        assert_eq!(defaults.get(EngineKind::Kafka).topology(), Topology::PeerBrokers, "Kafka runs under its own");
    }
}
