//! Pager metrics per team and week, as Heroku tracked them: pages, a
//! four-week rolling average, pages per on-call person, when pages arrive
//! (business, off hours, sleep hours: PagerDuty's classes), time to
//! acknowledge and resolve, the bot tier's share, the noisiest alerts.
//!
//! Weeks start Monday 00:00 in the team's time zone. A page belongs to the
//! week it opened in.

use crate::config::{Target, Team};
use crate::pager::Page;
use crate::schedule::{add_weeks, civil_date, hour_class, week_start, HourClass};
use drover_model::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many noisiest alerts a week lists.
pub const NOISIEST: usize = 5;
/// Weeks in the rolling average (Heroku's "four week chunks").
pub const ROLLING_WEEKS: usize = 4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoisyAlert {
    /// The alert's class (alertname, event class) or its dedup key.
    pub alert: String,
    pub pages: u32,
    /// Trigger events, repeats included.
    pub alerts: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WeekMetrics {
    pub team: String,
    /// Monday of the week, in the team's zone.
    pub week: String,
    pub week_start: Timestamp,
    /// Pages opened this week (the bot tier's included).
    pub pages: u32,
    /// Mean of `pages` over this week and the three before it.
    pub rolling_average_4w: f64,
    /// Pages that notified at least one person.
    pub pages_to_people: u32,
    /// Distinct people on call this week in the schedules the policy pages.
    pub on_call_people: u32,
    /// `pages_to_people / on_call_people` (0 when nobody was on call).
    pub pages_per_on_call_person: f64,
    /// Pages by when they opened: 08–18 on weekdays.
    pub business_hours: u32,
    /// 18–22 on weekdays, 08–22 on weekends.
    pub off_hours: u32,
    /// 22–08, any day.
    pub sleep_hours: u32,
    pub acknowledged: u32,
    pub mean_time_to_acknowledge_secs: Option<f64>,
    pub resolved: u32,
    pub mean_time_to_resolve_secs: Option<f64>,
    /// Pages no person was notified of.
    pub bot_only: u32,
    /// `bot_only / pages` (0 with no pages).
    pub bot_only_share: f64,
    pub noisiest: Vec<NoisyAlert>,
}

fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// People on call in the schedules the team's policy pages, sampled every
/// hour and at every override boundary within `[start, end)`.
fn on_call_people(team: &Team, start: Timestamp, end: Timestamp) -> BTreeSet<String> {
    let mut people = BTreeSet::new();
    let hour = 3_600_000_000i64;
    for step in &team.escalation {
        let Target::Schedule(name) = &step.target else { continue };
        let Some(schedule) = team.schedule(name) else { continue };
        let mut samples: Vec<i64> = (0..).map(|i| start.0 + i * hour).take_while(|&t| t < end.0).collect();
        for o in &schedule.overrides {
            if o.start < end && o.end > start {
                samples.push(o.start.0.max(start.0));
            }
        }
        for t in samples {
            if let Some(p) = schedule.on_call(Timestamp(t)) {
                people.insert(p.to_string());
            }
        }
    }
    people
}

/// Metrics for the `weeks` weeks ending with the one containing `now`,
/// oldest first. `pages` may hold any pages; only the team's count.
pub fn weekly(team: &Team, pages: &[Page], now: Timestamp, weeks: usize) -> Vec<WeekMetrics> {
    let tz = &team.time_zone;
    let weeks = weeks.max(1);
    let current = week_start(now, tz);
    let first = add_weeks(current, -((weeks + ROLLING_WEEKS - 1) as i64 - 1), tz);
    let span = weeks + ROLLING_WEEKS - 1;
    let starts: Vec<Timestamp> = (0..=span as i64).map(|i| add_weeks(first, i, tz)).collect();
    let mut buckets: Vec<Vec<&Page>> = vec![Vec::new(); span];
    for p in pages.iter().filter(|p| p.team == team.name) {
        let at = p.opened_at;
        if at < starts[0] || at >= starts[span] {
            continue;
        }
        let i = starts.partition_point(|&s| s <= at) - 1;
        buckets[i].push(p);
    }
    let counts: Vec<u32> = buckets.iter().map(|b| b.len() as u32).collect();
    let mut out = Vec::new();
    for i in (ROLLING_WEEKS - 1)..span {
        let week = &buckets[i];
        let (start, end) = (starts[i], starts[i + 1]);
        let window = &counts[i + 1 - ROLLING_WEEKS..=i];
        let rolling = window.iter().map(|&c| f64::from(c)).sum::<f64>() / ROLLING_WEEKS as f64;
        let mut classes = [0u32; 3];
        let mut to_ack = Vec::new();
        let mut to_resolve = Vec::new();
        let mut noisy: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for p in week {
            match hour_class(p.opened_at, tz) {
                HourClass::Business => classes[0] += 1,
                HourClass::OffHours => classes[1] += 1,
                HourClass::Sleep => classes[2] += 1,
            }
            if let Some(a) = p.acknowledged_at {
                to_ack.push(a.since(p.opened_at).as_secs_f64());
            }
            if let Some(r) = p.resolved_at {
                to_resolve.push(r.since(p.opened_at).as_secs_f64());
            }
            let name = p.class.clone().unwrap_or_else(|| p.dedup_key.clone());
            let e = noisy.entry(name).or_default();
            e.0 += 1;
            e.1 += p.alerts;
        }
        let mut noisiest: Vec<NoisyAlert> =
            noisy.into_iter().map(|(alert, (pages, alerts))| NoisyAlert { alert, pages, alerts }).collect();
        noisiest.sort_by(|a, b| b.pages.cmp(&a.pages).then(b.alerts.cmp(&a.alerts)).then(a.alert.cmp(&b.alert)));
        noisiest.truncate(NOISIEST);
        let pages = week.len() as u32;
        let to_people = week.iter().filter(|p| !p.bot_only()).count() as u32;
        let people = on_call_people(team, start, end).len() as u32;
        out.push(WeekMetrics {
            team: team.name.clone(),
            week: civil_date(start, tz),
            week_start: start,
            pages,
            rolling_average_4w: round2(rolling),
            pages_to_people: to_people,
            on_call_people: people,
            pages_per_on_call_person: if people == 0 { 0.0 } else { round2(f64::from(to_people) / f64::from(people)) },
            business_hours: classes[0],
            off_hours: classes[1],
            sleep_hours: classes[2],
            acknowledged: to_ack.len() as u32,
            mean_time_to_acknowledge_secs: mean(&to_ack).map(round2),
            resolved: to_resolve.len() as u32,
            mean_time_to_resolve_secs: mean(&to_resolve).map(round2),
            bot_only: pages - to_people,
            bot_only_share: if pages == 0 { 0.0 } else { round2(f64::from(pages - to_people) / f64::from(pages)) },
            noisiest,
        });
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A bar chart: pages per week stacked by business / off / sleep hours,
/// with the four-week rolling average as a line.
pub fn svg(team: &str, weeks: &[WeekMetrics]) -> String {
    let (w, h, left, bottom, top) = (720.0f64, 320.0f64, 48.0f64, 40.0f64, 36.0f64);
    let plot_h = h - bottom - top;
    let max = weeks.iter().map(|m| f64::from(m.pages).max(m.rolling_average_4w)).fold(1.0f64, f64::max).ceil();
    let n = weeks.len().max(1) as f64;
    let slot = (w - left - 16.0) / n;
    let bar = (slot * 0.6).max(2.0);
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <title>Pages per week: {t}</title>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">Pages per week — {t} (bars: business / off hours / sleep; line: 4-week average)</text>\n",
        t = escape(team)
    );
    for tick in 0..=4 {
        let v = max * f64::from(tick) / 4.0;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            w - 16.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let mut line = Vec::new();
    for (i, m) in weeks.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0.0;
        for (count, color, label) in [
            (m.business_hours, "#4e79a7", "business hours"),
            (m.off_hours, "#f28e2b", "off hours"),
            (m.sleep_hours, "#e15759", "sleep hours"),
        ] {
            if count == 0 {
                continue;
            }
            let v = f64::from(count);
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {count} {label}</title></rect>\n",
                y(base + v),
                y(base) - y(base + v),
                escape(&m.week)
            );
            base += v;
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x + bar / 2.0,
            h - bottom + 16.0,
            escape(m.week.get(5..).unwrap_or(&m.week))
        );
        line.push(format!("{:.1},{:.1}", x + bar / 2.0, y(m.rolling_average_4w)));
    }
    if !line.is_empty() {
        s += &format!("<polyline fill=\"none\" stroke=\"#333\" stroke-width=\"2\" points=\"{}\"/>\n", line.join(" "));
    }
    s += "</svg>\n";
    s
}
