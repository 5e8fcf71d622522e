//! Seed 000 on a real kubelet: real node A ([`REAL_NODE`], containerd, runc, the kubelet
//! and the test device plugin, see `tests/control_plane/node.rs`) and either an API-only
//! node B (its device plugin played by node status updates, its kubelet by a stand-in)
//! or a second real node ([`REAL_NODE_B`], its own kubelet, containerd and plugin), with
//! volguard's webhook and extender, the shipped second scheduler, kube-controller-manager
//! and the remediation overlay's config (grace period 3 s). Needs root: without it the
//! tests fail, they do not skip.

mod common;
mod control_plane;

use std::time::{Duration, Instant};

use control_plane::{
    ControlPlane, Options, is_ready,
    node::{BUSYBOX_IMAGE, NodeOptions, REAL_NODE, REAL_NODE_B, RealNode},
    wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "shop";
const NODE_B: &str = "node-b";
/// Where the device plugin puts volume `vol-move` in the container.
const DEVICE: &str = "/dev/disk/by-id/virtio-vol-move";

fn resource(volume: &str) -> String {
    format!("volumes.brightbox.com/{volume}")
}

async fn start() -> ControlPlane {
    control_plane::node::require_root("the seed 000 real-node tests");
    let cp = ControlPlane::start_with(Options {
        manifests: "manifests/overlays/remediation",
        volguard_config: Some(control_plane::remediation_overlay_config()),
        ..Options::default()
    })
    .await;
    cp.namespace(NS).await;
    cp
}

/// A StatefulSet of one busybox pod using device-plugin volume `volume` through the
/// `volguard.io/devices` annotation (seed 000's pod: no `volumes:` at all).
fn statefulset(name: &str, volume: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"workload": name}},
            "template": {
                "metadata": {"labels": {"workload": name},
                    "annotations": {"volguard.io/devices": format!("brightbox={volume}")}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "db", "image": BUSYBOX_IMAGE,
                        "command": ["sleep", "3600"],
                    }],
                },
            },
        },
    })
}

/// What the kubelet of the API-only node B would do for the pods of [`NS`] bound to it,
/// until dropped: a pod bound there becomes Running and Ready, one being deleted goes.
/// Pods on the real node are the real kubelet's.
struct NodeBKubelet(tokio::task::JoinHandle<()>);

impl Drop for NodeBKubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn node_b_kubelet(cp: &ControlPlane) -> NodeBKubelet {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    NodeBKubelet(tokio::spawn(async move {
        loop {
            for p in pods.list(&Default::default()).await.into_iter().flatten() {
                let on_b = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_B);
                if !on_b {
                    continue;
                }
                let name = p.metadata.name.clone().unwrap_or_default();
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = pods
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if !ready {
                    let now = control_plane::now();
                    let status = json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                    let _ = pods
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// Pod `name` of [`NS`], when it exists and is not being deleted.
async fn live_pod(cp: &ControlPlane, name: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let p = pods.get_opt(name).await.ok()??;
    p.metadata.deletion_timestamp.is_none().then_some(p)
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The state of pod `name` and the node's logs, for a failure message.
async fn diagnose(cp: &ControlPlane, node: &RealNode, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NS);
    let pod = pods.get_opt(name).await.ok().flatten();
    format!(
        "pod {name}: node {:?}, status {:?}\n--- kubelet log ---\n{}\n--- device plugin log \
         ---\n{}\n--- volguard log ---\n{}",
        pod.as_ref().and_then(node_of).map(str::to_owned),
        pod.as_ref().and_then(|p| p.status.as_ref()),
        tail(&node.kubelet_log(), 30),
        tail(&node.device_plugin_log(), 10),
        cp.volguard.as_ref().map(|v| v.tail(20)).unwrap_or_default(),
    )
}

/// Waits up to `secs` for pod `name` to satisfy `check`; fails with the diagnosis.
async fn until(
    cp: &ControlPlane,
    node: &RealNode,
    name: &str,
    secs: u64,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Pod {
    let check = &check;
    let got = wait_for(Duration::from_secs(secs), || async move {
        live_pod(cp, name).await.filter(|p| check(p))
    })
    .await;
    match got {
        Some(p) => p,
        None => panic!("{what} within {secs} s: {}", diagnose(cp, node, name).await),
    }
}

/// Waits up to 30 s for the real node to advertise `count` of `resource`.
async fn advertises(cp: &ControlPlane, node: &RealNode, resource: &str, count: &str) {
    let nodes: Api<Node> = Api::all(cp.admin.clone());
    let seen = wait_for(Duration::from_secs(30), || async {
        let status = nodes.get(node.name).await.ok()?.status?;
        let allocatable = status.allocatable?.get(resource)?.0.clone();
        (allocatable == count).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{resource} never {count} on {}; device plugin log:\n{}",
        node.name,
        node.device_plugin_log()
    );
}

/// Waits up to 10 s (an event reaches the API server a moment after what it reports)
/// for an event of pod `name` with `reason` whose message satisfies `check`; fails
/// naming the messages seen.
async fn event(cp: &ControlPlane, name: &str, reason: &str, check: impl Fn(&str) -> bool) {
    let check = &check;
    let seen = wait_for(Duration::from_secs(10), || async move {
        let messages = cp.events(NS, name, reason).await;
        messages.iter().any(|m| check(m)).then_some(())
    })
    .await;
    if seen.is_none() {
        let messages = cp.events(NS, name, reason).await;
        panic!("no matching {reason} event of pod {name}: {messages:?}");
    }
}

/// The injected probe has passed on `pod` so far: no restart, and no `Unhealthy` event
/// of this pod (by uid: a failed probe is reported at once, long before the kubelet
/// kills the container for it).
async fn probe_passed(cp: &ControlPlane, pod: &Pod, what: &str) {
    assert_eq!(restarts(pod), 0, "{what}: the container was restarted");
    let unhealthy = cp.events_of(pod, "Unhealthy").await;
    assert!(
        unhealthy.is_empty(),
        "{what}: the probe failed: {unhealthy:?}"
    );
}

/// Seed 000 on a real kubelet. A StatefulSet pod using device volume `vol-move` is
/// patched by the webhook (the volume's resource limit and an exec liveness probe on its
/// device path), scheduled by the second scheduler and volguard's extender to the real
/// node, where the device plugin advertises the volume; the kubelet admits it, the
/// container gets the device and the injected probe passes. The volume's link goes: the
/// plugin reports 0, the probe fails and the container is restarted. The volume then
/// moves to node B: volguard evicts the pod, the StatefulSet controller recreates it and
/// it is bound on B. Prints the time from the device removed to the new pod bound on B.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn seed_000_on_a_real_kubelet() {
    let cp = start().await;
    let res = resource("vol-move");
    let node = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-move".to_owned()],
            attached: vec!["vol-move".to_owned()],
            ..NodeOptions::default()
        })
        .await;
    advertises(&cp, &node, &res, "1").await;
    cp.node(NODE_B, json!({}), json!({&res: "0"})).await;
    let _node_b = node_b_kubelet(&cp);

    // 1. Injected, scheduled to the real node, admitted, Ready with the device.
    cp.create(statefulset("db", "vol-move")).await;
    let pod = until(&cp, &node, "db-0", 90, "db-0 Ready on the real node", |p| {
        node_of(p) == Some(REAL_NODE) && is_ready(p)
    })
    .await;
    let spec = pod.spec.as_ref().unwrap();
    let c = &spec.containers[0];
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    assert_eq!(
        limits.and_then(|l| l.get(&res)).map(|q| q.0.as_str()),
        Some("1"),
        "the webhook injected the volume's limit: {c:?}"
    );
    let command = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_default();
    assert_eq!(
        command,
        [
            "/bin/sh",
            "-c",
            "ls '/dev/disk/by-id/virtio-vol-move' >/dev/null"
        ],
        "the injected probe: {c:?}"
    );
    let (ok, out, err) = cp.kubectl(
        &[
            "exec",
            "--namespace",
            NS,
            "db-0",
            "--",
            "ls",
            "-l",
            "/dev/disk/by-id/virtio-vol-move",
        ],
        None,
    );
    assert!(ok, "kubectl exec: {err}");
    assert!(out.starts_with('c'), "not a device in the container: {out}");
    // Past the probe's initial delay and a few periods: still no restart.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let pod = until(&cp, &node, "db-0", 5, "db-0 still Ready", is_ready).await;
    probe_passed(&cp, &pod, "the injected probe on a healthy container").await;
    let uid = pod.metadata.uid.clone().unwrap();

    // 2. The link goes: the plugin reports 0 at once. The device node runc made in the
    // container stays, though (as on a real host, where only opening it would fail):
    // `ls` on it passes and the probe does not restart the container.
    let removed = Instant::now();
    node.detach("vol-move");
    advertises(&cp, &node, &res, "0").await;
    eprintln!(
        "device removed -> 0 advertised: {:.1} s",
        removed.elapsed().as_secs_f64()
    );
    // initialDelaySeconds 5 + failureThreshold 3 x periodSeconds 10, and a margin.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let pod = until(&cp, &node, "db-0", 5, "db-0 still Ready", is_ready).await;
    probe_passed(
        &cp,
        &pod,
        "the device node outlives the host link: the probe still passes",
    )
    .await;
    let (ok, out, err) = cp.kubectl(
        &["exec", "--namespace", NS, "db-0", "--", "ls", "-l", DEVICE],
        None,
    );
    assert!(
        ok && out.starts_with('c'),
        "still a device in the container: {out} {err}"
    );

    // The path the probe checks goes in the container too (as it would with a /dev that
    // follows the host): the probe fails and the kubelet kills the container. Its
    // replacement cannot be made: the device the plugin allocated is gone from the host,
    // so the pod stays on this node, not Ready, restartCount 0 (no new container).
    let gone = Instant::now();
    let (ok, _, err) = cp.kubectl(
        &["exec", "--namespace", NS, "db-0", "--", "rm", DEVICE],
        None,
    );
    assert!(ok, "kubectl exec rm: {err}");
    let pod = until(&cp, &node, "db-0", 90, "db-0 killed by its probe", |p| {
        terminated(p).is_some_and(|t| t.exit_code == 137)
    })
    .await;
    eprintln!(
        "device gone in the container -> container killed by the injected probe: {:.1} s",
        gone.elapsed().as_secs_f64()
    );
    assert_eq!(pod.metadata.uid.as_deref(), Some(uid.as_str()), "same pod");
    event(&cp, "db-0", "Killing", |m| {
        m.contains("failed liveness probe")
    })
    .await;
    let pod = until(
        &cp,
        &node,
        "db-0",
        30,
        "db-0's new container fails: its device is gone",
        |p| {
            waiting(p).is_some_and(|(reason, message)| {
                reason == "CreateContainerError"
                    && message.contains("virtio-vol-move: no such file or directory")
            })
        },
    )
    .await;
    assert!(!is_ready(&pod));
    assert_eq!(restarts(&pod), 0, "no new container was made");

    // The link comes back: the container is made again and the probe passes.
    node.attach("vol-move");
    advertises(&cp, &node, &res, "1").await;
    let pod = until(&cp, &node, "db-0", 90, "db-0 Ready again", is_ready).await;
    assert_eq!(restarts(&pod), 1);
    assert_eq!(pod.metadata.uid.as_deref(), Some(uid.as_str()), "same pod");

    // 3. The volume moves to node B (an API-only node): detached here, advertised there.
    // volguard evicts the pod after the grace period, the real kubelet stops it, the
    // StatefulSet controller recreates it and the scheduler binds it on B.
    let moved = Instant::now();
    node.detach("vol-move");
    cp.node_status(NODE_B, json!({&res: "1"})).await;
    let again = wait_for(Duration::from_secs(90), || async {
        live_pod(&cp, "db-0")
            .await
            .filter(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
            .and_then(|p| node_of(&p).map(str::to_owned))
    })
    .await;
    let elapsed = moved.elapsed();
    assert_eq!(
        again.as_deref(),
        Some(NODE_B),
        "{}",
        diagnose(&cp, &node, "db-0").await
    );
    eprintln!(
        "device removed on the real node -> new pod bound on the API-only node B: {:.1} s \
         (grace period 3 s)",
        elapsed.as_secs_f64()
    );
    event(&cp, "db-0", "VolumeDetached", |_| true).await;
    until(&cp, &node, "db-0", 30, "db-0 Ready on node B", |p| {
        node_of(p) == Some(NODE_B) && is_ready(p)
    })
    .await;
    let left = node.shutdown();
    assert!(left.is_empty(), "the real node left behind: {left:?}");
}

/// Seed 000's move between two real nodes: the volume's link goes from node A and
/// appears on node B (each node's own device plugin reports it, a second kubelet in a
/// mount namespace of its own): volguard evicts the pod from A, the StatefulSet
/// controller recreates it, the scheduler binds it on B, B's kubelet admits it with the
/// device, and it runs there, Ready. Prints the time from the device removed on A to the
/// pod Running on B.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_pod_follows_its_volume_to_a_second_real_node() {
    let cp = start().await;
    let res = resource("vol-move");
    let a = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-move".to_owned()],
            attached: vec!["vol-move".to_owned()],
            ..NodeOptions::default()
        })
        .await;
    // Declared after A: dropped before it (it restores the kernel settings it found).
    let b = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-move".to_owned()],
            second: true,
            ..NodeOptions::default()
        })
        .await;
    advertises(&cp, &a, &res, "1").await;
    advertises(&cp, &b, &res, "0").await;

    cp.create(statefulset("db", "vol-move")).await;
    let pod = until(&cp, &a, "db-0", 90, "db-0 Ready on node A", |p| {
        node_of(p) == Some(REAL_NODE) && is_ready(p)
    })
    .await;
    let uid = pod.metadata.uid.clone().unwrap();

    // The volume moves: its link goes from A and appears on B.
    let moved = Instant::now();
    a.detach("vol-move");
    b.attach("vol-move");
    let running = wait_for(Duration::from_secs(120), || async {
        let p = live_pod(&cp, "db-0").await?;
        let moved = p.metadata.uid.as_deref() != Some(uid.as_str())
            && node_of(&p) == Some(REAL_NODE_B)
            && p.status.as_ref()?.phase.as_deref() == Some("Running");
        moved.then_some(p)
    })
    .await;
    let elapsed = moved.elapsed();
    let Some(_) = running else {
        panic!(
            "db-0 Running on {REAL_NODE_B}: A: {}\nB: {}",
            diagnose(&cp, &a, "db-0").await,
            diagnose(&cp, &b, "db-0").await
        );
    };
    eprintln!(
        "device removed on real node A -> new pod Running on real node B: {:.1} s (grace \
         period 3 s)",
        elapsed.as_secs_f64()
    );
    event(&cp, "db-0", "VolumeDetached", |_| true).await;
    until(&cp, &b, "db-0", 60, "db-0 Ready on node B", |p| {
        node_of(p) == Some(REAL_NODE_B) && is_ready(p)
    })
    .await;
    // initialDelaySeconds 5 + failureThreshold 3 x periodSeconds 10, and a margin.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let pod = until(&cp, &b, "db-0", 5, "db-0 still Ready on node B", is_ready).await;
    probe_passed(&cp, &pod, "the injected probe on B").await;
    let (ok, out, err) = cp.kubectl(
        &["exec", "--namespace", NS, "db-0", "--", "ls", "-l", DEVICE],
        None,
    );
    assert!(ok && out.starts_with('c'), "the device on B: {out} {err}");
    let left = b.shutdown();
    assert!(left.is_empty(), "node B left behind: {left:?}");
    let left = a.shutdown();
    assert!(left.is_empty(), "node A left behind: {left:?}");
}

fn terminated(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    c.last_state.as_ref()?.terminated.clone()
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = c.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

/// Kubelet admission, as seed 000 describes it: a pod bound by hand (`nodeName`, no
/// scheduler) to the real node, using a volume its device plugin serves but whose device
/// is not there (capacity 0), is refused by the kubelet: phase Failed, reason
/// `UnexpectedAdmissionError`. The webhook injected the limit the kubelet refuses.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_kubelet_refuses_a_pod_whose_device_is_elsewhere() {
    let cp = start().await;
    let node = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-here".to_owned(), "vol-away".to_owned()],
            attached: vec!["vol-here".to_owned()],
            ..NodeOptions::default()
        })
        .await;
    advertises(&cp, &node, &resource("vol-here"), "1").await;
    advertises(&cp, &node, &resource("vol-away"), "0").await;
    let pod = |name: &str, volume: &str| {
        json!({
            "metadata": {"name": name,
                "annotations": {"volguard.io/devices": format!("brightbox={volume}")}},
            "spec": {
                "nodeName": REAL_NODE,
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "db", "image": BUSYBOX_IMAGE,
                    "command": ["sleep", "3600"]}],
            },
        })
    };
    cp.pod(NS, pod("away", "vol-away")).await;
    cp.pod(NS, pod("here", "vol-here")).await;
    let refused = until(&cp, &node, "away", 60, "pod away refused", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let status = refused.status.unwrap();
    eprintln!("refused: {:?} {:?}", status.reason, status.message);
    let limits = refused.spec.unwrap().containers[0]
        .resources
        .clone()
        .and_then(|r| r.limits)
        .unwrap_or_default();
    assert_eq!(
        limits.get(&resource("vol-away")).map(|q| q.0.as_str()),
        Some("1"),
        "the webhook injected the limit"
    );
    assert_eq!(status.reason.as_deref(), Some("UnexpectedAdmissionError"));
    assert!(
        status.message.as_deref().is_some_and(|m| m.contains(
            "Allocate failed due to no healthy devices present; cannot allocate unhealthy \
             devices volumes.brightbox.com/vol-away, which is unexpected"
        )),
        "{:?}",
        status.message
    );
    // The pod whose device is there runs beside it.
    until(&cp, &node, "here", 60, "pod here Ready", is_ready).await;
    let left = node.shutdown();
    assert!(left.is_empty(), "the real node left behind: {left:?}");
}

/// A config's own `livenessProbe.check` runs in the real container through its shell:
/// `test -c {path} && test ! -e /tmp/unhealthy` exits 0 while the device is there (the
/// pod is Ready, no restart), 1 once the container makes `/tmp/unhealthy` (the kubelet
/// kills it for the failed probe and makes it again: restartCount 1, Ready again, the
/// device still there).
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_custom_probe_check_runs_in_the_real_container() {
    control_plane::node::require_root("the seed 000 real-node tests");
    let config = control_plane::example_config()
        .unwrap()
        .replace(
            r#"check: "ls {path} >/dev/null""#,
            r#"check: "test -c {path} && test ! -e /tmp/unhealthy""#,
        )
        .replace("initialDelaySeconds: 5", "initialDelaySeconds: 1")
        .replace("periodSeconds: 10", "periodSeconds: 2");
    let cp = ControlPlane::start_with(Options {
        volguard_config: Some(config),
        ..Options::default()
    })
    .await;
    cp.namespace(NS).await;
    let node = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-check".to_owned()],
            attached: vec!["vol-check".to_owned()],
            ..NodeOptions::default()
        })
        .await;
    advertises(&cp, &node, &resource("vol-check"), "1").await;
    cp.pod(
        NS,
        json!({
            "metadata": {"name": "checked",
                "annotations": {"volguard.io/devices": "brightbox=vol-check"}},
            "spec": {
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "db", "image": BUSYBOX_IMAGE,
                    "command": ["sleep", "3600"]}],
            },
        }),
    )
    .await;
    let pod = until(&cp, &node, "checked", 90, "pod checked Ready", |p| {
        node_of(p) == Some(REAL_NODE) && is_ready(p)
    })
    .await;
    let probe = pod.spec.unwrap().containers[0]
        .liveness_probe
        .clone()
        .unwrap();
    assert_eq!(
        probe.exec.and_then(|e| e.command).unwrap_or_default(),
        [
            "/bin/sh",
            "-c",
            "test -c '/dev/disk/by-id/virtio-vol-check' && test ! -e /tmp/unhealthy"
        ]
    );
    // Exit 0: several periods, no restart.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pod = until(
        &cp,
        &node,
        "checked",
        5,
        "pod checked still Ready",
        is_ready,
    )
    .await;
    probe_passed(&cp, &pod, "the check on a healthy container").await;
    // Exit 1: killed for the failed probe, made again.
    let (ok, _, err) = cp.kubectl(
        &[
            "exec",
            "--namespace",
            NS,
            "checked",
            "--",
            "touch",
            "/tmp/unhealthy",
        ],
        None,
    );
    assert!(ok, "kubectl exec touch: {err}");
    let pod = until(&cp, &node, "checked", 60, "pod checked restarted", |p| {
        restarts(p) >= 1 && is_ready(p)
    })
    .await;
    assert_eq!(terminated(&pod).map(|t| t.exit_code), Some(137));
    event(&cp, "checked", "Unhealthy", |m| {
        m.starts_with("Liveness probe failed")
    })
    .await;
    let left = node.shutdown();
    assert!(left.is_empty(), "the real node left behind: {left:?}");
}
