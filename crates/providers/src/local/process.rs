//! Server processes (postmasters and routers): spawned as children of this
//! process in their own process group, watched by a reaper task, stopped
//! with a signal then SIGKILL of the whole group.
//!
//! PostgreSQL's children call `setsid()`, so the postmaster's process group
//! holds the postmaster alone. A server's *family* is therefore its leader's
//! group plus every process whose working directory is its data directory
//! (PostgreSQL chdirs there; children inherit it, and orphaned backends of a
//! killed postmaster keep it): that is what hang, heal and kill signal.
//!
//! Liveness of a process that is not our child (adopted after a control-plane
//! restart) is read from `/proc/<pid>/stat`, never from `kill -0`: PID 1 on
//! these machines reaps orphans only every few seconds, and a zombie answers
//! `kill -0` as if it were alive.

use crate::ActionError;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often an adopted process (not our child) is checked for death. Keeps
/// the `Gone` report for it within a fraction of a second.
const ADOPTED_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often a stop checks whether the process has exited.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for the group to vanish after SIGKILL: the kernel frees
/// a killed process in milliseconds; longer means something is badly wrong.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What `/proc/<pid>/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// Running or sleeping: it can do work.
    Live,
    /// Stopped (SIGSTOP) or traced.
    Stopped,
    /// Exited, not yet reaped: dead.
    Zombie,
    /// No such process.
    Missing,
}

impl ProcState {
    pub fn is_dead(self) -> bool {
        matches!(self, ProcState::Zombie | ProcState::Missing)
    }
}

/// (state, process group) of `pid`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _parent = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

pub fn proc_state(pid: i32) -> ProcState {
    match stat(pid) {
        None => ProcState::Missing,
        Some(('Z' | 'X' | 'x', _)) => ProcState::Zombie,
        Some(('T' | 't', _)) => ProcState::Stopped,
        Some(_) => ProcState::Live,
    }
}

/// The live (non-zombie) processes in group `group` or working in `dir`.
pub fn family(group: i32, dir: Option<&Path>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| match stat(*pid) {
            Some((state, g)) if !matches!(state, 'Z' | 'X' | 'x') => {
                g == group
                    || dir.is_some_and(|d| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == d))
            }
            _ => false,
        })
        .collect()
}

/// Kills every live process working in `dir` (the leftovers of a
/// postmaster that died while we were away: orphaned backends keep its
/// shared memory and stop a new postmaster from starting) and waits until
/// they are gone.
pub async fn kill_leftovers(dir: &Path) -> Result<(), ActionError> {
    let Ok(dir) = dir.canonicalize() else { return Ok(()) };
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        // No process group of its own: group -1 matches nothing.
        let leftovers = family(-1, Some(&dir));
        if leftovers.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ActionError::Failed(format!("processes {leftovers:?} in {} survive SIGKILL", dir.display())));
        }
        for pid in leftovers {
            signal_process(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(STOP_POLL_INTERVAL).await;
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(bytes.split(|b| *b == 0).map(|part| String::from_utf8_lossy(part).into_owned()).collect::<Vec<_>>().join(" "))
}

/// The pid in a postmaster.pid / pgbouncer.pid file when that process is
/// alive (not a zombie) and its command line names `program`.
pub fn running_pid(pid_file: &Path, program: &str) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if proc_state(pid).is_dead() {
        return None;
    }
    cmdline(pid).filter(|c| c.contains(program)).map(|_| pid)
}

pub fn signal_group(group: i32, signal: Signal) {
    // ESRCH: the group is gone already, which is what every caller wants.
    let _ = killpg(Pid::from_raw(group), signal);
}

pub fn signal_process(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

/// A server process this provider started or adopted. Its pid is also its
/// process group (spawned with `process_group(0)`).
#[derive(Clone, Debug)]
pub struct ServerProcess {
    pub pid: i32,
    /// The data directory its family works in (canonical), for postmasters.
    workdir: Option<PathBuf>,
    /// `Some(detail)` once it exited.
    exit: watch::Receiver<Option<String>>,
    /// Set when the provider itself asked it to stop: its exit is then not
    /// news worth a `Gone`.
    stopping: Arc<AtomicBool>,
}

/// Called once when a process exits without having been asked to.
pub type OnUnexpectedExit = Box<dyn FnOnce(String) + Send + 'static>;

impl ServerProcess {
    /// Spawns `command` (already set up: user, group, stdio) and a reaper
    /// task that waits on it. Must run inside a tokio runtime.
    pub fn spawn(
        mut command: tokio::process::Command,
        workdir: Option<&Path>,
        on_unexpected_exit: OnUnexpectedExit,
    ) -> io::Result<ServerProcess> {
        command.process_group(0).kill_on_drop(false);
        let mut child = command.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("the spawned server exited at once"))? as i32;
        let (sender, exit) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = stopping.clone();
        tokio::spawn(async move {
            let detail = match child.wait().await {
                Ok(status) => describe_status(status),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = sender.send(Some(detail.clone()));
            if !asked.load(Ordering::SeqCst) {
                on_unexpected_exit(detail);
            }
        });
        Ok(ServerProcess { pid, workdir: workdir.and_then(|d| d.canonicalize().ok()), exit, stopping })
    }

    /// Watches `pid`, a process we did not spawn, by polling /proc.
    pub fn adopt(
        pid: i32,
        workdir: Option<&Path>,
        closed: Arc<AtomicBool>,
        on_unexpected_exit: OnUnexpectedExit,
    ) -> ServerProcess {
        let (sender, exit) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = stopping.clone();
        tokio::spawn(async move {
            loop {
                if proc_state(pid).is_dead() {
                    break;
                }
                if closed.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(ADOPTED_POLL_INTERVAL).await;
            }
            let detail = "exited (adopted process; its status is unknown)".to_string();
            let _ = sender.send(Some(detail.clone()));
            if !asked.load(Ordering::SeqCst) {
                on_unexpected_exit(detail);
            }
        });
        ServerProcess { pid, workdir: workdir.and_then(|d| d.canonicalize().ok()), exit, stopping }
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some() || proc_state(self.pid).is_dead()
    }

    /// Alive and not stopped.
    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none() && proc_state(self.pid) == ProcState::Live
    }

    pub fn exit_detail(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Sends `signal` to the whole family (see the module doc).
    pub fn signal_family(&self, signal: Signal) {
        signal_group(self.pid, signal);
        for pid in family(self.pid, self.workdir.as_deref()) {
            signal_process(pid, signal);
        }
    }

    /// Whether the leader or any of its family is alive.
    pub fn family_alive(&self) -> bool {
        !self.has_exited() || !family(self.pid, self.workdir.as_deref()).is_empty()
    }

    /// Marks the coming exit as asked for (no `Gone`).
    pub fn expect_exit(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops it: `first` to the postmaster (SIGINT: PostgreSQL's fast
    /// shutdown), up to `timeout`, then SIGKILL to the whole group; returns
    /// once no process of the group is alive (confirmed, or an error).
    /// A stopped (hung) process cannot act on `first`: it is killed at once.
    pub async fn stop(&self, first: Signal, timeout: Duration) -> Result<(), ActionError> {
        self.expect_exit();
        if proc_state(self.pid) == ProcState::Live {
            signal_process(self.pid, first);
            let deadline = Instant::now() + timeout;
            while !self.has_exited() && Instant::now() < deadline {
                tokio::time::sleep(STOP_POLL_INTERVAL).await;
            }
        }
        // Also the leftovers of a postmaster that died alone (backends).
        self.signal_family(Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while self.family_alive() && Instant::now() < deadline {
            self.signal_family(Signal::SIGKILL);
            tokio::time::sleep(STOP_POLL_INTERVAL).await;
        }
        if self.family_alive() {
            return Err(ActionError::Failed(format!(
                "process group {} still alive {KILL_WAIT:?} after SIGKILL",
                self.pid
            )));
        }
        Ok(())
    }

    /// [`ServerProcess::stop`] without a runtime (for Drop): polls /proc.
    pub fn stop_blocking(&self, first: Signal, timeout: Duration) {
        self.expect_exit();
        if proc_state(self.pid) == ProcState::Live {
            signal_process(self.pid, first);
            let deadline = Instant::now() + timeout;
            while !self.has_exited() && Instant::now() < deadline {
                std::thread::sleep(STOP_POLL_INTERVAL);
            }
        }
        self.signal_family(Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while self.family_alive() && Instant::now() < deadline {
            self.signal_family(Signal::SIGKILL);
            std::thread::sleep(STOP_POLL_INTERVAL);
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| signal.to_string());
        format!("killed by signal {name}")
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("{status}")
    }
}
