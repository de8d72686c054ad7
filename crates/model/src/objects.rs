//! serde's derived `Deserialize` reads a struct from a JSON array as well as
//! from an object (`[id, 1, {}]` for `{"instance": id, "seq": 1, ...}`), which
//! the API's schema does not allow. These read a struct from a map only.

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::marker::PhantomData;

/// `T`, read only from a JSON object.
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(ObjectOnly)
    }
}

/// For `#[serde(deserialize_with)]` on a struct-typed field.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    ObjectOnly::deserialize(d).map(|o| o.0)
}

/// For `#[serde(deserialize_with)]` on an `Option` of a struct (null is None).
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<ObjectOnly<T>>::deserialize(d).map(|o| o.map(|o| o.0))
}

/// For `#[serde(deserialize_with)]` on a `Vec` of structs.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of JSON objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(ObjectOnly(item)) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Beat, Facts};

    #[test]
    fn structs_come_from_objects_only() {
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        assert!(serde_json::from_str::<ObjectOnly<Beat>>(&format!(r#"{{"instance":"{id}","seq":1}}"#)).is_ok());
        assert!(serde_json::from_str::<ObjectOnly<Beat>>(&format!(r#"["{id}",1,{{}}]"#)).is_err());
        assert!(serde_json::from_str::<Beat>(&format!(r#"{{"instance":"{id}","seq":1,"facts":[null,null]}}"#)).is_err());
        let beat: Beat =
            serde_json::from_str(&format!(r#"{{"instance":"{id}","seq":1,"facts":{{"writable":true}}}}"#)).unwrap();
        assert_eq!(beat.facts, Facts { writable: Some(true), ..Facts::default() });
    }
}
