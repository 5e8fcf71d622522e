//! Remediation with real workloads (see `tests/control_plane/`): the remediation
//! overlay as shipped (3 s grace period), kube-scheduler with the shipped profile, and
//! kube-controller-manager's StatefulSet, disruption and garbage-collector controllers.
//! The kubelets of the API-only nodes are played by the harness (a pod bound becomes
//! Ready, a pod being deleted goes), the device plugins by node status updates.

mod common;
mod control_plane;

use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Options, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{Value, json};

async fn start() -> ControlPlane {
    let cp = ControlPlane::start_with(Options {
        manifests: "manifests/overlays/remediation",
        volguard_config: Some(control_plane::remediation_overlay_config()),
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    cp
}

fn resource(volume: &str) -> String {
    format!("volumes.brightbox.com/{volume}")
}

/// A StatefulSet of one pod using device-plugin volume `volume`, labelled `app: db`.
fn statefulset(name: &str, volume: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"workload": name}},
            "template": {
                "metadata": {"labels": {"workload": name, "app": "db"},
                    "annotations": {"volguard.io/devices": format!("brightbox={volume}")}},
                "spec": {"containers": [{"name": "db", "image": "busybox"}]},
            },
        },
    })
}

/// The node pod `name` is bound to, when it is bound and not being deleted, with its uid.
async fn placed(cp: &ControlPlane, name: &str) -> Option<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    let p = pods.get_opt(name).await.ok()??;
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    Some((p.spec?.node_name?, p.metadata.uid?))
}

async fn evictions(cp: &ControlPlane, outcome: &str) -> f64 {
    let text = cp.volguard_metrics().await;
    let parsed = common::openmetrics::parse(&text).expect("OpenMetrics");
    parsed.count(
        "volguard_remediation_evictions_total",
        &[("outcome", outcome)],
    )
}

/// Waits up to 30 s for volguard's metric `name{labels}` to read `value`.
async fn metric_reaches(cp: &ControlPlane, name: &str, labels: &[(&str, &str)], value: f64) {
    let reached = wait_for(Duration::from_secs(30), || async {
        let text = cp.volguard_metrics().await;
        let parsed = common::openmetrics::parse(&text).ok()?;
        (parsed.count(name, labels) == value).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "{name} never {value}:\n{}",
        cp.volguard_metrics().await
    );
}

/// Seed 000 end to end: a StatefulSet pod runs where its device is; the volume moves to
/// the other node; volguard evicts the pod after the grace period, the StatefulSet
/// controller recreates it, and kube-scheduler binds the new pod where the volume now
/// is. Prints the time from the move to the new binding.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_pod_follows_its_volume_to_another_node() {
    let cp = start().await;
    let res = resource("vol-move");
    cp.node("node-a", json!({}), json!({&res: "1"})).await;
    cp.node("node-b", json!({}), json!({&res: "0"})).await;
    let _kubelets = cp.kubelets("shop");
    cp.create(statefulset("db", "vol-move")).await;
    let (first, uid) = wait_for(Duration::from_secs(60), || placed(&cp, "db-0"))
        .await
        .expect("db-0 bound");
    assert_eq!(first, "node-a");

    let moved = Instant::now();
    cp.node_status("node-a", json!({&res: "0"})).await;
    cp.node_status("node-b", json!({&res: "1"})).await;
    let again = wait_for(Duration::from_secs(90), || async {
        placed(&cp, "db-0").await.filter(|(_, u)| *u != uid)
    })
    .await;
    let elapsed = moved.elapsed();
    assert_eq!(
        again.map(|(node, _)| node).as_deref(),
        Some("node-b"),
        "volguard log:\n{}",
        cp.volguard.as_ref().unwrap().tail(30)
    );
    eprintln!(
        "volume moved -> new pod bound on node-b: {:.1} s (grace period 3 s)",
        elapsed.as_secs_f64()
    );
    assert_eq!(evictions(&cp, "evicted").await, 1.0);
}

/// Three pods under a budget of `minAvailable: 2` that the real disruption controller
/// keeps; two of their volumes move at once. One eviction goes through; the other is
/// refused until the first pod's replacement is Ready on the node its volume went to.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_lets_one_pod_move_at_a_time() {
    let cp = start().await;
    let volumes = ["vol-p0", "vol-p1", "vol-p2"];
    let on_a: Value = volumes
        .iter()
        .map(|v| (resource(v), json!("1")))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let on_b: Value = volumes
        .iter()
        .map(|v| (resource(v), json!("0")))
        .collect::<serde_json::Map<_, _>>()
        .into();
    cp.node("node-a", json!({}), on_a).await;
    cp.node("node-b", json!({}), on_b).await;
    let _kubelets = cp.kubelets("shop");
    cp.create(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}},
    }))
    .await;
    for (i, v) in volumes.iter().enumerate() {
        cp.create(statefulset(&format!("db{i}"), v)).await;
    }
    for i in 0..3 {
        let name = format!("db{i}-0");
        wait_for(Duration::from_secs(60), || placed(&cp, &name))
            .await
            .unwrap_or_else(|| panic!("db{i}-0 bound"));
    }
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(cp.admin.clone(), "shop");
    let allowed = wait_for(Duration::from_secs(60), || async {
        let s = pdbs.get("db").await.ok()?.status?;
        (s.current_healthy == 3 && s.disruptions_allowed == 1).then_some(())
    })
    .await;
    assert!(
        allowed.is_some(),
        "the disruption controller allows one disruption"
    );

    let moved =
        json!({&resource("vol-p0"): "0", &resource("vol-p1"): "0", &resource("vol-p2"): "1"});
    cp.node_status("node-a", moved).await;
    cp.node_status(
        "node-b",
        json!({&resource("vol-p0"): "1", &resource("vol-p1"): "1", &resource("vol-p2"): "0"}),
    )
    .await;
    // Both end up on node-b, one after the other, and a refusal was recorded between.
    for i in 0..2 {
        let on_b = wait_for(Duration::from_secs(120), || async {
            placed(&cp, &format!("db{i}-0"))
                .await
                .filter(|(node, _)| node == "node-b")
        })
        .await;
        assert!(
            on_b.is_some(),
            "db{i}-0 moved to node-b; volguard log:\n{}",
            cp.volguard.as_ref().unwrap().tail(30)
        );
    }
    assert_eq!(evictions(&cp, "evicted").await, 2.0);
    assert!(
        evictions(&cp, "refused").await >= 1.0,
        "the second waited for the first"
    );
    assert_eq!(
        placed(&cp, "db2-0").await.map(|(n, _)| n).as_deref(),
        Some("node-a")
    );
}

/// Every volume of the driver on a node drops to 0 at once, for longer than the grace
/// period: the device plugin went away, not the volumes. Nothing is evicted, and the
/// node is reported.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_device_plugin_that_goes_away_evicts_nothing() {
    let cp = start().await;
    let volumes = ["vol-d0", "vol-d1"];
    let up: serde_json::Map<String, Value> =
        volumes.iter().map(|v| (resource(v), json!("1"))).collect();
    cp.node("node-a", json!({}), up.into()).await;
    cp.node("node-b", json!({}), json!({})).await;
    let _kubelets = cp.kubelets("shop");
    for (i, v) in volumes.iter().enumerate() {
        cp.create(statefulset(&format!("db{i}"), v)).await;
    }
    for i in 0..2 {
        let name = format!("db{i}-0");
        wait_for(Duration::from_secs(60), || placed(&cp, &name))
            .await
            .unwrap_or_else(|| panic!("db{i}-0 bound"));
    }
    let down: serde_json::Map<String, Value> =
        volumes.iter().map(|v| (resource(v), json!("0"))).collect();
    cp.node_status("node-a", down.into()).await;
    metric_reaches(
        &cp,
        "volguard_remediation_nodes_plugin_down",
        &[("driver", "brightbox")],
        1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    for i in 0..2 {
        assert_eq!(
            placed(&cp, &format!("db{i}-0"))
                .await
                .map(|(n, _)| n)
                .as_deref(),
            Some("node-a"),
            "db{i}-0 stays"
        );
    }
    assert_eq!(evictions(&cp, "evicted").await, 0.0);
}

/// A pod no controller owns whose volume moved is left alone (kubectl drain's rule):
/// evicted, it would simply be gone.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_pod_is_not_evicted() {
    let cp = start().await;
    let res = resource("vol-bare");
    cp.node("node-a", json!({}), json!({&res: "1"})).await;
    cp.node("node-b", json!({}), json!({&res: "0"})).await;
    let _kubelets = cp.kubelets("shop");
    cp.pod(
        "shop",
        json!({
            "metadata": {"name": "bare", "annotations": {"volguard.io/devices": "brightbox=vol-bare"}},
            "spec": {"containers": [{"name": "db", "image": "busybox"}]},
        }),
    )
    .await;
    wait_for(Duration::from_secs(60), || placed(&cp, "bare"))
        .await
        .expect("bare bound");
    cp.node_status("node-a", json!({&res: "0"})).await;
    cp.node_status("node-b", json!({&res: "1"})).await;
    metric_reaches(
        &cp,
        "volguard_remediation_pods_skipped",
        &[("reason", "bare_pod")],
        1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        placed(&cp, "bare").await.map(|(n, _)| n).as_deref(),
        Some("node-a")
    );
    assert_eq!(evictions(&cp, "evicted").await, 0.0);
}
