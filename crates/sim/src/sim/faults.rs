//! Faults: background failures and the scenario's faults.

use super::*;

impl Sim {
    // ------------------------------------------------------------------
    // Faults
    // ------------------------------------------------------------------

    pub(super) fn schedule_background(&mut self) {
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

    pub(super) fn background(&mut self) {
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

    pub(super) fn zone_members(&self, z: usize) -> Vec<u32> {
        (0..self.insts.len() as u32).filter(|&i| self.insts[i as usize].zone as usize == z).collect()
    }

    pub(super) fn fault(&mut self, k: u16, start: bool) {
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
            // The pager runs after the shards (crate::oncall reads the window).
            FaultSpec::PagerOutage { .. } => {}
            FaultSpec::Advisory { name, bad_share, .. } => {
                // A patched image, and a rollout of every service onto it
                // by the engine's own rollout code (new followers, planned
                // switchovers), each service inside its weekly one-hour
                // maintenance window at a drawn hour within the next day.
                for s in 0..self.svcs.len() {
                    let hour = self.rng.random_range(0..24) as i64;
                    let day = self.now - (self.now - T0).rem_euclid(86_400_000_000);
                    let mut window = day + hour * 3_600_000_000;
                    if window < self.now {
                        window += 86_400_000_000;
                    }
                    for m in self.svcs[s].members.clone() {
                        if self.insts[m as usize].exists {
                            self.insts[m as usize].affected = true;
                        }
                    }
                    if bad_share > 0.0 {
                        self.svcs[s].bad_image = self.rng.random_bool(bad_share);
                    }
                    let service = super::service_name(s as u32 * self.shards + self.shard);
                    let window = MaintenanceWindow::weekly_from(Timestamp(window), 60);
                    self.step(Input::Command {
                        actor: "sim".into(),
                        role: None,
                        command: Command::SetMaintenanceWindow { name: service, window: Some(window) },
                    });
                }
                // One patched image and one rollout per engine of the fleet.
                for &(engine, version) in &ENGINES[..self.engines] {
                    let patched = Image::new(
                        engine,
                        version,
                        Default::default(),
                        [("linux-image".to_string(), format!("patched for {name}"))].into_iter().collect(),
                        Timestamp(self.now),
                    );
                    let to_image = patched.id.clone();
                    self.patched_images.push(to_image.clone());
                    self.step(Input::Command {
                        actor: "sim".into(),
                        role: None,
                        command: Command::RegisterImage(patched),
                    });
                    let spec = RolloutSpec {
                        to_image,
                        selector: Selector { engine: Some(engine), ..Default::default() },
                        waves: drover_model::default_waves(),
                        soak_seconds: 60,
                        // A planned roll of healthy services: a failed move
                        // is news; the default budget pauses on the first.
                        max_failures: 1,
                        required_by: None,
                    };
                    self.step(Input::Command {
                        actor: "sim".into(),
                        role: None,
                        command: Command::CreateRollout(spec),
                    });
                }
            }
        }
    }

    pub(super) fn zone_index(&self, name: &str) -> usize {
        self.zones.iter().position(|z| z.name == name).unwrap_or(0)
    }

    pub(super) fn set_cut(&mut self, z: usize, cut: bool) {
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

    pub(super) fn flap(&mut self, k: u16) {
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
}
