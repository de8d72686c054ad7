//! Secrets at rest in process: an `oncall.secret` an older version left in
//! clear and world-readable is sealed in place, the links already sent with
//! it keep working (also after a restart), and the data dir and the files
//! an older version created readable by others are narrowed at start.

mod common;

use drover_oncall::{sign, PageId};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_link_key_is_sealed_in_place_and_old_links_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = "a0b1c2d3e4f5-clear-link-key-from-an-older-version";
    let secret_file = data.join("oncall.secret");
    std::fs::write(&secret_file, old).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stray = data.join("notes.txt");
    std::fs::write(&stray, "{}").unwrap();
    std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A link signed before the upgrade (the page does not exist yet; its id
    // is what the signature covers).
    let mut t = common::start_in(dir, |_| {}).await;

    let sealed = std::fs::read_to_string(&secret_file).unwrap();
    assert!(sealed.starts_with("sealed:v1:") && !sealed.contains(old), "{sealed}");
    assert_eq!(mode(&secret_file), 0o600);
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path) & 0o077, 0, "{} is open to others", path.display());
    }
    assert_eq!(mode(&data.join(drover_secrets::KEY_FILE)), 0o600);

    let event = json!({"routing_key": "platform", "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "h", "severity": "critical"}});
    let (status, opened) =
        t.post_as(Some(&t.integration_token("platform").await), "/v1/integrations/events-v2", event).await;
    assert_eq!(status, 202, "{opened}");
    let page: PageId = opened["page"].as_str().unwrap().parse().unwrap();
    // Signed with the old key, as a link in an e-mail sent before would be.
    let ack = format!("/v1/pages/{page}/ack?sig={}", sign::sign(old.as_bytes(), page, "ack"));
    let (status, body) = t.get(&ack).await;
    assert_eq!(status, 200, "{body}");
    let forged = format!("/v1/pages/{page}/resolve?sig={}", sign::sign(b"another key", page, "resolve"));
    assert_eq!(t.get(&forged).await.0, 403);

    // After a restart the sealed file opens to the same key.
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    t.stop().await;
    let mut t = common::start_in(dir, |_| {}).await;
    let resolve = format!("/v1/pages/{page}/resolve?sig={}", sign::sign(old.as_bytes(), page, "resolve"));
    let (status, body) = t.get(&resolve).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("resolved")), "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_file_the_link_key_is_derived_and_no_file_holds_it() {
    let mut t = common::start().await;
    assert!(!t.dir.path().join("oncall.secret").exists());
    let event = json!({"routing_key": "platform", "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "h", "severity": "critical"}});
    let (_, opened) =
        t.post_as(Some(&t.integration_token("platform").await), "/v1/integrations/events-v2", event).await;
    let page: PageId = opened["page"].as_str().unwrap().parse().unwrap();
    // The key is derived from the data dir's key: the same after a restart.
    let (key, _) = drover_secrets::SecretKey::load_or_create(t.dir.path()).unwrap();
    let link_key = key.derive("oncall/link-signing");
    let (status, _) = t.get(&format!("/v1/pages/{page}/ack?sig={}", sign::sign(b"", page, "ack"))).await;
    assert_eq!(status, 403);
    let (status, body) = t.get(&format!("/v1/pages/{page}/ack?sig={}", sign::sign(&link_key, page, "ack"))).await;
    assert_eq!(status, 200, "{body}");
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    t.stop().await;
    let mut t2 = common::start_in(dir, |_| {}).await;
    assert!(!t2.dir.path().join("oncall.secret").exists());
    let resolve = format!("/v1/pages/{page}/resolve?sig={}", sign::sign(&link_key, page, "resolve"));
    let (status, body) = t2.get(&resolve).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("resolved")), "{body}");
    t2.stop().await;
}
