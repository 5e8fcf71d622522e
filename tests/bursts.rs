//! Bursts (docs/scheduling.md, "Bursts: placements in flight"): pods judged one after the other
//! while the bindings of the pods before them have not reached the cluster state yet,
//! as kube-scheduler does it. The scheduler is played here step by step: `/filter`,
//! `/prioritize`, its choice among the passing nodes, and the binding shown to the
//! state (or not, or late, from another thread).

mod common;

use std::{collections::BTreeMap, sync::Arc, thread, time::Duration};

use common::{empty_state, example_config, openmetrics};
use serde_json::{Value, json};
use volguard::{
    cluster::{ClusterObject, Kind, SharedState},
    server::{
        app::App,
        extender::endpoints::{Abandoned, filter, prioritize},
    },
};

const LIMIT: &str =
    "node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit)";

fn object(v: Value) -> ClusterObject {
    ClusterObject::from_value(v).expect("a valid object")
}

fn node(name: &str, limit: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"volguard.io/attach-limit": limit.to_string()}},
        "status": {"allocatable": {"cpu": "4"}}})
}

fn csinode(name: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": name},
        "spec": {"drivers": [{"name": "linodebs.csi.linode.com", "nodeID": name,
            "allocatable": {"count": 8}}]}})
}

/// A bound linode PV/PVC pair named `claim`.
fn volume(claim: &str, mode: &str) -> [Value; 2] {
    let pv = format!("pv-{claim}");
    [
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"accessModes": [mode], "capacity": {"storage": "10Gi"},
                "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": format!("1000-{claim}")},
                "claimRef": {"namespace": "shop", "name": claim}},
            "status": {"phase": "Bound"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": "shop"},
            "spec": {"accessModes": [mode], "volumeName": pv},
            "status": {"phase": "Bound"}}),
    ]
}

/// A pod of the burst using `claims`, bound to `node` when given.
fn pod(name: &str, claims: &[&str], node: Option<&str>) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let mut spec = json!({"containers": [{"name": "app", "image": "busybox"}], "volumes": volumes});
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": spec, "status": {"phase": "Pending"}})
}

/// A synced state: `nodes` with an attach limit of `limit` each, the claims, and the
/// pods (created, not bound).
fn cluster(nodes: &[&str], limit: u32, claims: &[(&str, &str)], pods: &[(&str, &[&str])]) -> App {
    let config = example_config();
    let mut state = empty_state(&config);
    for n in nodes {
        state.apply(&object(node(n, limit)));
        state.apply(&object(csinode(n)));
    }
    for (claim, mode) in claims {
        for v in volume(claim, mode) {
            state.apply(&object(v));
        }
    }
    for (name, claims) in pods {
        state.apply(&object(pod(name, claims, None)));
    }
    for kind in Kind::ALL {
        state.mark_synced(kind);
    }
    App::new(Arc::new(config), SharedState::new(state))
}

/// An unbound claim `shop/<name>` of a WaitForFirstConsumer linode class.
fn unbound_claim(state: &mut volguard::cluster::ClusterState, name: &str) {
    state.apply(&object(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "lin"}, "provisioner": "linodebs.csi.linode.com",
        "volumeBindingMode": "WaitForFirstConsumer"}),
    ));
    state.apply(&object(
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "lin"}}),
    ));
}

fn args(pod: &Value, nodes: &[&str]) -> Vec<u8> {
    json!({"Pod": pod, "Nodes": null, "NodeNames": nodes})
        .to_string()
        .into_bytes()
}

/// A `/filter` answer: the passing nodes, and every failed node with its reason.
#[derive(Debug, PartialEq)]
struct Filtered {
    passing: Vec<String>,
    failed: BTreeMap<String, String>,
}

fn run_filter(app: &App, pod: &Value, nodes: &[&str]) -> Filtered {
    let body = filter(&args(pod, nodes), app, &Abandoned::default()).expect("an answer");
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["Error"], "", "{v}");
    let mut failed = BTreeMap::new();
    for map in ["FailedNodes", "FailedAndUnresolvableNodes"] {
        for (n, r) in v[map].as_object().into_iter().flatten() {
            failed.insert(n.clone(), r.as_str().expect("a reason").to_owned());
        }
    }
    let passing = v["NodeNames"]
        .as_array()
        .expect("NodeNames")
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect();
    Filtered { passing, failed }
}

fn run_prioritize(app: &App, pod: &Value, nodes: &[&str]) -> BTreeMap<String, u64> {
    let body = prioritize(&args(pod, nodes), app, &Abandoned::default()).expect("an answer");
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|h| {
            (
                h["Host"].as_str().unwrap().to_owned(),
                h["Score"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// What kube-scheduler would choose with volguard's scores alone: the highest, the
/// first of equals.
fn choose(filtered: &Filtered, scores: &BTreeMap<String, u64>) -> Option<String> {
    let mut best: Option<(&String, u64)> = None;
    for n in &filtered.passing {
        let s = scores[n];
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((n, s));
        }
    }
    best.map(|(n, _)| n.clone())
}

fn bind(app: &App, name: &str, claims: &[&str], node: &str) {
    let mut state = app.cluster.write().unwrap();
    state.apply(&object(pod(name, claims, Some(node))));
}

fn metric(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.metrics.encode().expect("metrics encode");
    openmetrics::parse(&text)
        .expect("valid OpenMetrics")
        .count(name, labels)
}

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn nine_pods() -> (Vec<String>, Vec<String>) {
    let claims: Vec<String> = (1..=9).map(|i| format!("data-{i}")).collect();
    let pods: Vec<String> = (1..=9).map(|i| format!("web-{i}")).collect();
    (claims, pods)
}

fn nine_pod_cluster() -> App {
    let (claims, pods) = nine_pods();
    let claim_modes: Vec<(&str, &str)> = claims
        .iter()
        .map(|c| (c.as_str(), "ReadWriteOnce"))
        .collect();
    let pod_claims: Vec<(&str, Vec<&str>)> = pods
        .iter()
        .zip(&claims)
        .map(|(p, c)| (p.as_str(), vec![c.as_str()]))
        .collect();
    let pod_refs: Vec<(&str, &[&str])> = pod_claims.iter().map(|(p, c)| (*p, &c[..])).collect();
    cluster(&NODES, 2, &claim_modes, &pod_refs)
}

/// Nine pods, three nodes with a limit of 2: each binding reaches the state right after
/// the scheduler chose, as on a quiet cluster. Exactly six are placed, two per node, and
/// the scores spread them before any node is full.
#[test]
fn a_burst_fills_each_node_to_its_limit_and_no_further() {
    let app = nine_pod_cluster();
    let (claims, pods) = nine_pods();
    let mut placed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_three = Vec::new();
    for (name, claim) in pods.iter().zip(&claims) {
        let p = pod(name, &[claim], None);
        let filtered = run_filter(&app, &p, &NODES);
        let scores = run_prioritize(&app, &p, &NODES);
        match choose(&filtered, &scores) {
            Some(node) => {
                if first_three.len() < 3 {
                    first_three.push(node.clone());
                }
                bind(&app, name, &[claim], &node);
                placed.entry(node).or_default().push(name.clone());
            }
            None => {
                let expected: BTreeMap<String, String> = NODES
                    .iter()
                    .map(|n| (n.to_string(), LIMIT.to_owned()))
                    .collect();
                assert_eq!(filtered.failed, expected, "{name}");
            }
        }
    }
    assert_eq!(
        placed.values().map(Vec::len).sum::<usize>(),
        6,
        "{placed:?}"
    );
    assert!(placed.values().all(|p| p.len() == 2), "{placed:?}");
    first_three.sort();
    assert_eq!(first_three, NODES, "the first three pods go to three nodes");
}

/// The same burst when no binding reaches the state while it runs (a lagging watch):
/// the first two pods may each land anywhere, so the third cannot be placed anywhere
/// without risking a third volume on a node. It waits for the bindings, in vain, and
/// is turned away; the pods after it are turned away at once, without waiting again.
#[test]
fn a_burst_whose_bindings_lag_never_overshoots() {
    let app = nine_pod_cluster();
    let (claims, pods) = nine_pods();
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    for (name, claim) in pods.iter().zip(&claims) {
        let p = pod(name, &[claim], None);
        let filtered = run_filter(&app, &p, &NODES);
        let scores = run_prioritize(&app, &p, &NODES);
        if let Some(node) = choose(&filtered, &scores) {
            *placed.entry(node).or_default() += 1;
        } else {
            assert_eq!(
                filtered.failed.values().collect::<Vec<_>>(),
                [LIMIT; 3],
                "{name}"
            );
        }
    }
    assert_eq!(placed.values().sum::<usize>(), 2, "{placed:?}");
    assert!(placed.values().all(|n| *n == 1), "spread: {placed:?}");
    let waits = |outcome| {
        metric(
            &app,
            "volguard_extender_burst_waits_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(waits("timed_out"), 1.0, "one wait, then none");
    assert_eq!(waits("settled"), 0.0);
    assert_eq!(
        metric(&app, "volguard_extender_pods_in_flight", &[]),
        2.0,
        "the two placed pods"
    );
}

/// A `/filter` that only pods in flight turn away waits for their bindings, and
/// answers from the state once they show.
#[test]
fn a_binding_seen_during_the_wait_lets_the_next_pod_in() {
    let app = nine_pod_cluster();
    for (name, claim) in [("web-1", "data-1"), ("web-2", "data-2")] {
        let filtered = run_filter(&app, &pod(name, &[claim], None), &NODES);
        assert_eq!(filtered.passing, NODES, "{name}");
    }
    // The scheduler chose node-a for both; the bindings show 50 ms into the next filter.
    let binder = {
        let app = app.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            bind(&app, "web-1", &["data-1"], "node-a");
            bind(&app, "web-2", &["data-2"], "node-a");
        })
    };
    let third = run_filter(&app, &pod("web-3", &["data-3"], None), &NODES);
    binder.join().unwrap();
    assert_eq!(third.passing, ["node-b", "node-c"]);
    assert_eq!(
        third.failed,
        BTreeMap::from([("node-a".to_owned(), LIMIT.to_owned())])
    );
    let waits = |outcome| {
        metric(
            &app,
            "volguard_extender_burst_waits_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(waits("settled"), 1.0);
    assert_eq!(waits("timed_out"), 0.0);
}

/// Two pods sharing one ReadWriteOnce claim, scheduled back to back: the second waits
/// for the first's binding and goes to the same node.
#[test]
fn a_read_write_once_pair_is_never_split() {
    let nodes = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let app = cluster(
        &nodes,
        8,
        &[("shared", "ReadWriteOnce")],
        &[("db-0", &["shared"]), ("db-1", &["shared"])],
    );
    let first = run_filter(&app, &pod("db-0", &["shared"], None), &nodes);
    assert_eq!(first.passing, nodes);
    let binder = {
        let app = app.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            bind(&app, "db-0", &["shared"], "n4");
        })
    };
    let second = run_filter(&app, &pod("db-1", &["shared"], None), &nodes);
    binder.join().unwrap();
    assert_eq!(second.passing, ["n4"]);
    let reason = "node(s) that cannot use ReadWriteOnce volume 1000-shared (claim shared): in use on n4 by pod shop/db-0";
    assert!(second.failed.values().all(|r| r == reason), "{second:?}");
}

/// When the first pod of the pair never shows bound (its binding failed), the second is
/// turned away everywhere after the wait, with a reason that says why, and is judged
/// afresh once the first asks again and is bound.
#[test]
fn a_read_write_once_partner_in_flight_is_named() {
    let nodes = ["n1", "n2", "n3"];
    let app = cluster(
        &nodes,
        8,
        &[("shared", "ReadWriteOnce")],
        &[("db-0", &["shared"]), ("db-1", &["shared"])],
    );
    run_filter(&app, &pod("db-0", &["shared"], None), &nodes);
    let second = run_filter(&app, &pod("db-1", &["shared"], None), &nodes);
    assert!(second.passing.is_empty(), "{second:?}");
    let reason = "node(s) that cannot use ReadWriteOnce volume 1000-shared (claim shared): pod shop/db-0 is being scheduled with it";
    assert_eq!(second.failed.values().collect::<Vec<_>>(), [reason; 3]);
    // db-0 is retried, passes only n2 this time (say), and is bound there.
    let retry = run_filter(&app, &pod("db-0", &["shared"], None), &["n2"]);
    assert_eq!(retry.passing, ["n2"]);
    let third = run_filter(&app, &pod("db-1", &["shared"], None), &nodes);
    assert_eq!(third.passing, ["n2"], "db-0 can only be on n2 now");
    bind(&app, "db-0", &["shared"], "n2");
    assert_eq!(
        run_filter(&app, &pod("db-1", &["shared"], None), &nodes).passing,
        ["n2"]
    );
}

/// A pod in flight that is deleted, or replaced by a pod of the same name (a new uid),
/// stops holding its slots; a pod asking again is not hindered by its own placement.
#[test]
fn deleted_and_replaced_pods_release_their_slots() {
    let app = cluster(
        &["only"],
        1,
        &[("a", "ReadWriteOnce"), ("b", "ReadWriteOnce")],
        &[("one", &["a"]), ("two", &["b"])],
    );
    assert_eq!(
        run_filter(&app, &pod("one", &["a"], None), &["only"]).passing,
        ["only"]
    );
    assert_eq!(
        run_filter(&app, &pod("one", &["a"], None), &["only"]).passing,
        ["only"],
        "asking again, it does not count against itself"
    );
    let turned_away = run_filter(&app, &pod("two", &["b"], None), &["only"]);
    assert!(turned_away.passing.is_empty());

    // "one" is replaced by a pod of the same name (another uid).
    let mut replaced = pod("one", &["a"], None);
    replaced["metadata"]["uid"] = json!("uid-one-again");
    app.cluster.write().unwrap().apply(&object(replaced));
    assert_eq!(
        run_filter(&app, &pod("two", &["b"], None), &["only"]).passing,
        ["only"]
    );

    // "two" is deleted before it is bound.
    app.cluster.write().unwrap().delete(Kind::Pod, "shop/two");
    assert_eq!(
        run_filter(&app, &pod("one", &["a"], None), &["only"]).passing,
        ["only"]
    );
}

/// `explain` and the logs give the numbers of a node that pods in flight fill.
#[test]
fn the_slots_taken_by_pods_in_flight_are_shown() {
    let app = nine_pod_cluster();
    run_filter(&app, &pod("web-1", &["data-1"], None), &["node-a"]);
    run_filter(&app, &pod("web-2", &["data-2"], None), &["node-a"]);
    let state = app.cluster.read().unwrap();
    let p = pod("web-3", &["data-3"], None);
    let view: volguard::model::podview::PodView = serde_json::from_value(p).unwrap();
    let config = example_config();
    let resolution = volguard::decide::resolve::resolve(&view, "shop", &state, &config).unwrap();
    let others = {
        let flight = app.in_flight.lock().unwrap();
        let judge = volguard::decide::judge::Judge::new(Ok(&resolution), &state, &config);
        flight.touching("shop/web-3", &judge.needs())
    };
    let judge = volguard::decide::judge::Judge::new(Ok(&resolution), &state, &config)
        .with_in_flight(&others, volguard::decide::inflight::Presume::Anywhere);
    assert_eq!(
        judge.judge("node-a").describe().unwrap(),
        format!("{LIMIT}: 2 of 2 used (2 by pods being scheduled), pod needs 1 more")
    );
}

/// When the watch lags so far behind that 512 pods are in flight, the next pod is not
/// judged: the answer says why, and the scheduler retries it.
#[test]
fn a_full_in_flight_set_turns_new_pods_away_with_a_reason() {
    let nodes: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let claims: Vec<String> = (0..=volguard::decide::inflight::MAX_PODS)
        .map(|i| format!("c{i}"))
        .collect();
    let claim_modes: Vec<(&str, &str)> = claims
        .iter()
        .map(|c| (c.as_str(), "ReadWriteMany"))
        .collect();
    let app = cluster(&node_refs, 100_000, &claim_modes, &[]);
    for (i, c) in claims
        .iter()
        .enumerate()
        .take(volguard::decide::inflight::MAX_PODS)
    {
        let f = run_filter(&app, &pod(&format!("p{i}"), &[c], None), &node_refs);
        assert_eq!(f.passing.len(), 3);
    }
    let last = pod("late", &[claims.last().unwrap()], None);
    let body = filter(&args(&last, &node_refs), &app, &Abandoned::default()).expect("an answer");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["Error"],
        "512 pods passed by volguard are not seen bound yet (their bindings are slow, or volguard's watch lags): retry later"
    );
    // A pod already in flight is still judged (a retry replaces its placement).
    assert_eq!(
        run_filter(&app, &pod("p0", &["c0"], None), &node_refs)
            .passing
            .len(),
        3
    );
}

/// A pod recreated under the name of one the state still shows (the scheduler's
/// informer ahead of volguard's watch): the new pod's placement counts, whatever the
/// stale record says, until the state shows the new pod itself.
#[test]
fn a_recreated_pod_counts_while_the_state_still_shows_the_old_one() {
    let app = cluster(
        &["only"],
        1,
        &[("a", "ReadWriteOnce"), ("b", "ReadWriteOnce")],
        &[("two", &["b"])],
    );
    // The old db-0 is still in the state, pending, under another uid.
    let mut old = pod("db-0", &["a"], None);
    old["metadata"]["uid"] = json!("uid-db-0-old");
    app.cluster.write().unwrap().apply(&object(old));
    assert_eq!(
        run_filter(&app, &pod("db-0", &["a"], None), &["only"]).passing,
        ["only"]
    );
    let turned_away = run_filter(&app, &pod("two", &["b"], None), &["only"]);
    assert_eq!(turned_away.failed.values().collect::<Vec<_>>(), [LIMIT]);
    // The watch then shows the old pod gone and the new one bound.
    app.cluster.write().unwrap().delete(Kind::Pod, "shop/db-0");
    assert!(
        run_filter(&app, &pod("two", &["b"], None), &["only"])
            .passing
            .is_empty()
    );
    bind(&app, "db-0", &["a"], "only");
    assert_eq!(
        run_filter(&app, &pod("two", &["b"], None), &["only"])
            .failed
            .values()
            .collect::<Vec<_>>(),
        [LIMIT],
        "now the state counts db-0's volume itself"
    );
}

/// A pod shown bound before its claim's binding reaches the state (separate watches):
/// its placement keeps counting, on its node only, until the state counts the volume.
#[test]
fn a_pod_bound_before_its_claim_keeps_counting_on_its_node() {
    let app = cluster(
        &["n0", "n1"],
        1,
        &[("b", "ReadWriteOnce")],
        &[("q", &["b"])],
    );
    {
        let mut state = app.cluster.write().unwrap();
        unbound_claim(&mut state, "w");
        state.apply(&object(pod("p", &["w"], None)));
    }
    assert_eq!(
        run_filter(&app, &pod("p", &["w"], None), &["n0", "n1"]).passing,
        ["n0", "n1"]
    );
    // p shows bound to n0; its claim "w" is still unbound in the state.
    bind(&app, "p", &["w"], "n0");
    let q = run_filter(&app, &pod("q", &["b"], None), &["n0", "n1"]);
    assert_eq!(q.passing, ["n1"], "{q:?}");
    assert_eq!(
        q.failed,
        BTreeMap::from([("n0".to_owned(), LIMIT.to_owned())])
    );
}

/// A pod with a device-plugin volume and an unbound attach-mode claim, shown bound
/// before its claim: the device the state counts does not stand for the claim's volume.
#[test]
fn a_counted_device_does_not_stand_for_an_uncounted_claim() {
    let app = cluster(
        &["n0", "n1"],
        1,
        &[("b", "ReadWriteOnce")],
        &[("q", &["b"])],
    );
    let mut p = pod("p", &["w"], None);
    p["metadata"]["annotations"] = json!({"volguard.io/devices": "brightbox=vol-dev"});
    {
        let mut state = app.cluster.write().unwrap();
        unbound_claim(&mut state, "w");
        for n in ["n0", "n1"] {
            state.apply(&object(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n, "annotations": {"volguard.io/attach-limit": "1"}},
                "status": {"allocatable": {"volumes.brightbox.com/vol-dev": "1"}}})));
        }
        state.apply(&object(p.clone()));
    }
    assert_eq!(run_filter(&app, &p, &["n0", "n1"]).passing, ["n0", "n1"]);
    let mut bound = p.clone();
    bound["spec"]["nodeName"] = json!("n0");
    app.cluster.write().unwrap().apply(&object(bound));
    let q = run_filter(&app, &pod("q", &["b"], None), &["n0", "n1"]);
    assert_eq!(q.passing, ["n1"], "{q:?}");
}

/// `app` following the API, as `volguard serve` does without `--snapshot`: a retry's
/// wait is for a watch. The tests write the watch's events themselves; the client is
/// never called, and `runtime` only carries its request buffer.
fn following_the_api(mut app: App, runtime: &tokio::runtime::Runtime) -> App {
    let _entered = runtime.enter();
    let (service, _never_answered) = tower_test::mock::pair::<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<kube::client::Body>,
    >();
    app.api = Some(kube::Client::new(service, "default"));
    app
}

fn catch_up_waits(app: &App, outcome: &str) -> f64 {
    metric(
        app,
        "volguard_extender_catch_up_waits_total",
        &[("outcome", outcome)],
    )
}

/// kube-scheduler retries a pod the extender turned away on any event it sees, often
/// before volguard's watch delivers the same event. A retry that finds nothing learned
/// since the last refusal waits for the watch, and the change it brings lets the pod in.
#[test]
fn a_retry_waits_for_the_change_that_made_the_scheduler_retry() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = following_the_api(
        cluster(&["node-a"], 0, &[("data-1", "ReadWriteOnce")], &[]),
        &runtime,
    );
    let web = pod("web-1", &["data-1"], None);
    let first = run_filter(&app, &web, &["node-a"]);
    assert_eq!(first.passing, Vec::<String>::new());
    assert_eq!(catch_up_waits(&app, "caught_up"), 0.0, "a first attempt");
    // The annotation is raised; the scheduler saw it and retries; volguard's watch
    // delivers an unrelated change 30 ms into the retry, and the raise 80 ms in.
    let watch = {
        let app = app.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            app.cluster
                .write()
                .unwrap()
                .apply(&object(node("node-z", 0)));
            thread::sleep(Duration::from_millis(50));
            app.cluster
                .write()
                .unwrap()
                .apply(&object(node("node-a", 4)));
        })
    };
    let retry = run_filter(&app, &web, &["node-a"]);
    watch.join().unwrap();
    assert_eq!(retry.passing, ["node-a"]);
    assert_eq!(catch_up_waits(&app, "caught_up"), 1.0);
    assert_eq!(catch_up_waits(&app, "settled"), 0.0);
}

/// Retries with nothing new to learn (an event that does not concern volguard) are
/// turned away with the same reason; the scheduler waits once per change count, not
/// once per pod retried.
#[test]
fn retries_with_nothing_to_learn_wait_once_per_change_count() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = following_the_api(
        cluster(
            &["node-a"],
            0,
            &[("data-1", "ReadWriteOnce"), ("data-2", "ReadWriteOnce")],
            &[],
        ),
        &runtime,
    );
    let pods = [
        pod("web-1", &["data-1"], None),
        pod("web-2", &["data-2"], None),
    ];
    let refused = Filtered {
        passing: vec![],
        failed: BTreeMap::from([("node-a".to_owned(), LIMIT.to_owned())]),
    };
    for p in &pods {
        assert_eq!(run_filter(&app, p, &["node-a"]), refused);
    }
    for p in &pods {
        assert_eq!(run_filter(&app, p, &["node-a"]), refused);
    }
    assert_eq!(catch_up_waits(&app, "settled"), 1.0);
    assert_eq!(catch_up_waits(&app, "caught_up"), 0.0);
    // A change that does not help: the next retries may lag again, and wait once more.
    app.cluster
        .write()
        .unwrap()
        .apply(&object(node("node-b", 0)));
    for p in &pods {
        assert_eq!(run_filter(&app, p, &["node-a"]), refused);
    }
    for p in &pods {
        assert_eq!(run_filter(&app, p, &["node-a"]), refused);
    }
    assert_eq!(catch_up_waits(&app, "settled"), 2.0);
}

/// A snapshot never changes: a retry turned away again is answered at once, without
/// waiting for a watch that does not exist.
#[test]
fn without_a_watch_a_retry_is_answered_at_once() {
    let app = cluster(&["node-a"], 0, &[("data-1", "ReadWriteOnce")], &[]);
    let web = pod("web-1", &["data-1"], None);
    for _ in 0..3 {
        assert_eq!(
            run_filter(&app, &web, &["node-a"]).passing,
            Vec::<String>::new()
        );
    }
    assert_eq!(catch_up_waits(&app, "settled"), 0.0);
    assert_eq!(catch_up_waits(&app, "caught_up"), 0.0);
}

/// The scheduler writes a refused pod's status, a kubelet its node's: that changes
/// nothing volguard keeps, so it does not count as a change a retry could have been
/// waiting for. A binding does, a new limit does.
#[test]
fn only_what_can_change_a_verdict_counts_as_a_change() {
    let app = cluster(
        &["node-a"],
        2,
        &[("data-1", "ReadWriteOnce")],
        &[("web-1", &["data-1"])],
    );
    let changes = || app.cluster.read().unwrap().changes();
    let before = changes();
    let mut refused = pod("web-1", &["data-1"], None);
    refused["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable"}]);
    app.cluster.write().unwrap().apply(&object(refused));
    assert_eq!(changes(), before, "a pending pod's conditions");
    let report = |time: &str| {
        let mut n = node("node-a", 2);
        n["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
            "lastHeartbeatTime": time}]);
        app.cluster.write().unwrap().apply(&object(n));
    };
    report("2026-12-06T10:00:00Z");
    assert_eq!(changes(), before + 1, "the node turned Ready");
    report("2026-12-06T10:00:10Z");
    assert_eq!(changes(), before + 1, "a node's next status report");
    bind(&app, "web-1", &["data-1"], "node-a");
    assert_eq!(changes(), before + 2, "a binding");
    app.cluster
        .write()
        .unwrap()
        .apply(&object(node("node-a", 3)));
    assert_eq!(changes(), before + 3, "a new limit");
    app.cluster.write().unwrap().delete(Kind::Pod, "shop/web-1");
    assert_eq!(changes(), before + 4, "a deletion");
    app.cluster.write().unwrap().delete(Kind::Pod, "shop/web-1");
    assert_eq!(changes(), before + 4, "a deletion of what is gone");
}
