//! Cluster state from files: a YAML or JSON file (multi-document, concatenated JSON, or
//! a `kind: List` as `kubectl get -o yaml|json` prints it, alone or among other
//! documents) or a directory of such files.
//!
//! Files are read as a stream and every object goes into the state as soon as it is
//! decoded, straight into its type: a List of a whole cluster is never held as a tree,
//! nor its items copied, so memory holds the state, a chunk of the file and one object.
//! A file that cannot be read stops the load with one line naming the file, the
//! document and, in a List, the item; nothing is served from a partial snapshot.

mod decode;
mod json;
mod yaml;

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::cluster::{ClusterObject, ClusterState, Kind};
use decode::{Located, Sink};

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

/// Reads a snapshot file or directory into memory, for tests and tools on small
/// snapshots; `serve` and `explain` use [`load_into`], which keeps no object.
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
    let mut sink = Sink {
        each,
        skipped: Vec::new(),
    };
    for file in files(path)? {
        let fail = |message: String| SnapshotError {
            file: file.display().to_string(),
            message,
        };
        let opened = File::open(&file).map_err(|e| fail(format!("cannot read: {e}")))?;
        let reader = BufReader::with_capacity(1 << 16, opened);
        let outcome = if is_json(&file) {
            json::read(reader, &mut sink)
        } else {
            yaml::read(reader, &mut sink)
        };
        outcome.map_err(|located| fail(describe(located)))?;
    }
    Ok(sink.skipped)
}

/// The message for a problem: `document 2, item 17: invalid Node: ...`, or that the
/// file ends inside a document.
fn describe(Located { document, problem }: Located) -> String {
    let place = match problem.item {
        Some(item) => format!("document {document}, item {item}"),
        None => format!("document {document}"),
    };
    if problem.truncated {
        format!("truncated: the file ends inside {place}")
    } else {
        format!("{place}: {}", problem.message)
    }
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

/// Splits a small file (a pod, a fixture) into documents as trees; YAML may hold
/// several separated by `---`, JSON may be several concatenated values. Snapshots are
/// not read this way.
pub fn parse_documents(text: &str, json: bool) -> Result<Vec<Value>, String> {
    if json {
        return serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .map(|d| d.map_err(|e| format!("invalid JSON: {e}")))
            .collect();
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        format!(
            "invalid YAML: {}",
            crate::model::config::one_line(&e.to_string())
        )
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
