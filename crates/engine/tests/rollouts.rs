//! Rollouts in the pure engine: services moved onto an image by
//! replacement, in waves, with the health gate, the failure budget, and
//! kill -9 in the middle.

mod common;
use common::*;
use drover_engine::{Command, CommandError, Reply};
use drover_model::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn fleet(h: &mut H, n: usize, followers: u8) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("db{i:02}")).collect();
    for name in &names {
        h.create(name, followers);
    }
    h.advance(Duration::from_secs(3));
    for name in &names {
        assert_eq!(h.service(name).state, ServiceState::Available, "{name}");
    }
    names
}

fn spec(to: &ImageId, waves: Vec<u8>, soak: u64) -> RolloutSpec {
    RolloutSpec {
        to_image: to.clone(),
        selector: Selector { engine: Some(EngineKind::Postgres), ..Default::default() },
        waves,
        soak_seconds: soak,
        max_failures: 1,
        required_by: None,
    }
}

fn create(h: &mut H, spec: RolloutSpec) -> RolloutView {
    match h.command(Command::CreateRollout(spec)) {
        Ok(Reply::Rollout(v)) => *v,
        other => panic!("rollout not created: {other:?}"),
    }
}

fn view(h: &H, id: RolloutId) -> RolloutView {
    h.e.rollout_view(id, Timestamp(h.now)).expect("rollout exists")
}

/// Advances until the rollout is finished or paused, at most `limit`.
fn run_until_settled(h: &mut H, id: RolloutId, limit: Duration) -> RolloutView {
    let end = h.now + limit.as_micros() as i64;
    while h.now < end {
        h.advance(Duration::from_secs(1));
        let v = view(h, id);
        if v.state.is_finished() || v.state == RolloutState::Paused {
            return v;
        }
    }
    view(h, id)
}

fn all_on(h: &H, name: &str, image: &ImageId) -> bool {
    h.service(name).instances.iter().filter(|i| i.state.is_member()).all(|i| i.image == image.0)
}

#[test]
fn a_rollout_moves_every_service_by_replacement_in_waves_and_never_fails_over() {
    let mut h = H::new(fast_config());
    let names = fleet(&mut h, 10, 1);
    let urls_before: Vec<ServiceId> = names.iter().map(|n| h.service(n).id).collect();
    let to = register_newer_image(&mut h);
    let created = create(&mut h, spec(&to, vec![10, 50, 100], 5));
    assert_eq!((created.state, created.total, created.remaining), (RolloutState::Pending, 10, 10));
    let v = run_until_settled(&mut h, created.id, Duration::from_secs(600));
    assert_eq!(v.state, RolloutState::Succeeded, "{v:?}");
    assert_eq!((v.done, v.failed, v.remaining, v.eta_seconds), (10, 0, 0, Some(0)));
    for (name, id) in names.iter().zip(&urls_before) {
        let s = h.service(name);
        assert_eq!(s.id, *id, "the same service, not a new one");
        assert_eq!(s.state, ServiceState::Available, "{name}");
        assert_eq!(s.image, to.0, "{name}: replacements come from the new image");
        assert!(all_on(&h, name, &to), "{name}: {s:#?}");
        assert_eq!(s.instances.iter().filter(|i| i.state.is_member()).count(), 2, "{name}: back to its plan");
    }
    // Planned switchovers only: every fence graceful, one per service.
    let fences = h.succeeded("fence");
    assert_eq!(fences.len(), 10);
    assert!(fences.iter().all(|a| a.kind == ActionKind::Fence { immediate: false } && a.cause.contains("switchover")));
    assert_eq!(h.succeeded("promote").len(), 10);
    // Every new instance was built with the image's settings.
    for a in h.succeeded("provision").into_iter().filter(|a| a.created_at.0 > T0 + 3_000_000) {
        match a.kind.provision() {
            Some(drover_model::ProvisionSpec { image, settings, .. }) => {
                assert_eq!(image, &to);
                assert_eq!(settings.get("work_mem").map(String::as_str), Some("8MB"));
            }
            None => panic!("{:?}", a.kind),
        }
    }
    // Waves: no service of wave 2 started before wave 1 soaked, and so on.
    let members = h.e.rollout_members(created.id).unwrap();
    let first = &members[0];
    let gate = first.moved_at.unwrap().0 + 5_000_000;
    assert!(members[1..].iter().all(|m| m.started_at.unwrap().0 >= gate), "{members:#?}");
    let wave2_gate = members[1..5].iter().map(|m| m.moved_at.unwrap().0).max().unwrap() + 5_000_000;
    assert!(members[5..].iter().all(|m| m.started_at.unwrap().0 >= wave2_gate), "{members:#?}");
}

#[test]
fn a_service_without_followers_gets_one_for_the_switchover_and_ends_as_planned() {
    let mut h = H::new(fast_config());
    fleet(&mut h, 1, 0);
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![100], 2));
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(300));
    assert_eq!(v.state, RolloutState::Succeeded, "{v:?}");
    assert!(all_on(&h, "db00", &to));
    assert_eq!(h.service("db00").instances.iter().filter(|i| i.state.is_member()).count(), 1);
    assert_eq!(h.succeeded("fence").len(), 1);
}

#[test]
fn a_bad_image_fails_its_first_wave_pauses_the_rollout_and_pages_once() {
    let mut h = H::new(fast_config());
    let names = fleet(&mut h, 8, 1);
    let to = register_newer_image(&mut h);
    h.world.failing_images.push(to.clone());
    let r = create(&mut h, spec(&to, vec![25, 100], 5));
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(900));
    assert_eq!(v.state, RolloutState::Paused, "{v:?}");
    assert!(v.failed >= 1 && v.done == 0, "{v:?}");
    assert!(v.reason.as_deref().unwrap().contains("paused itself"));
    // Nothing of the second wave started; the paused rollout stays paused.
    h.advance(Duration::from_secs(120));
    let members = h.e.rollout_members(r.id).unwrap();
    assert!(members[2..].iter().all(|m| m.phase == MemberPhase::Waiting), "{members:#?}");
    let pauses = h.store.events.iter().filter(|e| matches!(e.kind, EventKind::RolloutPaused { .. })).count();
    assert_eq!(pauses, 1, "one page for the pause");
    // The services themselves still serve, on their old primary.
    for name in &names {
        assert!(h.service(name).instances.iter().any(|i| i.writable), "{name}");
    }
    assert_eq!(h.succeeded("fence").len(), 0, "no switchover onto a broken image");
}

#[test]
fn pause_resume_and_abort_by_a_person() {
    let mut h = H::new(fast_config());
    fleet(&mut h, 4, 1);
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![25, 100], 2));
    let paused = match h.command(Command::PauseRollout { id: r.id }) {
        Ok(Reply::Rollout(v)) => *v,
        other => panic!("{other:?}"),
    };
    assert_eq!(paused.state, RolloutState::Paused);
    h.advance(Duration::from_secs(60));
    assert_eq!(view(&h, r.id).done, 0, "a paused rollout starts nothing");
    h.command(Command::ResumeRollout { id: r.id }).unwrap();
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(600));
    assert_eq!(v.state, RolloutState::Succeeded, "{v:?}");
    assert!(matches!(h.command(Command::AbortRollout { id: r.id }), Err(CommandError::Conflict(_))));
    // A second rollout onto the same image selects nothing left to move.
    let again = create(&mut h, spec(&to, vec![100], 2));
    assert_eq!((again.state, again.total), (RolloutState::Succeeded, 0));
    let bogus = RolloutId::new_at(1, 1);
    assert!(matches!(h.command(Command::AbortRollout { id: bogus }), Err(CommandError::NotFound(_))));
}

#[test]
fn invalid_rollouts_are_refused() {
    let mut h = H::new(fast_config());
    fleet(&mut h, 1, 1);
    let to = register_newer_image(&mut h);
    for (waves, what) in [(vec![], "empty"), (vec![50, 10, 100], "decreasing"), (vec![50], "not ending at 100")] {
        assert!(
            matches!(h.command(Command::CreateRollout(spec(&to, waves, 1))), Err(CommandError::Invalid(_))),
            "{what}"
        );
    }
    let unknown = spec(&ImageId("sha256:nope".into()), vec![100], 1);
    assert!(matches!(h.command(Command::CreateRollout(unknown)), Err(CommandError::Invalid(_))));
    let mut redis = spec(&to, vec![100], 1);
    redis.selector.engine = Some(EngineKind::Redis);
    assert!(matches!(h.command(Command::CreateRollout(redis)), Err(CommandError::Invalid(_))));
    let mut names = spec(&to, vec![100], 1);
    names.selector.names = Some(vec!["nosuch".into()]);
    assert!(matches!(h.command(Command::CreateRollout(names)), Err(CommandError::Invalid(_))));
}

#[test]
fn kill_and_restart_in_the_middle_resumes_and_never_moves_a_service_twice() {
    let mut h = H::new(fast_config());
    let names = fleet(&mut h, 6, 1);
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![50, 100], 3));
    // A crash every 700 ms of engine time, at every phase of the moves.
    let mut crashes = 0;
    for _ in 0..400 {
        h.advance(Duration::from_millis(700));
        h.crash_and_restore();
        crashes += 1;
        if view(&h, r.id).state.is_finished() {
            break;
        }
    }
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(600));
    assert_eq!(v.state, RolloutState::Succeeded, "after {crashes} crashes: {v:?}");
    assert_eq!(v.done, 6);
    for name in &names {
        assert!(all_on(&h, name, &to), "{name}");
        assert_eq!(h.service(name).state, ServiceState::Available);
    }
    // Each service started moving once and was switched over once.
    let mut started: HashMap<String, usize> = HashMap::new();
    for e in &h.store.events {
        if e.cause.contains("moving onto image") {
            *started.entry(e.service.clone().unwrap()).or_default() += 1;
        }
    }
    assert!(names.iter().all(|n| started.get(n) == Some(&1)), "{started:?}");
    let mut fenced: HashMap<ServiceId, usize> = HashMap::new();
    for a in h.store.actions.values() {
        if a.kind.name() == "fence" && a.state == ActionState::Succeeded {
            *fenced.entry(a.service).or_default() += 1;
        }
    }
    assert_eq!(fenced.len(), 6);
    assert!(fenced.values().all(|&n| n == 1), "{fenced:?}");
    // The durable member records agree.
    let stored: Vec<&RolloutMember> = h.store.rollout_members.values().filter(|m| m.rollout == r.id).collect();
    assert_eq!(stored.len(), 6);
    assert!(stored.iter().all(|m| m.phase == MemberPhase::Done));
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn create_labeled(h: &mut H, name: &str, with: &[(&str, &str)]) {
    let req = CreateService {
        sync: Some(true),
        labels: (!with.is_empty()).then(|| labels(with)),
        ..request(name, EngineKind::Postgres, 1)
    };
    h.command(Command::CreateService(req)).expect("service created");
}

#[test]
fn a_label_selector_moves_only_the_services_carrying_every_label_and_labels_survive_restarts() {
    let mut h = H::new(fast_config());
    create_labeled(&mut h, "gold-eu", &[("tier", "gold"), ("region", "eu")]);
    create_labeled(&mut h, "gold-us", &[("tier", "gold"), ("region", "us")]);
    create_labeled(&mut h, "plain", &[]);
    create_labeled(&mut h, "later", &[]);
    h.advance(Duration::from_secs(3));
    // Labels set afterwards, through the engine: the whole map replaced.
    let set =
        h.command(Command::SetLabels { name: "later".into(), labels: labels(&[("region", "eu"), ("tier", "gold")]) });
    assert!(matches!(set, Ok(Reply::Service(ref v)) if v.labels == labels(&[("region", "eu"), ("tier", "gold")])));
    let bad = h.command(Command::SetLabels { name: "plain".into(), labels: labels(&[("tier", "gold plated")]) });
    assert!(matches!(bad, Err(CommandError::Invalid(ref m)) if m.contains("label value")), "{bad:?}");
    assert!(h.service("plain").labels.is_empty(), "a refused change changes nothing");
    // The labels are durable: a restart reads them back from the records.
    h.crash_and_restore();
    assert_eq!(h.service("gold-eu").labels, labels(&[("tier", "gold"), ("region", "eu")]));
    assert_eq!(h.service("later").labels, labels(&[("tier", "gold"), ("region", "eu")]));
    assert!(h.service("plain").labels.is_empty());
    h.advance(Duration::from_secs(3));

    let to = register_newer_image(&mut h);
    let mut s = spec(&to, vec![100], 2);
    s.selector.labels = Some(labels(&[("tier", "gold")]));
    s.selector.label = Some("region=eu".into());
    let r = create(&mut h, s);
    assert_eq!(r.total, 2, "gold-eu and later carry both labels: {r:?}");
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(300));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 2), "{v:?}");
    assert!(all_on(&h, "gold-eu", &to) && all_on(&h, "later", &to));
    for name in ["gold-us", "plain"] {
        assert!(h.service(name).instances.iter().all(|i| i.image != to.0), "{name} was not selected");
    }
    // Two values for one key can match nothing: refused, not silently empty.
    let mut clash = spec(&to, vec![100], 2);
    clash.selector.labels = Some(labels(&[("region", "us")]));
    clash.selector.label = Some("region=eu".into());
    assert!(matches!(h.command(Command::CreateRollout(clash)), Err(CommandError::Invalid(_))));
    let mut malformed = spec(&to, vec![100], 2);
    malformed.selector.label = Some("region".into());
    assert!(matches!(h.command(Command::CreateRollout(malformed)), Err(CommandError::Invalid(_))));
}

/// The `maintenance_scheduled` events of a service, in order.
fn announcements(h: &H, name: &str) -> Vec<(i64, RolloutId, Timestamp)> {
    h.store
        .events
        .iter()
        .filter(|e| e.service.as_deref() == Some(name))
        .filter_map(|e| match &e.kind {
            EventKind::MaintenanceScheduled { rollout, window_start } => {
                Some((e.at.0, rollout.parse().expect("a rollout id"), *window_start))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn owners_are_told_once_a_notice_ahead_of_the_window_or_at_once_when_it_is_sooner() {
    const MIN: i64 = 60_000_000;
    let config = drover_engine::Config { maintenance_notice: Duration::from_secs(120), ..fast_config() };
    let mut h = H::new(config);
    let names = fleet(&mut h, 3, 1);
    let (anytime, soon, late) = (&names[0], &names[1], &names[2]);
    // T0 is on a minute: windows of one minute at T0+1 min and T0+10 min.
    for (name, at) in [(soon, T0 + MIN), (late, T0 + 10 * MIN)] {
        let window = MaintenanceWindow::weekly_from(Timestamp(at), 1);
        h.command(Command::SetMaintenanceWindow { name: name.clone(), window: Some(window) }).expect("window set");
    }
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![100], 1));
    h.advance(Duration::from_secs(2));
    let created = r.created_at.0;
    // No window: told at once, the move starts at once. A window sooner
    // than the notice: told at once, with the window's start.
    let a = announcements(&h, anytime);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(a[0].0 - created <= 1_100_000 && a[0].2 .0 == a[0].0, "{a:?}");
    assert_eq!(announcements(&h, soon), vec![(a[0].0, r.id, Timestamp(T0 + MIN))]);
    assert!(announcements(&h, late).is_empty(), "8 minutes before its notice is due");
    let team = h.store.events.iter().find(|e| matches!(e.kind, EventKind::MaintenanceScheduled { .. })).unwrap();
    assert_eq!(team.team.as_deref(), Some("platform"), "the event names the owning team");

    // Crashes before and after the late one's notice: told once all the same.
    h.advance(Duration::from_secs(3 * 60));
    h.crash_and_restore();
    assert!(announcements(&h, late).is_empty());
    let due = T0 + 8 * MIN;
    while h.now < due + 2_000_000 {
        h.advance(Duration::from_secs(1));
        if h.now < due {
            assert!(announcements(&h, late).is_empty(), "told before the notice at {}", h.now - T0);
        }
    }
    let l = announcements(&h, late);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].0 >= due && l[0].0 <= due + 1_100_000,
        "told {} s after the notice was due",
        (l[0].0 - due) / 1_000_000
    );
    assert_eq!(l[0].2, Timestamp(T0 + 10 * MIN));
    h.crash_and_restore();
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(5 * 60));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 3), "{v:?}");
    // Once per service per rollout, never after its move started.
    let members = h.e.rollout_members(r.id).unwrap();
    for m in &members {
        let told = announcements(&h, &m.name);
        assert_eq!(told.len(), 1, "{}: {told:?}", m.name);
        assert!(told[0].0 <= m.started_at.unwrap().0, "{}: told after its move started", m.name);
        assert!(m.started_at.unwrap() >= told[0].2, "{}: moved before the announced window", m.name);
    }
    let stored: Vec<&RolloutMember> = h.store.rollout_members.values().filter(|m| m.rollout == r.id).collect();
    assert!(stored.iter().all(|m| m.announced_at.is_some()), "durable: {stored:#?}");
}

fn resize(h: &mut H, name: &str, image: &ImageId) -> Result<Reply, CommandError> {
    h.command(Command::ResizeService { name: name.into(), image: image.clone() })
}

/// Issue 17, item 3: a resize moves one service onto another image now (its
/// window a week away does not hold it back), by a planned switchover, and
/// nothing else; what cannot be resized is refused with nothing opened.
#[test]
fn a_resize_moves_one_service_now_by_replacement_and_refuses_what_it_cannot_do() {
    let mut h = H::new(fast_config());
    fleet(&mut h, 2, 1);
    // db00's window opens in six days: a rollout would wait for it, a resize does not.
    let window = MaintenanceWindow::weekly_from(Timestamp(h.now + 6 * 24 * 3_600_000_000), 1);
    h.command(Command::SetMaintenanceWindow { name: "db00".into(), window: Some(window) }).expect("window set");
    let to = register_newer_image(&mut h);

    assert!(matches!(resize(&mut h, "nosuch", &to), Err(CommandError::NotFound(_))));
    assert!(matches!(resize(&mut h, "db00", &ImageId("sha256:nope".into())), Err(CommandError::NotFound(_))));
    let redis = Image::new(EngineKind::Redis, "7.0-test", BTreeMap::new(), BTreeMap::new(), Timestamp(T0));
    let redis_id = redis.id.clone();
    h.command(Command::RegisterImage(redis)).expect("image registers");
    assert!(matches!(resize(&mut h, "db00", &redis_id), Err(CommandError::Conflict(m)) if m.contains("redis image")));
    assert!(h.e.rollout_views(Timestamp(h.now)).is_empty(), "a refusal opens no rollout");

    let v = match resize(&mut h, "db00", &to) {
        Ok(Reply::Rollout(v)) => *v,
        other => panic!("resize refused: {other:?}"),
    };
    assert_eq!((v.total, v.spec.waves.clone(), v.spec.soak_seconds), (1, vec![100], 0), "{v:?}");
    // Once its move started (the next tick), a second resize is refused.
    h.advance(Duration::from_secs(1));
    assert!(
        matches!(resize(&mut h, "db00", &to), Err(CommandError::Conflict(m)) if m.contains("is moving")),
        "one move at a time"
    );
    let done = run_until_settled(&mut h, v.id, Duration::from_secs(300));
    assert_eq!(done.state, RolloutState::Succeeded, "{done:?}");
    assert!(all_on(&h, "db00", &to), "{:#?}", h.service("db00"));
    assert!(!all_on(&h, "db01", &to), "only the service resized moves");
    assert_eq!(h.succeeded("fence").len(), 1);
    assert!(h.succeeded("fence").iter().all(|a| a.kind == ActionKind::Fence { immediate: false }), "a switchover");
    assert_eq!(h.service("db00").instances.iter().filter(|i| i.state.is_member()).count(), 2, "back to its plan");
    assert!(
        matches!(resize(&mut h, "db00", &to), Err(CommandError::Conflict(m)) if m.contains("already")),
        "nothing to do is a conflict, not a silent success"
    );
}

/// Issue 12: owners can move their service earlier by hand. A service a
/// rollout holds back until its window (a week away) is resized onto the
/// rollout's image: it starts moving now, in that rollout (counted there,
/// moved once), while the rest still wait; onto another image, or once
/// started, a resize is refused.
#[test]
fn an_owner_moves_a_waiting_service_ahead_of_its_window_inside_its_rollout() {
    let mut h = H::new(fast_config());
    let names = fleet(&mut h, 3, 1);
    let week_away = MaintenanceWindow::weekly_from(Timestamp(h.now + 6 * 24 * 3_600_000_000), 1);
    for name in &names {
        h.command(Command::SetMaintenanceWindow { name: name.clone(), window: Some(week_away.clone()) }).unwrap();
    }
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![100], 2));
    h.advance(Duration::from_secs(30));
    let v = view(&h, r.id);
    assert_eq!((v.state, v.moving, v.done), (RolloutState::Running, 0, 0), "held by the windows: {v:?}");

    let other = Image::new(EngineKind::Postgres, "15-other", BTreeMap::new(), BTreeMap::new(), Timestamp(T0));
    let other_id = other.id.clone();
    h.command(Command::RegisterImage(other)).unwrap();
    assert!(
        matches!(resize(&mut h, "db01", &other_id), Err(CommandError::Conflict(m)) if m.contains(&to.0)),
        "the rollout's image, not another"
    );

    let ahead = match resize(&mut h, "db01", &to) {
        Ok(Reply::Rollout(v)) => *v,
        other => panic!("moving ahead refused: {other:?}"),
    };
    assert_eq!((ahead.id, ahead.moving, ahead.total), (r.id, 1, 3), "in the same rollout: {ahead:?}");
    assert!(matches!(resize(&mut h, "db01", &to), Err(CommandError::Conflict(m)) if m.contains("is moving")));
    let end = h.now + 300_000_000;
    while h.now < end && view(&h, r.id).done < 1 {
        h.advance(Duration::from_secs(1));
    }
    let v = view(&h, r.id);
    assert_eq!((v.state, v.done, v.failed, v.remaining), (RolloutState::Running, 1, 0, 2), "{v:?}");
    assert!(all_on(&h, "db01", &to), "{:#?}", h.service("db01"));
    assert!(!all_on(&h, "db00", &to) && !all_on(&h, "db02", &to), "the others wait for their windows");
    assert_eq!(h.succeeded("fence").len(), 1, "one planned switchover");
    // Durable: after a crash db01 is done and is never moved again.
    h.crash_and_restore();
    h.advance(Duration::from_secs(60));
    let members = h.e.rollout_members(r.id).unwrap();
    let phases: Vec<(&str, MemberPhase)> = members.iter().map(|m| (m.name.as_str(), m.phase)).collect();
    assert!(phases.contains(&("db01", MemberPhase::Done)), "{phases:?}");
    assert_eq!(phases.iter().filter(|(_, p)| *p == MemberPhase::Waiting).count(), 2, "{phases:?}");
    assert_eq!(h.succeeded("fence").len(), 1);
    let started = h.store.events.iter().filter(|e| e.cause.contains("moving onto image")).count();
    assert_eq!(started, 1, "db01 started once");
}

/// Issue 12: new moves start within `rollout_zone_concurrency` per zone,
/// and the brake holds them: a freeze by hand (the break-glass brake) of
/// the fleet starts nothing until it is released, then the rollout ends.
#[test]
fn moves_stay_within_the_zone_limit_and_a_freeze_by_hand_holds_them_until_released() {
    let config = drover_engine::Config { rollout_zone_concurrency: 1, ..fast_config() };
    let zones = config.default_zones.len() as u64;
    let mut h = H::new(config);
    let names = fleet(&mut h, 9, 1);
    let to = register_newer_image(&mut h);

    h.command(Command::FreezeAutomation { scope: "fleet".into() }).expect("frozen");
    let r = create(&mut h, spec(&to, vec![100], 1));
    h.advance(Duration::from_secs(60));
    let v = view(&h, r.id);
    assert_eq!((v.moving, v.done), (0, 0), "frozen: nothing starts: {v:?}");
    assert_eq!(h.succeeded("provision").iter().filter(|a| a.created_at.0 > T0 + 3_000_000).count(), 0);
    h.command(Command::ReleaseAutomation { scope: "fleet".into() }).expect("released");

    let mut peak = 0;
    let end = h.now + 900_000_000;
    while h.now < end && !view(&h, r.id).state.is_finished() {
        h.advance(Duration::from_secs(1));
        let v = view(&h, r.id);
        assert!(v.moving <= zones, "{} moving at once over {zones} zones with a limit of 1: {v:?}", v.moving);
        peak = peak.max(v.moving);
    }
    let v = view(&h, r.id);
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 9), "{v:?}");
    assert!(peak >= 2, "zones move side by side (peak {peak})");
    assert!(names.iter().all(|n| all_on(&h, n, &to)));
}

/// Issue 12: "the service's checks are ok and no new page for a soak
/// time". With `rollout_gate_reports` the engine waits for the control
/// plane's word on each soaking service (its checks and pages live outside
/// the engine): without a report of all well made after the soak, no
/// service is done; a reported problem fails it, counts against the
/// wave's budget and pauses the rollout; a report about a service still
/// moving is ignored.
#[test]
fn with_gate_reports_a_soaked_service_waits_for_the_gates_word_and_a_problem_fails_it() {
    let config = drover_engine::Config { rollout_gate_reports: true, ..fast_config() };
    let mut h = H::new(config);
    let names = fleet(&mut h, 4, 1);
    let ids: Vec<ServiceId> = names.iter().map(|n| h.service(n).id).collect();
    let to = register_newer_image(&mut h);
    let mut s = spec(&to, vec![25, 100], 3);
    s.max_failures = 1;
    let r = create(&mut h, s);
    // Moving: a problem reported now is not the gate's (the move is not
    // over); the service keeps moving.
    h.advance(Duration::from_secs(1));
    let watched = h.e.gate_watch();
    assert_eq!(watched.len(), 1, "one service of the first wave: {watched:?}");
    assert!(!watched[0].soaking, "{watched:?}");
    let first = watched[0].service;
    h.step(drover_engine::Input::GateReport { service: first, problem: Some("early".into()) });
    // Moved and soaked, but no report: not done, the wave does not close.
    let end = h.now + 120_000_000;
    while h.now < end && !h.e.gate_watch().first().is_some_and(|w| w.soaking) {
        h.advance(Duration::from_secs(1));
    }
    assert!(h.e.gate_watch()[0].soaking, "moved within two minutes");
    // A report of all well made before the soak ended does not finish it.
    h.step(drover_engine::Input::GateReport { service: first, problem: None });
    h.advance(Duration::from_secs(10));
    let v = view(&h, r.id);
    assert_eq!((v.done, v.failed, v.moving), (0, 0, 1), "soaked but the gate said nothing since: {v:?}");
    // One made after it does.
    h.step(drover_engine::Input::GateReport { service: first, problem: None });
    h.advance(Duration::from_secs(1));
    let v = view(&h, r.id);
    assert_eq!((v.done, v.failed), (1, 0), "all well after the soak: done: {v:?}");
    // Wave 2: the three others. One gets a problem while it soaks.
    let end = h.now + 300_000_000;
    let mut failed_one = None;
    while h.now < end {
        h.advance(Duration::from_secs(1));
        for w in h.e.gate_watch() {
            if !w.soaking {
                continue;
            }
            let problem = (failed_one.is_none() || failed_one == Some(w.service))
                .then(|| "replication check crit since the move: follower not streaming".to_string());
            failed_one.get_or_insert(w.service);
            h.step(drover_engine::Input::GateReport { service: w.service, problem });
        }
        let v = view(&h, r.id);
        if v.state.is_finished() || v.state == RolloutState::Paused {
            break;
        }
    }
    let v = view(&h, r.id);
    let failed_one = failed_one.expect("a service of wave 2 soaked");
    assert_ne!(failed_one, first);
    assert_eq!(v.state, RolloutState::Paused, "one failure is the wave's budget: {v:?}");
    assert_eq!(v.failed, 1, "{v:?}");
    let members = h.e.rollout_members(r.id).unwrap();
    let m = members.iter().find(|m| m.service == failed_one).unwrap();
    assert_eq!(m.phase, MemberPhase::Failed);
    let detail = m.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("failed its health gate") && detail.contains("replication check crit"), "{detail}");
    assert!(ids.contains(&failed_one));
    // The service moved before its gate failed it: it is on the image and
    // whole (a failed gate pauses the rollout, it does not undo a move).
    let name = &m.name;
    assert_eq!(h.service(name).state, ServiceState::Available);
}

fn create_in(h: &mut H, name: &str, team: Option<&str>, zones: Option<&[&str]>) {
    let req = CreateService {
        sync: Some(true),
        team: team.map(str::to_string),
        zones: zones.map(|z| z.iter().map(|s| s.to_string()).collect()),
        ..request(name, EngineKind::Postgres, 1)
    };
    h.command(Command::CreateService(req)).expect("service created");
}

fn untouched(h: &H, name: &str, to: &ImageId) -> bool {
    h.service(name).instances.iter().all(|i| i.image != to.0)
}

/// Issue 12: a selector by team moves only that team's services; a selector
/// by image moves only the services on that image.
#[test]
fn a_team_selector_moves_only_that_team_and_an_image_selector_only_that_image() {
    let mut h = H::new(fast_config());
    create_in(&mut h, "pay-1", Some("payments"), None);
    create_in(&mut h, "pay-2", Some("payments"), None);
    create_in(&mut h, "plat-1", None, None);
    h.advance(Duration::from_secs(3));
    let old = h.service("plat-1").image;
    // A newer image: services created from now on are built from it.
    let mid = Image::new(EngineKind::Postgres, "15-mid", BTreeMap::new(), BTreeMap::new(), Timestamp(T0 + 1));
    let mid_id = mid.id.clone();
    h.command(Command::RegisterImage(mid)).expect("image registers");
    create_in(&mut h, "plat-mid", None, None);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.service("plat-mid").image, mid_id.0, "built from the newest image");
    assert_eq!(h.service("pay-1").image, old);

    let to = register_newer_image(&mut h);
    let mut by_team = spec(&to, vec![100], 1);
    by_team.selector.team = Some("payments".into());
    let r = create(&mut h, by_team);
    assert_eq!(r.total, 2, "{r:?}");
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(300));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 2), "{v:?}");
    assert!(all_on(&h, "pay-1", &to) && all_on(&h, "pay-2", &to));
    assert!(untouched(&h, "plat-1", &to) && untouched(&h, "plat-mid", &to), "another team's services stay");

    let mut by_image = spec(&to, vec![100], 1);
    by_image.selector.image = Some(mid_id.clone());
    let r = create(&mut h, by_image);
    assert_eq!(r.total, 1, "only plat-mid is on the mid image: {r:?}");
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(300));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 1), "{v:?}");
    assert!(all_on(&h, "plat-mid", &to));
    assert!(untouched(&h, "plat-1", &to), "a service on another image stays");
    assert_eq!(h.service("plat-1").image, old);
    // Both together: a team's services on an image; none here.
    let mut both = spec(&to, vec![100], 1);
    both.selector.team = Some("payments".into());
    both.selector.image = Some(ImageId(old.clone()));
    let r = h.command(Command::CreateRollout(both));
    assert!(
        matches!(&r, Ok(Reply::Rollout(v)) if v.total == 0) || matches!(&r, Err(CommandError::Invalid(_))),
        "payments has nothing left on the old image: {r:?}"
    );
}

/// Issue 12: a service without a window of its own is moved in its team's
/// default window (`Config::team_windows`, from oncall.toml's teams): it
/// waits outside it and starts inside it. A service's own window overrides
/// its team's; a team without a default window is moved at any time.
#[test]
fn a_team_default_window_holds_its_services_and_a_services_own_window_overrides_it() {
    const MIN: i64 = 60_000_000;
    let mut config = fast_config();
    // T0 is on a minute: the team's window opens ten minutes on, for two.
    config.team_windows.insert("payments".into(), MaintenanceWindow::weekly_from(Timestamp(T0 + 10 * MIN), 2));
    let mut h = H::new(config);
    create_in(&mut h, "team-window", Some("payments"), None);
    create_in(&mut h, "own-window", Some("payments"), None);
    create_in(&mut h, "no-window", None, None);
    h.advance(Duration::from_secs(3));
    let own = MaintenanceWindow::weekly_from(Timestamp(T0 + 3 * MIN), 2);
    h.command(Command::SetMaintenanceWindow { name: "own-window".into(), window: Some(own) }).expect("window set");
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![100], 1));
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(20 * 60));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 3), "{v:?}");
    let started: HashMap<String, i64> =
        h.e.rollout_members(r.id).unwrap().iter().map(|m| (m.name.clone(), m.started_at.unwrap().0)).collect();
    let at = |name: &str| started[name] - T0;
    assert!(at("no-window") < MIN, "no window: moved at once ({} s)", at("no-window") / 1_000_000);
    assert!(
        (3 * MIN..5 * MIN).contains(&at("own-window")),
        "its own window (3 min), not its team's: started at {} s",
        at("own-window") / 1_000_000
    );
    assert!(
        (10 * MIN..12 * MIN).contains(&at("team-window")),
        "its team's window (10 min): started at {} s",
        at("team-window") / 1_000_000
    );
    assert!(all_on(&h, "team-window", &to) && all_on(&h, "own-window", &to));
}

/// Issue 12: a freeze by hand of one zone holds the rollout's moves and the
/// automatic remedies there only: the services of another zone move, and a
/// crashed primary in another zone is failed over, while the frozen zone's
/// services wait until it is released.
#[test]
fn a_zone_freeze_holds_moves_and_remedies_in_that_zone_only() {
    let mut h = H::new(fast_config());
    for (name, zone) in [("a-1", "zone-a"), ("a-2", "zone-a"), ("b-1", "zone-b"), ("b-2", "zone-b")] {
        create_in(&mut h, name, None, Some(&[zone]));
    }
    h.advance(Duration::from_secs(3));
    for name in ["a-1", "a-2"] {
        assert!(h.service(name).instances.iter().all(|i| i.zone == "zone-a"), "{:#?}", h.service(name));
    }
    h.command(Command::FreezeAutomation { scope: "zone-a".into() }).expect("frozen");
    let to = register_newer_image(&mut h);
    let r = create(&mut h, spec(&to, vec![100], 1));
    let end = h.now + 300_000_000;
    while h.now < end && view(&h, r.id).done < 2 {
        h.advance(Duration::from_secs(1));
    }
    h.advance(Duration::from_secs(30));
    let v = view(&h, r.id);
    assert_eq!((v.state, v.done, v.moving), (RolloutState::Running, 2, 0), "zone-a waits: {v:?}");
    assert!(all_on(&h, "b-1", &to) && all_on(&h, "b-2", &to));
    assert!(untouched(&h, "a-1", &to) && untouched(&h, "a-2", &to), "frozen zone: nothing built");

    // Remedies: a crashed primary in zone-b is failed over, in zone-a not.
    let (pa, pb) = (h.primary("a-1").id, h.primary("b-1").id);
    h.chaos(pa, Fault::Crash);
    h.chaos(pb, Fault::Crash);
    h.advance(Duration::from_secs(90));
    assert_ne!(h.primary("b-1").id, pb, "zone-b heals: {:#?}", h.service("b-1"));
    let a1 = h.service("a-1");
    assert!(!a1.instances.iter().any(|i| i.writable && i.id != pa), "zone-a frozen: no promotion: {a1:#?}");

    h.command(Command::ReleaseAutomation { scope: "zone-a".into() }).expect("released");
    let v = run_until_settled(&mut h, r.id, Duration::from_secs(600));
    assert_eq!((v.state, v.done), (RolloutState::Succeeded, 4), "{v:?}");
    assert!(all_on(&h, "a-1", &to) && all_on(&h, "a-2", &to));
}
