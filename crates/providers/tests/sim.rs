//! The sim provider through its public API, with real (short) time.

use drover_model::{
    ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, Beat, Fault, ImageId, InstanceId, Role, ServiceId,
    Timestamp,
};
use drover_providers::{Provider, ProviderError, ProviderEvent, SimConfig, SimInstance, SimProvider};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const BEAT: Duration = Duration::from_millis(20);

fn config() -> SimConfig {
    SimConfig { heartbeat_interval: BEAT, action_latency: Duration::ZERO }
}

static NEXT: AtomicU64 = AtomicU64::new(1);
fn service_id() -> ServiceId {
    ServiceId::new_at(1_800_000_000_000_000, NEXT.fetch_add(1, Ordering::Relaxed))
}
fn instance_id() -> InstanceId {
    InstanceId::new_at(1_800_000_000_000_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn action(service: ServiceId, instance: InstanceId, kind: ActionKind) -> ActionRecord {
    let now = Timestamp(1_800_000_000_000_000);
    ActionRecord {
        id: ActionId::new_at(now.0, NEXT.fetch_add(1, Ordering::Relaxed)),
        service,
        instance,
        kind,
        state: ActionState::Running,
        attempts: 1,
        cause: "test".into(),
        created_at: now,
        updated_at: now,
        deadline: now,
        error: None,
    }
}

fn provision(role: Role) -> ActionKind {
    ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
        role,
        zone: "zone-a".into(),
        image: ImageId("postgres-17".into()),
        service_name: "db".into(),
        sync: false,
        settings: Default::default(),
        engine: drover_model::EngineKind::Postgres,
        host: None,
        restore_from: None,
        read_slot: None,
        version: String::new(),
        storage_of: None,
    }))
}
fn inject(fault: Fault) -> ActionKind {
    ActionKind::InjectFault { fault }
}

fn open(dir: &Path) -> Arc<SimProvider> {
    SimProvider::open(&dir.join("sim.json"), config()).expect("open sim world")
}

async fn run(sim: &SimProvider, service: ServiceId, instance: InstanceId, kind: ActionKind) -> ActionOutcome {
    sim.execute(action(service, instance, kind)).await
}

#[track_caller]
fn assert_succeeded(outcome: &ActionOutcome) {
    assert!(matches!(outcome, ActionOutcome::Succeeded { .. }), "expected success, got {outcome:?}");
}
#[track_caller]
fn assert_refused(outcome: &ActionOutcome) {
    assert!(
        matches!(outcome, ActionOutcome::Failed { retryable: false, .. }),
        "expected a non-retryable failure, got {outcome:?}"
    );
}

/// A primary and one follower of a fresh service.
async fn pair(sim: &SimProvider) -> (ServiceId, InstanceId, InstanceId) {
    let (service, primary, follower) = (service_id(), instance_id(), instance_id());
    assert_succeeded(&run(sim, service, primary, provision(Role::Primary)).await);
    assert_succeeded(&run(sim, service, follower, provision(Role::Follower)).await);
    (service, primary, follower)
}

/// Every beat batch received within `window`, in order; Gone reports too.
async fn collect(events: &mut mpsc::Receiver<ProviderEvent>, window: Duration) -> (Vec<Vec<Beat>>, Vec<InstanceId>) {
    let deadline = tokio::time::Instant::now() + window;
    let (mut batches, mut gone) = (Vec::new(), Vec::new());
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        match event {
            ProviderEvent::Beats(beats) => batches.push(beats),
            ProviderEvent::Gone { instance, .. } => gone.push(instance),
            ProviderEvent::Router { service, detail } => panic!("the sim has no routers: {service} {detail}"),
        }
    }
    (batches, gone)
}

/// Lets in-flight rounds (computed before the last action) drain away.
async fn settle(events: &mut mpsc::Receiver<ProviderEvent>) {
    collect(events, BEAT * 3).await;
}

fn beating(batches: &[Vec<Beat>]) -> HashSet<InstanceId> {
    batches.iter().flatten().map(|b| b.instance).collect()
}

fn last_beat(batches: &[Vec<Beat>], id: InstanceId) -> Beat {
    batches.iter().flatten().rfind(|b| b.instance == id).cloned().unwrap_or_else(|| panic!("no beat from {id}"))
}

/// The world minus what moves on its own (WAL, beat seq).
fn still(instance: Option<SimInstance>) -> Option<SimInstance> {
    instance.map(|i| SimInstance { wal_position: 0, seq: 0, ..i })
}

#[tokio::test]
async fn beats_stop_for_crashed_hung_and_partitioned_instances_and_resume_on_heal_or_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let service = service_id();
    let [crashed, hung, partitioned, healthy] = [instance_id(), instance_id(), instance_id(), instance_id()];
    for id in [crashed, hung, partitioned, healthy] {
        assert_succeeded(&run(&sim, service, id, provision(Role::Follower)).await);
    }
    let (tx, mut events) = mpsc::channel(64);
    sim.start(tx);

    let (batches, _) = collect(&mut events, BEAT * 5).await;
    assert_eq!(beating(&batches), HashSet::from([crashed, hung, partitioned, healthy]));

    assert_succeeded(&run(&sim, service, crashed, inject(Fault::Crash)).await);
    assert_succeeded(&run(&sim, service, hung, inject(Fault::Hang)).await);
    assert_succeeded(&run(&sim, service, partitioned, inject(Fault::Partition)).await);
    settle(&mut events).await;
    let (batches, _) = collect(&mut events, BEAT * 5).await;
    assert!(batches.len() >= 2, "the healthy instance keeps beating every round");
    assert_eq!(beating(&batches), HashSet::from([healthy]));

    assert_succeeded(&run(&sim, service, hung, inject(Fault::Heal)).await);
    assert_succeeded(&run(&sim, service, partitioned, inject(Fault::Heal)).await);
    // Heal does not raise the dead.
    assert_succeeded(&run(&sim, service, crashed, inject(Fault::Heal)).await);
    settle(&mut events).await;
    let (batches, _) = collect(&mut events, BEAT * 5).await;
    assert_eq!(beating(&batches), HashSet::from([hung, partitioned, healthy]));

    assert_succeeded(&run(&sim, service, crashed, ActionKind::Restart).await);
    settle(&mut events).await;
    let (batches, _) = collect(&mut events, BEAT * 5).await;
    assert_eq!(beating(&batches), HashSet::from([crashed, hung, partitioned, healthy]));

    // Within each instance, seq only grows.
    let mut last: HashMap<InstanceId, u64> = HashMap::new();
    for beat in batches.iter().flatten() {
        if let Some(previous) = last.insert(beat.instance, beat.seq) {
            assert!(beat.seq > previous, "seq of {} went from {previous} to {}", beat.instance, beat.seq);
        }
    }
}

#[tokio::test]
async fn follower_loses_its_stream_when_the_primary_crashes_but_not_when_it_is_only_partitioned() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let (service, primary, follower) = pair(&sim).await;
    let (tx, mut events) = mpsc::channel(64);
    sim.start(tx);

    let (batches, _) = collect(&mut events, BEAT * 4).await;
    let facts = last_beat(&batches, follower).facts;
    assert_eq!(facts.upstream_streaming, Some(true));
    assert_eq!(facts.replication_lag_bytes, Some(0));
    assert_eq!(facts.role, Some(Role::Follower));
    let primary_facts = last_beat(&batches, primary).facts;
    assert_eq!(primary_facts.writable, Some(true));
    assert!(primary_facts.wal_position.unwrap() > 0, "a primary's WAL grows");

    assert_succeeded(&run(&sim, service, primary, inject(Fault::Partition)).await);
    settle(&mut events).await;
    let (batches, _) = collect(&mut events, BEAT * 4).await;
    assert!(!beating(&batches).contains(&primary), "a partitioned primary is not heard");
    let first = batches.iter().flatten().find(|b| b.instance == follower).unwrap().facts.clone();
    let facts = last_beat(&batches, follower).facts;
    assert_eq!(facts.upstream_streaming, Some(true), "a partition does not cut replication");
    assert!(facts.wal_position > first.wal_position, "the partitioned primary keeps writing and streaming");

    assert_succeeded(&run(&sim, service, primary, inject(Fault::Crash)).await);
    settle(&mut events).await;
    let (batches, _) = collect(&mut events, BEAT * 4).await;
    let first = batches.iter().flatten().find(|b| b.instance == follower).unwrap().facts.clone();
    let facts = last_beat(&batches, follower).facts;
    assert_eq!(facts.upstream_streaming, Some(false));
    assert_eq!(facts.wal_position, first.wal_position, "without a primary the follower's WAL stands still");
}

#[tokio::test]
async fn fence_then_promote_moves_writability_without_ever_two_writable_primaries() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let (service, primary, follower) = pair(&sim).await;
    let (tx, mut events) = mpsc::channel(64);
    sim.start(tx);

    let (before, _) = collect(&mut events, BEAT * 3).await;
    // Promoting a fenced instance is refused; fencing is what makes promotion safe.
    assert_succeeded(&run(&sim, service, primary, ActionKind::Fence { immediate: true }).await);
    let (between, _) = collect(&mut events, BEAT * 3).await;
    assert_refused(&run(&sim, service, primary, ActionKind::Promote).await);
    assert_succeeded(&run(&sim, service, follower, ActionKind::Promote).await);
    let (after, _) = collect(&mut events, BEAT * 5).await;

    for batch in before.iter().chain(&between).chain(&after) {
        let writable = batch.iter().filter(|b| b.facts.writable == Some(true)).count();
        assert!(writable <= 1, "two writable primaries in one round: {batch:?}");
    }
    assert_eq!(last_beat(&before, primary).facts.writable, Some(true));
    let old = last_beat(&after, primary).facts;
    assert_eq!(old.writable, Some(false), "the fenced primary still runs but refuses writes");
    let new = last_beat(&after, follower).facts;
    assert_eq!(new.writable, Some(true));
    assert_eq!(new.role, Some(Role::Primary));
    assert_eq!(sim.instance(follower).unwrap().role, Role::Primary);
}

#[tokio::test]
async fn fencing_a_hung_instance_kills_it_and_a_fenced_instance_stays_fenced_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let (service, primary, follower) = pair(&sim).await;
    assert_succeeded(&run(&sim, service, primary, inject(Fault::Hang)).await);
    assert_succeeded(&run(&sim, service, primary, ActionKind::Fence { immediate: true }).await);
    let fenced = sim.instance(primary).unwrap();
    assert_eq!((fenced.fault, fenced.fenced), (Some(Fault::Crash), true));

    assert_succeeded(&run(&sim, service, primary, ActionKind::Restart).await);
    let restarted = sim.instance(primary).unwrap();
    assert_eq!((restarted.fault, restarted.fenced), (None, true));
    assert_refused(&run(&sim, service, primary, ActionKind::Promote).await);

    // A partition survives a restart: the network is not the process.
    assert_succeeded(&run(&sim, service, follower, inject(Fault::Partition)).await);
    assert_succeeded(&run(&sim, service, follower, ActionKind::Restart).await);
    assert_eq!(sim.instance(follower).unwrap().fault, Some(Fault::Partition));
    // ...and a partitioned follower can still be promoted, out of band.
    assert_succeeded(&run(&sim, service, follower, ActionKind::Promote).await);
    assert_eq!(sim.instance(follower).unwrap().role, Role::Primary);

    // Fencing an id the world never had: nothing could write, so it holds.
    let outcome = run(&sim, service, instance_id(), ActionKind::Fence { immediate: true }).await;
    assert!(matches!(&outcome, ActionOutcome::Succeeded { detail: Some(d) } if d.contains("no simulated instance")));
}

#[tokio::test]
async fn every_action_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let (service, primary, follower) = (service_id(), instance_id(), instance_id());
    let unknown = instance_id();
    let steps: Vec<(InstanceId, ActionKind)> = vec![
        (primary, provision(Role::Primary)),
        (follower, provision(Role::Follower)),
        (primary, ActionKind::Probe),
        (primary, inject(Fault::Partition)),
        (primary, inject(Fault::Hang)),
        (primary, ActionKind::Probe),
        (primary, inject(Fault::Heal)),
        (follower, inject(Fault::Crash)),
        (follower, inject(Fault::Hang)),
        (follower, inject(Fault::Heal)),
        (follower, ActionKind::Promote),
        (follower, ActionKind::Restart),
        (primary, ActionKind::Fence { immediate: true }),
        (follower, ActionKind::Promote),
        (primary, ActionKind::Restart),
        (primary, ActionKind::Retire),
        (primary, ActionKind::Restart),
        (primary, ActionKind::Archive),
        (follower, ActionKind::Archive),
        (primary, ActionKind::Terminate),
        (primary, ActionKind::Probe),
        (unknown, ActionKind::Fence { immediate: true }),
        (unknown, ActionKind::Retire),
        (unknown, ActionKind::Archive),
        (unknown, ActionKind::Terminate),
        (unknown, ActionKind::Promote),
        (unknown, inject(Fault::Crash)),
    ];
    for (target, kind) in steps {
        let name = format!(
            "{kind:?} on {}",
            if target == primary {
                "primary"
            } else if target == follower {
                "follower"
            } else {
                "unknown"
            }
        );
        let record = action(service, target, kind);
        let first = sim.execute(record.clone()).await;
        let world_after_first = sim.instances().into_iter().map(|i| still(Some(i))).collect::<Vec<_>>();
        let mut retry = record;
        retry.attempts += 1;
        let second = sim.execute(retry).await;
        let world_after_second = sim.instances().into_iter().map(|i| still(Some(i))).collect::<Vec<_>>();
        assert_eq!(
            std::mem::discriminant(&first),
            std::mem::discriminant(&second),
            "{name}: first {first:?}, then {second:?}"
        );
        if let (ActionOutcome::Failed { retryable: a, .. }, ActionOutcome::Failed { retryable: b, .. }) =
            (&first, &second)
        {
            assert_eq!(a, b, "{name}");
        }
        assert_eq!(world_after_first, world_after_second, "{name} changed the world again on retry");
    }
    // The sequence above really did something.
    assert!(sim.instance(primary).is_none());
    let follower = sim.instance(follower).unwrap();
    assert_eq!((follower.role, follower.running, follower.archived), (Role::Primary, false, true));
}

#[tokio::test]
async fn probe_reaches_partitioned_instances_but_not_crashed_hung_retired_or_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sim = open(dir.path());
    let (tx, mut events) = mpsc::channel(64);
    sim.start(tx);
    let (service, id, _) = pair(&sim).await;

    assert_succeeded(&run(&sim, service, id, ActionKind::Probe).await);
    assert_succeeded(&run(&sim, service, id, inject(Fault::Partition)).await);
    assert_succeeded(&run(&sim, service, id, ActionKind::Probe).await);
    assert_succeeded(&run(&sim, service, id, inject(Fault::Hang)).await);
    assert_refused(&run(&sim, service, id, ActionKind::Probe).await);
    assert_succeeded(&run(&sim, service, id, inject(Fault::Crash)).await);
    assert_refused(&run(&sim, service, id, ActionKind::Probe).await);
    assert_succeeded(&run(&sim, service, id, ActionKind::Restart).await);
    assert_succeeded(&run(&sim, service, id, ActionKind::Probe).await);
    assert_succeeded(&run(&sim, service, id, ActionKind::Retire).await);
    assert_refused(&run(&sim, service, id, ActionKind::Probe).await);

    // A crash is never reported as gone; a missing machine is.
    let missing = instance_id();
    let outcome = run(&sim, service, missing, ActionKind::Probe).await;
    assert!(matches!(&outcome, ActionOutcome::Failed { retryable: false, error } if error.contains("does not exist")));
    let (_, gone) = collect(&mut events, BEAT * 3).await;
    assert_eq!(gone, vec![missing]);
}

#[tokio::test]
async fn the_world_survives_reopening_with_instances_faults_and_rising_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    let sim = SimProvider::open(&path, config()).unwrap();
    let (service, primary, follower) = pair(&sim).await;
    let (other_service, lone, _) = pair(&sim).await;
    assert_succeeded(&run(&sim, service, primary, inject(Fault::Partition)).await);
    assert_succeeded(&run(&sim, service, follower, inject(Fault::Hang)).await);
    assert_succeeded(&run(&sim, other_service, lone, ActionKind::Fence { immediate: true }).await);
    assert_succeeded(&run(&sim, other_service, lone, inject(Fault::Crash)).await);
    let (tx, mut events) = mpsc::channel(64);
    sim.start(tx);
    assert_succeeded(&run(&sim, service, primary, inject(Fault::Heal)).await);
    let (batches, _) = collect(&mut events, BEAT * 4).await;
    let last_seq = last_beat(&batches, primary).seq;
    let world = sim.instances();
    drop(events);
    drop(sim);

    // Durable already, without any orderly shutdown: the file holds it.
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(raw.contains(&lone.to_string()) && raw.contains("\"crash\""), "{raw}");
    assert!(!dir.path().join(".sim.json.tmp").exists(), "no temporary file is left behind");

    let reopened = SimProvider::open(&path, config()).unwrap();
    assert_eq!(reopened.instances().len(), 4);
    for before in world {
        let after = reopened.instance(before.id).unwrap();
        assert_eq!(still(Some(after.clone())), still(Some(before.clone())));
        assert!(after.wal_position >= before.wal_position, "WAL never steps back");
    }
    assert_eq!(reopened.instance(follower).unwrap().fault, Some(Fault::Hang));
    let (tx, mut events) = mpsc::channel(64);
    reopened.start(tx);
    let (batches, _) = collect(&mut events, BEAT * 3).await;
    assert!(last_beat(&batches, primary).seq > last_seq, "beat seq keeps rising across a reopen");
}

#[tokio::test]
async fn an_action_whose_effect_cannot_be_saved_fails_retryably_and_its_retry_saves_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    let sim = SimProvider::open(&path, config()).unwrap();
    let (service, id) = (service_id(), instance_id());
    // A directory where the temporary file goes makes every write fail, even as root.
    let blocker = dir.path().join(".sim.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let outcome = run(&sim, service, id, provision(Role::Primary)).await;
    assert!(matches!(&outcome, ActionOutcome::Failed { retryable: true, .. }), "{outcome:?}");
    assert!(!std::fs::read_to_string(&path).unwrap().contains(&id.to_string()));

    std::fs::remove_dir(&blocker).unwrap();
    // The effect already holds in memory; the retry must still make it durable.
    assert_succeeded(&run(&sim, service, id, provision(Role::Primary)).await);
    drop(sim);
    assert!(SimProvider::open(&path, config()).unwrap().instance(id).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_actions_all_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    let sim = SimProvider::open(&path, config()).unwrap();
    let service = service_id();
    let ids: Vec<InstanceId> = (0..200).map(|_| instance_id()).collect();
    let runs: Vec<_> = ids.iter().map(|id| sim.execute(action(service, *id, provision(Role::Follower)))).collect();
    let handles: Vec<_> = runs.into_iter().map(tokio::spawn).collect();
    for handle in handles {
        assert_succeeded(&handle.await.unwrap());
    }
    drop(sim);
    let reopened = SimProvider::open(&path, config()).unwrap();
    for id in ids {
        assert!(reopened.instance(id).is_some(), "{id} was acknowledged but not saved");
    }
}

#[test]
fn a_corrupt_or_foreign_state_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    for (content, expect) in [
        ("{\"format\": 1, \"wal_clock_micros\": 0, \"instances\": [{\"id\": 3", "corrupt"),
        ("", "corrupt"),
        ("[1, 2, 3]", "corrupt"),
        ("{\"format\": 1, \"wal_clock_micros\": 0, \"instances\": [{\"id\": \"nope\"}]}", "corrupt"),
        ("{\"format\": 99, \"instances\": []}", "format version 99"),
    ] {
        std::fs::write(&path, content).unwrap();
        let error = match SimProvider::open(&path, config()) {
            Ok(_) => panic!("opened {content:?}"),
            Err(error) => error,
        };
        let message = error.to_string();
        assert!(message.contains(expect), "{message}");
        assert!(message.contains(&path.display().to_string()), "names the file: {message}");
        match error {
            ProviderError::CorruptState { .. } | ProviderError::UnsupportedStateFormat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        // The file is left as it was, for a person to look at.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
}

#[test]
fn opening_a_missing_file_creates_an_empty_world_and_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/sim.json");
    let sim = SimProvider::open(&path, config()).unwrap();
    assert!(sim.instances().is_empty());
    assert!(path.exists());
    assert_eq!(sim.name(), "sim");
}
