//! Simulation runs with fixed seeds on small fleets: determinism, safety,
//! and what each scenario must (and must not) cause.

use drover_sim::{run, Options, Report, Scenario, ScenarioError};

const SMALL: u64 = 300;

fn sim(name: &str, services: u64, seed: u64) -> Report {
    let scenario = Scenario::load(name).expect("built-in scenario loads");
    run(Options { scenario, services, seed, event_log: None }).expect("simulation runs")
}

fn assert_safe(r: &Report) {
    assert_eq!(r.safety_violations, 0, "{}: {:?}", r.scenario, r.first_violation);
}

#[test]
fn every_scenario_is_deterministic_for_a_seed_and_differs_for_another() {
    for (name, _) in drover_sim::scenario::BUILT_IN {
        let a = sim(name, SMALL, 7);
        let b = sim(name, SMALL, 7);
        assert_eq!(a.digest, b.digest, "{name}: same seed, different event log");
        assert_eq!(a.deterministic(), b.deterministic(), "{name}: same seed, different report");
        assert!(a.engine_events > 0);
        let c = sim(name, SMALL, 8);
        assert_ne!(a.digest, c.digest, "{name}: another seed gave the same event log");
        assert_safe(&a);
        assert_safe(&c);
    }
}

#[test]
fn a_control_plane_partition_causes_no_failover_and_no_outage() {
    let r = sim("control-plane-partition", SMALL, 1);
    assert_safe(&r);
    assert_eq!(r.failovers, 0, "{r:#?}");
    assert_eq!(r.max_unavailable, 0, "the zone was healthy: no customer saw an outage");
    assert!(r.max_not_available_in_engine > 0, "the engine did lose sight of the zone");
    assert!(r.brake_engaged > 0, "the brake engaged");
    assert!(r.converged, "{r:#?}");
}

#[test]
fn a_zone_outage_fails_over_loses_no_synchronous_write_and_recovers() {
    let r = sim("zone-outage", SMALL, 1);
    assert_safe(&r);
    assert!(r.failovers > 0, "{r:#?}");
    assert!(r.replacements > 0);
    assert_eq!(r.writes_lost_sync, 0, "synchronous plans lose no acknowledged write");
    assert!(r.max_unavailable > 0);
    assert!(r.converged, "everything healed after the zone returned: {r:#?}");
    let recovered = r.recovered_seconds.expect("recovered");
    assert!(recovered > 0.0 && recovered < 12.0 * 3600.0, "{recovered}");
}

#[test]
fn synchronous_plans_lose_no_acknowledged_write_in_any_scenario() {
    for (name, _) in drover_sim::scenario::BUILT_IN {
        let r = sim(name, SMALL, 3);
        assert_safe(&r);
        assert_eq!(r.writes_lost_sync, 0, "{name}: {r:#?}");
        // A rollout that paused itself leaves services on the old image by design.
        assert!(r.converged || *name == "bad-image-roll", "{name}: {r:#?}");
    }
}

#[test]
fn the_kernel_advisory_replaces_every_affected_instance() {
    let r = sim("kernel-cve-roll", SMALL, 1);
    assert_safe(&r);
    assert_eq!(r.advisory_instances_left, 0, "{r:#?}");
    assert!(r.replacements >= SMALL * 2, "{r:#?}");
    assert_eq!(r.rolled_services, SMALL, "every service rolled by the rollout: {r:#?}");
    assert_eq!(r.failovers, 0, "planned switchovers only: {r:#?}");
    assert_eq!(r.switchovers, SMALL, "{r:#?}");
    assert_eq!(r.writes_lost, 0, "no write lost, asynchronous plans included: {r:#?}");
    assert_eq!(r.rollout_pauses, 0);
    assert!(r.converged, "{r:#?}");
}

#[test]
fn a_bad_image_pauses_the_rollout_once_and_no_later_wave_starts() {
    let r = sim("bad-image-roll", 1000, 1);
    assert_safe(&r);
    assert_eq!(r.rollout_pauses, 1, "{r:#?}");
    // Paging once: the pause (and the services that failed its gate, in
    // the same team's engine group) wake one person, once.
    assert_eq!(r.pages_human, 1, "{r:#?}");
    assert_eq!(r.failovers, 0, "{r:#?}");
    assert_eq!(r.writes_lost, 0, "{r:#?}");
    // The first wave is 1% (10 services); the rollout stopped within it.
    assert!(r.rolled_services <= 10, "{r:#?}");
    assert!(r.advisory_instances_left > 0, "the rest stayed on the old image");
}

#[test]
fn a_scenario_that_does_not_parse_names_the_file_and_the_field() {
    let bad = "name = \"x\"\ndescription = \"y\"\n[[fault]]\nkind = \"zone-loss\"\nzone = \"zone-a\"\nat_hours = \"soon\"\nduration_hours = 1.0\n";
    let err = Scenario::parse("scenarios/bad.toml", bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ScenarioError::Parse { .. }));
    assert!(msg.contains("scenarios/bad.toml"), "{msg}");
    assert!(msg.contains("at_hours"), "{msg}");

    let unknown = "name = \"x\"\ndescription = \"y\"\n[timing]\nuncertain_after = 3\n";
    let msg = Scenario::parse("mine.toml", unknown).unwrap_err().to_string();
    assert!(msg.contains("mine.toml") && msg.contains("uncertain_after"), "{msg}");

    let zone = "name = \"x\"\ndescription = \"y\"\n[[fault]]\nkind = \"network-cut\"\nzone = \"zone-z\"\nat_hours = 1.0\nduration_hours = 1.0\n";
    let msg = Scenario::parse("z.toml", zone).unwrap_err().to_string();
    assert!(msg.contains("z.toml") && msg.contains("zone-z"), "{msg}");

    let no_zone =
        "name = \"x\"\ndescription = \"y\"\n[[fault]]\nkind = \"zone-loss\"\nat_hours = 1.0\nduration_hours = 1.0\n";
    let msg = Scenario::parse("nz.toml", no_zone).unwrap_err().to_string();
    assert!(msg.contains("nz.toml") && msg.contains("`zone`"), "{msg}");

    let missing = Scenario::load("no-such-scenario").unwrap_err().to_string();
    assert!(missing.contains("zone-outage"), "lists the built-in ones: {missing}");
}

#[test]
fn a_fleet_of_synchronous_plans_loses_no_acknowledged_write_in_a_zone_outage() {
    let mut scenario = Scenario::load("zone-outage").unwrap();
    scenario.fleet.sync_share = 1.0;
    scenario.background.process_crash_per_instance_day = 0.0;
    scenario.background.host_loss_per_host_day = 0.0;
    let r = run(Options { scenario, services: SMALL, seed: 5, event_log: None }).unwrap();
    assert_safe(&r);
    assert!(r.failovers > 0);
    assert_eq!(r.writes_lost, 0, "{r:#?}");
}

/// Issue 9's bar for a zone outage: the real pager pages each operator team
/// at most once (the brake is one incident per team), somebody is paged.
fn assert_zone_outage_pages_each_team_at_most_once(r: &Report) {
    assert_safe(r);
    assert!(r.converged, "{r:#?}");
    assert!(r.teams >= 1);
    assert!(r.pages_human >= 1, "a lost zone wakes somebody: {r:#?}");
    assert!(r.pages_human <= r.teams, "at most one human page per team: {r:#?}");
}

#[test]
fn a_zone_outage_pages_each_operator_team_at_most_once() {
    for seed in [1, 2] {
        assert_zone_outage_pages_each_team_at_most_once(&sim("zone-outage", 3_000, seed));
    }
}

#[test]
fn a_steady_week_wakes_nobody() {
    // At most one human page per 100,000 service-weeks: at 5,000 services
    // for one week, that is none.
    let r = sim("steady-week", 5_000, 1);
    assert_safe(&r);
    assert!(r.converged, "{r:#?}");
    assert!(r.failovers + r.replacements + r.restarts > 0, "background failures happened and were fixed: {r:#?}");
    assert_eq!(r.pages_human, 0, "{r:#?}");
}

#[test]
fn the_number_of_operator_teams_is_the_scenarios() {
    let mut scenario = Scenario::load("zone-outage").unwrap();
    scenario.people.teams = 2;
    let r = run(Options { scenario, services: SMALL, seed: 1, event_log: None }).unwrap();
    assert_eq!(r.teams, 2);
    assert!(r.pages_human <= 2, "{r:#?}");
}

/// The bar at the size: one 100,000-service run per scenario.
#[test]
fn at_100k_services_a_zone_outage_pages_each_team_at_most_once() {
    assert_zone_outage_pages_each_team_at_most_once(&sim("zone-outage", 100_000, 1));
}

#[test]
fn at_100k_services_a_steady_week_pages_at_most_once() {
    let r = sim("steady-week", 100_000, 1);
    assert_safe(&r);
    assert!(r.converged, "{r:#?}");
    assert!(r.pages_human <= 1, "at most 1 human page per 100,000 service-weeks: {r:#?}");
}

#[test]
fn each_seed_draws_its_faults_within_what_the_scenario_allows() {
    use drover_sim::scenario::FaultSpec;
    let s = Scenario::load("zone-outage").unwrap();
    let mut histories = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let d = s.drawn(seed);
        assert_eq!(format!("{:?}", d.faults), format!("{:?}", s.drawn(seed).faults), "same seed, same faults");
        let FaultSpec::ZoneLoss { zone, at_hours, duration_hours } = &d.faults[0] else { panic!("{:?}", d.faults) };
        assert!(s.fleet.zones.contains(zone), "{zone}");
        assert!((0.5..=3.0).contains(at_hours) && *duration_hours == 6.0, "{at_hours} {duration_hours}");
        histories.insert(format!("{zone} {at_hours:.3} {duration_hours:.3}"));
    }
    assert!(histories.len() >= 30, "many seeds, many histories: {histories:?}");
    let zones: std::collections::BTreeSet<_> = histories.iter().map(|h| h.split(' ').next().unwrap()).collect();
    assert_eq!(zones.len(), 3, "every zone gets lost in some run");

    // A scenario without background failures stays without.
    let quiet = Scenario::load("control-plane-partition").unwrap().drawn(9);
    assert_eq!(quiet.background.process_crash_per_instance_day, 0.0);
    assert_eq!(quiet.background.host_loss_per_host_day, 0.0);
    // steady-week runs its rates as written.
    let week = Scenario::load("steady-week").unwrap();
    assert_eq!(week.drawn(5).background.host_loss_per_host_day, week.background.host_loss_per_host_day);
}

/// Issue 13 item 8: PostgreSQL and Redis services in one fleet, the Redis
/// ones created as `engine: redis` through the real engine (its Redis
/// policy) and answered by the world as Redis servers.
fn engine<'a>(r: &'a Report, name: &str) -> &'a drover_sim::EngineReport {
    r.engines.iter().find(|e| e.engine == name).unwrap_or_else(|| panic!("no {name} in {:#?}", r.engines))
}

#[test]
fn a_mixed_fleet_fails_over_its_redis_services_like_its_postgresql_ones() {
    let a = sim("mixed-fleet", SMALL, 11);
    assert_safe(&a);
    assert!(a.converged, "{a:#?}");
    let (pg, rd) = (engine(&a, "postgres"), engine(&a, "redis"));
    assert_eq!(pg.services + rd.services, SMALL);
    assert!(rd.services >= SMALL / 5 && rd.services <= SMALL * 2 / 5, "about 30% Redis: {a:#?}");
    assert_eq!(pg.instances + rd.instances, a.instances);
    for e in [pg, rd] {
        assert!(e.failovers > 0 && e.replacements > 0, "{} failed over and rebuilt: {a:#?}", e.engine);
        assert!(e.max_unavailable > 0);
    }
    assert_eq!(pg.failovers + rd.failovers, a.failovers);
    assert_eq!(pg.writes_lost + rd.writes_lost, a.writes_lost);
    assert_eq!(a.writes_lost_sync, 0, "{a:#?}");
    assert!(a.table().contains("redis services"), "{}", a.table());

    let b = sim("mixed-fleet", SMALL, 11);
    assert_eq!(a.digest, b.digest, "same seed, same event log");
    assert_eq!(a.deterministic(), b.deterministic());
}

#[test]
fn redis_primaries_that_crash_are_failed_over_and_the_fleet_converges() {
    // Crashes only: no zone loss, no host loss; every failover is a crash's.
    let text = "name = \"redis-crashes\"\ndescription = \"Redis processes crash\"\nhours = 18\n\
                [fleet]\nredis_share = 1.0\n\
                [background]\nprocess_crash_per_instance_day = 0.05\nhost_loss_per_host_day = 0.0\n\
                until_hours = 12\nswarm = false\n";
    let scenario = Scenario::parse("redis-crashes.toml", text).unwrap();
    let r = run(Options { scenario, services: SMALL, seed: 4, event_log: None }).unwrap();
    assert_safe(&r);
    assert!(r.converged, "{r:#?}");
    let rd = engine(&r, "redis");
    assert_eq!(rd.services, SMALL, "every service runs Redis");
    assert!(rd.failovers > 0, "crashed Redis primaries were failed over: {r:#?}");
    assert_eq!(r.failovers, rd.failovers);
    assert_eq!(engine(&r, "postgres").services, 0);
}

#[test]
fn a_postgresql_only_fleet_reports_no_engine_lines_and_a_bad_share_is_refused() {
    let r = sim("zone-outage", SMALL, 1);
    assert!(r.engines.is_empty());
    assert!(!r.json().contains("\"engines\"") && !r.table().contains("postgres services"));
    let bad = "name = \"x\"\ndescription = \"y\"\n[fleet]\nredis_share = 1.5\n";
    let msg = Scenario::parse("mix.toml", bad).unwrap_err().to_string();
    assert!(msg.contains("mix.toml") && msg.contains("redis_share"), "{msg}");
}

/// Issue 14: Kafka services in a mixed fleet, created as `engine: kafka`
/// (three peer brokers, the engine's default) through the real engine under
/// its Kafka policy, answered by the world as brokers. A broker crash or a
/// lost zone takes one broker of three: the others serve, the lost one is
/// fenced and replaced, none is ever promoted.
#[test]
fn kafka_services_keep_serving_through_broker_crashes_and_a_zone_loss_by_replacement_never_failover() {
    let a = sim("kafka-fleet", SMALL, 5);
    assert_safe(&a);
    assert!(a.converged, "{a:#?}");
    assert_eq!(a.engines.iter().map(|e| e.engine.as_str()).collect::<Vec<_>>(), ["postgres", "redis", "kafka"]);
    let (pg, rd, kf) = (engine(&a, "postgres"), engine(&a, "redis"), engine(&a, "kafka"));
    assert_eq!(pg.services + rd.services + kf.services, SMALL);
    assert!(kf.services >= SMALL / 5 && kf.services <= SMALL * 2 / 5, "about 30% Kafka: {a:#?}");
    assert!(rd.services >= SMALL / 10 && rd.services <= SMALL * 3 / 10, "about 20% Redis: {a:#?}");
    assert_eq!(pg.instances + rd.instances + kf.instances, a.instances);
    // Three brokers each, and one more for each replacement.
    assert!(kf.instances >= 3 * kf.services + kf.replacements, "{a:#?}");
    // Lost brokers were replaced, never failed over or switched over.
    assert!(kf.replacements > 0, "{a:#?}");
    assert_eq!((kf.failovers, kf.switchovers), (0, 0), "{a:#?}");
    // One broker of three lost at a time: the others kept serving.
    assert_eq!(kf.max_unavailable, 0, "a Kafka service lost every broker at once: {a:#?}");
    assert_eq!(kf.writes_lost, 0);
    // The PostgreSQL and Redis services beside them still fail over.
    assert!(pg.failovers > 0 && rd.failovers > 0, "{a:#?}");
    assert_eq!(pg.failovers + rd.failovers, a.failovers);
    assert!(a.table().contains("kafka services"), "{}", a.table());
    assert!(a.json().contains("\"engine\":\"kafka\""), "{}", a.json());

    let b = sim("kafka-fleet", SMALL, 5);
    assert_eq!(a.digest, b.digest, "same seed, same event log");
    assert_eq!(a.deterministic(), b.deterministic());
}

#[test]
fn a_kafka_share_is_validated_and_no_share_adds_no_kafka_line() {
    let bad = "name = \"x\"\ndescription = \"y\"\n[fleet]\nkafka_share = -0.1\n";
    let msg = Scenario::parse("mix.toml", bad).unwrap_err().to_string();
    assert!(msg.contains("mix.toml") && msg.contains("kafka_share"), "{msg}");
    let over = "name = \"x\"\ndescription = \"y\"\n[fleet]\nredis_share = 0.7\nkafka_share = 0.4\n";
    let msg = Scenario::parse("mix.toml", over).unwrap_err().to_string();
    assert!(msg.contains("redis_share + fleet.kafka_share"), "{msg}");
    let all = "name = \"x\"\ndescription = \"y\"\n[fleet]\nredis_share = 0.7\nkafka_share = 0.3\n";
    assert!(Scenario::parse("mix.toml", all).is_ok(), "shares may sum to 1");

    // The mixed fleet has no Kafka share: its report stays PostgreSQL and Redis.
    let r = sim("mixed-fleet", 60, 2);
    assert_eq!(r.engines.iter().map(|e| e.engine.as_str()).collect::<Vec<_>>(), ["postgres", "redis"]);
    assert!(!r.table().contains("kafka services"));
}

#[test]
fn an_all_kafka_fleet_replaces_crashed_brokers_and_converges() {
    // Crashes only: every replacement is a crashed broker's.
    let text = "name = \"kafka-crashes\"\ndescription = \"Kafka brokers crash\"\nhours = 18\n\
                [fleet]\nkafka_share = 1.0\n\
                [background]\nprocess_crash_per_instance_day = 0.05\nhost_loss_per_host_day = 0.0\n\
                until_hours = 12\nswarm = false\n";
    let scenario = Scenario::parse("kafka-crashes.toml", text).unwrap();
    let r = run(Options { scenario, services: 100, seed: 4, event_log: None }).unwrap();
    assert_safe(&r);
    assert!(r.converged, "{r:#?}");
    let kf = engine(&r, "kafka");
    assert_eq!((kf.services, engine(&r, "postgres").services, engine(&r, "redis").services), (100, 0, 0));
    assert!(kf.replacements > 0, "crashed brokers were replaced: {r:#?}");
    assert_eq!(r.failovers, 0, "nothing to fail over in a fleet of peers: {r:#?}");
    assert_eq!(kf.max_unavailable, 0, "{r:#?}");
    assert_eq!(r.writes_lost, 0);
}

/// Issue 16, item 8: control-plane nodes die, pause (a frozen VM among
/// them) and vanish, then return, on the real shard and lease logic: no
/// shard is acted on by two nodes with one generation or by an older one
/// after a newer, a killed holder's shards are taken within a second, and
/// the shares are even again at the end.
#[test]
fn control_plane_nodes_that_die_pause_and_return_never_act_twice_on_a_shard() {
    for seed in [1, 2, 3] {
        let r = sim("control-plane-nodes", SMALL, seed);
        assert_safe(&r);
        assert!(r.converged, "{r:#?}");
        let cp = r.control_plane.as_ref().expect("the scenario's control plane ran");
        assert_eq!((cp.nodes, cp.shards), (4, 12), "{cp:#?}");
        assert!(cp.crashes + cp.pauses + cp.vanishes >= 6, "the faults happened: {cp:#?}");
        assert!(cp.takes_orphaned > 0 && cp.takes_expired > 0 && cp.released > 0, "{cp:#?}");
        assert!(cp.longest_takeover_after_kill_secs < 1.0, "{cp:#?}");
        assert!(cp.longest_takeover_after_pause_secs < 13.0, "{cp:#?}");
        assert!(cp.actions_carried_out > 10_000, "{cp:#?}");
        assert!(r.table().contains("shard takeovers"), "{}", r.table());
        assert!(r.json().contains("\"control_plane\":{"), "{}", r.json());
    }
    // A scenario without one reports none.
    assert!(sim("control-plane-partition", SMALL, 1).control_plane.is_none());
}

#[test]
fn a_bad_control_plane_table_is_refused_with_its_key() {
    let text = "name = \"x\"\ndescription = \"y\"\n[control_plane]\nmax_moving = 0\n";
    let err = Scenario::parse("x.toml", text).unwrap_err().to_string();
    assert!(err.contains("max_moving"), "{err}");
    let text = "name = \"x\"\ndescription = \"y\"\n[control_plane]\nnodez = 3\n";
    let err = Scenario::parse("x.toml", text).unwrap_err().to_string();
    assert!(err.contains("nodez"), "{err}");
}
