//! PostgreSQL: a primary with streaming followers.
//!
//! Redis's policy (`redis.rs`) is the same shape with Redis's facts (the
//! replication offset as position, the offset gap as lag). Nothing else in
//! the engine changes: fence, promote, retire and backups are the same
//! actions, which the Redis provider carries out its own way.
//!
//! Kafka's policy (`kafka.rs`, issue 14) answers `PeerBrokers`, `members`
//! brokers as peers, is never asked to promote, and `backups`
//! `NotOwn` (durability and backups live in its storage).

use super::{BackupSource, Candidate, EnginePolicy, Members, Topology};
use drover_model::{EngineKind, Plan};
use std::cmp::Ordering;

/// Restarts tried on a primary with no eligible follower before it is
/// rebuilt from its image (Heroku: restart first, replace when that fails).
const MAX_RESTARTS: u32 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct PostgresPolicy;

impl EnginePolicy for PostgresPolicy {
    fn engine(&self) -> EngineKind {
        EngineKind::Postgres
    }
    fn topology(&self) -> Topology {
        Topology::PrimaryWithFollowers
    }
    fn members(&self, plan: &Plan) -> Members {
        Members { primaries: 1, followers: plan.followers, brokers: 0 }
    }
    /// Within the plan's bound on lost writes: an asynchronous follower
    /// further behind would lose more than the customer agreed to.
    fn can_promote(&self, candidate: &Candidate, plan: &Plan) -> bool {
        candidate.lag_bytes.unwrap_or(0) <= plan.max_failover_lag_bytes
    }
    /// The most WAL replayed wins, then the least lag, then the lower id.
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
    /// pgBackRest base backups and WAL from the primary.
    fn backups(&self) -> BackupSource {
        BackupSource::Primary
    }
    /// pgBackRest restores a base backup and replays archived WAL to a time.
    fn forks_to_a_moment(&self) -> bool {
        true
    }
    /// Streaming replicas serve reads; a read URL per replica at the router.
    fn read_replicas(&self) -> bool {
        true
    }
    /// A deleted database is kept (its final pgBackRest backup) for a
    /// while: Heroku keeps a deleted database's backups for days.
    fn archives_on_delete(&self) -> bool {
        true
    }
    /// By logical replication into a member of the new major (the local
    /// provider: Debian's 15 clients copy the schema, pgoutput the rows).
    fn upgrades_major_versions(&self) -> bool {
        true
    }
}

/// Quorum sync replication to any one streaming standby: what a primary on
/// an agent host holds in strict mode, where its followers run on other
/// hosts and its provider does not know their names. `*` matches every
/// walsender, a logical one (an upgrade's subscriber) included, so the
/// built-in host names its followers instead
/// ([`synchronous_standby_names`]).
pub const SYNC_STANDBYS: &str = "ANY 1 (*)";

/// A standby's `application_name` as `synchronous_standby_names` names it.
pub fn quoted_standby_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `synchronous_standby_names` for a synchronous plan's primary with
/// `plan_followers` streaming (their `application_name`s: the instance
/// ids), always named one by one: never `*`, which would also match a read
/// replica added on demand (asynchronous by design) and the logical
/// walsender of a major-version upgrade's subscriber (the old major's
/// primary subscribing to the new one for the way back), so that a commit
/// waited for a subscriber's apply and, once that stalled, for ever (seen:
/// a statement unanswered for 5 s under load right after an upgrade's
/// cut-over, while the new major's follower was still being restored).
/// Empty (async) while no plan follower streams: availability over
/// blocking every write.
pub fn synchronous_standby_names(plan_followers: &[String]) -> String {
    if plan_followers.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = plan_followers.iter().map(|n| quoted_standby_name(n)).collect();
    names.sort();
    format!("ANY 1 ({})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{InstanceId, Role};

    fn plan(followers: u8) -> Plan {
        Plan {
            followers,
            sync: followers > 0,
            max_failover_lag_bytes: 1000,
            credential_rotation_days: None,
            brokers: None,
        }
    }

    #[test]
    fn a_plan_is_one_primary_built_first_then_its_followers() {
        let m = PostgresPolicy.members(&plan(2));
        assert_eq!(m.roles().collect::<Vec<_>>(), [Role::Primary, Role::Follower, Role::Follower]);
        assert_eq!((m.count(Role::Follower), m.count(Role::Broker), m.total()), (2, 0, 3));
    }

    #[test]
    fn the_most_advanced_follower_within_the_lag_bound_is_promoted() {
        let c = |n: u64, position: u64, lag: u64| Candidate {
            id: InstanceId::new_at(1_800_000_000_000_000, n),
            position: Some(position),
            lag_bytes: Some(lag),
        };
        let (behind, ahead, far) = (c(1, 100, 0), c(2, 200, 0), c(3, 300, 5000));
        assert!(!PostgresPolicy.can_promote(&far, &plan(1)), "beyond the lag bound");
        assert!(PostgresPolicy.can_promote(&ahead, &plan(1)));
        assert_eq!(PostgresPolicy.promotion_order(&ahead, &behind), Ordering::Greater);
        let (same_a, same_b) = (c(4, 200, 10), c(5, 200, 0));
        assert_eq!(PostgresPolicy.promotion_order(&same_a, &same_b), Ordering::Less, "less lag wins a tie");
        let (twin_a, twin_b) = (c(6, 200, 0), c(7, 200, 0));
        assert_eq!(PostgresPolicy.promotion_order(&twin_a, &twin_b), Ordering::Greater, "then the lower id");
    }
}
