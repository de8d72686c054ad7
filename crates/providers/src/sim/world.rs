//! The simulated world as plain data: what each simulated machine is doing,
//! how an action changes it, and what its agent would report on a heartbeat.
//! No clock, no I/O: callers pass `now` (Unix microseconds), which keeps the
//! rules testable without timing.

use drover_model::{ActionOutcome, ActionRecord, Beat, Facts, Fault, InstanceId, Role, ServiceId};
use drover_world::{succeeded, Effect, Ground, Machine};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// How fast a writable simulated primary's WAL grows. Driven by wall-clock
/// time rather than by beats, so a primary keeps "writing" while the control
/// plane is down and its WAL never steps back across a restart. 64 KiB/s is
/// a quiet database; the value only has to make growth visible every beat.
pub const WAL_BYTES_PER_SECOND: u64 = 64 * 1024;

/// Version of the state file layout; bump it on any incompatible change.
pub const STATE_FORMAT: u64 = 1;

/// One simulated instance: a machine running one server of a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimInstance {
    pub id: InstanceId,
    pub service: ServiceId,
    pub role: Role,
    /// The server it runs (answers in that engine's words). State files
    /// written before engines existed hold PostgreSQL members.
    #[serde(default)]
    pub engine: drover_model::EngineKind,
    pub zone: String,
    /// Crash, Hang or Partition; never Heal. One fault at a time: a later
    /// Hang or Partition replaces an earlier one, a Crash sticks until Restart.
    pub fault: Option<Fault>,
    /// The provider made sure it cannot accept writes. Permanent: a fenced
    /// instance is replaced, never un-fenced (a restart keeps the fence).
    pub fenced: bool,
    /// False once retired: no process, no beats.
    pub running: bool,
    pub archived: bool,
    pub wal_position: u64,
    /// Sequence number of the last beat sent for it.
    pub seq: u64,
}

impl SimInstance {
    /// The machine as the world's rules (`drover-world`) see it.
    fn machine(&self) -> Machine {
        let mut m = Machine::of(self.engine, self.role);
        m.set_fault(self.fault);
        m.fenced = self.fenced;
        m.running = self.running;
        m.archived = self.archived;
        m
    }
    fn set_machine(&mut self, m: &Machine) {
        self.role = m.role;
        self.fault = m.fault();
        self.fenced = m.fenced;
        self.running = m.running;
        self.archived = m.archived;
    }
    /// The process runs and answers (it may still be partitioned from the control plane).
    fn is_alive(&self) -> bool {
        self.machine().is_alive()
    }
    /// Accepts writes, so its WAL grows. A partitioned primary still serves its clients.
    fn is_writing(&self) -> bool {
        self.machine().is_writing()
    }
}

/// The state file as written to disk.
#[derive(Serialize, Deserialize)]
pub struct StateFile {
    pub format: u64,
    /// The moment the WAL positions below were last advanced to.
    pub wal_clock_micros: i64,
    pub instances: Vec<SimInstance>,
    /// Ids terminated for good: a late duplicate Provision must not bring
    /// one back (the engine's safety property test found that hazard).
    #[serde(default)]
    pub terminated: Vec<InstanceId>,
}

/// Just the version, read first so an old or newer layout gets its own error.
#[derive(Deserialize)]
pub struct StateFileHeader {
    pub format: u64,
}

/// What applying one action did.
pub struct Applied {
    pub outcome: ActionOutcome,
    /// The world changed and must be persisted before the outcome is reported.
    pub changed: bool,
    /// The target does not exist: report it gone (see `SimProvider` docs).
    pub gone: Option<String>,
}

#[derive(Default)]
pub struct World {
    /// Ordered by id so the state file is stable and diffs stay readable.
    instances: BTreeMap<InstanceId, SimInstance>,
    /// The moment every writing primary's WAL was last advanced to.
    wal_clock_micros: i64,
    /// A follower's last reported lag, kept when its primary is gone and the
    /// true lag is unknown. Memory only: after a restart it starts at 0.
    last_lag: HashMap<InstanceId, u64>,
    /// Tombstones of terminated ids.
    terminated: std::collections::BTreeSet<InstanceId>,
}

impl World {
    pub fn empty(now: i64) -> World {
        World { wal_clock_micros: now, ..World::default() }
    }

    /// Rebuilds the world from its file. Machines kept running while nobody
    /// watched: primaries' WAL advances to `now`, and beat sequence numbers
    /// restart from `now` in microseconds so they stay monotonic across a
    /// restart without persisting every beat.
    pub fn from_state(state: StateFile, now: i64) -> Result<World, String> {
        let count = state.instances.len();
        let mut instances = BTreeMap::new();
        for mut instance in state.instances {
            if instance.fault == Some(Fault::Heal) {
                return Err(format!("instance {} has fault \"heal\", which is not a state", instance.id));
            }
            instance.seq = instance.seq.max(now.max(0) as u64);
            instances.insert(instance.id, instance);
        }
        if instances.len() != count {
            return Err("an instance id appears more than once".into());
        }
        let mut world = World {
            instances,
            wal_clock_micros: state.wal_clock_micros,
            last_lag: HashMap::new(),
            terminated: state.terminated.into_iter().collect(),
        };
        world.advance_wal(now);
        Ok(world)
    }

    pub fn to_state(&self) -> StateFile {
        StateFile {
            format: STATE_FORMAT,
            wal_clock_micros: self.wal_clock_micros,
            instances: self.instances.values().cloned().collect(),
            terminated: self.terminated.iter().copied().collect(),
        }
    }

    pub fn get(&self, id: InstanceId) -> Option<&SimInstance> {
        self.instances.get(&id)
    }

    pub fn instances(&self) -> impl Iterator<Item = &SimInstance> {
        self.instances.values()
    }

    /// Carries out one attempt of `action` on the world. Idempotent by
    /// construction: every branch checks whether the effect already holds.
    pub fn apply(&mut self, action: &ActionRecord, now: i64) -> Applied {
        let id = action.instance;
        let before = self.instances.get(&id).cloned();
        let (outcome, gone) = self.apply_kind(action, now);
        let changed = before.as_ref() != self.instances.get(&id);
        Applied { outcome, changed, gone: gone.then(|| format!("no simulated instance {id} exists")) }
    }

    /// The outcome, and whether the target is unknown in a way that means its
    /// machine is gone. The rules are the world's (`drover-world`); this
    /// keeps the map, the tombstones and the file's layout.
    fn apply_kind(&mut self, action: &ActionRecord, now: i64) -> (ActionOutcome, bool) {
        let id = action.instance;
        if let Some(drover_model::ProvisionSpec { role, zone, engine, .. }) = action.kind.provision() {
            return (self.provision(action.service, id, *engine, *role, zone, now), false);
        }
        let Some(instance) = self.instances.get_mut(&id) else {
            let (outcome, gone) = drover_world::act_on_missing(&action.kind);
            return (named(id, outcome), gone);
        };
        let mut machine = instance.machine();
        let answer = drover_world::act(&mut machine, &action.kind, Ground::default());
        instance.set_machine(&machine);
        if answer.effect == Effect::Terminated {
            self.instances.remove(&id);
            self.last_lag.remove(&id);
            self.terminated.insert(id);
        }
        (answer.outcome, false)
    }

    fn provision(
        &mut self,
        service: ServiceId,
        id: InstanceId,
        engine: drover_model::EngineKind,
        role: Role,
        zone: &str,
        now: i64,
    ) -> ActionOutcome {
        let existing = self.instances.get(&id).map(|i| i.service);
        let tombstoned = self.terminated.contains(&id);
        if let Some(answer) =
            drover_world::admit_member(engine, role, tombstoned, existing, service, zone, Ground::default())
        {
            return named(id, answer);
        }
        let m = Machine::of(engine, role);
        self.instances.insert(
            id,
            SimInstance {
                id,
                service,
                role,
                engine,
                zone: zone.to_string(),
                fault: m.fault(),
                fenced: m.fenced,
                running: m.running,
                archived: m.archived,
                wal_position: 0,
                seq: now.max(0) as u64,
            },
        );
        succeeded(format!("provisioned as {role} in {zone}"))
    }

    /// Grows every writing primary's WAL for the time since the last advance.
    fn advance_wal(&mut self, now: i64) {
        let elapsed = now.saturating_sub(self.wal_clock_micros);
        if elapsed <= 0 {
            // The wall clock stepped back: hold positions rather than rewind.
            return;
        }
        let bytes = (elapsed as u128 * WAL_BYTES_PER_SECOND as u128 / 1_000_000) as u64;
        if bytes == 0 {
            // Keep the clock so short intervals accumulate.
            return;
        }
        for instance in self.instances.values_mut().filter(|i| i.is_writing()) {
            instance.wal_position = instance.wal_position.saturating_add(bytes);
        }
        self.wal_clock_micros = now;
    }

    /// One heartbeat round at `now`: advances WAL and replication, then
    /// returns a beat for every instance the control plane can hear (running,
    /// not crashed, not hung, not partitioned). O(instances).
    pub fn heartbeat(&mut self, now: i64) -> Vec<Beat> {
        self.advance_wal(now);

        // Each service's current primary: running, unfenced, role primary.
        // Should there be more than one (the engine erred), followers stream
        // from a live one, then from the furthest ahead.
        struct Upstream {
            wal: u64,
            alive: bool,
        }
        let mut upstreams: HashMap<ServiceId, Upstream> = HashMap::new();
        for primary in self.instances.values().filter(|i| i.running && !i.fenced && i.role == Role::Primary) {
            let candidate = Upstream { wal: primary.wal_position, alive: primary.is_alive() };
            upstreams
                .entry(primary.service)
                .and_modify(|best| {
                    if (candidate.alive, candidate.wal) > (best.alive, best.wal) {
                        *best = Upstream { ..candidate };
                    }
                })
                .or_insert(Upstream { ..candidate });
        }

        let mut beats = Vec::new();
        for instance in self.instances.values_mut().filter(|i| i.running) {
            let mut facts = Facts { role: Some(instance.role), ..Facts::default() };
            match instance.role {
                Role::Primary => facts.writable = Some(!instance.fenced),
                // A peer serves on its own and streams from nobody.
                Role::Broker => facts.writable = Some(!instance.fenced),
                Role::Follower => {
                    let upstream = upstreams.get(&instance.service);
                    // A partitioned follower still streams: the partition is
                    // between the control plane and the instance only.
                    let streaming = instance.is_alive() && upstream.is_some_and(|u| u.alive);
                    if let (true, Some(upstream)) = (streaming, upstream) {
                        instance.wal_position = upstream.wal;
                    }
                    let lag = match upstream {
                        Some(upstream) => upstream.wal.saturating_sub(instance.wal_position),
                        None => self.last_lag.get(&instance.id).copied().unwrap_or(0),
                    };
                    self.last_lag.insert(instance.id, lag);
                    facts.writable = Some(false);
                    facts.replication_lag_bytes = Some(lag);
                    facts.upstream_streaming = Some(streaming);
                }
            }
            facts.wal_position = Some(instance.wal_position);
            if instance.is_alive() && instance.fault != Some(Fault::Partition) {
                instance.seq += 1;
                beats.push(Beat { instance: instance.id, seq: instance.seq, facts });
            }
        }
        beats
    }
}

/// An answer about `id`, naming it.
fn named(id: InstanceId, outcome: ActionOutcome) -> ActionOutcome {
    match outcome {
        ActionOutcome::Succeeded { detail } => ActionOutcome::Succeeded {
            detail: Some(format!("no simulated instance {id}: {}", detail.unwrap_or_default())),
        },
        ActionOutcome::Failed { error, retryable } => {
            ActionOutcome::Failed { error: format!("simulated instance {id}: {error}"), retryable }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{ActionId, ActionKind, ActionState, ImageId, Timestamp};

    const T0: i64 = 1_800_000_000_000_000;

    fn action(service: ServiceId, instance: InstanceId, kind: ActionKind) -> ActionRecord {
        ActionRecord {
            id: ActionId::new_at(T0, instance.0.as_u128() as u64),
            service,
            instance,
            kind,
            state: ActionState::Running,
            attempts: 1,
            cause: "test".into(),
            created_at: Timestamp(T0),
            updated_at: Timestamp(T0),
            deadline: Timestamp(T0),
            error: None,
        }
    }
    fn provision(role: Role) -> ActionKind {
        provision_of(drover_model::EngineKind::Postgres, role)
    }
    fn provision_of(engine: drover_model::EngineKind, role: Role) -> ActionKind {
        ActionKind::Provision(Box::new(drover_model::ProvisionSpec {
            role,
            zone: "zone-a".into(),
            image: ImageId("img".into()),
            service_name: "db".into(),
            sync: false,
            settings: Default::default(),
            engine,
            host: None,
            restore_from: None,
            read_slot: None,
            version: String::new(),
            storage_of: None,
        }))
    }
    fn beat_of(beats: &[Beat], id: InstanceId) -> Option<&Beat> {
        beats.iter().find(|b| b.instance == id)
    }

    /// A Redis member of the sim provider answers as a Redis server: in its
    /// words, and a new replica is copied from its primary (no backup store
    /// needed); the engine survives the state file.
    #[test]
    fn a_redis_member_answers_as_redis_and_keeps_its_engine_across_a_restart() {
        use drover_model::EngineKind;
        let service = ServiceId::new_at(T0, 1);
        let (p, f) = (InstanceId::new_at(T0, 1), InstanceId::new_at(T0, 2));
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision_of(EngineKind::Redis, Role::Primary)), T0);
        world.apply(&action(service, f, provision_of(EngineKind::Redis, Role::Follower)), T0);
        let world = World::from_state(world.to_state(), T0).unwrap();
        assert_eq!(world.get(f).map(|i| i.engine), Some(EngineKind::Redis));
        let mut world = world;
        world.apply(&action(service, p, ActionKind::InjectFault { fault: Fault::Crash }), T0);
        world.apply(&action(service, p, ActionKind::Fence { immediate: true }), T0);
        let promoted = world.apply(&action(service, f, ActionKind::Promote), T0);
        match &promoted.outcome {
            ActionOutcome::Succeeded { detail } => {
                assert!(detail.as_deref().is_some_and(|d| d.contains("REPLICAOF NO ONE")), "{detail:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_late_duplicate_provision_never_resurrects_a_terminated_instance() {
        let service = ServiceId::new_at(T0, 1);
        let p = InstanceId::new_at(T0, 1);
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision(Role::Primary)), T0);
        world.apply(&action(service, p, ActionKind::Terminate), T0);
        let again = world.apply(&action(service, p, provision(Role::Primary)), T0);
        assert!(matches!(again.outcome, ActionOutcome::Failed { retryable: false, .. }), "{:?}", again.outcome);
        assert!(world.get(p).is_none());
        let reopened = World::from_state(world.to_state(), T0).unwrap();
        assert!(reopened.terminated.contains(&p), "tombstones survive a restart");
    }

    #[test]
    fn primary_wal_grows_with_time_and_streaming_follower_copies_it() {
        let service = ServiceId::new_at(T0, 1);
        let (p, f) = (InstanceId::new_at(T0, 1), InstanceId::new_at(T0, 2));
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision(Role::Primary)), T0);
        world.apply(&action(service, f, provision(Role::Follower)), T0);

        let beats = world.heartbeat(T0 + 1_000_000);
        let primary = &beat_of(&beats, p).unwrap().facts;
        assert_eq!(primary.wal_position, Some(WAL_BYTES_PER_SECOND));
        assert_eq!(primary.writable, Some(true));
        let follower = &beat_of(&beats, f).unwrap().facts;
        assert_eq!(follower.wal_position, Some(WAL_BYTES_PER_SECOND));
        assert_eq!(follower.replication_lag_bytes, Some(0));
        assert_eq!(follower.upstream_streaming, Some(true));
        assert_eq!(follower.writable, Some(false));

        // Fenced: the primary stops writing, followers lose their upstream.
        world.apply(&action(service, p, ActionKind::Fence { immediate: true }), T0);
        let beats = world.heartbeat(T0 + 2_000_000);
        let primary = &beat_of(&beats, p).unwrap().facts;
        assert_eq!(primary.wal_position, Some(WAL_BYTES_PER_SECOND));
        assert_eq!(primary.writable, Some(false));
        assert_eq!(beat_of(&beats, f).unwrap().facts.upstream_streaming, Some(false));
    }

    #[test]
    fn follower_of_crashed_primary_keeps_its_wal_and_reports_the_gap() {
        let service = ServiceId::new_at(T0, 1);
        let (p, f) = (InstanceId::new_at(T0, 1), InstanceId::new_at(T0, 2));
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision(Role::Primary)), T0);
        world.apply(&action(service, f, provision(Role::Follower)), T0);
        world.heartbeat(T0 + 1_000_000);
        // The follower crashes, the primary writes on, then the primary crashes.
        world.apply(&action(service, f, ActionKind::InjectFault { fault: Fault::Crash }), T0);
        world.heartbeat(T0 + 2_000_000);
        world.apply(&action(service, f, ActionKind::Restart), T0);
        world.apply(&action(service, p, ActionKind::InjectFault { fault: Fault::Crash }), T0);
        let beats = world.heartbeat(T0 + 3_000_000);
        assert!(beat_of(&beats, p).is_none(), "a crashed primary does not beat");
        let follower = &beat_of(&beats, f).unwrap().facts;
        assert_eq!(follower.upstream_streaming, Some(false));
        assert_eq!(follower.wal_position, Some(WAL_BYTES_PER_SECOND));
        assert_eq!(follower.replication_lag_bytes, Some(WAL_BYTES_PER_SECOND));
        // Once the primary is fenced it is no upstream at all: the last lag is kept.
        world.apply(&action(service, p, ActionKind::Fence { immediate: true }), T0);
        let beats = world.heartbeat(T0 + 4_000_000);
        assert_eq!(beat_of(&beats, f).unwrap().facts.replication_lag_bytes, Some(WAL_BYTES_PER_SECOND));
    }

    #[test]
    fn seq_restarts_from_wall_clock_and_wal_advances_while_nobody_watched() {
        let service = ServiceId::new_at(T0, 1);
        let p = InstanceId::new_at(T0, 1);
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision(Role::Primary)), T0);
        let last = world.heartbeat(T0 + 1_000_000)[0].seq;
        let saved = world.to_state();
        let mut reopened = World::from_state(saved, T0 + 3_000_000).unwrap();
        assert_eq!(reopened.get(p).unwrap().wal_position, 3 * WAL_BYTES_PER_SECOND);
        let next = reopened.heartbeat(T0 + 3_000_001)[0].seq;
        assert!(next > last, "seq {next} must exceed {last} after a reopen");
    }

    #[test]
    fn a_wall_clock_stepping_back_never_rewinds_wal() {
        let service = ServiceId::new_at(T0, 1);
        let p = InstanceId::new_at(T0, 1);
        let mut world = World::empty(T0);
        world.apply(&action(service, p, provision(Role::Primary)), T0);
        world.heartbeat(T0 + 2_000_000);
        let beats = world.heartbeat(T0 + 1_000_000);
        assert_eq!(beats[0].facts.wal_position, Some(2 * WAL_BYTES_PER_SECOND));
    }
}
