//! volguard as the shipped pod, on a real kubelet: the Deployment of `manifests/` runs
//! volguard's own image (made as the Dockerfile makes it, see
//! `tests/control_plane/images.rs`) on the real node, under its restricted
//! securityContext, and serves kube-apiserver's webhook calls through its Service and
//! kube-scheduler's extender calls, also while it restarts. Needs root: without it the
//! test fails, it does not skip.
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
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use common::openmetrics;
use control_plane::{
    ControlPlane, NAMESPACE, Options, SCHEDULER,
    images::{self, Image},
    is_ready,
    node::{BUSYBOX_IMAGE, NodeOptions, REAL_NODE, RealNode, require_root},
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

/// The volguard server pods' labels.
const SERVER: &str = "app.kubernetes.io/name=volguard,app.kubernetes.io/component=server";

/// The image the volguard Deployment of `manifests/` names (after its kustomization's
/// `images` tag).
fn shipped_image() -> String {
    let rendered = common::render::kustomize("manifests");
    common::render::documents(&rendered, "kubectl kustomize manifests")
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "volguard")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .expect("the volguard Deployment's image")
        .to_owned()
}

/// `kubectl set env` on volguard's Deployment (a new rollout).
fn set_env(cp: &ControlPlane, variables: &[&str]) {
    let mut args = vec!["-n", NAMESPACE, "set", "env", "deployment/volguard"];
    args.extend_from_slice(variables);
    let (ok, _, err) = cp.kubectl(&args, None);
    assert!(ok, "kubectl set env {variables:?}: {err}");
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().expect("name")
}

/// What the pods, the kubelet and volguard's containers say, for a failure message.
fn diagnosis(cp: &ControlPlane, node: &RealNode) -> String {
    let (_, pods, _) = cp.kubectl(&["get", "pods", "-A", "-o", "wide"], None);
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

/// Waits until the Deployment has rolled out and its two replicas, and no other volguard
/// pod, are Ready (3 minutes at most).
async fn wait_rolled_out(cp: &ControlPlane, node: &RealNode) -> Vec<Pod> {
    let kubeconfig = cp.admin_kubeconfig();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["rollout", "status", "-n", NAMESPACE, "deployment/volguard"])
            .arg("--timeout=120s")
            .output()
            .expect("kubectl")
    })
    .await
    .expect("kubectl rollout status");
    assert!(
        status.status.success(),
        "volguard's Deployment rolls out: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        diagnosis(cp, node)
    );
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let settled = wait_for(Duration::from_secs(60), || async {
        let all = pods
            .list(&ListParams::default().labels(SERVER))
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

/// A pod that the webhook manages (a device-plugin volume) and that no scheduler takes:
/// it only has to be admitted.
fn managed_pod(name: &str) -> Value {
    json!({
        "metadata": {"name": name,
            "annotations": {"volguard.io/devices": "brightbox=vol-shipped"}},
        "spec": {
            "schedulerName": "nobody",
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE}],
        },
    })
}

fn mutated(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("volguard.io/mutated"))
}

/// The pod's volguard metrics, summed over the series of `family` whose labels include
/// `label` (any series when `None`).
async fn metric(p: &Pod, family: &str, label: Option<(&str, &str)>) -> f64 {
    let url = format!("http://{}:9090/metrics", pod_ip(p));
    let (status, body) = control_plane::http(None)
        .get(&url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(status, 200, "GET {url}: {body}");
    let exposition = openmetrics::parse(&body).unwrap_or_else(|e| panic!("{url}: {e}"));
    exposition
        .series(family)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .sum()
}

async fn mutations(pods: &[Pod]) -> f64 {
    let mut total = 0.0;
    for p in pods {
        total += metric(p, "volguard_pods_mutated_total", None).await;
    }
    total
}

/// The container of volguard pod `pod` as the node's runtime sees it: its pid.
fn container_pid(node: &RealNode, pod: &str) -> u32 {
    let label = format!("io.kubernetes.pod.name={pod}");
    let (ok, id, err) = node.crictl(&["ps", "-q", "--name", "volguard", "--label", &label]);
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

/// One line of `/proc/<pid>/status`, e.g. `Uid:`, as its fields.
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

/// Creates managed pods in namespace `load`, one every 50 ms, until dropped; each one
/// refused or admitted without volguard's patch is a failure (the webhook fails open, so
/// a call lost would only show as an unpatched pod).
struct Creator {
    stop: Arc<AtomicBool>,
    created: Arc<AtomicU32>,
    task: Option<tokio::task::JoinHandle<Vec<String>>>,
}

impl Creator {
    fn start(cp: &ControlPlane, prefix: &'static str) -> Creator {
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicU32::new(0));
        let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "load");
        let task = tokio::spawn({
            let (stop, created) = (stop.clone(), created.clone());
            async move {
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("{prefix}-{i}");
                    let pod: Pod = serde_json::from_value(managed_pod(&name)).expect("pod");
                    match pods.create(&PostParams::default(), &pod).await {
                        Ok(p) if mutated(&p) => {}
                        Ok(_) => failures.push(format!("{name}: admitted without the patch")),
                        Err(e) => failures.push(format!("{name}: {e}")),
                    }
                    i += 1;
                    created.store(i, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                failures
            }
        });
        Creator {
            stop,
            created,
            task: Some(task),
        }
    }

    /// Pods created (or refused) so far.
    fn count(&self) -> u32 {
        self.created.load(Ordering::Relaxed)
    }

    /// Stops; the failures.
    async fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task.take().expect("running");
        task.await.expect("the creating task")
    }
}

impl Drop for Creator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// kube-controller-manager stopped (SIGSTOP) until dropped: the EndpointSlice
/// controller with it, so kube-apiserver keeps calling a deleted volguard pod for as long
/// as that pod's drain lets it, as a slow endpoint update in a real cluster would.
struct Frozen(i32);

impl Frozen {
    fn controller_manager(cp: &ControlPlane) -> Frozen {
        let pid = cp
            .controller_manager
            .as_ref()
            .and_then(|c| c.pid())
            .expect("kube-controller-manager runs") as i32;
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Deletes volguard pod `victim` while the endpoints cannot change, and creates pods
/// for 3 s meanwhile (within the shipped 5 s shutdown delay); the creates and their
/// failures, and how many pods `victim` patched during that window.
async fn frozen_window(
    cp: &ControlPlane,
    victim: &Pod,
    prefix: &'static str,
) -> (u32, Vec<String>, f64) {
    let frozen = Frozen::controller_manager(cp);
    let before = metric(victim, "volguard_pods_mutated_total", None).await;
    let creator = Creator::start(cp, prefix);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.delete(&["pod", "-n", NAMESPACE, name(victim)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let created = creator.count();
    let failures = creator.finish().await;
    // Still draining when the shutdown delay holds; gone (nothing to count) without it.
    let url = format!("http://{}:9090/metrics", pod_ip(victim));
    let served = match control_plane::http(None).get(&url).await {
        Ok((200, _)) => metric(victim, "volguard_pods_mutated_total", None).await - before,
        _ => 0.0,
    };
    drop(frozen);
    (created, failures, served)
}

/// The shipped Deployment on the real node: volguard's image as the Dockerfile makes it,
/// run as its user under the restricted securityContext, reading its Secret; the API
/// server's webhook calls through the Service, the scheduler's extender calls; a rolling
/// restart while pods are created, and a pod deleted while the endpoints lag, without
/// one create refused or unpatched; and the same deletion without the shutdown delay
/// loses calls, which shows the delay is what keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
async fn the_shipped_deployment_runs_on_a_real_node_and_serves_the_api_server_and_the_scheduler() {
    require_root("the shipped-pod test");
    // volguard's image first (a release build, minutes when cold), then the cluster.
    let work = tempfile::tempdir().expect("temp dir");
    let (image, binary): (Image, _) = images::volguard_image(work.path(), &shipped_image());

    let mut cp = ControlPlane::start_with(Options {
        volguard: false,
        scheduler: false,
        default_scheduler: true,
        pods_reach_apiserver: true,
        ..Options::default()
    })
    .await;
    let manifests = cp.rendered_manifests();

    // The install docs' Secret, from `volguard certs`.
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
    // The API server's address for the pods (no kube-proxy for the ClusterIP); the
    // second scheduler runs on the host instead (its image is not on this node).
    let ip = cp.node_ip.clone().expect("pods_reach_apiserver");
    set_env(
        &cp,
        &[
            &format!("KUBERNETES_SERVICE_HOST={ip}"),
            &format!("KUBERNETES_SERVICE_PORT={}", cp.api_port),
        ],
    );
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
    let built = std::fs::read(&binary).expect("the release binary");
    for p in &pods {
        let name = name(p);
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
        // The Dockerfile's binary, as its user with fsGroup's group among its groups.
        let pid = container_pid(&node, name);
        let running = std::fs::read(format!("/proc/{pid}/exe")).expect("the process's binary");
        assert!(
            running == built,
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
        // volguard is Ready, so it read tls.key as 65532 through that group.
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
    let (_, logs, _) = cp.kubectl(&["logs", "-n", NAMESPACE, name(&pods[0])], None);
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("\"message\"")),
        "volguard logs JSON, read through the kubelet: {logs}"
    );

    // The image's USER alone is enough for runAsNonRoot: a pod of the image with
    // `runAsNonRoot: true` and no runAsUser runs (`--version`) rather than being refused.
    cp.namespace("shop").await;
    cp.pod(
        "shop",
        json!({
            "metadata": {"name": "version"},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "nodeName": REAL_NODE,
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "volguard", "image": image.name, "args": ["--version"]}],
            },
        }),
    )
    .await;
    let shop: Api<Pod> = Api::namespaced(cp.admin.clone(), "shop");
    let phase = wait_for(Duration::from_secs(60), || async {
        let phase = shop.get("version").await.ok()?.status?.phase?;
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    })
    .await;
    assert_eq!(
        phase.as_deref(),
        Some("Succeeded"),
        "the image runs as its numeric non-root USER\n{}",
        diagnosis(&cp, &node)
    );
    let (_, version, _) = cp.kubectl(&["logs", "-n", "shop", "version"], None);
    assert!(version.starts_with("volguard "), "{version}");

    // kube-apiserver calls the webhook through its Service.
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(certs.join("ca.crt")).expect("ca.crt"));
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
    assert!(
        mutations(&pods).await > before,
        "a volguard pod counted the patch"
    );

    // The second scheduler calls one of the pods as its extender.
    let target = &pods[0];
    let config = cp.scheduler_config_at(&format!("https://{}:8443", pod_ip(target)));
    let _scheduler = cp.extra_scheduler("volguard-scheduler", config);
    let placed = json!({
        "metadata": {"name": "placed"},
        "spec": {
            "schedulerName": SCHEDULER,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": BUSYBOX_IMAGE, "command": ["sleep", "3600"]}],
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
    let filters = metric(
        target,
        "volguard_requests_total",
        Some(("endpoint", "/filter")),
    )
    .await;
    assert!(filters >= 1.0, "the scheduler's /filter reached the pod");

    // A rolling restart while pods are being created: every create succeeds, and every
    // pod is patched.
    cp.namespace("load").await;
    let creator = Creator::start(&cp, "rollout");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, _, err) = cp.kubectl(
        &["-n", NAMESPACE, "rollout", "restart", "deployment/volguard"],
        None,
    );
    assert!(ok, "rollout restart: {err}");
    let from = creator.count();
    let after = wait_rolled_out(&cp, &node).await;
    let during = creator.count() - from;
    let failures = creator.finish().await;
    let old: Vec<_> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    assert!(
        after
            .iter()
            .all(|p| !old.contains(p.metadata.uid.as_ref().expect("uid"))),
        "both replicas were replaced"
    );
    eprintln!(
        "rolling restart: {during} pods created during it, {} failed or unpatched",
        failures.len()
    );
    assert!(
        during >= 20,
        "pods kept being created through the restart ({during})"
    );
    assert!(
        failures.is_empty(),
        "during the rolling restart:\n{}",
        failures.join("\n")
    );

    // A pod deleted while its endpoint is still listed ready: its shutdown delay keeps
    // it serving, so no call is lost.
    let (created, failures, served) = frozen_window(&cp, &after[0], "kept").await;
    eprintln!(
        "deleted pod, endpoints frozen, shutdown delay 5 s: {created} pods created, {served} \
         patched by the deleted pod, {} failed or unpatched",
        failures.len()
    );
    assert!(
        served >= 1.0,
        "the deleted pod kept serving through its drain"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same without the delay: calls are lost. This is what the assertion above
    // guards against, and shows the window reaches the deleted pod.
    wait_rolled_out(&cp, &node).await;
    set_env(&cp, &["VOLGUARD_SHUTDOWN_DELAY=0s"]);
    let undelayed = wait_rolled_out(&cp, &node).await;
    let (created, failures, _) = frozen_window(&cp, &undelayed[0], "lost").await;
    eprintln!(
        "deleted pod, endpoints frozen, no shutdown delay: {created} pods created, {} failed \
         or unpatched",
        failures.len()
    );
    assert!(
        !failures.is_empty(),
        "without the shutdown delay, calls routed to the deleted pod are lost ({created} created)"
    );

    let left = node.shutdown();
    assert!(left.is_empty(), "the node left: {left:?}");
}
