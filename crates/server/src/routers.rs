//! The routers of services on agent hosts run beside the control plane
//! (`drover_providers::local::ControlPlaneRouters`), and follow each
//! service's writable primary as the engine sees it: every
//! [`FOLLOW_INTERVAL`] this loop asks the engine where each such service's
//! writable primary is, and repoints the router when that changed
//! (rewrite, RELOAD, RESUME), or holds new queries while there is none
//! (a fence, a failover under way). A Fence dispatched for a routed
//! primary holds its router before the agent runs it (`runtime.rs`).

use crate::runtime::{login_password, EngineHandle};
use drover_providers::local::{ControlPlaneRouters, UpstreamAddress};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the routers are compared with the engine's view. The engine's
/// read is one pass over the instances; a promotion is followed within this
/// (the failover budget is 2 s, DESIGN.md).
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(50);

/// Every this many rounds the routers of services the engine no longer has
/// (deleted to the end) are stopped and forgotten.
const SWEEP_ROUNDS: u32 = 20;

/// Runs until `stop` says so.
pub fn follow_primaries(
    engine: EngineHandle,
    agents: crate::agents::AgentChannel,
    routers: Arc<ControlPlaneRouters>,
    builtin_host: Option<String>,
    key: drover_secrets::SecretKey,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Errors are logged once per (service, error), not every round.
        let mut reported: HashSet<(drover_model::ServiceId, String)> = HashSet::new();
        let mut round = 0u32;
        loop {
            round = round.wrapping_add(1);
            if round.is_multiple_of(SWEEP_ROUNDS) {
                stop_routers_of_deleted_services(&engine, &routers).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let builtin = builtin_host.clone();
            let Ok(services) = engine.query(move |e| e.services_on_agent_hosts(builtin.as_deref())).await else {
                continue;
            };
            for service in services {
                let password = login_password(&key, service.id);
                let target = service.primary.as_ref().and_then(|(instance, address)| {
                    agents.port(*instance).map(|port| UpstreamAddress { address: address.clone(), port })
                });
                match (&service.primary, target) {
                    (Some(_), Some(target)) => {
                        match routers.route(service.id, &service.name, &password, &target).await {
                            Ok(()) => reported.retain(|(id, _)| *id != service.id),
                            Err(error) => {
                                if reported.insert((service.id, error.to_string())) {
                                    tracing::warn!(service = %service.name, %error, "cannot point the router at the primary");
                                }
                            }
                        }
                    }
                    // A primary whose port no beat said yet (just built).
                    (Some(_), None) => {}
                    (None, _) => routers.hold(service.id).await,
                }
            }
        }
    })
}

/// Stops the routers of the services the engine no longer has (a deleted
/// service's router would otherwise keep its port, serving nothing, until
/// the data dir goes). A service still being deleted keeps its router.
async fn stop_routers_of_deleted_services(engine: &EngineHandle, routers: &ControlPlaneRouters) {
    let kept = routers.services();
    if kept.is_empty() {
        return;
    }
    let Ok(gone) = engine.query(move |e| e.services_gone(&kept)).await else { return };
    for service in gone {
        match routers.remove(service).await {
            Ok(()) => tracing::info!(%service, "router beside the control plane stopped: its service is gone"),
            Err(error) => tracing::warn!(%service, %error, "cannot stop the router of a deleted service"),
        }
    }
}
