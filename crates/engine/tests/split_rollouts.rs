//! Rollouts on a fleet split into two shards, each held by its own engine
//! (issue 16, `rollouts::split`): shard 0's engine keeps the record and
//! opens waves, pauses and ends the rollout on what both shards' parts
//! report; each engine moves its own shard's services. What the nodes'
//! shells carry between them (the records through the store, the parts
//! through the shards' health rows) is carried here by hand, in
//! [`Fleet::sync`].

mod common;

use common::*;
use drover_engine::{Command, Config, Input, Reply, Share};
use drover_model::*;
use std::collections::BTreeMap;
use std::time::Duration;

const SHARDS: u16 = 2;

fn names_in(shard: u16, n: usize) -> Vec<String> {
    (0..).map(|i| format!("db{i:02}")).filter(|name| Slot::of_name(name).shard(SHARDS) == shard).take(n).collect()
}

struct Fleet {
    /// Shard 0's holder: the record's keeper.
    zero: H,
    one: H,
    names: [Vec<String>; 2],
    image: ImageId,
    /// Whether shard 1's parts reach shard 0's holder (its node alive).
    one_reports: bool,
}

impl Fleet {
    fn new(per_shard: usize) -> Fleet {
        let holder = || H::new(Config { share: Share::new(1, SHARDS), ..fast_config() });
        let (mut zero, mut one) = (holder(), holder());
        let names = [names_in(0, per_shard), names_in(1, per_shard)];
        for (h, names) in [(&mut zero, &names[0]), (&mut one, &names[1])] {
            for name in names {
                h.create(name, 1);
            }
            h.advance(Duration::from_secs(3));
            for name in names {
                assert_eq!(h.service(name).state, ServiceState::Available, "{name}");
            }
        }
        let image = register_newer_image(&mut zero);
        assert_eq!(register_newer_image(&mut one), image, "the same image on both (learned from the store)");
        Fleet { zero, one, names, image, one_reports: true }
    }

    /// One round of what the shells do: both engines follow the records
    /// shard 0's holder wrote and learn the shards they hold; shard 0's
    /// holder looks at the other shard's parts.
    fn sync(&mut self) {
        let records: Vec<RolloutRecord> = self.zero.store.rollouts.values().cloned().collect();
        self.zero.step(Input::Rollouts { records: records.clone(), held: vec![0] });
        self.one.step(Input::Rollouts { records, held: vec![1] });
        let parts = if self.one_reports { self.one.e.rollout_parts() } else { BTreeMap::new() };
        self.zero.step(Input::RolloutProgress { parts });
    }

    fn run(&mut self, d: Duration) {
        for _ in 0..d.as_secs() {
            self.zero.advance(Duration::from_secs(1));
            self.one.advance(Duration::from_secs(1));
            self.sync();
        }
    }

    fn view(&self, id: RolloutId) -> RolloutView {
        self.zero.e.rollout_view(id, Timestamp(self.zero.now)).expect("the record is shard 0's holder's")
    }

    fn run_until_settled(&mut self, id: RolloutId, limit: Duration) -> RolloutView {
        for _ in 0..limit.as_secs() {
            self.run(Duration::from_secs(1));
            let v = self.view(id);
            if v.state.is_finished() || v.state == RolloutState::Paused {
                return v;
            }
        }
        self.view(id)
    }

    fn create(&mut self, waves: Vec<u8>, soak: u64, max_failures: u32) -> RolloutView {
        let spec = RolloutSpec {
            to_image: self.image.clone(),
            selector: Selector { engine: Some(EngineKind::Postgres), ..Default::default() },
            waves,
            soak_seconds: soak,
            max_failures,
            required_by: None,
        };
        match self.zero.command(Command::CreateRollout(spec)) {
            Ok(Reply::Rollout(v)) => *v,
            other => panic!("rollout not created: {other:?}"),
        }
    }

    fn steer(&mut self, command: Command) -> RolloutView {
        match self.zero.command(command) {
            Ok(Reply::Rollout(v)) => *v,
            other => panic!("not steered: {other:?}"),
        }
    }
}

fn on_image(h: &H, name: &str, image: &ImageId) -> bool {
    h.service(name).instances.iter().filter(|i| i.state.is_member()).all(|i| i.image == image.0)
}

#[test]
fn each_shard_moves_its_own_services_and_a_wave_opens_only_once_every_shard_closed_the_one_before() {
    let mut f = Fleet::new(4);
    let created = f.create(vec![50, 100], 5, 1);
    assert_eq!((created.state, created.total), (RolloutState::Pending, 0), "the record only: parts select");
    assert!(f.one.e.rollout_parts().is_empty(), "shard 1's holder has no part before it learns the record");

    // Shard 1's holder is silent: its part moves its first wave, but the
    // record's second wave does not open for shard 0's part alone.
    f.one_reports = false;
    f.run(Duration::from_secs(120));
    let v = f.view(created.id);
    assert_eq!((v.state, v.wave), (RolloutState::Running, 1), "{v:?}");
    let zero_members = f.zero.e.rollout_members(created.id).unwrap();
    let one_members = f.one.e.rollout_members(created.id).unwrap();
    assert_eq!((zero_members.len(), one_members.len()), (4, 4), "each part is its own shard's services");
    for members in [&zero_members, &one_members] {
        assert_eq!(members.iter().filter(|m| m.phase == MemberPhase::Done).count(), 2, "{members:#?}");
        assert!(members.iter().skip(2).all(|m| m.phase == MemberPhase::Waiting), "{members:#?}");
    }

    // It reports again: the second wave opens in both, and the rollout
    // ends with the sums.
    f.one_reports = true;
    let v = f.run_until_settled(created.id, Duration::from_secs(600));
    assert_eq!(v.state, RolloutState::Succeeded, "{v:?}");
    assert_eq!((v.total, v.done, v.failed, v.remaining), (8, 8, 0, 0), "{v:?}");
    for (h, names) in [(&f.zero, &f.names[0]), (&f.one, &f.names[1])] {
        for name in names {
            assert!(on_image(h, name, &f.image), "{name} moved by its own shard's holder");
        }
    }
    // Shard 1's second wave started only after the record opened it,
    // which was after shard 1's first wave was done.
    let one_members = f.one.e.rollout_members(created.id).unwrap();
    let first_done = one_members[..2].iter().map(|m| m.moved_at.unwrap().0).max().unwrap();
    assert!(one_members[2..].iter().all(|m| m.started_at.unwrap().0 > first_done), "{one_members:#?}");
    // Only shard 0's holder wrote the record.
    assert!(f.one.store.rollouts.is_empty(), "{:?}", f.one.store.rollouts);
    assert_eq!(f.one.store.rollout_members.len(), 4, "shard 1's members, written by their holder");
}

#[test]
fn failures_summed_over_the_shards_pause_the_rollout_once_and_a_person_resumes_or_aborts_it() {
    let mut f = Fleet::new(4);
    f.zero.world.failing_images.push(f.image.clone());
    f.one.world.failing_images.push(f.image.clone());
    let created = f.create(vec![50, 100], 5, 2);
    let v = f.run_until_settled(created.id, Duration::from_secs(900));
    assert_eq!(v.state, RolloutState::Paused, "{v:?}");
    assert!(v.reason.as_deref().unwrap().contains("over the shards"), "{v:?}");
    assert!(v.failed >= 2, "{v:?}");
    let pauses = |h: &H| h.store.events.iter().filter(|e| matches!(e.kind, EventKind::RolloutPaused { .. })).count();
    // Nothing of the second wave starts anywhere while it is paused.
    f.run(Duration::from_secs(120));
    assert_eq!((pauses(&f.zero), pauses(&f.one)), (1, 0), "one page, from the record's keeper");
    for h in [&f.zero, &f.one] {
        let members = h.e.rollout_members(created.id).unwrap();
        assert!(members.iter().skip(2).all(|m| m.phase == MemberPhase::Waiting), "{members:#?}");
    }

    // Resumed: a fresh budget in both parts (the failures before the
    // resume do not pause it again at once), then paused again by the
    // next failures; aborted, nothing moves any more.
    let v = f.steer(Command::ResumeRollout { id: created.id });
    assert_eq!(v.state, RolloutState::Running);
    f.sync();
    assert_eq!(f.view(created.id).state, RolloutState::Running, "not paused again by what failed before");
    let v = f.run_until_settled(created.id, Duration::from_secs(900));
    assert_eq!(v.state, RolloutState::Paused, "{v:?}");
    assert_eq!(pauses(&f.zero), 2);
    let v = f.steer(Command::AbortRollout { id: created.id });
    assert_eq!(v.state, RolloutState::Aborted);
    f.run(Duration::from_secs(60));
    for h in [&f.zero, &f.one] {
        let members = h.e.rollout_members(created.id).unwrap();
        assert!(members.iter().all(|m| m.phase != MemberPhase::Moving), "{members:#?}");
    }
    // Their services are free for the next rollout: both shards' parts
    // select all of theirs again.
    let next = f.create(vec![100], 0, 1);
    f.sync();
    f.sync();
    let v = f.view(next.id);
    assert_eq!(v.total, 8, "{v:?}");
}
