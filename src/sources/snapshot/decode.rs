//! The serde side of reading a snapshot, shared by JSON and YAML: one object decoded
//! straight into its type once its `kind` is read, and the bookkeeping of a document
//! that turns out to be a List, whose items are handed on one at a time.

use serde::{
    Deserialize, Deserializer,
    de::{
        self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
        value::{MapAccessDeserializer, StringDeserializer},
    },
};
use serde_json::{Map, Value};
use std::fmt;

use crate::cluster::{ClusterObject, Kind, objects::ObjectError};

/// Where the objects of a snapshot go, and which kinds were skipped.
pub(super) struct Sink<'a> {
    /// Called once per object, in file order.
    pub each: &'a mut dyn FnMut(ClusterObject),
    /// Kinds volguard does not read, one entry per document or item.
    pub skipped: Vec<String>,
}

impl Sink<'_> {
    /// Hands on an object that is a whole document (not a List item).
    pub fn document(&mut self, decoded: Decoded) -> Result<(), Problem> {
        match decoded {
            Decoded::Object(o) => (self.each)(o),
            Decoded::Skipped(kind) => self.skipped.push(kind),
            Decoded::Kindless(_) => {
                return Err(Problem::new(None, ObjectError::NoKind.to_string()));
            }
        }
        Ok(())
    }
}

/// What is wrong with a document, before the file and document are named.
#[derive(Debug)]
pub(super) struct Problem {
    /// The List item (1-based) it is in, if any.
    pub item: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// The file ends inside the document: nothing after it can be trusted.
    pub truncated: bool,
}

impl Problem {
    /// Something wrong with the content.
    pub fn new(item: Option<usize>, message: impl Into<String>) -> Self {
        Problem {
            item,
            message: message.into(),
            truncated: false,
        }
    }

    /// The file ends inside the document (in List item `item`).
    pub fn truncated(item: Option<usize>) -> Self {
        Problem {
            item,
            message: String::new(),
            truncated: true,
        }
    }
}

/// One object of a snapshot, decoded as far as its own keys allow.
pub(super) enum Decoded {
    /// An object of a kind volguard caches, in its type.
    Object(ClusterObject),
    /// An object of a kind volguard does not read (its body was skipped, not built).
    Skipped(String),
    /// An object without `kind`: a List of one kind (`NodeList`) may leave it out, and
    /// names it only in its own `kind`.
    Kindless(Map<String, Value>),
}

/// Without a record of the kind: the JSON reader decodes through serde_json's stream,
/// which takes a type rather than a seed, and looks the kind up again on an error.
impl<'de> Deserialize<'de> for Decoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ObjectSeed { seen: None }.deserialize(d)
    }
}

/// Decodes one object: the keys before `kind` (usually just `apiVersion`) are held,
/// then replayed with the rest of the mapping into the kind's type, so the object is
/// read once, without a tree. `seen` receives the kind as soon as it is read, so that
/// an error further in can name it.
pub(super) struct ObjectSeed<'a> {
    pub seen: Option<&'a mut Option<String>>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Decoded;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
        let mut before = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed { keep: true })? {
            let name = match key {
                Key::Kind => {
                    let kind = kind_value(&mut map)?;
                    if let Some(seen) = self.seen {
                        *seen = Some(kind.clone());
                    }
                    return match Kind::parse(&kind) {
                        Some(k) => typed(k, kind, before, map).map(Decoded::Object),
                        None if kind.ends_with("List") => {
                            Err(de::Error::custom("a List inside a List is not read"))
                        }
                        None => {
                            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                            Ok(Decoded::Skipped(kind))
                        }
                    };
                }
                Key::Items => "items".to_owned(),
                Key::Other(name) => name.unwrap_or_default(),
            };
            before.push((name, map.next_value()?));
        }
        Ok(Decoded::Kindless(before.into_iter().collect()))
    }
}

/// Reads the value of a `kind` key, which must be a string.
pub(super) fn kind_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<String, A::Error> {
    match map.next_value::<Value>()? {
        Value::String(kind) => Ok(kind),
        other => Err(de::Error::custom(format_args!(
            "kind is {}, not a string",
            describe(&other)
        ))),
    }
}

/// Decodes the rest of `map` as a `kind` object, after the entries read before `kind`.
pub(super) fn typed<'de, A: MapAccess<'de>>(
    kind: Kind,
    name: String,
    mut before: Vec<(String, Value)>,
    map: A,
) -> Result<ClusterObject, A::Error> {
    before.push(("kind".to_owned(), Value::String(name)));
    let replay = Replay {
        held: before.into_iter(),
        value: None,
        rest: map,
    };
    ClusterObject::deserialize_kind(kind, MapAccessDeserializer::new(replay))
}

/// The keys of a mapping that tell what it is; the others by name when `keep`.
pub(super) enum Key {
    Kind,
    Items,
    Other(Option<String>),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeySeed { keep: false }.deserialize(d)
    }
}

/// Reads a key, allocating its name only when it will be replayed.
pub(super) struct KeySeed {
    pub keep: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "kind" => Key::Kind,
            "items" => Key::Items,
            _ => Key::Other(self.keep.then(|| v.to_owned())),
        })
    }
}

/// A mapping whose first entries were already read: they are replayed, then the rest
/// is read from the source.
struct Replay<A> {
    held: std::vec::IntoIter<(String, Value)>,
    value: Option<Value>,
    rest: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.held.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(StringDeserializer::new(key)).map(Some)
            }
            None => self.rest.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value).map_err(de::Error::custom),
            None => self.rest.next_value_seed(seed),
        }
    }
}

/// What a value is, in a message: "a string", "an object", ...
pub(super) fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The shape of a value that is skipped: what `items` was when it was not an array.
pub(super) struct Shape(pub &'static str);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape("a string"))
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape("null"))
    }

    fn visit_none<E>(self) -> Result<Shape, E> {
        Ok(Shape("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shape("an object"))
    }
}

/// A top-level document as its keys arrive. It is a List when it has an `items` array,
/// whatever its `kind` says and wherever `kind` comes (`kubectl get -o json` prints
/// `items` before `kind`, so the items are read before the List's kind is known); each
/// item is decoded by its own `kind`. Items without one take the List's (`NodeList` →
/// `Node`); those that arrive before the List's `kind` is read are held until its end,
/// the only objects ever held. A List must have a `kind`: without it, a YAML dump cut
/// short would load as a smaller cluster.
#[derive(Default)]
pub(super) struct Document {
    /// `kind`, once read.
    pub kind: Option<String>,
    /// `items` was an array.
    pub list: bool,
    /// What `items` was when it was not an array.
    pub items_not_array: Option<&'static str>,
    /// Kindless items waiting for the List's `kind`, with their index.
    pending: Vec<(usize, Map<String, Value>)>,
}

impl Document {
    /// Hands on List item `index` (1-based).
    pub fn item(&mut self, index: usize, item: Decoded, sink: &mut Sink) -> Result<(), Problem> {
        match item {
            Decoded::Kindless(map) if self.kind.is_some() => {
                let kind = self.item_kind();
                kindless(index, kind, map, sink)
            }
            Decoded::Kindless(map) => {
                self.pending.push((index, map));
                Ok(())
            }
            Decoded::Object(o) => {
                (sink.each)(o);
                Ok(())
            }
            Decoded::Skipped(kind) => {
                sink.skipped.push(kind);
                Ok(())
            }
        }
    }

    /// The kind a List of one kind gives its items: `NodeList` → `Node`.
    fn item_kind(&self) -> Option<&str> {
        self.kind
            .as_deref()
            .and_then(|k| k.strip_suffix("List"))
            .filter(|k| !k.is_empty())
    }

    /// The document is complete: resolves held items, or says what the document lacks.
    /// A document of a cached kind never gets here: it is decoded as soon as its
    /// `kind` is read.
    pub fn finish(mut self, sink: &mut Sink) -> Result<(), Problem> {
        if self.list && self.kind.is_none() {
            // Both kubectl and the API server name a List's kind; kubectl prints it
            // after the items, so a YAML dump cut short (which still parses) lacks it.
            return Err(Problem::new(
                None,
                "List without kind (kubectl prints it after the items: is the file cut short?)",
            ));
        }
        if self.list {
            let pending = std::mem::take(&mut self.pending);
            let kind = self.item_kind();
            for (index, map) in pending {
                kindless(index, kind, map, sink)?;
            }
            return Ok(());
        }
        match (self.kind, self.items_not_array) {
            (Some(kind), Some(what)) if kind.ends_with("List") => Err(Problem::new(
                None,
                format!("{kind}: items is {what}, not an array"),
            )),
            (Some(kind), None) if kind.ends_with("List") => {
                Err(Problem::new(None, format!("{kind} without items")))
            }
            (Some(kind), _) => {
                sink.skipped.push(kind);
                Ok(())
            }
            (None, _) => Err(Problem::new(None, ObjectError::NoKind.to_string())),
        }
    }
}

/// Decodes a List item that has no `kind` of its own as `kind`.
fn kindless(
    index: usize,
    kind: Option<&str>,
    mut map: Map<String, Value>,
    sink: &mut Sink,
) -> Result<(), Problem> {
    let Some(kind) = kind else {
        return Err(Problem::new(
            Some(index),
            "no kind, and the List is not of one kind (such as NodeList) that would give it one",
        ));
    };
    map.insert("kind".into(), Value::String(kind.to_owned()));
    match ClusterObject::from_value(Value::Object(map)) {
        Ok(o) => (sink.each)(o),
        Err(ObjectError::UnknownKind(k)) => sink.skipped.push(k),
        Err(e) => return Err(Problem::new(Some(index), e.to_string())),
    }
    Ok(())
}

/// A problem in document `document` (1-based) of a file.
#[derive(Debug)]
pub(super) struct Located {
    pub document: usize,
    pub problem: Problem,
}
