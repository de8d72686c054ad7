//! The write load of the PostgreSQL failover benchmarks: one session
//! through the service's stable URL inserting numbered rows, the time each
//! was acknowledged, the outage read off those times, and, at the end,
//! every acknowledged row looked for on the final primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writes `INSERT INTO writes (n)` through `url` until finished.
pub struct Writer {
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Creates the table and starts writing.
    pub async fn start(url: &str) -> anyhow::Result<Writer> {
        let c = pg_connect(url).await.ok_or_else(|| anyhow::anyhow!("cannot connect to {url}"))?;
        c.batch_execute("CREATE TABLE writes (n bigint PRIMARY KEY, at timestamptz DEFAULT now())").await?;
        drop(c);
        let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, stop, url) = (acked.clone(), stop.clone(), url.to_string());
            tokio::spawn(async move {
                let mut next = 1u64;
                let mut client = None;
                while !stop.load(Ordering::SeqCst) {
                    if client.is_none() {
                        client = pg_connect(&url).await;
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    // A commit whose answer was lost in the fault is retried:
                    // it must not fail forever on its own row.
                    let sql = format!("INSERT INTO writes (n) VALUES ({next}) ON CONFLICT DO NOTHING");
                    let ok = match &client {
                        Some(c) => {
                            matches!(
                                tokio::time::timeout(Duration::from_secs(5), c.batch_execute(&sql)).await,
                                Ok(Ok(()))
                            )
                        }
                        None => false,
                    };
                    if ok {
                        acked.lock().unwrap_or_else(|e| e.into_inner()).push((next, Instant::now()));
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        };
        Ok(Writer { acked, stop, task })
    }

    /// After a fault injected at `fault_at` into `old_primary`: waits
    /// until the API shows another writable primary of service `bench` and
    /// ten writes were acknowledged after that; returns when the API showed
    /// it. Fails past two minutes.
    pub async fn wait_resumed(
        &self,
        http: &reqwest::Client,
        api: &str,
        old_primary: &str,
        fault_at: Instant,
        run: usize,
    ) -> anyhow::Result<Instant> {
        let deadline = fault_at + Duration::from_secs(120);
        let mut moved_at = None;
        loop {
            if moved_at.is_none() {
                let s = service_json(http, api).await?;
                let moved = s["instances"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|i| i["writable"] == true && i["id"] != old_primary));
                if moved {
                    moved_at = Some(Instant::now());
                }
            }
            if let Some(at) = moved_at.filter(|at| self.acked_after(*at) >= 10) {
                return Ok(at);
            }
            anyhow::ensure!(Instant::now() < deadline, "run {run}: writes did not resume within 120 s of the fault");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes acknowledged after `at`.
    pub fn acked_after(&self, at: Instant) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(_, t)| *t > at).count()
    }

    /// The outage of a fault injected at `fault_at`: the longest silence
    /// after it ends with the first write on the new primary (writes the old
    /// one acknowledged before the fault landed come before it).
    pub fn writable_after(&self, fault_at: Instant) -> Duration {
        let acks = self.acked.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Stops writing; (acknowledged writes, how many of them `url` lacks).
    pub async fn finish(self, url: &str) -> anyhow::Result<(usize, usize)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let acked: Vec<u64> = self.acked.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, _)| *n).collect();
        let c = pg_connect(url).await.ok_or_else(|| anyhow::anyhow!("cannot reconnect to count"))?;
        let present: std::collections::HashSet<u64> = c
            .simple_query("SELECT n FROM writes")
            .await?
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .collect();
        Ok((acked.len(), acked.iter().filter(|n| !present.contains(n)).count()))
    }
}

/// (median, max) of `seconds`.
pub fn median_max(seconds: &[f64]) -> (f64, f64) {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return (0.0, 0.0);
    }
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    (median, sorted[sorted.len() - 1])
}

pub async fn pg_connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .ok()?
            .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// The benchmark's service, `bench`, as the API shows it.
pub async fn service_json(http: &reqwest::Client, api: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http.get(format!("{api}/v1/services/bench")).send().await?.json().await?)
}
