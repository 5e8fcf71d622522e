//! A real node (see `tests/control_plane/node.rs`): containerd, runc, the CNI bridge, a
//! kubelet registered with the test's kube-apiserver and the test device plugin
//! (`e2e/device-plugin`), running real pods; and the machine's checks and cleanup
//! around it. Needs root: without it the tests fail, they do not skip.

mod common;
mod control_plane;

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::Command,
    time::Duration,
};

use control_plane::{
    ControlPlane, Options, host,
    node::{self, BUSYBOX_IMAGE, NodeOptions, REAL_NODE},
    wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use serde_json::{Value, json};

const RESOURCE: &str = "volumes.brightbox.com/vol-test";

/// The node's capacity and allocatable of `resource`.
async fn advertised(cp: &ControlPlane, resource: &str) -> Option<(String, String)> {
    let nodes: Api<Node> = Api::all(cp.admin.clone());
    let status = nodes.get(REAL_NODE).await.ok()?.status?;
    let capacity = status.capacity?.get(resource)?.0.clone();
    let allocatable = status.allocatable?.get(resource)?.0.clone();
    Some((capacity, allocatable))
}

/// Waits up to 30 s for `resource` to read `count` in the node's capacity and
/// allocatable.
async fn advertises(cp: &ControlPlane, node: &control_plane::node::RealNode, count: &str) {
    let want = (count.to_owned(), count.to_owned());
    let seen = wait_for(Duration::from_secs(30), || async {
        advertised(cp, RESOURCE)
            .await
            .filter(|got| *got == want)
            .map(|_| ())
    })
    .await;
    assert!(
        seen.is_some(),
        "{RESOURCE} never {count} on the node (now {:?}); device plugin log:\n{}",
        advertised(cp, RESOURCE).await,
        node.device_plugin_log()
    );
}

/// A busybox pod bound to the real node.
fn pod(name: &str, container: Value) -> Value {
    let mut c = json!({
        "name": "main", "image": BUSYBOX_IMAGE,
        "command": ["sh", "-c", "touch /tmp/alive; exec sleep 3600"],
    });
    control_plane::merge(&mut c, &container);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": REAL_NODE,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [c],
        },
    })
}

/// Waits up to 60 s for pod `name` to be Ready.
async fn ready(cp: &ControlPlane, node: &control_plane::node::RealNode, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "default");
    let pod = wait_for(Duration::from_secs(60), || async {
        let p = pods.get(name).await.ok()?;
        let ready = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(p)
    })
    .await;
    match pod {
        Some(pod) => pod,
        None => panic!(
            "pod {name} never Ready: {:?}\n--- kubelet log ---\n{}",
            pods.get(name).await.ok().and_then(|p| p.status),
            tail(&node.kubelet_log(), 40)
        ),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The basics of a real node: it becomes Ready; a busybox pod with exec liveness and
/// readiness probes runs and stays Ready without restarts, and is restarted once the
/// file its liveness probe tests is gone; the device plugin advertises
/// `volumes.brightbox.com/vol-test` = 1 while its link exists, a pod requesting it is
/// admitted and sees the device at /dev/disk/by-id/virtio-vol-test, the count drops to
/// 0 when the link goes and is 1 again when it comes back. Shutting the node down leaves
/// nothing behind.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root and the real control plane and node (Go); built with --features skip-e2e"
)]
#[tokio::test(flavor = "multi_thread")]
async fn a_real_node_runs_pods_and_advertises_a_volume() {
    control_plane::node::require_root("the real-node test");
    let cp = ControlPlane::start_with(Options {
        volguard: false,
        scheduler: false,
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    let node = cp
        .real_node(NodeOptions {
            volumes: vec!["vol-test".to_owned()],
            attached: vec!["vol-test".to_owned()],
            ..NodeOptions::default()
        })
        .await;
    eprintln!(
        "real node Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The kubelet's API refuses a caller without kube-apiserver's client certificate
    // (`kubectl exec` below goes through it with one).
    let url = format!("https://{}:{}/pods", node.ip, node.kubelet_port);
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "401",
        "an anonymous GET {url}"
    );

    // A container with exec probes: runs, becomes Ready, is not restarted.
    // A generous timeout: on two busy cores one `runc exec` can take over a second, and
    // a probe that timed out would restart the container for nothing.
    let probe = json!({"exec": {"command": ["test", "-e", "/tmp/alive"]}, "periodSeconds": 1,
        "timeoutSeconds": 10});
    cp.create(pod(
        "probed",
        json!({"livenessProbe": probe, "readinessProbe": probe}),
    ))
    .await;
    ready(&cp, &node, "probed").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let p = ready(&cp, &node, "probed").await;
    let failed = cp.events_of(&p, "Unhealthy").await;
    assert!(
        failed.is_empty(),
        "a probe failed on a healthy container: {failed:?}"
    );
    let restarts = p.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(
        restarts, 0,
        "the liveness probe failed on a healthy container"
    );
    // The probe runs in the container: without its file the container is restarted (and
    // makes the file again).
    let (ok, _, err) = cp.kubectl(
        &[
            "exec",
            "--namespace=default",
            "probed",
            "--",
            "rm",
            "/tmp/alive",
        ],
        None,
    );
    assert!(ok, "kubectl exec: {err}");
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "default");
    let restarted = wait_for(Duration::from_secs(30), || async {
        let p = pods.get("probed").await.ok()?;
        let restarts = p.status?.container_statuses?.first()?.restart_count;
        (restarts >= 1).then_some(())
    })
    .await;
    assert!(
        restarted.is_some(),
        "the liveness probe never restarted the container"
    );
    ready(&cp, &node, "probed").await;

    // The device plugin: 1 while the link exists.
    advertises(&cp, &node, "1").await;

    // A pod requesting the volume is admitted and sees the device.
    let limits = json!({"resources": {"limits": {RESOURCE: "1"}}});
    cp.create(pod("with-volume", limits)).await;
    ready(&cp, &node, "with-volume").await;
    let (ok, out, err) = cp.kubectl(
        &[
            "exec",
            "--namespace=default",
            "with-volume",
            "--",
            "ls",
            "-l",
            "/dev/disk/by-id/virtio-vol-test",
        ],
        None,
    );
    assert!(ok, "kubectl exec: {err}");
    // The link to /dev/null is passed as that device: a character device.
    assert!(out.starts_with('c'), "not a device in the container: {out}");

    // The link goes: 0; it comes back: 1.
    node.detach("vol-test");
    advertises(&cp, &node, "0").await;
    node.attach("vol-test");
    advertises(&cp, &node, "1").await;

    let left = node.shutdown();
    assert!(left.is_empty(), "the real node left behind: {left:?}");
}

/// The real node's start refuses a machine where another container runtime runs (its
/// cgroups and sockets are the ones a real node removes after it), naming the process,
/// and changes nothing there.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root (a real node's machine checks); built with --features skip-e2e"
)]
#[test]
fn a_real_node_refuses_a_machine_running_another_container_runtime() {
    control_plane::node::require_root("the real-node machine test");
    let _turn = host::lock(node::LOCK);
    let had_state = host::state_file().exists();
    // A process named containerd that is no real node's: a script (its name is the
    // process's), in a process group of its own with the sleep it runs.
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("containerd");
    fs::write(&fake, "#!/bin/sh\nsleep 600\n").expect("fake containerd");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut other = Command::new(&fake)
        .process_group(0)
        .spawn()
        .expect("fake containerd");
    // Running, named: /proc shows it once the kernel ran the script.
    let comm = format!("/proc/{}/comm", other.id());
    let named = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "containerd")
    });
    let refused = std::panic::catch_unwind(node::prepare_machine);
    // SAFETY: kill has no memory preconditions; a negative pid names the group.
    unsafe {
        libc::kill(-(other.id() as i32), libc::SIGKILL);
    }
    let _ = other.wait();
    assert!(named, "the fake containerd never ran");
    let message = match refused {
        Ok(before) => {
            let mut left = Vec::new();
            before.restore(&mut left);
            panic!("a real node started beside another containerd (left: {left:?})");
        }
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains(&format!("pid {}: containerd", other.id()))
            && message.contains("another kubelet or container runtime runs on this machine"),
        "{message}"
    );
    assert_eq!(host::state_file().exists(), had_state, "nothing recorded");
}

/// The process's start time (in clock ticks since boot), which tells it from a later
/// process given the same pid.
fn started(pid: u32) -> Option<String> {
    // The fields after comm start at 3 (state); starttime is field 22.
    let (_, fields) = host::stat(i32::try_from(pid).ok()?)?;
    fields.get(19).cloned()
}

/// A run killed before its cleanup (Ctrl-C, a timeout) is undone by the next real node
/// to start. First a run killed right after it recorded the machine and changed a
/// kernel setting and the global paths (only its state file tells): the next start
/// restores the setting the dead run recorded, not the one it left, and removes its
/// files. Then a run killed with its processes (in process groups of their own) and
/// folder: all go.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs root (a real node's machine checks); built with --features skip-e2e"
)]
#[test]
fn the_next_real_node_undoes_a_run_killed_before_its_cleanup() {
    control_plane::node::require_root("the real-node machine test");
    let _turn = host::lock(node::LOCK);
    let plugins = Path::new(node::DEVICE_PLUGINS);

    // 1. Only the state file tells of the dead run.
    drop(node::prepare_machine());
    let setting = Path::new("/proc/sys/kernel/panic");
    let original = fs::read_to_string(setting).expect("kernel.panic");
    let changed = format!("{}\n", original.trim().parse::<i64>().unwrap_or(0) + 7);
    fs::write(setting, &changed).expect("change kernel.panic");
    fs::create_dir_all(plugins).expect("device-plugin folder");
    fs::write(plugins.join("kubelet.sock"), "").expect("kubelet.sock");
    let next = node::prepare_machine();
    assert_eq!(
        fs::read_to_string(setting).expect("kernel.panic"),
        original,
        "kernel.panic restored from the dead run's record"
    );
    assert!(
        !plugins.join("kubelet.sock").exists(),
        "kubelet.sock still there"
    );

    // 2. Its processes and folder too.
    drop(next);
    let folder = tempfile::Builder::new()
        .prefix(host::FOLDER_PREFIX)
        .tempdir()
        .expect("temp dir")
        .keep();
    let mut holder = Command::new("bash")
        .arg("-c")
        .arg(format!("exec -a {}/namespace sleep 600", folder.display()))
        .process_group(0)
        .spawn()
        .expect("a process of the dead run");
    let pid = holder.id();
    let named = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let start = started(pid);
    let next = std::panic::catch_unwind(node::prepare_machine);
    // Reaped by the reclaim already (this process is its parent), unless it survived.
    let _ = holder.try_wait();
    let survived = start.is_some() && started(pid) == start;
    if survived {
        // SAFETY: kill has no memory preconditions; a negative pid names the group.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
        let _ = holder.wait();
    }
    let next = next.unwrap_or_else(|e| {
        let _ = fs::remove_dir_all(&folder);
        std::panic::resume_unwind(e)
    });
    assert!(named && start.is_some(), "the dead run's process never ran");
    assert!(!survived, "the dead run's process {pid} still ran");
    assert!(!folder.exists(), "{} still there", folder.display());
    let mut left = Vec::new();
    next.restore(&mut left);
    assert!(left.is_empty(), "left: {left:?}");
    assert!(!host::state_file().exists(), "the state file removed");
}
