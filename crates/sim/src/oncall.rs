//! The people side of a run: the real pager (`drover-oncall`, the same pure
//! code the server runs) fed by the engine's typed events, with operator
//! teams, their schedules, business hours and the bot tier; simulated
//! people acknowledge what reaches them.
//!
//! The pages go to the teams that operate the fleet (`people.teams`,
//! services spread over them), not to the services' customers. The pager
//! never feeds back into the engine, so it runs after the shards, over
//! their alerts merged in time order: one pager for the whole fleet, as one
//! company has one pager, however many control-plane shards it runs.

use crate::report::Report;
use crate::scenario::{FaultSpec, Scenario};
use drover_model::{Event, EventKind, Timestamp};
use drover_oncall::{Config, Input, Outputs, PageId, Pager, Recipient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Hour 0 of every scenario (as in the simulator).
const T0: i64 = 1_798_761_600_000_000;
const MICROS_PER_MIN: f64 = 60_000_000.0;

/// Minutes a person would need to do each automated action by hand:
/// look, decide, run it, check it (Heroku Data's runbooks, roughly).
pub fn manual_minutes(kind: &str) -> f64 {
    match kind {
        "provision" => 45.0,
        "fence" => 10.0,
        "promote" => 20.0,
        "restart" => 15.0,
        "retire" | "archive" | "terminate" => 5.0,
        "probe" => 2.0,
        _ => 5.0,
    }
}

/// Working minutes in a person-year (225 days of 8 hours).
pub const MINUTES_PER_PERSON_YEAR: f64 = 225.0 * 8.0 * 60.0;

/// Where the operator teams sit: follow-the-sun, so some team is in its
/// business hours at most times of day.
const TIME_ZONES: &[&str] = &[
    "America/New_York",
    "Europe/Dublin",
    "Asia/Singapore",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
];

/// The team that operates service number `index` (global, across shards).
pub fn team_name(index: u32, teams: u32) -> String {
    format!("ops-{}", index % teams.max(1) + 1)
}

/// `teams` operator teams, each with two people on weekly rotations
/// (level 1 and level 2), a manager, its time zone and the default business
/// hours and escalation policy (bot tier first); one incident commander
/// rotation for the company. A team's engine incident that comes back
/// within 12 hours is the same incident (`regroup_within`): a zone outage
/// lasts hours, and what it leaves for a person joins its page.
pub fn config(teams: u32) -> Config {
    let mut toml = String::from(
        "default_team = \"ops-1\"\nregroup_within = \"12h\"\n[incident_commanders]\nrotation = [\"ic-1\", \"ic-2\"]\n\
         [[people]]\nname = \"ic-1\"\n[[people]]\nname = \"ic-2\"\n",
    );
    for k in 1..=teams.max(1) {
        let tz = TIME_ZONES[(k as usize - 1) % TIME_ZONES.len()];
        toml.push_str(&format!(
            "[[teams]]\nname = \"ops-{k}\"\ntime_zone = \"{tz}\"\nmanager = \"ops-{k}-manager\"\n\
             [[teams.people]]\nname = \"ops-{k}-a\"\n[[teams.people]]\nname = \"ops-{k}-b\"\n\
             [[teams.people]]\nname = \"ops-{k}-manager\"\n\
             [[teams.schedules]]\nname = \"level1\"\nrotation = [\"ops-{k}-a\", \"ops-{k}-b\"]\n\
             handoff = \"2026-01-05T10:00:00\"\nshift = \"1w\"\n\
             [[teams.schedules]]\nname = \"level2\"\nrotation = [\"ops-{k}-b\", \"ops-{k}-a\"]\n\
             handoff = \"2026-01-05T10:00:00\"\nshift = \"1w\"\n"
        ));
    }
    Config::from_toml(&toml).expect("the simulator's generated oncall configuration is valid")
}

/// What the pager and the people did over a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub teams: u64,
    /// Pages that notified at least one person.
    pub pages_human: u64,
    /// Pages the bot tier closed (or still held) without notifying anybody.
    pub pages_bot: u64,
    /// Human pages opened outside the team's business hours.
    pub after_hours_pages: u64,
    pub mean_minutes_to_acknowledge: f64,
    pub person_hours_spent: f64,
}

impl Figures {
    pub fn fill(&self, r: &mut Report) {
        r.teams = self.teams;
        r.pages_human = self.pages_human;
        r.pages_bot = self.pages_bot;
        r.after_hours_pages = self.after_hours_pages;
        r.mean_minutes_to_acknowledge = self.mean_minutes_to_acknowledge;
        r.person_hours_spent = self.person_hours_spent;
    }
}

/// One page as the simulated people see it.
#[derive(Default)]
struct Seen {
    business_hours: bool,
    /// When a person was first notified (after a pager outage: delivered).
    notified: Option<i64>,
}

/// The simulated people: who was notified of what, and when each will
/// acknowledge (drawn; slower outside business hours).
struct People {
    spec: crate::scenario::PeopleSpec,
    outages: Vec<(i64, i64)>,
    rng: ChaCha8Rng,
    seen: BTreeMap<PageId, Seen>,
    acks: BinaryHeap<Reverse<(i64, PageId)>>,
}

impl People {
    fn draw(&mut self, [lo, hi]: [f64; 2]) -> f64 {
        if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        }
    }

    fn absorb(&mut self, out: Outputs, now: i64) {
        for p in &out.pages {
            self.seen.entry(p.id).or_insert_with(|| Seen { business_hours: p.business_hours, notified: None });
        }
        for n in out.notifications {
            let (Recipient::Person { .. }, Some(page)) = (&n.recipient, n.page) else {
                continue;
            };
            let business_hours = match self.seen.get(&page) {
                Some(s) if s.notified.is_none() => s.business_hours,
                _ => continue,
            };
            // A pager outage holds the notification until the provider is back.
            let delivered = self.outages.iter().find(|(a, b)| now >= *a && now < *b).map(|(_, b)| *b).unwrap_or(now);
            let mut minutes = self.draw(self.spec.ack_minutes);
            if !business_hours {
                minutes *= self.spec.night_factor;
            }
            if let Some(s) = self.seen.get_mut(&page) {
                s.notified = Some(delivered);
            }
            self.acks.push(Reverse((delivered + (minutes * MICROS_PER_MIN) as i64, page)));
        }
    }
}

/// Runs the pager over the shards' pager-relevant events until `end`.
pub fn page(sc: &Scenario, seed: u64, shards: Vec<Vec<(i64, Event)>>, end: i64) -> Figures {
    let teams = sc.people.teams.max(1);
    let names: Vec<String> = (1..=teams).map(|k| format!("ops-{k}")).collect();
    let mut pager = Pager::new(config(teams), seed ^ 0x0ca1_1ca1_1ca1_1ca1);
    let mut events: Vec<(i64, usize, usize, Event)> = shards
        .into_iter()
        .enumerate()
        .flat_map(|(k, list)| list.into_iter().enumerate().map(move |(n, (at, e))| (at, k, n, e)))
        .collect();
    events.sort_by_key(|(at, k, n, _)| (*at, *k, *n));
    let outages: Vec<(i64, i64)> = sc
        .faults
        .iter()
        .filter(|f| matches!(f, FaultSpec::PagerOutage { .. }))
        .map(|f| {
            let (a, b) = f.window();
            (T0 + (a * 3.6e9) as i64, T0 + (b * 3.6e9) as i64)
        })
        .collect();
    let mut people = People {
        spec: sc.people.clone(),
        outages,
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x09e0_91e0_91e0_91e0),
        seen: BTreeMap::new(),
        acks: BinaryHeap::new(),
    };
    let (mut ack_minutes, mut acked, mut person_minutes) = (0.0, 0u64, 0.0);
    // Services a person fixes (once each, however often the engine asks).
    let mut fixed = std::collections::BTreeSet::new();
    let mut next = 0usize;
    loop {
        let at_event = events.get(next).map(|e| e.0).unwrap_or(i64::MAX);
        let at_tick = pager.next_deadline().map(|t| t.0).unwrap_or(i64::MAX);
        let at_ack = people.acks.peek().map(|Reverse((t, _))| *t).unwrap_or(i64::MAX);
        let now = at_event.min(at_tick).min(at_ack);
        if now > end || now == i64::MAX {
            break;
        }
        if at_tick == now {
            let out = pager.step(Input::Tick, Timestamp(now));
            people.absorb(out, now);
        } else if at_ack == now {
            let Some(Reverse((_, id))) = people.acks.pop() else { break };
            let Some(s) = people.seen.get(&id) else { continue };
            let notified = s.notified.unwrap_or(now);
            let waited = (now - notified) as f64 / MICROS_PER_MIN;
            ack_minutes += waited;
            acked += 1;
            // Acknowledging and looking; each service that needs a person
            // adds its own fix (counted when it arrives).
            person_minutes += waited.min(5.0) + 5.0;
            if pager.page(id).is_some() {
                let out = pager.step(Input::Acknowledge { page: id, by: "on-call (simulated)".into() }, Timestamp(now));
                people.absorb(out, now);
            }
        } else {
            let (_, _, _, event) = &events[next];
            next += 1;
            if matches!(event.kind, EventKind::NeedsHuman | EventKind::InvariantAtRisk)
                && fixed.insert(event.service.clone().unwrap_or_default())
            {
                let range = people.spec.fix_minutes;
                person_minutes += people.draw(range);
            }
            let fleet_wide = event.team.is_none() && event.service.is_none();
            let targets: Vec<Option<String>> = if fleet_wide
                && matches!(event.kind, EventKind::BrakeEngaged { .. } | EventKind::BrakeReleased { .. })
            {
                // A brake on a zone (or the fleet) concerns every team with
                // services there: here every team runs services in every zone.
                names.iter().cloned().map(Some).collect()
            } else {
                vec![None]
            };
            for team in targets {
                let per_team = team.clone();
                if let Some(mut alert) = drover_oncall::engine::to_alert(event, team) {
                    if let Some(t) = per_team {
                        // Each team's own incident (a key is one page fleet-wide).
                        alert.dedup_key = format!("{}:{t}", alert.dedup_key);
                    }
                    let out = pager.step(Input::Alert(alert), Timestamp(now));
                    people.absorb(out, now);
                }
            }
        }
    }
    let seen = &people.seen;
    let pages_human = seen.values().filter(|s| s.notified.is_some()).count() as u64;
    let after_hours_pages = seen.values().filter(|s| s.notified.is_some() && !s.business_hours).count() as u64;
    Figures {
        teams: u64::from(teams),
        pages_human,
        pages_bot: seen.len() as u64 - pages_human,
        after_hours_pages,
        mean_minutes_to_acknowledge: if acked > 0 { (ack_minutes / acked as f64 * 10.0).round() / 10.0 } else { 0.0 },
        person_hours_spent: (person_minutes / 60.0 * 10.0).round() / 10.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configuration_has_the_teams_asked_for() {
        let c = config(6);
        assert_eq!(c.teams.len(), 6);
        assert_eq!(team_name(7, 6), "ops-2");
    }
}
