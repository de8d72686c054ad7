//! `drover bench failover --engine kafka`: kill -9 of a broker of a real
//! local Kafka service (three tansu brokers behind HAProxy over their
//! PostgreSQL storage) under produce load through the bootstrap address.
//!
//! The producer is a real Kafka client: librdkafka through Python's
//! `confluent-kafka` (the client of the Kafka tests, `client.py`, built into
//! this binary), idempotent, `acks=all`. Each run kills, through
//! `/v1/chaos`, the broker the producer writes through (the one holding
//! the most sessions at the router) and measures the time from the kill to
//! the end of the longest silence of acknowledgements after it: the next
//! acknowledged record once the client moved. At the end every
//! acknowledged record is consumed back by a consumer group; one missing
//! is a lost write.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Kafka tests' client, written next to the benchmark's data.
const CLIENT: &str = include_str!("../../server/tests/kafka/client.py");

/// How long a Kafka service gets to have three serving brokers.
const READY: Duration = Duration::from_secs(300);

fn python_client(dir: &Path) -> anyhow::Result<PathBuf> {
    let ok = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok,
        "the Kafka benchmark's producer is librdkafka through Python's confluent-kafka, which python3 cannot import: \
         run ./scripts/test once (it installs what the tests need) or `python3 -m pip install confluent-kafka==2.16.1`"
    );
    let path = dir.join("client.py");
    std::fs::write(&path, CLIENT)?;
    Ok(path)
}

fn run_client(script: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("python3").arg(script).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "client.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `client.py produce` in the background; acknowledgements as they come.
struct Producer {
    child: Child,
    stop_file: PathBuf,
    acks: Arc<Mutex<Vec<(u64, Instant)>>>,
    fails: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(script: &Path, bootstrap: &str, topic: &str, dir: &Path) -> anyhow::Result<Producer> {
        let stop_file = dir.join(format!("stop-{topic}"));
        let mut child = Command::new("python3")
            .arg(script)
            .args(["produce", bootstrap, topic])
            .arg(&stop_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("the producer has no stdout"))?;
        let acks = Arc::new(Mutex::new(Vec::new()));
        let fails = Arc::new(Mutex::new(Vec::new()));
        let (a, f) = (acks.clone(), fails.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["ack", n, _] => {
                        if let Ok(n) = n.parse() {
                            a.lock().unwrap_or_else(|e| e.into_inner()).push((n, Instant::now()));
                        }
                    }
                    ["fail", ..] => f.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone()),
                    _ => {}
                }
            }
        });
        Ok(Producer { child, stop_file, acks, fails, reader: Some(reader) })
    }

    fn acks_after(&self, t: Instant) -> usize {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(_, at)| *at > t).count()
    }

    /// When the longest silence of acknowledgements after `fault_at` ended.
    fn writable_after(&self, fault_at: Instant) -> Duration {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
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
    }

    fn finish(mut self) -> anyhow::Result<(Vec<u64>, Vec<String>)> {
        std::fs::write(&self.stop_file, b"stop")?;
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        anyhow::ensure!(status.success(), "the producer exited with {status}");
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, _)| *n).collect();
        let fails = self.fails.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((acks, fails))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serving_brokers(s: &serde_json::Value) -> Vec<String> {
    s["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["role"] == "broker" && i["state"] == "available" && i["fenced"] != true)
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the service is available with three serving brokers, none
/// of them `not`.
async fn wait_brokers(http: &reqwest::Client, api: &str, not: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + READY;
    loop {
        let s: serde_json::Value = http.get(format!("{api}/v1/services/bench")).send().await?.json().await?;
        let brokers = serving_brokers(&s);
        if s["state"] == "available" && brokers.len() == 3 && not.is_none_or(|gone| brokers.iter().all(|b| b != gone)) {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "no three serving brokers within {READY:?}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn failover(fault: &str, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(fault == "crash", "--fault must be crash for Kafka (kill -9 of a broker), not {fault:?}");
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::Builder::new().prefix("dfk").tempdir_in("/tmp")?;
    let script = python_client(dir.path())?;
    let mut opts = drover_server::ServeOptions::new(dir.path(), "127.0.0.1:0".parse()?);
    opts.engine.default_provider = "local".into();
    opts.engine.backup_interval = None;
    opts.engine.verify_interval = None;
    opts.local = Some(drover_providers::local::LocalConfig { kill_servers_on_drop: true, ..Default::default() });
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
        let body = serde_json::json!({"name": "bench", "engine": "kafka", "brokers": 3, "provider": "local"});
        let r = http.post(format!("{api}/v1/services")).json(&body).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "create failed: {}", r.text().await?);
        let service = wait_brokers(&http, &api, None).await?;
        let url = service["url"].as_str().ok_or_else(|| anyhow::anyhow!("the service has no URL"))?.to_string();
        let bootstrap = url.strip_prefix("kafka://").ok_or_else(|| anyhow::anyhow!("not a kafka:// URL: {url}"))?;
        run_client(&script, &["create", bootstrap, "bench"])?;
        let producer = Producer::start(&script, bootstrap, "bench", dir.path())?;
        let local_root = dir.path().join("local");
        let mut seconds = Vec::new();
        let mut previous: Option<String> = None;
        for run in 1..=runs {
            wait_brokers(&http, &api, previous.as_deref()).await?;
            // Steady load before the fault: acknowledgements flowing.
            let steady = Instant::now();
            while producer.acks_after(steady) < 100 {
                anyhow::ensure!(steady.elapsed() < Duration::from_secs(60), "run {run}: no steady produce load");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (victim, sessions) = drover_providers::local::kafka_busiest_broker(&local_root, "bench")
                .await
                .map_err(|e| anyhow::anyhow!("run {run}: {e}"))?;
            let victim = victim.to_string();
            let fault_at = Instant::now();
            let r = http
                .post(format!("{api}/v1/chaos"))
                .json(&serde_json::json!({"instance": victim, "fault": "crash"}))
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 202, "chaos refused: {}", r.text().await?);
            // Records flow again: a hundred acknowledged after the kill
            // (the longest silence after it is over by then).
            let deadline = fault_at + Duration::from_secs(120);
            while producer.acks_after(fault_at) < 100 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "run {run}: no acknowledged record within 120 s of the kill"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let writable_after = producer.writable_after(fault_at);
            println!(
                "run {run}: kill -9 of broker {victim} ({sessions} client sessions at the router) → next acknowledged \
                 record through the same bootstrap address in {:.2}s",
                writable_after.as_secs_f64()
            );
            seconds.push(writable_after.as_secs_f64());
            previous = Some(victim);
        }
        let service = wait_brokers(&http, &api, previous.as_deref()).await?;
        anyhow::ensure!(service["url"].as_str() == Some(url.as_str()), "the bootstrap address changed");
        let (acked, fails) = producer.finish()?;
        // Every acknowledged record, consumed back by a consumer group.
        let wanted: BTreeSet<u64> = acked.iter().copied().collect();
        let out =
            run_client(&script, &["consume", bootstrap, "bench", "bench-check", &wanted.len().to_string(), "120"])?;
        let got: BTreeSet<u64> =
            out.lines().filter_map(|l| l.strip_prefix("got ")).filter_map(|n| n.trim().parse().ok()).collect();
        let lost = wanted.difference(&got).count();
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        let max = sorted.last().copied().unwrap_or(0.0);
        println!(
            "{} acknowledged records, {lost} lost, {} given up by the producer; median {median:.2}s, max {max:.2}s",
            acked.len(),
            fails.len()
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "failover",
                "engine": "kafka",
                "fault": fault,
                "runs": runs,
                "median_seconds_to_writable": (median * 1000.0).round() / 1000.0,
                "max_seconds_to_writable": (max * 1000.0).round() / 1000.0,
                "seconds_to_writable": seconds,
                "acknowledged_writes": acked.len(),
                "acknowledged_writes_lost": lost,
                "produce_requests_failed": fails.len(),
            })
        );
        Ok(())
    }
    .await;
    let _ = server.stop().await;
    result
}
