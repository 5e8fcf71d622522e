//! Live cluster state: the real kube client and watchers against a scripted API server
//! on a loopback port (lists, watch events, 410 Gone, dropped connections, GETs), with
//! the webhook served over real TLS from the state they fill.

mod common;
mod fake_api;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{TestServer, create_review, patch_of, read_doc, response_of};
use fake_api::{FORBIDDEN_USER, FakeApi, example_documents};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use volguard::{
    cluster::{ClusterState, Kind, SharedState},
    model::drivers::VolumeId,
    server::app::App,
    sources::{snapshot, watch},
};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";
const LINODE: &str = "linodebs.csi.linode.com";
/// The PV bound to shop/web-data, attached nowhere.
const WEB_PV: &str = "pvc-1f0c6a52-db00-4c1e-9d0b-000000000002";

/// The webhook over TLS, fed by watchers on a fake API that serves the example cluster.
struct Live {
    fake: FakeApi,
    server: TestServer,
    state: SharedState,
    client: kube::Client,
}

impl Live {
    /// Everything wired, watchers not started yet.
    async fn new() -> Self {
        let fake = FakeApi::start(example_documents()).await;
        let config = common::example_config();
        let state = SharedState::new(common::empty_state(&config));
        let client = watch::client(fake.kube_config(), &state).expect("client");
        let mut app = App::new(Arc::new(config), state.clone());
        app.api = Some(client.clone());
        let server = TestServer::with_app(app).await;
        Live {
            fake,
            server,
            state,
            client,
        }
    }

    /// Started and synced.
    async fn synced() -> (Self, JoinSet<()>) {
        let live = Self::new().await;
        let watchers = live.spawn();
        live.until("every kind is listed", |s| s.is_ready()).await;
        (live, watchers)
    }

    /// Starts the watchers.
    fn spawn(&self) -> JoinSet<()> {
        watch::spawn(
            self.client.clone(),
            self.url(),
            self.state.clone(),
            &self.server.app.stopped_watches,
        )
    }

    /// The fake API's URL as the log names it.
    fn url(&self) -> String {
        format!("http://{}", self.fake.addr)
    }

    /// Waits (bounded) until `cond` holds for the state.
    async fn until(&self, what: &str, cond: impl Fn(&ClusterState) -> bool) {
        until(&self.state, what, cond).await;
    }

    /// Waits (bounded) until the fake API has seen `count` requests matching `what`.
    async fn until_seen(&self, verb: &str, kind: Kind, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.seen(verb, kind) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {count} {verb} of {kind:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn seen(&self, verb: &str, kind: Kind) -> usize {
        self.fake
            .seen()
            .iter()
            .filter(|s| s.verb == verb && s.kind == kind)
            .count()
    }

    fn linode(&self, handle: &str) -> VolumeId {
        let state = self.state.read().unwrap();
        VolumeId {
            driver: state.drivers().by_csi(LINODE).expect("linode configured"),
            handle: handle.into(),
        }
    }

    fn used(&self, node: &str) -> u32 {
        let state = self.state.read().unwrap();
        state.used(node, state.drivers().by_csi(LINODE).unwrap())
    }

    /// The extender's filter answer for `pod` over the four example nodes.
    async fn filter(&self, pod: &Value) -> Value {
        let args = json!({"Pod": pod, "Nodes": null,
                          "NodeNames": ["worker-1", "worker-2", "worker-3", "worker-4"]});
        let (status, body) = self.server.post("/filter", args.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("ExtenderFilterResult JSON")
    }

    /// The webhook's response for `pod` created in `namespace`.
    async fn admit(&self, pod: &Value, namespace: &str) -> Value {
        let (status, body) = self
            .server
            .post("/mutate", create_review(pod, namespace).to_string())
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        response_of(&body, UID)
    }
}

/// The example web pod, using claim `claim` instead of web-data.
fn web_pod(claim: &str) -> Value {
    let mut pod = read_doc("examples/pods/linode-web.yaml");
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = claim.into();
    pod
}

/// One object of the example cluster, as the API serves it.
fn example_document(kind: &str, name: &str) -> Value {
    example_documents()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} in the example cluster"))
}

/// Waits (bounded) until `cond` holds for `state`.
async fn until(state: &SharedState, what: &str, cond: impl Fn(&ClusterState) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if cond(&state.read().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The log lines written on this thread while the guard lives, filtered and formatted
/// as the binary's text logs are (without time stamps). `#[tokio::test]` runs on one thread,
/// so the watchers' and the client's tasks log here too.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .without_time()
            .with_env_filter(volguard::cmd::DEFAULT_LOG_FILTER)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The lines at `level` (`WARN`, `INFO`), without the level and its padding.
    fn lines(&self, level: &str) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix(level))
            .map(|l| l.trim_start().to_owned())
            .collect()
    }

    /// Waits (bounded) until the lines at `level` satisfy `done`, and returns them: a
    /// watcher logs after it lets go of the state, so a change seen in the state can be
    /// ahead of its line.
    async fn until(
        &self,
        level: &str,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines(level);
            if done(&lines) {
                return lines;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A bound claim in shop and its linode PV.
fn claim_and_volume(claim: &str, pv: &str, handle: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": claim, "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv,
                        "storageClassName": "linode-block-storage",
                        "resources": {"requests": {"storage": "10Gi"}}},
               "status": {"phase": "Bound"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
               "metadata": {"name": pv},
               "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                        "csi": {"driver": LINODE, "volumeHandle": handle},
                        "claimRef": {"namespace": "shop", "name": claim}},
               "status": {"phase": "Bound"}}),
    ]
}

/// The annotations of `pod` after the response's patch; `None` without a patch.
fn annotations_of(pod: &Value, response: &Value) -> Option<Value> {
    let patch = patch_of(response)?;
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).expect("patch applies");
    Some(pod["metadata"]["annotations"].clone())
}

#[tokio::test]
async fn readiness_waits_for_the_first_list_of_every_kind() {
    let live = Live::new().await;
    let (status, body) = live.server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("not synced yet"));
    let response = live.admit(&web_pod("web-data"), "shop").await;
    assert_eq!(response["allowed"], true);
    assert!(
        common::first_warning(&response).contains("not synced yet"),
        "{response}"
    );

    let answer = live.filter(&web_pod("web-data")).await;
    assert!(
        answer["Error"].as_str().unwrap().contains("not synced yet"),
        "{answer}"
    );
    assert_eq!(answer["NodeNames"], Value::Null, "no verdict: {answer}");

    let _watchers = live.spawn();
    live.until("every kind is listed", |s| s.is_ready()).await;
    let (status, body) = live.server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, _) = live.server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);

    // The listed state is the one the same objects make as a snapshot.
    let config = common::example_config();
    let expected = common::example_state(&config);
    {
        let state = live.state.read().unwrap();
        assert_eq!(state.counts(), expected.counts());
        let linode = state.drivers().by_csi(LINODE).unwrap();
        for node in ["worker-1", "worker-2", "worker-3", "worker-4"] {
            assert_eq!(
                state.used(node, linode),
                expected.used(node, linode),
                "{node}"
            );
        }
        assert_eq!(state.used("worker-3", linode), 8);
    }

    // Each kind was listed, then watched from the list's resourceVersion.
    for kind in Kind::ALL {
        assert_eq!(live.seen("list", kind), 1, "{kind:?} listed once");
        live.until_seen("watch", kind, 1).await;
    }
    let pod = web_pod("web-data");
    let response = live.admit(&pod, "shop").await;
    assert_eq!(
        annotations_of(&pod, &response).unwrap()["volguard.io/volumes"],
        "linode=310200-pvcweb"
    );
}

#[tokio::test]
async fn watch_events_change_what_the_state_and_the_webhook_report() {
    let (live, _watchers) = Live::synced().await;
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    let web = live.linode("310200-pvcweb");
    assert_eq!(
        live.used("worker-2"),
        1,
        "the stale attachment of 310900-pvcold"
    );

    // ADDED: the web volume gets attached to worker-2.
    let attachment = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-web-on-worker-2"},
        "spec": {"attacher": LINODE, "nodeName": "worker-2",
                 "source": {"persistentVolumeName": WEB_PV}},
        "status": {"attached": true}});
    live.fake.put(attachment);
    live.until("worker-2 holds the web volume", |s| {
        s.holds("worker-2", &web)
    })
    .await;
    assert_eq!(live.used("worker-2"), 2);

    // DELETED: detached again.
    live.fake
        .delete(Kind::VolumeAttachment, "csi-web-on-worker-2");
    live.until("worker-2 no longer holds the web volume", |s| {
        !s.holds("worker-2", &web)
    })
    .await;
    assert_eq!(live.used("worker-2"), 1);

    // MODIFIED: db-0 finished, so its RWO volume has no user any more.
    let db = live.linode("310100-pvcdb0");
    assert_eq!(
        live.state.read().unwrap().users(&db)[0].pod,
        "shop/db-0",
        "db-0 uses its volume"
    );
    let mut db0 = example_document("Pod", "db-0");
    db0["status"]["phase"] = "Succeeded".into();
    live.fake.put(db0);
    live.until("db-0's volume has no user", |s| s.users(&db).is_empty())
        .await;

    // MODIFIED: worker-3's CSINode reports a higher limit; the filter verdict follows.
    let web_pod_data = web_pod("web-data");
    let answer = live.filter(&web_pod_data).await;
    assert_eq!(answer["Error"], "", "{answer}");
    assert_eq!(
        answer["FailedAndUnresolvableNodes"]["worker-3"],
        "node(s) at the linode attach limit (limit from CSINode)",
        "{answer}"
    );
    let mut csinode = example_document("CSINode", "worker-3");
    csinode["spec"]["drivers"][0]["allocatable"]["count"] = 9.into();
    live.fake.put(csinode);
    live.until("worker-3's CSINode reports 9", |s| {
        let linode = s.drivers().by_csi(LINODE).unwrap();
        s.csinode("worker-3")
            .is_some_and(|c| c.drivers.get(linode) == Some(&Some(9)))
    })
    .await;
    let answer = live.filter(&web_pod_data).await;
    assert_eq!(
        answer["FailedAndUnresolvableNodes"].get("worker-3"),
        None,
        "{answer}"
    );
    assert!(
        answer["NodeNames"]
            .as_array()
            .unwrap()
            .contains(&json!("worker-3")),
        "{answer}"
    );

    // The webhook: a claim nobody has is a warning after one direct GET ...
    let response = live.admit(&web_pod("logs"), "shop").await;
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none());
    let warning = common::first_warning(&response);
    assert!(
        warning
            .contains("PersistentVolumeClaim shop/logs not found (direct GET: not found either)"),
        "{warning}"
    );
    // ... and once the watch delivers it, the pod is mutated from the cache.
    for object in claim_and_volume("logs", "pv-logs", "310400-logs") {
        live.fake.put(object);
    }
    live.until("the logs claim and its volume are cached", |s| {
        s.pvc("shop", "logs").is_some() && s.pv("pv-logs").is_some()
    })
    .await;
    let pod = web_pod("logs");
    let response = live.admit(&pod, "shop").await;
    assert_eq!(
        annotations_of(&pod, &response).expect("a patch")["volguard.io/volumes"],
        "linode=310400-logs"
    );
    assert_eq!(
        live.seen("get", Kind::PersistentVolumeClaim),
        1,
        "only the first answer needed a GET"
    );
}

#[tokio::test]
async fn a_delete_missed_while_disconnected_is_dropped_by_the_relist() {
    let (live, _watchers) = Live::synced().await;
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    live.state
        .write()
        .unwrap()
        .readiness_mut()
        .set_stale_after(Duration::ZERO);
    let db = live.linode("310100-pvcdb0");
    assert!(live.state.read().unwrap().pod("shop", "db-0").is_some());

    live.fake.go_offline();
    live.until("the pod watch notices", |s| {
        s.readiness().is_failing(Kind::Pod)
    })
    .await;
    // Stale beyond the grace period: not ready, and the webhook says so; still healthy.
    let (status, body) = live.server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = String::from_utf8_lossy(&body).into_owned();
    assert!(why.contains("cluster state is stale: "), "{why}");
    assert!(why.contains("Pod watch failing"), "{why}");
    let (status, _) = live.server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let response = live.admit(&web_pod("web-data"), "shop").await;
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none());
    assert!(
        common::first_warning(&response).contains("cluster state is stale"),
        "{response}"
    );

    let answer = live.filter(&web_pod("web-data")).await;
    assert!(
        answer["Error"]
            .as_str()
            .unwrap()
            .contains("cluster state is stale"),
        "{answer}"
    );

    // Meanwhile db-0 is deleted and a claim created; no watch sees either.
    live.fake.delete(Kind::Pod, "shop/db-0");
    let [claim, volume] = claim_and_volume("while-away", "pv-while-away", "310500-away");
    live.fake.put(claim);
    live.fake.put(volume);
    let lists_before = live.seen("list", Kind::Pod);

    live.fake.go_online_compacted();
    live.until("db-0 is gone and the new claim is there", |s| {
        s.pod("shop", "db-0").is_none() && s.pvc("shop", "while-away").is_some()
    })
    .await;
    assert!(
        live.seen("list", Kind::Pod) > lists_before,
        "pods were relisted"
    );
    assert!(live.state.read().unwrap().users(&db).is_empty());
    live.until("every watch recovered", |s| {
        s.is_ready() && Kind::ALL.iter().all(|k| !s.readiness().is_failing(*k))
    })
    .await;
    let (status, body) = live.server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(
        live.state
            .read()
            .unwrap()
            .readiness()
            .watch(Kind::Pod)
            .errors
            >= 1
    );
}

#[tokio::test]
async fn a_claim_the_watch_has_not_delivered_is_fetched_with_one_get() {
    let (live, _watchers) = Live::synced().await;
    for object in claim_and_volume("data-web-1", "pv-web-1", "310600-web1") {
        live.fake.put_unannounced(object);
    }
    let pod = web_pod("data-web-1");
    let response = live.admit(&pod, "shop").await;
    assert_eq!(response["allowed"], true);
    assert_eq!(response.get("warnings"), None, "{response}");
    assert_eq!(
        annotations_of(&pod, &response).expect("a patch")["volguard.io/volumes"],
        "linode=310600-web1"
    );
    let gets: Vec<String> = live
        .fake
        .seen()
        .into_iter()
        .filter(|s| s.verb == "get")
        .map(|s| s.path)
        .collect();
    assert_eq!(
        gets,
        [
            "/api/v1/namespaces/shop/persistentvolumeclaims/data-web-1",
            "/api/v1/persistentvolumes/pv-web-1"
        ]
    );
    assert!(
        live.state
            .read()
            .unwrap()
            .pvc("shop", "data-web-1")
            .is_some(),
        "kept in the cache"
    );

    // What was requested is exactly what the shipped ClusterRole grants.
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    let requested: BTreeSet<(String, String, String)> = live
        .fake
        .seen()
        .into_iter()
        .map(|s| {
            let path = watch::collection_path(s.kind);
            let (prefix, plural) = path.rsplit_once('/').unwrap();
            let group = prefix
                .strip_prefix("/apis/")
                .map(|g| g.split('/').next().unwrap().to_owned())
                .unwrap_or_default();
            (group, plural.to_owned(), s.verb.to_owned())
        })
        .collect();
    let granted = granted_by_cluster_role();
    let missing: Vec<_> = requested.difference(&granted).collect();
    assert!(missing.is_empty(), "not granted: {missing:?}");
    let resources = |set: &BTreeSet<(String, String, String)>| -> BTreeSet<(String, String)> {
        set.iter().map(|(g, r, _)| (g.clone(), r.clone())).collect()
    };
    assert_eq!(
        resources(&granted),
        resources(&requested),
        "the role grants exactly the kinds volguard reads"
    );
}

#[tokio::test]
async fn a_direct_get_that_hangs_becomes_a_warning() {
    let (live, _watchers) = Live::synced().await;
    live.fake.stall_gets();
    let response = live.admit(&web_pod("data-web-2"), "shop").await;
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none());
    let warning = common::first_warning(&response);
    assert!(
        warning.contains("shop/data-web-2 not found (direct GET: no answer within 2s)"),
        "{warning}"
    );
}

#[tokio::test]
async fn a_claim_deleted_while_its_direct_get_is_in_flight_is_not_brought_back() {
    let (live, _watchers) = Live::synced().await;
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    let [claim, _] = claim_and_volume("data-web-3", "pv-web-3", "310700-web3");
    live.fake.put_unannounced(claim);
    let release = live.fake.hold_gets();
    let pod = web_pod("data-web-3");
    let meanwhile = async {
        live.until_seen("get", Kind::PersistentVolumeClaim, 1).await;
        // The GET has read the claim; now it is deleted, and the watch reports it
        // (the claim created after it on the same watch proves the delete went first).
        live.fake
            .delete(Kind::PersistentVolumeClaim, "shop/data-web-3");
        let [after, _] = claim_and_volume("after-delete", "pv-after", "310701-after");
        live.fake.put(after);
        live.until("the watch delivered the delete", |s| {
            s.pvc("shop", "after-delete").is_some()
        })
        .await;
        release.send(true).expect("the GET waits");
    };
    let (response, ()) = tokio::join!(live.admit(&pod, "shop"), meanwhile);
    assert_eq!(response["allowed"], true);
    assert!(patch_of(&response).is_none(), "{response}");
    assert_eq!(
        common::first_warning(&response),
        "volguard: pod admitted unchanged: PersistentVolumeClaim shop/data-web-3 not found (direct GET: deleted while the GET \
         was in flight)"
    );
    assert!(
        live.state
            .read()
            .unwrap()
            .pvc("shop", "data-web-3")
            .is_none(),
        "the deleted claim stays deleted"
    );
}

#[tokio::test]
async fn a_watch_failing_after_every_response_head_keeps_failing_until_a_bookmark() {
    let (live, _watchers) = Live::synced().await;
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    let (logs, _guard) = Captured::start();
    let lists = live.seen("list", Kind::Pod);
    let health = |s: &SharedState| s.read().unwrap().readiness().watch(Kind::Pod);

    // Every rewatch is answered 200, then fails with an error event.
    live.fake.fail_watches(Kind::Pod);
    live.fake.end_watches(Kind::Pod);
    live.until("the pod watch fails", |s| {
        s.readiness().watch(Kind::Pod).errors >= 1
    })
    .await;
    let first = health(&live.state).failing_since.expect("failing");
    live.until("two more rounds failed", |s| {
        s.readiness().watch(Kind::Pod).errors >= 3
    })
    .await;
    assert!(
        live.seen("watch", Kind::Pod) >= 4,
        "each round got a response head"
    );
    assert_eq!(
        health(&live.state).failing_since,
        Some(first),
        "the stale clock runs from the first failure"
    );
    assert_eq!(logs.lines("INFO"), Vec::<String>::new(), "no recovery");

    // Mended: the rewatch streams nothing but a bookmark, and that is proof enough.
    live.fake.mend(Kind::Pod);
    live.until("the pod watch recovered", |s| {
        !s.readiness().is_failing(Kind::Pod)
    })
    .await;
    assert_eq!(live.seen("list", Kind::Pod), lists, "no relist: a rewatch");
    let recovered = logs
        .until("INFO", "the recovery is logged", |l| {
            l.iter()
                .any(|l| l.starts_with("volguard::sources::watch::recovery: watch recovered"))
        })
        .await;
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    assert!(
        recovered[0].starts_with("volguard::sources::watch::recovery: watch recovered after "),
        "{recovered:#?}"
    );
    assert!(recovered[0].ends_with("kind=\"Pod\""), "{recovered:#?}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_logged_once_with_its_cause() {
    // Bound but not listening: every connection is refused, until it listens below.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let config = common::example_config();
    let state = SharedState::new(common::empty_state(&config));
    let client = watch::client(kube::Config::new(url.parse().unwrap()), &state).unwrap();
    let (logs, _guard) = Captured::start();
    let _watchers = watch::spawn(client, &url, state.clone(), &watch::Stopped::default());

    until(&state, "every kind failed in two retry rounds", |s| {
        Kind::ALL
            .iter()
            .all(|k| s.readiness().watch(*k).errors >= 2)
    })
    .await;
    let warnings = logs.lines("WARN");
    assert_eq!(warnings.len(), 1, "said once: {warnings:#?}");
    let kind = Kind::ALL
        .into_iter()
        .map(Kind::as_str)
        .find(|k| warnings[0].contains(&format!("cannot list {k} at")))
        .unwrap_or_else(|| panic!("names a kind: {}", warnings[0]));
    assert_eq!(
        warnings[0],
        format!(
            "volguard::sources::watch: cannot list {kind} at {url}: ServiceError: client error \
             (Connect): tcp connect error: Connection refused (os error 111); retrying, quietly \
             while the error stays the same kind=\"{kind}\""
        )
    );
    let why = state
        .read()
        .unwrap()
        .readiness()
        .watch(Kind::Pod)
        .last_error;
    assert_eq!(
        why.as_deref(),
        Some(
            "cannot list: ServiceError: client error (Connect): tcp connect error: \
             Connection refused (os error 111)"
        ),
        "readiness quotes the cause"
    );

    // The API server comes up: every kind recovers, and nothing more was warned.
    let fake = FakeApi::serve(socket.listen(64).unwrap(), example_documents());
    until(&state, "every kind recovered and synced", |s| {
        s.is_ready() && Kind::ALL.iter().all(|k| !s.readiness().is_failing(*k))
    })
    .await;
    let said = "volguard::sources::watch::recovery: watch recovered after ";
    let logged = |lines: &[String], kind: Kind| {
        lines
            .iter()
            .any(|l| l.starts_with(said) && l.ends_with(&format!("kind=\"{}\"", kind.as_str())))
    };
    logs.until("INFO", "every kind's recovery is logged", |l| {
        Kind::ALL.into_iter().all(|k| logged(l, k))
    })
    .await;
    assert_eq!(logs.lines("WARN").len(), 1, "{:#?}", logs.lines("WARN"));
    drop(fake);
}

#[tokio::test]
async fn a_403_names_the_verb_and_resource_once() {
    let live = Live::new().await;
    live.fake.forbid(Kind::Pod);
    let (logs, _guard) = Captured::start();
    let _watchers = live.spawn();
    live.until_seen("list", Kind::Pod, 3).await;
    live.until("every other kind is listed", |s| {
        s.unsynced() == [Kind::Pod]
    })
    .await;
    let warnings = logs.lines("WARN");
    assert_eq!(
        warnings,
        [format!(
            "volguard::sources::watch: cannot list Pod at {}: 403 Forbidden: pods is forbidden: \
             User \"{FORBIDDEN_USER}\" cannot list resource \"pods\" in API group \"\" at the \
             cluster scope; retrying, quietly while the error stays the same kind=\"Pod\"",
            live.url()
        )],
        "one line for three refused lists"
    );
    live.fake.allow(Kind::Pod);
    live.until("pods are listed", |s| s.is_ready()).await;
    assert_eq!(logs.lines("WARN").len(), 1);
}

#[test]
fn a_broken_kubeconfig_is_a_usage_error_naming_the_file() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "apiVersion: v1\nclusters: [oops\n").unwrap();
    let cli = volguard::cmd::Cli::try_parse_from([
        "volguard",
        "serve",
        "--self-signed",
        "--kubeconfig",
        path.to_str().unwrap(),
    ])
    .expect("flags parse");
    let volguard::cmd::Command::Serve(args) = cli.command else {
        panic!("serve")
    };
    volguard::server::tls::install_crypto_provider();
    let failure = volguard::cmd::serve::run(*args).expect_err("must not start");
    assert_eq!(failure.code, 2);
    assert!(
        failure
            .message
            .starts_with(&format!("{}: ", path.display())),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains('\n'), "{}", failure.message);
}

/// (apiGroup, resource, verb) triples of the shipped ClusterRole.
fn granted_by_cluster_role() -> BTreeSet<(String, String, String)> {
    let text = std::fs::read_to_string(common::repo("manifests/base/rbac.yaml")).unwrap();
    let docs = snapshot::parse_documents(&text, false).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "volguard")
        .expect("ClusterRole volguard");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    granted
}

/// Waits (bounded) until the server's liveness answer says `expected`.
async fn until_healthz(server: &TestServer, expected: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = server.get("/healthz").await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if text == expected {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz still says {status} {text:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn liveness_fails_once_the_watchers_stop() {
    let (live, watchers) = Live::synced().await;
    let (status, body) = live.server.get("/healthz").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    drop(watchers);
    until_healthz(
        &live.server,
        "watchers stopped: Node, CSINode, PersistentVolume, PersistentVolumeClaim, Pod, \
         VolumeAttachment, StorageClass: the cache no longer follows the cluster; \
         restart volguard\n",
    )
    .await;
}

#[tokio::test]
async fn liveness_fails_once_the_state_lock_is_poisoned_and_its_watchers_stop() {
    let (live, _watchers) = Live::synced().await;
    common::poison(&live.state);
    until_healthz(
        &live.server,
        "cluster state lock poisoned (a panic while it was written): the cache can no longer \
         be updated; restart volguard\n",
    )
    .await;
    // The next Node event finds the lock poisoned: that watcher stops, and says so.
    let mut node = example_document("Node", "worker-1");
    node["metadata"]["labels"] = json!({"changed": "yes"});
    live.fake.put(node);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !live
        .server
        .app
        .stopped_watches
        .kinds()
        .contains(&Kind::Node)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Node watcher goes on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_name_just_found_missing_is_asked_again_unless_gets_run_short() {
    let (live, _watchers) = Live::synced().await;
    for kind in Kind::ALL {
        live.until_seen("watch", kind, 1).await;
    }
    // Plenty of GETs: a claim created right after its GET found nothing is found.
    let response = live.admit(&web_pod("late"), "shop").await;
    assert!(
        common::first_warning(&response).ends_with("(direct GET: not found either)"),
        "{response}"
    );
    for object in claim_and_volume("late", "pv-late", "310800-late") {
        live.fake.put_unannounced(object);
    }
    let pod = web_pod("late");
    let response = live.admit(&pod, "shop").await;
    assert_eq!(
        annotations_of(&pod, &response).expect("a patch")["volguard.io/volumes"],
        "linode=310800-late"
    );
    // GETs running short (45 of the burst of 50 just spent): a name found missing a
    // moment ago is answered from memory.
    let pods: Vec<Value> = (0..45).map(|i| web_pod(&format!("probe-{i}"))).collect();
    futures::future::join_all(pods.iter().map(|p| live.admit(p, "shop"))).await;
    let gets = live.seen("get", Kind::PersistentVolumeClaim);
    live.admit(&web_pod("ghost"), "shop").await;
    let response = live.admit(&web_pod("ghost"), "shop").await;
    assert_eq!(
        common::first_warning(&response),
        "volguard: pod admitted unchanged: PersistentVolumeClaim shop/ghost not found (direct GET: not found either by a \
         direct GET less than 2 s ago)"
    );
    assert_eq!(live.seen("get", Kind::PersistentVolumeClaim), gets + 1);
}

#[tokio::test]
async fn direct_gets_are_bounded_in_rate_and_at_once() {
    let (live, _watchers) = Live::synced().await;
    // 80 reviews at once, each naming a claim nobody has: a burst of 50 GETs, at 20 per
    // second after it, the rest not asked.
    let pods: Vec<Value> = (0..80).map(|i| web_pod(&format!("probe-{i}"))).collect();
    let responses = futures::future::join_all(pods.iter().map(|p| live.admit(p, "shop"))).await;
    let limited = responses
        .iter()
        .filter(|r| {
            common::first_warning(r).ends_with(
                "(direct GET: not fetched: direct GETs are over their rate of 20 per second)",
            )
        })
        .count();
    let gets = live.seen("get", Kind::PersistentVolumeClaim);
    assert_eq!(
        gets + limited,
        80,
        "every review either asked or was limited"
    );
    assert!((50..80).contains(&gets), "{gets} GETs");

    // Four GETs at once: with every GET unanswered, a fifth review waits half a second for a
    // slot, and asks nothing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    live.fake.stall_gets();
    let pods: Vec<Value> = (0..5).map(|i| web_pod(&format!("held-{i}"))).collect();
    let responses = futures::future::join_all(pods.iter().map(|p| live.admit(p, "shop"))).await;
    let waited = responses
        .iter()
        .filter(|r| {
            common::first_warning(r)
                .ends_with("(direct GET: not fetched: 4 direct GETs were in flight for 500 ms)")
        })
        .count();
    assert_eq!(
        waited,
        1,
        "{:?}",
        responses
            .iter()
            .map(|r| common::first_warning(r).to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(live.seen("get", Kind::PersistentVolumeClaim), gets + 4);
}
