//! `drover rollouts …`: create, list, show, watch (a live progress bar),
//! pause, resume, abort.

use crate::client::{self, Client};
use clap::Subcommand;
use serde_json::Value;
use std::time::Duration;

/// How often `watch` asks the server.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

// Parsed once per run: the size of the biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum RolloutsCmd {
    /// Move the selected services onto an image, in waves.
    Create {
        /// The image to move onto (its id, `sha256:…`).
        #[arg(long = "to-image", required_unless_present = "fix", conflicts_with = "fix")]
        to_image: Option<String>,
        /// Instead of --to-image: an imported advisory's id (`DSA-6090-1`);
        /// the target is the newest registered image it does not affect.
        #[arg(long)]
        fix: Option<String>,
        /// Select by engine (postgres, redis, kafka).
        #[arg(long)]
        engine: Option<String>,
        /// Select the services on this image.
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// Select these services (comma-separated).
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
        /// Select the services carrying this label `key=value` (repeat:
        /// every one must match).
        #[arg(long = "label", value_parser = crate::parse_label_arg)]
        labels: Vec<(String, String)>,
        /// Cumulative percentages, comma-separated (default 1,10,50,100).
        #[arg(long, value_delimiter = ',')]
        waves: Option<Vec<u8>>,
        #[arg(long)]
        soak_seconds: Option<u64>,
        #[arg(long)]
        max_failures: Option<u32>,
        /// RFC 3339: after it, services move outside their windows.
        #[arg(long)]
        required_by: Option<String>,
    },
    List,
    Show {
        id: String,
    },
    /// A live progress bar until the rollout finishes (or pauses).
    Watch {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Abort {
        id: String,
    },
}

pub async fn rollouts(client: &Client, cmd: RolloutsCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        RolloutsCmd::Create {
            to_image,
            fix,
            engine,
            image,
            team,
            names,
            labels,
            waves,
            soak_seconds,
            max_failures,
            required_by,
        } => {
            let mut selector = serde_json::json!({});
            if let Some(e) = engine {
                selector["engine"] = e.into();
            }
            if let Some(i) = image {
                selector["image"] = i.into();
            }
            if let Some(t) = team {
                selector["team"] = t.into();
            }
            if let Some(n) = names {
                selector["names"] = n.into();
            }
            if !labels.is_empty() {
                selector["labels"] = crate::labels_json(labels);
            }
            let mut body = serde_json::json!({ "selector": selector });
            match (to_image, fix) {
                (Some(image), _) => body["to_image"] = image.into(),
                (None, Some(advisory)) => body["fix"] = advisory.into(),
                // clap requires one of them.
                (None, None) => anyhow::bail!("give --to-image or --fix"),
            }
            if let Some(w) = waves {
                body["waves"] = w.into();
            }
            if let Some(s) = soak_seconds {
                body["soak_seconds"] = s.into();
            }
            if let Some(m) = max_failures {
                body["max_failures"] = m.into();
            }
            if let Some(r) = required_by {
                body["required_by"] = r.into();
            }
            let v = client.post("/v1/rollouts", body).await?;
            show(&v, json);
        }
        RolloutsCmd::List => {
            let v = client.get("/v1/rollouts", &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                    println!("{}", line(r));
                }
            }
        }
        RolloutsCmd::Show { id } => show(&client.get(&path(&id, ""), &[]).await?, json),
        RolloutsCmd::Watch { id } => watch(client, &id).await?,
        RolloutsCmd::Pause { id } => show(&client.post(&path(&id, "/pause"), serde_json::json!({})).await?, json),
        RolloutsCmd::Resume { id } => show(&client.post(&path(&id, "/resume"), serde_json::json!({})).await?, json),
        RolloutsCmd::Abort { id } => show(&client.post(&path(&id, "/abort"), serde_json::json!({})).await?, json),
    }
    Ok(())
}

fn path(id: &str, tail: &str) -> String {
    format!("/v1/rollouts/{}{tail}", client::path_segment(id))
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn eta(v: &Value) -> String {
    match v.get("eta_seconds").and_then(Value::as_u64) {
        Some(s) => format!("eta {}m{:02}s", s / 60, s % 60),
        None => "eta unknown".into(),
    }
}

/// One line: id, state, counts, wave, ETA.
fn line(v: &Value) -> String {
    let waves = v.get("waves").and_then(Value::as_array).map_or(0, Vec::len);
    let mut out = format!(
        "{}  {:<9}  {}/{} done  {} failed  {} moving  wave {}/{}  {}",
        text(v, "id"),
        text(v, "state"),
        num(v, "done"),
        num(v, "total"),
        num(v, "failed"),
        num(v, "moving"),
        num(v, "wave"),
        waves,
        eta(v)
    );
    if let Some(reason) = v.get("reason").and_then(Value::as_str) {
        out.push_str(&format!("  ({reason})"));
    }
    out
}

pub(crate) fn show(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", line(v));
    }
}

async fn watch(client: &Client, id: &str) -> anyhow::Result<()> {
    let first = client.get(&path(id, ""), &[]).await?;
    let bar = indicatif::ProgressBar::new(num(&first, "total"));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let v = client.get(&path(id, ""), &[]).await?;
        bar.set_length(num(&v, "total"));
        bar.set_position(num(&v, "done") + num(&v, "failed"));
        let waves = v.get("waves").and_then(Value::as_array).map_or(0, Vec::len);
        bar.set_message(format!(
            "{}  wave {}/{}  {} failed  {} moving  {}",
            text(&v, "state"),
            num(&v, "wave"),
            waves,
            num(&v, "failed"),
            num(&v, "moving"),
            eta(&v)
        ));
        let state = text(&v, "state");
        if matches!(state.as_str(), "succeeded" | "aborted" | "failed" | "paused") {
            bar.finish();
            println!("{}", line(&v));
            if state == "succeeded" {
                return Ok(());
            }
            anyhow::bail!("rollout {id} is {state}");
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}
