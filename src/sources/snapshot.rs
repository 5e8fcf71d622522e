//! Cluster state from files: a YAML or JSON file (multi-document, or a `kind: List` as
//! `kubectl get -o yaml` prints it) or a directory of such files.

use std::path::{Path, PathBuf};

use serde_json::{Value, value::RawValue};

use crate::cluster::{ClusterObject, ClusterState, Kind, objects::ObjectError};

/// A snapshot that cannot be read, naming the file and the document.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SnapshotError {
    /// The offending file.
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

/// What a snapshot holds: the objects, and how many documents of other kinds were skipped.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Objects of the kinds volguard reads.
    pub objects: Vec<ClusterObject>,
    /// Documents of kinds volguard does not read (Services, ConfigMaps, ...), by kind.
    pub skipped: Vec<String>,
}

/// Reads a snapshot file or directory into memory.
pub fn load(path: &Path) -> Result<Snapshot, SnapshotError> {
    let mut objects = Vec::new();
    let skipped = read(path, &mut |o| objects.push(o))?;
    Ok(Snapshot { objects, skipped })
}

/// Streams a snapshot straight into `state`, one object at a time, so a large cluster
/// never sits in memory as full objects; then marks every kind synced. Returns the
/// number of objects applied and the kinds skipped. (Decoding on a second thread was
/// tried: freeing objects across threads cost more than it saved.)
pub fn load_into(
    path: &Path,
    state: &mut ClusterState,
) -> Result<(usize, Vec<String>), SnapshotError> {
    let mut applied = 0;
    let skipped = read(path, &mut |o| {
        state.apply(&o);
        applied += 1;
    })?;
    for k in Kind::ALL {
        state.mark_synced(k);
    }
    Ok((applied, skipped))
}

/// Builds a synced state from a snapshot's objects.
pub fn into_state(snapshot: &Snapshot, mut state: ClusterState) -> ClusterState {
    for o in &snapshot.objects {
        state.apply(o);
    }
    for k in Kind::ALL {
        state.mark_synced(k);
    }
    state
}

/// Hands every object of the snapshot to `each`; returns the kinds it skipped.
fn read(path: &Path, each: &mut dyn FnMut(ClusterObject)) -> Result<Vec<String>, SnapshotError> {
    let mut skipped = Vec::new();
    for file in files(path)? {
        let name = file.display().to_string();
        let fail = |message: String| SnapshotError {
            file: name.clone(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| fail(format!("cannot read: {e}")))?;
        let mut index = 0;
        for_each_document(&text, is_json(&file), &mut |doc| {
            index += 1;
            add_doc(doc, each, &mut skipped).map_err(|m| format!("document {index}: {m}"))
        })
        .map_err(fail)?;
    }
    Ok(skipped)
}

fn files(path: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let meta = std::fs::metadata(path).map_err(|e| SnapshotError {
        file: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| SnapshotError {
        file: path.display().to_string(),
        message: format!("cannot list: {e}"),
    })?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Splits a file into documents; YAML may hold several separated by `---`, JSON may be
/// several concatenated values.
pub fn parse_documents(text: &str, json: bool) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for_each_document(text, json, &mut |d| {
        docs.push(match d {
            Doc::Tree(v) => v,
            Doc::Text(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| format!("invalid JSON: {e}"))?
            }
        });
        Ok(())
    })?;
    Ok(docs)
}

/// One document of a file: YAML arrives parsed, JSON as its text (decoded straight into
/// its type later, without building a tree first).
enum Doc<'a> {
    Tree(Value),
    Text(&'a RawValue),
}

/// Hands each non-empty document of a file to `each`; JSON is streamed document by document.
fn for_each_document<'a>(
    text: &'a str,
    json: bool,
    each: &mut dyn FnMut(Doc<'a>) -> Result<(), String>,
) -> Result<(), String> {
    if json {
        for doc in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
            each(Doc::Text(doc.map_err(|e| format!("invalid JSON: {e}"))?))?;
        }
        return Ok(());
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        format!(
            "invalid YAML: {}",
            crate::model::config::one_line(&e.to_string())
        )
    })?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .try_for_each(|d| each(Doc::Tree(d)))
}

/// Decodes one document, going through a tree only for lists.
fn add_doc(
    doc: Doc<'_>,
    each: &mut dyn FnMut(ClusterObject),
    skipped: &mut Vec<String>,
) -> Result<(), String> {
    let raw = match doc {
        Doc::Tree(v) => return add_document(v, each, skipped),
        Doc::Text(raw) => raw,
    };
    match ClusterObject::from_json(raw.get()) {
        Ok(o) => each(o),
        Err(ObjectError::UnknownKind(k)) if k.ends_with("List") => {
            let tree = serde_json::from_str(raw.get()).map_err(|e| format!("invalid JSON: {e}"))?;
            add_document(tree, each, skipped)?;
        }
        Err(ObjectError::UnknownKind(k)) => skipped.push(k),
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}

fn add_document(
    doc: Value,
    each: &mut dyn FnMut(ClusterObject),
    skipped: &mut Vec<String>,
) -> Result<(), String> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
        let Some(Value::Array(items)) = doc.get("items").cloned() else {
            return Err(format!("{kind} without an items array"));
        };
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (i, mut item) in items.into_iter().enumerate() {
            if let (Some(k), Some(obj)) = (item_kind, item.as_object_mut()) {
                obj.entry("kind")
                    .or_insert_with(|| Value::String(k.to_owned()));
            }
            add_document(item, each, skipped).map_err(|m| format!("item {}: {m}", i + 1))?;
        }
        return Ok(());
    }
    match ClusterObject::from_value(doc) {
        Ok(o) => each(o),
        Err(ObjectError::UnknownKind(k)) => skipped.push(k),
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}
