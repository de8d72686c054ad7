//! What only the provider sees of a Redis service, for its checks (issue 13
//! item 6): the primary's `INFO` (replicas, memory, persistence), its ACL
//! and settings (security), and the router. The server composes them with
//! what the engine recorded (backups) exactly as for PostgreSQL.

use crate::checks::{Check, FollowerFacts, Status};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// A replica whose last acknowledgement is older than this is not counted
/// as streaming (replicas acknowledge every second).
pub const ACK_STALE_SECS: u64 = 3;
/// `used_memory` against `maxmemory`.
const MEMORY_WARN: f64 = 0.75;
const MEMORY_CRIT: f64 = 0.90;
/// Fragmentation is judged only past this much memory (tiny data sets have
/// meaningless ratios).
const FRAGMENTATION_FLOOR: u64 = 64 << 20;
const FRAGMENTATION_WARN: f64 = 1.5;

pub type Info = HashMap<String, String>;

pub fn parse_info(text: &str) -> Info {
    text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn num<T: std::str::FromStr>(info: &Info, key: &str) -> Option<T> {
    info.get(key)?.parse().ok()
}

/// The replicas the primary's `INFO replication` lists; `name_of` names
/// one by its port.
pub fn followers(info: &Info, name_of: impl Fn(u16) -> String) -> Vec<FollowerFacts> {
    let master_offset: u64 = num(info, "master_repl_offset").unwrap_or(0);
    let mut keys: Vec<&String> =
        info.keys().filter(|k| k.starts_with("slave") && k[5..].parse::<u32>().is_ok()).collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let fields: HashMap<&str, &str> = info[k].split(',').filter_map(|f| f.split_once('=')).collect();
            let port = fields.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
            let offset: Option<u64> = fields.get("offset").and_then(|o| o.parse().ok());
            let ack: Option<u64> = fields.get("lag").and_then(|o| o.parse().ok());
            FollowerFacts {
                name: name_of(port),
                streaming: fields.get("state") == Some(&"online") && ack.is_some_and(|a| a <= ACK_STALE_SECS),
                lag_bytes: offset.map(|o| master_offset.saturating_sub(o)),
                replay_lag: ack.map(Duration::from_secs),
                sync_state: "async".into(),
            }
        })
        .collect()
}

/// Memory against `maxmemory`, evictions, fragmentation.
pub fn performance(info: &Info) -> Check {
    let used: u64 = num(info, "used_memory").unwrap_or(0);
    let max: u64 = num(info, "maxmemory").unwrap_or(0);
    let evicted: u64 = num(info, "evicted_keys").unwrap_or(0);
    let fragmentation: f64 = num(info, "mem_fragmentation_ratio").unwrap_or(1.0);
    let mut status = Status::Ok;
    let mut findings = Vec::new();
    if max > 0 {
        let share = used as f64 / max as f64;
        let s = if share >= MEMORY_CRIT {
            Status::Crit
        } else if share >= MEMORY_WARN {
            Status::Warn
        } else {
            Status::Ok
        };
        if s != Status::Ok {
            findings.push(format!(
                "memory {used} of maxmemory {max} bytes ({:.0}%): writes will be refused or keys evicted; give the \
                 service more memory or delete data",
                share * 100.0
            ));
        }
        status = status.worst(s);
    }
    if evicted > 0 {
        status = status.worst(Status::Warn);
        findings.push(format!("{evicted} keys evicted for memory: data the application wrote is gone"));
    }
    if used >= FRAGMENTATION_FLOOR && fragmentation >= FRAGMENTATION_WARN {
        status = status.worst(Status::Warn);
        findings.push(format!("memory fragmentation {fragmentation:.2}: restart the member or enable activedefrag"));
    }
    Check {
        status,
        summary: if findings.is_empty() {
            format!("memory {used} bytes{}; no evictions", if max > 0 { format!(" of {max}") } else { String::new() })
        } else {
            findings.join("; ")
        },
        evidence: json!({
            "used_memory": used, "maxmemory": max, "evicted_keys": evicted,
            "mem_fragmentation_ratio": fragmentation,
            "instantaneous_ops_per_sec": num::<u64>(info, "instantaneous_ops_per_sec"),
        }),
    }
}

/// The last RDB snapshot and AOF writes and rewrites.
pub fn persistence(info: &Info) -> Check {
    let mut failed = Vec::new();
    for (key, what) in [
        ("rdb_last_bgsave_status", "the last RDB snapshot (BGSAVE) failed"),
        ("aof_last_write_status", "the last append-only file write failed"),
        ("aof_last_bgrewrite_status", "the last append-only file rewrite failed"),
    ] {
        if info.get(key).is_some_and(|v| v != "ok") {
            failed.push(what);
        }
    }
    let evidence = json!({
        "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
        "rdb_last_save_time": num::<i64>(info, "rdb_last_save_time"),
        "rdb_changes_since_last_save": num::<u64>(info, "rdb_changes_since_last_save"),
        "aof_enabled": info.get("aof_enabled"),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "aof_last_bgrewrite_status": info.get("aof_last_bgrewrite_status"),
    });
    if failed.is_empty() {
        Check { status: Status::Ok, summary: "snapshots and append-only writes succeed".into(), evidence }
    } else {
        Check {
            status: Status::Crit,
            summary: format!(
                "{}: what is written may not survive a restart, and Redis refuses writes until a snapshot succeeds; check the data directory's disk space and permissions \
                 (the server's log says why)",
                failed.join("; ")
            ),
            evidence,
        }
    }
}

/// What the security check is made of.
pub struct SecurityFacts {
    /// `ACL GETUSER default` flags.
    pub default_flags: Vec<String>,
    pub protected_mode: Option<String>,
    /// Dangerous commands the application's user may run (ACL DRYRUN).
    pub app_allowed_dangerous: Vec<String>,
}

/// Commands the application's user must not run.
pub const DANGEROUS: &[&[&str]] = &[
    &["FLUSHALL"],
    &["CONFIG", "SET", "dir", "/tmp"],
    &["DEBUG", "SLEEP", "0"],
    &["SHUTDOWN"],
    &["REPLICAOF", "NO", "ONE"],
];

pub fn security(facts: &SecurityFacts) -> Check {
    let mut findings = Vec::new();
    let flags = &facts.default_flags;
    let default_open = flags.iter().any(|f| f == "on") && flags.iter().any(|f| f == "nopass");
    if default_open {
        findings.push(
            "the default user is on without a password: anyone who reaches the port is in; ACL SETUSER default off"
                .to_string(),
        );
    }
    if facts.protected_mode.as_deref() != Some("yes") {
        findings.push("protected mode is off".to_string());
    }
    if !facts.app_allowed_dangerous.is_empty() {
        findings.push(format!(
            "the application's user may run {}: remove -@dangerous -@admin from its ACL",
            facts.app_allowed_dangerous.join(", ")
        ));
    }
    Check {
        status: if default_open || !facts.app_allowed_dangerous.is_empty() {
            Status::Crit
        } else if findings.is_empty() {
            Status::Ok
        } else {
            Status::Warn
        },
        summary: if findings.is_empty() {
            "no default user without a password, protected mode on, no dangerous command for the application".into()
        } else {
            findings.join("; ")
        },
        evidence: json!({
            "default_user_flags": flags,
            "protected_mode": facts.protected_mode,
            "app_allowed_dangerous": facts.app_allowed_dangerous,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facets_from_info() {
        let info = parse_info(
            "role:master\r\nmaster_repl_offset:1000\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=900,lag=0\r\n\
             slave1:ip=127.0.0.1,port=7002,state=online,offset=1000,lag=9\r\nused_memory:950\r\nmaxmemory:1000\r\n\
             evicted_keys:0\r\nrdb_last_bgsave_status:err\r\naof_last_write_status:ok\r\n",
        );
        let f = followers(&info, |p| p.to_string());
        assert_eq!((f[0].name.as_str(), f[0].streaming, f[0].lag_bytes), ("7001", true, Some(100)));
        assert!(!f[1].streaming, "no acknowledgement for 9 s");
        assert_eq!(performance(&info).status, Status::Crit);
        assert_eq!(persistence(&info).status, Status::Crit);
        let fine = parse_info("used_memory:100\r\nmaxmemory:0\r\nrdb_last_bgsave_status:ok\r\n");
        assert_eq!((performance(&fine).status, persistence(&fine).status), (Status::Ok, Status::Ok));
        let open = SecurityFacts {
            default_flags: vec!["on".into(), "nopass".into()],
            protected_mode: Some("yes".into()),
            app_allowed_dangerous: vec![],
        };
        assert_eq!(security(&open).status, Status::Crit);
    }
}
