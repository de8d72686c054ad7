mod common;
use common::*;
use drover_engine::{Command, CommandError, Config, Reply};
use drover_model::*;
use std::time::Duration;

fn ready(h: &mut H, name: &str, followers: u8) {
    h.create(name, followers);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.service(name).state, ServiceState::Available);
}

#[test]
fn switchover_fences_then_promotes_the_follower_and_rebuilds() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let old = h.primary("db1").id;
    let follower = h.followers("db1")[0].id;
    match h.command(Command::Switchover { name: "db1".into() }) {
        Ok(Reply::Service(v)) => assert!(v.remedy.unwrap().contains("fence")),
        other => panic!("{other:?}"),
    }
    // A second request while it runs is refused, not queued twice.
    assert!(matches!(h.command(Command::Switchover { name: "db1".into() }), Err(CommandError::Conflict(_))));
    h.run_actions();
    h.advance(Duration::from_secs(10));
    assert_eq!(h.primary("db1").id, follower);
    assert_eq!(h.service("db1").state, ServiceState::Available);
    assert_eq!(h.followers("db1").len(), 1);
    assert!(h.e.instance_view(old).is_none(), "the old primary was retired to the end");
    let fence = h.succeeded("fence");
    let promote = h.succeeded("promote");
    assert_eq!((fence.len(), promote.len()), (1, 1));
    assert!(fence[0].cause.contains("switchover"));
}

#[test]
fn switchover_without_a_follower_is_refused() {
    let mut h = H::new(fast_config());
    ready(&mut h, "solo", 0);
    let e = h.command(Command::Switchover { name: "solo".into() }).unwrap_err();
    assert!(matches!(&e, CommandError::Conflict(m) if m.contains("follower")), "{e}");
    assert!(matches!(h.command(Command::Switchover { name: "nope".into() }), Err(CommandError::NotFound(_))));
}

#[test]
fn on_demand_backup_and_restore_test_record_their_results() {
    let mut h = H::new(Config { backup_interval: None, verify_interval: None, ..fast_config() });
    ready(&mut h, "db1", 1);
    h.auto_execute = false;
    let Ok(Reply::Action(a)) = h.command(Command::TakeBackup { name: "db1".into() }) else { panic!() };
    assert_eq!(a.kind, ActionKind::Backup);
    assert_eq!(a.instance, h.primary("db1").id, "backups are taken from the primary");
    assert!(matches!(h.command(Command::TakeBackup { name: "db1".into() }), Err(CommandError::Conflict(_))));
    h.run_actions();
    let b = h.service("db1").backups;
    assert_eq!(b.last_backup_at, Some(Timestamp(h.now)));
    assert!(b.last_verified_restore_at.is_none());
    h.command(Command::VerifyBackup { name: "db1".into() }).unwrap();
    h.run_actions();
    let b = h.service("db1").backups;
    assert_eq!(b.last_verify_ok, Some(true));
    // Persisted: the store's record carries it.
    let rec = h.store.services.values().find(|s| s.name == "db1").unwrap();
    assert_eq!(rec.backups, b);
}

#[test]
fn a_failed_restore_test_takes_a_fresh_backup_and_tests_it_again() {
    let mut h = H::new(Config { backup_interval: None, verify_interval: None, ..fast_config() });
    ready(&mut h, "db1", 0);
    h.auto_execute = false;
    h.command(Command::TakeBackup { name: "db1".into() }).unwrap();
    h.run_actions();
    h.world.failing.push("verify_restore");
    h.command(Command::VerifyBackup { name: "db1".into() }).unwrap();
    let verify = h.inflight.pop_front().unwrap();
    let outcome = h.world.execute(&verify);
    h.step(drover_engine::Input::ActionResult { action: verify.id, attempt: verify.attempts, outcome });
    let b = h.service("db1").backups;
    assert_eq!(b.last_verify_ok, Some(false));
    assert!(b.last_verify_error.as_deref().unwrap().contains("configured to fail"));
    assert_eq!(h.inflight.front().map(|a| a.kind.clone()), Some(ActionKind::Backup), "the remedy: a fresh backup");
    h.world.failing.clear();
    h.run_actions(); // the backup, then its restore test
    let b = h.service("db1").backups;
    assert_eq!(b.last_verify_ok, Some(true), "{b:?}");
    let verifies = h.dispatched.iter().filter(|a| a.kind == ActionKind::VerifyRestore).count();
    assert_eq!(verifies, 2);
}

#[test]
fn restore_tests_that_keep_failing_escalate_instead_of_looping() {
    let mut h = H::new(Config { backup_interval: None, verify_interval: None, ..fast_config() });
    ready(&mut h, "db1", 0);
    h.auto_execute = false;
    h.world.failing.push("verify_restore");
    h.command(Command::VerifyBackup { name: "db1".into() }).unwrap();
    h.run_actions();
    let verifies = h.dispatched.iter().filter(|a| a.kind == ActionKind::VerifyRestore).count();
    assert_eq!(verifies, 2, "one test, one retest after a fresh backup, then stop");
    assert!(h.store.events.iter().any(|e| e.cause.contains("restore tests keep failing")));
}

#[test]
fn backups_and_restore_tests_run_on_schedule() {
    let config = Config {
        backup_interval: Some(Duration::from_secs(3600)),
        verify_interval: Some(Duration::from_secs(4 * 3600)),
        ..fast_config()
    };
    let mut h = H::new(config);
    ready(&mut h, "db1", 1);
    h.heartbeat_every = 1_000_000;
    // A day in 1 s steps would be slow in the harness; 10 hours is enough.
    for _ in 0..(10 * 3600 / 60) {
        h.advance(Duration::from_secs(60));
    }
    let backups = h.succeeded("backup").len();
    let verifies = h.succeeded("verify_restore").len();
    assert!((9..=11).contains(&backups), "about one an hour over 10 h, got {backups}");
    assert!((2..=4).contains(&verifies), "restore tests every 4 h, got {verifies}");
}

#[test]
fn needs_human_survives_a_control_plane_restart() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    h.world.failing.push("fence");
    let p = h.primary("db1").id;
    h.chaos(p, Fault::Crash);
    h.advance(Duration::from_secs(10));
    assert!(h.service("db1").needs_human);
    h.crash_and_restore();
    h.world.failing.clear();
    h.advance(Duration::from_secs(30));
    assert!(h.service("db1").needs_human, "a human's call is not forgotten by a restart");
    assert!(h.succeeded("promote").is_empty());
}
