mod common;
use common::*;
use drover_engine::{Command, CommandError, Config, Input};
use drover_model::*;
use std::time::Duration;

fn ready(h: &mut H, name: &str, followers: u8) {
    h.create(name, followers);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.service(name).state, ServiceState::Available);
}

#[test]
fn crashed_primary_fails_over_fence_promote_rebuild_retire_archive_terminate() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let old = h.primary("db1").id;
    let follower = h.followers("db1")[0].id;
    h.chaos(old, Fault::Crash);
    h.advance(Duration::from_secs(15));
    let v = h.service("db1");
    assert_eq!(v.state, ServiceState::Available, "{v:#?}");
    assert_eq!(h.primary("db1").id, follower, "the follower was promoted");
    let followers = h.followers("db1");
    assert_eq!(followers.len(), 1);
    assert_ne!(followers[0].id, follower, "a new follower was built");
    assert_eq!(followers[0].state, InstanceState::Available);
    // The old primary went all the way out, in order, with causes.
    assert_eq!(
        h.transitions(old),
        vec![
            "-->installing",
            "installing->available",
            "available->uncertain",
            "uncertain->unavailable",
            "unavailable->retiring",
            "retiring->retired",
            "retired->archived",
            "archived->terminated"
        ]
    );
    let unavailable = h.events_for(old).into_iter().find(|e| e.to.as_deref() == Some("unavailable")).unwrap();
    assert!(
        unavailable.cause.contains("replication stream") || unavailable.cause.contains("probe failed"),
        "{}",
        unavailable.cause
    );
    // Order of remedies: fence, then promote, then build, then retire.
    let kinds: Vec<&str> = h
        .store
        .events
        .iter()
        .filter(|e| e.subject == EventSubject::Action && e.to.as_deref() == Some("succeeded"))
        .filter_map(|e| h.store.actions.get(&e.action.unwrap()).map(|a| a.kind.name()))
        .collect();
    let pos = |k: &str| kinds.iter().rposition(|x| *x == k).unwrap_or_else(|| panic!("{k} missing in {kinds:?}"));
    assert!(pos("fence") < pos("promote"));
    assert!(pos("promote") < pos("provision"));
    assert!(pos("provision") < pos("retire"));
    assert!(pos("retire") < pos("archive") && pos("archive") < pos("terminate"));
    assert_eq!(h.succeeded("promote").len(), 1);
    assert!(h.e.instance_view(old).is_none(), "terminated instances leave memory");
}

#[test]
fn hung_primary_is_fenced_by_its_provider_before_the_follower_is_promoted() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 2);
    let old = h.primary("db1").id;
    h.chaos(old, Fault::Hang);
    h.advance(Duration::from_secs(20));
    assert_ne!(h.primary("db1").id, old);
    assert_eq!(h.service("db1").state, ServiceState::Available);
    assert_eq!(h.followers("db1").len(), 2);
    let fence = h.succeeded("fence");
    let promote = h.succeeded("promote");
    assert_eq!((fence.len(), promote.len()), (1, 1));
    assert!(fence[0].updated_at <= promote[0].created_at);
}

#[test]
fn unavailable_follower_is_replaced_and_the_primary_untouched() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let p = h.primary("db1").id;
    let f = h.followers("db1")[0].id;
    h.chaos(f, Fault::Crash);
    h.advance(Duration::from_secs(15));
    assert_eq!(h.primary("db1").id, p);
    let fs = h.followers("db1");
    assert_eq!(fs.len(), 1);
    assert_ne!(fs[0].id, f);
    assert_eq!(h.service("db1").state, ServiceState::Available);
    assert!(h.succeeded("fence").is_empty() && h.succeeded("promote").is_empty());
}

#[test]
fn primary_without_follower_is_restarted() {
    let mut h = H::new(fast_config());
    ready(&mut h, "solo", 0);
    let p = h.primary("solo").id;
    h.chaos(p, Fault::Crash);
    h.advance(Duration::from_secs(15));
    assert_eq!(h.primary("solo").id, p, "same instance, restarted");
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Available);
    assert_eq!(h.succeeded("restart").len(), 1);
    assert!(h.transitions(p).contains(&"unavailable->restarting".to_string()));
}

#[test]
fn primary_that_restart_cannot_revive_is_fenced_and_rebuilt() {
    let mut h = H::new(fast_config());
    ready(&mut h, "solo", 0);
    let p = h.primary("solo").id;
    h.world.insts.get_mut(&p).unwrap().broken_for_good = true;
    h.chaos(p, Fault::Crash);
    h.advance(Duration::from_secs(30));
    let np = h.primary("solo");
    assert_ne!(np.id, p, "rebuilt as a new instance");
    assert_eq!(np.state, InstanceState::Available);
    assert_eq!(h.service("solo").state, ServiceState::Available);
    assert!(h.store.actions.values().any(|a| a.kind.name() == "restart" && a.state == ActionState::Failed));
    assert_eq!(h.succeeded("fence").len(), 1);
    assert!(h.e.instance_view(p).is_none(), "the broken one was retired to the end");
}

#[test]
fn a_follower_lagging_past_the_bound_is_not_promoted() {
    let mut h = H::new(fast_config());
    let req = CreateService {
        name: "db1".into(),
        engine: EngineKind::Postgres,
        followers: 1,
        provider: None,
        sync: None,
        team: None,
        zones: None,
        max_failover_lag_bytes: Some(10),
        credential_rotation_days: None,
        labels: None,
        brokers: None,
    };
    h.command(Command::CreateService(req)).unwrap();
    h.advance(Duration::from_secs(3));
    let p = h.primary("db1").id;
    let f = h.followers("db1")[0].id;
    // The follower reports a big lag; then the primary crashes.
    h.step(Input::Heartbeats(vec![Beat {
        instance: f,
        seq: 1_000_000,
        facts: Facts { replication_lag_bytes: Some(1 << 30), ..Default::default() },
    }]));
    h.heartbeat_every = i64::MAX; // keep the lag fact: no more beats
    h.chaos(p, Fault::Crash);
    h.advance(Duration::from_secs(5));
    assert!(h.succeeded("promote").is_empty(), "no promotion of a lagging follower");
    assert!(h.dispatched.iter().any(|a| a.instance == p && a.kind == ActionKind::Restart));
}

#[test]
fn zone_budget_queues_remedies_and_runs_them_in_turn() {
    let config = Config { zone_budget: 1, brake_min_instances: 1000, ..fast_config() };
    let mut h = H::new(config);
    for i in 0..3 {
        ready(&mut h, &format!("db{i}"), 0);
    }
    h.auto_execute = false;
    for i in 0..3 {
        let p = h.primary(&format!("db{i}")).id;
        h.command(Command::Chaos { instance: p, fault: Fault::Crash }).unwrap();
    }
    h.run_actions();
    // Probes answer "dead" but restarts are held back by hand.
    let mut max_running_restarts = 0;
    for _ in 0..100 {
        h.advance(Duration::from_millis(200));
        let probes: Vec<_> = h.inflight.iter().filter(|a| a.kind == ActionKind::Probe).cloned().collect();
        h.inflight.retain(|a| a.kind != ActionKind::Probe);
        for a in probes {
            let outcome = h.world.execute(&a);
            h.step(Input::ActionResult { action: a.id, attempt: a.attempts, outcome });
        }
        let running =
            h.e.open_actions()
                .iter()
                .filter(|a| a.kind == ActionKind::Restart && a.state == ActionState::Running)
                .count();
        max_running_restarts = max_running_restarts.max(running);
        // Finish one running restart at a time.
        if let Some(pos) = h.inflight.iter().position(|a| a.kind == ActionKind::Restart) {
            let a = h.inflight.remove(pos).unwrap();
            let outcome = h.world.execute(&a);
            h.step(Input::ActionResult { action: a.id, attempt: a.attempts, outcome });
        }
    }
    assert_eq!(max_running_restarts, 1, "budget of one per zone");
    assert_eq!(h.succeeded("restart").len(), 3, "all three ran in turn");
    assert!(h.store.events.iter().any(|e| e.cause.contains("waiting for the zone's remedy budget")));
}

#[test]
fn mass_uncertainty_engages_the_brake_once_and_holds_silence_based_remedies() {
    let config = Config { brake_min_instances: 3, presumed_dead_after: Duration::from_secs(20), ..fast_config() };
    let mut h = H::new(config);
    for i in 0..10 {
        h.create(&format!("db{i}"), 1);
    }
    h.advance(Duration::from_secs(3));
    // The control plane loses sight of zone-a, and the provider cannot be reached either.
    let zone_a: Vec<InstanceId> =
        h.e.service_views()
            .iter()
            .flat_map(|s| s.instances.iter().filter(|i| i.zone == "zone-a").map(|i| i.id).collect::<Vec<_>>())
            .collect();
    assert_eq!(zone_a.len(), 10);
    for id in &zone_a {
        h.world.insts.get_mut(id).unwrap().partitioned = true;
    }
    h.auto_execute = false;
    for _ in 0..600 {
        h.advance(Duration::from_millis(100));
        h.inflight.clear(); // no provider answers
    }
    let engaged: Vec<_> = h.store.events.iter().filter(|e| e.to.as_deref() == Some("braked")).collect();
    assert_eq!(engaged.len(), 2, "one event for zone-a, one for the fleet: {engaged:#?}");
    assert!(engaged.iter().any(|e| e.cause.contains("zone-a")));
    let mut scopes: Vec<_> = engaged
        .iter()
        .map(|e| match &e.kind {
            EventKind::BrakeEngaged { scope } => scope.as_str(),
            other => panic!("a brake event of kind {other:?}"),
        })
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["fleet", "zone-a"], "the brake's scope is typed, not cut out of the prose");
    for id in &zone_a {
        assert_eq!(
            h.e.instance_view(*id).unwrap().state,
            InstanceState::Uncertain,
            "silence is not evidence under the brake"
        );
    }
    assert!(h
        .store
        .actions
        .values()
        .all(|a| !matches!(a.kind, ActionKind::Fence { .. } | ActionKind::Promote | ActionKind::Restart)));
    // The zone comes back: instances recover and the brake releases.
    for id in &zone_a {
        h.world.insts.get_mut(id).unwrap().partitioned = false;
    }
    h.auto_execute = true;
    h.advance(Duration::from_secs(3));
    assert!(h.store.events.iter().any(|e| e.to.as_deref() == Some("released")));
    assert!(h.e.service_views().iter().all(|s| s.state == ServiceState::Available));
}

#[test]
fn under_the_brake_fresh_evidence_still_lets_a_remedy_run() {
    let config = Config { brake_min_instances: 3, ..fast_config() };
    let mut h = H::new(config);
    for i in 0..10 {
        h.create(&format!("db{i}"), 1);
    }
    h.advance(Duration::from_secs(3));
    let zone_a: Vec<(String, InstanceId)> =
        h.e.service_views()
            .iter()
            .flat_map(|s| {
                s.instances.iter().filter(|i| i.zone == "zone-a").map(|i| (s.name.clone(), i.id)).collect::<Vec<_>>()
            })
            .collect();
    // The zone is cut off, but one primary there has really crashed.
    for (_, id) in &zone_a {
        h.world.insts.get_mut(id).unwrap().partitioned = true;
    }
    let (crashed_service, crashed) = zone_a[0].clone();
    h.world.insts.get_mut(&crashed).unwrap().crashed = true;
    h.advance(Duration::from_secs(20));
    assert!(h.store.events.iter().any(|e| e.to.as_deref() == Some("braked")));
    assert_ne!(
        h.primary(&crashed_service).id,
        crashed,
        "evidence (its follower's broken stream, a failed probe) lets failover run"
    );
    // The merely-partitioned ones were not touched.
    for (name, id) in &zone_a[1..] {
        if h.e.instance_view(*id).map(|v| v.role) == Some(Role::Primary) {
            assert_eq!(h.primary(name).id, *id);
        }
    }
}

#[test]
fn restart_mid_failover_resumes_with_a_new_attempt_and_never_promotes_twice() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let old = h.primary("db1").id;
    let f = h.followers("db1")[0].id;
    h.chaos(old, Fault::Crash);
    // Let the fence run in the provider, but crash before its result is stored.
    h.auto_execute = false;
    for _ in 0..100 {
        h.advance(Duration::from_millis(100));
        if h.inflight.iter().any(|a| matches!(a.kind, ActionKind::Fence { .. })) {
            break;
        }
        h.run_actions();
    }
    let fence =
        h.inflight.iter().find(|a| matches!(a.kind, ActionKind::Fence { .. })).cloned().expect("fence dispatched");
    h.world.execute(&fence); // the provider did it; the answer is lost
    h.crash_and_restore();
    let redispatched = h.inflight.iter().find(|a| a.id == fence.id).expect("fence re-dispatched after restart");
    assert_eq!(redispatched.attempts, fence.attempts + 1);
    h.auto_execute = true;
    h.advance(Duration::from_secs(20));
    assert_eq!(h.primary("db1").id, f);
    assert_eq!(h.succeeded("promote").len(), 1);
    assert_eq!(h.service("db1").state, ServiceState::Available);
    assert!(h.store.events.iter().any(|e| e.cause.contains("control plane started")));
}

#[test]
fn after_restart_silence_is_forgiven_for_the_grace_period() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    h.heartbeat_every = i64::MAX; // agents cannot reach the new process yet
    h.crash_and_restore();
    h.advance(Duration::from_secs(9));
    assert!(h.service("db1").instances.iter().all(|i| i.state == InstanceState::Available));
    h.advance(Duration::from_secs(2));
    assert!(h.service("db1").instances.iter().all(|i| i.state == InstanceState::Uncertain));
}

#[test]
fn stale_action_results_are_dropped() {
    let mut h = H::new(fast_config());
    h.auto_execute = false;
    h.create("db1", 0);
    let a = h.inflight.pop_front().unwrap();
    let out = h.e.step(
        Input::ActionResult {
            action: a.id,
            attempt: a.attempts + 5,
            outcome: ActionOutcome::Succeeded { detail: None },
        },
        Timestamp(h.now),
    );
    assert!(out.changes.is_empty(), "a result for another attempt changes nothing");
    assert!(h.e.open_actions().iter().any(|x| x.id == a.id));
}

#[test]
fn commands_are_validated_and_audited() {
    let mut h = H::new(fast_config());
    h.create("db1", 1);
    let dup = CreateService {
        name: "db1".into(),
        engine: EngineKind::Postgres,
        followers: 0,
        provider: None,
        sync: None,
        team: None,
        zones: None,
        max_failover_lag_bytes: None,
        credential_rotation_days: None,
        labels: None,
        brokers: None,
    };
    assert!(matches!(h.command(Command::CreateService(dup.clone())), Err(CommandError::Conflict(_))));
    let mut local = dup.clone();
    local.name = "db2".into();
    local.provider = Some("local".into());
    assert!(matches!(h.command(Command::CreateService(local)), Err(CommandError::Invalid(m)) if m.contains("sim")));
    let mut kafka = dup.clone();
    kafka.name = "k1".into();
    kafka.engine = EngineKind::Kafka;
    assert!(matches!(h.command(Command::CreateService(kafka)), Err(CommandError::Invalid(m)) if m.contains("kafka")));
    assert!(matches!(h.command(Command::DeleteService { name: "nope".into() }), Err(CommandError::NotFound(_))));
    assert!(matches!(
        h.command(Command::Chaos { instance: InstanceId::new_at(T0, 1), fault: Fault::Crash }),
        Err(CommandError::NotFound(_))
    ));
    let refused = h.store.audit.iter().filter(|a| a.outcome != "ok").count();
    assert_eq!(refused, 5);
    assert!(h.store.audit.iter().all(|a| a.actor == "test"));
}

#[test]
fn deleting_a_service_retires_archives_terminates_it_and_its_archive_holds_its_name() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let ids: Vec<_> = h.service("db1").instances.iter().map(|i| i.id).collect();
    h.command(Command::DeleteService { name: "db1".into() }).unwrap();
    assert_eq!(h.service("db1").state, ServiceState::Deleting);
    h.advance(Duration::from_secs(5));
    assert!(h.e.service_view("db1").is_none());
    for id in ids {
        assert_eq!(h.transitions(id).last().unwrap(), "archived->terminated");
        assert!(!h.world.insts.contains_key(&id));
    }
    let rec = h.store.services.values().find(|s| s.name == "db1").unwrap();
    assert_eq!(rec.state, ServiceState::Deleted);
    // A PostgreSQL service's name stays held by its archive until it is
    // purged (tests/archives.rs); another name is free at once.
    let held = h.command(Command::CreateService(request("db1", EngineKind::Postgres, 0)));
    assert!(matches!(held, Err(CommandError::Conflict(_))), "{held:?}");
    h.create("db2", 0);
}

#[test]
fn a_fence_that_fails_for_good_stops_the_failover_and_asks_for_a_human() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let old = h.primary("db1").id;
    h.world.failing.push("fence");
    h.chaos(old, Fault::Crash);
    h.advance(Duration::from_secs(20));
    assert!(h.succeeded("promote").is_empty(), "never promote without a confirmed fence");
    let v = h.service("db1");
    assert_eq!(v.state, ServiceState::Unavailable);
    assert!(v.remedy.unwrap_or_default().contains("human"));
}

#[test]
fn instances_created_after_a_restart_get_no_grace() {
    let mut h = H::new(fast_config());
    h.crash_and_restore(); // a fresh start: the grace period begins now
    ready(&mut h, "db1", 0);
    let p = h.primary("db1").id;
    h.world.insts.get_mut(&p).unwrap().partitioned = true;
    h.advance(Duration::from_secs(4));
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Uncertain, "3 s of silence counts at once");
}

#[test]
fn a_remedy_failing_forever_stops_needs_a_human_once_and_resume_tries_again() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let follower = h.followers("db1")[0].id;
    let provisions = |h: &H| h.store.actions.values().filter(|a| a.kind.name() == "provision").count();
    let built = provisions(&h);
    // Every rebuild fails from now on (a broken image, a full disk).
    h.world.failing = vec!["provision"];
    h.chaos(follower, Fault::Crash);
    h.advance(Duration::from_secs(3600));
    let v = h.service("db1");
    assert!(v.needs_human, "{v:#?}");
    let tried = provisions(&h);
    assert_eq!(tried - built, h.config.max_remedy_failures as usize, "it stopped trying after the limit");
    let asks: Vec<&Event> = h.store.events.iter().filter(|e| e.to.as_deref() == Some("needs_human")).collect();
    assert_eq!(asks.len(), 1, "a human is asked once: {asks:#?}");
    assert!(asks[0].cause.contains("configured to fail"), "the last error is the evidence: {}", asks[0].cause);
    assert_eq!(asks[0].service.as_deref(), Some("db1"));
    assert_eq!(asks[0].kind, EventKind::NeedsHuman);
    assert!(asks[0].team.is_some(), "the owning team travels with the event: {:#?}", asks[0]);
    // Nothing more happens while it waits for a person.
    h.advance(Duration::from_secs(3600));
    assert_eq!(provisions(&h), tried, "no retry while a human is needed");
    assert!(h.e.open_actions().iter().all(|a| a.kind.name() == "probe"), "{:?}", h.e.open_actions());

    // A person fixes the cause and resumes the service: the engine tries again.
    h.world.failing.clear();
    match h.command(Command::ResumeService { name: "db1".into() }) {
        Ok(drover_engine::Reply::Service(v)) => assert!(!v.needs_human, "{v:#?}"),
        other => panic!("resume: {other:?}"),
    }
    h.advance(Duration::from_secs(60));
    let v = h.service("db1");
    assert_eq!(v.state, ServiceState::Available, "{v:#?}");
    assert!(!v.needs_human);
    assert!(provisions(&h) > tried, "resume made the engine rebuild the follower");
    let audit = h.store.audit.iter().find(|a| a.command == "services.resume").expect("resume is audited");
    assert_eq!(audit.outcome, "ok");
}

#[test]
fn resuming_an_unknown_service_is_refused() {
    let mut h = H::new(fast_config());
    assert!(matches!(h.command(Command::ResumeService { name: "nope".into() }), Err(CommandError::NotFound(_))));
}

#[test]
fn the_restart_grace_excuses_silence_but_not_a_failed_probe() {
    let mut h = H::new(Config { restart_grace: Duration::from_secs(60), ..fast_config() });
    ready(&mut h, "db1", 1);
    let old = h.primary("db1").id;
    let follower = h.followers("db1")[0].id;
    h.crash_and_restore();
    // Frozen right after the control plane came back: silent, and its probe fails.
    h.chaos(old, Fault::Hang);
    h.advance(Duration::from_secs(15));
    let unavailable = h
        .events_for(old)
        .into_iter()
        .find(|e| e.to.as_deref() == Some("unavailable"))
        .cloned()
        .unwrap_or_else(|| panic!("still waiting for the grace: {:?}", h.transitions(old)));
    assert!(unavailable.cause.contains("probe failed"), "{}", unavailable.cause);
    assert_eq!(h.primary("db1").id, follower, "failed over within the grace period, on evidence");
}

#[test]
fn failed_remedies_are_still_counted_after_a_control_plane_restart() {
    let mut h = H::new(fast_config());
    ready(&mut h, "db1", 1);
    let follower = h.followers("db1")[0].id;
    let provisions = |h: &H| h.store.actions.values().filter(|a| a.kind.name() == "provision").count();
    let failed = |h: &H| {
        h.store.actions.values().filter(|a| a.kind.name() == "provision" && a.state == ActionState::Failed).count()
    };
    let built = provisions(&h);
    h.world.failing = vec!["provision"];
    h.chaos(follower, Fault::Crash);
    while failed(&h) == 0 {
        h.advance(Duration::from_millis(100));
    }
    // kill -9 of the control plane after the first failed rebuild.
    h.crash_and_restore();
    h.advance(Duration::from_secs(3600));
    assert!(h.service("db1").needs_human);
    assert_eq!(
        provisions(&h) - built,
        h.config.max_remedy_failures as usize,
        "the restart did not start the count again"
    );
}

/// Issue 16: a service's id carries its name's slot, and so does every id
/// minted for it (instances built at creation and by a failover, actions,
/// the archive), so a node routes any of them with no lookup.
#[test]
fn every_id_minted_for_a_service_carries_its_name_s_slot() {
    let mut h = H::new(fast_config());
    for name in ["db1", "orders", "a-much-longer-service-name-0042"] {
        ready(&mut h, name, 1);
        let slot = Slot::of_name(name);
        let v = h.service(name);
        assert_eq!(v.id.slot(), slot, "{name}");
        let old = h.primary(name).id;
        h.chaos(old, Fault::Crash);
        h.advance(Duration::from_secs(15));
        assert_eq!(h.service(name).state, ServiceState::Available);
        let ids: Vec<InstanceId> = h.store.instances.values().filter(|i| i.service == v.id).map(|i| i.id).collect();
        assert!(ids.len() >= 3, "the failover built a new follower: {ids:?}");
        assert!(ids.iter().all(|i| i.slot() == slot), "{name}: {ids:?}");
        let actions: Vec<&ActionRecord> = h.store.actions.values().filter(|a| a.service == v.id).collect();
        assert!(actions.iter().any(|a| a.kind.name() == "promote"), "{name}");
        assert!(actions.iter().all(|a| a.id.slot() == slot), "{name}");
    }
    // Names in different slots: the slot is not a constant.
    assert_ne!(Slot::of_name("db1"), Slot::of_name("orders"));
}
