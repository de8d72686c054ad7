//! Issue 12's commands through the real `drover` binary against a real
//! `drover serve` (sim provider, no local provider): `advisories import`
//! and `audit`, `rollouts create --fix` (refused while every image is
//! affected, then onto the newest unaffected one), `rollouts watch` until
//! the move succeeds, `runbooks list` and a dry run.

mod common;

use common::{free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(120);

/// `drover ARGS --server API` with the admin token, no config file.
fn drover(cwd: &Path, api: &str, token: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .args(["--server", api])
        .current_dir(cwd)
        .env("DROVER_TOKEN", token)
        .env_remove("DROVER_URL")
        .env_remove("DROVER_CONFIG")
        .output()
        .expect("run drover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "drover {args:?} panicked: {stderr}");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisories_rollouts_with_fix_watch_and_runbooks_work_from_the_command_line() {
    let dir = tempfile::Builder::new().prefix("drover-fleetcli").tempdir_in("/tmp").unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let serve = Serve::start(&cwd, free_port(), &["--data-dir", "d", "--no-local"]);
    let api = serve.api.clone();
    let anon = drover_agent::tls::builder().timeout(Duration::from_secs(10)).build().unwrap();
    serve.wait_healthy(&anon, SLOW).await;
    let token = common::admin_token(&cwd.join("d"));
    let http = common::client_with(&token);
    let run = |args: &[&str]| drover(&cwd, &api, &token, args);

    let r = http
        .post(format!("{api}/v1/services"))
        .json(&json!({"name": "fx", "engine": "postgres", "followers": 0, "provider": "sim"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    wait_for(SLOW, "fx available", &serve, || async {
        let (_, s) = get(&http, &format!("{api}/v1/services/fx")).await?;
        (s["state"] == "available").then_some(())
    })
    .await;

    // Import, with the fetch time given: fresh data, so no stale warning.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv/DSA-6090-1.json");
    let fixture = fixture.to_str().unwrap();
    let fresh = jiff::Timestamp::now().to_string();
    let o = run(&["advisories", "import", fixture, "--fetched-at", &fresh]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported 1 records (0 withdrawn)"), "{}", stdout(&o));
    assert!(!stderr(&o).contains("stale"), "{}", stderr(&o));

    // Every postgres image (the sim's, openssl 3.0.17) is affected: refused.
    let fix = ["rollouts", "create", "--fix", "DSA-6090-1", "--names", "fx", "--waves", "100", "--soak-seconds", "0"];
    let o = run(&fix);
    assert!(!o.status.success(), "nothing to move onto yet: {}", stdout(&o));
    assert!(stderr(&o).contains("is affected by DSA-6090-1"), "{}", stderr(&o));
    // --fix and --to-image together are a usage error, caught before any request.
    let o = run(&["rollouts", "create", "--fix", "DSA-6090-1", "--to-image", "sha256:x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let o = run(&["advisories", "audit", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let finding = audit.as_array().unwrap().iter().find(|f| f["advisory"] == "DSA-6090-1").cloned();
    let finding = finding.unwrap_or_else(|| panic!("the sim image is affected: {audit}"));
    assert_eq!((finding["package"].as_str(), finding["services"].clone()), (Some("openssl"), json!(["fx"])));

    // An image with the fixed openssl (its `openssl` binary and `libssl3`,
    // built from it; the sim image's package list says `openssl 3.0.17`):
    // the fix goes onto it.
    let ssl = |v: &str| {
        json!([
            {"name": "libssl3", "version": v, "source": "openssl", "source_version": v},
            {"name": "openssl", "version": v, "source": "openssl", "source_version": v},
        ])
    };
    let r = http
        .post(format!("{api}/v1/images"))
        .json(&json!({"engine": "postgres", "settings": {"work_mem": "8MB"}, "manifest": ssl("3.0.19-1~deb12u3")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let fixed = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let o = run(&[&fix[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let created: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(created["to_image"].as_str(), Some(fixed.as_str()), "{created}");
    let id = created["id"].as_str().unwrap();

    // `watch` follows the rollout to its end and exits 0 when it succeeds.
    let o = run(&["rollouts", "watch", id]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("succeeded") && stdout(&o).contains("1/1 done"), "{}", stdout(&o));
    let o = run(&["rollouts", "show", id, "--json"]);
    let shown: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((shown["state"].as_str(), shown["done"].as_u64()), (Some("succeeded"), Some(1)), "{shown}");
    let o = run(&["rollouts", "list"]);
    assert!(o.status.success() && stdout(&o).contains(id), "{}", stdout(&o));
    let o = run(&["rollouts", "pause", id]);
    assert!(!o.status.success(), "a finished rollout does not change");

    // fx no longer runs an affected image.
    let o = run(&["advisories", "audit", "--json"]);
    let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(audit.as_array().unwrap().iter().all(|f| f["services"].as_array().unwrap().is_empty()), "{audit}");

    // Runbooks: listed; a dry run is a plan and changes nothing.
    let o = run(&["runbooks", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["freeze-automation", "force-failover", "rebuild-follower", "restore-into-new-service"] {
        assert!(stdout(&o).contains(name), "{name}: {}", stdout(&o));
    }
    let o = run(&["runbooks", "run", "force-failover", "-p", "service=fx", "--dry-run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dry: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(dry["state"], "planned", "{dry}");
    assert_eq!(dry["plan"][0]["command"], "services.failover", "{dry}");
    let (_, actions) = get(&http, &format!("{api}/v1/actions?limit=1000")).await.unwrap();
    let immediate = actions.as_array().unwrap().iter().filter(|a| a["kind"] == "fence" && a["immediate"] == true);
    assert_eq!(immediate.count(), 0, "the dry run fenced nothing");
}
