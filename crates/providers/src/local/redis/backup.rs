//! RDB backups of a Redis service and their restore tests (issue 13 item 5).
//!
//! A backup is a `BGSAVE` on the member the engine names (its policy: the
//! primary), whose `dump.rdb` is copied, with its SHA-256, into the
//! service's backup repository `data_dir/local/redis/backups/<service id>/`
//! as `<label>.rdb` beside a manifest `<label>.json` recording its size,
//! checksum and key count (read back from the copy by `redis-check-rdb`).
//! The last [`KEEP`] are kept.
//!
//! A restore test takes the latest backup: its checksum must match the
//! manifest, a throwaway `redis-server` (as the server user, on a free
//! loopback port, no persistence) must load it (Redis checks the RDB's own
//! CRC64 as it loads), and its `DBSIZE` must be the recorded key count.
//! Anything else is a broken backup.

use crate::runas::RunAs;
use crate::ActionError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Backups kept per service.
const KEEP: usize = 3;
/// How long a scratch server may take to load a backup.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CHECK_RDB: &str = "/usr/bin/redis-check-rdb";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub label: String,
    /// Unix seconds when the snapshot finished.
    pub taken_at: i64,
    pub bytes: u64,
    pub sha256: String,
    pub keys: u64,
}

pub fn rdb_path(repo: &Path, label: &str) -> PathBuf {
    repo.join(format!("{label}.rdb"))
}
fn manifest_path(repo: &Path, label: &str) -> PathBuf {
    repo.join(format!("{label}.json"))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ActionError {
    move |e| ActionError::io(what, e)
}

/// SHA-256 (hex) and length of a file.
pub fn digest_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The key count `redis-check-rdb` reads from an RDB file, which it also
/// checks (structure and CRC64).
async fn check_rdb(binary: &Path, rdb: &Path) -> Result<u64, ActionError> {
    let out = tokio::process::Command::new(binary)
        .arg(rdb)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io(format!("cannot run {}", binary.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let looks_ok = text.contains("RDB looks OK");
    let keys = text
        .lines()
        .filter_map(|l| l.strip_prefix("[info] ")?.strip_suffix(" keys read")?.trim().parse::<u64>().ok())
        .next();
    match (looks_ok, keys) {
        (true, Some(keys)) => Ok(keys),
        _ => Err(ActionError::BrokenBackup(format!(
            "redis-check-rdb rejects {}: {}",
            rdb.display(),
            super::super::postgres::tail(&text, 400)
        ))),
    }
}

/// Copies the snapshot `source` into `repo` and records its manifest;
/// drops the oldest beyond [`KEEP`].
pub async fn store(repo: &Path, source: &Path, label: &str, taken_at: i64) -> Result<Manifest, ActionError> {
    std::fs::create_dir_all(repo).map_err(io(format!("cannot create {}", repo.display())))?;
    let target = rdb_path(repo, label);
    let partial = repo.join(format!(".{label}.rdb.partial"));
    std::fs::copy(source, &partial).map_err(io(format!("cannot copy {}", source.display())))?;
    std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(io("cannot sync the backup"))?;
    let (sha256, bytes) = digest_file(&partial).map_err(io("cannot read the copied backup"))?;
    let keys = match check_rdb(Path::new(DEFAULT_CHECK_RDB), &partial).await {
        Ok(keys) => keys,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &target).map_err(io("cannot name the backup"))?;
    let manifest = Manifest { label: label.to_string(), taken_at, bytes, sha256, keys };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let path = manifest_path(repo, label);
    let temp = repo.join(format!(".{label}.json.partial"));
    std::fs::write(&temp, text).map_err(io("cannot write the manifest"))?;
    std::fs::File::open(&temp).and_then(|f| f.sync_all()).map_err(io("cannot sync the manifest"))?;
    std::fs::rename(&temp, &path).map_err(io("cannot name the manifest"))?;
    std::fs::File::open(repo).and_then(|d| d.sync_all()).map_err(io("cannot sync the repository"))?;
    let all = list(repo);
    for old in all.iter().take(all.len().saturating_sub(KEEP)) {
        let _ = std::fs::remove_file(rdb_path(repo, &old.label));
        let _ = std::fs::remove_file(manifest_path(repo, &old.label));
    }
    Ok(manifest)
}

/// The backups in `repo` with a readable manifest, oldest first.
pub fn list(repo: &Path) -> Vec<Manifest> {
    let Ok(entries) = std::fs::read_dir(repo) else { return Vec::new() };
    let mut all: Vec<Manifest> = entries
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.')
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    all.sort_by(|a, b| (a.taken_at, &a.label).cmp(&(b.taken_at, &b.label)));
    all
}

/// Restore-tests `manifest`'s backup in a throwaway server in `scratch` on
/// `port`; returns what it checked.
pub async fn verify(
    run_as: &RunAs,
    redis_server: &Path,
    repo: &Path,
    manifest: &Manifest,
    scratch: &Path,
    port: u16,
) -> Result<String, ActionError> {
    let rdb = rdb_path(repo, &manifest.label);
    let (sha256, bytes) = digest_file(&rdb)
        .map_err(|e| ActionError::BrokenBackup(format!("backup {} cannot be read: {e}", manifest.label)))?;
    if sha256 != manifest.sha256 || bytes != manifest.bytes {
        return Err(ActionError::BrokenBackup(format!(
            "backup {} is corrupt: SHA-256 {sha256} ({bytes} bytes), recorded {} ({} bytes)",
            manifest.label, manifest.sha256, manifest.bytes
        )));
    }
    let _ = std::fs::remove_dir_all(scratch);
    run_as.prepare_dir(scratch, 0o700).map_err(io(format!("cannot prepare {}", scratch.display())))?;
    let loaded = scratch.join("dump.rdb");
    std::fs::copy(&rdb, &loaded).map_err(io("cannot copy the backup to the scratch server"))?;
    run_as.chown(&loaded).map_err(io("cannot give the backup copy to the server user"))?;
    let result = load_and_count(run_as, redis_server, scratch, port).await;
    let _ = std::fs::remove_dir_all(scratch);
    let (keys, load_ms) = result?;
    if keys != manifest.keys {
        return Err(ActionError::BrokenBackup(format!(
            "backup {} loads {keys} keys, recorded {}",
            manifest.label, manifest.keys
        )));
    }
    Ok(format!(
        "backup {} ({} bytes, SHA-256 {}…) loaded in a scratch redis-server in {load_ms} ms: {keys} keys as recorded",
        manifest.label,
        manifest.bytes,
        &manifest.sha256[..12]
    ))
}

async fn load_and_count(
    run_as: &RunAs,
    redis_server: &Path,
    scratch: &Path,
    port: u16,
) -> Result<(u64, u128), ActionError> {
    let log = scratch.join("redis.log");
    let mut command = tokio::process::Command::new(redis_server);
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
        .arg(scratch)
        .args(["--dbfilename", "dump.rdb", "--appendonly", "no", "--save", "", "--daemonize", "no"])
        .arg("--logfile")
        .arg(&log)
        .current_dir(scratch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    run_as.apply_tokio(&mut command);
    let mut child = command.spawn().map_err(io("cannot spawn a scratch redis-server"))?;
    let start = Instant::now();
    let outcome = async {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(ActionError::BrokenBackup(format!(
                    "the scratch redis-server did not load the backup ({status}): {}",
                    super::super::postgres::tail(&text, 400)
                )));
            }
            let attempt = async {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("DBSIZE").query_async::<u64>(&mut c).await.ok()
            };
            if let Ok(Some(keys)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                return Ok((keys, start.elapsed().as_millis()));
            }
            if start.elapsed() > LOAD_TIMEOUT {
                return Err(ActionError::Timeout(format!(
                    "the scratch redis-server did not load within {LOAD_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    .await;
    let _ = child.kill().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_lists_manifests_oldest_first_and_ignores_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        for (label, at) in [("b", 20), ("a", 10)] {
            let m = Manifest { label: label.into(), taken_at: at, bytes: 1, sha256: "00".into(), keys: 0 };
            std::fs::write(manifest_path(dir.path(), label), serde_json::to_vec(&m).unwrap()).unwrap();
        }
        std::fs::write(dir.path().join(".c.json.partial"), b"{").unwrap();
        std::fs::write(dir.path().join("junk.json"), b"not json").unwrap();
        let labels: Vec<String> = list(dir.path()).into_iter().map(|m| m.label).collect();
        assert_eq!(labels, ["a", "b"]);
    }
}
