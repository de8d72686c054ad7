//! Happy paths of every route, through real HTTP.

mod common;

use common::{followers, primary};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok_once_ready() {
    let mut t = common::start().await;
    let (status, body) = t.get("/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    t.stop().await;
}

/// Two nodes of one control plane, each on its own SQLite copy of one
/// first start (so they share the tokens and the key, as nodes on one
/// PostgreSQL store do); which shard each holds is set by hand (the lease
/// rounds that will set it are not what this tests).
async fn two_nodes() -> (common::TestServer, common::TestServer, String) {
    let (a, b, agent, _) = two_nodes_and_a_team_token().await;
    (a, b, agent)
}

/// Also a token of an operator of team `t`, known to both.
async fn two_nodes_and_a_team_token() -> (common::TestServer, common::TestServer, String, String) {
    async fn on(dir: tempfile::TempDir) -> common::TestServer {
        let server = drover_server::start(common::fast_options(dir.path())).await.expect("server starts");
        let url = server.url();
        let http = drover_agent::tls::builder().build().unwrap();
        let mut t = common::TestServer { server: Some(server), url, http, dir, pg: None };
        t.wait_healthy().await;
        t.http = common::client_with(&common::admin_token(t.dir.path()));
        t
    }
    let mut first = on(tempfile::tempdir().unwrap()).await;
    // The built-in host's agent, known to both.
    let agent = first.agent_token().await;
    let team = first.token(json!({"name": "t-operator", "role": "operator", "team": "t"})).await;
    first.stop().await;
    let copy = tempfile::tempdir().unwrap();
    // What a stopped server leaves (its files; not a socket, nor a
    // temporary file that vanished while the copy was being made).
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                copy_dir(&entry.path(), &target);
            } else if kind.is_file() {
                match std::fs::copy(entry.path(), &target) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => {
                        other.unwrap();
                    }
                }
            }
        }
    }
    // The store's last connections close after the server's task ended:
    // copied once SQLite has folded its write-ahead logs in (or 5 s on).
    let settled = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < settled
        && std::fs::read_dir(first.dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("-wal"))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    copy_dir(first.dir.path(), copy.path());
    let dir = first.dir;
    (on(dir).await, on(copy).await, agent, team)
}

/// A ready node that holds shard 0 of 2 answers what is its own, forwards
/// a request for shard 1 to its holder, and lists the whole fleet from
/// both; a body that names no shard is the client's mistake (400), a new
/// rollout is checked by shard 0's holder, and a list with a
/// part missing is refused rather than short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_some_shards_answers_its_own_forwards_the_others_and_lists_the_whole_fleet() {
    let (mut a, mut b, _) = two_nodes().await;
    let set_a = |map: drover_server::lease::ShardMap| *a.server.as_ref().unwrap().shards.write().unwrap() = map;
    set_a(drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    });
    let names_in = |shard: u16| -> Vec<String> {
        (0..).map(|i| format!("svc-{i}")).filter(|n| drover_model::Slot::of_name(n).shard(2) == shard).take(2).collect()
    };
    let (mine, theirs) = (names_in(0), names_in(1));
    for name in mine.iter().chain(&theirs) {
        a.create_service(name, 0).await;
    }
    // Each was made by its shard's holder only.
    for name in &theirs {
        assert_eq!(b.get(&format!("/v1/services/{name}")).await.0, 200, "B holds {name}");
        assert_eq!(a.service(name).await["name"], json!(name), "read through A from B");
    }
    for name in &mine {
        assert_eq!(b.get(&format!("/v1/services/{name}")).await.0, 404, "A answered {name} itself");
    }

    // The whole fleet's list through A: both parts, in name order, paged.
    let mut all: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    all.sort();
    let (status, body) = a.get("/v1/services").await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<String> =
        body.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, all);
    let mut paged = Vec::new();
    let mut next = Some("/v1/services?limit=1".to_string());
    while let Some(path) = next.take() {
        let response = a.http.get(a.at(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        next = response.headers().get("link").map(|l| {
            let l = l.to_str().unwrap();
            l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_string()
        });
        let page: Value = response.json().await.unwrap();
        assert!(page.as_array().unwrap().len() <= 1);
        paged.extend(page.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()));
    }
    assert_eq!(paged, all, "paging the merged list by its Link gives the fleet once, in order");
    let (status, body) = a.get("/v1/archives").await;
    assert_eq!((status, body), (200, json!([])));

    // A rollout is shard 0's holder's to check and keep (its parts are
    // the holders', `three_nodes`): here, a's own engine refuses the image.
    let (status, body) = a.post("/v1/rollouts", json!({"to_image": "sha256:00", "waves": [100]})).await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body["error"].as_str().unwrap().contains("no image sha256:00"), "{body}");
    // A fork goes to its source's holder, which checks it there.
    let (status, body) = a.post(&format!("/v1/services/{}/fork", theirs[0]), json!({"name": "f"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no backup yet"), "{body}");
    let (status, body) = a.post("/v1/services", json!({"engine": "postgres"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
    assert_eq!(a.get("/healthz").await.0, 200);
    assert_eq!(a.get("/v1/no-such-route").await.0, 404);

    // Shard 1's holder gone: its reads and the fleet's list are 503.
    b.stop().await;
    let (status, body) = a.get(&format!("/v1/services/{}", theirs[0])).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = a.get("/v1/services").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("node b"), "{body}");
    // A holding the whole fleet again answers from its own engine alone.
    set_a(drover_server::lease::ShardMap::default());
    let (status, body) = a.get("/v1/services").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), mine.len(), "{body}");
    a.stop().await;
}

/// A runbook run on the node holding shard 0 whose step names a service
/// of another holder's shard: the step is checked and carried out by that
/// holder (`node_commands`, sealed with the nodes' shared key), under the
/// approver's name; a service no holder has is refused before anything
/// runs, and a client cannot send a node's command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runbook_step_on_a_service_of_another_holder_s_shard_is_carried_out_by_that_holder() {
    let (mut a, mut b, _) = two_nodes().await;
    *a.server.as_ref().unwrap().shards.write().unwrap() = drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    };
    let in_shard_1 = |prefix: &str| {
        (0..).map(|i| format!("{prefix}-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == 1).unwrap()
    };
    let theirs = in_shard_1("fo");
    a.create_service(&theirs, 1).await;
    let before = a.wait_available(&theirs, Duration::from_secs(30)).await;
    let old_primary = primary(&before)["id"].clone();
    let alice = a.token(json!({"name": "alice", "role": "operator"})).await;
    let bob = a.token(json!({"name": "bob", "role": "operator"})).await;

    // A service no node has: refused at the request, nothing runs.
    let nowhere = in_shard_1("nowhere");
    let (status, refused) =
        a.post_as(Some(&alice), "/v1/runbooks/force-failover/runs", json!({"params": {"service": nowhere}})).await;
    assert_eq!(status, 404, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("on b"), "said by its shard's holder: {refused}");

    let (status, run) =
        a.post_as(Some(&alice), "/v1/runbooks/force-failover/runs", json!({"params": {"service": theirs}})).await;
    assert_eq!(status, 202, "{run}");
    let approve = format!("/v1/runbooks/runs/{}/approve", run["id"].as_str().unwrap());
    let (status, done) = a.post_as(Some(&bob), &approve, json!({})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["state"].as_str(), done["plan"][0]["outcome"].as_str()),
        (Some("succeeded"), Some("ok")),
        "{done}"
    );
    common::poll(Duration::from_secs(30), "the follower promoted", || async {
        let s = a.service(&theirs).await;
        let p = primary(&s);
        (p["id"] != old_primary && p["state"] == "available").then_some(())
    })
    .await;
    // Carried out by b's engine, under the approver's name.
    let (_, audit) = b.get("/v1/audit?limit=10000").await;
    let failover: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|e| e["command"] == "services.failover").collect();
    assert_eq!(failover.len(), 1, "{audit}");
    assert_eq!((failover[0]["actor"].as_str(), failover[0]["outcome"].as_str()), (Some("bob"), Some("ok")));

    // A client's command, with or without a token, is not a node's.
    let forged = json!({"actor": "mallory", "role": "admin", "team": null,
                        "command": {"Failover": {"name": theirs}}});
    for node in [&a, &b] {
        let (status, body) = node.post("/v1/cluster/commands", forged.clone()).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("not a command of a node"), "{body}");
    }
    a.stop().await;
    b.stop().await;
}

/// A fork whose new name is in another holder's shard: the source's
/// holder plans it (the source is there) and the new name's holder
/// creates it (`Command::CreateRestored`, sent as a node's command), asked
/// through either node, by the API or by the restore runbook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_into_another_holder_s_shard_is_planned_by_the_source_s_holder_and_created_by_the_other() {
    let (mut a, mut b, _) = two_nodes().await;
    let map = |held: u16, other: &str, url: &str| drover_server::lease::ShardMap {
        shards: 2,
        held: [held].into(),
        holders: [(1 - held, drover_server::lease::Holder { node: other.into(), url: url.into() })].into(),
        ..Default::default()
    };
    *a.server.as_ref().unwrap().shards.write().unwrap() = map(0, "b", &b.url);
    *b.server.as_ref().unwrap().shards.write().unwrap() = map(1, "a", &a.url);
    let in_shard = |prefix: &str, shard: u16| {
        (0..).map(|i| format!("{prefix}-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == shard).unwrap()
    };
    let source = in_shard("orders", 1);
    a.create_service(&source, 1).await;
    a.wait_available(&source, Duration::from_secs(30)).await;
    let (status, body) = a.post(&format!("/v1/services/{source}/backups"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    common::poll(Duration::from_secs(30), "backup recorded", || async {
        let s = a.service(&source).await;
        (!s["backups"]["last_backup_at"].is_null()).then_some(())
    })
    .await;

    // Through a: forwarded to b (the source's), created on a.
    let copy = in_shard("copy", 0);
    let (status, forked) = a.post(&format!("/v1/services/{source}/fork"), json!({"name": copy})).await;
    assert_eq!(status, 202, "{forked}");
    assert_eq!((forked["name"].as_str(), forked["forked_from"]["service"].as_str()), (Some(&*copy), Some(&*source)));
    let own = |node: &common::TestServer| {
        let request = node.http.get(node.at("/v1/services")).header(drover_server::forward::PART, "1");
        async move {
            let part: Value = request.send().await.unwrap().json().await.unwrap();
            part.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert!(own(&a).await.contains(&copy), "the fork is a's (its name's shard)");
    assert!(!own(&b).await.contains(&copy), "not b's, which planned it");
    let made = a.wait_available(&copy, Duration::from_secs(30)).await;
    assert_eq!(made["team"], forked["team"]);
    // Its name taken: refused by the node that would create it.
    let (status, body) = b.post(&format!("/v1/services/{source}/fork"), json!({"name": copy})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already exists"), "{body}");

    // The restore runbook, run on a (shard 0's), of b's service into a's shard.
    let again = in_shard("again", 0);
    let params = json!({"params": {"service": source, "name": again}});
    let (status, run) = a.post("/v1/runbooks/restore-into-new-service/runs", params).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(own(&a).await.contains(&again), "the runbook's fork is a's too");
    a.stop().await;
    b.stop().await;
}

/// The audit trail through a node of a split fleet: a team's token sees
/// the entries of its team's services in every holder's shards (each
/// holder knows its own), and an entry only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_s_audit_trail_has_its_services_of_every_shard() {
    let (mut a, mut b, _, team) = two_nodes_and_a_team_token().await;
    *a.server.as_ref().unwrap().shards.write().unwrap() = drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    };
    let in_shard = |prefix: &str, shard: u16| {
        (0..).map(|i| format!("{prefix}-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == shard).unwrap()
    };
    let (mine, theirs, other) = (in_shard("t-db", 0), in_shard("t-db", 1), in_shard("u-db", 1));
    for (name, owner) in [(&mine, "t"), (&theirs, "t"), (&other, "u")] {
        let body = json!({"name": name, "engine": "postgres", "followers": 0, "team": owner});
        let (status, created) = a.post("/v1/services", body).await;
        assert_eq!(status, 201, "{created}");
    }
    let created = |entries: &Value| -> Vec<String> {
        let mut names: Vec<String> = entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["command"] == "services.create")
            .map(|e| e["target"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let (status, seen) = a.get_as(Some(&team), "/v1/audit?limit=10000").await;
    assert_eq!(status, 200, "{seen}");
    let mut want = vec![mine.clone(), theirs.clone()];
    want.sort();
    assert_eq!(created(&seen), want, "team t's services of both shards, not team u's: {seen}");
    let (status, all) = a.get("/v1/audit?limit=10000").await;
    assert_eq!(status, 200, "{all}");
    let mut every = vec![mine, theirs, other];
    every.sort();
    assert_eq!(created(&all), every, "the admin's, once each");
    let (_, last) = a.get("/v1/audit?limit=1").await;
    assert_eq!(last.as_array().unwrap().len(), 1, "{last}");
    a.stop().await;
    b.stop().await;
}

/// The CVE audit through a node of a split fleet: each affected image's
/// services, owners and instances are those of every holder's shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cve_audit_names_the_affected_services_of_every_shard() {
    let (mut a, mut b) = {
        let (a, b, _) = two_nodes().await;
        (a, b)
    };
    *a.server.as_ref().unwrap().shards.write().unwrap() = drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    };
    let in_shard = |shard: u16| {
        (0..).map(|i| format!("cve-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == shard).unwrap()
    };
    let (mine, theirs) = (in_shard(0), in_shard(1));
    for name in [&mine, &theirs] {
        a.create_service(name, 1).await;
    }
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
    // Each test node has a store of its own; the nodes of a real split
    // fleet share theirs.
    for node in [&a, &b] {
        let (status, report) = node.post("/v1/advisories", Value::Array(records.clone())).await;
        assert_eq!(status, 201, "{report}");
    }
    let response = a.http.get(a.at("/v1/advisories/audit")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["drover-advisories-stale"], "true", "the store's word, through the merge");
    let audit: Value = response.json().await.unwrap();
    let findings = audit.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{audit}");
    let mut both = vec![mine, theirs];
    both.sort();
    assert_eq!(findings[0]["advisory"], "DSA-6090-1");
    assert_eq!(findings[0]["services"], json!(both), "{audit}");
    assert_eq!(findings[0]["instances"], 4, "two instances in each shard: {audit}");
    assert_eq!(findings[0]["owners"], json!(["platform"]));
    a.stop().await;
    b.stop().await;
}

/// A team's maintenance calendar through a node of a split fleet: the
/// events of every holder's services, in one calendar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_s_maintenance_calendar_has_the_moves_of_every_holder() {
    let (mut a, mut b, _, key) = two_nodes_and_a_team_token().await;
    *a.server.as_ref().unwrap().shards.write().unwrap() = drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    };
    let theirs = (0..).map(|i| format!("win-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == 1).unwrap();
    let (status, created) =
        a.post("/v1/services", json!({"name": theirs, "engine": "postgres", "followers": 1, "team": "t"})).await;
    assert_eq!(status, 201, "{created}");
    a.wait_available(&theirs, Duration::from_secs(30)).await;
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(72)).unwrap();
    let window = drover_model::MaintenanceWindow::weekly_from(drover_model::Timestamp(later.as_microsecond()), 1);
    let response = a
        .http
        .put(a.at(&format!("/v1/services/{theirs}/maintenance-window")))
        .json(&json!({"window": window}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A rollout of b's own (its engine's services): the move waits for the window.
    let (_, image) = b.post("/v1/images", json!({"engine": "postgres", "settings": {"work_mem": "16MB"}})).await;
    let body = json!({"to_image": image["id"], "selector": {"names": [theirs]}, "waves": [100], "soak_seconds": 1});
    let (status, rollout) = b.post("/v1/rollouts", body).await;
    assert_eq!(status, 201, "{rollout}");

    let url = a.at(&format!("/v1/maintenance.ics?team=t&key={key}"));
    let answer = reqwest::get(url).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("text/calendar"));
    let calendar = answer.text().await.unwrap();
    assert!(calendar.starts_with("BEGIN:VCALENDAR\r\n") && calendar.ends_with("END:VCALENDAR\r\n"), "{calendar}");
    assert_eq!(calendar.matches("BEGIN:VCALENDAR").count(), 1, "one calendar: {calendar}");
    assert!(calendar.contains("BEGIN:VEVENT") && calendar.contains(&theirs), "b's service's window: {calendar}");
    assert_eq!(calendar.matches("BEGIN:VEVENT").count(), calendar.matches("END:VEVENT").count(), "{calendar}");
    let refused = reqwest::get(a.at("/v1/maintenance.ics?team=t&key=drv_nope")).await.unwrap();
    assert_eq!(refused.status(), 403, "a bad key, refused as one node refuses it");
    a.stop().await;
    b.stop().await;
}

/// An agent's batch with beats of two holders' shards, posted to one of
/// them: each part is stepped by its shard's holder (the node asked does
/// not know the other's instance: alone it would answer it unknown), the
/// receipts are added up, and once the other holder is gone its part is
/// pending rather than the batch refused (the agent's lease still renews).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_batch_reaches_each_part_s_holder_and_is_answered_once_all_were() {
    let (mut a, mut b, agent) = two_nodes().await;
    *a.server.as_ref().unwrap().shards.write().unwrap() = drover_server::lease::ShardMap {
        shards: 2,
        held: [0].into(),
        holders: [(1, drover_server::lease::Holder { node: "b".into(), url: b.url.clone() })].into(),
        ..Default::default()
    };
    let name_in = |shard: u16| {
        (0..).map(|i| format!("beat-{i}")).find(|n| drover_model::Slot::of_name(n).shard(2) == shard).unwrap()
    };
    let (mine, theirs) = (name_in(0), name_in(1));
    let mine_id = primary(&a.create_service(&mine, 0).await)["id"].clone();
    let theirs_id = primary(&a.create_service(&theirs, 0).await)["id"].clone();
    assert!(mine_id.is_string() && theirs_id.is_string());
    let stranger =
        drover_model::InstanceId::new_at(1_700_000_000_000_000, 7).in_slot(drover_model::Slot::of_name(&mine));
    let stranger = serde_json::to_value(stranger).unwrap();
    let batch = |seq: u64| {
        json!({"beats": [
            {"instance": theirs_id, "seq": seq, "facts": {}},
            {"instance": mine_id, "seq": seq, "facts": {}},
            {"instance": stranger, "seq": seq, "facts": {}},
        ]})
    };
    let seq = 1u64 << 60;
    let (status, receipt) = a.post_as(Some(&agent), "/v1/heartbeats", batch(seq)).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["accepted"].clone(), receipt["stale"].clone(), receipt["pending"].clone()),
        (json!(2), json!(0), json!(0)),
        "each beat stepped by its holder: {receipt}"
    );
    assert_eq!(receipt["unknown"], json!([stranger]), "{receipt}");
    let (_, again) = a.post_as(Some(&agent), "/v1/heartbeats", batch(seq)).await;
    assert_eq!((again["accepted"].clone(), again["stale"].clone()), (json!(0), json!(2)), "{again}");

    b.stop().await;
    let (status, receipt) = a.post_as(Some(&agent), "/v1/heartbeats", batch(seq + 1)).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!((receipt["accepted"].clone(), receipt["pending"].clone()), (json!(1), json!(1)), "{receipt}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_store_the_cluster_is_this_node_holding_the_one_shard() {
    let mut t = common::start().await;
    let (status, body) = t.get("/v1/cluster").await;
    assert_eq!(status, 200, "{body}");
    // Alone on a PostgreSQL store (DROVER_TEST_STORE): the same, at the
    // lease's first generation.
    let (store, generation) = if common::on_postgres() { ("postgres", json!(1)) } else { ("sqlite", json!(null)) };
    assert_eq!((body["shards"].as_u64(), body["store"].as_str()), (Some(1), Some(store)), "{body}");
    assert_eq!(body["generation"], generation, "{body}");
    // Every shard's lease: the fleet's, held by this node, on PostgreSQL.
    let leases = body["leases"].as_array().expect("leases");
    if common::on_postgres() {
        assert_eq!(leases.len(), 1, "{body}");
        assert_eq!((&leases[0]["shard"], &leases[0]["generation"]), (&json!(0), &json!(1)), "{body}");
        assert!(leases[0]["expires_in_ms"].as_i64().is_some_and(|ms| ms > 0), "{body}");
    } else {
        assert!(leases.is_empty(), "{body}");
    }
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{body}");
    assert_eq!((&nodes[0]["alive"], &nodes[0]["shards"], &nodes[0]["this"]), (&json!(true), &json!(1), &json!(true)));
    assert!(nodes[0]["url"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_service_becomes_available_and_is_listed_shown_and_audited() {
    let mut t = common::start().await;
    let created = t.create_service("db1", 1).await;
    assert_eq!(created["name"], "db1");
    assert!(created["state"].is_string(), "{created}");
    let instances = created["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{created}");
    for i in instances {
        assert!(i["id"].is_string() && i["role"].is_string() && i["state"].is_string() && i["zone"].is_string(), "{i}");
    }

    let (status, dup) = t.post("/v1/services", json!({"name": "db1", "engine": "postgres", "followers": 1})).await;
    assert_eq!(status, 409, "{dup}");
    assert!(dup["error"].is_string());

    let service = t.wait_available("db1", Duration::from_secs(15)).await;
    assert_eq!(primary(&service)["state"], "available");
    assert_eq!(followers(&service).len(), 1);

    let (status, list) = t.get("/v1/services").await;
    assert_eq!(status, 200);
    assert!(list.as_array().unwrap().iter().any(|s| s["name"] == "db1"), "{list}");

    let id = primary(&service)["id"].as_str().unwrap().to_string();
    let (status, instance) = t.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["id"], id.as_str());
    assert_eq!(instance["role"], "primary");

    let events = t.events("service=db1").await;
    assert!(!events.is_empty());
    for e in &events {
        for key in ["instance", "from", "to", "cause", "at"] {
            assert!(e.get(key).is_some(), "event lacks {key}: {e}");
        }
    }
    assert!(
        events.iter().any(|e| e["instance"] == id.as_str() && e["to"] == "available"),
        "no event of the primary becoming available: {events:?}"
    );
    let by_instance = t.events(&format!("instance={id}")).await;
    assert!(!by_instance.is_empty() && by_instance.iter().all(|e| e["instance"] == id.as_str()));
    let limited = t.events("service=db1&limit=1").await;
    assert_eq!(limited.len(), 1);
    let last_seq = events.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap();
    assert!(t.events(&format!("service=db1&after={last_seq}")).await.is_empty());

    let (status, actions) = t.get("/v1/actions?service=db1").await;
    assert_eq!(status, 200);
    let actions = actions.as_array().unwrap().clone();
    assert!(
        actions.iter().filter(|a| a["kind"] == "provision" && a["state"] == "succeeded").count() >= 2,
        "{actions:?}"
    );
    let (status, all_actions) = t.get("/v1/actions").await;
    assert_eq!(status, 200);
    assert!(all_actions.as_array().unwrap().len() >= actions.len());

    let (status, audit) = t.get("/v1/audit").await;
    assert_eq!(status, 200);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["command"] == "services.create" && a["actor"] == "admin" && a["role"] == "admin"),
        "{audit}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_actor_header_changes_nothing_the_token_names_who_asked() {
    let mut t = common::start().await;
    let ops = t.token(json!({"name": "ops-ann", "role": "operator"})).await;
    let r = common::client_with(&ops)
        .post(t.at("/v1/services"))
        .header(drover_server::ACTOR_HEADER, "alice")
        .json(&json!({"name": "db-alice", "engine": "redis", "followers": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A viewer claiming to be the admin is still a viewer, refused and named.
    let viewer = t.token(json!({"name": "eve", "role": "viewer"})).await;
    let r = common::client_with(&viewer)
        .delete(t.at("/v1/services/db-alice"))
        .header(drover_server::ACTOR_HEADER, "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, audit) = t.get("/v1/audit").await;
    let audit = audit.as_array().unwrap();
    assert!(!audit.iter().any(|a| a["actor"] == "alice"), "{audit:?}");
    assert!(
        audit.iter().any(|a| a["command"] == "services.create" && a["actor"] == "ops-ann" && a["role"] == "operator"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a["command"] == "DELETE /v1/services/{name}"
            && a["actor"] == "eve"
            && a["role"] == "viewer"
            && a["outcome"].as_str().unwrap().starts_with("refused (403)")),
        "{audit:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_service_answers_202_deleting_and_404_when_unknown() {
    let mut t = common::start().await;
    t.create_service("gone", 0).await;
    let (status, view) = t.delete("/v1/services/gone").await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["state"], "deleting");
    let (status, body) = t.delete("/v1/services/never-was").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_counted_and_unknown_instances_reported() {
    let mut t = common::start().await;
    let service = t.create_service("hb", 0).await;
    let id = primary(&service)["id"].as_str().unwrap().to_string();
    let stranger = "01890a5d-ac96-774b-bcce-b302099a8057";
    let agent = common::client_with(&t.agent_token().await);
    let post = |body: Value| {
        let request = agent.post(t.at("/v1/heartbeats")).json(&body).send();
        async move { common::split(request.await.unwrap()).await }
    };
    let (status, receipt) = post(json!({"beats": [
        {"instance": id, "seq": 1_000_000_000u64, "facts": {"role": "primary", "writable": true}},
        {"instance": stranger, "seq": 1}
    ]}))
    .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["unknown"], json!([stranger]), "{receipt}");
    assert!(receipt["accepted"].as_u64().is_some() && receipt["stale"].as_u64().is_some());

    let (status, empty) = post(json!({"beats": []})).await;
    assert_eq!((status, empty["accepted"].clone()), (200, json!(0)));

    let text = t.http.get(t.at("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("drover_heartbeats_received_total"))
        .unwrap_or_else(|| panic!("no heartbeat counter in /metrics:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{line}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_engine_counters_and_fleet_gauges_without_ids() {
    let mut t = common::start().await;
    t.create_service("m1", 1).await;
    t.wait_available("m1", Duration::from_secs(15)).await;
    let r = t.http.get(t.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for name in [
        "drover_heartbeats_received_total",
        "drover_engine_steps_total",
        "drover_store_commit_seconds_bucket",
        "drover_actions_dispatched_total{kind=\"provision\"}",
        "drover_instances{state=\"available\"}",
        "drover_services{state=\"available\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(!text.contains("m1"), "a service name leaked into a label");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_images_are_registered_at_start_up() {
    let mut t = common::start().await;
    let (status, images) = t.get("/v1/images").await;
    assert_eq!(status, 200);
    let images = images.as_array().unwrap();
    for engine in ["postgres", "redis", "kafka"] {
        assert!(images.iter().any(|i| i["engine"] == engine), "no {engine} image: {images:?}");
    }
    let pg = images.iter().find(|i| i["engine"] == "postgres").unwrap();
    assert_eq!(pg["packages"]["postgresql-15"], "15.18");
    assert!(pg["id"].as_str().unwrap().starts_with("sha256:"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_answers_202_with_the_action_record() {
    let mut t = common::start().await;
    t.create_service("chaos1", 1).await;
    let service = t.wait_available("chaos1", Duration::from_secs(15)).await;
    let follower = followers(&service)[0]["id"].as_str().unwrap().to_string();
    let (status, action) = t.post("/v1/chaos", json!({"instance": follower, "fault": "partition"})).await;
    assert_eq!(status, 202, "{action}");
    assert_eq!(action["kind"], "inject_fault");
    assert_eq!(action["fault"], "partition");
    assert_eq!(action["instance"], follower.as_str());
    let (status, body) =
        t.post("/v1/chaos", json!({"instance": "01890a5d-ac96-774b-bcce-b302099a8057", "fault": "crash"})).await;
    assert_eq!(status, 404, "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let mut t = common::start().await;
    let (status, doc) = t.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let expect: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/v1/services", &["get", "post"]),
        ("/v1/services/{name}", &["get", "delete"]),
        ("/v1/instances/{id}", &["get"]),
        ("/v1/events", &["get"]),
        ("/v1/heartbeats", &["post"]),
        ("/v1/chaos", &["post"]),
        ("/v1/actions", &["get"]),
        ("/v1/audit", &["get"]),
        ("/v1/images", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/services/{name}/switchover", &["post"]),
        ("/v1/services/{name}/backups", &["post"]),
        ("/v1/services/{name}/backups/verify", &["post"]),
        ("/v1/services/{name}/checks", &["get"]),
        ("/v1/integrations/alertmanager", &["post"]),
        ("/v1/integrations/events-v2", &["post"]),
        ("/v1/pages", &["get"]),
        ("/v1/pages/{id}", &["get"]),
        ("/v1/pages/{id}/ack", &["get", "post"]),
        ("/v1/pages/{id}/resolve", &["get", "post"]),
        ("/v1/pager/metrics", &["get"]),
        ("/v1/pager/metrics.svg", &["get"]),
        ("/v1/pager/feed", &["get"]),
        ("/v1/pager/oncall", &["get"]),
        ("/v1/tokens", &["get", "post"]),
        ("/v1/tokens/{id}", &["delete"]),
    ];
    for (path, methods) in expect {
        let item: &Value = paths.get(*path).unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for m in *methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing");
        }
    }
    for schema in ["ServiceView", "CreateService", "ActionRecord", "Event", "ErrorBody"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema} missing");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_clean_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let first = drover_server::start(common::fast_options(&path)).await.unwrap();
    let url = first.url();
    common::poll(Duration::from_secs(10), "first healthy", || async {
        let r = reqwest::get(format!("{url}/healthz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let token = common::admin_token(&path);
    let http = common::client_with(&token);
    let r = http
        .post(format!("{url}/v1/services"))
        .json(&json!({"name": "keep", "engine": "postgres", "followers": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    first.stop().await.unwrap();

    let second = drover_server::start(common::fast_options(&path)).await.unwrap();
    let url = second.url();
    // The admin token of the first start still works; no second one is made.
    assert_eq!(common::admin_token(&path), token);
    let service = common::poll(Duration::from_secs(10), "service after restart", || async {
        let r = http.get(format!("{url}/v1/services/keep")).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(service["name"], "keep");
    second.stop().await.unwrap();
}

/// `GET /v1/services` pages (issue 15, item 3): in name order, `limit` at
/// a time, the `Link` header naming the next page until the last; a team's
/// token pages through its team's services only; a bad limit is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_list_pages_in_name_order_with_a_next_link() {
    let mut t = common::start().await;
    let names = ["pa", "pb", "pc", "pd", "pe", "pf", "pg"];
    for (i, name) in names.iter().enumerate() {
        let team = if i % 2 == 0 { "payments" } else { "search" };
        let (status, body) =
            t.post("/v1/services", json!({"name": name, "engine": "postgres", "followers": 0, "team": team})).await;
        assert_eq!(status, 201, "{body}");
    }
    // Follows the Link headers from `first`; the names seen, page by page.
    async fn walk(http: &reqwest::Client, t: &common::TestServer, first: &str) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(path) = next.take() {
            let r = http.get(t.at(&path)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            next = r.headers().get("link").map(|l| {
                let l = l.to_str().unwrap();
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                l.trim_start_matches('<').split('>').next().unwrap().to_string()
            });
            let page: Vec<Value> = r.json().await.unwrap();
            pages.push(page.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect());
            assert!(pages.len() <= 10, "the links end");
        }
        pages
    }
    let pages = walk(&t.http, &t, "/v1/services?limit=3").await;
    assert_eq!(pages, [vec!["pa", "pb", "pc"], vec!["pd", "pe", "pf"], vec!["pg"]]);
    let (status, all) = t.get("/v1/services").await;
    assert_eq!((status, all.as_array().unwrap().len()), (200, 7), "the default page holds them all");
    let (_, after) = t.get("/v1/services?after=pe").await;
    let after: Vec<&str> = after.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(after, ["pf", "pg"]);

    let pay = t.token(json!({"name": "pay-viewer", "role": "viewer", "team": "payments"})).await;
    let pages = walk(&common::client_with(&pay), &t, "/v1/services?limit=2").await;
    assert_eq!(pages, [vec!["pa", "pc"], vec!["pe", "pg"]], "only the team's, paged among themselves");

    for bad in ["limit=0", "limit=10001", "limit=x", "nope=1"] {
        let (status, body) = t.get(&format!("/v1/services?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    t.stop().await;
}
