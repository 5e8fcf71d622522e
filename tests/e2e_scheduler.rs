//! The extender driven by the real kube-scheduler (see `tests/control_plane/`): pods
//! created through the real API server, patched by the webhook, bound by kube-scheduler
//! with the shipped profile following volguard's verdicts.

mod common;
mod control_plane;

use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Options};
use futures::{StreamExt, stream};
use serde_json::{Value, json};

const LINODE: &str = "linodebs.csi.linode.com";
const BRIGHTBOX: &str = "csi.brightbox.com";
/// How long a test waits for a binding: the scheduler's pod backoff tops out at 10 s.
const BIND: Duration = Duration::from_secs(60);

/// A pod for the volguard scheduler using claims `claims`, plus device annotations.
fn pod(name: &str, claims: &[&str], devices: Option<&str>) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let mounts: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": c, "mountPath": format!("/{c}")}))
        .collect();
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {
            "schedulerName": control_plane::SCHEDULER,
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts}],
            "volumes": volumes,
        },
    });
    if let Some(devices) = devices {
        pod["metadata"]["annotations"] = json!({"volguard.io/devices": devices});
    }
    pod
}

/// A node registering linode with `count` slots, with `used` linode volumes attached.
async fn linode_node(
    cp: &ControlPlane,
    name: &str,
    count: Option<i32>,
    used: &[&str],
    annotations: Value,
) {
    let attached: Vec<(&str, &str)> = used.iter().map(|h| (LINODE, *h)).collect();
    cp.node_with(name, annotations, json!({}), &attached).await;
    cp.csinode(name, LINODE, count).await;
}

/// Namespace `shop` with the linode claim `data`, bound and attached nowhere.
async fn shop_with_data_claim(cp: &ControlPlane) {
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
}

async fn filter_requests(cp: &ControlPlane) -> u64 {
    cp.volguard_metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("volguard_requests_total{") && l.contains("endpoint=\"/filter\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_device_plugin_pod_is_bound_where_its_volume_is_attached() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    for (node, count) in [("node-a", "0"), ("node-b", "1"), ("node-c", "0")] {
        cp.node(
            node,
            json!({}),
            json!({"volumes.brightbox.com/vol-qsk4v": count}),
        )
        .await;
        cp.csinode(node, BRIGHTBOX, None).await;
    }
    let before = filter_requests(&cp).await;
    cp.pod("shop", pod("seed", &[], Some("brightbox=vol-qsk4v")))
        .await;
    assert_eq!(
        cp.bound_node("shop", "seed", BIND).await.as_deref(),
        Some("node-b")
    );
    assert!(
        filter_requests(&cp).await > before,
        "the scheduler asked volguard (the second scheduler asks it about every pod)"
    );
    // It was answered because it presented its client certificate: the shipped flags
    // turn away a caller without one, which the webhook path still takes.
    let args =
        json!({"Pod": pod("seed", &[], Some("brightbox=vol-qsk4v")), "NodeNames": ["node-b"]});
    assert_eq!(
        cp.volguard_post_anonymous("/filter", &args).await,
        (
            403,
            "/filter needs a client certificate signed by volguard's client CA (--client-ca): \
             kube-scheduler presents one with its extender tlsConfig certFile/keyFile or certData/keyData\n"
                .to_owned()
        )
    );
    let (status, _) = cp.volguard_post("/filter", &args).await;
    assert_eq!(status, 200);
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn attach_limits_from_csinode_and_annotation_steer_the_scheduler() {
    let cp = ControlPlane::start().await;
    shop_with_data_claim(&cp).await;
    // node-1: CSINode says 1, one volume attached: full.
    linode_node(&cp, "node-1", Some(1), &["310001-a"], json!({})).await;
    // node-2: CSINode says 8 but the node annotation says 1, one attached: full.
    linode_node(
        &cp,
        "node-2",
        Some(8),
        &["310002-b"],
        json!({"volguard.io/attach-limit": "1"}),
    )
    .await;
    // node-3: 2 slots, 1 used: room for the pod.
    linode_node(&cp, "node-3", Some(2), &["310003-c"], json!({})).await;
    cp.pod("shop", pod("web", &["data"], None)).await;
    assert_eq!(
        cp.bound_node("shop", "web", BIND).await.as_deref(),
        Some("node-3")
    );
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_config_default_limit_applies_where_nothing_else_says() {
    let config =
        std::fs::read_to_string(control_plane::repo("manifests/base/configmap.yaml")).unwrap();
    let config = config
        .split_once("config.yaml: |\n")
        .expect("the shipped ConfigMap")
        .1
        .replace("fromCSINode: true", "fromCSINode: false")
        .replace("default: 8", "default: 1");
    assert!(config.contains("default: 1"), "the shipped config changed");
    let cp = ControlPlane::start_with(Options {
        volguard_config: Some(config),
        ..Options::default()
    })
    .await;
    shop_with_data_claim(&cp).await;
    linode_node(&cp, "node-1", Some(16), &["310001-a"], json!({})).await;
    linode_node(&cp, "node-2", Some(16), &[], json!({})).await;
    cp.pod("shop", pod("web", &["data"], None)).await;
    assert_eq!(
        cp.bound_node("shop", "web", BIND).await.as_deref(),
        Some("node-2"),
        "node-1 is at the config default of 1 (its CSINode count is not read)"
    );
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_read_write_once_volume_in_use_keeps_its_next_pod_on_the_same_node() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    cp.bound_claim("shop", "db", "pv-db", LINODE, "310100-db", "ReadWriteOnce")
        .await;
    for node in ["node-1", "node-2", "node-3"] {
        linode_node(&cp, node, Some(8), &[], json!({})).await;
    }
    let mut first = pod("db-0", &["db"], None);
    first["spec"]["nodeName"] = "node-2".into();
    cp.pod("shop", first).await;
    cp.pod("shop", pod("db-reader", &["db"], None)).await;
    assert_eq!(
        cp.bound_node("shop", "db-reader", BIND).await.as_deref(),
        Some("node-2")
    );
}

/// The FailedScheduling text an operator reads in `kubectl describe pod`.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_fits_nowhere_stays_pending_with_volguards_reasons() {
    let cp = ControlPlane::start().await;
    shop_with_data_claim(&cp).await;
    linode_node(&cp, "node-1", Some(1), &["310001-a"], json!({})).await;
    linode_node(&cp, "node-2", Some(1), &["310002-b"], json!({})).await;
    linode_node(
        &cp,
        "node-3",
        Some(8),
        &["310003-c"],
        json!({"volguard.io/attach-limit": "1"}),
    )
    .await;
    // node-4: the linode node plugin never registered.
    cp.node("node-4", json!({}), json!({})).await;
    cp.pod("shop", pod("web", &["data"], None)).await;
    let message = cp
        .unschedulable_message("shop", "web")
        .await
        .expect("the scheduler reports the pod unschedulable");
    assert_eq!(
        message,
        "0/4 nodes are available: 1 node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit), \
         1 node(s) without CSI driver linodebs.csi.linode.com registered (is its node plugin running, with the kubelet's --root-dir?), \
         2 node(s) at the linode attach limit (limit from CSINode). \
         preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
    );
    let events = cp.events("shop", "web", "FailedScheduling").await;
    assert!(events.contains(&message), "{events:?}");

    // The same, per node, from `volguard explain` on the live cluster, under volguard's
    // own read-only ServiceAccount.
    let kubeconfig = cp.dir().join("volguard.kubeconfig");
    let config = cp.dir().join("volguard.yaml");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_volguard"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&config)
            .env_remove("VOLGUARD_OUTPUT")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["explain", "--pod", "shop/web"]);
    assert_eq!(code, Some(1), "fits nowhere: {stdout}{stderr}");
    assert_eq!(
        stdout,
        "NODE    VERDICT       SCORE  SLOTS       REASON\n\
         node-1  unresolvable  0      linode 1/1  node(s) at the linode attach limit (limit from CSINode): 1 of 1 used, pod needs 1 more\n\
         node-2  unresolvable  0      linode 1/1  node(s) at the linode attach limit (limit from CSINode): 1 of 1 used, pod needs 1 more\n\
         node-3  unresolvable  0      linode 1/1  node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit): 1 of 1 used, pod needs 1 more\n\
         node-4  unresolvable  0      linode 0/8  node(s) without CSI driver linodebs.csi.linode.com registered (is its node plugin running, with the kubelet's --root-dir?): the node has no CSINode object\n\
         \n"
        .to_owned()
            + volguard::cmd::explain::LEGEND
    );
    // The same through kubectl, with volguard as its plugin.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_volguard"),
        plugins.path().join("kubectl-volguard"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        plugins.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let through_kubectl = std::process::Command::new("kubectl")
        .args([
            "volguard",
            "explain",
            "pod/web",
            "-n",
            "shop",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .arg("--config")
        .arg(&config)
        .env("PATH", &path)
        .env_remove("VOLGUARD_OUTPUT")
        .output()
        .unwrap();
    assert_eq!(
        (
            through_kubectl.status.code(),
            String::from_utf8_lossy(&through_kubectl.stdout).into_owned()
        ),
        (Some(1), stdout),
        "{}",
        String::from_utf8_lossy(&through_kubectl.stderr)
    );
    let (code, stdout, stderr) = run(&["nodes"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "NODE    LINODE  LINODE LIMIT FROM                         DEVICES\n\
         node-1  1/1     CSINode                                   -\n\
         node-2  1/1     CSINode                                   -\n\
         node-3  1/1     node annotation volguard.io/attach-limit  -\n\
         node-4  0/8     config default                            -\n"
    );
}

/// With hundreds of nodes of which a handful fit, the shipped profile lets the
/// extender see every node that passed the in-tree filters, so the first attempt binds.
/// The fitting nodes are created last, beyond the sample a default percentage would
/// show the extender first (see the next test).
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn many_nodes_few_fits_bind_in_the_first_attempt() {
    let cp = ControlPlane::start().await;
    let created = few_fits(&cp).await;
    let node = cp.bound_node("shop", "web", BIND).await;
    let elapsed = created.elapsed();
    let failed = cp.events("shop", "web", "FailedScheduling").await;
    assert!(
        node.as_deref().is_some_and(|n| FITS.contains(&n)),
        "bound to {node:?}"
    );
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "no failed attempt before the binding"
    );
    println!("{FEW_FITS_NODES} nodes, 3 fit: bound in {elapsed:?}");
}

/// The negative control of the test above: with kube-scheduler's default percentage
/// (`max(100, 500 x 46 %)` = 230 of 500 nodes found passing its own filters, counted
/// from the first node) and one filter worker (with 16, chunks of 22 nodes are filtered
/// at once, and on a machine with many cores the sample reaches past node 300), the
/// extender sees none of the fitting nodes on the first attempt: it turns those 230
/// away.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn with_the_default_percentage_the_first_attempt_misses_the_few_fits() {
    let cp = ControlPlane::start_with(Options {
        scheduler_config: Some(json!({"percentageOfNodesToScore": 0, "parallelism": 1})),
        ..Options::default()
    })
    .await;
    few_fits(&cp).await;
    // The event stays when a later attempt binds the pod (the condition does not).
    let failed = control_plane::wait_for(BIND, || async {
        let failed = cp.events("shop", "web", "FailedScheduling").await;
        (!failed.is_empty()).then_some(failed)
    })
    .await
    .expect("the first attempt fails");
    let first = &failed[0];
    assert!(
        first.starts_with(
            "0/500 nodes are available: 230 node(s) at the linode attach limit (limit from CSINode)."
        ),
        "{first}"
    );
}

const FEW_FITS_NODES: usize = 500;
/// Among the last 180 of the 500 created: beyond the first 230, whatever the creation
/// order within a batch of 16.
const FITS: [&str; 3] = ["node-321", "node-455", "node-499"];

/// 500 linode nodes with one slot each, held by an attached volume, except [`FITS`] with
/// four; then the pod `shop/web` with one claim. Returns when the pod was created.
async fn few_fits(cp: &ControlPlane) -> Instant {
    shop_with_data_claim(cp).await;
    let names: Vec<String> = (0..FEW_FITS_NODES)
        .map(|i| format!("node-{i:03}"))
        .collect();
    stream::iter(names.iter())
        .for_each_concurrent(16, |name| async move {
            let handle = format!("full-{name}");
            let slots = if FITS.contains(&name.as_str()) { 4 } else { 1 };
            linode_node(cp, name, Some(slots), &[&handle], json!({})).await;
        })
        .await;
    let created = Instant::now();
    cp.pod("shop", pod("web", &["data"], None)).await;
    created
}

/// A pending pod is bound once a change made through the API frees a node: time from
/// the change to the binding is printed (docs/testing.md quotes it).
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn live_changes_let_a_pending_pod_be_bound() {
    let cp = ControlPlane::start().await;
    cp.namespace("shop").await;
    for (i, claim) in ["a", "b", "c"].iter().enumerate() {
        cp.bound_claim(
            "shop",
            claim,
            &format!("pv-{claim}"),
            LINODE,
            &format!("31010{i}-{claim}"),
            "ReadWriteOnce",
        )
        .await;
    }
    // A VolumeAttachment of another volume fills node-1.
    cp.namespace("other").await;
    cp.bound_claim("other", "x", "pv-x", LINODE, "310900-x", "ReadWriteOnce")
        .await;
    linode_node(&cp, "node-1", Some(1), &[], json!({})).await;
    cp.attachment("va-x", LINODE, "node-1", "pv-x").await;
    // node-2 advertises the device at 0 (detached).
    cp.node(
        "node-2",
        json!({}),
        json!({"volumes.brightbox.com/vol-live": "0"}),
    )
    .await;
    cp.csinode("node-2", BRIGHTBOX, None).await;
    // node-3: the annotation allows nothing.
    linode_node(
        &cp,
        "node-3",
        Some(8),
        &[],
        json!({"volguard.io/attach-limit": "0"}),
    )
    .await;

    let mut figures = Vec::new();
    // 1. Deleting the VolumeAttachment frees node-1.
    cp.pod("shop", pod("by-detach", &["a"], None)).await;
    cp.unschedulable_message("shop", "by-detach")
        .await
        .expect("pending");
    let change = Instant::now();
    cp.delete(&["volumeattachment", "va-x"]);
    assert_eq!(
        cp.bound_node("shop", "by-detach", BIND).await.as_deref(),
        Some("node-1")
    );
    figures.push(("VolumeAttachment deleted", change.elapsed()));

    // 2. The device plugin reports the device at 1 on node-2.
    cp.pod("shop", pod("by-device", &[], Some("brightbox=vol-live")))
        .await;
    cp.unschedulable_message("shop", "by-device")
        .await
        .expect("pending");
    let change = Instant::now();
    cp.node_status("node-2", json!({"volumes.brightbox.com/vol-live": "1"}))
        .await;
    assert_eq!(
        cp.bound_node("shop", "by-device", BIND).await.as_deref(),
        Some("node-2")
    );
    figures.push(("device count raised to 1", change.elapsed()));

    // 3. The node annotation is raised on node-3.
    cp.pod("shop", pod("by-annotation", &["c"], None)).await;
    cp.unschedulable_message("shop", "by-annotation")
        .await
        .expect("pending");
    let change = Instant::now();
    let (ok, _, err) = cp.kubectl(
        &[
            "annotate",
            "--overwrite",
            "node",
            "node-3",
            "volguard.io/attach-limit=4",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        cp.bound_node("shop", "by-annotation", BIND)
            .await
            .as_deref(),
        Some("node-3")
    );
    figures.push(("node annotation raised", change.elapsed()));
    for (what, took) in figures {
        println!("time from change to binding: {what}: {took:?}");
    }
}

/// With the shipped `scheduling.schedulerName`, a pod that names no scheduler is routed
/// to volguard's and placed by its verdicts; a pod without managed volumes stays with
/// the default scheduler.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn pods_are_routed_to_the_volguard_scheduler_without_naming_it() {
    let cp = ControlPlane::start_with(Options {
        default_scheduler: true,
        ..Options::default()
    })
    .await;
    shop_with_data_claim(&cp).await;
    linode_node(&cp, "node-1", Some(1), &["310001-a"], json!({})).await;
    linode_node(&cp, "node-2", Some(4), &[], json!({})).await;

    let mut managed = pod("web", &["data"], None);
    managed["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulerName");
    let stored = cp.pod("shop", managed).await;
    assert_eq!(
        stored.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some(control_plane::SCHEDULER)
    );
    assert_eq!(
        cp.bound_node("shop", "web", BIND).await.as_deref(),
        Some("node-2"),
        "node-1 is at its attach limit"
    );

    let mut plain = pod("plain", &[], None);
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("schedulerName");
    let stored = cp.pod("shop", plain).await;
    assert_eq!(
        stored.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("default-scheduler")
    );
    assert!(cp.bound_node("shop", "plain", BIND).await.is_some());

    let by = |pod: &'static str| {
        let cp = &cp;
        async move {
            control_plane::wait_for(Duration::from_secs(30), || async {
                cp.events_from("shop", pod, "Scheduled").await.pop()
            })
            .await
            .map(|(by, _)| by)
        }
    };
    assert_eq!(by("web").await.as_deref(), Some(control_plane::SCHEDULER));
    assert_eq!(by("plain").await.as_deref(), Some("default-scheduler"));
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_on_a_local_pv_is_stored_with_its_probe_and_bound_to_the_pvs_node() {
    let cp = ControlPlane::start_with(Options {
        volguard_config: Some(
            // The shipped drivers (the harness checks the webhook with a brightbox
            // device), plus local PVs by kind.
            concat!(
                "markerResource: \"\"\ndrivers:\n",
                "  - {name: brightbox, csiDriver: csi.brightbox.com, resourceTemplate: \"volumes.brightbox.com/{volumeHandle}\", devicePathTemplate: \"/dev/disk/by-id/virtio-{volumeHandle}\"}\n",
                "  - {name: linode, csiDriver: linodebs.csi.linode.com, attachLimit: {default: 8}}\n",
                "  - {name: local, sourceKinds: [local]}\n",
            )
            .into(),
        ),
        ..Options::default()
    })
    .await;
    cp.namespace("shop").await;
    for node in ["node-1", "node-2", "node-3"] {
        cp.node(node, json!({}), json!({})).await;
    }
    cp.bound_local_claim(
        "shop",
        "cache",
        "local-pv-bb1049dc",
        "node-2",
        "/mnt/disks/1c7d8705-5b4e-4f6e-9a51-3c0f2d8e7a10",
    )
    .await;
    let stored = cp.pod("shop", pod("cache-0", &["cache"], None)).await;
    let app = &stored.spec.as_ref().unwrap().containers[0];
    let command = app
        .liveness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone());
    assert_eq!(
        command.unwrap_or_default(),
        ["/bin/sh", "-c", "ls '/cache' >/dev/null"]
    );
    assert_eq!(
        stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("volguard.io/volumes"))
            .map(String::as_str),
        Some("local=local-pv-bb1049dc")
    );
    assert_eq!(
        cp.bound_node("shop", "cache-0", BIND).await.as_deref(),
        Some("node-2"),
        "VolumeBinding enforces the PV's node affinity"
    );
}
