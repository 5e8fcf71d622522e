//! A synthetic cluster of any size, shaped like the examples (Linode-style CSI volumes
//! with CSINode limits and VolumeAttachments): for benchmarks, memory figures and load
//! tests, so that every measurement runs on the same, reproducible state.

use serde_json::{Value, json};

use std::sync::Arc;

use crate::{
    cluster::{ClusterObject, ClusterState, objects::ObjectError},
    model::{config::Config, drivers::Drivers},
    sources::snapshot::{self, Snapshot},
};

/// The size of a synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Nodes, each with a CSINode registering the linode driver.
    pub nodes: usize,
    /// Pods, bound round-robin to nodes; the first `volumes` of them each use one claim.
    pub pods: usize,
    /// Bound PVC/PV pairs, each attached (VolumeAttachment) to its pod's node.
    pub volumes: usize,
}

impl Size {
    /// The size named in the performance targets: 5,000 nodes, 150,000 pods, 50,000 volumes.
    pub const LARGE: Size = Size {
        nodes: 5_000,
        pods: 150_000,
        volumes: 50_000,
    };
}

/// CSI driver of the synthetic volumes (the examples' Linode driver).
pub const DRIVER: &str = "linodebs.csi.linode.com";
/// Attach limit each synthetic CSINode reports.
pub const NODE_LIMIT: i32 = 16;

/// Name of synthetic node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// The cluster as Kubernetes JSON documents, in the order a cache would list them.
pub fn documents(size: Size) -> impl Iterator<Item = Value> {
    let nodes = size.nodes.max(1);
    let node_docs = (0..size.nodes).flat_map(move |i| [node(i), csinode(i)]);
    let fixed = [storage_class()].into_iter();
    let volume_docs = (0..size.volumes).flat_map(move |v| {
        let node = node_name(v % nodes);
        [pv(v), pvc(v), attachment(v, &node)]
    });
    let pod_docs =
        (0..size.pods).map(move |p| pod(p, &node_name(p % nodes), (p < size.volumes).then_some(p)));
    node_docs.chain(fixed).chain(volume_docs).chain(pod_docs)
}

/// The cluster of `size` and the claims of [`bench_pods`], as a synced state: what
/// benchmarks and tests judge the bench pods against.
pub fn state(size: Size, config: &Arc<Config>) -> Result<ClusterState, ObjectError> {
    let objects = documents(size)
        .chain(bench_volumes())
        .map(ClusterObject::from_value)
        .collect::<Result<_, _>>()?;
    let empty = ClusterState::new(config.clone(), Arc::new(Drivers::new(config)));
    Ok(snapshot::into_state(
        &Snapshot {
            objects,
            skipped: Vec::new(),
        },
        empty,
    ))
}

/// A pending pod that uses `claims` fresh volumes (created by [`fresh_volumes`]), as the
/// scheduler would send it after the webhook: the one judged in benchmarks.
pub fn pending_pod(claims: usize) -> Value {
    let names: Vec<String> = (0..claims).map(|c| format!("fresh-{c}")).collect();
    pod_with_claims("bench", &names)
}

/// A pending pod named `bench` in `namespace` using these claims, as the scheduler
/// would send it after the webhook.
pub fn pod_with_claims(namespace: &str, claims: &[String]) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(c, claim)| json!({"name": format!("data-{c}"), "persistentVolumeClaim": {"claimName": claim}}))
        .collect();
    let mounts: Vec<Value> = (0..claims.len())
        .map(|c| json!({"name": format!("data-{c}"), "mountPath": format!("/data/{c}")}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": namespace, "uid": "00000000-0000-0000-0000-00000000beef"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts,
                            "resources": {"limits": {"volguard.io/volumes": claims.len().to_string()}}}],
            "volumes": volumes
        },
        "status": {"phase": "Pending"}
    })
}

/// Unbound claims a bench pod may use on top of the cluster: `new-<c>` in namespace
/// `bench`, of the driver's storage class, waiting for their first consumer.
pub const UNBOUND_CLAIMS: usize = 7;

/// A pod the benchmarks and the load test judge against a synthetic cluster.
pub struct BenchPod {
    /// Short name for file names and table rows.
    pub name: &'static str,
    /// What the [`Size::LARGE`] cluster makes of it, for a table row.
    pub what: &'static str,
    /// The pod, as the scheduler sends it.
    pub pod: Value,
}

/// The pods judged in benchmarks: one that fits every node, and three that make every
/// node go through the failing or limit-checking paths. Their claims are in
/// [`bench_volumes`].
pub fn bench_pods() -> Vec<BenchPod> {
    let unbound = |n: usize| -> Vec<String> { (0..n).map(|c| format!("new-{c}")).collect() };
    vec![
        BenchPod {
            name: "fresh",
            what: "2 bound volumes attached nowhere: every node fits",
            pod: pending_pod(2),
        },
        BenchPod {
            name: "in-use",
            what: "a ReadWriteOnce claim in use on one node: every other node fails",
            pod: pod_with_claims("ns-0", &["claim-000000".to_owned()]),
        },
        BenchPod {
            name: "unbound",
            what: "1 unbound claim: every node judged on its attach limit",
            pod: pod_with_claims("bench", &unbound(1)),
        },
        BenchPod {
            name: "full",
            what: "7 unbound claims: every node fails at its attach limit (10 used + 7 > 16)",
            pod: pod_with_claims("bench", &unbound(UNBOUND_CLAIMS)),
        },
    ]
}

/// The claims (and volumes) of [`bench_pods`]: 2 fresh bound ones and the unbound ones.
pub fn bench_volumes() -> impl Iterator<Item = Value> {
    fresh_volumes(2).chain((0..UNBOUND_CLAIMS).map(|c| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": format!("new-{c}"), "namespace": "bench"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "linode-block-storage",
                        "resources": {"requests": {"storage": "10Gi"}}},
               "status": {"phase": "Pending"}})
    }))
}

/// Bound claims `fresh-<c>` in namespace `bench` on PVs attached nowhere, for [`pending_pod`].
pub fn fresh_volumes(claims: usize) -> impl Iterator<Item = Value> {
    (0..claims).flat_map(|c| {
        let pv_name = format!("pv-fresh-{c}");
        [
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": pv_name},
                   "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                            "csi": {"driver": DRIVER, "volumeHandle": format!("9{c:06}-fresh")},
                            "claimRef": {"namespace": "bench", "name": format!("fresh-{c}")}},
                   "status": {"phase": "Bound"}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": format!("fresh-{c}"), "namespace": "bench"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv_name,
                            "storageClassName": "linode-block-storage",
                            "resources": {"requests": {"storage": "10Gi"}}},
                   "status": {"phase": "Bound"}}),
        ]
    })
}

fn node(i: usize) -> Value {
    let name = node_name(i);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        }
    })
}

fn csinode(i: usize) -> Value {
    let name = node_name(i);
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": {"name": name},
        "spec": {"drivers": [{"name": DRIVER, "nodeID": name, "allocatable": {"count": NODE_LIMIT}}]}
    })
}

fn storage_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "linode-block-storage"},
        "provisioner": DRIVER, "volumeBindingMode": "WaitForFirstConsumer"
    })
}

fn pv(v: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pv-{v:06}")},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                 "csi": {"driver": DRIVER, "volumeHandle": format!("{v:06}-vol")},
                 "claimRef": {"namespace": format!("ns-{}", v % 100), "name": format!("claim-{v:06}")}},
        "status": {"phase": "Bound"}
    })
}

fn pvc(v: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("claim-{v:06}"), "namespace": format!("ns-{}", v % 100)},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": format!("pv-{v:06}"),
                 "storageClassName": "linode-block-storage",
                 "resources": {"requests": {"storage": "10Gi"}}},
        "status": {"phase": "Bound"}
    })
}

fn attachment(v: usize, node: &str) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": format!("csi-{v:064x}")},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": format!("pv-{v:06}")}},
        "status": {"attached": true}
    })
}

fn pod(p: usize, node: &str, claim: Option<usize>) -> Value {
    let ns = format!("ns-{}", claim.unwrap_or(p) % 100);
    let (volumes, mounts) = match claim {
        Some(v) => (
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": format!("claim-{v:06}")}}]),
            json!([{"name": "data", "mountPath": "/data"}]),
        ),
        None => (
            json!([{"name": "tmp", "emptyDir": {}}]),
            json!([{"name": "tmp", "mountPath": "/tmp"}]),
        ),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{p:06}"), "namespace": ns, "uid": format!("00000000-0000-0000-0000-{p:012}")},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts}],
                 "volumes": volumes},
        "status": {"phase": "Running"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_synthetic_cluster_indexes_its_attachments() {
        let size = Size {
            nodes: 3,
            pods: 10,
            volumes: 6,
        };
        let state = state(size, &Arc::new(Config::default())).unwrap();
        let linode = state.drivers().by_csi(DRIVER).unwrap();
        // 6 volumes round-robin over 3 nodes, each attached and used by one pod: 2 per node.
        for n in 0..3 {
            assert_eq!(state.used(&node_name(n), linode), 2);
        }
    }
}
