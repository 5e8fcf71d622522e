//! Hostile and extreme inputs for the scheduler extender over real TLS: repeated,
//! unknown, odd and very many candidate nodes, absurd counts in Node allocatable, node
//! annotations and CSINodes, claims on foreign drivers, deep nesting. Every answer is
//! checked by the wire-format oracle (`common::answers`) against its request, then for
//! the verdict it must carry; the server keeps serving.

mod common;

use common::{
    TestServer,
    answers::{self, Answer, Endpoint, Filtered},
    read_doc,
};
use serde_json::{Value, json};
use volguard::cluster::ClusterObject;

const NODES: [&str; 4] = ["worker-1", "worker-2", "worker-3", "worker-4"];

fn pod(name: &str) -> Value {
    read_doc(&format!("examples/pods/{name}.yaml"))
}

/// The Node objects of the example snapshot, as the scheduler embeds them.
fn example_nodes() -> Vec<Value> {
    read_doc("examples/cluster/nodes.yaml")["items"]
        .as_array()
        .expect("a List")
        .clone()
}

fn example_node(name: &str) -> Value {
    example_nodes()
        .into_iter()
        .find(|n| n["metadata"]["name"] == name)
        .expect("an example node")
}

fn by_names(pod: &Value, names: &[&str]) -> Value {
    json!({"Pod": pod, "Nodes": null, "NodeNames": names})
}

fn by_nodes(pod: &Value, nodes: &[Value]) -> Value {
    json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null})
}

/// Posts `body` and checks the answer against it with the oracle.
async fn ask(server: &TestServer, endpoint: Endpoint, body: impl Into<Vec<u8>>) -> Answer {
    let body = body.into();
    let (status, answer) = server.post(endpoint.path(), body.clone()).await;
    answers::check(endpoint, &body, status.as_u16(), &answer)
        .unwrap_or_else(|e| panic!("{}: {e}", endpoint.path()))
}

async fn filter(server: &TestServer, body: &Value) -> Filtered {
    match ask(server, Endpoint::Filter, body.to_string()).await {
        Answer::Filter(f) => {
            assert_eq!(f.error, "", "{f:?}");
            f
        }
        other => panic!("not a filter answer: {other:?}"),
    }
}

async fn priorities(server: &TestServer, body: &Value) -> Vec<(String, i64)> {
    match ask(server, Endpoint::Prioritize, body.to_string()).await {
        Answer::Priorities(p) => p,
        other => panic!("not a HostPriorityList: {other:?}"),
    }
}

/// Both extender endpoints refuse `body` with a 400 whose line says `says`.
async fn refused(server: &TestServer, body: impl Into<Vec<u8>> + Clone, says: &str) {
    for endpoint in [Endpoint::Filter, Endpoint::Prioritize] {
        match ask(server, endpoint, body.clone()).await {
            Answer::Refused(400, line) => assert!(line.contains(says), "{line}"),
            other => panic!("{}: not a 400: {other:?}", endpoint.path()),
        }
    }
}

fn apply(server: &TestServer, object: Value) {
    let object = ClusterObject::from_value(object).expect("valid object");
    server.app.cluster.write().unwrap().apply(&object);
}

fn hosts(list: &[(String, i64)]) -> Vec<&str> {
    list.iter().map(|(h, _)| h.as_str()).collect()
}

/// kube-scheduler maps the names an extender returns back through a map of its
/// candidates, and adds up the extender's scores per `Host`: a name answered twice
/// would be a duplicate feasible node and a doubled score. volguard answers each
/// distinct name once, at its first position; in `Nodes` mode the first item sent under
/// a name is the one echoed.
#[tokio::test]
async fn a_node_listed_twice_is_answered_once_in_both_modes() {
    let server = TestServer::example().await;
    let web = pod("linode-web");
    let twice = [
        "worker-1", "worker-2", "worker-1", "worker-3", "worker-3", "worker-4", "worker-2",
    ];
    let f = filter(&server, &by_names(&web, &twice)).await;
    assert_eq!(f.passing, ["worker-1", "worker-2"]);
    assert!(f.failed.is_empty(), "{f:?}");
    assert_eq!(
        f.unresolvable.keys().collect::<Vec<_>>(),
        ["worker-3", "worker-4"]
    );
    let p = priorities(&server, &by_names(&web, &twice)).await;
    assert_eq!(hosts(&p), NODES);

    let plain = pod("no-volumes");
    let f = filter(&server, &by_names(&plain, &twice)).await;
    assert_eq!(f.passing, NODES, "no opinion, still once each");
    let p = priorities(&server, &by_names(&plain, &twice)).await;
    assert_eq!(hosts(&p), NODES);

    let nodes = example_nodes();
    let mut altered = nodes[0].clone();
    altered["metadata"]["labels"]["second"] = "copy".into();
    let items = [
        nodes[0].clone(),
        nodes[1].clone(),
        altered,
        nodes[2].clone(),
        nodes[1].clone(),
    ];
    // The oracle checks that each passing item is the first one sent under its name.
    let f = filter(&server, &by_nodes(&web, &items)).await;
    assert_eq!(f.passing, ["worker-1", "worker-2"]);
    assert_eq!(f.unresolvable.keys().collect::<Vec<_>>(), ["worker-3"]);
    let p = priorities(&server, &by_nodes(&web, &items)).await;
    assert_eq!(hosts(&p), ["worker-1", "worker-2", "worker-3"]);
}

/// A device counts as attached iff its allocatable quantity is >= 1, whatever way the
/// quantity is written; a value that is no quantity at all counts as detached.
#[tokio::test]
async fn device_allocatable_counts_are_read_as_quantities() {
    let server = TestServer::example().await;
    let device = pod("seed-000-device");
    let cases = [
        ("-1", false),
        ("0", false),
        ("999m", false),
        ("0.5", false),
        ("1e-3", false),
        ("-1e3", false),
        ("1", true),
        ("+1", true),
        ("1500m", true),
        ("1.5", true),
        ("1k", true),
        ("1Ki", true),
        ("1e3", true),
        ("1E3", true),
        ("2E", true),
        ("8Ei", true),
        ("9223372036854775807", true),
        ("99999999999999999999", true),
        ("1e400", true),
        ("garbage", false),
        ("", false),
        ("1x", false),
        ("--1", false),
        ("e3", false),
        ("1e", false),
    ];
    for (count, attached) in cases {
        let mut node = example_node("worker-1");
        node["status"]["allocatable"]["volumes.brightbox.com/vol-qsk4v"] = count.into();
        apply(&server, node);
        let f = filter(&server, &by_names(&device, &NODES)).await;
        let passes = f.passing.contains(&"worker-1".to_owned());
        assert_eq!(passes, attached, "allocatable {count:?}: {f:?}");
        if !attached {
            assert_eq!(
                f.unresolvable["worker-1"],
                "node(s) without volume vol-qsk4v attached (it is attached to worker-2)",
                "allocatable {count:?}"
            );
        }
        let p = priorities(&server, &by_names(&device, &NODES)).await;
        assert_eq!(p[0].1, if attached { 10 } else { 0 }, "{count:?}: {p:?}");
    }
}

fn annotate_limit(server: &TestServer, node: &str, value: &str) {
    let mut n = example_node(node);
    n["metadata"]["annotations"]["volguard.io/attach-limit"] = value.into();
    apply(server, n);
}

/// Node annotation limits: huge values are honoured without overflowing the score;
/// negative and non-integer ones are ignored with the fallback named in the reason.
#[tokio::test]
async fn huge_and_negative_attach_limit_annotations() {
    let server = TestServer::example().await;
    let web = pod("linode-web");
    // worker-3 holds 8 of its CSINode's 8: only the annotation can make room.
    for huge in [
        "9223372036854775807",
        "4611686018427387904",
        "1000000000000",
    ] {
        annotate_limit(&server, "worker-3", huge);
        let f = filter(&server, &by_names(&web, &NODES)).await;
        assert!(f.passing.contains(&"worker-3".to_owned()), "{huge}: {f:?}");
        let scores: std::collections::BTreeMap<String, i64> =
            priorities(&server, &by_names(&web, &NODES))
                .await
                .into_iter()
                .collect();
        // worker-1 keeps 14 of 16 slots free after the pod; a near-unlimited node more.
        assert!(
            scores["worker-3"] >= scores["worker-1"] && scores["worker-3"] < 10,
            "{huge}: {scores:?}"
        );
    }
    for ignored in [
        "-1",
        "-9223372036854775808",
        "99999999999999999999",
        "1e3",
        "8k",
    ] {
        annotate_limit(&server, "worker-3", ignored);
        let f = filter(&server, &by_names(&web, &NODES)).await;
        assert_eq!(
            f.unresolvable["worker-3"],
            "node(s) at the linode attach limit (limit from CSINode)"
        );
        assert_eq!(
            common::per_node(&server, &web, "worker-3"),
            format!(
                "node(s) at the linode attach limit (limit from CSINode): 8 of 8 used, pod needs 1 more; node annotation volguard.io/attach-limit={ignored:?} is not a non-negative integer, ignored"
            )
        );
    }
    annotate_limit(&server, "worker-2", " 1 ");
    let f = filter(&server, &by_names(&web, &NODES)).await;
    assert_eq!(
        f.unresolvable["worker-2"],
        "node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit)"
    );
    assert_eq!(
        common::per_node(&server, &web, "worker-2"),
        "node(s) at the linode attach limit (limit from node annotation volguard.io/attach-limit): 1 of 1 used, pod needs 1 more"
    );
}

fn csinode(name: &str, count: Value) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": name},
           "spec": {"drivers": [{"name": "linodebs.csi.linode.com", "nodeID": name,
                                 "allocatable": {"count": count}}]}})
}

/// CSINode counts are int32 in the API: beyond that the object does not decode (a
/// watch or snapshot reports it); a negative count, which API validation forbids,
/// fails every new attachment with the number shown; no count means no limit.
#[tokio::test]
async fn extreme_csinode_counts() {
    let server = TestServer::example().await;
    let web = pod("linode-web");
    for huge in [
        json!(9223372036854775807_i64),
        json!(2147483648_i64),
        json!(1e3),
    ] {
        let e = ClusterObject::from_value(csinode("worker-2", huge.clone()));
        assert!(e.is_err(), "{huge} is no int32 count");
    }
    apply(&server, csinode("worker-2", json!(2147483647)));
    let f = filter(&server, &by_names(&web, &NODES)).await;
    assert!(f.passing.contains(&"worker-2".to_owned()), "{f:?}");
    priorities(&server, &by_names(&web, &NODES)).await;

    apply(&server, csinode("worker-2", json!(null)));
    let f = filter(&server, &by_names(&web, &NODES)).await;
    assert!(f.passing.contains(&"worker-2".to_owned()), "{f:?}");

    apply(&server, csinode("worker-2", json!(-1)));
    let f = filter(&server, &by_names(&web, &NODES)).await;
    assert_eq!(
        f.unresolvable["worker-2"],
        "node(s) at the linode attach limit (limit from CSINode)"
    );
    assert_eq!(
        common::per_node(&server, &web, "worker-2"),
        "node(s) at the linode attach limit (limit from CSINode): 1 of -1 used, pod needs 1 more"
    );
    priorities(&server, &by_names(&web, &NODES)).await;
}

/// 5,000 synthetic nodes plus the examples, sent as full objects: every one answered,
/// passing ones echoed unchanged, each rule applied.
#[tokio::test]
async fn five_thousand_nodes_in_nodes_mode() {
    let server = TestServer::example().await;
    let mut nodes = example_nodes();
    for i in 0..5_000 {
        let name = format!("big-{i:05}");
        let mut node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
        if i % 11 == 0 {
            node["metadata"]["annotations"] = json!({"volguard.io/attach-limit": "0"});
        }
        apply(&server, node.clone());
        if i % 7 != 0 {
            apply(&server, csinode(&name, json!(8)));
        }
        nodes.push(node);
    }
    let web = pod("linode-web");
    let f = filter(&server, &by_nodes(&web, &nodes)).await;
    let unregistered = (0..5_000).filter(|i| i % 7 == 0).count() + 1;
    let full = (0..5_000).filter(|i| i % 7 != 0 && i % 11 == 0).count() + 1;
    assert_eq!(
        f.unresolvable.len(),
        unregistered + full,
        "worker-3 and worker-4, every 7th and every 11th registered"
    );
    assert!(f.failed.is_empty(), "an attach limit is not for preemption");
    assert_eq!(f.passing.len(), 5_004 - unregistered - full);
    let p = priorities(&server, &by_nodes(&web, &nodes)).await;
    assert_eq!(p.len(), 5_004);
}

/// The extender judges only managed volumes: a claim on another CSI driver passes
/// everywhere, alone or next to a managed claim.
#[tokio::test]
async fn a_claim_on_a_foreign_driver_passes_everywhere() {
    let server = TestServer::example().await;
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-nfs"},
               "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                        "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "share"}}}),
    );
    apply(
        &server,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "nfs", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-nfs",
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    let mut nfs = pod("linode-web");
    nfs["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "nfs"}}]);
    let f = filter(&server, &by_names(&nfs, &NODES)).await;
    assert_eq!(f.passing, NODES);
    let p = priorities(&server, &by_names(&nfs, &NODES)).await;
    assert!(p.iter().all(|(_, s)| *s == 0), "{p:?}");

    let mut both = pod("linode-web");
    both["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "share", "persistentVolumeClaim": {"claimName": "nfs"}}));
    let f = filter(&server, &by_names(&both, &NODES)).await;
    assert_eq!(
        f.passing,
        ["worker-1", "worker-2"],
        "judged by web-data alone"
    );
}

/// Once a writer has panicked while holding the cluster state (the lock is poisoned),
/// pods with managed volumes get `Error` (and `/prioritize` a 503) while pods without
/// any are still judged from their spec alone and pass everywhere.
#[tokio::test]
async fn a_poisoned_state_still_passes_pods_without_managed_volumes() {
    let server = TestServer::example().await;
    common::poison(&server.app.cluster);

    let plain = pod("no-volumes");
    let f = filter(&server, &by_names(&plain, &NODES)).await;
    assert_eq!(f.passing, NODES);
    let p = priorities(&server, &by_names(&plain, &NODES)).await;
    assert_eq!(p, NODES.map(|n| (n.to_owned(), 0)));

    let web = by_names(&pod("linode-web"), &NODES).to_string();
    match ask(&server, Endpoint::Filter, web.clone()).await {
        Answer::Filter(f) => {
            assert_eq!(f.error, "volguard's cluster state is unavailable");
            assert!(f.passing.is_empty(), "{f:?}");
        }
        other => panic!("not a filter answer: {other:?}"),
    }
    match ask(&server, Endpoint::Prioritize, web).await {
        Answer::Refused(503, line) => {
            assert_eq!(line, "volguard's cluster state is unavailable")
        }
        other => panic!("not a 503: {other:?}"),
    }
}

/// A Pod written as an array of its fields is refused, not read field by field into a
/// pod without volumes that every node would pass.
#[tokio::test]
async fn a_pod_written_as_an_array_is_refused() {
    let server = TestServer::example().await;
    for pod in [json!([]), json!([{"name": "p"}, {"volumes": []}])] {
        let body = json!({"Pod": pod, "NodeNames": NODES}).to_string();
        refused(
            &server,
            body,
            "not ExtenderArgs: invalid type: sequence, expected an object",
        )
        .await;
    }
}

/// Deep nesting where a Pod or a name is expected is refused; where it is skipped
/// (a field volguard does not read) or echoed (a Node item) it is carried without
/// recursion, so it cannot exhaust the stack.
#[tokio::test]
async fn deeply_nested_json_is_refused_or_skipped_never_a_crash() {
    let server = TestServer::example().await;
    let depth = 100_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let nest = |template: String, with: &str| template.replace("\"NEST\"", with);
    for deep in [&arrays, &objects] {
        let web = pod("linode-web");
        let in_pod = nest(json!({"Pod": "NEST", "NodeNames": NODES}).to_string(), deep);
        if deep == &arrays {
            refused(&server, in_pod, "not ExtenderArgs").await;
        } else {
            // {"a": {"a": ...}} is a Pod with one unknown field: it has no volume.
            let Answer::Filter(f) = ask(&server, Endpoint::Filter, in_pod).await else {
                panic!("not a filter answer")
            };
            assert_eq!(f.passing, NODES);
        }
        let in_names = nest(json!({"Pod": web, "NodeNames": ["NEST"]}).to_string(), deep);
        refused(&server, in_names, "not ExtenderArgs").await;
        let in_spec = nest(
            by_names(
                &json!({"metadata": {"name": "p"}, "spec": {"containers": "NEST"}}),
                &NODES,
            )
            .to_string(),
            deep,
        );
        refused(&server, in_spec, "not ExtenderArgs").await;

        let mut unread = web.clone();
        unread["spec"]["futureField"] = "NEST".into();
        let body = nest(by_names(&unread, &NODES).to_string(), deep);
        let Answer::Filter(f) = ask(&server, Endpoint::Filter, body).await else {
            panic!("not a filter answer")
        };
        assert_eq!(f.passing, ["worker-1", "worker-2"]);

        let mut worker1 = example_node("worker-1");
        worker1["status"]["extra"] = "NEST".into();
        let body = nest(
            by_nodes(&web, &[worker1, example_node("worker-3")]).to_string(),
            deep,
        );
        let Answer::Filter(f) = ask(&server, Endpoint::Filter, body.clone()).await else {
            panic!("not a filter answer")
        };
        assert_eq!(
            f.passing,
            ["worker-1"],
            "echoed as sent (checked by the oracle)"
        );
        ask(&server, Endpoint::Prioritize, body).await;
    }
    let f = filter(&server, &by_names(&pod("linode-web"), &NODES)).await;
    assert_eq!(f.passing, ["worker-1", "worker-2"], "still serving");
}

#[tokio::test]
async fn ten_thousand_unknown_nodes() {
    let server = TestServer::example().await;
    let names: Vec<String> = (0..10_000).map(|i| format!("ghost-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = by_names(&pod("linode-web"), &names);
    let f = filter(&server, &body).await;
    assert!(f.passing.is_empty() && f.unresolvable.is_empty());
    assert_eq!(f.failed.len(), 10_000);
    assert_eq!(
        f.failed["ghost-9999"],
        "node(s) not in volguard's cluster state (yet)"
    );
    let p = priorities(&server, &body).await;
    assert_eq!(p.len(), 10_000);
    assert!(p.iter().all(|(_, s)| *s == 0));

    let f = filter(&server, &by_names(&pod("no-volumes"), &names)).await;
    assert_eq!(f.passing.len(), 10_000, "no managed volume: no opinion");
}

#[tokio::test]
async fn odd_node_names_are_answered_verbatim() {
    let server = TestServer::example().await;
    let odd = [
        "wörker-1",
        "a/b",
        "c~0d~1",
        "",
        " worker-1",
        "worker-1\u{0}",
        "🚀",
    ];
    let mut names = odd.to_vec();
    names.push("worker-2");
    let f = filter(&server, &by_names(&pod("linode-web"), &names)).await;
    assert_eq!(f.passing, ["worker-2"]);
    for name in odd {
        assert_eq!(
            f.failed[name],
            "node(s) not in volguard's cluster state (yet)"
        );
    }
    // An escaped name is the name it spells.
    let escaped =
        r#"{"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["w\u00f6rker-1", "worker\u002d2"]}"#;
    let Answer::Filter(f) = ask(&server, Endpoint::Filter, escaped).await else {
        panic!("not a filter answer")
    };
    assert_eq!(f.passing, ["wörker-1", "worker-2"]);
}

#[tokio::test]
async fn empty_and_absent_candidates() {
    let server = TestServer::example().await;
    let web = pod("linode-web");
    let f = filter(&server, &by_names(&web, &[])).await;
    assert!(f.passing.is_empty() && f.failed.is_empty() && f.unresolvable.is_empty());
    assert!(priorities(&server, &by_names(&web, &[])).await.is_empty());
    let f = filter(&server, &by_nodes(&web, &[])).await;
    assert!(f.passing.is_empty());
    assert!(priorities(&server, &by_nodes(&web, &[])).await.is_empty());

    let array = json!([web, null, NODES]).to_string();
    refused(&server, array, "expected a JSON object").await;
    let fields = json!({"Pod": web, "Nodes": [null, null, null, []]}).to_string();
    refused(&server, fields, "expected an object").await;
    let none = json!({"Pod": web, "Nodes": null, "NodeNames": null}).to_string();
    refused(&server, none, "neither NodeNames nor Nodes").await;
    let no_pod = json!({"Pod": null, "NodeNames": NODES}).to_string();
    refused(&server, no_pod, "no Pod").await;
}
