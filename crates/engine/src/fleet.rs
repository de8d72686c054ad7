//! The fleet in memory, compact: instances and services live in slabs
//! indexed by `u32`, strings that repeat (zones, providers, teams, images)
//! are interned. One instance costs about 150 bytes here plus its index
//! entry, which is what keeps a million of them under 1 KiB each.

use drover_model::{
    EngineKind, Facts, ImageId, InstanceId, InstanceRecord, InstanceState, Plan, Role, ServiceId, ServiceRecord,
    ServiceState, Timestamp,
};
use hashbrown::HashMap;

/// "Not scheduled" for a deadline.
pub const NEVER: i64 = i64::MAX;

/// Small tables of names that repeat across the fleet.
#[derive(Default)]
pub struct Interner {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
}

impl Interner {
    pub fn intern(&mut self, name: &str) -> u16 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = u16::try_from(self.names.len()).unwrap_or(u16::MAX);
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }
    pub fn get(&self, name: &str) -> Option<u16> {
        self.index.get(name).copied()
    }
    pub fn name(&self, i: u16) -> &str {
        self.names.get(usize::from(i)).map(|s| &**s).unwrap_or("?")
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// One instance, as the engine holds it.
#[derive(Clone, Debug)]
pub struct Inst {
    pub id: InstanceId,
    pub service: u32,
    pub image: u32,
    pub zone: u16,
    pub provider: u16,
    pub role: Role,
    pub state: InstanceState,
    pub fenced: bool,
    /// A probe action is open for it.
    pub probing: bool,
    /// Follower fact: its replication stream from the primary is broken.
    pub upstream_broken: bool,
    /// Vouched for by its zone's heartbeat lease (`Input::ZoneLease`): while
    /// covered it has no deadline of its own and counts as heard whenever
    /// the lease was last renewed.
    pub covered: bool,
    pub writable_fact: Option<bool>,
    pub restarts: u32,
    pub created_at: i64,
    pub state_since: i64,
    /// 0 before the first heartbeat.
    pub last_heartbeat: i64,
    pub last_seq: u64,
    /// The bucket this instance sits in, or NEVER.
    pub check_at: i64,
    pub next_probe_at: i64,
    pub last_probe_ok: i64,
    /// When corroborating evidence against it last arrived.
    pub evidence_at: i64,
    pub wal_position: Option<u64>,
    pub lag_bytes: Option<u64>,
    pub connections: Option<u32>,
    pub last_backup_at: Option<i64>,
}

/// Where an instance lives, as indices the engine interned.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub image: u32,
    pub zone: u16,
    pub provider: u16,
}

impl Inst {
    /// A new member, installing, not heard yet. The one place an `Inst` is
    /// built: `from_record` starts from here too.
    pub fn new(id: InstanceId, service: u32, place: Placement, role: Role, now: i64) -> Inst {
        Inst {
            id,
            service,
            image: place.image,
            zone: place.zone,
            provider: place.provider,
            role,
            state: InstanceState::Installing,
            fenced: false,
            probing: false,
            upstream_broken: false,
            covered: false,
            writable_fact: None,
            restarts: 0,
            created_at: now,
            state_since: now,
            last_heartbeat: 0,
            last_seq: 0,
            check_at: NEVER,
            next_probe_at: 0,
            last_probe_ok: 0,
            evidence_at: 0,
            wal_position: None,
            lag_bytes: None,
            connections: None,
            last_backup_at: None,
        }
    }

    /// An instance restored from its record at a control-plane restart:
    /// what was persisted, and heard "now" so that the grace period starts
    /// from the restart. Facts arrive with its next heartbeat.
    pub fn from_record(rec: &InstanceRecord, service: u32, place: Placement, now: i64) -> Inst {
        Inst {
            state: rec.state,
            fenced: rec.fenced,
            restarts: rec.restarts,
            state_since: rec.state_since.0,
            last_heartbeat: now,
            next_probe_at: now,
            ..Inst::new(rec.id, service, place, rec.role, rec.created_at.0)
        }
    }

    /// The service's one writer, which the single-writer invariant counts:
    /// an unfenced primary. Peers (brokers) each serve, but are not it.
    pub fn writable(&self) -> bool {
        self.role == Role::Primary && !self.fenced && self.state.is_member()
    }
    pub fn facts(&self) -> Facts {
        Facts {
            role: if self.last_heartbeat > 0 { Some(self.role) } else { None },
            writable: self.writable_fact,
            wal_position: self.wal_position,
            replication_lag_bytes: self.lag_bytes,
            upstream_streaming: if self.role == Role::Follower && self.last_heartbeat > 0 {
                Some(!self.upstream_broken)
            } else {
                None
            },
            connections: self.connections,
            last_backup_at: self.last_backup_at.map(Timestamp),
        }
    }
}

pub struct Svc {
    pub id: ServiceId,
    pub name: Box<str>,
    pub engine: EngineKind,
    pub plan: Plan,
    pub team: u16,
    pub zones: Vec<u16>,
    pub image: u32,
    pub provider: u16,
    pub state: ServiceState,
    pub created_at: i64,
    pub state_since: i64,
    /// Every instance not yet terminated, members and leavers.
    pub instances: Vec<u32>,
    /// Open remedy actions (pending or running) of this service; chaos and
    /// probes are not counted. Reconcile decides nothing new while > 0.
    pub open_remedies: u32,
    pub deleting: bool,
    /// Waiting on the brake for fresh evidence.
    pub held: bool,
    /// Queued for reconcile in this step.
    pub dirty: bool,
    /// A remedy failed for good: a human must look.
    pub needs_human: bool,
    /// Remedies that failed since the service was last available, and when
    /// the first of them failed (0: none). Persisted with the service.
    pub remedy_failures: u32,
    pub failing_since: i64,
    /// Boxed: most services in a big fleet never need more than the default.
    pub backups: Box<drover_model::BackupStatus>,
    /// A Backup / VerifyRestore action is open (at most one of each).
    pub backup_running: bool,
    pub verify_running: bool,
    /// A restore test failed: take a fresh backup, then test it again.
    pub verify_after_backup: bool,
    /// Restore tests failed in a row; after the second, stop and ask a human
    /// rather than loop backup → test → backup.
    pub verify_failures: u8,
    pub next_backup_at: i64,
    pub next_verify_at: i64,
}

/// A service's repeated names, as indices the engine interned.
pub struct ServicePlace {
    pub team: u16,
    pub zones: Vec<u16>,
    pub image: u32,
    pub provider: u16,
}

impl Svc {
    /// The one place an `Svc` is built: from its record (restored from the
    /// store, or written for a new service), with its names interned in
    /// `place`. What is not persisted (open remedies, failure counts,
    /// schedules) starts empty.
    pub fn from_record(rec: ServiceRecord, place: ServicePlace) -> Svc {
        Svc {
            id: rec.id,
            name: rec.name.into(),
            engine: rec.engine,
            plan: rec.plan,
            team: place.team,
            zones: place.zones,
            image: place.image,
            provider: place.provider,
            state: rec.state,
            created_at: rec.created_at.0,
            state_since: rec.state_since.0,
            instances: Vec::new(),
            open_remedies: 0,
            deleting: rec.state == ServiceState::Deleting,
            held: false,
            dirty: false,
            needs_human: rec.needs_human,
            remedy_failures: rec.remedy_failures,
            failing_since: rec.failing_since.map_or(0, |t| t.0),
            backups: Box::new(rec.backups),
            backup_running: false,
            verify_running: false,
            verify_after_backup: false,
            verify_failures: 0,
            next_backup_at: NEVER,
            next_verify_at: NEVER,
        }
    }
}

/// A slab: stable `u32` slots with reuse.
pub struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { items: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, item: T) -> u32 {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            self.items[slot as usize] = Some(item);
            slot
        } else {
            self.items.push(Some(item));
            (self.items.len() - 1) as u32
        }
    }
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let item = self.items.get_mut(slot as usize)?.take();
        if item.is_some() {
            self.free.push(slot);
            self.len -= 1;
        }
        item
    }
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|t| (i as u32, t)))
    }
    pub fn reserve(&mut self, n: usize) {
        self.items.reserve(n);
    }
}

/// Images known to the engine, by interned index.
#[derive(Default)]
pub struct Images {
    pub list: Vec<drover_model::Image>,
    pub index: HashMap<ImageId, u32>,
}

impl Images {
    pub fn insert(&mut self, image: drover_model::Image) -> (u32, bool) {
        if let Some(&i) = self.index.get(&image.id) {
            return (i, false);
        }
        let i = self.list.len() as u32;
        self.index.insert(image.id.clone(), i);
        self.list.push(image);
        (i, true)
    }
    pub fn id(&self, i: u32) -> ImageId {
        self.list.get(i as usize).map(|im| im.id.clone()).unwrap_or_else(|| ImageId("unknown".into()))
    }
    /// The newest image registered for an engine.
    pub fn latest_for(&self, engine: EngineKind) -> Option<u32> {
        self.list.iter().rposition(|im| im.engine == engine).map(|i| i as u32)
    }
}

/// Deadlines in fixed-width buckets. Entries are validated lazily when their
/// bucket fires, so moving a deadline never searches: the old entry is simply
/// found stale. Work per tick is the number of entries in due buckets.
pub struct Wheel<T> {
    width: i64,
    buckets: std::collections::BTreeMap<i64, Vec<T>>,
}

impl<T> Wheel<T> {
    pub fn new(width_micros: i64) -> Self {
        Wheel { width: width_micros.max(1), buckets: Default::default() }
    }
    /// The bucket key (its end time) an entry due at `at` goes to. An entry
    /// fires at or after its deadline, never before.
    pub fn key(&self, at: i64) -> i64 {
        at.div_euclid(self.width).saturating_add(1).saturating_mul(self.width)
    }
    pub fn schedule(&mut self, at: i64, item: T) -> i64 {
        let key = self.key(at);
        self.buckets.entry(key).or_default().push(item);
        key
    }
    /// Removes and returns every bucket due by `now`.
    pub fn pop_due(&mut self, now: i64) -> Vec<(i64, Vec<T>)> {
        let mut due = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > now {
                break;
            }
            let key = *entry.key();
            due.push((key, entry.remove()));
        }
        due
    }
    pub fn next(&self) -> Option<i64> {
        self.buckets.keys().next().copied()
    }
}
