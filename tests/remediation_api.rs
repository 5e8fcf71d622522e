//! The remediation controller's API calls, through kube's tower-test mock answered by a
//! small fake API server: the Lease is taken, renewed and timed by this process's
//! clock; the pod, its node and the evidence are read afresh before the Eviction, which
//! names the pod by uid; a 429 is an Event series and a retry (never a delete); a dry
//! run records the Event without evicting; a node whose device plugin looks down gets
//! an Event and its pods are left alone.

mod common;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;
use volguard::{
    cluster::{ClusterObject, ClusterState, Kind, SharedState},
    decide::remediate::{Plan, Skip},
    model::config::Config,
    server::{metrics::Metrics, remediation::Remediator},
};

const DETACHED: &str = "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2";

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/volguard-system/leases";

const CONFIG: &str = "remediation: {enabled: true, gracePeriodSeconds: 5}";

fn node_json(name: &str, devices: &[(&str, &str)]) -> Value {
    let allocatable: serde_json::Map<String, Value> = devices
        .iter()
        .map(|(v, n)| (format!("volumes.brightbox.com/{v}"), json!(n)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod_json() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0",
            "resourceVersion": "42",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": "web", "uid": "uid-web", "controller": true}],
            "annotations": {"volguard.io/devices": "brightbox=vol-a"}},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"}})
}

/// What the fake API server holds, answers and was asked.
#[derive(Default)]
struct Fake {
    lease: Option<Value>,
    /// Writes of the Lease fail with a 500 while set.
    lease_writes_fail: bool,
    /// Objects by path, e.g. `/api/v1/nodes/worker-1`.
    objects: BTreeMap<String, Value>,
    /// Answers to the next evictions; 201 when empty.
    evictions: VecDeque<(u16, Value)>,
    /// Every request but the Lease's: method, path, body.
    calls: Vec<(String, String, Value)>,
    /// The Lease writes: method and body.
    lease_writes: Vec<(String, Value)>,
    /// A slow API server: each read other than the Lease's moves this clock on by
    /// this many seconds.
    slow_reads: Option<(Arc<AtomicU64>, u64)>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "message": message, "code": code})
}

impl Fake {
    fn answer(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        if path.starts_with(LEASE) {
            return self.lease(method, body);
        }
        self.calls
            .push((method.to_owned(), path.to_owned(), body.clone()));
        if let (Some((clock, secs)), "GET") = (&self.slow_reads, method) {
            clock.fetch_add(*secs, Ordering::SeqCst);
        }
        match method {
            "GET" => match self.objects.get(path) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "NotFound", "not found")),
            },
            "POST" if path.ends_with("/eviction") => self.evictions.pop_front().unwrap_or((
                201,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
            )),
            "POST" | "PATCH" if path.contains("/events") => (201, body),
            _ => (404, status(404, "NotFound", "not found")),
        }
    }

    fn lease(&mut self, method: &str, mut body: Value) -> (u16, Value) {
        match method {
            "GET" => match &self.lease {
                Some(lease) => (200, lease.clone()),
                None => (404, status(404, "NotFound", "leases not found")),
            },
            _ if self.lease_writes_fail => (500, status(500, "InternalError", "etcd is away")),
            "POST" | "PUT" => {
                self.lease_writes.push((method.to_owned(), body.clone()));
                let version = self.lease_writes.len().to_string();
                body["metadata"]["resourceVersion"] = json!(version);
                self.lease = Some(body.clone());
                (if method == "POST" { 201 } else { 200 }, body)
            }
            _ => (405, status(405, "MethodNotAllowed", "no")),
        }
    }

    /// The calls since the last look, as `METHOD path`.
    fn take_calls(&mut self) -> Vec<(String, String, Value)> {
        std::mem::take(&mut self.calls)
    }
}

struct Harness {
    remediator: Remediator,
    fake: Arc<Mutex<Fake>>,
    cluster: SharedState,
    metrics: Arc<Metrics>,
    clock: Arc<AtomicU64>,
}

impl Harness {
    /// worker-1 lost vol-a, worker-2 has it; shop/web-0 on worker-1 uses it. The fake
    /// API server holds the same objects.
    fn new(config_text: &str) -> Harness {
        Harness::with(
            config_text,
            vec![
                node_json("worker-1", &[("vol-a", "0")]),
                node_json("worker-2", &[("vol-a", "1")]),
                pod_json(),
            ],
        )
    }

    fn with(config_text: &str, objects: Vec<Value>) -> Harness {
        let config = Config::parse(config_text).unwrap();
        let mut state: ClusterState = common::empty_state(&config);
        let mut fake = Fake::default();
        for object in objects {
            let path = match object["kind"].as_str() {
                Some("Pod") => format!(
                    "/api/v1/namespaces/{}/pods/{}",
                    object["metadata"]["namespace"].as_str().unwrap(),
                    object["metadata"]["name"].as_str().unwrap()
                ),
                Some("Node") => format!(
                    "/api/v1/nodes/{}",
                    object["metadata"]["name"].as_str().unwrap()
                ),
                _ => format!(
                    "/apis/storage.k8s.io/v1/volumeattachments/{}",
                    object["metadata"]["name"].as_str().unwrap()
                ),
            };
            state.apply(&ClusterObject::from_value(object.clone()).unwrap());
            fake.objects.insert(path, object);
        }
        for kind in Kind::ALL {
            state.mark_synced(kind);
        }
        let cluster = SharedState::new(state);
        let fake = Arc::new(Mutex::new(fake));
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (code, answer) = server.lock().unwrap().answer(&method, &path, body);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = kube::Client::new(service, "default");
        let metrics = Arc::new(Metrics::new());
        let clock = Arc::new(AtomicU64::new(0));
        let time = clock.clone();
        let remediator = Remediator::new(
            client,
            cluster.clone(),
            Arc::new(config),
            metrics.clone(),
            "volguard-0_1".into(),
        )
        .with_clock(Arc::new(move || {
            Duration::from_secs(time.load(Ordering::SeqCst))
        }));
        Harness {
            remediator,
            fake,
            cluster,
            metrics,
            clock,
        }
    }

    /// One tick at `secs` on the controller's clock.
    async fn at(&mut self, secs: u64) -> Plan {
        self.clock.store(secs, Ordering::SeqCst);
        self.remediator.tick().await
    }

    /// Ticks every second, as the controller does, up to `secs`; the last plan.
    async fn until(&mut self, secs: u64) -> Plan {
        let from = self.clock.load(Ordering::SeqCst) + 1;
        let mut last = None;
        for t in from..=secs {
            last = Some(self.at(t).await);
        }
        last.expect("a later time")
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.fake.lock().unwrap()
    }

    /// The calls since the last look, as `METHOD path`.
    fn calls(&self) -> Vec<String> {
        self.fake()
            .take_calls()
            .into_iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }

    fn metrics(&self) -> String {
        self.metrics.encode().unwrap()
    }
}

/// The fresh reads before an eviction of web-0: the pod, its node, the node that
/// holds the volume now.
const READS: [&str; 3] = [
    "GET /api/v1/namespaces/shop/pods/web-0",
    "GET /api/v1/nodes/worker-1",
    "GET /api/v1/nodes/worker-2",
];

fn with_reads(then: &[&str]) -> Vec<String> {
    READS.iter().chain(then).map(|s| s.to_string()).collect()
}

const EVICT: &str = "POST /api/v1/namespaces/shop/pods/web-0/eviction";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events";

fn event_fields(event: &Value) -> Value {
    json!({
        "regarding": event["regarding"],
        "reason": event["reason"],
        "note": event["note"],
        "type": event["type"],
        "action": event["action"],
        "reportingController": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
    })
}

fn expected_event(type_: &str, action: &str, note: &str) -> Value {
    json!({
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "web-0",
            "namespace": "shop", "uid": "uid-web-0"},
        "reason": "VolumeDetached",
        "note": note,
        "type": type_,
        "action": action,
        "reportingController": "volguard",
        "reportingInstance": "volguard-0_1",
    })
}

#[tokio::test]
async fn a_due_pod_is_read_again_then_evicted_by_uid_with_an_event_saying_where_its_volume_is() {
    let mut h = Harness::new(CONFIG);
    let before = h.at(0).await;
    assert_eq!(before.waiting.len(), 1);
    assert_eq!(h.calls(), Vec::<String>::new());
    {
        let fake = h.fake();
        assert_eq!(fake.lease_writes[0].0, "POST", "the Lease is created");
        assert_eq!(
            fake.lease_writes[0].1["spec"]["holderIdentity"],
            "volguard-0_1"
        );
    }
    let plan = h.until(5).await;
    assert_eq!(plan.evict.len(), 1);
    let calls = h.fake().take_calls();
    let names: Vec<String> = calls.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(names, with_reads(&[EVICT, EVENT]));
    let evict = &calls[3].2;
    assert_eq!(evict["apiVersion"], "policy/v1");
    assert_eq!(evict["kind"], "Eviction");
    assert_eq!(
        evict["metadata"],
        json!({"name": "web-0", "namespace": "shop"})
    );
    assert_eq!(
        evict["deleteOptions"]["preconditions"],
        json!({"uid": "uid-web-0"})
    );
    assert_eq!(
        event_fields(&calls[4].2),
        expected_event("Warning", "Evict", &format!("Evicted: {DETACHED}"))
    );
    let text = h.metrics();
    assert!(
        text.contains("volguard_remediation_evictions_total{outcome=\"evicted\"} 1\n"),
        "{text}"
    );
    // The eviction is written into the Lease at once, for the next holder.
    let starts =
        h.fake().lease.as_ref().unwrap()["metadata"]["annotations"]["volguard.io/recent-evictions"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(starts.split(',').count(), 1, "{starts}");
    // Done: the next rounds make no call but the Lease's.
    assert!(h.until(100).await.evict.is_empty());
    assert_eq!(h.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_eviction_is_one_event_series_and_is_tried_again_never_forced() {
    let mut h = Harness::new(CONFIG);
    h.at(0).await;
    let refusal = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests", "code": 429,
        "details": {"causes": [{"reason": "DisruptionBudget",
            "message": "The disruption budget web needs 1 healthy pods and has 1 currently"}]}});
    h.fake()
        .evictions
        .extend([(429, refusal.clone()), (429, refusal)]);
    h.at(5).await;
    let calls = h.fake().take_calls();
    let names: Vec<String> = calls.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(names, with_reads(&[EVICT, EVENT]));
    let refused = "Eviction refused (Cannot evict pod as it would violate the pod's disruption budget), tried again in 30s: ";
    assert_eq!(
        event_fields(&calls[4].2),
        expected_event("Warning", "EvictRefused", &format!("{refused}{DETACHED}"))
    );
    let first_event = calls[4].2["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(
        h.metrics()
            .contains("volguard_remediation_evictions_total{outcome=\"refused\"} 1\n")
    );
    // Within 30 s: no call. At 30 s: the eviction again, refused again: the same
    // Event's series counts 2, no new Event.
    assert!(h.until(34).await.evict.is_empty());
    assert_eq!(h.calls(), Vec::<String>::new());
    assert_eq!(h.at(35).await.evict.len(), 1);
    let calls = h.fake().take_calls();
    let names: Vec<String> = calls.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    let patch = format!("PATCH /apis/events.k8s.io/v1/namespaces/shop/events/{first_event}");
    assert_eq!(names, with_reads(&[EVICT, &patch]));
    assert_eq!(calls[4].2["series"]["count"], 2);
    // At 65 s it goes through: a new Event for the new cause, never a DELETE.
    assert_eq!(h.until(65).await.evict.len(), 1);
    let calls = h.fake().take_calls();
    let names: Vec<String> = calls.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(names, with_reads(&[EVICT, EVENT]));
    assert_eq!(calls[4].2["action"], "Evict");
}

#[tokio::test]
async fn a_dry_run_records_the_event_and_the_metric_and_evicts_nothing() {
    let mut h = Harness::new("remediation: {enabled: true, gracePeriodSeconds: 5, dryRun: true}");
    h.at(0).await;
    h.at(5).await;
    let calls = h.fake().take_calls();
    let names: Vec<String> = calls.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(names, with_reads(&[EVENT]));
    assert_eq!(
        event_fields(&calls[3].2),
        expected_event(
            "Normal",
            "DryRun",
            &format!("Dry run, not evicted: {DETACHED}")
        )
    );
    let text = h.metrics();
    assert!(
        text.contains("volguard_remediation_evictions_total{outcome=\"dry_run\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("outcome=\"evicted\""), "{text}");
    // Recorded once: later rounds make no call.
    assert!(h.until(60).await.evict.is_empty());
    assert_eq!(h.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn nothing_is_evicted_when_the_fresh_reads_disagree_with_the_cache() {
    let moved = {
        let mut p = pod_json();
        p["spec"]["nodeName"] = json!("worker-3");
        p
    };
    let successor = {
        let mut p = pod_json();
        p["metadata"]["uid"] = json!("uid-web-0-successor");
        p
    };
    let going = {
        let mut p = pod_json();
        p["metadata"]["deletionTimestamp"] = json!("2026-12-04T16:00:00Z");
        p
    };
    let cases = [
        ("/api/v1/namespaces/shop/pods/web-0", successor),
        ("/api/v1/namespaces/shop/pods/web-0", moved),
        ("/api/v1/namespaces/shop/pods/web-0", going),
        (
            "/api/v1/nodes/worker-1",
            node_json("worker-1", &[("vol-a", "1")]),
        ),
        (
            "/api/v1/nodes/worker-1",
            node_json("worker-1", &[("vol-a", "0"), ("vol-b", "0")]),
        ),
        (
            "/api/v1/nodes/worker-2",
            node_json("worker-2", &[("vol-a", "0")]),
        ),
    ];
    for (path, fresh) in cases {
        let mut h = Harness::new(CONFIG);
        h.at(0).await;
        h.fake().objects.insert(path.to_owned(), fresh.clone());
        h.at(5).await;
        let calls = h.calls();
        assert!(
            !calls.iter().any(|c| c == EVICT),
            "{path} {fresh}: {calls:?}"
        );
        assert!(!calls.iter().any(|c| c.contains("events")), "{calls:?}");
        let text = h.metrics();
        assert!(
            text.contains("volguard_remediation_evictions_total{outcome=\"cancelled\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("outcome=\"evicted\""), "{text}");
        // Looked at again 30 s later, not at every round.
        h.at(6).await;
        assert_eq!(h.calls(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_failing_watch_stops_the_evictions_at_once() {
    let mut h = Harness::new(CONFIG);
    h.at(0).await;
    h.cluster.write().unwrap().readiness_mut().watch_failed(
        Kind::Node,
        "connection reset".into(),
        Instant::now(),
    );
    let plan = h.at(5).await;
    assert_eq!(
        plan.halted.as_deref(),
        Some("Node watch failing (connection reset)")
    );
    assert_eq!(h.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_renewal_stops_acting_at_once() {
    let mut h = Harness::new(CONFIG);
    h.at(0).await;
    h.fake().lease_writes_fail = true;
    let plan = h.at(5).await;
    assert!(plan.evict.is_empty(), "{plan:?}");
    assert_eq!(h.calls(), Vec::<String>::new());
    // The Lease is written again: leading anew, the grace period starts over.
    h.fake().lease_writes_fail = false;
    let plan = h.at(7).await;
    assert!(plan.evict.is_empty());
    assert_eq!(plan.waiting.len(), 1);
    assert_eq!(h.calls(), Vec::<String>::new());
}

/// Reads slow enough to outlast the Lease's deadline: no eviction is sent once this
/// replica may no longer hold the Lease, though every check before it passed.
#[tokio::test]
async fn no_eviction_is_sent_once_the_reads_before_it_outlast_the_lease() {
    let mut h = Harness::new(CONFIG);
    h.at(0).await;
    h.at(4).await;
    let clock = h.clock.clone();
    h.fake().slow_reads = Some((clock, 4));
    // Renewed at 5; three reads of 4 s each end at 17, past the deadline at 15.
    let plan = h.at(5).await;
    assert_eq!(plan.evict.len(), 1, "{plan:?}");
    assert_eq!(h.calls(), with_reads(&[]));
    let text = h.metrics();
    assert!(
        text.contains("volguard_remediation_evictions_total{outcome=\"cancelled\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("outcome=\"evicted\""), "{text}");
}

#[tokio::test]
async fn a_lease_renewed_long_ago_by_its_clock_is_still_held_until_it_stops_changing_here() {
    let mut h = Harness::new(CONFIG);
    h.fake().lease = Some(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "volguard-remediation", "namespace": "volguard-system",
            "resourceVersion": "7"},
        "spec": {"holderIdentity": "volguard-1_9", "leaseDurationSeconds": 15,
            "renewTime": "2000-01-01T00:00:00.000000Z", "leaseTransitions": 2}}),
    );
    for t in [0, 2, 14] {
        h.at(t).await;
        assert!(h.fake().lease_writes.is_empty(), "taken at {t}");
    }
    assert_eq!(h.calls(), Vec::<String>::new(), "only the holder acts");
    // Unchanged for 15 s as seen here (looked at every 2 s): taken over.
    h.at(16).await;
    let fake = h.fake();
    let (method, lease) = &fake.lease_writes[0];
    assert_eq!(method, "PUT");
    assert_eq!(lease["metadata"]["resourceVersion"], "7");
    assert_eq!(lease["spec"]["holderIdentity"], "volguard-0_1");
    assert_eq!(lease["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn the_next_holder_keeps_to_the_rate_limit_of_the_last() {
    let mut h = Harness::new(
        "remediation: {enabled: true, gracePeriodSeconds: 5, maxEvictionsPerMinute: 1}",
    );
    let ten_s_ago = Timestamp::now() - SignedDuration::from_secs(10);
    h.fake().lease = Some(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "volguard-remediation", "namespace": "volguard-system",
            "resourceVersion": "7",
            "annotations": {"volguard.io/recent-evictions": ten_s_ago.to_string()}},
        "spec": {}}),
    );
    h.at(100).await;
    let plan = h.until(105).await;
    assert!(plan.evict.is_empty());
    assert_eq!(plan.skipped.len(), 1);
    assert_eq!(plan.skipped[0].1, Skip::RateLimited);
    assert_eq!(h.calls(), Vec::<String>::new());
    // The earlier eviction, at 90 on this clock, leaves the minute at 150.
    assert!(h.until(149).await.evict.is_empty());
    assert_eq!(h.at(150).await.evict.len(), 1);
    assert!(h.calls().contains(&EVICT.to_owned()));
}

#[tokio::test]
async fn a_node_whose_plugin_looks_down_gets_one_event_and_its_pods_are_left_alone() {
    let mut h = Harness::with(
        CONFIG,
        vec![
            node_json("worker-1", &[("vol-a", "0"), ("vol-b", "0")]),
            node_json("worker-2", &[("vol-a", "1")]),
            pod_json(),
        ],
    );
    for t in [0, 1, 10, 60] {
        let plan = h.at(t).await;
        assert_eq!(plan.skipped[0].1, Skip::PluginDown);
        assert!(plan.evict.is_empty());
    }
    let calls = h.fake().take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (method, path, event) = &calls[0];
    assert_eq!(
        format!("{method} {path}"),
        "POST /apis/events.k8s.io/v1/namespaces/default/events"
    );
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "worker-1");
    assert_eq!(event["reason"], "DevicePluginDown");
    assert_eq!(
        event["note"],
        "the brightbox device plugin on node worker-1 looks down: all 2 of its volumes there are below 1 at once, so its pods are left alone"
    );
    let text = h.metrics();
    assert!(
        text.contains("volguard_remediation_nodes_plugin_down{driver=\"brightbox\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("volguard_remediation_pods_skipped{reason=\"plugin_down\"} 1\n"),
        "{text}"
    );
    // The plugin is back: the gauge is 0.
    h.cluster.write().unwrap().apply(
        &ClusterObject::from_value(node_json("worker-1", &[("vol-a", "0"), ("vol-b", "1")]))
            .unwrap(),
    );
    h.at(61).await;
    assert!(
        h.metrics()
            .contains("volguard_remediation_nodes_plugin_down{driver=\"brightbox\"} 0\n")
    );
}
