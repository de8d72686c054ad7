//! Prometheus metrics. Labels are only ever small closed sets (states,
//! action kinds, outcomes): never a service or instance id, which would grow
//! one time series per database in a fleet of millions.

use drover_engine::FleetStats;
use drover_model::{InstanceState, ServiceState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const HEARTBEATS_RECEIVED: &str = "drover_heartbeats_received_total";
/// Heartbeats a node passed on to their shard's holder (a split fleet).
pub const HEARTBEATS_FORWARDED: &str = "drover_heartbeats_forwarded_total";
/// Agent hosts' batches answered before the engine took them (the engine
/// or the store was slower than the acknowledgement budget).
pub const HEARTBEAT_BATCHES_ANSWERED_EARLY: &str = "drover_heartbeat_batches_answered_early_total";
/// Agent hosts' batches dropped unfed, superseded by newer ones of the
/// same host while the engine was stalled.
pub const HEARTBEAT_BATCHES_SUPERSEDED: &str = "drover_heartbeat_batches_superseded_total";
pub const ENGINE_STEPS: &str = "drover_engine_steps_total";
pub const ENGINE_BATCH_SIZE: &str = "drover_engine_batch_messages";
pub const COMMIT_SECONDS: &str = "drover_store_commit_seconds";
pub const COMMIT_FAILURES: &str = "drover_store_commit_failures_total";
pub const ACTIONS_DISPATCHED: &str = "drover_actions_dispatched_total";
pub const ACTION_RESULTS: &str = "drover_action_results_total";
pub const INSTANCES: &str = "drover_instances";
pub const SERVICES: &str = "drover_services";
pub const OPEN_ACTIONS: &str = "drover_open_actions";
pub const BRAKES_ENGAGED: &str = "drover_brakes_engaged";

/// Commit latency buckets: SQLite group commits take ~0.1-10 ms here; the
/// upper buckets catch a disk in trouble.
const COMMIT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test
/// process share it) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.to_string()), COMMIT_BUCKETS)
                .expect("commit buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(HEARTBEATS_RECEIVED, "Heartbeats received (HTTP and providers).");
    metrics::describe_counter!(
        HEARTBEATS_FORWARDED,
        "Heartbeats passed on to the node holding their shard (an agent not told the holders, or told stale ones)."
    );
    metrics::describe_counter!(
        HEARTBEAT_BATCHES_ANSWERED_EARLY,
        "Agent hosts' heartbeat batches acknowledged before the engine took them (engine slower than the budget)."
    );
    metrics::describe_counter!(
        HEARTBEAT_BATCHES_SUPERSEDED,
        "Agent hosts' heartbeat batches dropped unfed, superseded by a newer batch of the same host."
    );
    metrics::describe_counter!(ENGINE_STEPS, "Inputs stepped through the engine.");
    metrics::describe_histogram!(ENGINE_BATCH_SIZE, "Messages handled per engine loop.");
    metrics::describe_histogram!(COMMIT_SECONDS, metrics::Unit::Seconds, "Latency of one group commit to the store.");
    metrics::describe_counter!(COMMIT_FAILURES, "Group commits the store refused.");
    metrics::describe_counter!(ACTIONS_DISPATCHED, "Actions handed to providers, by kind.");
    metrics::describe_counter!(ACTION_RESULTS, "Action attempts finished by providers, by kind and outcome.");
    metrics::describe_gauge!(INSTANCES, "Instances by lifecycle state.");
    metrics::describe_gauge!(SERVICES, "Services by state.");
    metrics::describe_gauge!(OPEN_ACTIONS, "Actions pending or running.");
    metrics::describe_gauge!(BRAKES_ENGAGED, "Zones (and the fleet) where the mass-uncertainty brake is engaged.");
    // Register the counters so a scrape shows them before the first event.
    metrics::counter!(HEARTBEATS_RECEIVED).increment(0);
    metrics::counter!(ENGINE_STEPS).increment(0);
    metrics::counter!(HEARTBEAT_BATCHES_ANSWERED_EARLY).increment(0);
    metrics::counter!(HEARTBEAT_BATCHES_SUPERSEDED).increment(0);
    metrics::counter!(COMMIT_FAILURES).increment(0);
}

/// Sets the fleet gauges; every state gets a value so a state that emptied
/// drops to zero instead of keeping its last count.
pub fn record_stats(stats: &FleetStats) {
    for &state in InstanceState::ALL {
        let n = stats.instances_by_state.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
        metrics::gauge!(INSTANCES, "state" => state.as_str()).set(n as f64);
    }
    for &state in ServiceState::ALL {
        let n = stats.services_by_state.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
        metrics::gauge!(SERVICES, "state" => state.as_str()).set(n as f64);
    }
    metrics::gauge!(OPEN_ACTIONS).set(stats.open_actions as f64);
    metrics::gauge!(BRAKES_ENGAGED).set(stats.braked.len() as f64);
}
