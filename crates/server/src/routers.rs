//! The routers of services on agent hosts run beside the control plane
//! (`drover_providers::local::ControlPlaneRouters`), and follow each
//! service's writable primary as the engine sees it: within a
//! [`FOLLOW_INTERVAL`] of a change of the engine's records or of an
//! agent's reported port, this loop asks the engine where each such
//! service's writable primary is, and repoints the router when that
//! changed (rewrite, RELOAD, RESUME), or holds new queries while there is
//! none (a fence, a failover under way). A Fence dispatched for a routed
//! primary holds its router before the agent runs it (`runtime.rs`).

use crate::runtime::{login_password, EngineHandle};
use drover_providers::local::{ControlPlaneRouters, UpstreamAddress};
use std::collections::{HashMap, HashSet};
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

/// However still the engine and the agents' ports stand, every service is
/// compared with its router at least this often (see [`follow_primaries`]).
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(1);

/// A full pass that took long (the engine's answer for a million
/// instances) is the next only after this many times its length.
const FULL_PASS_SHARE: u32 = 30;

/// A round of a large fleet (a pass over every instance on the engine's
/// thread, then one compare per service) is followed by a pause of this
/// many times its own length, if that is longer than [`FOLLOW_INTERVAL`]:
/// following the routers takes at most about a tenth of the time, however
/// large the fleet. A million instances on agent hosts: rounds of tens of
/// milliseconds, repeated every few hundred.
const PAUSE_PER_ROUND: u32 = 9;

/// A service whose router could not be pointed (its start failed: a
/// missing binary, a port taken) is tried again after this, doubling up
/// to [`RETRY_MAX`]: a failure that lasts is not a process spawned every
/// round.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// When a service's router is tried again after failing.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Retry {
    at: tokio::time::Instant,
    wait: Duration,
}

impl Retry {
    /// After a failure at `now` (following `previous`, if it failed before).
    fn after(previous: Option<Retry>, now: tokio::time::Instant) -> Retry {
        let wait = previous.map_or(RETRY_FIRST, |r| (r.wait * 2).min(RETRY_MAX));
        Retry { at: now + wait, wait }
    }
}

/// The pause after a round that took `took`.
fn pause_after(took: Duration) -> Duration {
    (took * PAUSE_PER_ROUND).max(FOLLOW_INTERVAL)
}

/// What a service's router should do, as the engine and the agents'
/// ports say: point at this primary, or hold new queries.
type Wanted = Option<UpstreamAddress>;

/// Runs until `stop` says so.
///
/// A round asks the engine only when its `records_epoch` or the agents'
/// `ports_epoch` moved (a healthy fleet's heartbeats move neither), and
/// then touches only the routers whose service wants something else than
/// the loop last made it do. Every [`FULL_PASS_EVERY`] (and when a failed
/// router's back-off ends) a full pass compares every service with its
/// router whatever moved: a pgbouncer that exited unasked starts again.
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
        let mut retry: HashMap<drover_model::ServiceId, Retry> = HashMap::new();
        // What each router was last made to do (and did).
        let mut applied: HashMap<drover_model::ServiceId, Wanted> = HashMap::new();
        // The (records, ports) epochs the last pass answered.
        let mut seen: Option<(u64, u64)> = None;
        let mut next_full = tokio::time::Instant::now();
        // Services left without a router by the limit, as last logged.
        let mut unrouted_logged = 0usize;
        let mut round = 0u32;
        let mut pause = FOLLOW_INTERVAL;
        loop {
            round = round.wrapping_add(1);
            if round.is_multiple_of(SWEEP_ROUNDS) {
                stop_routers_of_deleted_services(&engine, &routers).await;
                let now = tokio::time::Instant::now();
                retry.retain(|_, r| r.at + RETRY_MAX > now);
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let started = tokio::time::Instant::now();
            let full = started >= next_full || retry.values().any(|r| r.at <= started);
            let ports_epoch = agents.ports_epoch();
            let known = seen.filter(|&(_, ports)| !full && ports == ports_epoch).map(|(records, _)| records);
            let builtin = builtin_host.clone();
            let answer = engine.query(move |e| {
                let epoch = e.records_epoch();
                (known != Some(epoch)).then(|| (epoch, e.services_on_agent_hosts(builtin.as_deref())))
            });
            let Ok(Some((epoch, services))) = answer.await else {
                pause = FOLLOW_INTERVAL;
                continue;
            };
            seen = Some((epoch, ports_epoch));
            if full {
                // A full pass of a large fleet comes at most every
                // FULL_PASS_SHARE times its own length.
                next_full = started + FULL_PASS_EVERY.max(started.elapsed() * FULL_PASS_SHARE);
                let listed: HashSet<drover_model::ServiceId> = services.iter().map(|s| s.id).collect();
                applied.retain(|id, _| listed.contains(id));
            }
            let ports = agents.ports(services.iter().map(|s| s.primary.as_ref().map(|(instance, _)| *instance)));
            let mut unrouted = 0usize;
            for (service, port) in services.into_iter().zip(ports) {
                let wanted: Wanted = match (&service.primary, port) {
                    (Some((_, address)), Some(port)) => Some(UpstreamAddress { address: address.clone(), port }),
                    // A primary whose port no beat said yet (just built).
                    (Some(_), None) => continue,
                    (None, _) => None,
                };
                if !full && applied.get(&service.id) == Some(&wanted) {
                    continue;
                }
                let Some(target) = &wanted else {
                    routers.hold(service.id).await;
                    applied.insert(service.id, None);
                    continue;
                };
                let failed_before = retry.get(&service.id).copied();
                if failed_before.is_some_and(|r| r.at > tokio::time::Instant::now()) {
                    continue;
                }
                if routers.full_for(service.id) {
                    unrouted += 1;
                    continue;
                }
                let password = login_password(&key, service.id);
                match routers.route(service.id, &service.name, &password, target).await {
                    Ok(()) => {
                        applied.insert(service.id, wanted);
                        if failed_before.is_some() {
                            retry.remove(&service.id);
                            reported.retain(|(id, _)| *id != service.id);
                        }
                    }
                    Err(error) => {
                        applied.remove(&service.id);
                        retry.insert(service.id, Retry::after(failed_before, tokio::time::Instant::now()));
                        if reported.insert((service.id, error.to_string())) {
                            tracing::warn!(service = %service.name, %error, "cannot point the router at the primary");
                        }
                    }
                }
            }
            if full && unrouted != unrouted_logged {
                if unrouted > 0 {
                    tracing::warn!(
                        services = unrouted,
                        "services on agent hosts have no router beside the control plane: it keeps at most \
                         --max-routers-beside"
                    );
                }
                unrouted_logged = unrouted;
            }
            pause = pause_after(started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_that_keeps_failing_is_tried_less_and_less_often_up_to_a_limit() {
        let now = tokio::time::Instant::now();
        let first = Retry::after(None, now);
        assert_eq!(first, Retry { at: now + RETRY_FIRST, wait: RETRY_FIRST });
        let mut last = first;
        let mut waits = vec![first.wait];
        for _ in 0..10 {
            last = Retry::after(Some(last), now);
            waits.push(last.wait);
        }
        assert_eq!(&waits[..4], [500, 1000, 2000, 4000].map(Duration::from_millis));
        assert_eq!(last.wait, RETRY_MAX, "doubling stops at the limit");
        assert_eq!(last.at, now + RETRY_MAX);
    }

    #[test]
    fn the_pause_between_rounds_grows_with_the_round_so_following_costs_a_tenth() {
        assert_eq!(pause_after(Duration::ZERO), FOLLOW_INTERVAL, "a small fleet is followed every interval");
        assert_eq!(pause_after(Duration::from_millis(5)), FOLLOW_INTERVAL);
        let took = Duration::from_millis(40);
        let pause = pause_after(took);
        assert_eq!(pause, Duration::from_millis(360));
        assert!(took.as_secs_f64() / (took + pause).as_secs_f64() <= 0.1 + 1e-9);
    }
}
