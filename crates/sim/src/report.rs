//! What a run reports: a table for people and one JSON object for machines.

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub services: u64,
    pub instances: u64,
    pub seed: u64,
    pub sim_hours: f64,
    /// Wall-clock seconds of the run: the one figure not determined by the
    /// seed (excluded from the digest and from determinism comparisons).
    pub wall_seconds: f64,
    /// From the first scenario fault until every service is available again
    /// (services needing a human excepted); null if that never happened.
    pub recovered_seconds: Option<f64>,
    /// Peak number of services without a working writable primary (the
    /// customers' view, from the simulated world, not the engine's).
    pub max_unavailable: u64,
    /// Peak number of services the engine did not see as `available`.
    pub max_not_available_in_engine: u64,
    pub failovers: u64,
    /// Services moved onto a new image by a rollout (by planned switchover).
    pub rolled_services: u64,
    /// Planned switchovers (a graceful fence, then a promotion): not failovers.
    pub switchovers: u64,
    /// Times a rollout paused itself (a wave spent its failure budget).
    pub rollout_pauses: u64,
    pub replacements: u64,
    pub restarts: u64,
    pub probes: u64,
    /// Operator teams paged (services are spread over them).
    pub teams: u64,
    /// Pages of the real pager (crate::oncall) that notified a person.
    pub pages_human: u64,
    /// Pages the bot tier closed without notifying anybody.
    pub pages_bot: u64,
    pub after_hours_pages: u64,
    pub mean_minutes_to_acknowledge: f64,
    /// Acknowledged writes lost, bytes, in total; then at promotion for
    /// synchronous plans (must be 0) and asynchronous ones (the lag).
    pub writes_lost: u64,
    pub writes_lost_sync: u64,
    pub writes_lost_async: u64,
    /// Lost when no follower survived and the primary was rebuilt from the
    /// backup store (a double failure: the unarchived tail is gone).
    pub writes_lost_rebuild: u64,
    pub services_needing_human: u64,
    pub person_years_avoided: f64,
    pub person_hours_spent: f64,
    pub brake_engaged: u64,
    pub advisory_instances_left: u64,
    pub engine_events: u64,
    pub safety_violations: u64,
    pub first_violation: Option<String>,
    /// Every service available (or counted as needing a human) at the end.
    pub converged: bool,
    pub digest: String,
    /// A mixed fleet's figures per engine (`fleet.redis_share` or
    /// `fleet.kafka_share` > 0), in `postgres`, `redis`, `kafka` order
    /// (`kafka` only when it has a share); absent for a PostgreSQL-only fleet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineReport>,
    /// Control-plane nodes that died, paused and returned (a scenario's
    /// `[control_plane]`); absent without one. Its violations and
    /// convergence are counted in `safety_violations` and `converged`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<crate::control_plane::ControlPlaneReport>,
}

/// One engine's part of a mixed fleet's run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EngineReport {
    pub engine: String,
    pub services: u64,
    pub instances: u64,
    pub failovers: u64,
    pub switchovers: u64,
    pub replacements: u64,
    pub restarts: u64,
    /// Peak of its services without a working writable primary (the world's
    /// view); for Kafka, without a broker that serves.
    pub max_unavailable: u64,
    /// Peak of its services the engine did not see as `available`.
    pub max_not_available_in_engine: u64,
    /// Acknowledged writes lost, bytes (failovers and rebuilds). Kafka's
    /// records are in its storage, which the simulator does not fail: 0.
    pub writes_lost: u64,
}

impl Report {
    /// The same report with the wall-clock figure zeroed: what must be
    /// identical between two runs of one scenario, size and seed.
    pub fn deterministic(&self) -> Report {
        Report { wall_seconds: 0.0, ..self.clone() }
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("scenario", self.scenario.clone()),
            ("services / instances", format!("{} / {}", self.services, self.instances)),
            ("seed", self.seed.to_string()),
            ("simulated hours", format!("{:.1}", self.sim_hours)),
            ("wall seconds", format!("{:.1}", self.wall_seconds)),
            (
                "time to full recovery",
                self.recovered_seconds
                    .map(|s| format!("{:.0} s ({:.1} h)", s, s / 3600.0))
                    .unwrap_or_else(|| "not recovered".into()),
            ),
            ("peak unavailable services", self.max_unavailable.to_string()),
            ("peak services not available (engine)", self.max_not_available_in_engine.to_string()),
            ("failovers", self.failovers.to_string()),
            ("planned switchovers", self.switchovers.to_string()),
            ("services rolled onto a new image", self.rolled_services.to_string()),
            ("rollouts that paused themselves", self.rollout_pauses.to_string()),
            ("replacements", self.replacements.to_string()),
            ("restarts", self.restarts.to_string()),
            ("probes", self.probes.to_string()),
            (
                "pages to humans",
                format!(
                    "{} ({} after hours, {:.1} min to ack on average)",
                    self.pages_human, self.after_hours_pages, self.mean_minutes_to_acknowledge
                ),
            ),
            ("pages to the bot tier only", self.pages_bot.to_string()),
            ("operator teams", self.teams.to_string()),
            ("brake engaged", self.brake_engaged.to_string()),
            (
                "acknowledged writes lost",
                format!(
                    "{} B (failovers of sync plans {} B, of async plans {} B; rebuilds after double failures {} B)",
                    self.writes_lost, self.writes_lost_sync, self.writes_lost_async, self.writes_lost_rebuild
                ),
            ),
            ("services that needed a human", self.services_needing_human.to_string()),
            ("manual effort avoided", format!("{:.2} person-years", self.person_years_avoided)),
            ("human effort spent", format!("{:.1} person-hours", self.person_hours_spent)),
            ("advisory instances left", self.advisory_instances_left.to_string()),
            ("engine events", self.engine_events.to_string()),
            ("safety violations", self.safety_violations.to_string()),
            ("converged", self.converged.to_string()),
            ("digest", self.digest.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // A mixed fleet: one more line per engine, after the fleet's size.
        for (k, e) in self.engines.iter().enumerate() {
            rows.insert(
                2 + k,
                (
                    format!("{} services", e.engine),
                    format!(
                        "{} ({} instances): {} failovers, {} switchovers, {} replacements, {} restarts; \
                         peak {} unavailable, {} not available (engine); {} B acknowledged writes lost",
                        e.services,
                        e.instances,
                        e.failovers,
                        e.switchovers,
                        e.replacements,
                        e.restarts,
                        e.max_unavailable,
                        e.max_not_available_in_engine,
                        e.writes_lost
                    ),
                ),
            );
        }
        if let Some(cp) = &self.control_plane {
            let at = rows.len() - 3;
            rows.insert(
                at,
                (
                    "control-plane nodes / shards".into(),
                    format!(
                        "{} / {}: {} killed, {} paused, {} vanished; {} self-fenced",
                        cp.nodes, cp.shards, cp.crashes, cp.pauses, cp.vanishes, cp.self_fenced
                    ),
                ),
            );
            rows.insert(
                at + 1,
                (
                    "shard takeovers".into(),
                    format!(
                        "{} of a killed holder (longest {:.2} s), {} waited out (longest {:.2} s), {} handed over \
                         (longest {:.2} s)",
                        cp.takes_orphaned,
                        cp.longest_takeover_after_kill_secs,
                        cp.takes_expired,
                        cp.longest_takeover_after_pause_secs,
                        cp.released,
                        cp.longest_handover_secs
                    ),
                ),
            );
            rows.insert(
                at + 2,
                (
                    "stale control-plane work refused".into(),
                    format!(
                        "{} commits (fence), {} actions (older generation); {} carried out",
                        cp.stale_commits_refused, cp.stale_actions_refused, cp.actions_carried_out
                    ),
                ),
            );
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<w$}  {v}\n"));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// One report from the reports of the shards of one run. Counts add up;
/// peaks add up too (an upper bound of the fleet's peak: the shards' peaks
/// coincide when one fault hits them all at once); recovery is the slowest
/// shard's; the digest is SHA-256 over the shards' digests in order. The
/// pager's figures are not merged: one pager runs over all shards' alerts.
pub fn merge(parts: &[Report]) -> Report {
    use sha2::{Digest, Sha256};
    let mut m = parts[0].clone();
    let mut hasher = Sha256::new();
    hasher.update(parts[0].digest.as_bytes());
    for p in &parts[1..] {
        hasher.update(p.digest.as_bytes());
        m.services += p.services;
        m.instances += p.instances;
        m.recovered_seconds = match (m.recovered_seconds, p.recovered_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        m.max_unavailable += p.max_unavailable;
        m.max_not_available_in_engine += p.max_not_available_in_engine;
        m.failovers += p.failovers;
        m.rolled_services += p.rolled_services;
        m.switchovers += p.switchovers;
        m.rollout_pauses += p.rollout_pauses;
        m.replacements += p.replacements;
        m.restarts += p.restarts;
        m.probes += p.probes;
        m.writes_lost += p.writes_lost;
        m.writes_lost_sync += p.writes_lost_sync;
        m.writes_lost_async += p.writes_lost_async;
        m.writes_lost_rebuild += p.writes_lost_rebuild;
        m.services_needing_human += p.services_needing_human;
        m.person_years_avoided += p.person_years_avoided;
        m.brake_engaged += p.brake_engaged;
        m.advisory_instances_left += p.advisory_instances_left;
        m.engine_events += p.engine_events;
        m.safety_violations += p.safety_violations;
        if m.first_violation.is_none() {
            m.first_violation = p.first_violation.clone();
        }
        m.converged &= p.converged;
        for (e, q) in m.engines.iter_mut().zip(&p.engines) {
            e.services += q.services;
            e.instances += q.instances;
            e.failovers += q.failovers;
            e.switchovers += q.switchovers;
            e.replacements += q.replacements;
            e.restarts += q.restarts;
            e.max_unavailable += q.max_unavailable;
            e.max_not_available_in_engine += q.max_not_available_in_engine;
            e.writes_lost += q.writes_lost;
        }
    }
    m.person_years_avoided = (m.person_years_avoided * 1000.0).round() / 1000.0;
    m.digest = hex::encode(hasher.finalize());
    m
}
