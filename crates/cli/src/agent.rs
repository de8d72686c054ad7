//! `drover agent`: the standalone agent of one host, a thin wrapper over
//! the `drover-agent` crate (probe, heartbeats, lease; see docs/agent.md).

pub use drover_agent::Options;
use std::future::Future;

/// Structured logs on stderr, `RUST_LOG` (default info), like `drover serve`.
pub fn init_logs(format: crate::config::LogFormat) {
    crate::config::init_logs(format)
}

/// Runs the agent until `shutdown` completes.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Ok(drover_agent::run(options, shutdown).await?)
}
