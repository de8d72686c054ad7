//! Carrying out the engine's actions on this host (issue 11): the agent
//! long-polls `GET /v1/hosts/{name}/actions`, runs each action with the
//! local provider's own code over its data dir (the servers are this
//! process's children, reaped at once), keeps the outcome under
//! `DATA_DIR/agent/outcomes/<action id>.json`, then answers
//! `POST /v1/hosts/{name}/actions/{id}/result`.
//!
//! Idempotence: an (id, attempt) already answered is answered again from
//! the kept outcome, never run twice; a newer attempt of the same action is
//! run again, and the provider's code is idempotent (a Provision of a built
//! instance says "already provisioned"). An action already running here is
//! not started a second time.

use crate::control_plane::ControlPlane;
use drover_model::{ActionId, ActionOutcome, ActionRecord};
use drover_providers::local::LocalProvider;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What this host tells the control plane when it registers.
#[derive(Clone, Debug)]
pub struct HostOptions {
    pub name: String,
    pub zone: String,
    /// The address its servers are reached at.
    pub address: String,
    /// Instances it may hold.
    pub capacity: u32,
}

/// The long poll's wait, asked of the control plane.
const POLL_WAIT: Duration = Duration::from_secs(10);
/// Between failed polls or registrations.
const RETRY: Duration = Duration::from_millis(500);

/// The outcome kept for one action: the attempt it answered.
fn outcome_path(dir: &Path, id: ActionId) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn read_outcome(dir: &Path, id: ActionId) -> Option<(u32, ActionOutcome)> {
    let text = std::fs::read_to_string(outcome_path(dir, id)).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let attempt = u32::try_from(value.get("attempt")?.as_u64()?).ok()?;
    let outcome = serde_json::from_value(value.get("outcome")?.clone()).ok()?;
    Some((attempt, outcome))
}

/// Written (tmp, fsync, rename) before the outcome is sent: a crash after
/// the send can only repeat an answer, never the work.
fn write_outcome(dir: &Path, id: ActionId, attempt: u32, outcome: &ActionOutcome) -> std::io::Result<()> {
    use std::io::Write;
    let body = serde_json::json!({ "attempt": attempt, "outcome": outcome });
    let path = outcome_path(dir, id);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(body.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Registers the host, retrying until the control plane accepts it (a
/// refusal other than unreachable is logged each time).
pub async fn register(control_plane: &ControlPlane, host: &HostOptions) {
    let mut logged = false;
    loop {
        match control_plane.register_host(host).await {
            Ok(()) => {
                tracing::info!(host = %host.name, zone = %host.zone, address = %host.address,
                    capacity = host.capacity, "host registered");
                return;
            }
            Err(error) => {
                if !logged {
                    tracing::warn!(host = %host.name, %error, "cannot register the host yet; retrying");
                    logged = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Fetches and carries out this host's actions until the process ends.
pub async fn run(control_plane: Arc<ControlPlane>, host: String, provider: Arc<LocalProvider>, data_dir: PathBuf) {
    let dir = data_dir.join("agent").join("outcomes");
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::error!(path = %dir.display(), %error, "cannot create the outcomes directory; actions are not run");
        return;
    }
    let running: Arc<Mutex<HashSet<(ActionId, u32)>>> = Arc::default();
    let mut after = 0u64;
    loop {
        let batch = match control_plane.fetch_actions(&host, after, POLL_WAIT).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::debug!(%error, "cannot fetch actions; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        for (seq, action, replication) in batch {
            after = after.max(seq);
            let key = (action.id, action.attempts);
            if !running.lock().unwrap_or_else(PoisonError::into_inner).insert(key) {
                continue;
            }
            let (control_plane, host, provider, dir, running) =
                (control_plane.clone(), host.clone(), provider.clone(), dir.clone(), running.clone());
            tokio::spawn(async move {
                carry_out(&control_plane, &host, &provider, &dir, action, replication).await;
                running.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            });
        }
    }
}

async fn carry_out(
    control_plane: &ControlPlane,
    host: &str,
    provider: &LocalProvider,
    dir: &Path,
    action: ActionRecord,
    replication: Option<drover_providers::local::Replication>,
) {
    let (id, attempt) = (action.id, action.attempts);
    let outcome = match read_outcome(dir, id) {
        Some((kept, outcome)) if kept == attempt => {
            tracing::info!(action = %id, attempt, "action already carried out; answering from the kept outcome");
            outcome
        }
        _ => {
            let kind = action.kind.name();
            tracing::info!(action = %id, kind, instance = %action.instance, attempt, "carrying out action");
            let outcome = provider.execute_with(action, replication).await;
            if let Err(error) = write_outcome(dir, id, attempt, &outcome) {
                tracing::error!(action = %id, %error, "cannot keep the action's outcome; answering anyway");
            }
            outcome
        }
    };
    // Answered until the control plane acknowledges (or the process ends).
    for _ in 0..40 {
        match control_plane.post_result(host, id, attempt, &outcome).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(action = %id, %error, "cannot answer the action yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    tracing::warn!(action = %id, attempt, "gave up answering; the engine's deadline retries the action");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_outcome_is_read_back_for_its_attempt() {
        let dir = std::env::temp_dir().join(format!("drover-agent-outcomes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = ActionId::new_at(1, 1);
        assert!(read_outcome(&dir, id).is_none());
        let outcome = ActionOutcome::Succeeded { detail: Some("primary on port 5432".into()) };
        write_outcome(&dir, id, 3, &outcome).unwrap();
        assert_eq!(read_outcome(&dir, id), Some((3, outcome)));
        std::fs::write(outcome_path(&dir, id), "{not json").unwrap();
        assert!(read_outcome(&dir, id).is_none(), "a torn file is no outcome: the action runs again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
