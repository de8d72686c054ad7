//! Service checks against a real PostgreSQL 15 (security, performance,
//! replication facts) and the backup status table.

#[path = "backup_support/mod.rs"]
mod backup_support;

use backup_support::{tempdir, TestPg};
use drover_model::Timestamp;
use drover_providers::checks::{self, BackupPolicy, ReplicationPlan, SecurityPolicy, Status};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_flags_a_host_trust_line_as_crit_and_passes_scram_only_hba() {
    let tmp = tempdir();
    let pg = TestPg::start(tmp.path(), None, None);
    let user = pg.run_as.user.clone();
    let client = pg.connect().await;

    // The fixture's hba: local trust for the service's own user only. No password yet.
    let check = checks::security(&client, &pg.data_dir, &SecurityPolicy::default()).await;
    assert_eq!(check.status, Status::Warn, "superuser without password: {check:#?}");
    assert!(check.summary.contains("no password"), "{check:#?}");

    client
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE \"{user}\" PASSWORD 'correct horse'"
        ))
        .await
        .unwrap();
    let hba = pg.data_dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("local all {user} trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"),
    )
    .unwrap();
    let check = checks::security(&client, &pg.data_dir, &SecurityPolicy::default()).await;
    assert_eq!(check.status, Status::Ok, "{check:#?}");
    assert_eq!(check.evidence["superuser_has_password"], true);
    assert_eq!(check.evidence["ssl"], "off");
    assert_eq!(check.evidence["hba_rules"].as_array().unwrap().len(), 4);

    // TLS required by the plan but off.
    let check =
        checks::security(&client, &pg.data_dir, &SecurityPolicy { require_tls: true, service_user: None }).await;
    assert_eq!(check.status, Status::Warn, "{check:#?}");
    assert!(check.summary.contains("ssl is off"), "{check:#?}");

    // pg_hba_file_rules reads the file as it is on disk: no reload needed.
    std::fs::write(&hba, format!("local all {user} trust\nhost all all 127.0.0.1/32 trust\n")).unwrap();
    let check = checks::security(&client, &pg.data_dir, &SecurityPolicy::default()).await;
    assert_eq!(check.status, Status::Crit, "{check:#?}");
    assert!(check.summary.contains("line 2") && check.summary.contains("127.0.0.1"), "names the line: {check:#?}");

    // local trust for another user is crit too.
    std::fs::write(&hba, format!("local all {user} trust\nlocal all all trust\n")).unwrap();
    let check = checks::security(&client, &pg.data_dir, &SecurityPolicy::default()).await;
    assert_eq!(check.status, Status::Crit, "{check:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn performance_reports_connections_cache_hit_size_and_disk() {
    let tmp = tempdir();
    let pg = TestPg::start(tmp.path(), None, None);
    let client = pg.connect().await;
    client.batch_execute("CREATE TABLE t AS SELECT i FROM generate_series(1, 50000) i; SELECT count(*) FROM t; SELECT count(*) FROM t").await.unwrap();
    let _extra = [pg.connect().await, pg.connect().await];
    let check = checks::performance(&client).await;
    eprintln!("{check:#?}");
    let e = &check.evidence;
    let used = e["connections_used"].as_i64().unwrap();
    assert!(used >= 3, "our three connections are counted: {e}");
    assert_eq!(e["max_connections"].as_i64().unwrap(), 100);
    let hit = e["cache_hit_ratio"].as_f64().unwrap();
    assert!(hit > 0.0 && hit <= 1.0, "{e}");
    assert!(e["blocks_hit"].as_i64().unwrap() > 0);
    assert!(e["database_size_bytes"].as_i64().unwrap() > 1_000_000, "{e}");
    let free = e["disk"]["free_bytes"].as_u64().unwrap();
    let size = e["disk"]["size_bytes"].as_u64().unwrap();
    assert!(size > 0 && free <= size, "{e}");
    // The status follows the thresholds for what was measured (the test machine's disk may be full-ish).
    let ratio = free as f64 / size as f64;
    let expected = if ratio < checks::DISK_FREE_CRIT_RATIO {
        Status::Crit
    } else if ratio < checks::DISK_FREE_WARN_RATIO {
        Status::Warn
    } else {
        Status::Ok
    };
    assert_eq!(check.status, expected, "{check:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_of_a_primary_without_followers_is_crit_when_the_plan_wants_one() {
    let tmp = tempdir();
    let pg = TestPg::start(tmp.path(), None, None);
    let client = pg.connect().await;
    let followers = checks::follower_facts(&client).await.expect("pg_stat_replication query");
    assert!(followers.is_empty());
    let check =
        checks::replication(&ReplicationPlan { followers: 1, synchronous: true, on_demand: 0 }, Some(&followers));
    assert_eq!(check.status, Status::Crit, "{check:#?}");
    assert_eq!(checks::replication(&ReplicationPlan::default(), Some(&followers)).status, Status::Ok);
}

#[test]
fn backup_status_table() {
    let hour = Duration::from_secs(3600);
    let now = Timestamp::from_micros(1_800_000_000_000_000);
    let ago = |d: Duration| Some(Timestamp::from_micros(now.micros() - d.as_micros() as i64));
    let policy = BackupPolicy::default();
    // (case, last backup, last verified restore, last verify ok, expected)
    let cases = [
        ("no backup", None, None, None, Status::Crit),
        ("no backup, old verify ok", None, ago(hour), Some(true), Status::Crit),
        ("fresh and verified", ago(hour), ago(24 * hour), Some(true), Status::Ok),
        ("stale backup", ago(27 * hour), ago(24 * hour), Some(true), Status::Warn),
        ("just within policy", ago(26 * hour), ago(7 * 24 * hour), Some(true), Status::Ok),
        ("fresh, never verified", ago(hour), None, None, Status::Warn),
        ("fresh, verify too old", ago(hour), ago(8 * 24 * hour), Some(true), Status::Warn),
        ("fresh, last verify failed", ago(hour), ago(hour), Some(false), Status::Crit),
        ("stale and verify failed", ago(48 * hour), ago(hour), Some(false), Status::Crit),
    ];
    for (case, backup, verified, ok, expected) in cases {
        let check = checks::backups(backup, None, verified, ok, now, &policy);
        assert_eq!(check.status, expected, "{case}: {check:#?}");
        assert_eq!(check.evidence["last_backup_at"], serde_json::json!(backup.map(|t| t.to_rfc3339())), "{case}");
        assert_eq!(
            check.evidence["last_verified_restore_at"],
            serde_json::json!(verified.map(|t| t.to_rfc3339())),
            "{case}"
        );
        if expected != Status::Ok {
            assert!(
                !check.evidence["remedies"].as_array().unwrap().is_empty(),
                "{case}: a finding has a remedy: {check:#?}"
            );
        }
    }
    let strict = BackupPolicy { max_backup_age: hour, max_verify_age: 24 * hour };
    assert_eq!(checks::backups(ago(2 * hour), None, ago(hour), Some(true), now, &strict).status, Status::Warn);

    // A failed attempt says why, even while the last backup is still fresh.
    let why = "no backup: Debian's pgBackRest (2.45) does not support PostgreSQL 17";
    let check = checks::backups(ago(hour), Some(why), ago(hour), Some(true), now, &policy);
    assert_eq!(check.status, Status::Warn, "{check:#?}");
    let text = serde_json::to_string(&check).unwrap();
    assert!(text.contains("the latest backup attempt failed: no backup: Debian's pgBackRest"), "{text}");
    assert_eq!(check.evidence["last_backup_error"], serde_json::json!(why));
    assert_eq!(check.evidence["remedies"], serde_json::json!(["backup"]));
    // And with no backup at all it stays critical, with the reason.
    let check = checks::backups(None, Some(why), None, None, now, &policy);
    assert_eq!(check.status, Status::Crit);
    assert!(serde_json::to_string(&check).unwrap().contains("pgBackRest (2.45)"));
}

/// A Kafka service's group lag, read from its storage (tansu's schema, as
/// Drover creates it): every partition of a topic the group commits on is
/// the group's, also one it never committed on; records produced there
/// are lag, counted from the partition's earliest kept record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_lag_counts_a_partition_the_group_never_committed_on() {
    use drover_providers::local::{kafka_group_lags, KafkaGroupLag};
    let tmp = tempdir();
    let pg = TestPg::start(tmp.path(), None, None);
    let client = pg.connect().await;
    client.batch_execute(include_str!("../src/local/kafka/storage.sql")).await.unwrap();
    client
        .batch_execute(
            "insert into cluster (name) values ('c'); \
             insert into topic (cluster, name, uuid, partitions, replication_factor) \
               values (1, 'events', gen_random_uuid(), 3, 1), (1, 'other', gen_random_uuid(), 1, 1); \
             insert into topition (topic, partition) values (1, 0), (1, 1), (1, 2), (2, 0); \
             insert into watermark (topition, low, high) values (1, 0, 33), (2, 3, 8), (3, 0, 17), (4, 0, 50); \
             insert into consumer_group (cluster, name) values (1, 'g3'); \
             insert into consumer_offset (consumer_group, topition, committed_offset) values (1, 1, 29), (1, 3, 1);",
        )
        .await
        .unwrap();
    let url = format!("host={} port={} user={} dbname=postgres", pg.socket_dir.display(), pg.port, pg.run_as.user);
    let lags = kafka_group_lags(&url, Duration::from_secs(10)).await.unwrap();
    let lag = |partition, committed, low, high| KafkaGroupLag {
        group: "g3".into(),
        topic: "events".into(),
        partition,
        committed,
        low_watermark: low,
        high_watermark: high,
    };
    // Topic `other` is not read by g3: not its lag.
    assert_eq!(lags, vec![lag(0, Some(29), 0, 33), lag(1, None, 3, 8), lag(2, Some(1), 0, 17)]);
    assert_eq!(lags.iter().map(KafkaGroupLag::lag).sum::<i64>(), 4 + 5 + 16);
}
