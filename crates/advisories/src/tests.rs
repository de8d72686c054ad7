use super::*;
use drover_model::{EngineKind, SourcePackage};
use proptest::prelude::*;
use std::path::Path;
use std::process::Command;

/// The shipped fixture set, every file, one record or an array each.
fn fixtures() -> Vec<Record> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/osv exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let text = std::fs::read_to_string(&p).expect("readable fixture");
        let records: Records = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.extend(records.into_vec());
    }
    for (i, r) in out.iter().enumerate() {
        validate(i, r).unwrap_or_else(|e| panic!("fixture invalid: {e}"));
    }
    out
}

/// A bookworm manifest as `dpkg-query` reports it on this kind of host:
/// binaries, some built from a differently named source.
fn bookworm_image(openssl: &str, created: i64) -> Image {
    let packages = BTreeMap::from([
        ("libssl3".to_string(), openssl.to_string()),
        ("openssl".to_string(), openssl.to_string()),
        ("libc6".to_string(), "2.36-9+deb12u14".to_string()),
        ("zlib1g".to_string(), "1:1.2.13.dfsg-1".to_string()),
        ("postgresql-15".to_string(), "15.18-0+deb12u1".to_string()),
    ]);
    let source = |name: &str, version: &str| SourcePackage { name: name.into(), version: version.into() };
    let sources = BTreeMap::from([
        ("libssl3".to_string(), source("openssl", openssl)),
        ("libc6".to_string(), source("glibc", "2.36-9+deb12u14")),
        ("zlib1g".to_string(), source("zlib", "1:1.2.13.dfsg-1")),
    ]);
    Image::new(EngineKind::Postgres, "15.18", BTreeMap::new(), packages, Timestamp(created)).with_sources(sources)
}

#[test]
fn the_audit_lists_what_affects_installed_packages_and_ignores_fixed_withdrawn_and_not_yet_affected() {
    let records = fixtures();
    assert_eq!(records.len(), 8, "the fixture set changed: update this test");
    let image = bookworm_image("3.0.19-1~deb12u2", 1);
    let usage = BTreeMap::from([(
        image.id.clone(),
        ImageUse {
            services: BTreeSet::from(["orders".to_string(), "billing".to_string()]),
            owners: BTreeSet::from(["payments".to_string()]),
            instances: 4,
        },
    )]);
    let findings = audit(&records, std::slice::from_ref(&image), &usage);
    let ids: Vec<&str> = findings.iter().map(|f| f.advisory.as_str()).collect();
    assert_eq!(ids, ["DEBIAN-CVE-2010-4756", "DEBIAN-CVE-2026-2210", "DSA-6090-1"]);

    let glibc = &findings[0];
    assert_eq!((glibc.package.as_str(), glibc.installed.as_str()), ("glibc", "2.36-9+deb12u14"));
    assert_eq!(glibc.fixed, None, "no fixed version: affected from its introduction on");
    assert_eq!(glibc.binaries, ["libc6"]);

    let zlib = &findings[1];
    assert_eq!(zlib.installed, "1:1.2.13.dfsg-1");
    assert_eq!(zlib.fixed.as_deref(), Some("1:1.2.13.dfsg-1+deb12u1"));

    let openssl = &findings[2];
    assert_eq!(openssl.package, "openssl");
    assert_eq!(openssl.binaries, ["libssl3", "openssl"], "libssl3 is found through its source, openssl");
    assert_eq!(openssl.fixed.as_deref(), Some("3.0.19-1~deb12u3"));
    assert_eq!(openssl.images, std::slice::from_ref(&image.id));
    assert_eq!(openssl.services, ["billing", "orders"]);
    assert_eq!(openssl.owners, ["payments"]);
    assert_eq!(openssl.instances, 4);
}

#[test]
fn a_fixed_image_is_not_listed_and_is_the_newest_unaffected() {
    let records = fixtures();
    let old = bookworm_image("3.0.19-1~deb12u2", 1);
    let fixed = bookworm_image("3.0.19-1~deb12u3", 2);
    // Newer but still vulnerable: the fix is not simply the newest image.
    let newer_bad = bookworm_image("3.0.19-1~deb12u1", 3);
    let images = [old.clone(), fixed.clone(), newer_bad.clone()];
    let findings = audit(&records, &images, &BTreeMap::new());
    let openssl = findings.iter().find(|f| f.advisory == "DSA-6090-1").expect("listed");
    assert_eq!(openssl.images.len(), 2);
    assert!(!openssl.images.contains(&fixed.id));
    assert_eq!(openssl.installed, "3.0.19-1~deb12u1", "the oldest installed version is shown");
    let dsa = records.iter().find(|r| r.id == "DSA-6090-1").expect("fixture");
    assert_eq!(newest_unaffected_image(dsa, &images), Some(fixed.id.clone()));
    assert_eq!(newest_unaffected_image(dsa, &[old, newer_bad]), None);
}

#[test]
fn range_semantics_follow_osv() {
    let rec = |events: Vec<osv::RangeEvent>| Record {
        id: "T".into(),
        modified: "2026-01-01T00:00:00Z".into(),
        published: None,
        withdrawn: None,
        aliases: vec![],
        summary: None,
        details: None,
        affected: vec![osv::Affected {
            package: osv::Package { ecosystem: ECOSYSTEM.into(), name: "p".into() },
            ranges: vec![osv::Range { kind: "ECOSYSTEM".into(), events }],
            versions: vec![],
        }],
    };
    let ev = |i: Option<&str>, f: Option<&str>, l: Option<&str>| osv::RangeEvent {
        introduced: i.map(Into::into),
        fixed: f.map(Into::into),
        last_affected: l.map(Into::into),
        limit: None,
    };
    let r = rec(vec![ev(Some("1.0-1"), None, None), ev(None, Some("1.2-1"), None)]);
    assert_eq!(affects(&r, "p", "0.9-1"), None, "before the introduction");
    assert_eq!(affects(&r, "p", "1.0-1"), Some(Some("1.2-1".into())), "at the introduction");
    assert_eq!(affects(&r, "p", "1.2~rc1-1"), Some(Some("1.2-1".into())), "a tilde sorts before the fix");
    assert_eq!(affects(&r, "p", "1.2-1"), None, "at the fix");
    assert_eq!(affects(&r, "q", "1.1-1"), None, "another source");
    let last = rec(vec![ev(Some("0"), None, None), ev(None, None, Some("2.0-1"))]);
    assert_eq!(affects(&last, "p", "2.0-1"), Some(None), "last_affected includes itself");
    assert_eq!(affects(&last, "p", "2.0-1+b1"), None);
    // Two ranges in one list of events: reintroduced after a fix.
    let two = rec(vec![
        ev(Some("0"), None, None),
        ev(None, Some("1.0-2"), None),
        ev(Some("2.0-1"), None, None),
        ev(None, Some("2.0-3"), None),
    ]);
    assert_eq!(affects(&two, "p", "1.0-1"), Some(Some("1.0-2".into())));
    assert_eq!(affects(&two, "p", "1.5-1"), None);
    assert_eq!(affects(&two, "p", "2.0-2"), Some(Some("2.0-3".into())));
    let mut withdrawn = r.clone();
    withdrawn.withdrawn = Some("2026-01-02T00:00:00Z".into());
    assert_eq!(affects(&withdrawn, "p", "1.1-1"), None);
}

#[test]
fn invalid_records_are_named_and_staleness_is_measured() {
    let mut r = fixtures().remove(0);
    r.modified = "yesterday".into();
    assert!(matches!(validate(0, &r), Err(InvalidRecord::Time { .. })));
    let mut r = fixtures().into_iter().find(|r| r.id == "DSA-5532-1").expect("fixture");
    r.affected[0].ranges[0].events[1].fixed = Some("not a version!".into());
    assert!(matches!(validate(0, &r), Err(InvalidRecord::Version { .. })));
    let day = 24 * 3600 * 1_000_000;
    assert!(is_stale(None, Timestamp(0)));
    assert!(!is_stale(Some(Timestamp(0)), Timestamp(day)));
    assert!(is_stale(Some(Timestamp(0)), Timestamp(3 * day)));
}

/// Debian version text: an optional epoch, an upstream part starting with
/// a digit, an optional revision; the characters dpkg gives meaning to
/// (`~`, `+`, `.`, letters, digits) are over-represented.
fn debian_version() -> impl Strategy<Value = String> {
    let epoch = prop_oneof![3 => Just(String::new()), 1 => (0u8..3).prop_map(|e| format!("{e}:"))];
    let upstream = ("[0-9]", "[0-9a-c.+~]{0,6}").prop_map(|(a, b)| format!("{a}{b}"));
    let revision = prop_oneof![1 => Just(String::new()), 2 => "[0-9a-c.+~]{1,6}".prop_map(|r| format!("-{r}"))];
    (epoch, upstream, revision).prop_map(|(e, u, r)| format!("{e}{u}{r}"))
}

fn dpkg_says(a: &str, op: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, op, b])
        .status()
        .expect("dpkg is installed on Debian hosts")
        .success()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The comparison the audit uses is dpkg's own order.
    #[test]
    fn debversion_orders_like_dpkg(a in debian_version(), b in debian_version()) {
        let ours = compare_versions(&a, &b);
        prop_assume!(ours.is_some());
        let dpkg = if dpkg_says(&a, "lt", &b) {
            Ordering::Less
        } else if dpkg_says(&a, "eq", &b) {
            Ordering::Equal
        } else {
            Ordering::Greater
        };
        prop_assert_eq!(ours, Some(dpkg), "{} vs {}", a, b);
    }
}

#[test]
fn epochs_and_tildes_compare_like_dpkg_on_the_cases_that_matter() {
    for (a, b) in [
        ("1:1.2.13.dfsg-1", "1.3.1-1"),
        ("3.0.19-1~deb12u2", "3.0.19-1"),
        ("3.0.19-1~deb12u2", "3.0.19-1~deb12u3"),
        ("1.0~rc1-1", "1.0-1"),
        ("2.36-9+deb12u14", "2.36-9+deb12u9"),
        ("15.18-0+deb12u1", "15.10-0+deb12u1"),
    ] {
        let dpkg = if dpkg_says(a, "lt", b) { Ordering::Less } else { Ordering::Greater };
        assert_eq!(compare_versions(a, b), Some(dpkg), "{a} vs {b}");
    }
}

#[test]
fn one_record_or_an_array_of_them_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv/DSA-5532-1.json");
    let one: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir).unwrap()).unwrap();
    let many = serde_json::Value::Array(vec![one.clone(), one.clone()]);
    assert_eq!(serde_json::from_value::<Records>(one).unwrap().into_vec().len(), 1);
    assert_eq!(serde_json::from_value::<Records>(many).unwrap().into_vec().len(), 2);
}

/// The records of the engines' own packages (`fixtures/osv/engines`): Redis
/// from Debian, the tansu broker from crates.io.
fn engine_fixtures() -> Vec<Record> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/osv/engines");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/osv/engines exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let records: Vec<Record> = names
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .collect();
    for (i, r) in records.iter().enumerate() {
        validate(i, r).unwrap_or_else(|e| panic!("fixture invalid: {e}"));
    }
    records
}

/// What `dpkg-query` prints on a bookworm host with Redis and PostgreSQL
/// (the format `drover serve` reads; versions of this host).
const HOST_DPKG: &str = "\
libssl3:amd64\t3.0.19-1~deb12u2\topenssl\t3.0.19-1~deb12u2
postgresql-15\t15.18-0+deb12u1\tpostgresql-15\t15.18-0+deb12u1
redis-server\t5:7.0.15-1~deb12u10\tredis\t5:7.0.15-1~deb12u10
redis-tools\t5:7.0.15-1~deb12u10\tredis\t5:7.0.15-1~deb12u10
";

fn engine_image(engine: EngineKind, version: &str, manifest: Vec<drover_model::Package>) -> Image {
    Image::new(engine, version, BTreeMap::new(), BTreeMap::new(), Timestamp(1))
        .with_settings_and_manifest(BTreeMap::new(), manifest)
}

#[test]
fn the_audit_lists_redis_by_its_debian_source_and_kafka_by_the_tansu_crate() {
    let records = engine_fixtures();
    assert_eq!(records.len(), 4, "the engines' fixture set changed: update this test");
    let host = drover_model::Package::parse_dpkg_query(HOST_DPKG);
    let redis = engine_image(EngineKind::Redis, "7.0.15", host.clone());
    let mut kafka_manifest = host.clone();
    kafka_manifest.push(drover_model::Package::crate_package("tansu", "0.6.0"));
    let kafka = engine_image(EngineKind::Kafka, "tansu 0.6.0", kafka_manifest);
    let usage = BTreeMap::from([
        (
            redis.id.clone(),
            ImageUse {
                services: BTreeSet::from(["cache".into()]),
                owners: BTreeSet::from(["web".into()]),
                instances: 2,
            },
        ),
        (
            kafka.id.clone(),
            ImageUse {
                services: BTreeSet::from(["events".into()]),
                owners: BTreeSet::from(["data".into()]),
                instances: 3,
            },
        ),
    ]);
    let findings = audit(&records, &[redis.clone(), kafka.clone()], &usage);
    let ids: Vec<&str> = findings.iter().map(|f| f.advisory.as_str()).collect();
    // 3312's fix (~deb12u4) and 0102's (0.6.0-rc.1) are at or below what
    // is installed: not listed.
    assert_eq!(ids, ["DEBIAN-CVE-2026-3311", "RUSTSEC-2026-0101"], "{findings:#?}");

    let r = &findings[0];
    assert_eq!((r.package.as_str(), r.installed.as_str()), ("redis", "5:7.0.15-1~deb12u10"));
    assert_eq!(r.fixed.as_deref(), Some("5:7.0.15-1~deb12u11"));
    assert_eq!(r.binaries, ["redis-server", "redis-tools"]);
    // Both images carry the host's redis packages (Kafka's host has Redis
    // too): the finding names both, and the Redis service.
    assert_eq!(r.images.len(), 2);
    assert!(r.services.contains(&"cache".to_string()), "{r:?}");

    let t = &findings[1];
    assert_eq!((t.package.as_str(), t.installed.as_str(), t.fixed.as_deref()), ("tansu", "0.6.0", Some("0.6.1")));
    assert_eq!(t.images, std::slice::from_ref(&kafka.id), "only the Kafka image has the crate");
    assert_eq!(
        (t.services.clone(), t.instances, t.owners.clone()),
        (vec!["events".to_string()], 3, vec!["data".into()])
    );

    // The fix in one step: an image with tansu 0.6.1 is the newest unaffected.
    let fixed =
        engine_image(EngineKind::Kafka, "tansu 0.6.1", vec![drover_model::Package::crate_package("tansu", "0.6.1")]);
    assert_eq!(newest_unaffected_image(&records[2], &[kafka.clone(), fixed.clone()]), Some(fixed.id));
    // A Debian package named like the crate is not the crate.
    let debian_tansu = drover_model::Package::parse_dpkg_query("tansu\t0.6.0\ttansu\t0.6.0\n");
    assert!(!image_affected(&records[2], &engine_image(EngineKind::Kafka, "x", debian_tansu)));
}

#[test]
fn crates_io_versions_compare_by_semver_and_debian_ones_by_dpkg() {
    let records = engine_fixtures();
    let rc = records.iter().find(|r| r.id == "RUSTSEC-2026-0102").unwrap();
    // A pre-release sorts before its release in semver; dpkg reads "-rc.1"
    // as a Debian revision and sorts it after: the order decides the answer.
    assert_eq!(compare_in(CRATES_IO, "0.6.0-rc.1", "0.6.0"), Some(Ordering::Less));
    assert_eq!(compare_versions("0.6.0-rc.1", "0.6.0"), Some(Ordering::Greater));
    assert_eq!(affects_in(rc, CRATES_IO, "tansu", "0.6.0"), None, "fixed by the pre-release");
    assert_eq!(affects_in(rc, CRATES_IO, "tansu", "0.5.9"), Some(Some("0.6.0-rc.1".into())));
    assert_eq!(affects_in(rc, CRATES_IO, "tansu", "0.4.0"), None, "before the introduction");
    assert_eq!(affects_in(rc, ECOSYSTEM, "tansu", "0.5.9"), None, "a crate's record names no Debian package");
    // Semver orders numerically, not as text: 0.10 after 0.6.
    assert_eq!(compare_in(CRATES_IO, "0.10.0", "0.6.1"), Some(Ordering::Greater));
    // Debian records keep dpkg order: the epoch makes 5:7.0.15 newer than 7.0.16.
    let redis = records.iter().find(|r| r.id == "DEBIAN-CVE-2026-3311").unwrap();
    assert_eq!(affects(redis, "redis", "5:7.0.15-1~deb12u10"), Some(Some("5:7.0.15-1~deb12u11".into())));
    assert_eq!(affects(redis, "redis", "5:7.0.15-1~deb12u11"), None);
    assert_eq!(affects(redis, "redis", "5:7.0.15-1~deb12u11+b1"), None);
    // A crates.io range version that is not semver is refused at import.
    let mut bad = rc.clone();
    bad.affected[0].ranges[0].events[1].fixed = Some("0.6".into());
    assert!(
        matches!(validate(0, &bad), Err(InvalidRecord::Version { kind, .. }) if kind == "semver"),
        "{:?}",
        validate(0, &bad)
    );
}
