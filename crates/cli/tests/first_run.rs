//! The first run, as a newcomer types it: the real binary started with no
//! `--data-dir` from a fresh working directory (so its data dir is the
//! relative `./drover-data`), as whatever user runs the tests (root in CI,
//! whose servers then run as the unprivileged `drover`). A local PostgreSQL
//! service with a synchronous follower must become available and take a
//! write through its URL. Every other test uses an absolute temporary data
//! dir, which once hid a first run where initdb was handed a relative path.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Building a primary, its follower and the router takes a few seconds;
/// the margin is for a loaded 2-core CI machine.
const SLOW: Duration = Duration::from_secs(180);

/// `drover serve`, plus every process working under its directory (the
/// postmasters it spawned and their backends, the router), killed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_everything_under(&self.dir);
    }
}

/// PostgreSQL backends setsid(), so process groups are not enough: find
/// them by their working directory.
fn kill_everything_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_data_dir_from_a_fresh_directory_runs_a_local_service_that_takes_writes() {
    let dir = tempfile::Builder::new().prefix("drover-first-run").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let port = free_port();
    let log = cwd.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&cwd)
        // Nothing from the environment may point it at another data dir.
        .env_remove("DROVER_DATA_DIR")
        .env_remove("DROVER_DEFAULT_PROVIDER")
        .env_remove("DROVER_NO_LOCAL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn drover serve");
    let server = Server { child, dir: cwd.clone(), log };
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    let deadline = Instant::now() + SLOW;
    while !matches!(get(&http, &format!("{api}/healthz")).await, Some((200, _))) {
        assert!(Instant::now() < deadline, "drover never became healthy; log:\n{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cwd.join("drover-data").join("drover.db").is_file(), "the store is not in ./drover-data");

    // Exactly the README's `drover services create db1 --engine postgres --followers 1 --sync`.
    let created = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "db1", "engine": "postgres", "followers": 1, "sync": true}))
        .send()
        .await
        .unwrap();
    let status = created.status().as_u16();
    let body: Value = created.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["provider"], "local", "the default provider is local: {body}");

    let service = loop {
        let (_, s) = get(&http, &format!("{api}/v1/services/db1")).await.unwrap_or((0, Value::Null));
        let instances = s["instances"].as_array().cloned().unwrap_or_default();
        let available = instances.iter().filter(|i| i["state"] == "available").count();
        if s["state"] == "available" && instances.len() == 2 && available == 2 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "db1 never had both instances available: {s}\nactions: {:?}\nlog:\n{}",
            get(&http, &format!("{api}/v1/actions?service=db1")).await,
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let url = service["url"].as_str().expect("a local service has a URL").to_string();
    assert!(url.starts_with("postgres://"), "{url}");

    // A write and its read back, through the stable URL (pgbouncer).
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect via URL");
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE first_run (n int); INSERT INTO first_run VALUES (42)").await.expect("write");
    let n: i32 = client.query_one("SELECT n FROM first_run", &[]).await.expect("read").get(0);
    assert_eq!(n, 42);

    // Every path it recorded for its servers is absolute.
    let state = std::fs::read_to_string(cwd.join("drover-data/local/state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    for (id, entry) in state["instances"].as_object().unwrap() {
        let path = entry["dir"].as_str().unwrap_or_default();
        assert!(path.starts_with(cwd.to_str().unwrap()), "instance {id} dir {path} is not under {}", cwd.display());
    }
    drop(server);
}
