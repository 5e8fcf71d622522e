//! Remediation against the real kube-apiserver (see `tests/control_plane/`), deployed
//! through `manifests/overlays/remediation` (its RBAC and its config, with a 3 s grace
//! period): a pod whose device count drops to 0 on its node is evicted through the
//! Eviction API with an Event saying where its volume went; a PodDisruptionBudget that
//! allows no disruption stops it, and the refusal is an Event.

mod common;
mod control_plane;

use std::time::Duration;

use control_plane::{ControlPlane, Options, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const RESOURCE: &str = "volumes.brightbox.com/vol-e2e";

/// A ReplicaSet that controls pod `name` (labelled `e2e-pod: <name>`): remediation
/// leaves pods no controller owns alone. Returns the pod's ownerReferences.
async fn controller_of(cp: &ControlPlane, name: &str) -> Value {
    let rs = cp
        .create(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"e2e-pod": name}},
                "template": {"metadata": {"labels": {"e2e-pod": name}},
                    "spec": {"containers": [{"name": "db", "image": "postgres"}]}}}}))
        .await;
    json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
        "uid": rs["metadata"]["uid"], "controller": true}])
}

/// Two Ready nodes: e2e-a holds the volume, e2e-b does not; a pod on e2e-a uses it.
async fn cluster_with_pod(mut labels: Value) -> ControlPlane {
    let cp = ControlPlane::start_with(Options {
        manifests: "manifests/overlays/remediation",
        volguard_config: Some(control_plane::remediation_overlay_config()),
        scheduler: false,
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    cp.node("e2e-a", json!({}), json!({RESOURCE: "1"})).await;
    cp.node("e2e-b", json!({}), json!({RESOURCE: "0"})).await;
    labels["e2e-pod"] = json!("db-0");
    let owners = controller_of(&cp, "db-0").await;
    cp.pod(
        "shop",
        json!({
            "metadata": {"name": "db-0", "labels": labels, "ownerReferences": owners,
                "annotations": {"volguard.io/devices": "brightbox=vol-e2e"}},
            "spec": {"nodeName": "e2e-a",
                "containers": [{"name": "db", "image": "postgres"}]},
        }),
    )
    .await;
    cp
}

/// The device plugin on e2e-a reports the volume gone, the one on e2e-b reports it.
async fn move_volume(cp: &ControlPlane) {
    cp.node_status("e2e-a", json!({RESOURCE: "0"})).await;
    cp.node_status("e2e-b", json!({RESOURCE: "1"})).await;
}

const DETACHED: &str = "volume vol-e2e is detached from node e2e-a (volumes.brightbox.com/vol-e2e is below 1 there); it is attached to e2e-b";

/// Waits until pod `name` in `shop` is being deleted (no kubelet confirms an eviction,
/// so an evicted pod keeps its deletionTimestamp), then checks volguard's one Event.
async fn assert_evicted_with_event(cp: &ControlPlane, name: &str) {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    let evicted = wait_for(Duration::from_secs(60), || async {
        pods.get(name)
            .await
            .ok()?
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    assert!(
        evicted.is_some(),
        "{name} was not evicted; volguard log:\n{}",
        cp.volguard.as_ref().map(|v| v.tail(40)).unwrap_or_default()
    );
    assert_eq!(
        cp.events_from("shop", name, "VolumeDetached").await,
        [("volguard".to_owned(), format!("Evicted: {DETACHED}"))]
    );
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test]
async fn a_pod_whose_volume_moved_is_evicted_with_an_event() {
    let cp = cluster_with_pod(json!({"app": "db"})).await;
    move_volume(&cp).await;
    assert_evicted_with_event(&cp, "db-0").await;
    let metrics = cp.volguard_metrics().await;
    assert!(
        metrics.contains("volguard_remediation_evictions_total{outcome=\"evicted\"} 1\n"),
        "{metrics}"
    );
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test]
async fn a_budget_that_allows_no_disruption_stops_the_eviction_and_says_so() {
    let cp = cluster_with_pod(json!({"app": "guarded"})).await;
    cp.create(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded", "namespace": "shop"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }))
    .await;
    // The API server lets a Pending pod be evicted whatever its budget: make it
    // Running and Ready, as its kubelet would.
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    pods.patch_status(
        "db-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .expect("pod status");
    // The real disruption controller: 1 pod wanted healthy, 1 is, so no disruption.
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(cp.admin.clone(), "shop");
    let counted = wait_for(Duration::from_secs(60), || async {
        let status = pdbs.get("guarded").await.ok()?.status?;
        (status.current_healthy == 1 && status.disruptions_allowed == 0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "the disruption controller counts db-0 healthy"
    );
    move_volume(&cp).await;
    let refusal = wait_for(Duration::from_secs(60), || async {
        cp.events_from("shop", "db-0", "VolumeDetached")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        refusal,
        Some((
            "volguard".to_owned(),
            format!(
                "Eviction refused (Cannot evict pod as it would violate the pod's disruption budget), tried again in 30s: {DETACHED}"
            )
        )),
        "volguard log:\n{}\nmetrics:\n{}\npod: {:?}",
        cp.volguard.as_ref().unwrap().tail(40),
        cp.volguard_metrics().await,
        pods.get("db-0").await.map(|p| p.status)
    );
    let pod = pods.get("db-0").await.expect("db-0 is still there");
    assert!(pod.metadata.deletion_timestamp.is_none());
    let metrics = cp.volguard_metrics().await;
    assert!(
        metrics.contains("volguard_remediation_evictions_total{outcome=\"refused\"} 1\n"),
        "{metrics}"
    );
}

/// The Lease's holder and its last renewal, as the holder wrote them.
async fn lease(cp: &ControlPlane) -> Option<(String, String)> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cp.admin.clone(), "volguard-system");
    let spec = leases.get("volguard-remediation").await.ok()?.spec?;
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    Some((holder, format!("{:?}", spec.renew_time)))
}

async fn lease_holder(cp: &ControlPlane) -> Option<String> {
    lease(cp).await.map(|(holder, _)| holder)
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test]
async fn with_two_replicas_only_the_lease_holder_evicts_and_the_other_takes_over() {
    let mut cp = cluster_with_pod(json!({"app": "db"})).await;
    let (mut replica, replica_metrics) = cp.volguard_replica().await;
    let first = cp
        .volguard
        .as_ref()
        .and_then(|v| v.pid())
        .expect("volguard runs");
    let second = replica.pid().expect("the replica runs");
    let holder = wait_for(Duration::from_secs(30), || lease_holder(&cp))
        .await
        .expect("a replica takes the Lease");
    let first_leads = holder.ends_with(&format!("_{first}"));
    assert!(
        first_leads || holder.ends_with(&format!("_{second}")),
        "holder {holder} is neither pid {first} nor {second}"
    );
    move_volume(&cp).await;
    assert_evicted_with_event(&cp, "db-0").await;
    let evicted_line = "volguard_remediation_evictions_total{outcome=\"evicted\"} 1\n";
    let (leader, other) = if first_leads {
        (
            cp.volguard_metrics().await,
            cp.metrics_at(replica_metrics).await,
        )
    } else {
        (
            cp.metrics_at(replica_metrics).await,
            cp.volguard_metrics().await,
        )
    };
    assert!(leader.contains(evicted_line), "{leader}");
    assert!(
        !other.contains("volguard_remediation_evictions_total{"),
        "{other}"
    );
    assert!(
        other.contains("volguard_remediation_pods_at_risk "),
        "{other}"
    );

    // The leader stops without handing over: the other takes the Lease once it expires
    // (15 s) and evicts the next pod whose volume is gone.
    let next = if first_leads {
        cp.stop_volguard();
        second
    } else {
        replica.stop(Duration::from_secs(10));
        first
    };
    let taken = wait_for(Duration::from_secs(40), || async {
        lease_holder(&cp)
            .await
            .filter(|h| h.ends_with(&format!("_{next}")))
    })
    .await;
    assert!(taken.is_some(), "pid {next} did not take the Lease over");
    let owners = controller_of(&cp, "db-1").await;
    cp.pod(
        "shop",
        json!({
            "metadata": {"name": "db-1", "labels": {"e2e-pod": "db-1"},
                "ownerReferences": owners,
                "annotations": {"volguard.io/devices": "brightbox=vol-e2e"}},
            "spec": {"nodeName": "e2e-a",
                "containers": [{"name": "db", "image": "postgres"}]},
        }),
    )
    .await;
    assert_evicted_with_event(&cp, "db-1").await;
}
