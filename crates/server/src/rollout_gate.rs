//! A rollout's health gate, the part that lives outside the engine (issue
//! 12: "the service's checks are ok and no new page for a soak time").
//!
//! The engine knows whether a moved service is available and whether it
//! needs a human; its checks (backups, replication, security, performance,
//! router, persistence) are taken here from the providers, and its pages
//! live in the pager. Every [`INTERVAL`] this task asks the engine which
//! services rollouts are moving or soaking ([`drover_engine::Engine::gate_watch`]),
//! and:
//!
//! - when it first sees a move, takes the service's checks and the pages
//!   open about it then: the **baseline**. A move is judged by what it
//!   changed: a check already crit before it (a new service has no backup
//!   for its first hours) does not fail it, one that turned crit does;
//! - for a soaking service, reports to the engine (`Input::GateReport`):
//!   all well, or what is wrong — a check crit now that was not in the
//!   baseline, or a page about the service opened since its move started
//!   (or open now and not in the baseline). The engine fails the service's
//!   gate on a problem, and counts it done only after a report of all well
//!   made once its soak was over (`Config::rollout_gate_reports`).
//!
//! Baselines are not durable: after a restart of the control plane a move
//! first seen while it soaks gets a strict baseline (every check counts as
//! ok before the move, but backups, which a move does not change), so a
//! restart never lets a broken service through. A page "about" a service
//! names it (the alert's `service`, or an engine alert key of it).

use crate::state::Ready;
use drover_engine::{GateWatch, Input};
use drover_model::{RolloutId, ServiceId, Timestamp};
use drover_oncall::Page;
use drover_providers::checks::Status;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::watch;

/// How often moving and soaking services are looked at: well under a
/// soak (60 s by default), and one report after the soak ends is what
/// finishes a service.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a service looked like when its move started.
struct Baseline {
    /// Checks crit then, by name.
    crit: BTreeSet<&'static str>,
    /// Pages about it open then.
    pages: BTreeSet<String>,
}

/// The checks of one service by name, with their status and summary.
fn check_list(c: &crate::checks::ServiceChecks) -> Vec<(&'static str, Status, &str)> {
    let mut out = vec![
        ("backups", c.backups.check.status, c.backups.check.summary.as_str()),
        ("replication", c.replication.status, c.replication.summary.as_str()),
        ("security", c.security.status, c.security.summary.as_str()),
        ("performance", c.performance.status, c.performance.summary.as_str()),
        ("router", c.router.status, c.router.summary.as_str()),
    ];
    if let Some(p) = &c.persistence {
        out.push(("persistence", p.status, p.summary.as_str()));
    }
    out
}

/// Whether `page` is about the service `name`.
fn about(page: &Page, name: &str) -> bool {
    let prefix = format!("engine:{name}:");
    page.service.as_deref() == Some(name) || page.alert_keys.iter().any(|k| k.starts_with(&prefix))
}

/// What is wrong with a soaking service against its baseline, if anything.
fn problem(
    checks: &[(&'static str, Status, &str)],
    pages: &[&Page],
    baseline: &Baseline,
    started_at: Timestamp,
) -> Option<String> {
    let mut found = Vec::new();
    for (name, status, summary) in checks {
        if *status == Status::Crit && !baseline.crit.contains(name) {
            found.push(format!("{name} check crit since the move: {summary}"));
        }
    }
    for page in pages {
        if page.opened_at >= started_at || !baseline.pages.contains(&page.id.to_string()) {
            found.push(format!("page {} opened since the move: {}", page.id, page.summary));
        }
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// Runs the gate until `stop`.
pub fn spawn(ready: std::sync::Arc<std::sync::OnceLock<Ready>>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut baselines: HashMap<(RolloutId, ServiceId), Baseline> = HashMap::new();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let Some(ready) = ready.get() else { continue };
            if let Err(e) = look(ready, &mut baselines).await {
                tracing::warn!(error = %e.message, "the rollout health gate could not look at the moving services");
            }
        }
    });
}

async fn look(
    ready: &Ready,
    baselines: &mut HashMap<(RolloutId, ServiceId), Baseline>,
) -> Result<(), crate::error::ApiError> {
    let watched: Vec<GateWatch> = ready.engine.query(|e| e.gate_watch()).await?;
    baselines.retain(|key, _| watched.iter().any(|w| (w.rollout, w.service) == *key));
    if watched.is_empty() {
        return Ok(());
    }
    let since = watched.iter().map(|w| w.started_at).min().unwrap_or(Timestamp(0));
    let store = ready.oncall.store.clone();
    let pages: Vec<Page> = crate::oncall::routes::blocking(move || {
        let mut pages = store.open_pages()?;
        for p in store.pages_opened_since(since)? {
            if !pages.iter().any(|q| q.id == p.id) {
                pages.push(p);
            }
        }
        Ok(pages)
    })
    .await?;
    for w in watched {
        let lookup = w.name.clone();
        let Some(view) = ready.engine.query(move |e| e.service_view(&lookup)).await? else { continue };
        if view.id != w.service {
            continue;
        }
        let checks = crate::checks::of_service(ready, &view).await;
        let list = check_list(&checks);
        let about: Vec<&Page> = pages.iter().filter(|p| about(p, &w.name)).collect();
        let baseline = baselines.entry((w.rollout, w.service)).or_insert_with(|| Baseline {
            crit: list
                .iter()
                .filter(|(name, status, _)| *status == Status::Crit && (!w.soaking || *name == "backups"))
                .map(|(name, _, _)| *name)
                .collect(),
            pages: if w.soaking {
                BTreeSet::new()
            } else {
                about.iter().filter(|p| p.resolved_at.is_none()).map(|p| p.id.to_string()).collect()
            },
        });
        if !w.soaking {
            continue;
        }
        let open_or_new: Vec<&Page> =
            about.into_iter().filter(|p| p.resolved_at.is_none() || p.opened_at >= w.started_at).collect();
        let problem = problem(&list, &open_or_new, baseline, w.started_at);
        if let Some(p) = &problem {
            tracing::warn!(service = %w.name, rollout = %w.rollout, problem = %p, "a moved service failed its health gate");
        }
        ready.engine.send(Input::GateReport { service: w.service, problem }).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(id: &str, service: Option<&str>, keys: &[&str], opened_at: i64) -> Page {
        serde_json::from_value(serde_json::json!({
            "id": id, "dedup_key": keys.first().copied().unwrap_or("k"), "summary": format!("trouble {id}"),
            "source": "test", "severity": "critical", "team": "db", "service": service, "class": null,
            "origin": "events-v2", "status": "triggered", "level": 0, "level_name": "bot",
            "opened_at": Timestamp(opened_at), "acknowledged_at": null, "acknowledged_by": null,
            "resolved_at": null, "resolved_by": null, "alert_keys": keys, "open_alerts": keys, "alerts": 1,
            "notified": [], "flapping": false, "flaps": 0, "business_hours": false, "next_at": null,
            "renotified": 0, "details": null
        }))
        .unwrap()
    }

    const STARTED: i64 = 1_000_000;

    #[test]
    fn a_check_already_crit_before_the_move_does_not_fail_it_one_that_turned_crit_does() {
        let baseline = Baseline { crit: BTreeSet::from(["backups"]), pages: BTreeSet::new() };
        let well = [
            ("backups", Status::Crit, "no backup exists"),
            ("replication", Status::Ok, "streaming"),
            ("performance", Status::Warn, "cache hit ratio 80%"),
            ("security", Status::Unknown, "not measured"),
        ];
        assert_eq!(problem(&well, &[], &baseline, Timestamp(STARTED)), None, "crit before, warn and unknown: well");
        let mut worse = well;
        worse[1] = ("replication", Status::Crit, "follower db-1 is not streaming");
        let p = problem(&worse, &[], &baseline, Timestamp(STARTED)).expect("replication turned crit");
        assert!(p.contains("replication check crit since the move: follower db-1 is not streaming"), "{p}");
        assert!(!p.contains("backups"), "{p}");
    }

    #[test]
    fn a_page_opened_since_the_move_started_or_new_since_the_baseline_fails_it() {
        let old = page("01a00000-0000-7000-8000-000000000001", Some("db1"), &["disk-db1"], STARTED - 10);
        let baseline = Baseline { crit: BTreeSet::new(), pages: BTreeSet::from([old.id.to_string()]) };
        assert_eq!(problem(&[], &[&old], &baseline, Timestamp(STARTED)), None, "open before the move: not new");
        let new = page("01a00000-0000-7000-8000-000000000002", Some("db1"), &["cpu-db1"], STARTED + 5);
        let p = problem(&[], &[&old, &new], &baseline, Timestamp(STARTED)).expect("a new page");
        assert!(p.contains("page 01a00000-0000-7000-8000-000000000002 opened since the move"), "{p}");
        // Opened before the move but not open when the baseline was taken
        // (it reopened, or the baseline was taken after a restart).
        let reopened = page("01a00000-0000-7000-8000-000000000003", Some("db1"), &["mem-db1"], STARTED - 10);
        assert!(problem(&[], &[&reopened], &baseline, Timestamp(STARTED)).is_some());
    }

    #[test]
    fn a_page_is_about_a_service_when_it_names_it_or_holds_one_of_its_engine_alerts() {
        let named = page("01a00000-0000-7000-8000-000000000001", Some("db1"), &["x"], 0);
        let joined = page(
            "01a00000-0000-7000-8000-000000000002",
            Some("db9"),
            &["engine:db9:needs_human", "engine:db1:restore_test"],
            0,
        );
        let other = page("01a00000-0000-7000-8000-000000000003", Some("db10"), &["engine:db10:needs_human"], 0);
        assert!(about(&named, "db1") && about(&joined, "db1"));
        assert!(!about(&other, "db1"), "db10 is not db1");
    }
}
