//! One probe of one PostgreSQL instance: the query every heartbeat runs and
//! how its answer becomes [`Facts`]. Shared by the in-process heartbeat loop
//! of `drover serve` (kept-open connections, see `heartbeat`) and by the
//! standalone agent (the `drover-agent` crate, fresh connections), so both
//! report exactly the same facts.

use drover_model::{Facts, InstanceId, Role, ServiceId};
use std::collections::HashMap;

/// Role, WAL position, connections, replication state, and whether the
/// server accepts writes (the agent's self-fence sets
/// default_transaction_read_only).
/// A member of a major-version upgrade (a logical subscriber of the
/// service's primary, `drover_upgrade`) is a follower: its position is the
/// primary's WAL it applied (`latest_end_lsn`), and it streams while its
/// apply worker runs.
/// Its standbys are the physical walsenders that stream (not a base backup,
/// not the logical walsender of an upgrade's subscriber: no standby of this
/// server).
pub const FACTS_SQL: &str = "WITH standbys AS (SELECT application_name FROM pg_stat_replication \
       WHERE state = 'streaming' AND application_name <> 'pg_basebackup' \
       AND pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE slot_type = 'logical' AND active_pid IS NOT NULL)) \
     SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() WHEN s.subscriber THEN s.end_lsn \
      ELSE pg_current_wal_lsn() END)::text, \
     (SELECT count(*) FROM pg_stat_activity)::int4, \
     COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false) OR s.applying, \
     (SELECT count(*) FROM standbys)::int4, \
     current_setting('synchronous_standby_names'), \
     current_setting('default_transaction_read_only') = 'off', \
     s.subscriber, \
     (SELECT COALESCE(string_agg(application_name, ',' ORDER BY application_name), '') FROM standbys) \
     FROM (SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = 'drover_upgrade') AS subscriber, \
       (SELECT latest_end_lsn FROM pg_stat_subscription WHERE subname = 'drover_upgrade' AND relid IS NULL LIMIT 1) AS end_lsn, \
       EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = 'drover_upgrade' AND relid IS NULL AND pid IS NOT NULL) \
       AS applying) s";

/// What one instance answered to [`FACTS_SQL`].
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: InstanceId,
    pub service: ServiceId,
    pub in_recovery: bool,
    pub lsn: Option<u64>,
    pub connections: u32,
    pub streaming: bool,
    pub streaming_followers: u32,
    pub sync_names: String,
    pub read_write: bool,
    /// A logical subscriber building a major-version upgrade: a follower.
    pub subscriber: bool,
    /// The application names of the streaming standbys (sorted).
    pub standby_names: Vec<String>,
}

impl Sample {
    pub fn from_row(id: InstanceId, service: ServiceId, row: &tokio_postgres::Row) -> Sample {
        let lsn: Option<String> = row.get(1);
        Sample {
            id,
            service,
            in_recovery: row.get(0),
            lsn: lsn.as_deref().and_then(super::postgres::parse_lsn),
            connections: row.get::<_, i32>(2).max(0) as u32,
            streaming: row.get(3),
            streaming_followers: row.get::<_, i32>(4).max(0) as u32,
            sync_names: row.get(5),
            read_write: row.get(6),
            subscriber: row.get(7),
            standby_names: row.get::<_, String>(8).split(',').filter(|n| !n.is_empty()).map(str::to_string).collect(),
        }
    }

    /// The facts of this sample; `primary_lsn` is its service's primary
    /// position seen in the same round (a follower's lag is measured against it).
    /// Whether it serves as its service's primary (not a standby, not an
    /// upgrade's subscriber).
    pub fn is_primary(&self) -> bool {
        !self.in_recovery && !self.subscriber
    }

    pub fn facts(&self, primary_lsn: Option<u64>) -> Facts {
        let follows = !self.is_primary();
        let role = if follows { Role::Follower } else { Role::Primary };
        let lag = match (follows, self.lsn, primary_lsn) {
            (true, Some(mine), Some(theirs)) => Some(theirs.saturating_sub(mine)),
            _ => None,
        };
        Facts {
            role: Some(role),
            writable: Some(!follows && self.read_write),
            wal_position: self.lsn,
            replication_lag_bytes: lag,
            upstream_streaming: follows.then_some(self.streaming),
            connections: Some(self.connections),
            last_backup_at: None,
            port: None,
        }
    }
}

/// The facts of one round's samples, in the same order, with each
/// follower's lag measured against its service's primary in that round.
pub fn round_facts(samples: &[Sample]) -> Vec<(InstanceId, Facts)> {
    let primary_lsn: HashMap<ServiceId, u64> =
        samples.iter().filter(|s| s.is_primary()).filter_map(|s| Some((s.service, s.lsn?))).collect();
    samples.iter().map(|s| (s.id, s.facts(primary_lsn.get(&s.service).copied()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, service: u64, in_recovery: bool, lsn: u64, read_write: bool) -> Sample {
        Sample {
            id: InstanceId::new_at(1, id),
            service: ServiceId::new_at(1, service),
            in_recovery,
            lsn: Some(lsn),
            connections: 3,
            streaming: true,
            streaming_followers: 0,
            sync_names: String::new(),
            read_write,
            subscriber: false,
            standby_names: Vec::new(),
        }
    }

    #[test]
    fn followers_lag_behind_their_own_services_primary() {
        let facts = round_facts(&[
            sample(1, 1, false, 1000, true),
            sample(2, 1, true, 400, true),
            sample(3, 2, true, 10, true),
        ]);
        assert_eq!(facts[0].1.role, Some(Role::Primary));
        assert_eq!(facts[0].1.writable, Some(true));
        assert_eq!(facts[0].1.replication_lag_bytes, None);
        assert_eq!(facts[0].1.upstream_streaming, None);
        assert_eq!(facts[1].1.role, Some(Role::Follower));
        assert_eq!(facts[1].1.writable, Some(false));
        assert_eq!(facts[1].1.replication_lag_bytes, Some(600));
        assert_eq!(facts[1].1.upstream_streaming, Some(true));
        // Its primary is not on this host (or did not answer): no lag claimed.
        assert_eq!(facts[2].1.replication_lag_bytes, None);
    }

    #[test]
    fn a_read_only_primary_is_not_writable() {
        let facts = round_facts(&[sample(1, 1, false, 1000, false)]);
        assert_eq!(facts[0].1.role, Some(Role::Primary));
        assert_eq!(facts[0].1.writable, Some(false));
    }
}
