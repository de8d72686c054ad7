//! `drover serve` over HTTPS and the CLI verifying it: the real binary on
//! both sides. With the right CA (given, or the data dir's generated
//! certificate) a command succeeds; with a wrong one it fails saying the
//! certificate is not trusted; plain HTTP stays the default.

mod common;

use common::{free_port, Serve};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `drover ARGS` with only the environment given here.
fn drover(cwd: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.current_dir(cwd).args(args);
    for var in ["DROVER_URL", "DROVER_CA_CERT", "DROVER_DATA_DIR", "DROVER_ACTOR", "DROVER_TOKEN"] {
        cmd.env_remove(var);
    }
    // The first server here keeps its data in ./d; the others' tokens are
    // given as DROVER_TOKEN_FILE.
    cmd.env("DROVER_TOKEN_FILE", cwd.join("d").join("admin.token"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("drover runs")
}

fn wait_until_listing(cwd: &Path, data: &str, api: &str, ca: &Path, serve: &Serve) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = cwd.join(data).join("admin.token");
    loop {
        let out = drover(
            cwd,
            &[("DROVER_TOKEN_FILE", &token)],
            &["--server", api, "--ca-cert", ca.to_str().unwrap(), "services", "list", "--json"],
        );
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "never answered over TLS: {out:?}\n{}", serve.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_cli_trusts_the_servers_certificate_only_with_the_right_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let port = free_port();
    let mut serve = Serve::start(&cwd, port, &["--no-local", "--data-dir", "d", "--tls-self-signed"]);
    let data = cwd.join("d");
    let cert = data.join("tls-cert.pem");
    // The clients look for the file the server writes.
    assert_eq!(drover_agent::tls::DATA_DIR_CERT, drover_server::tls::SELF_SIGNED_CERT);
    let https = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cert.is_file() {
        assert!(Instant::now() < deadline, "no certificate generated: {}", serve.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(data.join("tls-key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the private key is not 0600");
    assert!(serve.log_tail().contains("tls-cert.pem"), "the log names the certificate");

    // The right CA, given by flag (also by IP: the certificate names 127.0.0.1).
    wait_until_listing(&cwd, "d", &https, &cert, &serve);
    let by_ip = format!("https://127.0.0.1:{port}");
    let out = drover(&cwd, &[("DROVER_CA_CERT", &cert)], &["--server", &by_ip, "services", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    // The data dir's certificate by default for an https URL.
    let out = drover(&cwd, &[("DROVER_DATA_DIR", &data)], &["--server", &https, "services", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");

    // A wrong CA: another self-signed certificate.
    let other = cwd.join("other");
    let (other_cert, _) =
        drover_server::tls::self_signed(&other, "127.0.0.1:0".parse().unwrap()).expect("a second certificate");
    let out = drover(&cwd, &[], &["--server", &https, "--ca-cert", other_cert.to_str().unwrap(), "services", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong CA was accepted: {out:?}");
    assert!(stderr.contains("not trusted") && stderr.contains("--ca-cert"), "{stderr}");
    // No CA at all (the system's roots do not know it).
    let out = drover(&cwd, &[], &["--server", &https, "services", "list"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not trusted"), "{out:?}");
    // A CA file that is not there.
    let out = drover(&cwd, &[], &["--server", &https, "--ca-cert", "/nonexistent.pem", "services", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the CA certificate"), "{out:?}");
    // Plain HTTP to the TLS port is not served.
    let out = drover(&cwd, &[], &["--server", &format!("http://127.0.0.1:{port}"), "services", "list"]);
    assert!(!out.status.success(), "{out:?}");
    serve.kill9();

    // The same pair given as files; plain HTTP by default.
    let key = data.join("tls-key.pem");
    let port = free_port();
    let files = Serve::start(
        &cwd,
        port,
        &["--no-local", "--data-dir", "d2", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    wait_until_listing(&cwd, "d2", &format!("https://localhost:{port}"), &cert, &files);
    drop(files);
    let port = free_port();
    let plain = Serve::start(&cwd, port, &["--no-local", "--data-dir", "d3"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let token = cwd.join("d3").join("admin.token");
        let out = drover(
            &cwd,
            &[("DROVER_TOKEN_FILE", &token)],
            &["--server", &format!("http://127.0.0.1:{port}"), "services", "list"],
        );
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "plain HTTP never answered: {out:?}\n{}", plain.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    std::fs::write(cwd.join("garbage.pem"), "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .current_dir(&cwd)
        .args(["serve", "--no-local", "--data-dir", "d", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", "garbage.pem", "--tls-key", "garbage.pem"])
        .env_remove("DROVER_DATA_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("garbage.pem"), "{stderr}");
}
