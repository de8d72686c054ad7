//! Secrets at rest and one control plane per data dir, with the real
//! binary: a chat webhook, a generic webhook, an SMTP password and a
//! link-signing key with known markers are given sealed in oncall.toml
//! (`drover secrets seal`), pages are driven through them (one webhook
//! fails, so errors and the feed's fallback reports are written too), and
//! then every byte under the data dir, every log line (text and JSON, at
//! debug level) and the API's answers are searched for the markers in
//! clear. Every file and directory under the data dir that Drover owns
//! must be closed to group and others.
//!
//! The lead extends `MARKERS`' sources with tokens and service passwords
//! once they exist; `admin.token` is the one file skipped.

mod common;
#[path = "../../server/tests/common/receiver.rs"]
mod receiver;

use common::{free_port, get};
use receiver::Receiver;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(60);

/// The one file under the data dir allowed to hold a secret in clear (the
/// first admin token, 0600, for the operator to read once).
const ALLOWED_IN_CLEAR: &str = "admin.token";

fn drover() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.env_remove("DROVER_DATA_DIR")
        .env_remove("DROVER_DEFAULT_PROVIDER")
        .env_remove("DROVER_NO_LOCAL")
        .env_remove("DROVER_CONFIG")
        .env_remove("DROVER_SECRET_KEY");
    cmd
}

/// `drover secrets seal --data-dir DATA` with `value` on stdin.
fn seal(data: &Path, value: &str) -> String {
    let mut child = drover()
        .args(["secrets", "seal", "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "seal failed: {}", String::from_utf8_lossy(&out.stderr));
    let sealed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(sealed.starts_with("sealed:v1:") && !sealed.contains(value), "{sealed}");
    sealed
}

/// `drover serve` on `data` (sim only), logs at debug in `format` to `log`.
fn serve(data: &Path, port: u16, format: &str, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    drover()
        .args(["serve", "--no-local", "--log-format", format, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

async fn wait_healthy(http: &reqwest::Client, api: &str, log: &Path) {
    let deadline = Instant::now() + SLOW;
    while !matches!(get(http, &format!("{api}/healthz")).await, Some((200, _))) {
        assert!(
            Instant::now() < deadline,
            "drover never became healthy; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Killed(Option<Child>);
impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every regular file under `dir` (symbolic links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// No marker in any file under `data` but `admin.token`, nor in `text`s.
fn assert_no_marker(markers: &[&str], data: &Path, texts: &[(&str, String)]) {
    let mut found = Vec::new();
    for file in files_under(data) {
        if file.file_name().is_some_and(|n| n == ALLOWED_IN_CLEAR) {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        for m in markers {
            if contains(&bytes, m) {
                found.push(format!("{m} in {}", file.display()));
            }
        }
    }
    for (what, text) in texts {
        for m in markers {
            if text.contains(m) {
                let line = text.lines().find(|l| l.contains(m)).unwrap_or("");
                found.push(format!("{m} in {what}: {line}"));
            }
        }
    }
    assert!(found.is_empty(), "secrets in clear:\n{}", found.join("\n"));
}

/// Every entry under `data` this process's user owns is closed to group
/// and others (the database servers' files are their user's: not here, the
/// sim provider runs none).
fn assert_private(data: &Path) {
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let mut open = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.uid() == me && meta.permissions().mode() & 0o077 != 0 {
            open.push(format!("{} {:o}", p.display(), meta.permissions().mode() & 0o7777));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    assert!(open.is_empty(), "readable by others:\n{}", open.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_clear_in_the_data_dir_the_logs_or_the_api() {
    let dir = tempfile::Builder::new().prefix("drover-secrets").tempdir_in("/tmp").unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let (receiver, url) = Receiver::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());

    // Known markers, each a secret of one kind.
    let chat = "MARKER-CHAT-7f3a";
    let person_hook = "MARKER-PERSON-HOOK-91c2";
    let failing_hook = "MARKER-FAILING-HOOK-5d0e";
    let feed_hook = "MARKER-FEED-HOOK-c4b8";
    let smtp_password = "MARKER-SMTP-PASSWORD-2e6f";
    let link_key = "MARKER-LINK-KEY-a917";
    let markers = [chat, person_hook, failing_hook, feed_hook, smtp_password, link_key];

    let config = format!(
        r#"
default_team = "db"

[delivery]
secret = "{secret}"
attempts = 1
backoff = "10ms"
feed = {{ webhook = "{feed}" }}
smtp = {{ host = "127.0.0.1", port = {smtp_port}, from = "drover@example.com", username = "drover", password = "{password}" }}

[[teams]]
name = "db"
chat = {{ slack = "{chat}" }}

[[teams.people]]
name = "alice"
webhook = "{failing}"
email = "alice@example.com"
slack = "{person}"
order = ["webhook", "email", "slack"]

[[teams.escalation]]
target = "person:alice"
timeout = "1h"
"#,
        secret = seal(&data, link_key),
        feed = seal(&data, &format!("{url}/feed/{feed_hook}")),
        smtp_port = free_port(),
        password = seal(&data, smtp_password),
        chat = seal(&data, &format!("{url}/chat/{chat}")),
        failing = seal(&data, &format!("{closed}/hook/{failing_hook}")),
        person = seal(&data, &format!("{url}/alice/{person_hook}")),
    );
    std::fs::write(data.join("oncall.toml"), config).unwrap();

    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut answers: Vec<(String, String)> = Vec::new();
    let mut page_ids = Vec::new();
    // The API tokens are secrets too: in clear only in the 0600 admin.token.
    let mut tokens: Vec<String> = Vec::new();
    for (round, format) in ["text", "json"].into_iter().enumerate() {
        let port = free_port();
        let api = format!("http://127.0.0.1:{port}");
        let server = Killed(Some(serve(&data, port, format, &log)));
        wait_healthy(&plain, &api, &log).await;
        let http = common::admin_client(&data);
        if tokens.is_empty() {
            tokens.push(common::admin_token(&data));
            tokens.push(
                common::create_token(&http, &api, json!({"name": "alerts", "role": "integration", "team": "db"})).await,
            );
            tokens.push(common::create_token(&http, &api, json!({"name": "reader", "role": "viewer"})).await);
        }

        // A service (the sim's) and a page through every channel.
        let r = http
            .post(format!("{api}/v1/services"))
            .json(&json!({"name": format!("db{round}"), "engine": "postgres", "followers": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let event = json!({
            "routing_key": tokens[1], "event_action": "trigger", "dedup_key": format!("disk-{round}"),
            "payload": {"summary": "disk full", "source": "host-1", "severity": "critical"}
        });
        // An Events API v2 sender authenticates with its routing key alone.
        let r = plain.post(format!("{api}/v1/integrations/events-v2")).json(&event).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        let page = body["page"].as_str().expect("a page").to_string();
        page_ids.push(page.clone());

        // Alice's webhook fails (nothing listens), e-mail fails (no SMTP
        // server), her chat webhook takes it; the feed reports the fallback.
        let deadline = Instant::now() + SLOW;
        loop {
            let alice = receiver.paths().iter().filter(|p| p.starts_with("/alice/")).count();
            let feed = receiver.bodies().iter().filter(|b| b.to_string().contains("fell back")).count();
            if alice > round && feed > round {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the page never reached alice's chat webhook and the feed: {:?}\n{}",
                receiver.paths(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The links a notification carries work (signed with the key from
        // the config, which never appears in clear).
        let got = receiver.got.lock().unwrap().clone();
        let text =
            got.iter().rev().find(|(p, _)| p.starts_with("/alice/")).unwrap().1["text"].as_str().unwrap().to_string();
        let ack = text.lines().find_map(|l| l.strip_prefix("Acknowledge: ")).expect("an ack link").to_string();
        let status = http.get(&ack).send().await.unwrap().status().as_u16();
        assert_eq!(status, 200, "signed link {ack}");

        for path in [
            "/v1/pages".to_string(),
            format!("/v1/pages/{page}"),
            "/v1/pager/feed".to_string(),
            "/v1/pager/oncall".to_string(),
            "/v1/services".to_string(),
            "/v1/events".to_string(),
            "/v1/audit".to_string(),
            "/v1/actions".to_string(),
            "/openapi.json".to_string(),
            "/metrics".to_string(),
        ] {
            let text = http.get(format!("{api}{path}")).send().await.unwrap().text().await.unwrap();
            answers.push((format!("GET {path} ({format} run)"), text));
        }
        // The page's notifications name the webhooks by host only.
        let detail = &answers.iter().find(|(w, _)| w.starts_with(&format!("GET /v1/pages/{page}"))).unwrap().1;
        assert!(detail.contains(&format!("\"{url}/…\"")), "{detail}");
        assert!(detail.contains("alice@example.com"), "e-mail addresses are not secrets: {detail}");

        drop(server); // kill -9: what is on disk is what a crash leaves
    }
    assert_eq!(page_ids.len(), 2);

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("secret key loaded"), "{log_text}");
    assert!(log_text.contains("\"level\":\"DEBUG\""), "the JSON run logged at debug");
    assert!(log_text.contains("delivery attempt failed"), "the failing webhook was logged: {log_text}");
    let mut texts: Vec<(&str, String)> = vec![("the logs", log_text)];
    texts.extend(answers.iter().map(|(w, t)| (w.as_str(), t.clone())));
    assert_no_marker(&markers, &data, &texts);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_marker(&tokens, &data, &texts);
    assert_private(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_is_refused_and_kill_9_never_blocks_a_restart() {
    let dir = tempfile::Builder::new().prefix("drover-lock").tempdir_in("/tmp").unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let http = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let mut first = Killed(Some(serve(&data, port, "text", &log)));
    wait_healthy(&http, &api, &log).await;
    let pid = first.0.as_ref().unwrap().id();

    // A second serve on the same dir, another port: refused at once.
    let started = Instant::now();
    let second = drover()
        .args(["serve", "--no-local", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the second serve waited for the lock");
    assert!(!second.status.success(), "a second serve on the same data dir started");
    let stderr = String::from_utf8_lossy(&second.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "one error line: {stderr}");
    assert!(error[0].contains(&data.display().to_string()), "names the data dir: {stderr}");
    assert!(error[0].contains(&format!("pid {pid}")), "names the holder's pid {pid}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    // The first one is untouched.
    assert!(matches!(get(&http, &format!("{api}/healthz")).await, Some((200, _))));

    // kill -9 of the holder: the kernel drops the lock, a restart works.
    if let Some(mut c) = first.0.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let _again = Killed(Some(serve(&data, port, "text", &log)));
    wait_healthy(&http, &api, &log).await;
    let lock = std::fs::read_to_string(data.join("drover.lock")).unwrap();
    assert_ne!(lock.trim(), pid.to_string(), "the lock file names the new holder");
    assert_eq!(std::fs::metadata(data.join("drover.lock")).unwrap().permissions().mode() & 0o777, 0o600);
}
