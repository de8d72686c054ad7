//! A `drover agent --host` run by a test: its own data dir under a root,
//! its log beside it, killed with everything it runs when dropped.

use super::kill_everything_under;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `drover agent --host`; killed with its whole tree when dropped.
pub struct HostAgent {
    pub child: Option<Child>,
    pub dir: std::path::PathBuf,
    /// The address its servers listen on (`--address`).
    pub address: String,
}

impl HostAgent {
    pub fn spawn(root: &Path, api: &str, name: &str, zone: &str, address: &str, token: &str) -> HostAgent {
        HostAgent::start(root, api, name, zone, address, token, false)
    }

    /// As [`HostAgent::spawn`], every host's backups in one store under
    /// `root` (`--backup-repo root/backups`, standing for an object store).
    pub fn spawn_sharing_backups(
        root: &Path,
        api: &str,
        name: &str,
        zone: &str,
        address: &str,
        token: &str,
    ) -> HostAgent {
        HostAgent::start(root, api, name, zone, address, token, true)
    }

    fn start(root: &Path, api: &str, name: &str, zone: &str, address: &str, token: &str, backups: bool) -> HostAgent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, token).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command
            .args(["agent", "--server", api, "--host", name, "--zone", zone, "--address", address, "--capacity", "4"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--token-file")
            .arg(&token_file);
        if backups {
            command.arg("--backup-repo").arg(root.join("backups"));
        }
        let child = command
            .current_dir(&dir)
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_DATA_DIR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn drover agent");
        HostAgent { child: Some(child), dir, address: address.to_string() }
    }

    /// A host crash: the agent and everything it runs, kill -9.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_everything_under(&self.dir);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Instance `id`'s entry in this host's local provider registry.
    fn registry_entry(&self, id: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("data/local/state.json")).ok()?;
        let registry: Value = serde_json::from_str(&text).ok()?;
        Some(registry["instances"][id].clone())
    }

    /// The directory of instance `id` on this host, from its registry.
    pub fn dir_of(&self, id: &str) -> Option<PathBuf> {
        self.registry_entry(id)?["dir"].as_str().map(PathBuf::from)
    }

    /// The unix socket directory and port of instance `id` on this host,
    /// from the local provider's registry.
    pub fn socket_of(&self, id: &str) -> Option<(PathBuf, u16)> {
        let entry = self.registry_entry(id)?;
        let port = u16::try_from(entry["port"].as_u64()?).ok()?;
        let socket = match entry["socket"].as_str() {
            Some(s) => PathBuf::from(s),
            None => PathBuf::from(entry["dir"].as_str()?).join("socket"),
        };
        Some((socket, port))
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.crash();
    }
}
