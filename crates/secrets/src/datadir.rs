//! The data dir as one control plane's own: an exclusive lock for the
//! process's lifetime, and the narrowing of files and directories an older
//! version created readable by others.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the data dir; it holds the holder's pid.
pub const LOCK_FILE: &str = "drover.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another drover serve (pid {}) is running on the data dir {}; stop it or use another --data-dir",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        dir.display()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the data dir {}: {source}", dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

/// An exclusive `flock` on `DATA_DIR/drover.lock`, held while this value
/// lives. The kernel releases it when the process ends in any way (kill -9
/// included), so a restart is never blocked by a stale lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or says who holds it; never waits.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io { dir: data_dir.to_path_buf(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held { dir: data_dir.to_path_buf(), pid: text.trim().parse().ok() });
            }
            return Err(io_err(error));
        }
        // Ours now: say who holds it (a file from an older version may be wider).
        let mode = file.metadata().map_err(io_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(DataDirLock { _file: file })
    }
}

/// One entry [`narrow_tree`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Narrowed {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

/// Takes group and other permissions away from every file and directory
/// under `root` (and `root` itself) owned by the user this process runs as.
/// `servers_gid`: the group of the database servers' user; an entry of that
/// group keeps its group bits (the servers must traverse Drover's
/// directories to reach their own). Entries owned by another user (the
/// database servers' files) are theirs: neither changed nor entered.
/// Symbolic links are neither followed nor changed.
pub fn narrow_tree(root: &Path, servers_gid: Option<u32>) -> io::Result<Vec<Narrowed>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (a temporary file): nothing to narrow.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() || meta.uid() != me {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let keep_group = servers_gid == Some(meta.gid());
        let to = mode & !0o007 & if keep_group { !0 } else { !0o070 };
        if to != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(to))?;
            out.push(Narrowed { path: path.clone(), from: mode, to });
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Sets the process's file mode creation mask to 077: every file and
/// directory it creates from now on (SQLite's database, journal and WAL
/// files, logs) is closed to group and others from birth. Returns the
/// previous mask.
pub fn private_umask() -> u32 {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(LOCK_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        match DataDirLock::acquire(dir.path()) {
            Err(e @ LockError::Held { pid: Some(pid), .. }) => {
                assert_eq!(pid, std::process::id());
                let text = e.to_string();
                assert!(text.contains(&dir.path().display().to_string()), "{text}");
                assert!(text.contains(&format!("pid {pid}")), "{text}");
            }
            other => panic!("expected the lock to be held: {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).expect("released when dropped");
    }

    #[test]
    fn narrowing_closes_own_entries_and_keeps_the_servers_group() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let file = root.join("oncall.db");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let sub = root.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let narrowed = narrow_tree(&root, None).unwrap();
        assert_eq!(narrowed.len(), 3, "{narrowed:?}");
        for p in [&root, &sub] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o700);
        }
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_ne!(fs::metadata("/etc/passwd").unwrap().permissions().mode() & 0o004, 0, "links are not followed");
        assert!(narrow_tree(&root, None).unwrap().is_empty(), "idempotent");

        // The servers' group keeps its bits; others still lose theirs.
        let gid = fs::metadata(&sub).unwrap().gid();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o715)).unwrap();
        narrow_tree(&root, Some(gid)).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o710);
    }
}
