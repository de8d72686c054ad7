//! Kafka: peer brokers over a shared storage (issue 14).
//!
//! The local provider runs Kafka as `tansu` brokers: stateless, each one
//! leader of every partition and group coordinator, their records kept in a
//! PostgreSQL storage database. None streams from another and none is
//! promoted: a broker that fails is fenced (cut at the router) and replaced
//! by a new one, which serves at once (it holds no data of its own).
//! Durability is the storage's, not a partition replica's.
//!
//! A rollout (`Topology::rolled_role`: brokers, no switchover) replaces the
//! brokers one at a time: a broker of the new image is built and serves
//! before an old one retires, and a retiring broker is drained at the
//! router (no new connection, its sessions given time to end) before it
//! stops, so a client only ever reconnects to the same bootstrap address.

use super::{BackupSource, Candidate, EnginePolicy, Members, Topology};
use drover_model::{EngineKind, Plan};
use std::cmp::Ordering;

/// Brokers a Kafka service keeps serving.
pub const BROKERS: u8 = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaPolicy;

impl EnginePolicy for KafkaPolicy {
    fn engine(&self) -> EngineKind {
        EngineKind::Kafka
    }
    fn topology(&self) -> Topology {
        Topology::PeerBrokers
    }
    /// The plan's brokers ([`BROKERS`] by default), whatever its followers
    /// say.
    fn members(&self, plan: &Plan) -> Members {
        Members { brokers: plan.brokers.unwrap_or(BROKERS), ..Members::default() }
    }
    /// Brokers are never promoted: nothing to promote to.
    fn can_promote(&self, _candidate: &Candidate, _plan: &Plan) -> bool {
        false
    }
    fn promotion_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        b.id.cmp(&a.id)
    }
    /// A broker keeps nothing: replacing it is as fast as restarting it.
    fn restarts_before_rebuild(&self) -> u32 {
        0
    }
    fn backups(&self) -> BackupSource {
        BackupSource::NotOwn { why: "a Kafka service's records are in its storage database, not in its brokers" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::Role;

    #[test]
    fn three_peer_brokers_none_promotable() {
        let plan =
            Plan { followers: 1, sync: true, max_failover_lag_bytes: 0, credential_rotation_days: None, brokers: None };
        let m = KafkaPolicy.members(&plan);
        assert_eq!(m.roles().collect::<Vec<_>>(), [Role::Broker; 3]);
        assert_eq!((KafkaPolicy.engine(), KafkaPolicy.topology()), (EngineKind::Kafka, Topology::PeerBrokers));
        let c = Candidate {
            id: drover_model::InstanceId::new_at(1_800_000_000_000_000, 1),
            position: None,
            lag_bytes: None,
        };
        assert!(!KafkaPolicy.can_promote(&c, &plan));
        assert!(matches!(KafkaPolicy.backups(), BackupSource::NotOwn { .. }));
    }
}
