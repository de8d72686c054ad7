//! Pager metrics against a hand-computed history; alerts from Alertmanager,
//! the Events API v2 and the engine; a property of the whole pager.

use drover_model::{Event, EventKind, EventSubject, Timestamp};
use drover_oncall::config::Config;
use drover_oncall::integrations::{self, AlertmanagerPayload, EventV2};
use drover_oncall::metrics::{svg, weekly};
use drover_oncall::{engine, Alert, AlertAction, Input, Page, Pager, Recipient, Severity};
use proptest::prelude::*;
use std::time::Duration;

mod common;
use common::TEAM_TOML;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

/// A page of team db opened at `opened` (UTC), with the given history.
fn page(
    opened: &str,
    class: &str,
    alerts: u64,
    ack_after: Option<i64>,
    resolve_after: Option<i64>,
    notified: &[&str],
) -> Page {
    let mut p = Pager::new(Config::from_toml(TEAM_TOML).unwrap(), 1);
    let opened = at(opened);
    let out = p.step(Input::Alert(Alert::trigger(format!("{class}-{}", opened.0), class)), opened);
    let mut page = out.pages.last().unwrap().clone();
    page.class = Some(class.into());
    page.alerts = alerts;
    page.acknowledged_at = ack_after.map(|s| Timestamp(opened.0 + s * 1_000_000));
    page.resolved_at = resolve_after.map(|s| Timestamp(opened.0 + s * 1_000_000));
    page.notified = notified.iter().map(|s| s.to_string()).collect();
    page
}

#[test]
fn weekly_metrics_match_a_hand_computed_history() {
    let config = Config::from_toml(TEAM_TOML).unwrap();
    let team = config.team("db").unwrap();
    let mut other_team = page("2026-03-03T09:00:00Z", "disk", 1, None, None, &["alice"]);
    other_team.team = "web".into();
    let history = vec![
        // Week of 16 February: two pages.
        page("2026-02-17T10:00:00Z", "disk", 1, None, Some(60), &[]),
        page("2026-02-18T10:00:00Z", "disk", 1, None, Some(60), &[]),
        // Week of 23 February: none. Week of 2 March (Berlin is UTC+1):
        page("2026-03-03T09:00:00Z", "disk", 5, Some(120), Some(600), &["alice"]), // Tue 10:00 business
        page("2026-03-03T18:00:00Z", "disk", 1, None, Some(60), &[]),              // Tue 19:00 off hours, bot only
        page("2026-03-07T11:00:00Z", "lag", 2, Some(300), Some(1200), &["bob"]),   // Sat 12:00 off hours
        page("2026-03-05T02:00:00Z", "disk", 1, None, Some(1800), &["alice"]),     // Thu 03:00 sleep
        other_team,
        // Week of 9 March: Mon 00:30 Berlin is still Sunday in UTC.
        page("2026-03-08T23:30:00Z", "cpu", 1, None, Some(30), &[]), // sleep, bot only
        page("2026-03-11T08:00:00Z", "cpu", 1, None, None, &["alice"]), // Wed 09:00 business, open
    ];
    let weeks = weekly(team, &history, at("2026-03-11T12:00:00Z"), 2);
    assert_eq!(weeks.len(), 2);
    let (w1, w2) = (&weeks[0], &weeks[1]);

    assert_eq!(w1.week, "2026-03-02");
    assert_eq!(w1.week_start, at("2026-03-01T23:00:00Z"));
    assert_eq!(w1.pages, 4);
    assert_eq!(w1.rolling_average_4w, 1.5, "(0 + 2 + 0 + 4) / 4");
    assert_eq!((w1.business_hours, w1.off_hours, w1.sleep_hours), (1, 2, 1));
    assert_eq!((w1.pages_to_people, w1.bot_only, w1.bot_only_share), (3, 1, 0.25));
    assert_eq!(w1.on_call_people, 2, "alice and bob both hold level 1 or 2 that week");
    assert_eq!(w1.pages_per_on_call_person, 1.5);
    assert_eq!((w1.acknowledged, w1.mean_time_to_acknowledge_secs), (2, Some(210.0)));
    assert_eq!((w1.resolved, w1.mean_time_to_resolve_secs), (4, Some(915.0)));
    assert_eq!(w1.noisiest[0].alert, "disk");
    assert_eq!((w1.noisiest[0].pages, w1.noisiest[0].alerts), (3, 7));
    assert_eq!((w1.noisiest[1].alert.as_str(), w1.noisiest[1].pages), ("lag", 1));

    assert_eq!(w2.week, "2026-03-09");
    assert_eq!(w2.pages, 2);
    assert_eq!(w2.rolling_average_4w, 2.0, "(0 + 4 + 2 ... ) = (2 + 0 + 4 + 2) / 4");
    assert_eq!((w2.business_hours, w2.off_hours, w2.sleep_hours), (1, 0, 1));
    assert_eq!((w2.pages_to_people, w2.bot_only, w2.bot_only_share), (1, 1, 0.5));
    assert_eq!((w2.acknowledged, w2.mean_time_to_acknowledge_secs), (0, None));
    assert_eq!((w2.resolved, w2.mean_time_to_resolve_secs), (1, Some(30.0)));

    let chart = svg("db", &weeks);
    assert!(chart.starts_with("<svg") && chart.contains("<polyline"));
    assert!(chart.contains("2026-03-02: 2 off hours"), "{chart}");
}

fn alertmanager(status: &str) -> AlertmanagerPayload {
    serde_json::from_value(serde_json::json!({
        "receiver": "drover", "status": status, "version": "4",
        "groupKey": "{}:{alertname=\"DiskFull\"}", "truncatedAlerts": 0,
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "team": "db", "service": "orders", "severity": "warning"},
        "commonAnnotations": {"summary": "disk almost full"},
        "externalURL": "http://am:9093",
        "alerts": [{"status": status, "labels": {"alertname": "DiskFull"}, "annotations": {}, "startsAt": "2026-03-03T09:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "abc"}]
    }))
    .unwrap()
}

#[test]
fn an_alertmanager_group_is_one_alert_keyed_by_its_group_key() {
    let a = integrations::from_alertmanager(&alertmanager("firing")).unwrap();
    assert_eq!(a.dedup_key, "alertmanager:{}:{alertname=\"DiskFull\"}");
    assert_eq!((a.action, a.severity), (AlertAction::Trigger, Severity::Warning));
    assert_eq!(
        (a.team.as_deref(), a.service.as_deref(), a.class.as_deref()),
        (Some("db"), Some("orders"), Some("DiskFull"))
    );
    assert_eq!(a.summary, "disk almost full");
    let r = integrations::from_alertmanager(&alertmanager("resolved")).unwrap();
    assert_eq!((r.action, r.dedup_key), (AlertAction::Resolve, a.dedup_key));
    let mut old = alertmanager("firing");
    old.version = "3".into();
    assert!(integrations::from_alertmanager(&old).unwrap_err().contains("version"));
}

#[test]
fn events_v2_are_validated_like_pagerduty_does() {
    let config = Config::from_toml(TEAM_TOML).unwrap();
    let event = |v: serde_json::Value| -> EventV2 { serde_json::from_value(v).unwrap() };
    let ok = event(serde_json::json!({"routing_key": "db-routing-key", "event_action": "trigger",
        "payload": {"summary": "s", "source": "h", "severity": "error", "group": "orders", "class": "disk"}}));
    let a = integrations::from_event_v2(&ok, &config, || "generated".into()).unwrap();
    assert_eq!(
        (a.dedup_key.as_str(), a.team.as_deref(), a.service.as_deref(), a.severity),
        ("generated", Some("db"), Some("orders"), Severity::Error)
    );
    let long = event(serde_json::json!({"routing_key": "db", "event_action": "resolve", "dedup_key": "k".repeat(256)}));
    assert!(integrations::from_event_v2(&long, &config, || unreachable!()).unwrap_err().contains("255"));
    let ack = event(serde_json::json!({"routing_key": "db", "event_action": "acknowledge", "dedup_key": "k"}));
    assert_eq!(integrations::from_event_v2(&ack, &config, || unreachable!()).unwrap().action, AlertAction::Acknowledge);
}

fn engine_event(
    kind: EventKind,
    subject: EventSubject,
    service: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    cause: &str,
) -> Event {
    Event {
        id: Default::default(),
        seq: 1,
        at: Timestamp(0),
        subject,
        service: service.map(str::to_string),
        service_id: None,
        instance: None,
        action: None,
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        cause: cause.into(),
        kind,
        team: None,
    }
}

#[test]
fn engine_events_that_need_a_person_become_alerts_and_all_clears_resolve_them() {
    let cases = [
        (
            engine_event(
                EventKind::NeedsHuman,
                EventSubject::Service,
                Some("db1"),
                Some("recovering"),
                Some("unavailable"),
                "a remedy failed: a human is needed",
            ),
            Some(("engine:db1:needs_human", AlertAction::Trigger)),
        ),
        (
            engine_event(
                EventKind::InvariantAtRisk,
                EventSubject::Fleet,
                Some("db1"),
                None,
                Some("needs_human"),
                "safety invariant at risk: x",
            ),
            Some(("engine:db1:needs_human", AlertAction::Trigger)),
        ),
        (
            engine_event(
                EventKind::Transition,
                EventSubject::Service,
                Some("db1"),
                Some("unavailable"),
                Some("available"),
                "primary and every planned follower available",
            ),
            Some(("engine:db1:needs_human", AlertAction::Resolve)),
        ),
        (
            engine_event(
                EventKind::BrakeEngaged { scope: "zone-a".into() },
                EventSubject::Fleet,
                None,
                Some("released"),
                Some("braked"),
                "mass-uncertainty brake engaged for zone-a: 9 of 30 instances",
            ),
            Some(("engine:brake:zone-a", AlertAction::Trigger)),
        ),
        (
            engine_event(
                EventKind::BrakeReleased { scope: "zone-a".into() },
                EventSubject::Fleet,
                None,
                Some("braked"),
                Some("released"),
                "mass-uncertainty brake released for zone-a: 1 instances still uncertain",
            ),
            Some(("engine:brake:zone-a", AlertAction::Resolve)),
        ),
        (
            engine_event(
                EventKind::RestoreTestFailed,
                EventSubject::Service,
                Some("db2"),
                None,
                Some("failed"),
                "restore test FAILED: checksum mismatch",
            ),
            Some(("engine:db2:restore_test", AlertAction::Trigger)),
        ),
        (
            engine_event(
                EventKind::RestoreTestPassed,
                EventSubject::Service,
                Some("db2"),
                None,
                Some("ok"),
                "restore test passed: 12 MB",
            ),
            Some(("engine:db2:restore_test", AlertAction::Resolve)),
        ),
        (
            engine_event(
                EventKind::Transition,
                EventSubject::Instance,
                Some("db2"),
                Some("available"),
                Some("uncertain"),
                "silent for 3s",
            ),
            None,
        ),
        // The prose does not count: only the kind does.
        (
            engine_event(
                EventKind::Transition,
                EventSubject::Service,
                Some("db3"),
                Some("recovering"),
                Some("unavailable"),
                "restore test FAILED; a human is needed; needs_human; brake engaged for zone-a: x",
            ),
            None,
        ),
    ];
    for (event, expected) in cases {
        assert_eq!(engine::is_relevant(&event), expected.is_some(), "{event:?}");
        let alert = engine::to_alert(&event, Some("db".into()));
        assert_eq!(alert.as_ref().map(|a| (a.dedup_key.as_str(), a.action)), expected, "{event:?}");
        if let Some(a) = alert {
            assert_eq!((a.origin.as_str(), a.team.as_deref()), ("engine", Some("db")));
        }
    }
}

proptest! {
    /// Whatever arrives in whatever order, no person is notified of a page
    /// before the bot tier's wait (3 minutes off hours) has passed, and
    /// every open page is reachable by one of its open alert keys.
    #[test]
    fn nobody_is_paged_before_the_bot_tier_had_its_chance(ops in proptest::collection::vec((0u8..4, 0u8..5, 1u64..400), 1..200)) {
        let mut p = Pager::new(Config::from_toml(TEAM_TOML).unwrap(), 9);
        let mut now = at("2026-03-07T02:00:00Z");
        let mut opened: std::collections::HashMap<drover_oncall::PageId, Timestamp> = Default::default();
        for (op, key, secs) in ops {
            now = now.plus(Duration::from_secs(secs));
            let key = format!("k{key}");
            let input = match op {
                0 | 1 => Input::Alert(Alert::trigger(key, "x")),
                2 => Input::Alert(Alert::resolve(key)),
                _ => Input::Tick,
            };
            let out = p.step(input, now);
            for page in &out.pages {
                opened.entry(page.id).or_insert(page.opened_at);
            }
            for n in &out.notifications {
                if let Recipient::Person { .. } = n.recipient {
                    let since = now.since(opened[&n.page.expect("a page's notification names it")]);
                    prop_assert!(since >= Duration::from_secs(180), "paged {since:?} after opening");
                }
            }
            for page in p.open_pages() {
                prop_assert!(page.open_alerts.iter().all(|k| p.page(page.id).is_some() && !k.is_empty()));
                prop_assert!(page.flapping || page.next_at.is_some(), "an open page without a timer: {page:?}");
            }
        }
    }
}
