//! `drover archives …`: the archives of deleted PostgreSQL services (their
//! final backups, until purged), and the restore of one into a new service.

use crate::client::{self, Client};
use crate::output;
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum ArchivesCmd {
    /// Every archive: the deleted service, its state (archiving, archived,
    /// failed, purged), when it is purged, its final backup's label.
    List,
    /// Restore archive ID into a new service NAME (the deleted one's plan,
    /// its own URL, the archived data).
    Restore { id: String, name: String },
}

pub async fn archives(client: &Client, cmd: ArchivesCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ArchivesCmd::List => {
            let v = client.get("/v1/archives", &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut t = output::table(&["ID", "SERVICE", "ENGINE", "STATE", "ARCHIVED", "PURGE AFTER", "BACKUP"]);
            for a in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                t.add_row(vec![
                    text(a, "id"),
                    text(a, "service"),
                    text(a, "engine"),
                    match a.get("error").and_then(Value::as_str) {
                        Some(e) => format!("{} ({e})", text(a, "state")),
                        None => text(a, "state"),
                    },
                    text(a, "archived_at"),
                    text(a, "purge_after"),
                    text(a, "backup_label"),
                ]);
            }
            println!("{t}");
        }
        ArchivesCmd::Restore { id, name } => {
            let path = format!("/v1/archives/{}/restore", client::path_segment(&id));
            let v = client.post(&path, serde_json::json!({ "name": name })).await?;
            output::service(&v, json);
        }
    }
    Ok(())
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}
