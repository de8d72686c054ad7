//! Immutable, content-addressed images: an instance is built from one and
//! never changed in place. The id is the SHA-256 of the canonical content,
//! so two identical manifests are one image.

use crate::{EngineKind, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct ImageId(pub String);

impl std::fmt::Debug for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub id: ImageId,
    pub engine: EngineKind,
    /// The version the engine's binary reports.
    pub version: String,
    /// Configuration settings applied to every instance built from it.
    pub configuration: BTreeMap<String, String>,
    /// Package name to version: what a vulnerability audit queries.
    pub packages: BTreeMap<String, String>,
    /// Engine settings a provider applies to every instance it builds from
    /// this image (`work_mem = 8MB`), beside its own; empty for none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// The host's packages as dpkg knows them, with the source package each
    /// binary was built from (`libssl3` from `openssl`): advisories name
    /// source packages, so the audit maps through this. Empty when unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest: Vec<Package>,
    pub created_at: Timestamp,
}

/// One installed binary package and the source package it was built from,
/// as `dpkg-query -W -f='${binary:Package}\t${Version}\t${source:Package}\t${source:Version}\n'`
/// prints them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Package {
    /// The binary package (`libssl3:amd64` keeps its architecture suffix off: `libssl3`).
    pub name: String,
    pub version: String,
    /// The source package (`openssl`); the binary's own name when dpkg names none.
    pub source: String,
    /// The source version (differs from `version` for binNMUs).
    pub source_version: String,
}

impl Package {
    /// Parses `dpkg-query` output in the format above; lines that do not
    /// have four fields are skipped. Sorted by name: the same host gives the
    /// same manifest (and so the same image id) whatever dpkg's order.
    pub fn parse_dpkg_query(text: &str) -> Vec<Package> {
        let mut out: Vec<Package> = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split('\t');
                let (name, version, source, source_version) = (f.next()?, f.next()?, f.next()?, f.next()?);
                let name = name.split(':').next().unwrap_or(name).trim();
                if name.is_empty() || version.trim().is_empty() {
                    return None;
                }
                let source = source.split_whitespace().next().filter(|s| !s.is_empty()).unwrap_or(name);
                let source_version = Some(source_version.trim()).filter(|s| !s.is_empty()).unwrap_or(version.trim());
                Some(Package {
                    name: name.to_string(),
                    version: version.trim().to_string(),
                    source: source.to_string(),
                    source_version: source_version.to_string(),
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Image {
    /// Builds the image and derives its id from everything but `created_at`.
    pub fn new(
        engine: EngineKind,
        version: impl Into<String>,
        configuration: BTreeMap<String, String>,
        packages: BTreeMap<String, String>,
        created_at: Timestamp,
    ) -> Image {
        let mut image = Image {
            id: ImageId(String::new()),
            engine,
            version: version.into(),
            configuration,
            packages,
            settings: BTreeMap::new(),
            manifest: Vec::new(),
            created_at,
        };
        image.id = image.content_id();
        image
    }

    /// The same image with `settings` and `manifest`, and the id of that content.
    pub fn with_settings_and_manifest(mut self, settings: BTreeMap<String, String>, manifest: Vec<Package>) -> Image {
        self.settings = settings;
        self.manifest = manifest;
        self.id = self.content_id();
        self
    }

    /// The id its content gives: what a registered image's id must be.
    pub fn content_id(&self) -> ImageId {
        let mut canonical = serde_json::json!({
            "engine": self.engine,
            "version": self.version,
            "configuration": self.configuration,
            "packages": self.packages,
        });
        // Only when present: images made before these fields keep their ids.
        if !self.settings.is_empty() {
            canonical["settings"] = serde_json::json!(self.settings);
        }
        if !self.manifest.is_empty() {
            canonical["manifest"] = serde_json::json!(self.manifest);
        }
        // BTreeMaps serialize in key order, so this text is canonical.
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        ImageId(format!("sha256:{}", hex::encode(digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_id_whatever_the_time_and_different_content_differs() {
        let pk = BTreeMap::from([("postgresql-15".to_string(), "15.18".to_string())]);
        let a = Image::new(EngineKind::Postgres, "15.18", BTreeMap::new(), pk.clone(), Timestamp(1));
        let b = Image::new(EngineKind::Postgres, "15.18", BTreeMap::new(), pk, Timestamp(2));
        let c = Image::new(EngineKind::Postgres, "15.19", BTreeMap::new(), BTreeMap::new(), Timestamp(1));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.0.starts_with("sha256:") && a.id.0.len() == 7 + 64);
    }

    #[test]
    fn settings_and_manifest_are_content_and_old_ids_are_kept() {
        let a = Image::new(EngineKind::Postgres, "15", BTreeMap::new(), BTreeMap::new(), Timestamp(1));
        let same = a.clone().with_settings_and_manifest(BTreeMap::new(), Vec::new());
        assert_eq!(a.id, same.id);
        let tuned = a.clone().with_settings_and_manifest(BTreeMap::from([("work_mem".into(), "8MB".into())]), vec![]);
        assert_ne!(a.id, tuned.id);
        assert_eq!(tuned.content_id(), tuned.id);
    }

    #[test]
    fn dpkg_query_lines_keep_binary_and_source_names() {
        let text = "libssl3:amd64\t3.0.17-1~deb12u2\topenssl\t3.0.17-1~deb12u2\n\
                    bash\t5.2.15-2+b7\tbash\t5.2.15-2\n\
                    zlib1g\t1:1.2.13.dfsg-1\t\t\nbroken line\n";
        let m = Package::parse_dpkg_query(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "bash");
        assert_eq!(m[0].source_version, "5.2.15-2");
        assert_eq!((m[1].name.as_str(), m[1].source.as_str()), ("libssl3", "openssl"));
        assert_eq!((m[2].source.as_str(), m[2].source_version.as_str()), ("zlib1g", "1:1.2.13.dfsg-1"));
    }
}
