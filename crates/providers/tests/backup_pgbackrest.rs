//! Backups with real PostgreSQL 15 and pgBackRest: archiving, base backups,
//! listing, and restore verification of a good and of a corrupted backup.

mod backup_support;

use backup_support::{archiving_instance, bin_dir, free_port, tempdir, wait_archived};
use drover_providers::pgbackrest::BackupKind;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_is_listed_with_sizes_and_times_and_wal_reaches_the_repository() {
    let tmp = tempdir();
    let (repo, pg) = archiving_instance(tmp.path(), "listed").await;
    // Idempotent: a second call (a retried action) is harmless.
    repo.ensure_stanza("listed", &pg.target()).await.expect("ensure_stanza twice");
    assert!(repo.list("listed").await.unwrap().is_empty(), "a new stanza has no backups");

    let client = pg.connect().await;
    client.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10000)").await.unwrap();

    let t = Instant::now();
    let full = repo.backup("listed", &pg.target(), BackupKind::Full).await.expect("full backup");
    eprintln!("full backup of a small database took {:?}", t.elapsed());
    assert_eq!(full.kind, BackupKind::Full);
    assert!(full.label.ends_with('F'), "{}", full.label);
    assert!(full.size_bytes > 1_000_000, "a PostgreSQL cluster is more than 1 MB: {full:?}");
    assert!(full.repo_size_bytes > 0 && full.repo_size_bytes < full.size_bytes, "compressed in the repo: {full:?}");
    assert!(full.started_at <= full.finished_at, "{full:?}");
    let now = jiff::Timestamp::now().as_microsecond();
    assert!((now - full.finished_at.micros()).abs() < 300_000_000, "finished just now: {full:?}");
    assert!(full.wal_start.len() == 24 && full.wal_start <= full.wal_stop, "{full:?}");

    client.execute("INSERT INTO t VALUES (0)", &[]).await.unwrap();
    let incr = repo.backup("listed", &pg.target(), BackupKind::Incr).await.expect("incremental backup");
    assert_eq!(incr.kind, BackupKind::Incr);
    assert_eq!(incr.prior.as_deref(), Some(full.label.as_str()));
    assert!(
        incr.repo_size_bytes < full.repo_size_bytes,
        "an incremental holds only changed files: {incr:?} vs {full:?}"
    );

    let listed = repo.list("listed").await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(),
        vec![full.label.as_str(), incr.label.as_str()]
    );

    // WAL archiving: a switched segment lands in the repository.
    repo.check("listed").await.expect("pgbackrest check");
    let segment: String = client.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await.unwrap().get(0);
    client.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    client.query_one("SELECT pg_switch_wal()", &[]).await.unwrap();
    wait_archived(&client, &segment).await;
    let archive_dir = repo.local_store().unwrap().join("archive/listed/15-1").join(&segment[..16]);
    let names: Vec<String> = std::fs::read_dir(&archive_dir)
        .unwrap_or_else(|e| panic!("{archive_dir:?}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with(&segment)), "segment {segment} not in {archive_dir:?}: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_restore_recovers_a_row_written_after_the_backup_from_archived_wal() {
    let tmp = tempdir();
    let (repo, pg) = archiving_instance(tmp.path(), "good").await;
    let client = pg.connect().await;
    // The canary lives in a tablespace outside the data directory: the restore must map
    // it beside the scratch copy, never onto the production path (pgBackRest refuses a
    // non-empty target, so a missing mapping fails the verification).
    let ts = tmp.path().join("tablespace");
    pg.run_as.prepare_dir(&ts, 0o700).unwrap();
    client.batch_execute(&format!("CREATE TABLESPACE canary_space LOCATION '{}'", ts.display())).await.unwrap();
    client.batch_execute("CREATE TABLE drover_canary (v text) TABLESPACE canary_space").await.unwrap();
    client.execute("INSERT INTO drover_canary VALUES ('before')", &[]).await.unwrap();
    let ts_entries = || std::fs::read_dir(&ts).unwrap().count();
    let ts_before = ts_entries();
    let backup = repo.backup("good", &pg.target(), BackupKind::Full).await.unwrap();

    // Written after the backup: only the archived WAL can bring it back. One statement
    // per call so the commit is in the segment we switch away from.
    client.execute("INSERT INTO drover_canary VALUES ('after')", &[]).await.unwrap();
    let segment: String = client.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await.unwrap().get(0);
    client.query_one("SELECT pg_switch_wal()", &[]).await.unwrap();
    wait_archived(&client, &segment).await;

    let scratch = tmp.path().join("scratch");
    let port = free_port();
    let report = repo
        .verify_restore("good", &scratch, port, &bin_dir(), Some("SELECT 1 FROM drover_canary WHERE v = 'after'"))
        .await
        .expect("verify_restore");
    eprintln!("verify_restore took {:?}: {report:#?}", report.duration);
    assert!(report.ok, "a good backup verifies: {report:#?}");
    assert_eq!(report.error, None);
    assert_eq!(report.backup, backup.label);
    let evidence = report.evidence.join("\n");
    for expected in [
        "pgbackrest verify",
        "restored",
        "SELECT 1 returned 1",
        "pg_is_in_recovery() is false",
        "canary query returned a row in database postgres",
    ] {
        assert!(evidence.contains(expected), "evidence lacks {expected:?}:\n{evidence}");
    }
    assert!(!scratch.exists(), "scratch directory deleted");
    assert!(!tmp.path().join("scratch.tablespaces").exists(), "scratch tablespaces deleted");
    assert_eq!(ts_entries(), ts_before, "the production tablespace directory is untouched");
    assert_eq!(
        pg.connect().await.query("SELECT 1 FROM drover_canary", &[]).await.unwrap().len(),
        2,
        "production still works"
    );

    // A canary that is not there fails the verification.
    let report = repo
        .verify_restore(
            "good",
            &scratch,
            port,
            &bin_dir(),
            Some("SELECT 1 FROM drover_canary WHERE v = 'never written'"),
        )
        .await
        .expect("verify_restore");
    assert!(!report.ok, "{report:#?}");
    assert!(report.error.as_deref().unwrap().contains("canary"), "{report:#?}");
    assert!(!scratch.exists(), "scratch directory deleted after a failure too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_restore_catches_a_corrupted_backup_and_leaves_nothing_running() {
    let tmp = tempdir();
    let (repo, pg) = archiving_instance(tmp.path(), "corrupt").await;
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t SELECT md5(i::text) FROM generate_series(1, 20000) i")
        .await
        .unwrap();
    let backup = repo.backup("corrupt", &pg.target(), BackupKind::Full).await.unwrap();

    // Damage the largest file of the backup set in the repository.
    let set_dir = repo.local_store().unwrap().join("backup/corrupt").join(&backup.label).join("pg_data");
    let mut largest = (0u64, std::path::PathBuf::new());
    let mut stack = vec![set_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.len() > largest.0 {
                largest = (meta.len(), e.path());
            }
        }
    }
    let (len, victim) = largest;
    assert!(len > 4096, "expected a sizeable file in {set_dir:?}");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(b"this is not what pgbackrest wrote here").unwrap();
    }
    let victim_name = victim.strip_prefix(&set_dir).unwrap().display().to_string();

    let scratch = tmp.path().join("scratch");
    let port = free_port();
    let t = Instant::now();
    let result = repo.verify_restore("corrupt", &scratch, port, &bin_dir(), None).await;
    eprintln!("verify_restore of a corrupted backup took {:?}: {result:#?}", t.elapsed());
    let report = result.expect("a damaged backup is a failed verification, not an error of the call");
    assert!(!report.ok, "{report:#?}");
    let error = report.error.as_deref().unwrap();
    assert!(error.contains("damaged") && error.contains("checksum invalid: 1"), "error names the problem: {error}");
    assert!(error.contains(&backup.label), "error names the backup: {error}");
    eprintln!("(damaged file was {victim_name})");
    assert!(!scratch.exists(), "scratch directory deleted");
    // Nothing listens on the scratch port.
    assert!(!scratch.join(format!(".s.PGSQL.{port}")).exists());
    let probe = std::process::Command::new(bin_dir().join("pg_isready"))
        .arg("-h")
        .arg(&scratch)
        .arg("-p")
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(!probe.status.success(), "a scratch server is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_without_archiving_fails_with_what_to_do_and_has_nothing_to_verify() {
    let tmp = tempdir();
    let run_as = drover_providers::runas::RunAs::for_servers().unwrap();
    let repo = drover_providers::pgbackrest::BackupRepo::open(&tmp.path().join("backups"), run_as).unwrap();
    // archive_mode off: pgbackrest check must refuse, and say how to fix it.
    let pg = backup_support::TestPg::start(&tmp.path().join("pg"), None, None);
    let err = repo.ensure_stanza("noarchive", &pg.target()).await.expect_err("check fails without archiving");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains("pgbackrest check of stanza noarchive failed"), "{message}");
    assert!(message.contains("archive_mode"), "says what is wrong: {message}");
    assert!(message.contains("archive_command"), "says what to do: {message}");

    let err = repo
        .verify_restore("noarchive", &tmp.path().join("scratch"), free_port(), &bin_dir(), None)
        .await
        .expect_err("no backup to verify");
    assert!(matches!(err, drover_providers::pgbackrest::BackupError::NoBackup { .. }), "{err}");
    assert!(repo.verify_restore("bad]name", &tmp.path().join("scratch"), 1, &bin_dir(), None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_restore_catches_a_corrupted_archived_wal_segment() {
    let tmp = tempdir();
    let (repo, pg) = archiving_instance(tmp.path(), "walrot").await;
    let client = pg.connect().await;
    client.batch_execute("CREATE TABLE drover_canary (v text)").await.unwrap();
    repo.backup("walrot", &pg.target(), BackupKind::Full).await.unwrap();
    client.execute("INSERT INTO drover_canary VALUES ('after')", &[]).await.unwrap();
    let segment: String = client.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await.unwrap().get(0);
    client.query_one("SELECT pg_switch_wal()", &[]).await.unwrap();
    wait_archived(&client, &segment).await;

    // The segment holding the row written after the backup rots in the repository.
    let dir = repo.local_store().unwrap().join("archive/walrot/15-1").join(&segment[..16]);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&segment))
        .expect("archived segment");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&file, bytes).unwrap();

    let scratch = tmp.path().join("scratch");
    let report = repo
        .verify_restore(
            "walrot",
            &scratch,
            free_port(),
            &bin_dir(),
            Some("SELECT 1 FROM drover_canary WHERE v = 'after'"),
        )
        .await
        .expect("verify_restore");
    assert!(!report.ok, "{report:#?}");
    let error = report.error.as_deref().unwrap();
    assert!(error.contains("damaged") && error.contains("total valid WAL"), "names the WAL problem: {error}");
    assert!(!scratch.exists());
}
