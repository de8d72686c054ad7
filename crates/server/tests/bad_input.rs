//! Every kind of client mistake gets a 4xx with a JSON `error`, and the
//! server keeps answering afterwards. None of this depends on the engine.

mod common;

use serde_json::json;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    headers: &'static [(&'static str, &'static str)],
    expect: u16,
}

fn case(name: &'static str, method: &'static str, path: &'static str, expect: u16) -> Case {
    Case { name, method, path, content_type: None, body: None, headers: &[], expect }
}

fn json_case(name: &'static str, path: &'static str, body: &str, expect: u16) -> Case {
    Case {
        name,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: Some(body.as_bytes().to_vec()),
        headers: &[],
        expect,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_json_4xx_and_the_server_keeps_answering() {
    let t = common::start().await;
    let random_id = "01890a5d-ac96-774b-bcce-b302099a8057";
    let valid_service = r#"{"name":"ok-name","engine":"postgres","followers":1}"#;
    let mut cases = vec![
        json_case("malformed JSON", "/v1/services", r#"{"name": "db1", "engine":"#, 400),
        json_case("not an object", "/v1/services", r#"[1,2,3]"#, 422),
        json_case("missing field", "/v1/services", r#"{"name":"db1"}"#, 422),
        json_case("unknown field", "/v1/services", r#"{"name":"db1","engine":"postgres","folowers":1}"#, 422),
        json_case("unknown engine", "/v1/services", r#"{"name":"db1","engine":"mysql"}"#, 422),
        json_case("wrong type", "/v1/services", r#"{"name":"db1","engine":"postgres","followers":"one"}"#, 422),
        json_case("negative followers", "/v1/services", r#"{"name":"db1","engine":"postgres","followers":-1}"#, 422),
        json_case("invalid name", "/v1/services", r#"{"name":"Bad Name","engine":"postgres"}"#, 400),
        json_case("too many followers", "/v1/services", r#"{"name":"db1","engine":"postgres","followers":99}"#, 400),
        json_case("unknown provider", "/v1/services", r#"{"name":"db1","engine":"postgres","provider":"aws"}"#, 400),
        json_case("empty body", "/v1/services", "", 400),
        json_case(
            "chaos unknown fault",
            "/v1/chaos",
            &format!(r#"{{"instance":"{random_id}","fault":"explode"}}"#),
            422,
        ),
        json_case("chaos bad uuid", "/v1/chaos", r#"{"instance":"nope","fault":"crash"}"#, 422),
        json_case(
            "heartbeat without seq",
            "/v1/heartbeats",
            &format!(r#"{{"beats":[{{"instance":"{random_id}"}}]}}"#),
            422,
        ),
        json_case("heartbeat unknown field", "/v1/heartbeats", r#"{"beats":[],"extra":1}"#, 422),
        json_case(
            "heartbeat bad fact type",
            "/v1/heartbeats",
            &format!(r#"{{"beats":[{{"instance":"{random_id}","seq":1,"facts":{{"connections":"many"}}}}]}}"#),
            422,
        ),
        case("bad uuid in path", "GET", "/v1/instances/not-a-uuid", 400),
        case("unknown instance", "GET", "/v1/instances/01890a5d-ac96-774b-bcce-b302099a8057", 404),
        case("unknown service", "GET", "/v1/services/nope", 404),
        case("actions of unknown service", "GET", "/v1/actions?service=nope", 404),
        case("events bad instance", "GET", "/v1/events?instance=xyz", 400),
        case("events bad limit", "GET", "/v1/events?limit=abc", 400),
        case("events unknown parameter", "GET", "/v1/events?servce=db1", 400),
        case("audit bad limit", "GET", "/v1/audit?limit=-5", 400),
        case("query not UTF-8", "GET", "/v1/events?service=%00%ff", 400),
        case("query truncated UTF-8", "GET", "/v1/actions?service=%C3", 400),
        case("pager query not UTF-8", "GET", "/v1/pages?team=%ff", 400),
        case("path not UTF-8", "GET", "/v1/services/%ff", 400),
        case("unknown route", "GET", "/v1/nothing-here", 404),
        case("unknown root route", "GET", "/", 404),
        case("wrong method on collection", "PUT", "/v1/services", 405),
        case("wrong method on health", "DELETE", "/healthz", 405),
        case("wrong method on heartbeats", "GET", "/v1/heartbeats", 405),
    ];
    cases.push(Case {
        name: "wrong content type",
        method: "POST",
        path: "/v1/services",
        content_type: Some("text/plain"),
        body: Some(valid_service.as_bytes().to_vec()),
        headers: &[],
        expect: 415,
    });
    cases.push(Case {
        name: "no content type",
        method: "POST",
        path: "/v1/services",
        content_type: None,
        body: Some(valid_service.as_bytes().to_vec()),
        headers: &[],
        expect: 415,
    });
    // 17 MiB of valid JSON: over the 16 MiB cap.
    let mut big = br#"{"beats":[],"padding":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 17 * 1024 * 1024));
    big.extend(br#""}"#);
    cases.push(Case {
        name: "oversized body",
        method: "POST",
        path: "/v1/heartbeats",
        content_type: Some("application/json"),
        body: Some(big),
        headers: &[],
        expect: 413,
    });

    // A fresh connection per request: after refusing a body it did not read
    // (413, 415) the server closes the connection, and a pooled client can
    // race that close. Each case and each health check stands on its own.
    let http = drover_agent::tls::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let healthz = |http: reqwest::Client| {
        let url = t.at("/healthz");
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string()) }
    };
    let admin = common::admin_token(t.dir.path());
    let agent = t.agent_token().await;
    let mut failures = Vec::new();
    for c in cases {
        let method: reqwest::Method = c.method.parse().unwrap();
        let token = if c.path == "/v1/heartbeats" { &agent } else { &admin };
        let mut request = http.request(method, t.at(c.path)).bearer_auth(token);
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        for (k, v) in c.headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = c.body {
            request = request.body(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: request failed: {e}", c.name));
                continue;
            }
        };
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let (status, body) = common::split(response).await;
        let error = body.get("error").and_then(|e| e.as_str()).unwrap_or_default().to_string();
        if status != c.expect || error.is_empty() || !content_type.starts_with("application/json") {
            failures.push(format!(
                "{}: expected {} with a JSON error, got {status} ({content_type}) {body}",
                c.name, c.expect
            ));
        }
        let health = healthz(http.clone()).await;
        assert_eq!(health, Ok(200), "server stopped answering after {}", c.name);
    }
    assert!(failures.is_empty(), "bad input handled wrongly:\n{}", failures.join("\n"));
    let body: serde_json::Value = http.get(t.at("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
}
