//! Property tests of the webhook handler: for generated pods the patch always applies,
//! the result is a valid Pod, a second pass is empty, existing probes and resource
//! entries survive, and no input panics or breaks the handler: not random bytes, which
//! rarely get past the first JSON character, nor valid AdmissionReview envelopes whose
//! insides are mangled (wrong types, missing fields, huge numbers, deep nesting, Unicode).

mod common;

use std::sync::{
    LazyLock,
    atomic::{AtomicU64, Ordering},
};

use axum::{body::Body, http::Request};
use common::answers::{self, Answer, Endpoint};
use http_body_util::BodyExt;
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{RngSeed, TestCaseError, TestRunner},
};
use serde_json::{Value, json};
use tower::ServiceExt;
use volguard::server::{app::App, router};

/// The example cluster, loaded once for all cases: the handler never writes to it.
static APP: LazyLock<App> = LazyLock::new(common::example_app);

fn app() -> App {
    APP.clone()
}

/// Calls the real router in-process (no TLS: the transport is covered by tests/webhook.rs).
fn call(app: &App, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let req = Request::post("/mutate").body(Body::from(body)).unwrap();
        let resp = router::router(app.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    })
}

fn volume() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"persistentVolumeClaim": {"claimName": "web-data"}})),
        Just(json!({"persistentVolumeClaim": {"claimName": "data-db-0"}})),
        Just(json!({"persistentVolumeClaim": {"claimName": "scratch"}})),
        Just(json!({"persistentVolumeClaim": {"claimName": "media"}})),
        Just(json!({"persistentVolumeClaim": {"claimName": "shared-cache"}})),
        Just(
            json!({"flexVolume": {"driver": "brightbox/volume", "options": {"volumeID": "vol-x9y8z"}}})
        ),
        Just(json!({"flexVolume": {"driver": "brightbox/volume"}})),
        Just(json!({"flexVolume": {"driver": "other/driver", "options": {"volumeID": "x"}}})),
        Just(json!({"emptyDir": {}})),
        Just(json!({"ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "linode-block-storage",
            "resources": {"requests": {"storage": "1Gi"}}}}}})),
    ]
}

fn resources() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!({}))),
        Just(Some(json!({"limits": {"cpu": "1"}}))),
        Just(Some(json!({"requests": {"volguard.io/volumes": "1"}}))),
        Just(Some(
            json!({"limits": {"volumes.brightbox.com/vol-qsk4v": "1", "memory": "1Gi"}})
        )),
    ]
}

fn annotations() -> impl Strategy<Value = Option<Value>> {
    let devices = prop_oneof![
        Just("brightbox=vol-qsk4v"),
        Just("brightbox=vol-qsk4v,brightbox=vol-x9y8z"),
        Just("brightbox=vol-qsk4v,brightbox=vol-qsk4v"),
        Just("acme=vol-1,=,,brightbox"),
        Just(""),
    ];
    (
        proptest::option::of(devices),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(devices, present, no_probe, strange_key, opt_out)| {
            if !present {
                return None;
            }
            let mut a = serde_json::Map::new();
            if let Some(d) = devices {
                a.insert("volguard.io/devices".into(), d.into());
            }
            if no_probe {
                a.insert("volguard.io/liveness-probe".into(), "false".into());
            }
            if strange_key {
                a.insert("example.com/a~b/c".into(), "ünïcödé ~ /".into());
            }
            if opt_out {
                a.insert("volguard.io/inject".into(), "false".into());
            }
            Some(Value::Object(a))
        })
}

/// A pod with 1-3 app containers, 0-1 init containers, 0-4 volumes mounted at random.
fn pod() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(volume(), 0..5),
        prop::collection::vec(
            (
                resources(),
                any::<bool>(),
                prop::collection::vec(any::<bool>(), 5),
                any::<bool>(),
            ),
            1..4,
        ),
        any::<bool>(),
        annotations(),
    )
        .prop_map(|(vols, containers, init, annotations)| {
            let volumes: Vec<Value> = vols
                .into_iter()
                .enumerate()
                .map(|(i, mut v)| {
                    v["name"] = format!("v{i}").into();
                    v
                })
                .collect();
            let mount = |c: usize, uses: &[bool], block: bool| -> (Vec<Value>, Vec<Value>) {
                let mut mounts = Vec::new();
                let mut devices = Vec::new();
                for (i, v) in volumes.iter().enumerate() {
                    if uses.get(i).copied().unwrap_or(false) {
                        let name = v["name"].clone();
                        if block && i == 0 {
                            devices
                                .push(json!({"name": name, "devicePath": format!("/dev/xvd{c}")}));
                        } else {
                            mounts.push(
                                json!({"name": name, "mountPath": format!("/mnt/{c}/it's {i}")}),
                            );
                        }
                    }
                }
                (mounts, devices)
            };
            let mut cs = Vec::new();
            for (c, (res, probe, uses, block)) in containers.iter().enumerate() {
                let (mounts, devices) = mount(c, uses, *block);
                let mut container = json!({"name": format!("c{c}"), "image": "busybox"});
                if !mounts.is_empty() {
                    container["volumeMounts"] = mounts.into();
                }
                if !devices.is_empty() {
                    container["volumeDevices"] = devices.into();
                }
                if let Some(r) = res {
                    container["resources"] = r.clone();
                }
                if *probe {
                    container["livenessProbe"] = json!({"httpGet": {"path": "/", "port": 80}});
                }
                cs.push(container);
            }
            let mut spec = json!({"containers": cs});
            if !volumes.is_empty() {
                spec["volumes"] = volumes.clone().into();
            }
            if init {
                let (mounts, _) = mount(9, &[true; 5], false);
                spec["initContainers"] =
                    json!([{"name": "init", "image": "busybox", "volumeMounts": mounts}]);
            }
            let mut metadata = json!({"name": "gen", "namespace": "shop"});
            if let Some(a) = annotations {
                metadata["annotations"] = a;
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

fn review(pod: &Value) -> Vec<u8> {
    common::create_review(pod, "shop").to_string().into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn patches_apply_and_converge(pod in pod()) {
        let app = app();
        let (status, body) = call(&app, review(&pod));
        prop_assert_eq!(status, StatusCode::OK);
        let response = common::response_of(&body, "705ab4f5-6393-11e8-b7cc-42010a800002");
        prop_assert_eq!(&response["allowed"], &json!(true));
        let mut patched = pod.clone();
        if let Some(patch) = common::patch_of(&response) {
            json_patch::patch(&mut patched, &patch).expect("patch applies");
            let mut twice = patched.clone();
            json_patch::patch(&mut twice, &patch).expect("patch applies twice");
            prop_assert_eq!(&twice, &patched);
        }
        let typed: Pod = serde_json::from_value(patched.clone()).expect("result is a valid Pod");
        let before: Pod = serde_json::from_value(pod.clone()).unwrap();
        let (b, a) = (before.spec.unwrap(), typed.spec.unwrap());
        for (old, new) in b.containers.iter().zip(&a.containers) {
            if old.liveness_probe.is_some() {
                prop_assert_eq!(&old.liveness_probe, &new.liveness_probe, "existing probe kept");
            }
            for (k, v) in old.resources.iter().flat_map(|r| r.limits.iter().flatten()) {
                prop_assert_eq!(Some(v), new.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get(k)));
            }
        }
        for init in a.init_containers.iter().flatten() {
            prop_assert!(init.liveness_probe.is_none(), "init containers are never probed");
        }
        let (_, body) = call(&app, review(&patched));
        let second = common::response_of(&body, "705ab4f5-6393-11e8-b7cc-42010a800002");
        prop_assert!(common::patch_of(&second).is_none(), "second pass is empty: {}", second);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_handler(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, _) = call(&app(), body);
        prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::OK, "{status}");
    }
}

// ---- valid envelopes, mangled inside ----

/// Values written out as JSON text, so that numbers beyond any Rust type and nesting
/// beyond serde_json's own limit can be sent: wrong types for any field, huge and odd
/// numbers, deep nesting, and Unicode (NUL, RTL override, astral, lone surrogates).
fn nasty() -> impl Strategy<Value = String> {
    const FIXED: &[&str] = &[
        "null",
        "true",
        "0",
        "-1",
        "\"\"",
        "\"x\"",
        "[]",
        "{}",
        "[1,\"a\",null,{}]",
        "{\"a\":{\"b\":[]}}",
        "1e400",
        "-1e400",
        "1.7976931348623157e308",
        "5e-324",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890123456789012345678901234567890",
        "0.1e1",
        "-0",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\ud83e\\udd80\"",
        "\"\u{202e}gnp.exe\"",
        "\"ünïcødé/~0~1\"",
        "\"🦀🔥\"",
        "\"CREATE\"",
        "\"Pod\"",
    ];
    prop_oneof![
        4 => prop::sample::select(FIXED).prop_map(str::to_owned),
        1 => prop::sample::select(&[2usize, 127, 128, 129, 1_000, 100_000][..])
            .prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        1 => prop::sample::select(&[2usize, 128, 129, 5_000][..])
            .prop_map(|d| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d))),
        1 => "\\PC{0,24}".prop_map(|s| Value::String(s).to_string()),
        1 => "[1-9][0-9]{19,300}",
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (1usize..=200_000).prop_map(|n| Value::String("ü".repeat(n)).to_string()),
    ]
}

/// One change at one node inside the review's `request`.
#[derive(Debug, Clone)]
enum Edit {
    /// The node becomes the value.
    Replace(String),
    /// The node is removed from its object or array.
    Delete,
    /// An object gains a key with the value (other nodes are replaced by it).
    AddKey(String, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => nasty().prop_map(Edit::Replace),
        2 => Just(Edit::Delete),
        1 => ("[a-zA-Z/~ü]{0,12}", nasty()).prop_map(|(k, v)| Edit::AddKey(k, v)),
    ]
}

/// Every node at or below `/request`, as JSON pointers.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A placeholder string replaced by raw JSON text once the review is written out.
fn splice(n: usize) -> String {
    format!("\u{1}volguard-splice-{n}\u{1}")
}

/// The review with `edits` applied at the chosen nodes, as the bytes sent.
fn mangle(mut review: Value, edits: &[(Index, Edit)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (n, (at, edit)) in edits.iter().enumerate() {
        let mut all = Vec::new();
        pointers(&review["request"], "/request".into(), &mut all);
        let target = at.get(&all).clone();
        match edit {
            Edit::Delete => {
                let (parent, last) = target.rsplit_once('/').expect("below /request");
                match review.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            Edit::Replace(text) | Edit::AddKey(_, text) => {
                // A request deleted by an earlier edit: nothing left to change.
                let Some(node) = review.pointer_mut(&target) else {
                    continue;
                };
                match (edit, node) {
                    (Edit::AddKey(key, _), Value::Object(map)) => {
                        map.insert(key.clone(), splice(n).into());
                    }
                    (_, node) => *node = splice(n).into(),
                }
                raw.push((n, text.clone()));
            }
        }
    }
    let mut text = review.to_string();
    for (n, value) in raw {
        let placeholder = Value::String(splice(n)).to_string();
        text = text.replacen(&placeholder, &value, 1);
    }
    text.into_bytes()
}

/// Reviews the API server sends: the fixture, and reviews of generated pods.
fn envelope() -> impl Strategy<Value = Value> {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo(
            "tests/fixtures/admissionreview-create-pod.json",
        ))
        .expect("fixture"),
    )
    .expect("fixture JSON");
    prop_oneof![
        1 => Just(fixture),
        3 => pod().prop_map(|p| common::create_review(&p, "shop")),
    ]
}

/// The request's uid when the body cannot be read as a `Value` (the oracle's way: it
/// nests deeper than serde_json's limit, or holds a number beyond f64), while the fields
/// around that still can (volguard's way: the object is kept raw, and skipped fields are
/// skipped without recursion or conversion).
fn unreadable_as_value(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Sent {
        request: Uid,
    }
    #[derive(serde::Deserialize)]
    struct Uid {
        uid: String,
    }
    serde_json::from_slice::<Value>(body).err()?;
    serde_json::from_slice::<Sent>(body)
        .ok()
        .map(|sent| sent.request.uid)
}

/// A 200 to a review that cannot be read as a `Value`: the v1 envelope, the uid, allowed,
/// and a patch (if any) that is a base64 JSON array of operations.
fn deep_review(uid: &str, body: &[u8]) -> Result<Value, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON ({e})"))?;
    let response = answer["response"].clone();
    let well_formed = answer["apiVersion"] == "admission.k8s.io/v1"
        && answer["kind"] == "AdmissionReview"
        && response["uid"] == uid;
    if !well_formed {
        return Err(format!("not a review answering uid {uid:?}: {answer}"));
    }
    if let Some(patch) = response.get("patch") {
        use base64::Engine;
        let bytes = patch
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .ok_or_else(|| format!("patch is not base64: {response}"))?;
        serde_json::from_slice::<json_patch::Patch>(&bytes)
            .map_err(|e| format!("patch is not a JSONPatch ({e}): {response}"))?;
    }
    Ok(response)
}

/// The lines a 400 from /mutate starts with: each names what is wrong with the body.
const REFUSALS: [&str; 3] = [
    "not an AdmissionReview: ",
    "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got ",
    "AdmissionReview has no request",
];

#[test]
fn reviews_mangled_inside_a_valid_envelope_get_a_review_or_a_clear_400() {
    let cases = std::env::var("VOLGUARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let config = ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(15),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let strategy = (
        envelope(),
        prop::collection::vec((any::<Index>(), edit()), 1..=3),
    )
        .prop_map(|(review, edits)| mangle(review, &edits));
    let (answered, refused, bad_pods) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let outcome = TestRunner::new(config).run(&strategy, |body| {
        let (status, answer) = call(&app(), body.clone());
        let excerpt = || {
            String::from_utf8_lossy(&body)
                .chars()
                .take(1_000)
                .collect::<String>()
        };
        let checked = match unreadable_as_value(&body) {
            Some(uid) if status == StatusCode::OK => deep_review(&uid, &answer).map(Answer::Review),
            _ => answers::check(Endpoint::Mutate, &body, status.as_u16(), &answer),
        };
        match checked {
            Err(e) => Err(TestCaseError::fail(format!("{e}\nrequest: {}", excerpt()))),
            Ok(Answer::Refused(code, line)) => {
                prop_assert_eq!(code, 400, "{}", line);
                prop_assert!(
                    REFUSALS.iter().any(|r| line.starts_with(r)) && !line.ends_with(": "),
                    "an unclear 400: {:?}\nrequest: {}",
                    line,
                    excerpt()
                );
                refused.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Answer::Review(response)) => {
                prop_assert_eq!(&response["allowed"], &json!(true), "{}", response);
                answered.fetch_add(1, Ordering::Relaxed);
                let warning = response["warnings"][0].as_str().unwrap_or_default();
                if warning.contains("the object is not a valid Pod: ") {
                    bad_pods.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(_) => unreachable!("a /mutate answer"),
        }
    });
    let (answered, refused, bad_pods) = (
        answered.into_inner(),
        refused.into_inner(),
        bad_pods.into_inner(),
    );
    println!(
        "mangled reviews: {cases} cases, {answered} answered ({bad_pods} of them admitted \
         unchanged as not a valid Pod), {refused} refused"
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Every outcome must stay common, well under what the fixed seed gives (87% answered,
    // 13% refused, 26% not a valid Pod): the edits must leave reviews to decide on, reach
    // the review's typed fields, and reach the pod decoder.
    let cases = u64::from(cases);
    assert!(answered >= cases / 2, "only {answered} of {cases} answered");
    assert!(refused >= cases / 20, "only {refused} of {cases} refused");
    assert!(
        bad_pods >= cases / 50,
        "only {bad_pods} of {cases} reached the pod decoder and failed there"
    );
}
