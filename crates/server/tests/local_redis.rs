//! Redis services of the local provider end to end (issue 13): real
//! redis-server 7.0 processes (as user `drover` when run as root), HAProxy
//! as the stable URL, driven through the HTTP API of an in-process server.

mod common;

use common::{followers, poll, primary};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(120);

/// Kills, on drop, every process whose working directory is under `dir`
/// (redis-server chdirs to its data directory) and every HAProxy whose
/// config is there: nothing outlives its test, also when it fails.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        let dir = self.0.to_string_lossy().into_owned();
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cwd.starts_with(&self.0) || String::from_utf8_lossy(&cmdline).contains(&dir) {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

async fn start_local() -> (common::TestServer, Reaper) {
    start_local_tweaked(|_| {}).await
}

async fn start_local_with(redis_maxmemory: Option<u64>) -> (common::TestServer, Reaper) {
    start_local_tweaked(move |opts| {
        if let Some(local) = opts.local.as_mut() {
            local.redis_maxmemory = redis_maxmemory;
        }
    })
    .await
}

async fn start_local_tweaked(
    tweak: impl FnOnce(&mut drover_server::ServeOptions) + Send + 'static,
) -> (common::TestServer, Reaper) {
    let dir = tempfile::Builder::new().prefix("dr").tempdir_in("/tmp").unwrap();
    let t = common::start_in(dir, move |opts| {
        opts.engine.default_provider = "local".into();
        opts.engine.uncertain_after = Duration::from_secs(2);
        opts.engine.install_timeout = Duration::from_secs(120);
        opts.engine.action_timeout = Duration::from_secs(60);
        opts.engine.backup_interval = None;
        opts.engine.verify_interval = None;
        opts.local = Some(drover_providers::local::LocalConfig {
            probe_interval: Duration::from_millis(300),
            kill_servers_on_drop: true,
            ..Default::default()
        });
        tweak(opts);
    })
    .await;
    let reaper = Reaper(t.dir.path().to_path_buf());
    (t, reaper)
}

async fn create_redis(t: &common::TestServer, name: &str) -> Value {
    let (status, body) =
        t.post("/v1/services", json!({"name": name, "engine": "redis", "followers": 1, "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    wait_streaming(t, name, None).await
}

/// Waits until the service is available, its primary is not `not`, and a
/// follower streams from it.
async fn wait_streaming(t: &common::TestServer, name: &str, not: Option<&str>) -> Value {
    poll(SLOW, "a Redis primary with a streaming replica", || async {
        let s = t.service(name).await;
        let all =
            s["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["state"] == "available"));
        let p = primary(&s);
        let streams = followers(&s).iter().any(|f| f["facts"]["upstream_streaming"] == true);
        (s["state"] == "available" && all && streams && p["facts"]["writable"] == true && p["id"].as_str() != not)
            .then_some(s)
    })
    .await
}

async fn connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(3)));
    client.get_multiplexed_async_connection_with_config(&config).await.ok()
}

/// `SET w:N N` then `WAIT 1` through `url`: a write counts as acknowledged
/// when the WAIT on the same connection says a replica has it.
struct Writer {
    acked: Arc<Mutex<Vec<u64>>>,
    failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, s) = (acked.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next = 1u64;
            let mut connection = None;
            while !s.load(Ordering::SeqCst) {
                if connection.is_none() {
                    connection = connect(&url).await;
                    if connection.is_none() {
                        f.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let c = connection.as_mut().unwrap();
                let set: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("w:{next}")).arg(next).query_async(c).await;
                let replicas: redis::RedisResult<i64> = match set {
                    Ok(()) => redis::cmd("WAIT").arg(1).arg(1000).query_async(c).await,
                    Err(e) => Err(e),
                };
                match replicas {
                    Ok(n) if n >= 1 => {
                        a.lock().unwrap().push(next);
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(_) => {
                        // Written, not yet on a replica: not acknowledged; write it again.
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        connection = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Writer { acked, failures, stop, task }
    }
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    async fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failures.load(Ordering::SeqCst))
    }
}

/// How many of `acked` are missing on the service behind `url`.
async fn lost(url: &str, acked: &[u64]) -> usize {
    let mut c = connect(url).await.expect("connect to count");
    let mut missing = 0;
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("w:{n}")).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await.expect("MGET");
        missing += values.iter().zip(chunk).filter(|(v, n)| **v != Some(**n)).count();
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_primary_fails_over_behind_the_same_url_losing_no_acknowledged_write() {
    let (t, _reaper) = start_local().await;
    let s = create_redis(&t, "rd1").await;
    let url = s["url"].as_str().expect("a URL").to_string();
    assert!(url.starts_with("redis://app:"), "{url}");
    let old = primary(&s)["id"].as_str().unwrap().to_string();

    let writer = Writer::start(url.clone());
    poll(SLOW, "writes acknowledged before the fault", || async { (writer.acked() > 50).then_some(()) }).await;
    let (status, body) = t.post("/v1/chaos", json!({"instance": old, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    let at = writer.acked();
    let s = wait_streaming(&t, "rd1", Some(&old)).await;
    poll(SLOW, "writes after the failover", || async { (writer.acked() > at + 50).then_some(()) }).await;
    let (acked, _failures) = writer.finish().await;
    assert_eq!(s["url"].as_str(), Some(url.as_str()), "the URL never changes");
    assert_eq!(lost(&url, &acked).await, 0, "an acknowledged write was lost");
    // A new replica streams from the new primary (wait_streaming) and has the data.
    let events = t.events("service=rd1").await;
    assert!(events.iter().any(|e| e["to"] == "fenced" || e["cause"].as_str().is_some_and(|c| c.contains("fence"))));
}

/// A retry-free SET loop through the URL in raw RESP: every command's
/// answer that is not `+OK` (an error, a closed connection) is a failure.
/// `pooled`: one connection kept between commands, checked before each
/// one for a close by the server, as connection pools do (redis-py's);
/// else a new connection per command.
struct SetLoop {
    ok: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Why one SET through a [`SetLoop`] did not succeed: `closed` when the
/// connection ended before any byte of the reply (EOF, reset or a broken
/// pipe), which a pooled client may retry on a new connection.
struct SetError {
    closed: bool,
    error: std::io::Error,
}

impl From<std::io::Error> for SetError {
    fn from(error: std::io::Error) -> SetError {
        use std::io::ErrorKind::*;
        let closed = matches!(error.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe);
        SetError { closed, error }
    }
}

impl SetLoop {
    /// `SET s:<pooled>:N N` in a loop through the URL: a new connection per
    /// command, or (`pooled`) one kept connection checked for a close by
    /// the server before each command, the way a pool checks a connection
    /// out. A router can only close a kept connection between two of its
    /// commands, and a client may send its next command at that very
    /// moment: so the pooled loop, like go-redis (`MaxRetries` 3 on
    /// network errors) or Lettuce (commands re-sent after a reconnect),
    /// sends a SET again, once, on a new connection when its kept
    /// connection ended before any byte of the reply. SET is idempotent.
    /// Such retries are counted apart; any other error, and a retry that
    /// fails, count as failures.
    fn start(url: &str, pooled: bool) -> SetLoop {
        let rest = url.strip_prefix("redis://app:").unwrap();
        let (password, port) = rest.rsplit_once("@127.0.0.1:").unwrap();
        let (password, port) = (password.to_string(), port.parse::<u16>().unwrap());
        let (ok, failures, retried, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, f, r, s) = (ok.clone(), failures.clone(), retried.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut kept: Option<tokio::io::BufStream<tokio::net::TcpStream>> = None;
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                if let Some(stream) = &kept {
                    let mut byte = [0u8; 1];
                    if !matches!(stream.get_ref().try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    {
                        kept = None; // closed by the server while idle: connect again
                    }
                }
                let attempt = async {
                    let was_kept = kept.is_some();
                    match set_once(kept.take(), port, &password, pooled, n).await {
                        Err(e) if e.closed && was_kept => {
                            r.fetch_add(1, Ordering::SeqCst);
                            eprintln!(
                                "set loop (pooled): kept connection closed under SET {n} ({}): sent again",
                                e.error
                            );
                            set_once(None, port, &password, pooled, n).await
                        }
                        other => other,
                    }
                };
                match tokio::time::timeout(Duration::from_secs(15), attempt).await {
                    Ok(Ok(stream)) => {
                        o.fetch_add(1, Ordering::SeqCst);
                        if pooled {
                            kept = Some(stream);
                        }
                    }
                    Ok(Err(e)) => {
                        eprintln!("set loop (pooled: {pooled}): {}", e.error);
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        SetLoop { ok, failures, retried, stop, task }
    }
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
    /// (succeeded, failed, sent again after a kept connection closed).
    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (self.ok.load(Ordering::SeqCst), self.failures.load(Ordering::SeqCst), self.retried.load(Ordering::SeqCst))
    }
}

/// One `SET s:<pooled>:n n` on `kept` or a new authenticated connection;
/// the connection back when the reply was `+OK`.
async fn set_once(
    kept: Option<tokio::io::BufStream<tokio::net::TcpStream>>,
    port: u16,
    password: &str,
    pooled: bool,
    n: u64,
) -> Result<tokio::io::BufStream<tokio::net::TcpStream>, SetError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = match kept {
        Some(stream) => stream,
        None => {
            let mut stream = tokio::io::BufStream::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
            stream.write_all(format!("AUTH app {password}\r\n").as_bytes()).await?;
            stream.flush().await?;
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            if line != "+OK\r\n" {
                return Err(SetError { closed: false, error: std::io::Error::other(format!("AUTH: {line:?}")) });
            }
            stream
        }
    };
    let (key, value) = (format!("s:{pooled}:{n}"), n.to_string());
    let command = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len());
    stream.write_all(command.as_bytes()).await?;
    stream.flush().await?;
    let mut line = String::new();
    let read = stream.read_line(&mut line).await?;
    if read == 0 {
        return Err(SetError::from(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
    }
    if line != "+OK\r\n" {
        return Err(SetError { closed: false, error: std::io::Error::other(format!("SET: {line:?}")) });
    }
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switchover_hands_over_with_failover_failing_no_command_and_losing_no_acknowledged_write() {
    let (t, _reaper) = start_local().await;
    let s = create_redis(&t, "rdsw").await;
    let url = s["url"].as_str().unwrap().to_string();
    let old = primary(&s)["id"].as_str().unwrap().to_string();
    let writer = Writer::start(url.clone());
    let per_command = SetLoop::start(&url, false);
    let pooled = SetLoop::start(&url, true);
    poll(SLOW, "writes before the switchover", || async {
        (writer.acked() > 50 && per_command.ok() > 50 && pooled.ok() > 50).then_some(())
    })
    .await;
    let (status, body) = t.post("/v1/services/rdsw/switchover", json!({})).await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let at = (writer.acked(), per_command.ok(), pooled.ok());
    wait_streaming(&t, "rdsw", Some(&old)).await;
    poll(SLOW, "writes after the switchover", || async {
        (writer.acked() > at.0 + 50 && per_command.ok() > at.1 + 50 && pooled.ok() > at.2 + 50).then_some(())
    })
    .await;
    let (acked, writer_failures) = writer.finish().await;
    let (per_command_ok, per_command_failed, _) = per_command.finish().await;
    let (pooled_ok, pooled_failed, pooled_retried) = pooled.finish().await;
    assert_eq!(lost(&url, &acked).await, 0, "an acknowledged write was lost");
    println!(
        "switchover: connection per command {per_command_ok} ok / {per_command_failed} failed; pooled \
         {pooled_ok} ok / {pooled_failed} failed ({pooled_retried} sent again after its kept connection closed \
         under it); multiplexed SET+WAIT writer {} acknowledged / {writer_failures} \
         failed or unacknowledged (its idle connection closed, it does not check before a command)",
        acked.len()
    );
    assert_eq!(per_command_failed, 0, "a command failed across the switchover");
    assert_eq!(pooled_failed, 0, "a pooled client's command failed across the switchover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_the_url_the_application_cannot_run_admin_or_dangerous_commands() {
    let (t, _reaper) = start_local().await;
    let s = create_redis(&t, "rdsec").await;
    let url = s["url"].as_str().unwrap().to_string();
    let mut c = match connect(&url).await {
        Some(c) => c,
        None => {
            let client = redis::Client::open(url.as_str()).unwrap();
            let error = client.get_multiplexed_async_connection().await.err();
            let mut logs = String::new();
            for d in std::fs::read_dir(t.dir.path().join("local/redis/routers")).unwrap().flatten() {
                logs += &std::fs::read_to_string(d.path().join("haproxy.log")).unwrap_or_default();
                logs += &std::fs::read_to_string(d.path().join("haproxy.cfg")).unwrap_or_default();
            }
            panic!("cannot connect as the application to {url}: {error:?}; router: {logs}");
        }
    };
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.expect("the app writes");
    let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.expect("the app reads");
    assert_eq!(v, "v");
    let refused: &[&[&str]] = &[
        &["CONFIG", "SET", "dir", "/tmp"],
        &["CONFIG", "GET", "*"],
        &["MODULE", "LOAD", "/tmp/evil.so"],
        &["ACL", "SETUSER", "evil", "on", ">x", "+@all"],
        &["ACL", "LIST"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN", "NOSAVE"],
        &["FLUSHALL"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["FAILOVER"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["BGSAVE"],
        &["MONITOR"],
        &["KEYS", "*"],
    ];
    for command in refused {
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let answer: redis::RedisResult<redis::Value> = cmd.query_async(&mut c).await;
        let error = answer.expect_err(&format!("{command:?} must be refused"));
        // NOPERM from the ACL; MODULE and DEBUG are also off in the server itself
        // (`enable-module-command`/`enable-debug-command no`, Redis 7 defaults).
        let text = error.to_string();
        assert!(text.to_uppercase().contains("NOPERM") || text.contains("command not allowed"), "{command:?}: {text}");
    }
    // Still alive and serving after all that.
    let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.expect("still serving");
    assert_eq!(v, "v");
    // Nobody gets in without the password: the default user is off.
    let port = url.rsplit(':').next().unwrap();
    let anonymous = connect(&format!("redis://127.0.0.1:{port}")).await;
    if let Some(mut anonymous) = anonymous {
        let answer: redis::RedisResult<String> = redis::cmd("GET").arg("k").query_async(&mut anonymous).await;
        assert!(answer.is_err(), "an unauthenticated client read a key");
    }
    let wrong = connect(&url.replacen("redis://app:", "redis://app:x", 1)).await;
    assert!(wrong.is_none(), "a wrong password was accepted");
}

/// `SET <prefix>N N` then `WAIT 1 1000` in a loop: through one connection
/// kept for the whole run (`reconnect_every` 0), or through a new
/// connection every `reconnect_every` commands to whatever URL `url` holds
/// then. Every error, refused login or write not on a replica counts as a
/// failure; acknowledged writes are kept to be looked for afterwards.
struct Loader {
    acked: Arc<Mutex<Vec<u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Loader {
    fn start(prefix: &'static str, url: Arc<Mutex<String>>, reconnect_every: u64) -> Loader {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, s) = (acked.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let fail = |what: String| f.lock().unwrap().push(format!("{what} at {:?}", std::time::SystemTime::now()));
            let mut next = 1u64;
            let mut connection = None;
            while !s.load(Ordering::SeqCst) {
                if reconnect_every > 0 && next.is_multiple_of(reconnect_every) {
                    connection = None;
                }
                if connection.is_none() {
                    let target = url.lock().unwrap().clone();
                    connection = connect(&target).await;
                    if connection.is_none() {
                        fail(format!("cannot connect to {}", target.split('@').nth(1).unwrap_or_default()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let c = connection.as_mut().unwrap();
                let set: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("{prefix}{next}")).arg(next).query_async(c).await;
                let replicas: redis::RedisResult<i64> = match set {
                    Ok(()) => redis::cmd("WAIT").arg(1).arg(1000).query_async(c).await,
                    Err(e) => Err(e),
                };
                match replicas {
                    Ok(n) if n >= 1 => {
                        a.lock().unwrap().push(next);
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(_) => fail(format!("{prefix}{next} not on a replica within 1 s")),
                    Err(e) => {
                        fail(format!("{prefix}{next}: {e}"));
                        connection = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Loader { acked, failures, stop, task }
    }
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    async fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (acked, failures)
    }
}

/// How many of `acked` (written as `<prefix>N`) are missing behind `url`.
async fn lost_of(url: &str, prefix: &str, acked: &[u64]) -> usize {
    let mut c = connect(url).await.expect("connect to count");
    let mut missing = 0;
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("{prefix}{n}")).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await.expect("MGET");
        missing += values.iter().zip(chunk).filter(|(v, n)| **v != Some(**n)).count();
    }
    missing
}

/// The user and the host:port of a `redis://user:password@host:port` URL.
fn user_and_address(url: &str) -> (String, String) {
    let rest = url.strip_prefix("redis://").unwrap();
    let (userinfo, address) = rest.split_once('@').unwrap();
    (userinfo.split_once(':').unwrap().0.to_string(), address.to_string())
}

/// The `port` line and the text of every member's redis.conf.
fn member_configs(t: &common::TestServer) -> Vec<(u16, String)> {
    let mut configs = Vec::new();
    for d in std::fs::read_dir(t.dir.path().join("local/redis/instances")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(d.path().join("redis.conf")) else { continue };
        let port = text.lines().find_map(|l| l.strip_prefix("port ")).and_then(|p| p.trim().parse().ok()).unwrap();
        configs.push((port, text));
    }
    configs
}

/// Issue 10 item 8 for Redis: a rotation under a steady write load through
/// the service URL. One client keeps its connection (logged in as the old
/// user) until the overlap is nearly over, as a pool drains; one reconnects
/// every 20 commands with whatever the URL is then. No command fails, every
/// acknowledged write is there, both users are on every member during the
/// overlap, the old password is refused after it (everywhere), and it is
/// all audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_redis_credentials_under_write_load_fails_no_command_and_refuses_the_old_password_after_the_overlap() {
    const OVERLAP: Duration = Duration::from_secs(6);
    let (t, _reaper) = start_local_tweaked(|opts| opts.engine.rotation_overlap = OVERLAP).await;
    let s = create_redis(&t, "rdrot").await;
    let old_url = s["url"].as_str().unwrap().to_string();
    assert!(old_url.starts_with("redis://app:"), "{old_url}");
    let current = Arc::new(Mutex::new(old_url.clone()));
    let kept = Loader::start("kept:", Arc::new(Mutex::new(old_url.clone())), 0);
    let fresh = Loader::start("fresh:", current.clone(), 20);
    poll(SLOW, "both clients write before the rotation", || async {
        (kept.acked() > 50 && fresh.acked() > 50).then_some(())
    })
    .await;

    let (status, action) = t.post("/v1/services/rdrot/credentials/rotate", json!({})).await;
    assert_eq!(status, 202, "{action}");
    let (status, body) = t.post("/v1/services/rdrot/credentials/rotate", json!({})).await;
    assert_eq!(status, 409, "a second rotation while the first runs or drains: {body}");
    let new_url = poll(SLOW, "the URL names the new credential", || async {
        let url = t.service("rdrot").await["url"].as_str().unwrap_or_default().to_string();
        (url != old_url).then_some(url)
    })
    .await;
    let rotated = std::time::Instant::now();
    *current.lock().unwrap() = new_url.clone();
    let (old_user, old_address) = user_and_address(&old_url);
    let (new_user, new_address) = user_and_address(&new_url);
    assert_eq!((old_user.as_str(), new_user.as_str()), ("app", "app_b"), "{old_url} -> {new_url}");
    assert_eq!(new_address.split(':').next_back(), old_address.split(':').next_back(), "the same router port");

    // In the overlap both users log in on every member, and every
    // member's redis.conf names both (a restart keeps them).
    let password = |url: &str| url.split('@').next().unwrap().rsplit(':').next().unwrap().to_string();
    let configs = member_configs(&t);
    assert_eq!(configs.len(), 2, "a primary and a replica");
    for (port, text) in &configs {
        assert!(text.contains("user app on #") && text.contains("user app_b on #"), "{port}: {text}");
        assert!(!text.contains(&password(&new_url)) && !text.contains(&password(&old_url)), "a password in clear");
        for url in [&old_url, &new_url] {
            let direct = url
                .replace(&new_address, &format!("127.0.0.1:{port}"))
                .replace(&old_address, &format!("127.0.0.1:{port}"));
            assert!(
                connect(&direct).await.is_some(),
                "{} logs in on port {port} in the overlap",
                user_and_address(url).0
            );
        }
    }
    assert!(connect(&old_url).await.is_some(), "the old URL works in the overlap");

    // The kept connection drains before the overlap ends.
    tokio::time::sleep((OVERLAP / 2).saturating_sub(rotated.elapsed())).await;
    let (kept_acked, kept_failures) = kept.finish().await;
    poll(SLOW, "the old password refused after the overlap", || async {
        connect(&old_url).await.is_none().then_some(())
    })
    .await;
    let refused_after = rotated.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fresh_acked, fresh_failures) = fresh.finish().await;
    eprintln!(
        "Redis rotation under load: kept connection {} acknowledged / {} failed, reconnecting client {} \
         acknowledged / {} failed; the old password refused {refused_after:?} after the URL changed (overlap \
         {OVERLAP:?})",
        kept_acked.len(),
        kept_failures.len(),
        fresh_acked.len(),
        fresh_failures.len()
    );
    assert!(kept_failures.is_empty(), "the kept connection failed: {kept_failures:?}");
    assert!(fresh_failures.is_empty(), "the reconnecting client failed: {fresh_failures:?}");
    assert!(refused_after >= OVERLAP - Duration::from_secs(1), "revoked {refused_after:?} after: overlap cut short");
    assert!(kept_acked.len() > 50 && fresh_acked.len() > 50);
    assert_eq!(lost_of(&new_url, "kept:", &kept_acked).await, 0, "an acknowledged write of the kept client was lost");
    assert_eq!(lost_of(&new_url, "fresh:", &fresh_acked).await, 0, "an acknowledged write of the other was lost");

    // Revoked on every member, and gone from every config file.
    for (port, _) in member_configs(&t) {
        let direct = |url: &str, address: &str| url.replace(address, &format!("127.0.0.1:{port}"));
        assert!(connect(&direct(&old_url, &old_address)).await.is_none(), "the old user still logs in on {port}");
        assert!(connect(&direct(&new_url, &new_address)).await.is_some(), "the new user logs in on {port}");
    }
    for (port, text) in member_configs(&t) {
        assert!(!text.contains("user app on #") && text.contains("user app_b on #"), "{port}: {text}");
    }
    let s = t.service("rdrot").await;
    assert!(s["credentials"]["last_rotated_at"].is_string(), "{}", s["credentials"]);
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let audited = |command: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["command"] == command && e["target"] == "rdrot" && e["outcome"] == "ok")
    };
    assert!(audited("services.rotate_credentials"), "{audit:#}");
    assert!(audited("services.revoke_previous_credentials"), "{audit:#}");
}

/// The schedule rotates a Redis service's credential and revokes the old
/// one after the overlap, audited as the schedule's (the PostgreSQL test's
/// twin).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_redis_rotation_changes_the_password_and_the_old_one_is_refused_after_the_overlap() {
    let (t, _reaper) = start_local_tweaked(|opts| {
        opts.engine.credential_rotation = Some(Duration::from_secs(10));
        opts.engine.rotation_overlap = Duration::from_secs(5);
    })
    .await;
    let before = create_redis(&t, "rdsched").await;
    assert!(before["credentials"]["next_rotation_at"].is_string(), "scheduled: {}", before["credentials"]);
    let old_url = t.service("rdsched").await["url"].as_str().unwrap().to_string();
    let mut c = connect(&old_url).await.expect("the URL works");
    let _: () = redis::cmd("SET").arg("kept").arg(1).query_async(&mut c).await.unwrap();
    drop(c);
    let new_url = poll(SLOW, "the schedule rotates the URL's credential", || async {
        let url = t.service("rdsched").await["url"].as_str().unwrap_or_default().to_string();
        (url != old_url).then_some(url)
    })
    .await;
    let rotated = std::time::Instant::now();
    assert_ne!(user_and_address(&new_url).0, user_and_address(&old_url).0, "{old_url} -> {new_url}");
    connect(&old_url).await.expect("the old password works in the overlap");
    let mut c = connect(&new_url).await.expect("the new URL works");
    let kept: u64 =
        redis::cmd("GET").arg("kept").query_async(&mut c).await.expect("the new user reads the old one's key");
    assert_eq!(kept, 1);
    drop(c);
    poll(SLOW, "the old password refused after the overlap", || async {
        connect(&old_url).await.is_none().then_some(())
    })
    .await;
    let refused_after = rotated.elapsed();
    assert!(refused_after >= Duration::from_secs(4), "revoked {refused_after:?} after the URL changed");
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let by_schedule = |command: &str| {
        audit.as_array().unwrap().iter().any(|e| {
            e["actor"] == "schedule" && e["command"] == command && e["target"] == "rdsched" && e["outcome"] == "ok"
        })
    };
    assert!(by_schedule("services.rotate_credentials"), "{audit:#}");
    assert!(by_schedule("services.revoke_previous_credentials"), "{audit:#}");
    eprintln!(
        "scheduled Redis rotation: the old password refused {refused_after:?} after the URL changed (overlap 5 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rdb_backup_restores_in_a_scratch_server_and_a_corrupted_one_is_caught() {
    let (t, _reaper) = start_local().await;
    let s = create_redis(&t, "rdbk").await;
    let url = s["url"].as_str().unwrap().to_string();
    // The backups facet, with real causes: a new service has no backup (crit).
    let (_, checks) = t.get("/v1/services/rdbk/checks").await;
    assert_eq!(checks["backups"]["status"], "crit", "{}", checks["backups"]);
    assert!(checks["backups"]["summary"].as_str().unwrap().contains("no backup exists"), "{}", checks["backups"]);
    let mut c = connect(&url).await.expect("connect");
    for n in 0..500u32 {
        let _: () = redis::cmd("SET").arg(format!("k:{n}")).arg(n).query_async(&mut c).await.unwrap();
    }
    let (status, body) = t.post("/v1/services/rdbk/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "backup recorded", || async {
        let s = t.service("rdbk").await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;
    let repo = t.dir.path().join("local/redis/backups").join(s["id"].as_str().unwrap());
    let rdbs: Vec<_> = std::fs::read_dir(&repo)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rdb"))
        .collect();
    assert_eq!(rdbs.len(), 1, "{rdbs:?}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(rdbs[0].with_extension("json")).unwrap()).expect("a manifest");
    assert_eq!(manifest["keys"], 500, "{manifest}");
    // A backup nobody restored yet: warn, and the remedy named.
    let (_, checks) = t.get("/v1/services/rdbk/checks").await;
    assert_eq!(checks["backups"]["status"], "warn", "{}", checks["backups"]);
    assert!(checks["backups"]["summary"].as_str().unwrap().contains("no restore"), "{}", checks["backups"]);
    let (status, body) = t.post("/v1/services/rdbk/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "restore test passed", || async {
        let s = t.service("rdbk").await;
        (s["backups"]["last_verify_ok"] == true).then_some(())
    })
    .await;
    let events = t.events("service=rdbk").await;
    let passed = events.iter().filter_map(|e| e["cause"].as_str()).find(|c| c.contains("restore test passed"));
    assert!(passed.is_some_and(|c| c.contains("500 keys as recorded")), "{passed:?}");
    check_until(&t, "rdbk", "backups", &["ok"]).await;

    // Flip bytes in the middle of the snapshot.
    let mut bytes = std::fs::read(&rdbs[0]).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0xff;
    }
    std::fs::write(&rdbs[0], bytes).unwrap();
    let (status, body) = t.post("/v1/services/rdbk/backups/verify", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let events = poll(SLOW, "the corrupted backup is caught", || async {
        let events = t.events("service=rdbk").await;
        events.iter().any(|e| e["cause"].as_str().is_some_and(|c| c.contains("restore test FAILED"))).then_some(events)
    })
    .await;
    let failed = events.iter().filter_map(|e| e["cause"].as_str()).find(|c| c.contains("restore test FAILED"));
    assert!(failed.is_some_and(|c| c.contains("corrupt")), "{failed:?}");
    // The remedy: a fresh backup, and its restore test passes.
    poll(SLOW, "a fresh backup tested after the failure", || async {
        let s = t.service("rdbk").await;
        (s["backups"]["last_verify_ok"] == true).then_some(())
    })
    .await;
}

async fn check_until(t: &common::TestServer, name: &str, facet: &str, want: &[&str]) -> Value {
    let path = format!("/v1/services/{name}/checks");
    poll(SLOW, &format!("{facet} check {want:?}"), || async {
        let (status, checks) = t.get(&path).await;
        (status == 200 && want.contains(&checks[facet]["status"].as_str().unwrap_or(""))).then_some(checks)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_checks_turn_from_ok_to_warn_or_crit_with_real_causes() {
    let (t, _reaper) = start_local_with(Some(8 << 20)).await;
    let s = create_redis(&t, "rdck").await;
    let url = s["url"].as_str().unwrap().to_string();
    for facet in ["replication", "performance", "persistence", "security", "router"] {
        let checks = check_until(&t, "rdck", facet, &["ok"]).await;
        println!("{facet}: {}", checks[facet]);
    }

    // Replication: the replica hangs (SIGSTOP); its acknowledgements stop.
    let follower = followers(&s)[0]["id"].as_str().unwrap().to_string();
    let (status, body) = t.post("/v1/chaos", json!({"instance": follower, "fault": "hang"})).await;
    assert_eq!(status, 202, "{body}");
    let checks = check_until(&t, "rdck", "replication", &["warn", "crit"]).await;
    println!("replication after the replica hung: {}", checks["replication"]);
    let _ = t.post("/v1/chaos", json!({"instance": follower, "fault": "heal"})).await;
    let s = wait_streaming(&t, "rdck", None).await;
    check_until(&t, "rdck", "replication", &["ok"]).await;

    // Persistence: the primary's data directory refuses writes; a BGSAVE fails.
    let primary_id = primary(&s)["id"].as_str().unwrap().to_string();
    let data = t.dir.path().join("local/redis/instances").join(&primary_id).join("data");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    let (status, body) = t.post("/v1/services/rdck/backups", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let checks = check_until(&t, "rdck", "persistence", &["crit"]).await;
    println!("persistence with a read-only data directory: {}", checks["persistence"]);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Redis refuses writes after a failed snapshot until one succeeds: the next backup.
    poll(SLOW, "the failed backup recorded", || async {
        let (_, checks) = t.get("/v1/services/rdck/checks").await;
        checks["backups"]["status"].is_string().then_some(())
    })
    .await;
    poll(SLOW, "a backup accepted again", || async {
        let (status, _) = t.post("/v1/services/rdck/backups", json!({})).await;
        (status == 202).then_some(())
    })
    .await;
    check_until(&t, "rdck", "persistence", &["ok"]).await;

    // Memory: write through the URL until maxmemory (8 MiB) is nearly reached.
    let mut c = connect(&url).await.expect("connect");
    let value = "x".repeat(8192);
    let mut n = 0u32;
    let checks = loop {
        for _ in 0..50 {
            n += 1;
            let _: redis::RedisResult<()> =
                redis::cmd("SET").arg(format!("m:{n}")).arg(&value).query_async(&mut c).await;
        }
        let (_, checks) = t.get("/v1/services/rdck/checks").await;
        if checks["performance"]["status"] == "crit" {
            break checks;
        }
        assert!(n < 5000, "8 MiB written and the memory check is still {}", checks["performance"]);
    };
    println!("performance near maxmemory: {}", checks["performance"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_replica_or_a_silent_primary_whose_replicas_stream_causes_no_failover() {
    let (t, _reaper) = start_local().await;
    let s = create_redis(&t, "rdnp").await;
    let url = s["url"].as_str().unwrap().to_string();
    let primary_id = primary(&s)["id"].as_str().unwrap().to_string();
    let follower = followers(&s)[0]["id"].as_str().unwrap().to_string();
    let writer = Writer::start(url.clone());
    poll(SLOW, "writes before the partitions", || async { (writer.acked() > 20).then_some(()) }).await;
    // Each member in turn stops heartbeating to the control plane for
    // well past `uncertain_after` (2 s) while the data path still works.
    for (who, id) in [("the replica", &follower), ("the primary", &primary_id)] {
        let (status, body) = t.post("/v1/chaos", json!({"instance": id, "fault": "partition"})).await;
        assert_eq!(status, 202, "{body}");
        let at = writer.acked();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(writer.acked() > at + 20, "writes through the URL stopped while {who} was partitioned");
        let (status, body) = t.post("/v1/chaos", json!({"instance": id, "fault": "heal"})).await;
        assert_eq!(status, 202, "{body}");
    }
    let s = wait_streaming(&t, "rdnp", None).await;
    let (acked, _) = writer.finish().await;
    assert_eq!(primary(&s)["id"].as_str(), Some(primary_id.as_str()), "the primary changed");
    let events = t.events("service=rdnp").await;
    let moved: Vec<&str> = events
        .iter()
        .filter_map(|e| e["cause"].as_str())
        .filter(|c| c.contains("fence") || c.starts_with("promoted"))
        .collect();
    assert!(moved.is_empty(), "a failover was started: {moved:?}");
    assert_eq!(lost(&url, &acked).await, 0);
}

/// Issue 13 item 4: a plan with `sync: true` asks every member to refuse
/// writes as primary while no replica acknowledged within 2 s, so a
/// primary cut off from its replicas fences itself. The replica hangs
/// (SIGSTOP): a write through the URL is refused with NOREPLICAS; it heals:
/// writes are taken again. Without `sync` (every other test here) a hung
/// replica leaves the primary writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_plan_makes_a_primary_without_a_close_replica_refuse_writes() {
    let (t, _reaper) = start_local().await;
    let (status, body) = t
        .post(
            "/v1/services",
            json!({"name": "rdsync", "engine": "redis", "followers": 1, "sync": true, "provider": "local"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let s = wait_streaming(&t, "rdsync", None).await;
    for (port, text) in member_configs(&t) {
        assert!(text.contains("min-replicas-to-write 1\n"), "{port}: {text}");
        assert!(text.contains("min-replicas-max-lag 2\n"), "{port}: {text}");
    }
    let url = s["url"].as_str().unwrap().to_string();
    let write = |n: u32| {
        let url = url.clone();
        async move {
            let mut c = connect(&url).await.ok_or_else(|| "cannot connect".to_string())?;
            redis::cmd("SET").arg(format!("s:{n}")).arg(n).query_async::<()>(&mut c).await.map_err(|e| e.to_string())
        }
    };
    write(0).await.expect("a write with a streaming replica");

    let follower = followers(&s)[0]["id"].as_str().unwrap().to_string();
    let (status, body) = t.post("/v1/chaos", json!({"instance": follower, "fault": "hang"})).await;
    assert_eq!(status, 202, "{body}");
    let hung = std::time::Instant::now();
    let mut n = 0;
    let refused = poll(SLOW, "a write refused while the only replica hangs", || {
        n += 1;
        let attempt = write(n);
        async move { attempt.await.err() }
    })
    .await;
    println!("refused {:?} after the replica hung: {refused}", hung.elapsed());
    assert!(refused.contains("NOREPLICAS"), "{refused}");

    let (status, body) = t.post("/v1/chaos", json!({"instance": follower, "fault": "heal"})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "writes taken again once the replica acknowledges", || {
        n += 1;
        let attempt = write(n);
        async move { attempt.await.ok() }
    })
    .await;
}

/// Issue 13 item 6, the security facet with real causes: an operator who
/// holds Drover's admin password (opened here with the data dir's key, as
/// a break-glass hand would) turns protected mode off (warn), then opens
/// the default user without a password (crit); undone, the check is ok.
/// And the router facet: HAProxy frozen (SIGSTOP) answers no admin
/// command (warn); thawed, ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_security_and_router_checks_turn_warn_and_crit_with_real_causes() {
    let (t, _reaper) = start_local().await;
    create_redis(&t, "rdsec").await;
    check_until(&t, "rdsec", "security", &["ok"]).await;

    let registry: Value =
        serde_json::from_slice(&std::fs::read(t.dir.path().join("local/redis.json")).unwrap()).unwrap();
    let sealed = registry["services"]
        .as_object()
        .unwrap()
        .values()
        .find(|s| s["name"] == "rdsec")
        .and_then(|s| s["admin_password"].as_str())
        .expect("the service's sealed admin password")
        .to_string();
    let (key, _) = drover_secrets::SecretKey::load_or_create(t.dir.path()).unwrap();
    let admin = key.open_str("service/rdsec/redis/drover", &sealed).expect("the admin password opens");
    let mut members = Vec::new();
    for (port, _) in member_configs(&t) {
        members.push(connect(&format!("redis://drover:{admin}@127.0.0.1:{port}")).await.expect("admin login"));
    }
    let everywhere = |args: &'static [&'static str]| {
        let mut members = members.clone();
        async move {
            for c in &mut members {
                let mut cmd = redis::cmd(args[0]);
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                cmd.query_async::<()>(c).await.unwrap();
            }
        }
    };

    everywhere(&["CONFIG", "SET", "protected-mode", "no"]).await;
    let checks = check_until(&t, "rdsec", "security", &["warn"]).await;
    println!("protected mode off: {}", checks["security"]);
    assert!(checks["security"]["summary"].as_str().unwrap().contains("protected mode is off"));

    everywhere(&["ACL", "SETUSER", "default", "on", "nopass"]).await;
    let checks = check_until(&t, "rdsec", "security", &["crit"]).await;
    println!("default user open: {}", checks["security"]);
    assert!(checks["security"]["summary"].as_str().unwrap().contains("default user is on without a password"));

    everywhere(&["ACL", "SETUSER", "default", "off"]).await;
    everywhere(&["CONFIG", "SET", "protected-mode", "yes"]).await;
    check_until(&t, "rdsec", "security", &["ok"]).await;

    check_until(&t, "rdsec", "router", &["ok"]).await;
    let service_id = t.service("rdsec").await["id"].as_str().unwrap().to_string();
    let pid_file = t.dir.path().join("local/redis/routers").join(&service_id).join("haproxy.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let checks = check_until(&t, "rdsec", "router", &["warn", "crit"]).await;
    signal("-CONT");
    println!("router frozen: {}", checks["router"]);
    check_until(&t, "rdsec", "router", &["ok"]).await;
}
