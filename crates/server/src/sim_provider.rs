//! The simulated world as its own process (`drover sim-provider`, issue
//! 16): a small fake cloud API that every control-plane node talks to, so
//! simulated machines outlive the node that created them, as real ones
//! outlive a node on the agents' hosts.
//!
//! The process serves one [`SimProvider`] world (`DATA_DIR/sim-provider.json`,
//! durable before any action answers, as in a node):
//! - `POST /v1/actions` (an [`ActionRecord`]) carries out one attempt and
//!   answers `{"outcome": …, "gone": …}`;
//! - `GET /v1/beats` is one heartbeat round: a beat for every instance the
//!   control plane can hear (the node polls it at its heartbeat interval);
//! - `POST /v1/chaos` `{"instance", "fault"}` breaks a machine without any
//!   node (a test kills a primary while the node that holds it dies);
//! - `GET /v1/instances`, `GET /healthz`.
//!
//! **Fencing.** A node sends its lease's generation with every action
//! (header [`GENERATION_HEADER`]). The world keeps the highest it has seen
//! ([`GenerationFence`], in `DATA_DIR/sim-generation`, written before the
//! action is carried out)
//! and refuses an action of a lower one with 409: a node paused past its
//! lease that wakes up and sends what it had in flight acts on nothing
//! (the store already refuses its commits; this refuses its actions). An
//! action without the header (a node on the embedded SQLite store, alone by
//! definition) is not checked.
//!
//! [`RemoteSim`] is the node's side: the `sim` provider of a node started
//! with `--sim-provider-url`.

use crate::error::{ApiError, Json};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use drover_agent::fence::{FenceError, GenerationFence};
use drover_model::{ActionKind, ActionOutcome, ActionRecord, ActionState, Beat, Fault, InstanceId, Timestamp};
use drover_providers::{BoxFuture, Provider, ProviderEvent, SimConfig, SimInstance, SimProvider};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The lease generation of the node that sends an action.
pub const GENERATION_HEADER: &str = "x-drover-generation";
/// The node that sends an action (for the world's log).
pub const NODE_HEADER: &str = "x-drover-node";
/// On a fleet of several shards: the shard of the action, as `S/N` (shard
/// `S` of `N`), whose lease the generation is of. The world keeps the
/// newest generation per shard and checks that the action's id is in that
/// shard. Without it: shard 0, the fleet's (one shard).
pub const SHARD_HEADER: &str = "x-drover-shard";

/// What `POST /v1/actions` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Carried {
    pub outcome: ActionOutcome,
    /// Set when the target's machine is known to be gone (`ProviderEvent::Gone`).
    pub gone: Option<String>,
}

/// `POST /v1/chaos`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosBody {
    instance: InstanceId,
    fault: Fault,
}

#[derive(Clone)]
struct World {
    sim: Arc<SimProvider>,
    fence: Arc<GenerationFence>,
}

/// `drover sim-provider`'s settings.
#[derive(Clone, Debug)]
pub struct SimProviderOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Only `action_latency` counts here: the nodes poll the beats.
    pub sim: SimConfig,
}

/// Serves the world until `shutdown` completes.
pub async fn serve_sim_provider(
    opts: SimProviderOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", opts.data_dir.display()))?;
    let path = opts.data_dir.join("sim-provider.json");
    let sim = SimProvider::open(&path, opts.sim.clone())
        .map_err(|e| anyhow::anyhow!("cannot open the simulated world at {}: {e}", path.display()))?;
    let fence = Arc::new(GenerationFence::open(&opts.data_dir.join("sim-generation")).map_err(|e| anyhow::anyhow!(e))?);
    let app = app(World { sim, fence });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
    tracing::info!(listen = %opts.listen, world = %path.display(), "sim provider serving");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

fn app(world: World) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/beats", get(beats))
        .route("/v1/instances", get(instances))
        .route("/v1/actions", post(carry_out))
        .route("/v1/chaos", post(chaos))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(world)
}

/// The shard an action's generation is of: `S/N` in [`SHARD_HEADER`] (the
/// action's id must be in shard `S` of `N`), else shard 0.
fn shard_of(headers: &HeaderMap, action: &ActionRecord) -> Result<u32, ApiError> {
    let Some(raw) = header_of(headers, SHARD_HEADER) else { return Ok(0) };
    let bad = || ApiError::bad_request(format!("{SHARD_HEADER} must be SHARD/SHARDS (e.g. 3/12), got {raw:?}"));
    let (shard, shards) = raw.split_once('/').ok_or_else(bad)?;
    let (shard, shards): (u16, u16) =
        (shard.trim().parse().map_err(|_| bad())?, shards.trim().parse().map_err(|_| bad())?);
    if shards == 0 || u32::from(shards) > drover_store::MAX_SHARDS || shard >= shards {
        return Err(bad());
    }
    let actual = action.id.slot().shard(shards);
    if actual != shard {
        return Err(ApiError::bad_request(format!(
            "action {} is in shard {actual} of {shards}, not {shard}: its generation cannot be of shard {shard}",
            action.id
        )));
    }
    Ok(u32::from(shard))
}

async fn beats(State(world): State<World>) -> axum::Json<Vec<Beat>> {
    axum::Json(world.sim.heartbeat_round())
}

async fn instances(State(world): State<World>) -> axum::Json<Vec<SimInstance>> {
    axum::Json(world.sim.instances())
}

fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn carry_out(
    State(world): State<World>,
    headers: HeaderMap,
    Json(action): Json<ActionRecord>,
) -> Result<axum::Json<Carried>, ApiError> {
    let node = header_of(&headers, NODE_HEADER).unwrap_or("-").to_string();
    if let Some(raw) = header_of(&headers, GENERATION_HEADER) {
        let generation: i64 = raw
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{GENERATION_HEADER} must be an integer, got {raw:?}")))?;
        let shard = shard_of(&headers, &action)?;
        let fence = Arc::clone(&world.fence);
        let admitted = tokio::task::spawn_blocking(move || fence.admit_in(shard, generation))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match admitted {
            Ok(()) => {}
            Err(FenceError::Stale(stale)) => {
                tracing::warn!(%node, generation, action = %action.id, kind = action.kind.name(), "refused: a stale generation");
                return Err(ApiError::new(StatusCode::CONFLICT, stale.to_string()));
            }
            Err(FenceError::Io(e)) => return Err(ApiError::unavailable(e)),
        }
    }
    tracing::debug!(%node, action = %action.id, kind = action.kind.name(), instance = %action.instance, "carrying out");
    let (outcome, gone) = world.sim.carry_out(action).await;
    Ok(axum::Json(Carried { outcome, gone }))
}

async fn chaos(State(world): State<World>, Json(body): Json<ChaosBody>) -> Result<impl IntoResponse, ApiError> {
    let Some(target) = world.sim.instance(body.instance) else {
        return Err(ApiError::not_found(format!("no simulated instance {}", body.instance)));
    };
    let now = crate::runtime::now();
    let action = ActionRecord {
        id: drover_model::ActionId::new_at(now.0, entropy()),
        service: target.service,
        instance: body.instance,
        kind: ActionKind::InjectFault { fault: body.fault },
        state: ActionState::Running,
        attempts: 1,
        cause: "chaos asked of the simulated world".into(),
        created_at: now,
        updated_at: now,
        deadline: Timestamp(now.0),
        error: None,
    };
    let (outcome, _) = world.sim.carry_out(action).await;
    Ok(axum::Json(Carried { outcome, gone: None }))
}

fn entropy() -> u64 {
    let mut bytes = [0u8; 8];
    // An id only: a clock-derived fallback is unique enough.
    if getrandom::fill(&mut bytes).is_err() {
        return crate::runtime::now().0 as u64;
    }
    u64::from_le_bytes(bytes)
}

/// A node's `sim` provider when the world is its own process.
#[derive(Clone)]
pub struct RemoteSim {
    base: String,
    http: reqwest::Client,
    /// The node's lease generation (`None`: a node alone on SQLite).
    generation: Option<i64>,
    node: String,
    heartbeat_interval: Duration,
    sink: Arc<Mutex<Option<mpsc::Sender<ProviderEvent>>>>,
    /// On a fleet of several shards: the shards this node holds and their
    /// generations; an action carries its shard's, and one of a shard not
    /// held is not sent.
    shards: Option<crate::lease::Shards>,
}

/// How long one call to the world may take (an action's latency and its fsync included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl RemoteSim {
    pub fn new(url: &str, node: String, generation: Option<i64>, heartbeat_interval: Duration) -> Arc<RemoteSim> {
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().unwrap_or_default();
        Arc::new(RemoteSim {
            base: url.trim_end_matches('/').to_string(),
            http,
            generation,
            node,
            heartbeat_interval: heartbeat_interval.max(Duration::from_millis(1)),
            sink: Arc::new(Mutex::new(None)),
            shards: None,
        })
    }

    /// The same world for a node of a fleet split into shards: each action
    /// carries the generation of its shard as `map` has it.
    pub fn with_shards(
        url: &str,
        node: String,
        heartbeat_interval: Duration,
        map: crate::lease::Shards,
    ) -> Arc<RemoteSim> {
        let mut sim = Arc::unwrap_or_clone(RemoteSim::new(url, node, None, heartbeat_interval));
        sim.shards = Some(map);
        Arc::new(sim)
    }

    /// The generation `action` is sent with, and its shard (`S/N`) on a
    /// split fleet; `Err` when this node does not hold the action's shard.
    fn generation_of(&self, action: &ActionRecord) -> Result<(Option<i64>, Option<String>), String> {
        let Some(map) = &self.shards else { return Ok((self.generation, None)) };
        let map = map.read().unwrap_or_else(|p| p.into_inner());
        if map.shards <= 1 {
            return Ok((map.generations.get(&0).copied(), None));
        }
        let shard = action.id.slot().shard(map.shards);
        match map.generations.get(&shard) {
            Some(generation) => Ok((Some(*generation), Some(format!("{shard}/{}", map.shards)))),
            None => Err(format!(
                "this node ({}) does not hold shard {shard} of action {} (any more): it is not sent",
                self.node, action.id
            )),
        }
    }

    async fn send(&self, action: &ActionRecord) -> Result<Carried, (String, bool)> {
        let (generation, shard) = self.generation_of(action).map_err(|e| (e, false))?;
        let mut request = self.http.post(format!("{}/v1/actions", self.base)).json(action);
        request = request.header(NODE_HEADER, self.node.as_str());
        if let Some(generation) = generation {
            request = request.header(GENERATION_HEADER, generation.to_string());
        }
        if let Some(shard) = shard {
            request = request.header(SHARD_HEADER, shard);
        }
        let response = request
            .send()
            .await
            .map_err(|e| (format!("the sim provider at {} did not answer: {e}", self.base), true))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<Carried>()
                .await
                .map_err(|e| (format!("the sim provider's answer is not understood: {e}"), true));
        }
        let text = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        // A refused generation will be refused again: this node lost its lease.
        Err((format!("the sim provider answered {status}: {error}"), status != StatusCode::CONFLICT))
    }
}

impl Provider for RemoteSim {
    fn name(&self) -> &str {
        "sim"
    }

    fn engines(&self) -> &'static [drover_model::EngineKind] {
        &[drover_model::EngineKind::Postgres, drover_model::EngineKind::Redis, drover_model::EngineKind::Kafka]
    }

    fn execute(&self, action: ActionRecord) -> BoxFuture<ActionOutcome> {
        let this = self.clone();
        Box::pin(async move {
            match this.send(&action).await {
                Ok(Carried { outcome, gone }) => {
                    let sink = this.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let (Some(detail), Some(sink)) = (gone, sink) {
                        let _ = sink.send(ProviderEvent::Gone { instance: action.instance, detail }).await;
                    }
                    outcome
                }
                Err((error, retryable)) => ActionOutcome::Failed { error, retryable },
            }
        })
    }

    /// Polls the world's beats every heartbeat interval. While the world
    /// does not answer, nothing is heard: its instances fall silent, which
    /// the engine reads as unknown, not dead.
    fn start(&self, sink: mpsc::Sender<ProviderEvent>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink.clone());
        let (http, url, period) = (self.http.clone(), format!("{}/v1/beats", self.base), self.heartbeat_interval);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                ticker.tick().await;
                if sink.is_closed() {
                    break;
                }
                let beats = match http.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json::<Vec<Beat>>().await.map_err(|e| e.to_string())
                    }
                    Ok(response) => Err(format!("answered {}", response.status())),
                    Err(e) => Err(e.to_string()),
                };
                match beats {
                    Ok(beats) => {
                        if failing {
                            tracing::info!(%url, "the sim provider answers again");
                            failing = false;
                        }
                        if !beats.is_empty() && sink.send(ProviderEvent::Beats(beats)).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%url, %error, "cannot hear the simulated world: its instances are silent");
                            failing = true;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use drover_model::{ActionId, ActionKind, ServiceId, Slot};
    use tower::ServiceExt;

    fn action_in(name: &str) -> ActionRecord {
        let slot = Slot::of_name(name);
        let now = Timestamp(1_700_000_000_000_000);
        ActionRecord {
            id: ActionId::new_at(now.0, 1).in_slot(slot),
            service: ServiceId::new_at(now.0, 2).in_slot(slot),
            instance: InstanceId::new_at(now.0, 3).in_slot(slot),
            kind: ActionKind::Probe,
            state: ActionState::Running,
            attempts: 1,
            cause: "test".into(),
            created_at: now,
            updated_at: now,
            deadline: now,
            error: None,
        }
    }

    async fn post(app: &axum::Router, action: &ActionRecord, generation: i64, shard: Option<&str>) -> (u16, String) {
        let mut request = axum::http::Request::post("/v1/actions")
            .header("content-type", "application/json")
            .header(GENERATION_HEADER, generation.to_string());
        if let Some(shard) = shard {
            request = request.header(SHARD_HEADER, shard);
        }
        let request = request.body(Body::from(serde_json::to_vec(action).unwrap())).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Nodes holding different shards have unrelated generations: the
    /// world refuses an older generation of the same shard only, and an
    /// action whose id is not in the shard it names.
    #[tokio::test]
    async fn the_world_keeps_the_newest_generation_of_each_shard() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProvider::open(&dir.path().join("sim-provider.json"), SimConfig::default()).unwrap();
        let fence = Arc::new(GenerationFence::open(&dir.path().join("sim-generation")).unwrap());
        let app = app(World { sim, fence });
        let name_in =
            |shard: u16| (0..).map(|i| format!("db-{i}")).find(|n| Slot::of_name(n).shard(4) == shard).unwrap();
        let (one, two) = (action_in(&name_in(1)), action_in(&name_in(2)));
        assert_eq!(post(&app, &one, 7, Some("1/4")).await.0, 200);
        assert_eq!(
            post(&app, &two, 3, Some("2/4")).await.0,
            200,
            "shard 2's generation 3 is not older than shard 1's 7"
        );
        let (status, body) = post(&app, &two, 2, Some("2/4")).await;
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("of shard 2 is older than 3"), "{body}");
        assert_eq!(post(&app, &one, 7, Some("1/4")).await.0, 200);
        // Without the header: shard 0, the fleet's.
        assert_eq!(post(&app, &one, 1, None).await.0, 200);
        for bad in ["2/4", "1", "4/4", "1/0", "x/4", "1/99999"] {
            let (status, body) = post(&app, &one, 9, Some(bad)).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        let (_, body) = post(&app, &one, 9, Some("2/4")).await;
        assert!(body.contains("is in shard 1 of 4, not 2"), "{body}");
    }

    /// Two nodes of a split fleet share one world: each action carries its
    /// own shard's generation, a node's action of a shard it does not hold
    /// is not sent, and a node with an older generation of a shard than
    /// the world saw is refused (not retried).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_of_a_split_fleet_send_each_action_with_its_shard_s_generation() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProvider::open(&dir.path().join("sim-provider.json"), SimConfig::default()).unwrap();
        let fence = Arc::new(GenerationFence::open(&dir.path().join("sim-generation")).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app(World { sim, fence })).await });
        let name_in =
            |shard: u16| (0..).map(|i| format!("db-{i}")).find(|n| Slot::of_name(n).shard(4) == shard).unwrap();
        let map = |held: &[(u16, i64)]| -> crate::lease::Shards {
            Arc::new(std::sync::RwLock::new(crate::lease::ShardMap {
                shards: 4,
                held: held.iter().map(|h| h.0).collect(),
                generations: held.iter().copied().collect(),
                holders: Default::default(),
            }))
        };
        let refusal = |outcome: ActionOutcome| match outcome {
            ActionOutcome::Failed { error, retryable } => Some((error, retryable)),
            _ => None,
        };
        let a = RemoteSim::with_shards(&url, "a".into(), Duration::from_secs(1), map(&[(1, 7), (2, 3)]));
        for shard in [1, 2] {
            let outcome = a.execute(action_in(&name_in(shard))).await;
            assert!(refusal(outcome.clone()).is_none_or(|(e, _)| !e.contains("older")), "shard {shard}: {outcome:?}");
        }
        let (error, retryable) = refusal(a.execute(action_in(&name_in(3))).await).expect("not sent");
        assert!(error.contains("does not hold shard 3") && !retryable, "{error}");
        // b took shard 2 over with generation 4; a paused a with 3 is refused.
        let b = RemoteSim::with_shards(&url, "b".into(), Duration::from_secs(1), map(&[(2, 4)]));
        let outcome = b.execute(action_in(&name_in(2))).await;
        assert!(refusal(outcome.clone()).is_none_or(|(e, _)| !e.contains("older")), "{outcome:?}");
        let (error, retryable) = refusal(a.execute(action_in(&name_in(2))).await).expect("refused");
        assert!(
            error.contains("409") && error.contains("generation 3 of shard 2 is older than 4") && !retryable,
            "{error}"
        );
        // a's shard 1 is its own still.
        let outcome = a.execute(action_in(&name_in(1))).await;
        assert!(refusal(outcome.clone()).is_none_or(|(e, _)| !e.contains("older")), "{outcome:?}");
    }
}
