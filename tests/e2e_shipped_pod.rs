//! volguard as the shipped pod, on a real kubelet: the Deployment of `manifests/` runs
//! volguard's own image (built as the Dockerfile builds it, see
//! `tests/control_plane/images.rs`) on the real node, under its restricted
//! securityContext, and serves kube-apiserver's webhook calls through its Service and
//! kube-scheduler's extender calls. Needs root: without it the test fails, it does not
//! skip.
//!
//! Two things differ from a cluster, because this one has no kube-proxy and no DNS:
//! - kube-apiserver runs with `--enable-aggregator-routing`, so it calls the webhook's
//!   Service at a ready endpoint of its EndpointSlices (the shipped
//!   MutatingWebhookConfiguration, Service reference and all, with the caBundle the
//!   install docs patch in);
//! - the volguard pods are told the API server's address
//!   (`KUBERNETES_SERVICE_HOST`/`_PORT`, as clusters without kube-proxy do), and the
//!   second scheduler runs on the host, calling one volguard pod at its address with the
//!   shipped `serverName`.

mod common;
mod control_plane;

use std::{
    os::unix::fs::MetadataExt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use control_plane::{
    ControlPlane, NAMESPACE, Options, SCHEDULER,
    images::{self, Image},
    node::{NodeOptions, REAL_NODE, RealNode, require_root},
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

/// The image `manifests/` names (after its kustomization's `images` tag).
fn shipped_image(manifests: &[Value]) -> String {
    manifests
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "volguard")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .expect("the volguard Deployment's image")
        .to_owned()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

/// What the pods, the kubelet and volguard's containers say, for a failure message.
fn diagnosis(cp: &ControlPlane, node: &RealNode) -> String {
    let (_, pods, _) = cp.kubectl(&["get", "pods", "-A", "-o", "wide", "--show-labels"], None);
    let (_, describe, _) = cp.kubectl(&["describe", "pods", "-n", NAMESPACE], None);
    let (_, logs, _) = cp.kubectl(
        &["logs", "-n", NAMESPACE, "deployment/volguard", "--tail=30"],
        None,
    );
    let kubelet = node.kubelet_log();
    let tail: Vec<&str> = kubelet.lines().rev().take(40).collect();
    format!(
        "pods:\n{pods}\n{describe}\nvolguard logs:\n{logs}\nkubelet (last lines):\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Waits until the Deployment's two replicas run the current template and are Ready,
/// and no other volguard pod is left (2 minutes at most).
async fn wait_rolled_out(cp: &ControlPlane, node: &RealNode) -> Vec<Pod> {
    let (ok, _, err) = cp.kubectl(
        &[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            "deployment/volguard",
            "--timeout=120s",
        ],
        None,
    );
    assert!(
        ok,
        "volguard's Deployment rolls out: {err}\n{}",
        diagnosis(cp, node)
    );
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let settled = wait_for(Duration::from_secs(60), || async {
        let all = pods
            .list(
                &ListParams::default()
                    .labels("app.kubernetes.io/name=volguard,app.kubernetes.io/component=server"),
            )
            .await
            .ok()?
            .items;
        (all.len() == 2 && all.iter().all(is_ready)).then_some(all)
    })
    .await;
    settled.unwrap_or_else(|| {
        panic!(
            "two Ready volguard pods and no other\n{}",
            diagnosis(cp, node)
        )
    })
}

/// A pod of `namespace` that the webhook manages (a device-plugin volume) and that no
/// scheduler takes: it only has to be admitted.
fn managed_pod(name: &str) -> Value {
    json!({
        "metadata": {"name": name,
            "annotations": {"volguard.io/devices": "brightbox=vol-shipped"}},
        "spec": {
            "schedulerName": "nobody",
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "busybox:1.35.0"}],
        },
    })
}

fn mutated(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("volguard.io/mutated"))
}

/// A counter of `text` (OpenMetrics), summed over the series whose labels contain
/// `labels`.
fn counter(text: &str, family: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(p: &Pod) -> String {
    let url = format!("http://{}:9090/metrics", pod_ip(p));
    let (status, body) = control_plane::http(None)
        .get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

async fn mutations(pods: &[Pod]) -> f64 {
    let mut total = 0.0;
    for p in pods {
        total += counter(&metrics_of(p).await, "volguard_pods_mutated_total", "");
    }
    total
}

/// The container of the volguard pod `pod` as the node's runtime sees it: its pid
/// (`crictl inspect`).
fn container_pid(node: &RealNode, pod: &str) -> u32 {
    let (ok, id, err) = node.crictl(&[
        "ps",
        "-q",
        "--name",
        "volguard",
        "--label",
        &format!("io.kubernetes.pod.name={pod}"),
    ]);
    assert!(ok, "crictl ps: {err}");
    let id = id
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no running container for {pod}"));
    let (ok, out, err) = node.crictl(&["inspect", id]);
    assert!(ok, "crictl inspect: {err}");
    let info: Value = serde_json::from_str(&out).expect("crictl inspect JSON");
    info["info"]["pid"].as_u64().expect("info.pid") as u32
}

/// One line of `/proc/<pid>/status`, e.g. `Uid:` -> its fields.
fn proc_status(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The shipped Deployment on the real node: volguard's image as the Dockerfile makes it,
/// run as its user under the restricted securityContext, reading its Secret; the API
/// server's webhook calls through the Service, the scheduler's extender calls, and a
/// rolling restart while pods are created without one create refused or unpatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
async fn the_shipped_deployment_runs_on_a_real_node_and_serves_the_api_server_and_the_scheduler() {
    require_root("the shipped-pod test");
    let mut cp = ControlPlane::start_with(Options {
        volguard: false,
        scheduler: false,
        default_scheduler: true,
        pods_reach_apiserver: true,
        ..Options::default()
    })
    .await;
    let manifests = cp.rendered_manifests();

    // volguard's image, written before the node starts so its kubelet never pulls.
    let work = tempfile::tempdir().expect("temp dir");
    let (image, binary): (Image, _) =
        images::volguard_image(work.path(), &shipped_image(&manifests));

    // The install docs' Secrets, from `volguard certs`.
    cp.volguard_certs();
    let certs = cp.volguard_certs_dir();
    let file = |name: &str| format!("--from-file={}", certs.join(name).display());
    let (ok, _, err) = cp.kubectl(
        &[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "generic",
            "volguard-tls",
            &file("tls.crt"),
            &file("tls.key"),
            &file("ca.crt"),
        ],
        None,
    );
    assert!(ok, "create the Secret volguard-tls: {err}");
    // The API server's address for the pods (no kube-proxy for the ClusterIP), and the
    // second scheduler runs on the host instead (its image is not on this node).
    let ip = cp.node_ip.clone().expect("pods_reach_apiserver");
    let (ok, _, err) = cp.kubectl(
        &[
            "-n",
            NAMESPACE,
            "set",
            "env",
            "deployment/volguard",
            &format!("KUBERNETES_SERVICE_HOST={ip}"),
            &format!("KUBERNETES_SERVICE_PORT={}", cp.api_port),
        ],
        None,
    );
    assert!(ok, "point volguard at the API server: {err}");
    let (ok, _, err) = cp.kubectl(
        &[
            "-n",
            NAMESPACE,
            "scale",
            "deployment/volguard-scheduler",
            "--replicas=0",
        ],
        None,
    );
    assert!(ok, "scale the in-cluster scheduler to 0: {err}");

    let node = cp
        .real_node(NodeOptions {
            images: vec![image.clone()],
            ..NodeOptions::default()
        })
        .await;
    let pods = wait_rolled_out(&cp, &node).await;

    // Both replicas on the real node, running the image written from the Dockerfile.
    for p in &pods {
        let name = p.metadata.name.as_deref().expect("name");
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(REAL_NODE)
        );
        let status = &p
            .status
            .as_ref()
            .expect("status")
            .container_statuses
            .as_ref()
            .expect("containers")[0];
        let digest = image.id.trim_start_matches("sha256:");
        assert!(
            status.image_id.contains(digest),
            "{name} runs image {} ({}), not the one written from the Dockerfile ({})",
            status.image,
            status.image_id,
            image.id
        );
        // The Dockerfile's binary, as the Dockerfile's user with fsGroup's group.
        let pid = container_pid(&node, name);
        let running = std::fs::read(format!("/proc/{pid}/exe")).expect("the process's binary");
        assert!(
            running == std::fs::read(&binary).expect("the release binary"),
            "{name} runs {} as built by the Dockerfile's command",
            binary.display()
        );
        assert_eq!(proc_status(pid, "Uid:"), ["65532"; 4], "{name}'s uids");
        assert_eq!(proc_status(pid, "Gid:"), ["65532"; 4], "{name}'s gids");
        assert!(
            proc_status(pid, "Groups:").contains(&"65532".to_owned()),
            "{name}'s groups"
        );
        // The Secret's 0400 files as fsGroup makes them: 0440, group 65532, owner root.
        let uid = p.metadata.uid.as_deref().expect("uid");
        let key = node
            .dir()
            .join("kubelet/pods")
            .join(uid)
            .join("volumes/kubernetes.io~secret/tls/tls.key");
        let meta = std::fs::metadata(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        assert_eq!(
            (meta.mode() & 0o777, meta.uid(), meta.gid()),
            (0o440, 0, 65532),
            "tls.key in {name}"
        );
        // No shell in the image.
        let (ok, _, err) = cp.kubectl(
            &["exec", "-n", NAMESPACE, name, "--", "sh", "-c", "true"],
            None,
        );
        assert!(!ok, "{name} has no shell");
        assert!(err.contains("executable file not found"), "{name}: {err}");
    }
    let (_, version, _) = cp.kubectl(
        &[
            "logs",
            "-n",
            NAMESPACE,
            pods[0].metadata.name.as_deref().expect("name"),
        ],
        None,
    );
    assert!(
        version.contains("\"message\""),
        "volguard logs JSON, read through the kubelet: {version}"
    );

    // kube-apiserver calls the webhook through its Service.
    let ca = base64_of(&std::fs::read(certs.join("ca.crt")).expect("ca.crt"));
    let mut hook = manifests
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .cloned()
        .expect("the shipped MutatingWebhookConfiguration");
    for webhook in hook["webhooks"].as_array_mut().expect("webhooks") {
        assert!(
            webhook["clientConfig"]["service"].is_object(),
            "the shipped webhook calls a Service"
        );
        webhook["clientConfig"]["caBundle"] = json!(ca);
    }
    let (ok, _, err) = cp.kubectl(&["apply", "-f", "-"], Some(&hook.to_string()));
    assert!(ok, "register the shipped webhook: {err}");
    cp.wait_for_webhook().await;

    // A managed pod created through the API is patched by one of those pods.
    cp.namespace("shop").await;
    let before = mutations(&pods).await;
    let created = cp.pod("shop", managed_pod("db-0")).await;
    assert!(
        mutated(&created),
        "db-0 is patched: {:?}",
        created.metadata.annotations
    );
    let limits = created.spec.as_ref().expect("spec").containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert!(
        limits.contains_key("volumes.brightbox.com/vol-shipped"),
        "{limits:?}"
    );
    assert_eq!(
        mutations(&pods).await - before,
        1.0,
        "one volguard pod counted the patch"
    );

    // The second scheduler calls one of the pods as its extender.
    let target = &pods[0];
    let url = format!("https://{}:8443", pod_ip(target));
    let config = cp.scheduler_config_at(&url);
    let _scheduler = cp.extra_scheduler("volguard-scheduler", config);
    let placed = json!({
        "metadata": {"name": "placed"},
        "spec": {
            "schedulerName": SCHEDULER,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": control_plane::node::BUSYBOX_IMAGE,
                "command": ["sleep", "3600"]}],
        },
    });
    cp.pod("shop", placed).await;
    let bound = cp
        .bound_node("shop", "placed", Duration::from_secs(60))
        .await;
    assert_eq!(
        bound.as_deref(),
        Some(REAL_NODE),
        "placed by the second scheduler"
    );
    let text = metrics_of(target).await;
    assert!(
        counter(&text, "volguard_requests_total", "endpoint=\"/filter\"") >= 1.0,
        "the scheduler's /filter reached the pod:\n{text}"
    );

    // A rolling restart while pods are being created: every create succeeds, and every
    // pod is patched (the webhook fails open, so a missed call would only show there).
    cp.namespace("load").await;
    let stop = Arc::new(AtomicBool::new(false));
    let creator = {
        let stop = stop.clone();
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "load");
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut created = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let pod: Pod =
                    serde_json::from_value(managed_pod(&format!("p-{created}"))).expect("pod");
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(p) if mutated(&p) => {}
                    Ok(p) => failures.push(format!(
                        "{} created unpatched",
                        p.metadata.name.unwrap_or_default()
                    )),
                    Err(e) => failures.push(format!("p-{created}: {e}")),
                }
                created += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (created, failures)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, _, err) = cp.kubectl(
        &["-n", NAMESPACE, "rollout", "restart", "deployment/volguard"],
        None,
    );
    assert!(ok, "rollout restart: {err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = wait_rolled_out(&cp, &node).await;
    let old: Vec<_> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    assert!(
        after
            .iter()
            .all(|p| !old.contains(p.metadata.uid.as_ref().expect("uid"))),
        "both replicas were replaced"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (created, failures) = creator.await.expect("the creating task");
    eprintln!(
        "rolling restart: {created} pods created, {} failed or unpatched",
        failures.len()
    );
    assert!(
        created >= 50,
        "pods kept being created through the restart ({created})"
    );
    assert!(
        failures.is_empty(),
        "during the rolling restart:\n{}",
        failures.join("\n")
    );

    let left = node.shutdown();
    assert!(left.is_empty(), "the node left: {left:?}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
