//! Checks on every service: backups, replication, security, performance. Each
//! returns a [`Check`]: a status (`ok`, `warn`, `crit`, `unknown`), a one-line
//! summary that says what is wrong and what to do, and the evidence it saw.
//!
//! The SQL checks take a `tokio_postgres::Client` connected as superuser to the
//! instance; [`backups`] and [`replication`] are pure functions of facts the
//! caller gathered (heartbeats, the backup repository, the plan), so the engine
//! side can evaluate them with an explicit `now`.

use drover_model::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// We could not tell (no data, query failed): not a finding, but not a pass either.
    Unknown,
    Warn,
    Crit,
}

impl Status {
    /// The worse of two statuses: crit > warn > unknown > ok.
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub status: Status,
    /// What was found and, when not ok, what to do.
    pub summary: String,
    pub evidence: serde_json::Value,
}

impl Check {
    fn unknown(what: &str, error: impl std::fmt::Display) -> Check {
        Check {
            status: Status::Unknown,
            summary: format!("cannot check {what}: {error}"),
            evidence: json!({ "error": error.to_string() }),
        }
    }
}

/// Collects findings: the status is the worst, the summary lists the non-ok ones.
#[derive(Default)]
struct Findings {
    status: Option<Status>,
    problems: Vec<String>,
}

impl Findings {
    fn add(&mut self, status: Status, message: impl Into<String>) {
        self.status = Some(self.status.unwrap_or(Status::Ok).worst(status));
        if status != Status::Ok {
            self.problems.push(message.into());
        }
    }
    fn finish(self, ok_summary: &str, evidence: serde_json::Value) -> Check {
        let status = self.status.unwrap_or(Status::Ok);
        let summary = if self.problems.is_empty() { ok_summary.to_string() } else { self.problems.join("; ") };
        Check { status, summary, evidence }
    }
}

// ---------------------------------------------------------------- security

/// What the security check expects of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPolicy {
    /// The service's configuration requires TLS for client connections.
    pub require_tls: bool,
    /// The OS user the service runs as; `local ... trust` is allowed for it alone.
    /// Default: the owner of the data directory.
    pub service_user: Option<String>,
}

/// Superuser password set, no `trust` authentication except `local` lines for the
/// service's own user, TLS on when required. `data_dir` is used to learn the
/// service's OS user (its owner) unless the policy names it.
pub async fn security(client: &Client, data_dir: &Path, policy: &SecurityPolicy) -> Check {
    match security_inner(client, data_dir, policy).await {
        Ok(c) => c,
        Err(e) => Check::unknown("security", e),
    }
}

async fn security_inner(
    client: &Client,
    data_dir: &Path,
    policy: &SecurityPolicy,
) -> Result<Check, tokio_postgres::Error> {
    let service_user = policy.service_user.clone().or_else(|| owner_name(data_dir));
    let mut findings = Findings::default();

    let row = client
        .query_one(
            "SELECT current_user::text, rolpassword IS NOT NULL, coalesce(left(rolpassword, 14) = 'SCRAM-SHA-256$', false)
             FROM pg_authid WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (superuser, has_password, scram): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !has_password {
        findings.add(
            Status::Warn,
            format!("superuser {superuser} has no password: set one (ALTER ROLE \"{superuser}\" PASSWORD '...') so it is never left to trust"),
        );
    } else if !scram {
        findings.add(
            Status::Warn,
            format!("superuser {superuser}'s password is stored as md5: set it again with password_encryption=scram-sha-256"),
        );
    } else {
        findings.add(Status::Ok, "");
    }

    let rows = client
        .query(
            "SELECT line_number, type, coalesce(database, '{}')::text[], coalesce(user_name, '{}')::text[],
                    coalesce(address, ''), coalesce(auth_method, ''), error
             FROM pg_hba_file_rules ORDER BY line_number",
            &[],
        )
        .await?;
    let mut hba = Vec::new();
    for r in &rows {
        let line: Option<i32> = r.get(0);
        let kind: Option<String> = r.get(1);
        let kind = kind.unwrap_or_default();
        let databases: Vec<String> = r.get(2);
        let users: Vec<String> = r.get(3);
        let address: String = r.get(4);
        let method: String = r.get(5);
        let error: Option<String> = r.get(6);
        let line = line.unwrap_or(0);
        hba.push(json!({ "line": line, "type": kind, "database": databases, "user": users, "address": address, "method": method, "error": error }));
        if let Some(e) = error {
            findings.add(
                Status::Warn,
                format!(
                    "pg_hba.conf line {line} is invalid ({e}): fix it, the server ignores the whole file on reload"
                ),
            );
        }
        match method.as_str() {
            "trust" => {
                let own_local =
                    kind == "local" && service_user.as_deref().is_some_and(|u| users.len() == 1 && users[0] == u);
                if !own_local {
                    findings.add(
                        Status::Crit,
                        format!(
                            "pg_hba.conf line {line} lets anyone in without a password ({kind} {} {} {address} trust): \
                             change it to scram-sha-256 (or peer for local) and reload",
                            databases.join(","),
                            users.join(",")
                        ),
                    );
                }
            }
            "password" => findings.add(
                Status::Warn,
                format!("pg_hba.conf line {line} sends passwords in clear text (password): use scram-sha-256"),
            ),
            _ => {}
        }
    }

    let ssl: String = client.query_one("SHOW ssl", &[]).await?.get(0);
    if ssl != "on" && policy.require_tls {
        findings
            .add(Status::Warn, "TLS is required for this service but ssl is off: install a certificate and set ssl=on");
    }
    let evidence = json!({
        "superuser": superuser,
        "superuser_has_password": has_password,
        "superuser_password_scram": scram,
        "service_user": service_user,
        "hba_rules": hba,
        "ssl": ssl,
        "tls_required": policy.require_tls,
    });
    Ok(findings
        .finish("superuser has a scram password, no trust authentication beyond the service's own socket", evidence))
}

fn owner_name(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path).ok()?.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

// ---------------------------------------------------------------- performance

/// Connections in use at which to warn: leaves room for a burst and for the operator
/// (Heroku alerts its customers at 80% of the connection limit too).
pub const CONNECTIONS_WARN_RATIO: f64 = 0.80;
/// Connections in use at which new clients are about to be refused.
pub const CONNECTIONS_CRIT_RATIO: f64 = 0.95;
/// Below this share of reads served from shared buffers the working set does not fit
/// in memory (Heroku's guidance: a healthy OLTP database stays above 99%; 90% is
/// clearly too little).
pub const CACHE_HIT_WARN_RATIO: f64 = 0.90;
/// Blocks read (hit + miss) before the cache hit ratio means anything: a just-started
/// instance has read its catalogs from disk and nothing else.
pub const CACHE_HIT_MIN_BLOCKS: i64 = 10_000;
/// Free space of the data directory's filesystem below which to warn: time to grow the
/// disk while WAL bursts, vacuum and an index rebuild still fit.
pub const DISK_FREE_WARN_RATIO: f64 = 0.20;
/// Free space below which the instance is close to stopping (PostgreSQL panics when it
/// cannot write WAL).
pub const DISK_FREE_CRIT_RATIO: f64 = 0.05;

/// Connections used vs max_connections, cache hit ratio, database size, free disk of
/// the data directory's filesystem (statvfs on this machine: the instance is local).
pub async fn performance(client: &Client) -> Check {
    match performance_inner(client).await {
        Ok(c) => c,
        Err(e) => Check::unknown("performance", e),
    }
}

async fn performance_inner(client: &Client) -> Result<Check, tokio_postgres::Error> {
    let mut findings = Findings::default();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
                    current_setting('max_connections')::bigint,
                    current_setting('superuser_reserved_connections')::bigint,
                    (SELECT coalesce(sum(blks_hit), 0)::bigint FROM pg_stat_database),
                    (SELECT coalesce(sum(blks_read), 0)::bigint FROM pg_stat_database),
                    (SELECT coalesce(sum(pg_database_size(datname)), 0)::bigint FROM pg_database WHERE datallowconn),
                    current_setting('data_directory')",
            &[],
        )
        .await?;
    let (used, max, reserved): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let (hits, reads): (i64, i64) = (row.get(3), row.get(4));
    let db_size: i64 = row.get(5);
    let data_dir: String = row.get(6);

    let conn_ratio = if max > 0 { used as f64 / max as f64 } else { 0.0 };
    let conn_status = threshold_high(conn_ratio, CONNECTIONS_WARN_RATIO, CONNECTIONS_CRIT_RATIO);
    findings.add(
        conn_status,
        format!(
            "{used} of {max} connections in use ({:.0}%): add a connection pooler or raise max_connections",
            conn_ratio * 100.0
        ),
    );

    let total = hits + reads;
    let cache_hit = if total > 0 { Some(hits as f64 / total as f64) } else { None };
    match cache_hit {
        Some(r) if total >= CACHE_HIT_MIN_BLOCKS && r < CACHE_HIT_WARN_RATIO => findings.add(
            Status::Warn,
            format!("cache hit ratio {:.1}% over {total} blocks: the working set does not fit in memory; move to a plan with more RAM or raise shared_buffers", r * 100.0),
        ),
        _ => findings.add(Status::Ok, ""),
    }

    let disk = disk_usage(Path::new(&data_dir));
    let disk_evidence = match &disk {
        Ok((free, size)) => {
            let ratio = if *size > 0 { *free as f64 / *size as f64 } else { 0.0 };
            let status = threshold_low(ratio, DISK_FREE_WARN_RATIO, DISK_FREE_CRIT_RATIO);
            findings.add(
                status,
                format!("{:.1}% of the data directory's disk is free ({free} of {size} bytes): grow the disk or remove data", ratio * 100.0),
            );
            json!({ "free_bytes": free, "size_bytes": size, "free_ratio": ratio })
        }
        Err(e) => {
            findings.add(Status::Unknown, format!("cannot measure free disk of {data_dir}: {e}"));
            json!({ "error": e.to_string() })
        }
    };
    let evidence = json!({
        "connections_used": used,
        "max_connections": max,
        "superuser_reserved_connections": reserved,
        "connections_ratio": conn_ratio,
        "blocks_hit": hits,
        "blocks_read": reads,
        "cache_hit_ratio": cache_hit,
        "database_size_bytes": db_size,
        "data_directory": data_dir,
        "disk": disk_evidence,
    });
    Ok(findings.finish("connections, cache hit ratio and free disk within limits", evidence))
}

/// (free bytes for unprivileged users, filesystem size) of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok((s.blocks_available() as u64 * frag, s.blocks() as u64 * frag))
}

fn threshold_high(value: f64, warn: f64, crit: f64) -> Status {
    if value >= crit {
        Status::Crit
    } else if value >= warn {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn threshold_low(value: f64, warn: f64, crit: f64) -> Status {
    if value < crit {
        Status::Crit
    } else if value < warn {
        Status::Warn
    } else {
        Status::Ok
    }
}

// ---------------------------------------------------------------- replication

/// Replay lag in bytes at which to warn: one WAL segment (16 MiB) behind is normal in
/// bursts, more means the follower is not keeping up.
pub const LAG_BYTES_WARN: u64 = 16 * 1024 * 1024;
/// Replay lag in bytes at which a failover to this follower would take long to catch up
/// (or lose that much in asynchronous mode).
pub const LAG_BYTES_CRIT: u64 = 1024 * 1024 * 1024;
/// Replay lag in time at which to warn (Patroni's default maximum_lag_on_failover is
/// 1 MiB; we judge time separately because an idle primary has zero byte lag).
pub const LAG_TIME_WARN: Duration = Duration::from_secs(30);
/// Replay lag in time at which reads from the follower are too stale to serve.
pub const LAG_TIME_CRIT: Duration = Duration::from_secs(300);

/// What the service should have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationPlan {
    /// Followers that should be streaming from the primary.
    pub followers: usize,
    /// The plan is synchronous: at least one follower must be a sync standby.
    pub synchronous: bool,
    /// Read replicas added on demand, streaming besides the plan's
    /// followers (asynchronous: never a sync standby; their lag is judged
    /// like a follower's).
    #[serde(default)]
    pub on_demand: usize,
}

/// One follower as the primary sees it (`pg_stat_replication`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowerFacts {
    /// application_name.
    pub name: String,
    /// state = 'streaming'.
    pub streaming: bool,
    /// pg_current_wal_lsn() - replay_lsn.
    pub lag_bytes: Option<u64>,
    pub replay_lag: Option<Duration>,
    /// sync_state: async, potential, sync, quorum.
    pub sync_state: String,
}

/// The followers connected to the primary behind `client`.
pub async fn follower_facts(client: &Client) -> Result<Vec<FollowerFacts>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT coalesce(application_name, ''), coalesce(state, ''),
                    pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8,
                    extract(epoch FROM replay_lag)::float8, coalesce(sync_state, '')
             FROM pg_stat_replication ORDER BY application_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let state: String = r.get(1);
            let lag: Option<f64> = r.get(2);
            let replay_lag: Option<f64> = r.get(3);
            FollowerFacts {
                name: r.get(0),
                streaming: state == "streaming",
                lag_bytes: lag.map(|l| l.max(0.0) as u64),
                replay_lag: replay_lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
                sync_state: r.get(4),
            }
        })
        .collect())
}

/// Streaming followers vs the plan, lag thresholds, a sync standby when the plan is
/// synchronous. `followers` is None when the primary could not be asked.
pub fn replication(plan: &ReplicationPlan, followers: Option<&[FollowerFacts]>) -> Check {
    let Some(followers) = followers else {
        return Check {
            status: if plan.followers == 0 { Status::Ok } else { Status::Unknown },
            summary: "cannot see the primary's followers (primary unreachable)".into(),
            evidence: json!({ "plan": plan }),
        };
    };
    let mut findings = Findings::default();
    let streaming = followers.iter().filter(|f| f.streaming).count();
    let wanted = plan.followers + plan.on_demand;
    if streaming < wanted {
        let status = if streaming == 0 && plan.followers > 0 { Status::Crit } else { Status::Warn };
        let what = if plan.on_demand == 0 {
            format!("{} planned followers", plan.followers)
        } else {
            format!("{} planned followers and {} read replicas", plan.followers, plan.on_demand)
        };
        findings.add(status, format!("{streaming} of {what} are streaming: rebuild the missing ones"));
    } else {
        findings.add(Status::Ok, "");
    }
    if plan.synchronous {
        let sync = followers.iter().any(|f| f.streaming && (f.sync_state == "sync" || f.sync_state == "quorum"));
        if !sync {
            findings.add(
                Status::Crit,
                "the plan is synchronous but no follower is a sync standby: commits wait or are unprotected; \
                 check synchronous_standby_names and rebuild a follower",
            );
        }
    }
    for f in followers.iter().filter(|f| f.streaming) {
        if let Some(lag) = f.lag_bytes {
            let s = if lag >= LAG_BYTES_CRIT {
                Status::Crit
            } else if lag >= LAG_BYTES_WARN {
                Status::Warn
            } else {
                Status::Ok
            };
            findings.add(
                s,
                format!("follower {} is {lag} bytes behind: check its disk and network, or rebuild it", f.name),
            );
        }
        if let Some(lag) = f.replay_lag {
            let s = if lag >= LAG_TIME_CRIT {
                Status::Crit
            } else if lag >= LAG_TIME_WARN {
                Status::Warn
            } else {
                Status::Ok
            };
            findings.add(s, format!("follower {} replays {lag:?} behind: check its load, or rebuild it", f.name));
        }
    }
    let evidence = json!({
        "plan": plan,
        "streaming": streaming,
        "followers": followers.iter().map(|f| json!({
            "name": f.name,
            "streaming": f.streaming,
            "lag_bytes": f.lag_bytes,
            "replay_lag_seconds": f.replay_lag.map(|d| d.as_secs_f64()),
            "sync_state": f.sync_state,
        })).collect::<Vec<_>>(),
    });
    findings.finish("followers streaming as planned, lag within limits", evidence)
}

// ---------------------------------------------------------------- backups

/// Default maximum age of the latest backup: a daily schedule plus two hours of slack
/// for a slow or delayed run, so one late backup warns but a skipped day always does.
pub const DEFAULT_MAX_BACKUP_AGE: Duration = Duration::from_secs(26 * 3600);
/// Default maximum age of the last successful restore verification: weekly, the
/// schedule the issue asks for; an unexercised backup is not a backup.
pub const DEFAULT_MAX_VERIFY_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    pub max_backup_age: Duration,
    pub max_verify_age: Duration,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy { max_backup_age: DEFAULT_MAX_BACKUP_AGE, max_verify_age: DEFAULT_MAX_VERIFY_AGE }
    }
}

/// Crit when there is no backup or the last restore verification failed; warn when the
/// latest backup is older than the policy or no restore was verified within it.
/// `last_verify_ok` is the result of the most recent verification (None: never ran);
/// `last_verified_restore_at` is when it ran. `last_backup_error`: why the
/// latest backup attempt failed (None: it did not), said in the finding, so
/// a backup that cannot be taken (a major pgBackRest does not support) says
/// why rather than only ageing.
pub fn backups(
    last_backup_at: Option<Timestamp>,
    last_backup_error: Option<&str>,
    last_verified_restore_at: Option<Timestamp>,
    last_verify_ok: Option<bool>,
    now: Timestamp,
    policy: &BackupPolicy,
) -> Check {
    let mut findings = Findings::default();
    let backup_age = last_backup_at.map(|t| now.since(t));
    let verify_age = last_verified_restore_at.map(|t| now.since(t));
    let mut remedies = Vec::new();
    match backup_age {
        None => {
            findings.add(Status::Crit, "no backup exists: take a backup now");
            remedies.push("backup");
        }
        Some(age) if age > policy.max_backup_age => {
            findings.add(
                Status::Warn,
                format!(
                    "latest backup is {}h old (policy {}h): take a backup now and check the schedule",
                    age.as_secs() / 3600,
                    policy.max_backup_age.as_secs() / 3600
                ),
            );
            remedies.push("backup");
        }
        Some(_) => findings.add(Status::Ok, ""),
    }
    if let Some(error) = last_backup_error {
        findings.add(Status::Warn, format!("the latest backup attempt failed: {error}"));
        remedies.push("backup");
    }
    match (last_verify_ok, verify_age) {
        (Some(false), _) => {
            findings.add(
                Status::Crit,
                "the last restore verification failed: the backups may not restore; take a new full backup and verify it",
            );
            remedies.push("backup");
            remedies.push("verify_restore");
        }
        (_, None) | (None, _) => {
            if last_backup_at.is_some() {
                findings.add(Status::Warn, "no restore of a backup has been verified: run a restore verification");
                remedies.push("verify_restore");
            }
        }
        (Some(true), Some(age)) if age > policy.max_verify_age => {
            findings.add(
                Status::Warn,
                format!(
                    "last verified restore is {} days old (policy {} days): run a restore verification",
                    age.as_secs() / 86400,
                    policy.max_verify_age.as_secs() / 86400
                ),
            );
            remedies.push("verify_restore");
        }
        (Some(true), Some(_)) => findings.add(Status::Ok, ""),
    }
    remedies.dedup();
    let evidence = json!({
        "last_backup_at": last_backup_at.map(|t| t.to_rfc3339()),
        "last_backup_error": last_backup_error,
        "last_verified_restore_at": last_verified_restore_at.map(|t| t.to_rfc3339()),
        "last_verify_ok": last_verify_ok,
        "backup_age_seconds": backup_age.map(|d| d.as_secs()),
        "verify_age_seconds": verify_age.map(|d| d.as_secs()),
        "max_backup_age_seconds": policy.max_backup_age.as_secs(),
        "max_verify_age_seconds": policy.max_verify_age.as_secs(),
        "remedies": remedies,
    });
    findings.finish("latest backup is fresh and its restore was verified", evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_orders_crit_over_warn_over_unknown_over_ok() {
        assert_eq!(Status::Ok.worst(Status::Unknown), Status::Unknown);
        assert_eq!(Status::Unknown.worst(Status::Warn), Status::Warn);
        assert_eq!(Status::Crit.worst(Status::Warn), Status::Crit);
        assert_eq!(serde_json::to_string(&Status::Crit).unwrap(), "\"crit\"");
    }

    #[test]
    fn replication_against_the_plan() {
        let f = |name: &str, streaming, lag, sync: &str| FollowerFacts {
            name: name.into(),
            streaming,
            lag_bytes: Some(lag),
            replay_lag: Some(Duration::from_secs(0)),
            sync_state: sync.into(),
        };
        let async_plan = ReplicationPlan { followers: 1, synchronous: false, on_demand: 0 };
        let sync_plan = ReplicationPlan { followers: 1, synchronous: true, on_demand: 0 };
        assert_eq!(replication(&async_plan, Some(&[f("a", true, 0, "async")])).status, Status::Ok);
        assert_eq!(replication(&async_plan, Some(&[])).status, Status::Crit);
        assert_eq!(
            replication(&ReplicationPlan { followers: 2, ..async_plan.clone() }, Some(&[f("a", true, 0, "async")]))
                .status,
            Status::Warn
        );
        assert_eq!(replication(&async_plan, Some(&[f("a", true, LAG_BYTES_WARN, "async")])).status, Status::Warn);
        assert_eq!(replication(&async_plan, Some(&[f("a", true, LAG_BYTES_CRIT, "async")])).status, Status::Crit);
        assert_eq!(replication(&sync_plan, Some(&[f("a", true, 0, "async")])).status, Status::Crit);
        assert_eq!(replication(&sync_plan, Some(&[f("a", true, 0, "sync")])).status, Status::Ok);
        assert_eq!(replication(&async_plan, None).status, Status::Unknown);
        assert_eq!(replication(&ReplicationPlan::default(), Some(&[])).status, Status::Ok);
        // Read replicas on demand: counted, their lag judged, never asked to be sync.
        let with_reads = ReplicationPlan { on_demand: 1, ..sync_plan.clone() };
        let both = [f("a", true, 0, "quorum"), f("r", true, 0, "async")];
        assert_eq!(replication(&with_reads, Some(&both)).status, Status::Ok);
        assert_eq!(replication(&with_reads, Some(&both[..1])).status, Status::Warn, "a read replica is missing");
        let lagging = [f("a", true, 0, "quorum"), f("r", true, LAG_BYTES_CRIT, "async")];
        assert_eq!(replication(&with_reads, Some(&lagging)).status, Status::Crit, "a read replica's lag shows");
    }
}
