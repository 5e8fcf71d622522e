//! The webhook driven by the real kube-apiserver (see `tests/control_plane/`): pods
//! created through the API are stored as volguard patched them.

mod common;
mod control_plane;

use std::collections::BTreeMap;

use control_plane::{ControlPlane, Options};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{PostParams, ResourceExt},
};
use serde_json::{Value, json};

const LINODE: &str = "linodebs.csi.linode.com";

/// A pod with a linode claim mounted at /data in `web`, and a brightbox device from the
/// annotation.
fn shop_pod(name: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "annotations": {"volguard.io/devices": "brightbox=vol-qsk4v"},
        },
        "spec": {
            "schedulerName": "volguard-scheduler",
            "containers": [
                {"name": "web", "image": "nginx", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "sidecar", "image": "busybox"},
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    })
}

fn limits(pod: &Pod, container: usize) -> BTreeMap<String, String> {
    pod.spec.as_ref().unwrap().containers[container]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

fn probe_command(pod: &Pod, container: usize) -> Option<Vec<String>> {
    pod.spec.as_ref().unwrap().containers[container]
        .liveness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
}

async fn requests_to_mutate(cp: &ControlPlane) -> u64 {
    let text = cp.volguard_metrics().await;
    text.lines()
        .filter(|l| l.starts_with("volguard_requests_total{") && l.contains("endpoint=\"/mutate\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_created_through_the_api_is_stored_as_volguard_patched_it() {
    let cp = ControlPlane::start_with(Options {
        volguard_config: control_plane::example_config(),
        scheduler: false,
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    cp.bound_claim(
        "shop",
        "data",
        "pv-data",
        LINODE,
        "310100-data",
        "ReadWriteOnce",
    )
    .await;

    let stored = cp.pod("shop", shop_pod("web-0")).await;

    let annotations = stored.annotations();
    assert_eq!(
        annotations.get("volguard.io/volumes").map(String::as_str),
        Some("linode=310100-data,brightbox=vol-qsk4v")
    );
    assert_eq!(
        annotations.get("volguard.io/mutated").map(String::as_str),
        Some("limits volumes.brightbox.com/vol-qsk4v=1 (web); liveness probes on web")
    );
    assert_eq!(
        limits(&stored, 0),
        BTreeMap::from([("volumes.brightbox.com/vol-qsk4v".to_owned(), "1".to_owned())]),
        "the device, and no marker: the shipped config sets none"
    );
    assert_eq!(
        limits(&stored, 1),
        BTreeMap::new(),
        "the sidecar mounts nothing managed"
    );
    assert_eq!(
        probe_command(&stored, 0),
        Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "ls '/data' >/dev/null && ls '/dev/disk/by-id/virtio-vol-qsk4v' >/dev/null".to_owned(),
        ])
    );
    assert_eq!(probe_command(&stored, 1), None);
    let probe = stored.spec.as_ref().unwrap().containers[0]
        .liveness_probe
        .clone()
        .unwrap();
    assert_eq!(
        (
            probe.initial_delay_seconds,
            probe.period_seconds,
            probe.timeout_seconds,
            probe.failure_threshold
        ),
        (Some(5), Some(10), Some(5), Some(3))
    );
    // The API server's own admission (ServiceAccount) ran too and was kept.
    assert!(
        stored
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .any(|v| v.name.starts_with("kube-api-access-")),
        "the service-account token volume is there"
    );

    // A second pass over the stored pod (what reinvocation would send) adds nothing.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "reinvocation", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "object": serde_json::to_value(&stored).unwrap(),
        },
    });
    let (status, body) = cp.volguard_post_anonymous("/mutate", &review).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"].get("patch"), None, "{body}");
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_excluded_namespaces_and_a_stopped_volguard() {
    let mut cp = ControlPlane::start_with(Options {
        volguard_config: control_plane::example_config(),
        scheduler: false,
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    cp.bound_claim(
        "shop",
        "data",
        "pv-data",
        LINODE,
        "310100-data",
        "ReadWriteOnce",
    )
    .await;

    // Server-side dry run: the answer is patched, nothing is stored.
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    let pod: Pod = serde_json::from_value(shop_pod("dry")).unwrap();
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pod,
        )
        .await
        .expect("dry-run create");
    assert!(dry.annotations().contains_key("volguard.io/mutated"));
    assert_eq!(
        pods.get_opt("dry").await.unwrap().map(|p| p.name_any()),
        None
    );

    // volguard's own namespace and kube-system are never sent to it.
    let before = requests_to_mutate(&cp).await;
    for namespace in ["kube-system", control_plane::NAMESPACE] {
        cp.namespace(namespace).await;
        let mut pod = shop_pod("excluded");
        pod["spec"]["volumes"] = json!([]);
        pod["spec"]["containers"][0]["volumeMounts"] = json!([]);
        let stored = cp.pod(namespace, pod).await;
        assert!(
            !stored.annotations().contains_key("volguard.io/mutated"),
            "{namespace}: {:?}",
            stored.annotations()
        );
        assert_eq!(limits(&stored, 0), BTreeMap::new(), "{namespace}");
    }
    assert_eq!(
        requests_to_mutate(&cp).await,
        before,
        "the API server did not call volguard for excluded namespaces"
    );

    // volguard down: failurePolicy Ignore admits pods unchanged, as manifests/README.md says.
    cp.stop_volguard();
    let stored = cp.pod("shop", shop_pod("while-down")).await;
    assert!(!stored.annotations().contains_key("volguard.io/mutated"));
    assert_eq!(limits(&stored, 0), BTreeMap::new());
}
