//! The records of the whole fleet every engine of a split fleet keeps a
//! copy of (issue 16, docs/architecture.md "Left, in order"): images and
//! hosts are registered through shard 0's holder (`shard_route`'s `Fleet`
//! rule), and every node's engine learns those it lacks from the shared
//! store within [`POLL`] (`Input::FleetRecords`), so a service of any shard
//! can be created on a new image or placed on a new host. An operator's
//! cordon or drain of a host, ordered through shard 0's holder too, is
//! learned the same way: each engine then keeps its own services' new
//! members off the host, and moves them off a drained one. Images and
//! hosts are only ever added and a host's operator state only moves
//! forward, so counts say when there is something to learn.
//!
//! Freezes of automation by hand (a runbook run on shard 0's holder) are
//! learned the same way: every engine stops its remedies in the zone.
//!
//! Rollouts of the split fleet (`drover_engine`'s `rollouts::split`):
//! their records, kept by shard 0's holder, are followed by every engine's
//! parts, and a shard this node holds gets its part of an unfinished one.
//!
//! Not learned here: a host's silence, which each engine judges from its
//! own instances' heartbeats.

use crate::lease::Shards;
use crate::runtime::EngineHandle;
use drover_engine::{Command, Input};
use drover_store::breakglass::BreakGlassStore;
use drover_store::PgStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node asks the store whether images or hosts were added, or
/// a host cordoned or drained.
pub const POLL: Duration = Duration::from_millis(500);

/// Runs until `stop`: the engine behind `engine` learns every image and
/// host `store` has, and every freeze of automation by hand `breakglass`
/// has (a runbook's freeze runs on shard 0's holder's engine; every other
/// engine must stop its remedies in that zone too).
pub fn spawn(
    engine: EngineHandle,
    store: Arc<PgStore>,
    breakglass: Arc<BreakGlassStore>,
    shards: Shards,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut seen: Option<drover_store::FleetRecordCounts> = None;
        let mut frozen: Option<BTreeSet<String>> = None;
        let mut rollouts = RolloutsSeen::default();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            learn_records(&engine, &store, &mut seen).await;
            learn_freezes(&engine, &breakglass, &mut frozen).await;
            learn_rollouts(&engine, &store, &shards, &mut rollouts).await;
        }
    });
}

/// What the engine was last given of the rollouts.
#[derive(Default)]
struct RolloutsSeen {
    /// Each record's last write given.
    written: std::collections::HashMap<drover_model::RolloutId, i64>,
    /// The newest write given (micros).
    newest: i64,
    held: Option<BTreeSet<u16>>,
    /// Polls since the engine was last given anything: every
    /// [`FOLLOW_ANYWAY`] it is given the held shards again (an engine
    /// handed over starts without them).
    idle: u32,
}

const FOLLOW_ANYWAY: u32 = 10;
/// Finished records are read again for this long after the newest write
/// seen: a record written by a node whose clock is a little behind.
const FINISHED_LOOKBACK_MICROS: i64 = 60_000_000;

/// The rollouts' records written since the last poll (and every
/// unfinished one) and the shards this node holds go to the engine when
/// either changed (`Input::Rollouts`).
async fn learn_rollouts(engine: &EngineHandle, store: &Arc<PgStore>, shards: &Shards, seen: &mut RolloutsSeen) {
    let held = shards.read().unwrap_or_else(|p| p.into_inner()).held.clone();
    let reading = Arc::clone(store);
    let since = seen.newest - FINISHED_LOOKBACK_MICROS;
    let records = match tokio::task::spawn_blocking(move || reading.rollouts_since(since)).await {
        Ok(Ok(records)) => records,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the rollouts; retrying");
            return;
        }
        Err(_) => return,
    };
    let records: Vec<drover_model::RolloutRecord> =
        records.into_iter().filter(|r| r.parts > 1 && seen.written.get(&r.id) != Some(&r.updated_at.0)).collect();
    seen.idle += 1;
    if records.is_empty() && seen.held.as_ref() == Some(&held) && seen.idle < FOLLOW_ANYWAY {
        return;
    }
    let written: Vec<(drover_model::RolloutId, i64)> = records.iter().map(|r| (r.id, r.updated_at.0)).collect();
    let input = Input::Rollouts { records, held: held.iter().copied().collect() };
    match engine.call(input).await {
        Ok(_) => {
            for (id, at) in written {
                seen.written.insert(id, at);
                seen.newest = seen.newest.max(at);
            }
            seen.held = Some(held);
            seen.idle = 0;
        }
        // Handed over or stopping: given again at the next poll.
        Err(error) => tracing::debug!(%error, "the engine did not take the rollouts' records"),
    }
}

async fn learn_records(
    engine: &EngineHandle,
    store: &Arc<PgStore>,
    seen: &mut Option<drover_store::FleetRecordCounts>,
) {
    let counting = Arc::clone(store);
    let counts = match tokio::task::spawn_blocking(move || counting.fleet_record_counts()).await {
        Ok(Ok(counts)) => counts,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot count the fleet's images and hosts; retrying");
            return;
        }
        Err(_) => return,
    };
    if *seen == Some(counts) {
        return;
    }
    let reading = Arc::clone(store);
    let (images, hosts) = match tokio::task::spawn_blocking(move || reading.fleet_records()).await {
        Ok(Ok(records)) => records,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the fleet's images and hosts; retrying");
            return;
        }
        Err(_) => return,
    };
    // Counted before they were read: at least what was counted.
    match engine.call(Input::FleetRecords { images, hosts }).await {
        Ok(reply) => {
            tracing::debug!(?reply, "the engine learned the fleet's images and hosts");
            *seen = Some(counts);
        }
        // Handed over or stopping: asked again at the next poll.
        Err(error) => tracing::debug!(%error, "the engine did not take the fleet's images and hosts"),
    }
}

/// The freezes the store has that were not there at the last poll are
/// applied to the engine, and those gone are released (the first poll
/// applies every one: freezing again is a no-op). Only changes are acted
/// on: on the node whose runbook froze or released a zone, the engine
/// changes before the store does, and must not be put back in between.
/// An engine handed over starts with the store's freezes (`held::Freezes`).
async fn learn_freezes(engine: &EngineHandle, breakglass: &Arc<BreakGlassStore>, seen: &mut Option<BTreeSet<String>>) {
    let reading = Arc::clone(breakglass);
    let now: BTreeSet<String> = match tokio::task::spawn_blocking(move || reading.freezes()).await {
        Ok(Ok(scopes)) => scopes.into_iter().collect(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the freezes of automation; retrying");
            return;
        }
        Err(_) => return,
    };
    let before = seen.clone().unwrap_or_default();
    if seen.as_ref() == Some(&now) {
        return;
    }
    let freeze = now.difference(&before).map(|s| Command::FreezeAutomation { scope: s.clone() });
    let release = before.difference(&now).map(|s| Command::ReleaseAutomation { scope: s.clone() });
    for command in freeze.chain(release).collect::<Vec<_>>() {
        if let Err(error) = engine.call(Input::Command { actor: "drover".into(), role: None, command }).await {
            // Handed over or stopping: asked again at the next poll.
            tracing::debug!(%error, "the engine did not take a freeze of automation made through another node");
            return;
        }
    }
    *seen = Some(now);
}
