//! The engine seam (`drover_engine::policy`): a second engine, given only a
//! policy that names the peer-brokers topology, gets the engine's remedies,
//! zone budgets and brake with no change to the engine. The policy here is
//! test-only (Kafka's own arrives with issue 14); PostgreSQL services run
//! beside it in the same engine under theirs.

mod common;

use common::*;
use drover_engine::policy::{BackupSource, Candidate, EnginePolicy, Members, Policies, Topology};
use drover_engine::{Command, CommandError, Config, Input, Reply};
use drover_model::*;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Peer brokers, as a Kafka policy would describe them. `Plan` has no
/// broker count yet, so this one reads a plan of `followers` as that many
/// brokers plus one.
#[derive(Debug)]
struct PeerBrokers;

impl EnginePolicy for PeerBrokers {
    fn engine(&self) -> EngineKind {
        EngineKind::Kafka
    }
    fn topology(&self) -> Topology {
        Topology::PeerBrokers
    }
    fn members(&self, plan: &Plan) -> Members {
        Members { brokers: plan.followers + 1, ..Members::default() }
    }
    fn can_promote(&self, _: &Candidate, _: &Plan) -> bool {
        false
    }
    fn promotion_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.id.cmp(&b.id)
    }
    fn restarts_before_rebuild(&self) -> u32 {
        0
    }
    fn backups(&self) -> BackupSource {
        BackupSource::NotOwn { why: "its storage service keeps them" }
    }
}

fn harness(config: Config) -> H {
    let config = Config { policies: Policies::default().with(Arc::new(PeerBrokers)), ..config };
    let mut h = H::new(config);
    h.command(Command::RegisterImage(image(EngineKind::Kafka))).expect("kafka image registers");
    h
}

fn create_cluster(h: &mut H, name: &str, brokers: u8) -> ServiceView {
    let req = request(name, EngineKind::Kafka, brokers - 1);
    match h.command(Command::CreateService(req)) {
        Ok(Reply::Service(v)) => brokers_only(*v),
        other => panic!("create failed: {other:?}"),
    }
}

/// A Kafka service's view without its storage's members (listed after
/// the brokers): what these tests count are brokers.
fn brokers_only(mut view: ServiceView) -> ServiceView {
    view.instances.retain(|i| i.role == Role::Broker);
    view
}

fn cluster(h: &H, name: &str) -> ServiceView {
    brokers_only(h.service(name))
}

fn dispatched(h: &H, kind: &str) -> usize {
    h.dispatched.iter().filter(|a| a.kind.name() == kind).count()
}

#[test]
fn a_failed_broker_is_fenced_and_replaced_in_another_zone_and_nothing_is_promoted() {
    let mut h = harness(fast_config());
    let created = create_cluster(&mut h, "kf1", 3);
    assert!(created.instances.iter().all(|i| i.role == Role::Broker), "{created:#?}");
    h.create("db1", 1);
    h.advance(Duration::from_secs(5));
    let kf = cluster(&h, "kf1");
    assert_eq!(kf.state, ServiceState::Available, "{kf:#?}");
    assert_eq!(kf.instances.len(), 3);
    let roles: Vec<Role> = h.service("db1").instances.iter().map(|i| i.role).collect();
    assert_eq!(roles, [Role::Primary, Role::Follower], "PostgreSQL keeps its own policy");

    let victim = kf.instances[0].clone();
    h.chaos(victim.id, Fault::Crash);
    h.advance(Duration::from_secs(60));

    let kf = cluster(&h, "kf1");
    assert_eq!(kf.state, ServiceState::Available, "{kf:#?}");
    assert_eq!(kf.instances.len(), 3, "the failed broker is gone and one replaced it: {kf:#?}");
    assert!(kf.instances.iter().all(|i| i.role == Role::Broker && i.state == InstanceState::Available));
    assert!(kf.instances.iter().all(|i| i.id != victim.id));
    let fence = h.succeeded("fence").into_iter().find(|a| a.instance == victim.id).expect("the victim was fenced");
    let replacement = kf.instances.iter().find(|i| !created.instances.iter().any(|c| c.id == i.id)).expect("new");
    let provision = h.store.actions.values().find(|a| a.instance == replacement.id).expect("its provision");
    assert!(fence.updated_at <= provision.created_at, "fenced before a replacement was built");
    assert_ne!(replacement.zone, victim.zone, "the zone where a member just failed comes last");
    assert_eq!(h.store.instances[&victim.id].state, InstanceState::Terminated);
    assert_eq!((dispatched(&h, "promote"), dispatched(&h, "restart")), (0, 0), "peers are replaced, never promoted");
    assert_eq!(h.service("db1").state, ServiceState::Available);
}

#[test]
fn peers_have_no_switchover_and_no_backups_of_their_own() {
    let mut h = harness(fast_config());
    create_cluster(&mut h, "kf1", 3);
    h.advance(Duration::from_secs(5));
    let refused = h.command(Command::Switchover { name: "kf1".into() });
    assert!(matches!(refused, Err(CommandError::Conflict(_))), "{refused:?}");
    let refused = h.command(Command::TakeBackup { name: "kf1".into() });
    assert!(matches!(refused, Err(CommandError::Conflict(_))), "{refused:?}");
    // Nor does the schedule: a PostgreSQL service's first backup is due
    // within 70 minutes of its creation; two hours pass without any.
    h.advance(Duration::from_secs(2 * 3600));
    let kf1 = h.service("kf1").id;
    let own = h.dispatched.iter().filter(|a| a.service == kf1);
    assert_eq!(own.filter(|a| matches!(a.kind.name(), "backup" | "verify_restore")).count(), 0);
    assert!(h.service("kf1").backups.last_backup_at.is_none());
    // Its records' backups are its storage's, a PostgreSQL service's.
    let storage = h.service("kf1-storage");
    assert!(storage.backups.last_backup_at.is_some(), "{:?}", storage.backups);
}

/// A zone loses every broker at once: the brake engages, and the remedies
/// that follow (on fresh evidence from failed probes) run within the zone
/// budget, fence before they replace, and heal every cluster.
#[test]
fn a_zone_losing_every_broker_is_healed_within_its_budget() {
    let budget = 2;
    let mut h = harness(Config { zone_budget: budget, ..fast_config() });
    let names: Vec<String> = (0..10).map(|i| format!("kf{i}")).collect();
    for name in &names {
        create_cluster(&mut h, name, 3);
    }
    h.advance(Duration::from_secs(5));
    let lost: Vec<InstanceId> =
        names.iter().flat_map(|n| cluster(&h, n).instances).filter(|i| i.zone == "zone-a").map(|i| i.id).collect();
    assert_eq!(lost.len(), 10);
    for id in &lost {
        h.chaos(*id, Fault::Crash);
    }
    let in_zone_a: BTreeSet<InstanceId> = lost.iter().copied().collect();
    // Actions run one round per step (what a round dispatches runs in the
    // next), so what is running and what waits can be seen between steps.
    h.auto_execute = false;
    let (mut most_running, mut most_waiting) = (0, 0);
    for _ in 0..1200 {
        h.advance(Duration::from_millis(100));
        let open = h.e.open_actions();
        let zone_a = |a: &&ActionRecord| a.kind.is_destructive() && in_zone_a.contains(&a.instance);
        let running = open.iter().filter(zone_a).filter(|a| a.state == ActionState::Running).count();
        let waiting = open.iter().filter(zone_a).filter(|a| a.state == ActionState::Pending).count();
        (most_running, most_waiting) = (most_running.max(running), most_waiting.max(waiting));
        for a in std::mem::take(&mut h.inflight) {
            let outcome = h.world.execute(&a);
            h.step(Input::ActionResult { action: a.id, attempt: a.attempts, outcome });
        }
    }
    assert!(h.store.events.iter().any(|e| e.kind == EventKind::BrakeEngaged { scope: "zone-a".into() }));
    assert_eq!(most_running, budget as usize, "zone-a ran {most_running} at once");
    assert!(most_waiting > 0, "the rest waited for the budget");
    assert_eq!(dispatched(&h, "promote"), 0);
    for name in &names {
        let s = cluster(&h, name);
        assert_eq!(s.state, ServiceState::Available, "{s:#?}");
        assert_eq!(s.instances.len(), 3);
        assert!(s.instances.iter().all(|i| i.zone != "zone-a" && !in_zone_a.contains(&i.id)), "{s:#?}");
    }
}

/// A rollout of a peer-brokers service (issue 14): each broker is replaced
/// by one built from the new image, which serves before an old one
/// retires; never fewer serving brokers than planned, never more than one
/// extra, no fence, no promotion, no switchover.
#[test]
fn a_rollout_replaces_every_broker_one_at_a_time_new_before_old() {
    let mut h = harness(fast_config());
    let created = create_cluster(&mut h, "kf1", 3);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.service("kf1").state, ServiceState::Available);
    let patched = Image::new(
        EngineKind::Kafka,
        "0.6.0-patched",
        Default::default(),
        [("linux-image".to_string(), "patched".to_string())].into_iter().collect(),
        Timestamp(h.now),
    );
    let to = patched.id.clone();
    h.command(Command::RegisterImage(patched)).expect("the new image registers");
    let spec = RolloutSpec {
        to_image: to.clone(),
        selector: Selector { engine: Some(EngineKind::Kafka), ..Default::default() },
        waves: vec![100],
        soak_seconds: 5,
        max_failures: 1,
        required_by: None,
    };
    let id = match h.command(Command::CreateRollout(spec)) {
        Ok(Reply::Rollout(v)) => {
            assert_eq!(v.total, 1, "the Kafka service is selected: {v:#?}");
            v.id
        }
        other => panic!("rollout not created: {other:?}"),
    };
    let (mut fewest, mut most) = (usize::MAX, 0);
    for _ in 0..600 {
        h.advance(Duration::from_millis(500));
        let s = cluster(&h, "kf1");
        let serving = s.instances.iter().filter(|i| i.state == InstanceState::Available && !i.fenced).count();
        (fewest, most) = (fewest.min(serving), most.max(serving));
        if h.e.rollout_view(id, Timestamp(h.now)).is_some_and(|v| v.state.is_finished()) {
            break;
        }
    }
    let v = h.e.rollout_view(id, Timestamp(h.now)).unwrap();
    assert_eq!((v.state, v.done, v.failed), (RolloutState::Succeeded, 1, 0), "{v:#?}");
    h.advance(Duration::from_secs(30));
    let s = cluster(&h, "kf1");
    assert_eq!(s.state, ServiceState::Available, "{s:#?}");
    let serving: Vec<&InstanceView> = s.instances.iter().filter(|i| i.state.is_member()).collect();
    assert_eq!(serving.len(), 3, "{s:#?}");
    for b in &serving {
        assert_eq!((b.role, b.image.as_str()), (Role::Broker, to.0.as_str()), "{s:#?}");
        assert!(created.instances.iter().all(|c| c.id != b.id), "every broker is a new one");
    }
    assert_eq!(fewest, 3, "never fewer serving brokers than planned");
    assert!(most <= 4, "one extra broker at a time, at most: {most}");
    // The k-th old broker's retirement began after the k-th new broker was built.
    let is_old = |a: &&ActionRecord| created.instances.iter().any(|c| c.id == a.instance);
    let of_kf1 = |a: &&ActionRecord| a.service == created.id;
    let mut built: Vec<i64> =
        h.succeeded("provision").into_iter().filter(|a| of_kf1(a) && !is_old(a)).map(|a| a.updated_at.0).collect();
    let mut retired: Vec<i64> = h.succeeded("retire").into_iter().filter(is_old).map(|a| a.created_at.0).collect();
    built.sort();
    retired.sort();
    assert_eq!((built.len(), retired.len()), (3, 3), "three built by the roll, three old ones retired");
    for (k, (b, r)) in built.iter().zip(&retired).enumerate() {
        assert!(b <= r, "old broker {k} retired at {r} before new broker {k} was built at {b}");
    }
    assert_eq!((dispatched(&h, "fence"), dispatched(&h, "promote")), (0, 0), "no fence, no switchover");
}

/// Kafka's own policy reads the plan's `brokers` (issue 14's contract:
/// `{"engine":"kafka","brokers":N}`), defaults to three, and the field is
/// refused for other engines and outside 1 to 7.
#[test]
fn the_kafka_policy_runs_the_brokers_the_plan_asks_for() {
    let mut h = H::new(fast_config());
    h.command(Command::RegisterImage(image(EngineKind::Kafka))).expect("kafka image registers");
    let brokers_of = |v: &ServiceView| v.instances.iter().filter(|i| i.role == Role::Broker).count();
    for (name, asked, expected) in [("kf5", Some(5), 5), ("kf1", Some(1), 1), ("kfd", None, 3)] {
        let req = CreateService { brokers: asked, ..request(name, EngineKind::Kafka, 0) };
        let view = match h.command(Command::CreateService(req)) {
            Ok(Reply::Service(v)) => *v,
            other => panic!("create {name} failed: {other:?}"),
        };
        assert_eq!(brokers_of(&view), expected, "{name}: {view:?}");
        let storage: Vec<Role> = view.instances.iter().skip(expected).map(|i| i.role).collect();
        assert_eq!(storage, [Role::Primary, Role::Follower], "{name}: brokers, then its storage's members");
    }
    for (name, engine, asked) in [
        ("pg", EngineKind::Postgres, Some(3)),
        ("kf0", EngineKind::Kafka, Some(0)),
        ("kf8", EngineKind::Kafka, Some(8)),
    ] {
        let req = CreateService { brokers: asked, ..request(name, engine, 0) };
        match h.command(Command::CreateService(req)) {
            Err(CommandError::Invalid(why)) => assert!(why.contains("brokers"), "{name}: {why}"),
            other => panic!("{name} should be refused, got {other:?}"),
        }
    }
}

/// A Kafka service's records live in a PostgreSQL service of its own,
/// `<name>-storage` (issue 14: "a PostgreSQL storage that Drover itself
/// manages with everything it already knows"): created with it in one
/// command, with a synchronous follower, its members listed after the
/// brokers, deleted with it and never alone; a storage failover is the
/// PostgreSQL remedy.
#[test]
fn a_kafka_service_is_created_with_its_own_postgres_storage_and_leaves_with_it() {
    let mut h = H::new(fast_config());
    h.command(Command::RegisterImage(image(EngineKind::Kafka))).expect("kafka image registers");
    let view = match h.command(Command::CreateService(request("kf1", EngineKind::Kafka, 1))) {
        Ok(Reply::Service(v)) => *v,
        other => panic!("create failed: {other:?}"),
    };
    assert_eq!(view.storage.as_deref(), Some("kf1-storage"));
    h.advance(Duration::from_secs(5));
    let storage = h.service("kf1-storage");
    assert_eq!((storage.engine, storage.plan.followers, storage.plan.sync), (EngineKind::Postgres, 1, true));
    assert_eq!(storage.storage_of.as_deref(), Some("kf1"));
    assert_eq!(storage.labels.get("kafka").map(String::as_str), Some("kf1"));
    assert_eq!(storage.state, ServiceState::Available, "{storage:#?}");
    // Its members' provisions say whose storage they are (the provider
    // pools their router's sessions whole); the brokers' do not.
    let provisions: Vec<&ActionRecord> = h.dispatched.iter().filter(|a| a.kind.name() == "provision").collect();
    for a in &provisions {
        let spec = a.kind.provision().unwrap();
        let expected = (a.service == storage.id).then_some("kf1");
        assert_eq!(spec.storage_of.as_deref(), expected, "{a:?}");
    }
    let kf = h.service("kf1");
    let roles: Vec<(Role, &str)> = kf.instances.iter().map(|i| (i.role, i.service.as_str())).collect();
    assert_eq!(
        roles,
        [
            (Role::Broker, "kf1"),
            (Role::Broker, "kf1"),
            (Role::Broker, "kf1"),
            (Role::Primary, "kf1-storage"),
            (Role::Follower, "kf1-storage")
        ]
    );

    // The storage's primary crashes: PostgreSQL's remedy, a failover to
    // the synchronous follower, and the brokers are left alone.
    let old_primary = h.primary("kf1-storage");
    let follower = h.followers("kf1-storage")[0].clone();
    h.chaos(old_primary.id, Fault::Crash);
    h.advance(Duration::from_secs(60));
    let promoted = h.succeeded("promote").into_iter().filter(|a| a.service == storage.id).count();
    let story: Vec<String> = h
        .store
        .events
        .iter()
        .filter(|e| e.instance == Some(old_primary.id) || e.instance == Some(follower.id))
        .map(|e| format!("{:?} {:?}->{:?} {}", e.instance, e.from, e.to, e.cause))
        .collect();
    assert_eq!(promoted, 1, "the storage failed over once: {story:#?}");
    assert_eq!(h.primary("kf1-storage").id, follower.id, "the synchronous follower was promoted");
    let kf = cluster(&h, "kf1");
    assert!(kf.instances.iter().all(|i| i.state == InstanceState::Available && !i.fenced), "{kf:#?}");

    // Not alone: the storage of a live Kafka service is refused.
    match h.command(Command::DeleteService { name: "kf1-storage".into() }) {
        Err(CommandError::Conflict(why)) => assert!(why.contains("kf1"), "{why}"),
        other => panic!("deleting the storage alone should be refused, got {other:?}"),
    }
    // Both or neither: a name its storage would take is refused whole.
    h.create("kf2-storage", 1);
    match h.command(Command::CreateService(request("kf2", EngineKind::Kafka, 1))) {
        Err(CommandError::Conflict(why)) => assert!(why.contains("kf2-storage"), "{why}"),
        other => panic!("kf2 should be refused, got {other:?}"),
    }
    assert!(h.e.service_view("kf2").is_none(), "nothing of kf2 was created");
    let long = "k".repeat(56);
    match h.command(Command::CreateService(request(&long, EngineKind::Kafka, 1))) {
        Err(CommandError::Invalid(why)) => assert!(why.contains("55"), "{why}"),
        other => panic!("a name its storage's cannot follow should be refused, got {other:?}"),
    }

    // Deleting the Kafka service deletes its storage with it.
    h.command(Command::DeleteService { name: "kf1".into() }).expect("kf1 is deleted");
    h.advance(Duration::from_secs(120));
    assert!(h.e.service_view("kf1").is_none());
    assert!(h.e.service_view("kf1-storage").is_none(), "its storage went with it");
    assert_eq!(h.service("kf2-storage").state, ServiceState::Available, "an unrelated service stays");
}
