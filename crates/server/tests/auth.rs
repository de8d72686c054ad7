//! Authentication and authorization through real HTTP: every route of
//! /openapi.json walked with no token, a garbage, an expired and a revoked
//! token and a token of each role, against the permission table; team
//! limits; cross-site requests; the
//! failed-authentication limit; forged heartbeats refused and audited.

mod common;

use drover_model::TokenRole;
use drover_server::auth::permissions::{self, Permission};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A client bound to a loopback address of its own (127.0.0.0/8 is all
/// loopback on Linux), so the failed-authentication limit, which is per
/// address, counts each walk step on its own.
fn client_from_own_address(token: Option<&str>) -> reqwest::Client {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
    let mut b = drover_agent::tls::builder().timeout(Duration::from_secs(20)).local_address(IpAddr::V4(ip));
    if let Some(t) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        b = b.default_headers(headers);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_the_permission_table_says() {
    let mut t = common::start().await;
    let service = t.create_service("walk", 1).await;
    let instance = common::primary(&service)["id"].as_str().unwrap().to_string();
    let (_, doc) = t.get("/openapi.json").await;

    // The document and the table list the same operations.
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    for (method, path) in &documented {
        assert!(permissions::lookup(method, path).is_some(), "{method} {path} is documented but not in the table");
    }
    // The dashboard's HTML routes are not the API: they are left out of the document.
    for rule in permissions::TABLE.iter().filter(|r| r.permission != permissions::Permission::Session) {
        let known = documented.iter().any(|(m, p)| m == rule.method && p == rule.path);
        let name = format!("{} {}", rule.method, rule.path);
        assert!(known, "{name} is in the table but not documented");
    }

    let mut callers: Vec<(String, Option<String>, Option<TokenRole>)> = vec![
        ("no token".into(), None, None),
        ("garbage".into(), Some("drv_0000000000000000000000000000000000000000000000000000000000000000".into()), None),
        ("not bearer-shaped".into(), Some("hunter2".into()), None),
    ];
    let expired = t.token(json!({"name": "short-lived", "role": "admin", "expires_in": "1s"})).await;
    let revoked = t.token(json!({"name": "gone", "role": "admin"})).await;
    let (_, list) = t.get("/v1/tokens").await;
    let gone_id =
        list.as_array().unwrap().iter().find(|r| r["name"] == "gone").unwrap()["id"].as_str().unwrap().to_string();
    let (status, _) = t.delete(&format!("/v1/tokens/{gone_id}")).await;
    assert_eq!(status, 200);
    callers.push(("revoked".into(), Some(revoked), None));
    for role in TokenRole::ALL {
        let mut body = json!({"name": format!("walk-{role}"), "role": role.as_str()});
        if role == TokenRole::Agent {
            body["host"] = drover_server::host_name().into();
        }
        callers.push((role.to_string(), Some(t.token(body).await), Some(role)));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    callers.push(("expired".into(), Some(expired), None));

    let concrete = |path: &str| {
        // An agent takes the actions of its own host only (the walk's agent token's).
        path.replace("/v1/hosts/{name}/actions", &format!("/v1/hosts/{}/actions", drover_server::host_name()))
            .replace("{name}", "walk")
            .replace("/v1/instances/{id}", &format!("/v1/instances/{instance}"))
            .replace("/v1/tokens/{id}", "/v1/tokens/no-such-token")
            .replace("{id}", "01890a5d-ac96-774b-bcce-b302099a8057")
    };
    let mut wrong = Vec::new();
    // Admin last: it may delete the service the others use.
    callers.sort_by_key(|(_, _, role)| *role == Some(TokenRole::Admin));
    for (who, token, role) in &callers {
        for (method, path) in &documented {
            let rule = permissions::lookup(method, path).unwrap();
            let http = client_from_own_address(token.as_deref());
            let url = t.at(&concrete(path));
            let request = match method.as_str() {
                "GET" => http.get(url),
                "DELETE" => http.delete(url),
                "PUT" => http.put(url).json(&json!({})),
                _ => http.post(url).json(&json!({})),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let ok = match (rule.permission, role) {
                (Permission::Public, _) => (200..300).contains(&status),
                // The handler checks the link's signature, the feed key or another
                // node's seal (none here: 403), never a bearer token.
                (Permission::SignedLink, _) => {
                    let error = body["error"].as_str().unwrap_or("");
                    status == 403 && (error.contains("sig") || error.contains("feed key") || error.contains("seal"))
                }
                // Events API v2: without a valid bearer, `{}` has no routing_key: 401.
                (_, None) => status == 401,
                (p, Some(role)) if p.allows(*role) => status != 401 && status != 403 && status < 500,
                (_, Some(_)) => status == 403,
            };
            if !ok || (status >= 400 && !body["error"].is_string()) {
                wrong.push(format!("{who}: {method} {path} -> {status} {body}"));
            }
        }
    }
    assert!(wrong.is_empty(), "answers that do not match the permission table:\n{}", wrong.join("\n"));

    // Every refusal is in the audit trail, named.
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let audit = audit.as_array().unwrap();
    for actor in ["anonymous", "invalid token", "short-lived", "gone", "walk-viewer", "walk-integration"] {
        assert!(
            audit.iter().any(|a| a["actor"] == actor && a["outcome"].as_str().unwrap().starts_with("refused")),
            "no refusal of {actor} in the audit trail"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_token_sees_and_commands_only_its_team() {
    let mut t = common::start().await;
    let ours =
        t.post("/v1/services", json!({"name": "ours", "engine": "postgres", "followers": 0, "team": "payments"})).await;
    assert_eq!(ours.0, 201, "{}", ours.1);
    t.create_service("theirs", 0).await;
    let pay = t.token(json!({"name": "pay-ops", "role": "operator", "team": "payments"})).await;
    let (status, list) = t.get_as(Some(&pay), "/v1/services").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ours"]);
    let (status, _) = t.get_as(Some(&pay), "/v1/services/theirs").await;
    assert_eq!(status, 404, "another team's service does not exist for this token");
    let (status, _) = t.post_as(Some(&pay), "/v1/services/theirs/switchover", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = t.post_as(Some(&pay), "/v1/services/ours/resume", json!({})).await;
    assert_ne!(status, 404);
    let (status, body) = t
        .post_as(
            Some(&pay),
            "/v1/services",
            json!({"name": "sneaky", "engine": "redis", "followers": 0, "team": "platform"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        t.post_as(Some(&pay), "/v1/services", json!({"name": "mine", "engine": "redis", "followers": 0})).await;
    assert_eq!((status, body["team"].as_str()), (201, Some("payments")), "{body}");
    let (_, events) = t.get_as(Some(&pay), "/v1/events").await;
    assert!(events.as_array().unwrap().iter().all(|e| e["team"] == "payments"), "{events}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_changes_nothing_even_with_a_valid_token() {
    let mut t = common::start().await;
    t.create_service("target", 0).await;
    let admin = common::admin_token(t.dir.path());
    let http = drover_agent::tls::client();
    let at = |p: &str| t.at(p);
    // Forms a web page can send without asking (no preflight), with and without the token.
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", "name=target"),
        ("text/plain", "{\"name\":\"x\"}"),
        ("multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n"),
    ] {
        for token in [None, Some(admin.as_str())] {
            let mut r = http.post(at("/v1/services/target/switchover")).header("content-type", content_type).body(body);
            if let Some(token) = token {
                r = r.bearer_auth(token);
            }
            let status = r.send().await.unwrap().status().as_u16();
            assert!(status == 401 || status == 415, "{content_type} with token {}: {status}", token.is_some());
        }
    }
    // A foreign Origin is refused even with a valid token and a JSON body.
    let r = http
        .delete(at("/v1/services/target"))
        .bearer_auth(&admin)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(at("/v1/services/target/switchover"))
        .bearer_auth(&admin)
        .header("origin", "https://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A token in a cookie or the query string is no token.
    let r = http.get(at(&format!("/v1/services?access_token={admin}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(at("/v1/services")).header("cookie", format!("token={admin}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Nothing happened to the service.
    let s = t.service("target").await;
    assert_ne!(s["state"], "deleting", "{s}");
    let (_, actions) = t.get("/v1/actions?service=target").await;
    assert!(
        actions.as_array().unwrap().iter().all(|a| a["kind"] == "provision"),
        "only its provisioning ran: {actions}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address_and_valid_tokens_stay_served() {
    let mut t = common::start().await;
    let http = client_from_own_address(Some("drv_nope"));
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(http.get(t.at("/v1/services")).send().await.unwrap().status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let (_, audit) = t.get("/v1/audit?limit=10000").await;
    let refusals = audit.as_array().unwrap().iter().filter(|a| a["actor"] == "invalid token").count();
    assert!(refusals < 30, "the audit trail holds {refusals} rows for 60 refused requests");
    // The same address with a valid token is served.
    let (status, _) = t.get("/v1/services").await;
    assert_eq!(status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_only_from_the_agent_of_the_instances_host_and_forgeries_are_audited() {
    let mut t = common::start().await;
    let service = t.create_service("hb-owner", 0).await;
    let id = common::primary(&service)["id"].as_str().unwrap().to_string();
    let beat =
        json!({"beats": [{"instance": id, "seq": 9_000_000_000u64, "facts": {"role": "primary", "writable": true}}]});
    let other_host = t.token(json!({"name": "agent-elsewhere", "role": "agent", "host": "elsewhere"})).await;
    let integration = t.integration_token("platform").await;
    let operator = t.token(json!({"name": "ops", "role": "operator"})).await;
    let (status, body) = t.post_as(Some(&other_host), "/v1/heartbeats", beat.clone()).await;
    assert_eq!(status, 403, "{body}");
    for token in [&integration, &operator, &common::admin_token(t.dir.path())] {
        let (status, body) = t.post_as(Some(token), "/v1/heartbeats", beat.clone()).await;
        assert_eq!(status, 403, "{body}");
    }
    let own = t.agent_token().await;
    let (status, body) = t.post_as(Some(&own), "/v1/heartbeats", beat).await;
    assert_eq!(status, 200, "{body}");
    let (_, audit) = t.get("/v1/audit").await;
    let forged: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|a| a["command"] == "POST /v1/heartbeats").collect();
    for actor in ["agent-elsewhere", "alerts-platform", "ops", "admin"] {
        assert!(forged.iter().any(|a| a["actor"] == actor), "no refused heartbeat of {actor}: {forged:?}");
    }
    t.stop().await;
}

/// An agent host's batch is answered within its budget while the engine
/// is stalled (its store's write lock held by another connection), and a
/// forged one among them is still checked before anything reaches the
/// engine: refused and audited once the engine is back, its facts never
/// seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_answered_during_an_engine_stall_never_reaches_the_engine() {
    let mut t = common::start().await;
    let service = t.create_service("hb-stall", 0).await;
    let id = common::primary(&service)["id"].as_str().unwrap().to_string();
    let other_host = t.token(json!({"name": "agent-stalled", "role": "agent", "host": "elsewhere"})).await;
    let forged = json!({"lease_ms": 1000, "beats": [{"instance": id, "seq": 9_000_000_000_000_000u64,
        "facts": {"role": "primary", "writable": true, "connections": 4242}}]});

    let db = t.dir.path().join("drover.db");
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let locker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
        conn.execute_batch("ROLLBACK").unwrap();
    });
    held_rx.recv().unwrap();
    // A change the engine must make durable: it waits for the lock, and so
    // does every input behind it.
    let labels = {
        let (http, url) = (t.http.clone(), t.at("/v1/services/hb-stall/labels"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = http.put(url).json(&json!({"labels": {"stalled": "yes"}})).send().await.unwrap();
            (r.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, body) = t.post_as(Some(&other_host), "/v1/heartbeats", forged).await;
    let answered_in = started.elapsed();
    assert_eq!((status, body["pending"].as_u64()), (200, Some(1)), "{body}");
    assert!(answered_in < Duration::from_millis(800), "answered after {answered_in:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    release_tx.send(()).unwrap();
    locker.join().unwrap();
    let (status, stalled_for) = labels.await.unwrap();
    assert_eq!(status, 200);
    assert!(stalled_for >= Duration::from_millis(900), "the engine did not stall: {stalled_for:?}");

    // Once the engine is back, the batch is checked: refused and audited.
    common::poll(Duration::from_secs(10), "the forged batch refused and audited", || async {
        let (_, audit) = t.get("/v1/audit").await;
        audit
            .as_array()?
            .iter()
            .any(|a| a["command"] == "POST /v1/heartbeats" && a["actor"] == "agent-stalled")
            .then_some(())
    })
    .await;
    let (_, instance) = t.get(&format!("/v1/instances/{id}")).await;
    assert_ne!(instance["facts"]["connections"], json!(4242), "a forged beat reached the engine: {instance}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shown_once_stored_hashed_and_revocation_is_immediate() {
    let mut t = common::start().await;
    let (status, created) =
        t.post("/v1/tokens", json!({"name": "ci-reader", "role": "viewer", "expires_in": "30d"})).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("drv_") && token.len() == 4 + 64, "{token}");
    let (status, _) = t.post("/v1/tokens", json!({"name": "ci-reader", "role": "viewer"})).await;
    assert_eq!(status, 409, "names are unique among live tokens");
    for bad in [
        json!({"name": "a", "role": "agent"}),
        json!({"name": "b", "role": "viewer", "host": "h"}),
        json!({"name": "bad name", "role": "viewer"}),
        json!({"name": "c", "role": "viewer", "expires_in": "soon"}),
        json!({"name": "d", "role": "integration", "team": "no-such-team"}),
    ] {
        let (status, body) = t.post("/v1/tokens", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, list) = t.get("/v1/tokens").await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains(&token) && !text.contains("hash") && !text.contains(&common::admin_token(t.dir.path())));
    let (status, _) = t.get_as(Some(&token), "/v1/services").await;
    assert_eq!(status, 200);
    let (status, _) = t.get_as(Some(&token), "/v1/tokens").await;
    assert_eq!(status, 403, "a viewer cannot list tokens");
    let (status, _) = t.delete(&format!("/v1/tokens/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    let (status, body) = t.get_as(Some(&token), "/v1/services").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("revoked"), "{body}");

    // Neither token is in the clear anywhere in the data dir but admin.token.
    t.stop().await;
    let admin = common::admin_token(t.dir.path());
    for entry in walk(t.dir.path()) {
        if entry.file_name().is_some_and(|n| n == "admin.token") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&token) && !text.contains(&admin), "a token in clear in {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
