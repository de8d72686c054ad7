//! Benchmarks run from the command line. A stub for now: the engine's author
//! fills in `heartbeats` (in-process heartbeat ingest through the engine).

/// Measures heartbeat ingest over `instances` instances; prints one JSON line.
pub fn heartbeats(instances: usize) {
    println!(
        "{}",
        serde_json::json!({
            "bench": "heartbeats",
            "instances": instances,
            "status": "not implemented yet",
        })
    );
}
