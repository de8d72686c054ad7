//! `drover pages` (list, show, ack, resolve), `drover pager metrics`,
//! `drover pager feed`, `drover pager oncall` and `drover bench alerts`.

use crate::client::{path_segment, Client};
use clap::Subcommand;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

#[derive(Subcommand)]
pub enum PagesCmd {
    /// Show one page with its transitions and notifications.
    Show { id: String },
    /// Acknowledge a page: escalation stops.
    Ack { id: String },
    /// Resolve a page.
    Resolve { id: String },
}

#[derive(Subcommand)]
pub enum PagerCmd {
    /// Pager metrics per week for a team.
    Metrics {
        #[arg(long)]
        team: Option<String>,
        #[arg(long, default_value_t = 8)]
        weeks: usize,
        /// Also write the chart (SVG) to this file.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// The company-wide feed of page events, newest first.
    Feed {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Who is on call now.
    Oncall,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn pages_table(v: &Value) {
    let mut t = table(&["ID", "STATUS", "TEAM", "LEVEL", "OPENED", "ALERTS", "SUMMARY"]);
    for p in items(v) {
        let level = format!("{} {}", text(p, "level"), text(p, "level_name"));
        let status =
            if p["flapping"] == true { format!("{} (flapping)", text(p, "status")) } else { text(p, "status") };
        t.add_row(vec![
            text(p, "id"),
            status,
            text(p, "team"),
            level,
            text(p, "opened_at"),
            text(p, "alerts"),
            text(p, "summary"),
        ]);
    }
    println!("{t}");
}

pub async fn pages(
    client: &Client,
    cmd: Option<PagesCmd>,
    status: Option<String>,
    team: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let v = match cmd {
        None => {
            let mut query = Vec::new();
            if let Some(s) = status {
                query.push(("status", s));
            }
            if let Some(t) = team {
                query.push(("team", t));
            }
            client.get("/v1/pages", &query).await?
        }
        Some(PagesCmd::Show { id }) => {
            let v = client.get(&format!("/v1/pages/{}", path_segment(&id)), &[]).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            pages_table(&Value::Array(vec![v.clone()]));
            let mut t = table(&["AT", "FROM", "TO", "BY", "CAUSE"]);
            for tr in items(&v["transitions"]) {
                t.add_row(vec![text(tr, "at"), text(tr, "from"), text(tr, "to"), text(tr, "by"), text(tr, "cause")]);
            }
            println!("{t}");
            let mut t = table(&["AT", "TO", "REASON", "STATE", "CHANNEL", "ATTEMPTS", "ERROR"]);
            for n in items(&v["notifications"]) {
                let to = n["recipient"]
                    .get("name")
                    .or_else(|| n["recipient"].get("team"))
                    .map(|x| text(&serde_json::json!({"x": x}), "x"))
                    .unwrap_or_default();
                t.add_row(vec![
                    text(n, "at"),
                    to,
                    text(n, "reason"),
                    text(n, "state"),
                    text(n, "channel"),
                    text(n, "attempts"),
                    text(n, "error"),
                ]);
            }
            println!("{t}");
            return Ok(());
        }
        Some(PagesCmd::Ack { id }) => {
            client.post(&format!("/v1/pages/{}/ack", path_segment(&id)), serde_json::json!({})).await?
        }
        Some(PagesCmd::Resolve { id }) => {
            client.post(&format!("/v1/pages/{}/resolve", path_segment(&id)), serde_json::json!({})).await?
        }
    };
    if json {
        print_json(&v);
    } else if v.is_array() {
        pages_table(&v);
    } else {
        pages_table(&Value::Array(vec![v]));
    }
    Ok(())
}

fn secs(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.0}s"),
        Some(s) if s < 3600.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

pub async fn pager(client: &Client, server: &str, cmd: PagerCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        PagerCmd::Metrics { team, weeks, svg } => {
            let mut query = vec![("weeks", weeks.to_string())];
            if let Some(t) = &team {
                query.push(("team", t.clone()));
            }
            let v = client.get("/v1/pager/metrics", &query).await?;
            if let Some(path) = svg {
                let _ = server;
                let chart = client.get_text("/v1/pager/metrics.svg", &query).await?;
                std::fs::write(&path, chart).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                eprintln!("chart written to {}", path.display());
            }
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut t = table(&[
                "WEEK",
                "PAGES",
                "4W AVG",
                "TO PEOPLE",
                "PER ON-CALL",
                "BUSINESS",
                "OFF HOURS",
                "SLEEP",
                "MTTA",
                "MTTR",
                "BOT ONLY",
                "NOISIEST",
            ]);
            for w in items(&v) {
                let noisiest = items(&w["noisiest"])
                    .first()
                    .map(|n| format!("{} ({})", text(n, "alert"), text(n, "pages")))
                    .unwrap_or_default();
                t.add_row(vec![
                    text(w, "week"),
                    text(w, "pages"),
                    text(w, "rolling_average_4w"),
                    text(w, "pages_to_people"),
                    text(w, "pages_per_on_call_person"),
                    text(w, "business_hours"),
                    text(w, "off_hours"),
                    text(w, "sleep_hours"),
                    secs(&w["mean_time_to_acknowledge_secs"]),
                    secs(&w["mean_time_to_resolve_secs"]),
                    format!("{:.0}%", w["bot_only_share"].as_f64().unwrap_or(0.0) * 100.0),
                    noisiest,
                ]);
            }
            println!("{t}");
        }
        PagerCmd::Feed { limit } => {
            let v = client.get("/v1/pager/feed", &[("limit", limit.to_string())]).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            for f in items(&v).iter().rev() {
                println!("{}  {}", text(f, "at"), text(f, "text"));
            }
        }
        PagerCmd::Oncall => {
            let v = client.get("/v1/pager/oncall", &[]).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut t = table(&["TEAM", "SCHEDULE", "ON CALL", "UNTIL"]);
            for o in items(&v) {
                t.add_row(vec![text(o, "team"), text(o, "schedule"), text(o, "person"), text(o, "next_handoff")]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// `drover bench alerts`: the last line is JSON with `alerts_per_sec`.
pub async fn bench_alerts(alerts: usize, keys: usize, producers: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let result = drover_server::oncall::bench_alerts(dir.path(), alerts, keys, producers).await?;
    eprintln!(
        "{} alerts over {} keys through the pager actor with group commit to oncall.db: {:.2}s, {:.0} alerts/s, {} open pages",
        result.alerts, result.distinct_keys, result.seconds, result.alerts_per_sec, result.open_pages
    );
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
