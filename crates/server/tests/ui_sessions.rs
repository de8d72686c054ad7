//! The dashboard's sessions over plain HTTP: the login form, the cookie's
//! attributes, a session that ends when its token is revoked, and forms
//! refused without the session's CSRF token, from another site or from a
//! viewer. (The browser test walks the same pages in Chromium.)

mod common;

use serde_json::json;
use std::time::Duration;

/// A form body (the values here are tokens and hex: nothing to escape).
trait FormBody {
    fn form_of(self, field: &str, value: &str) -> Self;
}
impl FormBody for reqwest::RequestBuilder {
    fn form_of(self, field: &str, value: &str) -> Self {
        assert!(value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{value}");
        self.header("content-type", "application/x-www-form-urlencoded").body(format!("{field}={value}"))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in with `token`; the session cookie (`name=value`) and the raw header.
async fn login(t: &common::TestServer, token: &str) -> (String, String) {
    let r = client().post(t.at("/ui/login")).form_of("token", token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303, "a login redirects");
    assert_eq!(r.headers()["location"], "/ui/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

async fn get(t: &common::TestServer, cookie: Option<&str>, path: &str) -> (u16, String) {
    let mut r = client().get(t.at(path));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_with_their_token_and_forms_need_the_session_the_origin_and_the_role() {
    let t = common::start().await;
    t.create_service("ui1", 0).await;
    t.wait_available("ui1", Duration::from_secs(15)).await;
    let key = t.integration_token("platform").await;
    let (status, _) = t
        .post_as(
            None,
            "/v1/integrations/events-v2",
            json!({"routing_key": key, "event_action": "trigger", "dedup_key": "d1",
                   "payload": {"summary": "disk almost full", "source": "x", "severity": "critical"}}),
        )
        .await;
    assert_eq!(status, 202);
    let (_, pages) = t.get("/v1/pages").await;
    let page = pages[0]["id"].as_str().unwrap().to_string();

    // No session: the login form, with one input named token.
    let (status, html) = get(&t, None, "/ui/").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"token\""), "{html}");
    // A wrong token: the form again, 401, an HTML page (not the API's JSON).
    let r = client().post(t.at("/ui/login")).form_of("token", "drv_nope").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    // A login posted by another site's page is refused.
    let admin = common::admin_token(t.dir.path());
    let r = client()
        .post(t.at("/ui/login"))
        .header("origin", "https://evil.example")
        .form_of("token", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let viewer = t.token(json!({"name": "night-viewer", "role": "viewer"})).await;
    let (cookie, raw) = login(&t, &viewer).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(raw.contains(attribute), "{raw}");
    }
    let (status, html) = get(&t, Some(&cookie), "/ui/services/ui1").await;
    assert_eq!(status, 200);
    let (_, service) = t.get("/v1/services/ui1").await;
    let id = service["instances"][0]["id"].as_str().unwrap();
    assert!(html.contains(id), "the instance's full id: {html}");
    // The checks with their evidence, as the API has them.
    let (_, checks) = t.get("/v1/services/ui1/checks").await;
    let backups = checks["backups"]["status"].as_str().unwrap();
    assert!(html.contains(&format!("data-check=\"backups\" data-status=\"{backups}\"")), "{html}");
    let (status, html) = get(&t, Some(&cookie), "/ui/images").await;
    assert_eq!(status, 200);
    let (_, images) = t.get("/v1/images").await;
    assert!(html.contains(images[0]["id"].as_str().unwrap()), "every image listed: {html}");
    let (status, html) = get(&t, Some(&cookie), "/ui/rollouts").await;
    assert_eq!((status, html.contains("data-refresh=\"/ui/rollouts/live\"")), (200, true), "{html}");
    assert_eq!(get(&t, None, "/ui/rollouts/live").await.0, 401, "no session: no fragment");
    let (status, html) = get(&t, Some(&cookie), "/ui/pages").await;
    assert_eq!(status, 200);
    assert!(html.contains("disk almost full"));
    assert!(!html.contains(">Acknowledge<"), "a viewer gets no button");
    let csrf = csrf_of(&html);
    // A viewer posting the form anyway is refused.
    let ack = |cookie: String, csrf: String, origin: Option<&'static str>| {
        let url = t.at(&format!("/ui/pages/{page}/ack"));
        async move {
            let mut r = client().post(url).header("cookie", cookie).form_of("csrf", &csrf);
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(ack(cookie.clone(), csrf.clone(), None).await, 403);

    // An operator: no CSRF token, a wrong one or another origin are refused; the right form acknowledges.
    let operator = t.token(json!({"name": "night-operator", "role": "operator"})).await;
    let (op_cookie, _) = login(&t, &operator).await;
    let (_, html) = get(&t, Some(&op_cookie), "/ui/pages").await;
    assert!(html.contains(">Acknowledge<"), "{html}");
    let op_csrf = csrf_of(&html);
    assert_eq!(ack(op_cookie.clone(), "0".repeat(64), None).await, 403);
    assert_eq!(ack(op_cookie.clone(), op_csrf.clone(), Some("https://evil.example")).await, 403);
    let (_, p) = t.get(&format!("/v1/pages/{page}")).await;
    assert_eq!(p["status"], "triggered", "nothing acknowledged yet: {p}");
    assert_eq!(ack(op_cookie.clone(), op_csrf.clone(), None).await, 303);
    let (_, p) = t.get(&format!("/v1/pages/{page}")).await;
    assert_eq!((p["status"].as_str(), p["acknowledged_by"].as_str()), (Some("acknowledged"), Some("night-operator")));

    // The API never takes the cookie.
    let r = client().get(t.at("/v1/services")).header("cookie", &op_cookie).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Revoking the token ends its sessions at once.
    let (_, list) = t.get("/v1/tokens").await;
    let tid = list.as_array().unwrap().iter().find(|r| r["name"] == "night-viewer").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.delete(&format!("/v1/tokens/{tid}")).await;
    let (status, html) = get(&t, Some(&cookie), "/ui/services/ui1").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"token\"") && !html.contains(id), "back to the login form");
}

/// Two nodes of a fleet split into two shards on one PostgreSQL store:
/// a session opened through one is good on the other (the sessions are in
/// the store they share), a service's page is rendered by its shard's
/// holder whichever node was asked, the list and the overview are the
/// whole fleet's, and a logout through one node ends the session on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_is_good_on_every_node_of_a_split_fleet() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pg = common::pg_for(dir_a.path());
    let url = pg.url("postgres");
    let split = |node: &'static str, url: String| {
        move |o: &mut drover_server::ServeOptions| {
            o.store = Some(url);
            o.node = Some(node.into());
            o.shards = Some(2);
            o.lease_ttl = Duration::from_secs(2);
        }
    };
    let a = common::start_in(dir_a, split("a", url.clone())).await;
    // The same key (a node started with another is refused) and the first
    // node's admin token.
    for file in ["secret.key", "admin.token"] {
        std::fs::copy(a.dir.path().join(file), dir_b.path().join(file)).unwrap();
    }
    let b = common::start_in(dir_b, split("b", url)).await;
    let holders = || async {
        let (_, cluster) = a.get("/v1/cluster").await;
        cluster["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["shards"] == 1).count())
    };
    common::poll(Duration::from_secs(30), "one shard each", || async { (holders().await == 2).then_some(()) }).await;
    let in_shard = |shard: u16| {
        (0..).map(|i| format!("page-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == shard).unwrap()
    };
    let names = [in_shard(0), in_shard(1)];
    for name in &names {
        // Right after the shards moved, a node may not know the other's
        // holder yet: the create is then kept for later (202), and a
        // second one finds the name taken (409).
        let (status, body) = a.post("/v1/services", json!({"name": name, "engine": "postgres", "followers": 0})).await;
        assert!(status == 201 || status == 202, "{body}");
        common::poll(Duration::from_secs(20), "created through a", || async {
            (a.get(&format!("/v1/services/{name}")).await.0 == 200).then_some(())
        })
        .await;
    }

    let (cookie, _) = login(&a, &common::admin_token(a.dir.path())).await;
    for node in [&a, &b] {
        for name in &names {
            let (status, page) = get(node, Some(&cookie), &format!("/ui/services/{name}")).await;
            assert_eq!(status, 200, "{name} through {}: {page}", node.url);
            assert!(page.contains(name.as_str()) && !page.contains("name=\"token\""), "the page, not the login form");
        }
        let (status, page) = get(node, Some(&cookie), "/ui/pages").await;
        assert_eq!(status, 200);
        assert!(!page.contains("name=\"token\""), "shard 0's holder knows the session: {page}");
    }
    // The list and the overview through either node are the whole fleet's.
    for name in &names {
        a.wait_available(name, Duration::from_secs(30)).await;
    }
    for node in [&a, &b] {
        let (status, page) = get(node, Some(&cookie), "/ui/services").await;
        assert_eq!(status, 200, "{page}");
        for name in &names {
            assert!(page.contains(&format!(">{name}<")), "{name} listed through {}: {page}", node.url);
        }
        common::poll(Duration::from_secs(15), "the overview counts both shards' services", || async {
            let (_, page) = get(node, Some(&cookie), "/ui/").await;
            page.contains("PostgreSQL</h2><p>2 live").then_some(())
        })
        .await;
    }
    // Logged out through b: the session ends on a too.
    let (_, page) = get(&b, Some(&cookie), "/ui/pages").await;
    let csrf = csrf_of(&page);
    let r = client()
        .post(b.at("/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", b.url.clone())
        .form_of("csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let (_, page) = get(&a, Some(&cookie), &format!("/ui/services/{}", names[0])).await;
    assert!(page.contains("name=\"token\""), "logged out everywhere: {page}");
    let mut a = a;
    let mut b = b;
    b.stop().await;
    a.stop().await;
    drop(pg);
}
