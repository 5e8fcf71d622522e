//! JSON snapshots, read in chunks: documents one after another (concatenated or one
//! per line), and a List item by item, so that memory holds a chunk of the file and
//! one object however large the file is. serde_json decodes each object from the
//! chunk; only the few bytes between a List's entries are looked at here.

use std::io::{self, Read};

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny};
use serde_json::{Value, error::Category};

use super::decode::{Decoded, Document, Key, Located, ObjectSeed, Problem, Shape, Sink, describe};
use crate::cluster::Kind;

/// How much is read at a time. An object larger than this is read in as many more.
const CHUNK: usize = 4 << 20;

/// Reads every document of `reader` into `sink`.
pub(super) fn read(reader: impl Read, sink: &mut Sink) -> Result<(), Located> {
    read_in_chunks(reader, CHUNK, sink)
}

/// [`read`], `chunk` bytes at a time (tests cut the file at every possible place).
fn read_in_chunks(reader: impl Read, chunk: usize, sink: &mut Sink) -> Result<(), Located> {
    let mut input = Input::new(reader, chunk);
    let mut at = 0;
    let mut document = 0;
    loop {
        input.mark = at;
        let first = input
            .skip_blank(&mut at)
            .map_err(|e| io_problem(document, e))?;
        let Some(first) = first else {
            return Ok(());
        };
        document += 1;
        let outcome = if first == b'{' {
            read_object(&mut input, &mut at, sink)
        } else {
            not_an_object(&mut input, &mut at)
        };
        outcome.map_err(|problem| Located { document, problem })?;
    }
}

fn io_problem(document: usize, e: io::Error) -> Located {
    Located {
        document,
        problem: Problem::new(None, format!("cannot read: {e}")),
    }
}

/// A document that is not an object: invalid JSON, or JSON of the wrong shape.
fn not_an_object(input: &mut Input<impl Read>, at: &mut u64) -> Result<(), Problem> {
    let start = *at;
    let shape: Shape = input
        .value(at)
        .map_err(|f| input.problem(f, start, None, None))?;
    Err(Problem::new(
        None,
        format!("{}, not a Kubernetes object", capitalized(shape.0)),
    ))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Reads one top-level object. Its keys are read one by one until it is known what
/// it is: an object of a cached kind is then decoded whole from its start (the few
/// keys before `kind` are read twice); a List's items are decoded as they come.
fn read_object(input: &mut Input<impl Read>, at: &mut u64, sink: &mut Sink) -> Result<(), Problem> {
    let start = *at;
    *at += 1;
    let mut doc = Document::default();
    let mut first = true;
    loop {
        match input.skip_blank(at).map_err(read_failed)? {
            Some(b'"') => {}
            Some(b'}') if first => {
                *at += 1;
                break;
            }
            Some(_) => return Err(input.syntax(*at, None, "expected a key")),
            None => return Err(Problem::truncated(None)),
        }
        first = false;
        let key_at = *at;
        let key: Key = input
            .value(at)
            .map_err(|f| input.problem(f, key_at, None, None))?;
        input.expect(at, b':', "expected `:`")?;
        input.skip_blank(at).map_err(read_failed)?;
        let value_at = *at;
        match key {
            Key::Kind => {
                let kind = match input
                    .value::<Value>(at)
                    .map_err(|f| input.problem(f, value_at, None, None))?
                {
                    Value::String(kind) => kind,
                    other => {
                        return Err(Problem::new(
                            None,
                            format!("kind is {}, not a string", describe(&other)),
                        ));
                    }
                };
                if !doc.list && Kind::parse(&kind).is_some() {
                    *at = start;
                    let object: Decoded = input
                        .value(at)
                        .map_err(|f| input.problem(f, start, None, Some(kind)))?;
                    return sink.document(object);
                }
                doc.kind = Some(kind);
            }
            Key::Items if input.byte(*at).map_err(read_failed)? == Some(b'[') => {
                doc.list = true;
                *at += 1;
                read_items(input, at, &mut doc, sink)?;
            }
            Key::Items => {
                let shape: Shape = input
                    .value(at)
                    .map_err(|f| input.problem(f, value_at, None, None))?;
                doc.items_not_array = Some(shape.0);
            }
            Key::Other(_) => {
                input
                    .value::<IgnoredAny>(at)
                    .map_err(|f| input.problem(f, value_at, None, None))?;
            }
        }
        match input.skip_blank(at).map_err(read_failed)? {
            Some(b',') => *at += 1,
            Some(b'}') => {
                *at += 1;
                break;
            }
            Some(_) => return Err(input.syntax(*at, None, "expected `,` or `}`")),
            None => return Err(Problem::truncated(None)),
        }
    }
    doc.finish(sink)
}

/// Reads a List's items, after its `[`, through its `]`.
fn read_items(
    input: &mut Input<impl Read>,
    at: &mut u64,
    doc: &mut Document,
    sink: &mut Sink,
) -> Result<(), Problem> {
    if input.skip_blank(at).map_err(read_failed)? == Some(b']') {
        *at += 1;
        return Ok(());
    }
    let mut index = 0;
    loop {
        index += 1;
        input.mark = *at;
        input.skip_blank(at).map_err(read_failed)?;
        let start = *at;
        let item: Decoded = input
            .value(at)
            .map_err(|f| input.problem(f, start, Some(index), None))?;
        doc.item(index, item, sink)?;
        match input.skip_blank(at).map_err(read_failed)? {
            Some(b',') => *at += 1,
            Some(b']') => {
                *at += 1;
                return Ok(());
            }
            Some(_) => {
                return Err(input.syntax(*at, Some(index), "expected `,` or `]` after the item"));
            }
            None => return Err(Problem::truncated(Some(index))),
        }
    }
}

fn read_failed(e: io::Error) -> Problem {
    Problem::new(None, format!("cannot read: {e}"))
}

/// Why a value could not be read.
enum Failure {
    /// serde_json refused it (positions relative to where the value starts).
    Json(serde_json::Error),
    /// The file ends inside it.
    Truncated,
    /// Reading the file failed.
    Io(io::Error),
}

/// The part of the file not yet consumed, with positions counted from its start.
struct Input<R> {
    reader: R,
    chunk: usize,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    /// Bytes before this offset are no longer needed.
    mark: u64,
    /// The reader has nothing more.
    eof: bool,
    /// Newlines before `base`, and the offset where the line holding `base` starts:
    /// for messages with the line and column in the file.
    lines: u64,
    line_start: u64,
}

impl<R: Read> Input<R> {
    fn new(reader: R, chunk: usize) -> Self {
        Input {
            reader,
            chunk,
            buf: Vec::new(),
            base: 0,
            mark: 0,
            eof: false,
            lines: 0,
            line_start: 0,
        }
    }

    /// Drops what lies before `mark` and reads more: at least a chunk, and at least as
    /// much as is held, so that a value far larger than a chunk is parsed again only a
    /// few times. False when the file has nothing more.
    fn more(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let drop = usize::try_from(self.mark - self.base).unwrap_or(usize::MAX);
        let dropped = &self.buf[..drop];
        self.lines += dropped.iter().filter(|b| **b == b'\n').count() as u64;
        if let Some(i) = dropped.iter().rposition(|b| *b == b'\n') {
            self.line_start = self.base + i as u64 + 1;
        }
        self.buf.drain(..drop);
        self.base = self.mark;
        let want = self.chunk.max(self.buf.len()).max(1);
        let read = (&mut self.reader)
            .take(want as u64)
            .read_to_end(&mut self.buf)?;
        self.eof = read < want;
        Ok(read > 0)
    }

    /// The byte at offset `at`, reading more when needed.
    fn byte(&mut self, at: u64) -> io::Result<Option<u8>> {
        loop {
            if let Some(b) = self.buf.get((at - self.base) as usize) {
                return Ok(Some(*b));
            }
            if !self.more()? {
                return Ok(None);
            }
        }
    }

    /// Skips JSON whitespace; the next byte, if any.
    fn skip_blank(&mut self, at: &mut u64) -> io::Result<Option<u8>> {
        loop {
            match self.byte(*at)? {
                Some(b' ' | b'\n' | b'\r' | b'\t') => *at += 1,
                other => return Ok(other),
            }
        }
    }

    /// Skips whitespace and one `byte`.
    fn expect(&mut self, at: &mut u64, byte: u8, what: &str) -> Result<(), Problem> {
        match self.skip_blank(at).map_err(read_failed)? {
            Some(b) if b == byte => {
                *at += 1;
                Ok(())
            }
            Some(_) => Err(self.syntax(*at, None, what)),
            None => Err(Problem::truncated(None)),
        }
    }

    /// Decodes the value at `at` and moves past it. serde_json works on the buffer;
    /// when the value runs past it, more is read and the value is decoded again.
    fn value<T: DeserializeOwned>(&mut self, at: &mut u64) -> Result<T, Failure> {
        loop {
            let start = (*at - self.base) as usize;
            let mut stream = serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter();
            let outcome = stream.next();
            let end = start + stream.byte_offset();
            match outcome {
                // A value that ends with the buffer may go on (a number): read on to know.
                Some(Ok(v)) if end < self.buf.len() || self.eof => {
                    *at = self.base + end as u64;
                    return Ok(v);
                }
                Some(Err(e)) if !e.is_eof() => return Err(Failure::Json(e)),
                Some(Err(_)) | None if self.eof => return Err(Failure::Truncated),
                _ => {}
            }
            self.more().map_err(Failure::Io)?;
        }
    }

    /// A problem with the value that starts at `start`: in List item `item`, of `kind`
    /// when known. Its kind is otherwise looked for in the value itself, so that a
    /// broken item is named by the kind it claims.
    fn problem(
        &self,
        failure: Failure,
        start: u64,
        item: Option<usize>,
        kind: Option<String>,
    ) -> Problem {
        let e = match failure {
            Failure::Truncated => return Problem::truncated(item),
            Failure::Io(e) => return Problem::new(item, format!("cannot read: {e}")),
            Failure::Json(e) => e,
        };
        let (line, column) = self.position(start, &e);
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&suffix).unwrap_or(&text);
        let kind = kind.or_else(|| self.claimed_kind(start));
        let what = match (e.classify(), kind.as_deref().and_then(Kind::parse)) {
            (Category::Data, Some(kind)) => format!("invalid {}: ", kind.as_str()),
            (Category::Data, None) => String::new(),
            _ => "invalid JSON: ".to_owned(),
        };
        Problem::new(
            item,
            format!("{what}{message} at line {line} column {column}"),
        )
    }

    /// The `kind` an object starting at `start` gives before anything wrong in it.
    fn claimed_kind(&self, start: u64) -> Option<String> {
        let mut kind = None;
        let text = &self.buf[(start - self.base) as usize..];
        let mut de = serde_json::Deserializer::from_slice(text);
        let _ = ObjectSeed {
            seen: Some(&mut kind),
        }
        .deserialize(&mut de);
        kind
    }

    /// Line and column in the file of serde_json's position in a value at `start`.
    fn position(&self, start: u64, e: &serde_json::Error) -> (u64, usize) {
        let before = &self.buf[..(start - self.base) as usize];
        let line = self.lines + before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(self.line_start, |i| self.base + i as u64 + 1);
        if e.line() <= 1 {
            (line, (start - line_start) as usize + e.column())
        } else {
            (line + e.line() as u64 - 1, e.column())
        }
    }

    /// A syntax error found here rather than by serde_json, in List item `item`.
    fn syntax(&self, at: u64, item: Option<usize>, what: &str) -> Problem {
        let before = &self.buf[..(at - self.base) as usize];
        let line = self.lines + before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(self.line_start, |i| self.base + i as u64 + 1);
        Problem::new(
            item,
            format!(
                "invalid JSON: {what} at line {line} column {}",
                at - line_start + 1
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sources::synthetic::{self, Size};

    /// The objects read (as debug text) and the kinds skipped, or the problem.
    fn read_with(text: &str, chunk: usize) -> Result<(Vec<String>, Vec<String>), Located> {
        let mut objects = Vec::new();
        let mut each = |o| objects.push(format!("{o:?}"));
        let mut sink = Sink {
            each: &mut each,
            skipped: Vec::new(),
        };
        read_in_chunks(text.as_bytes(), chunk, &mut sink)?;
        let skipped = sink.skipped;
        Ok((objects, skipped))
    }

    fn small_cluster() -> Vec<Value> {
        let size = Size {
            nodes: 2,
            pods: 4,
            volumes: 2,
        };
        let mut docs: Vec<Value> = synthetic::documents(size).collect();
        // Brackets, braces, commas and quotes inside strings are the parser's business.
        docs[0]["metadata"]["annotations"] = json!({"odd": "}], \"kind\": \"List\", [{\\"});
        docs.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"items": "[1]"}}));
        docs
    }

    #[test]
    fn every_chunk_size_reads_the_same() {
        let docs = small_cluster();
        let nodes: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Node")
            .map(|d| json!({"metadata": d["metadata"], "status": d["status"]}))
            .collect();
        let list = json!({"apiVersion": "v1", "items": docs, "kind": "List", "metadata": {}});
        let text = format!(
            "{}\n{}{}\n {{\"kind\":\"NodeList\",\"items\":{}}}\n{{\"items\": {}, \"kind\": \"NodeList\"}}",
            serde_json::to_string_pretty(&list).unwrap(),
            docs.iter().map(|d| format!("{d}\n")).collect::<String>(),
            list,
            Value::from(nodes.clone()),
            Value::from(nodes),
        );
        let whole = read_with(&text, CHUNK).unwrap();
        assert_eq!(whole.0.len(), 3 * (docs.len() - 1) + 4);
        assert_eq!(whole.1, ["ConfigMap"; 3]);
        for chunk in (1..=64).chain([100, 999, 4096]) {
            assert_eq!(read_with(&text, chunk).unwrap(), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn problems_are_the_same_at_every_chunk_size() {
        let node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}}"#;
        for text in [
            format!("{node}\n{{\"items\": [{node}, {{\"kind\": \"Node\", \"spec\": 1}}]}}"),
            format!("{{\"items\": [{node}, {node}}}"),
            format!("{{\"items\": [{node}, 7]}}"),
            format!("{{\"items\": [{node}\n\n, {{\"kind\": \"NodeList\", \"items\": []}}]}}"),
            format!("{node} [1, 2]"),
            format!("{node} x"),
            format!("{{\"kind\": 3, \"items\": [{node}]}}"),
        ] {
            let whole = format!("{:?}", read_with(&text, CHUNK).unwrap_err());
            for chunk in 1..=40 {
                let got = format!("{:?}", read_with(&text, chunk).unwrap_err());
                assert_eq!(got, whole, "chunk {chunk} of {text}");
            }
        }
    }

    /// A List cut anywhere is refused as truncated, at every chunk size: never read as
    /// the objects before the cut.
    #[test]
    fn a_list_cut_anywhere_is_truncated() {
        let docs = small_cluster();
        let list = json!({"apiVersion": "v1", "items": &docs[..3], "kind": "List"});
        let text = serde_json::to_string_pretty(&list).unwrap();
        for cut in 1..text.len() {
            for chunk in [1, 7, CHUNK] {
                match read_with(&text[..cut], chunk) {
                    Err(Located {
                        document: 1,
                        problem,
                    }) if problem.truncated => {}
                    other => panic!("cut at {cut}, chunk {chunk}: {other:?}"),
                }
            }
        }
    }
}
