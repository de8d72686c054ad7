//! Deprovision keeps the data (issue 17, item 5): deleting a PostgreSQL
//! service takes a final backup (`archiving` → `archived`, or `failed`),
//! then terminates its instances; the archive can be restored into a new
//! service until, past `archive_retention`, a durable `PurgeArchive`
//! removes it (`purged`) and frees the name. Redis is deleted at once.

mod common;

use common::*;
use drover_engine::{Command, CommandError, Config, Input, Reply};
use drover_model::*;
use std::time::Duration;

const HOUR: i64 = 3_600_000_000;

fn config() -> Config {
    Config { archive_retention: Duration::from_secs(3600), ..fast_config() }
}

fn available(h: &mut H, name: &str, followers: u8) -> ServiceView {
    h.create(name, followers);
    h.advance(Duration::from_secs(5));
    let v = h.service(name);
    assert_eq!(v.state, ServiceState::Available, "{v:#?}");
    v
}

fn delete(h: &mut H, name: &str) {
    h.command(Command::DeleteService { name: name.into() }).expect("delete accepted");
}

fn only_archive(h: &H) -> ArchiveView {
    let all = h.e.archives();
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0].clone()
}

fn restore(h: &mut H, id: ArchiveId, name: &str) -> Result<Reply, CommandError> {
    h.command(Command::RestoreArchive { id, name: name.into() })
}

fn dispatched(h: &H, kind: &str) -> Vec<ActionRecord> {
    h.dispatched.iter().filter(|a| a.kind.name() == kind).cloned().collect()
}

fn archive_events(h: &H) -> Vec<ArchiveState> {
    h.store
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Archive { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

/// Jumps the clock (no heartbeats: the archived service has no instances
/// left) and runs what a tick dispatches.
fn jump(h: &mut H, micros: i64) {
    h.now += micros;
    h.step(Input::Tick);
    if h.auto_execute {
        h.run_actions();
    }
}

#[test]
fn a_deleted_postgres_service_is_backed_up_archived_then_its_instances_terminated() {
    let mut h = H::new(config());
    let svc = available(&mut h, "db", 1);
    h.auto_execute = false;
    delete(&mut h, "db");

    let archive = only_archive(&h);
    assert_eq!(
        (archive.service.as_str(), archive.engine, archive.state),
        ("db", EngineKind::Postgres, ArchiveState::Archiving)
    );
    let backups = dispatched(&h, "backup");
    assert_eq!(backups.len(), 1, "one final backup: {backups:?}");
    let primary = svc.instances.iter().find(|i| i.role == Role::Primary).expect("primary").id;
    assert_eq!(backups[0].instance, primary, "taken from the primary");
    // While it runs, every instance keeps running: nothing is retired.
    assert!(dispatched(&h, "retire").is_empty(), "instances wait for the final backup");
    assert!(h.service("db").instances.iter().all(|i| i.state == InstanceState::Available));

    h.auto_execute = true;
    h.run_actions();
    h.advance(Duration::from_secs(5));
    let archive = only_archive(&h);
    assert_eq!(archive.state, ArchiveState::Archived, "{archive:#?}");
    let archived_at = archive.archived_at.expect("archived_at");
    assert_eq!(archive.purge_after, Some(Timestamp(archived_at.0 + HOUR)));
    assert!(h.e.service_view("db").is_none(), "the service is gone");
    for i in &svc.instances {
        assert!(h.world.tombstones.contains(&i.id), "instance {} terminated", i.id);
    }
    assert_eq!(archive_events(&h), [ArchiveState::Archiving, ArchiveState::Archived]);
    // Durable: the store holds what the list shows.
    assert_eq!(h.store.archives.get(&archive.id).map(|a| a.state), Some(ArchiveState::Archived));
}

#[test]
fn an_archive_is_purged_after_its_retention_and_not_before_and_the_name_is_freed() {
    let mut h = H::new(config());
    available(&mut h, "db", 0);
    delete(&mut h, "db");
    h.advance(Duration::from_secs(5));
    let archive = only_archive(&h);
    assert_eq!(archive.state, ArchiveState::Archived);
    let purge_after = archive.purge_after.expect("purge_after").0;

    let until = purge_after - h.now - 1_000_000;
    jump(&mut h, until);
    assert!(dispatched(&h, "purge_archive").is_empty(), "not a second before its retention ends");
    assert_eq!(only_archive(&h).state, ArchiveState::Archived);
    let held = h.command(Command::CreateService(request("db", EngineKind::Postgres, 0)));
    assert!(matches!(&held, Err(CommandError::Conflict(m)) if m.contains("held by archive")), "{held:?}");

    jump(&mut h, 1_100_000);
    let purges = dispatched(&h, "purge_archive");
    assert_eq!(purges.len(), 1, "{purges:?}");
    match &purges[0].kind {
        ActionKind::PurgeArchive { service_name, archive: id, .. } => {
            assert_eq!((service_name.as_str(), *id), ("db", archive.id))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(only_archive(&h).state, ArchiveState::Purged);
    assert_eq!(archive_events(&h).last(), Some(&ArchiveState::Purged));
    // Once purged, never again; and the name is free.
    jump(&mut h, 10 * HOUR);
    assert_eq!(dispatched(&h, "purge_archive").len(), 1);
    h.create("db", 0);
}

#[test]
fn restoring_an_archive_builds_a_new_service_whose_primary_restores_the_final_backup() {
    let mut h = H::new(config());
    let old = available(&mut h, "db", 1);
    delete(&mut h, "db");
    h.advance(Duration::from_secs(5));
    let archive = only_archive(&h);

    let view = match restore(&mut h, archive.id, "db2") {
        Ok(Reply::Service(v)) => *v,
        other => panic!("restore refused: {other:?}"),
    };
    assert_eq!((view.plan.followers, view.plan.sync), (old.plan.followers, old.plan.sync), "the deleted plan");
    let from = view.forked_from.clone().expect("restored from the archive");
    assert_eq!((from.service.as_str(), from.at, from.backup.as_deref()), ("db", None, Some("latest")));
    let provisions: Vec<(Role, Option<RestoreFrom>)> = h
        .dispatched
        .iter()
        .filter_map(|a| match a.kind.provision() {
            Some(drover_model::ProvisionSpec { role, service_name, restore_from, .. }) if service_name == "db2" => {
                Some((*role, restore_from.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(provisions.len(), 2);
    for (role, r) in provisions {
        assert_eq!(r.is_some(), role == Role::Primary, "{role}: {r:?}");
    }
    h.advance(Duration::from_secs(5));
    assert_eq!(h.service("db2").state, ServiceState::Available);
    assert_eq!(only_archive(&h).state, ArchiveState::Archived, "a restore keeps the archive");
}

#[test]
fn restore_refuses_an_unknown_archive_a_bad_name_a_taken_name_and_an_archive_not_archived() {
    let mut h = H::new(config());
    available(&mut h, "db", 0);
    available(&mut h, "other", 0);
    h.auto_execute = false;
    delete(&mut h, "db");
    let archive = only_archive(&h);

    let stranger = ArchiveId::new_at(h.now, 99);
    let unknown = restore(&mut h, stranger, "x");
    assert!(matches!(unknown, Err(CommandError::NotFound(_))), "{unknown:?}");
    let bad = restore(&mut h, archive.id, "Not A Name");
    assert!(matches!(bad, Err(CommandError::Invalid(_))), "{bad:?}");
    let archiving = restore(&mut h, archive.id, "db2");
    assert!(matches!(&archiving, Err(CommandError::Conflict(m)) if m.contains("archiving")), "{archiving:?}");

    h.auto_execute = true;
    h.run_actions();
    h.advance(Duration::from_secs(5));
    assert_eq!(only_archive(&h).state, ArchiveState::Archived);
    for taken in ["other", "db"] {
        let r = restore(&mut h, archive.id, taken);
        assert!(matches!(r, Err(CommandError::Conflict(_))), "{taken}: {r:?}");
    }
}

#[test]
fn a_deleted_name_is_held_while_its_archive_exists() {
    let mut h = H::new(config());
    available(&mut h, "db", 0);
    available(&mut h, "src", 0);
    delete(&mut h, "db");
    h.advance(Duration::from_secs(5));
    assert!(h.e.service_view("db").is_none());
    let create = h.command(Command::CreateService(request("db", EngineKind::Postgres, 0)));
    assert!(matches!(create, Err(CommandError::Conflict(_))), "{create:?}");
    h.command(Command::TakeBackup { name: "src".into() }).expect("backup");
    h.advance(Duration::from_secs(2));
    let fork = h.command(Command::ForkService { source: "src".into(), name: "db".into(), at: None });
    assert!(matches!(fork, Err(CommandError::Conflict(_))), "{fork:?}");
}

#[test]
fn a_failed_final_backup_fails_the_archive_with_its_cause_and_the_deletion_goes_on() {
    let mut h = H::new(config());
    available(&mut h, "db", 0);
    h.world.failing.push("backup");
    delete(&mut h, "db");
    h.advance(Duration::from_secs(5));
    let archive = only_archive(&h);
    assert_eq!(archive.state, ArchiveState::Failed);
    assert!(archive.error.as_deref().is_some_and(|e| e.contains("configured to fail")), "{archive:?}");
    assert!(h.e.service_view("db").is_none(), "deleted all the same");
    let r = restore(&mut h, archive.id, "db2");
    assert!(matches!(&r, Err(CommandError::Conflict(m)) if m.contains("failed")), "{r:?}");
    // A failed archive is purged too (older backups may remain).
    jump(&mut h, 2 * HOUR);
    assert_eq!(only_archive(&h).state, ArchiveState::Purged);
}

#[test]
fn redis_and_kafka_services_are_deleted_at_once_without_an_archive() {
    let mut h = H::new(config());
    h.command(Command::CreateService(request("cache", EngineKind::Redis, 0))).expect("redis");
    h.advance(Duration::from_secs(5));
    delete(&mut h, "cache");
    h.advance(Duration::from_secs(5));
    assert!(h.e.archives().is_empty());
    assert!(dispatched(&h, "backup").is_empty());
    assert!(h.e.service_view("cache").is_none());
    h.command(Command::CreateService(request("cache", EngineKind::Redis, 0))).expect("the name is free at once");
    let policies = drover_engine::policy::Policies::default();
    assert!(policies.get(EngineKind::Postgres).archives_on_delete());
    assert!(!policies.get(EngineKind::Redis).archives_on_delete());
    assert!(!policies.get(EngineKind::Kafka).archives_on_delete());
}

#[test]
fn a_restart_resumes_an_archive_in_progress_and_never_purges_twice() {
    let mut h = H::new(config());
    available(&mut h, "db", 0);
    h.auto_execute = false;
    delete(&mut h, "db");
    assert_eq!(only_archive(&h).state, ArchiveState::Archiving);
    h.crash_and_restore();
    assert_eq!(only_archive(&h).state, ArchiveState::Archiving, "resumed from the store");
    let backups = dispatched(&h, "backup");
    assert_eq!(backups.len(), 2, "the final backup dispatched again after the restart: {backups:?}");
    assert_eq!(backups[0].id, backups[1].id, "the same action, not a new one");
    h.auto_execute = true;
    h.run_actions();
    h.advance(Duration::from_secs(12));
    assert_eq!(only_archive(&h).state, ArchiveState::Archived);
    assert_eq!(archive_events(&h).iter().filter(|s| **s == ArchiveState::Archived).count(), 1);

    // Kill -9 with the purge dispatched but its result lost.
    h.now += 2 * HOUR;
    h.step(Input::Tick);
    assert_eq!(dispatched(&h, "purge_archive").len(), 1);
    h.crash_and_restore();
    let purges = dispatched(&h, "purge_archive");
    assert_eq!(purges.len(), 2, "resumed: {purges:?}");
    assert_eq!(purges[0].id, purges[1].id, "the same purge, dispatched again");
    h.run_actions();
    assert_eq!(only_archive(&h).state, ArchiveState::Purged);
    h.crash_and_restore();
    jump(&mut h, 10 * HOUR);
    assert_eq!(dispatched(&h, "purge_archive").len(), 2, "a purged archive is never purged again");
    assert_eq!(archive_events(&h).iter().filter(|s| **s == ArchiveState::Purged).count(), 1);
}

#[test]
fn recoverable_since_is_the_start_of_the_oldest_backup_kept() {
    let mut h = H::new(Config { backup_retention_full: 2, ..config() });
    available(&mut h, "db", 0);
    assert_eq!(h.service("db").recoverable_since, None, "no backup yet");
    let mut starts = Vec::new();
    for _ in 0..3 {
        starts.push(h.now);
        h.command(Command::TakeBackup { name: "db".into() }).expect("backup");
        h.advance(Duration::from_secs(2));
    }
    let v = h.service("db");
    assert_eq!(v.recoverable_since, Some(Timestamp(starts[1])), "two fulls kept: the second is the oldest");
    assert_eq!(v.backups.kept_backups_started.len(), 2);
    let json = serde_json::to_value(&v).expect("json");
    assert!(json.get("recoverable_since").is_some_and(|t| t.is_string()), "{json}");
}

#[test]
fn docs_archive_table_matches_the_code() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/states.md")).expect("docs/states.md");
    let section = doc.split("## Archive states").nth(1).expect("an archive states section");
    let table = section.split("\n## ").next().unwrap_or(section);
    let parse = |s: &str| -> ArchiveState { serde_json::from_value(serde_json::json!(s.trim_matches('*'))).expect(s) };
    let mut lines = table.lines().filter(|l| l.starts_with('|'));
    let header: Vec<ArchiveState> =
        lines.next().expect("header").split('|').map(str::trim).filter(|c| !c.is_empty()).skip(1).map(parse).collect();
    assert_eq!(header.len(), 4, "every state is a column");
    let mut rows = 0;
    for line in lines.skip(1) {
        let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        let from = parse(cells[0]);
        for (to, cell) in header.iter().zip(&cells[1..]) {
            assert_eq!(*cell == "✔", from.can_become(*to), "docs say {from} -> {to} is {cell}");
        }
        rows += 1;
    }
    assert_eq!(rows, 4, "every state is a row");
}
