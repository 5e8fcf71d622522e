//! Snapshot files: a `kind: List` (JSON as `kubectl get -o json` prints it, with
//! `items` before `kind`; YAML as `-o yaml` does; alone or among other documents; of
//! mixed kinds or of one kind whose items leave `kind` out) loads the same objects, in
//! the same order, and the same state as the same objects written as separate documents.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use volguard::{
    model::config::Config,
    sources::{
        snapshot,
        synthetic::{self, Size},
    },
};

/// The example cluster (its Lists flattened), a small synthetic one, and a Service; the
/// Service and the example's two CSIDrivers are skipped.
fn cluster() -> Vec<Value> {
    let mut docs = Vec::new();
    let dir = common::repo("examples/cluster");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in snapshot::parse_documents(&text, false).unwrap() {
            match doc.get("items") {
                Some(Value::Array(items)) => docs.extend(items.iter().cloned()),
                _ => docs.push(doc),
            }
        }
    }
    let size = Size {
        nodes: 3,
        pods: 10,
        volumes: 6,
    };
    docs.extend(synthetic::documents(size));
    docs.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}));
    docs
}

fn list(items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

fn json_stream(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("{d}\n")).collect()
}

fn yaml_documents(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap()))
        .collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Everything loaded from `path`: the objects in order, the skipped kinds, and what the
/// state built from them holds.
fn loaded(path: &Path) -> (String, Vec<String>, String) {
    let snap = snapshot::load(path).unwrap_or_else(|e| panic!("{e}"));
    let objects = format!("{:?}", snap.objects);
    let config = common::example_config();
    let mut state = common::empty_state(&config);
    let (applied, skipped) = snapshot::load_into(path, &mut state).unwrap();
    assert_eq!(applied, snap.objects.len());
    assert_eq!(skipped, snap.skipped);
    (objects, snap.skipped, summary(&state, &config))
}

/// The state as the extender sees it: counts, and per node the slots used per driver.
fn summary(state: &volguard::cluster::ClusterState, config: &Config) -> String {
    let nodes = state.node_names();
    let mut out = format!("{:?}\n", state.counts());
    for node in nodes {
        out.push_str(node);
        for d in &config.drivers {
            if let Some(id) = state.drivers().by_name(&d.name) {
                out.push_str(&format!(" {}={}", d.name, state.used(node, id)));
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn a_list_loads_the_same_objects_and_state_as_separate_documents() {
    let docs = cluster();
    let dir = tempfile::tempdir().unwrap();
    let third = docs.len() / 3;
    let (head, rest) = docs.split_at(third);
    let (middle, tail) = rest.split_at(third);
    let expected = loaded(&write(dir.path(), "stream.json", &json_stream(&docs)));
    let count = snapshot::load(&dir.path().join("stream.json"))
        .unwrap()
        .objects
        .len();
    assert_eq!(
        count,
        docs.len() - 3,
        "every object but the CSIDrivers and the Service"
    );
    assert_eq!(expected.1, ["CSIDriver", "CSIDriver", "Service"]);
    let cases = [
        ("list.json", pretty(&list(&docs))),
        ("compact-list.json", list(&docs).to_string()),
        ("list.yaml", serde_saphyr::to_string(&list(&docs)).unwrap()),
        ("documents.yaml", yaml_documents(&docs)),
        (
            "mixed.yaml",
            format!(
                "{}---\n{}{}",
                yaml_documents(head),
                serde_saphyr::to_string(&list(middle)).unwrap(),
                yaml_documents(tail)
            ),
        ),
        (
            "mixed.json",
            format!(
                "{}{}\n{}",
                json_stream(head),
                pretty(&list(middle)),
                json_stream(tail)
            ),
        ),
    ];
    for (name, text) in cases {
        let got = loaded(&write(dir.path(), name, &text));
        assert!(got == expected, "{name} loads differently");
    }
}

/// Items without `kind`, as the API server lists one kind (`GET /api/v1/nodes`): the
/// List's kind names them, whether it comes before the items or after them.
#[test]
fn a_single_kind_list_whose_items_lack_kind() {
    let docs: Vec<Value> = cluster()
        .into_iter()
        .filter(|d| d["kind"] == "Node")
        .collect();
    let bare: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut d = d.clone();
            let object = d.as_object_mut().unwrap();
            object.remove("kind");
            object.remove("apiVersion");
            d
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let expected = loaded(&write(dir.path(), "nodes.json", &json_stream(&docs)));
    assert_eq!(expected.2.lines().count(), 1 + docs.len(), "{}", expected.2);
    let kind_first = format!(
        r#"{{"kind": "NodeList", "apiVersion": "v1", "metadata": {{"resourceVersion": "7"}}, "items": {}}}"#,
        Value::from(bare.clone())
    );
    let kind_last = pretty(&json!({"apiVersion": "v1", "items": bare, "kind": "NodeList"}));
    let yaml = serde_saphyr::to_string(&json!({"kind": "NodeList", "items": bare})).unwrap();
    let yaml_last = format!(
        "items:\n{}kind: NodeList\n",
        serde_saphyr::to_string(&bare).unwrap()
    );
    for (name, text) in [
        ("first.json", kind_first),
        ("last.json", kind_last),
        ("first.yaml", yaml),
        ("last.yaml", yaml_last),
    ] {
        let got = loaded(&write(dir.path(), name, &text));
        assert!(got == expected, "{name} loads differently");
    }
}

#[test]
fn empty_lists_and_files_load_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("empty.json", ""),
        ("empty.yaml", ""),
        ("comments.yaml", "# nothing\n---\n---\n# still nothing\n"),
        (
            "list.json",
            r#"{"apiVersion": "v1", "items": [], "kind": "List"}"#,
        ),
        ("list.yaml", "apiVersion: v1\nitems: []\nkind: List\n"),
    ] {
        let snap = snapshot::load(&write(dir.path(), name, text)).unwrap();
        assert!(snap.objects.is_empty() && snap.skipped.is_empty(), "{name}");
    }
}
