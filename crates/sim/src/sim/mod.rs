//! The simulated world and its event loop.
//!
//! Scale: a healthy instance costs nothing per simulated second. Agents beat
//! to a collector in their zone, which forwards to the engine only beats
//! whose facts changed and renews one lease per zone per second
//! (`Input::ZoneLease`); the engine keeps one deadline per zone instead of
//! one per instance. Work is therefore proportional to what happens (faults,
//! remedies, transitions), not to fleet size × time.

use crate::digest::EventLog;
use crate::oncall::{manual_minutes, MINUTES_PER_PERSON_YEAR};
use crate::report::Report;
use crate::scenario::{FaultSpec, Scenario};
use drover_engine::{Command, Config, Engine, Input, Outputs, Reply};
use drover_model::{
    ActionKind, ActionOutcome, ActionRecord, Beat, CreateService, EngineKind, Event, EventKind, EventSubject, Facts,
    Image, InstanceId, InstanceState, MaintenanceWindow, Role, RolloutSpec, Selector, ServiceId, ServiceState,
    Timestamp,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The simulator's maps: a fixed-seed hasher (fast, and the same in every run).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod checker;
mod cluster;
mod faults;
mod finish;
mod queue;

/// Hour 0 of every scenario: 2027-01-01T00:00:00Z, in microseconds.
const T0: i64 = 1_798_761_600_000_000;
/// The fleet is built in the hour before hour 0.
const BUILD: i64 = 3_600_000_000;
/// Boots during the build spread over this long.
const BUILD_SPREAD_SECS: f64 = 300.0;
/// WAL is archived to the backup store every minute: a rebuild from backup
/// loses up to this much of the primary's writes.
const ARCHIVE_EVERY_SECS: u64 = 60;
const STREAMING: u64 = u64::MAX;
const SEC: f64 = 1_000_000.0;

/// The engines a simulated fleet runs, with the version of their images;
/// a service's engine is its slot here. PostgreSQL always; Redis when the
/// scenario gives it a share (`fleet.redis_share`); Kafka (its `tansu`
/// brokers, pinned to 0.6.0 as the local provider's) when it gives Kafka one
/// (`fleet.kafka_share`).
const ENGINES: [(EngineKind, &str); 3] =
    [(EngineKind::Postgres, "16.4-sim"), (EngineKind::Redis, "7.0-sim"), (EngineKind::Kafka, "0.6.0-sim")];
/// Slots in `ENGINES`.
const REDIS: usize = 1;
const KAFKA: usize = 2;

pub struct Options {
    pub scenario: Scenario,
    pub services: u64,
    pub seed: u64,
    /// Write every engine event as a JSON line here (small runs).
    pub event_log: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot build the fleet: {0}")]
    Build(String),
    #[error("cannot write the event log {path}: {message}")]
    EventLog { path: String, message: String },
}

enum Ev {
    Lease,
    Done(Box<ActionRecord>),
    Boot(u32),
    FaultStart(u16),
    FaultEnd(u16),
    Flap(u16),
    Background,
}

/// One simulated instance (one server of a service).
struct Inst {
    id: InstanceId,
    svc: u32,
    zone: u8,
    host: u32,
    role: Role,
    /// Provisioned and not retired.
    exists: bool,
    /// Its process runs (false after a crash until restarted).
    up: bool,
    booting: bool,
    fenced: bool,
    terminated: bool,
    /// Its host was drained for an advisory: it will not start there again.
    drained: bool,
    /// Carries the advisory's vulnerable kernel.
    affected: bool,
    slow: bool,
    /// The zone's collector vouches for it (as last told to the engine).
    reported: bool,
    pending: bool,
    beat_pending: bool,
    lag: u64,
    /// WAL position where it stopped applying, or STREAMING.
    frozen: u64,
    seq: u64,
}

struct Svc {
    id: ServiceId,
    /// Its engine's slot in `ENGINES`.
    engine: u8,
    sync: bool,
    rate: u64,
    /// Inline up to four (a plan's members and a replacement): no heap
    /// allocation per service.
    members: smallvec::SmallVec<[u32; 4]>,
    writer: Option<u32>,
    anchor: u64,
    anchor_at: i64,
    /// Acknowledged WAL position when writes last stopped.
    acked: u64,
    state: ServiceState,
    needs_human: bool,
    down: bool,
    /// An alert about it went to the pager: its all-clear must follow.
    alerted: bool,
    /// The advisory's patched image does not boot on it (a bad image).
    bad_image: bool,
    /// A graceful fence of its primary was dispatched: the promotion that
    /// follows is a planned switchover, not a failover.
    switching: bool,
}

struct Zone {
    name: String,
    lost: bool,
    cut: bool,
    hosts: Vec<u32>,
    pending: Vec<u32>,
    beats: Vec<u32>,
}

struct Host {
    up: bool,
    members: Vec<u32>,
}

/// One engine's share of the figures (reported for mixed fleets).
#[derive(Clone, Copy, Default)]
struct PerEngine {
    services: u64,
    failovers: u64,
    switchovers: u64,
    replacements: u64,
    restarts: u64,
    writes_lost: u64,
    not_available: u64,
    down: u64,
    max_down: u64,
    max_not_available: u64,
}

#[derive(Default)]
struct Counters {
    /// Per engine slot (`ENGINES`).
    engines: [PerEngine; ENGINES.len()],
    failovers: u64,
    switchovers: u64,
    rollout_pauses: u64,
    replacements: u64,
    restarts: u64,
    probes: u64,
    minutes_avoided: f64,
    writes_lost_sync: u64,
    writes_lost_async: u64,
    writes_lost_rebuild: u64,
    services_needing_human: u64,
    brake_engaged: u64,
    violations: u64,
    first_violation: Option<String>,
    not_available: u64,
    not_available_nh: u64,
    down: u64,
    down_nh: u64,
    max_down: u64,
    max_not_available: u64,
}

struct Sim {
    sc: Scenario,
    rng: ChaCha8Rng,
    engine: Engine,
    now: i64,
    seq: u64,
    queue: queue::Queue<Ev>,
    insts: Vec<Inst>,
    /// Instances not terminated, by id (a terminated one leaves it for
    /// `tombstones`, so the map stays the size of the live fleet).
    by_id: HashMap<InstanceId, u32>,
    /// Ids of terminated instances: the world remembers them, a Provision
    /// of one is refused.
    tombstones: std::collections::HashSet<InstanceId, foldhash::fast::FixedState>,
    svcs: Vec<Svc>,
    svc_by_id: HashMap<ServiceId, u32>,
    zones: Vec<Zone>,
    hosts: Vec<Host>,
    backup_down: bool,
    /// The images the advisory's rollouts move services onto (one per engine).
    patched_images: Vec<drover_model::ImageId>,
    /// How many of `ENGINES` the fleet runs (1: PostgreSQL only).
    engines: usize,
    building: bool,
    background_until: i64,
    fault_start: i64,
    #[allow(dead_code)]
    fault_end: i64,
    recovered_at: Option<i64>,
    /// Engine events the pager acts on, in order (see crate::oncall).
    alerts: Vec<(i64, Event)>,
    log: EventLog,
    /// The engine's outputs, reused from step to step.
    out: Outputs,
    /// The same for the build's steps (whose results step again into `out`).
    build_out: Outputs,
    c: Counters,
    shard: u32,
    shards: u32,
}

fn micros(secs: f64) -> i64 {
    (secs * SEC) as i64
}

/// Fleets at least this large are split over two control-plane shards, each
/// its own engine on its own thread (services by index parity), as several
/// control-plane nodes would split a real fleet. Smaller fleets run in one.
pub const SHARD_FROM_SERVICES: u64 = 100_000;

/// One shard's report and the engine events its pager must see.
type ShardRun = (Report, Vec<(i64, Event)>);

pub fn run(mut opts: Options) -> Result<Report, SimError> {
    let wall = Instant::now();
    // Fault times, zones and background rates of this run, from the seed.
    opts.scenario = opts.scenario.drawn(opts.seed);
    let shards: u64 = if opts.services >= SHARD_FROM_SERVICES { 2 } else { 1 };
    let end = T0 + micros(opts.scenario.hours * 3600.0);
    if shards == 1 {
        let (mut r, alerts) = run_shard(&opts, 0, 1)?;
        crate::oncall::page(&opts.scenario, opts.seed, vec![alerts], end).fill(&mut r);
        control_plane(&opts, &mut r);
        r.wall_seconds = (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        return Ok(r);
    }
    let results: Vec<Result<ShardRun, SimError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|k| {
                let opts = &opts;
                scope.spawn(move || run_shard(opts, k, shards))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(SimError::Build("a shard panicked".into()))))
            .collect()
    });
    let (mut reports, mut alerts) = (Vec::new(), Vec::new());
    for r in results {
        let (report, a) = r?;
        reports.push(report);
        alerts.push(a);
    }
    let mut m = crate::report::merge(&reports);
    // One pager for the whole fleet: the shards' alerts in time order.
    crate::oncall::page(&opts.scenario, opts.seed, alerts, end).fill(&mut m);
    m.services = opts.services;
    control_plane(&opts, &mut m);
    m.wall_seconds = (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    Ok(m)
}

/// The scenario's control-plane nodes, if it has any: their run from the
/// same seed, its violations counted as the fleet's.
fn control_plane(opts: &Options, r: &mut Report) {
    let Some(spec) = &opts.scenario.control_plane else { return };
    let cp = crate::control_plane::run(spec, opts.seed, crate::control_plane::Mutation::None);
    r.safety_violations += cp.violations;
    if r.first_violation.is_none() {
        r.first_violation = cp.first_violation.as_ref().map(|v| format!("control plane: {v}"));
    }
    r.converged &= cp.converged;
    r.control_plane = Some(cp);
}

fn run_shard(opts: &Options, shard: u64, shards: u64) -> Result<ShardRun, SimError> {
    let wall = Instant::now();
    let sc = opts.scenario.clone();
    let services = (opts.services + shards - 1 - shard) / shards;
    let t = &sc.timing;
    let budget = ((services as f64) * t.zone_budget_per_1000_services / 1000.0).ceil().max(16.0) as u32;
    let config = Config {
        uncertain_after: Duration::from_secs_f64(t.uncertain_after_secs),
        presumed_dead_after: Duration::from_secs_f64(t.presumed_dead_after_secs),
        probe_interval: Duration::from_secs_f64(t.probe_interval_secs),
        action_timeout: Duration::from_secs_f64(t.action_timeout_secs),
        install_timeout: Duration::from_secs_f64(t.install_timeout_secs),
        zone_budget: budget,
        backup_interval: (t.backup_interval_hours > 0.0)
            .then(|| Duration::from_secs_f64(t.backup_interval_hours * 3600.0)),
        verify_interval: (t.verify_interval_hours > 0.0)
            .then(|| Duration::from_secs_f64(t.verify_interval_hours * 3600.0)),
        providers: vec!["sim".into()],
        default_provider: "sim".into(),
        default_zones: sc.fleet.zones.clone(),
        // No store here: the engine builds no records for one.
        records: false,
        // A fleet-wide roll moves thousands of services an hour: the
        // windows of a day's services spread over 24 hours.
        rollout_zone_concurrency: ((services / 200) as u32).max(16),
        rollout_interval: Duration::from_secs(10),
        ..Config::default()
    };
    let dump: Option<Box<dyn std::io::Write + Send>> = match &opts.event_log {
        Some(p) if shards == 1 => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| SimError::EventLog { path: p.display().to_string(), message: e.to_string() })?,
        ))),
        _ => None, // the event log is written by single-shard runs only
    };
    // Shard 0 of a single-shard run draws exactly what the seed says.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(shard.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let engine_seed = rng.random::<u64>();
    let mut engine = Engine::new(config, engine_seed);
    engine.reserve((services as usize) * 5 / 2);
    let zones = sc
        .fleet
        .zones
        .iter()
        .map(|n| Zone {
            name: n.clone(),
            lost: false,
            cut: false,
            hosts: Vec::new(),
            pending: Vec::new(),
            beats: Vec::new(),
        })
        .collect();
    let (mut fault_start, mut fault_end) = (i64::MAX, T0);
    for f in &sc.faults {
        let (a, b) = f.window();
        fault_start = fault_start.min(T0 + micros(a * 3600.0));
        fault_end = fault_end.max(T0 + micros(b * 3600.0));
    }
    if fault_start == i64::MAX {
        fault_start = T0;
    }
    let background_until = match sc.background.until_hours {
        Some(h) => T0 + micros(h * 3600.0),
        None => fault_end,
    };
    let mut sim = Sim {
        sc,
        rng,
        engine,
        now: T0 - BUILD,
        seq: 0,
        queue: queue::Queue::new(),
        // Instances are never removed here: a fleet of three-member plans
        // starts at ~3 per service and a day with a lost zone adds ~0.8
        // replacements. Room for 4 up front: a vector that outgrows its
        // room doubles, and holds both copies while it moves.
        insts: Vec::with_capacity((services as usize) * 4),
        // The live fleet: ~3 per service (a table sized for more would
        // double its buckets, ~44 MB per 500,000 services).
        by_id: HashMap::with_capacity_and_hasher((services as usize) * 3, Default::default()),
        tombstones: Default::default(),
        svcs: Vec::with_capacity(services as usize),
        svc_by_id: HashMap::with_capacity_and_hasher(services as usize, Default::default()),
        zones,
        hosts: Vec::new(),
        backup_down: false,
        patched_images: Vec::new(),
        engines: if sc_share(opts.scenario.fleet.kafka_share) > 0.0 {
            3
        } else if sc_share(opts.scenario.fleet.redis_share) > 0.0 {
            2
        } else {
            1
        },
        building: true,
        background_until,
        fault_start,
        fault_end,
        recovered_at: None,
        alerts: Vec::new(),
        log: EventLog::start(dump),
        out: Outputs::default(),
        build_out: Outputs::default(),
        c: Counters::default(),
        shard: shard as u32,
        shards: shards as u32,
    };
    sim.build(services)?;
    let end = T0 + micros(sim.sc.hours * 3600.0);
    sim.main_loop(end);
    let instances = sim.insts.len() as u64;
    let alerts = std::mem::take(&mut sim.alerts);
    Ok((sim.finish(services, opts.seed, instances, wall), alerts))
}

impl Sim {
    fn at(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.queue.push(at, self.seq, ev);
    }

    fn draw(&mut self, range: [f64; 2]) -> i64 {
        let (a, b) = (range[0].min(range[1]), range[0].max(range[1]));
        micros(if b > a { self.rng.random_range(a..=b) } else { a })
    }

    fn violation(&mut self, what: String) {
        self.c.violations += 1;
        if self.c.first_violation.is_none() {
            self.c.first_violation = Some(what);
        }
    }

    // ------------------------------------------------------------------
    // Building the fleet
    // ------------------------------------------------------------------

    fn build(&mut self, services: u64) -> Result<(), SimError> {
        for &(engine, version) in &ENGINES[..self.engines] {
            let image = Image::new(engine, version, Default::default(), Default::default(), Timestamp(self.now));
            self.step(Input::Command { actor: "sim".into(), role: None, command: Command::RegisterImage(image) });
        }
        let redis_share = sc_share(self.sc.fleet.redis_share);
        // Kafka's share of what is not Redis: the fleet's share overall.
        let kafka_share = sc_share(self.sc.fleet.kafka_share);
        let kafka_of_rest = if redis_share < 1.0 { (kafka_share / (1.0 - redis_share)).min(1.0) } else { 0.0 };
        // Hosts: enough for the fleet with head room for replacements.
        let nz = self.zones.len();
        let per_zone = ((services as f64 * 2.3 / nz as f64) / f64::from(self.sc.fleet.instances_per_host.max(1))).ceil()
            as usize
            + 1;
        for z in 0..nz {
            for _ in 0..per_zone {
                self.zones[z].hosts.push(self.hosts.len() as u32);
                self.hosts.push(Host { up: true, members: Vec::new() });
            }
        }
        let names = self.sc.fleet.zones.clone();
        for i in 0..services {
            let rot = (i as usize) % nz;
            let zones: Vec<String> = (0..nz).map(|k| names[(rot + k) % nz].clone()).collect();
            let followers = if self.rng.random_bool(self.sc.fleet.two_follower_share.clamp(0.0, 1.0)) { 2 } else { 1 };
            let sync = self.rng.random_bool(self.sc.fleet.sync_share.clamp(0.0, 1.0));
            let [lo, hi] = self.sc.fleet.write_bytes_per_sec;
            let rate = u64::from(self.rng.random_range(lo.min(hi)..=hi.max(lo)));
            // Drawn only in a mixed fleet: a PostgreSQL-only one draws as
            // before, and one without Kafka as before Kafka existed.
            let slot = if redis_share > 0.0 && self.rng.random_bool(redis_share) {
                REDIS
            } else if kafka_of_rest > 0.0 && self.rng.random_bool(kafka_of_rest) {
                KAFKA
            } else {
                0
            };
            let engine = ENGINES[slot].0;
            // A server that cannot hold a commit until a follower has it
            // (Redis: replication is asynchronous) runs every plan async.
            let sync = sync && drover_world::server(engine).synchronous_replication;
            let req = CreateService {
                name: service_name(i as u32 * self.shards + self.shard),
                engine,
                followers,
                provider: None,
                sync: Some(sync),
                team: Some(crate::oncall::team_name(i as u32 * self.shards + self.shard, self.sc.people.teams)),
                zones: Some(zones),
                max_failover_lag_bytes: None,
                credential_rotation_days: None,
                labels: None,
                // Kafka: the engine's default, three peer brokers.
                brokers: None,
            };
            let idx = self.svcs.len() as u32;
            self.svcs.push(Svc {
                id: ServiceId::new_at(0, 0),
                engine: slot as u8,
                sync,
                rate,
                members: Default::default(),
                writer: None,
                anchor: 0,
                anchor_at: self.now,
                acked: 0,
                state: ServiceState::Provisioning,
                needs_human: false,
                down: true,
                alerted: false,
                switching: false,
                bad_image: false,
            });
            self.c.not_available += 1;
            self.c.not_available_nh += 1;
            self.c.down += 1;
            self.c.down_nh += 1;
            let e = &mut self.c.engines[slot];
            e.services += 1;
            e.not_available += 1;
            e.down += 1;
            let mut out = std::mem::take(&mut self.build_out);
            self.engine.step_into(
                Input::Command { actor: "sim".into(), role: None, command: Command::CreateService(req) },
                Timestamp(self.now),
                &mut out,
            );
            match &out.reply {
                Some(Ok(Reply::Service(v))) => {
                    self.svcs[idx as usize].id = v.id;
                    self.svc_by_id.insert(v.id, idx);
                }
                other => return Err(SimError::Build(format!("creating service {i} failed: {other:?}"))),
            }
            self.absorb(&mut out);
            self.build_out = out;
        }
        self.building = false;
        self.at(self.now, Ev::Lease);
        for (k, f) in self.sc.faults.clone().iter().enumerate() {
            let (a, _) = f.window();
            self.at(T0 + micros(a * 3600.0), Ev::FaultStart(k as u16));
        }
        self.schedule_background();
        Ok(())
    }

    // ------------------------------------------------------------------
    // The loop
    // ------------------------------------------------------------------

    fn main_loop(&mut self, end: i64) {
        let progress = std::env::var_os("DROVER_SIM_PROGRESS").is_some();
        let mut next_report = self.now;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if progress && self.now >= next_report {
                next_report += 3_600_000_000;
                eprintln!(
                    "sim hour {:.1}: steps {steps} queue {} insts {} down {} not_available {}",
                    (self.now - T0) as f64 / 3.6e9,
                    self.queue.len(),
                    self.insts.len(),
                    self.c.down,
                    self.c.not_available
                );
            }
            let next_event = self.queue.peek_at().unwrap_or(i64::MAX);
            let next_tick = self.engine.next_deadline().map(|t| t.0).unwrap_or(i64::MAX);
            let at = next_event.min(next_tick);
            if at > end {
                self.now = end;
                break;
            }
            self.now = self.now.max(at);
            if next_tick <= next_event {
                self.step(Input::Tick);
            } else if let Some((_, ev)) = self.queue.pop() {
                self.handle(ev);
            }
            self.track_recovery();
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Lease => {
                self.renew_leases();
                let every = micros(self.sc.timing.lease_every_secs);
                self.at(self.now + every, Ev::Lease);
            }
            Ev::Done(rec) => {
                let outcome = self.execute(&rec);
                self.step(Input::ActionResult { action: rec.id, attempt: rec.attempts, outcome });
            }
            Ev::Boot(i) => self.boot(i),
            Ev::FaultStart(k) => self.fault(k, true),
            Ev::FaultEnd(k) => self.fault(k, false),
            Ev::Flap(k) => self.flap(k),
            Ev::Background => self.background(),
        }
    }

    /// One engine step, into the reused output buffer (a step nested in
    /// `absorb`, as during the build, gets a fresh one).
    fn step(&mut self, input: Input) {
        let mut out = std::mem::take(&mut self.out);
        self.engine.step_into(input, Timestamp(self.now), &mut out);
        self.absorb(&mut out);
        self.out = out;
    }

    fn absorb(&mut self, out: &mut Outputs) {
        for a in out.dispatch.drain(..) {
            self.dispatch(a.action);
        }
        for e in &out.changes.events {
            self.observe(e);
            self.keep_for_pager(e);
        }
        self.log.push(&out.changes.events);
    }

    fn dispatch(&mut self, a: ActionRecord) {
        if a.kind == (ActionKind::Fence { immediate: false }) {
            if let Some(&s) = self.svc_by_id.get(&a.service) {
                self.svcs[s as usize].switching = true;
            }
        }
        let p = &self.sc.provider;
        let range = match &a.kind {
            ActionKind::Provision(_) => p.provision_secs,
            ActionKind::Probe => {
                self.c.probes += 1;
                p.probe_secs
            }
            ActionKind::Fence { .. } => p.fence_secs,
            ActionKind::Promote => p.promote_secs,
            ActionKind::Restart => p.restart_secs,
            ActionKind::Retire => p.retire_secs,
            ActionKind::Archive => p.archive_secs,
            ActionKind::Terminate => p.terminate_secs,
            ActionKind::InjectFault { .. }
            | ActionKind::RotateCredentials
            | ActionKind::RevokePreviousCredentials
            | ActionKind::PurgeArchive { .. } => [0.0, 0.0],
            // A base backup or a restore test of a small database: minutes,
            // drawn like a provisioning.
            ActionKind::Backup | ActionKind::VerifyRestore => p.provision_secs,
        };
        if self.building {
            // The fleet exists before hour 0: its provider answers at once.
            let outcome = self.execute(&a);
            self.step(Input::ActionResult { action: a.id, attempt: a.attempts, outcome });
            return;
        }
        let d = self.draw(range);
        self.at(self.now + d, Ev::Done(Box::new(a)));
    }
}

/// A share of the fleet as drawn: within [0, 1], 0 if not a number.
fn sc_share(share: f64) -> f64 {
    if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn service_name(i: u32) -> String {
    format!("s{i:07}")
}

fn service_index(name: &str) -> Option<u32> {
    name.strip_prefix('s')?.parse().ok()
}
