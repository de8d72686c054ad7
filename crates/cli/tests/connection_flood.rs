//! The done-means of issue 10's abuse limits, at a scale a test run
//! affords: `drover bench connections` floods a real `drover serve` (child
//! process) with idle and slow-header connections from other child
//! processes, over a bound of open connections, while `/healthz` and
//! `GET /v1/services` must each answer within 1 s on fresh connections.
//! The full figure (20,000 idle and 10,000 slow) is in the README.

use std::process::Command;

#[test]
fn healthz_and_services_answer_within_a_second_under_idle_and_slow_header_floods() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["bench", "connections", "--idle", "3000", "--slow", "1500", "--max-connections", "2000"])
        .args(["--rounds", "6"])
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["healthz_max_ms"].as_f64().unwrap() <= 1000.0, "{report}");
    assert!(report["services_max_ms"].as_f64().unwrap() <= 1000.0, "{report}");
    // The bound holds: the server never has many more sockets than it.
    assert!(report["server_open_fds"].as_u64().unwrap() < 2300, "{report}");
    // Memory stays bounded: 4,500 sockets' worth of flood adds little.
    let before = report["server_rss_before_bytes"].as_u64().unwrap();
    let peak = report["server_rss_peak_bytes"].as_u64().unwrap();
    assert!(peak < before + 64 * 1024 * 1024, "{report}");
}
