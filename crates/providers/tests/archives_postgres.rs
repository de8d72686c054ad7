//! Archives (issue 17, item 5) against real PostgreSQL 15 and pgBackRest:
//! the final backup of a service being deleted is taken, the service is
//! terminated, a new service restored from that backup holds its rows, and
//! the purge removes the backups (the stanza) for good.

use drover_model::{
    backup_label_of, ActionId, ActionKind, ActionOutcome, ActionRecord, ActionState, ArchiveId, EngineKind, ImageId,
    InstanceId, RestoreFrom, Role, ServiceId, Timestamp,
};
use drover_providers::local::{LocalConfig, LocalProvider};
use drover_providers::pgbackrest::BackupRepo;
use drover_providers::Provider;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn fresh() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst) ^ (std::process::id() as u64) << 32
}

/// Stops every server and router of the provider when dropped (also when
/// the test fails). Declared after the temp dir: dropped before it.
struct Stop(Arc<LocalProvider>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

fn action(service: ServiceId, instance: InstanceId, kind: ActionKind) -> ActionRecord {
    let now = Timestamp(now_micros());
    ActionRecord {
        id: ActionId::new_at(now.0, fresh()),
        service,
        instance,
        kind,
        state: ActionState::Running,
        attempts: 1,
        cause: "test".into(),
        created_at: now,
        updated_at: now,
        deadline: now,
        error: None,
    }
}

fn provision(name: &str, restore_from: Option<RestoreFrom>) -> ActionKind {
    ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
        role: Role::Primary,
        zone: "local".into(),
        image: ImageId("postgres-15".into()),
        service_name: name.into(),
        sync: false,
        settings: Default::default(),
        engine: EngineKind::Postgres,
        host: None,
        restore_from,
        read_slot: None,
        version: String::new(),
        storage_of: None,
    }))
}

async fn run(p: &LocalProvider, a: ActionRecord) -> Option<String> {
    let what = format!("{} of {}", a.kind.name(), a.instance);
    match p.execute(a).await {
        ActionOutcome::Succeeded { detail } => detail,
        failed => panic!("{what} failed: {failed:?}"),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM items", &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_backup_restores_into_a_new_server_with_its_rows_and_the_purge_removes_it() {
    let dir = tempfile::Builder::new().prefix("da").tempdir_in("/tmp").unwrap();
    let run_as = drover_providers::runas::RunAs::for_servers().unwrap();
    let repo = BackupRepo::open(&dir.path().join("bk"), run_as).unwrap().with_retention_full(2).unwrap();
    let store = repo.local_store().expect("a local store").to_path_buf();
    let config = LocalConfig {
        probe_interval: Duration::from_millis(200),
        kill_servers_on_drop: true,
        backups: Some(repo),
        ..Default::default()
    };
    let provider = LocalProvider::open(dir.path(), config).expect("open the local provider");
    let _stop = Stop(provider.clone());
    let p = &*provider;
    let conf = dir.path().join("bk/conf/pgbackrest.conf");
    assert!(std::fs::read_to_string(&conf).unwrap().contains("repo1-retention-full=2"), "backup_retention_full");

    // The service to delete: rows, then its final backup.
    let (old, old_primary) = (ServiceId::new_at(now_micros(), fresh()), InstanceId::new_at(now_micros(), fresh()));
    run(p, action(old, old_primary, provision("ledger", None))).await;
    let c = connect(&p.service_url("ledger").expect("url")).await;
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 500)")
        .await
        .unwrap();
    let detail = run(p, action(old, old_primary, ActionKind::Backup)).await.unwrap_or_default();
    let label = backup_label_of(&detail).unwrap_or_else(|| panic!("a label in {detail:?}")).to_string();
    assert!(label.ends_with('F'), "a full backup: {label}");
    // Rows after the backup, in WAL archived before the server stops.
    c.batch_execute("INSERT INTO items SELECT generate_series(501, 600)").await.unwrap();
    drop(c);
    let info = p.instance_info(old_primary).expect("known instance");
    let mut direct = tokio_postgres::Config::new();
    direct.host_path(&info.socket_dir).port(info.port).user("drover").dbname("app");
    let (admin, connection) = direct.connect(tokio_postgres::NoTls).await.expect("connect over the socket");
    tokio::spawn(connection);
    let segment: String = admin.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).await.expect("switch").get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = admin.query_one("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", &[]).await.unwrap();
        let last: String = row.get(0);
        if last.as_str() >= segment.as_str() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "segment {segment} not archived (last: {last})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(admin);
    for kind in [ActionKind::Retire, ActionKind::Archive, ActionKind::Terminate] {
        run(p, action(old, old_primary, kind)).await;
    }
    assert!(store.join("backup/ledger").join(&label).exists(), "the final backup is kept after the service is gone");

    // Restored into a new service from the archive's backup.
    let (new, new_primary) = (ServiceId::new_at(now_micros(), fresh()), InstanceId::new_at(now_micros(), fresh()));
    let from = RestoreFrom { service: "ledger".into(), at: None, restored: false, backup: Some(label.clone()) };
    run(p, action(new, new_primary, provision("ledger-back", Some(from)))).await;
    let c = connect(&p.service_url("ledger-back").expect("url")).await;
    assert_eq!(count(&c).await, 600, "the restored service holds every row, the backup's and the archived WAL's");
    c.batch_execute("INSERT INTO items VALUES (601)").await.expect("the restored service is writable");

    // The purge removes the deleted service's backups, once; a second purge
    // finds nothing and succeeds; the restored service's own stanza stays.
    let purge = || ActionKind::PurgeArchive {
        service_name: "ledger".into(),
        engine: EngineKind::Postgres,
        archive: ArchiveId::new_at(now_micros(), fresh()),
    };
    let first = run(p, action(old, old_primary, purge())).await.unwrap_or_default();
    assert!(first.contains("removed"), "{first}");
    assert!(!store.join("backup/ledger").exists(), "its backups are gone");
    assert!(!store.join("archive/ledger").exists(), "its archived WAL is gone");
    assert!(!dir.path().join("bk/conf/conf.d/ledger.conf").exists(), "its stanza's configuration is gone");
    let again = run(p, action(old, old_primary, purge())).await.unwrap_or_default();
    assert!(again.contains("nothing"), "idempotent: {again}");
    assert!(store.join("archive/ledger-back").exists(), "the restored service archives under its own name");
    // A purge is refused while a service of that name runs here.
    let refused = p
        .execute(action(
            new,
            new_primary,
            ActionKind::PurgeArchive {
                service_name: "ledger-back".into(),
                engine: EngineKind::Postgres,
                archive: ArchiveId::new_at(now_micros(), fresh()),
            },
        ))
        .await;
    assert!(matches!(refused, ActionOutcome::Failed { .. }), "{refused:?}");
}
