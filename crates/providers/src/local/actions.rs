//! The engine's actions carried out on real servers. Each is idempotent: a
//! repeat reports success when the effect already holds.

use super::postgres::{self, ServerSettings};
use super::process::{self, ProcState};
use super::registry::{InstanceEntry, Lifecycle, ServiceEntry};
use super::{lock, Inner};
use crate::ActionError;
use drover_model::{ActionKind, ActionOutcome, ActionRecord, Fault, InstanceId, RestoreFrom, Role, ServiceId};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new follower may take to start streaming after it starts.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long until the primary reports a synchronous standby after ALTER SYSTEM.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a promotion may take to end recovery.
const PROMOTE_WAIT: Duration = Duration::from_secs(60);
/// How often the end of recovery is looked for after pg_promote. Its own
/// `wait => true` looks every 100 ms, most of a fast promotion's time (it
/// ends recovery in a few ms, without a checkpoint); a query on a kept-open
/// connection every 5 ms costs nothing.
const PROMOTE_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Probe: the server must answer SELECT 1 on a fresh connection within
/// this. A healthy local server answers in a few milliseconds (a backend
/// fork and one query), so 500 ms is a hundred times that, enough for a busy
/// machine; a frozen one never answers, so this is what a frozen host costs
/// on top of the silence (`UNCERTAIN_AFTER`): together under 2 s.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// One SQL statement the provider runs as part of an action.
const SQL_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt did, or why it failed.
type Done = Result<Option<String>, ActionError>;

/// The application_name of a base backup's connections (what the
/// primary's `pg_stat_replication` filters out of its streaming followers).
const BASEBACKUP_NAME: &str = "pg_basebackup";

fn invalid(error: impl Into<String>) -> ActionError {
    ActionError::InvalidState(error.into())
}

impl Inner {
    pub(super) async fn execute(
        self: &Arc<Self>,
        action: ActionRecord,
        replication: Option<super::Replication>,
    ) -> ActionOutcome {
        let guard = self.instance_lock(action.instance);
        let _one_at_a_time = guard.lock().await;
        let started = Instant::now();
        let id = action.instance;
        let result = if self.redis.owns(&action) {
            self.redis_execute(&action).await
        } else if self.kafka.owns(&action) {
            self.kafka_execute(&action).await
        } else {
            self.execute_postgres(&action, replication).await
        };
        let outcome = match result {
            Ok(detail) => ActionOutcome::Succeeded { detail },
            Err(error) => error.outcome(),
        };
        tracing::info!(
            action = %action.id,
            kind = action.kind.name(),
            instance = %id,
            attempt = action.attempts,
            elapsed_ms = started.elapsed().as_millis() as u64,
            outcome = ?outcome,
            "local action executed"
        );
        outcome
    }

    async fn execute_postgres(
        self: &Arc<Self>,
        action: &ActionRecord,
        replication: Option<super::Replication>,
    ) -> Done {
        let id = action.instance;
        match &action.kind {
            ActionKind::Provision(p) => {
                let drover_model::ProvisionSpec {
                    role,
                    service_name,
                    sync,
                    settings,
                    restore_from,
                    read_slot,
                    version,
                    storage_of,
                    ..
                } = &**p;
                let new = NewMember {
                    version,
                    session_pool: storage_of.is_some(),
                    role: *role,
                    service_name,
                    sync: *sync,
                    settings,
                    restore_from: restore_from.as_ref(),
                    read_slot: *read_slot,
                    replication,
                };
                self.provision(id, action.service, new).await
            }
            ActionKind::Probe => self.probe(id).await,
            ActionKind::Fence { immediate } => self.fence(id, *immediate).await,
            ActionKind::Promote => self.promote(id).await,
            ActionKind::Restart => self.restart(id).await,
            ActionKind::Retire => self.retire(id).await,
            ActionKind::Archive => self.archive(id).await,
            ActionKind::Terminate => self.terminate(id).await,
            ActionKind::InjectFault { fault } => self.inject(id, *fault).await,
            ActionKind::Backup => self.backup(id).await,
            ActionKind::VerifyRestore => self.verify_restore(id, action.id).await,
            ActionKind::RotateCredentials => self.rotate_credentials(action.service, action.id).await,
            ActionKind::RevokePreviousCredentials => self.revoke_previous(action.service).await,
            ActionKind::PurgeArchive { service_name, .. } => self.purge_archive(service_name).await,
        }
    }

    /// An archive past its retention: its service's pgBackRest stanza (the
    /// final backup, older ones and the archived WAL) removed for good.
    /// Refused while a service of that name runs here (its backups are live).
    async fn purge_archive(&self, service_name: &str) -> Done {
        let Some(repo) = self.config.backups.clone() else {
            return Ok(Some("no backup repository is configured: nothing to remove".into()));
        };
        if self.primary_by_name(service_name).is_some() {
            return Err(invalid(format!(
                "a service named {service_name} runs here: its backups are not an archive's to remove"
            )));
        }
        let removed = repo.delete_stanza(service_name).await.map_err(backup_error)?;
        Ok(Some(if removed {
            format!("the backups of {service_name} are removed")
        } else {
            format!("nothing was left of the backups of {service_name}")
        }))
    }

    async fn provision(self: &Arc<Self>, id: InstanceId, service_id: ServiceId, new: NewMember<'_>) -> Done {
        let NewMember {
            role,
            service_name,
            sync,
            settings,
            restore_from,
            read_slot,
            replication,
            version,
            session_pool,
        } = new;
        let major = self.major_for(version)?;
        if role == Role::Broker {
            // The engine refuses such services first (`engines()`); this is the backstop.
            return Err(ActionError::Config("the local provider runs PostgreSQL only: it builds no brokers".into()));
        }
        let existing = {
            let registry = lock(&self.registry);
            if registry.tombstones.contains(&id) {
                return Err(invalid(format!(
                    "instance {id} was terminated; a terminated id is never provisioned again"
                )));
            }
            registry.instances.get(&id).cloned()
        };
        if let Some(entry) = &existing {
            match entry.lifecycle {
                Lifecycle::Active if entry.fenced => {
                    return Err(invalid(format!("instance {id} is fenced; provision a new instance instead")))
                }
                Lifecycle::Active => {
                    // Already built: make sure it runs (a repeat after a crash).
                    self.start_server(id, entry).await?;
                    if entry.role == Role::Primary {
                        self.ensure_app_roles(entry).await?;
                        self.set_replication_password(entry, replication.as_ref()).await?;
                        self.ensure_router(entry.service).await?;
                    }
                    if entry.read_slot.is_some() {
                        self.route_reads(entry.service).await?;
                    }
                    return Ok(Some("already provisioned".into()));
                }
                Lifecycle::Retired | Lifecycle::Archived => {
                    return Err(invalid(format!("instance {id} was retired; it is not provisioned again")))
                }
                Lifecycle::Provisioning => {
                    // A half-built attempt: start over in the same place.
                    self.stop_server(id, Some(entry)).await?;
                    let _ = std::fs::remove_dir_all(&entry.dir);
                }
            }
        }
        postgres::check_settings(settings)?;
        let login = replication.as_ref().and_then(|r| r.login.as_ref());
        let entry = self.register(
            id,
            service_id,
            NewEntry { role, service_name, sync, settings, read_slot, major, login, session_pool },
            existing,
        )?;
        self.prepare_dir(&entry.dir)?;
        // A follower of another major than the primary: an upgrade's new
        // member, a logical subscriber of the primary (`upgrade.rs`).
        let subscribes_to = match role {
            Role::Follower => self.current_primary(service_id).filter(|p| p.major != entry.major),
            _ => None,
        };
        match (role, restore_from) {
            (Role::Primary, Some(from)) => self.build_primary_from_backup(&entry, from).await?,
            (Role::Primary, None) => self.build_primary(&entry).await?,
            (Role::Follower, _) if subscribes_to.is_some() => self.build_primary(&entry).await?,
            (Role::Follower, _) => self.build_follower(&entry, replication.as_ref()).await?,
            (Role::Broker, _) => return Err(ActionError::Config("the local provider builds no brokers".into())),
        }
        if let Err(e) = self.start_server(id, &entry).await {
            return Err(match restore_from {
                Some(from) => fork_start_error(from, e, &entry),
                None => e,
            });
        }
        if let Some(from) = restore_from {
            self.open_fork(id, &entry, from).await?;
        }
        match (role, &subscribes_to) {
            (Role::Primary, _) => {
                self.ensure_app_roles(&entry).await?;
                self.set_replication_password(&entry, replication.as_ref()).await?;
            }
            (Role::Follower, Some(primary)) => self.subscribe(&entry, primary).await?,
            (Role::Follower, None) => self.wait_streaming(&entry).await?,
            (Role::Broker, _) => {}
        }
        {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.lifecycle = Lifecycle::Active;
            }
            if role == Role::Primary {
                if let Some(service) = registry.services.get_mut(&service_id) {
                    service.primary = Some(id);
                }
            }
        }
        self.save()?;
        match role {
            Role::Primary => {
                let service_guard = self.service_lock(service_id);
                let _held = service_guard.lock().await;
                self.ensure_router(service_id).await?;
                self.resume_router(service_id).await;
                // Its WAL is archived from now on, not from its first
                // backup (scheduled 10 minutes to an hour later): without
                // the stanza, archive-push is refused and the service's
                // first minutes have no point-in-time recovery.
                self.stanza_in_background(&entry, "the backup stanza is ready: WAL is archived from the start");
            }
            Role::Follower => {
                if sync {
                    self.adjust_sync(service_id).await?;
                }
                if read_slot.is_some() {
                    self.route_reads(service_id).await?;
                }
            }
            Role::Broker => {}
        }
        Ok(Some(match read_slot {
            Some(slot) => format!("read replica (slot {slot}) on port {}", entry.port),
            None => format!("{role} on port {}", entry.port),
        }))
    }

    /// Records the new instance (and its service, on first use) with fresh
    /// ports, durably, before anything is built: the ports survive a crash.
    fn register(
        &self,
        id: InstanceId,
        service_id: ServiceId,
        new: NewEntry<'_>,
        existing: Option<InstanceEntry>,
    ) -> Result<InstanceEntry, ActionError> {
        let NewEntry { role, service_name, sync, settings, read_slot, major, login, session_pool } = new;
        let entry = {
            let mut registry = lock(&self.registry);
            let mut used = registry.ports_in_use();
            match registry.services.entry(service_id) {
                std::collections::btree_map::Entry::Vacant(vacant) => {
                    let router_port = free_port(&used)?;
                    used.insert(router_port);
                    let (password, verifier) = match login {
                        Some(login) => (login.password.clone(), login.verifier.clone()),
                        None => {
                            let password = random_password()?;
                            let verifier = postgres::scram_verifier(&password);
                            (password, verifier)
                        }
                    };
                    let login = postgres::APP_LOGINS[0].to_string();
                    let context = super::registry::password_context(service_name, &login);
                    vacant.insert(ServiceEntry {
                        name: service_name.to_string(),
                        router_port,
                        verifier,
                        password: self.key.seal_str(&context, &password),
                        login,
                        previous: None,
                        rotated_at_ms: now_ms(),
                        rotation_action: None,
                        primary: None,
                        sync,
                        session_pool,
                    });
                }
                std::collections::btree_map::Entry::Occupied(mut occupied) => {
                    let service = occupied.get_mut();
                    service.sync = sync;
                    service.session_pool |= session_pool;
                }
            }
            let port = match &existing {
                Some(e) => e.port,
                None => free_port_on(&used, self.config.listen_address.as_deref())?,
            };
            let dir = self.root.join("instances").join(id.to_string());
            let entry = InstanceEntry {
                service: service_id,
                service_name: service_name.to_string(),
                role,
                port,
                socket: super::registry::socket_dir_for(id, &dir, port),
                dir,
                lifecycle: Lifecycle::Provisioning,
                fenced: false,
                fault: None,
                settings: settings.clone(),
                read_slot,
                major,
                caught_up: false,
            };
            registry.instances.insert(id, entry.clone());
            entry
        };
        self.save()?;
        Ok(entry)
    }

    fn settings(&self) -> ServerSettings<'_> {
        ServerSettings {
            archive_command: self.config.archive_command.as_deref(),
            listen_address: self.config.listen_address.as_deref(),
            control_user: &self.control_user,
        }
    }

    /// A private directory owned by the server user.
    fn prepare_dir(&self, dir: &std::path::Path) -> Result<(), ActionError> {
        self.run_as
            .prepare_dir(dir, 0o700)
            .map_err(|e| ActionError::io(format_args!("cannot prepare {}", dir.display()), e))
    }

    async fn build_primary(&self, entry: &InstanceEntry) -> Result<(), ActionError> {
        // Drover's superuser logs in by peer over the socket only: its
        // password is random and never kept (no TCP rule admits it anyway),
        // so the security check sees a superuser that is never left to trust.
        let password = random_password()?;
        let pgdata = entry.pgdata();
        self.prepare_dir(&pgdata)?;
        let pwfile = entry.dir.join("initdb.pw");
        postgres::write_owned(&self.run_as, &pwfile, &password, 0o600)?;
        let mut initdb = tokio::process::Command::new(self.servers.binaries().bindir_for(entry).join("initdb"));
        initdb
            .arg("-D")
            .arg(&pgdata)
            .arg(format!("--username={}", postgres::ROLE))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-local=peer", "--auth-host=scram-sha-256", "--data-checksums"])
            .args(["--locale=C", "--encoding=UTF8"])
            .current_dir(&entry.dir)
            .env("LC_ALL", "C");
        self.run_as.apply_tokio(&mut initdb);
        let result = postgres::run(initdb, "initdb").await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        postgres::write_config(&self.run_as, entry, &self.settings())?;
        Ok(())
    }

    /// A fork's primary: the source service's data restored from its
    /// backups and archived WAL, then configured as this service's own
    /// server (its port and socket, WAL archived under its own name).
    async fn build_primary_from_backup(&self, entry: &InstanceEntry, from: &RestoreFrom) -> Result<(), ActionError> {
        let repo = self.config.backups.clone().ok_or_else(|| {
            ActionError::Config(
                "no backup repository is configured for the local provider: nothing to fork from".into(),
            )
        })?;
        if let Some(set) = &from.backup {
            // An archive's backup: its service is gone, the set and the WAL
            // archived after it are all there is.
            let pgdata = entry.pgdata();
            self.prepare_dir(&pgdata)?;
            repo.restore_set_into(&from.service, &pgdata, set).await.map_err(backup_error)?;
            postgres::drop_auto_conf(&self.run_as, &pgdata, &["synchronous_standby_names"])?;
            postgres::write_config(&self.run_as, entry, &self.settings())?;
            return Ok(());
        }
        // What the source committed until now must be in the archive: a
        // commit record after the target (recovery to a time stops at the
        // first commit past it) and the WAL switched and archived, which
        // `pgbackrest check` does and waits for.
        let source = self.primary_by_name(&from.service);
        let archived = match &source {
            Some(src) => match postgres::execute(src, "SELECT txid_current()", SQL_TIMEOUT).await {
                Ok(_) => repo.ensure_stanza(&from.service, &self.pg_target(src)).await.map_err(backup_error),
                Err(e) => Err(e),
            },
            None => Err(ActionError::Unavailable(format!("{} has no running primary here", from.service))),
        };
        if let Err(e) = archived {
            if from.at.is_none() {
                return Err(ActionError::Unavailable(format!(
                    "cannot make sure everything {} committed is archived ({e}); a fork of its latest state waits for that",
                    from.service
                )));
            }
            tracing::warn!(source = %from.service, error = %e, "forking from what is archived already");
        }
        let pgdata = entry.pgdata();
        self.prepare_dir(&pgdata)?;
        let target = match from.at {
            Some(at) => Some(
                jiff::Timestamp::from_microsecond(at.0)
                    .map_err(|e| ActionError::Config(format!("fork target {}: {e}", at.0)))?,
            ),
            None => None,
        };
        repo.restore_into(&from.service, &pgdata, target).await.map_err(backup_error)?;
        // The source's synchronous standbys do not exist here: its first
        // write would wait for them forever.
        postgres::drop_auto_conf(&self.run_as, &pgdata, &["synchronous_standby_names"])?;
        postgres::write_config(&self.run_as, entry, &self.settings())?;
        Ok(())
    }

    /// After a fork's server started: waits for its replay to reach the
    /// target and promote, forgets the recovery settings and the source's
    /// logins (the fork gets its own credential next), and creates its own
    /// backup stanza so its WAL is archived from its first write.
    async fn open_fork(&self, id: InstanceId, entry: &InstanceEntry, from: &RestoreFrom) -> Result<(), ActionError> {
        let deadline = Instant::now() + PROMOTE_WAIT;
        loop {
            let in_recovery = postgres::execute(entry, "SELECT pg_is_in_recovery()", SQL_TIMEOUT).await;
            match in_recovery.as_deref() {
                Ok([Some(f)]) if f == "f" => break,
                _ if !self.servers.running(id) => {
                    return Err(fork_start_error(
                        from,
                        ActionError::Failed("the server stopped during the replay".into()),
                        entry,
                    ))
                }
                _ if Instant::now() >= deadline => {
                    return Err(ActionError::Timeout(format!(
                        "the fork of {} did not finish its replay within {PROMOTE_WAIT:?}",
                        from.service
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // One statement per call: ALTER SYSTEM refuses a transaction block.
        let mut statements = vec!["ALTER SYSTEM RESET ALL".to_string(), "SELECT pg_reload_conf()".to_string()];
        for login in postgres::APP_LOGINS {
            statements.push(format!("ALTER ROLE {login} NOLOGIN PASSWORD NULL"));
        }
        for sql in &statements {
            postgres::execute(entry, sql, SQL_TIMEOUT).await?;
        }
        if let Some(repo) = &self.config.backups {
            repo.ensure_stanza(&entry.service_name, &self.pg_target(entry)).await.map_err(backup_error)?;
        }
        Ok(())
    }

    /// The running primary of the service named `name`, if this provider has it.
    fn primary_by_name(&self, name: &str) -> Option<InstanceEntry> {
        let registry = lock(&self.registry);
        let id = registry.services.values().find(|s| s.name == name).and_then(|s| s.primary)?;
        registry.instances.get(&id).filter(|e| e.should_run()).cloned()
    }

    async fn build_follower(
        &self,
        entry: &InstanceEntry,
        replication: Option<&super::Replication>,
    ) -> Result<(), ActionError> {
        let service = self.service(entry.service)?;
        let local_primary = self.current_primary(entry.service);
        // The follower streams under its id; the base backup's own WAL
        // stream is named `pg_basebackup`, so that the primary never counts
        // it as a streaming follower: it reports no flush position, and a
        // primary that turned synchronous for it would hold every commit
        // until the real follower streams (seen as 1–7 s of stalled writes
        // after a host failover).
        let (conninfo, backup_conninfo) = match (replication, &local_primary) {
            // The primary runs on another host: over TCP to its address,
            // with the replication credential in a passfile of this
            // instance (never in a conninfo, a command line or a log).
            (Some(super::Replication { password, primary: Some(upstream), .. }), _) => {
                let passfile = entry.dir.join(postgres::REPLICATION_PASSFILE);
                postgres::write_owned(&self.run_as, &passfile, &postgres::passfile_line(upstream, password), 0o600)?;
                (
                    postgres::remote_primary_conninfo(upstream, &passfile, &entry_id_name(entry)),
                    postgres::remote_primary_conninfo(upstream, &passfile, BASEBACKUP_NAME),
                )
            }
            (_, Some(primary)) => (
                postgres::primary_conninfo(primary, &entry_id_name(entry)),
                postgres::primary_conninfo(primary, BASEBACKUP_NAME),
            ),
            (_, None) => {
                return Err(ActionError::Unavailable(format!(
                    "service {} has no running, unfenced primary to copy a follower from",
                    service.name
                )))
            }
        };
        let pgdata = entry.pgdata();
        self.prepare_dir(&pgdata)?;
        let basebackup = self.servers.binaries().bindir_for(entry).join("pg_basebackup");
        if !basebackup.is_file() {
            // npm's builds of newer majors have no pg_basebackup (and 15's
            // refuses a newer server): the copy comes from the service's
            // pgBackRest repository instead.
            self.restore_follower_from_backup(entry, local_primary.as_ref()).await?;
            postgres::write_config(&self.run_as, entry, &self.settings())?;
            postgres::set_primary_conninfo(&self.run_as, &pgdata, &conninfo)?;
            return Ok(());
        }
        let mut basebackup = tokio::process::Command::new(basebackup);
        basebackup
            .arg("-D")
            .arg(&pgdata)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-password", "-d", &backup_conninfo])
            .current_dir(&entry.dir)
            .env("LC_ALL", "C");
        self.run_as.apply_tokio(&mut basebackup);
        postgres::run(basebackup, "pg_basebackup").await?;
        postgres::write_config(&self.run_as, entry, &self.settings())?;
        postgres::set_primary_conninfo(&self.run_as, &pgdata, &conninfo)?;
        Ok(())
    }

    /// A follower's data directory restored as a standby from the newest
    /// backup of the service's current cluster (`pgbackrest restore
    /// --type=standby`), for a major without `pg_basebackup` here. When
    /// that cluster has no backup yet (the first follower after an
    /// upgrade's cut-over), a full backup of `primary` is taken first: here
    /// rather than by the engine, because how a member is copied is the
    /// provider's business (the engine asks for a follower; pg_basebackup
    /// takes its own backup too). It is an ordinary full backup in the
    /// repository, kept and expired like the others.
    async fn restore_follower_from_backup(
        &self,
        entry: &InstanceEntry,
        primary: Option<&InstanceEntry>,
    ) -> Result<(), ActionError> {
        let bindir = self.servers.binaries().bindir_for(entry);
        let repo = self.config.backups.clone().ok_or_else(|| {
            ActionError::Config(format!(
                "no pg_basebackup in {} and no backup repository to restore a follower from: \
                 configure the local provider's backups (pgBackRest) to build followers of this major",
                bindir.display()
            ))
        })?;
        let primary = primary.ok_or_else(|| {
            ActionError::Unavailable(
                "the primary runs on another host: a follower of this major is restored from \
                 this host's backup repository, which does not back it up"
                    .into(),
            )
        })?;
        let stanza = entry.service_name.clone();
        let latest = match repo.latest_of_current_cluster(&stanza).await {
            Ok(latest) => latest.filter(|b| b.pg_major == entry.major.or(Some(self.servers.binaries().major()))),
            // A stanza not created yet: no backup.
            Err(_) => None,
        };
        let set = match latest {
            Some(backup) => backup.label,
            None => {
                let target = self.pg_target(primary);
                repo.ensure_stanza(&stanza, &target).await.map_err(backup_error)?;
                repo.backup(&stanza, &target, crate::pgbackrest::BackupKind::Full).await.map_err(backup_error)?.label
            }
        };
        tracing::info!(stanza, set, instance = %entry.dir.display(), "a follower restored from a backup (no pg_basebackup of its major)");
        repo.restore_standby_into(&stanza, &entry.pgdata(), &set).await.map_err(backup_error)
    }

    /// On an agent host: the replication role logs in over TCP with the
    /// service's replication password (stored as a SCRAM verifier: the
    /// password itself never reaches the server). Idempotent; nothing on
    /// the built-in host.
    async fn set_replication_password(
        &self,
        entry: &InstanceEntry,
        replication: Option<&super::Replication>,
    ) -> Result<(), ActionError> {
        let Some(replication) = replication else { return Ok(()) };
        let verifier = postgres::scram_verifier(&replication.password);
        let sql = format!("ALTER ROLE {} PASSWORD {}", postgres::REPLICATION_ROLE, postgres::sql_quote(&verifier));
        postgres::execute(entry, &sql, SQL_TIMEOUT).await?;
        Ok(())
    }

    /// See [`super::LocalProvider::hold_strict_sync`].
    pub(super) async fn hold_strict_sync(&self) {
        let primaries: Vec<(ServiceId, String)> = {
            let registry = lock(&self.registry);
            registry
                .services
                .iter()
                .filter(|(_, s)| {
                    s.sync && s.primary.and_then(|p| registry.instances.get(&p)).is_some_and(|e| e.should_run())
                })
                .map(|(id, s)| (*id, s.name.clone()))
                .collect()
        };
        for (service_id, name) in primaries {
            let Some(primary) = self.current_primary(service_id) else { continue };
            let check = async {
                let current = postgres::execute(&primary, "SHOW synchronous_standby_names", PROBE_TIMEOUT).await?;
                if current.first().cloned().flatten().is_some_and(|c| !c.is_empty()) {
                    return Ok::<bool, ActionError>(false);
                }
                let streaming = postgres::execute(
                    &primary,
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' \
                     AND application_name <> 'pg_basebackup'",
                    PROBE_TIMEOUT,
                )
                .await?;
                if streaming.first().cloned().flatten().is_none_or(|n| n == "0") {
                    return Ok(false);
                }
                let sql = format!(
                    "ALTER SYSTEM SET synchronous_standby_names = {}",
                    postgres::conf_quote(drover_engine::policy::SYNC_STANDBYS)
                );
                postgres::execute(&primary, &sql, SQL_TIMEOUT).await?;
                postgres::execute(&primary, "SELECT pg_reload_conf()", SQL_TIMEOUT).await?;
                Ok(true)
            };
            match check.await {
                Ok(true) => {
                    tracing::info!(service = %name, "synchronous replication on (strict: kept while no follower streams)")
                }
                Ok(false) => {}
                Err(error) => tracing::debug!(service = %name, %error, "cannot check synchronous replication"),
            }
        }
    }

    /// The application's roles and database on a primary, with the
    /// service's current login role let in (idempotent).
    async fn ensure_app_roles(&self, entry: &InstanceEntry) -> Result<(), ActionError> {
        let service = self.service(entry.service)?;
        postgres::ensure_app_roles(entry, &service.login, &service.verifier).await
    }

    pub(super) fn service(&self, id: ServiceId) -> Result<ServiceEntry, ActionError> {
        lock(&self.registry).services.get(&id).cloned().ok_or_else(|| invalid(format!("unknown service {id}")))
    }

    /// [`Inner::current_primary`], for the checks.
    pub(super) fn current_primary_entry(&self, service: ServiceId) -> Option<InstanceEntry> {
        self.current_primary(service)
    }

    /// The service's primary when it is active, unfenced and its postmaster runs.
    fn current_primary(&self, service: ServiceId) -> Option<InstanceEntry> {
        let id = lock(&self.registry).services.get(&service)?.primary?;
        let entry = self.entry(id)?;
        let running = self.servers.running(id);
        (entry.should_run() && running).then_some(entry)
    }

    async fn wait_streaming(&self, entry: &InstanceEntry) -> Result<(), ActionError> {
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let status = postgres::execute(entry, "SELECT status FROM pg_stat_wal_receiver", SQL_TIMEOUT).await;
            if let Ok(rows) = &status {
                if rows.first().and_then(|r| r.as_deref()) == Some("streaming") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "follower not streaming after {STREAM_TIMEOUT:?} ({status:?}); log: {}",
                    postgres::log_tail(entry)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Patroni's non-strict synchronous mode: a sync service's primary waits
    /// for ANY 1 streaming follower, and runs async while none streams
    /// (availability over blocking every write). Called when a follower
    /// starts streaming and by the heartbeat loop when a primary's count of
    /// streaming followers changes between none and some.
    pub(super) async fn adjust_sync(&self, service_id: ServiceId) -> Result<(), ActionError> {
        self.adjust_sync_without(service_id, None).await
    }

    /// [`Self::adjust_sync`] as if follower `leaving` were gone already:
    /// called before a follower is stopped for good, so that the primary
    /// never waits on a standby that is about to stop (with no other
    /// follower streaming, as when an upgrade retires the old major's
    /// followers before its cut-over, every commit would wait until the
    /// heartbeat loop noticed).
    async fn adjust_sync_without(&self, service_id: ServiceId, leaving: Option<InstanceId>) -> Result<(), ActionError> {
        let guard = self.service_lock(service_id);
        let _held = guard.lock().await;
        let Some(service) = lock(&self.registry).services.get(&service_id).cloned() else {
            return Ok(());
        };
        let Some(primary) = self.current_primary(service_id) else {
            return Ok(());
        };
        let streaming_names = postgres::execute(
            &primary,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pg_basebackup'",
            SQL_TIMEOUT,
        )
        .await?;
        // Only the plan's followers count and are named (by their instance
        // ids, their application_name): never a read replica (asynchronous),
        // never an upgrade's subscriber (another major, a logical walsender).
        let plan_followers: Vec<String> = {
            let registry = lock(&self.registry);
            registry
                .instances
                .iter()
                .filter(|(id, e)| {
                    e.service == service_id
                        && e.role == Role::Follower
                        && e.read_slot.is_none()
                        && e.should_run()
                        && e.major == primary.major
                        && Some(**id) != leaving
                })
                .map(|(id, _)| id.to_string())
                .collect()
        };
        tracing::debug!(service = %service.name, ?streaming_names, ?plan_followers, sync = service.sync, "adjust_sync");
        let streaming: Vec<String> =
            streaming_names.into_iter().flatten().filter(|n| plan_followers.contains(n)).collect();
        let current = postgres::execute(&primary, "SHOW synchronous_standby_names", SQL_TIMEOUT).await?;
        let current = current.first().cloned().flatten().unwrap_or_default();
        // Named: those streaming now. A plan follower still being built
        // is named once it streams (its provisioning calls this again).
        let wanted = if service.sync && !streaming.is_empty() {
            drover_engine::policy::synchronous_standby_names(&streaming)
        } else {
            String::new()
        };
        let wanted = wanted.as_str();
        if current == wanted {
            return Ok(());
        }
        let sql = format!("ALTER SYSTEM SET synchronous_standby_names = {}", postgres::conf_quote(wanted));
        postgres::execute(&primary, &sql, SQL_TIMEOUT).await?;
        postgres::execute(&primary, "SELECT pg_reload_conf()", SQL_TIMEOUT).await?;
        tracing::info!(service = %service.name, synchronous_standby_names = wanted, streaming = streaming.len(), "replication mode changed");
        if wanted.is_empty() {
            return Ok(());
        }
        // Confirm: a follower is counted as synchronous (quorum).
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let rows = postgres::execute(
                &primary,
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
                SQL_TIMEOUT,
            )
            .await?;
            if rows.first().cloned().flatten().is_some_and(|n| n != "0") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "no synchronous follower reported {SYNC_TIMEOUT:?} after enabling sync"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A full base backup of the service from `id` (its primary) into the
    /// pgBackRest repository; the stanza is created on first use.
    async fn backup(&self, id: InstanceId) -> Done {
        let repo =
            self.config.backups.clone().ok_or_else(|| {
                ActionError::Config("no backup repository is configured for the local provider".into())
            })?;
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid("the instance does not run: back up from the running primary"));
        }
        let target = self.pg_target(&entry);
        let stanza = entry.service_name.clone();
        let stanza_lock = self.stanza_lock(&stanza);
        let _held = stanza_lock.lock().await;
        repo.ensure_stanza(&stanza, &target).await.map_err(backup_error)?;
        let info = repo.backup(&stanza, &target, crate::pgbackrest::BackupKind::Full).await.map_err(backup_error)?;
        Ok(Some(drover_model::backup_detail(&info.label, info.size_bytes)))
    }

    /// Restores the service's latest backup into a scratch server, checks
    /// it, and throws it away. A backup that does not restore is a failure
    /// (not retried: a retry would restore the same broken backup); one
    /// that could not be tried for a passing cause (the repository did not
    /// answer) is.
    async fn verify_restore(&self, id: InstanceId, action: drover_model::ActionId) -> Done {
        let repo =
            self.config.backups.clone().ok_or_else(|| {
                ActionError::Config("no backup repository is configured for the local provider".into())
            })?;
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        let port = {
            let registry = lock(&self.registry);
            free_port(&registry.ports_in_use())?
        };
        let scratch = self.root.join("scratch").join(action.to_string());
        // A database nobody has written to yet restores as empty, and that
        // is what its backup holds, not a failure: when its source has no
        // user table either, the restored copy must be empty too (the
        // checksums, the restore, the start and the end of recovery are
        // checked all the same). Otherwise at least one user table.
        let expect_empty = holds_no_user_tables(&entry).await;
        let canary = expect_empty.then_some(EMPTY_CANARY);
        // The binaries of the major the backup was taken of: after an
        // upgrade (or its rollback) the latest backup may be of the other one.
        let binaries = self.servers.binaries();
        let bin_dir_for = |major: Option<u32>| binaries.bindir_of_major(major);
        let report = repo
            .verify_restore_with(&entry.service_name, &scratch, port, &bin_dir_for, canary)
            .await
            .map_err(backup_error)?;
        if report.ok {
            Ok(Some(format!(
                "backup {} restored and checked in {:.1}s: {}",
                report.backup,
                report.duration.as_secs_f64(),
                report.evidence.join("; ")
            )))
        } else {
            Err(ActionError::BrokenBackup(format!(
                "backup {} did not restore: {}",
                report.backup,
                report.error.unwrap_or_else(|| report.evidence.join("; "))
            )))
        }
    }

    pub(super) fn pg_target(&self, entry: &InstanceEntry) -> crate::pgbackrest::PgTarget {
        crate::pgbackrest::PgTarget {
            data_dir: entry.pgdata(),
            port: entry.port,
            socket_dir: entry.socket_dir(),
            bin_dir: self.servers.binaries().bindir_for(entry),
        }
    }

    async fn probe(&self, id: InstanceId) -> Done {
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        if !entry.should_run() {
            return Err(invalid(format!("instance is {}", if entry.fenced { "fenced" } else { "not active" })));
        }
        if self.config.same_host_evidence {
            // Same-host shortcuts: a dead or stopped postmaster fails the
            // probe at once, without waiting for the query's timeout.
            let process = self.servers.get(id).ok_or_else(|| ActionError::Unhealthy("no postmaster".into()))?;
            match process::proc_state(process.pid) {
                ProcState::Live if !process.has_exited() => {}
                state => return Err(ActionError::Unhealthy(format!("postmaster {} is {state:?}", process.pid))),
            }
        }
        postgres::answers(&entry, PROBE_TIMEOUT).await.map_err(|e| ActionError::Unhealthy(e.to_string()))?;
        Ok(Some("answers SELECT 1".into()))
    }

    /// Stops the instance for good. Clients queue at the router instead of
    /// erroring while the primary changes (best effort: a fence never waits
    /// long on the router). `immediate` (a failover: the engine already
    /// judged it unavailable): nothing running on it can finish, so nothing
    /// is waited for: the router holds new queries, the server is killed
    /// (the local form of powering off a frozen host) and the statements
    /// that were stuck on it fail. Otherwise (a switchover): running
    /// statements finish first and the server shuts down cleanly.
    async fn fence(&self, id: InstanceId, immediate: bool) -> Done {
        let Some(entry) = self.entry(id) else {
            return Ok(Some("unknown instance: nothing can write".into()));
        };
        let routed_here = lock(&self.registry).services.get(&entry.service).and_then(|s| s.primary) == Some(id);
        let hold = routed_here && !entry.fenced;
        if immediate {
            let service = if hold { self.service(entry.service).ok() } else { None };
            let holding = match &service {
                Some(service) => self.routers.hold(entry.service, service).await,
                None => None,
            };
            self.kill_server(id, Some(&entry)).await?;
            if let (Some(service), Some(holding)) = (&service, holding) {
                self.routers.release_dead_connections(entry.service, service, holding).await;
            }
        } else {
            let service = if hold { self.service(entry.service).ok() } else { None };
            // A checkpoint while clients still run: the shutdown's own
            // checkpoint then has little left to write, and the clients
            // queued at the paused router wait for less (under heavy
            // writes and a slow disk the shutdown checkpoint was seconds).
            if hold && self.servers.running(id) {
                if let Err(error) = postgres::execute(&entry, "CHECKPOINT", SQL_TIMEOUT).await {
                    tracing::info!(instance = %id, %error, "checkpoint before the switchover failed; stopping anyway");
                }
            }
            if let Some(service) = &service {
                self.routers.pause(entry.service, service).await;
            }
            // An upgrade's switchover: the new major's subscriber applies
            // everything this primary wrote before it stops (clients queue
            // at the paused router meanwhile).
            if hold && !entry.fenced {
                if let Err(error) = self.catch_up_subscribers(&entry).await {
                    self.resume_router(entry.service).await;
                    return Err(error);
                }
                self.release_subscribers(&entry).await;
            }
            self.stop_server(id, Some(&entry)).await?;
        }
        let newly = {
            let mut registry = lock(&self.registry);
            match registry.instances.get_mut(&id) {
                Some(stored) if !stored.fenced => {
                    stored.fenced = true;
                    true
                }
                _ => false,
            }
        };
        self.save()?;
        Ok(Some(if newly { "stopped and fenced" } else { "already fenced" }.into()))
    }

    async fn promote(self: &Arc<Self>, id: InstanceId) -> Done {
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        let result = self.promote_inner(id, &entry).await;
        if result.is_err() {
            // Never leave clients queued behind a failed promotion.
            self.resume_router(entry.service).await;
        }
        result
    }

    async fn promote_inner(self: &Arc<Self>, id: InstanceId, entry: &InstanceEntry) -> Done {
        if !entry.should_run() {
            return Err(invalid(format!(
                "cannot promote: instance is {}",
                if entry.fenced { "fenced" } else { "not active" }
            )));
        }
        if !self.servers.running(id) {
            return Err(invalid("cannot promote: its postmaster is not running"));
        }
        // Never two writable primaries: the old one must be fenced (or dead) first.
        let old = lock(&self.registry).services.get(&entry.service).and_then(|s| s.primary).filter(|p| *p != id);
        if let Some(old) = old {
            if self.entry(old).is_some_and(|e| e.should_run()) && self.servers.alive(old) {
                return Err(invalid(format!("cannot promote: the primary {old} still runs unfenced; fence it first")));
            }
        }
        let major_moved = old.and_then(|old| self.entry(old)).is_some_and(|o| o.major != entry.major);
        // An upgrade's subscriber becomes the primary only caught up by a
        // planned switchover; its subscription ends first.
        self.end_subscription(id, entry).await?;
        let recovery = postgres::execute(entry, "SELECT pg_is_in_recovery()", SQL_TIMEOUT).await?;
        let was_follower = recovery.first().cloned().flatten().as_deref() == Some("t");
        if was_follower {
            self.end_recovery(entry).await?;
        }
        // No follower streams from it yet: async until one does (adjust_sync).
        postgres::execute(entry, "ALTER SYSTEM SET synchronous_standby_names = ''", SQL_TIMEOUT).await?;
        postgres::execute(entry, "SELECT pg_reload_conf()", SQL_TIMEOUT).await?;
        let others: Vec<(InstanceId, InstanceEntry)> = {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.role = Role::Primary;
            }
            if let Some(service) = registry.services.get_mut(&entry.service) {
                service.primary = Some(id);
            }
            registry
                .instances
                .iter()
                .filter(|(other, e)| {
                    **other != id && e.service == entry.service && e.role == Role::Follower && e.should_run()
                })
                .map(|(other, e)| (*other, e.clone()))
                .collect()
        };
        self.save()?;
        {
            let guard = self.service_lock(entry.service);
            let _held = guard.lock().await;
            self.ensure_router(entry.service).await?;
            self.resume_router(entry.service).await;
        }
        // Other followers follow the new primary: primary_conninfo reloads
        // without a restart since PostgreSQL 13, and recovery_target_timeline
        // = latest lets them cross the promotion. One that cannot (it was
        // ahead) stops streaming and is replaced by the engine.
        for (other, other_entry) in others {
            let conninfo = postgres::primary_conninfo(entry, &other.to_string());
            let sql = format!("ALTER SYSTEM SET primary_conninfo = {}", postgres::conf_quote(&conninfo));
            let repoint = async {
                postgres::execute(&other_entry, &sql, SQL_TIMEOUT).await?;
                postgres::execute(&other_entry, "SELECT pg_reload_conf()", SQL_TIMEOUT).await
            };
            if let Err(error) = repoint.await {
                tracing::warn!(follower = %other, %error, "cannot re-point follower at the new primary");
            }
        }
        if major_moved {
            self.stanza_in_background(entry, "the backup stanza follows the new primary's major");
        }
        Ok(Some(if was_follower { "promoted; router switched" } else { "already primary; router switched" }.into()))
    }

    /// Makes the service's pgBackRest stanza accept `entry`'s WAL: created
    /// for a new primary, moved onto the new primary's major after the
    /// cut-over of an upgrade or its rollback (`stanza-upgrade`), so that
    /// WAL is archived from now on instead of from the next backup;
    /// `pgbackrest check` then switches WAL, which wakes PostgreSQL's
    /// archiver at once (it retries a refused segment only every minute
    /// otherwise). In the background: it is not part of making the primary
    /// writable, and its failure harms nothing the next backup (which does
    /// the same first) does not repair; it is logged.
    fn stanza_in_background(&self, entry: &InstanceEntry, done: &'static str) {
        let Some(repo) = self.config.backups.clone() else { return };
        let target = self.pg_target(entry);
        let stanza = entry.service_name.clone();
        let stanza_lock = self.stanza_lock(&stanza);
        tokio::spawn(async move {
            let _held = stanza_lock.lock().await;
            match repo.ensure_stanza(&stanza, &target).await {
                Ok(()) => tracing::info!(stanza, "{done}"),
                Err(error) => tracing::warn!(stanza, %error, "cannot make the backup stanza accept the primary's WAL"),
            }
        });
    }

    /// pg_promote without its wait, then polls for the end of recovery on
    /// one connection (see [`PROMOTE_POLL_INTERVAL`]).
    async fn end_recovery(&self, entry: &InstanceEntry) -> Result<(), ActionError> {
        let client = postgres::connect(entry, SQL_TIMEOUT).await?;
        let query = |sql: &'static str| {
            let client = &client;
            async move {
                let messages = tokio::time::timeout(SQL_TIMEOUT, client.simple_query(sql))
                    .await
                    .map_err(|_| ActionError::Timeout(format!("`{sql}` did not finish within {SQL_TIMEOUT:?}")))?
                    .map_err(|e| postgres::sql_error(sql, &e))?;
                Ok::<_, ActionError>(messages.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                    _ => None,
                }))
            }
        };
        if query("SELECT pg_promote(wait => false)").await?.as_deref() != Some("t") {
            return Err(ActionError::Failed("pg_promote could not signal the promotion".into()));
        }
        let deadline = Instant::now() + PROMOTE_WAIT;
        loop {
            if query("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "the promotion did not end recovery within {PROMOTE_WAIT:?}"
                )));
            }
            tokio::time::sleep(PROMOTE_POLL_INTERVAL).await;
        }
    }

    async fn restart(self: &Arc<Self>, id: InstanceId) -> Done {
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        if entry.fenced {
            return Err(invalid("instance is fenced: it is never started again"));
        }
        if entry.lifecycle != Lifecycle::Active {
            return Err(invalid(format!("instance is {:?}, not active", entry.lifecycle)));
        }
        let healthy = self.servers.running(id) && postgres::answers(&entry, PROBE_TIMEOUT).await.is_ok();
        if !healthy {
            // Hung or half-dead: kill the group (a stopped group is killed at once).
            if self.servers.known(id) {
                self.stop_server(id, Some(&entry)).await?;
            }
            self.start_server(id, &entry).await?;
        }
        {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                if matches!(stored.fault, Some(Fault::Hang) | Some(Fault::Crash)) {
                    stored.fault = None;
                }
            }
        }
        self.save()?;
        let routed_here = lock(&self.registry).services.get(&entry.service).and_then(|s| s.primary) == Some(id);
        if routed_here {
            self.resume_router(entry.service).await;
        }
        Ok(Some(if healthy { "already running" } else { "restarted" }.into()))
    }

    async fn retire(&self, id: InstanceId) -> Done {
        let Some(entry) = self.entry(id) else {
            return Ok(Some("unknown instance: nothing to retire".into()));
        };
        if entry.role == Role::Follower && entry.read_slot.is_none() && entry.should_run() {
            // Out of synchronous_standby_names first (best effort: the
            // heartbeat loop does it anyway once it stops streaming).
            if let Err(error) = self.adjust_sync_without(entry.service, Some(id)).await {
                tracing::warn!(instance = %id, %error, "cannot take a retiring follower out of synchronous replication");
            }
        }
        self.stop_server(id, Some(&entry)).await?;
        {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                if matches!(stored.lifecycle, Lifecycle::Active | Lifecycle::Provisioning) {
                    stored.lifecycle = Lifecycle::Retired;
                }
            }
        }
        self.save()?;
        if entry.read_slot.is_some() {
            // Its read database leaves the router until a replica fills
            // the slot again (a client gets "no such database", not a hang).
            self.route_reads(entry.service).await?;
        }
        // An upgrade's subscriber retired before its cut-over (an aborted
        // upgrade): its slot on the primary would hold WAL forever.
        self.drop_subscriber_slot(id, &entry).await;
        Ok(Some("stopped for good".into()))
    }

    async fn archive(&self, id: InstanceId) -> Done {
        let Some(entry) = self.entry(id) else {
            return Ok(Some("unknown instance: nothing to archive".into()));
        };
        if entry.lifecycle == Lifecycle::Archived {
            return Ok(Some("already archived".into()));
        }
        self.stop_server(id, Some(&entry)).await?;
        let target = self.root.join("archive").join(id.to_string());
        if entry.dir.exists() {
            if target.exists() {
                return Err(ActionError::Config(format!("{} already exists; move it aside", target.display())));
            }
            std::fs::rename(&entry.dir, &target).map_err(|e| {
                ActionError::io(format_args!("cannot move {} to {}", entry.dir.display(), target.display()), e)
            })?;
        }
        {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.dir = target.clone();
                stored.lifecycle = Lifecycle::Archived;
            }
        }
        self.save()?;
        Ok(Some(format!("data kept in {}", target.display())))
    }

    async fn terminate(&self, id: InstanceId) -> Done {
        let Some(entry) = self.entry(id) else {
            let tombstoned = lock(&self.registry).tombstones.insert(id);
            if tombstoned {
                self.save()?;
            }
            return Ok(Some("nothing left".into()));
        };
        self.stop_server(id, Some(&entry)).await?;
        // Its short socket directory under the temporary dir, if it has
        // one, goes too: nothing else would ever remove it.
        let dirs =
            [Some(entry.dir.clone()), Some(self.root.join("archive").join(id.to_string())), entry.socket.clone()];
        for dir in dirs.into_iter().flatten() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ActionError::io(format_args!("cannot delete {}", dir.display()), e)),
            }
        }
        let service_empty = {
            let mut registry = lock(&self.registry);
            registry.instances.remove(&id);
            registry.tombstones.insert(id);
            if let Some(service) = registry.services.get_mut(&entry.service) {
                if service.primary == Some(id) {
                    service.primary = None;
                }
            }
            !registry.instances.values().any(|e| e.service == entry.service)
        };
        self.save()?;
        if service_empty {
            // Nothing left to route to. The service entry (port, password)
            // stays so a new instance of the same service keeps its URL.
            self.routers.stop(entry.service).await?;
        }
        lock(&self.instance_locks).remove(&id);
        Ok(Some("deleted".into()))
    }

    async fn inject(&self, id: InstanceId, fault: Fault) -> Done {
        let entry = self.entry(id).ok_or_else(|| invalid("unknown instance"))?;
        let detail = match fault {
            Fault::Crash if self.servers.crash(id) => "postmaster killed (SIGKILL)",
            Fault::Crash => "not running",
            Fault::Hang if self.servers.signal(id, Signal::SIGSTOP) => "postmaster and its backends stopped (SIGSTOP)",
            Fault::Hang => return Err(invalid("cannot hang: not running")),
            Fault::Partition => "heartbeats withheld",
            Fault::Heal => {
                self.servers.signal(id, Signal::SIGCONT);
                "healed"
            }
        };
        {
            let mut registry = lock(&self.registry);
            if let Some(stored) = registry.instances.get_mut(&id) {
                stored.fault = if fault == Fault::Heal { None } else { Some(fault) };
            }
        }
        if fault == Fault::Heal || fault == Fault::Hang {
            // A heartbeat connection stuck on the stopped server is useless.
            lock(&self.beat_clients).remove(&id);
        }
        self.save()?;
        let _ = entry;
        Ok(Some(detail.into()))
    }

    /// Ends every hold on the service's router.
    pub(super) async fn resume_router(&self, service_id: ServiceId) {
        if let Ok(service) = self.service(service_id) {
            self.routers.resume(service_id, &service).await;
        }
    }
}

/// A query that returns a row in a database with no user table: the proof a
/// restore test asks of the copy of an empty database.
const EMPTY_CANARY: &str = "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
                            WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))";

/// Whether the running server `entry` holds no user table in any database
/// (false when it cannot tell: then the restore test asks for tables).
async fn holds_no_user_tables(entry: &InstanceEntry) -> bool {
    let sql = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate";
    let Ok(databases) = postgres::execute(entry, sql, SQL_TIMEOUT).await else { return false };
    for db in databases.into_iter().flatten() {
        match postgres::execute_in(entry, &db, crate::pgbackrest::USER_TABLES_SQL, SQL_TIMEOUT).await {
            Ok(n) if n.first().cloned().flatten().as_deref() == Some("0") => {}
            _ => return false,
        }
    }
    true
}

/// What a new member is built as (the Provision action's fields).
struct NewMember<'a> {
    role: Role,
    service_name: &'a str,
    sync: bool,
    settings: &'a std::collections::BTreeMap<String, String>,
    restore_from: Option<&'a RestoreFrom>,
    /// A read replica's slot (None: a member of the plan).
    read_slot: Option<u32>,
    /// Replication across agent hosts (None: on the built-in host).
    replication: Option<super::Replication>,
    /// Its image's engine version (empty: the default binaries).
    version: &'a str,
    /// The router pools whole sessions (a Kafka service's storage).
    session_pool: bool,
}

/// What [`Inner::register`] records of a new member.
struct NewEntry<'a> {
    role: Role,
    service_name: &'a str,
    sync: bool,
    settings: &'a std::collections::BTreeMap<String, String>,
    read_slot: Option<u32>,
    major: Option<u32>,
    /// The service's login when the control plane chose it (agent hosts:
    /// its router beside the control plane must hold the same verifier).
    login: Option<&'a super::Login>,
    /// The router pools whole sessions (a Kafka service's storage).
    session_pool: bool,
}

/// A fork whose server would not start or stopped in its replay: when its
/// log says the target was never reached (the moment is past the end of
/// the archive, or before the oldest backup), trying again cannot help.
fn fork_start_error(from: &RestoreFrom, error: ActionError, entry: &InstanceEntry) -> ActionError {
    let log = postgres::log_tail(entry);
    if log.contains("recovery target") || log.contains("recovery ended before") {
        return ActionError::InvalidState(format!(
            "the fork of {} cannot reach {}: {log}",
            from.service,
            from.at.map_or_else(|| "the end of its archive".to_string(), |t| t.to_rfc3339())
        ));
    }
    error
}

fn entry_id_name(entry: &InstanceEntry) -> String {
    // The instance id is the last part of its directory.
    entry.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A free loopback port not already in the registry.
pub(super) fn free_port(used: &std::collections::BTreeSet<u16>) -> Result<u16, ActionError> {
    free_port_on(used, None)
}

/// A port free on 127.0.0.1 and on `also` (an agent host's own loopback
/// address, where its servers listen too), not already in the registry.
///
/// Chosen below the kernel's ephemeral range: a port the kernel handed
/// out by `bind(0)` is one it may give any outgoing connection a moment
/// later, and PostgreSQL, finding one of its listen addresses taken, only
/// warns and listens on the others (a primary the agent sees healthy and
/// its followers cannot reach: a CI failure once).
pub(super) fn free_port_on(used: &std::collections::BTreeSet<u16>, also: Option<&str>) -> Result<u16, ActionError> {
    let no_port = |e| ActionError::io("cannot find a free port", e);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|n| n.parse::<u16>().ok()))
        .unwrap_or(32768);
    let low = ephemeral_start.saturating_sub(12_000).max(10_000);
    let free_on = |address: &str, port: u16| std::net::TcpListener::bind((address, port)).is_ok();
    if low + 100 < ephemeral_start {
        let mut seed = [0u8; 2];
        for _ in 0..200 {
            use std::io::Read;
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).map_err(no_port)?;
            let port = low + u16::from_le_bytes(seed) % (ephemeral_start - low);
            if !used.contains(&port) && free_on("127.0.0.1", port) && also.is_none_or(|a| free_on(a, port)) {
                return Ok(port);
            }
        }
    }
    // An unusual port range: whatever the kernel offers.
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(no_port)?;
        let port = listener.local_addr().map_err(no_port)?.port();
        if !used.contains(&port) && also.is_none_or(|a| free_on(a, port)) {
            return Ok(port);
        }
    }
    Err(ActionError::Unavailable("no free loopback port found in 300 tries".into()))
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// 24 random bytes as hex (safe in URLs, conninfo and config files).
pub(super) fn random_password() -> Result<String, ActionError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ActionError::io("cannot read /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A pgBackRest failure as an action's: its own mistakes in the
/// configuration (a bad stanza, nothing to restore) are permanent; a tool
/// that could not start is a missing install; the rest (a command that
/// failed or timed out) may pass.
fn backup_error(error: crate::pgbackrest::BackupError) -> ActionError {
    use crate::pgbackrest::BackupError;
    let text = error.to_string();
    match error {
        BackupError::InvalidStanza(_) | BackupError::Spawn { .. } | BackupError::ScratchInUse { .. } => {
            ActionError::Config(text)
        }
        BackupError::NoBackup { .. } => ActionError::InvalidState(text),
        BackupError::Io { operation, path, source } => {
            ActionError::io(format_args!("cannot {operation} {}", path.display()), source)
        }
        BackupError::Timeout { .. } => ActionError::Timeout(text),
        BackupError::Command { .. } | BackupError::Parse { .. } | BackupError::BackupMissing { .. } => {
            ActionError::Failed(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chosen port is free on both addresses, outside the registry and
    /// below the range the kernel hands outgoing connections.
    #[test]
    fn a_chosen_port_is_free_on_the_hosts_address_too_and_never_ephemeral() {
        let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let port = free_port_on(&used, Some("127.0.0.2")).unwrap();
            assert!(port < ephemeral_start, "{port} is in the ephemeral range");
            assert!(!used.contains(&port));
            let on_host = std::net::TcpListener::bind(("127.0.0.2", port)).expect("free on the host's address");
            let on_loopback = std::net::TcpListener::bind(("127.0.0.1", port)).expect("free on 127.0.0.1");
            drop((on_host, on_loopback));
            used.insert(port);
        }
    }
}
