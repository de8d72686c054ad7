//! The PostgreSQL servers of this host: one postmaster per instance, each
//! owned here from spawn to stop.
//!
//! Every postmaster is a child of this process (spawned directly, never
//! `pg_ctl start`, which daemonizes), runs as [`RunAs`] (PostgreSQL refuses
//! root) in its own process group, and is watched by a reaper task (see
//! [`ServerProcess`]): one that exits without being asked to calls the
//! callback it was started with, which reports it as gone. Postmasters
//! that outlived a control-plane restart are adopted through their pid
//! files.

use super::lock;
use super::postgres::{self, Binaries};
use super::process::{self, running_pid, OnUnexpectedExit, ServerProcess};
use super::registry::InstanceEntry;
use crate::runas::RunAs;
use crate::ActionError;
use drover_model::InstanceId;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections. Crash
/// recovery of a busy server can take a while; a fresh one needs ~1 s.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a starting server is asked whether it accepts connections.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The postmasters this provider started or adopted, by instance.
pub(super) struct Servers {
    binaries: Binaries,
    run_as: RunAs,
    /// How long a fast shutdown (SIGINT) may take before SIGKILL of the group.
    stop_timeout: Duration,
    /// Set when the provider shuts down: nothing is started after it.
    closed: Arc<AtomicBool>,
    processes: Mutex<HashMap<InstanceId, ServerProcess>>,
}

impl Servers {
    pub fn new(binaries: Binaries, run_as: RunAs, stop_timeout: Duration, closed: Arc<AtomicBool>) -> Servers {
        Servers { binaries, run_as, stop_timeout, closed, processes: Mutex::new(HashMap::new()) }
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn get(&self, id: InstanceId) -> Option<ServerProcess> {
        lock(&self.processes).get(&id).cloned()
    }

    /// A postmaster is known for it (it may have exited since).
    pub fn known(&self, id: InstanceId) -> bool {
        lock(&self.processes).contains_key(&id)
    }

    /// Its postmaster has not exited (it may be hung).
    pub fn alive(&self, id: InstanceId) -> bool {
        self.get(id).is_some_and(|p| !p.has_exited())
    }

    /// Its postmaster is alive and not stopped.
    pub fn running(&self, id: InstanceId) -> bool {
        self.get(id).is_some_and(|p| p.is_running())
    }

    /// The pid of its postmaster while that has not exited.
    pub fn pid(&self, id: InstanceId) -> Option<i32> {
        self.get(id).filter(|p| !p.has_exited()).map(|p| p.pid)
    }

    /// Adopts the postmaster of `entry` if one survived a control-plane
    /// restart (found through its pid file, checked in /proc).
    pub fn adopt(&self, id: InstanceId, entry: &InstanceEntry, on_exit: OnUnexpectedExit) -> bool {
        let Some(pid) = running_pid(&entry.pgdata().join("postmaster.pid"), "postgres") else {
            return false;
        };
        let process = ServerProcess::adopt(pid, Some(&entry.pgdata()), self.closed.clone(), on_exit);
        lock(&self.processes).insert(id, process);
        true
    }

    /// Spawns the postmaster (if none runs) and waits until it accepts
    /// connections. `on_exit` is called if it later exits unasked.
    pub async fn start(
        &self,
        id: InstanceId,
        entry: &InstanceEntry,
        on_exit: OnUnexpectedExit,
    ) -> Result<(), ActionError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ActionError::Unavailable("the local provider is shut down".into()));
        }
        if !self.alive(id) {
            postgres::check_socket_path(entry)?;
            process::kill_leftovers(&entry.pgdata()).await?;
            let socket_dir = entry.socket_dir();
            let prepare = |dir: &std::path::Path, mode| {
                self.run_as
                    .prepare_dir(dir, mode)
                    .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))
            };
            prepare(&socket_dir, 0o750)?;
            prepare(&entry.log_dir(), 0o700)?;
            let log_path = entry.log_dir().join("postgres.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| ActionError::io(format_args!("cannot open {}", log_path.display()), e))?;
            self.run_as
                .chown(&log_path)
                .map_err(|e| ActionError::io(format_args!("cannot chown {}", log_path.display()), e))?;
            let log_err = log.try_clone().map_err(|e| ActionError::io("cannot share the log file", e))?;
            let mut command = tokio::process::Command::new(self.binaries.bindir_for(entry).join("postgres"));
            command
                .arg("-D")
                .arg(entry.pgdata())
                .current_dir(&entry.dir)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .env_remove("PGDATA")
                .env("LC_ALL", "C");
            self.run_as.apply_tokio(&mut command);
            let process = ServerProcess::spawn(command, Some(&entry.pgdata()), on_exit)
                .map_err(|e| ActionError::io("cannot spawn postgres", e))?;
            tracing::info!(instance = %id, pid = process.pid, port = entry.port, "postmaster started");
            lock(&self.processes).insert(id, process);
        }
        self.wait_ready(id, entry, START_TIMEOUT).await
    }

    async fn wait_ready(&self, id: InstanceId, entry: &InstanceEntry, timeout: Duration) -> Result<(), ActionError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(process) = self.get(id) else {
                // Stopped while it was starting: a new attempt starts it again.
                return Err(ActionError::Failed("the postmaster was stopped while starting".into()));
            };
            if process.has_exited() {
                // Retried: a start can fail for a passing cause (a port
                // taken for a moment, memory short); the log says which.
                return Err(ActionError::Failed(format!(
                    "postmaster exited while starting ({}); log: {}",
                    process.exit_detail().unwrap_or_default(),
                    postgres::log_tail(entry)
                )));
            }
            let last_error = match postgres::answers(entry, Duration::from_secs(1)).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!("not accepting connections after {timeout:?}: {last_error}")));
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Stops the instance's postmaster (if any) with a fast shutdown,
    /// confirming the whole group dead.
    pub async fn stop(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), ActionError> {
        self.end(id, entry, Signal::SIGINT, self.stop_timeout).await
    }

    /// Kills the instance's postmaster and its backends at once (no
    /// shutdown checkpoint, nothing waited for), confirming the group dead.
    pub async fn kill(&self, id: InstanceId, entry: Option<&InstanceEntry>) -> Result<(), ActionError> {
        self.end(id, entry, Signal::SIGKILL, Duration::ZERO).await
    }

    async fn end(
        &self,
        id: InstanceId,
        entry: Option<&InstanceEntry>,
        first: Signal,
        timeout: Duration,
    ) -> Result<(), ActionError> {
        if let Some(process) = self.get(id) {
            process.stop(first, timeout).await?;
            lock(&self.processes).remove(&id);
            return Ok(());
        }
        // Not known to us (should not happen after adoption): still make sure.
        if let Some(entry) = entry {
            if let Some(pid) = running_pid(&entry.pgdata().join("postmaster.pid"), "postgres") {
                let process = ServerProcess::adopt(pid, Some(&entry.pgdata()), self.closed.clone(), Box::new(|_| {}));
                process.stop(first, timeout).await?;
            }
        }
        Ok(())
    }

    /// Sends `signal` to the family of the instance's postmaster (chaos:
    /// hang and heal). False when none is alive.
    pub fn signal(&self, id: InstanceId, signal: Signal) -> bool {
        match self.get(id).filter(|p| !p.has_exited()) {
            Some(process) => {
                process.signal_family(signal);
                true
            }
            None => false,
        }
    }

    /// Kills the postmaster alone (chaos: a crash); its backends follow.
    /// False when none is alive.
    pub fn crash(&self, id: InstanceId) -> bool {
        match self.get(id).filter(|p| !p.has_exited()) {
            Some(process) => {
                process::signal_process(process.pid, Signal::SIGKILL);
                true
            }
            None => false,
        }
    }

    /// Every process, forgotten here: the provider's shutdown stops them.
    pub fn drain(&self) -> Vec<ServerProcess> {
        lock(&self.processes).drain().map(|(_, p)| p).collect()
    }
}
