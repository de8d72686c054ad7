//! The agent's only channel to the control plane: HTTP. One heartbeat batch
//! per round (its acknowledgement renews the lease) and, for a fenced
//! primary, the question whether it is still its service's writable
//! primary. Network and server errors are answers too: none is fatal.
//!
//! Several control-plane nodes may be named (`--server URL,URL,…`): every
//! request goes to the node that answered last; one that cannot be reached
//! or answers 502/503/504 passes the request to the next, which is then
//! kept. Any node answers (a standby forwards to the fleet's holder), so
//! with the node it knew dead the agent keeps its lease and its actions.

use drover_model::{Beat, InstanceId};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The longest one HTTP request may take.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control plane said about one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceAnswer {
    /// Its view says writable and not fenced.
    WritablePrimary,
    /// Anything else it says with authority: not writable, fenced, unknown.
    NotWritablePrimary,
    /// No usable answer (unreachable, a 5xx, an unreadable body): ask again.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the agent token is not a valid HTTP header value")]
    Token,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The control plane at one of `bases`, over HTTP.
pub struct ControlPlane {
    /// The nodes' base URLs, in the order given.
    bases: Vec<String>,
    /// The index in `bases` of the node that answered last.
    current: AtomicUsize,
    /// Each shard's holder, as the last answer to a batch told it (none:
    /// a fleet of one shard, or not told yet: whole batches to any node).
    holders: std::sync::Mutex<Option<crate::holders::Holders>>,
    http: reqwest::Client,
    /// This agent's lease, told to the control plane with every batch: a
    /// silent host's primaries have surely fenced themselves once it has
    /// passed since the last batch the control plane acknowledged.
    lease_ttl: Duration,
}

impl ControlPlane {
    /// Requests time out after a quarter of the lease (at most
    /// [`MAX_REQUEST_TIMEOUT`]): a slow control plane costs a few rounds,
    /// not the lease.
    /// `servers` is one base URL or several separated by commas (the
    /// nodes of one control plane); `token` is this host's agent token,
    /// sent as the bearer credential; `ca_cert` the CA that signed an https
    /// control plane's certificate.
    pub fn new(
        servers: &str,
        lease_ttl: Duration,
        token: &str,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let request_timeout = (lease_ttl / 4).clamp(Duration::from_millis(100), MAX_REQUEST_TIMEOUT);
        let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ControlPlaneError::Token)?;
        bearer.set_sensitive(true);
        let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, bearer)]);
        let http = crate::tls::client_builder(ca_cert)?
            .default_headers(headers)
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()
            .map_err(ControlPlaneError::Client)?;
        let mut bases: Vec<String> =
            servers.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        if bases.is_empty() {
            bases.push(String::new()); // every request then fails and says why
        }
        Ok(ControlPlane { bases, current: AtomicUsize::new(0), holders: Default::default(), http, lease_ttl })
    }

    /// The node that answered last (the first given until one has).
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends the request `build` makes for a node's base URL to the node
    /// that answered last; if it cannot be reached or answers 502, 503 or
    /// 504, to the next one, and so on once round. The node that answers
    /// is kept for the next requests. With one node: its answer, whatever
    /// it is.
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let answer = build(&self.bases[i]).send().await;
            let passes_on = match &answer {
                Ok(response) => k + 1 < n && matches!(response.status().as_u16(), 502..=504),
                Err(_) => k + 1 < n,
            };
            if passes_on {
                let why = match &answer {
                    Ok(response) => format!("answered {}", response.status()),
                    Err(e) => error_chain(e),
                };
                tracing::debug!(server = %self.bases[i], %why, "trying the next control-plane node");
                last = Some(answer);
                continue;
            }
            if i != first && answer.is_ok() {
                self.current.store(i, Ordering::Relaxed);
                tracing::info!(server = %self.bases[i], was = %self.bases[first], "now talking to another control-plane node");
            }
            return answer;
        }
        last.expect("at least one node was tried")
    }

    /// Posts one batch (also an empty one: it still renews the lease). Ok
    /// when the control plane acknowledged it (HTTP 200), else why not. On
    /// a fleet split between nodes whose map this agent was told
    /// (`holders`), each holder gets its shards' beats straight, all at
    /// once; a part its holder does not take goes to any node, which
    /// passes it on, and the map is forgotten until an answer tells it
    /// again. Acknowledged when every part was.
    pub async fn send_beats(&self, beats: &[Beat]) -> Result<(), String> {
        let holders = self.holders.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(holders) = holders.filter(|_| !beats.is_empty()) else {
            return self.acknowledged(self.send(|base| self.post_beats(base, beats)).await, beats.len()).await;
        };
        let parts = holders.split(beats);
        let mut sent = tokio::task::JoinSet::new();
        for (k, (holder, part)) in parts.iter().enumerate() {
            if let Some(url) = holder {
                let request = self.post_beats(url, part);
                sent.spawn(async move { (k, request.send().await) });
            }
        }
        let mut outcome = Ok(());
        let mut answered = Vec::new();
        while let Some(joined) = sent.join_next().await {
            let Ok((k, answer)) = joined else { continue };
            match answer {
                Ok(response) if !matches!(response.status().as_u16(), 502..=504) => {
                    answered.push(k);
                    let result = self.acknowledged(Ok(response), parts[k].1.len()).await;
                    outcome = outcome.and(result);
                }
                Ok(response) => tracing::debug!(status = %response.status(), "a shard's holder did not take its beats"),
                Err(error) => tracing::debug!(error = %error_chain(&error), "a shard's holder could not be reached"),
            }
        }
        for (k, (holder, part)) in parts.iter().enumerate() {
            if answered.contains(&k) {
                continue;
            }
            if holder.is_some() {
                // Its holder moved or died: any node passes it on.
                *self.holders.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let result = self.acknowledged(self.send(|base| self.post_beats(base, part)).await, part.len()).await;
            outcome = outcome.and(result);
        }
        outcome
    }

    /// The request of a batch of `beats` to the node at `base`.
    fn post_beats(&self, base: &str, beats: &[Beat]) -> reqwest::RequestBuilder {
        let body = serde_json::json!({ "beats": beats, "lease_ms": self.lease_ttl.as_millis() as u64 });
        self.http.post(format!("{base}/v1/heartbeats")).json(&body)
    }

    /// Whether a node acknowledged a batch of `beats` beats (and what it
    /// told of the shards' holders, kept for the next batches).
    async fn acknowledged(
        &self,
        answer: Result<reqwest::Response, reqwest::Error>,
        beats: usize,
    ) -> Result<(), String> {
        if let Ok(response) = &answer {
            if let Some(told) = response.headers().get(crate::holders::HEADER).and_then(|v| v.to_str().ok()) {
                let map = crate::holders::Holders::parse(told).map(|map| map.among(&self.bases));
                let mut known = self.holders.lock().unwrap_or_else(|p| p.into_inner());
                if *known != map {
                    let holders = map.as_ref().map(|m| m.render());
                    tracing::info!(?holders, "told which node holds each shard: beats go straight to their holders");
                }
                *known = map;
            }
        }
        match answer {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                let receipt: Value = response.json().await.unwrap_or(Value::Null);
                let unknown = receipt.get("unknown").and_then(Value::as_array).map_or(0, Vec::len);
                if unknown > 0 {
                    tracing::warn!(unknown, receipt = %receipt, "control plane does not know some of this host's instances");
                }
                tracing::debug!(beats, receipt = %receipt, "heartbeats acknowledged");
                Ok(())
            }
            Ok(response)
                if response.status() == reqwest::StatusCode::UNAUTHORIZED
                    || response.status() == reqwest::StatusCode::FORBIDDEN =>
            {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let why = body.get("error").and_then(Value::as_str).unwrap_or("").to_string();
                Err(format!("control plane refused this agent's token ({status}): {why}"))
            }
            Ok(response) => Err(format!("control plane answered {}", response.status())),
            Err(error) => Err(error_chain(&error)),
        }
    }

    /// Asks whether `id` is still its service's writable primary.
    pub async fn instance(&self, id: InstanceId) -> InstanceAnswer {
        match self.send(|base| self.http.get(format!("{base}/v1/instances/{id}"))).await {
            Ok(response) if response.status().is_success() => match response.json::<Value>().await {
                Ok(view) => {
                    let writable = view.get("writable").and_then(Value::as_bool) == Some(true);
                    let fenced = view.get("fenced").and_then(Value::as_bool) != Some(false);
                    if writable && !fenced {
                        InstanceAnswer::WritablePrimary
                    } else {
                        tracing::info!(instance = %id, writable, fenced, "control plane does not confirm this primary: it stays fenced");
                        InstanceAnswer::NotWritablePrimary
                    }
                }
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "unreadable instance view; asking again next round");
                    InstanceAnswer::Unknown
                }
            },
            Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                tracing::info!(instance = %id, "control plane does not know this instance: it stays fenced");
                InstanceAnswer::NotWritablePrimary
            }
            Ok(response) => {
                tracing::warn!(instance = %id, status = response.status().as_u16(), "control plane cannot answer; asking again next round");
                InstanceAnswer::Unknown
            }
            Err(error) => {
                tracing::debug!(instance = %id, error = %error_chain(&error), "cannot ask the control plane; asking again next round");
                InstanceAnswer::Unknown
            }
        }
    }
}

impl ControlPlane {
    /// `POST /v1/hosts`: registers (again) this agent's host.
    pub async fn register_host(&self, host: &crate::actions::HostOptions) -> Result<(), String> {
        let body = serde_json::json!({
            "name": host.name, "zone": host.zone, "address": host.address, "capacity": host.capacity,
        });
        match self.send(|base| self.http.post(format!("{base}/v1/hosts")).json(&body)).await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                Err(format!("{status}: {}", body.get("error").and_then(Value::as_str).unwrap_or("")))
            }
            Err(error) => Err(error_chain(&error)),
        }
    }

    /// `GET /v1/hosts/{host}/actions`: the actions queued for this host
    /// after `after` (the last seq seen, or the last batch's cursor),
    /// waiting up to `wait` for one (a long poll).
    pub async fn fetch_actions(&self, host: &str, after: &str, wait: Duration) -> Result<Fetched, String> {
        let wait_ms = wait.as_millis();
        let response = self
            .send(|base| {
                let url = format!("{base}/v1/hosts/{host}/actions?after={after}&wait_ms={wait_ms}");
                self.http.get(url).timeout(wait + MAX_REQUEST_TIMEOUT)
            })
            .await
            .map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("control plane answered {}", response.status()));
        }
        let body: Value = response.json().await.map_err(|e| error_chain(&e))?;
        let mut actions = Vec::new();
        let host_fault = body
            .get("host_fault")
            .and_then(|f| f.get("fault"))
            .cloned()
            .and_then(|f| serde_json::from_value::<drover_model::Fault>(f).ok());
        for queued in body.get("actions").and_then(Value::as_array).into_iter().flatten() {
            let seq = queued.get("seq").and_then(Value::as_u64).unwrap_or(0);
            match queued.get("action").cloned().map(serde_json::from_value::<drover_model::ActionRecord>) {
                Some(Ok(action)) => {
                    let replication = queued.get("replication").cloned().and_then(|r| serde_json::from_value(r).ok());
                    let shard = queued.get("shard").and_then(Value::as_u64).and_then(|s| u32::try_from(s).ok());
                    let generation = queued.get("generation").and_then(Value::as_i64);
                    actions.push(QueuedAction { seq, action, replication, shard: shard.zip(generation) })
                }
                _ => tracing::warn!(seq, "an action this agent cannot read; skipped"),
            }
        }
        let generation = body.get("generation").and_then(Value::as_i64);
        let cursor = body.get("cursor").and_then(Value::as_str).map(str::to_string);
        Ok(Fetched { actions, host_fault, generation, cursor })
    }

    /// `POST /v1/hosts/{host}/actions/{id}/result`: one attempt's outcome.
    pub async fn post_result(
        &self,
        host: &str,
        id: drover_model::ActionId,
        attempt: u32,
        outcome: &drover_model::ActionOutcome,
    ) -> Result<(), String> {
        let body = serde_json::json!({ "attempt": attempt, "outcome": outcome });
        match self.send(|base| self.http.post(format!("{base}/v1/hosts/{host}/actions/{id}/result")).json(&body)).await
        {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("control plane answered {}", response.status())),
            Err(error) => Err(error_chain(&error)),
        }
    }
}

/// What one fetch of this host's actions brought.
pub struct Fetched {
    pub actions: Vec<QueuedAction>,
    /// Chaos for the whole host (`crash` or `hang`).
    pub host_fault: Option<drover_model::Fault>,
    /// The lease generation of the node that sent them (PostgreSQL store).
    pub generation: Option<i64>,
    /// On a fleet split between nodes: where this batch leaves off on each
    /// node, to send back as `after` (else the newest seq is).
    pub cursor: Option<String>,
}

/// One action fetched.
pub struct QueuedAction {
    /// Orders the host's actions on the node that queued it.
    pub seq: u64,
    pub action: drover_model::ActionRecord,
    /// What a PostgreSQL Provision needs to replicate across hosts.
    pub replication: Option<drover_providers::local::Replication>,
    /// On a fleet split between nodes: the shard of the action's service
    /// and the lease generation its node holds it with.
    pub shard: Option<(u32, i64)>,
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
