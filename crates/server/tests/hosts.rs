//! Hosts over the real HTTP API: the built-in host of `drover serve`, an
//! agent registering its own host (and no other), cordon and drain, chaos
//! for a host, and hosts kept across a restart.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_host_agents_hosts_cordon_drain_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut t = start_in(dir, |_| {}).await;
    let me = drover_server::host_name();

    let (status, hosts) = t.get("/v1/hosts").await;
    assert_eq!(status, 200, "{hosts}");
    assert_eq!(hosts, json!([{"name": me, "zone": "zone-a", "state": "ready", "capacity": 1_000_000, "instances": 0}]));

    t.create_service("db", 1).await;
    let db = t.wait_available("db", Duration::from_secs(20)).await;
    for i in db["instances"].as_array().unwrap() {
        assert_eq!(i["host"], me.as_str(), "{i}");
    }
    let (_, hosts) = t.get("/v1/hosts").await;
    assert_eq!(hosts[0]["instances"], 2);

    // An agent registers its own host, and no other.
    let agent = t.token(json!({"name": "agent-h2", "role": "agent", "host": "h2"})).await;
    let h2 = json!({"name": "h2", "zone": "zone-b", "address": "127.0.0.2", "capacity": 4});
    let (status, body) = t.post_as(Some(&agent), "/v1/hosts", h2.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"name": "h2", "zone": "zone-b", "state": "ready", "capacity": 4, "instances": 0}));
    let (status, body) = t
        .post_as(
            Some(&agent),
            "/v1/hosts",
            json!({"name": "h3", "zone": "zone-c", "address": "127.0.0.3", "capacity": 4}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = t.post("/v1/hosts", h2.clone()).await;
    assert_eq!(status, 403, "an admin is not an agent: {body}");
    let (status, body) = t
        .post_as(
            Some(&agent),
            "/v1/hosts",
            json!({"name": "h2", "zone": "zone-b", "address": "127.0.0.2", "capacity": 0}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // The agent of h2 does not read the built-in host's instances.
    let id = db["instances"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = t.get_as(Some(&agent), &format!("/v1/instances/{id}")).await;
    assert_eq!(status, 404);

    // Cordon and drain, by an operator.
    let (status, body) = t.post("/v1/hosts/h2/cordon", json!({})).await;
    assert_eq!((status, &body["state"]), (200, &json!("cordoned")), "{body}");
    let (status, body) = t.post(&format!("/v1/hosts/{me}/drain"), json!({})).await;
    assert_eq!((status, &body["state"]), (202, &json!("draining")), "{body}");
    let (status, body) = t.post("/v1/hosts/nope/cordon", json!({})).await;
    assert_eq!(status, 404, "{body}");
    // No ready host with room: a new service is refused.
    let (status, body) =
        t.post("/v1/services", json!({"name": "late", "engine": "postgres", "followers": 1, "provider": "sim"})).await;
    assert_eq!(status, 409, "{body}");

    // Chaos for a host: crash or hang, a host that exists, one target.
    let (status, body) = t.post("/v1/chaos", json!({"host": "h2", "fault": "partition"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t.post("/v1/chaos", json!({"host": "nope", "fault": "crash"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = t.post("/v1/chaos", json!({"host": "h2", "instance": id, "fault": "crash"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t.post("/v1/chaos", json!({"host": "h2", "fault": "hang"})).await;
    assert_eq!(status, 202, "{body}");

    // Hosts and their states survive a restart.
    t.stop().await;
    let server = drover_server::start(fast_options(&path)).await.expect("restarts");
    let url = server.url();
    let http = client_with(&admin_token(&path));
    let hosts = poll(Duration::from_secs(20), "the restarted server lists hosts", || async {
        let (status, body) = split(http.get(format!("{url}/v1/hosts")).send().await.unwrap()).await;
        (status == 200).then_some(body)
    })
    .await;
    let states: Vec<(&str, &str)> =
        hosts.as_array().unwrap().iter().map(|h| (h["name"].as_str().unwrap(), h["state"].as_str().unwrap())).collect();
    let mut want = vec![(me.as_str(), "draining"), ("h2", "cordoned")];
    want.sort();
    assert_eq!(states, want);
    server.stop().await.unwrap();
}
