//! The robustness fuzz: `/mutate`, `/filter` and `/prioritize` fed arbitrary bytes,
//! arbitrary JSON and mutated real requests, through the real router in-process over
//! the example cluster. Whatever comes in, the answer is a 4xx with a one-line reason
//! or a well-formed answer to that very request, as `common::answers` judges it (every
//! returned node asked, scores in 0..=10, a patch that applies to the request's
//! object): never a 5xx, never a panic.
//!
//! `VOLGUARD_FUZZ_CASES` sets the cases per test (default 256), `VOLGUARD_FUZZ_SEED`
//! the seed (fixed by default, so the suite is reproducible). The long run:
//! `VOLGUARD_FUZZ_CASES=100000 cargo test --release --test robustness -- --nocapture`

mod common;

use std::sync::{
    LazyLock,
    atomic::{AtomicU64, Ordering},
};

use axum::{Router, body::Body, http::Request};
use common::{
    answers::{self, Answer, Endpoint},
    read_doc,
};
use http_body_util::BodyExt;
use proptest::{
    prelude::*,
    sample::{Index, select},
    test_runner::{RngSeed, TestCaseError, TestRunner},
};
use serde_json::{Map, Number, Value, json};
use tower::ServiceExt;
use volguard::server::router;

const DEFAULT_CASES: u32 = 256;
const DEFAULT_SEED: u64 = 0x766f_6c67_7561_7264;

/// The router over the example cluster, built once: handlers never write to the state.
static ROUTER: LazyLock<Router> = LazyLock::new(|| router::router(common::example_app()));

/// Timers on (the request deadline), a blocking pool (the extender parses off the
/// async workers).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
});

fn call(endpoint: Endpoint, body: &[u8]) -> (u16, Vec<u8>) {
    RUNTIME.block_on(async {
        let req = Request::post(endpoint.path())
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .expect("request");
        let resp = ROUTER.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, bytes.to_vec())
    })
}

/// A request body, shown as text when a case fails.
#[derive(Clone)]
struct Sent(Vec<u8>);

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(2_000).collect()
}

/// How many cases got a 200 and how many a 4xx.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    refused: AtomicU64,
}

/// Sends one body and checks the answer; with `onError: allow` every review allows.
fn verify(endpoint: Endpoint, body: &[u8], tally: &Tally) -> Result<(), TestCaseError> {
    let (status, answer) = call(endpoint, body);
    match answers::check(endpoint, body, status, &answer) {
        Err(e) => Err(TestCaseError::fail(format!(
            "{}: {e}\nrequest: {}",
            endpoint.path(),
            excerpt(body)
        ))),
        Ok(Answer::Refused(..)) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(answer) => {
            if let Answer::Review(r) = &answer {
                prop_assert_eq!(&r["allowed"], &json!(true), "{}", r);
            }
            tally.answered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `strategy`'s bodies against `endpoint` and reports the tally.
fn fuzz(family: &str, endpoint: Endpoint, strategy: impl Strategy<Value = Vec<u8>>) {
    let strategy = strategy.prop_map(Sent);
    let config = ProptestConfig {
        cases: env("VOLGUARD_FUZZ_CASES", DEFAULT_CASES),
        // One stream per endpoint, so that /filter and /prioritize see different bodies.
        rng_seed: RngSeed::Fixed(env("VOLGUARD_FUZZ_SEED", DEFAULT_SEED) + endpoint as u64),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let cases = config.cases;
    let tally = Tally::default();
    let started = std::time::Instant::now();
    let outcome = TestRunner::new(config).run(&strategy, |body| verify(endpoint, &body.0, &tally));
    println!(
        "{family} {}: {cases} cases in {:.1}s, {} answered, {} refused",
        endpoint.path(),
        started.elapsed().as_secs_f64(),
        tally.answered.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
    );
    if let Err(e) = outcome {
        panic!("{family} {}: {e}", endpoint.path());
    }
    // A fuzz where every case is refused would test only the refusal: each family must
    // reach past the parser into answers. Floors well under what the fixed seed gives
    // (bytes ~2%, json 10-70%, mutated 50-90%).
    let floor = match family {
        "bytes" => 0.005,
        "json" => 0.05,
        _ => 0.25,
    };
    let answered = tally.answered.load(Ordering::Relaxed);
    assert!(
        answered as f64 >= floor * f64::from(cases),
        "{family} {}: only {answered} of {cases} cases were answered (floor {:.1}%): \
         the inputs no longer reach volguard's decisions",
        endpoint.path(),
        floor * 100.0
    );
}

// ---- the real requests the mutations start from ----

const NODES: [&str; 4] = ["worker-1", "worker-2", "worker-3", "worker-4"];
const PODS: [&str; 8] = [
    "db-replica",
    "existing-probe",
    "flex-inline",
    "linode-web",
    "no-volumes",
    "opt-out",
    "seed-000-device",
    "wffc-scratch",
];

fn example_pods() -> impl Iterator<Item = Value> {
    PODS.iter()
        .map(|p| read_doc(&format!("examples/pods/{p}.yaml")))
}

/// AdmissionReviews: the apiserver fixtures and a CREATE of every example pod.
fn reviews() -> Vec<Value> {
    let fixtures = [
        "admissionreview-create-pod",
        "admissionreview-update-pod",
        "admissionreview-configmap",
    ]
    .map(|f| read_doc(&format!("tests/fixtures/{f}.json")));
    fixtures
        .into_iter()
        .chain(example_pods().map(|p| common::create_review(&p, "shop")))
        .collect()
}

/// ExtenderArgs: the scheduler fixtures and every example pod in both modes.
fn extender_args() -> Vec<Value> {
    let nodes = read_doc("examples/cluster/nodes.yaml")["items"].clone();
    let fixtures = ["extenderargs-nodenames", "extenderargs-nodes"]
        .map(|f| read_doc(&format!("tests/fixtures/{f}.json")));
    fixtures
        .into_iter()
        .chain(example_pods().flat_map(|p| {
            [
                json!({"Pod": p, "Nodes": null, "NodeNames": NODES}),
                json!({"Pod": p, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}),
            ]
        }))
        .collect()
}

fn corpus(endpoint: Endpoint) -> Vec<Value> {
    match endpoint {
        Endpoint::Mutate => reviews(),
        Endpoint::Filter | Endpoint::Prioritize => extender_args(),
    }
}

// ---- family 1: arbitrary bytes ----

/// Random bytes, JSON-ish soup, and real requests with bytes flipped, inserted,
/// deleted or cut off.
fn bytes(endpoint: Endpoint) -> impl Strategy<Value = Vec<u8>> {
    let real: Vec<Vec<u8>> = corpus(endpoint)
        .iter()
        .map(|v| serde_json::to_vec(v).expect("JSON"))
        .collect();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        "[\\[\\]{}\",:0-9a-zA-Z\\\\ .eE+-]{0,512}".prop_map(String::into_bytes),
        (
            select(real),
            prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..4), 1..8)
        )
            .prop_map(|(mut body, edits)| {
                for (at, byte, how) in edits {
                    let i = at.index(body.len() + 1);
                    match how {
                        0 if i < body.len() => body[i] = byte,
                        1 => body.insert(i, byte),
                        2 if i < body.len() => {
                            body.remove(i);
                        }
                        _ => body.truncate(i),
                    }
                }
                body
            }),
    ]
}

// ---- family 2: arbitrary JSON ----

/// Keys the handlers read, so that random objects sometimes take a meaningful shape.
const KEYS: &[&str] = &[
    "Pod",
    "Nodes",
    "NodeNames",
    "items",
    "apiVersion",
    "kind",
    "request",
    "uid",
    "operation",
    "object",
    "metadata",
    "name",
    "namespace",
    "annotations",
    "spec",
    "containers",
    "initContainers",
    "volumes",
    "volumeMounts",
    "volumeDevices",
    "mountPath",
    "devicePath",
    "persistentVolumeClaim",
    "claimName",
    "flexVolume",
    "csi",
    "driver",
    "options",
    "volumeID",
    "volumeHandle",
    "ephemeral",
    "volumeClaimTemplate",
    "resources",
    "limits",
    "livenessProbe",
    "nodeName",
    "status",
    "group",
    "version",
    "volguard.io/devices",
    "volguard.io/inject",
    "volguard.io/liveness-probe",
];

/// Strings the handlers compare against, and odd ones.
const WORDS: &[&str] = &[
    "admission.k8s.io/v1",
    "AdmissionReview",
    "CREATE",
    "UPDATE",
    "Pod",
    "v1",
    "",
    "shop",
    "worker-1",
    "worker-3",
    "web-data",
    "data-db-0",
    "scratch",
    "brightbox/volume",
    "linodebs.csi.linode.com",
    "csi.brightbox.com",
    "brightbox=vol-qsk4v,brightbox=vol-x9y8z",
    "brightbox=,=x,,acme=1",
    "false",
    "vol-qsk4v",
    "ünïcödé ~0~1 a/b",
    "\u{0}\u{202e}🚀",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(WORDS).prop_map(str::to_owned),
        2 => "\\PC{0,24}",
        1 => (1usize..10_000).prop_map(|n| "ü/~".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec![
            json!(-1),
            json!(0),
            json!(1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1e308),
            json!(-1e308),
            json!(0.5),
            json!(-0.0),
            json!(9007199254740993_u64),
            json!(1e-300),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
    ]
}

/// Any JSON value, at most `depth` levels deep.
fn value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A pod whose volumes, containers, annotations and node name are arbitrary JSON.
fn pod_with_holes() -> impl Strategy<Value = Value> {
    (value(4), value(4), value(3), value(2)).prop_map(|(volumes, containers, annotations, node)| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "namespace": "shop", "annotations": annotations},
               "spec": {"volumes": volumes, "containers": containers, "nodeName": node}})
    })
}

/// Arbitrary JSON: bare, or in the places of the envelope the endpoint expects.
fn arbitrary_json(endpoint: Endpoint) -> impl Strategy<Value = Vec<u8>> {
    let pod = prop_oneof![value(6), pod_with_holes()];
    let shaped = match endpoint {
        Endpoint::Mutate => (pod, value(4))
            .prop_map(|(object, options)| {
                let mut review = common::create_review(&object, "shop");
                review["request"]["options"] = options;
                review
            })
            .boxed(),
        Endpoint::Filter | Endpoint::Prioritize => (pod, value(4), any::<bool>())
            .prop_map(|(pod, nodes, by_name)| {
                let nodes = if nodes.is_array() {
                    nodes
                } else {
                    json!(NODES)
                };
                if by_name {
                    json!({"Pod": pod, "NodeNames": nodes})
                } else {
                    let items: Vec<Value> = nodes
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|n| json!({"metadata": {"name": n}}))
                        .collect();
                    json!({"Pod": pod, "Nodes": {"items": items}})
                }
            })
            .boxed(),
    };
    prop_oneof![1 => value(8), 3 => shaped].prop_map(|v| serde_json::to_vec(&v).expect("JSON"))
}

// ---- family 3: mutated real requests ----

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    At(usize),
}

/// Every node of `v`, as paths from the root (the root included).
fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Seg::At(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::At(i) => v.get_mut(*i),
    })
}

/// One change to a node of a request.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove it from its object or array.
    Delete,
    /// Put any value in its place.
    Replace(Value),
    /// Put a value of another type in its place.
    Retype,
    /// Repeat it in its array (or make it an array of two).
    Duplicate,
    /// Make it a string: empty, huge, unicode, with `/` and `~`.
    Text(String),
    /// Make it a number: negative, huge, fractional.
    Number(Value),
    /// Add a key to it (or an element, or wrap it).
    Insert(String, Value),
    /// Change it within its type, so that the typed decoding still takes it: a string
    /// becomes this text, a number this number, a boolean flips, an array loses its
    /// first element, an object gains this key.
    Tweak(String, Value, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => Just(Edit::Delete),
        1 => value(3).prop_map(Edit::Replace),
        2 => Just(Edit::Retype),
        2 => Just(Edit::Duplicate),
        2 => text().prop_map(Edit::Text),
        2 => number().prop_map(Edit::Number),
        1 => (key(), value(2)).prop_map(|(k, v)| Edit::Insert(k, v)),
        6 => (text(), number(), key()).prop_map(|(t, n, k)| Edit::Tweak(t, n, k)),
    ]
}

fn retyped(v: &Value) -> Value {
    match v {
        Value::Null => json!({}),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::String(s) => s.parse::<i64>().map_or(json!(-1), Value::from),
        Value::Array(a) => Value::Object(
            a.iter()
                .enumerate()
                .map(|(i, x)| (i.to_string(), x.clone()))
                .collect(),
        ),
        Value::Object(m) => Value::Array(m.values().cloned().collect()),
    }
}

fn apply(root: &mut Value, path: &[Seg], edit: Edit) {
    if let (Edit::Delete | Edit::Duplicate, Some((last, parent))) = (&edit, path.split_last()) {
        let Some(parent) = node_mut(root, parent) else {
            return;
        };
        match (parent, last, edit) {
            (Value::Object(m), Seg::Key(k), Edit::Delete) => {
                m.remove(k);
            }
            (Value::Array(a), Seg::At(i), Edit::Delete) => {
                a.remove(*i);
            }
            (Value::Array(a), Seg::At(i), _) => {
                let copy = a[*i].clone();
                a.insert(*i, copy);
            }
            (parent, _, _) => {
                if let Some(node) = node_mut(parent, std::slice::from_ref(last)) {
                    *node = json!([node.clone(), node.clone()]);
                }
            }
        }
        return;
    }
    let Some(node) = node_mut(root, path) else {
        return;
    };
    *node = match edit {
        Edit::Delete => Value::Null,
        Edit::Duplicate => json!([node.clone(), node.clone()]),
        Edit::Replace(v) | Edit::Number(v) => v,
        Edit::Retype => retyped(node),
        Edit::Tweak(text, number, key) => match node.take() {
            Value::String(_) => Value::String(text),
            Value::Number(_) => number,
            Value::Bool(b) => Value::Bool(!b),
            Value::Array(mut a) => {
                if !a.is_empty() {
                    a.remove(0);
                }
                Value::Array(a)
            }
            Value::Object(mut m) => {
                m.insert(key, Value::String(text));
                Value::Object(m)
            }
            Value::Null => Value::Null,
        },
        Edit::Text(s) => Value::String(s),
        Edit::Insert(k, v) => match node.take() {
            Value::Object(mut m) => {
                m.insert(k, v);
                Value::Object(m)
            }
            Value::Array(mut a) => {
                a.push(v);
                Value::Array(a)
            }
            other => Value::Object(Map::from_iter([(k, v), ("was".to_owned(), other)])),
        },
    };
}

/// Whether `path` leads into the pod's spec or annotations, where the handlers' logic is.
fn in_pod(path: &[Seg]) -> bool {
    let keys: Vec<&str> = path
        .iter()
        .take(4)
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::At(_) => "",
        })
        .collect();
    matches!(
        keys.as_slice(),
        ["request", "object", "spec" | "metadata", ..] | ["Pod", "spec" | "metadata", ..]
    )
}

/// A real request with one to four edits at random nodes, half of them in the pod.
fn mutated(endpoint: Endpoint) -> impl Strategy<Value = Vec<u8>> {
    (
        select(corpus(endpoint)),
        prop::collection::vec((any::<Index>(), any::<bool>(), edit()), 1..5),
    )
        .prop_map(|(mut body, edits)| {
            for (at, focus, edit) in edits {
                let mut all = Vec::new();
                paths(&body, &mut Vec::new(), &mut all);
                if focus && all.iter().any(|p| in_pod(p)) {
                    all.retain(|p| in_pod(p));
                }
                let path = &all[at.index(all.len())];
                apply(&mut body, path, edit);
            }
            serde_json::to_vec(&body).expect("JSON")
        })
}

#[test]
fn arbitrary_bytes_to_mutate() {
    fuzz("bytes", Endpoint::Mutate, bytes(Endpoint::Mutate));
}

#[test]
fn arbitrary_bytes_to_filter() {
    fuzz("bytes", Endpoint::Filter, bytes(Endpoint::Filter));
}

#[test]
fn arbitrary_bytes_to_prioritize() {
    fuzz("bytes", Endpoint::Prioritize, bytes(Endpoint::Prioritize));
}

#[test]
fn arbitrary_json_to_mutate() {
    fuzz("json", Endpoint::Mutate, arbitrary_json(Endpoint::Mutate));
}

#[test]
fn arbitrary_json_to_filter() {
    fuzz("json", Endpoint::Filter, arbitrary_json(Endpoint::Filter));
}

#[test]
fn arbitrary_json_to_prioritize() {
    fuzz(
        "json",
        Endpoint::Prioritize,
        arbitrary_json(Endpoint::Prioritize),
    );
}

#[test]
fn mutated_reviews_to_mutate() {
    fuzz("mutated", Endpoint::Mutate, mutated(Endpoint::Mutate));
}

#[test]
fn mutated_args_to_filter() {
    fuzz("mutated", Endpoint::Filter, mutated(Endpoint::Filter));
}

#[test]
fn mutated_args_to_prioritize() {
    fuzz(
        "mutated",
        Endpoint::Prioritize,
        mutated(Endpoint::Prioritize),
    );
}

/// What the fuzz found answered that should have been refused: a struct written as a
/// JSON array of its fields, which serde's derives read in order.
#[test]
fn structs_written_as_arrays_are_refused() {
    let review = &reviews()[0];
    let request = &review["request"];
    let request_fields = json!([
        request["uid"],
        request["kind"],
        null,
        "n",
        "shop",
        "CREATE",
        request["object"]
    ]);
    let args = &extender_args()[0];
    let cases = [
        (
            Endpoint::Mutate,
            json!(["admission.k8s.io/v1", "AdmissionReview", request]),
        ),
        (
            Endpoint::Mutate,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request_fields}),
        ),
        (
            Endpoint::Filter,
            json!([args["Pod"], null, args["NodeNames"]]),
        ),
        (
            Endpoint::Prioritize,
            json!({"Pod": args["Pod"], "Nodes": [null, null, null, []]}),
        ),
    ];
    for (endpoint, body) in cases {
        let body = body.to_string().into_bytes();
        let (status, answer) = call(endpoint, &body);
        assert_eq!(status, 400, "{}: {}", endpoint.path(), excerpt(&answer));
    }
    // A pod whose metadata, spec, container or resources are arrays is no Pod: admitted
    // unchanged with a warning, never patched at paths it does not have.
    let pod = &request["object"];
    let mut shapes = Vec::new();
    for (pointer, fields) in [
        ("/metadata", json!(["linode-web", "shop"])),
        ("/spec", json!([null, [], []])),
        ("/spec/containers/0", json!(["web", [], [], null, false])),
        ("/spec/containers/0/resources", json!([null, null])),
    ] {
        let mut p = pod.clone();
        *p.pointer_mut(pointer).expect(pointer) = fields;
        shapes.push(p);
    }
    for p in shapes {
        let body = common::create_review(&p, "shop").to_string().into_bytes();
        let (status, answer) = call(Endpoint::Mutate, &body);
        let Ok(Answer::Review(r)) = answers::check(Endpoint::Mutate, &body, status, &answer) else {
            panic!("not a review: {}", excerpt(&answer))
        };
        assert!(r.get("patch").is_none(), "{r}");
        assert!(common::first_warning(&r).contains("not a valid Pod"), "{r}");
    }
}

/// The mutations do what they say, so that the fuzz explores what it claims to.
#[test]
fn edits_change_the_node_they_target() {
    let base = json!({"a": [1, {"b": "x"}], "c": null});
    let at = |p: &[Seg], e: Edit| {
        let mut v = base.clone();
        apply(&mut v, p, e);
        v
    };
    let b = [Seg::Key("a".into()), Seg::At(1), Seg::Key("b".into())];
    assert_eq!(at(&b, Edit::Delete), json!({"a": [1, {}], "c": null}));
    assert_eq!(at(&b[..2], Edit::Delete), json!({"a": [1], "c": null}));
    assert_eq!(
        at(&b[..2], Edit::Duplicate),
        json!({"a": [1, {"b": "x"}, {"b": "x"}], "c": null})
    );
    assert_eq!(
        at(&b, Edit::Duplicate),
        json!({"a": [1, {"b": ["x", "x"]}], "c": null})
    );
    assert_eq!(
        at(&b, Edit::Retype),
        json!({"a": [1, {"b": -1}], "c": null})
    );
    assert_eq!(
        at(&b[..1], Edit::Retype),
        json!({"a": {"0": 1, "1": {"b": "x"}}, "c": null})
    );
    assert_eq!(at(&[], Edit::Delete), Value::Null);
    let tweak = || Edit::Tweak("t".into(), json!(-1), "k".into());
    assert_eq!(at(&b, tweak()), json!({"a": [1, {"b": "t"}], "c": null}));
    assert_eq!(
        at(&b[..2], tweak()),
        json!({"a": [1, {"b": "x", "k": "t"}], "c": null})
    );
    assert_eq!(at(&b[..1], tweak()), json!({"a": [{"b": "x"}], "c": null}));
    assert_eq!(
        at(&[Seg::Key("a".into()), Seg::At(0)], tweak()),
        json!({"a": [-1, {"b": "x"}], "c": null})
    );
    assert_eq!(
        at(&b, Edit::Insert("k".into(), json!(2))),
        json!({"a": [1, {"b": {"k": 2, "was": "x"}}], "c": null})
    );
    let mut all = Vec::new();
    paths(&base, &mut Vec::new(), &mut all);
    assert_eq!(all.len(), 6, "root, a, a/0, a/1, a/1/b, c");
}
