//! The scheduler extender driven over real TLS with ExtenderArgs JSON as kube-scheduler
//! sends it, in both modes (`NodeNames` with nodeCacheCapable, full `Nodes` without):
//! one test per rule of the extender table in docs/scheduling.md and per counting edge.

mod common;

use std::collections::BTreeMap;

use common::{TestServer, per_node, read_doc};
use hyper::StatusCode;
use serde_json::{Value, json};
use volguard::{
    cluster::{ClusterObject, Kind, SharedState},
    decide::resolve::resolve,
    model::podview::PodView,
};

const NODES: [&str; 4] = ["worker-1", "worker-2", "worker-3", "worker-4"];
const STALE_VA: &str = "csi-d47301085ab3df176c574ca5b674a40183b43f9701486e6cb12dcaaf63bcb2c4";

/// ExtenderArgs as a nodeCacheCapable scheduler sends them.
fn by_names(pod: &Value, names: &[&str]) -> String {
    json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string()
}

/// The Node objects of the example snapshot, as the scheduler embeds them.
fn example_nodes() -> Vec<Value> {
    read_doc("examples/cluster/nodes.yaml")["items"]
        .as_array()
        .expect("a List")
        .clone()
}

/// ExtenderArgs as a scheduler without nodeCacheCapable sends them.
fn by_nodes(pod: &Value, nodes: &[Value]) -> String {
    json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}).to_string()
}

/// A filter answer split into its parts, after checking the wire shape.
#[derive(Debug)]
struct Filtered {
    passing: Vec<String>,
    failed: BTreeMap<String, String>,
    unresolvable: BTreeMap<String, String>,
    raw: Value,
}

fn reasons(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_owned()))
        .collect()
}

/// Forgets the pods earlier `/filter` calls passed: each what-if that follows is judged
/// as a pod on its own, not as the next pod of a burst (tests/bursts.rs has those).
fn forget_in_flight(server: &TestServer) {
    *server.app.in_flight.lock().unwrap() = Default::default();
}

async fn filter(server: &TestServer, body: String) -> Filtered {
    let (status, bytes) = server.post("/filter", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let raw: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    let keys: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "Error",
            "FailedAndUnresolvableNodes",
            "FailedNodes",
            "NodeNames",
            "Nodes"
        ],
        "exactly the Go field names"
    );
    assert_eq!(raw["Error"], "", "{raw}");
    let passing = match (&raw["NodeNames"], &raw["Nodes"]) {
        (Value::Array(names), Value::Null) => names
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect(),
        (Value::Null, Value::Object(list)) => list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
            .collect(),
        other => panic!("exactly one of NodeNames and Nodes: {other:?}"),
    };
    let failed = reasons(&raw["FailedNodes"]);
    let unresolvable = reasons(&raw["FailedAndUnresolvableNodes"]);
    for reason in failed.values().chain(unresolvable.values()) {
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
    }
    Filtered {
        passing,
        failed,
        unresolvable,
        raw,
    }
}

/// Filters `pod` over the four example nodes by name.
async fn filter_names(server: &TestServer, pod: &Value) -> Filtered {
    let f = filter(server, by_names(pod, &NODES)).await;
    let mut all: Vec<&str> = f
        .passing
        .iter()
        .chain(f.failed.keys())
        .chain(f.unresolvable.keys())
        .map(String::as_str)
        .collect();
    all.sort_unstable();
    assert_eq!(
        all, NODES,
        "every node asked about is answered exactly once"
    );
    f
}

async fn prioritize(server: &TestServer, body: String) -> Vec<(String, u64)> {
    let (status, bytes) = server.post("/prioritize", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let list: Value = serde_json::from_slice(&bytes).expect("JSON answer");
    list.as_array()
        .expect("a HostPriorityList")
        .iter()
        .map(|e| {
            let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["Host", "Score"], "{e}");
            let score = e["Score"].as_u64().unwrap();
            assert!(score <= 10, "{e}");
            (e["Host"].as_str().unwrap().to_owned(), score)
        })
        .collect()
}

fn apply(server: &TestServer, object: Value) {
    let object = ClusterObject::from_value(object).expect("valid object");
    server.app.cluster.write().unwrap().apply(&object);
}

fn annotate_limit(server: &TestServer, node: &str, value: &str) {
    let mut n = example_nodes()
        .into_iter()
        .find(|n| n["metadata"]["name"] == node)
        .unwrap();
    n["metadata"]["annotations"]["volguard.io/attach-limit"] = value.into();
    apply(server, n);
}

fn pod(path: &str) -> Value {
    read_doc(path)
}

/// kube-scheduler's text for nodes at the linode attach limit.
fn at_limit(source: &str) -> String {
    format!("node(s) at the linode attach limit (limit from {source})")
}

const ANNOTATION: &str = "node annotation volguard.io/attach-limit";

const NOT_REGISTERED: &str = "node(s) without CSI driver linodebs.csi.linode.com registered (is its node plugin running, with the kubelet's --root-dir?)";
const WORKER_3_FULL: &str = "node(s) at the linode attach limit (limit from CSINode)";

#[tokio::test]
async fn node_names_fixture_passes_only_the_node_holding_the_rwo_volume() {
    let server = TestServer::example().await;
    let body = read_doc("tests/fixtures/extenderargs-nodenames.json").to_string();
    let f = filter(&server, body.clone()).await;
    assert_eq!(f.passing, ["worker-1"]);
    assert_eq!(f.raw["Nodes"], Value::Null);
    assert!(f.failed.is_empty(), "{:?}", f.failed);
    let in_use = "node(s) that cannot use ReadWriteOnce volume 310100-pvcdb0 (claim data-db-0): in use on worker-1 by pod shop/db-0";
    assert_eq!(f.unresolvable["worker-2"], in_use);
    assert_eq!(f.unresolvable["worker-3"], in_use);
    assert_eq!(f.unresolvable["worker-4"], NOT_REGISTERED);

    let scores = prioritize(&server, body).await;
    assert_eq!(
        scores,
        [
            ("worker-1".into(), 10),
            ("worker-2".into(), 0),
            ("worker-3".into(), 0),
            ("worker-4".into(), 0)
        ],
        "the node that already has the volume attached scores highest"
    );
}

#[tokio::test]
async fn nodes_fixture_echoes_the_passing_node_objects_unchanged() {
    let server = TestServer::example().await;
    let args = read_doc("tests/fixtures/extenderargs-nodes.json");
    let f = filter(&server, args.to_string()).await;
    assert_eq!(f.raw["NodeNames"], Value::Null);
    assert_eq!(f.passing, ["worker-1", "worker-2"]);
    let sent = args["Nodes"]["items"].as_array().unwrap();
    let back = f.raw["Nodes"]["items"].as_array().unwrap();
    assert_eq!(back[0], sent[0], "worker-1 echoed field for field");
    assert_eq!(back[1], sent[1], "worker-2 echoed field for field");
    assert_eq!(f.raw["Nodes"]["metadata"], json!({}));
    assert_eq!(f.unresolvable["worker-3"], WORKER_3_FULL);
    assert_eq!(f.unresolvable["worker-4"], NOT_REGISTERED);
    let db = &args["Pod"];
    assert_eq!(
        per_node(&server, db, "worker-3"),
        format!("{WORKER_3_FULL}: 8 of 8 used, pod needs 1 more")
    );
    assert_eq!(
        per_node(&server, db, "worker-4"),
        format!("{NOT_REGISTERED}: its CSINode has no entry for the driver")
    );

    let scores: BTreeMap<String, u64> = prioritize(&server, args.to_string())
        .await
        .into_iter()
        .collect();
    assert!(
        scores["worker-1"] > scores["worker-2"],
        "more free slots (16-limit node) first: {scores:?}"
    );
    assert!(scores["worker-2"] > 0, "{scores:?}");
    assert_eq!((scores["worker-3"], scores["worker-4"]), (0, 0));
}

/// Scores against the formula docs/scheduling.md documents, worked out by hand rather than
/// asked of volguard: `1 + 8 × free / limit`, with the slots free after placing the pod;
/// 0 for a failing node. linode-web needs one new linode volume; worker-1 holds one other
/// (1 used), so 2 are used once the pod is placed, and the node annotation sets the
/// limit. Limits are chosen where the formula gives whole numbers.
#[tokio::test]
async fn scores_follow_the_documented_formula() {
    let server = TestServer::example().await;
    let web = pod("examples/pods/linode-web.yaml");
    let table = [
        ("1", 0),  // 2 used of 1: fails
        ("2", 1),  // free 0: 1 + 8 × 0/2
        ("4", 5),  // free 2: 1 + 8 × 2/4
        ("8", 7),  // free 6: 1 + 8 × 6/8
        ("16", 8), // free 14: 1 + 8 × 14/16
    ];
    let mut worker1 = read_doc("examples/cluster/nodes.yaml")["items"][0].clone();
    assert_eq!(worker1["metadata"]["name"], "worker-1");
    for (limit, want) in table {
        worker1["metadata"]["annotations"]["volguard.io/attach-limit"] = limit.into();
        server
            .app
            .cluster
            .write()
            .unwrap()
            .apply(&volguard::cluster::ClusterObject::from_value(worker1.clone()).unwrap());
        let scores = prioritize(&server, by_names(&web, &["worker-1"])).await;
        assert_eq!(scores, [("worker-1".to_owned(), want)], "limit {limit}");
    }
}

#[tokio::test]
async fn example_pods_get_the_outcome_their_comments_state_in_both_modes() {
    let server = TestServer::example().await;
    let cases: [(&str, &[&str]); 8] = [
        ("db-replica", &["worker-1"]),
        ("existing-probe", &["worker-1", "worker-2"]),
        ("flex-inline", &["worker-1"]),
        ("linode-web", &["worker-1", "worker-2"]),
        ("no-volumes", &NODES),
        ("opt-out", &["worker-1", "worker-2"]),
        ("seed-000-device", &["worker-2"]),
        ("wffc-scratch", &["worker-1", "worker-2"]),
    ];
    let nodes = example_nodes();
    for (name, want) in cases {
        let p = pod(&format!("examples/pods/{name}.yaml"));
        forget_in_flight(&server);
        let f = filter_names(&server, &p).await;
        assert_eq!(f.passing, want, "{name} by NodeNames: {:?}", f.raw);
        forget_in_flight(&server);
        let f = filter(&server, by_nodes(&p, &nodes)).await;
        assert_eq!(f.passing, want, "{name} by Nodes: {:?}", f.raw);
    }
}

#[tokio::test]
async fn rule_1_device_advertised_with_capacity_0_is_detached() {
    let server = TestServer::example().await;
    let f = filter_names(&server, &pod("examples/pods/seed-000-device.yaml")).await;
    assert_eq!(
        f.unresolvable["worker-1"],
        "node(s) without volume vol-qsk4v attached (it is attached to worker-2)"
    );
    let mut nowhere = pod("examples/pods/seed-000-device.yaml");
    nowhere["metadata"]["annotations"]["volguard.io/devices"] = "brightbox=vol-gone1".into();
    let f = filter_names(&server, &nowhere).await;
    assert!(f.passing.is_empty());
    assert_eq!(
        f.unresolvable["worker-2"],
        "node(s) without volume vol-gone1 attached (it is attached to no node)"
    );
    let scores = prioritize(
        &server,
        by_names(&pod("examples/pods/seed-000-device.yaml"), &NODES),
    )
    .await;
    assert_eq!(
        scores[1],
        ("worker-2".into(), 10),
        "the holder scores highest"
    );
}

#[tokio::test]
async fn rule_2_unregistered_driver_with_and_without_a_csinode_object() {
    let server = TestServer::example().await;
    server
        .app
        .cluster
        .write()
        .unwrap()
        .delete(Kind::CsiNode, "worker-2");
    let f = filter_names(&server, &pod("examples/pods/linode-web.yaml")).await;
    assert_eq!(f.passing, ["worker-1"]);
    assert_eq!(f.unresolvable["worker-4"], NOT_REGISTERED);
    assert_eq!(f.unresolvable["worker-2"], NOT_REGISTERED, "the same text");
    let web = pod("examples/pods/linode-web.yaml");
    assert_eq!(
        per_node(&server, &web, "worker-2"),
        format!("{NOT_REGISTERED}: the node has no CSINode object")
    );
    assert_eq!(
        per_node(&server, &web, "worker-4"),
        format!("{NOT_REGISTERED}: its CSINode has no entry for the driver")
    );

    let mut config = common::example_config();
    config.scheduling.require_registered_driver = false;
    let state = common::example_state(&config);
    let server = TestServer::start(config, state).await;
    let f = filter_names(&server, &pod("examples/pods/linode-web.yaml")).await;
    assert_eq!(
        f.passing,
        ["worker-1", "worker-2", "worker-4"],
        "requireRegisteredDriver: false"
    );
}

#[tokio::test]
async fn rule_3_exclusive_volume_in_use_elsewhere_only_while_its_pod_runs() {
    let mut config = common::example_config();
    config.scheduling.exclusive_read_write_once = false;
    let state = common::example_state(&config);
    let off = TestServer::start(config, state).await;
    let f = filter_names(&off, &pod("examples/pods/db-replica.yaml")).await;
    assert_eq!(
        f.passing,
        ["worker-1", "worker-2"],
        "exclusiveReadWriteOnce: false"
    );
    assert_eq!(f.unresolvable["worker-3"], WORKER_3_FULL);

    let server = TestServer::example().await;
    let mut db0 = read_doc("examples/cluster/pods.yaml")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "db-0")
        .unwrap()
        .clone();
    db0["status"]["phase"] = "Succeeded".into();
    apply(&server, db0);
    let f = filter_names(&server, &pod("examples/pods/db-replica.yaml")).await;
    assert_eq!(
        f.passing,
        ["worker-1", "worker-2"],
        "a terminated user holds nothing: {:?}",
        f.raw
    );
}

#[tokio::test]
async fn rule_4_limit_precedence_annotation_over_csinode_over_default() {
    let server = TestServer::example().await;
    let web = pod("examples/pods/linode-web.yaml");
    annotate_limit(&server, "worker-3", "9");
    let f = filter_names(&server, &web).await;
    assert!(
        f.passing.contains(&"worker-3".to_owned()),
        "9 > 8 used: {:?}",
        f.raw
    );
    annotate_limit(&server, "worker-3", "8");
    let f = filter_names(&server, &web).await;
    assert_eq!(f.unresolvable["worker-3"], at_limit(ANNOTATION));
    assert_eq!(
        per_node(&server, &web, "worker-3"),
        format!("{}: 8 of 8 used, pod needs 1 more", at_limit(ANNOTATION))
    );
    annotate_limit(&server, "worker-3", "lots");
    let f = filter_names(&server, &web).await;
    assert_eq!(f.unresolvable["worker-3"], at_limit("CSINode"));
    assert_eq!(
        per_node(&server, &web, "worker-3"),
        format!(
            "{}: 8 of 8 used, pod needs 1 more; {ANNOTATION}=\"lots\" is not a non-negative integer, ignored",
            at_limit("CSINode")
        )
    );

    let mut config = common::example_config();
    config.drivers[1]
        .attach_limit
        .as_mut()
        .unwrap()
        .from_csi_node = false;
    config.drivers[1].attach_limit.as_mut().unwrap().default = Some(4);
    let state = common::example_state(&config);
    let server = TestServer::start(config, state).await;
    let f = filter_names(&server, &web).await;
    assert_eq!(f.passing, ["worker-1", "worker-2"]);
    assert_eq!(f.unresolvable["worker-3"], at_limit("config default"));
    assert_eq!(
        per_node(&server, &web, "worker-3"),
        format!(
            "{}: 8 of 4 used, pod needs 1 more",
            at_limit("config default")
        )
    );
}

#[tokio::test]
async fn a_node_over_its_limit_still_takes_a_pod_whose_volumes_it_holds() {
    let server = TestServer::example().await;
    annotate_limit(&server, "worker-1", "0");
    let body = by_names(&pod("examples/pods/db-replica.yaml"), &NODES);
    let f = filter(&server, body.clone()).await;
    assert_eq!(
        f.passing,
        ["worker-1"],
        "nothing new to attach: {:?}",
        f.raw
    );
    let scores = prioritize(&server, body).await;
    assert_eq!(scores[0], ("worker-1".into(), 10));
    let web = pod("examples/pods/linode-web.yaml");
    let f = filter_names(&server, &web).await;
    assert_eq!(f.unresolvable["worker-1"], at_limit(ANNOTATION));
    assert_eq!(
        per_node(&server, &web, "worker-1"),
        format!("{}: 1 of 0 used, pod needs 1 more", at_limit(ANNOTATION))
    );
}

/// A bound linode volume `handle` with claim `shop/<claim>`.
fn volume(claim: &str, handle: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
               "metadata": {"name": format!("pv-{claim}")},
               "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                        "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": handle},
                        "claimRef": {"namespace": "shop", "name": claim}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": claim, "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": format!("pv-{claim}"),
                        "resources": {"requests": {"storage": "10Gi"}}}}),
    ]
}

/// A pod bound to `node` in `phase` using claims `shop/<claims>`.
fn bound_pod(name: &str, node: &str, phase: &str, claims: &[&str]) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                    "volumes": volumes},
           "status": {"phase": phase}})
}

#[tokio::test]
async fn a_volume_shared_by_two_pods_on_a_node_counts_once() {
    let server = TestServer::example().await;
    let [pv, pvc] = volume("shared", "320001-shared");
    apply(&server, pv);
    apply(&server, pvc);
    annotate_limit(&server, "worker-2", "3");
    for name in ["reader-a", "reader-b"] {
        apply(&server, bound_pod(name, "worker-2", "Running", &["shared"]));
    }
    // worker-2: the stale attachment + the shared volume = 2 of 3; the pod adds 1.
    let f = filter_names(&server, &pod("examples/pods/linode-web.yaml")).await;
    assert!(f.passing.contains(&"worker-2".to_owned()), "{:?}", f.raw);
    annotate_limit(&server, "worker-2", "2");
    let web = pod("examples/pods/linode-web.yaml");
    let f = filter_names(&server, &web).await;
    assert_eq!(f.unresolvable["worker-2"], at_limit(ANNOTATION));
    assert_eq!(
        per_node(&server, &web, "worker-2"),
        format!("{}: 2 of 2 used, pod needs 1 more", at_limit(ANNOTATION))
    );
}

/// A pod bound to worker-1 whose claim is still unbound, a static PV's claimRef naming
/// it (a StatefulSet's pod placed before the PV binder bound its claim): the claim is
/// that PV's volume for the count of what bound pods use as for the pod under review,
/// so another pod of the claim is held to worker-1, which holds the volume already.
#[tokio::test]
async fn a_bound_pod_s_reserved_claim_is_counted_as_the_pod_under_review_sees_it() {
    let server = TestServer::example().await;
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-static-0", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                        "resources": {"requests": {"storage": "10Gi"}}}}),
    );
    let holder = bound_pod("static-0", "worker-1", "Running", &["data-static-0"]);
    apply(&server, holder.clone());
    // The PV arrives last: the pod already cached is counted anew.
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
               "metadata": {"name": "pv-static-0"},
               "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                        "storageClassName": "",
                        "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": "52000-static"},
                        "claimRef": {"namespace": "shop", "name": "data-static-0"}},
               "status": {"phase": "Available"}}),
    );
    let counted = |server: &TestServer| -> Vec<String> {
        let state = server.app.cluster.read().unwrap();
        state
            .pod_volumes("shop", "static-0")
            .iter()
            .map(|v| format!("{}={}", state.drivers().get(v.driver).name, v.handle))
            .collect()
    };
    {
        let state = server.app.cluster.read().unwrap();
        let view: PodView = serde_json::from_value(holder).unwrap();
        let resolved = resolve(&view, "shop", &state, &server.app.config).unwrap();
        let labels: Vec<String> = resolved
            .volumes
            .iter()
            .map(|m| m.label(state.drivers()))
            .collect();
        assert_eq!(labels, ["linode=52000-static"]);
    }
    assert_eq!(
        counted(&server),
        ["linode=52000-static"],
        "the cache counts what resolve sees"
    );
    let reader = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reader", "namespace": "shop"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-static-0"}}]}});
    let f = filter_names(&server, &reader).await;
    assert_eq!(f.passing, ["worker-1"], "{:?}", f.raw);
    let in_use = "node(s) that cannot use ReadWriteOnce volume 52000-static (claim data-static-0): in use on worker-1 by pod shop/static-0";
    assert_eq!(f.unresolvable["worker-2"], in_use);
    assert_eq!(f.unresolvable["worker-3"], in_use);
    assert_eq!(f.unresolvable["worker-4"], NOT_REGISTERED);
    forget_in_flight(&server);
    let scores = prioritize(&server, by_names(&reader, &NODES)).await;
    assert_eq!(
        scores[0],
        ("worker-1".into(), 10),
        "worker-1 holds it already"
    );

    server
        .app
        .cluster
        .write()
        .unwrap()
        .delete(Kind::PersistentVolume, "pv-static-0");
    assert!(counted(&server).is_empty(), "no PV, no volume");
}

#[tokio::test]
async fn terminated_pods_do_not_count() {
    let server = TestServer::example().await;
    let [pv, pvc] = volume("finished", "320002-finished");
    apply(&server, pv);
    apply(&server, pvc);
    annotate_limit(&server, "worker-2", "2");
    let web = pod("examples/pods/linode-web.yaml");
    apply(
        &server,
        bound_pod("batch-done", "worker-2", "Succeeded", &["finished"]),
    );
    let f = filter_names(&server, &web).await;
    assert!(f.passing.contains(&"worker-2".to_owned()), "{:?}", f.raw);
    apply(
        &server,
        bound_pod("batch-done", "worker-2", "Running", &["finished"]),
    );
    let f = filter_names(&server, &web).await;
    assert_eq!(
        f.unresolvable["worker-2"],
        at_limit(ANNOTATION),
        "{:?}",
        f.raw
    );
    assert_eq!(
        per_node(&server, &web, "worker-2"),
        format!("{}: 2 of 2 used, pod needs 1 more", at_limit(ANNOTATION))
    );
}

#[tokio::test]
async fn a_volume_attachment_whose_pod_is_gone_still_counts() {
    let server = TestServer::example().await;
    // Only the VolumeAttachment names 310900-pvcold on worker-2 once the node status
    // forgets it.
    let mut worker2 = example_nodes()[1].clone();
    worker2["status"]["volumesAttached"] = json!([]);
    worker2["status"]["volumesInUse"] = json!([]);
    worker2["metadata"]["annotations"]["volguard.io/attach-limit"] = "1".into();
    apply(&server, worker2);
    let web = pod("examples/pods/linode-web.yaml");
    let f = filter_names(&server, &web).await;
    assert_eq!(f.unresolvable["worker-2"], at_limit(ANNOTATION));
    assert_eq!(
        per_node(&server, &web, "worker-2"),
        format!("{}: 1 of 1 used, pod needs 1 more", at_limit(ANNOTATION))
    );
    server
        .app
        .cluster
        .write()
        .unwrap()
        .delete(Kind::VolumeAttachment, STALE_VA);
    let f = filter_names(&server, &web).await;
    assert!(f.passing.contains(&"worker-2".to_owned()), "{:?}", f.raw);
}

#[tokio::test]
async fn an_unbound_wait_for_first_consumer_claim_is_one_new_attachment() {
    let server = TestServer::example().await;
    let scratch = pod("examples/pods/wffc-scratch.yaml");
    annotate_limit(&server, "worker-2", "2");
    let f = filter_names(&server, &scratch).await;
    assert!(
        f.passing.contains(&"worker-2".to_owned()),
        "1 used + 1 new = 2: {:?}",
        f.raw
    );
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "scratch-2", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "linode-block-storage",
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    let mut two = scratch.clone();
    two["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "scratch-2", "persistentVolumeClaim": {"claimName": "scratch-2"}}));
    let f = filter_names(&server, &two).await;
    assert_eq!(f.unresolvable["worker-2"], at_limit(ANNOTATION));
    assert_eq!(
        per_node(&server, &two, "worker-2"),
        format!("{}: 1 of 2 used, pod needs 2 more", at_limit(ANNOTATION))
    );
}

#[tokio::test]
async fn a_missing_claim_answers_error_so_the_scheduler_retries() {
    // kube-scheduler's VolumeBinding turns away pods whose claim does not exist, so a
    // claim the extender cannot find is volguard's cache lagging behind: no verdict.
    let server = TestServer::example().await;
    let mut p = pod("examples/pods/linode-web.yaml");
    p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "no-such-claim".into();
    let (status, body) = server.post("/filter", by_names(&p, &NODES)).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["Error"],
        "PersistentVolumeClaim shop/no-such-claim not found in volguard's cluster state \
         (a cache that lags behind the API): retry later"
    );
    assert_eq!(answer["NodeNames"], Value::Null);
    assert_eq!(answer["FailedNodes"], json!({}));
    assert_eq!(answer["FailedAndUnresolvableNodes"], json!({}));
    assert_eq!(
        per_node(&server, &p, "worker-1"),
        "node(s) not judged: PersistentVolumeClaim shop/no-such-claim not found, so volguard \
         cannot tell which volumes the pod needs",
        "explain still says why over a snapshot"
    );
}

#[tokio::test]
async fn an_unknown_node_fails_with_a_reason_and_no_other_name_is_returned() {
    let server = TestServer::example().await;
    let f = filter(
        &server,
        by_names(
            &pod("examples/pods/linode-web.yaml"),
            &["worker-9", "worker-2"],
        ),
    )
    .await;
    assert_eq!(f.passing, ["worker-2"]);
    assert_eq!(
        f.failed["worker-9"],
        "node(s) not in volguard's cluster state (yet)"
    );
    assert_eq!(f.failed.len() + f.unresolvable.len(), 1);
    let scores = prioritize(
        &server,
        by_names(
            &pod("examples/pods/linode-web.yaml"),
            &["worker-9", "worker-2"],
        ),
    )
    .await;
    assert_eq!(scores.len(), 2);
    assert_eq!(scores[0], ("worker-9".into(), 0));
}

#[tokio::test]
async fn an_unsynced_state_answers_with_error_but_pods_without_volumes_pass() {
    let config = common::example_config();
    let state = common::empty_state(&config);
    let server = TestServer::start(config, state).await;
    let body = by_names(&pod("examples/pods/linode-web.yaml"), &NODES);
    let (status, bytes) = server.post("/filter", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        answer["Error"].as_str().unwrap().contains("not synced yet"),
        "{answer}"
    );
    assert_eq!(answer["NodeNames"], Value::Null, "no verdict: {answer}");
    assert_eq!(answer["FailedNodes"], json!({}));
    assert_eq!(answer["FailedAndUnresolvableNodes"], json!({}));
    let (status, bytes) = server.post("/prioritize", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&bytes).contains("not synced yet"));

    let plain = pod("examples/pods/no-volumes.yaml");
    let f = filter_names(&server, &plain).await;
    assert_eq!(f.passing, NODES);
    let scores = prioritize(&server, by_names(&plain, &NODES)).await;
    let expected: Vec<(String, u64)> = NODES.iter().map(|n| ((*n).to_owned(), 0)).collect();
    assert_eq!(scores, expected, "no managed volume: every node scores 0");
}

#[tokio::test]
async fn filtered_out_nodes_are_counted_by_kind_of_reason() {
    let server = TestServer::example().await;
    let body = by_names(&pod("examples/pods/linode-web.yaml"), &NODES);
    filter(&server, body.clone()).await;
    prioritize(&server, body).await;
    filter_names(&server, &pod("examples/pods/db-replica.yaml")).await;
    let (status, _, text) = server.get_plain("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let scraped = common::openmetrics::parse(&text).expect("OpenMetrics");
    let count = |reason: &str| scraped.count("volguard_nodes_failed_total", &[("reason", reason)]);
    assert_eq!(count("attach_limit"), 1.0, "prioritize counts nothing");
    assert_eq!(count("driver_not_registered"), 2.0);
    assert_eq!(count("volume_in_use"), 2.0);
    assert_eq!(count("device_missing"), 0.0);
}

#[tokio::test]
async fn bad_input_gets_one_line_400_or_413_and_the_server_keeps_serving() {
    let server = TestServer::example().await;
    let web = pod("examples/pods/linode-web.yaml");
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "empty body"),
        (
            "malformed",
            b"{\"Pod\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "not ExtenderArgs",
        ),
        (
            "camelCase keys",
            json!({"pod": web, "nodeNames": ["worker-1"]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "no Pod",
        ),
        (
            "no candidates",
            json!({"Pod": web}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "neither NodeNames nor Nodes",
        ),
        (
            "nameless node",
            by_nodes(&web, &[json!({"metadata": {}})]).into_bytes(),
            StatusCode::BAD_REQUEST,
            "Nodes.items[0] has no metadata.name",
        ),
        (
            "over 128 MiB",
            vec![b' '; (128 << 20) + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for path in ["/filter", "/prioritize"] {
        for (name, body, want, says) in &cases {
            let (status, body) = server.post(path, body.clone()).await;
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, *want, "{path} {name}: {text}");
            assert!(text.contains(says), "{path} {name}: {text}");
            assert!(
                text.trim_end().lines().count() <= 1,
                "{path} {name}: {text:?}"
            );
        }
    }
    let f = filter_names(&server, &web).await;
    assert_eq!(f.passing, ["worker-1", "worker-2"], "still serving");
}

// ---- drivers selected by StorageClass or source kind (local PVs) ----

const VIRT: [&str; 2] = ["virt-1", "virt-2"];

/// A server over the local-PV example snapshot with `config` (YAML).
async fn local_server(config: &str) -> TestServer {
    let config = volguard::model::config::Config::parse(config).expect("a valid config");
    let snap = volguard::sources::snapshot::load(&common::repo("examples/local-cluster"))
        .expect("examples/local-cluster loads");
    let state = volguard::sources::snapshot::into_state(&snap, common::empty_state(&config));
    TestServer::start(config, state).await
}

/// A pod in `shop` (not bound) using `claims`.
fn claims_pod(name: &str, claims: &[&str]) -> Value {
    let mut p = bound_pod(name, "", "Pending", claims);
    p["spec"].as_object_mut().unwrap().remove("nodeName");
    p
}

#[tokio::test]
async fn a_local_rwo_volume_in_use_fails_other_nodes() {
    let server =
        local_server("drivers:\n  - {name: local, storageClasses: [local-storage]}\n").await;
    let pod = claims_pod("cache-0", &["cache-data"]);
    let f = filter(&server, by_names(&pod, &VIRT)).await;
    assert_eq!(
        f.passing, VIRT,
        "no limit by default, affinity is not ours: {:?}",
        f.raw
    );
    apply(
        &server,
        bound_pod("cache-old", "virt-1", "Running", &["cache-data"]),
    );
    let f = filter(&server, by_names(&pod, &VIRT)).await;
    assert_eq!(f.passing, ["virt-1"]);
    assert_eq!(
        f.unresolvable["virt-2"],
        "node(s) that cannot use ReadWriteOnce volume local-pv-bb1049dc (claim cache-data): in use on virt-1 by pod shop/cache-old"
    );
    assert!(f.failed.is_empty(), "{:?}", f.raw);
}

#[tokio::test]
async fn a_local_attach_limit_applies_only_when_configured_counting_bound_pods() {
    // virt-1 holds local-pv-3f7e9a21 through db-0; local-pv-bb1049dc is bound to
    // cache-data but no pod uses it, so it is not counted.
    let pod = claims_pod("cache-0", &["cache-data"]);
    let unlimited =
        local_server("drivers:\n  - {name: local, storageClasses: [local-storage]}\n").await;
    let f = filter(&unlimited, by_names(&pod, &VIRT)).await;
    assert_eq!(f.passing, VIRT, "{:?}", f.raw);
    let server = local_server(
        "drivers:\n  - {name: local, storageClasses: [local-storage], attachLimit: {default: 1}}\n",
    )
    .await;
    let f = filter(&server, by_names(&pod, &VIRT)).await;
    assert_eq!(f.passing, ["virt-2"]);
    assert_eq!(
        f.unresolvable["virt-1"],
        "node(s) at the local attach limit (limit from config default)"
    );
    assert_eq!(
        per_node(&server, &pod, "virt-1"),
        "node(s) at the local attach limit (limit from config default): 1 of 1 used, pod needs 1 more"
    );
    // A pod using the volume db-0 holds already needs no new slot on virt-1, even at
    // the limit (and the volume is ReadWriteOnce, so virt-2 cannot have it).
    let replica = claims_pod("db-0-replica", &["data-db-0"]);
    let f = filter(&server, by_names(&replica, &VIRT)).await;
    assert_eq!(f.passing, ["virt-1"], "{:?}", f.raw);
    // An unbound WaitForFirstConsumer claim of the class is one new attachment.
    let scratch = claims_pod("scratch-0", &["scratch-local"]);
    forget_in_flight(&server);
    let f = filter(&server, by_names(&scratch, &VIRT)).await;
    assert_eq!(f.passing, ["virt-2"]);
    assert_eq!(
        per_node(&server, &scratch, "virt-1"),
        "node(s) at the local attach limit (limit from config default): 1 of 1 used, pod needs 1 more"
    );
    let scores = prioritize(&server, by_names(&replica, &VIRT)).await;
    assert_eq!(
        scores,
        [("virt-1".to_owned(), 10), ("virt-2".to_owned(), 0)],
        "virt-1 holds the volume; virt-2 fails"
    );
}

/// The pods of the benchmarks and the load test get the verdicts their table rows
/// claim, on a small synthetic cluster shaped like the large one (10 volumes attached
/// per node, CSINode limit 16).
#[test]
fn bench_pods_are_judged_as_the_performance_table_says() {
    use std::sync::Arc;
    use volguard::{
        model::config::Config,
        server::{app::App, extender::endpoints},
        sources::synthetic::{self, Size},
    };
    let size = Size {
        nodes: 3,
        pods: 30,
        volumes: 30,
    };
    let config = Arc::new(Config::default());
    let state = synthetic::state(size, &config).expect("synthetic cluster");
    let app = App::new(config, SharedState::new(state));
    let names: Vec<String> = (0..size.nodes).map(synthetic::node_name).collect();
    let answer = |pod: &Value| -> Value {
        let body = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
        serde_json::from_slice(
            &endpoints::filter(body.as_bytes(), &app, &Default::default()).expect("answered"),
        )
        .expect("JSON")
    };
    let pods = synthetic::bench_pods();
    let names_of =
        |v: &Value| -> Vec<String> { serde_json::from_value(v.clone()).expect("a list of names") };
    let by_name = |name: &str| &pods.iter().find(|p| p.name == name).expect(name).pod;

    let fresh = answer(by_name("fresh"));
    assert_eq!(names_of(&fresh["NodeNames"]), names);

    let in_use = answer(by_name("in-use"));
    assert_eq!(names_of(&in_use["NodeNames"]), ["node-00000"]);
    let held = "node(s) that cannot use ReadWriteOnce volume 000000-vol (claim claim-000000): \
                in use on node-00000 by pod ns-0/pod-000000";
    assert_eq!(
        reasons(&in_use["FailedAndUnresolvableNodes"]),
        BTreeMap::from([
            ("node-00001".to_owned(), held.to_owned()),
            ("node-00002".to_owned(), held.to_owned()),
        ])
    );

    let unbound = answer(by_name("unbound"));
    assert_eq!(names_of(&unbound["NodeNames"]), names);

    let full = answer(by_name("full"));
    assert_eq!(names_of(&full["NodeNames"]), Vec::<String>::new());
    let at_limit = "node(s) at the linode attach limit (limit from CSINode)";
    assert_eq!(
        reasons(&full["FailedAndUnresolvableNodes"]),
        names
            .iter()
            .map(|n| (n.clone(), at_limit.to_owned()))
            .collect::<BTreeMap<_, _>>()
    );
}
