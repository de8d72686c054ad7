//! `drover sim`: the real, pure engine driven in simulated time over a
//! simulated fleet (hosts in zones, instances with WAL positions, a provider
//! with latencies and failures) and the real pager
//! (`drover-oncall`) paging operator teams whose people sleep. Modelled on TigerBeetle's
//! VOPR and FoundationDB's simulation: one seed reproduces a run exactly; a
//! safety phase under faults, then a convergence phase that checks
//! everything healed. See docs/scenarios.md.

pub mod control_plane;
pub mod digest;
pub mod oncall;
pub mod report;
pub mod scenario;
mod sim;

pub use report::{EngineReport, Report};
pub use scenario::{Scenario, ScenarioError};
pub use sim::{run, Options};

/// The `drover sim` subcommand: prints the table and, as the last line, the
/// JSON report. Returns an error (non-zero exit) if a safety invariant broke.
pub fn command(
    scenario: &str,
    services: u64,
    seed: u64,
    event_log: Option<std::path::PathBuf>,
) -> Result<Report, String> {
    let scenario = Scenario::load(scenario).map_err(|e| e.to_string())?;
    if services == 0 {
        return Err("--services must be at least 1".into());
    }
    let report = run(Options { scenario, services, seed, event_log }).map_err(|e| e.to_string())?;
    print!("{}", report.table());
    println!("{}", report.json());
    if report.safety_violations > 0 {
        return Err(format!(
            "safety broken {} times; first: {}",
            report.safety_violations,
            report.first_violation.as_deref().unwrap_or("?")
        ));
    }
    Ok(report)
}
