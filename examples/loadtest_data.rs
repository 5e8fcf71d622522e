//! Writes the inputs of `scripts/loadtest.sh` into a directory: the large synthetic
//! cluster as a snapshot (with the claims of the bench pods), a realistic 6 KB
//! AdmissionReview (3 containers, 2 managed volumes), and a 5,000-node ExtenderArgs
//! (nodeCacheCapable) per bench pod, `filter-<name>.json`, listed with what the cluster
//! makes of each in `pods.tsv`.
//!
//! With `--lists` it also writes the same cluster as one `kind: List` document, the way
//! `kubectl get nodes,csinodes,pv,pvc,pods,volumeattachments,storageclasses -A` prints
//! it: `list.json` (`-o json`: 4-space indent, `items` before `kind`) and `list.yaml`
//! (`-o yaml`), for measuring how a List loads against the stream of documents.
//!
//! `cargo run --release --example loadtest_data -- DIR [nodes pods volumes] [--lists]`

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
};

use serde::Serialize;
use serde_json::{Value, json};
use volguard::sources::synthetic::{self, Size};

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let lists = args.iter().any(|a| a == "--lists");
    args.retain(|a| a != "--lists");
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: loadtest_data DIR [nodes pods volumes] [--lists]");
        std::process::exit(2);
    };
    let n = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let size = Size {
        nodes: n(1, Size::LARGE.nodes),
        pods: n(2, Size::LARGE.pods),
        volumes: n(3, Size::LARGE.volumes),
    };
    std::fs::create_dir_all(&dir)?;

    let mut snap = BufWriter::new(File::create(dir.join("snapshot.json"))?);
    for doc in all_documents(size) {
        serde_json::to_writer(&mut snap, &doc)?;
        snap.write_all(b"\n")?;
    }
    snap.flush()?;
    if lists {
        write_json_list(&dir.join("list.json"), size)?;
        write_yaml_list(&dir.join("list.yaml"), size)?;
    }

    let review = admission_review(synthetic::pending_pod(2));
    std::fs::write(dir.join("mutate.json"), serde_json::to_vec(&review)?)?;

    let names: Vec<String> = (0..size.nodes).map(synthetic::node_name).collect();
    let mut table = String::new();
    for case in synthetic::bench_pods() {
        let args = json!({"Pod": case.pod, "Nodes": null, "NodeNames": names});
        std::fs::write(
            dir.join(format!("filter-{}.json", case.name)),
            serde_json::to_vec(&args)?,
        )?;
        table.push_str(&format!("{}\t{}\n", case.name, case.what));
    }
    std::fs::write(dir.join("pods.tsv"), table)?;
    eprintln!(
        "wrote {}: snapshot.json ({} nodes, {} pods, {} volumes){}, mutate.json, filter-*.json, pods.tsv",
        dir.display(),
        size.nodes,
        size.pods,
        size.volumes,
        if lists { ", list.json, list.yaml" } else { "" }
    );
    Ok(())
}

/// Every object of the snapshot: the cluster and the bench pods' claims.
fn all_documents(size: Size) -> impl Iterator<Item = Value> {
    synthetic::documents(size).chain(synthetic::bench_volumes())
}

/// `kubectl get ... -o json`: `{"apiVersion", "items", "kind": "List", "metadata"}`,
/// indented by 4 spaces; written item by item, never held whole.
fn write_json_list(path: &std::path::Path, size: Size) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(b"{\n    \"apiVersion\": \"v1\",\n    \"items\": [")?;
    for (i, doc) in all_documents(size).enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        let mut text = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        doc.serialize(&mut serde_json::Serializer::with_formatter(
            &mut text, formatter,
        ))?;
        indent(&mut out, &text, b"        ", b"        ")?;
    }
    out.write_all(b"\n    ],\n    \"kind\": \"List\",\n    \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n")?;
    out.flush()
}

/// `kubectl get ... -o yaml`: `apiVersion`, `items` as a block sequence at column 0,
/// `kind: List`, `metadata`.
fn write_yaml_list(path: &std::path::Path, size: Size) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(b"apiVersion: v1\nitems:\n")?;
    for doc in all_documents(size) {
        let text = serde_saphyr::to_string(&doc).map_err(std::io::Error::other)?;
        indent(&mut out, text.trim_end().as_bytes(), b"- ", b"  ")?;
        out.write_all(b"\n")?;
    }
    out.write_all(b"kind: List\nmetadata:\n  resourceVersion: \"\"\n")?;
    out.flush()
}

/// Writes `text` with `first` before its first line and `rest` before every other one.
fn indent(out: &mut impl Write, text: &[u8], first: &[u8], rest: &[u8]) -> std::io::Result<()> {
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.write_all(b"\n")?;
        }
        out.write_all(if i == 0 { first } else { rest })?;
        out.write_all(line)?;
    }
    Ok(())
}

/// A CREATE review of `pod` dressed the way the apiserver sends a real Deployment's pod:
/// three containers with env, ports and probes, defaulted fields, the service-account volume.
fn admission_review(mut pod: Value) -> Value {
    let app = pod["spec"]["containers"][0].clone();
    let mut containers = vec![app];
    for name in ["log-shipper", "metrics-exporter"] {
        containers
            .push(json!({"name": name, "image": format!("registry.example.com/{name}:1.4.2")}));
    }
    for c in &mut containers {
        let c = c.as_object_mut().expect("container");
        c.insert("env".into(), json!((0..11).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-for-a-realistic-environment")})).collect::<Vec<_>>()));
        c.insert(
            "ports".into(),
            json!([{"containerPort": 8080, "name": "http", "protocol": "TCP"}]),
        );
        c.insert(
            "terminationMessagePath".into(),
            "/dev/termination-log".into(),
        );
        c.insert("terminationMessagePolicy".into(), "File".into());
        c.insert("imagePullPolicy".into(), "IfNotPresent".into());
        let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
        mounts.as_array_mut().expect("mounts").push(json!({
            "name": "kube-api-access-x7k2p", "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
        }));
    }
    pod["spec"]["containers"] = containers.into();
    pod["spec"]["volumes"].as_array_mut().expect("volumes").push(json!({
        "name": "kube-api-access-x7k2p",
        "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}
    }));
    for (k, v) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("serviceAccountName", json!("default")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        (
            "tolerations",
            json!([
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
            ]),
        ),
    ] {
        pod["spec"][k] = v;
    }
    pod["metadata"]["labels"] = json!({"app": "bench", "pod-template-hash": "7d9f8c6b5"});
    pod["metadata"]["generateName"] = "bench-7d9f8c6b5-".into();
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench-7d9f8c6b5",
        "uid": "3c1e8a4f-2b7d-4f0e-9a61-5d2c8b7e4f10", "controller": true, "blockOwnerDeletion": true}]);
    pod.as_object_mut().expect("pod").remove("status");
    json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "b7c0d7a2-3e1f-4a5b-8c9d-0e1f2a3b4c5d",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "", "namespace": "bench", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "5d6c1c1e-8e57-4bde-9f3a-2b2f8f1e0a11",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}
