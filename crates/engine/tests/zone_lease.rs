//! The zone heartbeat lease: one renewal a second vouches for every covered
//! instance of a zone, so healthy instances cost nothing per second.

mod common;
use common::*;
use drover_engine::Input;
use drover_model::*;
use std::time::Duration;

/// Builds services, lets them heartbeat once, then stops per-instance beats
/// and covers every instance with its zone's lease instead.
fn covered_fleet(services: usize) -> (H, Vec<(InstanceId, String)>) {
    let mut h = H::new(fast_config());
    for s in 0..services {
        h.create(&format!("db{s}"), 1);
    }
    h.advance(Duration::from_secs(2));
    h.heartbeat_every = i64::MAX; // no more individual beats
    let mut members = Vec::new();
    for s in 0..services {
        for i in h.service(&format!("db{s}")).instances {
            members.push((i.id, i.zone.clone()));
        }
    }
    for zone in ["zone-a", "zone-b", "zone-c"] {
        let cover: Vec<InstanceId> = members.iter().filter(|(_, z)| z == zone).map(|(i, _)| *i).collect();
        h.step(Input::ZoneLease { zone: zone.into(), cover, withdraw: vec![] });
    }
    (h, members)
}

fn renew(h: &mut H, zones: &[&str], for_secs: u64) {
    for _ in 0..for_secs {
        for z in zones {
            h.step(Input::ZoneLease { zone: (*z).into(), cover: vec![], withdraw: vec![] });
        }
        h.advance(Duration::from_secs(1));
    }
}

#[test]
fn covered_instances_stay_available_without_beats_while_the_lease_is_renewed() {
    let (mut h, members) = covered_fleet(6);
    renew(&mut h, &["zone-a", "zone-b", "zone-c"], 30);
    for (id, _) in &members {
        assert_eq!(h.e.instance_view(*id).unwrap().state, InstanceState::Available);
    }
    // The lease is the only deadline left for healthy instances.
    let next = h.e.next_deadline().expect("the zone leases are due").0;
    assert!(next <= h.now + 3_000_000);
}

#[test]
fn a_lapsed_zone_lease_makes_every_covered_instance_of_that_zone_uncertain_and_no_other() {
    let (mut h, members) = covered_fleet(6);
    renew(&mut h, &["zone-a", "zone-b", "zone-c"], 5);
    // zone-a's collector falls silent.
    renew(&mut h, &["zone-b", "zone-c"], 2);
    for (id, _) in &members {
        assert_eq!(h.e.instance_view(*id).unwrap().state, InstanceState::Available, "2 s is not 3 s");
    }
    renew(&mut h, &["zone-b", "zone-c"], 2);
    for (id, zone) in &members {
        let state = h.e.instance_view(*id).unwrap().state;
        if zone == "zone-a" {
            assert_eq!(state, InstanceState::Uncertain, "{id} in {zone}");
        } else {
            assert_eq!(state, InstanceState::Available, "{id} in {zone}");
        }
    }
    // Covering them again is a heartbeat: they come back.
    let cover: Vec<InstanceId> = members.iter().filter(|(_, z)| z == "zone-a").map(|(i, _)| *i).collect();
    h.step(Input::ZoneLease { zone: "zone-a".into(), cover, withdraw: vec![] });
    for (id, _) in &members {
        assert_eq!(h.e.instance_view(*id).unwrap().state, InstanceState::Available);
    }
}

#[test]
fn a_withdrawn_instance_is_judged_on_its_own_silence_from_the_last_renewal() {
    let (mut h, members) = covered_fleet(3);
    renew(&mut h, &["zone-a", "zone-b", "zone-c"], 3);
    let (victim, zone) = members[0].clone();
    h.step(Input::ZoneLease { zone: zone.clone(), cover: vec![], withdraw: vec![victim] });
    renew(&mut h, &["zone-a", "zone-b", "zone-c"], 2);
    assert_eq!(h.e.instance_view(victim).unwrap().state, InstanceState::Available, "2 s is not 3 s");
    renew(&mut h, &["zone-a", "zone-b", "zone-c"], 2);
    assert_eq!(h.e.instance_view(victim).unwrap().state, InstanceState::Uncertain);
    for (id, _) in &members[1..] {
        assert_eq!(h.e.instance_view(*id).unwrap().state, InstanceState::Available);
    }
}

#[test]
fn a_cover_in_the_wrong_zone_is_refused() {
    let (mut h, members) = covered_fleet(1);
    let (id, zone) = members[0].clone();
    let other = if zone == "zone-a" { "zone-b" } else { "zone-a" };
    let reply = h.step(Input::ZoneLease { zone: other.into(), cover: vec![id], withdraw: vec![] });
    match reply {
        Some(Ok(drover_engine::Reply::Heartbeats(r))) => assert_eq!((r.accepted, r.stale), (0, 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_replacement_member_is_not_placed_in_the_zone_of_the_member_it_replaces() {
    let mut h = H::new(fast_config());
    h.create("db1", 1);
    h.advance(Duration::from_secs(2));
    let p = h.primary("db1");
    // The primary's whole zone is lost: it crashes and never comes back.
    h.world.insts.get_mut(&p.id).unwrap().crashed = true;
    h.world.insts.get_mut(&p.id).unwrap().broken_for_good = true;
    h.advance(Duration::from_secs(120));
    let v = h.service("db1");
    let promoted = h.primary("db1");
    assert_ne!(promoted.id, p.id);
    let new_follower =
        v.instances.iter().find(|i| i.role == Role::Follower && i.state.is_member()).expect("a new follower");
    assert_ne!(new_follower.zone, p.zone, "{v:#?}");
    assert_ne!(new_follower.zone, promoted.zone);
}
