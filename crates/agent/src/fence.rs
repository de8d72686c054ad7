//! The newest lease generation a carrier of actions has seen (issue 16:
//! "actions carry the generation and providers/agents reject a lower one
//! than they have seen"). The simulated world and every agent keep one, in
//! a file so a restart does not let a stale node back in: a control-plane
//! node paused past its lease that wakes with actions in flight has them
//! refused, even before it notices that it lost the lease.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct GenerationFence {
    path: PathBuf,
    newest: Mutex<i64>,
}

/// An action's generation was older than the newest seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub generation: i64,
    pub newest: i64,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {} is older than {} (the newest seen here): the node sending it lost its lease, and its \
             actions are not carried out",
            self.generation, self.newest
        )
    }
}

/// Why a generation could not be admitted.
#[derive(Debug)]
pub enum FenceError {
    Stale(Stale),
    /// The newer generation could not be noted on disk; nothing was done.
    Io(String),
}

impl std::fmt::Display for FenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceError::Stale(stale) => stale.fmt(f),
            FenceError::Io(e) => write!(f, "cannot note a newer lease generation: {e}"),
        }
    }
}

impl GenerationFence {
    /// Reads the newest generation noted at `path` (0 if none yet).
    pub fn open(path: &Path) -> Result<GenerationFence, String> {
        let newest = match std::fs::read_to_string(path) {
            Ok(text) => {
                text.trim().parse().map_err(|e| format!("{} does not hold a lease generation: {e}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(GenerationFence { path: path.to_path_buf(), newest: Mutex::new(newest) })
    }

    pub fn newest(&self) -> i64 {
        *self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits `generation` unless a newer one was seen; a newer one is noted
    /// on disk (fsync'd) before this returns. Blocking.
    pub fn admit(&self, generation: i64) -> Result<(), FenceError> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if generation < *newest {
            return Err(FenceError::Stale(Stale { generation, newest: *newest }));
        }
        if generation > *newest {
            drover_secrets::write_private(&self.path, generation.to_string().as_bytes())
                .map_err(|e| FenceError::Io(format!("{}: {e}", self.path.display())))?;
            *newest = generation;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_generation_is_refused_across_a_restart_and_a_newer_one_noted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        let fence = GenerationFence::open(&path).unwrap();
        assert_eq!(fence.newest(), 0);
        fence.admit(1).unwrap();
        fence.admit(3).unwrap();
        fence.admit(3).unwrap();
        let Err(FenceError::Stale(stale)) = fence.admit(2) else { panic!("generation 2 admitted after 3") };
        assert_eq!(stale, Stale { generation: 2, newest: 3 });
        assert!(stale.to_string().contains("generation 2 is older than 3"), "{stale}");
        // A restart reads what was noted.
        let again = GenerationFence::open(&path).unwrap();
        assert_eq!(again.newest(), 3);
        assert!(matches!(again.admit(1), Err(FenceError::Stale(_))));
        std::fs::write(&path, "three").unwrap();
        assert!(GenerationFence::open(&path).unwrap_err().contains("does not hold a lease generation"));
    }

    #[test]
    fn a_generation_that_cannot_be_noted_is_not_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let fence = GenerationFence::open(&dir.path().join("missing-dir/generation")).unwrap();
        assert!(matches!(fence.admit(1), Err(FenceError::Io(_))));
        assert_eq!(fence.newest(), 0);
    }
}
