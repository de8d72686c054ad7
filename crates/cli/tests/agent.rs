//! The real `drover agent` binary against real PostgreSQL 15: a primary
//! whose agent cannot renew its lease fences itself (writes fail read-only,
//! its facts say writable=false) and stays fenced while the control plane is
//! unreachable; once the control plane is reachable again and confirms the
//! primary is still its service's writable primary, it is un-fenced.
//!
//! No server outlives a test, also when it fails: the agent is stopped by a
//! guard (SIGTERM, then SIGKILL), the local provider stops its servers when
//! dropped (`kill_servers_on_drop`), and a reaper kills whatever still runs
//! in the test's directory.

use drover_agent::probe::{connect, probe_instance};
use drover_model::{
    ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, ImageId, InstanceId, Role, ServiceId, Timestamp,
};
use drover_providers::local::{LocalConfig, LocalInstanceInfo, LocalProvider};
use drover_providers::Provider;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn fresh_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst) ^ ((std::process::id() as u64) << 32)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    // Short paths: unix socket paths are limited to ~100 bytes.
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap()
}

/// Kills, on drop, every process whose working directory is under `dir`
/// (PostgreSQL backends and pgbouncer): nothing outlives its test.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
                if cwd.starts_with(&self.0) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// The provider; every server stopped when dropped.
struct Local(Arc<LocalProvider>);

impl Drop for Local {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A running `drover agent`; SIGTERM then SIGKILL when dropped.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// `token`: the agent token it sends (as `DROVER_TOKEN`).
    fn spawn(data_dir: &Path, server: &str, token: &str, log: PathBuf) -> Agent {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("agent")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--server", server])
            .args(["--interval-ms", "200"])
            .args(["--lease-secs", "1"])
            .env("RUST_LOG", "info")
            .env_remove("DROVER_URL")
            .env("DROVER_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn drover agent");
        Agent { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns whether it exited with success within `timeout`.
    fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// What a write on a fresh connection to the instance's socket did:
/// Ok, or the SQLSTATE of the failure ("25006": read-only transaction).
async fn write(info: &LocalInstanceInfo) -> Result<(), String> {
    let client = connect(&info.socket_dir, info.port, "agent-test", Duration::from_secs(3)).await?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS agent_writes (x int); INSERT INTO agent_writes VALUES (1)")
        .await
        .map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_else(|| e.to_string()))
}

const READ_ONLY: &str = "25006";

async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

async fn provision_primary(provider: &LocalProvider, service_name: &str) -> InstanceId {
    let now = Timestamp(now_micros());
    let instance = InstanceId::new_at(now.0, fresh_id());
    let record = ActionRecord {
        id: ActionId::new_at(now.0, fresh_id()),
        service: ServiceId::new_at(now.0, fresh_id()),
        instance,
        kind: ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
            role: Role::Primary,
            zone: "local".into(),
            image: ImageId("postgres-15".into()),
            service_name: service_name.into(),
            sync: false,
            settings: Default::default(),
            engine: drover_model::EngineKind::Postgres,
            host: None,
            restore_from: None,
            read_slot: None,
            version: String::new(),
            storage_of: None,
        })),
        state: ActionState::Running,
        attempts: 1,
        cause: "test".into(),
        created_at: now,
        updated_at: now,
        deadline: now,
        error: None,
    };
    match provider.execute(record).await {
        ActionOutcome::Succeeded { .. } => instance,
        failed => panic!("provision failed: {failed:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_renew_its_lease_fences_its_primary_and_keeps_it_fenced() {
    let dir = temp_dir("dg");
    let _reaper = Reaper(dir.path().to_path_buf());
    let config = LocalConfig { kill_servers_on_drop: true, stop_timeout: Duration::from_secs(5), ..Default::default() };
    let local = Local(LocalProvider::open(dir.path(), config).expect("open the local provider"));
    let primary = provision_primary(&local.0, "fence").await;
    let info = local.0.instance_info(primary).unwrap();
    let postmaster = info.pid;
    assert!(postmaster.is_some());
    write(&info).await.expect("a fresh primary accepts writes");

    // Nothing listens there: no heartbeat is ever acknowledged.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut agent = Agent::spawn(dir.path(), &nowhere, "drv_unused", dir.path().join("agent.log"));
    let started = Instant::now();

    wait_for(Duration::from_secs(15), "the primary to refuse writes", || async {
        write(&info).await == Err(READ_ONLY.to_string())
    })
    .await;
    let fenced_after = started.elapsed();
    // One lease (1 s) after start, plus a round or two; never before the lease ran out.
    assert!(fenced_after >= Duration::from_secs(1), "fenced after {fenced_after:?}, before its lease ran out");
    // The agent's own probe: still a primary, not writable; what its beats carry.
    let facts = probe_instance(primary, &info, Duration::from_secs(2)).await.expect("the primary answers");
    assert_eq!(facts.role, Some(Role::Primary));
    assert_eq!(facts.writable, Some(false), "{facts:?}");

    // The control plane stays unreachable: the primary stays fenced.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(3) {
        assert_eq!(write(&info).await, Err(READ_ONLY.to_string()), "un-fenced without the control plane's word");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = agent.log();
    assert!(log.contains("primary fenced"), "{log}");
    assert!(!log.contains("un-fenced"), "{log}");
    // Read-only towards the servers: the agent never restarted the postmaster.
    assert_eq!(local.0.instance_info(primary).unwrap().pid, postmaster);

    let status = agent.terminate(Duration::from_secs(5)).expect("the agent exits on SIGTERM");
    assert!(status.success(), "agent exit status {status:?}; log:\n{}", agent.log());
    // Stopping the agent does not lift the fence.
    assert_eq!(write(&info).await, Err(READ_ONLY.to_string()));
}

/// A TCP proxy to the control plane that can be cut (connections dropped
/// at once) and healed: the agent's network partition.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    // Kept-alive connections are cut too.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { while !flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                    }
                });
            }
        });
        Proxy { url, cut, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_is_unfenced_only_when_the_control_plane_confirms_it() {
    let dir = temp_dir("dh");
    let _reaper = Reaper(dir.path().to_path_buf());
    let mut opts = drover_server::ServeOptions::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    opts.engine.default_provider = "local".into();
    opts.engine.install_timeout = Duration::from_secs(120);
    opts.engine.action_timeout = Duration::from_secs(60);
    opts.engine.backup_interval = None;
    opts.engine.verify_interval = None;
    opts.local = Some(LocalConfig {
        probe_interval: Duration::from_millis(300),
        kill_servers_on_drop: true,
        stop_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let server = drover_server::start(opts).await.expect("server starts");
    let api = server.url();
    wait_for(Duration::from_secs(20), "the server to be healthy", || async {
        reqwest::get(format!("{api}/healthz")).await.ok().is_some_and(|r| r.status() == 200)
    })
    .await;
    let http = drover_server::auth::admin_client(dir.path()).unwrap();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{api}{path}");
        async move {
            let response = http.get(url).send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    wait_for(Duration::from_secs(20), "the server to be healthy", || async {
        get("/healthz".into()).await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    let created = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "unfence", "engine": "postgres", "followers": 0, "provider": "local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text().await);
    let mut primary: Option<InstanceId> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while primary.is_none() {
        assert!(Instant::now() < deadline, "service never became available");
        if let Some((200, service)) = get("/v1/services/unfence".into()).await {
            if service["state"] == "available" {
                primary = service["instances"]
                    .as_array()
                    .and_then(|all| all.iter().find(|i| i["role"] == "primary" && i["state"] == "available"))
                    .and_then(|i| i["id"].as_str())
                    .and_then(|id| serde_json::from_value(json!(id)).ok());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let primary = primary.unwrap();
    let info = drover_agent::host::read_instances(dir.path())
        .unwrap()
        .into_iter()
        .find(|(id, _)| *id == primary)
        .map(|(_, info)| info)
        .expect("the registry lists the primary");
    write(&info).await.expect("the new primary accepts writes");

    let proxy = Proxy::start(server.addr).await;
    // This host's agent token.
    let created = http
        .post(format!("{api}/v1/tokens"))
        .json(&json!({"name": "agent-here", "role": "agent", "host": drover_server::host_name()}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let token = created.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let agent = Agent::spawn(dir.path(), &proxy.url, &token, dir.path().join("agent.log"));

    // Lease renewed every round: never fenced while reachable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    write(&info).await.expect("a primary whose agent renews its lease accepts writes");
    let log = agent.log();
    assert!(log.contains("lease renewed"), "{log}");
    assert!(!log.contains("fencing"), "{log}");

    // Cut off: fenced within a lease and a few rounds.
    proxy.cut.store(true, Ordering::SeqCst);
    wait_for(Duration::from_secs(15), "the cut-off primary to refuse writes", || async {
        write(&info).await == Err(READ_ONLY.to_string())
    })
    .await;
    // The control plane hears it (through the in-process heartbeats of the
    // same probe): the primary is not writable.
    let view_path = format!("/v1/instances/{primary}");
    wait_for(Duration::from_secs(10), "the control plane to see writable=false", || async {
        get(view_path.clone()).await.is_some_and(|(_, v)| v["facts"]["writable"] == false)
    })
    .await;
    // Still cut: still fenced.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        assert_eq!(write(&info).await, Err(READ_ONLY.to_string()), "un-fenced while cut off");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!agent.log().contains("un-fenced"));

    // Healed: the engine never failed it over, so it confirms this writable
    // primary and the agent lifts its fence.
    let (_, view) = get(view_path.clone()).await.expect("instance view");
    assert_eq!(view["writable"], true, "{view}");
    assert_eq!(view["fenced"], false, "{view}");
    proxy.cut.store(false, Ordering::SeqCst);
    wait_for(Duration::from_secs(15), "the confirmed primary to accept writes again", || async {
        write(&info).await.is_ok()
    })
    .await;
    let log = agent.log();
    assert!(log.contains("control plane confirmed this writable primary: un-fenced"), "{log}");
    wait_for(Duration::from_secs(10), "the control plane to see writable=true", || async {
        get(view_path.clone()).await.is_some_and(|(_, v)| v["facts"]["writable"] == true)
    })
    .await;

    drop(agent);
    drop(proxy);
    server.stop().await.expect("server stops");
}
