//! Forks (issue 17): a new service with its source's plan whose first
//! primary is restored from the source's backups and archived log, to a
//! moment or to the latest; refused without a backup, from the future, of
//! an engine that cannot, or under a name taken.

mod common;

use common::*;
use drover_engine::{Command, CommandError, Reply};
use drover_model::*;
use std::time::Duration;

fn restore_froms(h: &H, service: &str) -> Vec<(Role, Option<RestoreFrom>)> {
    h.dispatched
        .iter()
        .filter_map(|a| match a.kind.provision() {
            Some(drover_model::ProvisionSpec { role, service_name, restore_from, .. }) if service_name == service => {
                Some((*role, restore_from.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_fork_restores_its_first_primary_from_the_source_and_keeps_the_source_plan() {
    let mut h = H::new(fast_config());
    h.create("src", 1);
    h.advance(Duration::from_secs(5));
    assert_eq!(h.service("src").state, ServiceState::Available);
    let fork = |source: &str, name: &str, at: Option<i64>| Command::ForkService {
        source: source.into(),
        name: name.into(),
        at: at.map(Timestamp),
    };

    let refused = h.command(fork("src", "dst", None));
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("no backup")), "{refused:?}");
    let refused = h.command(fork("nope", "dst", None));
    assert!(matches!(refused, Err(CommandError::NotFound(_))), "{refused:?}");

    h.command(Command::TakeBackup { name: "src".into() }).expect("backup accepted");
    h.advance(Duration::from_secs(2));
    assert!(h.service("src").backups.last_backup_at.is_some());

    let future = h.now + 3_600_000_000;
    let refused = h.command(fork("src", "dst", Some(future)));
    assert!(matches!(refused, Err(CommandError::Invalid(_))), "{refused:?}");
    let refused = h.command(fork("src", "src", None));
    assert!(matches!(refused, Err(CommandError::Conflict(_))), "{refused:?}");

    let at = h.now - 500_000;
    let view = match h.command(fork("src", "dst", Some(at))) {
        Ok(Reply::Service(v)) => *v,
        other => panic!("fork refused: {other:?}"),
    };
    let src = h.service("src");
    assert_eq!((view.plan.followers, view.plan.sync), (src.plan.followers, src.plan.sync), "the source's plan");
    assert_eq!((view.team.as_str(), &view.zones, view.provider.as_str()), (src.team.as_str(), &src.zones, "sim"));
    let from = view.forked_from.clone().expect("a fork says where it came from");
    assert_eq!((from.service.as_str(), from.at, from.restored), ("src", Some(Timestamp(at)), false));

    // The first primary restores; followers copy it.
    let provisions = restore_froms(&h, "dst");
    assert_eq!(provisions.len(), 2, "{provisions:?}");
    for (role, restore) in &provisions {
        match role {
            Role::Primary => {
                assert_eq!(restore.as_ref().map(|r| (&r.service[..], r.at)), Some(("src", Some(Timestamp(at)))))
            }
            _ => assert!(restore.is_none(), "a follower copies its primary: {restore:?}"),
        }
    }
    h.advance(Duration::from_secs(5));
    let dst = h.service("dst");
    assert_eq!(dst.state, ServiceState::Available);
    assert!(dst.forked_from.as_ref().is_some_and(|f| f.restored), "{:?}", dst.forked_from);

    // Durable: after kill -9 and restore the fork is known as restored, so
    // no later primary is built from the source again.
    h.crash_and_restore();
    assert!(h.service("dst").forked_from.is_some_and(|f| f.restored && f.service == "src"));
    let before = restore_froms(&h, "dst").len();
    let followers = h.followers("dst");
    h.command(Command::RebuildFollower { name: "dst".into(), instance: Some(followers[0].id) }).expect("rebuild");
    h.advance(Duration::from_secs(5));
    let later = &restore_froms(&h, "dst")[before..];
    assert!(!later.is_empty() && later.iter().all(|(_, r)| r.is_none()), "{later:?}");
    h.check_invariants();
}

#[test]
fn a_redis_service_cannot_be_forked_to_a_moment() {
    let mut h = H::new(fast_config());
    let req = request("rd", EngineKind::Redis, 1);
    h.command(Command::CreateService(req)).expect("created");
    h.advance(Duration::from_secs(5));
    let refused = h.command(Command::ForkService { source: "rd".into(), name: "rd2".into(), at: None });
    assert!(matches!(&refused, Err(CommandError::Conflict(m)) if m.contains("snapshots")), "{refused:?}");
}
