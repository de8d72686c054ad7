//! `/ui/pager`: a team's pager metrics per week, as an inline SVG bar
//! chart (pages handled by the bot tier alone and pages that reached a
//! person, stacked) and the same figures as a table, from the pager
//! metrics the API serves (`GET /v1/pager/metrics`).

use super::{html, login_form, problem, viewer, Viewer};
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use drover_oncall::metrics::{self, WeekMetrics};
use serde::Deserialize;

/// Weeks on the chart.
const WEEKS: usize = 8;

#[derive(Deserialize)]
pub(crate) struct PagerQuery {
    team: Option<String>,
}

struct WeekRow {
    week: String,
    pages: u32,
    bot: u32,
    people: u32,
    average: String,
    after_hours: u32,
    acknowledge: String,
    resolve: String,
}

#[derive(Template)]
#[template(path = "ui/pager.html")]
struct PagerPage {
    me: Option<String>,
    csrf: String,
    team: String,
    teams: Vec<String>,
    chart: String,
    rows: Vec<WeekRow>,
    open_pages: usize,
}

fn minutes(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s < 60.0 => format!("{s:.0} s"),
        Some(s) => format!("{:.1} min", s / 60.0),
        None => "—".into(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Pages per week as stacked bars: handled by the bot tier alone (green,
/// below) and reached a person (red, above). An image with a title and a
/// description for screen readers; the table beside it has the figures.
pub(crate) fn chart(team: &str, weeks: &[WeekMetrics]) -> String {
    let (w, h, left, bottom, top) = (640.0f64, 260.0f64, 40.0f64, 36.0f64, 16.0f64);
    let plot = h - bottom - top;
    // At least 2, so the middle grid line is a whole number of pages.
    let max = weeks.iter().map(|m| m.pages).max().unwrap_or(0).max(2) as f64;
    let slot = (w - left - 8.0) / weeks.len().max(1) as f64;
    let bar = (slot * 0.6).max(2.0);
    let y = |v: f64| top + plot - v / max * plot;
    let total: u32 = weeks.iter().map(|m| m.pages).sum();
    let bot: u32 = weeks.iter().map(|m| m.bot_only).sum();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-labelledby=\"chart-title chart-desc\" \
         viewBox=\"0 0 {w} {h}\" width=\"100%\" style=\"max-width:{w}px\" font-family=\"sans-serif\" font-size=\"11\" \
         data-chart=\"pages-per-week\">\
         <title id=\"chart-title\">Pages per week, team {t}</title>\
         <desc id=\"chart-desc\">{n} weeks, {total} pages, {bot} handled by the bot tier alone, {people} reached a person.</desc>",
        t = escape(team),
        n = weeks.len(),
        people = total - bot.min(total),
    );
    for tick in 0..=2 {
        let v = max * f64::from(tick) / 2.0;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#d0d5dd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            w - 8.0,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    for (i, m) in weeks.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let bot = m.bot_only.min(m.pages);
        let people = m.pages - bot;
        for (base, count, class, color, label) in
            [(0, bot, "bot", "#1f7a3a", "by the bot tier"), (bot, people, "human", "#b3261e", "to a person")]
        {
            if count == 0 {
                continue;
            }
            let (lo, hi) = (y(f64::from(base)), y(f64::from(base + count)));
            s += &format!(
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{hi:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\">\
                 <title>week of {}: {count} {label}</title></rect>",
                lo - hi,
                escape(&m.week)
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + bar / 2.0,
            h - bottom + 14.0,
            escape(m.week.get(5..).unwrap_or(&m.week))
        );
    }
    s += &format!(
        "<rect x=\"{left}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"#1f7a3a\"/><text x=\"{}\" y=\"{}\">bot tier alone</text>\
         <rect x=\"{}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"#b3261e\"/><text x=\"{}\" y=\"{}\">reached a person</text></svg>",
        left + 14.0,
        h - 4.0,
        left + 120.0,
        left + 134.0,
        h - 4.0,
        ly = h - 13.0
    );
    s
}

pub(crate) async fn pager(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<PagerQuery>) -> Response {
    let (ready, v): (_, Viewer) = signed_in!(state, headers);
    let pager = &ready.oncall;
    let teams: Vec<String> =
        pager.config.teams.iter().map(|t| t.name.clone()).filter(|t| v.who.sees_team(Some(t))).collect();
    let name = q.team.or_else(|| v.who.team.clone()).unwrap_or_else(|| pager.config.default_team.clone());
    let Some(team) = pager.config.team(&name).filter(|t| v.who.sees_team(Some(&t.name))).cloned() else {
        return problem(StatusCode::NOT_FOUND, Some(&v), format!("No team {name:?}."));
    };
    let now = crate::actor::now();
    let since = drover_model::Timestamp(now.0 - (WEEKS as i64 + 4) * 7 * 86_400_000_000);
    let (store, n) = (pager.store.clone(), name.clone());
    let found = tokio::task::spawn_blocking(move || (store.team_pages_since(&n, since), store.open_pages())).await;
    let Ok((Ok(pages), Ok(open))) = found else {
        return problem(StatusCode::SERVICE_UNAVAILABLE, Some(&v), "The on-call store did not answer.");
    };
    let weeks = metrics::weekly(&team, &pages, now, WEEKS);
    let rows = weeks
        .iter()
        .rev()
        .map(|m| WeekRow {
            week: m.week.clone(),
            pages: m.pages,
            bot: m.bot_only,
            people: m.pages_to_people,
            average: format!("{:.1}", m.rolling_average_4w),
            after_hours: m.off_hours + m.sleep_hours,
            acknowledge: minutes(m.mean_time_to_acknowledge_secs),
            resolve: minutes(m.mean_time_to_resolve_secs),
        })
        .collect();
    let page = PagerPage {
        me: Some(v.who.name.clone()),
        csrf: v.csrf.clone(),
        chart: chart(&name, &weeks),
        team: name,
        teams,
        rows,
        open_pages: open.iter().filter(|p| v.who.sees_team(Some(&p.team))).count(),
    };
    html(StatusCode::OK, page.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_stacks_bot_handled_under_human_pages_and_escapes_names() {
        let week = |w: &str, pages: u32, bot: u32| WeekMetrics {
            team: "db".into(),
            week: w.into(),
            week_start: drover_model::Timestamp(0),
            pages,
            rolling_average_4w: 0.0,
            pages_to_people: pages - bot,
            on_call_people: 0,
            pages_per_on_call_person: 0.0,
            business_hours: 0,
            off_hours: 0,
            sleep_hours: 0,
            acknowledged: 0,
            mean_time_to_acknowledge_secs: None,
            resolved: 0,
            mean_time_to_resolve_secs: None,
            bot_only: bot,
            bot_only_share: 0.0,
            noisiest: Vec::new(),
        };
        let svg = chart("<db>", &[week("2026-11-16", 0, 0), week("2026-11-23", 4, 3), week("2026-11-30", 2, 0)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("team &lt;db&gt;") && !svg.contains("<db>"), "{svg}");
        assert_eq!(svg.matches("class=\"bot\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("class=\"human\"").count(), 2, "{svg}");
        assert!(svg.contains("6 pages, 3 handled by the bot tier alone, 3 reached a person"), "{svg}");
        assert!(svg.contains("week of 2026-11-23: 3 by the bot tier"), "{svg}");
    }
}
