//! What the serde derives do not check about the shape of JSON: they also read a struct
//! from an array of its fields, in order. The wire formats volguard reads are objects,
//! and JSON of another shape is refused rather than misread.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, Visitor, value::MapAccessDeserializer},
};

/// Whether a body starts as a JSON object (its first non-blank byte is `{`).
pub fn is_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

/// A `T` read from a JSON object only.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// Reads a `T` from a JSON object, or `None` from null or absence; an array is an error.
pub fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// A value that is there and not `null`, whatever it holds (it is skipped, not built).
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<IgnoredAny>::deserialize(d)?.is_some())
}

/// Reads a list of `T`, each from a JSON object; null is the empty list.
pub fn objects_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let list = Option::<Vec<Object<T>>>::deserialize(d)?.unwrap_or_default();
    Ok(list.into_iter().map(|o| o.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        a: u8,
        b: u8,
    }

    #[derive(Debug, Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "object_or_null")]
        pair: Option<Pair>,
        #[serde(default, deserialize_with = "objects_or_null")]
        pairs: Vec<Pair>,
    }

    #[test]
    fn objects_and_null_are_read_arrays_refused() {
        let read = |s: &str| serde_json::from_str::<Holder>(s).map(|h| h.pair);
        assert_eq!(
            read(r#"{"pair": {"a": 1, "b": 2}}"#).unwrap(),
            Some(Pair { a: 1, b: 2 })
        );
        assert_eq!(read(r#"{"pair": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
        let e = read(r#"{"pair": [1, 2]}"#).unwrap_err().to_string();
        assert!(e.contains("expected an object"), "{e}");
        let list = |s: &str| serde_json::from_str::<Holder>(s).map(|h| h.pairs);
        assert_eq!(
            list(r#"{"pairs": [{"a": 1, "b": 2}]}"#).unwrap(),
            [Pair { a: 1, b: 2 }]
        );
        assert!(list(r#"{"pairs": null}"#).unwrap().is_empty());
        let e = list(r#"{"pairs": [{"a": 1, "b": 2}, [3, 4]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an object"), "{e}");
        assert!(
            serde_json::from_str::<Pair>("[1, 2]").is_ok(),
            "what the derive allows"
        );
    }

    #[test]
    fn a_body_is_an_object_by_its_first_byte() {
        assert!(is_object(b" \n{\"a\": 1}"));
        assert!(!is_object(b"[{\"a\": 1}]"));
        assert!(!is_object(b""));
        assert!(!is_object(b"null"));
    }
}
