//! The state checker: what the engine said, checked against the world.

use super::*;

impl Sim {
    /// Keeps what the pager acts on (the engine's alerts, by kind), and a
    /// service's all-clear only when an alert about it went before.
    pub(super) fn keep_for_pager(&mut self, e: &Event) {
        if self.building || !drover_oncall::engine::is_relevant(e) {
            return;
        }
        let s = e.service.as_deref().and_then(service_index).map(|g| (g / self.shards) as usize);
        let trigger =
            !matches!(e.kind, EventKind::Transition | EventKind::BrakeReleased { .. } | EventKind::RestoreTestPassed);
        match s {
            Some(s) if s < self.svcs.len() => {
                if trigger {
                    self.svcs[s].alerted = true;
                } else if !self.svcs[s].alerted {
                    return;
                }
            }
            _ => {}
        }
        self.alerts.push((self.now, e.clone()));
    }

    // ------------------------------------------------------------------
    // What the engine said
    // ------------------------------------------------------------------

    pub(super) fn observe(&mut self, e: &Event) {
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
                        let counted = matches!(kind, "promote" | "provision" | "restart");
                        let s = e.service_id.filter(|_| counted).and_then(|id| self.svc_by_id.get(&id).copied());
                        let slot = s.map_or(0, |s| usize::from(self.svcs[s as usize].engine));
                        if kind == "promote" && slot == KAFKA {
                            // Brokers are peers: a lost one is replaced, never failed over.
                            self.violation(format!("a Kafka broker was promoted: {e:?}"));
                        }
                        match kind {
                            "promote" => match s {
                                Some(s) if self.svcs[s as usize].switching => {
                                    self.svcs[s as usize].switching = false;
                                    self.c.switchovers += 1;
                                    self.c.engines[slot].switchovers += 1;
                                }
                                _ => {
                                    self.c.failovers += 1;
                                    self.c.engines[slot].failovers += 1;
                                }
                            },
                            "provision" => {
                                self.c.replacements += 1;
                                self.c.engines[slot].replacements += 1;
                            }
                            "restart" => {
                                self.c.restarts += 1;
                                self.c.engines[slot].restarts += 1;
                            }
                            _ => {}
                        }
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
                }
                if matches!(e.kind, EventKind::RolloutPaused { .. }) {
                    self.c.rollout_pauses += 1;
                }
            }
        }
    }

    /// Service `s` went to `to`; `needs_human` when the engine says it is
    /// there because it stopped trying.
    pub(super) fn service_state(&mut self, s: u32, to: ServiceState, needs_human: bool) {
        let svc = &mut self.svcs[s as usize];
        let from = svc.state;
        svc.state = to;
        let was = from == ServiceState::Available;
        let is = to == ServiceState::Available;
        let e = &mut self.c.engines[usize::from(svc.engine)];
        if was && !is {
            e.not_available += 1;
        } else if !was && is {
            e.not_available -= 1;
        }
        if was && !is {
            self.c.not_available += 1;
            if !svc.needs_human {
                self.c.not_available_nh += 1;
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
    pub(super) fn needs_human(&mut self, s: u32) {
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
    }

    pub(super) fn track_recovery(&mut self) {
        if self.now >= T0 {
            self.c.max_down = self.c.max_down.max(self.c.down);
            self.c.max_not_available = self.c.max_not_available.max(self.c.not_available);
            for e in &mut self.c.engines[..self.engines] {
                e.max_down = e.max_down.max(e.down);
                e.max_not_available = e.max_not_available.max(e.not_available);
            }
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
}
