//! The mutating webhook driven over real TLS with AdmissionReview JSON as kube-apiserver
//! sends it; returned patches are applied and the resulting Pod is checked.

mod common;

use common::{TestServer, create_review, patch_of, read_doc, response_of};
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// Sends a pod through the webhook, applies the patch, and checks that a second pass
/// over the result is empty. Returns the patched pod and the first response.
async fn admit_twice(server: &TestServer, pod: &Value, namespace: &str) -> (Pod, Value) {
    let (status, body) = server
        .post("/mutate", create_review(pod, namespace).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true, "{response}");
    let mut patched = pod.clone();
    if let Some(patch) = patch_of(&response) {
        json_patch::patch(&mut patched, &patch).expect("patch applies");
        let mut twice = patched.clone();
        json_patch::patch(&mut twice, &patch).expect("patch applies twice");
        assert_eq!(twice, patched, "applying the patch twice changes nothing");
    }
    let (_, body) = server
        .post("/mutate", create_review(&patched, namespace).to_string())
        .await;
    let second = response_of(&body, UID);
    assert!(
        patch_of(&second).is_none(),
        "second pass must not patch: {second}"
    );
    let pod: Pod = serde_json::from_value(patched).expect("result is a valid Pod");
    (pod, response)
}

fn limits(pod: &Pod, container: usize) -> std::collections::BTreeMap<String, String> {
    pod.spec.as_ref().unwrap().containers[container]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn probe_command(pod: &Pod, container: usize) -> Option<Vec<String>> {
    let c = &pod.spec.as_ref().unwrap().containers[container];
    c.liveness_probe.as_ref()?.exec.as_ref()?.command.clone()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn apiserver_fixture_gets_probe_annotations_and_the_second_scheduler() {
    let server = TestServer::example().await;
    let review = read_doc("tests/fixtures/admissionreview-create-pod.json");
    let uid = review["request"]["uid"].as_str().unwrap().to_owned();
    let (status, body) = server.post("/mutate", review.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body, &uid);
    assert_eq!(response["allowed"], true);
    let patch = patch_of(&response).expect("a patch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("patch applies to the apiserver's object");
    let pod: Pod = serde_json::from_value(pod).expect("valid Pod");

    assert!(
        limits(&pod, 0).is_empty(),
        "linode is attach mode, and the shipped config injects no marker"
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("volguard-scheduler"),
        "routed from default-scheduler"
    );
    let cmd = probe_command(&pod, 0).expect("web gets a probe");
    assert_eq!(cmd, ["/bin/sh", "-c", "ls '/srv/data' >/dev/null"]);
    let probe = pod.spec.as_ref().unwrap().containers[0]
        .liveness_probe
        .clone()
        .unwrap();
    assert_eq!(probe.period_seconds, Some(10));
    assert_eq!(probe.timeout_seconds, Some(5));
    assert!(
        probe_command(&pod, 1).is_none(),
        "sidecar mounts no managed volume"
    );
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("linode=310200-pvcweb")
    );
    assert!(
        annotation(&pod, "volguard.io/mutated")
            .unwrap()
            .contains("liveness probes on web")
    );
}

#[tokio::test]
async fn seed_000_device_annotation_injects_resource_and_device_probe() {
    let server = TestServer::example().await;
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    let (pod, _) = admit_twice(&server, &pod, "default").await;
    let l = limits(&pod, 0);
    assert_eq!(
        l.get("volumes.brightbox.com/vol-qsk4v").map(String::as_str),
        Some("1")
    );
    assert_eq!(l.len(), 1, "the device only: no marker by default: {l:?}");
    let cmd = probe_command(&pod, 0).unwrap();
    assert_eq!(cmd[2], "ls '/dev/disk/by-id/virtio-vol-qsk4v' >/dev/null");
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("brightbox=vol-qsk4v")
    );
}

#[tokio::test]
async fn a_marker_resource_is_injected_only_when_configured() {
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    let (shipped, _) = admit_twice(&TestServer::example().await, &pod, "default").await;
    assert_eq!(
        limits(&shipped, 0),
        [("volumes.brightbox.com/vol-qsk4v".to_owned(), "1".to_owned())].into()
    );
    assert_eq!(
        annotation(&shipped, "volguard.io/mutated").as_deref(),
        Some(
            "limits volumes.brightbox.com/vol-qsk4v=1 (app); liveness probes on app; \
             scheduler volguard-scheduler"
        )
    );
    let (marked, _) = admit_twice(&TestServer::with_marker().await, &pod, "default").await;
    assert_eq!(
        limits(&marked, 0),
        [
            ("volguard.io/volumes".to_owned(), "1".to_owned()),
            ("volumes.brightbox.com/vol-qsk4v".to_owned(), "1".to_owned())
        ]
        .into()
    );
    assert_eq!(
        annotation(&marked, "volguard.io/mutated").as_deref(),
        Some(
            "limits volumes.brightbox.com/vol-qsk4v=1 (app), volguard.io/volumes=1 (app); \
             liveness probes on app"
        )
    );
}

#[tokio::test]
async fn inline_flex_volume_goes_to_the_mounting_container_not_init() {
    let server = TestServer::example().await;
    let pod = read_doc("examples/pods/flex-inline.yaml");
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    let spec = pod.spec.as_ref().unwrap();
    let mounting = spec
        .containers
        .iter()
        .position(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/data")
        })
        .expect("an app container mounts /data");
    assert_eq!(
        limits(&pod, mounting)
            .get("volumes.brightbox.com/vol-x9y8z")
            .map(String::as_str),
        Some("1")
    );
    let claims = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("volumes.brightbox.com/vol-x9y8z"))
        })
        .count();
    assert_eq!(claims, 1, "exactly one container claims the device");
    for init in spec.init_containers.iter().flatten() {
        assert!(
            init.liveness_probe.is_none(),
            "init containers are never probed"
        );
    }
    assert!(probe_command(&pod, mounting).unwrap()[2].contains("'/data'"));
}

#[tokio::test]
async fn unbound_wait_for_first_consumer_claim_is_managed_without_a_handle() {
    let server = TestServer::example().await;
    let pod = read_doc("examples/pods/wffc-scratch.yaml");
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert!(probe_command(&pod, 0).unwrap()[2].contains("'/scratch'"));
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("linode=pending:scratch")
    );
}

#[tokio::test]
async fn opt_out_and_unmanaged_pods_are_left_alone() {
    let server = TestServer::example().await;
    for (file, ns) in [
        ("examples/pods/opt-out.yaml", "shop"),
        ("examples/pods/no-volumes.yaml", "default"),
    ] {
        let pod = read_doc(file);
        let (_, body) = server
            .post("/mutate", create_review(&pod, ns).to_string())
            .await;
        let response = response_of(&body, UID);
        assert_eq!(response["allowed"], true, "{file}");
        assert!(patch_of(&response).is_none(), "{file} must not be patched");
        assert!(response.get("warnings").is_none(), "{file}: {response}");
    }
}

/// The seed-000 pod with a sidecar in front of `app`.
fn device_pod_with_sidecar_first() -> Value {
    let mut pod = read_doc("examples/pods/seed-000-device.yaml");
    let containers = pod["spec"]["containers"].as_array_mut().unwrap();
    containers.insert(
        0,
        serde_json::json!({"name": "sidecar", "image": "busybox"}),
    );
    pod
}

#[tokio::test]
async fn an_annotated_device_is_probed_in_the_container_that_holds_it() {
    let server = TestServer::example().await;
    const DEVICE: &str = "volumes.brightbox.com/vol-qsk4v";
    let probe = "ls '/dev/disk/by-id/virtio-vol-qsk4v' >/dev/null";

    // app already requests the device: the device plugin passes it to app only.
    let mut held = device_pod_with_sidecar_first();
    held["spec"]["containers"][1]["resources"] = serde_json::json!({"limits": {DEVICE: "1"}});
    let (pod, _) = admit_twice(&server, &held, "shop").await;
    assert_eq!(
        probe_command(&pod, 0),
        None,
        "sidecar cannot see the device"
    );
    assert_eq!(probe_command(&pod, 1).unwrap()[2], probe);
    assert!(limits(&pod, 0).is_empty(), "{:?}", limits(&pod, 0));
    assert_eq!(
        annotation(&pod, "volguard.io/mutated").as_deref(),
        Some("liveness probes on app; scheduler volguard-scheduler")
    );

    // Named by the annotation: limit and probe together in app.
    let mut named = device_pod_with_sidecar_first();
    named["metadata"]["annotations"]["volguard.io/devices-container"] = "app".into();
    let (pod, response) = admit_twice(&server, &named, "shop").await;
    assert_eq!(response.get("warnings"), None, "{response}");
    assert_eq!(probe_command(&pod, 0), None);
    assert_eq!(probe_command(&pod, 1).unwrap()[2], probe);
    assert!(limits(&pod, 0).is_empty());
    assert_eq!(
        limits(&pod, 1),
        [(DEVICE.to_owned(), "1".to_owned())].into()
    );

    // Neither: containers[0], as before; a name the pod lacks is a warning.
    let mut unknown = device_pod_with_sidecar_first();
    unknown["metadata"]["annotations"]["volguard.io/devices-container"] = "web".into();
    let (pod, response) = admit_twice(&server, &unknown, "shop").await;
    assert_eq!(
        common::first_warning(&response),
        "volguard: volguard.io/devices-container: the pod has no container \"web\", so its \
         devices went to \"sidecar\", its first container"
    );
    assert_eq!(probe_command(&pod, 0).unwrap()[2], probe);
    assert_eq!(
        limits(&pod, 0),
        [(DEVICE.to_owned(), "1".to_owned())].into()
    );
    assert_eq!(probe_command(&pod, 1), None);

    // Claimed by an init container only: no app container sees it, none is probed.
    let mut init = device_pod_with_sidecar_first();
    init["spec"]["initContainers"] = serde_json::json!([{"name": "format", "image": "busybox", "resources": {"limits": {DEVICE: "1"}}}]);
    let (pod, _) = admit_twice(&server, &init, "shop").await;
    assert_eq!(
        (probe_command(&pod, 0), probe_command(&pod, 1)),
        (None, None)
    );
    assert!(limits(&pod, 0).is_empty() && limits(&pod, 1).is_empty());
}

#[tokio::test]
async fn existing_probe_is_kept_and_resources_still_injected() {
    let server = TestServer::with_marker().await;
    let original = read_doc("examples/pods/existing-probe.yaml");
    let before: Pod = serde_json::from_value(original.clone()).unwrap();
    let (pod, _) = admit_twice(&server, &original, "shop").await;
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.containers[0].liveness_probe,
        before.spec.as_ref().unwrap().containers[0].liveness_probe
    );
    assert_eq!(
        limits(&pod, 0)
            .get("volguard.io/volumes")
            .map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn liveness_probe_annotation_false_injects_resources_only() {
    let server = TestServer::example().await;
    // Every opt-out is read alike: "false" in any case, spaces around it ignored.
    for value in ["false", " False "] {
        let mut pod = read_doc("examples/pods/seed-000-device.yaml");
        pod["metadata"]["annotations"]["volguard.io/liveness-probe"] = value.into();
        let (pod, _) = admit_twice(&server, &pod, "default").await;
        assert!(probe_command(&pod, 0).is_none(), "{value:?}");
        assert!(limits(&pod, 0).contains_key("volumes.brightbox.com/vol-qsk4v"));
    }
}

#[tokio::test]
async fn existing_resource_entries_are_never_overwritten_or_duplicated() {
    let server = TestServer::example().await;
    let mut pod = read_doc("examples/pods/seed-000-device.yaml");
    pod["spec"]["containers"][0]["resources"] = serde_json::json!({
        "limits": {"volumes.brightbox.com/vol-qsk4v": "1", "volguard.io/volumes": "7"}
    });
    let (pod, _) = admit_twice(&server, &pod, "default").await;
    let l = limits(&pod, 0);
    assert_eq!(l.get("volguard.io/volumes").map(String::as_str), Some("7"));
    assert_eq!(
        l.get("volumes.brightbox.com/vol-qsk4v").map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn keys_with_slashes_are_escaped_in_patch_paths() {
    let server = TestServer::with_marker().await;
    let mut pod = read_doc("examples/pods/linode-web.yaml");
    pod["metadata"]["annotations"] = serde_json::json!({"team": "shop"});
    pod["spec"]["containers"][0]["resources"] = serde_json::json!({"limits": {"cpu": "1"}});
    let (status, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let patch = patch_of(&response_of(&body, UID)).expect("patch");
    let paths: Vec<String> = serde_json::to_value(&patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_owned())
        .collect();
    for path in [
        "/spec/containers/0/resources/limits/volguard.io~1volumes",
        "/metadata/annotations/volguard.io~1volumes",
        "/metadata/annotations/volguard.io~1mutated",
    ] {
        assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
    }
}

#[tokio::test]
async fn annotation_keys_with_slashes_and_missing_parents_are_escaped() {
    let server = TestServer::with_marker().await;
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "shop"},
        "spec": {
            "containers": [{"name": "a", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "web-data"}}]
        }
    });
    let (status, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body, UID);
    let patch = patch_of(&response).expect("patch");
    let text = serde_json::to_string(&patch).unwrap();
    assert!(
        text.contains("volguard.io~1volumes") || text.contains("\"/metadata/annotations\""),
        "{text}"
    );
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(
        patched["spec"]["containers"][0]["resources"]["limits"]["volguard.io/volumes"],
        "1"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["volguard.io/volumes"],
        "linode=310200-pvcweb"
    );
    assert!(
        patched["spec"]["containers"][0]
            .get("livenessProbe")
            .is_none(),
        "a container that mounts nothing gets no probe"
    );
}

#[tokio::test]
async fn missing_claim_allows_unchanged_with_a_warning() {
    let server = TestServer::example().await;
    let mut pod = read_doc("examples/pods/linode-web.yaml");
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "no-such-claim".into();
    let (status, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none());
    let warning = common::first_warning(&response);
    assert!(
        warning.contains("PersistentVolumeClaim shop/no-such-claim not found"),
        "{warning}"
    );
}

/// The example config with `onError: deny`.
fn deny_config() -> volguard::model::config::Config {
    let mut config = common::example_config();
    config.on_error = volguard::model::config::OnError::Deny;
    config
}

#[tokio::test]
async fn missing_claim_is_denied_when_on_error_is_deny() {
    let config = deny_config();
    let state = common::example_state(&config);
    let server = TestServer::start(config, state).await;
    let mut pod = read_doc("examples/pods/linode-web.yaml");
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "no-such-claim".into();
    let (_, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-claim")
    );
}

/// Once a writer has panicked while holding the cluster state (the lock is poisoned),
/// `onError: deny` refuses pods with claims, which need the state, and still decides
/// every other pod from its spec: a device pod gets its limit, a pod without volumes
/// is admitted.
#[tokio::test]
async fn a_poisoned_state_with_on_error_deny_refuses_only_pods_with_claims() {
    let config = deny_config();
    let state = common::example_state(&config);
    let server = TestServer::start(config, state).await;
    common::poison(&server.app.cluster);

    let claims = read_doc("examples/pods/linode-web.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&claims, "shop").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "volguard could not check this pod's volumes: cluster state is unavailable"
    );

    let device = read_doc("examples/pods/seed-000-device.yaml");
    let (pod, _) = admit_twice(&server, &device, "default").await;
    assert_eq!(
        limits(&pod, 0)
            .get("volumes.brightbox.com/vol-qsk4v")
            .map(String::as_str),
        Some("1")
    );
    let plain = read_doc("examples/pods/no-volumes.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&plain, "default").to_string())
        .await;
    assert_eq!(response_of(&body, UID)["allowed"], true);
}

#[tokio::test]
async fn unsynced_state_allows_with_a_warning() {
    let config = common::example_config();
    let state = common::empty_state(&config);
    let server = TestServer::start(config, state).await;
    let pod = read_doc("examples/pods/linode-web.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true);
    assert!(common::first_warning(&response).contains("not synced"));
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("not synced"));
}

#[tokio::test]
async fn a_pod_without_claims_is_decided_from_its_spec_whatever_the_cache_says() {
    let config = deny_config();
    let state = common::empty_state(&config);
    let server = TestServer::start(config, state).await;
    // No volume at all: allowed unchanged, not a word about the cache.
    let plain = read_doc("examples/pods/no-volumes.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&plain, "default").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(patch_of(&response).is_none(), "{response}");
    assert_eq!(response.get("warnings"), None, "{response}");
    // An annotated device needs no cluster object: patched as with a synced cache.
    let device = read_doc("examples/pods/seed-000-device.yaml");
    let (pod, response) = admit_twice(&server, &device, "default").await;
    assert_eq!(response.get("warnings"), None, "{response}");
    assert_eq!(
        limits(&pod, 0),
        [("volumes.brightbox.com/vol-qsk4v".to_owned(), "1".to_owned())].into()
    );
    // A claim needs the cache: denied, and the answer says why.
    let claim = read_doc("examples/pods/linode-web.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&claim, "shop").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        response["status"]["message"].as_str().unwrap().starts_with(
            "volguard could not check this pod's volumes: cluster state not synced yet: "
        ),
        "{response}"
    );
}

#[tokio::test]
async fn a_stale_cache_is_named_in_warnings_without_the_api_servers_address() {
    let config = common::example_config();
    let mut state = common::example_state(&config);
    let readiness = state.readiness_mut();
    readiness.set_stale_after(std::time::Duration::ZERO);
    let since = std::time::Instant::now()
        .checked_sub(std::time::Duration::from_secs(42))
        .expect("the clock has run for 42 s");
    readiness.watch_failed(
        volguard::cluster::Kind::Pod,
        "cannot list: ServiceError: client error (Connect): invalid peer certificate: \
         certificate not valid for name \"10.96.0.1\""
            .into(),
        since,
    );
    let server = TestServer::start(config, state).await;
    let pod = read_doc("examples/pods/linode-web.yaml");
    let (_, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(
        response["warnings"],
        serde_json::json!([
            "volguard: pod admitted unchanged: cluster state is stale: Pod watch failing for 42s \
             (the cause is in volguard's log)"
        ])
    );
    // The operator's readiness probe keeps the cause.
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("10.96.0.1"));
}

#[tokio::test]
async fn bad_device_entries_warn_but_good_ones_are_injected() {
    let server = TestServer::example().await;
    let mut pod = read_doc("examples/pods/seed-000-device.yaml");
    pod["metadata"]["annotations"]["volguard.io/devices"] =
        "brightbox=vol-qsk4v,acme=vol-1,garbage".into();
    let (_, body) = server
        .post("/mutate", create_review(&pod, "default").to_string())
        .await;
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true);
    let warnings = response["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("unknown driver \"acme\""))
    );
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch_of(&response).unwrap()).unwrap();
    assert_eq!(
        patched["spec"]["containers"][0]["resources"]["limits"]["volumes.brightbox.com/vol-qsk4v"],
        "1"
    );
}

#[tokio::test]
async fn update_and_non_pod_requests_are_allowed_unchanged() {
    let server = TestServer::example().await;
    for fixture in [
        "tests/fixtures/admissionreview-update-pod.json",
        "tests/fixtures/admissionreview-configmap.json",
    ] {
        let review = read_doc(fixture);
        let uid = review["request"]["uid"].as_str().unwrap().to_owned();
        let (status, body) = server.post("/mutate", review.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{fixture}");
        let response = response_of(&body, &uid);
        assert_eq!(response["allowed"], true, "{fixture}");
        assert!(patch_of(&response).is_none(), "{fixture}");
    }
}

#[tokio::test]
async fn bad_input_gets_one_line_400_or_413_and_the_server_keeps_serving() {
    let server = TestServer::example().await;
    let mut wrong_version = read_doc("tests/fixtures/admissionreview-create-pod.json");
    wrong_version["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut no_request = wrong_version.clone();
    no_request["apiVersion"] = "admission.k8s.io/v1".into();
    no_request.as_object_mut().unwrap().remove("request");
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "empty body"),
        (
            "malformed",
            b"{\"kind\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        (
            "array",
            b"[1,2,3]".to_vec(),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        (
            "wrong version",
            wrong_version.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "admission.k8s.io/v1",
        ),
        (
            "no request",
            no_request.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            "no request",
        ),
        (
            "20 MB",
            vec![b' '; 20 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (name, body, want, says) in cases {
        let (status, body) = server.post("/mutate", body).await;
        assert_eq!(status, want, "{name}: {}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(says), "{name}: {text}");
        assert!(
            text.trim_end().lines().count() <= 1,
            "{name}: one line, got {text:?}"
        );
    }
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "still serving");
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    let (status, _) = server
        .post("/mutate", create_review(&pod, "default").to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "still answering reviews");
}

fn scheduler(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.scheduler_name.as_deref()
}

#[tokio::test]
async fn managed_pods_are_routed_to_the_configured_scheduler() {
    let server = TestServer::example().await;
    let seed = read_doc("examples/pods/seed-000-device.yaml");
    for written in [None, Some("default-scheduler")] {
        let mut pod = seed.clone();
        if let Some(name) = written {
            pod["spec"]["schedulerName"] = name.into();
        }
        // admit_twice also proves a second pass adds nothing.
        let (pod, response) = admit_twice(&server, &pod, "default").await;
        assert_eq!(scheduler(&pod), Some("volguard-scheduler"), "{written:?}");
        assert_eq!(response.get("warnings"), None, "{response}");
        assert_eq!(
            annotation(&pod, "volguard.io/mutated").as_deref(),
            Some(
                "limits volumes.brightbox.com/vol-qsk4v=1 (app); liveness probes on app; \
                 scheduler volguard-scheduler"
            )
        );
    }
}

#[tokio::test]
async fn a_pod_naming_another_scheduler_is_left_there_with_a_warning() {
    let server = TestServer::example().await;
    let mut pod = read_doc("examples/pods/seed-000-device.yaml");
    pod["spec"]["schedulerName"] = "gpu-scheduler".into();
    let (pod, response) = admit_twice(&server, &pod, "default").await;
    assert_eq!(scheduler(&pod), Some("gpu-scheduler"));
    assert_eq!(
        common::first_warning(&response),
        "volguard: the pod names scheduler \"gpu-scheduler\", so \"volguard-scheduler\" will not \
         schedule it and volguard's extender will not check its nodes"
    );
    assert!(
        limits(&pod, 0).contains_key("volumes.brightbox.com/vol-qsk4v"),
        "the volume is still injected"
    );
}

#[tokio::test]
async fn routing_skips_opted_out_and_unmanaged_pods() {
    let server = TestServer::example().await;
    let mut opted_out = read_doc("examples/pods/seed-000-device.yaml");
    opted_out["metadata"]["annotations"]["volguard.io/route"] = "false".into();
    let (pod, _) = admit_twice(&server, &opted_out, "default").await;
    assert_eq!(scheduler(&pod), None);
    assert!(
        !annotation(&pod, "volguard.io/mutated")
            .unwrap()
            .contains("scheduler"),
    );

    let plain = read_doc("examples/pods/no-volumes.yaml");
    let (pod, response) = admit_twice(&server, &plain, "default").await;
    assert_eq!(scheduler(&pod), None);
    assert_eq!(patch_of(&response), None, "no managed volume: left alone");
}

#[tokio::test]
async fn a_handle_that_makes_an_invalid_resource_name_is_not_injected() {
    let server = TestServer::example().await;
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cloud-path", "namespace": "shop"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox",
                "volumeMounts": [{"name": "disk", "mountPath": "/disk"}]}],
            "volumes": [{"name": "disk", "csi": {"driver": "csi.brightbox.com",
                "volumeAttributes": {"volumeID": "projects/p/disks/d"}}}],
        },
    });
    let (pod, response) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        common::first_warning(&response),
        "volguard: volume projects/p/disks/d of driver brightbox: \
         \"volumes.brightbox.com/projects/p/disks/d\" is not a valid resource name \
         (it has more than one '/'), so no limit was injected for it \
         and no node can advertise it: the pod cannot use the volume until its handle or \
         the driver's resourceTemplate makes a valid name"
    );
    let limits = limits(&pod, 0);
    assert!(
        limits.keys().all(|k| k == "volguard.io/volumes"),
        "only the marker: {limits:?}"
    );
    assert!(
        probe_command(&pod, 0).is_some(),
        "the mount is still probed"
    );
}

#[tokio::test]
async fn an_annotated_device_without_a_valid_resource_name_gets_no_probe() {
    let server = TestServer::example().await;
    let mut pod = read_doc("examples/pods/seed-000-device.yaml");
    pod["metadata"]["annotations"]["volguard.io/devices"] = "brightbox=vol-qsk4v_".into();
    let (pod, response) = admit_twice(&server, &pod, "default").await;
    assert_eq!(
        common::first_warning(&response),
        "volguard: volume vol-qsk4v_ of driver brightbox: \
         \"volumes.brightbox.com/vol-qsk4v_\" is not a valid resource name \
         (\"vol-qsk4v_\" must be letters, digits, '-', '_' or '.', starting and ending \
         with a letter or digit), so no limit was injected for it \
         and no node can advertise it: the pod cannot use the volume until its handle or \
         the driver's resourceTemplate makes a valid name"
    );
    assert!(limits(&pod, 0).is_empty(), "{:?}", limits(&pod, 0));
    assert_eq!(
        probe_command(&pod, 0),
        None,
        "the device plugin passes no device without its limit: its probe would fail forever"
    );
}

/// A generic ephemeral volume's claim `<pod>-<volume>` is the pod's only when the pod
/// controls it. On a CREATE the pod has no uid yet, so a claim of that name is one a
/// pod deleted under the same name left behind: its volume is not this pod's, and a
/// limit on it would keep the pod Pending for good.
#[tokio::test]
async fn an_ephemeral_claim_left_by_a_pod_of_the_same_name_is_not_resolved() {
    let server = TestServer::example().await;
    let [pv, mut claim] = pv_and_claim(
        "pv-scratch",
        "web-0-scratch",
        "",
        serde_json::json!({"csi": {"driver": "csi.brightbox.com", "volumeHandle": "vol-old1"}}),
    );
    claim["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "v1",
        "kind": "Pod", "name": "web-0", "uid": "uid-of-the-old-pod", "controller": true}]);
    apply_object(&server, pv);
    apply_object(&server, claim);
    let pod = |uid: Option<&str>| {
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {
                "containers": [{"name": "app", "image": "busybox",
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}}}],
            },
        });
        if let Some(uid) = uid {
            pod["metadata"]["uid"] = uid.into();
        }
        pod
    };
    const OLD: &str = "volumes.brightbox.com/vol-old1";

    let (created, _) = admit_twice(&server, &pod(None), "shop").await;
    assert!(
        !limits(&created, 0).contains_key(OLD),
        "{:?}",
        limits(&created, 0)
    );

    let (other, _) = admit_twice(&server, &pod(Some("uid-of-a-new-pod")), "shop").await;
    assert!(
        !limits(&other, 0).contains_key(OLD),
        "{:?}",
        limits(&other, 0)
    );

    // The pod that controls the claim: its volume.
    let (owner, _) = admit_twice(&server, &pod(Some("uid-of-the-old-pod")), "shop").await;
    assert_eq!(limits(&owner, 0).get(OLD).map(String::as_str), Some("1"));
}

// ---- drivers selected by StorageClass or source kind (local, NFS, hostPath PVs) ----

/// A server over the local-PV example snapshot with `config` (YAML).
async fn local_server(config: &str) -> TestServer {
    let config = volguard::model::config::Config::parse(config).expect("a valid config");
    let snap = volguard::sources::snapshot::load(&common::repo("examples/local-cluster"))
        .expect("examples/local-cluster loads");
    let state = volguard::sources::snapshot::into_state(&snap, common::empty_state(&config));
    TestServer::start(config, state).await
}

fn apply_object(server: &TestServer, object: Value) {
    let object = volguard::cluster::ClusterObject::from_value(object).expect("valid object");
    server.app.cluster.write().unwrap().apply(&object);
}

/// A bound PV `name` with `source` (and `class`), and its claim `shop/<claim>`.
fn pv_and_claim(name: &str, claim: &str, class: &str, source: Value) -> [Value; 2] {
    let mut spec = serde_json::json!({"accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": "1Gi"}, "storageClassName": class,
        "claimRef": {"namespace": "shop", "name": claim}});
    spec.as_object_mut()
        .unwrap()
        .extend(source.as_object().unwrap().clone());
    [
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name}, "spec": spec}),
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": "shop"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": name,
                     "storageClassName": class, "resources": {"requests": {"storage": "1Gi"}}}}),
    ]
}

/// A pod in `shop` whose container `app` mounts each claim at `/mnt/<claim>`.
fn claims_pod(claims: &[&str]) -> Value {
    let volumes: Vec<Value> = claims
        .iter()
        .map(|c| serde_json::json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let mounts: Vec<Value> = claims
        .iter()
        .map(|c| serde_json::json!({"name": c, "mountPath": format!("/mnt/{c}")}))
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-0", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts}],
                 "volumes": volumes}})
}

#[tokio::test]
async fn local_cache_example_gets_probes_and_annotations_but_no_resources() {
    let config = std::fs::read_to_string(common::repo("examples/local-config.yaml")).unwrap();
    let server = local_server(&config).await;
    let pod = read_doc("examples/pods/local-cache.yaml");
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        probe_command(&pod, 0).unwrap(),
        [
            "/bin/sh",
            "-c",
            "ls '/var/cache/app' >/dev/null && ls '/srv/media' >/dev/null"
        ]
    );
    assert!(limits(&pod, 0).is_empty(), "no resourceTemplate, no marker");
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("local=local-pv-bb1049dc,nfs=nfs.internal.example:/exports/media")
    );
    assert_eq!(
        annotation(&pod, "volguard.io/mutated").as_deref(),
        Some("liveness probes on cache; scheduler volguard-scheduler")
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("volguard-scheduler")
    );
}

#[tokio::test]
async fn local_nfs_and_host_path_pvs_selected_by_kind_are_known_by_name_or_export() {
    let server = local_server(
        "markerResource: \"\"\ndrivers:\n  - {name: disks, sourceKinds: [local, hostPath]}\n  - {name: nfs, sourceKinds: [nfs]}\n",
    )
    .await;
    for object in pv_and_claim(
        "host-logs",
        "logs",
        "",
        serde_json::json!({"hostPath": {"path": "/var/log/app"}}),
    ) {
        apply_object(&server, object);
    }
    let pod = claims_pod(&["cache-data", "media", "logs"]);
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("disks=local-pv-bb1049dc,nfs=nfs.internal.example:/exports/media,disks=host-logs")
    );
    assert_eq!(
        probe_command(&pod, 0).unwrap()[2],
        "ls '/mnt/cache-data' >/dev/null && ls '/mnt/media' >/dev/null && ls '/mnt/logs' >/dev/null"
    );
    assert!(limits(&pod, 0).is_empty());
    assert_eq!(
        annotation(&pod, "volguard.io/mutated").as_deref(),
        Some("liveness probes on app")
    );
}

#[tokio::test]
async fn nfs_and_host_path_pvs_selected_by_class_get_the_marker_when_one_is_set() {
    // A markerResource is injected with the count of managed volumes, as for any driver.
    let server = local_server(
        "markerResource: volguard.io/volumes\ndrivers:\n  - {name: shared, storageClasses: [nfs-shared, node-dirs]}\n",
    )
    .await;
    let [pv, pvc] = pv_and_claim(
        "nfs-home",
        "home",
        "nfs-shared",
        serde_json::json!({"nfs": {"server": "10.0.0.5", "path": "/exports/home"}}),
    );
    apply_object(&server, pv);
    apply_object(&server, pvc);
    let [pv, pvc] = pv_and_claim(
        "dirs-1",
        "dirs",
        "node-dirs",
        serde_json::json!({"hostPath": {"path": "/srv/dirs"}}),
    );
    apply_object(&server, pv);
    apply_object(&server, pvc);
    // media is an NFS PV without a class: not selected by this config.
    let pod = claims_pod(&["home", "dirs", "media"]);
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("shared=10.0.0.5:/exports/home,shared=dirs-1")
    );
    assert_eq!(
        limits(&pod, 0),
        [("volguard.io/volumes".to_owned(), "2".to_owned())].into()
    );
    assert_eq!(
        probe_command(&pod, 0).unwrap()[2],
        "ls '/mnt/home' >/dev/null && ls '/mnt/dirs' >/dev/null"
    );
    assert_eq!(
        annotation(&pod, "volguard.io/mutated").as_deref(),
        Some("limits volguard.io/volumes=2 (app); liveness probes on app")
    );
}

#[tokio::test]
async fn an_unbound_claim_of_a_selected_class_is_pending_with_a_probe_on_its_mount() {
    let server = local_server(
        "markerResource: \"\"\ndrivers:\n  - {name: local, storageClasses: [local-storage]}\n",
    )
    .await;
    let pod = claims_pod(&["scratch-local"]);
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("local=pending:scratch-local")
    );
    assert_eq!(
        probe_command(&pod, 0).unwrap()[2],
        "ls '/mnt/scratch-local' >/dev/null"
    );
    // Selected by kind, an unbound claim cannot be told apart: it has no PV yet.
    let server =
        local_server("markerResource: \"\"\ndrivers:\n  - {name: local, sourceKinds: [local]}\n")
            .await;
    let pod = claims_pod(&["scratch-local"]);
    let (status, body) = server
        .post("/mutate", create_review(&pod, "shop").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(patch_of(&response_of(&body, UID)).is_none());
}

#[tokio::test]
async fn a_resource_template_makes_a_selected_driver_a_device_plugin_driver() {
    let server = local_server(
        "markerResource: \"\"\ndrivers:\n  - {name: local, storageClasses: [local-storage], resourceTemplate: \"disks.example.com/{volumeHandle}\"}\n",
    )
    .await;
    let pod = claims_pod(&["cache-data"]);
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        limits(&pod, 0),
        [(
            "disks.example.com/local-pv-bb1049dc".to_owned(),
            "1".to_owned()
        )]
        .into()
    );
    assert_eq!(
        annotation(&pod, "volguard.io/mutated").as_deref(),
        Some("limits disks.example.com/local-pv-bb1049dc=1 (app); liveness probes on app")
    );
}

/// A watch holding the cluster state to write a batch makes a review wait; it waits on a
/// blocking thread, so the async worker that polled the handler is free at once for
/// every other request (`/readyz`, the extender, other reviews).
#[test]
fn a_review_waiting_for_the_cluster_state_leaves_its_async_worker_free() {
    use std::time::Duration;

    use axum::{body::Bytes, extract::State};
    use volguard::server::admission::endpoint::mutate;

    let app = common::example_app();
    let pod = read_doc("examples/pods/linode-web.yaml");
    let review = Bytes::from(create_review(&pod, "shop").to_string());
    let cluster = app.cluster.clone();
    let writer = cluster.write().unwrap();
    let common::PolledCall { polled, answered } =
        common::poll_on_own_thread(move || mutate(State(app), None, review));
    // Only a hang guard: a handler that blocks its worker never comes back from the poll.
    let pending = polled.recv_timeout(Duration::from_secs(30)).expect(
        "the /mutate handler blocked its async worker thread while a watch held the cluster state",
    );
    assert!(pending, "answered while the state was held for writing");
    drop(writer);
    let body = answered
        .recv_timeout(Duration::from_secs(30))
        .expect("answered once the writer is done");
    let response = response_of(&body, UID);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(patch_of(&response).is_some(), "{response}");
}

/// A pod in `shop` mounting claim `claim` at /data.
fn claim_pod(name: &str, claim: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"containers": [{"name": "db", "image": "busybox",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// A StatefulSet's claim for a static PV: the claim is created unbound, without a class,
/// with its pod, and the PV binder binds it a moment later to the PV whose claimRef names
/// it. The webhook resolves it to that PV's volume already.
#[tokio::test]
async fn an_unbound_claim_a_pv_reserves_is_that_volume() {
    let server = TestServer::example().await;
    apply_object(
        &server,
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-static-0"},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                "storageClassName": "",
                "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": "52000-static"},
                "claimRef": {"namespace": "shop", "name": "data-static-0"}}}),
    );
    apply_object(
        &server,
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-static-0", "namespace": "shop"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "resources": {"requests": {"storage": "10Gi"}}}}),
    );
    let pod = claim_pod("static-0", "data-static-0");
    let (pod, _) = admit_twice(&server, &pod, "shop").await;
    assert_eq!(
        annotation(&pod, "volguard.io/volumes").as_deref(),
        Some("linode=52000-static")
    );
}

/// A PV whose claimRef carries another claim's uid (a Released volume of a deleted
/// claim of the same name), or two PVs naming one claim: the binder binds neither for
/// sure, so the claim stays unresolved (no volume, no annotation) rather than guessed.
#[tokio::test]
async fn a_pv_reserved_for_another_claim_of_that_name_is_not_taken() {
    let server = TestServer::example().await;
    let pv = |name: &str, uid: Option<&str>, phase: &str| {
        let mut claim_ref = serde_json::json!({"namespace": "shop", "name": "data-static-1"});
        if let Some(uid) = uid {
            claim_ref["uid"] = uid.into();
        }
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                "storageClassName": "",
                "csi": {"driver": "linodebs.csi.linode.com", "volumeHandle": format!("h-{name}")},
                "claimRef": claim_ref},
            "status": {"phase": phase}})
    };
    apply_object(
        &server,
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-static-1", "namespace": "shop", "uid": "uid-new"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "resources": {"requests": {"storage": "10Gi"}}}}),
    );
    let pod = claim_pod("static-1", "data-static-1");
    let volumes = |pod: &Pod| annotation(pod, "volguard.io/volumes");

    apply_object(&server, pv("pv-old", Some("uid-old"), "Released"));
    assert_eq!(volumes(&admit_twice(&server, &pod, "shop").await.0), None);
    apply_object(&server, pv("pv-new", Some("uid-new"), "Available"));
    assert_eq!(
        volumes(&admit_twice(&server, &pod, "shop").await.0).as_deref(),
        Some("linode=h-pv-new")
    );
    apply_object(&server, pv("pv-other", None, "Available"));
    assert_eq!(
        volumes(&admit_twice(&server, &pod, "shop").await.0),
        None,
        "two PVs name the claim: which one the binder takes is not known"
    );
}
