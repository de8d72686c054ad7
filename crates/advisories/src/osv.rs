//! The part of the OSV schema (<https://ossf.github.io/osv-schema/>) the
//! audit reads. Unknown fields (references, severity, database_specific,
//! ...) are accepted and dropped. Written here rather than taken from the
//! `osv` crate: its schema types pull in chrono and a client, for six
//! structs.

use serde::{Deserialize, Serialize};

/// The OSV ecosystem of Debian 12 (bookworm) records: the hosts Drover runs
/// on. Records of `crates.io` match the crates Drover builds binaries from
/// (`drover_model::CRATES_IO`); records of other ecosystems are kept but
/// match nothing.
pub const ECOSYSTEM: &str = "Debian:12";

/// One OSV record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    /// `DSA-5532-1`, `CVE-2023-5363`, `DLA-...`.
    #[schema(min_length = 1, max_length = 128)]
    pub id: String,
    /// RFC 3339: when the record last changed.
    pub modified: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// RFC 3339: set when the record was withdrawn; such a record affects
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default)]
    pub affected: Vec<Affected>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Affected {
    pub package: Package,
    #[serde(default)]
    pub ranges: Vec<Range>,
    /// Versions affected one by one (besides the ranges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// Named `OsvPackage` in the OpenAPI document: `Package` is an image
/// manifest's entry (drover_model::Package).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = OsvPackage)]
pub struct Package {
    /// `Debian:12`, or `crates.io` for a crate Drover builds a binary from.
    pub ecosystem: String,
    /// For Debian: the SOURCE package (`openssl`, not `libssl3`); for
    /// crates.io: the crate (`tansu`).
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Range {
    /// `ECOSYSTEM` for Debian (dpkg order), `SEMVER` for crates.io; other
    /// kinds (`GIT`) are ignored.
    #[serde(rename = "type")]
    pub kind: String,
    pub events: Vec<RangeEvent>,
}

/// One event of a range: exactly one of the four is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RangeEvent {
    /// `"0"`: from the first version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `POST /v1/advisories`: one record or an array of them.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Records {
    Many(Vec<Record>),
    One(Box<Record>),
}

impl Records {
    pub fn into_vec(self) -> Vec<Record> {
        match self {
            Records::Many(v) => v,
            Records::One(r) => vec![*r],
        }
    }
}
