//! Kafka services of the local provider end to end (issue 14): real `tansu`
//! brokers (pinned 0.6.0, as user `drover` when run as root) over a
//! PostgreSQL storage, HAProxy as the bootstrap address, driven through
//! the HTTP API of an in-process server, and a real Kafka client
//! (confluent-kafka, i.e. librdkafka, from `tests/kafka/client.py`).
//!
//! Needs `tansu` (scripts/lib.sh `ensure_tansu`) and the Python package
//! `confluent-kafka` (scripts/lib.sh `PYTHON_PACKAGES`).

mod common;

use common::poll;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SLOW: Duration = Duration::from_secs(180);

/// Kills, on drop, every process whose working directory or command line
/// is under `dir` (brokers chdir to theirs; postgres and HAProxy name their
/// files): nothing outlives its test, also when it fails.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.0);
        }
        // Twice: a router the provider was starting in the first sweep's
        // moment (a broker's provision in flight) is caught by the second.
        for sweep in 0..2 {
            if sweep > 0 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            let Ok(entries) = std::fs::read_dir("/proc") else { return };
            let dir = self.0.to_string_lossy().into_owned();
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
                // As text: once the server has gone its temp dir is deleted,
                // and a process inside it shows "<dir> (deleted)".
                let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if cwd.to_string_lossy().starts_with(&dir) || String::from_utf8_lossy(&cmdline).contains(&dir) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// On failure: the data dir and the tail of every broker's and storage's
/// log (the temp dir is deleted when the test ends).
fn dump_logs(data_dir: &Path) {
    eprintln!("test data dir (deleted at the end): {}", data_dir.display());
    let kafka = data_dir.join("local/kafka");
    let mut logs: Vec<PathBuf> = Vec::new();
    for (sub, file) in [("brokers", "tansu.log"), ("services", "storage/server.log")] {
        for e in std::fs::read_dir(kafka.join(sub)).into_iter().flatten().flatten() {
            logs.push(e.path().join(file));
        }
    }
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("---- {} (last {} lines)", log.display(), tail.len());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// The reaper first: bound as `let (_reaper, t) = …`, it is dropped after
/// the server, so nothing the server still starts while it stops escapes
/// it (a Kafka router outlived its test that way).
///
/// The data dir is as deep as a newcomer's checkout (`/root/src/drover/
/// drover-data`-like and deeper): the router's admin socket in it would pass
/// HAProxy's 97-byte limit, so every test here runs the short fallback
/// socket (a first run from such a clone once had no Kafka at all).
async fn start_local() -> (Reaper, common::TestServer) {
    let dir = tempfile::Builder::new().prefix("dk-a-checkout-as-deep-as-a-home-dir-").tempdir_in("/tmp").unwrap();
    let t = common::start_in(dir, move |opts| {
        opts.engine.default_provider = "local".into();
        opts.engine.uncertain_after = Duration::from_secs(2);
        opts.engine.install_timeout = Duration::from_secs(120);
        opts.engine.action_timeout = Duration::from_secs(60);
        opts.engine.backup_interval = None;
        opts.engine.verify_interval = None;
        opts.local = Some(drover_providers::local::LocalConfig {
            probe_interval: Duration::from_millis(300),
            kill_servers_on_drop: true,
            ..Default::default()
        });
    })
    .await;
    let reaper = Reaper(t.dir.path().to_path_buf());
    (reaper, t)
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/client.py")
}

fn bootstrap(service: &Value) -> String {
    let url = service["url"].as_str().expect("a Kafka service has a url");
    url.strip_prefix("kafka://").unwrap_or_else(|| panic!("not a kafka:// url: {url}")).to_string()
}

fn serving_brokers(s: &Value) -> Vec<Value> {
    s["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["role"] == "broker" && i["state"] == "available" && i["fenced"] != true)
        .cloned()
        .collect()
}

async fn wait_brokers(t: &common::TestServer, name: &str, not: Option<&str>) -> Value {
    let deadline = std::time::Instant::now() + SLOW;
    loop {
        let s = t.service(name).await;
        let brokers = serving_brokers(&s);
        let without = not.is_none_or(|gone| brokers.iter().all(|b| b["id"] != gone));
        if s["state"] == "available" && brokers.len() == 3 && without {
            return s;
        }
        if std::time::Instant::now() >= deadline {
            let events = t.events(&format!("service={name}")).await;
            let events: Vec<String> = events.iter().rev().take(60).rev().map(Value::to_string).collect();
            panic!(
                "timed out after {SLOW:?} waiting for three available brokers: {s:#}\nevents:\n{}",
                events.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `client.py` to completion; its stdout.
fn run_client(args: &[&str]) -> String {
    let out = Command::new("python3").arg(client_script()).args(args).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "client.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A producer under load: `client.py produce` in the background, its
/// acknowledgements collected as they come.
struct Producer {
    child: Child,
    stop_file: PathBuf,
    /// (record, seconds since the producer started) per acknowledgement.
    acks: Arc<Mutex<Vec<(u64, f64)>>>,
    fails: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Producer {
    fn start(bootstrap: &str, topic: &str, dir: &Path) -> Producer {
        Producer::start_with(bootstrap, topic, dir, "idempotent")
    }

    /// `idempotence`: "idempotent" or "plain" (`client.py produce`).
    fn start_with(bootstrap: &str, topic: &str, dir: &Path, idempotence: &str) -> Producer {
        let stop_file = dir.join(format!("stop-{topic}"));
        let mut child = Command::new("python3")
            .arg(client_script())
            .args(["produce", bootstrap, topic])
            .arg(&stop_file)
            .arg(idempotence)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let fails = Arc::new(Mutex::new(Vec::new()));
        let (a, f) = (acks.clone(), fails.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["ack", n, at] => a.lock().unwrap().push((n.parse().unwrap(), at.parse().unwrap())),
                    ["fail", ..] => f.lock().unwrap().push(line.clone()),
                    _ => eprintln!("producer: {line}"),
                }
            }
        });
        Producer { child, stop_file, acks, fails, reader }
    }
    fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }
    /// Stops producing, waits for the last deliveries; the acknowledgements.
    fn finish(mut self) -> (Vec<(u64, f64)>, Vec<String>) {
        std::fs::write(&self.stop_file, b"stop").unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        assert!(status.success(), "the producer exited with {status}");
        let acks = self.acks.lock().unwrap().clone();
        let fails = self.fails.lock().unwrap().clone();
        (acks, fails)
    }
}

fn broker_pid(data_dir: &Path, instance: &str) -> i32 {
    let path = data_dir.join("local/kafka/brokers").join(instance).join("tansu.pid");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().parse().unwrap()
}

/// The serving broker that holds the most client sessions at the router
/// (HAProxy's `show stat`, `scur` per server): the producer's, so killing
/// it cuts the producer's connection rather than an idle broker.
fn busiest_broker(data_dir: &Path, s: &Value) -> String {
    let services = data_dir.join("local/kafka/services");
    let service_dir = std::fs::read_dir(&services).unwrap().flatten().next().expect("one Kafka service").path();
    let config = std::fs::read_to_string(service_dir.join("router/haproxy.cfg")).unwrap();
    let socket = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("stats socket "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the router's admin socket");
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    std::io::Write::write_all(&mut stream, b"show stat\n").unwrap();
    let mut stat = String::new();
    std::io::Read::read_to_string(&mut stream, &mut stat).unwrap();
    // pxname,svname,qcur,qmax,scur,...
    let sessions: Vec<(String, u64)> = stat
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[0] == "kafka" && f[1].starts_with('b'))
        .map(|f| (f[1].to_string(), f[4].parse().unwrap_or(0)))
        .collect();
    let (server, scur) = sessions.iter().max_by_key(|(_, n)| *n).cloned().expect("router servers");
    assert!(scur > 0, "no client session at the router: {sessions:?}");
    eprintln!("router sessions per server: {sessions:?}; killing the broker of {server}");
    let registry: Value = serde_json::from_slice(&std::fs::read(data_dir.join("local/kafka.json")).unwrap()).unwrap();
    let serving: BTreeSet<String> = serving_brokers(s).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    let slot: u64 = server[1..].parse().unwrap();
    registry["instances"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(id, b)| serving.contains(*id) && b["slot"] == slot)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| panic!("no serving broker in router slot {server}: {registry}"))
}

/// Every acknowledged record is consumed back by a consumer group.
fn consume_all(bootstrap: &str, topic: &str, acks: &[(u64, f64)]) {
    let wanted: BTreeSet<u64> = acks.iter().map(|(n, _)| *n).collect();
    // The consumer waits for these very records, not for as many: a
    // refused produce may have been written all the same (tansu answers -1
    // after the storage committed it), and counting it would stop the
    // consumer one short of the last acknowledged record.
    let list = tempfile::NamedTempFile::new().unwrap();
    let ids: Vec<String> = wanted.iter().map(u64::to_string).collect();
    std::fs::write(list.path(), ids.join("\n")).unwrap();
    let want = format!("@{}", list.path().display());
    let out = run_client(&["consume", bootstrap, topic, &format!("g-{topic}"), &want, "120"]);
    let got: BTreeSet<u64> =
        out.lines().filter_map(|l| l.strip_prefix("got ")).map(|n| n.trim().parse().unwrap()).collect();
    let extra: Vec<&u64> = got.difference(&wanted).collect();
    if !extra.is_empty() {
        eprintln!(
            "consumed {} records whose produce was refused or unanswered, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(10)]
        );
    }
    let lost: Vec<&u64> = wanted.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records not consumed, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

fn longest_gap(acks: &[(u64, f64)]) -> f64 {
    let mut times: Vec<f64> = acks.iter().map(|(_, at)| *at).collect();
    times.sort_by(f64::total_cmp);
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_service_takes_records_and_heals_a_killed_broker_under_load_losing_none() {
    let (_reaper, t) = start_local().await;
    let (status, body) = t.post("/v1/services", json!({"name": "k1", "engine": "kafka", "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    let s = wait_brokers(&t, "k1", None).await;
    let addr = bootstrap(&s);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // Records in and out through the bootstrap address.
    run_client(&["create", &addr, "orders"]);
    let producer = Producer::start(&addr, "orders", t.dir.path());
    poll(SLOW, "first acknowledgements", || async { (producer.acked() >= 200).then_some(()) }).await;

    // kill -9 of the broker the producer writes through, under load.
    let victim = busiest_broker(t.dir.path(), &s);
    let pid = broker_pid(t.dir.path(), &victim);
    let before = producer.acked();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let healed = wait_brokers(&t, "k1", Some(&victim)).await;
    assert_eq!(bootstrap(&healed), addr, "the bootstrap address is stable");
    poll(SLOW, "production continues after the kill", || async { (producer.acked() >= before + 300).then_some(()) })
        .await;
    let (acks, fails) = producer.finish();
    assert!(fails.is_empty(), "records the producer gave up on: {fails:?}");
    let gap = longest_gap(&acks);
    eprintln!("acknowledged {} records; longest gap between acknowledgements {gap:.3} s", acks.len());
    assert!(gap < 10.0, "longest gap between acknowledgements {gap:.3} s");
    consume_all(&addr, "orders", &acks);

    // The killed broker was fenced and replaced.
    let victim_now = healed["instances"].as_array().unwrap().iter().find(|i| i["id"] == victim).cloned();
    assert!(
        victim_now.as_ref().is_none_or(|v| v["fenced"] == true || v["state"] != "available"),
        "the killed broker still serves: {victim_now:?}"
    );
}

/// Issue 14's remedies: "a broker that dies or hangs is fenced at the
/// router and replaced". Chaos `hang` (SIGSTOP) of the broker the
/// producer writes through, under load: its heartbeats (ApiVersions) stop,
/// the engine fences it (cut at the router: its sessions shut, so the
/// client reconnects to a live peer through the same address and resends)
/// and replaces it; every acknowledged record is consumed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_broker_is_fenced_at_the_router_and_replaced_under_load() {
    let (_reaper, t) = start_local().await;
    let (status, body) = t.post("/v1/services", json!({"name": "k5", "engine": "kafka", "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    let s = wait_brokers(&t, "k5", None).await;
    let addr = bootstrap(&s);
    run_client(&["create", &addr, "audit"]);
    let producer = Producer::start(&addr, "audit", t.dir.path());
    poll(SLOW, "first acknowledgements", || async { (producer.acked() >= 200).then_some(()) }).await;
    let victim = busiest_broker(t.dir.path(), &s);
    let before = producer.acked();
    let hung_at = std::time::Instant::now();
    let (status, body) = t.post("/v1/chaos", json!({"instance": victim, "fault": "hang"})).await;
    assert_eq!(status, 202, "{body}");
    let healed = wait_brokers(&t, "k5", Some(&victim)).await;
    let replaced = hung_at.elapsed().as_secs_f64();
    assert_eq!(bootstrap(&healed), addr, "the bootstrap address is stable");
    poll(SLOW, "production continues after the hang", || async { (producer.acked() >= before + 300).then_some(()) })
        .await;
    let (acks, fails) = producer.finish();
    eprintln!(
        "hung broker replaced in {replaced:.2} s: acknowledged {} records, {} failed; longest gap {:.3} s",
        acks.len(),
        fails.len(),
        longest_gap(&acks)
    );
    assert!(fails.is_empty(), "records the producer gave up on: {fails:?}");
    consume_all(&addr, "audit", &acks);
    let events = t.events("service=k5").await;
    let fenced = events.iter().any(|e| e["instance"] == victim.as_str() && e.to_string().contains("fence succeeded"));
    assert!(fenced, "the hung broker was fenced: {events:#?}");
}

/// Done means of issue 14: a rolling replacement of every broker (a
/// rollout onto a new Kafka image) under produce load, through the
/// bootstrap address: each new broker serves before an old one is drained
/// out of the router and retired; every record is acknowledged (none
/// failed: what was cut in flight the client resent by itself) and
/// consumed back, and every broker is a new one on the new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_replaces_every_broker_under_load_and_no_record_fails_or_is_lost() {
    let (_reaper, t) = start_local().await;
    let (status, body) = t.post("/v1/services", json!({"name": "kr1", "engine": "kafka", "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    let s = wait_brokers(&t, "kr1", None).await;
    let addr = bootstrap(&s);
    let old: BTreeSet<String> = serving_brokers(&s).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    let old_image = serving_brokers(&s)[0]["image"].as_str().unwrap().to_string();

    run_client(&["create", &addr, "payments"]);
    let producer = Producer::start(&addr, "payments", t.dir.path());
    poll(SLOW, "first acknowledgements", || async { (producer.acked() >= 200).then_some(()) }).await;

    let (status, image) = t.post("/v1/images", json!({"engine": "kafka", "version": "tansu-0.6.0-rolled"})).await;
    assert!(status == 201 || status == 200, "{image}");
    let to = image["id"].as_str().unwrap().to_string();
    assert_ne!(to, old_image, "a new image");
    let rolled_at = std::time::Instant::now();
    let (status, r) = t
        .post(
            "/v1/rollouts",
            json!({"to_image": to, "selector": {"engine": "kafka"}, "waves": [100], "soak_seconds": 1}),
        )
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["total"], 1, "the Kafka service is selected: {r}");
    let rid = r["id"].as_str().unwrap().to_string();
    poll(SLOW, "rollout succeeded", || async {
        let (_, r) = t.get(&format!("/v1/rollouts/{rid}")).await;
        assert!(r["state"] != "paused" && r["state"] != "failed", "{r}");
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    let roll_seconds = rolled_at.elapsed().as_secs_f64();
    let rolled = wait_brokers(&t, "kr1", None).await;
    assert_eq!(bootstrap(&rolled), addr, "the bootstrap address is stable");
    for b in serving_brokers(&rolled) {
        assert!(!old.contains(b["id"].as_str().unwrap()), "an old broker still serves: {b}");
        assert_eq!(b["image"].as_str(), Some(to.as_str()), "{b}");
    }
    let after = producer.acked();
    poll(SLOW, "production continues after the roll", || async { (producer.acked() >= after + 300).then_some(()) })
        .await;
    let (acks, fails) = producer.finish();
    let gap = longest_gap(&acks);
    eprintln!(
        "kafka rolling replacement of 3 brokers under load: {} records acknowledged, {} failed, longest gap between \
         acknowledgements {gap:.3} s, roll {roll_seconds:.1} s",
        acks.len(),
        fails.len()
    );
    assert!(fails.is_empty(), "records the producer gave up on: {fails:?}");
    assert!(gap < 10.0, "longest gap between acknowledgements {gap:.3} s");
    consume_all(&addr, "payments", &acks);
    // New before old: the k-th old broker began retiring (drained at the
    // router, then stopped) only after the k-th new broker was built.
    let (status, actions) = t.get("/v1/actions?service=kr1").await;
    assert_eq!(status, 200, "{actions}");
    let at = |a: &Value, field: &str| serde_json::from_value::<drover_model::Timestamp>(a[field].clone()).unwrap().0;
    let succeeded = |kind: &str| -> Vec<Value> {
        actions.as_array().unwrap().iter().filter(|a| a["kind"] == kind && a["state"] == "succeeded").cloned().collect()
    };
    let is_old = |a: &Value| old.contains(a["instance"].as_str().unwrap());
    let mut built: Vec<i64> =
        succeeded("provision").iter().filter(|a| !is_old(a)).map(|a| at(a, "updated_at")).collect();
    let mut retired: Vec<i64> = succeeded("retire").iter().filter(|a| is_old(a)).map(|a| at(a, "created_at")).collect();
    let retire_seconds: Vec<String> = succeeded("retire")
        .iter()
        .filter(|a| is_old(a))
        .map(|a| format!("{:.1}", (at(a, "updated_at") - at(a, "created_at")) as f64 / 1e6))
        .collect();
    eprintln!("retirements of the old brokers (drain at the router, then stop), seconds: {retire_seconds:?}");
    built.sort();
    retired.sort();
    assert_eq!((built.len(), retired.len()), (3, 3), "{actions:#}");
    for (k, (b, r)) in built.iter().zip(&retired).enumerate() {
        assert!(b <= r, "old broker {k} began retiring before new broker {k} was built: {actions:#}");
    }
}

/// The checks of a Kafka service (issue 14): each broker answers Metadata
/// for its cluster on its own port and is up at the router; a canary
/// record goes through the bootstrap address and comes back; a consumer
/// group's lag is what was produced after its last commit; every listener
/// is on loopback. A hung broker shows in the router check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_services_checks_probe_every_broker_send_a_canary_and_measure_group_lag() {
    let (_reaper, t) = start_local().await;
    // `followers` as the CLI sends it by default: a Kafka plan ignores it.
    let (status, body) =
        t.post("/v1/services", json!({"name": "k3", "engine": "kafka", "provider": "local", "followers": 1})).await;
    assert_eq!(status, 201, "{body}");
    let s = wait_brokers(&t, "k3", None).await;
    let addr = bootstrap(&s);
    let checks = |want: fn(&Value) -> bool| {
        let t = &t;
        async move {
            let mut last = Value::Null;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let (code, c) = t.get("/v1/services/k3/checks").await;
                assert_eq!(code, 200, "{c}");
                if want(&c) {
                    return c;
                }
                last = c;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            panic!("the checks never became what was wanted: {last:#}");
        }
    };
    // Replication of a Kafka service: its serving brokers against the plan.
    let c = checks(|c| {
        c["router"]["status"] == "ok" && c["performance"]["status"] == "ok" && c["replication"]["status"] == "ok"
    })
    .await;
    assert_eq!(c["replication"]["evidence"]["brokers"]["plan"]["brokers"], 3, "{c:#}");
    let serving = c["replication"]["evidence"]["brokers"]["serving_brokers"].as_array().map(Vec::len);
    assert_eq!(serving, Some(3), "{c:#}");
    let brokers = c["router"]["evidence"]["brokers"].as_object().expect("brokers by id");
    assert_eq!(brokers.len(), 3, "{c:#}");
    for (id, b) in brokers {
        assert_eq!(b["metadata"], "ok", "broker {id}: {c:#}");
        assert_eq!(b["up_at_router"], true, "broker {id}: {c:#}");
        assert!(serving_brokers(&s).iter().any(|i| i["id"] == id.as_str()), "{id} is no serving broker");
    }
    let canary = &c["performance"]["evidence"]["canary"];
    assert!(canary["offset"].as_i64().is_some() && canary["produce_ms"].as_f64().is_some(), "{c:#}");
    // A second check produces the next canary record.
    let again = checks(|c| c["performance"]["evidence"]["canary"]["offset"].as_i64().is_some()).await;
    assert!(again["performance"]["evidence"]["canary"]["offset"].as_i64() > canary["offset"].as_i64(), "{again:#}");
    // The canary topic does not grow for ever: past 100 records behind the
    // newest, the checks delete them from the storage.
    for _ in 0..110 {
        let (code, c) = t.get("/v1/services/k3/checks").await;
        assert_eq!(code, 200, "{c}");
    }
    let storage_url = t.service("k3-storage").await["url"].as_str().expect("the storage's URL").to_string();
    let (db, connection) = tokio_postgres::connect(&storage_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = db
        .query_one(
            "select count(*), max(r.offset_id) from record r join topition p on p.id = r.topition \
             join topic t on t.id = p.topic where t.name = '__drover_canary'",
            &[],
        )
        .await
        .unwrap();
    let (kept, newest): (i64, Option<i64>) = (row.get(0), row.get(1));
    assert!(newest.is_some_and(|n| n >= 110), "110 checks, 110 canary records produced: {newest:?}");
    assert!(kept <= 101, "{kept} canary records kept");
    // Security: every listener found, all on loopback; no authentication said.
    assert_eq!(c["security"]["status"], "warn", "{c:#}");
    let listening: Vec<String> = serde_json::from_value(c["security"]["evidence"]["listening"].clone()).unwrap();
    let port = addr.rsplit(':').next().unwrap();
    assert!(listening.contains(&format!("127.0.0.1:{port}")), "the router's listener is not seen: {listening:?}");
    assert!(listening.len() >= 4, "router and three brokers: {listening:?}");
    // Its records' backups and replication are its storage's (a
    // PostgreSQL service with a synchronous follower).
    assert_eq!(c["backups"]["evidence"]["storage"], "k3-storage", "{c:#}");
    assert_eq!(c["replication"]["evidence"]["storage"]["service"], "k3-storage", "{c:#}");
    assert!(c["replication"]["summary"].as_str().unwrap().contains("storage k3-storage"), "{c:#}");

    // Lag: 30 records consumed and committed by group g3, then 25 more.
    run_client(&["create", &addr, "events"]);
    run_client(&["produce-n", &addr, "events", "30"]);
    let out = run_client(&["consume", &addr, "events", "g3", "30", "120"]);
    assert!(out.contains("consumed 30"), "{out}");
    let c = checks(|c| c["performance"]["evidence"]["consumer_groups"]["g3"]["lag"] == 0).await;
    let parts = c["performance"]["evidence"]["consumer_groups"]["g3"]["partitions"].as_array().unwrap();
    // Every partition of the topic is the group's, also one it has not
    // committed on yet (none of the 30 records went there): the next
    // records produced there are lag too.
    assert_eq!(parts.len(), 3, "the topic's three partitions: {c:#}");
    let committed: i64 = parts.iter().map(|p| p["committed"].as_i64().unwrap_or(0)).sum();
    assert_eq!(committed, 30, "offsets committed over the partitions: {c:#}");
    run_client(&["produce-n", &addr, "events", "25"]);
    let c = checks(|c| c["performance"]["evidence"]["consumer_groups"]["g3"]["lag"] == 25).await;
    assert_eq!(c["performance"]["status"], "ok", "25 behind is no finding: {c:#}");

    // A hung broker (SIGSTOP) fails its Metadata probe: the router check
    // names it until the engine has replaced it.
    let victim = serving_brokers(&s)[0]["id"].as_str().unwrap().to_string();
    let pid = broker_pid(t.dir.path(), &victim);
    assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
    let (_, c) = t.get("/v1/services/k3/checks").await;
    let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
    let seen = &c["router"]["evidence"]["brokers"][&victim];
    assert!(
        seen.is_null() || seen["metadata"] != "ok",
        "a stopped broker answered Metadata, or the check missed it: {c:#}"
    );
    if !seen.is_null() {
        assert_ne!(c["router"]["status"], "ok", "{c:#}");
    }
}

/// Done means of issue 14: "a storage failover under load loses no
/// acknowledged record". The storage is a PostgreSQL service of its own
/// (`k4-storage`: a primary and a synchronous follower behind its router);
/// its primary is killed (-9, chaos `crash`) under produce load (acks=all)
/// through the bootstrap address: the engine fails it over to the
/// synchronous follower (PostgreSQL's fenced failover), the brokers'
/// sessions to the storage's router reconnect to the new primary, the
/// producer goes on through the same address, and every acknowledged
/// record is consumed back. The producer is a plain acks=all one, not
/// idempotent: a produce in flight when the storage's primary dies fails
/// ("server conn crashed?" through the router, unknown server error to the
/// client), and an idempotent librdkafka producer then asks for an epoch
/// bump (InitProducerId with its producer id, KIP-360), which tansu 0.6.0
/// does not implement (`init_producer`: `todo!()`): every later produce
/// fails its producer-epoch lookup (`RowCount`) for good. Seen in 1 of 4
/// runs with an idempotent producer (the other 3: 0 refused); see the
/// README.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_failover_under_load_loses_no_acknowledged_record() {
    let (_reaper, t) = start_local().await;
    let (status, body) = t.post("/v1/services", json!({"name": "k4", "engine": "kafka", "provider": "local"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["storage"], "k4-storage", "{body}");
    let s = wait_brokers(&t, "k4", None).await;
    let addr = bootstrap(&s);
    let storage = poll(SLOW, "the storage's primary and synchronous follower", || async {
        let st = t.service("k4-storage").await;
        let available = |role: &str| {
            st["instances"].as_array().into_iter().flatten().any(|i| i["role"] == role && i["state"] == "available")
        };
        (st["state"] == "available" && available("primary") && available("follower")).then_some(st)
    })
    .await;
    assert_eq!((storage["engine"].as_str(), storage["plan"]["sync"].as_bool()), (Some("postgres"), Some(true)));
    assert_eq!(storage["storage_of"], "k4", "{storage:#}");
    // The Kafka service lists its storage's members after its brokers.
    let listed: Vec<&str> = s["instances"].as_array().unwrap().iter().filter_map(|i| i["service"].as_str()).collect();
    assert!(listed.contains(&"k4-storage"), "{s:#}");
    let member = |role: &str| -> String {
        storage["instances"].as_array().unwrap().iter().find(|i| i["role"] == role).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old_primary, follower) = (member("primary"), member("follower"));

    run_client(&["create", &addr, "ledger"]);
    let producer = Producer::start_with(&addr, "ledger", t.dir.path(), "plain");
    poll(SLOW, "first acknowledgements", || async { (producer.acked() >= 200).then_some(()) }).await;
    let before = producer.acked();
    let killed_at = std::time::Instant::now();
    let (status, body) = t.post("/v1/chaos", json!({"instance": old_primary, "fault": "crash"})).await;
    assert_eq!(status, 202, "{body}");
    poll(SLOW, "the storage failed over to its synchronous follower", || async {
        let st = t.service("k4-storage").await;
        st["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["id"] == follower.as_str() && i["role"] == "primary" && i["state"] == "available")
            .then_some(())
    })
    .await;
    let failed_over = killed_at.elapsed().as_secs_f64();
    poll(SLOW, "production continues after the storage's failover", || async {
        (producer.acked() >= before + 300).then_some(())
    })
    .await;
    let (acks, fails) = producer.finish();
    // A produce in flight when the primary died: tansu answers it with an
    // unknown server error (-1), which librdkafka does not retry: the
    // client knows, nothing was acknowledged. Produces between the kill
    // and the promotion wait at the router (it holds the sessions).
    assert!(fails.iter().all(|f| f.contains("KafkaError")), "failures that are no broker's answer: {fails:?}");
    eprintln!(
        "storage failover in {failed_over:.2} s: acknowledged {} records, {} refused meanwhile; longest gap between \
         acknowledgements {:.3} s",
        acks.len(),
        fails.len(),
        longest_gap(&acks)
    );
    consume_all(&addr, "ledger", &acks);
    let now = t.service("k4").await;
    assert_eq!(bootstrap(&now), addr, "the bootstrap address is stable");
    assert_eq!(serving_brokers(&now).len(), 3, "the brokers were left alone: {now:#}");
    let promoted = t.events("service=k4-storage").await;
    let promotions = promoted.iter().filter(|e| e.to_string().contains("promote succeeded")).count();
    assert_eq!(promotions, 1, "one failover of the storage: {promoted:#?}");
}
