//! The data dir made Drover's own before anything else runs: absolute,
//! 0700, one control plane at a time (an OS lock), files an older version
//! left readable by others narrowed, the process's umask 077, and the key
//! that seals secrets at rest loaded once.

use crate::ServeOptions;
use anyhow::Context;
use drover_secrets::datadir::{self, DataDirLock};
use drover_secrets::SecretKey;

/// What [`prepare`] hands to the rest of start-up. The lock is held as long
/// as this value lives (the server's lifetime).
pub struct Prepared {
    pub lock: DataDirLock,
    /// The key that seals secrets at rest: the pager's link-signing key is
    /// derived from it and its webhook addresses are sealed with it; a
    /// provider that stores credentials takes a clone.
    pub key: SecretKey,
}

/// Makes `opts.data_dir` absolute, private and locked; loads the key.
pub fn prepare(opts: &mut ServeOptions) -> anyhow::Result<Prepared> {
    // Every path derived from the data dir is handed to child processes
    // that run elsewhere (initdb and postgres run as another user, in their
    // own working directory): a relative path would point somewhere else.
    opts.data_dir = std::path::absolute(&opts.data_dir)
        .with_context(|| format!("cannot make the data directory {} absolute", opts.data_dir.display()))?;
    let dir = opts.data_dir.clone();
    // Everything this process creates from now on (SQLite's files and
    // their WAL, logs, state files) is 0600/0700 from birth.
    datadir::private_umask();
    // A new data dir is made 0700; an existing one is narrowed below with
    // everything in it (keeping the servers' group, see there).
    if !dir.exists() {
        drover_secrets::private_dir(&dir)
            .with_context(|| format!("cannot create the data directory {} (mode 0700)", dir.display()))?;
    }
    // A second control plane on the same data dir would corrupt it: refuse
    // before touching anything else. The error is one line naming the dir
    // and the holder's pid.
    let lock = DataDirLock::acquire(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The servers' group may pass through Drover's directories to reach
    // their own (0710); nobody else gets anything.
    let servers_gid = match &opts.local {
        Some(_) => drover_providers::runas::RunAs::for_servers().ok().filter(|r| r.switch).map(|r| r.gid),
        None => None,
    };
    let narrowed = datadir::narrow_tree(&dir, servers_gid)
        .with_context(|| format!("cannot narrow the permissions under {}", dir.display()))?;
    for n in &narrowed {
        tracing::warn!(
            path = %n.path.display(),
            from = format_args!("{:o}", n.from),
            to = format_args!("{:o}", n.to),
            "was readable by other users; narrowed"
        );
    }
    let (key, source) = drover_secrets::SecretKey::load_or_create(&dir).context("cannot load the secret key")?;
    tracing::info!(source = %source, "secret key loaded (secrets at rest are sealed with it; back it up)");
    Ok(Prepared { lock, key })
}
