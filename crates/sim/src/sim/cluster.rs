//! The simulated cluster: instances, hosts, zones, WAL, collectors, and the
//! provider carrying out each attempt of an action.

use super::*;
use drover_world::{Effect, Ground, Machine};

impl Sim {
    // ------------------------------------------------------------------
    // The world
    // ------------------------------------------------------------------

    pub(super) fn alive(&self, i: u32) -> bool {
        let x = &self.insts[i as usize];
        x.exists && x.up && !x.booting && self.hosts[x.host as usize].up && !self.zones[x.zone as usize].lost
    }

    pub(super) fn primary_pos(&self, s: u32) -> u64 {
        let svc = &self.svcs[s as usize];
        match svc.writer {
            Some(_) => svc.anchor + svc.rate * ((self.now - svc.anchor_at).max(0) as u64) / 1_000_000,
            None => svc.anchor,
        }
    }

    pub(super) fn position(&self, i: u32) -> u64 {
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

    pub(super) fn set_down(&mut self, s: u32, down: bool) {
        let svc = &mut self.svcs[s as usize];
        if svc.down == down {
            return;
        }
        svc.down = down;
        let nh = !svc.needs_human;
        let e = &mut self.c.engines[usize::from(svc.engine)];
        if down {
            e.down += 1;
        } else {
            e.down -= 1;
        }
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
    pub(super) fn stop_writes(&mut self, s: u32) {
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

    pub(super) fn start_writes(&mut self, i: u32) {
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
    pub(super) fn changed(&mut self, i: u32) {
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
        if role == Role::Broker {
            self.brokers_changed(s);
        }
        let x = &mut self.insts[i as usize];
        if x.reported != alive {
            x.reported = alive;
            self.mark_pending(i);
        }
    }

    /// A Kafka service serves while any of its brokers does (alive, not
    /// cut at the router): its clients reconnect through the bootstrap
    /// address to whichever serves. No writes to stop or start: a broker's
    /// records are in the storage, which the simulator does not lose.
    pub(super) fn brokers_changed(&mut self, s: u32) {
        let serving = self.svcs[s as usize].members.iter().any(|&m| {
            let x = &self.insts[m as usize];
            x.role == Role::Broker && !x.fenced && self.alive(m)
        });
        self.set_down(s, !serving);
    }

    pub(super) fn mark_pending(&mut self, i: u32) {
        let x = &mut self.insts[i as usize];
        if !x.pending {
            x.pending = true;
            self.zones[x.zone as usize].pending.push(i);
        }
    }

    pub(super) fn want_beat(&mut self, i: u32) {
        let x = &mut self.insts[i as usize];
        if !x.beat_pending {
            x.beat_pending = true;
            self.zones[x.zone as usize].beats.push(i);
        }
    }

    pub(super) fn facts(&self, i: u32) -> Facts {
        let x = &self.insts[i as usize];
        if x.role == Role::Broker {
            let mut m = Machine::of(EngineKind::Kafka, Role::Broker);
            m.fenced = x.fenced;
            return drover_world::broker_facts(&m);
        }
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
    pub(super) fn renew_leases(&mut self) {
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

    pub(super) fn boot(&mut self, i: u32) {
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

    pub(super) fn pick_host(&mut self, z: usize) -> u32 {
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

    pub(super) fn execute(&mut self, a: &ActionRecord) -> ActionOutcome {
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
        if let Some(drover_model::ProvisionSpec { role, zone, image, .. }) = a.kind.provision() {
            let Some(z) = self.zones.iter().position(|x| &x.name == zone) else { return fail("no such zone", false) };
            let Some(&s) = self.svc_by_id.get(&a.service) else { return fail("no such service", false) };
            if self.svcs[s as usize].bad_image && self.patched_images.contains(image) {
                return fail("the patched image does not boot on this service's hosts (simulated bad image)", false);
            }
            let tombstoned = self.tombstones.contains(&a.instance);
            let existing = known.filter(|_| !tombstoned).map(|i| self.svcs[self.insts[i as usize].svc as usize].id);
            // The fleet exists before hour 0: its backups were there.
            let ground = Ground { host_up: !self.zones[z].lost, backup_store_up: !self.backup_down || self.building };
            let engine = ENGINES[usize::from(self.svcs[s as usize].engine)].0;
            if let Some(answer) =
                drover_world::admit_member(engine, *role, tombstoned, existing, a.service, zone, ground)
            {
                return answer;
            }
            let host = self.pick_host(z);
            let svc = &self.svcs[s as usize];
            // A broker streams from nobody: no lag to draw.
            let lag = if matches!(role, Role::Primary | Role::Broker) {
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
                self.c.engines[usize::from(svc.engine)].writes_lost += lost;
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
        // Unknown or terminated (the world keeps a tombstone): stopping it
        // again is done; anything else cannot be.
        let Some(i) = known.filter(|&i| !self.insts[i as usize].terminated) else {
            return drover_world::act_on_missing(&a.kind).0;
        };
        let x = &self.insts[i as usize];
        let s = x.svc;
        // The world's rules (drover-world) answer; this keeps the physics:
        // writes, streaming, boots and the collector.
        let ground = Ground {
            host_up: self.hosts[x.host as usize].up && !self.zones[x.zone as usize].lost,
            backup_store_up: !self.backup_down,
        };
        let mut m = self.machine(i);
        let answer = drover_world::act(&mut m, &a.kind, ground);
        match answer.effect {
            Effect::Nothing => {}
            Effect::Promoted => {
                self.check_promotion(i, a.instance);
                self.set_machine(i, &m);
                let pos = self.position(i);
                let svc = &self.svcs[s as usize];
                let lost = svc.acked.saturating_sub(pos);
                if svc.sync {
                    self.c.writes_lost_sync += lost;
                } else {
                    self.c.writes_lost_async += lost;
                }
                self.c.engines[usize::from(svc.engine)].writes_lost += lost;
                let x = &mut self.insts[i as usize];
                x.frozen = STREAMING;
                x.lag = 0;
                self.svcs[s as usize].anchor = pos;
                self.svcs[s as usize].writer = None;
                self.start_writes(i);
            }
            Effect::Fenced => {
                // Fenced at the network level by the provider, even in a lost zone.
                self.set_machine(i, &m);
                if a.kind == (ActionKind::Fence { immediate: false }) && self.svcs[s as usize].writer == Some(i) {
                    // A planned switchover: running statements finish and
                    // clients queue, so every follower still streaming
                    // receives the last commit before the primary stops.
                    for f in self.svcs[s as usize].members.clone() {
                        if self.insts[f as usize].role == Role::Follower
                            && self.alive(f)
                            && self.insts[f as usize].frozen == STREAMING
                        {
                            self.insts[f as usize].lag = 0;
                        }
                    }
                }
                if self.svcs[s as usize].writer == Some(i) {
                    self.stop_writes(s);
                }
                self.changed(i);
            }
            Effect::Restarted => {
                self.set_machine(i, &m);
                let x = &mut self.insts[i as usize];
                x.up = true;
                x.booting = true;
                self.changed(i);
                let d = self.draw([1.0, 5.0]);
                self.at(self.now + d, Ev::Boot(i));
            }
            Effect::Stopped | Effect::Faulted => {
                self.set_machine(i, &m);
                self.changed(i);
            }
            Effect::Terminated => {
                let x = &mut self.insts[i as usize];
                x.exists = false;
                x.terminated = true;
                let id = x.id;
                self.by_id.remove(&id);
                self.tombstones.insert(id);
                self.svcs[s as usize].members.retain(|m| *m != i);
                if self.insts[i as usize].role == Role::Broker {
                    self.brokers_changed(s);
                }
            }
        }
        answer.outcome
    }

    /// Instance `i` as the world's rules see it: a booting process does not
    /// answer yet (hung, in their terms); a drained one never starts again.
    fn machine(&self, i: u32) -> Machine {
        let x = &self.insts[i as usize];
        let mut m = Machine::of(ENGINES[usize::from(self.svcs[x.svc as usize].engine)].0, x.role);
        m.crashed = !x.up;
        m.hung = x.booting;
        m.fenced = x.fenced;
        m.running = x.exists;
        m.broken_for_good = x.drained;
        m
    }

    fn set_machine(&mut self, i: u32, m: &Machine) {
        let x = &mut self.insts[i as usize];
        x.role = m.role;
        x.up = !m.crashed;
        x.booting = m.hung && !m.crashed;
        x.fenced = m.fenced;
        x.exists = m.running;
    }

    /// The state checker's view of a promotion about to happen.
    fn check_promotion(&mut self, i: u32, id: InstanceId) {
        let s = self.insts[i as usize].svc;
        let members = self.svcs[s as usize].members.clone();
        for m in members {
            let y = &self.insts[m as usize];
            if m != i && y.role == Role::Primary && !y.fenced && y.exists && !y.terminated {
                self.violation(format!("promotion of {id} while primary {} of the same service is not fenced", y.id));
            }
        }
        if let Some(w) = self.svcs[s as usize].writer {
            if w != i {
                self.violation(format!(
                    "two writable primaries: {id} promoted while {} writes",
                    self.insts[w as usize].id
                ));
            }
        }
    }
}
