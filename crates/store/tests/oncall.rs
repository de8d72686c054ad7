//! The pager's tables on both backends: `oncall.db` (SQLite, one node)
//! and the PostgreSQL store shared by several nodes (issue 16), where a
//! page opened through one node is acknowledged through another, and the
//! notifications one node had not delivered are the next node's to send.
//! The outputs are the real pager's (`drover_oncall::Pager`).

mod common;
use common::pg::PgServer;
use common::TempDir;
use drover_model::{IncidentId, Timestamp};
use drover_oncall::config::Config;
use drover_oncall::lifecycle::Component;
use drover_oncall::pager::{Alert, Input, PageStatus, Pager};
use drover_oncall::status::{ComponentState, Incident, IncidentSeverity, IncidentStatus};
use drover_oncall::{FeedPost, PageId, Reply};
use drover_store::oncall::OncallStore;
use drover_store::PgStore;
use std::sync::Arc;
use std::time::Duration;

/// Tuesday 11:00 in Berlin: business hours, so the bot tier posts at once.
fn day() -> Timestamp {
    Timestamp::parse("2026-03-03T10:00:00Z").unwrap()
}

/// `a` and `b` are two handles on the same tables (two nodes, or one).
fn exercise(a: &OncallStore, b: &OncallStore) {
    let mut pager = Pager::new(Config::default(), 7);
    let t0 = day();
    let out = pager.step(Input::Alert(Alert::trigger("db1-down", "db1 is down")), t0);
    let Some(Ok(Reply::Alert(opened))) = &out.reply else { panic!("{:?}", out.reply) };
    let id: PageId = opened.page.unwrap();
    let seqs = a.commit(&out).unwrap();
    assert_eq!(seqs.len(), out.feed.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Seen through the other handle as the pager holds it.
    assert_eq!(b.page(id).unwrap().as_ref(), pager.page(id));
    assert_eq!(b.open_pages().unwrap().len(), 1);
    assert_eq!(b.transitions(id).unwrap(), out.transitions);
    let pending = b.pending_notifications().unwrap();
    assert_eq!(pending.len(), out.notifications.len());
    assert!(!pending.is_empty(), "the bot tier posts by day");
    assert!(pending.iter().all(|n| n.state == "pending" && n.attempts == 0));

    // Escalation through b, a delivery noted through a.
    let later = pager.step(Input::Tick, t0.plus(Duration::from_secs(3600)));
    assert!(!later.notifications.is_empty(), "an hour unacknowledged escalates");
    b.commit(&later).unwrap();
    let first = &pending[0].notification;
    a.mark_notification(&first.id.to_string(), "delivered", 1, Some("slack"), None, Timestamp(t0.0 + 5)).unwrap();
    let all = b.notifications(id).unwrap();
    assert_eq!(all.len(), out.notifications.len() + later.notifications.len());
    let delivered = all.iter().find(|n| n.notification.id == first.id).unwrap();
    assert_eq!(
        (delivered.state.as_str(), delivered.attempts, delivered.channel.as_deref(), delivered.delivered_at),
        ("delivered", 1, Some("slack"), Some(Timestamp(t0.0 + 5)))
    );
    assert_eq!(b.pending_notifications().unwrap().len(), all.len() - 1);
    a.mark_notification(&first.id.to_string(), "failed", 2, None, Some("timeout"), Timestamp(t0.0 + 9)).unwrap();
    let failed = a.notifications(id).unwrap().into_iter().find(|n| n.notification.id == first.id).unwrap();
    assert_eq!((failed.error.as_deref(), failed.delivered_at), (Some("timeout"), Some(Timestamp(t0.0 + 5))));

    // Acknowledged through a, resolved through b: the later version wins.
    let ack = pager.step(Input::Acknowledge { page: id, by: "alice".into() }, t0.plus(Duration::from_secs(3700)));
    a.commit(&ack).unwrap();
    assert_eq!(b.page(id).unwrap().unwrap().status, PageStatus::Acknowledged);
    assert_eq!(b.pages(Some(PageStatus::Acknowledged), None, 10).unwrap().len(), 1);
    assert_eq!(b.pages(Some(PageStatus::Triggered), None, 10).unwrap().len(), 0);
    let team = pager.page(id).unwrap().team.clone();
    assert_eq!(b.pages(None, Some(&team), 10).unwrap().len(), 1);
    assert_eq!(b.pages(None, Some("nobody"), 10).unwrap().len(), 0);
    let done = pager.step(Input::Resolve { page: id, by: "bob".into() }, t0.plus(Duration::from_secs(3800)));
    b.commit(&done).unwrap();
    assert!(a.open_pages().unwrap().is_empty());
    assert_eq!(a.pages_opened_since(t0).unwrap().len(), 1);
    assert_eq!(a.pages_opened_since(Timestamp(t0.0 + 1)).unwrap().len(), 0);
    assert_eq!(a.team_pages_since(&team, t0).unwrap().len(), 1);
    let steps = out.transitions.len() + later.transitions.len() + ack.transitions.len() + done.transitions.len();
    assert_eq!(a.transitions(id).unwrap().len(), steps, "every transition kept, in order");
    assert_eq!(a.transitions(id).unwrap().last(), done.transitions.last());

    // The feed: one sequence across both handles, newest first.
    let post = FeedPost { at: Timestamp(t0.0 + 10), page: None, team: Some("platform".into()), text: "hello".into() };
    let seq = b.add_feed(&post).unwrap();
    let feed = a.feed(1000, None).unwrap();
    assert_eq!(feed[0].seq, seq);
    assert_eq!(feed[0].post, post);
    assert!(feed.windows(2).all(|w| w[0].seq > w[1].seq));
    a.mark_feed(seq, "delivered").unwrap();
    assert!(b.pending_feed().unwrap().iter().all(|f| f.seq != seq));
    assert_eq!(b.feed(1000, Some(seq - 1)).unwrap().len(), 1);
    assert_eq!(b.team_feed("platform", 1000, Some(seq - 1)).unwrap().len(), 1);
    assert!(b.team_feed("nobody", 1000, None).unwrap().is_empty());

    // Incidents: two updates through two handles each land.
    let incident = Incident::declare(
        IncidentId::new_at(t0.0, 1),
        "Slow writes".into(),
        IncidentSeverity::Minor,
        vec!["PostgreSQL".into()],
        None,
        "alice".into(),
        None,
        None,
        t0,
    );
    a.put_incident(&incident).unwrap();
    let (_, first) = b
        .update_incident(incident.id, move |i| {
            i.update(IncidentStatus::Identified, "Found it.".into(), "bob".into(), Timestamp(t0.0 + 1)).map(|u| u.seq)
        })
        .unwrap()
        .unwrap();
    let (after, second) = a
        .update_incident(incident.id, move |i| {
            i.update(IncidentStatus::Resolved, "Fixed.".into(), "carol".into(), Timestamp(t0.0 + 2)).map(|u| u.seq)
        })
        .unwrap()
        .unwrap();
    assert_eq!((first, second), (Ok(2), Ok(3)));
    assert_eq!(b.incident(incident.id).unwrap(), Some(after));
    assert_eq!(b.incidents(t0, 10).unwrap().len(), 1);
    assert!(b.incidents(Timestamp(t0.0 + 1), 10).unwrap().is_empty(), "resolved and older: not listed");
    assert!(b.update_incident(IncidentId::new_at(t0.0, 2), |_| ()).unwrap().is_none());
    assert!(a.incident(IncidentId::new_at(t0.0, 2)).unwrap().is_none());

    // Status samples counted from both handles into one day.
    a.add_component_samples("2026-03-03", &[("PostgreSQL".into(), ComponentState::Operational)]).unwrap();
    b.add_component_samples("2026-03-03", &[("PostgreSQL".into(), ComponentState::MajorOutage)]).unwrap();
    let days = a.component_days("PostgreSQL", "2026-03-01").unwrap();
    assert_eq!((days.len(), days[0].samples, days[0].major), (1, 2, 1));
    assert!(a.component_days("PostgreSQL", "2026-03-04").unwrap().is_empty());

    // The lifecycle board.
    let component: Component =
        serde_json::from_value(serde_json::json!({"name": "pgbouncer", "owner": "platform", "stage": "production"}))
            .unwrap();
    a.put_component(&component).unwrap();
    assert_eq!(b.component("pgbouncer").unwrap(), Some(component.clone()));
    assert_eq!(b.components().unwrap(), [component]);
    assert_eq!(b.component("nginx").unwrap(), None);
}

#[test]
fn on_sqlite() {
    let dir = TempDir::new("oncall");
    let path = dir.0.join("oncall.db");
    let a = OncallStore::open(&path).unwrap();
    let b = OncallStore::open(&path).unwrap();
    exercise(&a, &b);
}

#[test]
fn on_postgres_shared_by_two_nodes() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let a = OncallStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    let b = OncallStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    exercise(&a, &b);
}

/// The pager's and break-glass's writes are fenced like the fleet's: once
/// another node took the lease over, the old holder's writes fail and
/// leave nothing, the new holder's go through.
#[test]
fn a_node_that_lost_the_lease_writes_no_page_and_no_runbook_run() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let (old, new) = (Arc::new(PgStore::connect(&url).unwrap()), Arc::new(PgStore::connect(&url).unwrap()));
    let ttl = Duration::from_millis(300);
    let first = old.try_acquire_lease("old", "http://old", ttl).unwrap().expect("the lease is free");
    old.fence_commits("old", first);
    let (a, b) = (OncallStore::postgres(Arc::clone(&old)), OncallStore::postgres(Arc::clone(&new)));
    let mut pager = Pager::new(Config::default(), 7);
    let out = pager.step(Input::Alert(Alert::trigger("db1-down", "db1 is down")), day());
    a.commit(&out).expect("the holder writes");

    std::thread::sleep(ttl * 2);
    let second = new.try_acquire_lease("new", "http://new", ttl).unwrap().expect("expired: taken over");
    assert_eq!(second, first + 1);
    new.fence_commits("new", second);
    let stale =
        pager.step(Input::Alert(Alert::trigger("db2-down", "db2 is down")), day().plus(Duration::from_secs(60)));
    let Some(Ok(Reply::Alert(opened))) = &stale.reply else { panic!("{:?}", stale.reply) };
    let err = a.commit(&stale).expect_err("the old holder's page");
    assert!(err.to_string().contains("lease"), "{err}");
    assert_eq!(b.page(opened.page.unwrap()).unwrap(), None, "nothing of the refused commit stays");
    let post = FeedPost { at: day(), page: None, team: None, text: "from the old holder".into() };
    assert!(a.add_feed(&post).is_err());
    assert!(b.feed(10, None).unwrap().iter().all(|f| f.post.text != post.text));
    b.commit(&stale).expect("the new holder writes");
    assert!(b.page(opened.page.unwrap()).unwrap().is_some());

    let run = drover_store::breakglass::RunRow {
        id: "run-1".into(),
        runbook: "freeze-zone".into(),
        state: "running".into(),
        created_at: day(),
        updated_at: day(),
        record: "{}".into(),
    };
    let (old_bg, new_bg) = (
        drover_store::breakglass::BreakGlassStore::postgres(Arc::clone(&old)),
        drover_store::breakglass::BreakGlassStore::postgres(Arc::clone(&new)),
    );
    assert!(old_bg.insert_run(&run).is_err(), "the old holder's runbook run");
    assert!(old_bg.set_freeze("zone-a", true, day(), "run-1").is_err(), "the old holder's freeze");
    assert_eq!(new_bg.run("run-1").unwrap(), None);
    assert!(new_bg.freezes().unwrap().is_empty());
    new_bg.insert_run(&run).expect("the new holder's");
    assert!(new_bg.run("run-1").unwrap().is_some());
}
