//! A test harness around the pure engine: a tiny fake fleet that carries out
//! actions at once and heartbeats, an in-memory "store" that applies every
//! `Changes`, and invariant checks after every step.

#![allow(dead_code)]

use drover_engine::{Command, Config, Engine, Input, Outputs, Reply};
use drover_model::*;
use drover_world::{self as world, Effect, Ground, Machine};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

pub const T0: i64 = 1_800_000_000_000_000;

/// One machine of the test world: the world's machine (`drover-world`,
/// reached through `Deref`: `w.crashed`, `w.partitioned`, ...) with its
/// service, WAL position and beat sequence.
#[derive(Clone, Debug)]
pub struct W {
    pub service: ServiceId,
    pub machine: Machine,
    pub wal: u64,
    pub seq: u64,
}

impl std::ops::Deref for W {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl std::ops::DerefMut for W {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }
}

#[derive(Default)]
pub struct World {
    pub insts: BTreeMap<InstanceId, W>,
    /// Kinds of action that fail (non-retryable) in this world.
    pub failing: Vec<&'static str>,
    pub executed: Vec<(ActionId, u32, &'static str, InstanceId)>,
    /// Terminated ids: a late, duplicate Provision must not bring one back.
    pub tombstones: std::collections::BTreeSet<InstanceId>,
    /// Images whose instances cannot be built in this world (a bad image).
    pub failing_images: Vec<ImageId>,
}

impl World {
    /// Carries out one attempt, by the world's rules (`drover-world`).
    pub fn execute(&mut self, a: &ActionRecord) -> ActionOutcome {
        self.executed.push((a.id, a.attempts, a.kind.name(), a.instance));
        if self.failing.contains(&a.kind.name()) {
            return ActionOutcome::Failed { error: "configured to fail".into(), retryable: false };
        }
        if let Some(drover_model::ProvisionSpec { image, .. }) = a.kind.provision() {
            if self.failing_images.contains(image) {
                return ActionOutcome::Failed { error: "this image does not boot".into(), retryable: false };
            }
        }
        if let Some(drover_model::ProvisionSpec { role, zone, .. }) = a.kind.provision() {
            let existing = self.insts.get(&a.instance).map(|w| w.service);
            let tombstoned = self.tombstones.contains(&a.instance);
            if let Some(answer) = world::admit_provision(tombstoned, existing, a.service, zone, Ground::default()) {
                return answer;
            }
            self.insts.insert(a.instance, W { service: a.service, machine: Machine::new(*role), wal: 0, seq: 0 });
            return ActionOutcome::Succeeded { detail: None };
        }
        let Some(w) = self.insts.get_mut(&a.instance) else {
            return world::act_on_missing(&a.kind).0;
        };
        let answer = world::act(&mut w.machine, &a.kind, Ground::default());
        if answer.effect == Effect::Terminated {
            self.insts.remove(&a.instance);
            self.tombstones.insert(a.instance);
        }
        answer.outcome
    }

    pub fn beats(&mut self) -> Vec<Beat> {
        let primaries: HashMap<ServiceId, (bool, u64)> = self
            .insts
            .values()
            .filter(|w| w.role == Role::Primary && !w.fenced && w.running)
            .map(|w| (w.service, (w.is_alive(), w.wal)))
            .collect();
        let mut beats = Vec::new();
        for (id, w) in self.insts.iter_mut() {
            if !w.is_audible() {
                if w.is_writing() {
                    w.wal += 100;
                }
                continue;
            }
            w.seq += 1;
            let mut facts = Facts { role: Some(w.role), ..Default::default() };
            if w.role == Role::Primary {
                if !w.fenced {
                    w.wal += 100;
                }
                facts.writable = Some(!w.fenced);
            } else {
                let up = primaries.get(&w.service).copied();
                let streaming = up.is_some_and(|(alive, _)| alive);
                if let Some((true, pwal)) = up {
                    w.wal = pwal;
                }
                facts.upstream_streaming = Some(streaming);
                facts.replication_lag_bytes = Some(up.map(|(_, p)| p.saturating_sub(w.wal)).unwrap_or(0));
                facts.writable = Some(false);
            }
            facts.wal_position = Some(w.wal);
            beats.push(Beat { instance: *id, seq: w.seq, facts });
        }
        beats
    }

    /// Writable for real: a primary that runs, is not fenced and not crashed.
    pub fn writable_count(&self, service: ServiceId) -> usize {
        self.insts
            .values()
            .filter(|w| w.service == service && w.role == Role::Primary && !w.fenced && w.running && !w.crashed)
            .count()
    }
}

/// Upserts by id, like the SQLite store.
#[derive(Default, Clone)]
pub struct MemStore {
    pub services: BTreeMap<ServiceId, ServiceRecord>,
    pub instances: BTreeMap<InstanceId, InstanceRecord>,
    pub actions: BTreeMap<ActionId, ActionRecord>,
    pub images: BTreeMap<ImageId, Image>,
    pub events: Vec<Event>,
    pub audit: Vec<AuditEntry>,
    pub rollouts: BTreeMap<drover_model::RolloutId, drover_model::RolloutRecord>,
    pub rollout_members: BTreeMap<(drover_model::RolloutId, ServiceId), drover_model::RolloutMember>,
    pub hosts: BTreeMap<String, HostRecord>,
    pub archives: BTreeMap<drover_model::ArchiveId, drover_model::ArchiveRecord>,
}

impl MemStore {
    pub fn apply(&mut self, c: &Changes) {
        for s in &c.services {
            self.services.insert(s.id, s.clone());
        }
        for i in &c.instances {
            self.instances.insert(i.id, i.clone());
        }
        for a in &c.actions {
            self.actions.insert(a.id, a.clone());
        }
        for i in &c.images {
            self.images.insert(i.id.clone(), i.clone());
        }
        self.events.extend(c.events.iter().cloned());
        self.audit.extend(c.audit.iter().cloned());
        for r in &c.rollouts {
            self.rollouts.insert(r.id, r.clone());
        }
        for m in &c.rollout_members {
            self.rollout_members.insert((m.rollout, m.service), m.clone());
        }
        for h in &c.hosts {
            self.hosts.insert(h.name.clone(), h.clone());
        }
        for a in &c.archives {
            self.archives.insert(a.id, a.clone());
        }
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.values().filter(|s| s.state != ServiceState::Deleted).cloned().collect(),
            instances: self.instances.values().filter(|i| i.state != InstanceState::Terminated).cloned().collect(),
            actions: self.actions.values().filter(|a| a.state.is_open()).cloned().collect(),
            images: self.images.values().cloned().collect(),
            rollouts: self.rollouts.values().cloned().collect(),
            rollout_members: self
                .rollout_members
                .values()
                .filter(|m| self.rollouts.get(&m.rollout).is_some_and(|r| !r.state.is_finished()))
                .cloned()
                .collect(),
            hosts: self.hosts.values().cloned().collect(),
            archives: self.archives.values().cloned().collect(),
        }
    }
}

pub fn fast_config() -> Config {
    Config {
        uncertain_after: Duration::from_secs(3),
        presumed_dead_after: Duration::from_secs(60),
        restart_grace: Duration::from_secs(10),
        probe_interval: Duration::from_secs(5),
        action_timeout: Duration::from_secs(20),
        install_timeout: Duration::from_secs(30),
        ..Config::default()
    }
}

pub fn image(engine: EngineKind) -> Image {
    Image::new(
        engine,
        "15-test",
        BTreeMap::new(),
        BTreeMap::from([("postgresql-15".into(), "15.18".into())]),
        Timestamp(T0),
    )
}

/// A newer PostgreSQL image than every service's (15.19 against 15.18,
/// with a setting of its own), registered: what a rollout moves onto.
pub fn register_newer_image(h: &mut H) -> ImageId {
    let image = Image::new(
        EngineKind::Postgres,
        "15-test",
        BTreeMap::new(),
        BTreeMap::from([("postgresql-15".into(), "15.19".into())]),
        Timestamp(T0),
    )
    .with_settings_and_manifest(BTreeMap::from([("work_mem".into(), "8MB".into())]), Vec::new());
    let id = image.id.clone();
    h.command(Command::RegisterImage(image)).expect("image registers");
    id
}

/// A service of `engine` on the sim provider, every option at its default.
pub fn request(name: &str, engine: EngineKind, followers: u8) -> CreateService {
    CreateService {
        name: name.into(),
        engine,
        followers,
        provider: Some("sim".into()),
        sync: None,
        team: None,
        zones: None,
        max_failover_lag_bytes: None,
        credential_rotation_days: None,
        labels: None,
        brokers: None,
    }
}

pub struct H {
    pub e: Engine,
    pub config: Config,
    pub now: i64,
    pub world: World,
    pub store: MemStore,
    pub inflight: VecDeque<ActionRecord>,
    /// Execute dispatched actions automatically while time advances.
    pub auto_execute: bool,
    pub heartbeat_every: i64,
    last_beat: i64,
    pub dispatched: Vec<ActionRecord>,
    pub restarts: u64,
}

impl H {
    pub fn new(config: Config) -> H {
        let e = Engine::new(config.clone(), 7);
        let mut h = H {
            e,
            config,
            now: T0,
            world: World::default(),
            store: MemStore::default(),
            inflight: VecDeque::new(),
            auto_execute: true,
            heartbeat_every: 1_000_000,
            last_beat: 0,
            dispatched: Vec::new(),
            restarts: 0,
        };
        for engine in [EngineKind::Postgres, EngineKind::Redis] {
            h.command(Command::RegisterImage(image(engine))).expect("image registers");
        }
        h
    }

    pub fn step(&mut self, input: Input) -> Option<Result<Reply, drover_engine::CommandError>> {
        let out = self.e.step(input, Timestamp(self.now));
        self.absorb(out)
    }

    pub fn absorb(&mut self, out: Outputs) -> Option<Result<Reply, drover_engine::CommandError>> {
        self.store.apply(&out.changes);
        for a in &out.dispatch {
            if a.kind == ActionKind::Promote {
                let v = self.e.instance_view(a.instance).expect("promote target exists");
                let svc = self.e.service_view(&v.service).expect("service");
                assert!(
                    svc.instances.iter().all(|i| !(i.role == Role::Primary && !i.fenced && i.state.is_member())),
                    "promotion dispatched while an unfenced primary remains: {svc:#?}"
                );
            }
        }
        self.dispatched.extend(out.dispatch.iter().map(|d| d.action.clone()));
        self.inflight.extend(out.dispatch.into_iter().map(|d| d.action));
        self.check_invariants();
        out.reply
    }

    pub fn check_invariants(&self) {
        for s in self.e.service_views() {
            // Primaries of this service (brokers are peers that all take
            // writes; a Kafka service lists its storage's members too).
            let writable =
                s.instances.iter().filter(|i| i.writable && i.role != Role::Broker && i.service == s.name).count();
            assert!(writable <= 1, "two writable primaries in the engine: {s:#?}");
            assert!(self.world.writable_count(s.id) <= 1, "two writable primaries in the world for {}", s.name);
            // Placement: never two members of one service on one host (the
            // built-in host, which stands for a whole machine, excepted).
            let mut on: Vec<&str> = s
                .instances
                .iter()
                .filter(|i| i.state.is_member() && !i.fenced && i.service == s.name)
                .filter_map(|i| i.host.as_deref())
                .filter(|h| !self.store.hosts.get(*h).is_some_and(|r| r.builtin))
                .collect();
            on.sort_unstable();
            assert!(on.windows(2).all(|w| w[0] != w[1]), "two members of {} on one host: {on:?}", s.name);
        }
        for ev in &self.store.events {
            if ev.subject == EventSubject::Instance {
                if let (Some(f), Some(t)) = (&ev.from, &ev.to) {
                    if let (Ok(f), Ok(t)) = (f.parse::<InstanceState>(), t.parse::<InstanceState>()) {
                        assert!(f.can_become(t), "illegal transition logged: {ev:?}");
                    }
                }
            }
            if ev.subject == EventSubject::Fleet {
                assert!(!ev.cause.contains("illegal transition"), "engine attempted an illegal transition: {ev:?}");
                assert!(!ev.cause.contains("safety invariant"), "{ev:?}");
            }
        }
    }

    pub fn command(&mut self, c: Command) -> Result<Reply, drover_engine::CommandError> {
        self.step(Input::Command { actor: "test".into(), role: None, command: c }).expect("commands reply")
    }

    pub fn create(&mut self, name: &str, followers: u8) -> ServiceView {
        let req = CreateService { sync: Some(followers > 0), ..request(name, EngineKind::Postgres, followers) };
        match self.command(Command::CreateService(req)) {
            Ok(Reply::Service(v)) => *v,
            other => panic!("create failed: {other:?}"),
        }
    }

    /// Executes every dispatched action now (and what they lead to).
    pub fn run_actions(&mut self) {
        let mut guard = 0;
        while let Some(a) = self.inflight.pop_front() {
            guard += 1;
            assert!(guard < 10_000, "runaway actions");
            let outcome = self.world.execute(&a);
            self.step(Input::ActionResult { action: a.id, attempt: a.attempts, outcome });
        }
    }

    /// Advances time in 100 ms steps: beats every `heartbeat_every`, a tick
    /// every step, actions executed as they come.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d.as_micros() as i64;
        while self.now < end {
            self.now += 100_000;
            if self.now - self.last_beat >= self.heartbeat_every {
                self.last_beat = self.now;
                let beats = self.world.beats();
                if !beats.is_empty() {
                    self.step(Input::Heartbeats(beats));
                }
            }
            self.step(Input::Tick);
            if self.auto_execute {
                self.run_actions();
            }
        }
    }

    pub fn service(&self, name: &str) -> ServiceView {
        self.e.service_view(name).unwrap_or_else(|| panic!("no service {name}"))
    }

    pub fn primary(&self, name: &str) -> InstanceView {
        self.service(name).instances.into_iter().find(|i| i.writable).expect("a writable primary")
    }

    pub fn followers(&self, name: &str) -> Vec<InstanceView> {
        self.service(name).instances.into_iter().filter(|i| i.role == Role::Follower).collect()
    }

    pub fn chaos(&mut self, instance: InstanceId, fault: Fault) {
        self.command(Command::Chaos { instance, fault }).expect("chaos accepted");
        self.run_actions();
    }

    pub fn events_for(&self, instance: InstanceId) -> Vec<&Event> {
        self.store.events.iter().filter(|e| e.instance == Some(instance)).collect()
    }

    /// Transitions of an instance, as "from->to".
    pub fn transitions(&self, instance: InstanceId) -> Vec<String> {
        self.events_for(instance)
            .into_iter()
            .filter(|e| e.subject == EventSubject::Instance)
            .map(|e| format!("{}->{}", e.from.as_deref().unwrap_or("-"), e.to.as_deref().unwrap_or("-")))
            .collect()
    }

    pub fn succeeded(&self, kind: &str) -> Vec<&ActionRecord> {
        self.store.actions.values().filter(|a| a.kind.name() == kind && a.state == ActionState::Succeeded).collect()
    }

    /// Simulates kill -9 and restart: a new engine from what was committed.
    pub fn crash_and_restore(&mut self) {
        self.inflight.clear();
        // A new process draws a new seed (ids are time + seeded randomness;
        // the same seed in the same millisecond would mint the same ids).
        self.restarts += 1;
        let seed = 1000 + self.restarts;
        let (e, out) = Engine::restore(self.config.clone(), seed, self.store.snapshot(), Timestamp(self.now));
        self.e = e;
        self.absorb(out);
    }
}
