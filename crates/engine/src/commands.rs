//! Commands from people and tools: create, delete, switch over, resume, …

use crate::api::{Command, CommandError, Outputs, Reply};
use crate::fleet::{Inst, Placement, ServicePlace, Svc};
use crate::placement::Placed;
use crate::policy::Topology;
use crate::Engine;
use drover_model::EventKind;
use drover_model::{
    ActionId, ActionKind, ActionState, CreateService, EventSubject, Fault, Image, InstanceId, InstanceState, Plan,
    Role, ServiceId, ServiceRecord, ServiceState, Timestamp,
};
use rand::RngCore;

impl Engine {
    pub(crate) fn command(
        &mut self,
        command: Command,
        actor: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        match command {
            Command::CreateService(req) => self.create_service(req, None, now, out),
            Command::ForkService { source, name, at } => self.fork_service(&source, name, at, now, out),
            Command::AddFollowers { name, count } => self.add_followers(&name, count, now, out),
            Command::RemoveFollower { name, instance } => self.remove_follower(&name, instance, now, out),
            Command::DeleteService { name } => self.delete_service(name, now, out),
            Command::Chaos { instance, fault } => self.chaos(instance, fault, now, out),
            Command::Switchover { name } => self.switchover(name, now, out),
            Command::TakeBackup { name } => {
                self.backup_command(&name, ActionKind::Backup, "backup requested", now, out)
            }
            Command::VerifyBackup { name } => {
                self.backup_command(&name, ActionKind::VerifyRestore, "restore test requested", now, out)
            }
            Command::ResumeService { name } => self.resume_service(name, now, out),
            Command::RegisterHost { host, builtin } => self.register_host(host, builtin, now, out),
            Command::CordonHost { name } => self.set_host_state(&name, drover_model::HostState::Cordoned, now, out),
            Command::DrainHost { name } => self.set_host_state(&name, drover_model::HostState::Draining, now, out),
            Command::HostChaos { host, fault, by_agent } => self.host_chaos(&host, fault, by_agent, now, out),
            Command::RegisterImage(image) => self.register_image(image, out),
            Command::RotateCredentials { name, in_progress } => {
                self.rotate_credentials(&name, in_progress, actor, now, out)
            }
            // A fleet split into shards: a record each shard's holder
            // takes its part of (`rollouts::split`).
            Command::CreateRollout(spec) if self.config.share.of > 1 => self.create_split_rollout(spec, now, out),
            Command::CreateRollout(spec) => self.create_rollout(spec, now, out),
            Command::ResizeService { name, image } => self.resize_service(&name, image, now, out),
            Command::UpgradeService { name, version } => self.upgrade_service(&name, &version, now, out),
            Command::RollbackUpgrade { name } => self.rollback_upgrade(&name, now, out),
            Command::SetMaintenanceWindow { name, window } => self.set_maintenance_window(&name, window, now, out),
            Command::SetLabels { name, labels } => self.set_labels(&name, labels, now, out),
            Command::PauseRollout { id } => self.steer_rollout(id, drover_model::RolloutState::Paused, now, out),
            Command::ResumeRollout { id } => self.steer_rollout(id, drover_model::RolloutState::Running, now, out),
            Command::AbortRollout { id } => self.steer_rollout(id, drover_model::RolloutState::Aborted, now, out),
            Command::FreezeAutomation { scope } => self.freeze_automation(&scope, true, now, out),
            Command::ReleaseAutomation { scope } => self.freeze_automation(&scope, false, now, out),
            Command::Failover { name } => self.failover(&name, now, out),
            Command::RebuildFollower { name, instance } => self.rebuild_follower(&name, instance, now, out),
            Command::RecordRunbook { run, runbook, state, detail } => {
                Ok(self.record_runbook(&run, &runbook, &state, detail, now, out))
            }
            Command::RestoreArchive { id, name } => self.restore_archive(id, name, now, out),
            Command::CreateRestored { request, from } => self.create_service(*request, Some(from), now, out),
        }
    }

    /// Cancels what waits for the service and starts taking it apart; the
    /// instances leave one by one through reconcile.
    fn delete_service(&mut self, name: String, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        let Some(&sslot) = self.service_names.get(name.as_str()) else {
            return Err(CommandError::NotFound(format!("no service named {name:?}")));
        };
        let storage = self.services.get(sslot).and_then(|s| self.storage_of_kafka(s));
        if let Some(kafka) = self.services.get(sslot).and_then(|s| self.kafka_of_storage(s)) {
            if self.services.get(kafka).is_some_and(|k| !k.deleting) {
                return Err(CommandError::Conflict(format!(
                    "{name:?} is the storage of the Kafka service {:?}: delete that service, and its storage goes \
                     with it",
                    self.services.get(kafka).map(|k| String::from(&*k.name)).unwrap_or_default()
                )));
            }
        }
        let waiting: Vec<ActionId> = {
            let sid = self.services.get(sslot).map(|s| s.id);
            self.actions
                .values()
                .filter(|a| Some(a.record.service) == sid && a.record.state == ActionState::Pending)
                .map(|a| a.record.id)
                .collect()
        };
        for id in waiting {
            self.finish_action(id, ActionState::Cancelled, Some("service deleted".into()), now, out);
        }
        // Before `deleting` is set: the final backup is taken from a
        // primary the engine still counts as serving.
        self.start_archive(sslot, now, out);
        if let Some(s) = self.services.get_mut(sslot) {
            s.deleting = true;
            s.needs_human = false;
        }
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        let reply = self
            .service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(format!("service {name:?} is gone")));
        // A Kafka service's storage goes with it (archived as any
        // PostgreSQL service is: its records' last backup is kept).
        if let Some(storage) = storage.and_then(|st| self.services.get(st)).filter(|st| !st.deleting) {
            let storage = String::from(&*storage.name);
            self.delete_service(storage, now, out)?;
        }
        reply
    }

    /// Opens a fault injection on an instance (not a remedy: it takes no
    /// remedy slot).
    fn chaos(
        &mut self,
        instance: InstanceId,
        fault: Fault,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let Some(&slot) = self.instance_index.get(&instance) else {
            return Err(CommandError::NotFound(format!("no instance {instance}")));
        };
        let id = self
            .open_action(slot, ActionKind::InjectFault { fault }, &format!("chaos: inject {fault}"), false, now, out)
            .ok_or_else(|| CommandError::NotFound(format!("no instance {instance}")))?;
        let rec = match self.actions.get(&id) {
            // Without records (`Config::records`), from the open action.
            Some(a) if !self.config.records => Some(a.record.clone()),
            _ => out.changes.actions.iter().rev().find(|a| a.id == id).cloned(),
        };
        rec.map(|r| Reply::Action(Box::new(r)))
            .ok_or_else(|| CommandError::Invalid("chaos action could not be opened".into()))
    }

    /// A planned switchover: fence the healthy primary, then reconcile
    /// promotes the most advanced follower.
    fn switchover(&mut self, name: String, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        let sslot = self.live_service(&name)?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(name.clone()))?;
        if self.policy_of(s).topology() != Topology::PrimaryWithFollowers {
            // The request is well formed; it is the service's kind that
            // refuses it: a conflict with the resource, not a bad request.
            return Err(CommandError::Conflict(format!(
                "{name:?} is a {} service: its members are peers, there is no primary to switch over",
                s.engine
            )));
        }
        if s.open_remedies > 0 {
            return Err(CommandError::Conflict(format!(
                "a remedy of {name:?} is under way; switch over when it finishes"
            )));
        }
        let primary = self
            .current_primary(sslot)
            .filter(|&p| self.instances.get(p).is_some_and(|i| i.state == InstanceState::Available))
            .ok_or_else(|| CommandError::Conflict(format!("{name:?} has no available primary to switch over from")))?;
        if self.best_follower(sslot, now).is_none() {
            return Err(CommandError::Conflict(format!(
                "{name:?} has no healthy follower within the lag bound to switch over to"
            )));
        }
        self.open_action(
            primary,
            ActionKind::Fence { immediate: false },
            "switchover: fence the primary, then promote the most advanced follower",
            true,
            now,
            out,
        );
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(name.clone()))
    }

    /// An operator says the service is fixed: clear the failure counts and
    /// let the engine try its remedies again.
    fn resume_service(&mut self, name: String, now: i64, out: &mut Outputs) -> Result<Reply, CommandError> {
        let sslot = self.live_service(&name)?;
        let Some(s) = self.services.get_mut(sslot) else {
            return Err(CommandError::NotFound(format!("no service named {name:?}")));
        };
        let was = s.needs_human;
        s.needs_human = false;
        s.remedy_failures = 0;
        s.failing_since = 0;
        s.verify_failures = 0;
        if was {
            let ids: Vec<u32> = s.instances.to_vec();
            for i in ids {
                // A fresh start: a restart already tried may be tried again.
                if let Some(inst) = self.instances.get_mut(i) {
                    inst.restarts = 0;
                }
            }
            out.changes.events.push(
                self.event(
                    now,
                    EventSubject::Service,
                    Some(sslot),
                    None,
                    Some("needs_human"),
                    None,
                    "resumed by an operator (see the audit trail): the engine tries its remedies again",
                )
                .with_kind(EventKind::Resumed),
            );
            self.service_changed(sslot, out);
        }
        self.mark_dirty(sslot);
        self.reconcile_dirty(now, out);
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::NotFound(name.clone()))
    }

    /// Registers an image whose id matches its content.
    fn register_image(&mut self, image: Image, out: &mut Outputs) -> Result<Reply, CommandError> {
        let expected = image.content_id();
        if expected != image.id {
            return Err(CommandError::Invalid(format!(
                "image id {} does not match its content (expected {expected})",
                image.id
            )));
        }
        let (i, new) = self.images.insert(image);
        let image = self.images.list[i as usize].clone();
        if new {
            out.changes.images.push(image.clone());
        }
        Ok(Reply::Image(Box::new(image)))
    }

    /// The provider a new service goes to: the one it asks for, or the
    /// default; refused if it is not here or cannot run the engine.
    fn provider_for(&self, req: &CreateService) -> Result<String, CommandError> {
        let provider_name = req.provider.clone().unwrap_or_else(|| self.config.default_provider.clone());
        if !self.config.providers.contains(&provider_name) {
            return Err(CommandError::Invalid(format!(
                "provider {provider_name:?} is not available here; available: {}",
                self.config.providers.join(", ")
            )));
        }
        if let Some(engines) = self.config.provider_engines.get(&provider_name) {
            if !engines.contains(&req.engine) {
                let offered: Vec<String> = self
                    .config
                    .provider_engines
                    .iter()
                    .map(|(p, e)| format!("{p} ({})", e.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")))
                    .collect();
                return Err(CommandError::Invalid(format!(
                    "provider {provider_name:?} cannot run {} services; providers here and their engines: {}",
                    req.engine,
                    offered.join("; ")
                )));
            }
        }
        Ok(provider_name)
    }

    /// The members its engine's policy plans for a new service (a primary
    /// and its followers, or peers), spread over its zones. Built at once,
    /// outside the remedy budget.
    fn build_initial_members(&mut self, sslot: u32, zones: &[u16], placed: &[Placed], now: i64, out: &mut Outputs) {
        let Some(s) = self.services.get(sslot) else { return };
        let (image, provider, service_slot) = (s.image, s.provider, s.id.slot());
        let roles: Vec<Role> = self.policy_of(s).members(&s.plan).roles().collect();
        for (k, role) in roles.into_iter().enumerate() {
            let (zone, host) = match placed.get(k) {
                Some(p) => (p.zone, p.host),
                None => (zones[k % zones.len()], crate::hosts::NO_HOST),
            };
            let iid = InstanceId::new_at(now, self.rng.next_u64()).in_slot(service_slot);
            let slot = self.add_instance(Inst::new(iid, sslot, Placement { image, zone, provider, host }, role, now));
            out.changes.events.push(self.event(
                now,
                EventSubject::Instance,
                Some(sslot),
                Some(iid),
                None,
                Some(InstanceState::Installing.as_str()),
                format!("service created ({role} in {})", self.zones.name(zone)),
            ));
            self.instance_changed(slot, out);
            self.schedule_instance(slot, now);
            let kind = self.provision_kind(sslot, role, zone, image, host);
            self.open_action(slot, kind, "service created", false, now, out);
        }
    }

    pub(crate) fn live_service(&self, name: &str) -> Result<u32, CommandError> {
        let &sslot =
            self.service_names.get(name).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        if self.services.get(sslot).is_some_and(|s| s.deleting) {
            return Err(CommandError::Conflict(format!("service {name:?} is being deleted")));
        }
        Ok(sslot)
    }

    pub(crate) fn backup_command(
        &mut self,
        name: &str,
        kind: ActionKind,
        cause: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let sslot = self.live_service(name)?;
        let id = self.open_backup_action(sslot, kind, cause, now, out)?;
        let rec = self.actions.get(&id).map(|a| a.record.clone());
        rec.map(|r| Reply::Action(Box::new(r)))
            .ok_or_else(|| CommandError::Invalid("the action finished before it could be shown".into()))
    }

    /// A new service with the plan of `source` (engine, followers, sync,
    /// team, zones, provider) whose primary is restored from the source's
    /// backups and archived log, to `at` or to the latest. Its own URL,
    /// credentials and backups; healed like any other once available.
    fn fork_service(
        &mut self,
        source: &str,
        name: String,
        at: Option<Timestamp>,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let (req, from) = self.fork_plan(source, name, at, Timestamp(now))?;
        self.create_service(req, Some(from), now, out)
    }

    /// What a fork of `source` into `name` creates: the new service's
    /// request (the source's plan) and where its data comes from. Checked
    /// against the source only; the name is checked where it is created
    /// (on a fleet split between nodes, maybe another node's engine:
    /// `Command::CreateRestored`).
    pub fn fork_plan(
        &self,
        source: &str,
        name: String,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(CreateService, drover_model::RestoreFrom), CommandError> {
        let sslot = self.live_service(source)?;
        let s =
            self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {source:?}")))?;
        if !self.policy_of(s).forks_to_a_moment() {
            return Err(CommandError::Conflict(format!(
                "{source:?} is a {} service: its backups are snapshots, it cannot be forked to a moment",
                s.engine
            )));
        }
        if s.backups.last_backup().is_none() {
            return Err(CommandError::Conflict(format!(
                "{source:?} has no backup yet: take one (POST /v1/services/{source}/backups), then fork from a moment after it"
            )));
        }
        if let Some(at) = at {
            if at.0 > now.0 {
                return Err(CommandError::Invalid(format!(
                    "{} is in the future: a fork is of a moment that has passed (or omit `at` for the latest)",
                    at.to_rfc3339()
                )));
            }
            // The engine remembers the latest backup only; an older moment
            // may still be covered by an older backup, which the provider
            // knows: it refuses clearly if none is.
        }
        let req = CreateService {
            name,
            engine: s.engine,
            followers: s.plan.followers,
            sync: Some(s.plan.sync),
            max_failover_lag_bytes: Some(s.plan.max_failover_lag_bytes),
            credential_rotation_days: s.plan.credential_rotation_days,
            team: Some(self.teams.name(s.team).to_string()),
            zones: Some(s.zones.iter().map(|&z| self.zones.name(z).to_string()).collect()),
            provider: Some(self.providers.name(s.provider).to_string()),
            // Its labels too: what selects the source (for a rollout, say)
            // selects its copy.
            labels: s.labels.as_deref().cloned(),
            brokers: s.plan.brokers,
        };
        req.validate().map_err(CommandError::Invalid)?;
        let from = drover_model::RestoreFrom { service: source.to_string(), at, restored: false, backup: None };
        Ok((req, from))
    }

    pub(crate) fn create_service(
        &mut self,
        req: CreateService,
        forked_from: Option<drover_model::RestoreFrom>,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        req.validate().map_err(CommandError::Invalid)?;
        if self.service_names.contains_key(req.name.as_str()) {
            return Err(CommandError::Conflict(format!("a service named {:?} already exists", req.name)));
        }
        self.name_not_held_by_archive(&req.name)?;
        let provider_name = self.provider_for(&req)?;
        let image = self
            .images
            .latest_for(req.engine)
            .ok_or_else(|| CommandError::Invalid(format!("no image registered for engine {}", req.engine)))?;
        let storage = match req.engine {
            drover_model::EngineKind::Kafka if forked_from.is_some() => {
                return Err(CommandError::Invalid("a Kafka service cannot be forked (not built yet)".into()))
            }
            drover_model::EngineKind::Kafka => Some(self.storage_can_be_created(&req)?),
            _ => None,
        };
        let zone_names = req.zones.clone().unwrap_or_else(|| self.config.default_zones.clone());
        let zones: Vec<u16> = zone_names.iter().map(|z| self.zone(z)).collect();
        if let Some(storage) = &storage {
            // Its storage must fit too, before either is created.
            let members = 1 + usize::from(storage.followers);
            self.place_new_service(&provider_name, &zones, members).map_err(CommandError::Conflict)?;
        }
        let team = self.teams.intern(req.team.as_deref().unwrap_or(&self.config.default_team.clone()));
        let provider = self.providers.intern(&provider_name);
        // In its name's slot (`drover_model::Slot`): any node routes by
        // the name or by any id minted for the service.
        let id = ServiceId::new_at(now, self.rng.next_u64()).in_slot(drover_model::Slot::of_name(&req.name));
        let rec = ServiceRecord {
            id,
            name: req.name.clone(),
            engine: req.engine,
            plan: Plan {
                followers: req.followers,
                sync: req.sync.unwrap_or(false),
                max_failover_lag_bytes: req.max_failover_lag_bytes.unwrap_or(self.config.max_failover_lag_bytes),
                credential_rotation_days: req.credential_rotation_days,
                brokers: req.brokers,
            },
            team: self.teams.name(team).into(),
            zones: zone_names,
            image: self.images.id(image),
            provider: provider_name,
            state: ServiceState::Provisioning,
            created_at: Timestamp(now),
            state_since: Timestamp(now),
            needs_human: false,
            remedy_failures: 0,
            failing_since: None,
            backups: Default::default(),
            credentials: Default::default(),
            maintenance_window: None,
            forked_from,
            labels: req.labels.clone().unwrap_or_default(),
            read_slots: Vec::new(),
            upgraded_from: None,
        };
        let members = self.config.policies.get(rec.engine).members(&rec.plan).roles().count();
        let placed = self.place_new_service(&rec.provider, &zones, members).map_err(CommandError::Conflict)?;
        let svc_fork_cause = rec.forked_from.as_ref().map(|f| match f.at {
            Some(at) => format!("created: forked from {} as of {}", f.service, at.to_rfc3339()),
            None => format!("created: forked from {} (everything archived)", f.service),
        });
        let svc = Svc::from_record(rec, ServicePlace { team, zones: zones.as_slice().into(), image, provider });
        let sslot = self.services.insert(svc);
        self.service_names.insert(req.name.clone().into(), sslot);
        self.service_ids.insert(id, sslot);
        self.schedule_backups(sslot, now);
        self.schedule_rotation(sslot, now);
        out.changes.events.push(self.event(
            now,
            EventSubject::Service,
            Some(sslot),
            None,
            None,
            Some(ServiceState::Provisioning.as_str()),
            match &svc_fork_cause {
                Some(cause) => cause.as_str(),
                None => "created",
            },
        ));
        self.service_changed(sslot, out);
        self.build_initial_members(sslot, &zones, &placed, now, out);
        if let Some(storage) = storage {
            // After the Kafka service, so that its storage's members are
            // provisioned knowing whose storage they are. Every way this
            // can fail was checked before anything was created.
            self.create_service(storage, None, now, out)?;
        }
        self.service_view_slot(sslot, now)
            .map(|v| Reply::Service(Box::new(v)))
            .ok_or_else(|| CommandError::Invalid("service vanished while being created".into()))
    }
}

pub(crate) fn command_target(c: &Command) -> Option<String> {
    match c {
        Command::CreateService(r) => Some(r.name.clone()),
        Command::CreateRestored { request, .. } => Some(request.name.clone()),
        Command::ForkService { name, .. } | Command::RestoreArchive { name, .. } => Some(name.clone()),
        Command::DeleteService { name }
        | Command::SetMaintenanceWindow { name, .. }
        | Command::SetLabels { name, .. }
        | Command::ResizeService { name, .. }
        | Command::UpgradeService { name, .. }
        | Command::RollbackUpgrade { name }
        | Command::Switchover { name }
        | Command::TakeBackup { name }
        | Command::VerifyBackup { name }
        | Command::ResumeService { name }
        | Command::RotateCredentials { name, .. }
        | Command::Failover { name }
        | Command::RebuildFollower { name, .. }
        | Command::AddFollowers { name, .. }
        | Command::RemoveFollower { name, .. } => Some(name.clone()),
        Command::FreezeAutomation { scope } | Command::ReleaseAutomation { scope } => Some(scope.clone()),
        Command::RecordRunbook { run, .. } => Some(run.clone()),
        Command::Chaos { instance, .. } => Some(instance.to_string()),
        Command::RegisterImage(i) => Some(i.id.to_string()),
        Command::CreateRollout(spec) => Some(spec.to_image.to_string()),
        Command::PauseRollout { id } | Command::ResumeRollout { id } | Command::AbortRollout { id } => {
            Some(id.to_string())
        }
        Command::RegisterHost { host, .. } => Some(host.name.clone()),
        Command::CordonHost { name } | Command::DrainHost { name } | Command::HostChaos { host: name, .. } => {
            Some(name.clone())
        }
    }
}
