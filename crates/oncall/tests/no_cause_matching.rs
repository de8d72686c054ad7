//! `Event.cause` is prose for people: the pager, the engine and the
//! simulator's checker match on `Event.kind` (with subject, from and to),
//! never on the text. This test reads their sources and fails if any of them
//! inspects a cause's text.

use std::path::{Path, PathBuf};

/// Ways of looking inside a cause's text.
const FORBIDDEN: &[&str] = &[
    "cause.contains(",
    "cause.starts_with(",
    "cause.ends_with(",
    "cause.split",
    "cause.find(",
    "cause.matches(",
    "cause.strip_prefix(",
    "cause.strip_suffix(",
    "cause.trim",
    "cause ==",
    "cause.as_str() ==",
    "cause.eq(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_engine_simulator_or_pager_code_matches_on_the_text_of_a_cause() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["oncall/src", "engine/src", "sim/src"] {
        rust_files(&crates.join(dir), &mut files);
    }
    assert!(files.len() >= 10, "too few sources found: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // rustfmt may break `event.cause` and `.contains(` over two lines.
        let joined: String = text.lines().map(str::trim).collect::<Vec<_>>().join("");
        for pattern in FORBIDDEN {
            if joined.contains(pattern) {
                found.push(format!("{}: {pattern}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "code matches on the text of a cause (match on Event.kind instead): {found:#?}");
}

#[test]
fn the_check_itself_sees_a_match_on_cause_text() {
    // The pattern list catches what the pager used to do.
    let old = "|| event.cause.contains(\"restore test FAILED\")";
    assert!(FORBIDDEN.iter().any(|p| old.contains(p)));
}
