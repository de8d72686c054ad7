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
//! Not learned here: a host's silence, which each engine judges from its
//! own instances' heartbeats, and rollouts, whose waves run on shard 0's
//! holder.

use crate::runtime::EngineHandle;
use drover_engine::Input;
use drover_store::PgStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node asks the store whether images or hosts were added, or
/// a host cordoned or drained.
pub const POLL: Duration = Duration::from_millis(500);

/// Runs until `stop`: the engine behind `engine` learns every image and
/// host `store` has.
pub fn spawn(engine: EngineHandle, store: Arc<PgStore>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut seen: Option<drover_store::FleetRecordCounts> = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let counting = Arc::clone(&store);
            let counts = match tokio::task::spawn_blocking(move || counting.fleet_record_counts()).await {
                Ok(Ok(counts)) => counts,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot count the fleet's images and hosts; retrying");
                    continue;
                }
                Err(_) => continue,
            };
            if seen == Some(counts) {
                continue;
            }
            let reading = Arc::clone(&store);
            let (images, hosts) = match tokio::task::spawn_blocking(move || reading.fleet_records()).await {
                Ok(Ok(records)) => records,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read the fleet's images and hosts; retrying");
                    continue;
                }
                Err(_) => continue,
            };
            // Counted before they were read: at least what was counted.
            match engine.call(Input::FleetRecords { images, hosts }).await {
                Ok(reply) => {
                    tracing::debug!(?reply, "the engine learned the fleet's images and hosts");
                    seen = Some(counts);
                }
                // Handed over or stopping: asked again at the next poll.
                Err(error) => tracing::debug!(%error, "the engine did not take the fleet's images and hosts"),
            }
        }
    });
}
