//! Followers on demand (issue 17 item 2): read replicas added to and
//! removed from a PostgreSQL service, each in a read slot of its own;
//! refused for engines without them, beyond the limit, for the primary and
//! the plan's followers; a lost one rebuilt in the same slot; never a
//! synchronous standby; durable across a kill -9 of the control plane.

mod common;

use common::*;
use drover_engine::policy::synchronous_standby_names;
use drover_engine::{Command, CommandError, Reply};
use drover_model::*;
use std::time::Duration;

fn add(h: &mut H, name: &str, count: u32) -> Result<ServiceView, CommandError> {
    match h.command(Command::AddFollowers { name: name.into(), count }) {
        Ok(Reply::Service(v)) => Ok(*v),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e),
    }
}

fn remove(h: &mut H, name: &str, instance: InstanceId) -> Result<ServiceView, CommandError> {
    match h.command(Command::RemoveFollower { name: name.into(), instance }) {
        Ok(Reply::Service(v)) => Ok(*v),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e),
    }
}

/// The live read replicas of a service, as (slot, instance).
fn read_replicas(h: &H, name: &str) -> Vec<(u32, InstanceView)> {
    let mut v: Vec<(u32, InstanceView)> = h
        .service(name)
        .instances
        .into_iter()
        .filter(|i| i.state.is_member() && !i.fenced)
        .filter_map(|i| i.read_slot.map(|slot| (slot, i)))
        .collect();
    v.sort_by_key(|(slot, _)| *slot);
    v
}

fn plan_followers(h: &H, name: &str) -> Vec<InstanceView> {
    h.followers(name).into_iter().filter(|i| i.read_slot.is_none() && i.state.is_member() && !i.fenced).collect()
}

#[test]
fn read_replicas_are_added_in_their_own_slots_and_removed_one_by_one() {
    let mut h = H::new(fast_config());
    h.create("db", 1);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.service("db").state, ServiceState::Available);

    let view = add(&mut h, "db", 2).expect("two read replicas accepted");
    assert_eq!(view.read_slots, vec![1, 2], "the lowest free slots");
    h.advance(Duration::from_secs(10));
    let replicas = read_replicas(&h, "db");
    assert_eq!(replicas.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2], "{replicas:?}");
    assert!(replicas.iter().all(|(_, i)| i.role == Role::Follower && i.state == InstanceState::Available));
    assert_eq!(plan_followers(&h, "db").len(), 1, "the plan's follower is untouched");
    assert_eq!(h.service("db").state, ServiceState::Available);
    // The Provision actions said which read database to point.
    let provisioned: Vec<Option<u32>> = h
        .dispatched
        .iter()
        .filter_map(|a| match a.kind.provision() {
            Some(drover_model::ProvisionSpec { read_slot, .. }) => Some(*read_slot),
            _ => None,
        })
        .collect();
    assert_eq!(provisioned.iter().filter(|s| s.is_some()).count(), 2, "{provisioned:?}");

    // Remove slot 1: its replica retires, slot 2 stays, slot 1 is not rebuilt.
    let (_, first) = replicas[0].clone();
    let view = remove(&mut h, "db", first.id).expect("a read replica is removed");
    assert_eq!(view.read_slots, vec![2]);
    h.advance(Duration::from_secs(10));
    assert_eq!(read_replicas(&h, "db").iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2]);
    assert!(h.e.instance_view(first.id).is_none_or(|i| !i.state.is_member()), "the removed replica left");
    // A removed one is gone: removing it again is 404.
    assert!(matches!(remove(&mut h, "db", first.id), Err(CommandError::NotFound(_))));

    // The next add takes the freed slot 1 again.
    assert_eq!(add(&mut h, "db", 1).expect("one more").read_slots, vec![1, 2]);
    h.advance(Duration::from_secs(10));
    assert_eq!(read_replicas(&h, "db").len(), 2);
    h.check_invariants();
}

#[test]
fn refusals_count_zero_or_over_the_limit_unknown_the_primary_a_plan_follower_and_redis() {
    let mut h = H::new(fast_config());
    h.create("db", 1);
    h.advance(Duration::from_secs(5));

    assert!(matches!(add(&mut h, "db", 0), Err(CommandError::Invalid(_))), "count 0 is 400");
    assert!(matches!(add(&mut h, "db", 9), Err(CommandError::Invalid(_))), "more than 8 is 400");
    assert!(matches!(add(&mut h, "db", u32::MAX), Err(CommandError::Invalid(_))), "no overflow");
    add(&mut h, "db", 6).expect("6 of 8");
    let refused = add(&mut h, "db", 3);
    assert!(matches!(&refused, Err(CommandError::Invalid(m)) if m.contains("limit")), "6 + 3 > 8: {refused:?}");
    assert_eq!(h.service("db").read_slots.len(), 6, "a refused add changes nothing");
    add(&mut h, "db", 2).expect("exactly 8");
    assert!(matches!(add(&mut h, "db", 1), Err(CommandError::Invalid(_))));

    assert!(matches!(add(&mut h, "nope", 1), Err(CommandError::NotFound(_))), "unknown service is 404");
    let unknown = InstanceId::new_at(T0, 42);
    assert!(matches!(remove(&mut h, "db", unknown), Err(CommandError::NotFound(_))), "unknown instance is 404");
    assert!(matches!(remove(&mut h, "nope", unknown), Err(CommandError::NotFound(_))));

    let primary = h.primary("db").id;
    let refused = remove(&mut h, "db", primary);
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("primary")), "{refused:?}");
    let follower = plan_followers(&h, "db")[0].id;
    let refused = remove(&mut h, "db", follower);
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("plan")), "{refused:?}");

    // Another service's instance is unknown here.
    h.create("other", 0);
    h.advance(Duration::from_secs(3));
    let theirs = h.primary("other").id;
    assert!(matches!(remove(&mut h, "db", theirs), Err(CommandError::NotFound(_))));

    h.command(Command::CreateService(request("rd", EngineKind::Redis, 1))).expect("redis created");
    h.advance(Duration::from_secs(5));
    let refused = add(&mut h, "rd", 1);
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("redis")), "{refused:?}");

    // A Kafka broker is the plan's (409, not 404: it exists).
    h.command(Command::RegisterImage(image(EngineKind::Kafka))).expect("kafka image registers");
    h.command(Command::CreateService(request("kf", EngineKind::Kafka, 0))).expect("kafka created");
    h.advance(Duration::from_secs(5));
    let broker = h.service("kf").instances[0].id;
    let refused = remove(&mut h, "kf", broker);
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("broker")), "{refused:?}");
}

#[test]
fn a_lost_read_replica_is_rebuilt_in_the_same_slot_and_never_promoted() {
    let mut h = H::new(fast_config());
    h.create("db", 1);
    h.advance(Duration::from_secs(5));
    add(&mut h, "db", 2).expect("added");
    h.advance(Duration::from_secs(10));
    let before = read_replicas(&h, "db");
    let (slot, lost) = before[1].clone();
    assert_eq!(slot, 2);

    h.chaos(lost.id, Fault::Crash);
    h.advance(Duration::from_secs(90));
    let after = read_replicas(&h, "db");
    assert_eq!(after.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2], "{after:?}");
    let (_, rebuilt) = &after[1];
    assert_ne!(rebuilt.id, lost.id, "a new instance");
    assert_eq!(rebuilt.state, InstanceState::Available);
    assert_eq!(after[0].1.id, before[0].1.id, "slot 1 untouched");
    assert_eq!(h.service("db").state, ServiceState::Available);

    // The primary dies: the plan's follower is promoted, never a read replica.
    let follower = plan_followers(&h, "db")[0].id;
    let primary = h.primary("db").id;
    h.chaos(primary, Fault::Crash);
    h.advance(Duration::from_secs(90));
    assert_eq!(h.primary("db").id, follower, "the plan's follower took over");
    let promoted: Vec<InstanceId> = h.succeeded("promote").iter().map(|a| a.instance).collect();
    assert!(after.iter().all(|(_, r)| !promoted.contains(&r.id)), "{promoted:?}");
    assert_eq!(read_replicas(&h, "db").len(), 2, "the read slots are kept through a failover");

    // Durable: a control plane killed -9 and restarted keeps the slots and
    // which instance fills which.
    let slots = read_replicas(&h, "db").into_iter().map(|(s, i)| (s, i.id)).collect::<Vec<_>>();
    h.crash_and_restore();
    assert_eq!(h.service("db").read_slots, vec![1, 2]);
    assert_eq!(read_replicas(&h, "db").into_iter().map(|(s, i)| (s, i.id)).collect::<Vec<_>>(), slots);
    h.advance(Duration::from_secs(10));
    assert_eq!(read_replicas(&h, "db").len(), 2, "nothing rebuilt twice after the restart");
    h.check_invariants();
}

#[test]
fn a_removal_while_a_replica_is_being_built_retires_it_once_it_is_done() {
    let mut h = H::new(fast_config());
    h.create("db", 0);
    h.advance(Duration::from_secs(5));
    h.auto_execute = false;
    add(&mut h, "db", 1).expect("added");
    let (_, building) = read_replicas(&h, "db")[0].clone();
    assert_eq!(building.state, InstanceState::Installing);
    remove(&mut h, "db", building.id).expect("removal accepted while it builds");
    h.auto_execute = true;
    h.advance(Duration::from_secs(20));
    assert!(read_replicas(&h, "db").is_empty(), "{:?}", h.service("db").instances);
    assert!(h.service("db").read_slots.is_empty());
}

#[test]
fn synchronous_standby_names_name_the_plan_followers_never_a_wildcard() {
    let plan = vec!["0193a-follower-b".to_string(), "0193a-follower-a".to_string()];
    // Never `*`: it would match a read replica and an upgrade's logical
    // subscriber, and a commit could wait on either.
    assert_eq!(
        synchronous_standby_names(&plan),
        r#"ANY 1 ("0193a-follower-a", "0193a-follower-b")"#,
        "the plan's followers by name, in a stable order"
    );
    assert_eq!(synchronous_standby_names(&plan[..1]), r#"ANY 1 ("0193a-follower-b")"#);
    assert_eq!(synchronous_standby_names(&[]), "", "no plan follower streams: async");
    assert_eq!(synchronous_standby_names(&[r#"a"b"#.to_string()]), r#"ANY 1 ("a""b")"#, "quoted");
}

#[test]
fn a_primary_without_plan_followers_is_restarted_never_replaced_by_its_read_replica() {
    let mut h = H::new(fast_config());
    h.create("solo", 0);
    h.advance(Duration::from_secs(5));
    add(&mut h, "solo", 1).expect("added");
    h.advance(Duration::from_secs(10));
    let (_, replica) = read_replicas(&h, "solo")[0].clone();
    let primary = h.primary("solo").id;
    h.chaos(primary, Fault::Crash);
    h.advance(Duration::from_secs(90));
    assert!(h.succeeded("promote").is_empty(), "a read replica is asynchronous: never promoted");
    let now_primary = h.primary("solo");
    assert_ne!(now_primary.id, replica.id);
    assert_eq!(now_primary.read_slot, None);
    assert_eq!(read_replicas(&h, "solo").len(), 1, "the read slot is still filled");
    h.check_invariants();
}

#[test]
fn a_rollout_replaces_read_replicas_in_their_slots_after_the_plan_members() {
    let mut h = H::new(fast_config());
    h.create("db", 1);
    h.advance(Duration::from_secs(5));
    add(&mut h, "db", 2).expect("added");
    h.advance(Duration::from_secs(10));
    let old: Vec<InstanceId> = read_replicas(&h, "db").into_iter().map(|(_, i)| i.id).collect();
    let image = Image::new(
        EngineKind::Postgres,
        "15-test",
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::from([("postgresql-15".into(), "15.19".into())]),
        Timestamp(T0),
    );
    let to = image.id.clone();
    h.command(Command::RegisterImage(image)).expect("image registers");
    let spec = RolloutSpec {
        to_image: to.clone(),
        selector: Selector { engine: Some(EngineKind::Postgres), ..Default::default() },
        waves: vec![100],
        soak_seconds: 2,
        max_failures: 1,
        required_by: None,
    };
    let id = match h.command(Command::CreateRollout(spec)) {
        Ok(Reply::Rollout(v)) => v.id,
        other => panic!("rollout not created: {other:?}"),
    };
    let end = h.now + 600_000_000;
    while h.now < end && !h.e.rollout_view(id, Timestamp(h.now)).expect("rollout").state.is_finished() {
        h.advance(Duration::from_secs(1));
    }
    let v = h.e.rollout_view(id, Timestamp(h.now)).expect("rollout");
    assert_eq!(v.state, RolloutState::Succeeded, "{v:?}");
    let s = h.service("db");
    assert!(s.instances.iter().filter(|i| i.state.is_member()).all(|i| i.image == to.0), "{s:#?}");
    let now: Vec<(u32, InstanceId)> = read_replicas(&h, "db").into_iter().map(|(s, i)| (s, i.id)).collect();
    assert_eq!(now.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2], "both slots filled again");
    assert!(now.iter().all(|(_, i)| !old.contains(i)), "rebuilt from the new image");
    assert_eq!(plan_followers(&h, "db").len(), 1, "the plan is kept");
    assert_eq!(s.instances.iter().filter(|i| i.state.is_member()).count(), 4);
    assert_eq!(h.succeeded("fence").len(), 1, "one planned switchover");
    let promoted = h.succeeded("promote");
    assert!(promoted.iter().all(|a| !old.contains(&a.instance) && !now.iter().any(|(_, i)| *i == a.instance)));
}
