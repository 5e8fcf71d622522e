//! Property tests of the webhook handler: for generated pods the patch always applies,
//! the result is a valid Pod, a second pass is empty, existing probes and resource
//! entries survive, and no input panics or breaks the handler.

mod common;

use std::sync::LazyLock;

use axum::{body::Body, http::Request};
use http_body_util::BodyExt;
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
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

    #[test]
    fn mangled_reviews_get_an_answer_or_a_400(pod in pod(), path in 0usize..6, junk in prop_oneof![
        Just(json!(null)), Just(json!(7)), Just(json!("x")), Just(json!([])), Just(json!({})), Just(json!({"a": [1, {"b": null}]}))
    ]) {
        let mut r = common::create_review(&pod, "shop");
        let target = ["/request/object/spec", "/request/object/metadata", "/request/kind", "/request/object/spec/containers", "/request/object", "/request"][path];
        if let Some(slot) = r.pointer_mut(target) {
            *slot = junk;
        }
        let (status, body) = call(&app(), r.to_string().into_bytes());
        prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::OK, "{status}");
        if status == StatusCode::OK {
            let v: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(&v["kind"], &json!("AdmissionReview"));
            prop_assert_eq!(&v["response"]["allowed"], &json!(true));
        }
    }
}
