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
    /// Where its services' backups and archived WAL go (`--backup-repo`):
    /// storage every host reaches, standing for an object store or a shared
    /// filesystem, so a service keeps one backup history whichever host its
    /// primary is on. None: no backups on this host (said plainly by the
    /// backup actions and the backups check).
    pub backup_repo: Option<std::path::PathBuf>,
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
    // The newest lease generation of the control-plane nodes that sent
    // actions: a batch from a node of an older one (it lost the fleet and
    // does not know yet) is not carried out.
    let fence_path = data_dir.join("agent").join("generation");
    let fence = match crate::fence::GenerationFence::open(&fence_path) {
        Ok(fence) => Arc::new(fence),
        Err(error) => {
            tracing::error!(%error, "cannot read the newest lease generation seen; actions are not run");
            return;
        }
    };
    let running: Arc<Mutex<HashSet<(ActionId, u32)>>> = Arc::default();
    // The newest seq seen, or on a split fleet the last batch's cursor.
    let (mut after, mut cursor) = (0u64, None::<String>);
    loop {
        let from = cursor.clone().unwrap_or_else(|| after.to_string());
        let fetched = match control_plane.fetch_actions(&host, &from, POLL_WAIT).await {
            Ok(fetched) => fetched,
            Err(error) => {
                tracing::debug!(%error, "cannot fetch actions; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::debug!(actions = fetched.actions.len(), generation = ?fetched.generation, after, "fetched actions");
        if let Some(generation) = fetched.generation {
            let fence = Arc::clone(&fence);
            let admitted = tokio::task::spawn_blocking(move || fence.admit(generation)).await;
            match admitted {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(generation, actions = fetched.actions.len(), %error, "refused a batch of actions");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "the generation check failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if let Some(fault) = fetched.host_fault {
            fault_whole_host(&host, fault);
        }
        if fetched.cursor.is_some() {
            cursor = fetched.cursor;
        }
        for queued in fetched.actions {
            let crate::control_plane::QueuedAction { seq, action, replication, shard } = queued;
            after = after.max(seq);
            if let Some((shard, generation)) = shard {
                // A split fleet: each shard's holder has a generation of its own.
                let fence = Arc::clone(&fence);
                match tokio::task::spawn_blocking(move || fence.admit_in(shard, generation)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(shard, generation, action = %action.id, %error, "refused an action");
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "the generation check failed; the action is skipped (the engine tries it again after its deadline)");
                        continue;
                    }
                }
            }
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

/// Chaos for this whole host, as one action (`POST /v1/chaos {"host"}`):
/// `crash` SIGKILLs every descendant of this process (postmasters, their
/// backends, routers) and then the agent itself, as a host losing power;
/// `hang` SIGSTOPs them all, parents first, then itself, as a frozen host
/// (SIGCONT of the tree thaws it; its lease has expired by then, so it
/// fences its primaries before anything else). Any other fault is refused.
pub fn fault_whole_host(host: &str, fault: drover_model::Fault) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let signal = match fault {
        drover_model::Fault::Crash => Signal::SIGKILL,
        drover_model::Fault::Hang => Signal::SIGSTOP,
        other => {
            tracing::warn!(%other, "a host takes the faults crash and hang only; ignored");
            return;
        }
    };
    let me = std::process::id() as i32;
    let tree = descendants(me);
    tracing::warn!(%host, %fault, processes = tree.len() + 1, "chaos: faulting this whole host");
    for pid in &tree {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
    let _ = kill(Pid::from_raw(me), signal);
}

/// Every descendant of `root`, parents before their children, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
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
    fn the_whole_tree_of_the_agent_is_found_children_and_grandchildren() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let found = (0..50)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                descendants(std::process::id() as i32)
            })
            .find(|tree| tree.len() >= 2)
            .unwrap_or_default();
        for pid in found.iter().skip(1) {
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
        assert!(found.len() >= 2, "the grandchild (sleep) is found too: {found:?}");
        assert_eq!(found[0], child.id() as i32, "parents before their children: {found:?}");
    }

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
