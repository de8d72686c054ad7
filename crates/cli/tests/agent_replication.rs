//! Issue 11, fleets across hosts: a PostgreSQL service whose members run on
//! two agent hosts replicates over TCP between them. A control plane with no
//! host of its own (`drover serve --no-local`) and three `drover agent
//! --host` on 127.0.0.2/3/4 in three zones; a service with a synchronous
//! follower is placed on two of them. The follower is built by
//! pg_basebackup from the primary's host address and streams from there
//! with the service's replication credential (derived by the control plane,
//! never stored); the primary's agent holds synchronous replication on
//! strictly. A planned switchover moves the primary to the other host and a
//! new follower is built there from the new primary.

mod common;

use common::host_agent::HostAgent;
use common::{admin_client, create_token, free_port, get, wait_for, Serve};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The built-in host's name (this machine's), with `drover serve` on its
/// own host.
fn serve_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// A SQL session as Drover's own role over the instance's socket (the test
/// runs as the control plane's OS user, peer-mapped to `drover`).
async fn admin_sql(socket: &Path, port: u16, database: &str) -> Option<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config.host_path(socket).port(port).user("drover").dbname(database).connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

async fn query_text(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for message in client.simple_query(sql).await.unwrap_or_default() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
        }
    }
    rows
}

/// A session through the service's URL (its router beside the control
/// plane): the simple protocol, as pgbouncer's transaction pooling wants.
async fn url_client(url: &str) -> Option<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().ok()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// The address of the server a URL session reaches (the primary's host).
async fn server_address(client: &tokio_postgres::Client) -> Option<String> {
    query_text(client, "SELECT host(inet_server_addr())").await.first()?.first()?.clone()
}

struct Fleet {
    _tmp: tempfile::TempDir,
    serve: Serve,
    admin: reqwest::Client,
    api: String,
    agents: Vec<(String, HostAgent)>,
}

impl Fleet {
    /// serve --no-local and three agents h1..h3 on 127.0.0.2..4 in zones a..c.
    async fn start(prefix: &str) -> Fleet {
        Fleet::start_with(prefix, &["--no-local", "--data-dir", "cp"]).await
    }

    /// `drover serve ARGS` (its data dir `cp`) and the three agents.
    async fn start_with(prefix: &str, args: &[&str]) -> Fleet {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
        let port = free_port();
        let serve = Serve::start(tmp.path(), port, args);
        serve.wait_healthy(&drover_agent::tls::client(), Duration::from_secs(30)).await;
        let admin = admin_client(&tmp.path().join("cp"));
        let api = serve.api.clone();
        let mut agents = Vec::new();
        for (i, zone) in ["zone-a", "zone-b", "zone-c"].iter().enumerate() {
            let name = format!("h{}", i + 1);
            let address = format!("127.0.0.{}", i + 2);
            let token =
                create_token(&admin, &api, json!({"name": format!("agent-{name}"), "role": "agent", "host": name}))
                    .await;
            agents.push((
                name.clone(),
                HostAgent::spawn_sharing_backups(tmp.path(), &api, &name, zone, &address, &token),
            ));
        }
        wait_for(Duration::from_secs(30), "three hosts registered", &serve, || {
            let (admin, api) = (admin.clone(), api.clone());
            async move {
                let (_, hosts) = get(&admin, &format!("{api}/v1/hosts")).await?;
                let agents = hosts.as_array()?.iter().filter(|h| h["state"] == "ready" && h["name"] != serve_host());
                (agents.count() == 3).then_some(())
            }
        })
        .await;
        Fleet { _tmp: tmp, serve, admin, api, agents }
    }

    fn agent(&self, host: &str) -> &HostAgent {
        &self.agents.iter().find(|(n, _)| n == host).unwrap_or_else(|| panic!("no agent {host}")).1
    }

    fn logs(&self) -> String {
        let mut text = self.serve.log_tail();
        for (name, agent) in &self.agents {
            text.push_str(&format!("\n--- agent {name} ---\n{}", common_tail(&agent.log())));
        }
        text
    }

    async fn service(&self, name: &str) -> Option<Value> {
        get(&self.admin, &format!("{}/v1/services/{name}", self.api)).await.map(|(_, s)| s)
    }

    /// `POST /v1/chaos {"host", "fault"}`, accepted.
    async fn host_chaos(&self, host: &str, fault: &str) {
        let r = self
            .admin
            .post(format!("{}/v1/chaos", self.api))
            .json(&json!({"host": host, "fault": fault}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    }

    /// Creates PostgreSQL service `name` with one synchronous follower over
    /// the three zones (so on two of the agents' hosts).
    async fn create_sync_pair(&self, name: &str) {
        let r = self
            .admin
            .post(format!("{}/v1/services", self.api))
            .json(&json!({"name": name, "engine": "postgres", "followers": 1, "sync": true, "provider": "local",
                          "zones": ["zone-a", "zone-b", "zone-c"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    }

    /// The service once it is available with a writable primary and an
    /// available follower on another host.
    async fn wait_pair(&self, name: &str, what: &str, timeout: Duration) -> (Value, Value) {
        wait_for(timeout, what, &self.serve, || async {
            let s = self.service(name).await?;
            let instances = s["instances"].as_array()?;
            let primary = instances
                .iter()
                .find(|i| i["role"] == "primary" && i["writable"] == true && i["state"] == "available")?;
            let follower = instances.iter().find(|i| {
                i["role"] == "follower"
                    && i["state"] == "available"
                    && i["facts"]["upstream_streaming"] == true
                    && i["host"] != primary["host"]
            })?;
            (s["state"] == "available").then(|| (primary.clone(), follower.clone()))
        })
        .await
    }
}

impl Drop for Fleet {
    /// A failed test keeps its agents' logs in the output.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, agent) in &self.agents {
                eprintln!("--- agent {name} ---\n{}", common_tail(&agent.log()));
            }
        }
    }
}

fn common_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The primary's view of its standbys: (application name, client address,
/// state, sync state). A standby over TCP has a client address (over the
/// unix socket it has none); one host's connection to another loopback
/// address leaves from 127.0.0.1, so the application name (the instance
/// id) says which standby it is.
async fn standbys(primary: &Path, port: u16) -> Vec<(String, String, String, String)> {
    let Some(client) = admin_sql(primary, port, "postgres").await else { return Vec::new() };
    query_text(
        &client,
        "SELECT application_name, host(client_addr), state, sync_state FROM pg_stat_replication \
         WHERE application_name <> 'pg_basebackup'",
    )
    .await
    .into_iter()
    .map(|r| {
        let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
        (get(0), get(1), get(2), get(3))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_hosts_replicate_synchronously_over_tcp_and_switch_over() {
    let fleet = Fleet::start("dr-ar").await;
    fleet.create_sync_pair("db1").await;

    let (primary, follower) = fleet.wait_pair("db1", "db1 available on two hosts", Duration::from_secs(180)).await;
    let (p_host, f_host) = (primary["host"].as_str().unwrap(), follower["host"].as_str().unwrap());
    assert_ne!(p_host, f_host, "never two members of one service on one host");
    let (p_socket, p_port) =
        fleet.agent(p_host).socket_of(primary["id"].as_str().unwrap()).expect("primary in its registry");
    let (f_socket, f_port) =
        fleet.agent(f_host).socket_of(follower["id"].as_str().unwrap()).expect("follower in its registry");
    assert!(
        fleet.agent(f_host).socket_of(primary["id"].as_str().unwrap()).is_none(),
        "the follower's host built no primary"
    );

    // The URL is the router beside the control plane (no database host's),
    // and it reaches the primary on its host over TCP.
    let url =
        fleet.service("db1").await.unwrap()["url"].as_str().expect("a service on agent hosts has a URL").to_string();
    assert!(url.contains("@127.0.0.1:"), "{url}");
    let via_url = wait_for(Duration::from_secs(30), "the URL answers", &fleet.serve, || {
        let url = url.clone();
        async move { url_client(&url).await }
    })
    .await;
    assert_eq!(server_address(&via_url).await.as_deref(), Some(fleet.agent(p_host).address.as_str()));
    via_url.batch_execute("CREATE TABLE u (v int); INSERT INTO u VALUES (1)").await.expect("a write through the URL");
    let router_pids = std::process::Command::new("pgrep").args(["-f", "cp/routers/"]).output().unwrap();
    assert!(!router_pids.stdout.is_empty(), "pgbouncer runs under the control plane's data dir");

    // The follower streams over TCP from its own host's address, and the
    // primary's agent made it synchronous.
    let f_id = follower["id"].as_str().unwrap().to_string();
    let seen = wait_for(Duration::from_secs(30), "a synchronous standby streaming over TCP", &fleet.serve, || {
        let (p_socket, f_id) = (p_socket.clone(), f_id.clone());
        async move {
            let rows = standbys(&p_socket, p_port).await;
            rows.iter()
                .any(|(name, addr, state, sync)| {
                    name == &f_id
                        && addr.starts_with("127.")
                        && state == "streaming"
                        && (sync == "quorum" || sync == "sync")
                })
                .then_some(rows)
        }
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");

    // No replication password in the follower's conninfo (a passfile holds it).
    let f_client = admin_sql(&f_socket, f_port, "postgres").await.expect("follower answers");
    let conninfo = query_text(&f_client, "SHOW primary_conninfo").await;
    let conninfo = conninfo[0][0].clone().unwrap_or_default();
    assert!(conninfo.contains(&format!("host='{}'", fleet.agent(p_host).address)), "{conninfo}");
    assert!(conninfo.contains("passfile=") && !conninfo.contains("password"), "{conninfo}");

    // Writes on the primary reach the follower on the other host.
    let p_client = admin_sql(&p_socket, p_port, "app").await.expect("primary answers");
    p_client.batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 100)").await.unwrap();
    let f_app = admin_sql(&f_socket, f_port, "app").await.expect("follower answers");
    let rows = query_text(&f_app, "SELECT count(*) FROM t").await;
    // Synchronous: the commit above waited for the follower's flush, and
    // remote_apply is not asked, so look for a moment.
    let count = match rows.first().and_then(|r| r[0].clone()) {
        Some(c) if c == "100" => c,
        _ => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            query_text(&f_app, "SELECT count(*) FROM t").await[0][0].clone().unwrap_or_default()
        }
    };
    assert_eq!(count, "100");

    // Strict synchronous mode: with the follower frozen (its postmaster
    // and walreceiver stopped), a commit is not acknowledged until another
    // follower holds it: the engine replaces the frozen one (its probe
    // fails), the new one streams, and only then does the commit return. No
    // write is ever acknowledged that only the primary holds.
    let f_pid = fleet
        .agent(f_host)
        .dir_of(&f_id)
        .and_then(|dir| std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).ok())
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .expect("the follower's postmaster pid");
    let _ = Command::new("pkill").args(["-STOP", "-P", &f_pid.to_string()]).status();
    let _ = Command::new("kill").args(["-STOP", &f_pid.to_string()]).status();
    let insert = p_client.batch_execute("INSERT INTO t VALUES (1000)");
    let waited = tokio::time::timeout(Duration::from_secs(60), insert).await;
    assert!(matches!(waited, Ok(Ok(()))), "the commit never returned: {waited:?}");
    // Who held it: the new follower streaming, or its base backup's own WAL
    // stream (named `pg_basebackup`: it reports a flush position only for
    // WAL fsynced into the new follower's data dir), which ends when the
    // backup does; then the new follower streams from the copy. So: a
    // holder right now, or the new follower holding it soon after.
    let acked_at = query_text(&p_client, "SELECT pg_current_wal_flush_lsn()").await[0][0].clone().unwrap_or_default();
    let holders_sql = format!(
        "SELECT application_name FROM pg_stat_replication WHERE application_name <> '{f_id}' \
         AND flush_lsn >= '{acked_at}'::pg_lsn - 8192"
    );
    let mut holders = query_text(&p_client, &holders_sql).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while holders.is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holders = query_text(&p_client, &format!("{holders_sql} AND application_name <> 'pg_basebackup'")).await;
    }
    let _ = Command::new("kill").args(["-CONT", &f_pid.to_string()]).status();
    let _ = Command::new("pkill").args(["-CONT", "-P", &f_pid.to_string()]).status();
    assert!(!holders.is_empty(), "the commit was acknowledged with no other follower holding it: {}", fleet.logs());
    let (_, follower) = fleet.wait_pair("db1", "db1 with a new follower", Duration::from_secs(120)).await;
    assert_ne!(follower["id"], f_id.as_str(), "the frozen follower was replaced");
    let f_host = follower["host"].as_str().unwrap().to_string();
    let f_host = f_host.as_str();

    // A planned switchover: the follower on the other host becomes the
    // primary; a new follower is then built from it over TCP.
    // (Refused with 409 while the replaced follower's remedy finishes.)
    wait_for(Duration::from_secs(60), "the switchover accepted", &fleet.serve, || async {
        let r = fleet.admin.post(format!("{}/v1/services/db1/switchover", fleet.api)).send().await.ok()?;
        match r.status().as_u16() {
            202 => Some(()),
            409 => None,
            other => panic!("switchover answered {other}: {}", r.text().await.unwrap_or_default()),
        }
    })
    .await;
    let old_primary = primary["id"].as_str().unwrap().to_string();
    let fleet_ref = &fleet;
    let (new_primary, new_follower) =
        wait_for(Duration::from_secs(180), "switched over with a new follower", &fleet.serve, || {
            let old_primary = old_primary.clone();
            async move {
                let s = fleet_ref.service("db1").await?;
                let instances = s["instances"].as_array()?;
                let primary = instances.iter().find(|i| {
                    i["role"] == "primary"
                        && i["writable"] == true
                        && i["state"] == "available"
                        && i["id"] != old_primary.as_str()
                })?;
                let follower = instances.iter().find(|i| {
                    i["role"] == "follower"
                        && i["state"] == "available"
                        && i["facts"]["upstream_streaming"] == true
                        && i["host"] != primary["host"]
                })?;
                (s["state"] == "available").then(|| (primary.clone(), follower.clone()))
            }
        })
        .await;
    assert_eq!(new_primary["host"], f_host, "the follower was promoted where it ran");
    let (np_socket, np_port) = fleet.agent(f_host).socket_of(new_primary["id"].as_str().unwrap()).unwrap();
    let nf_host = new_follower["host"].as_str().unwrap();
    let nf_id = new_follower["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the new follower streams synchronously over TCP", &fleet.serve, || {
        let (np_socket, nf_id) = (np_socket.clone(), nf_id.clone());
        async move {
            let rows = standbys(&np_socket, np_port).await;
            rows.iter()
                .any(|(name, addr, state, sync)| {
                    name == &nf_id
                        && addr.starts_with("127.")
                        && state == "streaming"
                        && (sync == "quorum" || sync == "sync")
                })
                .then_some(())
        }
    })
    .await;
    // The same URL now reaches the new primary on its host, and the row
    // written through it before the switchover is there.
    let after = wait_for(Duration::from_secs(30), "a write through the URL after the switchover", &fleet.serve, || {
        let url = url.clone();
        async move {
            let client = url_client(&url).await?;
            client.batch_execute("INSERT INTO u VALUES (2)").await.ok()?;
            Some(client)
        }
    })
    .await;
    assert_eq!(
        server_address(&after).await.as_deref(),
        Some(fleet.agent(f_host).address.as_str()),
        "the router follows the primary"
    );
    let rows = query_text(&after, "SELECT count(*) FROM u").await;
    assert_eq!(rows[0][0].as_deref(), Some("2"), "{}", fleet.logs());
    let (nf_socket, nf_port) = fleet.agent(nf_host).socket_of(new_follower["id"].as_str().unwrap()).unwrap();
    let nf_app = admin_sql(&nf_socket, nf_port, "app").await.expect("new follower answers");
    let count = query_text(&nf_app, "SELECT count(*) FROM t").await;
    assert_eq!(count[0][0].as_deref(), Some("101"), "the new follower holds every acknowledged row: {}", fleet.logs());
}

/// The state letter of process `pid` in /proc (`T`: stopped), None once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// The postmaster pid of instance `id` on `agent`'s host.
fn postmaster_pid(agent: &HostAgent, id: &str) -> Option<u32> {
    let dir = agent.dir_of(id)?;
    std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_chaos_is_one_action_of_its_agent_crash_kills_the_tree_and_hang_freezes_it() {
    let fleet = Fleet::start("dr-hc").await;
    fleet.create_sync_pair("db1").await;
    let (primary, follower) = fleet.wait_pair("db1", "db1 available on two hosts", Duration::from_secs(180)).await;
    let (p_host, f_host) = (primary["host"].as_str().unwrap(), follower["host"].as_str().unwrap());
    let p_pid = postmaster_pid(fleet.agent(p_host), primary["id"].as_str().unwrap()).expect("primary's postmaster");
    let f_pid = postmaster_pid(fleet.agent(f_host), follower["id"].as_str().unwrap()).expect("follower's postmaster");
    let p_agent = fleet.agent(p_host).child.as_ref().unwrap().id();
    let f_agent = fleet.agent(f_host).child.as_ref().unwrap().id();

    // Hang: the primary's agent freezes itself and everything it runs.
    fleet.host_chaos(p_host, "hang").await;
    wait_for(Duration::from_secs(10), "the primary's host frozen", &fleet.serve, || async {
        (process_state(p_agent) == Some('T') && process_state(p_pid) == Some('T')).then_some(())
    })
    .await;
    assert!(process_state(f_agent).is_some_and(|s| s != 'T'), "the other hosts run on");

    // Crash: the follower's agent SIGKILLs its tree, then itself.
    fleet.host_chaos(f_host, "crash").await;
    wait_for(Duration::from_secs(10), "the follower's host dead", &fleet.serve, || async {
        // A killed child stays a zombie until the test reaps it.
        let agent_dead = matches!(process_state(f_agent), None | Some('Z'));
        (agent_dead && matches!(process_state(f_pid), None | Some('Z'))).then_some(())
    })
    .await;
    assert!(fleet.agent(f_host).log().contains("chaos: faulting this whole host"), "{}", fleet.logs());
    let events = get(&fleet.admin, &format!("{}/v1/events?limit=200", fleet.api)).await.map(|(_, e)| e.to_string());
    assert!(
        events.unwrap_or_default().contains(&format!("chaos: crash host {f_host}: its agent kills itself")),
        "the engine recorded the host chaos"
    );

    // Thawed, the frozen host's processes run again.
    let _ = Command::new("kill").args(["-CONT", &p_agent.to_string()]).status();
    let _ = Command::new("pkill").args(["-CONT", "-P", &p_pid.to_string()]).status();
    let _ = Command::new("kill").args(["-CONT", &p_pid.to_string()]).status();
    assert!(process_state(p_agent).is_some_and(|s| s != 'T'));
}

/// Issue 11, "done means": a drained host ends with no instance on it, with
/// zero failed statements for the services moved. The primary's host is
/// drained under a steady write load through the URL: the drain switches
/// the primary over (planned: the router holds new statements, the
/// follower on another host is promoted, the router follows it) and
/// rebuilds the follower on the third host; every statement succeeds and
/// every acknowledged row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_ends_empty_with_zero_failed_statements() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let fleet = Fleet::start("dr-drain").await;
    fleet.create_sync_pair("dd").await;
    let (primary, follower) = fleet.wait_pair("dd", "dd available on two hosts", Duration::from_secs(180)).await;
    let (p_host, f_host) =
        (primary["host"].as_str().unwrap().to_string(), follower["host"].as_str().unwrap().to_string());
    let third = ["h1", "h2", "h3"].into_iter().find(|h| *h != p_host && *h != f_host).unwrap();
    let url = fleet.service("dd").await.unwrap()["url"].as_str().expect("a URL").to_string();
    let setup = wait_for(Duration::from_secs(30), "the URL answers", &fleet.serve, || {
        let url = url.clone();
        async move { url_client(&url).await }
    })
    .await;
    setup.batch_execute("CREATE TABLE moved (n bigint PRIMARY KEY)").await.unwrap();

    // One session through the router, as an application keeps it.
    let (acked, failed, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let writer = {
        let (acked, failed, stop, client) = (acked.clone(), failed.clone(), stop.clone(), setup);
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = acked.load(Ordering::SeqCst) + 1;
                match client.batch_execute(&format!("INSERT INTO moved VALUES ({n})")).await {
                    Ok(()) => {
                        acked.store(n, Ordering::SeqCst);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = fleet.admin.post(format!("{}/v1/hosts/{p_host}/drain", fleet.api)).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());

    let (new_primary, new_follower) =
        wait_for(Duration::from_secs(240), "the drained host empty", &fleet.serve, || async {
            let (_, hosts) = get(&fleet.admin, &format!("{}/v1/hosts", fleet.api)).await?;
            let drained = hosts.as_array()?.iter().find(|h| h["name"] == p_host.as_str())?;
            (drained["instances"] == 0 && drained["state"] == "draining").then_some(())?;
            let s = fleet.service("dd").await?;
            let members = s["instances"].as_array()?;
            let p = members.iter().find(|i| i["writable"] == true && i["state"] == "available")?;
            let f = members.iter().find(|i| i["role"] == "follower" && i["facts"]["upstream_streaming"] == true)?;
            (s["state"] == "available" && members.len() == 2).then(|| (p.clone(), f.clone()))
        })
        .await;
    assert_eq!(new_primary["host"], f_host.as_str(), "the follower on another host was promoted");
    assert_eq!(new_follower["host"], third, "the new follower is on the third host");
    // A little more load on the new primary, then stop.
    let before = acked.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(30), "writes go on", &fleet.serve, || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) > before + 10).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let errors = writer.await.unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed statements during the drain: {errors:?}\n{}", fleet.logs());
    let count = url_client(&url).await.expect("the URL answers");
    let rows = query_text(&count, "SELECT count(*) FROM moved").await;
    let n = acked.load(Ordering::SeqCst);
    assert!(n > 20, "too few writes to say anything: {n}");
    assert_eq!(rows[0][0].as_deref(), Some(n.to_string().as_str()), "every acknowledged row is on the new primary");
}

/// A control plane with a host of its own (`drover serve` as the README
/// runs it, local provider and built-in host) and agents beside it: a
/// service the agents' hosts can hold goes whole to them, and its URL is a
/// router beside the control plane that reaches its primary on its host;
/// a switchover moves the primary and the same URL follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_with_its_own_host_routes_the_services_on_its_agents() {
    let fleet = Fleet::start_with("dr-arm", &["--data-dir", "cp"]).await;
    let (_, hosts) = get(&fleet.admin, &format!("{}/v1/hosts", fleet.api)).await.unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 4, "the built-in host and three agents: {hosts}");
    fleet.create_sync_pair("mx").await;
    let (primary, follower) = fleet.wait_pair("mx", "mx available on two agent hosts", Duration::from_secs(180)).await;
    let p_host = primary["host"].as_str().unwrap().to_string();
    for member in [&primary, &follower] {
        assert!(member["host"].as_str().unwrap().starts_with('h'), "placed on an agent host: {member}");
    }
    let url = fleet.service("mx").await.unwrap()["url"]
        .as_str()
        .expect("a service on agent hosts has a URL beside a control plane with its own host")
        .to_string();
    assert!(url.contains("@127.0.0.1:"), "{url}");
    let via_url = wait_for(Duration::from_secs(30), "the URL answers", &fleet.serve, || {
        let url = url.clone();
        async move { url_client(&url).await }
    })
    .await;
    assert_eq!(server_address(&via_url).await.as_deref(), Some(fleet.agent(&p_host).address.as_str()));
    via_url.batch_execute("CREATE TABLE m (v int); INSERT INTO m VALUES (1)").await.expect("a write through the URL");

    wait_for(Duration::from_secs(60), "the switchover accepted", &fleet.serve, || async {
        let r = fleet.admin.post(format!("{}/v1/services/mx/switchover", fleet.api)).send().await.ok()?;
        match r.status().as_u16() {
            202 => Some(()),
            409 => None,
            other => panic!("switchover answered {other}: {}", r.text().await.unwrap_or_default()),
        }
    })
    .await;
    let moved = wait_for(Duration::from_secs(120), "the URL reaches the new primary", &fleet.serve, || {
        let (url, old) = (url.clone(), fleet.agent(&p_host).address.clone());
        async move {
            let client = url_client(&url).await?;
            let address = server_address(&client).await?;
            let writable = client.batch_execute("INSERT INTO m VALUES (2)").await.is_ok();
            (address != old && writable).then_some(client)
        }
    })
    .await;
    let rows = query_text(&moved, "SELECT count(*) FROM m").await;
    assert_eq!(rows[0][0].as_deref(), Some("2"), "both writes through the same URL are there");
    assert_eq!(fleet.service("mx").await.unwrap()["url"].as_str(), Some(url.as_str()), "the URL is unchanged");

    // Backups of a service on agent hosts go to the store every host shares
    // (`--backup-repo`): one taken from the new primary's host succeeds.
    wait_for(Duration::from_secs(60), "a backup requested", &fleet.serve, || async {
        let r = fleet.admin.post(format!("{}/v1/services/mx/backups", fleet.api)).send().await.ok()?;
        (r.status().as_u16() == 202).then_some(())
    })
    .await;
    let backups = wait_for(Duration::from_secs(120), "a backup of mx", &fleet.serve, || async {
        let s = fleet.service("mx").await?;
        (!s["backups"]["last_backup_at"].is_null()).then(|| s["backups"].clone())
    })
    .await;
    assert!(backups["last_backup_error"].is_null(), "{backups}");
    drop(moved);
    drop(via_url);

    // Deleted to the end, the service's router beside the control plane
    // stops and its port is free.
    let port: u16 = url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).expect("a port");
    let r = fleet.admin.delete(format!("{}/v1/services/mx", fleet.api)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    wait_for(Duration::from_secs(120), "the deleted service's router stopped", &fleet.serve, || async {
        let gone = get(&fleet.admin, &format!("{}/v1/services/mx", fleet.api)).await?.0 == 404;
        let closed = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
        // Forgotten durably too: a restart does not start it again.
        let routes = std::fs::read_to_string(fleet._tmp.path().join("cp/routers/routes.json")).ok()?;
        (gone && closed && !routes.contains("\"mx\"")).then_some(())
    })
    .await;
    // Its final backup was taken on an agent host, into the shared store.
    let (_, archives) = get(&fleet.admin, &format!("{}/v1/archives", fleet.api)).await.unwrap();
    let archive = archives.as_array().unwrap().iter().find(|a| a["service"] == "mx").cloned();
    assert_eq!(archive.as_ref().map(|a| a["state"].clone()), Some(json!("archived")), "{archives}");
}

/// The `POST /v1/heartbeats` counter of batches answered before the engine
/// took them, from `/metrics`.
async fn answered_early(fleet: &Fleet) -> f64 {
    let text = fleet.admin.get(format!("{}/metrics", fleet.api)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("drover_heartbeat_batches_answered_early_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Issue 11's lease hazard: an agent host renews its 1 s lease by the
/// acknowledgement of its heartbeat batch. The engine is stalled here by a
/// real cause: another process (an operator's sqlite3 shell, a backup
/// tool) holds the store's write lock for 2.5 s, so the engine's next group
/// commit waits for it, and every input behind it with it. The control
/// plane still answers the agents' batches within its budget, so the
/// primary's agent does not fence it: every write through the URL during
/// the stall succeeds, and the primary stays writable.
/// (Before the heartbeat handler answered within a budget, this test saw
/// the agent log "lease expired: fencing this primary" and the writer's
/// sessions cut.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_does_not_make_an_agent_host_fence_its_primary() {
    /// Longer than the agents' 1 s lease with room to spare.
    const STALL: Duration = Duration::from_millis(2_500);
    let fleet = Fleet::start("dr-lease").await;
    let r = fleet
        .admin
        .post(format!("{}/v1/services", fleet.api))
        .json(&json!({"name": "solo", "engine": "postgres", "provider": "local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    let primary = wait_for(Duration::from_secs(120), "solo available", &fleet.serve, || async {
        let s = fleet.service("solo").await?;
        let primary = s["instances"]
            .as_array()?
            .iter()
            .find(|i| i["role"] == "primary" && i["writable"] == true && i["state"] == "available")?
            .clone();
        (s["state"] == "available" && s["url"].is_string()).then_some(primary)
    })
    .await;
    let (p_id, p_host) = (primary["id"].as_str().unwrap().to_string(), primary["host"].as_str().unwrap().to_string());
    let url = fleet.service("solo").await.unwrap()["url"].as_str().unwrap().to_string();
    let client = wait_for(Duration::from_secs(30), "the URL answers", &fleet.serve, || {
        let url = url.clone();
        async move { url_client(&url).await }
    })
    .await;
    client.batch_execute("CREATE TABLE w (n bigint PRIMARY KEY)").await.expect("a write through the URL");

    // A steady writer through the URL: every statement must be answered
    // within 3 s and succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), url.clone());
        tokio::spawn(async move {
            let mut client = Some(client);
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let started = std::time::Instant::now();
                let outcome = match &client {
                    Some(c) => {
                        match tokio::time::timeout(
                            Duration::from_secs(3),
                            c.batch_execute(&format!("INSERT INTO w VALUES ({n})")),
                        )
                        .await
                        {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("no answer within 3 s".to_string()),
                        }
                    }
                    None => Err("no session".to_string()),
                };
                match outcome {
                    Ok(()) => acked.push(started),
                    Err(e) => {
                        failed.push((n, e));
                        client = url_client(&url).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early_before = answered_early(&fleet).await;

    // The stall: the store's write lock held by another connection.
    let db = fleet._tmp.path().join("cp/drover.db");
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let locker = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).expect("open the store");
        conn.execute_batch("BEGIN IMMEDIATE").expect("take the store's write lock");
        held_tx.send(()).unwrap();
        std::thread::sleep(STALL);
        conn.execute_batch("ROLLBACK").expect("release the store's write lock");
    });
    held_rx.recv().unwrap();
    let stall_started = std::time::Instant::now();
    // A change the engine must make durable: its commit waits for the lock.
    let r = fleet
        .admin
        .put(format!("{}/v1/services/solo/labels", fleet.api))
        .json(&json!({"labels": {"stalled": "yes"}}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let engine_stalled_for = stall_started.elapsed();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
    locker.join().unwrap();
    assert!(
        engine_stalled_for >= Duration::from_millis(1_500),
        "the engine did not stall: the labels change was durable after {engine_stalled_for:?}"
    );
    // The agent's lease (1 s) would long have run out; give its fence time
    // to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    let during = acked.iter().filter(|t| **t >= stall_started && t.duration_since(stall_started) < STALL).count();
    let early = answered_early(&fleet).await - early_before;
    let agent_log = fleet.agent(&p_host).log();
    eprintln!(
        "engine stalled {engine_stalled_for:?}; writes acknowledged {} ({during} during the stall), failed {}; \
         batches answered before the engine took them: {early}",
        acked.len(),
        failed.len()
    );
    assert!(
        !agent_log.contains("lease expired: fencing this primary"),
        "the agent fenced its primary:\n{}",
        fleet.logs()
    );
    assert!(failed.is_empty(), "writes through the URL failed during the stall: {failed:?}\n{}", fleet.logs());
    assert!(during >= 10, "the writer was not writing during the stall ({during} writes)");
    assert!(early >= 1.0, "no batch was answered before the engine took it: the stall was not seen");

    // The primary's own server still takes writes, and it is still the
    // service's writable primary (no failover, no fence).
    let (socket, port) = fleet.agent(&p_host).socket_of(&p_id).unwrap();
    let admin = admin_sql(&socket, port, "postgres").await.expect("the primary answers");
    let read_only = query_text(&admin, "SHOW default_transaction_read_only").await;
    assert_eq!(read_only[0][0].as_deref(), Some("off"), "the primary was fenced");
    let s = fleet.service("solo").await.unwrap();
    let now_primary = s["instances"].as_array().unwrap().iter().find(|i| i["role"] == "primary").cloned().unwrap();
    assert_eq!(
        (now_primary["id"].as_str(), now_primary["writable"].as_bool()),
        (Some(p_id.as_str()), Some(true)),
        "{s}"
    );
    let (_, events) = get(&fleet.admin, &format!("{}/v1/events?instance={p_id}", fleet.api)).await.unwrap();
    for e in events.as_array().into_iter().flatten() {
        eprintln!("event: {e}");
    }
    let (_, actions) = get(&fleet.admin, &format!("{}/v1/actions", fleet.api)).await.unwrap();
    let fences: Vec<&Value> = actions.as_array().unwrap().iter().filter(|a| a["kind"] == "fence").collect();
    assert!(fences.is_empty(), "a Fence was decided: {fences:?}");
}
