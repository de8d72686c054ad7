//! `GET /v1/cluster` (issue 16): the control-plane nodes and the fleet's
//! shards as this node's store sees them. On a shared PostgreSQL store:
//! every node that noted itself (standbys while they wait, the holder when
//! it renews), alive when seen within two lease TTLs by the database's
//! clock, and the one shard of this release held by the lease's holder
//! with its generation. On the embedded SQLite store: this node alone,
//! holding the one shard.

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
}

#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct ClusterNode {
    pub name: String,
    /// Seen within two lease TTLs (always, for this node on SQLite).
    pub alive: bool,
    /// Shards it holds (this release: 1 for the lease's holder, else 0).
    pub shards: u32,
    /// Its API URL (where standbys forward).
    pub url: String,
    /// Milliseconds since it was last seen, by the store's clock.
    pub seen_ms_ago: u64,
    /// The answering node.
    pub this: bool,
}

#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct ClusterView {
    pub nodes: Vec<ClusterNode>,
    /// Shards of the fleet (this release: 1, the whole fleet).
    pub shards: u32,
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
            generation: None,
            store: "sqlite",
        }));
    };
    let cluster = tokio::task::spawn_blocking(move || store.cluster())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("cannot read the cluster from the store: {e}")))?;
    let holder = cluster.lease.as_ref().filter(|l| l.expires_in_micros > 0).map(|l| l.holder.clone());
    let nodes = cluster
        .nodes
        .into_iter()
        .map(|n| ClusterNode {
            alive: n.seen_ago <= ttl * 2,
            shards: u32::from(holder.as_deref() == Some(n.name.as_str())),
            this: n.name == node.name,
            seen_ms_ago: n.seen_ago.as_millis() as u64,
            url: n.address,
            name: n.name,
        })
        .collect();
    Ok(Json(ClusterView { nodes, shards: 1, generation: cluster.lease.map(|l| l.generation), store: "postgres" }))
}
