//! Major-version upgrades in the pure engine (issue 17 item 4): a service
//! moved onto a newer major by a one-service rollout (a new member, a
//! planned switchover, the old member retired), the way back kept durably,
//! no cut-over repeated after a kill -9, and what cannot be upgraded refused
//! with nothing opened.

mod common;
use common::*;
use drover_engine::{Command, CommandError, Reply};
use drover_model::*;
use std::time::Duration;

fn upgrade(h: &mut H, name: &str, version: &str) -> Result<Reply, CommandError> {
    h.command(Command::UpgradeService { name: name.into(), version: version.into() })
}

fn rollback(h: &mut H, name: &str) -> Result<Reply, CommandError> {
    h.command(Command::RollbackUpgrade { name: name.into() })
}

fn rollout(reply: Result<Reply, CommandError>) -> RolloutView {
    match reply {
        Ok(Reply::Rollout(v)) => *v,
        other => panic!("no rollout: {other:?}"),
    }
}

fn settle(h: &mut H, id: RolloutId) -> RolloutView {
    let end = h.now + 600 * 1_000_000;
    while h.now < end {
        h.advance(Duration::from_secs(1));
        let v = h.e.rollout_view(id, Timestamp(h.now)).expect("rollout exists");
        if v.state.is_finished() || v.state == RolloutState::Paused {
            return v;
        }
    }
    panic!("rollout {id} did not settle");
}

fn members_on(h: &H, name: &str) -> Vec<String> {
    h.service(name).instances.iter().filter(|i| i.state.is_member()).map(|i| i.image.clone()).collect()
}

#[test]
fn an_upgrade_moves_one_service_onto_the_new_major_by_switchover_and_the_rollback_moves_it_back() {
    let mut h = H::new(fast_config());
    h.create("db00", 0);
    h.create("db01", 1);
    h.advance(Duration::from_secs(3));
    let before = h.service("db00").image.clone();

    // Refusals open nothing.
    assert!(matches!(upgrade(&mut h, "nosuch", "17"), Err(CommandError::NotFound(_))));
    assert!(matches!(upgrade(&mut h, "db00", "latest"), Err(CommandError::Invalid(_))));
    assert!(matches!(upgrade(&mut h, "db00", "15"), Err(CommandError::Conflict(m)) if m.contains("already")));
    assert!(matches!(upgrade(&mut h, "db00", "14"), Err(CommandError::Conflict(_))));
    assert!(matches!(rollback(&mut h, "db00"), Err(CommandError::Conflict(m)) if m.contains("not upgraded")));
    assert!(h.e.rollout_views(Timestamp(h.now)).is_empty(), "a refusal opens no rollout");

    let v = rollout(upgrade(&mut h, "db00", "17"));
    assert_eq!(v.total, 1, "{v:?}");
    let target = v.spec.to_image.clone();
    assert_eq!(h.service("db00").upgraded_from.as_deref(), Some(before.as_str()), "the way back is kept");
    assert!(
        h.store.services.values().any(|s| s.name == "db00" && s.upgraded_from.as_ref().map(|i| &i.0) == Some(&before)),
        "durably, in the command's commit"
    );
    assert!(matches!(upgrade(&mut h, "db00", "17"), Err(CommandError::Conflict(m)) if m.contains("is moving")));
    let done = settle(&mut h, v.id);
    assert_eq!(done.state, RolloutState::Succeeded, "{done:?}");
    assert!(members_on(&h, "db00").iter().all(|i| *i == target.0), "{:#?}", h.service("db00"));
    let provisions: Vec<&ActionRecord> = h.succeeded("provision");
    assert!(
        provisions
            .iter()
            .any(|a| matches!(a.kind.provision(), Some(drover_model::ProvisionSpec { version, image, .. })
            if version == "17" && *image == target)),
        "the new member is built as 17: {provisions:#?}"
    );
    assert_eq!(h.succeeded("fence").len(), 1, "one switchover");
    assert!(h.succeeded("fence").iter().all(|a| a.kind == ActionKind::Fence { immediate: false }), "not a failover");
    assert!(members_on(&h, "db01").iter().all(|i| *i == before), "only db00 moved");
    assert!(matches!(upgrade(&mut h, "db00", "17"), Err(CommandError::Conflict(m)) if m.contains("already")));

    // A new service is still created on the image for new services, not on the upgrade's target.
    let fresh = h.create("db02", 0);
    assert_eq!(fresh.image, before, "new services stay off an upgrade's target image");

    let back = rollout(rollback(&mut h, "db00"));
    assert_eq!(back.spec.to_image.0, before);
    assert_eq!(h.service("db00").upgraded_from, None, "rolled back once");
    assert!(matches!(rollback(&mut h, "db00"), Err(CommandError::Conflict(_))), "nothing left to roll back");
    let done = settle(&mut h, back.id);
    assert_eq!(done.state, RolloutState::Succeeded, "{done:?}");
    assert!(members_on(&h, "db00").iter().all(|i| *i == before), "back on its old image");
    assert_eq!(h.succeeded("fence").len(), 2, "one switchover each way");
    h.check_invariants();
}

/// A service with two followers and a read replica: before the cut-over
/// one member of the new major only (the provider's logical subscriber;
/// no physical copy of a newer major can be built from an older primary),
/// the old followers and read replica retired, one planned switchover,
/// then the plan's followers and the read replica built on the new major.
#[test]
fn an_upgrade_of_a_service_with_followers_builds_one_new_member_before_the_cut_over_and_the_rest_after() {
    let mut h = H::new(fast_config());
    h.create("db01", 2);
    h.advance(Duration::from_secs(3));
    match h.command(Command::AddFollowers { name: "db01".into(), count: 1 }) {
        Ok(_) => {}
        other => panic!("read replica: {other:?}"),
    }
    h.advance(Duration::from_secs(5));
    assert_eq!(h.followers("db01").len(), 3, "two followers and a read replica");
    let before = h.service("db01").image.clone();

    let v = rollout(upgrade(&mut h, "db01", "17"));
    let target = v.spec.to_image.0.clone();
    let end = h.now + 600 * 1_000_000;
    let mut most_new_before_cut_over = 0;
    while h.now < end {
        h.advance(Duration::from_secs(1));
        if h.succeeded("fence").is_empty() {
            let new = members_on(&h, "db01").iter().filter(|i| **i == target).count();
            most_new_before_cut_over = most_new_before_cut_over.max(new);
        }
        if h.e.rollout_view(v.id, Timestamp(h.now)).is_some_and(|r| r.state.is_finished()) {
            break;
        }
    }
    let done = h.e.rollout_view(v.id, Timestamp(h.now)).expect("rollout");
    assert_eq!(done.state, RolloutState::Succeeded, "{done:?}");
    assert_eq!(most_new_before_cut_over, 1, "one member of the new major before the cut-over");
    // Reconcile builds the plan's followers and the read replica after the move.
    h.advance(Duration::from_secs(10));
    let s = h.service("db01");
    assert!(members_on(&h, "db01").iter().all(|i| *i == target), "{s:#?}");
    assert_eq!(h.followers("db01").len(), 3, "the followers and the read replica are back on 17: {s:#?}");
    assert_eq!(h.succeeded("fence").len(), 1, "one switchover");
    assert!(h.succeeded("fence").iter().all(|a| a.kind == ActionKind::Fence { immediate: false }), "not a failover");
    assert_eq!(s.upgraded_from.as_deref(), Some(before.as_str()));

    // And back, the same way.
    let back = rollout(rollback(&mut h, "db01"));
    let done = settle(&mut h, back.id);
    assert_eq!(done.state, RolloutState::Succeeded, "{done:?}");
    h.advance(Duration::from_secs(10));
    assert!(members_on(&h, "db01").iter().all(|i| *i == before), "{:#?}", h.service("db01"));
    assert_eq!(h.followers("db01").len(), 3);
    assert_eq!(h.succeeded("fence").len(), 2, "one switchover each way");
    h.check_invariants();
}

/// kill -9 of the control plane in the middle of an upgrade: the restored
/// engine resumes it from the fleet as it is, the cut-over (the fence of the
/// old primary) happens once, and the way back survives the restart.
#[test]
fn an_upgrade_resumes_after_kill_9_without_a_second_cut_over() {
    let mut crashed_at = std::collections::BTreeSet::new();
    for crash_after_secs in [0u64, 1, 2, 3, 4, 5, 6, 8, 10] {
        let mut h = H::new(fast_config());
        h.create("db00", 0);
        h.advance(Duration::from_secs(3));
        let before = h.service("db00").image.clone();
        let v = rollout(upgrade(&mut h, "db00", "17"));
        h.advance(Duration::from_secs(crash_after_secs));
        let provisioned = !h.succeeded("provision").is_empty();
        let fenced = !h.succeeded("fence").is_empty();
        let finished = h.e.rollout_view(v.id, Timestamp(h.now)).is_some_and(|r| r.state.is_finished());
        crashed_at.insert(match (provisioned, fenced, finished) {
            (_, _, true) => "after the upgrade",
            (_, true, false) => "after the cut-over",
            (true, false, false) => "new member built, before the cut-over",
            (false, false, false) => "before the new member",
        });
        h.crash_and_restore();
        assert_eq!(
            h.service("db00").upgraded_from.as_deref(),
            Some(before.as_str()),
            "the way back survives a restart ({crash_after_secs} s)"
        );
        let done = settle(&mut h, v.id);
        assert_eq!(done.state, RolloutState::Succeeded, "crash after {crash_after_secs} s: {done:?}");
        assert!(members_on(&h, "db00").iter().all(|i| *i == v.spec.to_image.0));
        let fences = h.store.actions.values().filter(|a| a.kind.name() == "fence").count();
        assert_eq!(fences, 1, "one cut-over, never repeated (crash after {crash_after_secs} s)");
        h.check_invariants();
    }
    assert!(
        crashed_at.contains("new member built, before the cut-over") && crashed_at.contains("after the cut-over"),
        "the crashes fell on both sides of the cut-over: {crashed_at:?}"
    );
}

/// Advances until the upgrade of `name` has built its member of the new
/// major and retired the old follower, before its cut-over.
fn until_before_cut_over(h: &mut H, name: &str, target: &str) {
    let end = h.now + 120 * 1_000_000;
    while h.now < end {
        h.advance(Duration::from_millis(200));
        assert!(h.succeeded("fence").is_empty(), "the cut-over came first: {:#?}", h.service(name));
        let images = members_on(h, name);
        if images.iter().filter(|i| *i == target).count() == 1 && images.len() == 2 {
            return;
        }
    }
    panic!("the upgrade of {name} did not reach its cut-over: {:#?}", h.service(name));
}

/// An upgrade aborted by a person before its cut-over leaves the service
/// on its old major, whole: the new major's subscriber retired, its image
/// and followers back on the old one (before: its image stayed on 17 and
/// reconcile, waiting for a cut-over that would never come, built no
/// follower again), and no way back offered for an upgrade that did not
/// happen.
#[test]
fn an_upgrade_aborted_before_its_cut_over_leaves_the_service_whole_on_its_old_major() {
    let mut h = H::new(fast_config());
    h.create("db01", 1);
    h.advance(Duration::from_secs(3));
    let before = h.service("db01").image.clone();
    let v = rollout(upgrade(&mut h, "db01", "17"));
    let target = v.spec.to_image.0.clone();
    until_before_cut_over(&mut h, "db01", &target);

    let aborted = rollout(h.command(Command::AbortRollout { id: v.id }));
    assert_eq!(aborted.state, RolloutState::Aborted);
    let s = h.service("db01");
    assert_eq!(s.image, before, "the service's image is back on its primary's");
    assert_eq!(s.upgraded_from, None, "no way back from an upgrade that did not happen");
    assert!(
        h.store.services.values().any(|r| r.name == "db01" && r.image.0 == before && r.upgraded_from.is_none()),
        "durably, in the abort's commit"
    );
    h.advance(Duration::from_secs(20));
    let s = h.service("db01");
    assert_eq!(members_on(&h, "db01"), vec![before.clone(), before.clone()], "{s:#?}");
    assert_eq!(h.followers("db01").len(), 1, "the follower is rebuilt on the old major: {s:#?}");
    assert_eq!(s.state, ServiceState::Available, "{s:#?}");
    assert!(h.succeeded("fence").is_empty(), "no cut-over");
    h.check_invariants();
}

/// The same when the move fails on its own (the new major's member
/// cannot be built): the rollout counts it failed and the service is
/// left whole on its old major.
#[test]
fn an_upgrade_that_fails_before_its_cut_over_leaves_the_service_whole_on_its_old_major() {
    let mut h = H::new(fast_config());
    h.create("db01", 1);
    h.advance(Duration::from_secs(3));
    let before = h.service("db01").image.clone();
    let v = rollout(upgrade(&mut h, "db01", "17"));
    h.world.failing_images.push(v.spec.to_image.clone());
    let done = settle(&mut h, v.id);
    assert_eq!(done.failed, 1, "{done:?}");
    let s = h.service("db01");
    assert_eq!(s.image, before, "the service's image is back on its primary's: {s:#?}");
    assert_eq!(s.upgraded_from, None);
    // A remedy that failed for good asks a person (as everywhere); once
    // resumed, the member that could not be built goes and the service
    // is whole on its old major.
    assert!(s.needs_human, "{s:#?}");
    h.command(Command::ResumeService { name: "db01".into() }).expect("resumed");
    h.advance(Duration::from_secs(20));
    let s = h.service("db01");
    assert_eq!(members_on(&h, "db01"), vec![before.clone(), before.clone()], "{s:#?}");
    assert_eq!(s.state, ServiceState::Available, "{s:#?}");
    assert!(h.succeeded("fence").is_empty(), "no cut-over");
    h.check_invariants();
}
