//! Bursts against the real control plane (see `tests/control_plane/`): pods created
//! together, by hand or by the real StatefulSet controller, bound by the real
//! kube-scheduler with the shipped profile while volguard learns each binding only from
//! its watch (docs/scheduling.md, "Bursts: placements in flight").

mod common;
mod control_plane;

use std::{collections::BTreeMap, time::Duration};

use control_plane::{ControlPlane, Options, wait_for};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

const LINODE: &str = "linodebs.csi.linode.com";
const LIMIT: &str =
    "node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit)";

/// `count` nodes `node-0`.. registering linode, each with an attach limit of `limit`.
async fn nodes(cp: &ControlPlane, count: usize, limit: u32) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("node-{i}")).collect();
    for n in &names {
        cp.node(
            n,
            json!({"volguard.io/attach-limit": limit.to_string()}),
            json!({}),
        )
        .await;
        cp.csinode(n, LINODE, Some(8)).await;
    }
    names
}

fn pod(name: &str, claims: &[&str], labels: Value) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": volumes,
        },
    })
}

/// Where the pods of `namespace` are bound, by node; and the names of those that are not.
async fn placements(
    cp: &ControlPlane,
    namespace: &str,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), namespace);
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let mut bound: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending = Vec::new();
    for p in list {
        let name = p.metadata.name.clone().unwrap_or_default();
        match p.spec.and_then(|s| s.node_name) {
            Some(node) => bound.entry(node).or_default().push(name),
            None => pending.push(name),
        }
    }
    (bound, pending)
}

/// Waits until `want` pods of `namespace` are bound, then for the scheduler to have
/// retried the others at least once more (its pod backoff starts at 1 s), and returns
/// the placements then.
async fn settle(
    cp: &ControlPlane,
    namespace: &str,
    want: usize,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let reached = wait_for(Duration::from_secs(90), || async {
        let (bound, _) = placements(cp, namespace).await;
        (bound.values().map(Vec::len).sum::<usize>() >= want).then_some(())
    })
    .await;
    let now = placements(cp, namespace).await;
    assert!(reached.is_some(), "{want} pods bound within 90 s: {now:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    placements(cp, namespace).await
}

fn assert_within_limit(bound: &BTreeMap<String, Vec<String>>, limit: usize, total: usize) {
    assert!(
        bound.values().all(|pods| pods.len() <= limit),
        "at most {limit} per node: {bound:?}"
    );
    assert_eq!(
        bound.values().map(Vec::len).sum::<usize>(),
        total,
        "{bound:?}"
    );
}

/// Nine pods, each with its own bound linode claim, created at once on three nodes
/// with an attach limit of 2, against the shipped two replicas behind the Services'
/// stand-ins: six are bound, two per node; the other three wait with the reason an
/// operator reads.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn nine_pods_created_at_once_never_overshoot_an_attach_limit() {
    let cp = ControlPlane::start_with(Options {
        two_replicas: true,
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    nodes(&cp, 3, 2).await;
    let claims: Vec<String> = (0..9).map(|i| format!("data-{i}")).collect();
    join_all(claims.iter().enumerate().map(|(i, c)| {
        let cp = &cp;
        async move {
            cp.bound_claim(
                "shop",
                c,
                &format!("pv-{c}"),
                LINODE,
                &format!("31{i:04}-{c}"),
                "ReadWriteOnce",
            )
            .await
        }
    }))
    .await;
    join_all(claims.iter().enumerate().map(|(i, c)| {
        cp.pod(
            "shop",
            pod(&format!("web-{i}"), &[c], json!({"app": "web"})),
        )
    }))
    .await;
    let (bound, pending) = settle(&cp, "shop", 6).await;
    assert_within_limit(&bound, 2, 6);
    assert_eq!(pending.len(), 3);
    let message = cp
        .unschedulable_message("shop", &pending[0])
        .await
        .expect("a FailedScheduling condition");
    assert!(
        message.starts_with(&format!("0/3 nodes are available: 3 {LIMIT}.")),
        "{message}"
    );
}

/// Two pods sharing one ReadWriteOnce claim, created together on six free nodes, twenty
/// rounds: always bound to the same node.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_read_write_once_pair_created_together_is_never_split() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    nodes(&cp, 6, 8).await;
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    for round in 0..20 {
        let claim = format!("pair-{round}");
        cp.bound_claim(
            "shop",
            &claim,
            &format!("pv-{claim}"),
            LINODE,
            &format!("42{round:04}-pair"),
            "ReadWriteOnce",
        )
        .await;
        let names = [format!("a-{round}"), format!("b-{round}")];
        join_all(
            names
                .iter()
                .map(|n| cp.pod("shop", pod(n, &[&claim], json!({})))),
        )
        .await;
        let mut where_bound = Vec::new();
        for n in &names {
            where_bound.push(
                cp.bound_node("shop", n, Duration::from_secs(60))
                    .await
                    .unwrap_or_else(|| panic!("round {round}: {n} bound")),
            );
        }
        assert_eq!(where_bound[0], where_bound[1], "round {round}: {names:?}");
        for n in &names {
            pods.delete(n, &DeleteParams::default().grace_period(0))
                .await
                .expect("delete");
        }
    }
}

/// A StatefulSet with `podManagementPolicy: Parallel` and a claim template: the real
/// StatefulSet controller creates nine pods and their claims at once, the real PV
/// binder binds each claim to its static PV, and the burst fills three nodes to their
/// limit of 2.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_statefulset_with_claim_templates_fills_nodes_to_their_limit() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    nodes(&cp, 3, 2).await;
    for i in 0..9 {
        // What a static provisioner leaves: a PV reserved for the claim the
        // StatefulSet will create (claimRef without a uid).
        cp.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-db-{i}")},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "csi": {"driver": LINODE, "volumeHandle": format!("52{i:04}-db")},
                "claimRef": {"namespace": "shop", "name": format!("data-db-{i}")},
            },
        }))
        .await;
    }
    cp.create(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {
            "replicas": 9,
            "podManagementPolicy": "Parallel",
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "busybox",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                    "resources": {"requests": {"storage": "10Gi"}}},
            }],
        },
    }))
    .await;
    for i in 0..9 {
        cp.claim_bound("shop", &format!("data-db-{i}")).await;
    }
    let (bound, pending) = settle(&cp, "shop", 6).await;
    assert_within_limit(&bound, 2, 6);
    assert_eq!(pending.len(), 3, "{pending:?}");
}

/// A Deployment scaled from 0 to 20, each pod with its own generic ephemeral volume of
/// a WaitForFirstConsumer class: the real ephemeral-volume controller creates the
/// claims, kube-scheduler picks their node, a provisioner makes their volumes there and
/// the real PV binder binds them. Four nodes with a limit of 3: twelve pods are bound,
/// three per node.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_scaled_from_0_to_20_never_overshoots() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    nodes(&cp, 4, 3).await;
    let _provisioner = cp.provisioner(LINODE);
    cp.create(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "linode-wffc"},
        "provisioner": LINODE,
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .await;
    cp.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "busybox",
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                    "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "linode-wffc",
                            "resources": {"requests": {"storage": "10Gi"}}}}}}],
                },
            },
        },
    }))
    .await;
    let (ok, _, err) = cp.kubectl(
        &["scale", "deployment/web", "-n", "shop", "--replicas=20"],
        None,
    );
    assert!(ok, "{err}");
    let (bound, pending) = settle(&cp, "shop", 12).await;
    assert_within_limit(&bound, 3, 12);
    assert_eq!(pending.len(), 8, "{pending:?}");
}
