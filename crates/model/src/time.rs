//! Time as integer microseconds since the Unix epoch. The engine never reads
//! a clock: every input carries `now` as one of these.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }
    pub const fn micros(self) -> i64 {
        self.0
    }
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_micros().min(i64::MAX as u128) as i64))
    }
    /// Duration since `earlier`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
    pub fn to_rfc3339(self) -> String {
        match jiff::Timestamp::from_microsecond(self.0) {
            Ok(t) => t.to_string(),
            Err(_) => self.0.to_string(),
        }
    }
    pub fn parse(s: &str) -> Result<Self, String> {
        s.parse::<jiff::Timestamp>()
            .map(|t| Timestamp(t.as_microsecond()))
            .map_err(|e| format!("invalid timestamp {s:?}: {e}; expected RFC 3339 like 2026-11-21T10:00:00Z"))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Serialized as RFC 3339 for people; integer microseconds are accepted too.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Micros(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Micros(m) => jiff::Timestamp::from_microsecond(m)
                .map(|_| Timestamp(m))
                .map_err(|e| serde::de::Error::custom(format!("timestamp {m} µs is out of range: {e}"))),
            Raw::Text(t) => Timestamp::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trips_through_json_as_rfc3339() {
        let t = Timestamp(1_763_700_000_123_456);
        let j = serde_json::to_string(&t).unwrap();
        assert!(j.contains('T'), "{j}");
        assert_eq!(serde_json::from_str::<Timestamp>(&j).unwrap(), t);
        assert_eq!(serde_json::from_str::<Timestamp>("1763700000123456").unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
