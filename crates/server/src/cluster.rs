//! `GET /v1/cluster` (issue 16): the control-plane nodes and the fleet's
//! shards as this node's store sees them. On a shared PostgreSQL store:
//! every node that noted itself (standbys while they wait, the holder when
//! it renews), alive when seen within two lease TTLs by the database's
//! clock, and every shard's lease (holder, generation, expiry; one row,
//! the whole fleet's, unless it is split with `--shards`). On the
//! embedded SQLite store:
//! this node alone, holding the one shard.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// This node, and the store it shares with others (None: the data dir's
/// SQLite store, one node).
#[derive(Clone)]
pub struct ThisNode {
    pub name: String,
    pub url: String,
    pub shared: Option<(Arc<drover_store::PgStore>, Duration)>,
    /// The shards it holds and their holders (`lease::ShardMap`).
    pub shards: crate::lease::Shards,
    /// The key every node shares (`node_commands` seals with it).
    pub key: drover_secrets::SecretKey,
}

#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct ClusterNode {
    pub name: String,
    /// Seen within two lease TTLs (always, for this node on SQLite).
    pub alive: bool,
    /// Shards whose lease it holds and has not let expire.
    pub shards: u32,
    /// Its API URL (where standbys forward).
    pub url: String,
    /// Milliseconds since it was last seen, by the store's clock.
    pub seen_ms_ago: u64,
    /// The answering node.
    pub this: bool,
}

/// One shard's lease.
#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct ClusterLease {
    pub shard: i64,
    pub holder: String,
    /// Rises on every takeover of the shard.
    pub generation: i64,
    /// Until it expires by the store's clock; negative: expired that long ago.
    pub expires_in_ms: i64,
}

#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct ClusterView {
    pub nodes: Vec<ClusterNode>,
    /// Shards of the fleet (at least 1: the whole fleet, before any lease).
    pub shards: u32,
    /// Every shard's lease, by shard (none on SQLite).
    pub leases: Vec<ClusterLease>,
    /// The lease's generation (rises on every takeover); none on SQLite.
    pub generation: Option<i64>,
    /// `postgres` (shared by nodes) or `sqlite` (one node).
    pub store: &'static str,
}

/// The control-plane nodes, their liveness and the shards each holds.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterView), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn show_cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let ready = state.ready()?;
    let node = ready.node.clone();
    let Some((store, ttl)) = node.shared.clone() else {
        return Ok(Json(ClusterView {
            nodes: vec![ClusterNode {
                name: node.name,
                alive: true,
                shards: 1,
                url: node.url,
                seen_ms_ago: 0,
                this: true,
            }],
            shards: 1,
            leases: Vec::new(),
            generation: None,
            store: "sqlite",
        }));
    };
    let cluster = tokio::task::spawn_blocking(move || store.cluster())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("cannot read the cluster from the store: {e}")))?;
    let held =
        |name: &str| cluster.leases.iter().filter(|(_, l)| l.expires_in_micros > 0 && l.holder == name).count() as u32;
    let nodes = cluster
        .nodes
        .into_iter()
        .map(|n| ClusterNode {
            alive: n.seen_ago <= ttl * 2,
            shards: held(&n.name),
            this: n.name == node.name,
            seen_ms_ago: n.seen_ago.as_millis() as u64,
            url: n.address,
            name: n.name,
        })
        .collect();
    let leases: Vec<ClusterLease> = cluster
        .leases
        .iter()
        .map(|(shard, l)| ClusterLease {
            shard: *shard,
            holder: l.holder.clone(),
            generation: l.generation,
            expires_in_ms: l.expires_in_micros / 1000,
        })
        .collect();
    Ok(Json(ClusterView {
        nodes,
        shards: (leases.len() as u32).max(1),
        leases,
        generation: cluster.lease.map(|l| l.generation),
        store: "postgres",
    }))
}
