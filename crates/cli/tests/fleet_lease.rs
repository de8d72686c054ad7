//! Two `drover serve` nodes on one PostgreSQL store (issue 16, first step:
//! the whole fleet is one shard). One holds the fleet's lease and acts; the
//! other is a standby (`/healthz` 503) that forwards every other request to
//! the holder, with the caller's token (tokens live in the shared store;
//! only the first node wrote an admin token). kill -9 of the holder and the
//! standby serves the fleet within the lease's TTL and a few seconds. A
//! holder paused (SIGSTOP) past its lease loses it to the other node and,
//! resumed, stops itself (exit code 3) instead of acting.

mod common;
#[path = "../../store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use common::{admin_client, free_port, get, wait_for, Serve};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const GENEROUS: Duration = Duration::from_secs(60);
const TTL_SECS: f64 = 3.0;

fn node(cwd: &Path, name: &str, url: &str) -> Serve {
    let ttl = TTL_SECS.to_string();
    #[rustfmt::skip]
    let args = [
        "--data-dir", name, "--store", url, "--node", name, "--lease-ttl-secs", &ttl,
        "--default-provider", "sim", "--no-local", "--heartbeat-interval-ms", "100", "--action-latency-ms", "20",
    ];
    common::share_the_key(&cwd.join(name));
    Serve::start(cwd, free_port(), &args)
}

/// A `psql` session that queues for the lock the lease holder of
/// `generation` keeps on its own connection (`drover_store::HOLDER_LOCK`),
/// returned once it waits: when that holder dies, the lock goes to this
/// session before any standby can take it.
fn linger_holder_lock(pg: &pg::PgServer, generation: i64) -> std::process::Child {
    use std::io::Write;
    let mut psql = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "drover", "-d", "postgres", "-X", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let stdin = psql.stdin.as_mut().unwrap();
    writeln!(stdin, "SELECT pg_advisory_lock({}, {generation});", drover_store::HOLDER_LOCK).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("postgres", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").trim() != "1"
    {
        assert!(Instant::now() < deadline, "psql never queued for the holder's lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    psql
}

/// kill -9 of the holder: its connection to the database closes with it,
/// and the standby takes over at once, not when the lease expires (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_is_taken_over_long_before_its_lease_expires() {
    let pg = pg::PgServer::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();
    #[rustfmt::skip]
    let args = |name: &'static str| [
        "--data-dir", name, "--store", &url, "--node", name, "--lease-ttl-secs", "30",
        "--default-provider", "sim", "--no-local",
    ];
    common::share_the_key(&cwd.join("a"));
    let mut a = Serve::start(cwd, free_port(), &args("a"));
    a.wait_healthy(&plain, GENEROUS).await;
    common::share_the_key(&cwd.join("b"));
    let b = Serve::start(cwd, free_port(), &args("b"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b.healthy(&plain).await, "b serves while a holds the lease:\n{}", b.log_tail());
    a.kill9();
    let killed = Instant::now();
    b.wait_healthy(&plain, GENEROUS).await;
    let took = killed.elapsed();
    eprintln!("takeover after kill -9 of the holder, lease TTL 30 s: {:.2} s", took.as_secs_f64());
    // Renewed every 7.5 s, a's lease had at least 22 s left when it died.
    assert!(took < Duration::from_secs(20), "b waited for the lease's expiry: {took:?}\n{}", b.log_tail());
    assert_eq!(pg.lease(), ("b".to_string(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_acts_a_standby_takes_over_a_dead_or_paused_holder_and_the_stale_one_stops() {
    let pg = pg::PgServer::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let plain = drover_agent::tls::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let mut a = node(cwd, "a", &url);
    a.wait_healthy(&plain, GENEROUS).await;
    assert_eq!(pg.lease(), ("a".to_string(), 1));
    let http_a = admin_client(&cwd.join("a"));
    let (status, body) =
        common::post(&http_a, &a.api, "/v1/services", json!({"name": "s1", "engine": "postgres", "followers": 1}))
            .await;
    assert_eq!(status, 201, "{body}");
    wait_for(GENEROUS, "s1 available through a", &a, || async {
        let (_, s) = get(&http_a, &format!("{}/v1/services/s1", a.api)).await?;
        (s["state"] == "available").then_some(())
    })
    .await;

    // b waits while a holds the lease, however long, and forwards: what
    // is asked through b is answered and done by a, with a's token.
    let mut b = node(cwd, "b", &url);
    tokio::time::sleep(Duration::from_secs_f64(TTL_SECS * 2.0)).await;
    assert!(!b.healthy(&plain).await, "b serves while a holds the lease:\n{}", b.log_tail());
    assert!(b.log_tail().contains("standby"), "{}", b.log_tail());
    let (status, health) = get(&plain, &format!("{}/healthz", b.api)).await.unwrap();
    assert_eq!(status, 503);
    assert!(common::is_standby(&health) && health["error"].as_str().unwrap().contains(&a.api), "{health}");
    assert_eq!(pg.lease().0, "a");
    assert!(!cwd.join("b/admin.token").exists(), "only the first node writes an admin token");
    assert!(!cwd.join("b/drover.db").exists(), "a node on a shared store keeps no SQLite store");
    let (status, through_b) = get(&http_a, &format!("{}/v1/services/s1", b.api)).await.unwrap();
    assert_eq!(status, 200, "{through_b}");
    assert_eq!(through_b["id"], get(&http_a, &format!("{}/v1/services/s1", a.api)).await.unwrap().1["id"]);
    let (status, body) =
        common::post(&http_a, &b.api, "/v1/services", json!({"name": "via-b", "engine": "postgres", "followers": 0}))
            .await;
    assert_eq!(status, 201, "a command through the standby is carried out by the holder: {body}");
    let (status, _) = get(&http_a, &format!("{}/v1/services/via-b", a.api)).await.unwrap();
    assert_eq!(status, 200, "the holder has the service created through the standby");
    let (status, body) = get(&plain, &format!("{}/v1/services", b.api)).await.unwrap();
    assert_eq!(status, 401, "no token, forwarded or not, is still no token: {body}");
    // The holder counts a forwarded refusal against the caller's address,
    // as b vouched for it, not against b's; a vouch made up by a caller is
    // not believed.
    let from = |ip: [u8; 4]| {
        drover_agent::tls::builder()
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let bad = |c: reqwest::Client, api: String| async move {
        c.get(format!("{api}/v1/services"))
            .bearer_auth("drv_not-a-token")
            .header("x-drover-forwarded-for", "sealed:made-up")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(bad(from([127, 0, 0, 9]), b.api.clone()).await, 401);
    assert_eq!(bad(from([127, 0, 0, 8]), a.api.clone()).await, 401);
    let (_, audit) = get(&http_a, &format!("{}/v1/audit", a.api)).await.unwrap();
    let clients: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"].as_str().is_some_and(|o| o.starts_with("refused (401)")))
        .filter_map(|e| e["detail"]["client"].as_str())
        .collect();
    assert!(clients.contains(&"127.0.0.9"), "the caller through b, as b vouched: {clients:?}\n{audit}");
    assert!(clients.contains(&"127.0.0.8"), "a made-up vouch is ignored: {clients:?}");
    // The cluster, asked through the standby: both nodes alive, a holds
    // the one shard at generation 1.
    let (status, cluster) = get(&http_a, &format!("{}/v1/cluster", b.api)).await.unwrap();
    assert_eq!(status, 200, "{cluster}");
    assert_eq!((cluster["shards"].as_u64(), cluster["generation"].as_i64()), (Some(1), Some(1)), "{cluster}");
    let by_name = |c: &serde_json::Value, n: &str| {
        c["nodes"].as_array().unwrap().iter().find(|x| x["name"] == n).cloned().unwrap_or_default()
    };
    assert_eq!((&by_name(&cluster, "a")["alive"], &by_name(&cluster, "a")["shards"]), (&json!(true), &json!(1)));
    assert_eq!((&by_name(&cluster, "b")["alive"], &by_name(&cluster, "b")["shards"]), (&json!(true), &json!(0)));
    assert_eq!(by_name(&cluster, "a")["url"].as_str(), Some(a.api.as_str()));
    let leases = cluster["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 1, "{cluster}");
    assert_eq!((&leases[0]["holder"], &leases[0]["generation"]), (&json!("a"), &json!(1)), "{cluster}");

    // kill -9 of a: b takes over within the TTL and a few seconds, and
    // serves the fleet a created. Commands sent to b meanwhile are kept
    // (202) and carried out once b holds the fleet; the caller is checked
    // at once.
    let viewer =
        common::client_with(&common::create_token(&http_a, &a.api, json!({"name": "watcher", "role": "viewer"})).await);
    let operator_token = common::create_token(&http_a, &a.api, json!({"name": "ops", "role": "operator"})).await;
    let operator = common::client_with(&operator_token);
    let (status, gone) = common::post(&http_a, &a.api, "/v1/tokens", json!({"name": "gone", "role": "operator"})).await;
    assert_eq!(status, 201, "{gone}");
    let revoked = http_a.delete(format!("{}/v1/tokens/{}", a.api, gone["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    let revoked = common::client_with(gone["token"].as_str().unwrap());
    let forged = common::client_with("drv_not-a-token-anyone-was-given");
    // As if the database had not noticed yet that a's connection is gone
    // (a host that vanished without closing it): a's lock lingers, so b
    // takes over when a's lease expires, not at once, and the commands
    // sent meanwhile find no holder.
    let mut lingering = linger_holder_lock(&pg, 1);
    a.kill9();
    let killed = Instant::now();
    let kept = operator
        .post(format!("{}/v1/services", b.api))
        .json(&json!({"name": "kept", "engine": "postgres", "followers": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status().as_u16(), 202, "a command while the holder is dead is kept");
    let id = kept.headers()["x-drover-deferred"].to_str().unwrap().to_string();
    assert_eq!(kept.headers()["location"].to_str().unwrap(), format!("/v1/commands/{id}"));
    let kept: serde_json::Value = kept.json().await.unwrap();
    assert_eq!((kept["id"].as_str(), kept["state"].as_str()), (Some(id.as_str()), Some("pending")), "{kept}");
    assert_eq!(kept["received_by"], "b");
    let (status, body) =
        common::post(&viewer, &b.api, "/v1/services", json!({"name": "nope", "engine": "postgres"})).await;
    assert_eq!(status, 403, "a viewer's command is refused at once, not kept: {body}");
    let (status, body) = common::post(&plain, &b.api, "/v1/chaos", json!({"instance": "x", "fault": "crash"})).await;
    assert_eq!(status, 401, "no token: refused at once: {body}");
    // The standby reads the caller's own token row from the shared store.
    let (status, body) = common::post(&revoked, &b.api, "/v1/chaos", json!({"instance": "x", "fault": "crash"})).await;
    assert_eq!(status, 401, "a revoked token: refused at once: {body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("revoked")), "{body}");
    let (status, body) = common::post(&forged, &b.api, "/v1/chaos", json!({"instance": "x", "fault": "crash"})).await;
    assert_eq!(status, 401, "a token nobody was given: refused at once: {body}");
    let (status, body) = get(&operator, &format!("{}/v1/services", b.api)).await.unwrap();
    assert_eq!(status, 503, "a read is not kept: {body}");
    // The CLI waits for a kept command's outcome and prints it as if answered.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["services", "create", "kept-cli", "--engine", "postgres", "--server", &b.api])
        .current_dir(cwd)
        .env("DROVER_TOKEN", &operator_token)
        .env_remove("DROVER_URL")
        .env_remove("DROVER_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_healthy(&plain, GENEROUS).await;
    let took = killed.elapsed();
    eprintln!("takeover after kill -9 of the holder: {:.2} s (lease TTL {TTL_SECS} s)", took.as_secs_f64());
    assert!(took < Duration::from_secs_f64(TTL_SECS + 5.0), "takeover took {took:?}");
    assert_eq!(pg.lease(), ("b".to_string(), 2));
    let _ = lingering.kill();
    let _ = lingering.wait();
    let (status, s) = get(&http_a, &format!("{}/v1/services/s1", b.api)).await.unwrap();
    assert_eq!(status, 200, "a's admin token is good on b (one token table): {s}");
    let cluster = wait_for(GENEROUS, "a seen dead in the cluster", &b, || async {
        let (_, c) = get(&http_a, &format!("{}/v1/cluster", b.api)).await?;
        (by_name(&c, "a")["alive"] == false).then_some(c)
    })
    .await;
    assert_eq!((&by_name(&cluster, "b")["shards"], &by_name(&cluster, "a")["shards"]), (&json!(1), &json!(0)));
    assert_eq!(cluster["generation"].as_i64(), Some(2), "{cluster}");
    let done = wait_for(GENEROUS, "the kept command carried out", &b, || async {
        let (_, c) = get(&operator, &format!("{}/v1/commands/{id}", b.api)).await?;
        (c["state"] == "done").then_some(c)
    })
    .await;
    assert_eq!((done["status"].as_u64(), done["carried_out_by"].as_str()), (Some(201), Some("b")), "{done}");
    assert_eq!((done["answer"]["name"].as_str(), done["generation"].as_i64()), (Some("kept"), Some(2)), "{done}");
    let (status, s) = get(&http_a, &format!("{}/v1/services/kept", b.api)).await.unwrap();
    assert_eq!((status, s["team"].as_str().is_some()), (200, true), "{s}");
    let (status, _) = get(&viewer, &format!("{}/v1/commands/{id}", b.api)).await.unwrap();
    assert_eq!(status, 404, "another caller's command is not shown");
    let (status, _) = get(&http_a, &format!("{}/v1/commands/{id}", b.api)).await.unwrap();
    assert_eq!(status, 200, "an admin sees every command");
    let (_, audit) = get(&http_a, &format!("{}/v1/audit", b.api)).await.unwrap();
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["actor"] == "ops" && e["target"].as_str() == Some("kept")),
        "the kept command is audited as its sender's: {audit}"
    );
    // The refusals b made while a standby are in the shared audit trail.
    let refused_at_b: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["received_by"] == "b")
        .filter_map(|e| Some((e["actor"].as_str()?, e["outcome"].as_str()?)))
        .collect();
    for (actor, outcome) in
        [("watcher", "refused (403)"), ("gone", "refused (401)"), ("invalid token", "refused (401)")]
    {
        assert!(
            refused_at_b.iter().any(|(a, o)| *a == actor && o.starts_with(outcome)),
            "{actor}'s refusal at the standby is audited: {refused_at_b:?}"
        );
    }
    let cli = cli.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&cli.stdout), String::from_utf8_lossy(&cli.stderr));
    assert!(cli.status.success(), "the CLI's command through a standby: {out}\n{err}");
    assert!(err.contains("kept the command"), "{err}");
    assert!(out.contains("kept-cli"), "{out}");

    // a comes back as the standby; b paused past its lease loses it to a.
    a.spawn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.healthy(&plain).await, "a serves while b holds the lease");
    b.signal("-STOP");
    let paused = Instant::now();
    a.wait_healthy(&plain, GENEROUS).await;
    eprintln!("takeover from a paused holder: {:.2} s", paused.elapsed().as_secs_f64());
    assert_eq!(pg.lease(), ("a".to_string(), 3));
    let (status, body) =
        common::post(&http_a, &a.api, "/v1/services", json!({"name": "s2", "engine": "postgres", "followers": 0}))
            .await;
    assert_eq!(status, 201, "the new holder takes commands: {body}");

    // Resumed, b finds itself without the lease and stops, never acting.
    b.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = b.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "b still runs after losing the lease:\n{}", b.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(3), "{}", b.log_tail());
    assert!(b.log_tail().contains("lease"), "{}", b.log_tail());
    assert_eq!(pg.lease(), ("a".to_string(), 3), "the stale node took nothing back");
    let shown = get(&http_a, &format!("{}/v1/services", a.api)).await.unwrap().1;
    let names: Vec<&str> = shown.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["kept", "kept-cli", "s1", "s2", "via-b"], "{shown}");

    // A node started with another key than the others' refuses to start:
    // what they sealed it could not open.
    let odd = cwd.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(odd.join("secret.key"), format!("{}\n", "0d".repeat(32))).unwrap();
    let ttl = TTL_SECS.to_string();
    let mut c = Serve::start(
        cwd,
        free_port(),
        &["--data-dir", "odd", "--store", &url, "--node", "odd", "--lease-ttl-secs", &ttl, "--no-local"],
    );
    let deadline = Instant::now() + GENEROUS;
    let status = loop {
        if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a node with another key runs:\n{}", c.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{}", c.log_tail());
    assert!(c.log_tail().contains("is not the one the other nodes of this store use"), "{}", c.log_tail());
    assert!(a.healthy(&plain).await, "the holder serves on");
}
