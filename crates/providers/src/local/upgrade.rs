//! Major-version upgrades in the local provider (issue 17 item 4): the new
//! member of another major than the primary is a logical subscriber of it.
//!
//! Built (`subscribe`): an empty cluster of the new major (initdb with its
//! own binaries), the application's roles and database, the schema copied
//! with Debian's 15 clients (`pg_dump -s` of the primary when the clients can
//! read it, else the schema kept from the last upgrade: no pg_dump reads a
//! newer major here), a publication of every table on the primary and a
//! subscription (`drover_upgrade`) on the new member; done when every table
//! finished its initial copy. Cut over (`catch_up_subscribers`, inside the
//! planned switchover's graceful fence, while the router holds clients):
//! the subscriber applies the primary's WAL up to its current end, every
//! sequence is copied, then the old primary stops. Promoted
//! (`end_subscription`): the subscription is dropped, and the promotion
//! points the router at it. Each step is idempotent (a repeat after a
//! crash finds it done).

use super::postgres::{self, APP_DATABASE, ROLE};
use super::registry::InstanceEntry;
use super::{lock, Inner};
use crate::ActionError;
use drover_model::{InstanceId, Role};
use std::time::{Duration, Instant};

/// The publication on the primary and the subscription on the new member.
pub(super) const SUBSCRIPTION: &str = "drover_upgrade";
/// The initial copy of every table (a large database takes long: the
/// Provision is retried after this and starts over).
const COPY_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long the switchover waits, with clients held, for the subscriber to
/// apply the primary's last writes. Its subscriber reports every second
/// (`wal_receiver_status_interval`); a subscriber this late is broken, and
/// the switchover fails (the router resumes on the old primary).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
const SQL_TIMEOUT: Duration = Duration::from_secs(10);
/// Applying a schema: a large one takes a while.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(300);

impl Inner {
    /// The major a member of image version `version` runs, when it is not
    /// the default binaries' (None: the default). Refused when that major
    /// is not installed here.
    pub(super) fn major_for(&self, version: &str) -> Result<Option<u32>, ActionError> {
        let default = self.servers.binaries().major();
        let Some(major) = drover_engine::upgrades::major_of(version).filter(|m| *m != default) else {
            return Ok(None);
        };
        let bin = postgres::majors_dir().join(major.to_string()).join("bin");
        if !bin.join("postgres").is_file() || !bin.join("initdb").is_file() {
            return Err(ActionError::Config(format!(
                "PostgreSQL {major} is not installed in {} (scripts/lib.sh ensure_pg_majors installs it)",
                bin.display()
            )));
        }
        Ok(Some(major))
    }

    /// The slot on the primary that feeds `entry`'s subscription.
    fn slot_name(id: InstanceId) -> String {
        format!("{SUBSCRIPTION}_{}", id.to_string().replace('-', ""))
    }

    /// Makes `entry` (running, empty) a subscriber of `primary` and waits
    /// for the initial copy of every table.
    pub(super) async fn subscribe(&self, entry: &InstanceEntry, primary: &InstanceEntry) -> Result<(), ActionError> {
        let id = self.id_of(entry).ok_or_else(|| ActionError::InvalidState("unknown instance".into()))?;
        // The primary's WAL archived before the cut-over: a service not
        // backed up yet has no stanza, every archive-push is refused, and
        // the old primary's archiver retries them at its shutdown, inside
        // the switchover's pause (seen: 4.8 s, a client's statement
        // unanswered for over 5 s). Best effort: an archive that cannot be
        // made only makes the stop slower.
        if let Some(repo) = &self.config.backups {
            if let Err(error) = repo.ensure_stanza(&primary.service_name, &self.pg_target(primary)).await {
                tracing::warn!(service = %primary.service_name, %error, "cannot create the backup stanza before an upgrade");
            }
        }
        self.ensure_app_roles_on(entry).await?;
        let subscribed = postgres::execute_in(
            entry,
            APP_DATABASE,
            &format!("SELECT 1 FROM pg_subscription WHERE subname = '{SUBSCRIPTION}'"),
            SQL_TIMEOUT,
        )
        .await?;
        if subscribed.is_empty() {
            self.copy_schema(entry, primary).await?;
            postgres::execute_in(
                primary,
                APP_DATABASE,
                &format!(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = '{SUBSCRIPTION}') THEN \
                     CREATE PUBLICATION {SUBSCRIPTION} FOR ALL TABLES; END IF; END $$"
                ),
                SQL_TIMEOUT,
            )
            .await?;
            // A slot left by an attempt that died halfway would hold WAL forever.
            let slot = Self::slot_name(id);
            postgres::execute(
                primary,
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = '{slot}' AND NOT active"
                ),
                SQL_TIMEOUT,
            )
            .await?;
            let conninfo = format!(
                "host={} port={} user={ROLE} dbname={APP_DATABASE}",
                primary.socket_dir().to_string_lossy(),
                primary.port
            );
            postgres::execute_in(
                entry,
                APP_DATABASE,
                &format!(
                    "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION {} PUBLICATION {SUBSCRIPTION} \
                     WITH (slot_name = '{slot}')",
                    postgres::sql_quote(&conninfo)
                ),
                Duration::from_secs(60),
            )
            .await?;
        }
        let deadline = Instant::now() + COPY_TIMEOUT;
        loop {
            let pending = postgres::execute_in(
                entry,
                APP_DATABASE,
                "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
                SQL_TIMEOUT,
            )
            .await?;
            let applying = postgres::execute_in(
                entry,
                APP_DATABASE,
                &format!(
                    "SELECT count(*) FROM pg_stat_subscription WHERE subname = '{SUBSCRIPTION}' \
                     AND relid IS NULL AND pid IS NOT NULL"
                ),
                SQL_TIMEOUT,
            )
            .await?;
            let one = |v: &[Option<String>]| v.first().cloned().flatten();
            if one(&pending).as_deref() == Some("0") && one(&applying).as_deref() == Some("1") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "the upgrade's subscriber did not finish its initial copy within {COPY_TIMEOUT:?}; log: {}",
                    postgres::log_tail(entry)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn id_of(&self, entry: &InstanceEntry) -> Option<InstanceId> {
        lock(&self.registry).instances.iter().find(|(_, e)| e.dir == entry.dir).map(|(id, _)| *id)
    }

    async fn ensure_app_roles_on(&self, entry: &InstanceEntry) -> Result<(), ActionError> {
        let service = self.service(entry.service)?;
        postgres::ensure_app_roles(entry, &service.login, &service.verifier).await
    }

    /// The schema of the application's database, from the primary when
    /// Debian's pg_dump can read it (kept for a later rollback), else the
    /// one kept; applied to `entry` with psql.
    async fn copy_schema(&self, entry: &InstanceEntry, primary: &InstanceEntry) -> Result<(), ActionError> {
        let binaries = self.servers.binaries();
        let kept = self.root.join("upgrades").join(entry.service.to_string());
        std::fs::create_dir_all(&kept)
            .map_err(|e| ActionError::io(format_args!("cannot create {}", kept.display()), e))?;
        let schema = kept.join("schema.sql");
        let socket = |e: &InstanceEntry| e.socket_dir().to_string_lossy().into_owned();
        if primary.major.is_none() {
            let fresh = kept.join("schema.sql.new");
            let mut dump = tokio::process::Command::new(binaries.path("pg_dump"));
            dump.args(["--schema-only", "--no-publications", "--no-subscriptions", "-h"])
                .arg(socket(primary))
                .args(["-p", &primary.port.to_string(), "-U", ROLE, "-f"])
                .arg(&fresh)
                .arg(APP_DATABASE)
                .env("LC_ALL", "C");
            tokio::time::timeout(SCHEMA_TIMEOUT, postgres::run(dump, "pg_dump"))
                .await
                .map_err(|_| ActionError::Timeout("pg_dump of the schema took too long".into()))??;
            std::fs::rename(&fresh, &schema)
                .map_err(|e| ActionError::io(format_args!("cannot keep {}", schema.display()), e))?;
        } else if !schema.is_file() {
            return Err(ActionError::Config(format!(
                "no pg_dump here reads PostgreSQL {}, and no schema was kept from an upgrade of this service",
                primary.major.unwrap_or_default()
            )));
        }
        let mut psql = tokio::process::Command::new(binaries.path("psql"));
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(socket(entry))
            .args(["-p", &entry.port.to_string(), "-U", ROLE, "-d", APP_DATABASE, "-f"])
            .arg(&schema)
            .env("LC_ALL", "C");
        tokio::time::timeout(SCHEMA_TIMEOUT, postgres::run(psql, "psql (the schema)"))
            .await
            .map_err(|_| ActionError::Timeout("applying the schema took too long".into()))?
    }

    /// Inside a planned switchover of `primary` (its router paused): each
    /// running subscriber of its service applies everything the primary
    /// wrote, and gets its sequences; then it is marked caught up (the one
    /// state in which it may be promoted). No subscriber: nothing to do.
    pub(super) async fn catch_up_subscribers(&self, primary: &InstanceEntry) -> Result<(), ActionError> {
        let subscribers: Vec<(InstanceId, InstanceEntry)> = lock(&self.registry)
            .instances
            .iter()
            .filter(|(_, e)| {
                e.service == primary.service && e.role == Role::Follower && e.major != primary.major && e.should_run()
            })
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        for (id, subscriber) in subscribers {
            let end = postgres::execute(primary, "SELECT pg_current_wal_lsn()::text", SQL_TIMEOUT).await?;
            let end = end.first().cloned().flatten().unwrap_or_default();
            let slot = Self::slot_name(id);
            let deadline = Instant::now() + CATCH_UP_TIMEOUT;
            loop {
                let done = postgres::execute(
                    primary,
                    &format!(
                        "SELECT confirmed_flush_lsn >= {}::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'",
                        postgres::sql_quote(&end)
                    ),
                    SQL_TIMEOUT,
                )
                .await?;
                if done.first().cloned().flatten().as_deref() == Some("t") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(ActionError::Timeout(format!(
                        "the upgrade's subscriber {id} did not apply the primary's WAL up to {end} within \
                         {CATCH_UP_TIMEOUT:?}: the switchover is called off"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let setvals = postgres::execute_in(
                primary,
                APP_DATABASE,
                "SELECT string_agg(format('SELECT setval(%L, %s, %s);', \
                   quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value, 'true'), ' ') \
                 FROM pg_sequences WHERE last_value IS NOT NULL",
                SQL_TIMEOUT,
            )
            .await?;
            if let Some(sql) = setvals.first().cloned().flatten() {
                postgres::execute_in(&subscriber, APP_DATABASE, &sql, SQL_TIMEOUT).await?;
            }
            if let Some(stored) = lock(&self.registry).instances.get_mut(&id) {
                stored.caught_up = true;
            }
            self.save()?;
            tracing::info!(subscriber = %id, lsn = %end, "upgrade subscriber caught up; the old primary stops");
        }
        Ok(())
    }

    /// After [`Self::catch_up_subscribers`], before the old primary stops:
    /// the walsenders of the upgrade's slots are ended, so a fast shutdown,
    /// which waits for every walsender's client to confirm the shutdown
    /// checkpoint, never waits on a logical subscriber's own schedule.
    /// Everything was applied already; the subscription is dropped at the
    /// promotion. (The 5 s pause first blamed on it was the archiver's
    /// retries, see `subscribe`; this is a guard, not that fix.) Best
    /// effort: a walsender left only makes the stop slower.
    pub(super) async fn release_subscribers(&self, primary: &InstanceEntry) {
        let sql = format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_type = 'logical' AND slot_name LIKE '{SUBSCRIPTION}\\_%' AND active_pid IS NOT NULL"
        );
        match postgres::execute(primary, &sql, SQL_TIMEOUT).await {
            Ok(rows) => {
                tracing::debug!(ended = ?rows.first().cloned().flatten(), "upgrade walsenders ended before the stop")
            }
            Err(error) => tracing::warn!(%error, "cannot end the upgrade's walsenders before the stop"),
        }
    }

    /// After a subscriber stopped for good: its slot on the primary goes
    /// (best effort: a primary that does not answer keeps it, and says so
    /// in the log).
    pub(super) async fn drop_subscriber_slot(&self, id: InstanceId, entry: &InstanceEntry) {
        let Some(primary) = self.current_primary_entry(entry.service).filter(|p| p.major != entry.major) else {
            return;
        };
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{}' AND NOT active",
            Self::slot_name(id)
        );
        if let Err(error) = postgres::execute(&primary, &sql, SQL_TIMEOUT).await {
            tracing::warn!(subscriber = %id, %error, "cannot drop the retired subscriber's slot on the primary");
        }
        // The publication too: while it publishes every table, an UPDATE or
        // DELETE on a table without a primary key (no replica identity)
        // fails on the primary.
        let drop = format!("DROP PUBLICATION IF EXISTS {SUBSCRIPTION}");
        if let Err(error) = postgres::execute_in(&primary, APP_DATABASE, &drop, SQL_TIMEOUT).await {
            tracing::warn!(subscriber = %id, %error, "cannot drop the upgrade's publication on the primary");
        }
    }

    /// Before a promotion: a subscriber drops its subscription (the slot
    /// went with the stopped primary's service; it is not dropped there).
    /// Refused for one no switchover caught up: a failover onto it could
    /// lose writes it had not applied.
    pub(super) async fn end_subscription(&self, id: InstanceId, entry: &InstanceEntry) -> Result<(), ActionError> {
        let subscribed = postgres::execute_in(
            entry,
            APP_DATABASE,
            &format!("SELECT 1 FROM pg_subscription WHERE subname = '{SUBSCRIPTION}'"),
            SQL_TIMEOUT,
        )
        .await;
        // A physical standby answers too (it has no subscription); one whose
        // `app` database does not exist yet is not a subscriber either.
        let Ok(subscribed) = subscribed else { return Ok(()) };
        if subscribed.is_empty() {
            return Ok(());
        }
        if !entry.caught_up {
            return Err(ActionError::InvalidState(format!(
                "instance {id} is an upgrade's subscriber that no planned switchover caught up: it is not promoted"
            )));
        }
        for sql in [
            format!("ALTER SUBSCRIPTION {SUBSCRIPTION} DISABLE"),
            format!("ALTER SUBSCRIPTION {SUBSCRIPTION} SET (slot_name = NONE)"),
            format!("DROP SUBSCRIPTION {SUBSCRIPTION}"),
        ] {
            postgres::execute_in(entry, APP_DATABASE, &sql, SQL_TIMEOUT).await?;
        }
        Ok(())
    }
}
