//! The fleet in memory, compact: instances and services live in slabs
//! indexed by `u32`, strings that repeat (zones, providers, teams, images)
//! are interned. One instance costs about 150 bytes here plus its index
//! entry, which is what keeps a million of them under 1 KiB each.

use crate::backups::Backups;
use drover_model::{
    EngineKind, Facts, ImageId, InstanceId, InstanceRecord, InstanceState, Plan, Role, ServiceId, ServiceRecord,
    ServiceState, Timestamp,
};

/// The engine's hash maps: hashbrown with foldhash seeded by a constant, not
/// per process (hashbrown's default), so that a map hashes identically in
/// every run. Nothing that reaches an output may depend on a map's order
/// anyway (iterations that do are sorted); the fixed seed makes that a
/// property of the code rather than of luck, and is faster than SipHash.
pub type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;

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
    /// The host it was placed on (`hosts::NO_HOST`: none).
    pub host: u16,
    pub role: Role,
    /// A read replica added on demand: its read slot (1..=8); 0 for the
    /// primary and the plan's followers. A u8 fits in padding.
    pub read_slot: u8,
    pub state: InstanceState,
    pub fenced: bool,
    /// A probe action is open for it.
    pub probing: bool,
    /// Open remedy actions that target it (kept with the open actions, so
    /// asking "is a remedy open on it" does not scan every open action).
    pub open_remedies: u16,
    /// Follower fact: its replication stream from the primary is broken.
    pub upstream_broken: bool,
    /// Vouched for by its zone's heartbeat lease (`Input::ZoneLease`): while
    /// covered it has no deadline of its own and counts as heard whenever
    /// the lease was last renewed.
    pub covered: bool,
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
    /// What its heartbeats last said (each fact kept until one replaces it).
    pub reported: Reported,
}

/// The facts an instance last reported, packed: a bit per fact says whether
/// it is known. 32 bytes where the `Option`s took 64, for every instance.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reported {
    known: u8,
    writable: bool,
    connections: u32,
    wal_position: u64,
    lag_bytes: u64,
    last_backup_at: i64,
}

const WRITABLE: u8 = 1;
const CONNECTIONS: u8 = 2;
const WAL_POSITION: u8 = 4;
const LAG_BYTES: u8 = 8;
const LAST_BACKUP_AT: u8 = 16;

impl Reported {
    fn get<T>(&self, bit: u8, v: T) -> Option<T> {
        (self.known & bit != 0).then_some(v)
    }
    pub fn writable(&self) -> Option<bool> {
        self.get(WRITABLE, self.writable)
    }
    pub fn connections(&self) -> Option<u32> {
        self.get(CONNECTIONS, self.connections)
    }
    pub fn wal_position(&self) -> Option<u64> {
        self.get(WAL_POSITION, self.wal_position)
    }
    pub fn lag_bytes(&self) -> Option<u64> {
        self.get(LAG_BYTES, self.lag_bytes)
    }
    pub fn last_backup_at(&self) -> Option<i64> {
        self.get(LAST_BACKUP_AT, self.last_backup_at)
    }
    /// Takes in what a heartbeat's facts say; a fact it leaves out keeps
    /// its last value.
    pub fn update(&mut self, f: &Facts) {
        if let Some(v) = f.writable {
            self.writable = v;
            self.known |= WRITABLE;
        }
        if let Some(v) = f.connections {
            self.connections = v;
            self.known |= CONNECTIONS;
        }
        if let Some(v) = f.wal_position {
            self.wal_position = v;
            self.known |= WAL_POSITION;
        }
        if let Some(v) = f.replication_lag_bytes {
            self.lag_bytes = v;
            self.known |= LAG_BYTES;
        }
        if let Some(t) = f.last_backup_at {
            self.last_backup_at = t.0;
            self.known |= LAST_BACKUP_AT;
        }
    }
}

/// Where an instance lives, as indices the engine interned.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub image: u32,
    pub zone: u16,
    pub provider: u16,
    /// `hosts::NO_HOST` where nothing was placed.
    pub host: u16,
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
            host: place.host,
            role,
            read_slot: 0,
            state: InstanceState::Installing,
            fenced: false,
            probing: false,
            open_remedies: 0,
            upstream_broken: false,
            covered: false,
            restarts: 0,
            created_at: now,
            state_since: now,
            last_heartbeat: 0,
            last_seq: 0,
            check_at: NEVER,
            next_probe_at: 0,
            last_probe_ok: 0,
            evidence_at: 0,
            reported: Reported::default(),
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
            read_slot: rec.read_slot.and_then(|slot| u8::try_from(slot).ok()).unwrap_or(0),
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
            writable: self.reported.writable(),
            wal_position: self.reported.wal_position(),
            replication_lag_bytes: self.reported.lag_bytes(),
            upstream_streaming: if self.role == Role::Follower && self.last_heartbeat > 0 {
                Some(!self.upstream_broken)
            } else {
                None
            },
            connections: self.reported.connections(),
            last_backup_at: self.reported.last_backup_at().map(Timestamp),
            port: None,
        }
    }
}

/// A service's name, kept inside its record when short (nearly all are):
/// every event names its service, and reading the name then costs no trip
/// to a separate allocation (a cache miss per event at a million services).
#[derive(Clone)]
pub enum Name {
    Inline { len: u8, bytes: [u8; Name::INLINE] },
    Boxed(Box<str>),
}

impl Name {
    const INLINE: usize = 22;
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        if s.len() <= Name::INLINE {
            let mut bytes = [0u8; Name::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name::Inline { len: s.len() as u8, bytes }
        } else {
            Name::Boxed(s.into())
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            // Copied from a `String`, so always whole UTF-8.
            Name::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Name::Boxed(s) => s,
        }
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A service's zones, by interned index.
pub type Zones = smallvec::SmallVec<[u16; 4]>;

pub struct Svc {
    pub id: ServiceId,
    pub name: Name,
    pub engine: EngineKind,
    pub plan: Plan,
    pub team: u16,
    /// Inline: three zones is the most a plan spans, and a heap allocation
    /// per service is paid a million times.
    pub zones: Zones,
    pub image: u32,
    pub provider: u16,
    pub state: ServiceState,
    pub created_at: i64,
    pub state_since: i64,
    /// Every instance not yet terminated, members and leavers (inline up
    /// to four: a plan's members and one replacement).
    pub instances: smallvec::SmallVec<[u32; 4]>,
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
    pub backups: Backups,
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
    /// Credential rotation (`crate::credentials`): the last one, the end of
    /// its overlap, the next one due. None while there is nothing to say
    /// (never rotated, nothing scheduled): boxed, a fleet without rotation
    /// pays a pointer per service.
    pub credentials: Option<Box<drover_model::CredentialStatus>>,
    /// A RotateCredentials / RevokePreviousCredentials action is open.
    pub rotation_running: bool,
    pub revoke_running: bool,
    /// Its own maintenance window (boxed: most services have none).
    pub window: Option<Box<drover_model::MaintenanceWindow>>,
    /// The service and moment it was forked from (boxed: most are not forks).
    pub forked_from: Option<Box<drover_model::RestoreFrom>>,
    /// Its labels (boxed, None when it has none: most services have none).
    pub labels: Option<Box<drover_model::Labels>>,
    /// The read slots wanted (bit n: slot n, 1..=8): read replicas added on
    /// demand (`crate::followers`).
    pub read_slots: u16,
    /// The image before its last major-version upgrade (boxed: most
    /// services are never upgraded): the way back (`crate::upgrades`).
    pub upgraded_from: Option<Box<drover_model::ImageId>>,
}

/// A service's repeated names, as indices the engine interned.
pub struct ServicePlace {
    pub team: u16,
    pub zones: Zones,
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
            instances: Default::default(),
            open_remedies: 0,
            deleting: rec.state == ServiceState::Deleting,
            held: false,
            dirty: false,
            needs_human: rec.needs_human,
            remedy_failures: rec.remedy_failures,
            failing_since: rec.failing_since.map_or(0, |t| t.0),
            backups: Backups::from_status(rec.backups),
            backup_running: false,
            verify_running: false,
            verify_after_backup: false,
            verify_failures: 0,
            next_backup_at: NEVER,
            next_verify_at: NEVER,
            credentials: (rec.credentials != Default::default()).then(|| Box::new(rec.credentials)),
            rotation_running: false,
            revoke_running: false,
            window: rec.maintenance_window.map(Box::new),
            forked_from: rec.forked_from.map(Box::new),
            labels: (!rec.labels.is_empty()).then(|| Box::new(rec.labels)),
            read_slots: crate::followers::slots_mask(&rec.read_slots),
            upgraded_from: rec.upgraded_from.map(Box::new),
        }
    }
}

/// A slab: stable `u32` slots with reuse. Stored in fixed chunks, so that
/// growing never copies what is there nor reserves twice what is needed (a
/// single `Vec` of a million instances doubled to room for two million,
/// and held both while copying).
pub struct Slab<T> {
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
    /// Slots ever handed out (the next new slot).
    slots: usize,
    len: usize,
}

/// Slots per chunk of a [`Slab`].
const SLAB_CHUNK: usize = 1 << 14;

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { chunks: Vec::new(), free: Vec::new(), slots: 0, len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, item: T) -> u32 {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            if let Some(cell) = self.cell_mut(slot) {
                *cell = Some(item);
            }
            return slot;
        }
        if self.slots.is_multiple_of(SLAB_CHUNK) {
            self.chunks.push(Vec::with_capacity(SLAB_CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(Some(item));
        }
        self.slots += 1;
        (self.slots - 1) as u32
    }
    fn cell_mut(&mut self, slot: u32) -> Option<&mut Option<T>> {
        let s = slot as usize;
        self.chunks.get_mut(s / SLAB_CHUNK)?.get_mut(s % SLAB_CHUNK)
    }
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let item = self.cell_mut(slot)?.take();
        if item.is_some() {
            self.free.push(slot);
            self.len -= 1;
        }
        item
    }
    pub fn get(&self, slot: u32) -> Option<&T> {
        let s = slot as usize;
        self.chunks.get(s / SLAB_CHUNK)?.get(s % SLAB_CHUNK)?.as_ref()
    }
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.cell_mut(slot)?.as_mut()
    }
    /// A hint that `slot` is read soon: its cache lines are fetched while
    /// other work goes on. Changes nothing; a slot out of range is ignored.
    /// A loop over thousands of random slots (a fleet-wide roll's moving
    /// services, every tick) otherwise waits on one cache miss after another.
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        let s = slot as usize;
        let Some(cell) = self.chunks.get(s / SLAB_CHUNK).and_then(|c| c.get(s % SLAB_CHUNK)) else { return };
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let start = (cell as *const Option<T>).cast::<i8>();
            let mut line = 0;
            while line < std::mem::size_of::<Option<T>>() {
                // SAFETY: SSE is in every x86_64 target; a prefetch reads
                // nothing and cannot fault, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line)) };
                line += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = cell;
    }
    pub fn len(&self) -> usize {
        self.len
    }
    /// Occupied slots in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks.iter().flatten().enumerate().filter_map(|(i, t)| t.as_ref().map(|t| (i as u32, t)))
    }
    /// Room for `n` more chunks' worth of slots in the chunk table (the
    /// chunks themselves are allocated as they fill).
    pub fn reserve(&mut self, n: usize) {
        self.chunks.reserve(n.div_ceil(SLAB_CHUNK));
    }
}

#[cfg(test)]
mod tests {
    use super::{Slab, Wheel};

    #[test]
    fn wheel_buckets_fire_in_time_order_with_their_entries_in_schedule_order() {
        let mut w = Wheel::new(10);
        for (at, item) in [(5, 'a'), (25, 'b'), (7, 'c'), (25, 'd'), (3, 'e'), (40, 'f')] {
            w.schedule(at, item);
        }
        assert_eq!(w.next(), Some(10));
        assert_eq!(w.pop_due(10), vec![(10, vec!['a', 'c', 'e'])]);
        // The hot bucket fired: scheduling into its key again makes a new one.
        w.schedule(9, 'g');
        w.schedule(26, 'h');
        assert_eq!(w.pop_due(30), vec![(10, vec!['g']), (30, vec!['b', 'd', 'h'])]);
        assert_eq!(w.pop_due(100), vec![(50, vec!['f'])]);
        assert_eq!((w.next(), w.pop_due(1000)), (None, vec![]));
    }

    #[test]
    fn slab_slots_are_stable_reused_last_freed_first_and_iterated_in_order() {
        let mut s = Slab::default();
        let n = 3 * super::SLAB_CHUNK + 5;
        for i in 0..n {
            assert_eq!(s.insert(i), i as u32);
        }
        assert_eq!(s.len(), n);
        assert_eq!(s.remove(7), Some(7));
        assert_eq!(s.remove(7), None);
        assert_eq!(s.remove(n as u32 - 1), Some(n - 1));
        assert_eq!(s.get(7), None);
        assert_eq!(s.insert(1000), n as u32 - 1, "the last freed slot first");
        assert_eq!(s.insert(1001), 7);
        assert_eq!(s.insert(1002), n as u32, "then new slots");
        assert_eq!(s.get(super::SLAB_CHUNK as u32), Some(&super::SLAB_CHUNK));
        let slots: Vec<u32> = s.iter().map(|(k, _)| k).collect();
        assert!(slots.windows(2).all(|w| w[0] < w[1]) && slots.len() == n + 1);
        *s.get_mut(3).unwrap() = 42;
        assert_eq!(s.get(3), Some(&42));
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
    /// The newest image registered for an engine that new services may be
    /// created on (not an upgrade's target: `crate::upgrades::NEW_SERVICES_KEY`).
    pub fn latest_for(&self, engine: EngineKind) -> Option<u32> {
        self.list
            .iter()
            .rposition(|im| {
                im.engine == engine
                    && im.configuration.get(crate::upgrades::NEW_SERVICES_KEY).map(String::as_str) != Some("no")
            })
            .map(|i| i as u32)
    }
}

/// Deadlines in fixed-width buckets. Entries are validated lazily when their
/// bucket fires, so moving a deadline never searches: the old entry is simply
/// found stale. Work per tick is the number of entries in due buckets.
pub struct Wheel<T> {
    width: i64,
    /// Each bucket's key (its end time) → its entries in `slots`.
    buckets: std::collections::BTreeMap<i64, u32>,
    slots: Vec<Vec<T>>,
    free: Vec<u32>,
    /// The bucket scheduled into last: the deadlines set one after another
    /// mostly fall into the same bucket, found then without a tree search.
    hot: Option<(i64, u32)>,
}

impl<T> Wheel<T> {
    pub fn new(width_micros: i64) -> Self {
        Wheel {
            width: width_micros.max(1),
            buckets: Default::default(),
            slots: Vec::new(),
            free: Vec::new(),
            hot: None,
        }
    }
    /// The bucket key (its end time) an entry due at `at` goes to. An entry
    /// fires at or after its deadline, never before.
    pub fn key(&self, at: i64) -> i64 {
        at.div_euclid(self.width).saturating_add(1).saturating_mul(self.width)
    }
    pub fn schedule(&mut self, at: i64, item: T) -> i64 {
        let key = self.key(at);
        let slot = match self.hot {
            Some((k, slot)) if k == key => slot,
            _ => {
                let slot = match self.buckets.get(&key) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.free.pop().unwrap_or_else(|| {
                            self.slots.push(Vec::new());
                            (self.slots.len() - 1) as u32
                        });
                        self.buckets.insert(key, slot);
                        slot
                    }
                };
                self.hot = Some((key, slot));
                slot
            }
        };
        self.slots[slot as usize].push(item);
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
            let slot = entry.remove();
            if self.hot.is_some_and(|(k, _)| k == key) {
                self.hot = None;
            }
            due.push((key, std::mem::take(&mut self.slots[slot as usize])));
            self.free.push(slot);
        }
        due
    }
    pub fn next(&self) -> Option<i64> {
        self.buckets.keys().next().copied()
    }
}
