//! The remediation controller's API calls, through kube's tower-test mock: the pod is
//! read afresh, the Eviction request names it by uid, a 429 is an Event and a retry
//! (never a delete), and a dry run records the Event without evicting.

mod common;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use hyper::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};
use volguard::{
    cluster::{ClusterObject, ClusterState, Kind},
    model::config::Config,
    server::{metrics::Metrics, remediation::Remediator},
};

const DETACHED: &str = "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2";

fn state(config: &Config) -> ClusterState {
    let mut state = common::empty_state(config);
    let node = |name: &str, count: &str| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": {"volumes.brightbox.com/vol-a": count},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    };
    for object in [node("worker-1", "0"), node("worker-2", "1"), pod_json()] {
        state.apply(&ClusterObject::from_value(object).unwrap());
    }
    for kind in Kind::ALL {
        state.mark_synced(kind);
    }
    state
}

fn pod_json() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0",
            "resourceVersion": "42",
            "annotations": {"volguard.io/devices": "brightbox=vol-a"}},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}})
}

fn remediator(
    config_text: &str,
) -> (
    Remediator,
    Handle<Request<Body>, Response<Body>>,
    Arc<Metrics>,
) {
    let config = Config::parse(config_text).unwrap();
    let cluster = Arc::new(RwLock::new(state(&config)));
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = Arc::new(Metrics::new());
    let r = Remediator::new(
        client,
        cluster,
        Arc::new(config),
        metrics.clone(),
        "volguard-0_1".into(),
    );
    (r, handle, metrics)
}

/// Answers the next request with `status` and `body`; returns the method, path and
/// the JSON the controller sent.
async fn answer(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    status: u16,
    body: Value,
) -> (String, String, Value) {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    (method, path, sent)
}

fn event_fields(event: &Value) -> Value {
    json!({
        "namespace": event["metadata"]["namespace"],
        "generateName": event["metadata"]["generateName"],
        "involvedObject": event["involvedObject"],
        "reason": event["reason"],
        "message": event["message"],
        "type": event["type"],
        "action": event["action"],
        "source": event["source"],
        "reportingComponent": event["reportingComponent"],
        "reportingInstance": event["reportingInstance"],
        "count": event["count"],
    })
}

fn expected_event(type_: &str, message: &str) -> Value {
    json!({
        "namespace": "shop",
        "generateName": "web-0.",
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-0",
            "namespace": "shop", "uid": "uid-web-0", "resourceVersion": "42"},
        "reason": "VolumeDetached",
        "message": message,
        "type": type_,
        "action": if type_ == "Normal" { "DryRun" } else { "Evict" },
        "source": {"component": "volguard"},
        "reportingComponent": "volguard",
        "reportingInstance": "volguard-0_1",
        "count": 1,
    })
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})
}

const CONFIG: &str = "remediation: {enabled: true, gracePeriodSeconds: 5}";

#[tokio::test]
async fn a_due_pod_is_evicted_by_uid_and_the_event_says_where_its_volume_is() {
    let (mut r, mut handle, metrics) = remediator(CONFIG);
    let before = r.round(Duration::from_secs(0)).await;
    assert_eq!(before.waiting.len(), 1);
    let api = tokio::spawn(async move {
        let get = answer(&mut handle, 200, pod_json()).await;
        let evict = answer(&mut handle, 201, success()).await;
        let event = answer(
            &mut handle,
            201,
            json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": "web-0.1"}}),
        )
        .await;
        (get, evict, event)
    });
    let plan = r.round(Duration::from_secs(5)).await;
    assert_eq!(plan.evict.len(), 1);
    let (get, evict, event) = api.await.unwrap();
    assert_eq!(
        (get.0.as_str(), get.1.as_str()),
        ("GET", "/api/v1/namespaces/shop/pods/web-0")
    );
    assert_eq!(
        (evict.0.as_str(), evict.1.as_str()),
        ("POST", "/api/v1/namespaces/shop/pods/web-0/eviction")
    );
    assert_eq!(evict.2["apiVersion"], "policy/v1");
    assert_eq!(evict.2["kind"], "Eviction");
    assert_eq!(
        evict.2["metadata"],
        json!({"name": "web-0", "namespace": "shop"})
    );
    assert_eq!(
        evict.2["deleteOptions"]["preconditions"],
        json!({"uid": "uid-web-0"})
    );
    assert_eq!(
        (event.0.as_str(), event.1.as_str()),
        ("POST", "/api/v1/namespaces/shop/events")
    );
    assert_eq!(
        event_fields(&event.2),
        expected_event("Warning", &format!("Evicted: {DETACHED}"))
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("volguard_remediation_evictions_total{outcome=\"evicted\"} 1\n"),
        "{text}"
    );
    // Done: the next rounds make no call (the mock would hang on one).
    let later = r.round(Duration::from_secs(100)).await;
    assert!(later.evict.is_empty());
}

#[tokio::test]
async fn a_refused_eviction_is_an_event_and_is_tried_again_never_forced() {
    let (mut r, mut handle, metrics) = remediator(CONFIG);
    r.round(Duration::from_secs(0)).await;
    let refusal = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests", "code": 429,
        "details": {"causes": [{"reason": "DisruptionBudget",
            "message": "The disruption budget web needs 1 healthy pods and has 1 currently"}]}});
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, pod_json()).await;
        let evict = answer(&mut handle, 429, refusal).await;
        let event = answer(
            &mut handle,
            201,
            json!({"kind": "Event", "apiVersion": "v1", "metadata": {}}),
        )
        .await;
        (evict, event, handle)
    });
    r.round(Duration::from_secs(5)).await;
    let (evict, event, mut handle) = api.await.unwrap();
    assert_eq!(evict.1, "/api/v1/namespaces/shop/pods/web-0/eviction");
    assert_eq!(
        event_fields(&event.2),
        expected_event(
            "Warning",
            &format!(
                "Eviction refused (Cannot evict pod as it would violate the pod's disruption budget), tried again in 30s: {DETACHED}"
            )
        )
    );
    assert!(
        metrics
            .encode()
            .unwrap()
            .contains("volguard_remediation_evictions_total{outcome=\"refused\"} 1\n")
    );
    // Within 30 s: no call. At 30 s: the eviction again, never a DELETE of the pod.
    assert!(r.round(Duration::from_secs(34)).await.evict.is_empty());
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, pod_json()).await;
        let evict = answer(&mut handle, 201, success()).await;
        answer(
            &mut handle,
            201,
            json!({"kind": "Event", "apiVersion": "v1", "metadata": {}}),
        )
        .await;
        evict
    });
    assert_eq!(r.round(Duration::from_secs(35)).await.evict.len(), 1);
    let again = api.await.unwrap();
    assert_eq!(
        (again.0.as_str(), again.1.as_str()),
        ("POST", "/api/v1/namespaces/shop/pods/web-0/eviction")
    );
}

#[tokio::test]
async fn a_dry_run_records_the_event_and_the_metric_and_evicts_nothing() {
    let (mut r, mut handle, metrics) =
        remediator("remediation: {enabled: true, gracePeriodSeconds: 5, dryRun: true}");
    r.round(Duration::from_secs(0)).await;
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, pod_json()).await;
        let event = answer(
            &mut handle,
            201,
            json!({"kind": "Event", "apiVersion": "v1", "metadata": {}}),
        )
        .await;
        (event, handle)
    });
    r.round(Duration::from_secs(5)).await;
    let (event, _handle) = api.await.unwrap();
    assert_eq!(event.1, "/api/v1/namespaces/shop/events");
    assert_eq!(
        event_fields(&event.2),
        expected_event("Normal", &format!("Dry run, not evicted: {DETACHED}"))
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("volguard_remediation_evictions_total{outcome=\"dry_run\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("outcome=\"evicted\""), "{text}");
    // Recorded once: later rounds make no call.
    assert!(r.round(Duration::from_secs(60)).await.evict.is_empty());
}

#[tokio::test]
async fn a_pod_being_deleted_by_now_is_left_alone() {
    let (mut r, mut handle, metrics) = remediator(CONFIG);
    r.round(Duration::from_secs(0)).await;
    let mut going = pod_json();
    going["metadata"]["deletionTimestamp"] = json!("2026-12-04T16:00:00Z");
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, going).await;
        handle
    });
    r.round(Duration::from_secs(5)).await;
    let _handle = api.await.unwrap();
    let text = metrics.encode().unwrap();
    assert!(
        !text.contains("volguard_remediation_evictions_total{"),
        "{text}"
    );
}
