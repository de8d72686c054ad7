//! Hosts and placement through the engine's contract: new members go to
//! ready hosts with room, one member of a service per host, spread over the
//! plan's zones; cordoned hosts take none; the built-in host adopts what was
//! placed before hosts; hosts survive a restart.

mod common;
use common::*;
use drover_engine::{Command, CommandError, Config, Input, Reply, Share};
use drover_model::*;
use std::time::Duration;

fn register(h: &mut H, name: &str, zone: &str, capacity: u32) -> HostView {
    let host = RegisterHost { name: name.into(), zone: zone.into(), address: "127.0.0.2".into(), capacity };
    match h.command(Command::RegisterHost { host, builtin: false }) {
        Ok(Reply::Host(v)) => *v,
        other => panic!("register failed: {other:?}"),
    }
}

fn hosts_of(h: &H, service: &str) -> Vec<(Role, String, String)> {
    h.service(service)
        .instances
        .into_iter()
        .filter(|i| i.state.is_member() && !i.fenced)
        .map(|i| (i.role, i.zone, i.host.expect("placed on a host")))
        .collect()
}

#[test]
fn members_go_to_distinct_hosts_in_distinct_zones_and_the_action_carries_the_host() {
    let mut h = H::new(fast_config());
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b"), ("h3", "zone-c"), ("h4", "zone-a")] {
        register(&mut h, name, zone, 4);
    }
    h.create("db", 2);
    let placed = hosts_of(&h, "db");
    assert_eq!(placed.len(), 3);
    let zones: std::collections::BTreeSet<_> = placed.iter().map(|p| p.1.clone()).collect();
    assert_eq!(zones.len(), 3, "spread over the three zones: {placed:?}");
    for (_, zone, host) in &placed {
        let rec = h.e.host_record(host).unwrap();
        assert_eq!(&rec.zone, zone, "a member's zone is its host's");
    }
    // Every Provision names the host its instance was placed on, and the
    // stored instance record names it too.
    for a in h.dispatched.iter().filter(|a| a.kind.name() == "provision") {
        let Some(drover_model::ProvisionSpec { host, .. }) = a.kind.provision() else { unreachable!() };
        let view = h.e.instance_view(a.instance).unwrap();
        assert_eq!(host, &view.host);
        assert_eq!(h.store.instances[&a.instance].host, view.host);
    }
    let views = h.e.host_views();
    assert_eq!(views.iter().map(|v| v.instances).sum::<u32>(), 3);
    assert_eq!(views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["h1", "h2", "h3", "h4"]);
}

#[test]
fn a_service_that_does_not_fit_is_refused_and_cordoned_hosts_take_no_member() {
    let mut h = H::new(fast_config());
    register(&mut h, "h1", "zone-a", 1);
    register(&mut h, "h2", "zone-b", 1);
    // Three members, two hosts: one per host means no room.
    let req = |name: &str, followers| request(name, EngineKind::Postgres, followers);
    let refused = h.command(Command::CreateService(req("big", 2)));
    assert!(matches!(refused, Err(CommandError::Conflict(ref m)) if m.contains("no room")), "{refused:?}");
    assert!(h.e.service_view("big").is_none());
    h.command(Command::CordonHost { name: "h2".into() }).unwrap();
    assert_eq!(h.e.host_record("h2").unwrap().state, HostState::Cordoned);
    assert!(h.command(Command::CreateService(req("two", 1))).is_err(), "h2 is cordoned: one host for two members");
    h.create("one", 0);
    assert_eq!(hosts_of(&h, "one"), vec![(Role::Primary, "zone-a".into(), "h1".into())]);
    assert!(matches!(h.command(Command::CordonHost { name: "nope".into() }), Err(CommandError::NotFound(_))));
}

#[test]
fn a_lost_member_is_replaced_on_another_host_and_waits_when_none_has_room() {
    let mut h = H::new(fast_config());
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b")] {
        register(&mut h, name, zone, 2);
    }
    h.create("db", 1);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.service("db").state, ServiceState::Available);
    let follower = h.followers("db")[0].clone();
    // No third host: the replacement waits (a member stays on each host).
    h.chaos(follower.id, Fault::Crash);
    h.advance(Duration::from_secs(90));
    assert!(h.store.events.iter().any(|e| e.cause.contains("no ready host with room")), "waits for a host");
    assert_eq!(hosts_of(&h, "db").len(), 1);
    // A host registers: the follower is built there.
    register(&mut h, "h3", "zone-c", 2);
    h.advance(Duration::from_secs(30));
    let placed = hosts_of(&h, "db");
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert!(placed.iter().any(|p| p.1 == "zone-c" && p.2 == "h3"), "{placed:?}");
    assert_eq!(h.service("db").state, ServiceState::Available);
}

#[test]
fn hosts_survive_a_restart_and_the_builtin_host_adopts_instances_placed_before_hosts() {
    let mut h = H::new(fast_config());
    h.create("old", 1);
    h.advance(Duration::from_secs(5));
    assert!(h.service("old").instances.iter().all(|i| i.host.is_none()), "no host yet: nothing placed");
    let host = RegisterHost { name: "cp".into(), zone: "zone-a".into(), address: "127.0.0.1".into(), capacity: 1000 };
    h.command(Command::RegisterHost { host, builtin: true }).unwrap();
    assert!(h.service("old").instances.iter().all(|i| i.host.as_deref() == Some("cp")));
    assert!(h.store.instances.values().all(|i| i.host.as_deref() == Some("cp")), "adoption is persisted");
    // The built-in host takes several members of one service, in every zone.
    h.create("new", 2);
    let placed = hosts_of(&h, "new");
    assert_eq!(placed.iter().map(|p| p.1.as_str()).collect::<Vec<_>>(), ["zone-a", "zone-b", "zone-c"]);
    h.command(Command::CordonHost { name: "cp".into() }).unwrap();
    h.crash_and_restore();
    let rec = h.e.host_record("cp").expect("the host is restored");
    assert_eq!((rec.state, rec.builtin), (HostState::Cordoned, true));
    assert_eq!(h.e.host_views()[0].instances, 5);
    assert!(h.service("new").instances.iter().all(|i| i.host.as_deref() == Some("cp")));
}

/// Issue 11, item 4: the mass-uncertainty brake counts hosts as well as
/// instances. Two of a zone's four agent hosts freezing at once hold few
/// instances (far under the instance threshold here), yet they engage the
/// zone's brake, with the hosts named as the reason; one frozen host does
/// not.
#[test]
fn two_hosts_freezing_at_once_engage_the_brake_though_they_hold_few_instances() {
    let config = drover_engine::Config { brake_min_instances: 1000, brake_min_hosts: 2, ..fast_config() };
    let run = |frozen: &[&str]| {
        let mut h = H::new(config.clone());
        for (name, zone) in
            [("a1", "zone-a"), ("a2", "zone-a"), ("a3", "zone-a"), ("a4", "zone-a"), ("b1", "zone-b"), ("c1", "zone-c")]
        {
            register(&mut h, name, zone, 10);
        }
        for n in 0..8 {
            h.create(&format!("db{n}"), 2);
        }
        h.advance(Duration::from_secs(5));
        let on_frozen: usize =
            h.e.host_views().iter().filter(|v| frozen.contains(&v.name.as_str())).map(|v| v.instances as usize).sum();
        assert!(on_frozen > 0 && on_frozen < 1000, "{on_frozen} instances on the frozen hosts");
        for host in frozen {
            h.command(Command::HostChaos { host: host.to_string(), fault: Fault::Hang, by_agent: false })
                .expect("host chaos");
        }
        h.advance(Duration::from_secs(20));
        let states: Vec<HostState> = frozen.iter().map(|n| h.e.host_record(n).expect("host").state).collect();
        assert!(states.iter().all(|s| *s == HostState::Uncertain), "the frozen hosts are uncertain: {states:?}");
        h
    };
    let brakes = |h: &H| -> Vec<(String, String)> {
        h.store
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::BrakeEngaged { scope } => Some((scope.clone(), e.cause.clone())),
                _ => None,
            })
            .collect()
    };

    let h = run(&["a1"]);
    assert!(brakes(&h).is_empty(), "one frozen host is not a mass event: {:?}", brakes(&h));

    let h = run(&["a1", "a2"]);
    let engaged = brakes(&h);
    assert!(
        engaged.iter().any(|(scope, cause)| scope == "zone-a" && cause.contains("2 of 4 hosts turned uncertain")),
        "{engaged:?}"
    );
    assert!(!engaged.iter().any(|(scope, _)| scope == "zone-b" || scope == "zone-c"), "{engaged:?}");
}

/// What the routers beside the control plane follow: each service on agent
/// hosts with its writable primary's host address; none while that primary
/// is being fenced (a switchover), then the promoted one.
#[test]
fn the_routed_primary_of_a_service_on_agent_hosts_is_withheld_while_it_is_fenced() {
    let mut h = H::new(fast_config());
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b"), ("h3", "zone-c")] {
        register(&mut h, name, zone, 4);
    }
    h.create("db", 1);
    h.advance(Duration::from_secs(5));
    let routed = h.e.services_on_agent_hosts(None);
    assert_eq!(routed.len(), 1, "{routed:?}");
    let primary = h.service("db").instances.into_iter().find(|i| i.writable).expect("a writable primary");
    assert_eq!(routed[0].name, "db");
    assert_eq!(routed[0].primary, Some((primary.id, "127.0.0.2".to_string())));
    assert_eq!(h.e.services_on_agent_hosts(primary.host.as_deref()).len(), 1, "the other member is on another host");

    // Healthy beats and quiet ticks change no record: the epoch the
    // routers' loop asks again on stands still.
    let settled = h.e.records_epoch();
    let beats = h.world.beats();
    assert!(!beats.is_empty());
    h.step(Input::Heartbeats(beats));
    h.step(Input::Tick);
    assert_eq!(h.e.records_epoch(), settled, "a healthy beat moved the records epoch");

    h.command(Command::Switchover { name: "db".into() }).expect("switchover accepted");
    assert_ne!(h.e.records_epoch(), settled, "the fence of the routed primary moves the epoch");
    assert_eq!(h.e.services_on_agent_hosts(None)[0].primary, None, "the primary being fenced is not routed to");
    h.advance(Duration::from_secs(10));
    let after = h.e.services_on_agent_hosts(None)[0].primary.clone().expect("a new primary is routed to");
    assert_ne!(after.0, primary.id, "the promoted follower");
}

/// Issue 11, item 3: a drained host ends with no member on it. Its
/// services move one at a time: a follower is rebuilt on another host and
/// the old one retired; a primary is switched over (planned: fenced, a
/// follower on another host promoted, never a failover) and a new follower
/// built elsewhere. A restart of the control plane mid-drain goes on.
#[test]
fn a_drained_host_ends_empty_by_switchover_and_rebuild_one_service_at_a_time() {
    let mut h = H::new(fast_config());
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b"), ("h3", "zone-c")] {
        register(&mut h, name, zone, 4);
    }
    // Both have a member on h1, the only host of zone-a when they are made;
    // h4 comes after, so zone-a keeps a host to move to.
    h.create("alpha", 1);
    h.create("beta", 2);
    register(&mut h, "h4", "zone-a", 4);
    h.advance(Duration::from_secs(5));
    let on_h1 = |h: &H| h.e.host_views().iter().find(|v| v.name == "h1").map_or(0, |v| v.instances);
    assert_eq!(on_h1(&h), 2, "a member of each on h1: {:?}", h.e.host_views());
    let primaries_before: Vec<_> = ["alpha", "beta"].iter().map(|s| h.primary(s).id).collect();
    h.command(Command::DrainHost { name: "h1".into() }).unwrap();
    // Mid-drain, the control plane restarts: only the host's state says a
    // drain is under way, and it goes on.
    h.advance(Duration::from_secs(2));
    h.crash_and_restore();
    h.advance(Duration::from_secs(180));
    assert_eq!(on_h1(&h), 0, "h1 still holds members: {:?}", h.e.host_views());
    for s in ["alpha", "beta"] {
        assert_eq!(h.service(s).state, ServiceState::Available, "{s}");
        let placed = hosts_of(&h, s);
        assert_eq!(placed.len(), if s == "alpha" { 2 } else { 3 }, "{s}: {placed:?}");
        assert!(placed.iter().all(|p| p.2 != "h1"), "{s} still on h1: {placed:?}");
        let distinct: std::collections::BTreeSet<_> = placed.iter().map(|p| &p.2).collect();
        assert_eq!(distinct.len(), placed.len(), "{s}: two members on one host: {placed:?}");
    }
    // Moves, not failovers: every promotion was a planned switchover, and
    // a service that had its primary on h1 has another one now.
    let drained = h.dispatched.iter().filter(|a| a.cause.starts_with("drain of host h1")).count();
    assert!(drained >= 2, "the moves say they are the drain's: {drained}");
    assert!(!h.store.events.iter().any(|e| e.cause.contains("failover")), "a drain never fails over");
    for (s, before) in ["alpha", "beta"].iter().zip(primaries_before) {
        let was_on_h1 = h.store.instances.get(&before).and_then(|i| i.host.clone()).as_deref() == Some("h1");
        if was_on_h1 {
            assert_ne!(h.primary(s).id, before, "{s}: its primary moved off h1");
        }
    }
    assert_eq!(h.e.host_record("h1").unwrap().state, HostState::Draining, "it stays draining");
}

/// Credential rotation runs in the provider of the primary's host, but the
/// URL of a service on agent hosts logs in through the router beside the
/// control plane, with a verifier only the control plane keeps: a rotation
/// there would break the URL. Until it is built, it is refused (409) and
/// the schedule opens nothing; a service on the built-in host rotates.
/// Read replicas too: their read URL would live in the agent's router.
#[test]
fn a_service_on_agent_hosts_refuses_credential_rotation_and_read_replicas_and_the_schedule_opens_none() {
    let config = drover_engine::Config { credential_rotation: Some(Duration::from_secs(3600)), ..fast_config() };
    let mut h = H::new(config);
    let cp = RegisterHost { name: "cp".into(), zone: "zone-a".into(), address: "127.0.0.1".into(), capacity: 1000 };
    h.command(Command::RegisterHost { host: cp, builtin: true }).unwrap();
    h.create("here", 0);
    h.command(Command::CordonHost { name: "cp".into() }).unwrap();
    for (name, zone) in [("h1", "zone-a"), ("h2", "zone-b")] {
        register(&mut h, name, zone, 4);
    }
    h.create("there", 1);
    assert!(hosts_of(&h, "there").iter().all(|(_, _, host)| host != "cp"));
    let rotate = |name: &str| Command::RotateCredentials { name: name.into(), in_progress: None };
    let replicas = h.command(Command::AddFollowers { name: "there".into(), count: 1 });
    assert!(matches!(replicas, Err(CommandError::Conflict(ref m)) if m.contains("agent hosts")), "{replicas:?}");
    let refused = h.command(rotate("there"));
    assert!(matches!(refused, Err(CommandError::Conflict(ref m)) if m.contains("agent hosts")), "{refused:?}");
    // Two scheduled periods pass: the service on agent hosts gets no
    // rotation action, the one on the built-in host does.
    h.advance(Duration::from_secs(2 * 3600 + 600));
    let rotations = |h: &H, service: &str| {
        let ids: Vec<InstanceId> = h.service(service).instances.iter().map(|i| i.id).collect();
        h.dispatched.iter().filter(|a| a.kind == ActionKind::RotateCredentials && ids.contains(&a.instance)).count()
    };
    assert_eq!(rotations(&h, "there"), 0);
    assert!(rotations(&h, "here") >= 1, "the built-in host's service rotates on schedule");
    let here = h.command(rotate("here"));
    assert!(!matches!(here, Err(CommandError::Conflict(ref m)) if m.contains("agent hosts")), "{here:?}");
}

/// A service is never split between the built-in host and agent hosts
/// (their members could not replicate with each other): when the agent
/// hosts cannot take all its members, all go to the built-in host; a
/// service that fits on agents goes there whole.
#[test]
fn a_new_service_goes_whole_to_agent_hosts_or_whole_to_the_builtin_host() {
    let mut h = H::new(fast_config());
    let cp = RegisterHost { name: "cp".into(), zone: "zone-a".into(), address: "127.0.0.1".into(), capacity: 1000 };
    h.command(Command::RegisterHost { host: cp, builtin: true }).unwrap();
    register(&mut h, "h1", "zone-a", 4);
    h.create("small", 0);
    assert_eq!(hosts_of(&h, "small"), vec![(Role::Primary, "zone-a".into(), "h1".into())]);
    h.create("pair", 1);
    let placed = hosts_of(&h, "pair");
    assert_eq!(placed.len(), 2);
    assert!(placed.iter().all(|(_, _, host)| host == "cp"), "one agent host cannot hold a pair: {placed:?}");
    register(&mut h, "h2", "zone-b", 4);
    h.create("pair2", 1);
    let placed = hosts_of(&h, "pair2");
    assert!(placed.iter().all(|(_, _, host)| host != "cp"), "two agent hosts hold a pair: {placed:?}");
}

/// Issue 16: the engines of several nodes each see only their own shards'
/// instances; each places against its share of a host's room, so together
/// they never put more on a host than it holds, and each gets its part.
#[test]
fn engines_of_several_shards_share_a_host_s_room_and_never_overfill_it() {
    let hosts = [("h1", "zone-a"), ("h2", "zone-b"), ("h3", "zone-c")];
    // Three nodes holding 5, 4 and 3 of 12 shards; hosts of room 7.
    let parts = [Share::new(5, 12), Share::new(4, 12), Share::new(3, 12)];
    let mut used = std::collections::BTreeMap::<String, u32>::new();
    for (p, share) in parts.iter().enumerate() {
        let mut h = H::new(Config { share: *share, ..fast_config() });
        for (name, zone) in hosts {
            register(&mut h, name, zone, 7);
        }
        let mut placed = 0;
        for n in 0.. {
            let req = request(&format!("p{p}-db{n}"), EngineKind::Postgres, 0);
            match h.command(Command::CreateService(req)) {
                Ok(_) => placed += 1,
                Err(CommandError::Conflict(m)) => {
                    assert!(m.contains("no room"), "{m}");
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // Its part of each host: 7 * 5 / 12 = 2, 7 * 4 / 12 = 2, 7 * 3 / 12 = 1.
        let room = share.of_capacity(7);
        assert_eq!(placed, 3 * room, "part {p} ({share:?}) fills its part of the three hosts");
        for v in h.e.host_views() {
            assert!(v.instances <= room, "part {p} put {} on {} (its part: {room})", v.instances, v.name);
            *used.entry(v.name).or_default() += v.instances;
        }
    }
    for (host, n) in &used {
        assert!(*n <= 7, "{host} holds {n} of its 7");
    }
    assert_eq!(used.values().sum::<u32>(), 3 * (2 + 2 + 1));
    // The whole fleet on one node places as before: the host's whole room.
    let mut whole = H::new(fast_config());
    register(&mut whole, "h1", "zone-a", 7);
    for n in 0..7 {
        whole.create(&format!("db{n}"), 0);
    }
    assert!(whole.command(Command::CreateService(request("db7", EngineKind::Postgres, 0))).is_err());
}

#[test]
fn a_service_of_a_provider_that_runs_only_on_hosts_waits_for_the_first_host() {
    // `drover serve --no-local`: its `local` services run on agent hosts only.
    let mut h = H::new(Config { hosted_providers: vec!["sim".into()], ..fast_config() });
    let refused = h.command(Command::CreateService(request("early", EngineKind::Postgres, 0)));
    match refused {
        Err(CommandError::Conflict(why)) => assert!(why.contains("no host is registered yet"), "{why}"),
        other => panic!("created with no host to run on: {other:?}"),
    }
    assert!(h.e.service_view("early").is_none(), "nothing was created");
    register(&mut h, "h1", "zone-a", 4);
    h.create("db", 0);
    assert_eq!(hosts_of(&h, "db").len(), 1, "placed on the host once there is one");

    // Another provider is placed on no host while there is none, as before.
    let mut sim = H::new(Config { hosted_providers: vec!["local".into()], ..fast_config() });
    let db = sim.create("db", 0);
    assert!(db.instances.iter().all(|i| i.host.is_none()), "{db:#?}");
}
