//! Benchmarks run from the command line. They print human lines first and,
//! as the last line, one JSON object with the figures.

use drover_engine::{Command, Config, Engine, Input, Reply};
use drover_model::{
    ActionKind, ActionOutcome, Beat, CreateService, EngineKind, Facts, Image, InstanceId, Role, Timestamp,
};
use std::time::{Duration, Instant};

/// Beats per engine step: what one HTTP request or agent batch carries.
const BATCH: usize = 10_000;

fn resident_bytes() -> u64 {
    // statm: size resident shared text lib data dt (pages)
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Heartbeat ingest through the real engine, in process: `instances`
/// instances (services of a primary and one follower), every instance
/// beating once per simulated second with realistic facts, deadlines ticking.
pub fn heartbeats(instances: usize, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(instances >= 2, "--instances must be at least 2");
    let rss_before = resident_bytes();
    let config = Config {
        // Generous silence bounds: the bench measures ingest, not failure.
        uncertain_after: Duration::from_secs(3),
        ..Config::default()
    };
    let t0: i64 = 1_800_000_000_000_000;
    let mut now = t0;
    let mut engine = Engine::new(config, 1);
    engine.reserve(instances);
    let image = Image::new(EngineKind::Postgres, "15-bench", Default::default(), Default::default(), Timestamp(now));
    engine.step(Input::Command { actor: "bench".into(), command: Command::RegisterImage(image) }, Timestamp(now));

    let setup = Instant::now();
    let services = instances / 2;
    let mut ids: Vec<(InstanceId, Role)> = Vec::with_capacity(instances);
    for s in 0..services {
        let req = CreateService {
            name: format!("svc-{s}"),
            engine: EngineKind::Postgres,
            followers: 1,
            provider: None,
            sync: Some(true),
            team: None,
            zones: None,
            max_failover_lag_bytes: None,
        };
        let out = engine.step(Input::Command { actor: "bench".into(), command: Command::CreateService(req) }, Timestamp(now));
        match out.reply {
            Some(Ok(Reply::Service(v))) => ids.extend(v.instances.iter().map(|i| (i.id, i.role))),
            other => anyhow::bail!("creating a service failed: {other:?}"),
        }
        // The provider answers at once: no open actions linger.
        for a in out.dispatch {
            if matches!(a.kind, ActionKind::Provision { .. }) {
                engine.step(
                    Input::ActionResult {
                        action: a.id,
                        attempt: a.attempts,
                        outcome: ActionOutcome::Succeeded { detail: None },
                    },
                    Timestamp(now),
                );
            }
        }
    }
    let n = ids.len();
    // One round makes everyone available (transitions, not the hot path).
    let mut seq = 1u64;
    for chunk in ids.chunks(BATCH) {
        engine.step(Input::Heartbeats(beats(chunk, seq)), Timestamp(now));
    }
    let rss_after = resident_bytes();
    let setup_secs = setup.elapsed().as_secs_f64();
    println!("fleet of {n} instances built in {setup_secs:.1}s; resident memory grew {} MiB", (rss_after.saturating_sub(rss_before)) >> 20);

    let mut busy = Duration::ZERO;
    let mut total = 0u64;
    let mut stale = 0u64;
    for round in 0..rounds {
        seq += 1;
        now += 1_000_000;
        // Beats arrive already parsed (that is the HTTP layer's work).
        let batches: Vec<Vec<Beat>> = ids.chunks(BATCH).map(|c| beats(c, seq)).collect();
        let start = Instant::now();
        for batch in batches {
            let out = engine.step(Input::Heartbeats(batch), Timestamp(now));
            if let Some(Ok(Reply::Heartbeats(r))) = out.reply {
                total += u64::from(r.accepted);
                stale += u64::from(r.stale);
            }
        }
        let out = engine.step(Input::Tick, Timestamp(now));
        anyhow::ensure!(out.changes.is_empty(), "round {round}: healthy heartbeats caused changes: {:?}", out.changes.events.first());
        busy += start.elapsed();
    }
    let stats = engine.stats();
    let available = stats.instances_by_state.iter().find(|(s, _)| s.as_str() == "available").map(|(_, c)| *c).unwrap_or(0);
    anyhow::ensure!(available as usize == n, "expected every instance available, found {available} of {n}");
    anyhow::ensure!(stale == 0, "{stale} beats were refused as stale");
    let per_sec = total as f64 / busy.as_secs_f64();
    let bytes_per_instance = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!("{total} heartbeats in {:.2}s of engine time: {:.0} per second", busy.as_secs_f64(), per_sec);
    println!("{bytes_per_instance:.0} bytes of resident memory per instance");
    println!(
        "{}",
        serde_json::json!({
            "bench": "heartbeats",
            "instances": n,
            "rounds": rounds,
            "heartbeats": total,
            "engine_seconds": busy.as_secs_f64(),
            "heartbeats_per_sec": per_sec.round(),
            "bytes_per_instance": bytes_per_instance.round(),
            "setup_seconds": setup_secs,
            "threads": 1,
        })
    );
    Ok(())
}

fn beats(chunk: &[(InstanceId, Role)], seq: u64) -> Vec<Beat> {
    chunk
        .iter()
        .map(|&(id, role)| Beat {
            instance: id,
            seq,
            facts: Facts {
                role: Some(role),
                writable: Some(role == Role::Primary),
                wal_position: Some(seq * 8192),
                replication_lag_bytes: (role == Role::Follower).then_some(0),
                upstream_streaming: (role == Role::Follower).then_some(true),
                connections: Some(12),
                last_backup_at: None,
            },
        })
        .collect()
}
