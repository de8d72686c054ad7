//! `drover advisories import|audit` and `drover runbooks list|run|approve`:
//! the CVE audit and the break-glass runbooks, through the API.

use crate::client::{path_segment, Client};
use anyhow::{anyhow, Context};
use clap::Subcommand;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AdvisoriesCmd {
    /// Import OSV records (Debian:12) from files: each one record or an array.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// When the data was fetched from its source (RFC 3339); default: the
        /// oldest modification time of the files.
        #[arg(long)]
        fetched_at: Option<String>,
    },
    /// Every advisory that affects a registered image, with the services,
    /// instances and owners on it.
    Audit,
}

#[derive(Subcommand)]
pub enum RunbooksCmd {
    /// The runbooks this Drover ships.
    List,
    /// Run a runbook: `--dry-run` shows the plan and changes nothing.
    Run {
        name: String,
        /// A parameter, as name=value (repeat).
        #[arg(long = "param", short = 'p', value_parser = parse_param)]
        params: Vec<(String, String)>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Approve a dangerous run someone else requested; its steps then run.
    Approve { id: String },
    /// One run: its plan and what each step did.
    Show { id: String },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not name=value"))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or(x.to_string())).collect::<Vec<_>>().join(", ")
        }
        Some(other) => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn advisories(client: &Client, cmd: AdvisoriesCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        AdvisoriesCmd::Import { files, fetched_at } => {
            let mut records = Vec::new();
            let mut oldest: Option<std::time::SystemTime> = None;
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
                let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
                match v {
                    Value::Array(items) => records.extend(items),
                    one => records.push(one),
                }
                let modified = std::fs::metadata(f).and_then(|m| m.modified()).ok();
                oldest = match (oldest, modified) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let fetched_at = match fetched_at {
                Some(t) => t,
                None => {
                    let t = oldest.ok_or_else(|| anyhow!("no modification time on the files: pass --fetched-at"))?;
                    jiff::Timestamp::try_from(t).map_err(|e| anyhow!("file time: {e}"))?.to_string()
                }
            };
            let path = format!("/v1/advisories?fetched_at={}", path_segment(&fetched_at));
            let v = client.post(&path, Value::Array(records)).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "imported {} records ({} withdrawn), fetched at {}",
                    text(&v, "imported"),
                    text(&v, "withdrawn"),
                    text(&v, "fetched_at")
                );
                if v["stale"] == Value::Bool(true) {
                    eprintln!("warning: this advisory data is stale (fetched over 2 days ago): the audit misses newer advisories");
                }
            }
            Ok(())
        }
        AdvisoriesCmd::Audit => {
            let status = client.get("/v1/advisories", &[]).await?;
            let v = client.get("/v1/advisories/audit", &[]).await?;
            if status["stale"] == Value::Bool(true) {
                eprintln!(
                    "warning: the advisory database is stale (data fetched {}): import fresh OSV data",
                    text(&status, "fetched_at")
                );
            }
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut t =
                table(&["ADVISORY", "PACKAGE", "INSTALLED", "FIXED", "IMAGES", "SERVICES", "INSTANCES", "OWNERS"]);
            for f in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                let images = f["images"].as_array().map(Vec::len).unwrap_or(0);
                t.add_row(vec![
                    text(f, "advisory"),
                    text(f, "package"),
                    text(f, "installed"),
                    text(f, "fixed"),
                    images.to_string(),
                    text(f, "services"),
                    text(f, "instances"),
                    text(f, "owners"),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

fn print_run(v: &Value, json: bool) {
    if json {
        return print_json(v);
    }
    println!("run {} of {}: {}", text(v, "id"), text(v, "runbook"), text(v, "state"));
    println!("requested by {}, approved by {}", text(v, "requested_by"), text(v, "approved_by"));
    let mut t = table(&["#", "COMMAND", "TARGET", "OUTCOME"]);
    for (i, s) in v["plan"].as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        t.add_row(vec![(i + 1).to_string(), text(s, "command"), text(s, "target"), text(s, "outcome")]);
    }
    println!("{t}");
}

pub async fn runbooks(client: &Client, cmd: RunbooksCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        RunbooksCmd::List => {
            let v = client.get("/v1/runbooks", &[]).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let mut t = table(&["RUNBOOK", "DANGEROUS", "PARAMETERS", "DESCRIPTION"]);
            for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                let params: Vec<String> = r["parameters"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| text(p, "name"))
                    .collect();
                t.add_row(vec![text(r, "name"), text(r, "dangerous"), params.join(", "), text(r, "description")]);
            }
            println!("{t}");
            Ok(())
        }
        RunbooksCmd::Run { name, params, dry_run } => {
            let params: serde_json::Map<String, Value> =
                params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = serde_json::json!({ "params": params, "dry_run": dry_run });
            let v = client.post(&format!("/v1/runbooks/{}/runs", path_segment(&name)), body).await?;
            print_run(&v, json);
            if !json && v["state"] == "awaiting_approval" {
                println!("dangerous: another person approves with `drover runbooks approve {}`", text(&v, "id"));
            }
            Ok(())
        }
        RunbooksCmd::Approve { id } => {
            let v = client.post(&format!("/v1/runbooks/runs/{}/approve", path_segment(&id)), Value::Null).await?;
            print_run(&v, json);
            Ok(())
        }
        RunbooksCmd::Show { id } => {
            let v = client.get(&format!("/v1/runbooks/runs/{}", path_segment(&id)), &[]).await?;
            print_run(&v, json);
            Ok(())
        }
    }
}
