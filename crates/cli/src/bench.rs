//! Benchmarks run from the command line. They print human lines first and,
//! as the last line, one JSON object with the figures.

use drover_engine::{Command, Config, Engine, Input, Reply};
use drover_model::{
    ActionKind, ActionOutcome, Beat, CreateService, EngineKind, Facts, Image, InstanceId, Role, Timestamp,
};
use std::time::{Duration, Instant};

/// Beats per engine step: what one HTTP request or agent batch carries.
const BATCH: usize = 10_000;

fn resident_bytes() -> u64 {
    // statm: size resident shared text lib data dt (pages)
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Heartbeat ingest through the real engine, in process: `instances`
/// instances (services of a primary and one follower), every instance
/// beating once per simulated second with realistic facts, deadlines ticking.
pub fn heartbeats(instances: usize, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(instances >= 2, "--instances must be at least 2");
    let rss_before = resident_bytes();
    let config = Config {
        // Generous silence bounds: the bench measures ingest, not failure.
        uncertain_after: Duration::from_secs(3),
        ..Config::default()
    };
    let t0: i64 = 1_800_000_000_000_000;
    let mut now = t0;
    let mut engine = Engine::new(config, 1);
    engine.reserve(instances);
    let image = Image::new(EngineKind::Postgres, "15-bench", Default::default(), Default::default(), Timestamp(now));
    engine.step(
        Input::Command { actor: "bench".into(), role: None, command: Command::RegisterImage(image) },
        Timestamp(now),
    );

    let setup = Instant::now();
    let services = instances / 2;
    let mut ids: Vec<(InstanceId, Role)> = Vec::with_capacity(instances);
    for s in 0..services {
        let req = CreateService {
            name: format!("svc-{s}"),
            engine: EngineKind::Postgres,
            followers: 1,
            provider: None,
            sync: Some(true),
            team: None,
            zones: None,
            max_failover_lag_bytes: None,
            credential_rotation_days: None,
            labels: None,
            brokers: None,
        };
        let out = engine.step(
            Input::Command { actor: "bench".into(), role: None, command: Command::CreateService(req) },
            Timestamp(now),
        );
        match out.reply {
            Some(Ok(Reply::Service(v))) => ids.extend(v.instances.iter().map(|i| (i.id, i.role))),
            other => anyhow::bail!("creating a service failed: {other:?}"),
        }
        // The provider answers at once: no open actions linger.
        for a in out.dispatch {
            if matches!(a.kind, ActionKind::Provision(_)) {
                engine.step(
                    Input::ActionResult {
                        action: a.id,
                        attempt: a.attempts,
                        outcome: ActionOutcome::Succeeded { detail: None },
                    },
                    Timestamp(now),
                );
            }
        }
    }
    let n = ids.len();
    // One round makes everyone available (transitions, not the hot path).
    let mut seq = 1u64;
    for chunk in ids.chunks(BATCH) {
        engine.step(Input::Heartbeats(beats(chunk, seq)), Timestamp(now));
    }
    let rss_after = resident_bytes();
    let setup_secs = setup.elapsed().as_secs_f64();
    println!(
        "fleet of {n} instances built in {setup_secs:.1}s; resident memory grew {} MiB",
        (rss_after.saturating_sub(rss_before)) >> 20
    );

    let mut busy = Duration::ZERO;
    let mut total = 0u64;
    let mut stale = 0u64;
    for round in 0..rounds {
        seq += 1;
        now += 1_000_000;
        // Beats arrive already parsed (that is the HTTP layer's work).
        let batches: Vec<Vec<Beat>> = ids.chunks(BATCH).map(|c| beats(c, seq)).collect();
        let start = Instant::now();
        for batch in batches {
            let out = engine.step(Input::Heartbeats(batch), Timestamp(now));
            if let Some(Ok(Reply::Heartbeats(r))) = out.reply {
                total += u64::from(r.accepted);
                stale += u64::from(r.stale);
            }
        }
        let out = engine.step(Input::Tick, Timestamp(now));
        anyhow::ensure!(
            out.changes.is_empty(),
            "round {round}: healthy heartbeats caused changes: {:?}",
            out.changes.events.first()
        );
        busy += start.elapsed();
    }
    let stats = engine.stats();
    let available =
        stats.instances_by_state.iter().find(|(s, _)| s.as_str() == "available").map(|(_, c)| *c).unwrap_or(0);
    anyhow::ensure!(available as usize == n, "expected every instance available, found {available} of {n}");
    anyhow::ensure!(stale == 0, "{stale} beats were refused as stale");
    let per_sec = total as f64 / busy.as_secs_f64();
    let bytes_per_instance = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!("{total} heartbeats in {:.2}s of engine time: {:.0} per second", busy.as_secs_f64(), per_sec);
    println!("{bytes_per_instance:.0} bytes of resident memory per instance");
    println!(
        "{}",
        serde_json::json!({
            "bench": "heartbeats",
            "instances": n,
            "rounds": rounds,
            "heartbeats": total,
            "engine_seconds": busy.as_secs_f64(),
            "heartbeats_per_sec": per_sec.round(),
            "bytes_per_instance": bytes_per_instance.round(),
            "setup_seconds": setup_secs,
            "threads": 1,
        })
    );
    Ok(())
}

fn beats(chunk: &[(InstanceId, Role)], seq: u64) -> Vec<Beat> {
    chunk
        .iter()
        .map(|&(id, role)| Beat {
            instance: id,
            seq,
            facts: Facts {
                role: Some(role),
                writable: Some(role == Role::Primary),
                wal_position: Some(seq * 8192),
                replication_lag_bytes: (role == Role::Follower).then_some(0),
                upstream_streaming: (role == Role::Follower).then_some(true),
                connections: Some(12),
                last_backup_at: None,
                port: None,
            },
        })
        .collect()
}

/// Failovers of a real local PostgreSQL HA pair (synchronous) under a
/// steady write load through the service's stable URL. Each run: wait for a
/// streaming follower, inject `fault` into the primary (via /v1/chaos):
/// `crash` is kill -9 of its postmaster, `hang` freezes it and its backends
/// (SIGSTOP), as a frozen host would be; time until the first write through
/// the same URL succeeds; at the end every acknowledged write is looked for
/// on the final primary. A `hang` runs without the same-host shortcuts
/// (`LocalConfig::same_host_evidence`): a frozen host takes its agent with
/// it, so only silence and a probe over the network tell the engine.
pub async fn failover(engine: &str, fault: &str, runs: usize) -> anyhow::Result<()> {
    if engine == "redis" {
        return crate::bench_redis::failover(fault, runs).await;
    }
    if engine == "kafka" {
        return crate::bench_kafka::failover(fault, runs).await;
    }
    anyhow::ensure!(engine == "postgres", "--engine must be postgres, redis or kafka, not {engine:?}");
    if fault.starts_with("host-") {
        return crate::bench_hosts::failover(fault, runs).await;
    }
    anyhow::ensure!(matches!(fault, "crash" | "hang"), "--fault must be crash or hang, not {fault:?}");
    let what = if fault == "crash" { "kill -9" } else { "hang (SIGSTOP)" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let dir = tempfile::Builder::new().prefix("dfb").tempdir_in("/tmp")?;
    let mut opts = drover_server::ServeOptions::new(dir.path(), "127.0.0.1:0".parse()?);
    // `drover serve`'s settings (ServeOptions::new); only the schedule of
    // backups is off so that none runs during a measured failover.
    opts.engine.default_provider = "local".into();
    opts.engine.backup_interval = None;
    opts.engine.verify_interval = None;
    opts.local = Some(drover_providers::local::LocalConfig {
        kill_servers_on_drop: true,
        same_host_evidence: fault != "hang",
        ..Default::default()
    });
    let server = drover_server::start(opts).await?;
    let api = server.url();
    let http = drover_agent::tls::client();
    let result = async {
        let started = Instant::now();
        while !http.get(format!("{api}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "drover did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let http = drover_server::auth::admin_client(dir.path())?;
        let body = serde_json::json!({"name": "bench", "engine": "postgres", "followers": 1, "provider": "local", "sync": true});
        let r = http.post(format!("{api}/v1/services")).json(&body).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "create failed: {}", r.text().await?);
        let service = wait_ready(&http, &api, None).await?;
        let url = service["url"].as_str().ok_or_else(|| anyhow::anyhow!("the service has no URL"))?.to_string();
        let writer = crate::bench_writes::Writer::start(&url).await?;
        let mut seconds = Vec::new();
        let mut previous_primary = String::new();
        for run in 1..=runs {
            let service = wait_ready(&http, &api, Some(&previous_primary)).await?;
            let primary = service["instances"]
                .as_array()
                .and_then(|i| i.iter().find(|i| i["writable"] == true))
                .and_then(|i| i["id"].as_str())
                .ok_or_else(|| anyhow::anyhow!("no writable primary"))?
                .to_string();
            tokio::time::sleep(Duration::from_secs(1)).await; // steady load before the fault
            let fault_at = Instant::now();
            let r = http.post(format!("{api}/v1/chaos")).json(&serde_json::json!({"instance": primary, "fault": fault})).send().await?;
            anyhow::ensure!(r.status().as_u16() == 202, "chaos refused: {}", r.text().await?);
            // Wait until the engine shows another writable primary and writes
            // flow again, then read the outage off the acknowledgements: the
            // longest silence after the fault ends with the first write on the
            // new primary (writes the old one acknowledged before the signal
            // landed come before it).
            writer.wait_resumed(&http, &api, &primary, fault_at, run).await?;
            let writable_after = writer.writable_after(fault_at);
            println!("run {run}: {what} of {primary} → writable through the same URL in {:.2}s", writable_after.as_secs_f64());
            seconds.push(writable_after.as_secs_f64());
            previous_primary = primary;
        }
        let service = wait_ready(&http, &api, Some(&previous_primary)).await?;
        let (acknowledged, lost) = writer.finish(&url).await?;
        anyhow::ensure!(service["url"].as_str() == Some(url.as_str()), "the URL changed");
        let (median, max) = crate::bench_writes::median_max(&seconds);
        println!("{acknowledged} acknowledged writes, {lost} lost; median {median:.2}s, max {max:.2}s");
        println!(
            "{}",
            serde_json::json!({
                "bench": "failover",
                "engine": engine,
                "fault": fault,
                "same_host_evidence": fault != "hang",
                "runs": runs,
                "sync": true,
                "median_seconds_to_writable": (median * 1000.0).round() / 1000.0,
                "max_seconds_to_writable": (max * 1000.0).round() / 1000.0,
                "seconds_to_writable": seconds,
                "acknowledged_writes": acknowledged,
                "acknowledged_writes_lost": lost,
            })
        );
        Ok(())
    }
    .await;
    let _ = server.stop().await;
    result
}

/// Waits until the service is available with a follower streaming and a
/// primary other than `not_primary`.
async fn wait_ready(http: &reqwest::Client, api: &str, not_primary: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = crate::bench_writes::service_json(http, api).await?;
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        let primary_ok = instances.iter().any(|i| {
            i["writable"] == true && i["state"] == "available" && Some(i["id"].as_str().unwrap_or("")) != not_primary
        });
        let follower_ok = instances
            .iter()
            .any(|i| i["role"] == "follower" && i["state"] == "available" && i["facts"]["upstream_streaming"] == true);
        if s["state"] == "available" && primary_ok && follower_ok && instances.len() == 2 {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "service not ready within 300 s: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
