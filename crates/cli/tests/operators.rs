//! The real `drover` binary, as an operator types it: the client-only flags
//! stay out of `drover serve`, the config file and its precedence
//! (flag > environment > file > default), JSON logs, shell completions and
//! `drover services resume`.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

/// `drover` with no inherited DROVER_* variables (the caller's shell must not
/// decide a test), run in `dir`.
fn drover(dir: &Path) -> Command {
    let mut c = Command::new(DROVER);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DROVER_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG").current_dir(dir);
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("the drover binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked") && !e.contains("stack backtrace") && !e.contains("RUST_BACKTRACE"), "{e}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serve_help_has_no_client_flags() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(drover(dir.path()).args(["serve", "--help"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    for flag in ["--server", "--json", "--actor", "DROVER_URL", "DROVER_ACTOR"] {
        assert!(!help.contains(flag), "`drover serve --help` mentions {flag}:\n{help}");
    }
    for flag in ["--data-dir", "--config", "--listen", "--log-format", "--max-action-attempts"] {
        assert!(help.contains(flag), "`drover serve --help` lacks {flag}:\n{help}");
    }
    // Still documented where they apply.
    let o = run(drover(dir.path()).args(["services", "list", "--help"]));
    let help = stdout(&o);
    for flag in ["--server", "--json", "--actor"] {
        assert!(help.contains(flag), "`drover services list --help` lacks {flag}:\n{help}");
    }
    // And refused where they do not.
    for argv in [&["serve", "--json"][..], &["--json", "serve"], &["serve", "--server", "http://127.0.0.1:1"]] {
        let o = run(drover(dir.path()).args(argv));
        assert_eq!(o.status.code(), Some(2), "{argv:?}: {}", stderr(&o));
        no_panic(&o);
    }
}

#[test]
fn client_flags_before_or_after_the_subcommand_parse_and_an_unreachable_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for argv in [
        &["--json", "services", "list", "--server", "http://127.0.0.1:1"][..],
        &["--server", "http://127.0.0.1:1", "--json", "services", "show", "db1"],
        &["services", "list", "--json", "--server", "http://127.0.0.1:1"],
        &["--actor", "ann", "events", "--server", "http://127.0.0.1:1"],
    ] {
        let o = run(drover(dir.path()).args(argv));
        assert_eq!(o.status.code(), Some(1), "{argv:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("cannot reach Drover at http://127.0.0.1:1"), "{argv:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line, no usage text, no trace: {e}");
        no_panic(&o);
    }
    // A flag beats DROVER_URL, wherever it is typed.
    let o = run(drover(dir.path()).env("DROVER_URL", "http://127.0.0.1:2").args([
        "--server",
        "http://127.0.0.1:1",
        "services",
        "list",
    ]));
    assert!(stderr(&o).contains("http://127.0.0.1:1"), "{}", stderr(&o));
    let o = run(drover(dir.path()).env("DROVER_URL", "http://127.0.0.1:2").args(["services", "list"]));
    assert!(stderr(&o).contains("http://127.0.0.1:2"), "{}", stderr(&o));
}

#[test]
fn completions_print_a_script_per_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, needle) in [("bash", "_drover()"), ("zsh", "#compdef drover"), ("fish", "complete -c drover")] {
        let o = run(drover(dir.path()).args(["completions", shell]));
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(needle), "{shell}: {script}");
        for word in ["services", "resume", "switchover", "log-format"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let o = run(drover(dir.path()).args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2));
    no_panic(&o);
}

/// A `drover serve` (or `agent`) child, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (a `drover serve`) and waits until something listens on one
/// of `ports`; returns the server and the port that answered.
fn start(cmd: &mut Command, ports: &[u16]) -> (Server, u16) {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &p in ports {
            if TcpStream::connect(("127.0.0.1", p)).is_ok() {
                return (server, p);
            }
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            let mut e = String::new();
            server.0.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("drover serve exited with {status}: {e}");
        }
        assert!(Instant::now() < deadline, "drover serve did not listen on any of {ports:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_config_file_is_read_and_flags_then_environment_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let ports = [file_port, env_port, flag_port];
    std::fs::write(
        data.join("drover.toml"),
        format!(
            "listen = \"127.0.0.1:{file_port}\"\nno_local = true\nlog_format = \"json\"\nmax_action_attempts = 3\n"
        ),
    )
    .unwrap();

    // The file alone: its port, JSON logs that name the file.
    let (mut server, port) = start(drover(dir.path()).args(["serve", "--data-dir", "data"]), &ports);
    assert_eq!(port, file_port);
    // It listens before it is ready (503 "starting"): ask until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = run(drover(dir.path()).env("DROVER_DATA_DIR", "data").args([
            "--json",
            "services",
            "list",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ]));
        if o.status.success() || Instant::now() > deadline || !stderr(&o).contains("(503)") {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(serde_json::from_str::<Value>(&stdout(&o)).unwrap().is_array());
    let _ = server.0.kill();
    let _ = server.0.wait();
    let mut logs = String::new();
    server.0.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let settings = lines
        .iter()
        .find(|l| l["fields"]["config_file"].is_string())
        .unwrap_or_else(|| panic!("no settings line in {logs}"));
    let named = settings["fields"]["config_file"].as_str().unwrap();
    assert!(Path::new(named).is_absolute() && named.ends_with("data/drover.toml"), "{named}");
    assert_eq!(settings["fields"]["max_action_attempts"], 3);
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    drop(server);

    // The environment beats the file.
    let (server, port) = start(
        drover(dir.path())
            .env("DROVER_LISTEN", format!("127.0.0.1:{env_port}"))
            .env("DROVER_LOG_FORMAT", "text")
            .args(["serve", "--data-dir", "data"]),
        &ports,
    );
    assert_eq!(port, env_port);
    drop(server);

    // A flag beats both.
    let (server, port) = start(
        drover(dir.path()).env("DROVER_LISTEN", format!("127.0.0.1:{env_port}")).args([
            "serve",
            "--data-dir",
            "data",
            "--listen",
            &format!("127.0.0.1:{flag_port}"),
        ]),
        &ports,
    );
    assert_eq!(port, flag_port);
    drop(server);
}

#[test]
fn a_bad_config_file_stops_serve_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drover.toml");
    for (text, needle) in [
        ("no_local = true\nprobe_intervall_ms = 5\n", "probe_intervall_ms"),
        ("listen = [", "unclosed array"),
        ("max_action_attempts = -1", "max_action_attempts"),
        ("max_action_failure_secs = 0", "max_action_failure_secs"),
    ] {
        std::fs::write(&path, text).unwrap();
        let o = run(drover(dir.path()).args(["serve", "--data-dir", "."]));
        assert_eq!(o.status.code(), Some(1), "{text:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle) && e.contains(&path.display().to_string()), "{text:?}: {e}");
        no_panic(&o);
    }
    // An explicit --config that does not exist is an error too.
    let o = run(drover(dir.path()).args(["serve", "--data-dir", ".", "--config", "missing.toml"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));
    no_panic(&o);
}

/// Accepts one HTTP request, answers `answer` as JSON, returns the request.
fn answer_once(listener: TcpListener, answer: Value) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            request.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        request.push_str(&String::from_utf8(body).unwrap());
        let body = answer.to_string();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    })
}

#[test]
fn services_resume_posts_to_the_resume_route_and_prints_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let service = serde_json::json!({
        "name": "db 1", "id": "svc-1", "engine": "postgres", "state": "provisioning",
        "provider": "local", "team": "platform", "instances": [],
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let request = answer_once(listener, service.clone());
    let o = run(drover(dir.path()).args(["--actor", "ann", "services", "resume", "db 1", "--server", &url]));
    let request = request.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(request.starts_with("POST /v1/services/db%201/resume HTTP/1.1\r\n"), "{request}");
    assert!(request.to_ascii_lowercase().contains("x-drover-actor: ann"), "{request}");
    assert!(request.ends_with("\r\n\r\n{}"), "an empty JSON object as the body: {request}");
    let out = stdout(&o);
    assert!(out.contains("service  db 1 (svc-1)") && out.contains("state    provisioning"), "{out}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let request = answer_once(listener, service.clone());
    let o = run(drover(dir.path()).args(["services", "resume", "db1", "--json", "--server", &url]));
    request.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&o)).unwrap(), service);
}

#[test]
fn the_agent_logs_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let child = drover(dir.path())
        .env("DROVER_TOKEN", "drv_unused")
        .args(["agent", "--data-dir", ".", "--server", "http://127.0.0.1:1", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = Server(child);
    let mut first = String::new();
    BufReader::new(agent.0.stderr.take().unwrap()).read_line(&mut first).unwrap();
    drop(agent);
    let line: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(line["fields"]["message"], "agent started", "{first}");
    assert_eq!(line["fields"]["server"], "http://127.0.0.1:1", "{first}");
}

/// A client's output cut short by `head` ends quietly: no panic, no
/// stack trace, on what a newcomer pipes every day. The server here is a
/// one-shot stand-in answering a long event list (more than a pipe holds).
#[test]
fn client_output_into_a_closed_pipe_ends_without_a_panic() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let event = r#"{"seq":1,"at":"2026-11-30T07:55:15Z","subject":"service","service":"db1","service_id":null,"instance":null,"action":null,"from":"available","to":"degraded","cause":"a long enough cause to fill the table"}"#;
        let body = format!("[{}]", vec![event; 3000].join(","));
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body.as_bytes());
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["events", "--server", &format!("http://127.0.0.1:{port}")])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then close our end while it still writes.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("stack backtrace"), "{stderr}");
}
