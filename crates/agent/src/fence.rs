//! The newest lease generation a carrier of actions has seen (issue 16:
//! "actions carry the generation and providers/agents reject a lower one
//! than they have seen"). The simulated world and every agent keep one, in
//! a file so a restart does not let a stale node back in: a control-plane
//! node paused past its lease that wakes with actions in flight has them
//! refused, even before it notices that it lost the lease.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The newest generation seen per shard of the fleet (a fleet of several
/// shards has one lease, and so one generation, per shard, and nodes
/// holding different shards have unrelated generations). Shard 0, the
/// fleet's own, is kept in the file at `path`, each other shard `N` in
/// `path` with `.N` appended, read when first needed.
#[derive(Debug)]
pub struct GenerationFence {
    path: PathBuf,
    newest: Mutex<BTreeMap<u32, i64>>,
}

/// An action's generation was older than the newest seen for its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub shard: u32,
    pub generation: i64,
    pub newest: i64,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let of = if self.shard == 0 { String::new() } else { format!(" of shard {}", self.shard) };
        write!(
            f,
            "generation {}{of} is older than {} (the newest seen here): the node sending it lost its lease, and its \
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

/// The generation noted at `path`, 0 if none is.
fn read(path: &Path) -> Result<i64, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            text.trim().parse().map_err(|e| format!("{} does not hold a lease generation: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl GenerationFence {
    /// Reads the newest generation of shard 0 noted at `path` (0 if none yet).
    pub fn open(path: &Path) -> Result<GenerationFence, String> {
        let newest = read(path)?;
        Ok(GenerationFence { path: path.to_path_buf(), newest: Mutex::new(BTreeMap::from([(0, newest)])) })
    }

    fn path_of(&self, shard: u32) -> PathBuf {
        if shard == 0 {
            return self.path.clone();
        }
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{shard}"));
        self.path.with_file_name(name)
    }

    /// Shard 0's newest generation.
    pub fn newest(&self) -> i64 {
        self.newest.lock().unwrap_or_else(|p| p.into_inner()).get(&0).copied().unwrap_or(0)
    }

    /// Admits `generation` of shard 0 (a fleet of one shard).
    pub fn admit(&self, generation: i64) -> Result<(), FenceError> {
        self.admit_in(0, generation)
    }

    /// Admits `generation` of `shard` unless a newer one was seen for that
    /// shard; a newer one is noted on disk (fsync'd) before this returns.
    /// Blocking.
    pub fn admit_in(&self, shard: u32, generation: i64) -> Result<(), FenceError> {
        let mut seen = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let newest = match seen.get(&shard) {
            Some(newest) => *newest,
            None => {
                let noted = read(&self.path_of(shard)).map_err(FenceError::Io)?;
                seen.insert(shard, noted);
                noted
            }
        };
        if generation < newest {
            return Err(FenceError::Stale(Stale { shard, generation, newest }));
        }
        if generation > newest {
            let path = self.path_of(shard);
            drover_secrets::write_private(&path, generation.to_string().as_bytes())
                .map_err(|e| FenceError::Io(format!("{}: {e}", path.display())))?;
            seen.insert(shard, generation);
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
        assert_eq!(stale, Stale { shard: 0, generation: 2, newest: 3 });
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

    #[test]
    fn each_shard_has_its_own_newest_generation_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        let fence = GenerationFence::open(&path).unwrap();
        fence.admit(9).unwrap();
        // Another shard's generations are unrelated to shard 0's.
        fence.admit_in(3, 2).unwrap();
        fence.admit_in(5, 40).unwrap();
        fence.admit_in(3, 4).unwrap();
        let Err(FenceError::Stale(stale)) = fence.admit_in(3, 3) else { panic!("shard 3's generation 3 after 4") };
        assert_eq!(stale, Stale { shard: 3, generation: 3, newest: 4 });
        assert!(stale.to_string().contains("generation 3 of shard 3 is older than 4"), "{stale}");
        assert_eq!(fence.newest(), 9, "shard 0 untouched");
        // Shard 0 keeps the one-shard file as it was; the others beside it.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "9");
        assert_eq!(std::fs::read_to_string(dir.path().join("generation.3")).unwrap(), "4");
        let again = GenerationFence::open(&path).unwrap();
        assert!(matches!(again.admit_in(5, 39), Err(FenceError::Stale(Stale { shard: 5, newest: 40, .. }))));
        assert!(again.admit_in(3, 4).is_ok());
        assert!(again.admit_in(7, 1).is_ok(), "a shard never seen admits any generation");
        std::fs::write(dir.path().join("generation.8"), "eight").unwrap();
        assert!(matches!(again.admit_in(8, 1), Err(FenceError::Io(e)) if e.contains("does not hold")));
    }
}
