//! The human side, modelled here until the engine pages people itself
//! (issue 5 replaces this file with the engine's escalation). A page goes to
//! a person when a service needs a human, when the brake engages (one fleet
//! page), or when a remedy fails for good; everything the engine fixes by
//! itself is a page to the bot tier. People acknowledge after minutes,
//! slower at night, and work on what needs them for a drawn time.

use crate::scenario::PeopleSpec;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

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

#[derive(Default, Debug, Clone)]
pub struct PeopleStats {
    pub pages_human: u64,
    pub pages_bot: u64,
    pub after_hours_pages: u64,
    pub ack_minutes_total: f64,
    pub ack_minutes_max: f64,
    pub person_minutes: f64,
    /// Pages held back by a pager outage.
    pub pages_delayed: u64,
}

pub struct People {
    spec: PeopleSpec,
    /// Pager provider down until (sim micros), if it is down.
    pager_down: Option<(i64, i64)>,
    pub stats: PeopleStats,
}

impl People {
    pub fn new(spec: PeopleSpec) -> People {
        People { spec, pager_down: None, stats: PeopleStats::default() }
    }

    pub fn pager_outage(&mut self, from: i64, to: i64) {
        self.pager_down = Some((from, to));
    }

    fn is_night(at: i64) -> bool {
        let hour = (at.rem_euclid(86_400_000_000)) / 3_600_000_000;
        !(7..22).contains(&hour)
    }

    /// A page to a person at `now`: when it is delivered, acknowledged and
    /// the work done. `work` is whether there is something to fix by hand.
    pub fn page_human(&mut self, now: i64, work: bool, rng: &mut ChaCha8Rng) {
        let delivered = match self.pager_down {
            Some((from, to)) if now >= from && now < to => {
                self.stats.pages_delayed += 1;
                to
            }
            _ => now,
        };
        let night = People::is_night(delivered);
        let mut ack = rng.random_range(self.spec.ack_minutes[0]..=self.spec.ack_minutes[1]);
        if night {
            ack *= self.spec.night_factor;
            self.stats.after_hours_pages += 1;
        }
        let waited = (delivered - now) as f64 / MICROS_PER_MIN + ack;
        self.stats.pages_human += 1;
        self.stats.ack_minutes_total += waited;
        self.stats.ack_minutes_max = self.stats.ack_minutes_max.max(waited);
        let fix = if work { rng.random_range(self.spec.fix_minutes[0]..=self.spec.fix_minutes[1]) } else { 5.0 };
        self.stats.person_minutes += ack.min(5.0) + fix;
    }

    pub fn page_bot(&mut self) {
        self.stats.pages_bot += 1;
    }
}
