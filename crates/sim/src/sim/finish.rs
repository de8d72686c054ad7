//! The end of a run: convergence and the report.

use super::*;
use crate::report::EngineReport;

impl Sim {
    // ------------------------------------------------------------------
    // The end: convergence and the report
    // ------------------------------------------------------------------

    pub(super) fn finish(mut self, services: u64, seed: u64, instances: u64, wall: Instant) -> Report {
        self.log.push(&[]);
        let advisory_left = self.insts.iter().filter(|x| x.affected && x.exists).count() as u64;
        let converged = self.c.not_available_nh == 0 && self.c.down_nh == 0 && advisory_left == 0;
        let recovered_seconds =
            if converged { self.recovered_at.map(|t| (t - self.fault_start).max(0) as f64 / SEC) } else { None };
        let mut engines = Vec::new();
        if self.engines > 1 {
            let mut instances = [0u64; ENGINES.len()];
            for x in &self.insts {
                instances[usize::from(self.svcs[x.svc as usize].engine)] += 1;
            }
            for (k, e) in self.c.engines.iter().enumerate().take(self.engines) {
                engines.push(EngineReport {
                    engine: ENGINES[k].0.as_str().into(),
                    services: e.services,
                    instances: instances[k],
                    failovers: e.failovers,
                    switchovers: e.switchovers,
                    replacements: e.replacements,
                    restarts: e.restarts,
                    max_unavailable: e.max_down,
                    max_not_available_in_engine: e.max_not_available,
                    writes_lost: e.writes_lost,
                });
            }
        }
        let c = &self.c;
        let (digest, events) = self.log.finish();
        Report {
            scenario: self.sc.name.clone(),
            services,
            instances,
            seed,
            sim_hours: self.sc.hours,
            wall_seconds: (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            recovered_seconds,
            max_unavailable: c.max_down,
            max_not_available_in_engine: c.max_not_available,
            failovers: c.failovers,
            rolled_services: self.engine.rolled_services(),
            switchovers: c.switchovers,
            rollout_pauses: c.rollout_pauses,
            replacements: c.replacements,
            restarts: c.restarts,
            probes: c.probes,
            // Filled in by the pager (crate::oncall), which runs after the shards.
            teams: 0,
            pages_human: 0,
            pages_bot: 0,
            after_hours_pages: 0,
            mean_minutes_to_acknowledge: 0.0,
            writes_lost: c.writes_lost_sync + c.writes_lost_async + c.writes_lost_rebuild,
            writes_lost_sync: c.writes_lost_sync,
            writes_lost_async: c.writes_lost_async,
            writes_lost_rebuild: c.writes_lost_rebuild,
            services_needing_human: c.services_needing_human,
            person_years_avoided: (c.minutes_avoided / MINUTES_PER_PERSON_YEAR * 1000.0).round() / 1000.0,
            person_hours_spent: 0.0,
            brake_engaged: c.brake_engaged,
            advisory_instances_left: advisory_left,
            engine_events: events,
            safety_violations: c.violations,
            first_violation: c.first_violation.clone(),
            converged,
            digest,
            engines,
            control_plane: None,
        }
    }
}
