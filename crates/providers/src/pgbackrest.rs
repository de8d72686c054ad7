//! Backups with pgBackRest: continuous WAL archiving into a backup repository,
//! base backups (full, differential, incremental), and restore verification
//! (restore the latest backup into a scratch instance, replay the archived WAL,
//! check it, throw it away): an unexercised backup is not a backup.
//!
//! A [`BackupRepo`] is one directory holding everything pgBackRest needs:
//!
//! ```text
//! root/
//!   repo/     the backup store (repo1-path) when the repository is local
//!   conf/pgbackrest.conf        [global]: repository, log, lock and spool settings
//!   conf/conf.d/<stanza>.conf   [<stanza>]: where that service's PostgreSQL is
//!   log/      pgBackRest's logs, and the scratch server's log of the last verification
//!   lock/     pgBackRest's lock files
//!   spool/    pgBackRest's spool (asynchronous archiving)
//! ```
//!
//! One stanza per service. Every pgBackRest and PostgreSQL process runs as
//! [`RunAs`] (never as root: PostgreSQL refuses it, and a root-owned file in the
//! repository would break the next archive-push).

use crate::runas::RunAs;
use drover_model::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Where pgBackRest is when it is not found on PATH (Debian's package puts it here).
pub const DEFAULT_PGBACKREST: &str = "/usr/bin/pgbackrest";

/// The pgBackRest used first when it is there: Debian trixie's 2.55.1,
/// installed by `scripts/lib.sh` `ensure_trixie_pgbackrest`. Bookworm's 2.45
/// refuses PostgreSQL 16 and 17 ("is this version of PostgreSQL
/// supported?"); 2.55 supports 15 to 17 and reads the repositories 2.45
/// wrote, so one binary serves every major (archive-push, backups,
/// restores). `DROVER_PGBACKREST` names another binary.
pub const TRIXIE_PGBACKREST: &str = "/var/cache/drover/pgbackrest/2.55.1/bin/pgbackrest";

/// Full backups kept; older ones (and the differential/incremental backups and WAL
/// that depend on them) are expired after each backup. Four weekly fulls keep about a
/// month of point-in-time recovery, and bound the repository's size.
pub const RETENTION_FULL: u32 = 4;

/// How long pgBackRest waits for a WAL segment to reach the archive (`check`, and the
/// end of a backup). Archiving a 16 MiB segment locally takes well under a second; a
/// minute covers a loaded machine or a slow object store, and an archive_command that
/// is broken fails the check in bounded time.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limit for the short commands (stanza-create, check, info, verify of one backup set).
/// `check` may wait [`ARCHIVE_TIMEOUT`]; the rest is slack.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Limit for one backup or restore. Generous: a large database takes hours, and a
/// backup killed half-way is wasted work; a hung one must still end some day.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// How long the scratch instance may take to replay the archived WAL and end recovery.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a fast shutdown of the scratch instance may take before it is killed.
pub const SCRATCH_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the scratch server's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// Kind of base backup (pgBackRest `--type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// Every file.
    Full,
    /// Files changed since the last full backup.
    Diff,
    /// Files changed since the last backup of any kind.
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
    fn parse(s: &str) -> Option<BackupKind> {
        match s {
            "full" => Some(BackupKind::Full),
            "diff" => Some(BackupKind::Diff),
            "incr" => Some(BackupKind::Incr),
            _ => None,
        }
    }
}

/// Where the backup store lives. All repository settings (`repo1-*`) come from here,
/// so an S3-compatible store is one more variant writing `repo1-type=s3`,
/// `repo1-s3-bucket`, `repo1-s3-endpoint`, `repo1-s3-region`, keys... in
/// [`RepoStorage::settings`], and nothing else changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoStorage {
    /// A directory on this machine (the default: `root/repo`).
    Posix { path: PathBuf },
}

impl RepoStorage {
    /// The `[global]` lines describing the repository.
    fn settings(&self) -> Vec<(String, String)> {
        match self {
            RepoStorage::Posix { path } => {
                vec![("repo1-type".into(), "posix".into()), ("repo1-path".into(), path.display().to_string())]
            }
        }
    }
}

/// The PostgreSQL instance a stanza backs up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    pub data_dir: PathBuf,
    pub port: u16,
    /// Directory of the Unix socket (`unix_socket_directories`): pgBackRest connects through it.
    pub socket_dir: PathBuf,
    /// Directory of `postgres`, `initdb`... of the instance's major version.
    pub bin_dir: PathBuf,
}

/// One backup in the repository, from `pgbackrest info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// pgBackRest's label, e.g. `20261121-220510F` (a full) or `20261121-220510F_20261122-010000I`.
    pub label: String,
    pub kind: BackupKind,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// Size of the database the backup restores to.
    pub size_bytes: u64,
    /// Size of this backup in the repository (compressed; only the changed files for diff/incr).
    pub repo_size_bytes: u64,
    /// First and last WAL segment needed to make this backup consistent.
    pub wal_start: String,
    pub wal_stop: String,
    /// Label of the backup this one depends on (diff/incr), if any.
    pub prior: Option<String>,
    /// The PostgreSQL major it was taken of (a stanza moved to another
    /// major by `stanza-upgrade` keeps the older major's backups); None
    /// when `info` does not say.
    #[serde(default)]
    pub pg_major: Option<u32>,
}

/// The result of one restore verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Label of the backup restored.
    pub backup: String,
    pub ok: bool,
    pub checked_at: Timestamp,
    pub duration: Duration,
    /// What was checked and what was seen, one line each, in order.
    pub evidence: Vec<String>,
    /// Why it failed, with what to do.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {operation} {path}: {source}; check that the directory exists and is writable by this process")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid stanza name {0:?}: use letters, digits, '-' and '_' only (it names a config section and a directory)"
    )]
    InvalidStanza(String),
    #[error("cannot start {program}: {source}; install pgBackRest and PostgreSQL (Debian: apt-get install pgbackrest postgresql-15)")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pgbackrest {command} of stanza {stanza} failed: {detail}; {hint}")]
    Command {
        command: String,
        stanza: String,
        /// Exit status, what pgBackRest printed (its ERROR lines), where its full log is.
        detail: String,
        hint: &'static str,
    },
    #[error("pgbackrest {command} of stanza {stanza} did not finish within {timeout:?} and was killed; look at its log in {log_dir}")]
    Timeout { command: String, stanza: String, timeout: Duration, log_dir: PathBuf },
    #[error("cannot read the output of pgbackrest {command}: {reason}; is this pgBackRest 2.x?")]
    Parse { command: String, reason: String },
    #[error("stanza {stanza} has no backup in the repository; take one first (backup)")]
    NoBackup { stanza: String },
    #[error(
        "backup of stanza {stanza} reported success but no new backup is listed; look at the backup log in {log_dir}"
    )]
    BackupMissing { stanza: String, log_dir: PathBuf },
    #[error("scratch directory {path} holds a running server (postmaster.pid present); stop it or choose another scratch directory")]
    ScratchInUse { path: PathBuf },
}

impl BackupError {
    fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
        move |source| BackupError::Io { operation, path: path.to_path_buf(), source }
    }
}

/// A pgBackRest repository with its configuration, logs and locks under one root.
#[derive(Clone, Debug)]
pub struct BackupRepo {
    root: PathBuf,
    run_as: RunAs,
    storage: RepoStorage,
    pgbackrest: PathBuf,
    db_user: Option<String>,
    /// `repo1-retention-full` ([`RETENTION_FULL`] unless set).
    retention_full: u32,
}

impl BackupRepo {
    /// Opens (creating as needed) the repository under `root`, owned by `run_as`,
    /// with the backup store in `root/repo`.
    pub fn open(root: &Path, run_as: RunAs) -> Result<BackupRepo, BackupError> {
        let storage = RepoStorage::Posix { path: root.join("repo") };
        BackupRepo::open_with_storage(root, run_as, storage)
    }

    /// Same as [`BackupRepo::open`] with the backup store elsewhere.
    pub fn open_with_storage(root: &Path, run_as: RunAs, storage: RepoStorage) -> Result<BackupRepo, BackupError> {
        let root = absolute(root)?;
        let repo = BackupRepo {
            root,
            run_as,
            storage,
            pgbackrest: find_pgbackrest(),
            db_user: None,
            retention_full: RETENTION_FULL,
        };
        for (dir, mode) in
            [("", 0o750), ("conf", 0o750), ("conf/conf.d", 0o750), ("log", 0o750), ("lock", 0o750), ("spool", 0o750)]
        {
            let path = repo.root.join(dir);
            repo.run_as.prepare_dir(&path, mode).map_err(BackupError::io("create", &path))?;
        }
        match &repo.storage {
            RepoStorage::Posix { path } => {
                repo.run_as.prepare_dir(path, 0o750).map_err(BackupError::io("create the backup store", path))?
            }
        }
        repo.write_global_config()?;
        Ok(repo)
    }

    /// The database role pgBackRest connects as (`pg1-user`). By default the server
    /// user's own name, which is the superuser `initdb` creates when run as that user.
    pub fn with_db_user(mut self, user: impl Into<String>) -> BackupRepo {
        self.db_user = Some(user.into());
        self
    }

    /// Keeps `full` full backups per stanza (`repo1-retention-full`, at
    /// least one): the configuration is written again.
    pub fn with_retention_full(mut self, full: u32) -> Result<BackupRepo, BackupError> {
        self.retention_full = full.max(1);
        self.write_global_config()?;
        Ok(self)
    }

    /// Full backups kept per stanza.
    pub fn retention_full(&self) -> u32 {
        self.retention_full
    }

    /// Uses this pgBackRest binary (absolute path) instead of the one found on PATH.
    pub fn with_pgbackrest(mut self, program: PathBuf) -> BackupRepo {
        self.pgbackrest = program;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("conf/pgbackrest.conf")
    }
    fn include_dir(&self) -> PathBuf {
        self.root.join("conf/conf.d")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }
    /// Where the backup store is when it is a local directory.
    pub fn local_store(&self) -> Option<&Path> {
        match &self.storage {
            RepoStorage::Posix { path } => Some(path),
        }
    }

    /// The archive_command for postgresql.conf: absolute paths, this repository's
    /// configuration, the stanza, the cluster's data directory. Paths that need it
    /// are single-quoted for the shell, so when writing it into postgresql.conf
    /// double any `'` as usual. `--pg1-path` is needed: PostgreSQL passes `%p`
    /// relative to its data directory, and pgBackRest 2.55 refuses a relative
    /// path without it ("option 'pg1-path' must be specified when relative wal
    /// paths are used"; 2.45 did not) until a backup wrote the stanza's
    /// section. Every push before the first backup failed, and the archiver's
    /// retries at shutdown held a switchover's old primary 4.8 s while its
    /// router was paused.
    pub fn archive_command(&self, stanza: &str, pgdata: &str) -> String {
        format!("{} --pg1-path={} archive-push %p", self.command_prefix(stanza), shell_quote(pgdata))
    }

    /// The restore_command matching [`BackupRepo::archive_command`] (for followers
    /// that fetch WAL from the archive).
    pub fn restore_command(&self, stanza: &str) -> String {
        format!("{} archive-get %f \"%p\"", self.command_prefix(stanza))
    }

    fn command_prefix(&self, stanza: &str) -> String {
        format!(
            "{} --config={} --config-include-path={} --stanza={}",
            shell_quote(&self.pgbackrest.display().to_string()),
            shell_quote(&self.config_path().display().to_string()),
            shell_quote(&self.include_dir().display().to_string()),
            shell_quote(stanza)
        )
    }

    fn write_global_config(&self) -> Result<(), BackupError> {
        let mut lines = vec!["[global]".to_string()];
        for (k, v) in self.storage.settings() {
            lines.push(format!("{k}={v}"));
        }
        let settings = [
            ("repo1-retention-full", self.retention_full.to_string()),
            ("log-path", self.log_dir().display().to_string()),
            ("lock-path", self.root.join("lock").display().to_string()),
            ("spool-path", self.root.join("spool").display().to_string()),
            // Errors and warnings on stderr (captured into BackupError); stdout stays
            // clean for `info --output=json`; the file log has the detail.
            ("log-level-console", "off".into()),
            ("log-level-stderr", "warn".into()),
            ("log-level-file", "info".into()),
            // Checkpoint at once when a backup starts instead of waiting for the next one.
            ("start-fast", "y".into()),
            ("archive-timeout", ARCHIVE_TIMEOUT.as_secs().to_string()),
        ];
        for (k, v) in settings {
            lines.push(format!("{k}={v}"));
        }
        write_owned(&self.config_path(), &(lines.join("\n") + "\n"), &self.run_as)
    }

    fn stanza_config(&self, stanza: &str, pg: &PgTarget) -> String {
        let mut s = format!(
            "[{stanza}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
            pg.data_dir.display(),
            pg.port,
            pg.socket_dir.display()
        );
        if let Some(user) = &self.db_user {
            s.push_str(&format!("pg1-user={user}\n"));
        }
        s
    }

    fn write_stanza_config(&self, stanza: &str, pg: &PgTarget) -> Result<(), BackupError> {
        let path = self.include_dir().join(format!("{stanza}.conf"));
        write_owned(&path, &self.stanza_config(stanza, pg), &self.run_as)
    }

    /// Makes the stanza ready: writes its configuration section, creates it in the
    /// repository (idempotent), and runs `pgbackrest check`, which proves that the
    /// instance's archive_command delivers WAL to the repository. The instance must be
    /// running with archive_mode=on and [`BackupRepo::archive_command`].
    ///
    /// A service moved to another PostgreSQL major (an upgrade, or its
    /// rollback) is a new cluster of another version: the stanza is moved
    /// onto it with `stanza-upgrade`, see [`BackupRepo::follow_major`].
    pub async fn ensure_stanza(&self, stanza: &str, pg: &PgTarget) -> Result<(), BackupError> {
        self.follow_major(stanza, pg).await?;
        self.check(stanza).await
    }

    /// Points the stanza at `pg` and makes the repository accept it, without
    /// waiting for the archive (what [`BackupRepo::ensure_stanza`] adds):
    /// `stanza-create` (idempotent), and when the stanza was created for a
    /// cluster of another PostgreSQL major than `pg`'s (its `PG_VERSION`),
    /// `stanza-upgrade`, which is what pgBackRest asks for after a major
    /// upgrade: the older major's backups and WAL stay in the history, and
    /// `pg`'s archive-push is accepted from then on (it is refused before,
    /// and PostgreSQL keeps the WAL and retries). A cluster of the same
    /// major with another system id is still refused: that is another
    /// database, never taken over silently.
    pub async fn follow_major(&self, stanza: &str, pg: &PgTarget) -> Result<(), BackupError> {
        check_stanza_name(stanza)?;
        self.write_stanza_config(stanza, pg)?;
        let created = self.run(stanza, &["stanza-create"], COMMAND_TIMEOUT, HINT_STANZA_CREATE).await;
        let Err(error) = created else { return Ok(()) };
        // [028]: "backup and archive info files exist but do not match the database".
        if !matches!(&error, BackupError::Command { detail, .. } if detail.contains("[028]")) {
            return Err(error);
        }
        let Some(major) = pg_major_of(&pg.data_dir) else { return Err(error) };
        let out = self.run(stanza, &["info", "--output=json"], COMMAND_TIMEOUT, HINT_INFO).await?;
        let current = current_major(&out.stdout, stanza)?;
        if current.is_none_or(|c| c == major) {
            return Err(error);
        }
        tracing::info!(stanza, from = ?current, to = major, "pgbackrest stanza-upgrade: the service moved to another major");
        self.run(stanza, &["stanza-upgrade"], COMMAND_TIMEOUT, HINT_STANZA_CREATE).await.map(|_| ())
    }

    /// `pgbackrest check`: the instance is reachable and a forced WAL switch reaches the archive.
    pub async fn check(&self, stanza: &str) -> Result<(), BackupError> {
        check_stanza_name(stanza)?;
        self.run(stanza, &["check"], COMMAND_TIMEOUT, HINT_CHECK).await.map(|_| ())
    }

    /// Takes a backup of the stanza's instance now and returns it as listed by `info`.
    pub async fn backup(&self, stanza: &str, pg: &PgTarget, kind: BackupKind) -> Result<BackupInfo, BackupError> {
        check_stanza_name(stanza)?;
        // The stanza's primary may have changed since ensure_stanza (failover): point it at `pg`.
        // A promoted follower keeps the cluster's system id, so the stanza stays valid.
        self.write_stanza_config(stanza, pg)?;
        let before: Vec<String> = self.list(stanza).await?.into_iter().map(|b| b.label).collect();
        let type_arg = format!("--type={}", kind.as_str());
        self.run(stanza, &["backup", &type_arg], BACKUP_TIMEOUT, HINT_BACKUP).await?;
        let after = self.list(stanza).await?;
        after
            .into_iter()
            .rev()
            .find(|b| !before.contains(&b.label))
            .ok_or_else(|| BackupError::BackupMissing { stanza: stanza.into(), log_dir: self.log_dir() })
    }

    /// Restores the stanza's data into `pg1_path` (an empty directory) to
    /// be started as a new server: the backup set pgBackRest picks for the
    /// target, then archived WAL replayed up to `target` (exclusive: what
    /// committed before it) or, with None, to the end of the archive; the
    /// server promotes itself when it gets there. PostgreSQL refuses to
    /// start (`recovery ended before configured recovery target was
    /// reached`) rather than open a copy short of the target.
    pub async fn restore_into(
        &self,
        stanza: &str,
        pg1_path: &Path,
        target: Option<jiff::Timestamp>,
    ) -> Result<(), BackupError> {
        check_stanza_name(stanza)?;
        let pg1 = format!("--pg1-path={}", pg1_path.display());
        let mut args = vec!["restore".to_string(), pg1];
        if let Some(at) = target {
            // pgBackRest picks the newest set whose stop time, in whole
            // seconds, is before the target; a moment in the same second as
            // a backup's end (a fork right after a backup) finds none. Then
            // name the newest set that started before it.
            let at_micros = at.as_microsecond();
            let sets = self.list(stanza).await?;
            if !sets.iter().any(|b| b.finished_at.0 < at_micros - 1_000_000) {
                match sets.iter().rev().find(|b| b.started_at.0 < at_micros) {
                    Some(set) => args.push(format!("--set={}", set.label)),
                    None => return Err(BackupError::NoBackup { stanza: stanza.into() }),
                }
            }
        }
        match target {
            // pgBackRest selects the backup set by this format only.
            Some(at) => args.extend([
                "--type=time".to_string(),
                format!("--target={}", pgbackrest_time(at)),
                "--target-exclusive".to_string(),
                "--target-action=promote".to_string(),
            ]),
            None => args.push("--type=default".to_string()),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(stanza, &args, BACKUP_TIMEOUT, HINT_RESTORE).await.map(|_| ())
    }

    /// Restores backup set `set` (a label, or `latest`) of the stanza into
    /// `pg1_path` (an empty directory), then replays every archived WAL
    /// segment after it: an archive's final backup, restored when its
    /// service is gone (there is no primary whose latest WAL could be
    /// archived first). The server promotes itself at the end of the archive.
    pub async fn restore_set_into(&self, stanza: &str, pg1_path: &Path, set: &str) -> Result<(), BackupError> {
        check_stanza_name(stanza)?;
        let pg1 = format!("--pg1-path={}", pg1_path.display());
        let set = format!("--set={set}");
        self.run(stanza, &["restore", &pg1, &set, "--type=default"], BACKUP_TIMEOUT, HINT_RESTORE).await.map(|_| ())
    }

    /// Restores backup set `set` of the stanza into `pg1_path` (an empty
    /// directory) as a standby (`--type=standby`: `standby.signal`, and a
    /// restore_command fetching archived WAL from this repository): a
    /// physical follower built from a backup instead of `pg_basebackup`
    /// (Patroni's `create_replica_methods: pgbackrest`), for a major whose
    /// `pg_basebackup` is not installed. The caller points it at its
    /// primary (primary_conninfo); it replays the archive until then.
    pub async fn restore_standby_into(&self, stanza: &str, pg1_path: &Path, set: &str) -> Result<(), BackupError> {
        check_stanza_name(stanza)?;
        let pg1 = format!("--pg1-path={}", pg1_path.display());
        let set = format!("--set={set}");
        self.run(stanza, &["restore", &pg1, &set, "--type=standby"], BACKUP_TIMEOUT, HINT_RESTORE).await.map(|_| ())
    }

    /// The newest backup of the stanza's current cluster (the one its
    /// newest `stanza-create` or `stanza-upgrade` recorded): the backups of
    /// a cluster the service left by an upgrade or its rollback are not
    /// copies of its primary. None when that cluster has no backup yet.
    pub async fn latest_of_current_cluster(&self, stanza: &str) -> Result<Option<BackupInfo>, BackupError> {
        check_stanza_name(stanza)?;
        let out = self.run(stanza, &["info", "--output=json"], COMMAND_TIMEOUT, HINT_INFO).await?;
        latest_of_current_cluster(&out.stdout, stanza)
    }

    /// Removes the stanza for good: its backups, its archived WAL and its
    /// configuration section (`stop`, `stanza-delete --force`, `start`).
    /// Its server must be gone. Idempotent: returns false when nothing of
    /// it was left.
    pub async fn delete_stanza(&self, stanza: &str) -> Result<bool, BackupError> {
        check_stanza_name(stanza)?;
        let conf = self.include_dir().join(format!("{stanza}.conf"));
        let in_store = match &self.storage {
            RepoStorage::Posix { path } => {
                path.join("backup").join(stanza).exists() || path.join("archive").join(stanza).exists()
            }
        };
        if !in_store {
            let _ = std::fs::remove_file(&conf);
            return Ok(false);
        }
        if !conf.exists() {
            // stanza-delete reads the stanza's section; the server it named
            // is gone, and `--force` does not look for it.
            let gone = PgTarget {
                data_dir: self.root.join("gone").join(stanza),
                port: 5432,
                socket_dir: self.root.join("gone"),
                bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            };
            self.write_stanza_config(stanza, &gone)?;
        }
        self.run(stanza, &["stop"], COMMAND_TIMEOUT, HINT_DELETE).await?;
        let deleted = self.run(stanza, &["stanza-delete", "--force"], COMMAND_TIMEOUT, HINT_DELETE).await;
        // Whatever the delete did, the stanza must not stay stopped.
        let started = self.run(stanza, &["start"], COMMAND_TIMEOUT, HINT_DELETE).await;
        deleted?;
        started?;
        std::fs::remove_file(&conf).map_err(BackupError::io("remove", &conf))?;
        Ok(true)
    }

    /// The stanza's backups, oldest first (empty when the stanza has none or does not exist).
    pub async fn list(&self, stanza: &str) -> Result<Vec<BackupInfo>, BackupError> {
        check_stanza_name(stanza)?;
        let out = self.run(stanza, &["info", "--output=json"], COMMAND_TIMEOUT, HINT_INFO).await?;
        parse_info(&out.stdout, stanza)
    }

    /// `pgbackrest verify` of the repository, `label` among it: re-reads every file of
    /// every backup set and every archived WAL segment and checks it against the
    /// checksum recorded for it. Returns pgBackRest's report lines, or an error
    /// describing what is invalid. (pgBackRest exits 0 even when it finds invalid
    /// files: the report is parsed.)
    pub async fn verify_backup(&self, stanza: &str, label: &str) -> Result<Vec<String>, String> {
        // The whole repository, not `--set`: pgBackRest 2.55 checks with
        // --set only the WAL the set itself needs, and a restore test
        // replays every segment archived after it too (2.45 checked the
        // whole repository even with --set). A damaged older backup or WAL
        // segment fails the verification too: the repository is damaged.
        let out = self
            .run(stanza, &["verify", "--output=text", "--verbose"], COMMAND_TIMEOUT, HINT_VERIFY)
            .await
            .map_err(|e| e.to_string())?;
        let lines: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        let ours_valid = lines.iter().any(|l| l.starts_with(&format!("backup: {label}, status: valid")));
        let failed = lines.iter().any(|l| l == "status: error" || l.contains("status: invalid"))
            || !lines.iter().any(|l| l == "status: ok")
            || !ours_valid;
        if failed {
            return Err(format!(
                "pgbackrest verify found backup {label} of stanza {stanza} damaged in the repository: {}; \
                 do not rely on it: take a new full backup now, and find out what altered the repository \
                 (disk errors, another writer); the invalid files are named in {}",
                lines.join(" | "),
                self.log_dir().join(format!("{stanza}-verify.log")).display()
            ));
        }
        Ok(lines)
    }

    /// Restores the latest backup into `scratch_dir` (created fresh; a leftover of an
    /// earlier run is removed), starts PostgreSQL on `port` as run_as until it has
    /// replayed all archived WAL and ended recovery, runs the checks, stops it and deletes
    /// `scratch_dir`. The checks: `pgbackrest verify` of the set (repository checksums)
    /// before anything, pgBackRest's own checksum checks during restore, `SELECT 1`,
    /// `pg_is_in_recovery()` false, and either `canary` (a query that must return a row,
    /// tried in each database) or at least one user table.
    ///
    /// Problems of the backup give `Ok` with `ok: false` and the reason in `error`;
    /// `Err` only when there is nothing to verify or the repository cannot be read.
    pub async fn verify_restore(
        &self,
        stanza: &str,
        scratch_dir: &Path,
        port: u16,
        bin_dir: &Path,
        canary: Option<&str>,
    ) -> Result<VerifyReport, BackupError> {
        self.verify_restore_with(stanza, scratch_dir, port, &|_| bin_dir.to_path_buf(), canary).await
    }

    /// [`BackupRepo::verify_restore`] with the scratch server's binaries
    /// chosen by the major the latest backup was taken of
    /// ([`BackupInfo::pg_major`]): a stanza that followed an upgrade holds
    /// backups of two majors.
    pub async fn verify_restore_with(
        &self,
        stanza: &str,
        scratch_dir: &Path,
        port: u16,
        bin_dir_for: &(dyn Fn(Option<u32>) -> PathBuf + Sync),
        canary: Option<&str>,
    ) -> Result<VerifyReport, BackupError> {
        check_stanza_name(stanza)?;
        let started = Instant::now();
        let checked_at = now();
        let backups = self.list(stanza).await?;
        let latest = backups.last().ok_or_else(|| BackupError::NoBackup { stanza: stanza.into() })?.clone();
        let scratch_dir = absolute(scratch_dir)?;
        if scratch_dir.join("postmaster.pid").exists() {
            return Err(BackupError::ScratchInUse { path: scratch_dir });
        }
        let mut evidence = vec![format!(
            "latest backup {} ({}, {} bytes, finished {})",
            latest.label,
            latest.kind.as_str(),
            latest.size_bytes,
            latest.finished_at.to_rfc3339()
        )];
        let bin_dir = bin_dir_for(latest.pg_major);
        if let Some(major) = latest.pg_major {
            evidence.push(format!("restored with the PostgreSQL {major} binaries in {}", bin_dir.display()));
        }
        let result = self.restore_and_check(stanza, &latest, &scratch_dir, port, &bin_dir, canary, &mut evidence).await;
        // The scratch copy is thrown away whatever happened (the guard inside has stopped the server).
        for dir in [scratch_dir.clone(), tablespace_dir(&scratch_dir)] {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    evidence.push(format!("could not delete scratch directory {}: {e}", dir.display()));
                }
            }
        }
        let error = result.err();
        tracing::info!(stanza, backup = %latest.label, ok = error.is_none(), error = ?error, "verified restore");
        Ok(VerifyReport {
            backup: latest.label,
            ok: error.is_none(),
            checked_at,
            duration: started.elapsed(),
            evidence,
            error,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_and_check(
        &self,
        stanza: &str,
        backup: &BackupInfo,
        scratch_dir: &Path,
        port: u16,
        bin_dir: &Path,
        canary: Option<&str>,
        evidence: &mut Vec<String>,
    ) -> Result<(), String> {
        // 1. The repository's copy: every file's checksum against the manifest.
        let t = Instant::now();
        let report = self.verify_backup(stanza, &backup.label).await?;
        evidence.push(format!(
            "pgbackrest verify (the repository, backup {} among it) passed in {:?}: {}",
            backup.label,
            t.elapsed(),
            report.join(" | ")
        ));

        // 2. Restore into a fresh directory; pgBackRest checks each file's checksum as it writes it.
        for dir in [scratch_dir.to_path_buf(), tablespace_dir(scratch_dir)] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot clear scratch directory {}: {e}", dir.display()))?;
            }
        }
        self.run_as
            .prepare_dir(scratch_dir, 0o700)
            .map_err(|e| format!("cannot create scratch directory {}: {e}", scratch_dir.display()))?;
        let t = Instant::now();
        let pg1_path = format!("--pg1-path={}", scratch_dir.display());
        let set = format!("--set={}", backup.label);
        // Tablespaces would otherwise be restored to their production paths: map them beside the scratch copy.
        let tablespaces = tablespace_dir(scratch_dir);
        self.run_as
            .prepare_dir(&tablespaces, 0o700)
            .map_err(|e| format!("cannot create scratch tablespace directory {}: {e}", tablespaces.display()))?;
        let map_all = format!("--tablespace-map-all={}", tablespaces.display());
        let args = ["restore", &pg1_path, &set, "--type=default", "--archive-mode=off", &map_all];
        self.run(stanza, &args, BACKUP_TIMEOUT, HINT_RESTORE).await.map_err(|e| e.to_string())?;
        evidence.push(format!(
            "restored {} into {} in {:?} (file checksums checked by pgBackRest)",
            backup.label,
            scratch_dir.display(),
            t.elapsed()
        ));

        // Only this process may reach the scratch server: no TCP, socket in the 0700 scratch directory.
        let hba = scratch_dir.join("pg_hba.conf");
        write_owned(
            &hba,
            "# drover restore verification: local socket only, in a 0700 directory\nlocal all all trust\n",
            &self.run_as,
        )
        .map_err(|e| e.to_string())?;

        // 3. Start it and let it replay the archive to its end.
        let log_path = self.log_dir().join(format!("verify-restore-{stanza}-{port}.log"));
        let t = Instant::now();
        let mut server = ScratchServer::start(&self.run_as, bin_dir, scratch_dir, port, &log_path)?;
        let client = match server.wait_until_promoted(scratch_dir, port, &self.connect_users()).await {
            Ok(c) => c,
            Err(e) => {
                server.stop().await;
                return Err(format!(
                    "{e}; last lines of the scratch server's log {}: {}",
                    log_path.display(),
                    log_tail(&log_path)
                ));
            }
        };
        evidence.push(format!(
            "scratch server on port {port} replayed the archived WAL and ended recovery in {:?}",
            t.elapsed()
        ));
        let checked = run_restore_checks(&client, scratch_dir, port, &server.user, canary, evidence).await;
        drop(client);
        server.stop().await;
        evidence.push("scratch server stopped".into());
        checked
    }

    /// Roles to try when connecting to the scratch copy: its superuser is whoever ran initdb.
    fn connect_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        if let Some(u) = &self.db_user {
            users.push(u.clone());
        }
        users.push(self.run_as.user.clone());
        users.push("postgres".into());
        users.dedup();
        users
    }

    async fn run(
        &self,
        stanza: &str,
        args: &[&str],
        timeout: Duration,
        hint: &'static str,
    ) -> Result<CommandOutput, BackupError> {
        let mut cmd = tokio::process::Command::new(&self.pgbackrest);
        cmd.arg(format!("--config={}", self.config_path().display()))
            .arg(format!("--config-include-path={}", self.include_dir().display()))
            .arg(format!("--stanza={stanza}"))
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.run_as.apply_tokio(&mut cmd);
        let command = args.join(" ");
        tracing::debug!(stanza, command, "pgbackrest");
        let child = cmd.spawn().map_err(|source| BackupError::Spawn { program: self.pgbackrest.clone(), source })?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| BackupError::Spawn { program: self.pgbackrest.clone(), source })?,
            Err(_) => {
                return Err(BackupError::Timeout { command, stanza: stanza.into(), timeout, log_dir: self.log_dir() });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            let text = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
            return Err(BackupError::Command {
                command,
                stanza: stanza.into(),
                detail: format!("{} ({}; full log in {})", one_line(text), output.status, self.log_dir().display()),
                hint,
            });
        }
        Ok(CommandOutput { stdout })
    }
}

const HINT_STANZA_CREATE: &str =
    "check that PostgreSQL is running at the stanza's pg1-path, port and socket directory, \
     that the server user can connect to it through the socket, and that the repository is writable by the server user";
const HINT_CHECK: &str = "WAL archiving is not working: the instance needs archive_mode=on, wal_level=replica or logical, and \
     archive_command set to BackupRepo::archive_command for this stanza (then reload); its log shows why archive-push failed";
const HINT_BACKUP: &str =
    "check that the instance is running and archiving (pgbackrest check) and that the repository has free space";
const HINT_DELETE: &str =
    "check that the repository is writable by the server user and that no backup of the stanza runs";
const HINT_INFO: &str = "check that the repository is readable by the server user";
const HINT_VERIFY: &str = "check that the repository is readable by the server user";
/// `2026-12-01 02:44:49.123456+00`: the one time format pgBackRest reads
/// to choose a backup set for a time target (and PostgreSQL reads too).
fn pgbackrest_time(at: jiff::Timestamp) -> String {
    let z = at.to_zoned(jiff::tz::TimeZone::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        z.year(),
        z.month(),
        z.day(),
        z.hour(),
        z.minute(),
        z.second(),
        z.subsec_nanosecond() / 1000
    )
}

const HINT_RESTORE: &str = "if pgBackRest reports a checksum, format or decompression error, the backup is damaged: take a new \
     full backup now and find out what altered the repository; otherwise check that the scratch directory is writable by the \
     server user and has room for the database";

struct CommandOutput {
    stdout: String,
}

/// A PostgreSQL restored for verification, our child: killed if dropped while running.
struct ScratchServer {
    child: Option<tokio::process::Child>,
    /// The role the checks connected as.
    user: String,
}

impl ScratchServer {
    fn start(
        run_as: &RunAs,
        bin_dir: &Path,
        data_dir: &Path,
        port: u16,
        log_path: &Path,
    ) -> Result<ScratchServer, String> {
        let log = std::fs::File::create(log_path)
            .map_err(|e| format!("cannot create log file {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot open log file {}: {e}", log_path.display()))?;
        let _ = run_as.chown(log_path);
        let mut cmd = tokio::process::Command::new(bin_dir.join("postgres"));
        cmd.arg("-D").arg(data_dir).arg("-p").arg(port.to_string()).arg("-k").arg(data_dir);
        // Whatever the restored postgresql.conf says: no TCP, never archive into the
        // production stanza, never wait for a synchronous standby, never stream from the
        // primary, no TLS files needed, log to our file.
        for setting in [
            "listen_addresses=",
            "archive_mode=off",
            "synchronous_standby_names=",
            "primary_conninfo=",
            "ssl=off",
            "logging_collector=off",
            "log_destination=stderr",
            "hot_standby=on",
        ] {
            cmd.arg("-c").arg(setting);
        }
        // Not kill_on_drop: SIGKILL would orphan the backends; Drop sends SIGQUIT instead.
        cmd.current_dir(data_dir).stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        run_as.apply_tokio(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin_dir.join("postgres").display()))?;
        Ok(ScratchServer { child: Some(child), user: run_as.user.clone() })
    }

    /// Waits until the server accepts connections and `pg_is_in_recovery()` is false.
    async fn wait_until_promoted(
        &mut self,
        socket_dir: &Path,
        port: u16,
        users: &[String],
    ) -> Result<tokio_postgres::Client, String> {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        let mut last_error = String::from("not tried yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("the restored server exited ({status}) before recovery ended"));
                }
            }
            for user in users {
                match connect(socket_dir, port, user, "postgres").await {
                    Ok(client) => match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                        Ok(row) if !row.get::<_, bool>(0) => {
                            self.user = user.clone();
                            return Ok(client);
                        }
                        Ok(_) => last_error = "still in recovery".into(),
                        Err(e) => last_error = e.to_string(),
                    },
                    Err(e) => last_error = format!("connect as {user}: {e}"),
                }
                if !last_error.contains("does not exist") {
                    break; // the role exists; no need to try the others
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the restored server did not end recovery within {RECOVERY_TIMEOUT:?} (last: {last_error})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fast shutdown, then kill if it lingers.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT);
        }
        if tokio::time::timeout(SCRATCH_STOP_TIMEOUT, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Dropped mid-verification (cancelled): SIGQUIT is PostgreSQL's immediate
            // shutdown, the postmaster takes its backends down with it; tokio reaps it.
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGQUIT);
            }
        }
    }
}

/// Counts the user tables of the database it runs in (a restore test's
/// proof of data, and of an empty source).
pub const USER_TABLES_SQL: &str =
    "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";

async fn run_restore_checks(
    client: &tokio_postgres::Client,
    socket_dir: &Path,
    port: u16,
    user: &str,
    canary: Option<&str>,
    evidence: &mut Vec<String>,
) -> Result<(), String> {
    let one: i32 = client.query_one("SELECT 1", &[]).await.map_err(|e| format!("SELECT 1 failed: {e}"))?.get(0);
    if one != 1 {
        return Err(format!("SELECT 1 returned {one}"));
    }
    evidence.push("SELECT 1 returned 1".into());
    let in_recovery: bool =
        client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| e.to_string())?.get(0);
    if in_recovery {
        return Err("the restored server is still in recovery".into());
    }
    evidence.push("pg_is_in_recovery() is false: recovery ended at the end of the archive".into());
    let databases: Vec<String> = client
        .query("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname", &[])
        .await
        .map_err(|e| format!("cannot list databases: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    evidence.push(format!("databases: {}", databases.join(", ")));
    let mut user_tables = 0i64;
    let mut canary_found_in = None;
    let mut canary_errors = Vec::new();
    for db in &databases {
        let c =
            connect(socket_dir, port, user, db).await.map_err(|e| format!("cannot connect to database {db}: {e}"))?;
        let n: i64 =
            c.query_one(USER_TABLES_SQL, &[]).await.map_err(|e| format!("cannot count tables in {db}: {e}"))?.get(0);
        evidence.push(format!("database {db}: {n} user tables"));
        user_tables += n;
        if let (Some(q), None) = (canary, &canary_found_in) {
            match c.simple_query(q).await {
                Ok(msgs) if msgs.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))) => {
                    canary_found_in = Some(db.clone())
                }
                Ok(_) => canary_errors.push(format!("{db}: no row")),
                Err(e) => canary_errors.push(format!(
                    "{db}: {}",
                    e.as_db_error().map(|d| d.message().to_string()).unwrap_or(e.to_string())
                )),
            }
        }
    }
    match canary {
        Some(q) => match canary_found_in {
            Some(db) => evidence.push(format!("canary query returned a row in database {db}: {q}")),
            None => {
                return Err(format!(
                    "the canary query returned no row in any database of the restored copy ({}): {q}; the backup \
                     or the archived WAL after it is missing data",
                    canary_errors.join("; ")
                ))
            }
        },
        None if user_tables == 0 => {
            return Err("the restored copy has no user tables: the backup holds no data, or this is the wrong stanza; \
                        pass a canary query to prove recent data is there"
                .into())
        }
        None => evidence.push(format!("{user_tables} user tables found")),
    }
    Ok(())
}

async fn connect(
    socket_dir: &Path,
    port: u16,
    user: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user(user)
        .dbname(db)
        .application_name("drover-verify-restore")
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[derive(Deserialize)]
struct InfoStanza {
    name: String,
    #[serde(default)]
    backup: Vec<InfoBackup>,
    /// The stanza's history of clusters: one entry per `stanza-create` or
    /// `stanza-upgrade`, the highest id the current one.
    #[serde(default)]
    db: Vec<InfoDb>,
}

#[derive(Deserialize)]
struct InfoDb {
    id: u32,
    version: String,
}

#[derive(Deserialize)]
struct InfoDbRef {
    id: u32,
}

impl InfoStanza {
    fn major_of_db(&self, id: u32) -> Option<u32> {
        self.db.iter().find(|d| d.id == id).and_then(|d| major_of_version(&d.version))
    }
}

/// `"15"`, `"17"` (what pgBackRest and `PG_VERSION` say) → the major.
fn major_of_version(version: &str) -> Option<u32> {
    version.trim().split('.').next().and_then(|m| m.parse().ok())
}

/// The major of the cluster in `data_dir`, from its `PG_VERSION`.
fn pg_major_of(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("PG_VERSION")).ok().and_then(|v| major_of_version(&v))
}

/// [`BackupRepo::latest_of_current_cluster`] from `info --output=json`.
fn latest_of_current_cluster(json: &str, stanza: &str) -> Result<Option<BackupInfo>, BackupError> {
    let stanzas: Vec<InfoStanza> = serde_json::from_str(json)
        .map_err(|e| BackupError::Parse { command: "info --output=json".into(), reason: e.to_string() })?;
    let Some(current) = stanzas.iter().filter(|s| s.name == stanza).find_map(|s| s.db.iter().map(|d| d.id).max())
    else {
        return Ok(None);
    };
    let of_current: Vec<String> = stanzas
        .iter()
        .filter(|s| s.name == stanza)
        .flat_map(|s| s.backup.iter())
        .filter(|b| b.database.as_ref().is_some_and(|d| d.id == current))
        .map(|b| b.label.clone())
        .collect();
    Ok(parse_info(json, stanza)?.into_iter().rev().find(|b| of_current.contains(&b.label)))
}

/// The major of the stanza's current cluster (the newest entry of its history).
fn current_major(json: &str, stanza: &str) -> Result<Option<u32>, BackupError> {
    let stanzas: Vec<InfoStanza> = serde_json::from_str(json)
        .map_err(|e| BackupError::Parse { command: "info --output=json".into(), reason: e.to_string() })?;
    Ok(stanzas
        .iter()
        .filter(|s| s.name == stanza)
        .find_map(|s| s.db.iter().max_by_key(|d| d.id).map(|d| d.id).and_then(|id| s.major_of_db(id))))
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimestamp,
    info: InfoSizes,
    archive: Option<InfoArchive>,
    prior: Option<String>,
    #[serde(default)]
    error: Option<bool>,
    database: Option<InfoDbRef>,
}

#[derive(Deserialize)]
struct InfoTimestamp {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct InfoSizes {
    size: u64,
    repository: InfoRepoSize,
}

#[derive(Deserialize)]
struct InfoRepoSize {
    delta: u64,
}

#[derive(Deserialize)]
struct InfoArchive {
    start: Option<String>,
    stop: Option<String>,
}

fn parse_info(json: &str, stanza: &str) -> Result<Vec<BackupInfo>, BackupError> {
    let parse_err = |reason: String| BackupError::Parse { command: "info --output=json".into(), reason };
    let stanzas: Vec<InfoStanza> = serde_json::from_str(json).map_err(|e| parse_err(e.to_string()))?;
    let mut out = Vec::new();
    for mut s in stanzas.into_iter().filter(|s| s.name == stanza) {
        for b in std::mem::take(&mut s.backup) {
            if b.error == Some(true) {
                // pgBackRest found page checksum errors while backing up: still listed, but logged.
                tracing::warn!(stanza, label = %b.label, "pgbackrest reports page checksum errors in this backup");
            }
            let kind =
                BackupKind::parse(&b.kind).ok_or_else(|| parse_err(format!("unknown backup type {:?}", b.kind)))?;
            let archive = b.archive.unwrap_or(InfoArchive { start: None, stop: None });
            out.push(BackupInfo {
                label: b.label,
                kind,
                started_at: Timestamp::from_micros(b.timestamp.start.saturating_mul(1_000_000)),
                finished_at: Timestamp::from_micros(b.timestamp.stop.saturating_mul(1_000_000)),
                size_bytes: b.info.size,
                repo_size_bytes: b.info.repository.delta,
                wal_start: archive.start.unwrap_or_default(),
                wal_stop: archive.stop.unwrap_or_default(),
                prior: b.prior,
                pg_major: b.database.and_then(|d| s.major_of_db(d.id)),
            });
        }
    }
    Ok(out)
}

/// Where a verification restores tablespaces: beside the scratch data directory.
fn tablespace_dir(scratch_dir: &Path) -> PathBuf {
    let mut name = scratch_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".tablespaces");
    scratch_dir.with_file_name(name)
}

fn check_stanza_name(stanza: &str) -> Result<(), BackupError> {
    let valid = !stanza.is_empty()
        && stanza.len() <= 64
        && stanza.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(BackupError::InvalidStanza(stanza.into()))
    }
}

fn now() -> Timestamp {
    Timestamp::from_micros(jiff::Timestamp::now().as_microsecond())
}

fn absolute(path: &Path) -> Result<PathBuf, BackupError> {
    std::path::absolute(path).map_err(BackupError::io("resolve", path))
}

/// The pgBackRest binary every repository uses: `DROVER_PGBACKREST`, else
/// [`TRIXIE_PGBACKREST`] when installed, else the first on PATH, else
/// [`DEFAULT_PGBACKREST`].
pub fn find_pgbackrest() -> PathBuf {
    if let Some(program) = std::env::var_os("DROVER_PGBACKREST").filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    if Path::new(TRIXIE_PGBACKREST).is_file() {
        return PathBuf::from(TRIXIE_PGBACKREST);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("pgbackrest");
            if candidate.is_absolute() && candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(DEFAULT_PGBACKREST)
}

/// Writes `contents` to `path` (atomically: temp file + rename), owned by `run_as`, mode 0640.
fn write_owned(path: &Path, contents: &str, run_as: &RunAs) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(BackupError::io("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))
        .map_err(BackupError::io("set permissions of", &tmp))?;
    run_as.chown(&tmp).map_err(BackupError::io("give to the server user", &tmp))?;
    std::fs::rename(&tmp, path).map_err(BackupError::io("replace", path))
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=+:,@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_of_pgbackrest_2_45_parses_into_backups() {
        let json = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000003","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22992162,"repository":{"delta":3043310,"size":3043310},"size":22992162},"label":"20261121-220510F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1795298710,"stop":1795298718},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7710749209015556438,"version":"15"}],"name":"s1","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;
        let backups = parse_info(json, "s1").unwrap();
        assert_eq!(backups.len(), 1);
        let b = &backups[0];
        assert_eq!(b.label, "20261121-220510F");
        assert_eq!(b.kind, BackupKind::Full);
        assert_eq!(b.size_bytes, 22992162);
        assert_eq!(b.repo_size_bytes, 3043310);
        assert_eq!(b.finished_at.micros() - b.started_at.micros(), 8_000_000);
        assert_eq!(b.wal_start, "000000010000000000000002");
        assert!(parse_info(json, "other").unwrap().is_empty());
    }

    #[test]
    fn info_json_of_pgbackrest_2_55_after_an_upgrade_and_its_rollback_names_each_backups_major() {
        // 15 -> stanza-upgrade to 17 -> stanza-upgrade back to 15 (a new 15 cluster: db id 3).
        let json = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000003","min":"000000010000000000000001"},{"database":{"id":2,"repo-key":1},"id":"17-2","max":"000000010000000000000003","min":"000000010000000000000001"},{"database":{"id":3,"repo-key":1},"id":"15-3","max":"000000010000000000000006","min":"000000010000000000000004"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22992648,"repository":{"delta":3043506,"size":3043506},"size":22992648},"label":"20261201-233638F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796168198,"stop":1796168203},"type":"full"},{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":2,"repo-key":1},"error":false,"info":{"delta":23028717,"repository":{"delta":2967894,"size":2967894},"size":23028717},"label":"20261201-233644F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796168204,"stop":1796168211},"type":"full"},{"archive":{"start":"000000010000000000000005","stop":"000000010000000000000006"},"backrest":{"format":5,"version":"2.55.1"},"database":{"id":3,"repo-key":1},"error":false,"info":{"delta":22992648,"repository":{"delta":3043508,"size":3043508},"size":22992648},"label":"20261201-233652F","lsn":{"start":"0/5000028","stop":"0/6000050"},"prior":null,"reference":null,"timestamp":{"start":1796168212,"stop":1796168219},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714483652820990435,"version":"15"},{"id":2,"repo-key":1,"system-id":7714483658668988939,"version":"17"},{"id":3,"repo-key":1,"system-id":7714483652820990435,"version":"15"}],"name":"s","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;
        let backups = parse_info(json, "s").unwrap();
        let majors: Vec<Option<u32>> = backups.iter().map(|b| b.pg_major).collect();
        assert_eq!(majors, vec![Some(15), Some(17), Some(15)]);
        assert_eq!(current_major(json, "s").unwrap(), Some(15));
        let latest = latest_of_current_cluster(json, "s").unwrap().expect("a backup of the current cluster");
        assert_eq!(latest.label, backups[2].label);
        assert_eq!(latest_of_current_cluster(json, "other").unwrap(), None);
        assert_eq!(current_major(json, "other").unwrap(), None);
        let two_45 = r#"[{"backup":[],"db":[{"id":1,"repo-key":1,"system-id":1,"version":"15"}],"name":"s"}]"#;
        assert_eq!(current_major(two_45, "s").unwrap(), Some(15));
        assert_eq!(major_of_version("17\n"), Some(17));
    }

    #[test]
    fn stanza_names_cannot_inject_configuration() {
        assert!(check_stanza_name("svc-1_a").is_ok());
        for bad in ["", "a]\n[global", "a b", "../x"] {
            assert!(check_stanza_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn archive_command_quotes_paths_that_need_it() {
        assert_eq!(shell_quote("/usr/bin/pgbackrest"), "/usr/bin/pgbackrest");
        assert_eq!(shell_quote("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
