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
    /// Binary package name to the source package it was built from, for the
    /// packages whose source differs in name or version (`libssl3` from
    /// `openssl`): advisories (OSV `Debian:12`) name source packages. A
    /// binary missing here is its own source, at its own version. Part of
    /// the content (and the id) only when not empty, so images registered
    /// before this field existed keep their ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourcePackage>,
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
    /// The OSV ecosystem the package comes from when it is not one of the
    /// host's Debian packages: `crates.io` for a binary Drover builds from a
    /// crate (tansu), whose name is its source and whose version compares by
    /// semver. Absent (and left out of the content, so ids stay) for dpkg's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecosystem: Option<String>,
}

/// The OSV ecosystem of crates (`Package::ecosystem`).
pub const CRATES_IO: &str = "crates.io";

impl Package {
    /// A binary built from crate `name` at `version` (crates.io).
    pub fn crate_package(name: &str, version: &str) -> Package {
        Package {
            name: name.to_string(),
            version: version.to_string(),
            source: name.to_string(),
            source_version: version.to_string(),
            ecosystem: Some(CRATES_IO.to_string()),
        }
    }

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
                    ecosystem: None,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The source package a binary package was built from (`dpkg-query`'s
/// `${source:Package}` and `${source:Version}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourcePackage {
    pub name: String,
    pub version: String,
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
            sources: BTreeMap::new(),
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

    /// The same image with the source packages of its binaries, and the id
    /// of that content.
    pub fn with_sources(mut self, sources: BTreeMap<String, SourcePackage>) -> Image {
        self.sources = sources;
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
        if !self.sources.is_empty() {
            canonical["sources"] = serde_json::json!(self.sources);
        }
        // BTreeMaps (and serde_json's map) serialize in key order, so this
        // text is canonical.
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        ImageId(format!("sha256:{}", hex::encode(digest)))
    }

    /// The source package and source version of binary package `binary`
    /// installed in this image, if it is installed: from the dpkg manifest
    /// when it lists it, else from `packages` (mapped through `sources`, or
    /// its own name and version).
    pub fn source_of<'a>(&'a self, binary: &'a str) -> Option<(&'a str, &'a str)> {
        if let Some(p) = self.manifest.iter().find(|p| p.name == binary) {
            return Some((p.source.as_str(), p.source_version.as_str()));
        }
        let version = self.packages.get(binary)?;
        Some(match self.sources.get(binary) {
            Some(s) => (s.name.as_str(), s.version.as_str()),
            None => (binary, version.as_str()),
        })
    }

    /// Every installed package with its ecosystem (`None`: the host's
    /// Debian), binary name, source package and source version: what a
    /// vulnerability audit walks. The dpkg manifest's and the crates' first,
    /// then those of `packages` the manifest does not list (Debian's).
    pub fn installed(&self) -> Vec<(Option<&str>, &str, &str, &str)> {
        let mut out: Vec<(Option<&str>, &str, &str, &str)> = self
            .manifest
            .iter()
            .map(|p| (p.ecosystem.as_deref(), p.name.as_str(), p.source.as_str(), p.source_version.as_str()))
            .collect();
        for binary in self.packages.keys() {
            if self.manifest.iter().any(|p| &p.name == binary) {
                continue;
            }
            if let Some((source, version)) = self.source_of(binary) {
                out.push((None, binary.as_str(), source, version));
            }
        }
        out
    }

    /// Every installed binary package with its source package and source
    /// version: the dpkg manifest's, then those of `packages` it does not
    /// list (crates included: see [`Image::installed`] for their ecosystem).
    pub fn binaries(&self) -> Vec<(&str, &str, &str)> {
        let mut out: Vec<(&str, &str, &str)> =
            self.manifest.iter().map(|p| (p.name.as_str(), p.source.as_str(), p.source_version.as_str())).collect();
        for binary in self.packages.keys() {
            if self.manifest.iter().any(|p| &p.name == binary) {
                continue;
            }
            if let Some((source, version)) = self.source_of(binary) {
                out.push((binary.as_str(), source, version));
            }
        }
        out
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

    #[test]
    fn the_manifest_maps_binaries_to_sources_before_the_sources_map() {
        let text = "libssl3:amd64\t3.0.17-1~deb12u2\topenssl\t3.0.17-1~deb12u2\n";
        let pk = BTreeMap::from([("bash".to_string(), "5.2.15-2+b7".to_string())]);
        let i = Image::new(EngineKind::Postgres, "15", BTreeMap::new(), pk, Timestamp(1))
            .with_settings_and_manifest(BTreeMap::new(), Package::parse_dpkg_query(text));
        assert_eq!(i.source_of("libssl3"), Some(("openssl", "3.0.17-1~deb12u2")));
        assert_eq!(i.binaries(), vec![("libssl3", "openssl", "3.0.17-1~deb12u2"), ("bash", "bash", "5.2.15-2+b7")]);
    }

    #[test]
    fn sources_are_content_but_an_image_without_them_keeps_its_old_id() {
        let pk = BTreeMap::from([("libssl3".to_string(), "3.0.15-1~deb12u1".to_string())]);
        let plain = Image::new(EngineKind::Postgres, "15.18", BTreeMap::new(), pk.clone(), Timestamp(1));
        // The id of this content before `sources` existed.
        let old = serde_json::json!({"engine": EngineKind::Postgres, "version": "15.18",
            "configuration": BTreeMap::<String, String>::new(), "packages": pk});
        assert_eq!(plain.id.0, format!("sha256:{}", hex::encode(Sha256::digest(old.to_string().as_bytes()))));
        let src = SourcePackage { name: "openssl".into(), version: "3.0.15-1~deb12u1".into() };
        let with = plain.clone().with_sources(BTreeMap::from([("libssl3".to_string(), src)]));
        assert_ne!(with.id, plain.id);
        assert_eq!(with.id, with.content_id());
        assert_eq!(with.source_of("libssl3"), Some(("openssl", "3.0.15-1~deb12u1")));
        assert_eq!(plain.source_of("libssl3"), Some(("libssl3", "3.0.15-1~deb12u1")));
        assert_eq!(with.source_of("zlib1g"), None);
        let back: Image = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }
}
