//! The CVE audit: OSV advisories matched against the package manifests of
//! Drover's images. Pure: the server hands it records, images and who uses
//! them, and gets findings back.
//!
//! Debian's OSV records name the SOURCE package and source versions
//! (`openssl 3.0.15-1~deb12u1`); an image's manifest lists binary packages
//! (`libssl3`), each mapped to its source by [`Image::source_of`]. Versions
//! compare in dpkg order (epochs, `~` before anything), through the
//! `debversion` crate, property-tested against `dpkg --compare-versions`.
//!
//! Binaries Drover builds from crates (the tansu broker of Kafka services)
//! are manifest entries of ecosystem `crates.io`: RustSec's OSV records name
//! the crate and give `SEMVER` ranges, compared by the `semver` crate.

pub mod osv;

use debversion::Version;
pub use drover_model::CRATES_IO;
use drover_model::{Image, ImageId, Timestamp};
pub use osv::{Record, Records, ECOSYSTEM};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// An advisory database whose data was fetched longer ago than this is a
/// finding of its own: Debian's security tracker and the OSV export update
/// daily, so two days means at least one export was missed.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 24 * 3600);

/// Most records one import takes: the whole Debian OSV export is ~50k.
pub const MAX_RECORDS_PER_IMPORT: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("record #{index}: the id must be 1 to 128 characters")]
    Id { index: usize },
    #[error("record {id}: {field} {value:?} is not an RFC 3339 time")]
    Time { id: String, field: &'static str, value: String },
    #[error("record {id}: package {package}: version {version:?} is not a {kind} version")]
    Version { id: String, package: String, version: String, kind: &'static str },
    #[error("record {id}: affected package name must not be empty")]
    Package { id: String },
    #[error("record {id}: a range event must set exactly one of introduced, fixed, last_affected, limit")]
    Event { id: String },
}

/// Parses an RFC 3339 time (OSV's `modified`, `withdrawn`).
pub fn parse_time(text: &str) -> Option<Timestamp> {
    let t: jiff::Timestamp = text.parse().ok()?;
    Some(Timestamp(t.as_microsecond()))
}

/// Dpkg order of two version strings; `None` if either is not a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    Some(a.parse::<Version>().ok()?.cmp(&b.parse::<Version>().ok()?))
}

/// The order of two versions in `ecosystem`: semver for crates.io, dpkg
/// order for everything else (the host's Debian).
pub fn compare_in(ecosystem: &str, a: &str, b: &str) -> Option<Ordering> {
    if ecosystem == CRATES_IO {
        Some(a.parse::<semver::Version>().ok()?.cmp(&b.parse::<semver::Version>().ok()?))
    } else {
        compare_versions(a, b)
    }
}

/// The range type whose versions an ecosystem's records compare:
/// `ECOSYSTEM` (dpkg order) for Debian, `SEMVER` for crates.io.
fn range_kind(ecosystem: &str) -> &'static str {
    if ecosystem == CRATES_IO {
        "SEMVER"
    } else {
        "ECOSYSTEM"
    }
}

/// The OSV ecosystem of an image's package (`None`: the host's Debian).
fn ecosystem_of(package_ecosystem: Option<&str>) -> &str {
    package_ecosystem.unwrap_or(ECOSYSTEM)
}

/// Checks what the audit relies on: an id, RFC 3339 times, package names,
/// Debian versions in the `ECOSYSTEM` ranges of Debian records, semver
/// versions in the `SEMVER` ranges of crates.io records, one value per event.
pub fn validate(index: usize, r: &Record) -> Result<(), InvalidRecord> {
    if r.id.is_empty() || r.id.len() > 128 {
        return Err(InvalidRecord::Id { index });
    }
    let times =
        [("modified", Some(&r.modified)), ("published", r.published.as_ref()), ("withdrawn", r.withdrawn.as_ref())];
    for (field, value) in times {
        if let Some(v) = value {
            if parse_time(v).is_none() {
                return Err(InvalidRecord::Time { id: r.id.clone(), field, value: v.clone() });
            }
        }
    }
    for a in &r.affected {
        if a.package.name.is_empty() {
            return Err(InvalidRecord::Package { id: r.id.clone() });
        }
        let debian = a.package.ecosystem.starts_with("Debian");
        let crates = a.package.ecosystem == CRATES_IO;
        for range in &a.ranges {
            for e in &range.events {
                let set = [&e.introduced, &e.fixed, &e.last_affected, &e.limit];
                if set.iter().filter(|v| v.is_some()).count() != 1 {
                    return Err(InvalidRecord::Event { id: r.id.clone() });
                }
                let v = set.into_iter().flatten().next().map(String::as_str).unwrap_or("0");
                let invalid = if debian && range.kind == "ECOSYSTEM" {
                    v != "0" && v.parse::<Version>().is_err()
                } else if crates && range.kind == "SEMVER" {
                    v != "0" && v.parse::<semver::Version>().is_err()
                } else {
                    false
                };
                if invalid {
                    return Err(InvalidRecord::Version {
                        id: r.id.clone(),
                        package: a.package.name.clone(),
                        version: v.to_string(),
                        kind: if crates { "semver" } else { "Debian" },
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether `record` affects Debian source package `source` at `version`:
/// `None` if not; otherwise the version that fixes it (`None` inside: no
/// fix yet). A withdrawn record affects nothing. A range with no `fixed`
/// event affects every version from its introduction.
pub fn affects(record: &Record, source: &str, version: &str) -> Option<Option<String>> {
    affects_in(record, ECOSYSTEM, source, version)
}

/// [`affects`] for a package of `ecosystem`: `Debian:12` compares
/// `ECOSYSTEM` ranges in dpkg order, `crates.io` `SEMVER` ranges by semver.
pub fn affects_in(record: &Record, ecosystem: &str, source: &str, version: &str) -> Option<Option<String>> {
    if ecosystem == CRATES_IO {
        affects_with::<semver::Version>(record, ecosystem, source, version)
    } else {
        affects_with::<Version>(record, ecosystem, source, version)
    }
}

fn affects_with<V: Ord + std::str::FromStr>(
    record: &Record,
    ecosystem: &str,
    source: &str,
    version: &str,
) -> Option<Option<String>> {
    if record.withdrawn.is_some() {
        return None;
    }
    let installed: V = version.parse().ok()?;
    let kind = range_kind(ecosystem);
    for a in &record.affected {
        if a.package.ecosystem != ecosystem || a.package.name != source {
            continue;
        }
        for range in a.ranges.iter().filter(|r| r.kind == kind) {
            if let Some(fix) = in_range(&range.events, &installed) {
                return Some(fix);
            }
        }
        let listed = a.versions.iter().filter_map(|v| v.parse::<V>().ok()).any(|v| v == installed);
        if listed {
            return Some(None);
        }
    }
    None
}

/// What an event does to the versions at and after it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Introduced,
    Fixed,
    LastAffected,
    Limit,
}

/// The OSV evaluation of one range (`ECOSYSTEM` or `SEMVER`, in the order
/// of `V`): events in version order; `introduced` opens (at and after it),
/// `fixed` and `limit` close at and after, `last_affected` closes after.
/// Returns the fix if `v` is inside.
fn in_range<V: Ord + std::str::FromStr>(events: &[osv::RangeEvent], v: &V) -> Option<Option<String>> {
    // `None` version: introduced "0", before every version.
    let mut steps: Vec<(Option<V>, Step, &str)> = Vec::with_capacity(events.len());
    for e in events {
        let (step, text) = match (&e.introduced, &e.fixed, &e.last_affected, &e.limit) {
            (Some(t), ..) => (Step::Introduced, t),
            (_, Some(t), ..) => (Step::Fixed, t),
            (_, _, Some(t), _) => (Step::LastAffected, t),
            (_, _, _, Some(t)) => (Step::Limit, t),
            _ => continue,
        };
        let version = if step == Step::Introduced && text == "0" {
            None
        } else {
            match text.parse::<V>() {
                Ok(parsed) => Some(parsed),
                Err(_) => continue,
            }
        };
        steps.push((version, step, text.as_str()));
    }
    // Option<Version> orders None first: "0" before every version; at one
    // version an introduction comes before what closes it.
    steps.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut inside = false;
    let mut position = 0;
    for (i, (at, step, _)) in steps.iter().enumerate() {
        let reached = match (at, step) {
            (None, _) => true,
            (Some(at), Step::LastAffected) => v > at,
            (Some(at), _) => v >= at,
        };
        if !reached {
            break;
        }
        inside = *step == Step::Introduced;
        position = i + 1;
    }
    if !inside {
        return None;
    }
    let fix = steps[position..].iter().find(|(_, step, _)| *step == Step::Fixed).map(|(_, _, t)| t.to_string());
    Some(fix)
}

/// Who runs an image: the shell fills this from the engine's views.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageUse {
    pub services: BTreeSet<String>,
    /// The teams that own those services.
    pub owners: BTreeSet<String>,
    pub instances: u64,
}

/// One advisory that affects something (`GET /v1/advisories/audit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    /// The OSV id.
    pub advisory: String,
    /// The source package the advisory names.
    pub package: String,
    /// The installed source version (the oldest, when images differ).
    pub installed: String,
    /// The version that fixes it; `null` while there is no fix.
    pub fixed: Option<String>,
    /// The binary packages of the images built from that source.
    pub binaries: Vec<String>,
    pub images: Vec<ImageId>,
    pub services: Vec<String>,
    /// Instances running an affected image.
    pub instances: u64,
    /// Teams owning the affected services.
    pub owners: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// The images holding one source package: (image, binary, source version).
type Holders<'a> = Vec<(&'a Image, &'a str, &'a str)>;

/// The audit: one finding per advisory (and source package it names) that
/// affects at least one image. Ordered by advisory id, then package.
pub fn audit(records: &[Record], images: &[Image], usage: &BTreeMap<ImageId, ImageUse>) -> Vec<Finding> {
    // (Ecosystem, source package) -> (image, binary, source version): an
    // index so each record looks only at the images holding its packages.
    let mut by_source: BTreeMap<(&str, &str), Holders> = BTreeMap::new();
    for image in images {
        for (ecosystem, binary, source, version) in image.installed() {
            by_source.entry((ecosystem_of(ecosystem), source)).or_default().push((image, binary, version));
        }
    }
    let mut findings: BTreeMap<(String, String), Finding> = BTreeMap::new();
    for record in records.iter().filter(|r| r.withdrawn.is_none()) {
        for a in &record.affected {
            let ecosystem = a.package.ecosystem.as_str();
            let Some(holders) = by_source.get(&(ecosystem, a.package.name.as_str())) else { continue };
            for &(image, binary, version) in holders {
                let Some(fixed) = affects_in(record, ecosystem, &a.package.name, version) else { continue };
                let key = (record.id.clone(), a.package.name.clone());
                let f = findings.entry(key).or_insert_with(|| Finding {
                    advisory: record.id.clone(),
                    package: a.package.name.clone(),
                    installed: version.to_string(),
                    fixed: fixed.clone(),
                    binaries: Vec::new(),
                    images: Vec::new(),
                    services: Vec::new(),
                    instances: 0,
                    owners: Vec::new(),
                    summary: record.summary.clone(),
                });
                if compare_in(ecosystem, version, &f.installed) == Some(Ordering::Less) {
                    f.installed = version.to_string();
                    f.fixed = fixed;
                }
                if !f.binaries.iter().any(|b| b == binary) {
                    f.binaries.push(binary.to_string());
                }
                if !f.images.contains(&image.id) {
                    f.images.push(image.id.clone());
                    if let Some(u) = usage.get(&image.id) {
                        f.services.extend(u.services.iter().cloned());
                        f.owners.extend(u.owners.iter().cloned());
                        f.instances += u.instances;
                    }
                }
            }
        }
    }
    findings
        .into_values()
        .map(|mut f| {
            for list in [&mut f.binaries, &mut f.services, &mut f.owners] {
                list.sort();
                list.dedup();
            }
            f.images.sort();
            f
        })
        .collect()
}

/// Whether any package of `image` is affected by `record`.
pub fn image_affected(record: &Record, image: &Image) -> bool {
    image
        .installed()
        .into_iter()
        .any(|(ecosystem, _, source, version)| affects_in(record, ecosystem_of(ecosystem), source, version).is_some())
}

/// The fix in one step (`POST /v1/rollouts` with `"fix"`): the newest of
/// `images` (by `created_at`, then id) that `advisory` does not affect.
/// The caller passes the candidates (the images of the engine to roll).
/// An image without any package of the advisory's source is unaffected.
pub fn newest_unaffected_image(advisory: &Record, images: &[Image]) -> Option<ImageId> {
    images
        .iter()
        .filter(|i| !image_affected(advisory, i))
        .max_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)))
        .map(|i| i.id.clone())
}

/// The state of the advisory database (`GET /v1/advisories`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseStatus {
    /// Records held, withdrawn ones included.
    pub records: u64,
    pub withdrawn: u64,
    /// When the newest imported data was fetched from its source (RFC 3339);
    /// `null`: nothing imported yet.
    pub fetched_at: Option<String>,
    pub imported_at: Option<String>,
    /// No data, or data fetched more than `stale_after_seconds` ago: the
    /// audit cannot be trusted to know recent advisories.
    pub stale: bool,
    pub stale_after_seconds: u64,
}

/// Whether data fetched at `fetched_at` (none: never) is stale at `now`.
pub fn is_stale(fetched_at: Option<Timestamp>, now: Timestamp) -> bool {
    let limit = STALE_AFTER.as_micros() as i64;
    fetched_at.is_none_or(|f| now.0 - f.0 > limit)
}

/// RFC 3339 text of a stored time.
pub fn format_time(t: Timestamp) -> String {
    jiff::Timestamp::from_microsecond(t.0).map(|t| t.to_string()).unwrap_or_else(|_| t.0.to_string())
}

#[cfg(test)]
mod tests;
