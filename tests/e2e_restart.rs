//! kube-apiserver stopped and started again while volguard runs (see
//! `tests/control_plane/`); etcd keeps its data. volguard must say its state is stale
//! instead of judging from it, and after the restart see what changed meanwhile.

mod common;
mod control_plane;

use std::time::Duration;

use control_plane::{ControlPlane, Options, wait_for};
use k8s_openapi::api::{core::v1::Node, storage::v1::CSINode};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const LINODE: &str = "linodebs.csi.linode.com";
/// What `--stale-after 3s` gives a failing watch before the state counts as stale.
const STALE_AFTER: &str = "3s";
/// Every kind volguard watches, in the order its readiness message lists them.
const KINDS: [&str; 7] = [
    "Node",
    "CSINode",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "VolumeAttachment",
    "StorageClass",
];

/// A pod of `shop` mounting the linode claim `data`.
fn web_pod() -> Value {
    json!({
        "metadata": {"name": "web-0"},
        "spec": {
            "schedulerName": "volguard-scheduler",
            "containers": [{"name": "web", "image": "nginx",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    })
}

/// `/filter` in NodeNames mode, as kube-scheduler sends it with `nodeCacheCapable`.
async fn filter(cp: &ControlPlane, pod: &Value, nodes: &[&str]) -> Value {
    let args = json!({"Pod": pod, "Nodes": null, "NodeNames": nodes});
    let (status, body) = cp.volguard_post("/filter", &args).await;
    assert_eq!(status, 200, "/filter: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/filter body {body:?}: {e}"))
}

/// Waits until `/filter` gives `expected` (the watches may lag a moment); fails with the
/// last answer.
async fn until_filter_is(cp: &ControlPlane, pod: &Value, nodes: &[&str], expected: Value) {
    let got = wait_for(Duration::from_secs(60), || async {
        let answer = filter(cp, pod, nodes).await;
        (answer == expected).then_some(())
    })
    .await;
    if got.is_none() {
        assert_eq!(filter(cp, pod, nodes).await, expected);
    }
}

/// The kinds named by a stale-state message, each checked to be one
/// `<Kind> watch failing for <N>s (<error>)`.
fn stale_kinds(problem: &str) -> Vec<String> {
    problem
        .split("; ")
        .map(|part| {
            let (kind, rest) = part
                .split_once(" watch failing for ")
                .unwrap_or_else(|| panic!("not `<Kind> watch failing for ...`: {part:?}"));
            let (secs, error) = rest
                .split_once("s (")
                .unwrap_or_else(|| panic!("no `<N>s (<error>)` in {part:?}"));
            let secs: u64 = secs
                .parse()
                .unwrap_or_else(|_| panic!("not a number of seconds: {part:?}"));
            assert!(
                secs >= 3,
                "stale before --stale-after {STALE_AFTER}: {part:?}"
            );
            assert!(
                error.ends_with(')') && error.len() > 1,
                "no error in {part:?}"
            );
            kind.to_owned()
        })
        .collect()
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs the real control plane (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn stale_while_the_api_server_is_down_then_caught_up_after_its_restart() {
    let mut cp = ControlPlane::start_with(Options {
        scheduler: false,
        volguard_flags: vec!["--stale-after".into(), STALE_AFTER.into()],
        ..Options::default()
    })
    .await;

    // worker-1 allows one linode attachment (node annotation) and holds one already;
    // worker-2 has room. worker-3 comes during the outage.
    cp.namespace("shop").await;
    cp.node(
        "worker-1",
        json!({"volguard.io/attach-limit": "1"}),
        json!({}),
    )
    .await;
    cp.csinode("worker-1", LINODE, Some(16)).await;
    cp.node("worker-2", json!({}), json!({})).await;
    cp.csinode("worker-2", LINODE, Some(16)).await;
    cp.bound_claim(
        "shop",
        "other",
        "pv-other",
        LINODE,
        "310100-other",
        "ReadWriteOnce",
    )
    .await;
    cp.attachment("att-other", LINODE, "worker-1", "pv-other")
        .await;
    cp.bound_claim(
        "shop",
        "data",
        "pv-data",
        LINODE,
        "310100-data",
        "ReadWriteOnce",
    )
    .await;
    // Created through the API, so the pod is the one the webhook patched.
    let pod = serde_json::to_value(cp.pod("shop", web_pod()).await).unwrap();
    let nodes = ["worker-1", "worker-2", "worker-3"];
    until_filter_is(
        &cp,
        &pod,
        &nodes,
        json!({
            "Nodes": null,
            "NodeNames": ["worker-2"],
            "FailedNodes": {
                "worker-3": "node(s) not in volguard's cluster state (yet)",
            },
            "FailedAndUnresolvableNodes": {
                "worker-1": "node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit)",
            },
            "Error": "",
        }),
    )
    .await;
    assert_eq!(cp.volguard_readyz().await, (200, "ok".to_owned()));

    // The API server goes away: within the grace period volguard rides it out, then
    // every watch counts as stale.
    cp.stop_apiserver();
    let stale = wait_for(Duration::from_secs(60), || async {
        let (status, body) = cp.volguard_readyz().await;
        let problem = body
            .strip_prefix("cluster state is stale: ")?
            .strip_suffix('\n')?;
        (status == 503 && stale_kinds(problem).len() == KINDS.len()).then(|| problem.to_owned())
    })
    .await;
    let Some(stale) = stale else {
        panic!(
            "/readyz never named every watch stale; last answer {:?}",
            cp.volguard_readyz().await
        );
    };
    assert_eq!(stale_kinds(&stale), KINDS, "{stale}");

    // No verdict from a stale state: the scheduler gets Error and retries.
    let answer = filter(&cp, &pod, &nodes).await;
    let error = answer["Error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.starts_with("volguard's cluster state is stale: ")
            && error.ends_with(": retry later"),
        "{answer}"
    );
    assert_eq!(
        stale_kinds(
            error
                .strip_prefix("volguard's cluster state is stale: ")
                .and_then(|e| e.strip_suffix(": retry later"))
                .unwrap()
        ),
        KINDS,
        "{error}"
    );
    assert_eq!(
        answer,
        json!({
            "Nodes": null,
            "NodeNames": null,
            "FailedNodes": {},
            "FailedAndUnresolvableNodes": {},
            "Error": error,
        })
    );

    // Meanwhile the cluster changes through another API server on the same etcd, which
    // volguard does not talk to: worker-1's limit is raised, worker-3 joins.
    let (mut second, admin) = cp.second_apiserver().await;
    let node_api: Api<Node> = Api::all(admin.clone());
    node_api
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"volguard.io/attach-limit": "4"}}})),
        )
        .await
        .expect("raise worker-1's attach limit through the second API server");
    let worker3: Node = serde_json::from_value(json!({
        "metadata": {"name": "worker-3", "labels": {"kubernetes.io/hostname": "worker-3"}},
    }))
    .unwrap();
    node_api
        .create(&PostParams::default(), &worker3)
        .await
        .expect("create worker-3 through the second API server");
    let csinode: CSINode = serde_json::from_value(json!({
        "metadata": {"name": "worker-3"},
        "spec": {"drivers": [{"name": LINODE, "nodeID": "worker-3", "allocatable": {"count": 16}}]},
    }))
    .unwrap();
    Api::<CSINode>::all(admin)
        .create(&PostParams::default(), &csinode)
        .await
        .expect("create worker-3's CSINode through the second API server");
    second.stop(Duration::from_secs(20));
    assert_eq!(
        cp.volguard_readyz().await.0,
        503,
        "volguard does not watch the second API server"
    );

    // The first API server comes back on its port: the watches resume, the state is
    // ready again and the outage's changes are in the verdicts.
    cp.restart_apiserver().await;
    let back = std::time::Instant::now();
    let ready = wait_for(Duration::from_secs(60), || async {
        (cp.volguard_readyz().await == (200, "ok".to_owned())).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/readyz after the restart: {:?}",
        cp.volguard_readyz().await
    );
    // A measurement, not a condition: the watches' retry backoff after the outage.
    println!(
        "volguard ready {:.1}s after the API server was",
        back.elapsed().as_secs_f64()
    );
    until_filter_is(
        &cp,
        &pod,
        &nodes,
        json!({
            "Nodes": null,
            "NodeNames": ["worker-1", "worker-2", "worker-3"],
            "FailedNodes": {},
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        }),
    )
    .await;
}
