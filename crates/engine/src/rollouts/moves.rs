//! One service's move onto an image by replacement (a rollout's step and
//! a resize): a new member, a planned switchover, the old members retired.

use super::*;

/// What a move still has to do with a service's members (`census`).
#[derive(Default)]
struct Census {
    primary: Option<u32>,
    /// Members of the rolled role on another image. Inline: a move looks
    /// at every moving service every tick, mostly to wait.
    old_members: smallvec::SmallVec<[u32; 4]>,
    /// Read replicas added on demand are not the plan's: replaced one at a
    /// time after the plan's members (reconcile rebuilds each in its slot
    /// from the service's image, the new one).
    old_read_replicas: smallvec::SmallVec<[u32; 2]>,
    new_members: usize,
    /// Fenced or retiring members of another image, not yet gone.
    old_leavers: usize,
}

/// Where a move takes a service's members: onto an image (a rollout, a
/// resize), or off a host (a drain). A member not there yet is "old".
#[derive(Clone, Copy, Debug)]
pub(crate) enum Goal {
    Image(u32),
    OffHost(u16),
}

impl Goal {
    fn old(self, x: &crate::fleet::Inst) -> bool {
        match self {
            Goal::Image(target) => x.image != target,
            Goal::OffHost(host) => x.host == host,
        }
    }
}

impl Engine {
    /// How a move's causes begin (the rollouts' words are kept: the
    /// simulator's digests hash them).
    fn move_label(&self, goal: Goal) -> String {
        match goal {
            Goal::Image(target) => format!("rollout onto {}", self.images.id(target)),
            Goal::OffHost(h) => {
                format!("drain of host {}", self.hosts.list.get(usize::from(h)).map_or("?", |x| x.rec.name.as_str()))
            }
        }
    }

    /// A resize (issue 17): `name` moved onto `image` now, as a rollout of
    /// that one service (one wave, no soak: no later wave waits on it; its
    /// window ignored: a person asked for it now). Refused, and nothing
    /// opened, for an image not registered (not found), an image of another
    /// engine, a service being deleted or already on the image, or one
    /// another rollout is moving (conflicts).
    pub(crate) fn resize_service(
        &mut self,
        name: &str,
        image: ImageId,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let &sslot =
            self.service_names.get(name).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let &target =
            self.images.index.get(&image).ok_or_else(|| {
                CommandError::NotFound(format!("no image {image}; register it first (POST /v1/images)"))
            })?;
        let s = self.services.get(sslot).ok_or_else(|| CommandError::NotFound(format!("no service named {name:?}")))?;
        let engine = self.images.list[target as usize].engine;
        if s.engine != engine {
            return Err(CommandError::Conflict(format!(
                "{name:?} is a {} service and image {image} is a {engine} image",
                s.engine
            )));
        }
        if s.deleting {
            return Err(CommandError::Conflict(format!("{name:?} is being deleted")));
        }
        if let Some(&other) = self.rollouts.claimed.get(&s.id) {
            let service = s.id;
            return self.move_ahead(other, service, sslot, target, name, now, out);
        }
        let there = s.image == target
            && s.instances
                .iter()
                .all(|&i| self.instances.get(i).is_none_or(|x| x.image == target || !x.state.is_member()));
        if there {
            return Err(CommandError::Conflict(format!("{name:?} is on image {image} already")));
        }
        let spec = RolloutSpec {
            to_image: image,
            selector: drover_model::Selector { names: Some(vec![name.to_string()]), ..Default::default() },
            waves: vec![100],
            soak_seconds: 0,
            max_failures: 1,
            required_by: Some(Timestamp(now)),
        };
        self.create_rollout(spec, now, out)
    }

    /// A resize of a service that rollout `id` holds: its owners moving it
    /// earlier by hand (Heroku's `pg:maintenance:run`). When it is still
    /// waiting and `target` is the rollout's image, it starts moving now,
    /// in the rollout (its window, wave and zone limit do not hold back
    /// what a person asked for now; the brake still holds each step), so
    /// the rollout counts it and never moves it again. Anything else is a
    /// conflict: another image, or a move already started or finished.
    #[allow(clippy::too_many_arguments)]
    fn move_ahead(
        &mut self,
        id: RolloutId,
        service: ServiceId,
        sslot: u32,
        target: u32,
        name: &str,
        now: i64,
        out: &mut Outputs,
    ) -> Result<Reply, CommandError> {
        let busy = || {
            CommandError::Conflict(format!("rollout {id} is moving {name:?}: pause or abort it first, or wait for it"))
        };
        let mut list = std::mem::take(&mut self.rollouts.list);
        // A split rollout has a part per shard: the one with the service.
        let holding = |r: &&mut Rollout| {
            r.record.id == id && !r.record.state.is_finished() && r.members.iter().any(|m| m.service == service)
        };
        let result = match list.iter_mut().find(holding) {
            None => Err(busy()),
            Some(r) if r.target != target => Err(CommandError::Conflict(format!(
                "rollout {id} will move {name:?} onto image {}: resize it onto that image to move it now, or abort \
                 the rollout first",
                self.images.id(r.target)
            ))),
            Some(r) => match r.members.iter().position(|m| m.service == service) {
                Some(k) if r.members[k].phase == MemberPhase::Waiting => {
                    self.start_member(r, k, sslot, now, out);
                    let cause = format!("rollout {id}: {name} moved ahead of its turn by request");
                    out.changes.events.push(self.event(
                        now,
                        EventSubject::Service,
                        Some(sslot),
                        None,
                        None,
                        None,
                        cause,
                    ));
                    self.rollouts.next_at = now;
                    Ok(Reply::Rollout(Box::new(self.rollout_view_of(r, now))))
                }
                _ => Err(busy()),
            },
        };
        self.rollouts.list = list;
        result
    }

    /// Ok when the service passes the health gate now.
    pub(super) fn service_health(&self, sslot: Option<u32>) -> Result<(), String> {
        let s = sslot.and_then(|s| self.services.get(s)).ok_or("the service is gone")?;
        if s.needs_human {
            return Err("it needs a human".into());
        }
        if s.state != ServiceState::Available {
            return Err(format!("it is {}", s.state.as_str()));
        }
        Ok(())
    }

    /// The next step of moving one service to `goal`. Decided
    /// from the fleet as it is, so a repeat (after a restart) finds a step
    /// done and goes on from there.
    pub(super) fn step_move(
        &mut self,
        sslot: Option<u32>,
        goal: Goal,
        started_at: i64,
        now: i64,
        out: &mut Outputs,
    ) -> Step {
        let Some(sslot) = sslot else { return Step::Failed("the service is gone".into()) };
        if let Some(step) = self.move_held(sslot, started_at, now) {
            return step;
        }
        let Some(s) = self.services.get(sslot) else { return Step::Failed("the service is gone".into()) };
        // What the policy's topology replaces side by side (followers, or
        // every peer broker), and whether a switchover finishes the move.
        let topology = self.policy_of(s).topology();
        let rolled = topology.rolled_role();
        let planned = usize::from(self.policy_of(s).members(&s.plan).count(rolled));
        let Some(Census { primary, old_members, old_read_replicas, new_members, old_leavers }) =
            self.census(sslot, goal, rolled)
        else {
            return Step::Wait;
        };
        // The brake holds moves in the zone of the primary (of an old peer
        // when there is no primary).
        let anchor = if topology.rolls_by_switchover() {
            let Some(p) = primary else { return Step::Wait };
            Some(p)
        } else {
            old_members.first().copied()
        };
        // A freeze by hand (break-glass) holds them as the automatic brake does.
        if anchor.and_then(|a| self.instances.get(a)).is_some_and(|x| self.is_braked(x.zone)) {
            return Step::Wait;
        }
        let primary_old = primary.and_then(|p| self.instances.get(p)).is_some_and(|x| goal.old(x));
        // Formatted only when a step is taken: most looks wait.
        let label = || self.move_label(goal);
        let (of_new, from_new) = match goal {
            Goal::Image(_) => ("of the new image", "from the new image"),
            Goal::OffHost(_) => ("on another host", "on another host"),
        };
        // Onto another major (an upgrade, its rollback): the old followers
        // and read replicas cannot follow a primary of the new major, and
        // before the cut-over the only member of the new major that can be
        // built is one logical subscriber (`crate::upgrades`). So: that
        // member, then the old followers retired, then the switchover;
        // after it, old members left are retired first and reconcile
        // builds the plan's followers from the new primary.
        let crossing = match goal {
            Goal::Image(target) => {
                primary.and_then(|p| self.instances.get(p)).is_some_and(|p| self.crosses_major(p.image, target))
                    || old_members
                        .iter()
                        .chain(&old_read_replicas)
                        .filter_map(|&i| self.instances.get(i))
                        .any(|x| self.crosses_major(x.image, target))
            }
            Goal::OffHost(_) => false,
        };
        if crossing {
            if primary_old && new_members == 0 {
                let cause = format!("{}: build a {rolled} {from_new}", label());
                self.build_new_member(sslot, rolled, &cause, now, out);
                return Step::Acted;
            }
            if let Some(&old) = old_members.first().or(old_read_replicas.first()) {
                let cause =
                    format!("{}: retire an old {rolled} of another major (it cannot follow the new one)", label());
                self.open_action(old, ActionKind::Retire, &cause, true, now, out);
                return Step::Acted;
            }
        }
        if let Some(&old) = old_members.first() {
            if new_members > 0 && new_members + old_members.len() > planned {
                // Followers keep their words (the simulator's digests hash them).
                let ready = if topology.rolls_by_switchover() { "streams" } else { "serves" };
                let cause = format!("{}: retire an old {rolled}, a {rolled} {of_new} {ready}", label());
                self.open_action(old, ActionKind::Retire, &cause, true, now, out);
            } else {
                let cause = format!("{}: build a {rolled} {from_new}", label());
                self.build_new_member(sslot, rolled, &cause, now, out);
            }
            return Step::Acted;
        }
        if let Some(&old) = old_read_replicas.first() {
            let cause = format!("{}: retire an old read replica, rebuilt in its slot {from_new}", label());
            self.open_action(old, ActionKind::Retire, &cause, true, now, out);
            return Step::Acted;
        }
        if let Some(p) = primary.filter(|_| primary_old) {
            if new_members == 0 {
                let cause = format!("{}: build a {rolled} {from_new}", label());
                self.build_new_member(sslot, rolled, &cause, now, out);
                return Step::Acted;
            }
            if self.best_follower(sslot, now).is_none() {
                return Step::Wait;
            }
            let cause = format!("{}: planned switchover onto a follower {of_new}", label());
            self.open_action(p, ActionKind::Fence { immediate: false }, &cause, true, now, out);
            self.mark_dirty(sslot);
            return Step::Acted;
        }
        if new_members < planned || old_leavers > 0 {
            // Reconcile builds the missing member and retires the leavers.
            self.mark_dirty(sslot);
            return Step::Wait;
        }
        match self.services.get(sslot) {
            Some(s) if s.state == ServiceState::Available => Step::Moved,
            _ => Step::Wait,
        }
    }

    /// Why a move cannot step now: failed for good (the service went, is
    /// being deleted, needs a human, or took too long) or waiting on an
    /// open remedy. None: go on.
    fn move_held(&self, sslot: u32, started_at: i64, now: i64) -> Option<Step> {
        let Some(s) = self.services.get(sslot) else { return Some(Step::Failed("the service is gone".into())) };
        if s.deleting {
            return Some(Step::Failed("the service is being deleted".into()));
        }
        if s.needs_human {
            return Some(Step::Failed("a step failed and the service needs a human".into()));
        }
        if now - started_at > MOVE_TIMEOUT_MICROS {
            return Some(Step::Failed(format!("not moved within {} minutes", MOVE_TIMEOUT_MICROS / 60_000_000)));
        }
        if s.open_remedies > 0 {
            return Some(Step::Wait);
        }
        None
    }

    /// The members of a service being moved to `goal`, by what the move
    /// still has to do with them; None while a member is not available
    /// (the move waits).
    fn census(&self, sslot: u32, goal: Goal, rolled: Role) -> Option<Census> {
        let mut c = Census::default();
        for &i in &self.services.get(sslot)?.instances {
            let Some(x) = self.instances.get(i) else { continue };
            if !x.state.is_member() {
                if goal.old(x) && x.state == InstanceState::Retiring {
                    c.old_leavers += 1;
                }
                continue;
            }
            if x.fenced {
                if goal.old(x) {
                    c.old_leavers += 1;
                }
                continue;
            }
            if x.state != InstanceState::Available {
                return None;
            }
            match x.role {
                _ if x.read_slot > 0 && goal.old(x) => c.old_read_replicas.push(i),
                _ if x.read_slot > 0 => {}
                Role::Primary => c.primary = Some(i),
                r if r == rolled && !goal.old(x) => c.new_members += 1,
                r if r == rolled => c.old_members.push(i),
                _ => {}
            }
        }
        Some(c)
    }

    pub(super) fn build_new_member(&mut self, sslot: u32, role: Role, cause: &str, now: i64, out: &mut Outputs) {
        let zone = self.zone_for_new_member(sslot);
        self.provision(sslot, role, zone, cause, now, out);
    }
}
