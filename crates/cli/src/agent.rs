//! `drover agent`: the standalone agent of one host. Every interval it
//! probes every instance the local provider's registry lists under
//! `--data-dir` (read-only: it never starts, stops or adopts a server),
//! sends the facts as one heartbeat batch to the control plane, and holds
//! the primaries' lease (`drover_providers::local::lease`): when no batch
//! was acknowledged for the lease TTL it fences its own primaries, and it
//! un-fences one only when the control plane confirms that instance is
//! still its service's writable primary. See docs/agent.md.

use drover_model::{Beat, Facts, InstanceId, Role};
use drover_providers::local::host::{fence_writes, read_instances, unfence_writes};
use drover_providers::local::lease::{Answer, Lease, Step};
use drover_providers::local::probe::probe_host;
use drover_providers::local::LocalInstanceInfo;
use serde_json::Value;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest interval honoured; zero would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// The most one instance's probe may take: a hung server is silent this
/// round and never delays the others' beats.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Fencing and un-fencing are a few local statements; bounded so a hung
/// server never stalls the loop (the fence is tried again next round).
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one HTTP request may take.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Structured logs on stderr, `RUST_LOG` (default info), like `drover serve`.
pub fn init_logs(format: crate::config::LogFormat) {
    crate::config::init_logs(format)
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The control plane's data dir: `local/state.json` lists the instances.
    pub data_dir: PathBuf,
    /// The control plane's base URL.
    pub server: String,
    pub interval: Duration,
    pub lease_ttl: Duration,
}

/// Runs until `shutdown` completes. Network and database errors are
/// logged and retried next round, never fatal.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let interval = options.interval.max(MIN_INTERVAL);
    // A quarter of the lease: a slow control plane costs a few rounds, not
    // the lease.
    let request_timeout = (options.lease_ttl / 4).clamp(Duration::from_millis(100), MAX_REQUEST_TIMEOUT);
    let http = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
    let mut agent = Agent {
        base: options.server.trim_end_matches('/').to_string(),
        data_dir: options.data_dir.clone(),
        http,
        lease: Lease::new(options.lease_ttl, Instant::now()),
        probe_timeout: (interval * 8 / 10).min(MAX_PROBE_TIMEOUT),
        instances: Vec::new(),
        first_round: true,
        reachable: None,
        last_seq: 0,
    };
    tracing::info!(
        data_dir = %options.data_dir.display(),
        server = %agent.base,
        interval_ms = interval.as_millis() as u64,
        lease_ms = options.lease_ttl.as_millis() as u64,
        "agent started"
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = agent.round() => {}
        }
    }
    let fenced: Vec<String> = agent.lease.fenced().map(|i| i.to_string()).collect();
    tracing::info!(?fenced, "agent stopped; fenced primaries stay fenced");
    Ok(())
}

struct Agent {
    base: String,
    data_dir: PathBuf,
    http: reqwest::Client,
    lease: Lease,
    probe_timeout: Duration,
    /// The registry's instances as last read (kept when a read fails).
    instances: Vec<(InstanceId, LocalInstanceInfo)>,
    first_round: bool,
    /// Whether the last batch was acknowledged (None before the first).
    reachable: Option<bool>,
    last_seq: u64,
}

impl Agent {
    async fn round(&mut self) {
        match read_instances(&self.data_dir) {
            Ok(instances) => self.instances = instances,
            Err(error) => tracing::warn!(%error, "cannot read the local registry; using the last instances read"),
        }
        let mut facts = probe_host(&self.instances, self.probe_timeout).await;
        let primaries: Vec<(InstanceId, bool)> = facts
            .iter()
            .filter(|(_, f)| f.role == Some(Role::Primary))
            .map(|(id, f)| (*id, f.writable == Some(true)))
            .collect();
        self.settle(&facts, &primaries);
        // Fence first, so this very batch already says writable=false.
        for step in self.lease.plan(Instant::now(), &primaries) {
            if let Step::Fence(id) = step {
                self.fence(id, &mut facts).await;
            }
        }
        let sent_at = Instant::now();
        if self.send(&facts).await {
            self.lease.renewed(sent_at);
        }
        for step in self.lease.plan(Instant::now(), &primaries) {
            if let Step::Confirm(id) = step {
                self.confirm(id).await;
            }
        }
    }

    /// Bookkeeping before the lease decides: a primary found read-only
    /// when the agent starts (fenced by an earlier run) is held fenced until
    /// the control plane confirms it; a fenced instance that is no longer
    /// a primary here (demoted, retired, removed) is forgotten.
    fn settle(&mut self, facts: &[(InstanceId, Facts)], primaries: &[(InstanceId, bool)]) {
        if self.first_round {
            self.first_round = false;
            for (id, writable) in primaries {
                if !writable {
                    tracing::warn!(instance = %id, "primary found read-only at start: held fenced until the control plane confirms it");
                    self.lease.fenced_now(*id);
                }
            }
        }
        let gone: Vec<InstanceId> = self
            .lease
            .fenced()
            .filter(|id| {
                let listed = self.instances.iter().any(|(i, _)| i == id);
                let follower = facts.iter().any(|(i, f)| i == id && f.role == Some(Role::Follower));
                !listed || follower
            })
            .collect();
        for id in gone {
            tracing::info!(instance = %id, "fenced instance is no longer a primary here; forgotten");
            self.lease.forget(id);
        }
    }

    fn info(&self, id: InstanceId) -> Option<&LocalInstanceInfo> {
        self.instances.iter().find(|(i, _)| *i == id).map(|(_, info)| info)
    }

    async fn fence(&mut self, id: InstanceId, facts: &mut [(InstanceId, Facts)]) {
        let Some(info) = self.info(id).cloned() else { return };
        tracing::warn!(
            instance = %id,
            service = %info.service_name,
            lease_ms = self.lease.ttl().as_millis() as u64,
            "lease expired: fencing this primary"
        );
        match fence_writes(&info, FENCE_TIMEOUT).await {
            Ok(terminated) => {
                self.lease.fenced_now(id);
                for (_, f) in facts.iter_mut().filter(|(i, _)| *i == id) {
                    f.writable = Some(false);
                }
                tracing::warn!(instance = %id, service = %info.service_name, terminated, "primary fenced: read-only, client sessions terminated");
            }
            Err(error) => {
                tracing::error!(instance = %id, %error, "cannot fence this primary; trying again next round")
            }
        }
    }

    /// Asks the control plane about a fenced primary; un-fences it only on
    /// `writable: true` and not fenced.
    async fn confirm(&mut self, id: InstanceId) {
        let url = format!("{}/v1/instances/{id}", self.base);
        let answer = match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json::<Value>().await {
                Ok(view) => {
                    let writable = view.get("writable").and_then(Value::as_bool) == Some(true);
                    let fenced = view.get("fenced").and_then(Value::as_bool) != Some(false);
                    if writable && !fenced {
                        Answer::WritablePrimary
                    } else {
                        tracing::info!(instance = %id, writable, fenced, "control plane does not confirm this primary: it stays fenced");
                        Answer::NotWritablePrimary
                    }
                }
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "unreadable instance view; asking again next round");
                    return;
                }
            },
            Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                tracing::info!(instance = %id, "control plane does not know this instance: it stays fenced");
                Answer::NotWritablePrimary
            }
            Ok(response) => {
                tracing::warn!(instance = %id, status = response.status().as_u16(), "control plane cannot answer; asking again next round");
                return;
            }
            Err(error) => {
                tracing::debug!(instance = %id, error = %error_chain(&error), "cannot ask the control plane; asking again next round");
                return;
            }
        };
        let Some(Step::Unfence(id)) = self.lease.answer(id, answer, Instant::now()) else {
            return;
        };
        let Some(info) = self.info(id).cloned() else { return };
        match unfence_writes(&info, FENCE_TIMEOUT).await {
            Ok(()) => {
                self.lease.unfenced(id);
                tracing::info!(instance = %id, service = %info.service_name, "control plane confirmed this writable primary: un-fenced");
            }
            Err(error) => tracing::error!(instance = %id, %error, "cannot un-fence; trying again next round"),
        }
    }

    /// Posts one batch (also an empty one: it still renews the lease).
    /// True when the control plane acknowledged it (HTTP 200).
    async fn send(&mut self, facts: &[(InstanceId, Facts)]) -> bool {
        let beats: Vec<Beat> = facts
            .iter()
            .map(|(instance, facts)| Beat { instance: *instance, seq: self.next_seq(), facts: facts.clone() })
            .collect();
        let body = serde_json::json!({ "beats": beats });
        let url = format!("{}/v1/heartbeats", self.base);
        let outcome = match self.http.post(&url).json(&body).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                let receipt: Value = response.json().await.unwrap_or(Value::Null);
                let unknown = receipt.get("unknown").and_then(Value::as_array).map_or(0, Vec::len);
                if unknown > 0 {
                    tracing::warn!(unknown, receipt = %receipt, "control plane does not know some of this host's instances");
                }
                tracing::debug!(beats = beats.len(), receipt = %receipt, "heartbeats acknowledged");
                Ok(())
            }
            Ok(response) => Err(format!("control plane answered {}", response.status())),
            Err(error) => Err(error_chain(&error)),
        };
        let acknowledged = outcome.is_ok();
        if self.reachable != Some(acknowledged) {
            match &outcome {
                Ok(()) => {
                    tracing::info!(server = %self.base, beats = beats.len(), "heartbeats acknowledged; lease renewed")
                }
                Err(error) => {
                    tracing::warn!(server = %self.base, %error, "heartbeats not acknowledged; the lease runs out unless renewed")
                }
            }
        } else if let Err(error) = &outcome {
            tracing::debug!(%error, "heartbeats not acknowledged");
        }
        self.reachable = Some(acknowledged);
        acknowledged
    }

    /// Microseconds since the epoch, strictly growing: a restarted agent
    /// continues above its last run's seqs.
    fn next_seq(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}
