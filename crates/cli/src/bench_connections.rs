//! `drover bench connections`: a flood of idle and slow-header connections
//! from one machine against a real `drover serve` (a child process), while
//! `/healthz` and an authenticated `GET /v1/services` are timed on fresh
//! connections. The flood comes from child processes too (`drover bench
//! connections-attacker`): each process holds at most
//! [`PER_ATTACKER`] sockets, so neither side's open-files limit is the one
//! of the other, and each binds its own loopback source address, so the
//! ephemeral ports of one address (about 28,000) do not cap the flood.

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sockets per attacker process: below the 20,000 open files these
/// machines allow one process, with room for the runtime.
const PER_ATTACKER: usize = 15_000;
/// The budget the issue sets for `/healthz` and `GET /v1/services`.
const ANSWER_BUDGET: Duration = Duration::from_secs(1);
/// A slow-header connection sends one more byte this often.
const DRIBBLE: Duration = Duration::from_secs(1);
/// Connects in flight at once while an attacker opens its sockets.
const CONNECTS_IN_FLIGHT: usize = 256;

/// What the bench measured (its last output line, as JSON).
#[derive(Debug, serde::Serialize)]
struct Report {
    idle: usize,
    slow: usize,
    /// Attackers' sockets open when the timed rounds started.
    attacker_sockets_open: usize,
    rounds: usize,
    healthz_max_ms: f64,
    services_max_ms: f64,
    authenticated: bool,
    server_open_fds: usize,
    server_rss_before_bytes: u64,
    server_rss_bytes: u64,
    server_rss_peak_bytes: u64,
    ok: bool,
}

/// Runs the bench; an error when an answer failed or took over a second.
pub async fn connections(
    idle: usize,
    slow: usize,
    rounds: usize,
    max_connections: Option<usize>,
    reconnect: Duration,
) -> anyhow::Result<()> {
    drover_server::listen::raise_open_files_limit();
    let exe = std::env::current_exe().context("cannot find the drover binary")?;
    let data = tempfile::tempdir().context("cannot create a data dir")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let log = std::fs::File::create(data.path().join("serve.log"))?;
    let mut serve = Command::new(&exe);
    serve.args(["serve", "--no-local", "--listen", &addr.to_string()]).arg("--data-dir").arg(data.path());
    if let Some(n) = max_connections {
        serve.args(["--max-connections", &n.to_string()]);
    }
    let server = ChildGuard(serve.stdout(Stdio::null()).stderr(log).spawn().context("cannot start drover serve")?);
    let api = format!("http://{addr}");
    wait_healthy(&api, data.path()).await?;
    let token = std::fs::read_to_string(data.path().join("admin.token")).ok().map(|t| t.trim().to_string());
    let pid = server.0.id();
    let rss_before = proc_status(pid, "VmRSS:");
    println!("drover serve (pid {pid}) on {addr}; opening {idle} idle and {slow} slow-header connections");

    let processes = (idle + slow).div_ceil(PER_ATTACKER).max(1);
    let mut attackers = Vec::new();
    for i in 0..processes {
        let share = |n: usize| n / processes + usize::from(i < n % processes);
        let source = Ipv4Addr::new(127, 0, 0, 2 + i as u8);
        let child = Command::new(&exe)
            .args(["bench", "connections-attacker", "--target", &addr.to_string(), "--source", &source.to_string()])
            .args(["--idle", &share(idle).to_string(), "--slow", &share(slow).to_string()])
            .args(["--reconnect-ms", &reconnect.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start an attacker process")?;
        attackers.push(ChildGuard(child));
    }
    let opening = Instant::now();
    let mut open = 0;
    for attacker in &mut attackers {
        let stdout = attacker.0.stdout.take().ok_or_else(|| anyhow!("attacker without stdout"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let count: usize = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow!("an attacker failed: {line:?}"))?;
        open += count;
    }
    println!(
        "attackers opened their connections in {:.1}s ({open} were open at the end)",
        opening.elapsed().as_secs_f64()
    );

    let mut healthz_max = Duration::ZERO;
    let mut services_max = Duration::ZERO;
    let mut failures = Vec::new();
    for round in 0..rounds {
        // A fresh connection per request: the newcomer's case, the hardest.
        let http = drover_agent::tls::client_builder(None)?
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut took_ms = Vec::new();
        for (path, max) in [("/healthz", &mut healthz_max), ("/v1/services", &mut services_max)] {
            let mut request = http.get(format!("{api}{path}"));
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let started = Instant::now();
            let answer = request.send().await;
            let took = started.elapsed();
            took_ms.push(format!("{path} {:.1} ms", took.as_secs_f64() * 1000.0));
            *max = (*max).max(took);
            match answer {
                Ok(r) if r.status().is_success() && took <= ANSWER_BUDGET => {}
                Ok(r) => failures.push(format!("round {round}: {path} answered {} in {took:?}", r.status())),
                Err(e) => failures.push(format!("round {round}: {path} failed after {took:?}: {e}")),
            }
        }
        println!("round {round}: {}", took_ms.join(", "));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let report = Report {
        idle,
        slow,
        attacker_sockets_open: open,
        rounds,
        healthz_max_ms: healthz_max.as_secs_f64() * 1000.0,
        services_max_ms: services_max.as_secs_f64() * 1000.0,
        authenticated: token.is_some(),
        server_open_fds: fds,
        server_rss_before_bytes: rss_before,
        server_rss_bytes: proc_status(pid, "VmRSS:"),
        server_rss_peak_bytes: proc_status(pid, "VmHWM:"),
        ok: failures.is_empty(),
    };
    drop(attackers);
    drop(server);
    println!(
        "slowest /healthz {:.1} ms, slowest GET /v1/services {:.1} ms over {rounds} rounds; server: {fds} open fds, \
         RSS {:.1} MiB (peak {:.1} MiB, {:.1} MiB before the flood)",
        report.healthz_max_ms,
        report.services_max_ms,
        report.server_rss_bytes as f64 / 1048576.0,
        report.server_rss_peak_bytes as f64 / 1048576.0,
        report.server_rss_before_bytes as f64 / 1048576.0,
    );
    for failure in &failures {
        println!("FAILED {failure}");
    }
    println!("{}", serde_json::to_string(&report)?);
    if !failures.is_empty() {
        bail!("{} answers failed or took longer than {ANSWER_BUDGET:?}", failures.len());
    }
    Ok(())
}

async fn wait_healthy(api: &str, data_dir: &Path) -> anyhow::Result<()> {
    let http = drover_agent::tls::client_builder(None)?.timeout(Duration::from_secs(2)).build()?;
    let started = Instant::now();
    while !http.get(format!("{api}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        if started.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(data_dir.join("serve.log")).unwrap_or_default();
            bail!("drover serve did not become ready within 60 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A field of /proc/PID/status in bytes (0 when unreadable).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Kills the child when dropped (a failed bench leaves nothing behind).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One attacker process: opens `idle` connections that never send a byte
/// and `slow` ones that send a request head one byte a second, reopens any
/// the server closes after `reconnect`, prints `ready N` (N open) once all
/// were tried, and runs until its standard input closes.
pub async fn attacker(
    target: SocketAddr,
    source: IpAddr,
    idle: usize,
    slow: usize,
    reconnect: Duration,
) -> anyhow::Result<()> {
    drover_server::listen::raise_open_files_limit();
    let open = Arc::new(AtomicUsize::new(0));
    let tried = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
    for i in 0..idle + slow {
        let (open, tried, connects) = (open.clone(), tried.clone(), connects.clone());
        let is_slow = i >= idle;
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let stream = {
                    let _permit = connects.acquire().await;
                    connect(source, target).await
                };
                if first {
                    tried.fetch_add(1, Ordering::SeqCst);
                    first = false;
                }
                if let Ok(mut stream) = stream {
                    open.fetch_add(1, Ordering::SeqCst);
                    if is_slow {
                        dribble(&mut stream).await;
                    } else {
                        // Until the server closes it (or answers anything).
                        let _ = stream.read(&mut [0u8; 64]).await;
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                }
                tokio::time::sleep(reconnect).await;
            }
        });
    }
    while tried.load(Ordering::SeqCst) < idle + slow {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready {}", open.load(Ordering::SeqCst));
    // Until the bench closes our standard input (or dies).
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await??;
    Ok(())
}

async fn connect(source: IpAddr, target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Sends a request head that never ends, a byte per [`DRIBBLE`], until the
/// server answers or closes.
async fn dribble(stream: &mut tokio::net::TcpStream) {
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: drover\r\nX-Slow: ").await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(DRIBBLE);
    tick.tick().await;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = stream.read(&mut buf) => return,
            _ = tick.tick() => if stream.write_all(b"a").await.is_err() { return },
        }
    }
}
