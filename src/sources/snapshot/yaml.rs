//! YAML snapshots, streamed: the file is cut into documents at their `---` lines, and
//! each document is read by serde-saphyr from the file as it parses, so a List is
//! decoded item by item into the cluster state and never held whole.

use std::{
    fmt,
    io::{self, BufRead, Read},
};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{ExternalMessageSource, Options, SnippetMode};

use super::decode::{
    Document, Key, KeySeed, Located, ObjectSeed, Problem, Sink, kind_value, typed,
};
use crate::cluster::Kind;

/// Reads every document of `reader` into `sink`.
pub(super) fn read(reader: impl BufRead, sink: &mut Sink) -> Result<(), Located> {
    let mut lines = Lines {
        reader,
        line: Vec::new(),
        offset: 0,
        fresh: false,
        number: 0,
    };
    let mut document = 0;
    loop {
        let started = lines.fresh || lines.advance().map_err(|e| read_failed(document, e))?;
        if !started {
            return Ok(());
        }
        let first_line = lines.number;
        let mut at = Position::default();
        let mut part = DocumentReader {
            lines: &mut lines,
            content: false,
            marker: false,
            end: false,
            done: false,
        };
        let outcome =
            serde_saphyr::with_deserializer_from_reader_with_options(&mut part, options(), |de| {
                DocumentSeed {
                    sink: &mut *sink,
                    at: &mut at,
                }
                .deserialize(de)
            });
        match outcome {
            Ok(false) => {}
            Ok(true) => document += 1,
            Err(e) => {
                let problem = at
                    .problem
                    .take()
                    .unwrap_or_else(|| at.explain(&e, first_line));
                return Err(Located {
                    document: document + 1,
                    problem,
                });
            }
        }
    }
}

fn read_failed(document: usize, e: io::Error) -> Located {
    Located {
        document,
        problem: Problem::new(None, format!("cannot read: {e}")),
    }
}

/// As the snapshot reader has always parsed YAML, but without the budget that guards
/// against untrusted input: a snapshot is the operator's own, and a cluster's List is
/// one document with millions of nodes. No snippets: messages are one line.
fn options() -> Options {
    serde_saphyr::options! {
        budget: None,
        with_snippet: false,
    }
}

/// Where reading a document got to, for its error message.
#[derive(Default)]
struct Position {
    /// The List item being read.
    item: Option<usize>,
    /// The kind of that item, or of the document, once read.
    kind: Option<String>,
    /// A problem found by volguard rather than by the parser.
    problem: Option<Problem>,
}

impl Position {
    fn explain(&self, e: &serde_saphyr::Error, first_line: u64) -> Problem {
        if matches!(e.without_snippet(), serde_saphyr::Error::Eof { .. }) {
            return Problem::truncated(self.item);
        }
        let render = serde_saphyr::render_options! {
            snippets: SnippetMode::Off,
            line_offset: first_line.saturating_sub(1),
        };
        let text = crate::model::config::one_line(&e.render_with_options(render));
        let syntax = matches!(
            e.without_snippet(),
            serde_saphyr::Error::ExternalMessage { source, .. }
                if matches!(**source, ExternalMessageSource::Parser(_))
        );
        let what = match self.kind.as_deref().and_then(Kind::parse) {
            _ if syntax => "invalid YAML: ".to_owned(),
            Some(kind) => format!("invalid {}: ", kind.as_str()),
            None => String::new(),
        };
        Problem::new(self.item, format!("{what}{text}"))
    }

    /// Records a problem found by volguard and stops the parser with it.
    fn fail<E: de::Error>(&mut self, problem: Problem) -> E {
        let message = problem.message.clone();
        self.problem = Some(problem);
        E::custom(message)
    }
}

/// Decodes one YAML document: nothing for an empty one (false), an object, or a List
/// streamed item by item.
struct DocumentSeed<'s, 'a> {
    sink: &'s mut Sink<'a>,
    at: &'s mut Position,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object or a List")
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut doc = Document::default();
        let mut before = Vec::new();
        loop {
            let keep = doc.kind.is_none() && !doc.list;
            let Some(key) = map.next_key_seed(KeySeed { keep })? else {
                break;
            };
            match key {
                Key::Kind => {
                    let kind = kind_value(&mut map)?;
                    if !doc.list
                        && let Some(k) = Kind::parse(&kind)
                    {
                        self.at.kind = Some(kind.clone());
                        (self.sink.each)(typed(k, kind, before, map)?);
                        return Ok(true);
                    }
                    doc.kind = Some(kind);
                }
                Key::Items => map.next_value_seed(ItemsSeed {
                    doc: &mut doc,
                    sink: &mut *self.sink,
                    at: &mut *self.at,
                })?,
                Key::Other(Some(name)) if keep => before.push((name, map.next_value::<Value>()?)),
                Key::Other(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        doc.finish(self.sink).map_err(|p| self.at.fail(p))?;
        Ok(true)
    }
}

/// The value of a document's `items`: streamed when it is a sequence, else only its
/// shape is kept, for the message.
struct ItemsSeed<'s, 'a> {
    doc: &'s mut Document,
    sink: &'s mut Sink<'a>,
    at: &'s mut Position,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ItemsSeed<'_, '_> {
    fn not_array<E>(self, shape: &'static str) -> Result<(), E> {
        self.doc.items_not_array = Some(shape);
        Ok(())
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the items of a List")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.doc.list = true;
        let mut index = 0;
        loop {
            index += 1;
            self.at.item = Some(index);
            self.at.kind = None;
            let seed = ObjectSeed {
                seen: Some(&mut self.at.kind),
            };
            let Some(item) = seq.next_element_seed(seed)? else {
                break;
            };
            self.doc
                .item(index, item, self.sink)
                .map_err(|p| self.at.fail(p))?;
        }
        self.at.item = None;
        self.at.kind = None;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.not_array("an object")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_array("a boolean")
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_array("a number")
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_array("a number")
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_array("a number")
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_array("a string")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_array("null")
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.not_array("null")
    }
}

/// The lines of a YAML stream, one held at a time.
struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    /// How much of `line` was handed on.
    offset: usize,
    /// `line` was not looked at by a document yet.
    fresh: bool,
    /// The number of `line` in the file.
    number: u64,
}

impl<R: BufRead> Lines<R> {
    /// Loads the next line; false at the end of the file.
    fn advance(&mut self) -> io::Result<bool> {
        self.line.clear();
        self.offset = 0;
        self.fresh = self.reader.read_until(b'\n', &mut self.line)? > 0;
        self.number += u64::from(self.fresh);
        Ok(self.fresh)
    }
}

/// One document of a stream: its lines up to the `---` that starts the next one, or
/// through the `...` that ends it. YAML allows no content at the start of a line that
/// begins with `---` or `...` and a blank, so the cut never falls inside a scalar.
struct DocumentReader<'l, R> {
    lines: &'l mut Lines<R>,
    /// A line of content was handed on.
    content: bool,
    /// A `---` was handed on: the next one starts another document.
    marker: bool,
    /// The line being handed on is a `...`.
    end: bool,
    done: bool,
}

impl<R: BufRead> Read for DocumentReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.done {
                return Ok(0);
            }
            let lines = &mut *self.lines;
            if lines.fresh {
                match classify(&lines.line) {
                    Line::Start if self.content || self.marker => {
                        self.done = true;
                        return Ok(0);
                    }
                    Line::Start => {
                        self.marker = true;
                        // `--- {a: 1}`, `--- !tag`: content on the marker's line.
                        self.content = lines.line[3..]
                            .trim_ascii()
                            .first()
                            .is_some_and(|b| *b != b'#');
                    }
                    Line::End => self.end = true,
                    Line::Directive if !self.content => {}
                    Line::Content | Line::Directive => self.content = true,
                    Line::Blank => {}
                }
                lines.fresh = false;
            }
            let rest = &lines.line[lines.offset..];
            if !rest.is_empty() {
                let n = rest.len().min(out.len());
                out[..n].copy_from_slice(&rest[..n]);
                lines.offset += n;
                return Ok(n);
            }
            if self.end || !lines.advance()? {
                self.done = true;
                return Ok(0);
            }
        }
    }
}

/// What a line of a YAML stream is, for cutting it into documents.
enum Line {
    /// `---`: a document starts.
    Start,
    /// `...`: the document ends.
    End,
    /// `%YAML`, `%TAG`: before a document's `---`.
    Directive,
    /// Empty, blanks, or a comment.
    Blank,
    Content,
}

fn classify(line: &[u8]) -> Line {
    let marker = |m: &[u8]| {
        line.starts_with(m) && matches!(line.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
    };
    if marker(b"---") {
        return Line::Start;
    }
    if marker(b"...") {
        return Line::End;
    }
    match line.trim_ascii_start().first() {
        None | Some(b'#') => Line::Blank,
        Some(b'%') if line[0] == b'%' => Line::Directive,
        Some(_) => Line::Content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documents a stream is cut into.
    fn split(text: &str) -> Vec<String> {
        let mut lines = Lines {
            reader: text.as_bytes(),
            line: Vec::new(),
            offset: 0,
            fresh: false,
            number: 0,
        };
        let mut docs = Vec::new();
        while lines.fresh || lines.advance().unwrap() {
            let mut part = DocumentReader {
                lines: &mut lines,
                content: false,
                marker: false,
                end: false,
                done: false,
            };
            let mut doc = String::new();
            part.read_to_string(&mut doc).unwrap();
            docs.push(doc);
        }
        docs
    }

    #[test]
    fn documents_are_cut_where_the_parser_cuts_them() {
        for text in [
            "a: 1\n---\nb: 2\n",
            "a: 1\n---\nb: 2",
            "---\na: 1\n...\n---\nb: 2\n",
            "# head\n---\na: 1\n--- {b: 2}\n--- [3]\n---\n",
            "%YAML 1.2\n---\na: |\n  text\n   --- indented\n  ...\nb: 2\n---\nc: 3\n",
            "a: 1\n...\n%YAML 1.2\n---\nb: 2\n",
            "---\n---\na: 1\n---\n# tail\n",
            "a: '---'\nb: \"...\"\n---x: 1\n",
            "a: 1\r\n---\r\nb: 2\r\n",
            "items:\n- a: 1\n- b: |\n    ---\n    ...\nkind: List\n---\nc: 3\n",
        ] {
            let whole: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
            let whole: Vec<Value> = whole.into_iter().filter(|d| !d.is_null()).collect();
            let parts: Vec<Value> = split(text)
                .iter()
                .filter_map(|d| serde_saphyr::from_str::<Option<Value>>(d).unwrap())
                .filter(|d| !d.is_null())
                .collect();
            assert_eq!(parts, whole, "{text:?} cut into {:?}", split(text));
        }
    }
}
