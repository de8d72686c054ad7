//! `drover bench failover --engine postgres --fault host-crash|host-hang`
//! (issue 11): failovers of a whole host under a steady write load. A
//! control plane with no host of its own (`--no-local`, in this process)
//! and three `drover agent --host` processes standing for hosts h1..h3 on
//! 127.0.0.2..4 in three zones; a PostgreSQL service with a synchronous
//! follower on two of them. Each run crashes (kill -9 of the agent and
//! everything it runs) or freezes (SIGSTOP of all of it) the primary's host
//! through `POST /v1/chaos {"host"}` and times the first write through the
//! same URL on the new primary; then the host comes back (its agent started
//! again over the same data dir, or the frozen tree thawed) and must not
//! take a write as a primary, and the next run waits for a new follower on
//! another host. At the end every acknowledged write is looked for.

use crate::bench_writes::{median_max, service_json, Writer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: [(&str, &str, &str); 3] =
    [("h1", "zone-a", "127.0.0.2"), ("h2", "zone-b", "127.0.0.3"), ("h3", "zone-c", "127.0.0.4")];

/// One `drover agent --host` standing for a host.
struct Host {
    name: &'static str,
    zone: &'static str,
    address: &'static str,
    dir: PathBuf,
    child: Option<Child>,
}

impl Host {
    fn start(&mut self, api: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["agent", "--server", api, "--host", self.name, "--zone", self.zone, "--address", self.address])
            .args(["--capacity", "4"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--token-file")
            .arg(self.dir.join("agent.token"))
            .current_dir(&self.dir)
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_DATA_DIR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Reaps the agent once it is gone (a host crash killed it).
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where instance `id` of this host listens, from its registry.
    fn port_of(&self, id: &str) -> Option<u16> {
        let text = std::fs::read_to_string(self.dir.join("data/local/state.json")).ok()?;
        let registry: serde_json::Value = serde_json::from_str(&text).ok()?;
        u16::try_from(registry["instances"][id]["port"].as_u64()?).ok()
    }
}

/// Sends `signal` to every process whose working directory is under `dir`
/// (an agent host's tree: the agent and its servers).
fn signal_under(dir: &Path, signal: i32) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cwd = std::fs::read_link(entry.path().join("cwd")).ok();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let named = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
        if cwd.is_some_and(|c| c.starts_with(dir)) || named {
            // SAFETY: kill(2) with a pid read from /proc and a valid signal.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

pub async fn failover(fault: &str, runs: usize) -> anyhow::Result<()> {
    let chaos = match fault {
        "host-crash" => "crash",
        "host-hang" => "hang",
        other => anyhow::bail!("--fault must be host-crash or host-hang here, not {other:?}"),
    };
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::Builder::new().prefix("dfh").tempdir_in("/tmp")?;
    let mut opts = drover_server::ServeOptions::new(dir.path().join("cp"), "127.0.0.1:0".parse()?);
    // `drover serve --no-local`; only the schedule of backups is off so
    // that none runs during a measured failover.
    opts.agents_only = true;
    opts.engine.backup_interval = None;
    opts.engine.verify_interval = None;
    let server = drover_server::start(opts).await?;
    let api = server.url();
    let mut hosts: Vec<Host> = HOSTS
        .iter()
        .map(|&(name, zone, address)| Host { name, zone, address, dir: dir.path().join(name), child: None })
        .collect();
    let result = run(&api, dir.path(), &mut hosts, chaos, fault, runs).await;
    for host in &mut hosts {
        signal_under(&host.dir, libc::SIGCONT);
        signal_under(&host.dir, libc::SIGKILL);
        host.reap();
    }
    let _ = server.stop().await;
    signal_under(dir.path(), libc::SIGKILL);
    // DROVER_BENCH_KEEP=1 keeps the hosts' and routers' logs to read.
    if std::env::var_os("DROVER_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    if result.is_err() {
        for host in &hosts {
            let log = std::fs::read_to_string(host.dir.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- agent {} ---", host.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    result
}

async fn run(api: &str, root: &Path, hosts: &mut [Host], chaos: &str, fault: &str, runs: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let plain = drover_agent::tls::client();
    while !plain.get(format!("{api}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "drover did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = drover_server::auth::admin_client(&root.join("cp"))?;
    for host in hosts.iter_mut() {
        std::fs::create_dir_all(&host.dir)?;
        let body = serde_json::json!({"name": format!("agent-{}", host.name), "role": "agent", "host": host.name});
        let r = http.post(format!("{api}/v1/tokens")).json(&body).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "agent token refused: {}", r.text().await?);
        let token: serde_json::Value = r.json().await?;
        let token = token["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token"))?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = host.dir.join("agent.token");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?
                .write_all(token.as_bytes())?;
        }
        host.start(api)?;
    }
    wait_hosts_ready(&http, api, 3).await?;
    let body = serde_json::json!({"name": "bench", "engine": "postgres", "followers": 1, "provider": "local",
        "sync": true, "zones": ["zone-a", "zone-b", "zone-c"]});
    let r = http.post(format!("{api}/v1/services")).json(&body).send().await?;
    anyhow::ensure!(r.status().as_u16() == 201, "create failed: {}", r.text().await?);
    let service = wait_pair(&http, api, None).await?;
    let url = service["url"].as_str().ok_or_else(|| anyhow::anyhow!("the service has no URL"))?.to_string();
    let writer = Writer::start(&url).await?;
    let what =
        if chaos == "crash" { "crash (kill -9 of its agent and servers)" } else { "hang (SIGSTOP of all of it)" };
    let mut seconds = Vec::new();
    let mut previous: Option<String> = None;
    // (primary's host, follower's host) before each run, and at the end.
    let mut placements: Vec<(String, String)> = Vec::new();
    for run in 1..=runs {
        let service = wait_pair(&http, api, previous.as_deref()).await?;
        let primary = member(&service, true).ok_or_else(|| anyhow::anyhow!("no writable primary: {service}"))?;
        let follower = member(&service, false).ok_or_else(|| anyhow::anyhow!("no follower: {service}"))?;
        placements.push((
            primary["host"].as_str().unwrap_or("").to_string(),
            follower["host"].as_str().unwrap_or("").to_string(),
        ));
        let (id, on) = (primary["id"].as_str().unwrap_or("").to_string(), primary["host"].as_str().unwrap_or(""));
        let host = hosts.iter().position(|h| h.name == on).ok_or_else(|| anyhow::anyhow!("primary on {on:?}"))?;
        let port = hosts[host].port_of(&id).ok_or_else(|| anyhow::anyhow!("no port for {id}"))?;
        tokio::time::sleep(Duration::from_secs(1)).await; // steady load before the fault
        let fault_at = Instant::now();
        let r =
            http.post(format!("{api}/v1/chaos")).json(&serde_json::json!({"host": on, "fault": chaos})).send().await?;
        anyhow::ensure!(r.status().as_u16() == 202, "chaos refused: {}", r.text().await?);
        let moved_at = writer.wait_resumed(&http, api, &id, fault_at, run).await?;
        let writable_after = writer.writable_after(fault_at);
        let moved = moved_at.duration_since(fault_at).as_secs_f64();
        println!(
            "run {run}: host {on} {what}, primary {id} → writable through the same URL in {:.2}s \
             (another primary shown by the API after {moved:.2}s)",
            writable_after.as_secs_f64()
        );
        seconds.push(writable_after.as_secs_f64());
        // The host comes back.
        let h = &mut hosts[host];
        if chaos == "crash" {
            h.reap();
            h.start(api)?;
        } else {
            signal_under(&h.dir, libc::SIGCONT);
            not_a_writable_primary(&url, h.address, port).await?;
            println!("run {run}: host {on} thawed; its old primary {id} took no write");
        }
        previous = Some(id);
    }
    let service = wait_pair(&http, api, previous.as_deref()).await?;
    if let (Some(p), Some(f)) = (member(&service, true), member(&service, false)) {
        placements.push((p["host"].as_str().unwrap_or("").to_string(), f["host"].as_str().unwrap_or("").to_string()));
    }
    let (acknowledged, lost) = writer.finish(&url).await?;
    anyhow::ensure!(service["url"].as_str() == Some(url.as_str()), "the URL changed");
    let (median, max) = median_max(&seconds);
    println!("{acknowledged} acknowledged writes, {lost} lost; median {median:.2}s, max {max:.2}s");
    println!(
        "{}",
        serde_json::json!({
            "bench": "failover",
            "engine": "postgres",
            "fault": fault,
            "hosts": hosts.len(),
            "same_host_evidence": false,
            "runs": runs,
            "sync": true,
            "median_seconds_to_writable": (median * 1000.0).round() / 1000.0,
            "max_seconds_to_writable": (max * 1000.0).round() / 1000.0,
            "seconds_to_writable": seconds,
            "acknowledged_writes": acknowledged,
            "acknowledged_writes_lost": lost,
            "placements": placements.iter().map(|(p, f)| serde_json::json!({"primary": p, "follower": f})).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// For five seconds after a frozen host thaws, a write sent straight to its
/// old primary (the service's login, the host's address) must never be
/// acknowledged: its agent fences it (its lease ran out while frozen), and
/// synchronous replication holds any commit no follower confirms.
async fn not_a_writable_primary(url: &str, address: &str, port: u16) -> anyhow::Result<()> {
    // The URL's login, sent to the old primary itself (not the router).
    let login: tokio_postgres::Config = url.parse()?;
    let mut config = tokio_postgres::Config::new();
    config.host(address).port(port).user(login.get_user().unwrap_or_default()).connect_timeout(Duration::from_secs(1));
    config.dbname(login.get_dbname().unwrap_or_default());
    if let Some(password) = login.get_password() {
        config.password(password);
    }
    let until = Instant::now() + Duration::from_secs(5);
    let mut n = 0i64;
    while Instant::now() < until {
        n -= 1;
        let attempt = tokio::time::timeout(Duration::from_secs(1), async {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&format!("INSERT INTO writes (n) VALUES ({n})")).await
        })
        .await;
        anyhow::ensure!(
            !matches!(attempt, Ok(Ok(()))),
            "the thawed host's old primary at {address}:{port} acknowledged a write"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The writable primary (`true`) or a follower of the service.
fn member(service: &serde_json::Value, primary: bool) -> Option<&serde_json::Value> {
    service["instances"].as_array()?.iter().find(|i| {
        if primary {
            i["writable"] == true && i["state"] == "available"
        } else {
            i["role"] == "follower" && i["state"] == "available" && i["facts"]["upstream_streaming"] == true
        }
    })
}

async fn wait_hosts_ready(http: &reqwest::Client, api: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts: serde_json::Value = http.get(format!("{api}/v1/hosts")).send().await?.json().await?;
        if hosts.as_array().is_some_and(|h| h.iter().filter(|h| h["state"] == "ready").count() >= n) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{n} hosts not ready within 60 s: {hosts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service once available with two members, a writable primary other
/// than `not_primary` and a streaming follower on another host.
async fn wait_pair(http: &reqwest::Client, api: &str, not_primary: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = service_json(http, api).await?;
        let pair = match (member(&s, true), member(&s, false)) {
            (Some(p), Some(f)) => p["host"] != f["host"] && p["id"].as_str() != not_primary,
            _ => false,
        };
        if s["state"] == "available" && pair && s["instances"].as_array().is_some_and(|i| i.len() == 2) {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "service not ready within 300 s: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
