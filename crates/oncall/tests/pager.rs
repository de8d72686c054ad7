//! The pure pager with a controlled clock: escalation through every level,
//! business hours, dedup, grouping, flapping, acknowledgements, restarts.

use drover_model::Timestamp;
use drover_oncall::config::Config;
use drover_oncall::pager::{human, Alert, AlertAction, Input, NotifyReason, Outputs, PageStatus, Pager, Recipient};
use drover_oncall::PageId;
use std::time::Duration;

mod common;
use common::TEAM_TOML;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Saturday 03:00 in Berlin: sleep hours, not business hours.
fn night() -> Timestamp {
    at("2026-03-07T02:00:00Z")
}

/// Tuesday 11:00 in Berlin (CET, UTC+1): business hours.
fn day() -> Timestamp {
    at("2026-03-03T10:00:00Z")
}

fn pager() -> Pager {
    Pager::new(Config::from_toml(TEAM_TOML).unwrap(), 7)
}

fn trigger(p: &mut Pager, key: &str, now: Timestamp) -> (PageId, Outputs) {
    let out = p.step(Input::Alert(Alert::trigger(key, format!("{key} is down"))), now);
    let id = match out.reply.as_ref().unwrap().as_ref().unwrap() {
        drover_oncall::Reply::Alert(o) => o.page.unwrap(),
        other => panic!("unexpected reply {other:?}"),
    };
    (id, out)
}

fn people(out: &Outputs) -> Vec<String> {
    out.notifications
        .iter()
        .filter_map(|n| match &n.recipient {
            Recipient::Person { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// Ticks at `now` and returns the outputs.
fn tick(p: &mut Pager, now: Timestamp) -> Outputs {
    p.step(Input::Tick, now)
}

#[test]
fn the_default_config_has_one_team_and_the_five_level_policy() {
    let c = Config::default();
    assert_eq!(c.default_team, "platform");
    assert_eq!(c.teams.len(), 1);
    let labels: Vec<String> = c.teams[0].escalation.iter().map(|s| s.target.label()).collect();
    assert_eq!(labels, ["bot", "level1", "level2", "manager", "incident_commander"]);
}

#[test]
fn an_unacknowledged_page_escalates_through_every_level_at_night() {
    let mut p = pager();
    let t0 = night();
    let (id, out) = trigger(&mut p, "db1-down", t0);
    assert!(people(&out).is_empty(), "the bot tier goes first");
    assert!(out.notifications.is_empty(), "off hours the bot does not post to chat");
    let page = p.page(id).unwrap();
    assert_eq!((page.level, page.level_name.as_str()), (0, "bot"));
    assert_eq!(page.next_at, Some(t0.plus(mins(3))), "off hours the bot waits 3 minutes");

    assert_eq!(tick(&mut p, t0.plus(mins(3))).notifications.len(), 1);
    let page = p.page(id).unwrap().clone();
    assert_eq!((page.level, page.level_name.as_str(), page.notified.clone()), (1, "level1", vec!["alice".to_string()]));

    // Nothing happens before the timeout.
    assert!(tick(&mut p, t0.plus(mins(17))).is_empty());
    let out = tick(&mut p, t0.plus(mins(18)));
    assert_eq!(people(&out), ["bob"], "level 2");
    let out = tick(&mut p, t0.plus(mins(33)));
    assert_eq!(people(&out), ["carol"], "level 3: the manager");
    let out = tick(&mut p, t0.plus(mins(48)));
    assert_eq!(people(&out), ["dave"], "the incident commander");
    assert_eq!(p.page(id).unwrap().level_name, "incident_commander");
    let out = tick(&mut p, t0.plus(mins(63)));
    assert_eq!(people(&out), ["dave"], "the last level is paged again");
    assert_eq!(out.notifications[0].reason, NotifyReason::Repeat);
    let page = p.page(id).unwrap();
    assert_eq!(page.notified, ["alice", "bob", "carol", "dave"]);
    assert_eq!(page.status, PageStatus::Triggered);

    // The transitions tell the story, each with its cause.
    let mut q = pager();
    let (_, first) = trigger(&mut q, "x", t0);
    let mut all = first.transitions;
    for m in [3, 18, 33, 48] {
        all.extend(tick(&mut q, t0.plus(mins(m))).transitions);
    }
    let tos: Vec<&str> = all.iter().map(|t| t.to.as_str()).collect();
    assert_eq!(
        tos,
        ["triggered", "level 1 (level1)", "level 2 (level2)", "level 3 (manager)", "level 4 (incident_commander)"]
    );
    assert!(all[1].cause.contains("not acknowledged at bot"), "{}", all[1].cause);
}

#[test]
fn in_business_hours_the_bot_posts_to_chat_where_anyone_may_acknowledge_and_waits_longer() {
    let mut p = pager();
    let t0 = day();
    let (id, out) = trigger(&mut p, "db1-down", t0);
    assert_eq!(out.notifications.len(), 1);
    let n = &out.notifications[0];
    assert_eq!(n.reason, NotifyReason::Chat);
    assert!(
        matches!(&n.recipient, Recipient::TeamChat { team, contacts } if team == "db" && contacts[0].address == "http://chat.example/db")
    );
    assert!(n.text.contains("anyone may acknowledge"));
    assert!(p.page(id).unwrap().business_hours);
    assert_eq!(p.page(id).unwrap().next_at, Some(t0.plus(mins(15))));
    assert!(tick(&mut p, t0.plus(mins(14))).is_empty());

    // Someone in chat takes it: no one is paged.
    let out = p.step(Input::Acknowledge { page: id, by: "erin".into() }, t0.plus(mins(5)));
    assert!(out.reply.unwrap().is_ok());
    assert!(people(&tick(&mut p, t0.plus(mins(20)))).is_empty());
    assert!(p.page(id).unwrap().notified.is_empty());
}

#[test]
fn an_alert_that_resolves_before_the_bot_tiers_wait_never_reaches_a_person() {
    let mut p = pager();
    let t0 = night();
    let (id, _) = trigger(&mut p, "blip", t0);
    let out = p.step(Input::Alert(Alert::resolve("blip")), t0.plus(Duration::from_secs(100)));
    assert!(out.feed.iter().any(|f| f.text.contains("handled by the bot tier alone")), "{:?}", out.feed);
    let page = out.pages.last().unwrap();
    assert_eq!((page.id, page.status), (id, PageStatus::Resolved));
    assert!(page.bot_only());
    assert!(tick(&mut p, t0.plus(mins(60))).is_empty(), "no timer survives the resolve");
    assert!(p.page(id).is_none());
}

#[test]
fn repeats_of_a_key_deduplicate_into_one_page() {
    let mut p = pager();
    let t0 = night();
    let (id, _) = trigger(&mut p, "k", t0);
    for i in 1..=50 {
        let (again, out) = trigger(&mut p, "k", t0.plus(Duration::from_secs(i)));
        assert_eq!(again, id);
        assert!(out.notifications.is_empty() && out.transitions.is_empty());
    }
    assert_eq!(p.open_pages().count(), 1);
    assert_eq!(p.page(id).unwrap().alerts, 51);
    // After it resolves, the same key opens a new page.
    p.step(Input::Alert(Alert::resolve("k")), t0.plus(mins(1)));
    let (new, _) = trigger(&mut p, "k", t0.plus(mins(2)));
    assert_ne!(new, id);
}

#[test]
fn alerts_of_one_service_and_team_group_into_one_page_until_all_resolve() {
    let mut p = pager();
    let t0 = night();
    let alert =
        |key: &str| Alert { service: Some("orders-db".into()), team: Some("db".into()), ..Alert::trigger(key, key) };
    let out = p.step(Input::Alert(alert("disk")), t0);
    let id = out.pages[0].id;
    let out = p.step(Input::Alert(alert("lag")), t0.plus(Duration::from_secs(5)));
    assert_eq!(out.pages[0].id, id, "joined, not a new page");
    // Another service is its own page.
    let other = p.step(Input::Alert(Alert { service: Some("users-db".into()), ..alert("cpu") }), t0);
    assert_ne!(other.pages[0].id, id);
    // An unknown team routes to the default team, and the feed says so.
    let lost = p.step(Input::Alert(Alert { team: Some("nobody-knows".into()), ..Alert::trigger("mem", "mem") }), t0);
    assert_eq!(lost.pages[0].team, "db");
    assert!(lost.feed.iter().any(|f| f.text.contains("not configured; routed to db")));

    p.step(Input::Alert(Alert::resolve("disk")), t0.plus(mins(1)));
    assert_eq!(p.page(id).unwrap().status, PageStatus::Triggered, "lag still fires");
    let out = p.step(Input::Alert(Alert::resolve("lag")), t0.plus(mins(2)));
    assert_eq!(out.pages.last().unwrap().status, PageStatus::Resolved);
}

#[test]
fn a_flapping_alert_is_held_in_the_bot_tier_and_summarised_not_paged() {
    let mut p = pager();
    let mut now = night();
    let step = Duration::from_secs(60);
    // Opens 1 and 2: ordinary pages that resolve within the bot's wait.
    for _ in 0..2 {
        let (_, out) = trigger(&mut p, "flappy", now);
        assert!(!out.pages[0].flapping);
        now = now.plus(step);
        p.step(Input::Alert(Alert::resolve("flappy")), now);
        now = now.plus(step);
    }
    // Open 3 within the hour: flapping, held.
    let (held, out) = trigger(&mut p, "flappy", now);
    assert!(out.pages[0].flapping);
    assert!(out.feed.iter().any(|f| f.text.contains("is flapping: opened 3 times")), "{:?}", out.feed);
    assert_eq!(p.page(held).unwrap().next_at, None, "held: no escalation timer");
    // It keeps flapping for two hours: same page, nobody paged.
    let mut notified = 0;
    for _ in 0..60 {
        now = now.plus(step);
        let out = p.step(Input::Alert(Alert::resolve("flappy")), now);
        notified += people(&out).len();
        notified += people(&tick(&mut p, now)).len();
        now = now.plus(step);
        let (again, out) = trigger(&mut p, "flappy", now);
        assert_eq!(again, held);
        notified += people(&out).len();
    }
    assert_eq!(notified, 0);
    assert_eq!(p.page(held).unwrap().flaps, 60);
    // It settles: after the quiet period the page resolves with a summary.
    now = now.plus(step);
    p.step(Input::Alert(Alert::resolve("flappy")), now);
    assert!(tick(&mut p, now.plus(mins(14))).is_empty());
    let out = tick(&mut p, now.plus(mins(15)));
    let page = out.pages.last().unwrap();
    assert_eq!((page.id, page.status), (held, PageStatus::Resolved));
    assert!(page.bot_only());
    let summary = &out.feed.last().unwrap().text;
    assert!(
        summary.contains("flapping page")
            && summary.contains("reopened 60 times")
            && summary.contains("nobody was paged"),
        "{summary}"
    );
}

#[test]
fn slow_repeats_outside_the_window_are_not_flapping() {
    let mut p = pager();
    let mut now = night();
    for _ in 0..5 {
        let (_, out) = trigger(&mut p, "hourly", now);
        assert!(!out.pages[0].flapping);
        p.step(Input::Alert(Alert::resolve("hourly")), now.plus(Duration::from_secs(30)));
        now = now.plus(mins(31));
    }
}

#[test]
fn an_acknowledged_page_stops_escalating_and_is_renotified_when_it_stays_open() {
    let mut p = pager();
    let t0 = night();
    let (id, _) = trigger(&mut p, "k", t0);
    tick(&mut p, t0.plus(mins(3)));
    let out = p.step(Input::Acknowledge { page: id, by: "alice".into() }, t0.plus(mins(4)));
    let page = out.pages[0].clone();
    assert_eq!((page.status, page.acknowledged_by.as_deref()), (PageStatus::Acknowledged, Some("alice")));
    assert_eq!(out.transitions[0].to, "acknowledged");
    // No escalation to level 2 at minute 18.
    assert!(people(&tick(&mut p, t0.plus(mins(30)))).is_empty());
    // An hour after the ack: alice hears about it again.
    let out = tick(&mut p, t0.plus(mins(64)));
    assert_eq!(people(&out), ["alice"]);
    assert_eq!(out.notifications[0].reason, NotifyReason::Renotify);
    assert_eq!(p.page(id).unwrap().renotified, 1);
    let out = tick(&mut p, t0.plus(mins(124)));
    assert_eq!(people(&out), ["alice"]);
    // Acknowledging again is harmless; resolving ends it.
    assert!(p.step(Input::Acknowledge { page: id, by: "bob".into() }, t0.plus(mins(125))).reply.unwrap().is_ok());
    let out = p.step(Input::Resolve { page: id, by: "alice".into() }, t0.plus(mins(130)));
    assert_eq!(out.pages[0].status, PageStatus::Resolved);
    assert!(p.step(Input::Resolve { page: id, by: "alice".into() }, t0.plus(mins(131))).reply.unwrap().is_err());
    assert!(tick(&mut p, t0.plus(mins(500))).is_empty());
}

#[test]
fn acknowledge_and_resolve_events_act_on_the_page_of_their_key() {
    let mut p = pager();
    let t0 = night();
    let (id, _) = trigger(&mut p, "k", t0);
    let out = p.step(Input::Alert(Alert::trigger("k", "").with_action(AlertAction::Acknowledge)), t0.plus(mins(1)));
    assert_eq!(out.pages[0].status, PageStatus::Acknowledged);
    let out = p.step(Input::Alert(Alert::trigger("nope", "").with_action(AlertAction::Acknowledge)), t0.plus(mins(1)));
    assert!(out.is_empty());
    p.step(Input::Alert(Alert::resolve("k")), t0.plus(mins(2)));
    assert!(p.page(id).is_none());
}

#[test]
fn a_level_with_nobody_on_call_is_skipped_and_said_so() {
    let toml = TEAM_TOML.replace("manager = \"carol\"\n", "");
    let mut p = Pager::new(Config::from_toml(&toml).unwrap(), 1);
    let t0 = night();
    let (id, _) = trigger(&mut p, "k", t0);
    tick(&mut p, t0.plus(mins(3)));
    tick(&mut p, t0.plus(mins(18)));
    let out = tick(&mut p, t0.plus(mins(33)));
    assert_eq!(people(&out), ["dave"], "no manager: straight to the incident commander");
    assert!(out.feed.iter().any(|f| f.text.contains("no manager configured; skipping manager")));
    assert_eq!(p.page(id).unwrap().level, 4);
}

#[test]
fn schedules_follow_handoffs_in_the_team_zone_and_overrides_win() {
    let c = Config::from_toml(TEAM_TOML).unwrap();
    let s = c.teams[0].schedule("level1").unwrap();
    // Handoff Monday 10:00 Berlin = 09:00Z in winter.
    assert_eq!(s.on_call(at("2026-03-02T08:59:59Z")), Some("bob"));
    assert_eq!(s.on_call(at("2026-03-02T09:00:00Z")), Some("alice"));
    // After the switch to summer time (29 March), 10:00 Berlin = 08:00Z.
    assert_eq!(s.on_call(at("2026-03-30T07:59:59Z")), Some("bob"));
    assert_eq!(s.on_call(at("2026-03-30T08:00:00Z")), Some("alice"));
    assert_eq!(s.next_handoff(at("2026-03-30T07:00:00Z")), Some(at("2026-03-30T08:00:00Z")));
    // Before the first handoff the rotation runs backwards consistently.
    assert_eq!(s.on_call(at("2026-01-01T00:00:00Z")), Some("bob"));

    let with_override = TEAM_TOML.replace(
        "name = \"level1\"\nrotation = [\"alice\", \"bob\"]\nhandoff = \"2026-01-05T10:00:00\"\nshift = \"1w\"\n",
        "name = \"level1\"\nrotation = [\"alice\", \"bob\"]\nhandoff = \"2026-01-05T10:00:00\"\nshift = \"1w\"\n\
         overrides = [{ person = \"carol\", start = \"2026-03-07T00:00:00Z\", end = \"2026-03-08T00:00:00Z\" }]\n",
    );
    let c = Config::from_toml(&with_override).unwrap();
    let s = c.teams[0].schedule("level1").unwrap();
    assert_eq!(s.on_call(at("2026-03-07T02:00:00Z")), Some("carol"));
    assert_eq!(s.on_call(at("2026-03-08T00:00:00Z")), Some("alice"));
    let mut p = Pager::new(c, 3);
    let (_, _) = trigger(&mut p, "k", night());
    assert_eq!(people(&tick(&mut p, night().plus(mins(3)))), ["carol"], "the override is paged");
}

#[test]
fn configuration_errors_say_what_to_fix() {
    let bad_zone = TEAM_TOML.replace("Europe/Berlin", "Mars/Olympus");
    assert!(Config::from_toml(&bad_zone).unwrap_err().to_string().contains("unknown time zone"));
    let bad_person = TEAM_TOML.replace("rotation = [\"alice\", \"bob\"]", "rotation = [\"zed\"]");
    assert!(Config::from_toml(&bad_person).unwrap_err().to_string().contains("\"zed\", who is not in"));
    let bad_target = format!("{TEAM_TOML}\n[[teams.escalation]]\ntarget = \"pigeon\"\ntimeout = \"5m\"\n");
    assert!(Config::from_toml(&bad_target).unwrap_err().to_string().contains("unknown escalation target"));
    let bad_duration = format!("{TEAM_TOML}\n[[teams.escalation]]\ntarget = \"bot\"\ntimeout = \"soon\"\n");
    assert!(Config::from_toml(&bad_duration).unwrap_err().to_string().contains("not a duration"));
    assert!(Config::from_toml("teams = []").is_err());
}

#[test]
fn a_restored_pager_keeps_escalating_where_it_left_off() {
    let mut p = pager();
    let t0 = night();
    let (id, _) = trigger(&mut p, "k", t0);
    tick(&mut p, t0.plus(mins(3)));
    let (flappy, _) = trigger(&mut p, "other", t0);
    let open: Vec<_> = p.open_pages().cloned().collect();
    let mut q = Pager::restore(Config::from_toml(TEAM_TOML).unwrap(), 8, open.clone(), &open);
    assert_eq!(q.page(id).unwrap().level, 1);
    let mut paged = people(&tick(&mut q, t0.plus(mins(18))));
    paged.sort();
    assert_eq!(paged, ["alice", "bob"], "k goes on to level 2 (bob), other to level 1 (alice)");
    // Dedup still works after the restart.
    let (again, _) = trigger(&mut q, "other", t0.plus(mins(19)));
    assert_eq!(again, flappy);
}

#[test]
fn a_custom_policy_with_a_person_step_and_business_hours_timeout() {
    let toml = format!(
        "{TEAM_TOML}\n[[teams.escalation]]\ntarget = \"bot\"\ntimeout = \"1m\"\nbusiness_hours_timeout = \"10m\"\n\
         [[teams.escalation]]\ntarget = \"person:bob\"\ntimeout = \"5m\"\n"
    );
    let mut p = Pager::new(Config::from_toml(&toml).unwrap(), 1);
    let (id, _) = trigger(&mut p, "k", night());
    assert_eq!(p.page(id).unwrap().next_at, Some(night().plus(mins(1))));
    assert_eq!(people(&tick(&mut p, night().plus(mins(1)))), ["bob"]);
    let (id, _) = trigger(&mut p, "k2", day());
    assert_eq!(p.page(id).unwrap().next_at, Some(day().plus(mins(10))));
    assert_eq!(human(mins(75)), "1h 15m");
}

#[test]
fn engine_alerts_of_one_kind_and_team_are_one_incident_until_all_resolve() {
    use drover_model::{Event, EventKind, EventSubject};
    let mut p = Pager::new(Config::default(), 3);
    let now = Timestamp(1_798_761_600_000_000);
    let event = |service: &str, kind: EventKind, to: Option<&str>| Event {
        id: Default::default(),
        seq: 0,
        at: now,
        subject: EventSubject::Service,
        service: Some(service.into()),
        service_id: None,
        instance: None,
        action: None,
        from: None,
        to: to.map(str::to_string),
        cause: "prose".into(),
        kind,
        team: Some("platform".into()),
    };
    let mut pages = std::collections::BTreeSet::new();
    for s in ["db1", "db2", "db3"] {
        let alert = drover_oncall::engine::to_alert(&event(s, EventKind::NeedsHuman, None), None).unwrap();
        let out = p.step(Input::Alert(alert), now);
        pages.extend(out.pages.iter().map(|x| x.id));
    }
    assert_eq!(pages.len(), 1, "three services needing a human at once are one incident");
    for (i, s) in ["db1", "db2", "db3"].iter().enumerate() {
        let clear = drover_oncall::engine::to_alert(&event(s, EventKind::Transition, Some("available")), None).unwrap();
        p.step(Input::Alert(clear), now);
        assert_eq!(p.open_pages().count(), usize::from(i < 2), "open until every service is clear");
    }
}

#[test]
fn what_no_remedy_handles_skips_the_bot_tier_and_the_rest_waits_for_it() {
    use drover_model::{Event, EventKind, EventSubject};
    let now = Timestamp(1_798_761_600_000_000);
    let event = |kind: EventKind, subject: EventSubject, service: Option<&str>| Event {
        id: Default::default(),
        seq: 0,
        at: now,
        subject,
        service: service.map(str::to_string),
        service_id: None,
        instance: None,
        action: None,
        from: None,
        to: None,
        cause: "prose".into(),
        kind,
        team: Some("platform".into()),
    };
    let people =
        |out: &Outputs| out.notifications.iter().filter(|n| matches!(n.recipient, Recipient::Person { .. })).count();
    for (kind, subject, service, at_once) in [
        (EventKind::NeedsHuman, EventSubject::Service, Some("db1"), true),
        (EventKind::BrakeEngaged { scope: "zone-a".into() }, EventSubject::Fleet, None, true),
        (EventKind::RestoreTestFailed, EventSubject::Service, Some("db2"), false),
    ] {
        let mut p = Pager::new(Config::default(), 5);
        let alert = drover_oncall::engine::to_alert(&event(kind.clone(), subject, service), None).unwrap();
        assert_eq!(alert.needs_person(), at_once, "{kind:?}");
        let out = p.step(Input::Alert(alert), now);
        assert_eq!(people(&out) > 0, at_once, "{kind:?}: {:?}", out.notifications);
    }
}

#[test]
fn trouble_that_comes_back_within_the_regroup_window_reopens_its_incident() {
    let toml = format!("regroup_within = \"2h\"\n{}", drover_oncall::config::DEFAULT_TOML);
    let mut p = Pager::new(Config::from_toml(&toml).unwrap(), 5);
    let t0 = Timestamp(1_798_761_600_000_000);
    let alert = |key: &str| Alert { group: Some("engine".into()), ..Alert::trigger(key, "x") };
    let first = p.step(Input::Alert(alert("a")), t0).pages[0].id;
    p.step(Input::Alert(Alert::resolve("a")), t0.plus(Duration::from_secs(60)));
    assert_eq!(p.open_pages().count(), 0);
    let again = p.step(Input::Alert(alert("b")), t0.plus(Duration::from_secs(3600)));
    assert_eq!(again.pages[0].id, first, "one incident, reopened");
    p.step(Input::Alert(Alert::resolve("b")), t0.plus(Duration::from_secs(3700)));
    let later = p.step(Input::Alert(alert("c")), t0.plus(Duration::from_secs(4 * 3600)));
    assert_ne!(later.pages[0].id, first, "past the window: a new incident");
}

#[test]
fn an_announcement_goes_to_the_team_chat_and_the_feed_and_opens_no_page() {
    use drover_model::{Event, EventKind, EventSubject};
    let mut p = pager();
    let event = Event {
        id: Default::default(),
        seq: 9,
        at: night(),
        subject: EventSubject::Service,
        service: Some("db1".into()),
        service_id: None,
        instance: None,
        action: None,
        from: None,
        to: None,
        cause: "prose".into(),
        kind: EventKind::MaintenanceScheduled { rollout: "r1".into(), window_start: day() },
        team: Some("db".into()),
    };
    assert!(drover_oncall::engine::is_announcement(&event) && !drover_oncall::engine::is_relevant(&event));
    assert!(drover_oncall::engine::to_alert(&event, None).is_none(), "never a page");
    let a = drover_oncall::engine::to_announcement(&event).expect("an announcement");
    assert!(a.text.contains("db1") && a.text.contains("r1") && a.text.contains("2026-03-03T10:00:00Z"), "{}", a.text);
    let out = p.step(Input::Announce(a), night());
    assert!(out.pages.is_empty() && out.transitions.is_empty() && p.open_pages().next().is_none());
    assert_eq!(out.notifications.len(), 1);
    let n = &out.notifications[0];
    assert_eq!((n.reason, n.page), (NotifyReason::Announce, None));
    assert!(
        matches!(&n.recipient, Recipient::TeamChat { team, contacts } if team == "db" && contacts[0].address == "http://chat.example/db")
    );
    assert_eq!((out.feed.len(), out.feed[0].team.as_deref()), (1, Some("db")));
    assert!(p.next_deadline().is_none(), "nothing to escalate");
}

#[test]
fn a_declared_incident_pages_the_incident_commander_at_once_and_again_until_acknowledged() {
    let mut p = pager();
    let now = day();
    let alert = Alert::incident_commander(
        "0190a3e4-0000-7000-8000-000000000001",
        "Zone b lost",
        drover_oncall::Severity::Critical,
        Some("db".into()),
        "alice",
    );
    let out = p.step(Input::Alert(alert.clone()), now);
    let id = match out.reply.as_ref().unwrap().as_ref().unwrap() {
        drover_oncall::Reply::Alert(o) => o.page.unwrap(),
        other => panic!("unexpected reply {other:?}"),
    };
    // Straight to the commander: no bot tier, no team level, in business hours too.
    assert_eq!(people(&out), vec!["dave".to_string()]);
    assert_eq!(out.notifications[0].reason, NotifyReason::Page);
    let page = out.pages.last().unwrap();
    assert!(page.for_commander());
    assert_eq!((page.level, page.level_name.as_str(), page.status), (4, "incident_commander", PageStatus::Triggered));
    assert_eq!(page.notified, vec!["dave".to_string()]);
    assert!(out.feed.iter().any(|f| f.text.contains("incident commander dave paged")), "{:?}", out.feed);
    // Declaring it twice (a retried request) is one page.
    let again = p.step(Input::Alert(alert), now);
    assert!(people(&again).is_empty());
    // Unacknowledged: the commander again, never the team's people.
    assert!(people(&tick(&mut p, now.plus(mins(14)))).is_empty());
    let repeat = tick(&mut p, now.plus(mins(15)));
    assert_eq!(people(&repeat), vec!["dave".to_string()]);
    assert_eq!(repeat.notifications[0].reason, NotifyReason::Repeat);
    // Acknowledged like any page: no more repeats until the re-notification.
    let ack = p.step(Input::Acknowledge { page: id, by: "dave".into() }, now.plus(mins(16)));
    assert_eq!(ack.pages.last().unwrap().status, PageStatus::Acknowledged);
    assert!(people(&tick(&mut p, now.plus(mins(40)))).is_empty());
}
