//! The local provider against real PostgreSQL 15 and pgbouncer processes.
//! Every server a test starts is stopped when the test ends, also when it
//! fails: the [`Harness`] guard calls `shutdown` in Drop.

use drover_model::{
    ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, Beat, Fault, ImageId, InstanceId, Role, ServiceId,
    Timestamp,
};
use drover_providers::local::{LocalConfig, LocalProvider};
use drover_providers::{Provider, ProviderEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn fresh_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst) ^ (std::process::id() as u64) << 32
}

fn instance_id() -> InstanceId {
    InstanceId::new_at(now_micros(), fresh_id())
}

fn test_config() -> LocalConfig {
    LocalConfig {
        probe_interval: Duration::from_millis(200),
        same_host_evidence: true,
        stop_timeout: Duration::from_secs(5),
        kill_servers_on_drop: true,
        archive_command: None,
        redis_maxmemory: None,
        backups: None,
        listen_address: None,
    }
}

/// A provider in a temp dir; stops every server and router when dropped.
/// Declare the temp dir before the harness: locals drop in reverse order, so
/// the servers stop before their directories are deleted.
struct Harness {
    provider: Arc<LocalProvider>,
    service: ServiceId,
    name: String,
    dir: std::path::PathBuf,
    /// Shutdown on drop; off to simulate a control plane killed with -9.
    armed: bool,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.armed {
            self.provider.shutdown();
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    // Short paths: unix socket paths are limited to ~100 bytes.
    tempfile::Builder::new().prefix("dl").tempdir_in("/tmp").unwrap()
}

impl Harness {
    fn open(dir: &tempfile::TempDir, name: &str, service: ServiceId, config: LocalConfig) -> Harness {
        let provider = LocalProvider::open(dir.path(), config).expect("open the local provider");
        Harness { provider, service, name: name.to_string(), dir: dir.path().to_path_buf(), armed: true }
    }

    fn new(dir: &tempfile::TempDir, name: &str) -> Harness {
        Harness::open(dir, name, ServiceId::new_at(now_micros(), fresh_id()), test_config())
    }

    fn record(&self, instance: InstanceId, kind: ActionKind) -> ActionRecord {
        let now = Timestamp(now_micros());
        ActionRecord {
            id: ActionId::new_at(now.0, fresh_id()),
            service: self.service,
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

    fn provision_kind(&self, role: Role) -> ActionKind {
        ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
            role,
            zone: "local".into(),
            image: ImageId("postgres-15".into()),
            service_name: self.name.clone(),
            sync: true,
            settings: Default::default(),
            engine: drover_model::EngineKind::Postgres,
            host: None,
            restore_from: None,
            read_slot: None,
            version: String::new(),
            storage_of: None,
        }))
    }

    async fn run(&self, instance: InstanceId, kind: ActionKind) -> ActionOutcome {
        self.provider.execute(self.record(instance, kind)).await
    }

    async fn ok(&self, instance: InstanceId, kind: ActionKind) {
        let name = kind.name();
        match self.run(instance, kind).await {
            ActionOutcome::Succeeded { .. } => {}
            failed => panic!("{name} of {instance} failed: {failed:?}"),
        }
    }

    /// A primary and a synchronous follower.
    async fn pair(&self) -> (InstanceId, InstanceId) {
        let primary = instance_id();
        let follower = instance_id();
        self.ok(primary, self.provision_kind(Role::Primary)).await;
        self.ok(follower, self.provision_kind(Role::Follower)).await;
        (primary, follower)
    }

    fn url(&self) -> String {
        self.provider.service_url(&self.name).expect("the service has a URL")
    }

    fn events(&self) -> mpsc::Receiver<ProviderEvent> {
        let (sender, receiver) = mpsc::channel(1024);
        self.provider.start(sender);
        receiver
    }

    /// A connection straight to one instance over its socket.
    async fn direct(&self, instance: InstanceId) -> tokio_postgres::Client {
        let info = self.provider.instance_info(instance).expect("known instance");
        let mut config = tokio_postgres::Config::new();
        config.host_path(&info.socket_dir).port(info.port).user("drover").dbname("app");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect over the socket");
        tokio::spawn(connection);
        client
    }
}

/// A connection through the service's stable URL (the router).
async fn through_router(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn count_rows(client: &tokio_postgres::Client) -> i64 {
    let rows = client.simple_query("SELECT count(*) FROM items").await.expect("count");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().parse().unwrap()),
            _ => None,
        })
        .expect("a row")
}

/// Waits for a round whose beats satisfy `wanted`.
async fn beats_until(
    events: &mut mpsc::Receiver<ProviderEvent>,
    within: Duration,
    mut wanted: impl FnMut(&[Beat]) -> bool,
) -> Vec<Beat> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ProviderEvent::Beats(beats))) if wanted(&beats) => return beats,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no matching beats within {within:?}"),
        }
    }
}

fn beat_of(beats: &[Beat], id: InstanceId) -> Option<&Beat> {
    beats.iter().find(|b| b.instance == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_written_through_the_stable_url_reaches_the_sync_follower_and_beats_report_roles() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "orders");
    let (primary, follower) = h.pair().await;
    let client = through_router(&h.url()).await.expect("connect through the router");
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items VALUES (1, 'first')")
        .await
        .expect("write through the router");

    // Sync replication waits for the follower's flush, not its replay: poll briefly.
    let on_follower = h.direct(follower).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = on_follower.simple_query("SELECT note FROM items WHERE id = 1").await;
        if let Ok(messages) = &seen {
            if messages
                .iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("first")))
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "row not visible on the follower: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sync_state = h.direct(primary).await.simple_query("SELECT sync_state FROM pg_stat_replication").await.unwrap();
    assert!(
        sync_state
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("quorum"))),
        "the follower replicates synchronously"
    );

    let mut events = h.events();
    let beats = beats_until(&mut events, Duration::from_secs(10), |beats| {
        beat_of(beats, primary).is_some()
            && beat_of(beats, follower).is_some_and(|b| b.facts.upstream_streaming == Some(true))
    })
    .await;
    let p = &beat_of(&beats, primary).unwrap().facts;
    let f = &beat_of(&beats, follower).unwrap().facts;
    assert_eq!(p.role, Some(Role::Primary));
    assert_eq!(p.writable, Some(true));
    assert_eq!(f.role, Some(Role::Follower));
    assert_eq!(f.writable, Some(false));
    assert!(p.wal_position.unwrap() > 0 && f.wal_position.unwrap() > 0);
    assert!(f.replication_lag_bytes.is_some());
    assert!(p.connections.unwrap() >= 1);
    let next = beats_until(&mut events, Duration::from_secs(5), |b| beat_of(b, primary).is_some()).await;
    assert!(beat_of(&next, primary).unwrap().seq > beat_of(&beats, primary).unwrap().seq, "seq grows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_is_reported_at_once_and_failover_keeps_the_url_and_every_committed_row() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "ledger");
    let (primary, follower) = h.pair().await;
    let url = h.url();
    let client = through_router(&url).await.unwrap();
    client.batch_execute("CREATE TABLE items (id int PRIMARY KEY)").await.unwrap();
    for i in 0..100 {
        client.batch_execute(&format!("INSERT INTO items VALUES ({i})")).await.unwrap();
    }
    let mut events = h.events();

    let crashed_at = Instant::now();
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Crash }).await;
    let gone_after = loop {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Some(ProviderEvent::Gone { instance, detail })) => {
                assert_eq!(instance, primary);
                assert!(detail.contains("postmaster exited"), "{detail}");
                break crashed_at.elapsed();
            }
            Ok(Some(ProviderEvent::Beats(_))) => continue,
            Ok(Some(ProviderEvent::Router { detail, .. })) => panic!("the router is fine: {detail}"),
            Ok(None) => panic!("channel closed"),
            Err(_) => panic!("no Gone within 1 s of kill -9"),
        }
    };
    assert!(gone_after < Duration::from_secs(1), "Gone after {gone_after:?}");

    let failover = Instant::now();
    h.ok(primary, ActionKind::Fence { immediate: true }).await;
    h.ok(follower, ActionKind::Promote).await;
    let failover_took = failover.elapsed();

    // A client connected before the crash keeps its connection: the router
    // (transaction pooling) sends its next transaction to the new primary.
    client.batch_execute("INSERT INTO items VALUES (999)").await.expect("the old client connection still works");
    let client = through_router(&url).await.expect("the same URL after failover");
    client.batch_execute("INSERT INTO items VALUES (1000)").await.expect("write through the same URL");
    let first_write = crashed_at.elapsed();
    assert_eq!(count_rows(&client).await, 102, "every row committed before the crash survived");
    assert!(h.provider.instance_info(primary).unwrap().fenced);
    assert_eq!(h.provider.instance_info(follower).unwrap().role, Role::Primary);
    eprintln!("TIMING kill -9 -> Gone: {gone_after:?}; fence+promote: {failover_took:?}; kill -9 -> first write through URL: {first_write:?}");

    // The fenced primary is never started again.
    match h.run(primary, ActionKind::Restart).await {
        ActionOutcome::Failed { retryable: false, .. } => {}
        other => panic!("restart of a fenced instance: {other:?}"),
    }
    // Rounds sampled before the promotion may still be queued: wait for the new role.
    let beats = beats_until(&mut events, Duration::from_secs(5), |b| {
        beat_of(b, follower).is_some_and(|f| f.facts.writable == Some(true) && f.facts.role == Some(Role::Primary))
    })
    .await;
    assert!(beat_of(&beats, primary).is_none(), "a fenced instance does not beat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_fails_probes_heal_restores_them_partition_silences_beats_and_a_hung_server_is_fenced_at_once() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "inventory");
    let primary = instance_id();
    h.ok(primary, h.provision_kind(Role::Primary)).await;
    h.ok(primary, ActionKind::Probe).await;

    h.ok(primary, ActionKind::InjectFault { fault: Fault::Hang }).await;
    let started = Instant::now();
    match h.run(primary, ActionKind::Probe).await {
        ActionOutcome::Failed { retryable: false, .. } => {}
        other => panic!("probe of a hung server: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "a probe is bounded");
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Heal }).await;
    h.ok(primary, ActionKind::Probe).await;

    let mut events = h.events();
    beats_until(&mut events, Duration::from_secs(5), |b| beat_of(b, primary).is_some()).await;
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Partition }).await;
    // Drain what was in flight, then watch a few rounds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while events.try_recv().is_ok() {}
    let watch_until = Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(event)) =
        tokio::time::timeout(watch_until.saturating_duration_since(Instant::now()), events.recv()).await
    {
        if let ProviderEvent::Beats(beats) = event {
            assert!(beat_of(&beats, primary).is_none(), "a partitioned instance beat");
        }
    }
    let client = through_router(&h.url()).await.expect("the router serves during a partition");
    client.batch_execute("CREATE TABLE items (id int); INSERT INTO items VALUES (1)").await.unwrap();
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Heal }).await;
    beats_until(&mut events, Duration::from_secs(5), |b| beat_of(b, primary).is_some()).await;

    // A hung primary is fenced at once (a stopped process cannot shut down:
    // it is killed), and a failover fence does not wait for the statement
    // stuck on it (a PAUSE would, until its 3 s timeout): the router drops
    // that client, which sees an error instead of hanging.
    let pgdata = h.provider.instance_info(primary).unwrap().data_dir.canonicalize().unwrap();
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Hang }).await;
    let stuck = through_router(&h.url()).await.expect("the router accepts clients of a hung server");
    let stuck = tokio::spawn(async move { stuck.batch_execute("INSERT INTO items VALUES (2)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stuck.is_finished(), "the statement reached the hung server and waits");
    let fencing = Instant::now();
    h.ok(primary, ActionKind::Fence { immediate: true }).await;
    assert!(fencing.elapsed() < Duration::from_secs(2), "fence of a hung server took {:?}", fencing.elapsed());
    match tokio::time::timeout(Duration::from_secs(2), stuck).await {
        Ok(Ok(Err(_))) => {}
        other => panic!("the client stuck on the hung primary should be cut off with an error: {other:?}"),
    }
    let survivors: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == pgdata))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .is_ok_and(|st| !st.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
        })
        .collect();
    assert!(survivors.is_empty(), "processes of the fenced server survive: {survivors:?}");
    assert!(h.provider.instance_info(primary).unwrap().fenced);
}

/// Runs `kind` twice and checks both attempts succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_same_host_evidence_a_hung_server_fails_its_probe_over_the_connection_and_a_crash_is_not_reported() {
    let dir = temp_dir();
    let h = Harness::open(
        &dir,
        "remote",
        ServiceId::new_at(now_micros(), fresh_id()),
        LocalConfig { same_host_evidence: false, ..test_config() },
    );
    let primary = instance_id();
    h.ok(primary, h.provision_kind(Role::Primary)).await;
    h.ok(primary, ActionKind::Probe).await;
    let mut events = h.events();

    h.ok(primary, ActionKind::InjectFault { fault: Fault::Hang }).await;
    let started = Instant::now();
    match h.run(primary, ActionKind::Probe).await {
        ActionOutcome::Failed { error, retryable: false } => {
            assert!(!error.contains("Stopped"), "not read from /proc: {error}")
        }
        other => panic!("probe of a hung server: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "the probe waited for its timeout, not /proc: {took:?}");
    assert!(took < Duration::from_secs(2), "a probe is bounded: {took:?}");
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Heal }).await;
    h.ok(primary, ActionKind::Probe).await;

    while events.try_recv().is_ok() {}
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Crash }).await;
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(event)) =
        tokio::time::timeout(watch_until.saturating_duration_since(Instant::now()), events.recv()).await
    {
        assert!(!matches!(event, ProviderEvent::Gone { .. }), "a same-host report: {event:?}");
    }
    match h.run(primary, ActionKind::Probe).await {
        ActionOutcome::Failed { retryable: false, .. } => {}
        other => panic!("probe of a dead server: {other:?}"),
    }
}

async fn twice(h: &Harness, instance: InstanceId, kind: ActionKind) {
    for attempt in 1..=2 {
        match h.run(instance, kind.clone()).await {
            ActionOutcome::Succeeded { .. } => {}
            failed => panic!("{} attempt {attempt}: {failed:?}", kind.name()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_run_twice_has_the_effect_of_once_and_a_terminated_id_is_never_provisioned_again() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "billing");
    let primary = instance_id();
    let follower = instance_id();
    twice(&h, primary, h.provision_kind(Role::Primary)).await;
    let pid = h.provider.instance_info(primary).unwrap().pid;
    twice(&h, follower, h.provision_kind(Role::Follower)).await;
    assert_eq!(h.provider.instance_info(primary).unwrap().pid, pid, "a repeat provision does not restart it");
    twice(&h, primary, ActionKind::Probe).await;
    twice(&h, primary, ActionKind::Restart).await;
    twice(&h, follower, ActionKind::InjectFault { fault: Fault::Partition }).await;
    twice(&h, follower, ActionKind::InjectFault { fault: Fault::Heal }).await;
    twice(&h, primary, ActionKind::Fence { immediate: true }).await;
    assert!(h.provider.instance_info(primary).unwrap().pid.is_none());
    twice(&h, follower, ActionKind::Promote).await;
    let client = through_router(&h.url()).await.unwrap();
    client.batch_execute("CREATE TABLE items (id int)").await.expect("the promoted follower takes writes");
    twice(&h, primary, ActionKind::Retire).await;
    twice(&h, primary, ActionKind::Archive).await;
    let archived = h.dir.join("local/archive").join(primary.to_string());
    assert!(archived.join("pgdata/PG_VERSION").exists(), "archive keeps the data");
    twice(&h, primary, ActionKind::Terminate).await;
    assert!(!archived.exists(), "terminate deletes what was left");
    assert!(h.provider.instance_info(primary).is_none());
    match h.run(primary, h.provision_kind(Role::Primary)).await {
        ActionOutcome::Failed { retryable: false, error } => assert!(error.contains("terminated"), "{error}"),
        other => panic!("a late provision of a terminated id: {other:?}"),
    }
    // Fencing something never known succeeds: it cannot write.
    twice(&h, instance_id(), ActionKind::Fence { immediate: true }).await;
    match h.run(follower, ActionKind::Backup).await {
        ActionOutcome::Failed { retryable: false, .. } => {}
        other => panic!("backup is not wired yet: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_provider_adopts_running_servers_reports_dead_ones_and_beats_resume() {
    let dir = temp_dir();
    let service = ServiceId::new_at(now_micros(), fresh_id());
    // Armed until the simulated kill -9, so a failure before it stops the servers.
    let mut first =
        Harness::open(&dir, "reports", service, LocalConfig { kill_servers_on_drop: false, ..test_config() });
    let (primary, follower) = first.pair().await;
    let url = first.url();
    let primary_pid = first.provider.instance_info(primary).unwrap().pid.unwrap();
    let follower_pid = first.provider.instance_info(follower).unwrap().pid.unwrap();

    // The control plane dies (kill -9: no shutdown); the follower dies while it is away.
    first.armed = false;
    drop(first);
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(follower_pid), nix::sys::signal::Signal::SIGKILL).unwrap();

    let h = Harness::open(&dir, "reports", service, test_config());
    assert_eq!(h.provider.instance_info(primary).unwrap().pid, Some(primary_pid), "the primary is adopted");
    assert_eq!(h.url(), url, "the URL survives");
    // The dead follower is evidence for the engine, not restarted behind its back.
    let mut events = h.events();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(ProviderEvent::Gone { instance, detail })) => {
                assert_eq!(instance, follower);
                assert!(detail.contains("not running when the control plane started"), "{detail}");
                break;
            }
            Ok(Some(_)) => continue,
            other => panic!("no Gone for the follower that died meanwhile: {other:?}"),
        }
    }
    assert_eq!(h.provider.instance_info(follower).unwrap().pid, None, "the provider did not restart it by itself");
    // The engine decides to restart it.
    h.ok(follower, ActionKind::Restart).await;
    let beats = beats_until(&mut events, Duration::from_secs(30), |b| {
        beat_of(b, primary).is_some() && beat_of(b, follower).is_some_and(|f| f.facts.upstream_streaming == Some(true))
    })
    .await;
    assert_eq!(beat_of(&beats, primary).unwrap().facts.role, Some(Role::Primary));
    let new_follower_pid = h.provider.instance_info(follower).unwrap().pid.unwrap();
    assert_ne!(new_follower_pid, follower_pid, "the dead follower was restarted");
    let client = through_router(&url).await.expect("the router was adopted or restarted");
    client.batch_execute("CREATE TABLE items (id int)").await.unwrap();

    // An adopted postmaster's death is noticed too.
    let crashed_at = Instant::now();
    h.ok(primary, ActionKind::InjectFault { fault: Fault::Crash }).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Some(ProviderEvent::Gone { instance, .. })) if instance == primary => break,
            Ok(Some(_)) => continue,
            other => panic!("no Gone for the adopted primary: {other:?}"),
        }
    }
    eprintln!("TIMING adopted kill -9 -> Gone: {:?}", crashed_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sync_follower_does_not_block_writes_and_restart_brings_it_back_streaming() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "payments");
    let (primary, follower) = h.pair().await;
    let mut events = h.events();
    let url = h.url();
    let client = through_router(&url).await.unwrap();
    client.batch_execute("CREATE TABLE items (id int)").await.unwrap();

    h.ok(follower, ActionKind::InjectFault { fault: Fault::Crash }).await;
    // Non-strict synchronous mode: with no follower streaming, the primary
    // goes async within a heartbeat round or two instead of blocking.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), client.batch_execute("INSERT INTO items VALUES (1)"))
        .await
        .expect("a write completes without its sync follower")
        .unwrap();
    eprintln!("TIMING write with the sync follower dead: {:?}", started.elapsed());

    h.ok(follower, ActionKind::Restart).await;
    beats_until(&mut events, Duration::from_secs(15), |b| {
        beat_of(b, follower).is_some_and(|f| f.facts.upstream_streaming == Some(true))
    })
    .await;
    // Sync again once it streams.
    let on_primary = h.direct(primary).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = on_primary.simple_query("SELECT sync_state FROM pg_stat_replication").await.unwrap();
        if rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("quorum"))) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted follower is not synchronous again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A router killed behind the provider's back comes back on the same URL.
    let pid_file = h.dir.join("local/routers").join(h.service.to_string()).join("pgbouncer.pid");
    let router_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(router_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(client) = through_router(&url).await {
            if client.batch_execute("INSERT INTO items VALUES (2)").await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the router did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new primary's WAL is archived from the start, before any backup (the
/// stanza is made at provision); Backup and VerifyRestore actions run
/// pgBackRest against the service's primary; a restore test passes on a
/// good backup, and the service's checks see the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_archived_from_provision_then_backup_and_restore_test_through_the_provider_and_real_checks() {
    let dir = temp_dir();
    let run_as = drover_providers::runas::RunAs::for_servers().unwrap();
    let repo = drover_providers::pgbackrest::BackupRepo::open(&dir.path().join("bk"), run_as).unwrap();
    let config = LocalConfig { backups: Some(repo), ..test_config() };
    let h = Harness::open(&dir, "ledger", ServiceId::new_at(now_micros(), fresh_id()), config);
    let primary = instance_id();
    h.ok(primary, h.provision_kind(Role::Primary)).await;
    let client = through_router(&h.url()).await.expect("connect through the router");
    client.batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1), (2)").await.unwrap();
    // No backup yet: the archiver delivers WAL (stanza-create ran at provision).
    let direct = h.direct(primary).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = direct
            .query_one("SELECT archived_count, failed_count FROM pg_stat_archiver", &[])
            .await
            .expect("pg_stat_archiver");
        let (done, failed) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if done > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no WAL segment archived within 60 s of provision ({failed} attempts failed): the stanza waits for the first backup"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match h.run(primary, ActionKind::Backup).await {
        ActionOutcome::Succeeded { detail } => assert!(detail.unwrap_or_default().contains("bytes")),
        failed => panic!("backup failed: {failed:?}"),
    }
    match h.run(primary, ActionKind::VerifyRestore).await {
        ActionOutcome::Succeeded { detail } => {
            let detail = detail.unwrap_or_default();
            assert!(detail.contains("restored and checked"), "{detail}");
        }
        failed => panic!("restore test failed: {failed:?}"),
    }
    let checks = h.provider.service_checks("ledger").await;
    let security = checks.security.expect("security is checked on a real server");
    assert_ne!(security.status, drover_providers::checks::Status::Crit, "{security:?}");
    assert!(checks.performance.is_some());
    assert!(checks.followers.expect("pg_stat_replication answered").is_empty(), "no follower in this service");
}

/// The SQLSTATE of a refused statement, or panics if it was not refused.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("`{sql}` was accepted through the service URL"),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no code: {e}")),
    }
}

/// Every file under `dir` (recursively), with `needle` in its bytes.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_role_owns_its_database_but_cannot_run_programs_alter_the_system_make_superusers_or_drive_the_router() {
    let dir = temp_dir();
    let h = Harness::new(&dir, "tenant");
    let (primary, _follower) = h.pair().await;
    let url = h.url();
    let parsed: tokio_postgres::Config = url.parse().expect("a valid URL");
    let login = parsed.get_user().expect("a user").to_string();
    let password = String::from_utf8(parsed.get_password().expect("a password").to_vec()).unwrap();
    assert_eq!(login, "app_a");
    assert_eq!(parsed.get_dbname(), Some("app"));

    // The application works: its own tables, owned by its owner role.
    let client = through_router(&url).await.expect("connect through the URL");
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'mine')")
        .await
        .expect("the application creates and writes its tables");
    let rows = client
        .simple_query(
            "SELECT current_user, r.rolsuper::text, (SELECT tableowner FROM pg_tables WHERE tablename = 't') \
             FROM pg_roles r WHERE r.rolname = session_user",
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_string(), r.get(1).unwrap().to_string(), r.get(2).unwrap().to_string()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(row, ("app".to_string(), "false".to_string(), "app".to_string()));

    // What a tenant must never do, each refused for lack of privilege.
    assert_eq!(refused(&client, "COPY t (note) FROM PROGRAM 'id'").await, "42501");
    assert_eq!(refused(&client, "ALTER SYSTEM SET work_mem = '8MB'").await, "42501");
    assert_eq!(refused(&client, "CREATE ROLE intruder SUPERUSER").await, "42501");
    assert_eq!(refused(&client, "SELECT pg_read_file('/etc/passwd')").await, "42501");
    assert_eq!(refused(&client, "SET ROLE drover").await, "42501");
    assert_eq!(refused(&client, "CREATE ROLE helper CREATEROLE").await, "42501");
    assert_eq!(refused(&client, "GRANT pg_execute_server_program TO app").await, "42501");

    // The router's admin console refuses the URL's credentials.
    let port = parsed.get_ports()[0];
    for database in ["pgbouncer", "postgres", "template1"] {
        let other = format!("postgres://{login}:{password}@127.0.0.1:{port}/{database}");
        match through_router(&other).await {
            Err(_) => {}
            Ok(console) => {
                for command in ["SHOW POOLS", "PAUSE", "SHUTDOWN"] {
                    assert!(console.simple_query(command).await.is_err(), "{command} accepted on {database}");
                }
                panic!("the router let the URL's role into {database}");
            }
        }
    }
    // Nor can the URL's password reach the server's other databases, or
    // Drover's roles log in over TCP.
    let server_port = h.provider.instance_info(primary).unwrap().port;
    for (user, database) in [(login.as_str(), "postgres"), ("drover", "postgres"), ("drover_replication", "app")] {
        let direct = format!("postgres://{user}:{password}@127.0.0.1:{server_port}/{database}");
        assert!(through_router(&direct).await.is_err(), "{user} reached {database} over TCP");
    }
    // The router still serves the application after all that.
    let rows = client.simple_query("SELECT note FROM t").await.expect("still served");
    assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("mine"))));
    drop(client);

    // No password in clear anywhere in the data dir.
    let leaks = files_containing(dir.path(), password.as_bytes());
    assert!(leaks.is_empty(), "the service password is in clear in {leaks:?}");
    let registry = std::fs::read_to_string(h.provider.state_path()).unwrap();
    assert!(registry.contains("\"login\": \"app_a\""), "{registry}");
}

/// Inserts through `url` until `stop`, returning (ok, failed, last error).
/// `fresh`: a new connection (with the URL of that moment) per statement,
/// like a client that reconnects; otherwise one connection kept open.
async fn write_load(
    url: impl Fn() -> String,
    fresh: bool,
    base: i64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (i64, i64, Option<String>) {
    let (mut ok, mut failed, mut last) = (0i64, 0i64, None);
    let mut kept: Option<tokio_postgres::Client> = None;
    let mut n = base;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        if kept.is_none() || fresh {
            match through_router(&url()).await {
                Ok(client) => kept = Some(client),
                Err(e) => {
                    failed += 1;
                    last = Some(format!("connect at {:?}: {e:?}", SystemTime::now()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let client = kept.as_ref().expect("connected");
        match client.batch_execute(&format!("INSERT INTO load VALUES ({n})")).await {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                last = Some(format!("insert at {:?}: {e:?}", SystemTime::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_under_write_load_without_a_failed_statement_and_the_old_password_is_refused_after_the_overlap(
) {
    let dir = temp_dir();
    let h = Arc::new(Harness::new(&dir, "rotating"));
    let (primary, _follower) = h.pair().await;
    let old_url = h.url();
    through_router(&old_url).await.unwrap().batch_execute("CREATE TABLE load (n bigint PRIMARY KEY)").await.unwrap();

    let stop_kept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_fresh = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kept = {
        let (url, stop) = (old_url.clone(), stop_kept.clone());
        tokio::spawn(async move { write_load(move || url.clone(), false, 0, stop).await })
    };
    let fresh = {
        let (h, stop) = (h.clone(), stop_fresh.clone());
        tokio::spawn(async move { write_load(move || h.url(), true, 1_000_000_000, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let record = h.record(primary, ActionKind::RotateCredentials);
    let started = Instant::now();
    eprintln!("rotation starts at {:?}", SystemTime::now());
    match h.provider.execute(record.clone()).await {
        ActionOutcome::Succeeded { .. } => {}
        failed => panic!("rotation failed: {failed:?}"),
    }
    let new_url = h.url();
    assert_ne!(new_url, old_url);
    assert!(new_url.starts_with("postgres://app_b:"), "the other login role: {new_url}");
    // A repeat of the same action (a control plane killed in between) finds it done.
    match h.provider.execute(record).await {
        ActionOutcome::Succeeded { detail } => assert!(detail.unwrap_or_default().contains("already")),
        failed => panic!("repeat failed: {failed:?}"),
    }
    assert_eq!(h.url(), new_url);
    // A second rotation is refused while the first is in its overlap.
    assert!(h.provider.rotation_in_progress("rotating").is_some());
    match h.run(primary, ActionKind::RotateCredentials).await {
        ActionOutcome::Failed { retryable: false, .. } => {}
        other => panic!("a second rotation in the overlap: {other:?}"),
    }
    // Both credentials work during the overlap.
    through_router(&old_url).await.expect("the old URL works during the overlap");
    through_router(&new_url).await.expect("the new URL works");

    // The kept connection drains before the overlap (3 s) ends.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    stop_kept.store(true, Ordering::SeqCst);
    let (kept_ok, kept_failed, kept_error) = kept.await.unwrap();

    // The overlap (3 s) ends: the engine opens RevokePreviousCredentials.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    through_router(&old_url).await.expect("the old URL works until the revocation");
    let revoke = h.record(primary, ActionKind::RevokePreviousCredentials);
    match h.provider.execute(revoke.clone()).await {
        ActionOutcome::Succeeded { .. } => {}
        failed => panic!("revocation failed: {failed:?}"),
    }
    let refusal = through_router(&old_url).await.expect_err("the old password is refused after the revocation");
    // A repeat (a control plane killed before it recorded the result)
    // changes nothing: the new credential keeps working.
    match h.provider.execute(revoke).await {
        ActionOutcome::Succeeded { detail } => assert!(detail.unwrap_or_default().contains("no previous")),
        failed => panic!("repeated revocation failed: {failed:?}"),
    }
    through_router(&new_url).await.expect("the new URL works after a repeated revocation");
    let refusal = refusal.as_db_error().map(|e| format!("{}: {}", e.code().code(), e.message()));
    assert!(refusal.is_some(), "the router answered the old password with a refusal");
    assert!(h.provider.rotation_in_progress("rotating").is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_fresh.store(true, Ordering::SeqCst);
    let (fresh_ok, fresh_failed, fresh_error) = fresh.await.unwrap();
    eprintln!(
        "rotation: kept connection {kept_ok} ok / {kept_failed} failed, reconnecting client {fresh_ok} ok /          {fresh_failed} failed; old password refused after {:?}: {refusal:?}",
        started.elapsed()
    );
    assert_eq!(kept_failed, 0, "a kept connection failed: {kept_error:?}");
    assert_eq!(fresh_failed, 0, "a reconnecting client failed: {fresh_error:?}");
    assert!(kept_ok > 20 && fresh_ok > 20, "the load ran: {kept_ok} and {fresh_ok}");

    // The new credential reaches every row, whichever role wrote it, and the
    // old role cannot log in to the server either.
    let client = through_router(&new_url).await.expect("the new URL works after the overlap");
    let rows = client.simple_query("SELECT count(*) FROM load").await.unwrap();
    let count: i64 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(count, kept_ok + fresh_ok, "every acknowledged insert is there");
    let can_login = h
        .direct(primary)
        .await
        .simple_query("SELECT rolcanlogin::text FROM pg_roles WHERE rolname = 'app_a'")
        .await
        .unwrap();
    assert!(can_login
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("false"))));
    let password = new_url.split(':').nth(2).unwrap().split('@').next().unwrap().to_string();
    let leaks = files_containing(dir.path(), password.as_bytes());
    assert!(leaks.is_empty(), "the new password is in clear in {leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_a_password_in_clear_is_sealed_when_opened_and_the_url_still_carries_it() {
    let dir = temp_dir();
    let service = ServiceId::new_at(now_micros(), fresh_id());
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let old = serde_json::json!({
        "format": 1,
        "instances": {},
        "services": { service.to_string(): {
            "name": "legacy", "router_port": 6543, "password": "plain-old-secret", "primary": null, "sync": false
        }},
        "tombstones": []
    });
    std::fs::write(local.join("state.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    let h = Harness::open(&dir, "legacy", service, test_config());
    let stored = std::fs::read_to_string(h.provider.state_path()).unwrap();
    assert!(!stored.contains("plain-old-secret"), "still in clear: {stored}");
    assert!(stored.contains("SCRAM-SHA-256$"), "a verifier for the router: {stored}");
    assert_eq!(h.url(), "postgres://app_a:plain-old-secret@127.0.0.1:6543/app");
    drop(h);
    // Opened again (the key file is reused): the same URL.
    let h = Harness::open(&dir, "legacy", service, test_config());
    assert_eq!(h.url(), "postgres://app_a:plain-old-secret@127.0.0.1:6543/app");
    let key = std::fs::metadata(dir.path().join("secret.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
}

/// A data dir too deep for a unix socket path puts the server's and the
/// router's sockets in short directories of their own under the temporary
/// dir; terminating the instance (the last of its service) removes both, so
/// nothing collects there over a fleet's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_data_dir_starts_and_terminate_removes_its_short_socket_directories() {
    let dir = temp_dir();
    let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    let deep = tempfile::TempDir::new_in(&deep).unwrap();
    let h = Harness::new(&deep, "deep");
    let primary = instance_id();
    h.ok(primary, h.provision_kind(Role::Primary)).await;
    let socket_dir = h.provider.instance_info(primary).unwrap().socket_dir;
    assert!(!socket_dir.starts_with(deep.path()), "{} is too deep for a socket", deep.path().display());
    assert!(socket_dir.exists(), "{}", socket_dir.display());
    let client = through_router(&h.url()).await.expect("the router answers");
    client.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    drop(client);
    let router_sockets = socket_dir.parent().unwrap().join(format!("r{}", h.service.0.simple()));
    assert!(router_sockets.exists(), "{}", router_sockets.display());
    h.ok(primary, ActionKind::Fence { immediate: true }).await;
    h.ok(primary, ActionKind::Terminate).await;
    assert!(!socket_dir.exists(), "the instance's socket directory is left: {}", socket_dir.display());
    assert!(!router_sockets.exists(), "the router's socket directory is left: {}", router_sockets.display());
}
