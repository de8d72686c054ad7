//! The status site of a fleet split between nodes (issue 16): its
//! components are the whole fleet's, but each node's engine has only the
//! shards it holds. Every node writes, every [`PUBLISH_EVERY`], how its
//! engine sees each shard it holds (`ShardHealth`: per engine kind, its
//! services by state, open actions, the brake) into
//! the shared store with the generation it holds the shard with
//! (`PgStore::put_shard_health`: a node that lost a shard cannot write
//! over its new holder's row), and the node that renders `/status` or
//! samples the components (shard 0's holder), or the dashboard's overview
//! on any node, adds its own engine's shards
//! to the other shards' rows written within [`FRESH`]. A shard with no
//! fresh row (its holder died and nobody has taken it yet) is left out of
//! the sums and named in a warning: its services are unknown, not down.
//!
//! A shard's row also carries its holder's parts of split rollouts
//! (`RolloutPart`): shard 0's holder gives the other shards' fresh ones to
//! its engine after each write (`Input::RolloutProgress`), which opens
//! waves, pauses and ends the rollouts on them.

use crate::lease::{ShardMap, Shards};
use crate::runtime::EngineHandle;
use drover_engine::{Engine, Input, RolloutPart, ShardHealth};
use drover_store::PgStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often each node writes its shards' health.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How old another node's row may be and still count.
pub const FRESH: Duration = Duration::from_secs(10);

/// Runs until `stop`: the health of each shard `engine` holds goes to
/// `store`, as `node`.
pub fn spawn(engine: EngineHandle, store: Arc<PgStore>, shards: Shards, node: String, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(PUBLISH_EVERY) => {}
            }
            let map = shards.read().unwrap_or_else(|p| p.into_inner()).clone();
            if map.shards <= 1 {
                continue;
            }
            let count = map.shards;
            let asked = engine.query(move |e: &Engine| (e.health_by_shard(count), e.rollout_parts())).await;
            let Ok((mut by_shard, mut parts)) = asked else {
                continue;
            };
            let rows: Vec<(u16, i64, String)> = map
                .held
                .iter()
                .filter_map(|shard| {
                    let generation = *map.generations.get(shard)?;
                    let mut health = by_shard.remove(shard).unwrap_or_default();
                    health.rollouts = parts.remove(shard).unwrap_or_default();
                    Some((*shard, generation, serde_json::to_string(&health).ok()?))
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let (writing, node) = (Arc::clone(&store), node.clone());
            match tokio::task::spawn_blocking(move || writing.put_shard_health(&node, &rows)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot write this node's shards' health; retrying"),
                Err(_) => {}
            }
            if map.held.contains(&0) {
                drive_rollouts(&engine, &store, &map).await;
            }
        }
    });
}

/// On shard 0's holder: the other shards' fresh parts of rollouts to its
/// engine (`Input::RolloutProgress`).
async fn drive_rollouts(engine: &EngineHandle, store: &Arc<PgStore>, map: &ShardMap) {
    let reading = Arc::clone(store);
    let rows = match tokio::task::spawn_blocking(move || reading.shard_health(FRESH)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the shards' parts of rollouts; retrying");
            return;
        }
        Err(_) => return,
    };
    let mut parts: BTreeMap<u16, Vec<RolloutPart>> = BTreeMap::new();
    for (shard, node, json) in rows {
        if map.held.contains(&shard) {
            continue;
        }
        match serde_json::from_str::<ShardHealth>(&json) {
            Ok(health) => {
                parts.insert(shard, health.rollouts);
            }
            Err(error) => tracing::warn!(shard, %node, %error, "a shard's health in the store is unreadable"),
        }
    }
    if let Err(error) = engine.call(Input::RolloutProgress { parts }).await {
        tracing::debug!(%error, "the engine did not take the shards' parts of rollouts");
    }
}

/// The whole fleet's health as this node sees it: its own engine's for
/// the shards it holds, the store's fresh rows for the others. Also the
/// shards it has nothing fresh for.
pub async fn whole(
    engine: &EngineHandle,
    store: &Arc<PgStore>,
    map: &ShardMap,
) -> Result<(ShardHealth, Vec<u16>), crate::error::ApiError> {
    let count = map.shards;
    let own = engine.query(move |e: &Engine| e.health_by_shard(count)).await?;
    let reading = Arc::clone(store);
    let rows = tokio::task::spawn_blocking(move || reading.shard_health(FRESH))
        .await
        .map_err(|e| crate::error::ApiError::internal(format!("reading the shards' health failed: {e}")))?
        .map_err(|e| crate::error::ApiError::unavailable(format!("cannot read the shards' health: {e}")))?;
    let mut parts: BTreeMap<u16, ShardHealth> = BTreeMap::new();
    for (shard, node, json) in rows {
        if map.held.contains(&shard) {
            continue;
        }
        match serde_json::from_str::<ShardHealth>(&json) {
            Ok(health) => {
                parts.insert(shard, health);
            }
            Err(error) => tracing::warn!(shard, %node, %error, "a shard's health in the store is unreadable"),
        }
    }
    for shard in &map.held {
        parts.insert(*shard, own.get(shard).cloned().unwrap_or_default());
    }
    let missing: Vec<u16> = (0..count).filter(|s| !parts.contains_key(s)).collect();
    Ok((ShardHealth::sum(parts.into_values()), missing))
}
