//! A `drover agent --host` run by a test: its own data dir under a root,
//! its log beside it, killed with everything it runs when dropped.

use super::kill_everything_under;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `drover agent --host`; killed with its whole tree when dropped.
pub struct HostAgent {
    pub child: Option<Child>,
    pub dir: std::path::PathBuf,
}

impl HostAgent {
    pub fn spawn(root: &Path, api: &str, name: &str, zone: &str, address: &str, token: &str) -> HostAgent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, token).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["agent", "--server", api, "--host", name, "--zone", zone, "--address", address, "--capacity", "4"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--token-file")
            .arg(&token_file)
            .current_dir(&dir)
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_DATA_DIR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn drover agent");
        HostAgent { child: Some(child), dir }
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
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.crash();
    }
}
