//! Retention of the event log and the audit trail (issue 16, item 6): a
//! store that does not grow without bound, and loses nothing by it.
//!
//! Once an hour (and a minute after the start) the rows of each log older
//! than its retention are archived, oldest first and in batches, to
//! gzip-compressed JSON-lines files under `DATA_DIR/archive/<log>/` (one
//! row per line, the shape the API serves: `zcat … | jq`), and only then
//! pruned from the store. The audit trail is kept longer than the events by
//! default. A file is named by the first and last `seq` it holds and is
//! written whole (temporary name, fsync, rename, fsync of the folder)
//! before any row it holds is deleted: a kill -9 between the two leaves the
//! rows in the store, and the next pass writes them again (under the same
//! name when the batch is the same, else into a file that overlaps the
//! first): a row may be archived twice, never lost.

use drover_model::Timestamp;
use drover_store::{Log, Store};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long each log is kept in the store (`None`: for ever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub events: Option<Duration>,
    pub audit: Option<Duration>,
}

/// 90 days of events (a quarter, longer than Heroku's and RDS's default
/// event histories), 400 days of audit (a year and its review).
impl Default for Retention {
    fn default() -> Self {
        Retention { events: Some(Duration::from_secs(90 * 86_400)), audit: Some(Duration::from_secs(400 * 86_400)) }
    }
}

/// Rows moved into one archive file and one prune.
pub const BATCH: usize = 10_000;
/// A pass every hour; the first a minute after the start, so a start is
/// not slowed by it.
const EVERY: Duration = Duration::from_secs(3600);
const FIRST_AFTER: Duration = Duration::from_secs(60);

/// What one pass over one log did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows: u64,
    pub files: Vec<PathBuf>,
}

/// The folder a log's archive files go to.
pub fn archive_dir(data_dir: &Path, log: Log) -> PathBuf {
    data_dir.join("archive").join(log.table())
}

/// Archives then prunes every row of `log` stamped before `cutoff`.
pub fn archive_and_prune(
    store: &dyn Store,
    data_dir: &Path,
    log: Log,
    cutoff: Timestamp,
    batch: usize,
) -> Result<Pruned, String> {
    let mut done = Pruned::default();
    loop {
        let rows = store.log_rows_before(log, cutoff, batch).map_err(|e| e.to_string())?;
        let Some(last) = rows.last().map(|r| r.seq) else { break };
        let file = write_archive(data_dir, log, &rows)?;
        done.rows += store.prune_log(log, last, cutoff).map_err(|e| e.to_string())?;
        done.files.push(file);
        if rows.len() < batch {
            break;
        }
    }
    Ok(done)
}

/// Writes `rows` (not empty) whole into their archive file: a temporary
/// name, fsync, rename, fsync of the folder.
fn write_archive(data_dir: &Path, log: Log, rows: &[drover_store::LogRow]) -> Result<PathBuf, String> {
    let dir = archive_dir(data_dir, log);
    let (first, last) = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) => (first.seq, last.seq),
        _ => return Err("nothing to archive".into()),
    };
    let file = dir.join(format!("{first:020}-{last:020}.jsonl.gz"));
    let tmp = file.with_extension("gz.tmp");
    let write = || -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        let mut gz = GzEncoder::new(std::io::BufWriter::new(out), Compression::default());
        for row in rows {
            gz.write_all(row.json.as_bytes())?;
            gz.write_all(b"\n")?;
        }
        let out = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        std::fs::rename(&tmp, &file)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write the archive {}: {e}", file.display()))?;
    Ok(file)
}

/// One pass over both logs at `now`.
pub fn pass(store: &dyn Store, data_dir: &Path, retention: Retention, now: Timestamp) {
    for (log, keep) in [(Log::Events, retention.events), (Log::Audit, retention.audit)] {
        let Some(keep) = keep else { continue };
        let cutoff = Timestamp(now.micros().saturating_sub(keep.as_micros().min(i64::MAX as u128) as i64));
        match archive_and_prune(store, data_dir, log, cutoff, BATCH) {
            Ok(p) if p.rows > 0 || !p.files.is_empty() => tracing::info!(
                log = log.table(),
                rows = p.rows,
                files = p.files.len(),
                before = %cutoff,
                dir = %archive_dir(data_dir, log).display(),
                "archived and pruned rows older than their retention"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(log = log.table(), %error, "retention pass failed; the rows stay in the store")
            }
        }
    }
}

/// Runs [`pass`] on its schedule until `stop`.
pub fn spawn(
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    retention: Retention,
    zero: crate::held::ShardZero,
    mut stop: watch::Receiver<bool>,
) {
    if retention.events.is_none() && retention.audit.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut wait = FIRST_AFTER;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if !zero.here() {
                // Another node runs the passes; asked again in a while.
                wait = FIRST_AFTER;
                continue;
            }
            let (store, dir) = (store.clone(), data_dir.clone());
            let _ = tokio::task::spawn_blocking(move || pass(&*store, &dir, retention, crate::runtime::now())).await;
            wait = EVERY;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{AuditEntry, Changes, Event, EventSubject};
    use drover_store::{EventFilter, SqliteStore};
    use std::io::Read;

    const DAY: i64 = 86_400_000_000;

    fn event(at: i64, n: u32) -> Event {
        Event {
            id: Default::default(),
            seq: 0,
            at: Timestamp(at),
            subject: EventSubject::Fleet,
            service: Some(format!("svc{n}")),
            service_id: None,
            instance: None,
            action: None,
            from: None,
            to: None,
            cause: format!("event {n}"),
            kind: Default::default(),
            team: None,
        }
    }

    fn audit(at: i64, n: u32) -> AuditEntry {
        serde_json::from_value(serde_json::json!({
            "seq": 0, "at": at, "actor": format!("person{n}"), "role": null,
            "command": "services.create", "target": format!("svc{n}"), "outcome": "ok", "detail": null
        }))
        .expect("an audit entry")
    }

    fn read_archive(path: &Path) -> Vec<serde_json::Value> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Old rows go to compressed files, in order and whole, and leave the
    /// store; recent rows stay; the audit trail has its own, longer
    /// retention; a second pass finds nothing; a pass interrupted after
    /// its file (kill -9 before the delete) loses nothing.
    #[test]
    fn old_rows_are_archived_whole_then_pruned_and_recent_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("drover.db")).unwrap();
        let now = 1_000 * DAY;
        // 25 events from 200 days ago to 80 days ago (5 days apart), one
        // commit each, and 5 audit entries from 500 to 100 days ago.
        for n in 0..25u32 {
            let at = now - (200 - 5 * i64::from(n)) * DAY;
            store.commit(Changes { events: vec![event(at, n)], ..Default::default() }).unwrap();
        }
        for n in 0..5u32 {
            let at = now - (500 - 100 * i64::from(n)) * DAY;
            store.commit(Changes { audit: vec![audit(at, n)], ..Default::default() }).unwrap();
        }
        let retention = Retention::default();
        // A batch of 4 rows: several files.
        let cutoff = Timestamp(now - 90 * DAY);
        let p = archive_and_prune(&store, dir.path(), Log::Events, cutoff, 4).unwrap();
        // 200..=95 days ago: 22 events are older than 90 days (the one of
        // exactly 90 days ago is not).
        assert_eq!(p.rows, 22);
        assert_eq!(p.files.len(), 6, "{:?}", p.files);
        let archived: Vec<serde_json::Value> = p.files.iter().flat_map(|f| read_archive(f)).collect();
        let seqs: Vec<u64> = archived.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<u64>>(), "every pruned event archived once, in order");
        assert_eq!(archived[0]["cause"], "event 0");
        assert_eq!(archived[0]["service"], "svc0");
        let left = store.events(&EventFilter::default()).unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [23, 24, 25], "the recent events stay");
        // The files are private, like the data dir.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p.files[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(archive_dir(dir.path(), Log::Events)).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);

        // The pass at `now` with the defaults: nothing more of the events
        // (all within 90 days now), the audit rows older than 400 days go.
        pass(&store, dir.path(), retention, Timestamp(now));
        assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 3);
        let kept: Vec<String> = store.audit(100).unwrap().into_iter().map(|a| a.actor).collect();
        assert_eq!(kept, ["person1", "person2", "person3", "person4"], "audit kept 400 days");
        let audit_files: Vec<PathBuf> =
            std::fs::read_dir(archive_dir(dir.path(), Log::Audit)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(audit_files.len(), 1);
        assert_eq!(read_archive(&audit_files[0])[0]["actor"], "person0");
        assert!(archive_and_prune(&store, dir.path(), Log::Events, cutoff, 4).unwrap().files.is_empty());

        // Killed after the file, before the delete: the rows are still in
        // the store; the next pass writes the same file again (same batch,
        // same name) and prunes them: archived once, not lost.
        let later = Timestamp(now + 30 * DAY);
        let rows = store.log_rows_before(Log::Events, later, 10).unwrap();
        let interrupted = write_archive(dir.path(), Log::Events, &rows).unwrap();
        assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 3, "nothing deleted yet");
        let again = archive_and_prune(&store, dir.path(), Log::Events, later, 10).unwrap();
        assert_eq!((again.rows, &again.files[..]), (3, &[interrupted][..]));
        assert_eq!(read_archive(&again.files[0]).len(), 3);
        assert!(store.events(&EventFilter::default()).unwrap().is_empty());
    }

    /// `None` keeps a log for ever.
    #[test]
    fn no_retention_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("drover.db")).unwrap();
        store.commit(Changes { events: vec![event(1, 0)], audit: vec![audit(1, 0)], ..Default::default() }).unwrap();
        pass(&store, dir.path(), Retention { events: None, audit: None }, Timestamp(1_000 * DAY));
        assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 1);
        assert_eq!(store.audit(10).unwrap().len(), 1);
        assert!(!dir.path().join("archive").exists());
    }
}
