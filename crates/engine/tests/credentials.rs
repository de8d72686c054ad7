//! Credential rotation decided by the engine: the schedule per plan, the end
//! of each overlap as a durable action, who asked in the audit trail, and
//! kill -9 anywhere in between.

mod common;
use common::*;
use drover_engine::{Command, CommandError, Config, Reply};
use drover_model::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

fn config(every: Option<Duration>, overlap: Duration) -> Config {
    Config {
        backup_interval: None,
        verify_interval: None,
        credential_rotation: every,
        rotation_overlap: overlap,
        ..fast_config()
    }
}

fn create(h: &mut H, name: &str, days: Option<u32>) -> ServiceView {
    let req =
        CreateService { sync: Some(true), credential_rotation_days: days, ..request(name, EngineKind::Postgres, 1) };
    let Ok(Reply::Service(v)) = h.command(Command::CreateService(req)) else { panic!("create {name}") };
    h.advance(Duration::from_secs(3));
    assert_eq!(h.service(name).state, ServiceState::Available);
    *v
}

/// Actions of `kind` ever opened (the store keeps every one).
fn opened<'a>(h: &'a H, kind: &str) -> Vec<&'a ActionRecord> {
    h.store.actions.values().filter(|a| a.kind.name() == kind).collect()
}

fn audited<'a>(h: &'a H, actor: &str, command: &str) -> Vec<&'a AuditEntry> {
    h.store.audit.iter().filter(|e| e.actor == actor && e.command == command).collect()
}

#[test]
fn the_schedule_rotates_at_its_period_and_revokes_when_the_overlap_ends_audited_as_the_schedule() {
    let mut h = H::new(config(Some(10 * MIN), MIN));
    let created = h.now;
    let v = create(&mut h, "db1", None);
    let next = v.credentials.next_rotation_at.expect("scheduled by the control plane's default").0;
    // Spread over at most a tenth of the period, never earlier.
    let every = 10 * 60_000_000;
    assert!(next >= created + every && next < created + every + every / 10, "{next} vs {created}");

    h.advance(Duration::from_micros((next - h.now - 1_000_000) as u64));
    assert!(opened(&h, "rotate_credentials").is_empty(), "nothing before it is due");
    h.advance(Duration::from_secs(2));
    let rotations = opened(&h, "rotate_credentials");
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].state, ActionState::Succeeded);
    assert_eq!(rotations[0].instance, h.primary("db1").id, "on the primary");
    assert!(rotations[0].cause.contains("scheduled") && rotations[0].cause.contains("600s"), "{}", rotations[0].cause);
    let rotated_at = rotations[0].updated_at.0;
    let rotation_id = rotations[0].id;
    let status = h.service("db1").credentials;
    assert_eq!(status.last_rotated_at, Some(Timestamp(rotated_at)));
    assert_eq!(status.overlap_ends_at, Some(Timestamp(rotated_at + 60_000_000)));
    assert_eq!(status.next_rotation_at, Some(Timestamp(rotated_at + every)));
    assert!(opened(&h, "revoke_previous_credentials").is_empty(), "revoked during the overlap");
    // Durable: the service's record says when the overlap ends.
    let stored = h.store.services.values().find(|s| s.name == "db1").unwrap();
    assert_eq!(stored.credentials.overlap_ends_at, status.overlap_ends_at);

    h.advance(MIN);
    let revokes = opened(&h, "revoke_previous_credentials");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].state, ActionState::Succeeded);
    assert!(revokes[0].created_at.0 >= rotated_at + 60_000_000, "not before the overlap's end");
    assert!(h.service("db1").credentials.overlap_ends_at.is_none());

    let rot = audited(&h, "schedule", "services.rotate_credentials");
    let rev = audited(&h, "schedule", "services.revoke_previous_credentials");
    assert_eq!((rot.len(), rev.len()), (1, 1), "{:#?}", h.store.audit);
    assert_eq!(rot[0].target.as_deref(), Some("db1"));
    assert_eq!(rot[0].detail["action"], serde_json::json!(rotation_id));
    assert!(h.store.events.iter().any(|e| e.cause.contains("scheduled credential rotation")));

    // And again a period after the last one.
    h.advance(Duration::from_secs(9 * 60 + 5));
    assert_eq!(opened(&h, "rotate_credentials").len(), 2);
    assert_eq!(opened(&h, "revoke_previous_credentials").len(), 1, "the second overlap is still open");
}

#[test]
fn a_plan_says_on_demand_or_its_own_period_over_the_control_planes_default() {
    let mut h = H::new(config(Some(MIN), MIN));
    let created = h.now;
    let on_demand = create(&mut h, "manual", Some(0));
    assert_eq!(on_demand.plan.credential_rotation_days, Some(0));
    assert_eq!(on_demand.credentials, CredentialStatus::default());
    let monthly = create(&mut h, "monthly", Some(30));
    let next = monthly.credentials.next_rotation_at.unwrap().0;
    let month = 30 * 86_400 * 1_000_000i64;
    assert!(next >= created + month && next <= created + month + 3_600_000_000 + 10_000_000, "{next}");
    let default = create(&mut h, "default", None);
    assert!(default.credentials.next_rotation_at.is_some());

    h.advance(5 * MIN);
    let by_service = |name: &str| {
        let id = h.e.service_view(name).unwrap().id;
        opened(&h, "rotate_credentials").iter().filter(|a| a.service == id).count()
    };
    assert_eq!(by_service("manual"), 0);
    assert_eq!(by_service("monthly"), 0);
    assert!(by_service("default") >= 2, "every minute");
    // A plan of another era (no field) reads as "the default".
    let old: Plan = serde_json::from_str(r#"{"followers":1,"sync":true,"max_failover_lag_bytes":0}"#).unwrap();
    assert_eq!(old.credential_rotation_days, None);
    assert!(!serde_json::to_string(&old).unwrap().contains("credential_rotation"), "old plans serialize as before");
}

#[test]
fn an_on_demand_rotation_names_its_caller_and_none_opens_while_one_runs_or_drains() {
    let mut h = H::new(config(None, MIN));
    let v = create(&mut h, "db1", None);
    assert_eq!(v.credentials, CredentialStatus::default(), "nothing scheduled without a period");
    h.auto_execute = false;
    let rotate = || Command::RotateCredentials { name: "db1".into(), in_progress: None };
    let Ok(Reply::Action(a)) = h.command(rotate()) else { panic!("rotation refused") };
    assert!(a.cause.contains("requested by test"), "{}", a.cause);
    assert!(matches!(h.command(rotate()), Err(CommandError::Conflict(_))), "while it runs");
    h.run_actions();
    let e = h.command(rotate()).unwrap_err();
    assert!(matches!(&e, CommandError::Conflict(m) if m.contains("overlap")), "while it drains: {e}");
    h.auto_execute = true;
    h.advance(MIN + Duration::from_secs(1));
    assert_eq!(opened(&h, "revoke_previous_credentials").len(), 1);
    assert!(h.command(rotate()).is_ok(), "once the old credential is revoked");
    let by_caller = audited(&h, "test", "services.rotate_credentials");
    assert_eq!(by_caller.iter().filter(|e| e.outcome == "ok").count(), 2);
    assert_eq!(by_caller.iter().filter(|e| e.outcome != "ok").count(), 2, "refusals are audited");
    assert_eq!(audited(&h, "schedule", "services.revoke_previous_credentials").len(), 1);
    assert!(matches!(
        h.command(Command::RotateCredentials { name: "nosuch".into(), in_progress: None }),
        Err(CommandError::NotFound(_))
    ));
}

#[test]
fn killed_in_the_overlap_the_restarted_engine_revokes_once_when_it_ends() {
    let mut h = H::new(config(None, 2 * MIN));
    create(&mut h, "db1", None);
    h.command(Command::RotateCredentials { name: "db1".into(), in_progress: None }).unwrap();
    h.run_actions();
    let ends = h.service("db1").credentials.overlap_ends_at.expect("in its overlap");
    h.advance(MIN);
    h.crash_and_restore();
    assert_eq!(h.service("db1").credentials.overlap_ends_at, Some(ends), "restored from the record");
    h.advance(Duration::from_secs(50));
    assert!(opened(&h, "revoke_previous_credentials").is_empty(), "not before the end");
    h.advance(Duration::from_secs(15));
    let revokes = opened(&h, "revoke_previous_credentials");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].state, ActionState::Succeeded);
    assert!(revokes[0].created_at >= ends);
    h.crash_and_restore();
    h.advance(5 * MIN);
    assert_eq!(opened(&h, "revoke_previous_credentials").len(), 1, "never twice");
    assert_eq!(opened(&h, "rotate_credentials").len(), 1);
}

#[test]
fn killed_while_a_rotation_or_its_revocation_runs_the_same_action_is_dispatched_again() {
    let mut h = H::new(config(Some(10 * MIN), MIN));
    create(&mut h, "db1", None);
    h.auto_execute = false;
    // Up to the scheduled rotation, dispatched but without a result.
    h.advance(11 * MIN);
    let rotation = opened(&h, "rotate_credentials")[0].id;
    assert!(h.inflight.iter().any(|a| a.id == rotation));
    h.crash_and_restore();
    let again: Vec<_> = h.inflight.iter().filter(|a| a.id == rotation).collect();
    assert_eq!(again.len(), 1, "resumed: the same action, dispatched again");
    h.run_actions();
    assert_eq!(opened(&h, "rotate_credentials").len(), 1);
    assert!(h.service("db1").credentials.overlap_ends_at.is_some());

    // Up to the revocation, dispatched but without a result.
    h.advance(MIN + Duration::from_secs(1));
    let revoke = opened(&h, "revoke_previous_credentials");
    assert_eq!(revoke.len(), 1);
    let revoke = revoke[0].id;
    // The provider carries it out; the process dies before the result lands.
    let attempt = h.inflight.iter().find(|a| a.id == revoke).cloned().expect("dispatched");
    assert!(matches!(h.world.execute(&attempt), ActionOutcome::Succeeded { .. }));
    h.crash_and_restore();
    assert!(h.inflight.iter().any(|a| a.id == revoke), "the same revocation, dispatched again");
    h.run_actions();
    assert_eq!(h.store.actions[&revoke].state, ActionState::Succeeded);
    let ran = h.world.executed.iter().filter(|(id, ..)| *id == revoke).count();
    assert_eq!(ran, 2, "the provider saw it twice; the repeat revokes nothing more");
    assert!(h.service("db1").credentials.overlap_ends_at.is_none());
    h.auto_execute = true;
    h.advance(2 * MIN);
    assert_eq!(opened(&h, "revoke_previous_credentials").len(), 1);
}

#[test]
fn a_failed_revocation_is_tried_again_until_the_old_credential_is_gone() {
    let mut h = H::new(config(None, MIN));
    create(&mut h, "db1", None);
    h.command(Command::RotateCredentials { name: "db1".into(), in_progress: None }).unwrap();
    h.run_actions();
    h.world.failing.push("revoke_previous_credentials");
    h.advance(MIN + Duration::from_secs(1));
    assert_eq!(opened(&h, "revoke_previous_credentials")[0].state, ActionState::Failed);
    assert!(h.service("db1").credentials.overlap_ends_at.is_some(), "still owed");
    h.world.failing.clear();
    h.advance(2 * MIN);
    let revokes = opened(&h, "revoke_previous_credentials");
    assert_eq!(revokes.iter().filter(|a| a.state == ActionState::Succeeded).count(), 1, "{revokes:#?}");
    assert!(h.service("db1").credentials.overlap_ends_at.is_none());
}
