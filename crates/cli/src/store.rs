//! `drover store migrate`: the data dir's SQLite fleet moved into an empty
//! PostgreSQL store (`drover_store::migrate`), with the data dir locked
//! meanwhile and marked afterwards so the stale copy is never served.

use anyhow::Context;
use std::path::Path;

pub async fn migrate(from: &Path, to: &str) -> anyhow::Result<()> {
    let db = from.join("drover.db");
    if !db.is_file() {
        anyhow::bail!(
            "{} holds no store (no drover.db): pass the data dir of the control plane to move with --from",
            from.display()
        );
    }
    // No control plane writes the file while it is copied (and none starts).
    let _lock = drover_secrets::datadir::DataDirLock::acquire(from).map_err(|e| anyhow::anyhow!("{e}"))?;
    let marker = from.join(drover_store::migrate::MOVED_MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        anyhow::bail!(
            "{} was moved already ({}: {}): nothing was copied",
            from.display(),
            marker.display(),
            text.trim()
        );
    }
    let report = drover_store::migrate::sqlite_to_postgres(&db, to).await?;
    let at = jiff::Timestamp::now().to_string();
    let tables: serde_json::Map<String, serde_json::Value> =
        report.tables.iter().map(|(t, n)| (t.clone(), (*n).into())).collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({"to": report.target, "at": at, "rows": tables}))?;
    // Written whole or not at all: a marker cut short still stops a start.
    let tmp = marker.with_extension("json.tmp");
    let copied_but = || {
        format!(
            "the fleet WAS copied to {} but {} could not be written: write it by hand (any JSON with \"to\") \
             before anything starts on the SQLite store again",
            report.target,
            marker.display()
        )
    };
    std::fs::write(&tmp, format!("{text}\n")).with_context(copied_but)?;
    std::fs::rename(&tmp, &marker).with_context(copied_but)?;
    for (table, rows) in &report.tables {
        println!("{table:<24} {rows:>10} rows");
    }
    println!(
        "moved {} services, {} instances, {} events to {}; start it with: drover serve --data-dir {} --store <the same URL>",
        report.rows("services"),
        report.rows("instances"),
        report.rows("events"),
        report.target,
        from.display()
    );
    Ok(())
}
