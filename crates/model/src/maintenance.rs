//! Weekly maintenance windows: when a rollout may move a service (Heroku's
//! and RDS's model: a weekly slot in the owner's time zone).

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest window: a week (longer would cover every moment anyway).
const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

impl Weekday {
    fn to_jiff(self) -> jiff::civil::Weekday {
        use jiff::civil::Weekday as W;
        match self {
            Weekday::Monday => W::Monday,
            Weekday::Tuesday => W::Tuesday,
            Weekday::Wednesday => W::Wednesday,
            Weekday::Thursday => W::Thursday,
            Weekday::Friday => W::Friday,
            Weekday::Saturday => W::Saturday,
            Weekday::Sunday => W::Sunday,
        }
    }
}

/// A weekly window: `day` at `start` (`HH:MM`) for `duration_minutes`,
/// in `time_zone` (an IANA name; default UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub day: Weekday,
    pub start: String,
    pub duration_minutes: u32,
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl MaintenanceWindow {
    fn start_time(&self) -> Result<(i8, i8), String> {
        let bad = || format!("start {:?} is not a time of day as HH:MM", self.start);
        let (h, m) = self.start.split_once(':').ok_or_else(bad)?;
        let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(0..24).contains(&h) || !(0..60).contains(&m) || self.start.len() != 5 {
            return Err(bad());
        }
        Ok((h, m))
    }

    fn zone(&self) -> Result<jiff::tz::TimeZone, String> {
        jiff::tz::TimeZone::get(&self.time_zone)
            .map_err(|_| format!("time zone {:?} is not an IANA time zone name (e.g. Europe/Paris)", self.time_zone))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.start_time()?;
        self.zone()?;
        if self.duration_minutes == 0 || self.duration_minutes > MAX_WINDOW_MINUTES {
            return Err(format!("duration_minutes must be between 1 and {MAX_WINDOW_MINUTES}"));
        }
        Ok(())
    }

    /// The occurrences of the window starting from a week before `at`
    /// through two weeks after, as (start, end) in microseconds.
    pub fn occurrences_around(&self, at: Timestamp, weeks_ahead: i64) -> Vec<(Timestamp, Timestamp)> {
        let (Ok((h, m)), Ok(tz)) = (self.start_time(), self.zone()) else { return Vec::new() };
        let Ok(instant) = jiff::Timestamp::from_microsecond(at.0) else { return Vec::new() };
        let today = instant.to_zoned(tz.clone()).date();
        let mut out = Vec::new();
        for offset in -8..(7 * weeks_ahead.max(1)) {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else { continue };
            if date.weekday() != self.day.to_jiff() {
                continue;
            }
            let Ok(start) = date.at(h, m, 0, 0).to_zoned(tz.clone()) else { continue };
            let start = start.timestamp().as_microsecond();
            let end = start + i64::from(self.duration_minutes) * 60_000_000;
            out.push((Timestamp(start), Timestamp(end)));
        }
        out
    }

    /// The weekly window that opens at `start` (its weekday and time in UTC).
    pub fn weekly_from(start: Timestamp, duration_minutes: u32) -> MaintenanceWindow {
        use jiff::civil::Weekday as W;
        let zoned = jiff::Timestamp::from_microsecond(start.0).unwrap_or_default().to_zoned(jiff::tz::TimeZone::UTC);
        let day = match zoned.weekday() {
            W::Monday => Weekday::Monday,
            W::Tuesday => Weekday::Tuesday,
            W::Wednesday => Weekday::Wednesday,
            W::Thursday => Weekday::Thursday,
            W::Friday => Weekday::Friday,
            W::Saturday => Weekday::Saturday,
            W::Sunday => Weekday::Sunday,
        };
        MaintenanceWindow {
            day,
            start: format!("{:02}:{:02}", zoned.hour(), zoned.minute()),
            duration_minutes,
            time_zone: utc(),
        }
    }

    /// When the window is next open at or after `at`: `at` itself when
    /// inside it.
    pub fn next_opening(&self, at: Timestamp) -> Timestamp {
        self.occurrences_around(at, 2)
            .into_iter()
            .filter(|&(_, end)| end > at)
            .map(|(start, _)| start.max(at))
            .min()
            .unwrap_or(at)
    }

    /// Whether `at` falls inside an occurrence of the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.occurrences_around(at, 1).iter().any(|&(s, e)| s <= at && at < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp(text.parse::<jiff::Timestamp>().unwrap().as_microsecond())
    }

    #[test]
    fn a_window_holds_its_weekly_slot_in_its_time_zone_only() {
        let w = MaintenanceWindow {
            day: Weekday::Tuesday,
            start: "22:00".into(),
            duration_minutes: 240,
            time_zone: "Europe/Paris".into(),
        };
        w.validate().unwrap();
        // 2026-12-01 is a Tuesday; Paris is UTC+1 in winter.
        assert!(!w.contains(at("2026-12-01T20:59:00Z")));
        assert!(w.contains(at("2026-12-01T21:00:00Z")));
        assert!(w.contains(at("2026-12-02T00:59:00Z")), "past midnight, still inside");
        assert!(!w.contains(at("2026-12-02T01:00:00Z")));
        assert!(w.contains(at("2026-12-08T22:30:00Z")), "every week");
        assert_eq!(w.next_opening(at("2026-12-01T12:00:00Z")), at("2026-12-01T21:00:00Z"));
        assert_eq!(w.next_opening(at("2026-12-01T22:00:00Z")), at("2026-12-01T22:00:00Z"), "inside: now");
        let from = MaintenanceWindow::weekly_from(at("2026-12-03T05:30:00Z"), 60);
        assert_eq!((from.day, from.start.as_str()), (Weekday::Thursday, "05:30"));
        assert!(from.contains(at("2026-12-10T06:00:00Z")) && !from.contains(at("2026-12-10T06:30:00Z")));
    }

    #[test]
    fn bad_windows_are_refused() {
        let mut w =
            MaintenanceWindow { day: Weekday::Monday, start: "25:00".into(), duration_minutes: 60, time_zone: utc() };
        assert!(w.validate().is_err());
        w.start = "02:00".into();
        w.time_zone = "Mars/Olympus".into();
        assert!(w.validate().is_err());
        w.time_zone = utc();
        w.duration_minutes = 0;
        assert!(w.validate().is_err());
    }
}
