//! Running server processes as an unprivileged user. PostgreSQL refuses to
//! run as root (`initdb: cannot be run as root`), and sessions and CI run as
//! root; so when Drover is root, every server it starts runs as the system
//! user [`SERVER_USER`], created on first use.

use nix::unistd::{Gid, Uid, User};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The system user servers run as when Drover runs as root.
pub const SERVER_USER: &str = "drover";

/// Who server processes run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether this differs from the current process (so uid/gid must be set).
    pub switch: bool,
}

impl RunAs {
    /// As root: [`SERVER_USER`], created if missing. Otherwise the current user.
    pub fn for_servers() -> io::Result<RunAs> {
        if !Uid::effective().is_root() {
            let uid = Uid::effective();
            let name = User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string());
            return Ok(RunAs { user: name, uid: uid.as_raw(), gid: Gid::effective().as_raw(), switch: false });
        }
        if let Some(u) = User::from_name(SERVER_USER).map_err(io::Error::other)? {
            return Ok(RunAs { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), switch: true });
        }
        let status = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER])
            .status()?;
        // Another process may have created it meanwhile: look again either way.
        match User::from_name(SERVER_USER).map_err(io::Error::other)? {
            Some(u) => Ok(RunAs { user: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw(), switch: true }),
            None => Err(io::Error::other(format!(
                "cannot create system user {SERVER_USER} (useradd exited with {status}); create it by hand: \
                 useradd --system --user-group {SERVER_USER}"
            ))),
        }
    }

    /// Makes `cmd` run as this user (no-op when it is us).
    pub fn apply(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if self.switch {
            cmd.uid(self.uid).gid(self.gid);
            cmd.env("USER", &self.user).env("LOGNAME", &self.user).env("HOME", "/tmp");
        }
    }

    /// Same as [`RunAs::apply`] for tokio's Command.
    pub fn apply_tokio(&self, cmd: &mut tokio::process::Command) {
        if self.switch {
            cmd.uid(self.uid).gid(self.gid);
            cmd.env("USER", &self.user).env("LOGNAME", &self.user).env("HOME", "/tmp");
        }
    }

    /// Creates `dir` (and parents) owned by this user with mode `mode`, and
    /// makes every ancestor the user cannot traverse yet traversable so the
    /// user can reach it: Drover's data dir and test temp dirs are 0700 and
    /// owned by root. An ancestor that gives its group nothing is given to
    /// this user's group with g+x only (0710: the servers may pass, nobody
    /// else may even do that); any other gets o+x, as before.
    pub fn prepare_dir(&self, dir: &Path, mode: u32) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        if self.switch {
            std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid))?;
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor {
                if a.as_os_str().is_empty() {
                    break;
                }
                let meta = std::fs::metadata(a)?;
                let perms = meta.permissions().mode();
                use std::os::unix::fs::MetadataExt;
                let traversable = perms & 0o001 != 0
                    || (meta.gid() == self.gid && perms & 0o010 != 0)
                    || (meta.uid() == self.uid && perms & 0o100 != 0);
                if !traversable && perms & 0o070 == 0 && std::os::unix::fs::chown(a, None, Some(self.gid)).is_ok() {
                    std::fs::set_permissions(a, std::fs::Permissions::from_mode(perms | 0o010))?;
                } else if !traversable {
                    std::fs::set_permissions(a, std::fs::Permissions::from_mode(perms | 0o001))?;
                }
                ancestor = a.parent();
            }
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Gives `path` (a file or an empty directory) to this user.
    pub fn chown(&self, path: &Path) -> io::Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_never_run_as_root_and_can_reach_their_directory() {
        let who = RunAs::for_servers().expect("a server user");
        assert_ne!(who.uid, 0, "servers must not run as root");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/pgdata");
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        for a in [tmp.path().join("a"), tmp.path().join("a/b")] {
            std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        who.prepare_dir(&dir, 0o700).unwrap();
        // The user itself can list it.
        let mut cmd = std::process::Command::new("ls");
        cmd.arg(&dir);
        who.apply(&mut cmd);
        let status = cmd.status().unwrap();
        assert!(status.success(), "the server user cannot reach {dir:?}");
        // Nobody else was let in on the way: the ancestors (0700, root's)
        // became 0710 in the servers' group, not o+x.
        if who.switch {
            use std::os::unix::fs::MetadataExt;
            for a in [tmp.path().join("a/b"), tmp.path().join("a")] {
                let meta = std::fs::metadata(&a).unwrap();
                assert_eq!(meta.permissions().mode() & 0o777, 0o710, "{a:?}");
                assert_eq!(meta.gid(), who.gid, "{a:?}");
            }
        }
    }
}
