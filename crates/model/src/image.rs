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
    pub created_at: Timestamp,
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
        let version = version.into();
        let canonical = serde_json::json!({
            "engine": engine,
            "version": version,
            "configuration": configuration,
            "packages": packages,
        });
        // BTreeMaps serialize in key order, so this text is canonical.
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        Image {
            id: ImageId(format!("sha256:{}", hex::encode(digest))),
            engine,
            version,
            configuration,
            packages,
            created_at,
        }
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
}
