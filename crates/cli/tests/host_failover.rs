//! Issue 11, "done means": three agents standing for hosts in three zones
//! (127.0.0.2/3/4), a PostgreSQL service with a synchronous follower placed
//! on two of them; its primary's whole host is crashed (kill -9 of the
//! agent and everything it runs) or, separately, frozen (SIGSTOP of all of
//! it) under a steady write load through the service's URL. Writes resume
//! through the same URL, no acknowledged write is lost, a new follower is
//! built on the third host, and a frozen host, thawed, takes no write as a
//! primary. The scenario is `drover bench failover --fault host-…` (the
//! benchmark fails on any of these); this test runs it and reads its
//! figures. How fast it is, is the benchmark's to say (README), not this
//! test's.

use serde_json::Value;
use std::process::Command;

fn bench(fault: &str, runs: usize) -> (Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["bench", "failover", "--engine", "postgres", "--fault", fault, "--runs", &runs.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run drover bench failover");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "bench failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let last = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line:\n{stdout}"));
    (serde_json::from_str(last).expect("the JSON line parses"), stdout)
}

/// Each failover promoted the follower, and the replacement follower went
/// to the host that held neither member before (the faulted host was down).
fn assert_new_follower_on_the_third_host(figures: &Value, runs: usize) {
    let placements = figures["placements"].as_array().expect("placements");
    assert_eq!(placements.len(), runs + 1, "{figures}");
    for pair in placements.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert_ne!(before["primary"], before["follower"], "members on one host: {figures}");
        assert_eq!(after["primary"], before["follower"], "the follower was not promoted: {figures}");
        assert!(
            after["follower"] != before["primary"] && after["follower"] != before["follower"],
            "the new follower is not on the third host: {figures}"
        );
    }
}

fn assert_nothing_lost(figures: &Value, runs: usize) {
    assert_eq!(figures["runs"], runs, "{figures}");
    assert_eq!(figures["seconds_to_writable"].as_array().map(Vec::len), Some(runs), "{figures}");
    assert!(figures["acknowledged_writes"].as_u64().unwrap_or(0) > 0, "no write was acknowledged: {figures}");
    assert_eq!(figures["acknowledged_writes_lost"], 0, "acknowledged writes lost: {figures}");
}

#[test]
fn a_crashed_primary_host_fails_over_under_load_without_losing_a_write() {
    let (figures, _) = bench("host-crash", 2);
    assert_eq!(figures["fault"], "host-crash");
    assert_nothing_lost(&figures, 2);
    assert_new_follower_on_the_third_host(&figures, 2);
}

#[test]
fn a_frozen_primary_host_fails_over_under_load_and_thawed_takes_no_write() {
    let (figures, stdout) = bench("host-hang", 2);
    assert_eq!(figures["fault"], "host-hang");
    assert_nothing_lost(&figures, 2);
    assert_new_follower_on_the_third_host(&figures, 2);
    // The bench sends writes straight to the thawed old primary for 5 s
    // and fails if one is acknowledged; each run says it checked.
    assert_eq!(stdout.matches("thawed; its old primary").count(), 2, "{stdout}");
}
