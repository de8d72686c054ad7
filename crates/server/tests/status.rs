//! The public status site: components derived from the fleet (the brake
//! engaged is a major outage, healed is operational again), the uptime
//! bars from the sampler, incidents declared and updated through the API,
//! shown on the page and in the Atom feed without logging in.

mod common;

use common::poll;
use serde_json::json;
use std::time::Duration;

/// `/status` fetched without any token.
async fn public(t: &common::TestServer, path: &str) -> (u16, String, String) {
    let r = reqwest::Client::new().get(t.at(path)).send().await.expect("status answers");
    let status = r.status().as_u16();
    let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, kind, r.text().await.unwrap())
}

/// The state the page shows for `component`.
fn state_of(html: &str, component: &str) -> Option<String> {
    let at = html.find(&format!("<span class=\"name\">{component}</span>"))?;
    let rest = &html[at..];
    let from = rest.find("data-state=\"")? + "data-state=\"".len();
    Some(rest[from..from + rest[from..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brake_is_a_major_outage_on_the_status_page_and_healing_makes_it_operational_again() {
    let t = common::start_with(|o| o.status.sample_every = Duration::from_millis(200)).await;
    let mut primaries = Vec::new();
    for i in 0..6 {
        let name = format!("st{i}");
        t.create_service(&name, 0).await;
        let s = t.wait_available(&name, Duration::from_secs(15)).await;
        primaries.push(s["instances"][0]["id"].as_str().unwrap().to_string());
    }
    let (status, kind, html) = public(&t, "/status").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert_eq!(state_of(&html, "PostgreSQL").as_deref(), Some("operational"), "{html}");
    assert!(html.contains("All systems operational"));
    for id in &primaries {
        let (status, body) = t.post("/v1/chaos", json!({"instance": id, "fault": "partition"})).await;
        assert_eq!(status, 202, "{body}");
    }
    let html = poll(Duration::from_secs(60), "a major outage on the status page", || async {
        let (_, _, html) = public(&t, "/status").await;
        (state_of(&html, "PostgreSQL").as_deref() == Some("major_outage")).then_some(html)
    })
    .await;
    assert!(html.contains("Major outage"), "the banner says so");
    // Nothing internal leaks: no service name, no instance id, no team.
    for (i, id) in primaries.iter().enumerate() {
        assert!(!html.contains(id.as_str()), "an instance id on the public page");
        assert!(!html.contains(&format!("st{i}")), "a service name on the public page");
    }
    // The sampler counted the outage into today's bar.
    poll(Duration::from_secs(10), "today's bar shows the outage", || async {
        let (_, _, html) = public(&t, "/status").await;
        let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().to_string();
        html.contains(&format!("class=\"major\" title=\"{today}:")).then_some(())
    })
    .await;
    for id in &primaries {
        t.post("/v1/chaos", json!({"instance": id, "fault": "heal"})).await;
    }
    poll(Duration::from_secs(60), "operational again", || async {
        let (_, _, html) = public(&t, "/status").await;
        (state_of(&html, "PostgreSQL").as_deref() == Some("operational")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_and_its_updates_appear_on_the_status_page_and_in_its_feed() {
    let t = common::start().await;
    // Refused as it should be: no token, a viewer, an unknown component, an empty title.
    let (status, _) = t.post_as(None, "/v1/incidents", json!({"title": "x", "severity": "minor"})).await;
    assert_eq!(status, 401);
    let viewer = t.token(json!({"name": "watcher", "role": "viewer"})).await;
    let (status, _) = t.post_as(Some(&viewer), "/v1/incidents", json!({"title": "x", "severity": "minor"})).await;
    assert_eq!(status, 403);
    let (status, body) =
        t.post("/v1/incidents", json!({"title": "x", "severity": "minor", "components": ["Oracle"]})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = t.post("/v1/incidents", json!({"title": "  ", "severity": "minor"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("title"), "{body}");

    let (status, incident) = t
        .post(
            "/v1/incidents",
            json!({"title": "Slow commits in zone b", "severity": "major", "components": ["postgresql"]}),
        )
        .await;
    assert_eq!(status, 201, "{incident}");
    assert_eq!(incident["status"], "investigating");
    assert_eq!(incident["components"], json!(["PostgreSQL"]));
    assert_eq!(incident["commander"], "incident-commander", "the IC on call now: {incident}");
    let id = incident["id"].as_str().unwrap().to_string();

    let (_, _, html) = public(&t, "/status").await;
    assert!(html.contains("Slow commits in zone b"), "{html}");
    // An open major incident lifts its component to at least a partial outage.
    assert_eq!(state_of(&html, "PostgreSQL").as_deref(), Some("partial_outage"), "{html}");

    let (status, after) = t
        .post(
            &format!("/v1/incidents/{id}/updates"),
            json!({"status": "identified", "message": "A disk <b>filled</b> on one host."}),
        )
        .await;
    assert_eq!(status, 201, "{after}");
    assert_eq!(after["updates"].as_array().unwrap().len(), 2);
    let (_, _, html) = public(&t, "/status").await;
    assert!(
        html.contains("A disk &#60;b&#62;filled&#60;/b&#62; on one host.")
            || html.contains("A disk &lt;b&gt;filled&lt;/b&gt; on one host."),
        "escaped: {html}"
    );
    assert!(!html.contains("<b>filled</b>"), "HTML from an update is not rendered");

    let (status, _) =
        t.post(&format!("/v1/incidents/{id}/updates"), json!({"status": "resolved", "message": "Space freed."})).await;
    assert_eq!(status, 201);
    let (status, body) =
        t.post(&format!("/v1/incidents/{id}/updates"), json!({"status": "monitoring", "message": "again"})).await;
    assert_eq!(status, 409, "{body}");

    let (status, kind, feed) = public(&t, "/status/feed.atom").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/atom+xml"), "{kind}");
    assert!(feed.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\""), "{feed}");
    assert_eq!(feed.matches("<entry>").count(), 3, "{feed}");
    let resolved = feed.find("Space freed.").expect("the resolution in the feed");
    let first = feed.find("We are investigating").expect("the declaration in the feed");
    assert!(resolved < first, "newest first");

    let (_, _, html) = public(&t, "/status").await;
    assert_eq!(state_of(&html, "PostgreSQL").as_deref(), Some("operational"), "resolved: no longer lifts it");
    assert!(html.contains("Past incidents"), "{html}");

    let (status, list) = t.get_as(Some(&viewer), "/v1/incidents").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["status"], "resolved");
    let (status, _) = t.get("/v1/incidents/not-a-uuid").await;
    assert_eq!(status, 404);
    let (status, _) = t.get(&format!("/v1/incidents/{}", uuid_like())).await;
    assert_eq!(status, 404);
    // The review template, filled with the timeline.
    let r = t.http.get(t.at(&format!("/v1/incidents/{id}/review"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let md = r.text().await.unwrap();
    assert!(md.starts_with("# Post-incident review: Slow commits in zone b"), "{md}");
    assert!(
        md.contains("Identified (admin): A disk <b>filled</b> on one host.")
            && md.contains("Resolved (admin): Space freed."),
        "{md}"
    );
    // The company-wide feed got every update too.
    let (_, posts) = t.get("/v1/pager/feed").await;
    let texts: Vec<&str> = posts.as_array().unwrap().iter().filter_map(|p| p["text"].as_str()).collect();
    assert!(texts.iter().any(|p| p.contains("Incident declared") && p.contains("incident-commander")), "{texts:?}");
    assert!(texts.iter().any(|p| p.contains("Space freed.")), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_incident_pages_the_incident_commander_through_the_pager() {
    let t = common::start().await;
    // A page from an integration, then an incident declared from it.
    let key = t.integration_token("platform").await;
    let (status, body) = t
        .post_as(
            None,
            "/v1/integrations/events-v2",
            json!({"routing_key": key, "event_action": "trigger", "dedup_key": "writes-failing",
                   "payload": {"summary": "writes failing on orders", "source": "exporter", "severity": "critical"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, pages) = t.get("/v1/pages?status=open").await;
    let from = pages[0]["id"].as_str().unwrap().to_string();
    let (status, incident) = t
        .post(
            "/v1/incidents",
            json!({"title": "Orders cannot write", "severity": "critical", "components": ["PostgreSQL"], "page": from}),
        )
        .await;
    assert_eq!(status, 201, "{incident}");
    let id = incident["id"].as_str().unwrap().to_string();
    let commander_page = incident["commander_page"].as_str().expect("the commander's page id").to_string();
    assert_ne!(commander_page, from);

    // A real page, routed to the incident-commander schedule, in the pages everyone sees.
    let (_, pages) = t.get("/v1/pages?status=open").await;
    let page = pages.as_array().unwrap().iter().find(|p| p["id"] == commander_page.as_str()).expect("listed").clone();
    assert_eq!(page["origin"], "incident", "{page}");
    assert_eq!(page["level_name"], "incident_commander", "{page}");
    assert_eq!(page["notified"], json!(["incident-commander"]), "the IC on call was notified: {page}");
    assert_eq!(page["team"], "platform", "the declaring page's team: {page}");
    assert_eq!(page["severity"], "critical");
    assert!(page["summary"].as_str().unwrap().contains("Orders cannot write"), "{page}");
    let (_, detail) = t.get(&format!("/v1/pages/{commander_page}")).await;
    let notes = detail["notifications"].as_array().unwrap();
    assert!(notes.iter().any(|n| n["recipient"]["name"] == "incident-commander" && n["reason"] == "page"), "{detail}");
    // Acknowledged like any page.
    let (status, acked) = t.post(&format!("/v1/pages/{commander_page}/ack"), json!({})).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    // The incident resolved: the commander's page resolves with it.
    let (status, _) =
        t.post(&format!("/v1/incidents/{id}/updates"), json!({"status": "resolved", "message": "Writes flow."})).await;
    assert_eq!(status, 201);
    let (_, after) = t.get(&format!("/v1/pages/{commander_page}")).await;
    assert_eq!(after["status"], "resolved", "{after}");
    // An incident declared by hand pages the commander too (the default team).
    let (_, by_hand) = t.post("/v1/incidents", json!({"title": "Slow dashboards", "severity": "minor"})).await;
    let (_, page) = t.get(&format!("/v1/pages/{}", by_hand["commander_page"].as_str().unwrap())).await;
    assert_eq!((page["status"].as_str(), page["severity"].as_str()), (Some("triggered"), Some("warning")), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_timeline_gathers_its_pages_the_engines_events_and_actions_and_notes() {
    let t = common::start().await;
    t.create_service("web1", 1).await;
    let before = t.wait_available("web1", Duration::from_secs(30)).await;
    let old_primary = common::primary(&before)["id"].as_str().unwrap().to_string();
    let key = t.integration_token("platform").await;
    let page = |dedup: &str, summary: &str, service: Option<&str>| {
        let mut payload = json!({"summary": summary, "source": "exporter", "severity": "critical"});
        if let Some(s) = service {
            payload["custom_details"] = json!({"service": s});
        }
        json!({"routing_key": key, "event_action": "trigger", "dedup_key": dedup, "payload": payload})
    };
    let (status, body) =
        t.post_as(None, "/v1/integrations/events-v2", page("web1-slow", "web1 is slow", Some("web1"))).await;
    assert_eq!(status, 202, "{body}");
    let from = body["page"].as_str().or(body["dedup_key"].as_str()).unwrap().to_string();
    let (_, pages) = t.get("/v1/pages?status=open").await;
    let from = pages
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["summary"] == "web1 is slow")
        .map(|p| p["id"].as_str().unwrap().to_string())
        .unwrap_or(from);
    let (status, incident) = t
        .post(
            "/v1/incidents",
            json!({"title": "web1 writes stall", "severity": "major", "components": ["PostgreSQL"], "page": from}),
        )
        .await;
    assert_eq!(status, 201, "{incident}");
    let id = incident["id"].as_str().unwrap().to_string();
    // Unrelated: a page of no service, a page of a service Drover does not run.
    for (k, s, svc) in [("disk-x", "disk of some box", None), ("other", "elsewhere slow", Some("not-ours"))] {
        let (status, _) = t.post_as(None, "/v1/integrations/events-v2", page(k, s, svc)).await;
        assert_eq!(status, 202);
    }
    // The engine acts during the incident: the primary crashes, a follower is promoted.
    let (status, body) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert!(status < 300, "{body}");
    poll(Duration::from_secs(30), "a new writable primary", || async {
        let s = t.service("web1").await;
        let p = common::primary(&s);
        (p["id"] != old_primary.as_str() && p["writable"] == true && p["state"] == "available").then_some(())
    })
    .await;
    // Notes: refused empty or for a viewer, kept otherwise.
    let (status, body) = t.post(&format!("/v1/incidents/{id}/notes"), json!({"message": " "})).await;
    assert_eq!(status, 400, "{body}");
    let viewer = t.token(json!({"name": "watcher", "role": "viewer"})).await;
    let (status, _) = t.post_as(Some(&viewer), &format!("/v1/incidents/{id}/notes"), json!({"message": "seen"})).await;
    assert_eq!(status, 403);
    let (status, body) = t.post(&format!("/v1/incidents/{}/notes", uuid_like()), json!({"message": "x"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, noted) =
        t.post(&format!("/v1/incidents/{id}/notes"), json!({"message": "Crash was the chaos drill."})).await;
    assert_eq!(status, 201, "{noted}");
    assert_eq!(noted["notes"][0]["by"], "admin");

    let (status, timeline) = t.get_as(Some(&viewer), &format!("/v1/incidents/{id}/timeline")).await;
    assert_eq!(status, 200, "{timeline}");
    let entries = timeline.as_array().unwrap();
    let of = |source: &str| -> Vec<String> {
        entries.iter().filter(|e| e["source"] == source).map(|e| e["text"].as_str().unwrap().to_string()).collect()
    };
    let (updates, notes, pages, events, actions) = (of("update"), of("note"), of("page"), of("event"), of("action"));
    assert!(updates.iter().any(|u| u.contains("We are investigating")), "{updates:?}");
    assert_eq!(notes, vec!["admin: Crash was the chaos drill.".to_string()]);
    assert!(pages.iter().any(|p| p.contains("declared from") && p.contains("web1 is slow")), "{pages:?}");
    assert!(pages.iter().any(|p| p.contains("incident commander's page")), "{pages:?}");
    assert!(!pages.iter().any(|p| p.contains("disk of some box") || p.contains("elsewhere slow")), "{pages:?}");
    assert!(
        events.iter().filter(|e| e.starts_with("web1: ")).count() >= 2
            && events.iter().all(|e| e.starts_with("web1: ")),
        "the engine's events of web1: {events:?}"
    );
    assert!(actions.iter().any(|a| a.starts_with("promote")), "the promotion among the actions: {actions:?}");
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    let (status, _) = t.get(&format!("/v1/incidents/{}/timeline", uuid_like())).await;
    assert_eq!(status, 404);
    // The review is filled with the same timeline.
    let r = t.http.get(t.at(&format!("/v1/incidents/{id}/review"))).send().await.unwrap();
    let md = r.text().await.unwrap();
    for source in ["[update]", "[note]", "[page]", "[event]", "[action]"] {
        assert!(md.contains(source), "{source} in the review: {md}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_incident_whose_commander_was_never_paged_is_paged_at_the_next_start() {
    // What a kill -9 between storing an incident and paging leaves behind.
    let dir = tempfile::tempdir().unwrap();
    let now = drover_model::Timestamp(jiff::Timestamp::now().as_microsecond());
    // The pager's store as the server will open it (a PostgreSQL store's
    // with DROVER_TEST_STORE=postgres).
    let pg = common::on_postgres().then(|| common::pg_for(dir.path()));
    let store = match &pg {
        Some(pg) => {
            // Its own runtime: connected outside this test's.
            let url = pg.url("postgres");
            let store = std::thread::spawn(move || drover_store::PgStore::connect(&url).unwrap()).join().unwrap();
            drover_store::oncall::OncallStore::postgres(std::sync::Arc::new(store))
        }
        None => drover_store::oncall::OncallStore::open(&dir.path().join("oncall.db")).unwrap(),
    };
    let stranded = drover_oncall::status::Incident::declare(
        drover_model::IncidentId(uuid::Uuid::now_v7()),
        "Stranded before its page".into(),
        drover_oncall::status::IncidentSeverity::Critical,
        vec!["PostgreSQL".into()],
        None,
        "alice".into(),
        Some("incident-commander".into()),
        None,
        now,
    );
    store.put_incident(&stranded).unwrap();
    drop(store);
    let mut t = common::start_in(dir, |_| {}).await;
    let (_, incident) = t.get(&format!("/v1/incidents/{}", stranded.id)).await;
    let page = incident["commander_page"].as_str().expect("paged at start").to_string();
    let (_, page) = t.get(&format!("/v1/pages/{page}")).await;
    assert_eq!((page["origin"].as_str(), page["status"].as_str()), (Some("incident"), Some("triggered")), "{page}");
    assert_eq!(page["notified"], json!(["incident-commander"]), "{page}");
    // A second start finds it paged: no second page.
    let dir = {
        t.stop().await;
        t.dir
    };
    let t = common::start_in(dir, |_| {}).await;
    let (_, pages) = t.get("/v1/pages").await;
    let commander_pages = pages.as_array().unwrap().iter().filter(|p| p["origin"] == "incident").count();
    assert_eq!(commander_pages, 1, "{pages}");
}

fn uuid_like() -> &'static str {
    "0190a3e4-0000-7000-8000-000000000000"
}
