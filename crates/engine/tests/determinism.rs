//! Determinism you can replay: the same seed and the same inputs give the
//! same event log, byte for byte, in another process too (another process
//! would draw other hash seeds for any per-process-seeded map; the engine's
//! maps use a fixed seed, and whatever reaches an output is ordered).

mod common;
use common::*;
use drover_model::*;
use std::time::Duration;

/// Marks the child's log in its output, between the harness's own lines.
const BEGIN: &str = "--- event log begins ---";
const END: &str = "--- event log ends ---";

/// A busy history: services built, primaries crashed (failovers), a
/// follower hung, the control plane restarted from its store, and time
/// enough for remedies, backups and restore tests. Returns every event the
/// engine produced, one JSON line each (including `seq`, `kind`, `team`).
/// Set in the child process of the two-process test.
const CHILD: &str = "DROVER_DETERMINISM_CHILD";

fn history() -> String {
    let mut config = fast_config();
    config.backup_interval = Some(Duration::from_secs(120));
    config.verify_interval = Some(Duration::from_secs(300));
    let mut h = H::new(config);
    for i in 0..12u8 {
        h.create(&format!("db{i:02}"), 1 + i % 2);
    }
    h.advance(Duration::from_secs(3));
    for i in [0, 3, 7, 10] {
        let p = h.primary(&format!("db{i:02}")).id;
        h.chaos(p, Fault::Crash);
    }
    if let Some(f) = h.followers("db05").first() {
        h.chaos(f.id, Fault::Hang);
    }
    h.advance(Duration::from_secs(240));
    h.crash_and_restore();
    h.advance(Duration::from_secs(120));
    let mut log = String::new();
    for e in &h.store.events {
        log.push_str(&serde_json::to_string(e).expect("an event serializes"));
        log.push('\n');
    }
    log
}

#[test]
fn two_engines_fed_the_same_inputs_write_the_same_event_log() {
    let (a, b) = (history(), history());
    assert!(a.lines().count() > 200, "the history is busy enough to mean something:\n{a}");
    assert!(a.contains("\"promote\""), "it has failovers");
    assert!(a == b, "two engines in one process diverged");
}

#[test]
fn two_processes_fed_the_same_inputs_write_the_same_event_log() {
    // The child half: this same test, run again by the test below in a
    // process of its own (its own hasher seeds), prints its log and stops.
    if std::env::var_os(CHILD).is_some() {
        println!("{BEGIN}\n{}{END}", history());
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = std::process::Command::new(exe)
        .env(CHILD, "1")
        .args([
            "--exact",
            "two_processes_fed_the_same_inputs_write_the_same_event_log",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("the test binary runs again as a child");
    assert!(child.status.success(), "child failed: {}", String::from_utf8_lossy(&child.stderr));
    let stdout = String::from_utf8(child.stdout).expect("utf-8");
    let start = stdout.find(BEGIN).expect("the child printed its log") + BEGIN.len() + 1;
    let end = stdout[start..].find(END).expect("the child's log ends") + start;
    let theirs = &stdout[start..end];
    let ours = history();
    assert_eq!(theirs.lines().count(), ours.lines().count(), "as many events in both processes");
    for (n, (x, y)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(x, y, "event {n} differs between the processes");
    }
}
