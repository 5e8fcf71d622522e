//! Hostile and extreme inputs for the webhook over real TLS: deep nesting, huge pods,
//! odd names, duplicates, claims on foreign drivers. Each gets a correct answer or a
//! one-line 400, and the server keeps serving.

mod common;

use common::{TestServer, create_review, patch_of, response_of};
use hyper::StatusCode;
use serde_json::{Value, json};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

async fn admit(server: &TestServer, pod: &Value) -> (Value, Value) {
    let (status, body) = server
        .post("/mutate", create_review(pod, "shop").to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let response = response_of(&body, UID);
    let mut patched = pod.clone();
    if let Some(p) = patch_of(&response) {
        json_patch::patch(&mut patched, &p).expect("patch applies");
    }
    (response, patched)
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_a_crash() {
    let server = TestServer::example().await;
    let depth = 100_000;
    let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let pod = read_doc_pod();
    let with = |pointer: &str| {
        let mut review = create_review(&pod, "shop");
        *review.pointer_mut(pointer).expect("pointer") = "NEST".into();
        review.to_string().replace("\"NEST\"", &nest)
    };

    // Where the review's own fields should be: a one-line 400.
    let (status, body) = server.post("/mutate", with("/request/kind")).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");

    // Inside the pod: the object is not a Pod; admitted unchanged with a warning.
    let (status, body) = server.post("/mutate", with("/request/object/spec")).await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none());
    assert!(
        common::first_warning(&response).contains("not a valid Pod"),
        "{response}"
    );

    // In a field volguard does not read: skipped without recursion, and the pod is mutated.
    let (status, body) = server.post("/mutate", with("/request/userInfo")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(patch_of(&response_of(&body, UID)).is_some());
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK);
}

fn read_doc_pod() -> Value {
    common::read_doc("examples/pods/linode-web.yaml")
}

#[tokio::test]
async fn ten_thousand_containers_each_get_a_probe() {
    let server = TestServer::with_marker().await;
    let containers: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("c{i}"), "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}))
        .collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wide", "namespace": "shop"},
        "spec": {"containers": containers, "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}]}});
    let (response, patched) = admit(&server, &pod).await;
    assert_eq!(response["allowed"], true);
    let cs = patched["spec"]["containers"].as_array().unwrap();
    assert!(
        cs.iter()
            .all(|c| c["livenessProbe"]["exec"]["command"][2] == "ls '/data' >/dev/null")
    );
    assert_eq!(cs[0]["resources"]["limits"]["volguard.io/volumes"], "1");
    assert!(
        cs[1].get("resources").is_none(),
        "the marker goes to containers[0] only"
    );
}

#[tokio::test]
async fn ten_thousand_device_volumes_are_each_claimed_once() {
    let server = TestServer::example().await;
    let volumes: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("v{i}"), "flexVolume": {"driver": "brightbox/volume", "options": {"volumeID": format!("vol-{i:05}")}}}))
        .collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "many", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "busybox"}], "volumes": volumes}});
    let (_, patched) = admit(&server, &pod).await;
    let limits = patched["spec"]["containers"][0]["resources"]["limits"]
        .as_object()
        .unwrap();
    assert_eq!(limits.len(), 10_000, "10,000 device resources");
    assert_eq!(limits["volumes.brightbox.com/vol-09999"], "1");
}

#[tokio::test]
async fn unicode_slashes_and_tildes_in_names_and_keys_round_trip() {
    let server = TestServer::example().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ünï", "namespace": "shop", "annotations": {"a~1b/c~0": "x", "volguard.io/devices": "brightbox=vol-ü~/x,brightbox=vol-qsk4v"}},
        "spec": {"containers": [{"name": "a/b~c", "image": "busybox",
                                  "volumeMounts": [{"name": "d~/ä", "mountPath": "/mnt/it's ~/ünï"}]}],
                 "volumes": [{"name": "d~/ä", "persistentVolumeClaim": {"claimName": "web-data"}}]}});
    let (response, patched) = admit(&server, &pod).await;
    assert_eq!(
        patched["metadata"]["annotations"]["a~1b/c~0"], "x",
        "untouched"
    );
    let cmd = patched["spec"]["containers"][0]["livenessProbe"]["exec"]["command"][2]
        .as_str()
        .unwrap();
    assert!(cmd.contains(r"'/mnt/it'\''s ~/ünï'"), "{cmd}");
    assert_eq!(
        patched["spec"]["containers"][0]["resources"]["limits"]["volumes.brightbox.com/vol-qsk4v"],
        "1"
    );
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains("vol-ü~/x"),
        "a volume id with '/' is refused with a warning: {warnings}"
    );
}

#[tokio::test]
async fn duplicate_volume_names_and_claims_are_counted_once() {
    let server = TestServer::with_marker().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dup", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "busybox", "volumeMounts": [
                    {"name": "d", "mountPath": "/one"}, {"name": "e", "mountPath": "/two"}]}],
                 "volumes": [
                    {"name": "d", "persistentVolumeClaim": {"claimName": "media"}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "media"}},
                    {"name": "e", "persistentVolumeClaim": {"claimName": "media"}}]}});
    let (_, patched) = admit(&server, &pod).await;
    let limits = &patched["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["volguard.io/volumes"], "1");
    assert_eq!(limits["volumes.brightbox.com/vol-qsk4v"], "1");
    assert_eq!(
        patched["metadata"]["annotations"]["volguard.io/volumes"],
        "brightbox=vol-qsk4v"
    );
}

#[tokio::test]
async fn claim_bound_to_a_foreign_driver_is_not_managed() {
    let config = common::example_config();
    let mut state = common::example_state(&config);
    for doc in [
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-nfs"},
               "spec": {"accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Gi"},
                        "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "share"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "nfs", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "pv-nfs", "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        state.apply(&volguard::cluster::ClusterObject::from_value(doc).unwrap());
    }
    let server = TestServer::start(config, state).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nfs-user", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "busybox", "volumeMounts": [{"name": "n", "mountPath": "/n"}]}],
                 "volumes": [{"name": "n", "persistentVolumeClaim": {"claimName": "nfs"}}]}});
    let (response, patched) = admit(&server, &pod).await;
    assert!(patch_of(&response).is_none(), "{response}");
    assert!(response.get("warnings").is_none());
    assert_eq!(patched, pod);
}
