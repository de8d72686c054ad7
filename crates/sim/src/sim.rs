//! The simulated world and its event loop.
//!
//! Scale: a healthy instance costs nothing per simulated second. Agents beat
//! to a collector in their zone, which forwards to the engine only beats
//! whose facts changed and renews one lease per zone per second
//! (`Input::ZoneLease`); the engine keeps one deadline per zone instead of
//! one per instance. Work is therefore proportional to what happens (faults,
//! remedies, transitions), not to fleet size × time.

use crate::digest::EventLog;
use crate::people::{manual_minutes, People, MINUTES_PER_PERSON_YEAR};
use crate::report::Report;
use crate::scenario::{FaultSpec, Scenario};
use drover_engine::{Command, Config, Engine, Input, Outputs, Reply};
use drover_model::{
    ActionKind, ActionOutcome, ActionRecord, Beat, CreateService, EngineKind, Event, EventKind, EventSubject, Facts,
    Image, InstanceId, InstanceState, Role, ServiceId, ServiceState, Timestamp,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    Replace(u32),
}

struct Queued {
    at: i64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
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
    sync: bool,
    rate: u64,
    members: Vec<u32>,
    writer: Option<u32>,
    anchor: u64,
    anchor_at: i64,
    /// Acknowledged WAL position when writes last stopped.
    acked: u64,
    state: ServiceState,
    needs_human: bool,
    down: bool,
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

#[derive(Default)]
struct Counters {
    failovers: u64,
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
    queue: BinaryHeap<Reverse<Queued>>,
    insts: Vec<Inst>,
    by_id: HashMap<InstanceId, u32>,
    svcs: Vec<Svc>,
    svc_by_id: HashMap<ServiceId, u32>,
    zones: Vec<Zone>,
    hosts: Vec<Host>,
    backup_down: bool,
    building: bool,
    background_until: i64,
    fault_start: i64,
    #[allow(dead_code)]
    fault_end: i64,
    recovered_at: Option<i64>,
    people: People,
    log: EventLog,
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

pub fn run(opts: Options) -> Result<Report, SimError> {
    let wall = Instant::now();
    let shards: u64 = if opts.services >= SHARD_FROM_SERVICES { 2 } else { 1 };
    if shards == 1 {
        let mut r = run_shard(&opts, 0, 1)?;
        r.wall_seconds = (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        return Ok(r);
    }
    let results: Vec<Result<Report, SimError>> = std::thread::scope(|scope| {
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
    let mut reports = Vec::new();
    for r in results {
        reports.push(r?);
    }
    let mut m = crate::report::merge(&reports);
    m.services = opts.services;
    m.wall_seconds = (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    Ok(m)
}

fn run_shard(opts: &Options, shard: u64, shards: u64) -> Result<Report, SimError> {
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
    let people = People::new(sc.people.clone());
    let mut sim = Sim {
        sc,
        rng,
        engine,
        now: T0 - BUILD,
        seq: 0,
        queue: BinaryHeap::new(),
        insts: Vec::with_capacity((services as usize) * 5 / 2),
        by_id: HashMap::with_capacity((services as usize) * 5 / 2),
        svcs: Vec::with_capacity(services as usize),
        svc_by_id: HashMap::with_capacity(services as usize),
        zones,
        hosts: Vec::new(),
        backup_down: false,
        building: true,
        background_until: fault_end,
        fault_start,
        fault_end,
        recovered_at: None,
        people,
        log: EventLog::start(dump),
        c: Counters::default(),
        shard: shard as u32,
        shards: shards as u32,
    };
    sim.build(services)?;
    let end = T0 + micros(sim.sc.hours * 3600.0);
    sim.main_loop(end);
    let instances = sim.insts.len() as u64;
    Ok(sim.finish(services, opts.seed, instances, wall))
}

impl Sim {
    fn at(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { at, seq: self.seq, ev }));
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
        let image =
            Image::new(EngineKind::Postgres, "16.4-sim", Default::default(), Default::default(), Timestamp(self.now));
        self.step(Input::Command { actor: "sim".into(), command: Command::RegisterImage(image) });
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
            let req = CreateService {
                name: service_name(i as u32 * self.shards + self.shard),
                engine: EngineKind::Postgres,
                followers,
                provider: None,
                sync: Some(sync),
                team: None,
                zones: Some(zones),
                max_failover_lag_bytes: None,
            };
            let idx = self.svcs.len() as u32;
            self.svcs.push(Svc {
                id: ServiceId::new_at(0, 0),
                sync,
                rate,
                members: Vec::with_capacity(3),
                writer: None,
                anchor: 0,
                anchor_at: self.now,
                acked: 0,
                state: ServiceState::Provisioning,
                needs_human: false,
                down: true,
            });
            self.c.not_available += 1;
            self.c.not_available_nh += 1;
            self.c.down += 1;
            self.c.down_nh += 1;
            let out = self.engine.step(
                Input::Command { actor: "sim".into(), command: Command::CreateService(req) },
                Timestamp(self.now),
            );
            match &out.reply {
                Some(Ok(Reply::Service(v))) => {
                    self.svcs[idx as usize].id = v.id;
                    self.svc_by_id.insert(v.id, idx);
                }
                other => return Err(SimError::Build(format!("creating service {i} failed: {other:?}"))),
            }
            self.absorb(out);
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
            let next_event = self.queue.peek().map(|Reverse(q)| q.at).unwrap_or(i64::MAX);
            let next_tick = self.engine.next_deadline().map(|t| t.0).unwrap_or(i64::MAX);
            let at = next_event.min(next_tick);
            if at > end {
                self.now = end;
                break;
            }
            self.now = self.now.max(at);
            if next_tick <= next_event {
                self.step(Input::Tick);
            } else if let Some(Reverse(q)) = self.queue.pop() {
                self.handle(q.ev);
            }
            self.track_recovery();
        }
    }

    fn track_recovery(&mut self) {
        if self.now >= T0 {
            self.c.max_down = self.c.max_down.max(self.c.down);
            self.c.max_not_available = self.c.max_not_available.max(self.c.not_available);
        }
        // The last time the whole fleet became healthy again, from the
        // first fault on (the convergence check at the end confirms it).
        if self.now >= self.fault_start {
            let healthy = self.c.not_available_nh == 0 && self.c.down_nh == 0;
            if !healthy {
                self.recovered_at = None;
            } else if self.recovered_at.is_none() {
                self.recovered_at = Some(self.now);
            }
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
            Ev::Replace(i) => self.replace_for_advisory(i),
        }
    }

    fn step(&mut self, input: Input) {
        let out = self.engine.step(input, Timestamp(self.now));
        self.absorb(out);
    }

    fn absorb(&mut self, out: Outputs) {
        let Outputs { changes, dispatch, .. } = out;
        for d in dispatch {
            self.dispatch(d.action);
        }
        for e in &changes.events {
            self.observe(e);
        }
        self.log.push(changes.events);
    }

    fn dispatch(&mut self, a: ActionRecord) {
        let p = &self.sc.provider;
        let range = match &a.kind {
            ActionKind::Provision { .. } => p.provision_secs,
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
            ActionKind::InjectFault { .. } => [0.0, 0.0],
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

    // ------------------------------------------------------------------
    // What the engine said
    // ------------------------------------------------------------------

    fn observe(&mut self, e: &Event) {
        match e.subject {
            EventSubject::Instance => {
                if let (Some(f), Some(t)) = (e.from.as_deref(), e.to.as_deref()) {
                    if let (Ok(f), Ok(t)) = (f.parse::<InstanceState>(), t.parse::<InstanceState>()) {
                        if !f.can_become(t) {
                            self.violation(format!("illegal transition logged: {e:?}"));
                        }
                        if t == InstanceState::Uncertain {
                            // A collector that still hears it vouches again.
                            if let Some(&i) = e.instance.as_ref().and_then(|id| self.by_id.get(id)) {
                                let z = self.insts[i as usize].zone as usize;
                                if self.alive(i) && !self.zones[z].cut {
                                    self.mark_pending(i);
                                }
                            }
                        }
                    }
                }
            }
            EventSubject::Service => {
                let Some(s) = e.service.as_deref().and_then(service_index).map(|g| g / self.shards) else { return };
                let to = e.to.as_deref().and_then(|t| t.parse::<ServiceState>().ok());
                if e.kind == EventKind::NeedsHuman && to.is_none() {
                    // The engine stopped trying (remedies kept failing),
                    // whatever state the service is in.
                    self.needs_human(s);
                    return;
                }
                let Some(to) = to else { return };
                self.service_state(s, to, e.kind == EventKind::NeedsHuman);
            }
            EventSubject::Action => {
                let kind = match &e.kind {
                    EventKind::ActionStep { action } => action.as_str(),
                    _ => "",
                };
                match e.to.as_deref() {
                    Some("succeeded") if !self.building => {
                        self.c.minutes_avoided += manual_minutes(kind);
                        match kind {
                            "promote" => self.c.failovers += 1,
                            "provision" => self.c.replacements += 1,
                            "restart" => self.c.restarts += 1,
                            _ => {}
                        }
                    }
                    Some("failed") => {
                        // A remedy failed for good: a person is paged.
                        self.people.page_human(self.now, true, &mut self.rng);
                    }
                    _ => {}
                }
            }
            EventSubject::Fleet => {
                if matches!(e.kind, EventKind::IllegalTransition | EventKind::InvariantAtRisk) {
                    self.violation(format!("engine: {}", e.cause));
                }
                if matches!(e.kind, EventKind::BrakeEngaged { .. }) {
                    self.c.brake_engaged += 1;
                    self.people.page_human(self.now, false, &mut self.rng);
                }
            }
        }
    }

    /// Service `s` went to `to`; `needs_human` when the engine says it is
    /// there because it stopped trying.
    fn service_state(&mut self, s: u32, to: ServiceState, needs_human: bool) {
        let svc = &mut self.svcs[s as usize];
        let from = svc.state;
        svc.state = to;
        let was = from == ServiceState::Available;
        let is = to == ServiceState::Available;
        if was && !is {
            self.c.not_available += 1;
            if !svc.needs_human {
                self.c.not_available_nh += 1;
            }
            if !self.building {
                self.people.page_bot();
            }
        } else if !was && is {
            self.c.not_available -= 1;
            if !svc.needs_human {
                self.c.not_available_nh -= 1;
            }
        }
        if to == ServiceState::Unavailable && needs_human {
            self.needs_human(s);
        }
    }

    /// Service `s` waits for a person: it no longer counts against
    /// convergence, and a person is paged (once).
    fn needs_human(&mut self, s: u32) {
        let svc = &mut self.svcs[s as usize];
        if svc.needs_human {
            return;
        }
        svc.needs_human = true;
        if svc.state != ServiceState::Available {
            self.c.not_available_nh -= 1;
        }
        if svc.down {
            self.c.down_nh -= 1;
        }
        self.c.services_needing_human += 1;
        self.people.page_human(self.now, true, &mut self.rng);
    }

    // ------------------------------------------------------------------
    // The world
    // ------------------------------------------------------------------

    fn alive(&self, i: u32) -> bool {
        let x = &self.insts[i as usize];
        x.exists && x.up && !x.booting && self.hosts[x.host as usize].up && !self.zones[x.zone as usize].lost
    }

    fn primary_pos(&self, s: u32) -> u64 {
        let svc = &self.svcs[s as usize];
        match svc.writer {
            Some(_) => svc.anchor + svc.rate * ((self.now - svc.anchor_at).max(0) as u64) / 1_000_000,
            None => svc.anchor,
        }
    }

    fn position(&self, i: u32) -> u64 {
        let x = &self.insts[i as usize];
        let svc = &self.svcs[x.svc as usize];
        if svc.writer == Some(i) {
            return self.primary_pos(x.svc);
        }
        if x.frozen != STREAMING {
            return x.frozen;
        }
        self.primary_pos(x.svc).saturating_sub(x.lag)
    }

    fn set_down(&mut self, s: u32, down: bool) {
        let svc = &mut self.svcs[s as usize];
        if svc.down == down {
            return;
        }
        svc.down = down;
        let nh = !svc.needs_human;
        if down {
            self.c.down += 1;
            if nh {
                self.c.down_nh += 1;
            }
        } else {
            self.c.down -= 1;
            if nh {
                self.c.down_nh -= 1;
            }
        }
    }

    /// The primary stops writing (crash, host or zone lost, fenced): what
    /// was acknowledged is fixed now, and every follower stops streaming.
    fn stop_writes(&mut self, s: u32) {
        let Some(_) = self.svcs[s as usize].writer else { return };
        let pos = self.primary_pos(s);
        let members = self.svcs[s as usize].members.clone();
        let mut acked = pos;
        if self.svcs[s as usize].sync {
            // Synchronous: a commit is acknowledged once a follower has it.
            let best = members
                .iter()
                .filter(|&&f| {
                    self.insts[f as usize].role == Role::Follower
                        && self.alive(f)
                        && self.insts[f as usize].frozen == STREAMING
                })
                .map(|&f| pos.saturating_sub(self.insts[f as usize].lag))
                .max();
            if let Some(b) = best {
                acked = b;
            } else if let Some(b) = members
                .iter()
                .filter(|&&f| self.insts[f as usize].role == Role::Follower)
                .map(|&f| self.position(f))
                .max()
            {
                // No follower was streaming: commits waited for one, so
                // only what a follower confirmed before it went was acknowledged.
                acked = b.min(pos);
            }
        }
        let svc = &mut self.svcs[s as usize];
        svc.writer = None;
        svc.anchor = pos;
        svc.acked = acked;
        for f in members {
            let x = &mut self.insts[f as usize];
            if x.role == Role::Follower && x.frozen == STREAMING {
                x.frozen = pos.saturating_sub(x.lag);
                self.want_beat(f);
            }
        }
        self.set_down(s, true);
    }

    fn start_writes(&mut self, i: u32) {
        let s = self.insts[i as usize].svc;
        let pos = self.position(i);
        let svc = &mut self.svcs[s as usize];
        svc.writer = Some(i);
        svc.anchor = pos;
        svc.anchor_at = self.now;
        for f in svc.members.clone() {
            if f != i && self.insts[f as usize].role == Role::Follower && self.alive(f) {
                self.insts[f as usize].frozen = STREAMING;
                self.want_beat(f);
            }
        }
        self.want_beat(i);
        self.set_down(s, false);
    }

    /// After anything about `i` changed: writes, streaming, the collector.
    fn changed(&mut self, i: u32) {
        let alive = self.alive(i);
        let (s, role, frozen) = {
            let x = &self.insts[i as usize];
            (x.svc, x.role, x.frozen)
        };
        if !alive {
            if self.svcs[s as usize].writer == Some(i) {
                self.stop_writes(s);
            } else if role == Role::Follower && frozen == STREAMING {
                let pos = self.position(i);
                self.insts[i as usize].frozen = pos;
            }
        }
        let x = &mut self.insts[i as usize];
        if x.reported != alive {
            x.reported = alive;
            self.mark_pending(i);
        }
    }

    fn mark_pending(&mut self, i: u32) {
        let x = &mut self.insts[i as usize];
        if !x.pending {
            x.pending = true;
            self.zones[x.zone as usize].pending.push(i);
        }
    }

    fn want_beat(&mut self, i: u32) {
        let x = &mut self.insts[i as usize];
        if !x.beat_pending {
            x.beat_pending = true;
            self.zones[x.zone as usize].beats.push(i);
        }
    }

    fn facts(&self, i: u32) -> Facts {
        let x = &self.insts[i as usize];
        let svc = &self.svcs[x.svc as usize];
        let pos = self.position(i);
        if x.role == Role::Primary {
            Facts {
                role: Some(Role::Primary),
                writable: Some(svc.writer == Some(i)),
                wal_position: Some(pos),
                connections: Some(20),
                ..Default::default()
            }
        } else {
            let streaming = x.frozen == STREAMING && svc.writer.is_some();
            Facts {
                role: Some(Role::Follower),
                writable: Some(false),
                wal_position: Some(pos),
                replication_lag_bytes: Some(self.primary_pos(x.svc).saturating_sub(pos)),
                upstream_streaming: Some(streaming),
                connections: Some(5),
                ..Default::default()
            }
        }
    }

    /// Each zone's collector: changed beats first, then the lease with who
    /// it started and stopped hearing. Nothing leaves a lost or cut zone.
    fn renew_leases(&mut self) {
        for z in 0..self.zones.len() {
            if self.zones[z].lost || self.zones[z].cut {
                continue;
            }
            let beats_due = std::mem::take(&mut self.zones[z].beats);
            let mut beats = Vec::with_capacity(beats_due.len());
            for i in beats_due {
                self.insts[i as usize].beat_pending = false;
                if self.alive(i) {
                    let facts = self.facts(i);
                    let x = &mut self.insts[i as usize];
                    x.seq += 1;
                    beats.push(Beat { instance: x.id, seq: x.seq, facts });
                }
            }
            if !beats.is_empty() {
                self.step(Input::Heartbeats(beats));
            }
            let pending = std::mem::take(&mut self.zones[z].pending);
            let (mut cover, mut withdraw) = (Vec::new(), Vec::new());
            for i in pending {
                let x = &mut self.insts[i as usize];
                x.pending = false;
                if x.reported {
                    cover.push(x.id);
                } else {
                    withdraw.push(x.id);
                }
            }
            let zone = self.zones[z].name.clone();
            self.step(Input::ZoneLease { zone, cover, withdraw });
        }
    }

    fn boot(&mut self, i: u32) {
        let x = &self.insts[i as usize];
        if !x.exists || x.terminated || !x.up || !x.booting {
            return;
        }
        self.insts[i as usize].booting = false;
        if !self.alive(i) {
            return; // its host or zone went down meanwhile; it boots when they return
        }
        let x = &self.insts[i as usize];
        let s = x.svc;
        if x.role == Role::Primary && !x.fenced && self.svcs[s as usize].writer.is_none() {
            self.start_writes(i);
        } else if x.role == Role::Follower && self.svcs[s as usize].writer.is_some() {
            self.insts[i as usize].frozen = STREAMING;
        }
        self.want_beat(i);
        self.changed(i);
    }

    fn pick_host(&mut self, z: usize) -> u32 {
        let hosts = &self.zones[z].hosts;
        for _ in 0..16 {
            let h = hosts[self.rng.random_range(0..hosts.len())];
            if self.hosts[h as usize].up {
                return h;
            }
        }
        // Every host drawn was down: the provider adds one.
        let h = self.hosts.len() as u32;
        self.hosts.push(Host { up: true, members: Vec::new() });
        self.zones[z].hosts.push(h);
        h
    }

    // ------------------------------------------------------------------
    // The provider: carries out one attempt of an action, idempotently
    // ------------------------------------------------------------------

    fn execute(&mut self, a: &ActionRecord) -> ActionOutcome {
        let ok = ActionOutcome::Succeeded { detail: None };
        let fail = |e: &str, retryable: bool| ActionOutcome::Failed { error: e.into(), retryable };
        let known = self.by_id.get(&a.instance).copied();
        if !self.building
            && a.kind != ActionKind::Probe
            && self.sc.provider.failure_rate > 0.0
            && self.rng.random_bool(self.sc.provider.failure_rate.clamp(0.0, 1.0))
        {
            return fail("provider API error (simulated)", true);
        }
        if let ActionKind::Provision { role, zone, .. } = &a.kind {
            if let Some(i) = known {
                return if self.insts[i as usize].terminated { fail("instance was terminated", false) } else { ok };
            }
            let Some(z) = self.zones.iter().position(|x| &x.name == zone) else { return fail("no such zone", false) };
            if self.zones[z].lost {
                return fail("zone unavailable: insufficient capacity", false);
            }
            let Some(&s) = self.svc_by_id.get(&a.service) else { return fail("no such service", false) };
            if self.backup_down && !self.building {
                return fail("backup store unavailable: cannot restore a base backup", true);
            }
            let host = self.pick_host(z);
            let svc = &self.svcs[s as usize];
            let lag = if *role == Role::Primary {
                0
            } else if svc.sync {
                let has_sync = svc.members.iter().any(|&m| {
                    let x = &self.insts[m as usize];
                    x.role == Role::Follower && x.exists && x.lag == 0
                });
                if has_sync {
                    self.rng.random_range(0..65_536)
                } else {
                    0
                }
            } else {
                let [lo, hi] = self.sc.fleet.async_lag_bytes;
                u64::from(self.rng.random_range(lo.min(hi)..=hi.max(lo)))
            };
            let i = self.insts.len() as u32;
            let mut frozen = STREAMING;
            if *role == Role::Primary {
                // Rebuilt from the backup store: what was not archived is lost.
                let svc = &mut self.svcs[s as usize];
                let restored = if svc.writer.is_none() {
                    svc.acked.saturating_sub(svc.rate * ARCHIVE_EVERY_SECS)
                } else {
                    svc.anchor
                };
                let lost = svc.acked.saturating_sub(restored);
                // No follower survived to be promoted: a double failure.
                self.c.writes_lost_rebuild += lost;
                svc.anchor = restored;
                svc.acked = restored;
                frozen = restored;
            }
            self.insts.push(Inst {
                id: a.instance,
                svc: s,
                zone: z as u8,
                host,
                role: *role,
                exists: true,
                up: true,
                booting: true,
                fenced: false,
                terminated: false,
                drained: false,
                affected: false,
                slow: false,
                reported: false,
                pending: false,
                beat_pending: false,
                lag,
                frozen,
                seq: 0,
            });
            self.by_id.insert(a.instance, i);
            self.svcs[s as usize].members.push(i);
            self.hosts[host as usize].members.push(i);
            let boot = if self.building {
                micros(self.rng.random_range(0.0..BUILD_SPREAD_SECS))
            } else {
                self.draw(self.sc.provider.boot_secs)
            };
            self.at(self.now + boot, Ev::Boot(i));
            return ok;
        }
        let Some(i) = known else {
            // Unknown or long gone: stopping it again is done; anything else cannot be.
            return match a.kind {
                ActionKind::Fence { .. } | ActionKind::Retire | ActionKind::Archive | ActionKind::Terminate => ok,
                _ => fail("no such instance", false),
            };
        };
        if self.insts[i as usize].terminated {
            return match a.kind {
                ActionKind::Fence { .. } | ActionKind::Retire | ActionKind::Archive | ActionKind::Terminate => ok,
                _ => fail("instance was terminated", false),
            };
        }
        let s = self.insts[i as usize].svc;
        match &a.kind {
            ActionKind::Probe => {
                // Out of band, through the provider's API: a cut between the
                // control plane and a zone does not stop it.
                if self.alive(i) {
                    ok
                } else {
                    fail("not answering", false)
                }
            }
            ActionKind::Fence { .. } => {
                // Fenced at the network level by the provider, even in a lost zone.
                self.insts[i as usize].fenced = true;
                if self.svcs[s as usize].writer == Some(i) {
                    self.stop_writes(s);
                }
                ok
            }
            ActionKind::Promote => {
                if !self.alive(i) || self.insts[i as usize].fenced {
                    return fail("cannot promote: not running", false);
                }
                let members = self.svcs[s as usize].members.clone();
                for m in members {
                    let y = &self.insts[m as usize];
                    if m != i && y.role == Role::Primary && !y.fenced && y.exists && !y.terminated {
                        self.violation(format!(
                            "promotion of {} while primary {} of the same service is not fenced",
                            a.instance, y.id
                        ));
                    }
                }
                if let Some(w) = self.svcs[s as usize].writer {
                    if w != i {
                        self.violation(format!(
                            "two writable primaries: {} promoted while {} writes",
                            a.instance, self.insts[w as usize].id
                        ));
                    }
                }
                let pos = self.position(i);
                let svc = &self.svcs[s as usize];
                let lost = svc.acked.saturating_sub(pos);
                if svc.sync {
                    self.c.writes_lost_sync += lost;
                } else {
                    self.c.writes_lost_async += lost;
                }
                let x = &mut self.insts[i as usize];
                x.role = Role::Primary;
                x.frozen = STREAMING;
                x.lag = 0;
                self.svcs[s as usize].anchor = pos;
                self.svcs[s as usize].writer = None;
                self.start_writes(i);
                ok
            }
            ActionKind::Restart => {
                let x = &self.insts[i as usize];
                if !x.exists || x.drained || !self.hosts[x.host as usize].up || self.zones[x.zone as usize].lost {
                    return fail("does not start: its host is gone", false);
                }
                let x = &mut self.insts[i as usize];
                x.up = true;
                x.booting = true;
                self.changed(i);
                let d = self.draw([1.0, 5.0]);
                self.at(self.now + d, Ev::Boot(i));
                ok
            }
            ActionKind::Retire => {
                self.insts[i as usize].exists = false;
                self.changed(i);
                ok
            }
            ActionKind::Archive | ActionKind::InjectFault { .. } => ok,
            // Backups and restore tests need the backup store.
            ActionKind::Backup | ActionKind::VerifyRestore => {
                if self.backup_down {
                    fail("backup store unavailable", true)
                } else if !self.alive(i) {
                    fail("not answering", false)
                } else {
                    ok
                }
            }
            ActionKind::Terminate => {
                let x = &mut self.insts[i as usize];
                x.exists = false;
                x.terminated = true;
                self.svcs[s as usize].members.retain(|&m| m != i);
                ok
            }
            ActionKind::Provision { .. } => unreachable!("handled above"),
        }
    }

    // ------------------------------------------------------------------
    // Faults
    // ------------------------------------------------------------------

    fn schedule_background(&mut self) {
        if self.now >= self.background_until {
            return;
        }
        let b = &self.sc.background;
        let per_day = b.process_crash_per_instance_day * self.insts.len() as f64
            + b.host_loss_per_host_day * self.hosts.len() as f64;
        if per_day <= 0.0 {
            return;
        }
        let mean_secs = 86_400.0 / per_day;
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let wait = -u.ln() * mean_secs;
        let at = self.now.max(T0) + micros(wait);
        self.at(at, Ev::Background);
    }

    fn background(&mut self) {
        let b = &self.sc.background;
        let crash = b.process_crash_per_instance_day * self.insts.len() as f64;
        let host = b.host_loss_per_host_day * self.hosts.len() as f64;
        if self.rng.random_range(0.0..(crash + host)) < crash {
            let i = self.rng.random_range(0..self.insts.len()) as u32;
            if self.alive(i) {
                self.insts[i as usize].up = false;
                self.changed(i);
            }
        } else {
            let h = self.rng.random_range(0..self.hosts.len());
            if self.hosts[h].up {
                self.hosts[h].up = false;
                for i in self.hosts[h].members.clone() {
                    self.changed(i);
                }
            }
        }
        self.schedule_background();
    }

    fn zone_members(&self, z: usize) -> Vec<u32> {
        (0..self.insts.len() as u32).filter(|&i| self.insts[i as usize].zone as usize == z).collect()
    }

    fn fault(&mut self, k: u16, start: bool) {
        let f = self.sc.faults[k as usize].clone();
        let (a, b) = f.window();
        if start && !matches!(f, FaultSpec::Advisory { .. }) {
            self.at(T0 + micros(b * 3600.0), Ev::FaultEnd(k));
        }
        let _ = a;
        match f {
            FaultSpec::ZoneLoss { zone, .. } => {
                let z = self.zone_index(&zone);
                self.zones[z].lost = start;
                for i in self.zone_members(z) {
                    if start {
                        self.changed(i);
                    } else {
                        let x = &self.insts[i as usize];
                        if x.exists && x.up && self.hosts[x.host as usize].up {
                            self.insts[i as usize].booting = true;
                            let d = self.draw(self.sc.provider.boot_secs);
                            self.at(self.now + d, Ev::Boot(i));
                        }
                    }
                }
            }
            FaultSpec::NetworkCut { zone, .. } => {
                let z = self.zone_index(&zone);
                self.set_cut(z, start);
            }
            FaultSpec::Flap { zone, down_secs, .. } => {
                let z = self.zone_index(&zone);
                self.set_cut(z, start);
                if start {
                    let d = self.draw(down_secs);
                    self.at(self.now + d, Ev::Flap(k));
                }
            }
            FaultSpec::SlowDisks { share, extra_lag_bytes, .. } => {
                for i in 0..self.insts.len() as u32 {
                    let x = &self.insts[i as usize];
                    let pick = if start {
                        x.role == Role::Follower && x.exists && self.rng.random_bool(share.clamp(0.0, 1.0))
                    } else {
                        x.slow
                    };
                    if pick {
                        let x = &mut self.insts[i as usize];
                        x.slow = start;
                        x.lag = if start { x.lag + extra_lag_bytes } else { x.lag.saturating_sub(extra_lag_bytes) };
                        self.want_beat(i);
                    }
                }
            }
            FaultSpec::BackupStoreOutage { .. } => self.backup_down = start,
            FaultSpec::PagerOutage { .. } => {
                if start {
                    self.people.pager_outage(self.now, T0 + micros(b * 3600.0));
                }
            }
            FaultSpec::Advisory { .. } => {
                // Each service has a one-hour maintenance window at a drawn
                // hour; followers are replaced first, the primary after.
                for s in 0..self.svcs.len() {
                    let hour = self.rng.random_range(0..24) as i64;
                    let day = self.now - (self.now - T0).rem_euclid(86_400_000_000);
                    let mut window = day + hour * 3_600_000_000;
                    if window < self.now {
                        window += 86_400_000_000;
                    }
                    for m in self.svcs[s].members.clone() {
                        if !self.insts[m as usize].exists {
                            continue;
                        }
                        self.insts[m as usize].affected = true;
                        let offset = if self.insts[m as usize].role == Role::Primary { 30.0 * 60.0 } else { 0.0 };
                        let jitter = self.draw([0.0, 20.0 * 60.0]);
                        self.at(window + micros(offset) + jitter, Ev::Replace(m));
                    }
                }
            }
        }
    }

    fn zone_index(&self, name: &str) -> usize {
        self.zones.iter().position(|z| z.name == name).unwrap_or(0)
    }

    fn set_cut(&mut self, z: usize, cut: bool) {
        if self.zones[z].cut == cut {
            return;
        }
        self.zones[z].cut = cut;
        if !cut {
            // The link is back: the collector vouches for everyone it hears
            // (the engine judged them silent meanwhile).
            for i in self.zone_members(z) {
                if self.insts[i as usize].reported {
                    self.mark_pending(i);
                }
            }
        }
    }

    fn flap(&mut self, k: u16) {
        let FaultSpec::Flap { zone, up_secs, down_secs, .. } = self.sc.faults[k as usize].clone() else { return };
        let (_, end) = self.sc.faults[k as usize].window();
        if self.now >= T0 + micros(end * 3600.0) {
            return;
        }
        let z = self.zone_index(&zone);
        let cut = !self.zones[z].cut;
        self.set_cut(z, cut);
        let d = self.draw(if cut { down_secs } else { up_secs });
        self.at(self.now + d, Ev::Flap(k));
    }

    fn replace_for_advisory(&mut self, i: u32) {
        let x = &self.insts[i as usize];
        if !x.exists || !x.affected {
            return;
        }
        // The provider drains its host into a patched one: the instance
        // stops and will not start there again; the engine replaces it.
        let x = &mut self.insts[i as usize];
        x.up = false;
        x.drained = true;
        self.changed(i);
    }

    // ------------------------------------------------------------------
    // The end: convergence and the report
    // ------------------------------------------------------------------

    fn finish(mut self, services: u64, seed: u64, instances: u64, wall: Instant) -> Report {
        self.log.push(Vec::new());
        let advisory_left = self.insts.iter().filter(|x| x.affected && x.exists).count() as u64;
        let converged = self.c.not_available_nh == 0 && self.c.down_nh == 0 && advisory_left == 0;
        let recovered_seconds =
            if converged { self.recovered_at.map(|t| (t - self.fault_start).max(0) as f64 / SEC) } else { None };
        let c = &self.c;
        let ps = self.people.stats.clone();
        let (digest, events) = self.log.finish();
        Report {
            scenario: self.sc.name.clone(),
            services,
            instances,
            seed,
            sim_hours: self.sc.hours,
            wall_seconds: (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0,
            recovered_seconds,
            max_unavailable: c.max_down,
            max_not_available_in_engine: c.max_not_available,
            failovers: c.failovers,
            replacements: c.replacements,
            restarts: c.restarts,
            probes: c.probes,
            pages_human: ps.pages_human,
            pages_bot: ps.pages_bot,
            after_hours_pages: ps.after_hours_pages,
            mean_minutes_to_acknowledge: if ps.pages_human > 0 {
                (ps.ack_minutes_total / ps.pages_human as f64 * 10.0).round() / 10.0
            } else {
                0.0
            },
            writes_lost: c.writes_lost_sync + c.writes_lost_async + c.writes_lost_rebuild,
            writes_lost_sync: c.writes_lost_sync,
            writes_lost_async: c.writes_lost_async,
            writes_lost_rebuild: c.writes_lost_rebuild,
            services_needing_human: c.services_needing_human,
            person_years_avoided: (c.minutes_avoided / MINUTES_PER_PERSON_YEAR * 1000.0).round() / 1000.0,
            person_hours_spent: (ps.person_minutes / 60.0 * 10.0).round() / 10.0,
            brake_engaged: c.brake_engaged,
            advisory_instances_left: advisory_left,
            engine_events: events,
            safety_violations: c.violations,
            first_violation: c.first_violation.clone(),
            converged,
            digest,
        }
    }
}

fn service_name(i: u32) -> String {
    format!("s{i:07}")
}

fn service_index(name: &str) -> Option<u32> {
    name.strip_prefix('s')?.parse().ok()
}
