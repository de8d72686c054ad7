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

/// A visitor, not an untagged enum: every record a store loads holds a few
/// timestamps, and an untagged enum buffers each one and builds (formats) an
/// error for the variant that did not match before trying the next (a fifth
/// of a takeover's decoding, measured by `load_bench`).
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or integer microseconds since the Unix epoch")
            }
            fn visit_i64<E: serde::de::Error>(self, m: i64) -> Result<Timestamp, E> {
                jiff::Timestamp::from_microsecond(m)
                    .map(|_| Timestamp(m))
                    .map_err(|e| E::custom(format!("timestamp {m} µs is out of range: {e}")))
            }
            fn visit_u64<E: serde::de::Error>(self, m: u64) -> Result<Timestamp, E> {
                match i64::try_from(m) {
                    Ok(m) => self.visit_i64(m),
                    Err(_) => Err(E::custom(format!("timestamp {m} µs is out of range"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visit)
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

    #[test]
    fn anything_else_is_refused_with_what_was_expected() {
        for bad in ["1.5", "true", "null", "[1]", "{}", "18446744073709551615"] {
            let err = serde_json::from_str::<Timestamp>(bad).unwrap_err().to_string();
            assert!(err.contains("RFC 3339") || err.contains("out of range"), "{bad}: {err}");
        }
        // jiff's range ends in the year 9999.
        assert!(serde_json::from_str::<Timestamp>("9223372036854775807")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert_eq!(serde_json::from_str::<Timestamp>("-1").unwrap(), Timestamp(-1));
        // Offsets other than Z are read as the instant they name.
        let t = serde_json::from_str::<Timestamp>("\"2025-11-21T05:00:00+01:00\"").unwrap();
        assert_eq!(t, serde_json::from_str::<Timestamp>("\"2025-11-21T04:00:00Z\"").unwrap());
        // In a record, as the stores hold them.
        #[derive(serde::Deserialize)]
        struct Record {
            at: Timestamp,
            since: Option<Timestamp>,
        }
        let r: Record = serde_json::from_str(r#"{"at":"2025-11-21T04:00:00.5Z","since":null}"#).unwrap();
        assert_eq!((r.at.to_rfc3339().as_str(), r.since), ("2025-11-21T04:00:00.5Z", None));
    }
}
