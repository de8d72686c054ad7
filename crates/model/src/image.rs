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
            sources: BTreeMap::new(),
            created_at,
        };
        image.id = image.content_id();
        image
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
        if !self.sources.is_empty() {
            canonical["sources"] = serde_json::json!(self.sources);
        }
        // BTreeMaps (and serde_json's map) serialize in key order, so this
        // text is canonical.
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        ImageId(format!("sha256:{}", hex::encode(digest)))
    }

    /// The source package and source version of binary package `binary`
    /// installed in this image, if it is installed.
    pub fn source_of<'a>(&'a self, binary: &'a str) -> Option<(&'a str, &'a str)> {
        let version = self.packages.get(binary)?;
        Some(match self.sources.get(binary) {
            Some(s) => (s.name.as_str(), s.version.as_str()),
            None => (binary, version.as_str()),
        })
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
