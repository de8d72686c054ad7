//! `drover bench failover --engine redis`: failovers of a real local Redis
//! service (a primary and one replica behind HAProxy) under a steady write
//! load through the service's URL. Each write is `SET` then `WAIT 1` on the
//! same connection: it counts as acknowledged when a replica has it. Each
//! run injects `fault` into the primary (via /v1/chaos) and measures the
//! time to the first acknowledged write after it through the same URL; at
//! the end every acknowledged write is looked for on the final primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client.get_multiplexed_async_connection_with_config(&config).await.ok()
}

async fn service_json(http: &reqwest::Client, api: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http.get(format!("{api}/v1/services/bench")).send().await?.json().await?)
}

/// Waits until the service is available with a replica streaming and a
/// primary other than `not_primary`.
async fn wait_ready(http: &reqwest::Client, api: &str, not_primary: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = service_json(http, api).await?;
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

pub async fn failover(fault: &str, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(fault, "crash" | "hang"), "--fault must be crash or hang, not {fault:?}");
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let what = if fault == "crash" { "kill -9" } else { "hang (SIGSTOP)" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::Builder::new().prefix("dfr").tempdir_in("/tmp")?;
    let mut opts = drover_server::ServeOptions::new(dir.path(), "127.0.0.1:0".parse()?);
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
    let result = async {
        let started = Instant::now();
        let plain = drover_agent::tls::client();
        while !plain.get(format!("{api}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "drover did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let http = drover_server::auth::admin_client(dir.path())?;
        let body = serde_json::json!({"name": "bench", "engine": "redis", "followers": 1, "provider": "local"});
        let r = http.post(format!("{api}/v1/services")).json(&body).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "create failed: {}", r.text().await?);
        let service = wait_ready(&http, &api, None).await?;
        let url = service["url"].as_str().ok_or_else(|| anyhow::anyhow!("the service has no URL"))?.to_string();

        let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                let mut next = 1u64;
                let mut connection = None;
                while !stop.load(Ordering::SeqCst) {
                    if connection.is_none() {
                        connection = connect(&url).await;
                        if connection.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let Some(c) = connection.as_mut() else { continue };
                    let set: redis::RedisResult<()> =
                        redis::cmd("SET").arg(format!("w:{next}")).arg(next).query_async(c).await;
                    let replicas: redis::RedisResult<i64> = match set {
                        Ok(()) => redis::cmd("WAIT").arg(1).arg(1000).query_async(c).await,
                        Err(e) => Err(e),
                    };
                    match replicas {
                        Ok(n) if n >= 1 => {
                            acked.lock().unwrap_or_else(|e| e.into_inner()).push((next, Instant::now()));
                            next += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        // On the primary, on no replica yet: not acknowledged, written again.
                        Ok(_) => {}
                        Err(_) => {
                            connection = None;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        };
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
            let r = http
                .post(format!("{api}/v1/chaos"))
                .json(&serde_json::json!({"instance": primary, "fault": fault}))
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 202, "chaos refused: {}", r.text().await?);
            let deadline = fault_at + Duration::from_secs(120);
            // As for PostgreSQL: once another primary is writable and writes
            // flow, the outage is the longest silence of acknowledgements
            // after the fault.
            let mut moved_at = None;
            loop {
                if moved_at.is_none() {
                    let s = service_json(&http, &api).await?;
                    let moved = s["instances"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|i| i["writable"] == true && i["id"] != primary.as_str()));
                    if moved {
                        moved_at = Some(Instant::now());
                    }
                }
                if let Some(moved_at) = moved_at {
                    let after =
                        acked.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(_, at)| *at > moved_at).count();
                    if after >= 10 {
                        break;
                    }
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "run {run}: writes did not resume within 120 s of the fault"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let writable_after = {
                let acks = acked.lock().unwrap_or_else(|e| e.into_inner());
                let mut previous = fault_at;
                let mut longest = (Duration::ZERO, fault_at);
                for (_, at) in acks.iter().filter(|(_, at)| *at > fault_at) {
                    let gap = at.duration_since(previous);
                    if gap > longest.0 {
                        longest = (gap, *at);
                    }
                    previous = *at;
                }
                longest.1.duration_since(fault_at)
            };
            println!(
                "run {run}: {what} of {primary} → acknowledged write through the same URL in {:.2}s",
                writable_after.as_secs_f64()
            );
            seconds.push(writable_after.as_secs_f64());
            previous_primary = primary;
        }
        let service = wait_ready(&http, &api, Some(&previous_primary)).await?;
        stop.store(true, Ordering::SeqCst);
        let _ = writer.await;
        let acked: Vec<u64> = acked.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, _)| *n).collect();
        let mut c = connect(&url).await.ok_or_else(|| anyhow::anyhow!("cannot reconnect to count"))?;
        let mut lost = 0;
        for chunk in acked.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|n| format!("w:{n}")).collect();
            let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
            lost += values.iter().zip(chunk).filter(|(v, n)| **v != Some(**n)).count();
        }
        anyhow::ensure!(service["url"].as_str() == Some(url.as_str()), "the URL changed");
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        let max = sorted.last().copied().unwrap_or(0.0);
        println!("{} acknowledged writes, {lost} lost; median {median:.2}s, max {max:.2}s", acked.len());
        println!(
            "{}",
            serde_json::json!({
                "bench": "failover",
                "engine": "redis",
                "fault": fault,
                "same_host_evidence": fault != "hang",
                "runs": runs,
                "median_seconds_to_writable": (median * 1000.0).round() / 1000.0,
                "max_seconds_to_writable": (max * 1000.0).round() / 1000.0,
                "seconds_to_writable": seconds,
                "acknowledged_writes": acked.len(),
                "acknowledged_writes_lost": lost,
            })
        );
        Ok(())
    }
    .await;
    let _ = server.stop().await;
    result
}
