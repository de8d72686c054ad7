//! The on-call API through real HTTP: the Events API v2 endpoint, pages,
//! acknowledge and resolve (API and signed links), channel delivery to real
//! HTTP receivers with fallback, e-mail to a real SMTP server, metrics, and
//! pages surviving a restart.

mod common;

use common::receiver::Receiver;

use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "test-secret";

fn config(receiver: &str, smtp_port: u16) -> String {
    format!(
        r#"
default_team = "db"

[delivery]
secret = "{SECRET}"
attempts = 2
backoff = "50ms"
feed = {{ slack = "{receiver}/feed" }}
smtp = {{ host = "127.0.0.1", port = {smtp_port}, from = "drover@example.com" }}

[incident_commanders]
rotation = ["dave"]

[[people]]
name = "dave"
webhook = "{receiver}/dave"

[[teams]]
name = "db"
routing_keys = ["db-key"]
manager = "carol"
chat = {{ slack = "{receiver}/chat" }}

[[teams.people]]
name = "alice"
slack = "{receiver}/fail"
webhook = "{receiver}/alice"
[[teams.people]]
name = "bob"
email = "bob@example.com"
[[teams.people]]
name = "carol"

[[teams.schedules]]
name = "level1"
rotation = ["alice"]

[[teams.escalation]]
target = "bot"
timeout = "300ms"
business_hours_timeout = "300ms"
[[teams.escalation]]
target = "schedule:level1"
timeout = "1h"
"#
    )
}

async fn start(receiver: &str, smtp_port: u16) -> common::TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oncall.toml"), config(receiver, smtp_port)).unwrap();
    common::start_in(dir, |_| {}).await
}

/// Posts an Events API v2 event the way a sender does: no bearer token,
/// the integration token of team `db` as `routing_key` (for `db-key`).
async fn send(t: &common::TestServer, mut event: Value) -> (u16, Value) {
    if event["routing_key"] == "db-key" {
        event["routing_key"] = t.integration_token("db").await.into();
    }
    t.post_as(None, "/v1/integrations/events-v2", event).await
}

fn event(action: &str, key: &str) -> Value {
    json!({
        "routing_key": "db-key",
        "event_action": action,
        "dedup_key": key,
        "payload": {"summary": format!("{key} is broken"), "source": "db-host-1", "severity": "critical",
                    "component": "postgres", "class": "disk", "custom_details": {"free": "1%"}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_v2_trigger_dedup_acknowledge_resolve_and_refusals() {
    let (_r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    let (status, body) = send(&t, event("trigger", "disk-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["result"].as_str(), body["dedup_key"].as_str()),
        (Some("success"), Some("opened"), Some("disk-1"))
    );
    let (_, again) = send(&t, event("trigger", "disk-1")).await;
    assert_eq!(again["result"], "deduplicated");
    assert_eq!(again["page"], body["page"]);

    let (status, pages) = t.get("/v1/pages").await;
    assert_eq!(status, 200);
    let pages = pages.as_array().unwrap();
    assert_eq!(pages.len(), 1, "{pages:?}");
    let p = &pages[0];
    assert_eq!(
        (p["status"].as_str(), p["team"].as_str(), p["dedup_key"].as_str()),
        (Some("triggered"), Some("db"), Some("disk-1"))
    );
    assert_eq!((p["level"].as_u64(), p["alerts"].as_u64()), (Some(0), Some(2)));

    let (_, acked) = send(&t, event("acknowledge", "disk-1")).await;
    assert_eq!(acked["result"], "acknowledged");
    let (_, resolved) = send(&t, event("resolve", "disk-1")).await;
    assert_eq!(resolved["result"], "resolved");
    let (_, page) = t.get(&format!("/v1/pages/{}", body["page"].as_str().unwrap())).await;
    assert_eq!(page["status"], "resolved");
    let (_, ignored) = send(&t, event("resolve", "never-opened")).await;
    assert_eq!(ignored["result"], "ignored");

    // A team's name, or one of its old routing keys, is no token: refused.
    for key in ["nope", "db", "db-key-not"] {
        let bad = json!({"routing_key": key, "event_action": "trigger", "payload": {"summary": "s", "source": "s", "severity": "info"}});
        let (status, body) = send(&t, bad).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].as_str().unwrap().contains("routing_key"), "{body}");
    }
    for (bad, needle) in [
        (json!({"routing_key": "db-key", "event_action": "explode", "dedup_key": "k"}), "event_action"),
        (
            json!({"routing_key": "db-key", "event_action": "trigger", "payload": {"summary": "s", "source": "s", "severity": "loud"}}),
            "severity",
        ),
        (json!({"routing_key": "db-key", "event_action": "resolve"}), "dedup_key is required"),
        (json!({"routing_key": "db-key", "event_action": "trigger"}), "payload"),
    ] {
        let (status, body) = send(&t, bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    // Not an integration token: the admin's is refused as a routing key.
    let admin = common::admin_token(t.dir.path());
    let (status, _) = t
        .post_as(
            None,
            "/v1/integrations/events-v2",
            json!({"routing_key": admin, "event_action": "resolve", "dedup_key": "k"}),
        )
        .await;
    assert_eq!(status, 403);
    let integration = t.integration_token("db").await;
    let (status, body) = t
        .post_as(
            Some(&integration),
            "/v1/integrations/alertmanager",
            json!({"version": "3", "groupKey": "g", "status": "firing"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("version"), "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_and_resolve_by_api_and_by_signed_link() {
    let (_r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    let (_, a) = send(&t, event("trigger", "a")).await;
    let (_, b) = send(&t, event("trigger", "b")).await;
    let a: drover_oncall::PageId = a["page"].as_str().unwrap().parse().unwrap();
    let b: drover_oncall::PageId = b["page"].as_str().unwrap().parse().unwrap();

    // Acknowledging needs an operator: a viewer and an integration are refused.
    let viewer = t.token(json!({"name": "watcher", "role": "viewer"})).await;
    let (status, _) = t.post_as(Some(&viewer), &format!("/v1/pages/{a}/ack"), json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = t.post_as(Some(&t.integration_token("db").await), &format!("/v1/pages/{a}/ack"), json!({})).await;
    assert_eq!(status, 403);
    let alice = t.token(json!({"name": "alice", "role": "operator"})).await;
    let (status, page) = t.post_as(Some(&alice), &format!("/v1/pages/{a}/ack"), json!({})).await;
    assert_eq!(
        (status, page["status"].as_str(), page["acknowledged_by"].as_str()),
        (200, Some("acknowledged"), Some("alice"))
    );
    let (status, page) = t.post(&format!("/v1/pages/{a}/resolve"), json!({})).await;
    assert_eq!((status, page["status"].as_str()), (200, Some("resolved")));
    let (status, body) = t.post(&format!("/v1/pages/{a}/ack"), json!({})).await;
    assert_eq!(status, 409, "acknowledging a resolved page: {body}");
    let (status, _) = t.post(&format!("/v1/pages/{}/ack", drover_oncall::PageId::new_at(1, 1)), json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = t.post("/v1/pages/not-a-uuid/ack", json!({})).await;
    assert_eq!(status, 400);

    // Signed links: a bad or borrowed signature is refused.
    let ack_sig = drover_oncall::sign::sign(SECRET.as_bytes(), b, "ack");
    let (status, body) = t.get(&format!("/v1/pages/{b}/ack?sig=deadbeef")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = t.get(&format!("/v1/pages/{b}/resolve?sig={ack_sig}")).await;
    assert_eq!(status, 403, "an ack signature cannot resolve");
    let (status, _) = t.get(&format!("/v1/pages/{b}/ack")).await;
    assert_eq!(status, 403);
    let (status, page) = t.get(&format!("/v1/pages/{b}/ack?sig={ack_sig}")).await;
    assert_eq!(
        (status, page["status"].as_str(), page["acknowledged_by"].as_str()),
        (200, Some("acknowledged"), Some("signed link"))
    );
    let resolve_sig = drover_oncall::sign::sign(SECRET.as_bytes(), b, "resolve");
    let (status, page) = t.get(&format!("/v1/pages/{b}/resolve?sig={resolve_sig}")).await;
    assert_eq!((status, page["status"].as_str()), (200, Some("resolved")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_channel_falls_back_and_the_feed_says_so_and_the_link_in_the_message_works() {
    let (r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    let (_, opened) = send(&t, event("trigger", "disk-9")).await;
    let id = opened["page"].as_str().unwrap().to_string();

    // The bot tier waits 300 ms, then level 1 (alice): her Slack fails, her webhook works.
    let got =
        common::poll(Duration::from_secs(20), "alice's webhook", || async { r.at("/alice").first().cloned() }).await;
    assert_eq!(got["notification"]["page"], id.as_str());
    assert!(got["text"].as_str().unwrap().contains("disk-9 is broken"), "{got}");
    let (_, page) = t.get(&format!("/v1/pages/{id}")).await;
    assert_eq!(page["level"], 1);
    assert_eq!(page["notified"], json!(["alice"]));

    // Alice's own notification, not the team chat post of the bot tier
    // (delivered too, in either order).
    let to_alice = |n: &&Value| n["state"] == "delivered" && n["reason"] != "chat";
    let detail = common::poll(Duration::from_secs(10), "notification marked delivered", || async {
        let (_, p) = t.get(&format!("/v1/pages/{id}")).await;
        p["notifications"].as_array().unwrap().iter().any(|n| to_alice(&n)).then_some(p)
    })
    .await;
    let n = detail["notifications"].as_array().unwrap().iter().find(to_alice).unwrap().clone();
    assert_eq!(
        (n["channel"].as_str(), n["attempts"].as_u64()),
        (Some("webhook"), Some(3)),
        "2 failed Slack attempts, then the webhook: {n}"
    );

    // Every page event is in the company-wide feed, the fallback too.
    let feed = common::poll(Duration::from_secs(10), "fallback in the feed", || async {
        let (_, feed) = t.get("/v1/pager/feed").await;
        let feed = feed.as_array().unwrap().clone();
        feed.iter().any(|f| f["text"].as_str().unwrap().contains("fell back to webhook")).then_some(feed)
    })
    .await;
    assert!(feed.iter().any(|f| f["text"].as_str().unwrap().contains("opened")), "{feed:?}");
    common::poll(Duration::from_secs(10), "feed posted to its Slack webhook", || async {
        r.at("/feed").iter().any(|f| f["text"].as_str().unwrap_or("").contains("fell back to webhook")).then_some(())
    })
    .await;

    // The acknowledge link in the message works as is.
    let link = got["ack_url"].as_str().unwrap().to_string();
    let r2 = t.http.get(&link).send().await.unwrap();
    let (status, page) = common::split(r2).await;
    assert_eq!((status, page["status"].as_str()), (200, Some("acknowledged")), "{link}: {page}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_with_no_working_channel_is_posted_in_the_feed() {
    let (r, url) = Receiver::start().await;
    // Nothing listens on port 1: bob's e-mail cannot go anywhere.
    let toml = config(&url, 1).replace("rotation = [\"alice\"]", "rotation = [\"bob\"]");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oncall.toml"), toml).unwrap();
    let mut t = common::start_in(dir, |_| {}).await;
    send(&t, event("trigger", "x")).await;
    common::poll(Duration::from_secs(20), "could not reach bob", || async {
        let (_, feed) = t.get("/v1/pager/feed").await;
        feed.as_array()
            .unwrap()
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains("could not reach bob"))
            .then_some(())
    })
    .await;
    assert!(r.at("/alice").is_empty());
    t.stop().await;
}

/// A real SMTP server (Python's aiosmtpd) receives the page by e-mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reaches_a_person_by_email_over_smtp() {
    let has_aiosmtpd =
        std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
    // scripts/test installs it; a missing SMTP server is a failure, not a skip.
    assert!(has_aiosmtpd, "aiosmtpd is not installed: run ./scripts/test (or pip install aiosmtpd)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maildir = tempfile::tempdir().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _smtp = Kill(
        std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts"),
    );
    common::poll(Duration::from_secs(10), "smtp listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    let (_r, url) = Receiver::start().await;
    let toml = config(&url, port).replace("rotation = [\"alice\"]", "rotation = [\"bob\"]");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oncall.toml"), toml).unwrap();
    let mut t = common::start_in(dir, |_| {}).await;
    send(&t, event("trigger", "mail-me")).await;
    let mail = common::poll(Duration::from_secs(20), "an e-mail in the maildir", || async {
        let new = maildir.path().join("mail").join("new");
        let entry = std::fs::read_dir(new).ok()?.next()?.ok()?;
        std::fs::read_to_string(entry.path()).ok()
    })
    .await;
    assert!(mail.contains("To: bob@example.com"), "{mail}");
    assert!(mail.contains("mail-me is broken") && mail.contains("/ack?sig="), "{mail}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_as_json_per_week_and_as_a_chart() {
    let (_r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    send(&t, event("trigger", "m1")).await;
    send(&t, event("resolve", "m1")).await;
    let (status, weeks) = t.get("/v1/pager/metrics?team=db&weeks=3").await;
    assert_eq!(status, 200, "{weeks}");
    let weeks = weeks.as_array().unwrap();
    assert_eq!(weeks.len(), 3);
    let this = &weeks[2];
    assert_eq!(
        (this["pages"].as_u64(), this["bot_only"].as_u64(), this["resolved"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{this}"
    );
    for key in [
        "rolling_average_4w",
        "pages_per_on_call_person",
        "business_hours",
        "off_hours",
        "sleep_hours",
        "mean_time_to_acknowledge_secs",
        "mean_time_to_resolve_secs",
        "bot_only_share",
        "noisiest",
    ] {
        assert!(this.get(key).is_some(), "{key} missing: {this}");
    }
    let r = t.http.get(t.at("/v1/pager/metrics.svg?team=db&weeks=3")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert!(r.text().await.unwrap().starts_with("<svg"));
    let (status, _) = t.get("/v1/pager/metrics?team=nope").await;
    assert_eq!(status, 404);
    let (status, _) = t.get("/v1/pager/metrics?team=db&weeks=0").await;
    assert_eq!(status, 400);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pages_survive_a_restart_and_keep_deduplicating() {
    let (_r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    let (_, opened) = send(&t, event("trigger", "persist")).await;
    // Not a clean stop: the server task is dropped mid-flight.
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    t.server.take().unwrap().abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut t2 = common::start_in(dir, |_| {}).await;
    let (_, page) = t2.get(&format!("/v1/pages/{}", opened["page"].as_str().unwrap())).await;
    assert!(page["status"] == "triggered" || page["status"] == "acknowledged", "{page}");
    let (_, again) = send(&t2, event("trigger", "persist")).await;
    assert_eq!((again["result"].as_str(), &again["page"]), (Some("deduplicated"), &opened["page"]));
    t2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_token_sees_only_its_teams_feed_and_on_call() {
    let (_r, url) = Receiver::start().await;
    let toml = config(&url, 1)
        + &format!(
            r#"
[[teams]]
name = "web"
[[teams.people]]
name = "erin"
webhook = "{url}/erin"
[[teams.schedules]]
name = "web-l1"
rotation = ["erin"]
[[teams.escalation]]
target = "schedule:web-l1"
timeout = "1h"
"#
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oncall.toml"), toml).unwrap();
    let mut t = common::start_in(dir, |_| {}).await;
    let (status, body) = send(&t, event("trigger", "disk-9")).await;
    assert_eq!(status, 202, "{body}");
    common::poll(Duration::from_secs(20), "a post of team db in the feed", || async {
        let (_, feed) = t.get("/v1/pager/feed").await;
        feed.as_array().unwrap().iter().any(|f| f["team"] == "db").then_some(())
    })
    .await;
    let web = t.token(json!({"name": "web-viewer", "role": "viewer", "team": "web"})).await;
    let db = t.token(json!({"name": "db-viewer", "role": "viewer", "team": "db"})).await;

    let (status, feed) = t.get_as(Some(&web), "/v1/pager/feed").await;
    assert_eq!(status, 200, "{feed}");
    assert!(feed.as_array().unwrap().iter().all(|f| f["team"] == "web"), "another team's posts: {feed}");
    let (_, feed) = t.get_as(Some(&db), "/v1/pager/feed").await;
    assert!(!feed.as_array().unwrap().is_empty(), "its own team's posts: {feed}");
    assert!(feed.as_array().unwrap().iter().all(|f| f["team"] == "db"), "{feed}");

    let teams = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|o| o["team"].as_str().unwrap().to_string()).collect()
    };
    let (status, oncall) = t.get_as(Some(&web), "/v1/pager/oncall").await;
    assert_eq!(status, 200, "{oncall}");
    assert_eq!(teams(&oncall), ["web", "*"], "its schedules and the incident commander: {oncall}");
    let (_, oncall) = t.get("/v1/pager/oncall").await;
    assert_eq!(teams(&oncall), ["db", "web", "*"], "an unlimited token sees every team: {oncall}");
    t.stop().await;
}

/// The pager's reading of the engine's event log is kept in the store: an
/// engine event committed while the control plane was down (as one
/// committed in the moment before a kill -9, never read) becomes a page
/// after the restart, once; a restart reads on from where the last run
/// stopped, not from the newest event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_event_the_pager_never_read_is_paged_after_a_restart() {
    let (_r, url) = Receiver::start().await;
    let mut t = start(&url, 1).await;
    t.stop().await;
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    // The stores block on a runtime of their own: opened and used off
    // the test's.
    let (path, store_url) = (dir.path().join("drover.db"), t.pg.as_ref().map(|pg| pg.url("postgres")));
    tokio::task::spawn_blocking(move || {
        let store: Box<dyn drover_store::Store> = match store_url {
            Some(url) => Box::new(drover_store::PgStore::connect(&url).unwrap()),
            None => Box::new(drover_store::SqliteStore::open(&path).unwrap()),
        };
        let needs_human = drover_model::Event {
            id: Default::default(),
            seq: 0,
            at: drover_model::Timestamp(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64,
            ),
            subject: drover_model::EventSubject::Service,
            service: Some("ghost".into()),
            service_id: None,
            instance: None,
            action: None,
            from: None,
            to: None,
            cause: "the remedy gave up".into(),
            kind: drover_model::EventKind::NeedsHuman,
            team: Some("db".into()),
        };
        store.commit(drover_model::Changes { events: vec![needs_human], ..Default::default() }).unwrap();
    })
    .await
    .unwrap();
    let pg = t.pg.take();
    let mut t2 = common::start_in(dir, |_| {}).await;
    t2.pg = pg;
    let ghost = |pages: &Value| -> Vec<Value> {
        pages
            .as_array()
            .map(|a| a.iter().filter(|p| p["summary"].as_str().is_some_and(|s| s.contains("ghost"))).cloned().collect())
            .unwrap_or_default()
    };
    let pages = common::poll(Duration::from_secs(20), "a page for the event committed while down", || async {
        let (_, pages) = t2.get("/v1/pages").await;
        (!ghost(&pages).is_empty()).then_some(pages)
    })
    .await;
    assert_eq!(ghost(&pages).len(), 1, "{pages}");
    // Restarted again: the event is not read a second time.
    t2.stop().await;
    let dir = std::mem::replace(&mut t2.dir, tempfile::tempdir().unwrap());
    let pg = t2.pg.take();
    let mut t3 = common::start_in(dir, |_| {}).await;
    t3.pg = pg;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, pages) = t3.get("/v1/pages").await;
    assert_eq!(ghost(&pages).len(), 1, "{pages}");
    let page = &ghost(&pages)[0];
    assert_eq!(page["alerts"].as_u64(), Some(1), "the event was read once: {page}");
    t3.stop().await;
}
