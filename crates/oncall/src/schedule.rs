//! Who is on call when: rotations with handoff times in the team's time
//! zone, overrides on top; business hours; PagerDuty's hour classes.

use drover_model::Timestamp;
use jiff::tz::TimeZone;
use jiff::{civil, Span, Zoned};

/// Someone covering a schedule for a while (vacation, swap).
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub person: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A rotation: shifts of `shift` length, the first starting at `handoff`
/// (civil time in `time_zone`, so a 10:00 handoff stays at 10:00 across
/// daylight-saving changes), going through `rotation` in order.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub name: String,
    pub rotation: Vec<String>,
    pub handoff: civil::DateTime,
    pub shift: Span,
    pub time_zone: TimeZone,
    /// Later overrides win over earlier ones.
    pub overrides: Vec<Override>,
    /// `handoff` in `time_zone`.
    start: Zoned,
    /// The shift's nominal length in microseconds (for a first guess).
    nominal: i64,
}

impl Schedule {
    pub fn new(
        name: String,
        rotation: Vec<String>,
        handoff: civil::DateTime,
        shift: Span,
        time_zone: TimeZone,
        overrides: Vec<Override>,
    ) -> Result<Schedule, String> {
        let start = handoff
            .to_zoned(time_zone.clone())
            .map_err(|e| format!("handoff {handoff} does not exist in the time zone: {e}"))?;
        let end = start.checked_add(shift).map_err(|e| format!("shift {shift} cannot be added: {e}"))?;
        let nominal = end.timestamp().as_microsecond() - start.timestamp().as_microsecond();
        if nominal <= 0 {
            return Err(format!("shift {shift} must be positive"));
        }
        Ok(Schedule { name, rotation, handoff, shift, time_zone, overrides, start, nominal })
    }

    /// Start of shift number `n` (may be negative: shifts before the first handoff).
    fn shift_start(&self, n: i64) -> Option<i64> {
        let span = self.shift.checked_mul(n).ok()?;
        Some(self.start.checked_add(span).ok()?.timestamp().as_microsecond())
    }

    /// The number of the shift `now` falls in.
    pub fn shift_number(&self, now: Timestamp) -> i64 {
        let since = now.0 - self.start.timestamp().as_microsecond();
        let mut n = since.div_euclid(self.nominal);
        // Calendar units (days across DST) make shifts uneven: correct the guess.
        for _ in 0..4 {
            match (self.shift_start(n), self.shift_start(n + 1)) {
                (Some(a), _) if now.0 < a => n -= 1,
                (_, Some(b)) if now.0 >= b => n += 1,
                _ => break,
            }
        }
        n
    }

    /// When the shift containing `now` ends.
    pub fn next_handoff(&self, now: Timestamp) -> Option<Timestamp> {
        self.shift_start(self.shift_number(now) + 1).map(Timestamp)
    }

    /// Who is on call at `now`: the latest override covering it, else the rotation.
    pub fn on_call(&self, now: Timestamp) -> Option<&str> {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.start <= now && now < o.end) {
            return Some(&o.person);
        }
        if self.rotation.is_empty() {
            return None;
        }
        let n = self.shift_number(now);
        let i = n.rem_euclid(self.rotation.len() as i64) as usize;
        Some(&self.rotation[i])
    }
}

/// When the team counts as at work (the bot tier invites chat to
/// acknowledge, and waits longer).
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessHours {
    pub start_minute: u16,
    pub end_minute: u16,
    /// Monday first.
    pub days: [bool; 7],
}

impl Default for BusinessHours {
    /// 08:00–18:00 Monday to Friday, PagerDuty's business hours.
    fn default() -> Self {
        BusinessHours { start_minute: 8 * 60, end_minute: 18 * 60, days: [true, true, true, true, true, false, false] }
    }
}

fn zoned(now: Timestamp, tz: &TimeZone) -> Zoned {
    jiff::Timestamp::from_microsecond(now.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH).to_zoned(tz.clone())
}

impl BusinessHours {
    pub fn contains(&self, now: Timestamp, tz: &TimeZone) -> bool {
        let z = zoned(now, tz);
        let day = z.weekday().to_monday_zero_offset() as usize;
        let minute = z.hour() as u16 * 60 + z.minute() as u16;
        self.days[day] && self.start_minute <= minute && minute < self.end_minute
    }
}

/// PagerDuty's classes of the hour a page arrives in (in the team's zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HourClass {
    /// 08:00–18:00, Monday to Friday.
    Business,
    /// 18:00–22:00 on weekdays, 08:00–22:00 on weekends.
    OffHours,
    /// 22:00–08:00, any day.
    Sleep,
}

pub fn hour_class(at: Timestamp, tz: &TimeZone) -> HourClass {
    let z = zoned(at, tz);
    let hour = z.hour();
    let weekend = z.weekday().to_monday_zero_offset() >= 5;
    if !(8..22).contains(&hour) {
        HourClass::Sleep
    } else if weekend || hour >= 18 {
        HourClass::OffHours
    } else {
        HourClass::Business
    }
}

/// Monday 00:00 (in `tz`) of the week containing `at`.
pub fn week_start(at: Timestamp, tz: &TimeZone) -> Timestamp {
    let z = zoned(at, tz);
    let back = z.weekday().to_monday_zero_offset() as i64;
    let monday = z.date().checked_sub(Span::new().days(back)).unwrap_or(z.date());
    match monday.to_zoned(tz.clone()) {
        Ok(m) => Timestamp(m.timestamp().as_microsecond()),
        Err(_) => at,
    }
}

/// Monday 00:00 of the week `weeks` after the one starting at `start`.
pub fn add_weeks(start: Timestamp, weeks: i64, tz: &TimeZone) -> Timestamp {
    let z = zoned(start, tz);
    match z.checked_add(Span::new().weeks(weeks)) {
        Ok(w) => Timestamp(w.timestamp().as_microsecond()),
        Err(_) => Timestamp(start.0 + weeks * 7 * 86_400_000_000),
    }
}

/// The civil date of `at` in `tz`, e.g. `2026-03-02`.
pub fn civil_date(at: Timestamp, tz: &TimeZone) -> String {
    zoned(at, tz).date().to_string()
}
