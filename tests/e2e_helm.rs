//! The Helm chart against the real control plane (see `tests/control_plane/`): `helm
//! install` of `charts/volguard` provides every API object, volguard and kube-scheduler
//! run from them (there is no kubelet to run the Deployments' pods), and pods go through
//! the chart's webhook and second scheduler. Then `helm upgrade` with other drivers
//! changes the config checksum on the pod template, and the Deployment rolls out; `helm
//! uninstall` takes the webhook away.

mod common;
mod control_plane;

use std::time::Duration;

use control_plane::{ControlPlane, NAMESPACE, Options, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

/// How long a test waits for a binding: the scheduler's pod backoff tops out at 10 s.
const BIND: Duration = Duration::from_secs(60);
const CHECKSUM: &str = "checksum/config";

/// The release's status and revision, from `helm status volguard -o json`.
fn release(cp: &ControlPlane) -> (String, u64) {
    let (ok, out, err) = cp.helm(&["status", "volguard", "-o", "json"]);
    assert!(ok, "helm status volguard: {err}");
    let status: Value = serde_json::from_str(&out).expect("helm status -o json");
    (
        status["info"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        status["version"].as_u64().unwrap_or_default(),
    )
}

/// The config checksum on the pod template of `deployment`, as stored.
fn checksum(deployment: &Deployment) -> String {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CHECKSUM))
        .cloned()
        .unwrap_or_default()
}

/// The config checksums of volguard's ReplicaSets, one per rollout, sorted.
async fn replica_set_checksums(cp: &ControlPlane) -> Vec<String> {
    let sets: Api<ReplicaSet> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let list = ListParams::default().labels("app.kubernetes.io/component=server");
    let mut sums: Vec<String> = sets
        .list(&list)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter_map(|rs| {
            let template = rs.spec.as_ref()?.template.as_ref()?;
            template
                .metadata
                .as_ref()?
                .annotations
                .as_ref()?
                .get(CHECKSUM)
                .cloned()
        })
        .collect();
    sums.sort();
    sums
}

/// A pod that names no scheduler, with the raw block devices `devices`.
fn device_pod(name: &str, devices: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {"volguard.io/devices": devices}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    })
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installed_with_helm_runs_the_webhook_and_scheduler_and_an_upgrade_rolls_volguard()
 {
    let mut cp = ControlPlane::start_with(Options {
        chart: Some(Vec::new()),
        ..Options::default()
    })
    .await;
    assert_eq!(release(&cp), ("deployed".to_owned(), 1));

    // The webhook routes a pod with a managed device to the chart's second scheduler,
    // whose extender (volguard) sends it where the device is.
    cp.namespace("shop").await;
    for (node, count) in [("node-a", "0"), ("node-b", "1"), ("node-c", "0")] {
        cp.node(
            node,
            json!({}),
            json!({"volumes.brightbox.com/vol-qsk4v": count}),
        )
        .await;
        cp.csinode(node, "csi.brightbox.com", None).await;
    }
    let stored = cp
        .pod("shop", device_pod("seed", "brightbox=vol-qsk4v"))
        .await;
    assert_eq!(
        annotation(&stored, "volguard.io/mutated"),
        Some(
            "limits volumes.brightbox.com/vol-qsk4v=1 (app); liveness probes on app; \
             scheduler volguard-scheduler"
        )
    );
    assert_eq!(
        stored
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref()),
        Some(control_plane::SCHEDULER)
    );
    assert_eq!(
        cp.bound_node("shop", "seed", BIND).await.as_deref(),
        Some("node-b")
    );

    // A driver the release does not configure yet: the pod is admitted unchanged.
    let stored = cp.pod("shop", device_pod("early", "nvme=vol-1")).await;
    assert_eq!(annotation(&stored, "volguard.io/mutated"), None);

    // helm upgrade with one more driver: a new checksum on the pod template, and the
    // Deployment controller rolls out a new ReplicaSet with it.
    let deployments: Api<Deployment> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let before = checksum(
        &deployments
            .get("volguard")
            .await
            .expect("Deployment volguard"),
    );
    assert_eq!(
        replica_set_checksums(&cp).await,
        std::slice::from_ref(&before)
    );
    let scheduler_before = checksum(
        &deployments
            .get("volguard-scheduler")
            .await
            .expect("Deployment volguard-scheduler"),
    );
    let chart = control_plane::repo("charts/volguard");
    let drivers = r#"drivers=[
        {"name": "brightbox", "csiDriver": "csi.brightbox.com", "flexDriver": "brightbox/volume",
         "resourceTemplate": "volumes.brightbox.com/{volumeHandle}",
         "devicePathTemplate": "/dev/disk/by-id/virtio-{volumeHandle}"},
        {"name": "nvme", "resourceTemplate": "volumes.example.com/{volumeHandle}"}]"#;
    let (ok, _, err) = cp.helm(&[
        "upgrade",
        "volguard",
        chart.to_str().unwrap(),
        "--reuse-values",
        "--set-json",
        drivers,
    ]);
    assert!(ok, "helm upgrade: {err}");
    assert_eq!(release(&cp), ("deployed".to_owned(), 2));
    let after = checksum(
        &deployments
            .get("volguard")
            .await
            .expect("Deployment volguard"),
    );
    assert_ne!(after, before, "new drivers, same checksum");
    assert_eq!(after.len(), 64, "a sha256 in hex: {after}");
    let mut both = vec![before, after.clone()];
    both.sort();
    let rolled = wait_for(Duration::from_secs(30), || async {
        (replica_set_checksums(&cp).await == both).then_some(())
    })
    .await;
    assert!(
        rolled.is_some(),
        "no ReplicaSet with the new checksum: {:?}",
        replica_set_checksums(&cp).await
    );
    let scheduler_after = checksum(
        &deployments
            .get("volguard-scheduler")
            .await
            .expect("Deployment volguard-scheduler"),
    );
    assert_eq!(
        scheduler_after, scheduler_before,
        "the scheduler's config did not change"
    );

    // volguard restarted with the upgraded ConfigMap, as the rolled-out pods are, knows
    // the new driver.
    let manifests = cp.release_manifests();
    cp.restart_volguard_with(&manifests).await;
    let stored = cp.pod("shop", device_pod("late", "nvme=vol-1")).await;
    assert_eq!(
        annotation(&stored, "volguard.io/mutated"),
        Some("limits volumes.example.com/vol-1=1 (app); scheduler volguard-scheduler")
    );

    // helm uninstall takes the webhook registration away: pods are left alone again.
    let (ok, _, err) = cp.helm(&["uninstall", "volguard"]);
    assert!(ok, "helm uninstall: {err}");
    let (found, _, err) = cp.kubectl(&["get", "mutatingwebhookconfiguration", "volguard"], None);
    assert!(!found && err.contains("NotFound"), "{err}");
    let stored = cp.pod("shop", device_pod("after", "nvme=vol-1")).await;
    assert_eq!(annotation(&stored, "volguard.io/mutated"), None);
}
