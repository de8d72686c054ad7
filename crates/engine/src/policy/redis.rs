//! Redis: a primary with asynchronous replicas (issue 13).
//!
//! The same shape as PostgreSQL's, with Redis's facts: a replica reports
//! its replication offset (`slave_repl_offset`) as its position and the
//! gap to its primary's `master_repl_offset` as its lag, both in bytes of
//! the replication stream. What a failover does to the servers (cut at the
//! router, stop the old primary, `REPLICAOF NO ONE` on the chosen replica,
//! repoint the others) is the provider's; the engine asks only which
//! replica and whether it may.

use super::{BackupSource, Candidate, EnginePolicy, Members, Topology};
use drover_model::{EngineKind, Plan};
use std::cmp::Ordering;

/// A primary with no promotable replica is restarted once (it reloads its
/// AOF/RDB, faster than a full resync of a rebuilt one) before it is
/// rebuilt from its image.
const MAX_RESTARTS: u32 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct RedisPolicy;

impl EnginePolicy for RedisPolicy {
    fn engine(&self) -> EngineKind {
        EngineKind::Redis
    }
    fn topology(&self) -> Topology {
        Topology::PrimaryWithFollowers
    }
    fn members(&self, plan: &Plan) -> Members {
        Members { primaries: 1, followers: plan.followers, brokers: 0 }
    }
    /// A replica whose offset trails the primary's by at most the plan's
    /// bound: replication is asynchronous, so the gap is what a promotion
    /// would lose (Redis `WAIT` tells a client which writes are safe).
    fn can_promote(&self, candidate: &Candidate, plan: &Plan) -> bool {
        candidate.lag_bytes.unwrap_or(0) <= plan.max_failover_lag_bytes
    }
    /// The highest replication offset wins, then the least lag, then the
    /// lower id.
    fn promotion_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.position
            .unwrap_or(0)
            .cmp(&b.position.unwrap_or(0))
            .then(b.lag_bytes.unwrap_or(0).cmp(&a.lag_bytes.unwrap_or(0)))
            .then(b.id.cmp(&a.id))
    }
    fn restarts_before_rebuild(&self) -> u32 {
        MAX_RESTARTS
    }
    /// RDB snapshots of the primary.
    fn backups(&self) -> BackupSource {
        BackupSource::Primary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{InstanceId, Role};

    fn plan(followers: u8, lag: u64) -> Plan {
        Plan { followers, sync: false, max_failover_lag_bytes: lag, credential_rotation_days: None, brokers: None }
    }

    #[test]
    fn one_primary_then_its_replicas_and_the_highest_offset_within_the_bound_is_promoted() {
        let m = RedisPolicy.members(&plan(2, 0));
        assert_eq!(m.roles().collect::<Vec<_>>(), [Role::Primary, Role::Follower, Role::Follower]);
        let c = |n: u64, offset: u64, lag: u64| Candidate {
            id: InstanceId::new_at(1_800_000_000_000_000, n),
            position: Some(offset),
            lag_bytes: Some(lag),
        };
        let (behind, ahead, far) = (c(1, 1000, 0), c(2, 2000, 0), c(3, 900, 5000));
        assert!(!RedisPolicy.can_promote(&far, &plan(1, 1024)), "5000 bytes behind, the bound is 1024");
        assert!(RedisPolicy.can_promote(&ahead, &plan(1, 1024)));
        assert!(RedisPolicy.can_promote(&c(4, 1, 0), &plan(1, 0)), "a replica that caught up");
        assert_eq!(RedisPolicy.promotion_order(&ahead, &behind), Ordering::Greater);
        assert_eq!(RedisPolicy.promotion_order(&c(5, 2000, 10), &c(6, 2000, 0)), Ordering::Less, "less lag wins a tie");
        assert_eq!(RedisPolicy.promotion_order(&c(7, 2000, 0), &c(8, 2000, 0)), Ordering::Greater, "then the lower id");
        assert_eq!((RedisPolicy.engine(), RedisPolicy.topology()), (EngineKind::Redis, Topology::PrimaryWithFollowers));
        assert_eq!(RedisPolicy.backups(), BackupSource::Primary);
    }
}
