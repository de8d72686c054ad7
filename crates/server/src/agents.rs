//! The action channel, control plane → agents (issue 11). An action for an
//! instance placed on an agent's host is not run here: it waits in that
//! host's queue until the agent fetches it (`GET /v1/hosts/{name}/actions`,
//! a long poll), and its outcome comes back as
//! `POST /v1/hosts/{name}/actions/{id}/result`. The dispatcher sees the
//! same future as for an in-process provider ([`AgentChannel::execute`]),
//! so the engine's attempts, deadlines and stale results work unchanged.
//!
//! Nothing here is durable: after a control-plane restart the engine
//! re-dispatches its running actions with a new attempt, and the agent
//! answers a repeated (id, attempt) from its own record without running it
//! again (docs/agent.md).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use drover_model::{ActionId, ActionOutcome, ActionRecord};
use drover_providers::local::Replication;
use drover_providers::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// The longest a fetch waits for an action before answering empty.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// A fetch that names no wait waits this long.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// One action waiting for its host's agent.
struct Pending {
    seq: u64,
    record: ActionRecord,
    replication: Option<Replication>,
    answer: oneshot::Sender<ActionOutcome>,
}

#[derive(Default)]
struct HostQueue {
    /// Unanswered actions by id (one attempt each: a newer attempt
    /// replaces an older one).
    pending: BTreeMap<ActionId, Pending>,
    /// Chaos for the whole host, handed to the agent once (the next fetch
    /// takes it): a restarted agent must not crash itself again.
    fault: Option<HostFault>,
    notify: Arc<Notify>,
}

/// The queues of every agent host. Cheap to clone.
#[derive(Clone, Default)]
pub struct AgentChannel {
    inner: Arc<Mutex<Channel>>,
    /// Each agent host's heartbeat batches on their way into the engine,
    /// apart from the answer that renews its lease (`heartbeat_feed`).
    feeds: crate::heartbeat_feed::HeartbeatFeeds,
}

#[derive(Default)]
struct Channel {
    hosts: HashMap<String, HostQueue>,
    /// The last sequence number handed out (see [`AgentChannel::new`]).
    seq: u64,
    /// This node's lease generation (PostgreSQL store), sent with every
    /// batch: an agent refuses a batch older than the newest it has seen.
    generation: Option<i64>,
    /// The port each instance on an agent host listens on, as its agent's
    /// heartbeats last said (memory only: beats say it again every round).
    /// (foldhash: a million instances are looked up every round, and
    /// SipHash was a tenth of the holder's heartbeat cost.)
    ports: HashMap<drover_model::InstanceId, u16, foldhash::fast::RandomState>,
    /// Moves whenever an entry of `ports` is new or changed.
    ports_epoch: u64,
    /// Each agent's lease as its acknowledged batches tell it (memory
    /// only: after a restart a host is judged by its lease only once its
    /// agent was heard again).
    leases: HashMap<String, AgentLease>,
}

/// When an agent's last acknowledged batch arrived, and the lease it holds.
#[derive(Clone, Copy, Debug)]
struct AgentLease {
    heard_at: tokio::time::Instant,
    ttl: Duration,
}

/// Added to an agent's lease before its silence says its primaries have
/// fenced themselves: the fence itself (a reload and a cut of the client
/// sessions) and the two clocks' drift.
pub const LEASE_MARGIN: Duration = Duration::from_millis(250);

/// How long an agent's host has been silent, and its lease.
#[derive(Clone, Copy, Debug)]
pub struct Silence {
    pub silent_for: Duration,
    pub ttl: Duration,
}

impl Silence {
    /// Whether every primary of that host has surely stopped taking
    /// writes: its agent fenced them when its lease ran out (or the host
    /// is down, or frozen with them).
    pub fn past_lease(&self) -> bool {
        self.silent_for > self.ttl + LEASE_MARGIN
    }
}

/// One action as the agent receives it: `seq` orders the host's actions,
/// the agent asks for those after the last it saw.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueuedAction {
    pub seq: u64,
    pub action: ActionRecord,
    /// Beside a PostgreSQL Provision: the service's replication password
    /// and, for a follower, its primary's address and port on another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub replication: Option<Replication>,
    /// On a fleet split between nodes: the shard of the action's service
    /// and the lease generation its node holds it with. An agent refuses
    /// an action older than the newest generation it saw for that shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// What `GET /v1/hosts/{name}/actions` answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionBatch {
    pub actions: Vec<QueuedAction>,
    /// On a fleet split between nodes: where this batch leaves off on each
    /// node (each numbers its own queue), to send back as `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The lease generation of the node that queued them (PostgreSQL
    /// store; absent on SQLite, where one node is alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Chaos for the whole host: the agent kills (`crash`: SIGKILL) or
    /// freezes (`hang`: SIGSTOP) everything it runs, then itself. Not
    /// answered: the control plane learns of it as of a real host failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_fault: Option<HostFault>,
}

/// Chaos for a whole agent host, as `POST /v1/chaos {"host"}` asked it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostFault {
    pub seq: u64,
    /// `crash` or `hang`.
    #[schema(value_type = String)]
    pub fault: drover_model::Fault,
}

/// The agent's answer for one attempt of one action.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionResultBody {
    pub attempt: u32,
    /// `{"outcome": "succeeded", "detail"}` or `{"outcome": "failed", "error", "retryable"}`.
    #[schema(value_type = Object)]
    pub outcome: ActionOutcome,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FetchParams {
    /// Only actions queued after this: the last seq the agent saw, or on a
    /// fleet split between nodes the last batch's `cursor` (a seq per node).
    #[serde(default)]
    pub after: String,
    /// How long to wait for one when none is queued (at most 20000).
    pub wait_ms: Option<u64>,
}

/// Where an agent's fetches left off. Each node numbers its own queue, so
/// on a fleet split between nodes the agent keeps a number per node:
/// `BASE~NODE.SEQ~NODE.SEQ`, each node's name in hex (safe in a query
/// string as it is), BASE what a node not named starts from. A plain
/// number (a fleet one node holds) is BASE alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    base: u64,
    nodes: BTreeMap<String, u64>,
}

/// At most this many nodes in a cursor.
const MAX_CURSOR_NODES: usize = 256;

impl Cursor {
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let bad = |why: &str| format!("after must be a number or a cursor this control plane gave: {why}");
        let mut parts = text.split('~');
        let base = match parts.next().map(str::trim) {
            None | Some("") => 0,
            Some(n) => n.parse::<u64>().map_err(|_| bad(&format!("{n:?} is not a number")))?,
        };
        let mut nodes = BTreeMap::new();
        for part in parts {
            let (node, seq) = part.split_once('.').ok_or_else(|| bad(&format!("{part:?} is not NODE.SEQ")))?;
            let node = hex::decode(node)
                .ok()
                .and_then(|n| String::from_utf8(n).ok())
                .ok_or_else(|| bad(&format!("{node:?} is not a node's name in hex")))?;
            let seq = seq.parse::<u64>().map_err(|_| bad(&format!("{seq:?} is not a number")))?;
            nodes.insert(node, seq);
            if nodes.len() > MAX_CURSOR_NODES {
                return Err(bad(&format!("more than {MAX_CURSOR_NODES} nodes")));
            }
        }
        Ok(Cursor { base, nodes })
    }

    /// Where the agent left off on `node`.
    pub fn after(&self, node: &str) -> u64 {
        self.nodes.get(node).copied().unwrap_or(self.base)
    }

    /// `node`'s queue seen up to `seq`.
    pub fn advance(&mut self, node: &str, seq: u64) {
        let base = self.base;
        let at = self.nodes.entry(node.to_string()).or_insert(base);
        *at = (*at).max(seq);
    }

    /// Every node's place in `other` too (the later of the two).
    pub fn merge(&mut self, other: &Cursor) {
        for (node, &seq) in &other.nodes {
            self.advance(node, seq);
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.base)?;
        for (node, seq) in &self.nodes {
            write!(f, "~{}.{seq}", hex::encode(node))?;
        }
        Ok(())
    }
}

impl AgentChannel {
    /// The channel of this process. Its sequence numbers start at the wall
    /// clock's microseconds: an agent asks for the actions after the last
    /// number it saw, which a previous process (or the node that held the
    /// fleet before) handed out, so numbers counted from 0 again would be
    /// skipped until they passed it.
    pub fn new(generation: Option<i64>) -> AgentChannel {
        let channel = AgentChannel::default();
        {
            let mut inner = channel.lock();
            inner.seq = crate::runtime::now().0.max(0) as u64;
            inner.generation = generation;
        }
        channel
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one attempt of `action` for the agent of `host` and resolves
    /// with the agent's outcome, or with a retryable failure when the agent
    /// does not answer before the attempt's deadline (the engine then tries
    /// again, maybe elsewhere once the host is judged lost).
    pub fn execute(
        &self,
        host: String,
        action: ActionRecord,
        replication: Option<Replication>,
    ) -> BoxFuture<ActionOutcome> {
        let (tx, rx) = oneshot::channel();
        let deadline_micros = action.deadline.0 - crate::runtime::now().0;
        {
            let mut channel = self.lock();
            channel.seq += 1;
            let seq = channel.seq;
            let queue = channel.hosts.entry(host.clone()).or_default();
            queue.pending.insert(action.id, Pending { seq, record: action, replication, answer: tx });
            queue.notify.notify_waiters();
        }
        let wait = Duration::from_micros(deadline_micros.max(0) as u64) + Duration::from_millis(200);
        Box::pin(async move {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => ActionOutcome::Failed {
                    error: format!("a newer attempt went to the agent of host {host}"),
                    retryable: true,
                },
                Err(_) => ActionOutcome::Failed {
                    error: format!("the agent of host {host} did not answer within the attempt's deadline"),
                    retryable: true,
                },
            }
        })
    }

    /// Queues chaos for the whole of `host` (its agent's next fetch takes it).
    pub fn host_fault(&self, host: &str, fault: drover_model::Fault) {
        let mut channel = self.lock();
        channel.seq += 1;
        let seq = channel.seq;
        let queue = channel.hosts.entry(host.to_string()).or_default();
        queue.fault = Some(HostFault { seq, fault });
        queue.notify.notify_waiters();
    }

    /// The actions of `host` queued after `after`, waiting up to `wait`
    /// for one; a host fault comes alone, at once.
    pub async fn fetch(&self, host: &str, after: u64, wait: Duration) -> ActionBatch {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = {
                let mut channel = self.lock();
                let generation = channel.generation;
                let queue = channel.hosts.entry(host.to_string()).or_default();
                if let Some(fault) = queue.fault.take() {
                    return ActionBatch { actions: Vec::new(), host_fault: Some(fault), generation, cursor: None };
                }
                let ready: Vec<QueuedAction> = queue
                    .pending
                    .values()
                    .filter(|p| p.seq > after)
                    .map(|p| QueuedAction {
                        seq: p.seq,
                        action: p.record.clone(),
                        replication: p.replication.clone(),
                        shard: None,
                        generation: None,
                    })
                    .collect();
                if !ready.is_empty() {
                    let mut ready = ready;
                    ready.sort_by_key(|a| a.seq);
                    return ActionBatch { actions: ready, host_fault: None, generation, cursor: None };
                }
                queue.notify.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Queued between the look and the enable: look again.
            if self.has_after(host, after) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return ActionBatch { generation: self.lock().generation, ..ActionBatch::default() };
            }
        }
    }

    /// Remembers the ports the beats of an agent report.
    pub fn note_ports(&self, beats: &[drover_model::Beat]) {
        if beats.iter().all(|b| b.facts.port.is_none()) {
            return;
        }
        let mut channel = self.lock();
        for beat in beats {
            if let Some(port) = beat.facts.port {
                // Unchanged almost always: no write to the entry then.
                if channel.ports.get(&beat.instance) != Some(&port) {
                    channel.ports.insert(beat.instance, port);
                    channel.ports_epoch = channel.ports_epoch.wrapping_add(1);
                }
            }
        }
    }

    /// The agent of `host` was heard at `at` (a batch of its arrived, and is
    /// answered: the agent sent it no earlier, so the lease the answer
    /// renews runs out no later than `at + ttl`) and holds a lease of `ttl`.
    pub fn heard(&self, host: &str, at: tokio::time::Instant, ttl: Duration) {
        let mut channel = self.lock();
        let lease = channel.leases.entry(host.to_string()).or_insert(AgentLease { heard_at: at, ttl });
        lease.heard_at = lease.heard_at.max(at);
        lease.ttl = ttl;
    }

    /// How long the agent of `host` has been silent (None: not heard since
    /// this control plane started, or it tells no lease).
    pub fn silence(&self, host: &str) -> Option<Silence> {
        let lease = *self.lock().leases.get(host)?;
        Some(Silence { silent_for: lease.heard_at.elapsed(), ttl: lease.ttl })
    }

    /// Drops the attempt `attempt` of action `id` from `host`'s queue (it
    /// was answered without its agent); its agent never runs it.
    pub fn withdraw(&self, host: &str, id: ActionId, attempt: u32) {
        let mut channel = self.lock();
        if let Some(queue) = channel.hosts.get_mut(host) {
            if queue.pending.get(&id).is_some_and(|p| p.record.attempts == attempt) {
                queue.pending.remove(&id);
            }
        }
    }

    /// The queues feeding agent hosts' heartbeat batches to the engine.
    pub fn feeds(&self) -> &crate::heartbeat_feed::HeartbeatFeeds {
        &self.feeds
    }

    /// The port instance `id` was last reported listening on.
    pub fn port(&self, id: drover_model::InstanceId) -> Option<u16> {
        self.lock().ports.get(&id).copied()
    }

    /// The ports of `ids` (in order; None for None), under one lock.
    pub fn ports(&self, ids: impl IntoIterator<Item = Option<drover_model::InstanceId>>) -> Vec<Option<u16>> {
        let channel = self.lock();
        ids.into_iter().map(|id| id.and_then(|id| channel.ports.get(&id).copied())).collect()
    }

    /// A number that moves whenever an instance's reported port is new or
    /// changed: while it and the engine's `records_epoch` stand still, the
    /// routers beside the control plane have nothing to follow.
    pub fn ports_epoch(&self) -> u64 {
        self.lock().ports_epoch
    }

    fn has_after(&self, host: &str, after: u64) -> bool {
        self.lock().hosts.get(host).is_some_and(|q| q.fault.is_some() || q.pending.values().any(|p| p.seq > after))
    }

    /// The agent's outcome for (`id`, `attempt`). True when it answered the
    /// attempt waiting for it; false for an unknown or older attempt (already
    /// answered, superseded, or from before a restart: harmless).
    pub fn answer(&self, host: &str, id: ActionId, attempt: u32, outcome: ActionOutcome) -> bool {
        let mut channel = self.lock();
        let Some(queue) = channel.hosts.get_mut(host) else { return false };
        match queue.pending.get(&id) {
            Some(p) if p.record.attempts == attempt => {}
            _ => return false,
        }
        let Some(pending) = queue.pending.remove(&id) else { return false };
        let _ = pending.answer.send(outcome);
        true
    }
}

fn own_host(caller: &crate::auth::Identity, name: &str) -> Result<(), ApiError> {
    if caller.host.as_deref() == Some(name) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "token {:?} is the agent of host {:?}; only the agent of host {name:?} takes its actions",
            caller.name,
            caller.host.as_deref().unwrap_or("none")
        ),
    ))
}

/// The agent of host `name` fetches the actions queued for it (long poll).
#[utoipa::path(get, path = "/v1/hosts/{name}/actions", tag = "hosts",
    params(("name" = String, Path, description = "Host name"), FetchParams),
    responses((status = 200, body = ActionBatch), (status = 403, body = ErrorBody)))]
pub(crate) async fn fetch_actions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(params): Query<FetchParams>,
) -> Result<Json<ActionBatch>, ApiError> {
    let ready = state.ready()?;
    own_host(&caller, &name)?;
    let wait = params.wait_ms.map(Duration::from_millis).unwrap_or(DEFAULT_WAIT).min(MAX_WAIT);
    let mut cursor = Cursor::parse(&params.after).map_err(ApiError::bad_request)?;
    let after = cursor.after(&state.node);
    let mut batch = ready.agents.fetch(&name, after, wait).await;
    let map = state.shards.read().unwrap_or_else(PoisonError::into_inner).clone();
    if map.shards > 1 {
        // This node's part of a split fleet's queue (`forward` asks every
        // holder and merges): only what it still holds, each action with
        // its shard's generation; the cursor moves past what is left out,
        // which the shard's next holder queues again.
        let seen = batch.actions.iter().map(|a| a.seq).max().unwrap_or(after);
        cursor.advance(&state.node, seen);
        batch.actions.retain_mut(|queued| {
            let shard = queued.action.service.slot().shard(map.shards);
            let Some(&generation) = map.generations.get(&shard) else { return false };
            queued.shard = Some(u32::from(shard));
            queued.generation = Some(generation);
            true
        });
        batch.generation = None;
        batch.cursor = Some(
            Cursor { base: cursor.base, nodes: [(state.node.to_string(), cursor.after(&state.node))].into() }
                .to_string(),
        );
    }
    Ok(Json(batch))
}

/// The agent of host `name` answers one attempt of an action. Idempotent:
/// an answer for an attempt no longer waited for is acknowledged and dropped.
#[utoipa::path(post, path = "/v1/hosts/{name}/actions/{id}/result", tag = "hosts",
    params(("name" = String, Path, description = "Host name"), ("id" = String, Path, description = "Action id")),
    request_body = ActionResultBody,
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn post_action_result(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, id)): Path<(String, String)>,
    Json(body): Json<ActionResultBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ready = state.ready()?;
    own_host(&caller, &name)?;
    let id: ActionId = id.parse().map_err(|_| ApiError::bad_request(format!("{id:?} is not an action id")))?;
    let accepted = ready.agents.answer(&name, id, body.attempt, body.outcome);
    Ok(Json(serde_json::json!({"accepted": accepted})))
}

/// The routers beside the control plane of the services on agent hosts,
/// with the key their login passwords are derived from.
#[derive(Clone)]
pub struct RoutersBeside {
    pub routers: Arc<drover_providers::local::ControlPlaneRouters>,
    /// Derives each service's login password (the URL's).
    pub key: drover_secrets::SecretKey,
}

impl RoutersBeside {
    /// The stable URL of service `name` through its router here: the
    /// router's port and the login password derived from the key. None for
    /// a service with no router here (not on agent hosts).
    pub fn url(&self, name: &str) -> Option<String> {
        let id = self.routers.service_id(name)?;
        self.routers.url(name, &crate::runtime::login_password(&self.key, id))
    }
}

/// The `local` provider of a control plane with no host of its own
/// (`--no-local`): it runs nothing here; every action goes to the agent of
/// its instance's host, and an action for an instance on no agent host fails.
pub struct AgentsProvider {
    /// The routers beside the control plane (None: they could not be
    /// opened; services then have no URL).
    pub routers: Option<RoutersBeside>,
}

impl drover_providers::Provider for AgentsProvider {
    /// The router beside the control plane (see [`RoutersBeside::url`]).
    fn service_url(&self, service: &str) -> Option<String> {
        self.routers.as_ref()?.url(service)
    }

    fn name(&self) -> &str {
        "local"
    }
    fn engines(&self) -> &'static [drover_model::EngineKind] {
        &[drover_model::EngineKind::Postgres]
    }
    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome> {
        Box::pin(async move {
            ActionOutcome::Failed {
                error: format!(
                    "instance {} is on no agent host; this control plane runs no servers of its own (--no-local)",
                    action.instance
                ),
                retryable: true,
            }
        })
    }
    fn start(&self, _sink: tokio::sync::mpsc::Sender<drover_providers::ProviderEvent>) {}
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_keeps_a_place_per_node_and_reads_back_what_it_wrote() {
        // A plain number (a fleet one node holds) is every node's place.
        let plain = Cursor::parse("1700000000000042").unwrap();
        assert_eq!(plain.after("a"), 1_700_000_000_000_042);
        assert_eq!(plain.to_string(), "1700000000000042");
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default(), "no after: from the start");

        let mut cursor = plain.clone();
        cursor.advance("a", 5);
        assert_eq!(cursor.after("a"), 1_700_000_000_000_042, "a place never moves back");
        cursor.advance("node b", 1_800_000_000_000_000);
        let mut theirs = Cursor::default();
        theirs.advance("c~.&=", 7);
        cursor.merge(&theirs);
        let text = cursor.to_string();
        assert!(
            text.chars().all(|c| c.is_ascii_alphanumeric() || c == '~' || c == '.'),
            "safe in a query string as it is: {text}"
        );
        let read = Cursor::parse(&text).unwrap();
        assert_eq!(read, cursor);
        assert_eq!(read.after("node b"), 1_800_000_000_000_000);
        assert_eq!(read.after("c~.&="), 1_700_000_000_000_042, "merged: the later of the two");
        assert_eq!(read.after("unheard"), 1_700_000_000_000_042, "a node not named starts from the base");
    }

    #[test]
    fn a_cursor_this_control_plane_did_not_give_is_refused_with_why() {
        for (bad, why) in [
            ("x", "\"x\" is not a number"),
            ("0~61", "is not NODE.SEQ"),
            ("0~zz.1", "is not a node's name in hex"),
            ("0~61.-1", "is not a number"),
            ("0~ff.1", "is not a node's name in hex"),
        ] {
            let error = Cursor::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(error.starts_with("after must be a number or a cursor"), "{error}");
        }
        let many: String = (0..300).map(|i| format!("~{}.1", hex::encode(format!("n{i}")))).collect();
        assert!(Cursor::parse(&format!("0{many}")).unwrap_err().contains("more than 256 nodes"));
    }
}
