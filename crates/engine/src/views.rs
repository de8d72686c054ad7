//! Read-only views of the fleet for the API.

use crate::{state_index, Dependents, Engine, EngineHealth, FleetStats};
use drover_model::{
    ActionRecord, Image, InstanceId, InstanceState, InstanceView, ServiceState, ServiceView, Timestamp,
};

impl Engine {
    pub fn service_view(&self, name: &str) -> Option<ServiceView> {
        let &slot = self.service_names.get(name)?;
        self.service_view_slot(slot, 0)
    }

    /// Every live service, by name.
    pub fn service_views(&self) -> Vec<ServiceView> {
        let mut v: Vec<ServiceView> = self.services.iter().filter_map(|(s, _)| self.service_view_slot(s, 0)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One page of services in name order: those named after `after`, at
    /// most `limit`, only `team`'s when given; and whether more follow. It
    /// builds views for the page only: a page of a 1M-service fleet costs
    /// one pass over the names, not a million views.
    pub fn service_views_page(
        &self,
        after: Option<&str>,
        limit: usize,
        team: Option<&str>,
    ) -> (Vec<ServiceView>, bool) {
        let mut names: Vec<(&str, u32)> = self
            .services
            .iter()
            .filter(|(_, s)| after.is_none_or(|a| &*s.name > a))
            .filter(|(_, s)| team.is_none_or(|t| self.teams.name(s.team) == t))
            .map(|(slot, s)| (&*s.name, slot))
            .collect();
        let more = names.len() > limit;
        if more {
            names.select_nth_unstable(limit);
            names.truncate(limit);
        }
        names.sort_unstable();
        let views = names.into_iter().filter_map(|(_, slot)| self.service_view_slot(slot, 0)).collect();
        (views, more)
    }

    pub fn instance_view(&self, id: InstanceId) -> Option<InstanceView> {
        let &slot = self.instance_index.get(&id)?;
        self.instance_view_slot(slot)
    }

    /// The name of the host an instance is placed on (None: unplaced or
    /// unknown). The shell routes an action by it: the built-in host's to
    /// the in-process providers, any other to that host's agent.
    pub fn instance_host(&self, id: InstanceId) -> Option<&str> {
        let &slot = self.instance_index.get(&id)?;
        self.hosts.name(self.instances.get(slot)?.host)
    }

    pub(crate) fn instance_view_slot(&self, slot: u32) -> Option<InstanceView> {
        let i = self.instances.get(slot)?;
        let s = self.services.get(i.service)?;
        Some(InstanceView {
            id: i.id,
            service: String::from(&*s.name),
            role: i.role,
            zone: self.zones.name(i.zone).into(),
            host: self.hosts.name(i.host).map(str::to_string),
            provider: self.providers.name(i.provider).into(),
            image: self.images.id(i.image).0,
            state: i.state,
            fenced: i.fenced,
            // A serving broker takes writes as a primary does (the
            // engine's own `writable` means "the primary" in its decisions).
            writable: i.writable()
                || (i.role == drover_model::Role::Broker
                    && !i.fenced
                    && i.state == drover_model::InstanceState::Available),
            state_since: Timestamp(i.state_since),
            last_heartbeat_at: (self.heard_at(i) > 0).then_some(Timestamp(self.heard_at(i))),
            facts: i.facts(),
            read_slot: (i.read_slot > 0).then_some(u32::from(i.read_slot)),
        })
    }

    pub(crate) fn service_view_slot(&self, slot: u32, _now: i64) -> Option<ServiceView> {
        let s = self.services.get(slot)?;
        let mut instances: Vec<InstanceView> = s.instances.iter().filter_map(|&i| self.instance_view_slot(i)).collect();
        // Primary first, then by creation.
        instances.sort_by_key(|v| (v.role != drover_model::Role::Primary || v.fenced, v.id));
        let storage = self.storage_of_kafka(s).and_then(|st| self.services.get(st));
        if let Some(st) = storage {
            // A Kafka service's storage members after its brokers.
            let mut members: Vec<InstanceView> =
                st.instances.iter().filter_map(|&i| self.instance_view_slot(i)).collect();
            members.sort_by_key(|v| (v.role != drover_model::Role::Primary || v.fenced, v.id));
            instances.extend(members);
        }
        let storage_of = self.kafka_of_storage(s).and_then(|k| self.services.get(k)).map(|k| String::from(&*k.name));
        let remedy = {
            // `open_remedies` counts exactly these: without one, no scan of
            // every open action (a fleet-wide command answers a view per
            // service, and the scan made that quadratic).
            let mut open: Vec<String> = if s.open_remedies == 0 {
                Vec::new()
            } else {
                self.actions
                    .values()
                    .filter(|a| a.remedy && a.record.service == s.id)
                    .map(|a| {
                        format!(
                            "{} {} ({}, attempt {})",
                            a.record.kind.name(),
                            a.record.instance,
                            a.record.state,
                            a.record.attempts
                        )
                    })
                    .collect()
            };
            open.sort();
            if s.needs_human {
                open.push("needs a human: a remedy failed".into());
            } else if s.held {
                open.push("held by the mass-uncertainty brake".into());
            }
            (!open.is_empty()).then(|| open.join("; "))
        };
        Some(ServiceView {
            id: s.id,
            name: String::from(&*s.name),
            engine: s.engine,
            state: s.state,
            plan: s.plan.clone(),
            team: self.teams.name(s.team).into(),
            zones: s.zones.iter().map(|&z| self.zones.name(z).to_string()).collect(),
            provider: self.providers.name(s.provider).into(),
            image: self.images.id(s.image).0,
            created_at: Timestamp(s.created_at),
            state_since: Timestamp(s.state_since),
            remedy,
            needs_human: s.needs_human,
            url: None,
            backups: s.backups.status(),
            credentials: s.credentials.as_deref().cloned().unwrap_or_default(),
            instances,
            maintenance_window: s.window.as_deref().cloned(),
            forked_from: s.forked_from.as_deref().cloned(),
            read_slots: crate::followers::slots_list(s.read_slots),
            read_urls: Vec::new(),
            labels: s.labels.as_deref().cloned().unwrap_or_default(),
            upgraded_from: s.upgraded_from.as_deref().map(|i| i.0.clone()),
            recoverable_since: s.backups.recoverable_since(),
            storage: storage.map(|st| String::from(&*st.name)),
            storage_of,
        })
    }

    /// The open actions, for checks and tests.
    pub fn open_actions(&self) -> Vec<ActionRecord> {
        let mut v: Vec<ActionRecord> = self.actions.values().map(|a| a.record.clone()).collect();
        v.sort_by_key(|a| a.id);
        v
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn stats(&self) -> FleetStats {
        let mut services = [0u64; 8];
        for (_, s) in self.services.iter() {
            services[s.state as usize] += 1;
        }
        let mut braked: Vec<String> = self
            .zone_state
            .iter()
            .enumerate()
            .filter(|(_, z)| z.braked_since.is_some() || z.frozen_since.is_some())
            .map(|(i, _)| self.zones.name(i as u16).to_string())
            .collect();
        if self.fleet_zone.braked_since.is_some() || self.fleet_zone.frozen_since.is_some() {
            braked.push("fleet".into());
        }
        FleetStats {
            services_by_state: ServiceState::ALL.iter().map(|&s| (s, services[s as usize])).collect(),
            instances_by_state: InstanceState::ALL.iter().map(|&s| (s, self.state_counts[state_index(s)])).collect(),
            open_actions: self.actions.len() as u64,
            braked,
        }
    }

    /// Per engine in use, how many of its services are live and down and
    /// whether the brake holds one of their zones: what the public status
    /// site derives its components from. One pass over the services.
    pub fn engine_health(&self) -> Vec<EngineHealth> {
        self.health_by(|_| ()).remove(&()).unwrap_or_default()
    }

    /// Each shard of `shards` this engine has services or actions in, as
    /// [`crate::ShardHealth`] (a fleet split between nodes: the status
    /// site and the dashboard sum every shard's).
    pub fn health_by_shard(&self, shards: u16) -> std::collections::BTreeMap<u16, crate::ShardHealth> {
        let mut out: std::collections::BTreeMap<u16, crate::ShardHealth> = self
            .health_by(|s| s.id.slot().shard(shards))
            .into_iter()
            .map(|(shard, engines)| (shard, crate::ShardHealth { engines, ..Default::default() }))
            .collect();
        for (_, s) in self.services.iter() {
            let part = out.entry(s.id.slot().shard(shards)).or_default();
            *part.services_by_state.entry(s.state.as_str().to_string()).or_default() += 1;
        }
        for a in self.actions.values() {
            out.entry(a.record.service.slot().shard(shards)).or_default().open_actions += 1;
        }
        let braked = self.stats().braked;
        for part in out.values_mut() {
            part.braked.clone_from(&braked);
        }
        out
    }

    fn health_by<K: Ord>(
        &self,
        key: impl Fn(&crate::fleet::Svc) -> K,
    ) -> std::collections::BTreeMap<K, Vec<EngineHealth>> {
        use drover_model::EngineKind;
        let fleet_braked = self.fleet_zone.braked_since.is_some() || self.fleet_zone.frozen_since.is_some();
        let braked_zone: Vec<bool> =
            self.zone_state.iter().map(|z| z.braked_since.is_some() || z.frozen_since.is_some()).collect();
        let kinds = [EngineKind::Postgres, EngineKind::Redis, EngineKind::Kafka];
        let mut parts: std::collections::BTreeMap<K, [Option<EngineHealth>; 3]> = std::collections::BTreeMap::new();
        for (_, s) in self.services.iter() {
            let index = kinds.iter().position(|&k| k == s.engine).unwrap_or(0);
            let slots = parts.entry(key(s)).or_default();
            let h =
                slots[index].get_or_insert(EngineHealth { engine: s.engine, live: 0, down: 0, braked: fleet_braked });
            if matches!(s.state, ServiceState::Provisioning | ServiceState::Deleting | ServiceState::Deleted) {
                continue;
            }
            h.live += 1;
            if matches!(s.state, ServiceState::Uncertain | ServiceState::Recovering | ServiceState::Unavailable) {
                h.down += 1;
            }
            if !h.braked && s.zones.iter().any(|&z| braked_zone.get(z as usize).copied().unwrap_or(false)) {
                h.braked = true;
            }
        }
        parts.into_iter().map(|(k, slots)| (k, slots.into_iter().flatten().collect())).collect()
    }

    /// What depends on the component `name` made of `packages` (binary or
    /// source package names): one pass over the images and the services.
    pub fn dependents(&self, name: &str, packages: &[String]) -> Dependents {
        let wanted = |p: &drover_model::Package| packages.iter().any(|w| *w == p.name || *w == p.source);
        let images: Vec<u32> = self
            .images
            .list
            .iter()
            .enumerate()
            .filter(|(_, i)| i.manifest.iter().any(wanted) || packages.iter().any(|w| i.packages.contains_key(w)))
            .map(|(k, _)| k as u32)
            .collect();
        let mut services = Vec::new();
        for (_, s) in self.services.iter() {
            if matches!(s.state, ServiceState::Deleting | ServiceState::Deleted) {
                continue;
            }
            let labelled = s.labels.as_deref().is_some_and(|l| l.get("component").is_some_and(|c| c == name));
            let on_image = images.contains(&s.image)
                || s.instances
                    .iter()
                    .any(|&i| self.instances.get(i).is_some_and(|x| x.state.is_member() && images.contains(&x.image)));
            if labelled || on_image {
                services.push((String::from(&*s.name), s.state, s.backups.last_verify_ok == Some(true)));
            }
        }
        services.sort();
        Dependents {
            images: images.iter().filter_map(|&k| self.images.list.get(k as usize)).map(|i| i.id.to_string()).collect(),
            services,
        }
    }

    pub fn images(&self) -> Vec<Image> {
        self.images.list.clone()
    }

    /// One image with the services built from it (name and team) and the
    /// live instances running it; `None` for an image not registered.
    pub fn image_usage(&self, id: &drover_model::ImageId) -> Option<ImageUsage> {
        let &index = self.images.index.get(id)?;
        let image = self.images.list.get(index as usize)?.clone();
        let mut services = Vec::new();
        let mut instances = Vec::new();
        for (_, s) in self.services.iter() {
            let mut on_it = s.image == index;
            for &i in &s.instances {
                if let Some(x) = self.instances.get(i).filter(|x| x.image == index && x.state.is_member()) {
                    instances.push((x.id, self.teams.name(s.team).to_string()));
                    on_it = true;
                }
            }
            if on_it {
                services.push((String::from(&*s.name), self.teams.name(s.team).to_string()));
            }
        }
        services.sort();
        Some(ImageUsage { image, services, instances })
    }
}

/// What [`Engine::image_usage`] answers: the image, its services and the
/// live instances on it, each with its team (for a team's token to filter).
#[derive(Clone, Debug)]
pub struct ImageUsage {
    pub image: Image,
    pub services: Vec<(String, String)>,
    pub instances: Vec<(drover_model::InstanceId, String)>,
}
