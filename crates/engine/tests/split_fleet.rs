//! An engine of a fleet split into shards (issue 16). `Engine::absorb`: a
//! running engine that takes another part of the fleet over (a node took
//! the shards of one that died) ends as an engine restored from the whole
//! of it would be, and goes on healing. `Input::FleetRecords`: images and
//! hosts registered through another node's engine are learned, and used.

mod common;

use common::*;
use drover_engine::{Command, Engine, Input, Reply, Share};
use drover_model::*;
use std::collections::BTreeSet;
use std::time::Duration;

const SHARDS: u16 = 2;

fn shard_of(service: ServiceId) -> u16 {
    service.slot().shard(SHARDS)
}

/// `snapshot` with only the services (their instances, actions and
/// archives) of `shard`; the fleet-wide records whole, as the store's
/// `load_shards` reads them.
fn part(snapshot: &Snapshot, shard: u16) -> Snapshot {
    let mut part = snapshot.clone();
    part.services.retain(|s| shard_of(s.id) == shard);
    part.instances.retain(|i| shard_of(i.service) == shard);
    part.actions.retain(|a| shard_of(a.service) == shard);
    part.archives.retain(|a| shard_of(a.service_id) == shard);
    part
}

/// Everything the engine shows of its fleet, in one comparable order.
fn seen(e: &Engine) -> (Vec<String>, Vec<String>, usize) {
    let mut services: Vec<String> = e.service_views().iter().map(|s| format!("{s:?}")).collect();
    services.sort();
    let mut actions: Vec<String> = e.open_actions().iter().map(|a| format!("{a:?}")).collect();
    actions.sort();
    (services, actions, e.instance_count())
}

/// A fleet with services in both shards, one primary in each shard
/// crashed and its failover under way when the shards' holder dies.
fn fleet_mid_failover() -> (H, Vec<InstanceId>) {
    let mut h = H::new(fast_config());
    let mut names = Vec::new();
    for n in 0.. {
        let name = format!("db{n}");
        let shard = Slot::of_name(&name).shard(SHARDS);
        if names.iter().filter(|(_, s)| *s == shard).count() < 4 {
            names.push((name, shard));
        }
        if names.len() == 8 {
            break;
        }
    }
    for (name, _) in &names {
        h.create(name, 1);
    }
    h.advance(Duration::from_secs(30));
    let mut crashed = Vec::new();
    for shard in 0..SHARDS {
        let (name, _) = names.iter().find(|(_, s)| *s == shard).expect("a service in each shard");
        let primary = h.primary(name);
        assert_eq!(h.service(name).state, ServiceState::Available, "{name} is healthy before the crash");
        h.chaos(primary.id, Fault::Crash);
        crashed.push(primary.id);
    }
    // Failovers decided and dispatched, not yet carried out.
    h.auto_execute = false;
    h.advance(Duration::from_secs(10));
    let open: Vec<ActionRecord> = h.store.actions.values().filter(|a| a.state.is_open()).cloned().collect();
    assert!(
        crashed
            .iter()
            .all(|c| open.iter().any(|a| h.store.instances[&a.instance].service == h.store.instances[c].service)),
        "each crashed primary's service has an action open: {open:#?}"
    );
    (h, crashed)
}

#[test]
fn an_engine_that_absorbs_another_shard_is_the_engine_restored_from_both() {
    let (h, _) = fleet_mid_failover();
    let snapshot = h.store.snapshot();
    let now = Timestamp(h.now);
    let mut config = h.config.clone();

    config.share = Share::new(2, SHARDS);
    let (whole, restored) = Engine::restore(config.clone(), 11, snapshot.clone(), now);

    config.share = Share::new(1, SHARDS);
    let (mut merged, first) = Engine::restore(config, 11, part(&snapshot, 0), now);
    let absorbed = merged.absorb(part(&snapshot, 1), Share::new(2, SHARDS), now);

    assert_eq!(merged.config().share, Share::new(2, SHARDS), "the engine's share is the new one");
    assert_eq!(seen(&merged), seen(&whole), "the merged engine shows what the whole restore shows");
    let ids = |d: &[drover_engine::Dispatch]| d.iter().map(|d| d.action.id).collect::<BTreeSet<ActionId>>();
    let redispatched: BTreeSet<ActionId> = ids(&first.dispatch).union(&ids(&absorbed.dispatch)).copied().collect();
    assert!(!redispatched.is_empty(), "running actions are dispatched again");
    assert_eq!(redispatched, ids(&restored.dispatch), "the same running actions are dispatched again");
    assert!(
        absorbed.dispatch.iter().all(|d| shard_of(d.action.service) == 1),
        "the absorb dispatches only the absorbed shard's actions again"
    );
    assert_eq!(merged.next_deadline(), whole.next_deadline(), "the same next deadline");
    assert!(
        absorbed.changes.events.iter().any(|e| e.kind == EventKind::Started && e.cause.contains("took over 2/2")),
        "the absorb says what it took: {:#?}",
        absorbed.changes.events
    );
}

#[test]
fn absorbing_a_shard_twice_adds_nothing_the_second_time() {
    let (h, _) = fleet_mid_failover();
    let snapshot = h.store.snapshot();
    let now = Timestamp(h.now);
    let mut config = h.config.clone();
    config.share = Share::new(1, SHARDS);
    let (mut e, _) = Engine::restore(config, 11, part(&snapshot, 0), now);
    e.absorb(part(&snapshot, 1), Share::new(2, SHARDS), now);
    let before = seen(&e);
    let again = e.absorb(part(&snapshot, 1), Share::new(2, SHARDS), now);
    assert_eq!(seen(&e), before, "nothing is added twice");
    assert!(again.dispatch.is_empty(), "nothing is dispatched twice: {:#?}", again.dispatch);
}

#[test]
fn a_crashed_primary_of_an_absorbed_shard_is_failed_over_exactly_once() {
    let (mut h, crashed) = fleet_mid_failover();
    // The node holding shard 0 dies with its engine; the one holding
    // shard 1 takes shard 0 over into its running engine.
    let snapshot = h.store.snapshot();
    let now = Timestamp(h.now);
    let mut config = h.config.clone();
    config.share = Share::new(1, SHARDS);
    let (e, out) = Engine::restore(config, 21, part(&snapshot, 1), now);
    h.e = e;
    h.inflight.clear();
    h.absorb(out);
    let out = h.e.absorb(part(&snapshot, 0), Share::new(2, SHARDS), now);
    h.absorb(out);
    h.auto_execute = true;
    h.advance(Duration::from_secs(60));
    for c in &crashed {
        let service = h.store.instances[c].service;
        let name = h.store.services[&service].name.clone();
        let promoted: Vec<&ActionRecord> = h
            .store
            .actions
            .values()
            .filter(|a| a.service == service && a.kind == ActionKind::Promote && a.state == ActionState::Succeeded)
            .collect();
        assert_eq!(promoted.len(), 1, "{name} was failed over exactly once: {promoted:#?}");
        assert_ne!(h.primary(&name).id, *c, "{name} has a new primary");
        assert_eq!(h.service(&name).state, ServiceState::Available, "{name} is healthy again");
    }
    assert_eq!(h.e.service_views().len(), 8, "the engine holds both shards' services");
}

fn register_host(h: &mut H, name: &str, zone: &str) -> HostRecord {
    let host = RegisterHost { name: name.into(), zone: zone.into(), address: "127.0.0.2".into(), capacity: 4 };
    h.command(Command::RegisterHost { host, builtin: false }).expect("host registers");
    h.store.hosts[name].clone()
}

#[test]
fn an_engine_learns_the_images_and_hosts_another_node_registered_and_uses_them() {
    // Shard 0's holder registers a host and an image...
    let mut zero = H::new(fast_config());
    let h2 = register_host(&mut zero, "h2", "zone-b");
    let newer = Image::new(
        EngineKind::Postgres,
        "15-newer",
        Default::default(),
        [("postgresql-15".to_string(), "15.19".to_string())].into(),
        Timestamp(T0 + 1),
    );
    zero.command(Command::RegisterImage(newer.clone())).expect("image registers");
    let images: Vec<Image> = zero.store.images.values().cloned().collect();

    // ...while another holder's engine has one host, too few for a
    // service with a follower (one member per host).
    let mut other = H::new(fast_config());
    let h1 = register_host(&mut other, "h1", "zone-a");
    let refused = other.command(Command::CreateService(request("db", EngineKind::Postgres, 1)));
    assert!(matches!(refused, Err(drover_engine::CommandError::Conflict(_))), "{refused:?}");

    let out = other.e.step(Input::FleetRecords { images, hosts: vec![h1.clone(), h2.clone()] }, Timestamp(other.now));
    assert!(
        matches!(&out.reply, Some(Ok(Reply::Noted(n))) if n == "learned 1 images, 1 hosts and 0 host states"),
        "{:?}",
        out.reply
    );
    assert!(out.changes.images.is_empty() && out.changes.hosts.is_empty(), "nothing of the learned records is written");
    other.absorb(out);
    assert!(other.e.images().iter().any(|i| i.id == newer.id), "the image is known");
    assert_eq!(other.e.host_record("h2").map(|r| r.zone), Some("zone-b".into()), "the host is known");
    let db = other.create("db", 1);
    let hosts: std::collections::BTreeSet<String> = db.instances.iter().filter_map(|i| i.host.clone()).collect();
    assert_eq!(hosts, ["h1".to_string(), "h2".to_string()].into(), "placed on the learned host too: {db:#?}");
    assert_eq!(db.image, newer.id.0, "created on the newest image, learned");
    // Learned twice: nothing new.
    let again =
        other.e.step(Input::FleetRecords { images: vec![newer.clone()], hosts: vec![h2] }, Timestamp(other.now));
    assert!(matches!(&again.reply, Some(Ok(Reply::Noted(n))) if n == "learned 0 images, 0 hosts and 0 host states"));
}

#[test]
fn a_learned_image_replaces_the_stand_in_a_taken_service_named_it_by() {
    let (h, _) = fleet_mid_failover();
    let mut snapshot = h.store.snapshot();
    let real = snapshot.images.iter().find(|i| i.engine == EngineKind::Postgres).cloned().expect("an image");
    // An engine that had not learned the image its services run.
    snapshot.images.retain(|i| i.id != real.id);
    let (mut e, _) = Engine::restore(h.config.clone(), 3, snapshot, Timestamp(h.now));
    let held = e.images().into_iter().find(|i| i.id == real.id).expect("a stand-in");
    assert_eq!(held.version, "unknown");
    e.step(Input::FleetRecords { images: vec![real.clone()], hosts: Vec::new() }, Timestamp(h.now));
    let held = e.images().into_iter().find(|i| i.id == real.id).expect("the image");
    assert_eq!(held.version, real.version, "the real image replaced the stand-in");
    assert_eq!(e.images().iter().filter(|i| i.id == real.id).count(), 1);
}

/// A cordon or a drain is ordered through shard 0's holder, whose engine
/// writes the host's new state; every other engine learns it from the
/// store (`Input::FleetRecords`) and acts on its own services: a cordoned
/// host takes none of its new members, a draining one is emptied of them
/// as a drain ordered to it would (moves, never failovers).
#[test]
fn an_engine_learns_a_cordon_and_a_drain_ordered_through_another_node_and_acts_on_its_own_services() {
    let mut other = H::new(fast_config());
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b"), ("h3", "zone-c")] {
        register_host(&mut other, name, zone);
    }
    other.create("alpha", 1);
    other.create("beta", 2);
    register_host(&mut other, "h4", "zone-a");
    other.advance(Duration::from_secs(5));
    let on = |h: &H, host: &str| h.e.host_views().iter().find(|v| v.name == host).map_or(0, |v| v.instances);
    assert_eq!(on(&other, "h1"), 2, "a member of each on h1: {:?}", other.e.host_views());

    // Shard 0's holder's record of h4 after a cordon there.
    let mut h4 = other.store.hosts["h4"].clone();
    h4.state = HostState::Cordoned;
    let out = other.e.step(Input::FleetRecords { images: Vec::new(), hosts: vec![h4.clone()] }, Timestamp(other.now));
    assert!(
        matches!(&out.reply, Some(Ok(Reply::Noted(n))) if n == "learned 0 images, 0 hosts and 1 host states"),
        "{:?}",
        out.reply
    );
    assert!(out.changes.hosts.is_empty() && out.changes.events.is_empty(), "the cordon's record is the other node's");
    other.absorb(out);
    assert_eq!(other.e.host_record("h4").unwrap().state, HostState::Cordoned);
    let gamma = other.create("gamma", 0);
    assert!(gamma.instances.iter().all(|i| i.host.as_deref() == Some("h1")), "zone-a's only open host: {gamma:#?}");

    // Then a drain of h1 and of h4 (a cordoned host may be drained).
    let mut h1 = other.store.hosts["h1"].clone();
    h1.state = HostState::Draining;
    let cordoned_again = h4.clone();
    h4.state = HostState::Draining;
    let out = other.e.step(Input::FleetRecords { images: Vec::new(), hosts: vec![h1, h4] }, Timestamp(other.now));
    assert!(matches!(&out.reply, Some(Ok(Reply::Noted(n))) if n.ends_with("and 2 host states")), "{:?}", out.reply);
    other.absorb(out);
    // A stale cordon read after the drain does not undo it.
    other.e.step(Input::FleetRecords { images: Vec::new(), hosts: vec![cordoned_again] }, Timestamp(other.now));
    assert_eq!(other.e.host_record("h4").unwrap().state, HostState::Draining, "a drain is never undone by a cordon");
    register_host(&mut other, "h5", "zone-a");
    other.advance(Duration::from_secs(180));
    assert_eq!(on(&other, "h1"), 0, "h1 still holds members: {:?}", other.e.host_views());
    for s in ["alpha", "beta", "gamma"] {
        assert_eq!(other.service(s).state, ServiceState::Available, "{s}");
    }
    let drained = other.dispatched.iter().filter(|a| a.cause.starts_with("drain of host h1")).count();
    assert!(drained >= 3, "the moves say they are the drain's: {drained}");
    assert!(!other.store.events.iter().any(|e| e.cause.contains("failover")), "a drain never fails over");
}
