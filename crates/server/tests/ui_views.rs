//! The dashboard's people views over plain HTTP (issue 15): the pager
//! view's weekly chart, the CVE audit beside the images, runbooks with a
//! dry run and the two-person approval, incidents declared, updated and
//! noted from forms, their timeline; a viewer reads them all and gets no
//! form, and its posts are refused. (The browser test walks some of them
//! in Chromium.)

mod common;

use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Percent-encodes a form value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Session<'a> {
    t: &'a common::TestServer,
    cookie: String,
}

impl<'a> Session<'a> {
    async fn login(t: &'a common::TestServer, token: &str) -> Session<'a> {
        let r = client()
            .post(t.at("/ui/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}", enc(token)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "a login redirects");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        Session { t, cookie: set.split(';').next().unwrap().to_string() }
    }
    async fn get(&self, path: &str) -> (u16, String) {
        let r = client().get(self.t.at(path)).header("cookie", &self.cookie).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    /// Posts a form with the session's CSRF token (read from `from`);
    /// the status and the redirect's target.
    async fn post(&self, from: &str, path: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
        let (_, html) = self.get(from).await;
        let csrf = csrf_of(&html);
        let mut body = format!("csrf={csrf}");
        for (k, v) in fields {
            body += &format!("&{}={}", enc(k), enc(v));
        }
        let r = client()
            .post(self.t.at(path))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let location = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("").to_string();
        (status, location, r.text().await.unwrap())
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

fn has_post_form(html: &str, action: &str) -> bool {
    html.contains(&format!("<form method=\"post\" action=\"{action}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pager_audit_runbooks_and_incidents_views_give_forms_to_operators_and_read_only_views_to_viewers() {
    let t = common::start().await;
    t.create_service("shop", 1).await;
    t.wait_available("shop", Duration::from_secs(30)).await;
    let key = t.integration_token("platform").await;
    let (status, _) = t
        .post_as(
            None,
            "/v1/integrations/events-v2",
            json!({"routing_key": key, "event_action": "trigger", "dedup_key": "shop-lag",
                   "payload": {"summary": "shop lags", "source": "x", "severity": "critical",
                               "custom_details": {"service": "shop"}}}),
        )
        .await;
    assert_eq!(status, 202);
    let admin = Session::login(&t, &common::admin_token(t.dir.path())).await;
    let viewer_token = t.token(json!({"name": "watcher", "role": "viewer"})).await;
    let viewer = Session::login(&t, &viewer_token).await;
    let second_token = t.token(json!({"name": "second-operator", "role": "operator"})).await;
    let second = Session::login(&t, &second_token).await;

    // Nav links to the new views on every page.
    let (_, home) = admin.get("/ui/").await;
    for link in ["/ui/pager", "/ui/incidents", "/ui/runbooks"] {
        assert!(home.contains(&format!("href=\"{link}\"")), "{link} in the nav: {home}");
    }

    // The pager: an inline SVG chart split bot-tier vs human, the figures, the open pages' link.
    for s in [&admin, &viewer] {
        let (status, html) = s.get("/ui/pager").await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("<svg") && html.contains("data-chart=\"pages-per-week\""), "{html}");
        assert!(html.contains("role=\"img\"") && html.contains("<title id=\"chart-title\">"), "{html}");
        // This week's page sits with the bot tier: nobody was notified yet.
        assert!(html.contains("class=\"bot\"") && !html.contains("class=\"human\""), "{html}");
        assert!(html.contains("1 pages, 1 handled by the bot tier alone, 0 reached a person"), "{html}");
        assert!(html.contains("<th scope=\"col\">Bot tier alone</th>"), "{html}");
        assert!(html.contains("href=\"/ui/pages\">Open pages: 1</a>"), "{html}");
    }
    let (status, _) = admin.get("/ui/pager?team=nobody").await;
    assert_eq!(status, 404);

    // The CVE audit beside the images.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap() {
                Value::Array(items) => records.extend(items),
                one => records.push(one),
            }
        }
    }
    let (status, report) = t.post("/v1/advisories", Value::Array(records)).await;
    assert_eq!(status, 201, "{report}");
    let (status, html) = viewer.get("/ui/images").await;
    assert_eq!(status, 200);
    assert!(html.contains("<h2 id=\"audit\">CVE audit</h2>"), "{html}");
    let row = &html[html.find("<tr data-advisory=\"DSA-6090-1\">").expect("the finding's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("openssl") && row.contains("3.0.17") && row.contains("3.0.19-1~deb12u3"), "{row}");
    assert!(row.contains("href=\"/ui/services/shop\"") && row.contains("<td>2</td>"), "{row}");

    // Runbooks: the viewer reads, the operator dry-runs and requests; another person approves.
    let (_, html) = viewer.get("/ui/runbooks").await;
    assert!(html.contains("data-runbook=\"force-failover\""), "{html}");
    assert!(!has_post_form(&html, "/ui/runbooks/"), "no form for a viewer: {html}");
    let (_, html) = admin.get("/ui/runbooks").await;
    assert!(has_post_form(&html, "/ui/runbooks/force-failover/runs"), "{html}");
    assert!(html.contains("<label for=\"force-failover-service\">service (required)</label>"), "{html}");
    let (status, to, _) = admin
        .post("/ui/runbooks", "/ui/runbooks/force-failover/runs", &[("param.service", "shop"), ("mode", "dry_run")])
        .await;
    assert_eq!(status, 303);
    let (_, html) = admin.get(&to).await;
    assert!(html.contains("data-state=\"planned\"") && html.contains("<code>services.failover</code>"), "{html}");
    let before = common::primary(&t.service("shop").await)["id"].clone();
    let (status, to, _) = admin
        .post("/ui/runbooks", "/ui/runbooks/force-failover/runs", &[("param.service", "shop"), ("mode", "run")])
        .await;
    assert_eq!(status, 303);
    let (_, html) = admin.get(&to).await;
    assert!(html.contains("data-state=\"awaiting_approval\""), "{html}");
    assert!(!html.contains("Approve and run"), "the requester cannot approve: {html}");
    let (_, html) = viewer.get(&to).await;
    assert!(!html.contains("Approve and run"), "nor a viewer: {html}");
    let (status, _, _) = viewer.post(&to, &format!("{to}/approve"), &[]).await;
    assert_eq!(status, 403);
    let (_, html) = second.get(&to).await;
    assert!(html.contains("Approve and run"), "{html}");
    let (status, back, _) = second.post(&to, &format!("{to}/approve"), &[]).await;
    assert_eq!((status, back.as_str()), (303, to.as_str()));
    let (_, html) = second.get(&to).await;
    assert!(html.contains("second-operator"), "approved by: {html}");
    assert!(!html.contains("data-state=\"awaiting_approval\""), "{html}");
    common::poll(Duration::from_secs(30), "the failover the approved run asked for", || async {
        let p = common::primary(&t.service("shop").await);
        (p["id"] != before && p["state"] == "available").then_some(())
    })
    .await;

    // Incidents: declared from the form (the commander paged), updated, noted.
    let (_, html) = viewer.get("/ui/incidents").await;
    assert!(!has_post_form(&html, "/ui/incidents"), "no form for a viewer: {html}");
    let (status, _, _) = viewer.post("/ui/pager", "/ui/incidents", &[("title", "x"), ("severity", "minor")]).await;
    assert_eq!(status, 403);
    let (status, to, _) = admin
        .post(
            "/ui/incidents",
            "/ui/incidents",
            &[("title", "Shop writes stall"), ("severity", "major"), ("components", "PostgreSQL")],
        )
        .await;
    assert_eq!(status, 303, "declared");
    assert!(to.starts_with("/ui/incidents/"), "{to}");
    let path = to.split('?').next().unwrap().to_string();
    let id = path.trim_start_matches("/ui/incidents/").to_string();
    let (_, html) = admin.get(&to).await;
    assert!(html.contains("the incident commander was paged"), "{html}");
    assert!(html.contains("incident-commander (paged: page"), "{html}");
    let (status, _, _) = admin
        .post(&path, &format!("{path}/updates"), &[("status", "identified"), ("message", "A follower lagged.")])
        .await;
    assert_eq!(status, 303);
    let (status, _, _) = admin.post(&path, &format!("{path}/notes"), &[("message", "Failed over by runbook.")]).await;
    assert_eq!(status, 303);
    let (_, html) = viewer.get(&path).await;
    assert!(!has_post_form(&html, &path), "no form for a viewer: {html}");
    assert!(html.contains("<tr data-source=\"note\">") && html.contains("Failed over by runbook."), "{html}");
    assert!(html.contains("<tr data-source=\"page\">"), "the commander's page on the timeline: {html}");
    assert!(html.contains("<tr data-source=\"event\">"), "shop's engine events (its page names it): {html}");
    assert!(html.contains("<tr data-source=\"action\">"), "the failover's actions: {html}");
    assert!(html.contains("data-status=\"identified\""), "{html}");
    // Published where it should be: the public status page (no session), not the note.
    let status_page = reqwest::get(t.at("/status")).await.unwrap().text().await.unwrap();
    assert!(status_page.contains("A follower lagged."), "{status_page}");
    assert!(!status_page.contains("Failed over by runbook."), "notes stay internal");
    let (_, api) = t.get(&format!("/v1/incidents/{id}")).await;
    assert_eq!(api["updates"][1]["by"], "admin", "{api}");
    // A blank message is the API's 400, shown as a page.
    let (status, _, html) =
        admin.post(&path, &format!("{path}/updates"), &[("status", "monitoring"), ("message", " ")]).await;
    assert_eq!(status, 400, "{html}");
    let (status, _) = admin.get("/ui/incidents/not-an-id").await;
    assert_eq!(status, 404);
    let (_, list) = viewer.get("/ui/incidents").await;
    assert!(list.contains(&format!("href=\"/ui/incidents/{id}\">Shop writes stall</a>")), "{list}");
}
