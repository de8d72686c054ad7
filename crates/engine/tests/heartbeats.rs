mod common;
use common::*;
use drover_engine::{Input, Reply};
use drover_model::*;
use std::time::Duration;

#[test]
fn a_new_service_becomes_available_once_every_member_heartbeats() {
    let mut h = H::new(fast_config());
    let v = h.create("db1", 1);
    assert_eq!(v.state, ServiceState::Provisioning);
    assert_eq!(v.instances.len(), 2);
    assert!(v.instances.iter().all(|i| i.state == InstanceState::Installing));
    h.advance(Duration::from_secs(2));
    let v = h.service("db1");
    assert_eq!(v.state, ServiceState::Available, "{v:#?}");
    assert!(v.instances.iter().all(|i| i.state == InstanceState::Available));
    assert_ne!(v.instances[0].zone, v.instances[1].zone, "members spread across zones");
}

#[test]
fn silence_makes_uncertain_only_after_uncertain_after_and_a_heartbeat_brings_it_back() {
    let mut h = H::new(fast_config());
    h.create("db1", 0);
    h.advance(Duration::from_secs(2));
    let p = h.primary("db1").id;
    // Cut it off: the fake world stops its beats but it stays alive.
    h.world.insts.get_mut(&p).unwrap().partitioned = true;
    h.advance(Duration::from_millis(2000));
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Available, "2 s of silence is not 3 s");
    h.advance(Duration::from_millis(1500));
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Uncertain);
    assert_eq!(h.service("db1").state, ServiceState::Uncertain);
    // It was probed out of band.
    assert!(h.dispatched.iter().any(|a| a.instance == p && a.kind == ActionKind::Probe));
    h.world.insts.get_mut(&p).unwrap().partitioned = false;
    h.advance(Duration::from_millis(1100));
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Available);
    assert_eq!(
        h.transitions(p),
        vec!["-->installing", "installing->available", "available->uncertain", "uncertain->available"]
    );
    let cause = &h.events_for(p).iter().find(|e| e.to.as_deref() == Some("uncertain")).unwrap().cause;
    assert!(cause.contains("no heartbeat"), "{cause}");
}

#[test]
fn a_partitioned_primary_whose_probe_answers_stays_uncertain_and_is_never_failed_over() {
    let mut h = H::new(fast_config());
    h.create("db1", 1);
    h.advance(Duration::from_secs(2));
    let p = h.primary("db1").id;
    h.world.insts.get_mut(&p).unwrap().partitioned = true;
    // Far past presumed_dead_after: probes keep answering, so no presumption.
    h.advance(Duration::from_secs(180));
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Uncertain);
    assert!(h.succeeded("fence").is_empty() && h.succeeded("promote").is_empty());
    assert_eq!(h.primary("db1").id, p);
}

#[test]
fn silence_with_no_probe_answer_is_presumed_dead_only_after_presumed_dead_after() {
    let mut h = H::new(fast_config());
    h.create("db1", 0);
    h.advance(Duration::from_secs(2));
    let p = h.primary("db1").id;
    h.world.insts.get_mut(&p).unwrap().partitioned = true;
    // Probes are dispatched but never answered (provider unreachable).
    h.auto_execute = false;
    h.advance(Duration::from_secs(30));
    h.inflight.clear();
    assert_eq!(h.e.instance_view(p).unwrap().state, InstanceState::Uncertain);
    h.advance(Duration::from_secs(40));
    h.inflight.clear();
    assert!(h.transitions(p).contains(&"uncertain->unavailable".to_string()), "{:?}", h.transitions(p));
    let ev = h.events_for(p).into_iter().find(|e| e.to.as_deref() == Some("unavailable")).unwrap().clone();
    assert!(ev.cause.contains("presumed dead"), "{}", ev.cause);
}

#[test]
fn stale_and_duplicate_beats_are_counted_not_applied_and_unknown_ids_reported() {
    let mut h = H::new(fast_config());
    let v = h.create("db1", 0);
    h.advance(Duration::from_secs(2));
    let id = v.instances[0].id;
    let seq = h.world.insts[&id].seq;
    let ghost = InstanceId::new_at(T0, 42);
    let beats = vec![
        Beat { instance: id, seq: seq + 1, facts: Facts { connections: Some(7), ..Default::default() } },
        Beat { instance: id, seq: seq + 1, facts: Facts { connections: Some(99), ..Default::default() } },
        Beat { instance: ghost, seq: 1, facts: Facts::default() },
    ];
    match h.step(Input::Heartbeats(beats)) {
        Some(Ok(Reply::Heartbeats(r))) => {
            assert_eq!(r.accepted, 1);
            assert_eq!(r.stale, 1);
            assert_eq!(r.unknown, vec![ghost]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.e.instance_view(id).unwrap().facts.connections, Some(7));
}

#[test]
fn heartbeats_alone_write_nothing_durable() {
    let mut h = H::new(fast_config());
    h.create("db1", 1);
    h.advance(Duration::from_secs(3));
    let beats = h.world.beats();
    let out = h.e.step(Input::Heartbeats(beats), Timestamp(h.now));
    assert!(out.changes.is_empty(), "steady heartbeats must not touch the store: {:?}", out.changes);
}

#[test]
fn tick_work_follows_expired_deadlines_not_fleet_size() {
    // With every instance heartbeating, a tick between checks fires nothing.
    let mut h = H::new(fast_config());
    for i in 0..50 {
        h.create(&format!("db{i}"), 1);
    }
    h.advance(Duration::from_secs(5));
    let next = h.e.next_deadline().expect("deadlines are scheduled");
    assert!(next.0 > h.now, "nothing overdue");
    let out = h.e.step(Input::Tick, Timestamp(h.now));
    assert!(out.changes.is_empty() && out.dispatch.is_empty());
}
