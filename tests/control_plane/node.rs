//! A real node beside the control plane: containerd, the kubelet and the test device
//! plugin (`e2e/device-plugin`), built by `scripts/node.sh`, running real pods with
//! runc and the CNI bridge plugin. Needs root.
//!
//! - containerd (config v3) keeps its root, state, runc state, network namespaces and
//!   CNI configuration in the node's own temporary folder; the bridge has no `ipMasq`
//!   and no portmap, so nothing touches iptables. Images come from no registry: the
//!   pause and busybox images ([`super::images`]) are imported with `ctr`, and a test
//!   can import more ([`RealNode::import_image`]).
//! - The kubelet registers Node [`REAL_NODE`] with the test's kube-apiserver as
//!   `system:node:real-node`, at the machine's own address (kube-apiserver prefers the
//!   InternalIP, so `kubectl exec` and logs reach it). Its API port takes only
//!   kube-apiserver's client certificate (from the test's API CA), not anonymous calls.
//! - Some paths are the same whatever the flags (the device plugins' registration
//!   socket `/var/lib/kubelet/device-plugins/kubelet.sock`, the CNI cache, containerd's
//!   shim sockets, the container logs) and so are the cgroups `kubepods` and `k8s.io`:
//!   see [`super::host`]. So one real node runs at a time per machine: a file lock
//!   ([`LOCK`]) serializes them across test binaries, and none starts where another
//!   kubelet or container runtime runs.
//! - Dropping the [`RealNode`] (a failed test too) kills the process groups, the pods'
//!   processes and shims, unmounts everything under its folder, removes the cgroups,
//!   the bridge and its folder, and puts back the global paths and kernel settings as
//!   it found them. [`RealNode::shutdown`] does the same and says what it could not
//!   remove. A run killed before that is cleaned up when the next real node starts.
//!   The test process adopts the orphaned shims and pod processes, so that killed ones
//!   are reaped rather than left as zombies.

use std::{
    fs::{self, File},
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    Component, ControlPlane, fail, free_port,
    host::{
        self, Before, CGROUPS, NAMESPACED_PATHS, adopt_orphans, cgroup_hierarchies, delete_link,
        kill_pid, processes_with_arg, reap, remove_cgroups, remove_unmounted, unmount_under,
        zombie_shims,
    },
    images::{self, Image},
    wait_for, write, write_kubeconfig,
};

/// The Node name of the real node.
pub const REAL_NODE: &str = "real-node";
/// The real node's bearer token (user `system:node:real-node`, group `system:nodes`),
/// in the API server's token file.
pub(super) fn node_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    super::random_token(&T, "real-node")
}

/// The second real node's bearer token (user `system:node:real-node-b`).
pub(super) fn node_b_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    super::random_token(&T, "real-node-b")
}
/// The file lock that makes real nodes take turns on a machine.
pub const LOCK: &str = "volguard-real-node.lock";
/// The pause image containerd 2.4 runs as each pod's sandbox (its default name).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The workload image: Debian's static busybox, with a tag, so that the default pull
/// policy is `IfNotPresent` and the kubelet never pulls.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:1.35.0";
/// The second real node's name ([`NodeOptions::second`]).
pub const REAL_NODE_B: &str = "real-node-b";
/// What tells the two real nodes of a machine apart.
struct Identity {
    name: &'static str,
    /// The file lock (in the temp folder) that makes such nodes take turns.
    lock: &'static str,
    /// The CNI bridge and the pods' subnet.
    bridge: &'static str,
    subnet: &'static str,
    /// The kubelet's `cgroupRoot` (its pods' cgroups go below it): `/` for the first.
    cgroup_root: &'static str,
    token: fn() -> &'static str,
}
/// The first real node: the machine's own mount namespace.
const FIRST: Identity = Identity {
    name: REAL_NODE,
    lock: LOCK,
    bridge: "vgbr0",
    subnet: "10.244.0.0/24",
    cgroup_root: "/",
    token: node_token,
};
/// The second: a mount namespace of its own, where the paths every kubelet and
/// containerd use whatever their flags ([`NAMESPACED_PATHS`]) are empty tmpfs mounts.
const SECOND: Identity = Identity {
    name: REAL_NODE_B,
    lock: "volguard-real-node-b.lock",
    bridge: "vgbr1",
    subnet: "10.244.1.0/24",
    cgroup_root: "/volguard-node-b",
    token: node_b_token,
};
/// The kubelet's device-plugin folder, whatever its root folder.
pub const DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
/// Whether this process runs a first real node, which a second one needs beside it.
static FIRST_RUNNING: AtomicBool = AtomicBool::new(false);

/// Makes the machine ready for the first real node, whose lock ([`LOCK`]) the caller
/// holds: see [`host::prepare`].
pub fn prepare_machine() -> Before {
    host::prepare(&[FIRST.bridge, SECOND.bridge], &[SECOND.cgroup_root])
}

/// Where the node binaries are: `VOLGUARD_NODE_BIN` when set, else built by
/// `scripts/node.sh`.
fn binaries() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        crate::common::built_by(
            "node.sh",
            "VOLGUARD_NODE_BIN",
            "the real-node tests need Go, the Go module proxy, a C compiler and libseccomp's \
             headers (Debian: libseccomp-dev) to build the kubelet, containerd, runc, the CNI \
             plugins and the device plugin, or VOLGUARD_NODE_BIN naming a folder that holds them",
        )
    })
}

/// What the real node runs besides the kubelet and containerd.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// The volume ids the device plugin serves (`volumes.brightbox.com/<id>`); empty:
    /// every `virtio-*` in [`RealNode::volumes`], including those that appear later.
    pub volumes: Vec<String>,
    /// Links to make in [`RealNode::volumes`] before the plugin starts
    /// (`virtio-<id>` -> `/dev/null`).
    pub attached: Vec<String>,
    /// Images to import besides the pause and busybox ones, before the kubelet starts
    /// (so no pod of the node ever tries to pull them).
    pub images: Vec<Image>,
    /// The second real node, [`REAL_NODE_B`], beside the first: in a mount namespace of
    /// its own (empty tmpfs mounts over the paths every kubelet uses), with its own
    /// cgroup root, bridge, subnet and ports. It needs the first one running: start it
    /// after the first and drop it before (the first owns the machine's paths and
    /// restores its kernel settings).
    pub second: bool,
}

/// containerd, the kubelet and the device plugin of one real node; torn down on drop.
pub struct RealNode {
    /// The stand-in for `/dev/disk/by-id` that the device plugin watches.
    pub volumes: PathBuf,
    /// The node's InternalIP.
    pub ip: String,
    /// The kubelet's API port (HTTPS at [`RealNode::ip`]).
    pub kubelet_port: u16,
    /// The Node's name.
    pub name: &'static str,
    identity: &'static Identity,
    /// The second node's mount namespace, held by a sleeping process.
    namespace: Option<Component>,
    /// The global paths the second node made on the machine (as mount points).
    made: Vec<PathBuf>,
    containerd: Option<Component>,
    kubelet: Option<Component>,
    device_plugin: Option<Component>,
    socket: PathBuf,
    /// The machine as the first node found it (the second one changes nothing of it).
    before: Option<Before>,
    dir: Option<tempfile::TempDir>,
    _lock: File,
}

/// Fails loudly unless the test runs as root.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "{what} needs root (it runs containerd, runc and a kubelet, mounts overlays, makes \
         cgroups and a network bridge); running as uid {uid}. Run the tests as root, or \
         `cargo test --features skip-e2e` to leave the end-to-end tests out"
    );
}

/// The machine's own address: the source address of its default route.
pub(super) fn host_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.123"])
        .output()
        .unwrap_or_else(|e| fail("find the machine's address (ip route get)", e, None));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src"
            && let Some(ip) = words.next()
        {
            return ip.to_owned();
        }
    }
    // No default route (an offline machine): the first global IPv4 address.
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap_or_else(|e| fail("find the machine's address (ip addr)", e, None));
    let addrs = String::from_utf8_lossy(&out.stdout);
    let mut words = addrs.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet"
            && let Some(ip) = words.next().and_then(|cidr| cidr.split('/').next())
        {
            return ip.to_owned();
        }
    }
    fail(
        "find the machine's address",
        format!("no src in `ip route get` ({text}) and no global IPv4 address ({addrs})"),
        None,
    )
}

/// Sends `signal` to the process group `pgid`.
fn kill_group(pgid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; a negative pid names a group.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

impl ControlPlane {
    /// Starts a real node ([`REAL_NODE`], or [`REAL_NODE_B`]) registered with this
    /// control plane, and waits for it to be Ready; then removes the `not-ready` taint the
    /// API server gave it (no node lifecycle controller runs here).
    pub async fn real_node(&self, options: NodeOptions) -> RealNode {
        require_root("a real node");
        adopt_orphans();
        let bin = binaries().to_owned();
        let identity = if options.second { &SECOND } else { &FIRST };
        let lock = tokio::task::spawn_blocking(move || host::lock(identity.lock))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let before = if options.second {
            if !FIRST_RUNNING.load(Ordering::SeqCst) {
                fail(
                    "start the second real node",
                    "start the first real node before it (and drop it after): the first one \
                     owns the machine's paths and kernel settings",
                    None,
                );
            }
            None
        } else {
            let prepared = tokio::task::spawn_blocking(prepare_machine).await;
            Some(prepared.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
        };

        let dir = tempfile::Builder::new()
            .prefix(host::FOLDER_PREFIX)
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_owned();
        let ip = self.node_ip.clone().unwrap_or_else(host_ip);
        let mut node = RealNode {
            volumes: root.join("by-id"),
            ip: ip.clone(),
            kubelet_port: 0,
            name: identity.name,
            identity,
            namespace: None,
            made: Vec::new(),
            containerd: None,
            kubelet: None,
            device_plugin: None,
            socket: root.join("containerd/containerd.sock"),
            before,
            dir: Some(dir),
            _lock: lock,
        };
        // From here its teardown (on drop, a panic too) clears it.
        if !options.second {
            FIRST_RUNNING.store(true, Ordering::SeqCst);
        }
        for d in [
            "by-id",
            "containerd",
            "cni/bin",
            "cni/net.d",
            "kubelet",
            "images",
        ] {
            fs::create_dir_all(root.join(d)).expect("node folders");
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            symlink(bin.join(plugin), root.join("cni/bin").join(plugin)).expect("CNI plugin");
        }
        for id in &options.attached {
            node.attach(id);
        }

        if options.second {
            node.enter_own_namespace(&root).await;
        }
        node.make_cgroup_root();
        node.start_containerd(&bin, &root).await;
        node.import_images(&root);
        for image in &options.images {
            node.import_image(image);
        }
        node.start_kubelet(self, &bin, &root, &ip).await;
        node.start_device_plugin(&bin, &root, &options.volumes);

        let nodes: Api<Node> = Api::all(self.admin.clone());
        let ready = wait_for(Duration::from_secs(60), || async {
            let n = nodes.get_opt(identity.name).await.ok()??;
            let conditions = n.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
        if ready.is_none() {
            fail(
                &format!("real node: Node {} Ready within 60 s", identity.name),
                "not Ready",
                node.kubelet.as_ref(),
            );
        }
        nodes
            .patch(
                identity.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await
            .unwrap_or_else(|e| fail("untaint the real node", e, Some(&self.apiserver)));
        node
    }
}

impl RealNode {
    /// A command for `program`, run in the node's mount namespace.
    fn command(&self, program: &Path) -> Command {
        match self.namespace.as_ref().and_then(Component::pid) {
            Some(holder) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{holder}/ns/mnt"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// A mount namespace for the second node, held by a sleeping process, in which the
    /// global paths are empty tmpfs mounts (the mount points are made when missing;
    /// the first node makes them anyway).
    async fn enter_own_namespace(&mut self, root: &Path) {
        // The mount points the first node has not made yet: made here on the machine,
        // removed after this node when still empty.
        self.made = NAMESPACED_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let mut script = String::from("set -e; ");
        for p in NAMESPACED_PATHS {
            script.push_str(&format!(
                "mkdir -p {p}; mount -t tmpfs -o mode=0755 tmpfs {p}; "
            ));
        }
        // Named after the node's folder, so a run that died is reclaimed with it.
        script.push_str(&format!(
            "echo namespace ready; exec -a {}/namespace sleep infinity",
            root.display()
        ));
        // `slave`: the machine's unmounts (the first node's pods going) reach this
        // namespace too, and nothing mounted here leaks out.
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "slave", "--", "bash", "-c"])
            .arg(script)
            .process_group(0);
        let mut holder = Component::spawn("mount namespace", command, root.join("namespace.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !holder.log().contains("namespace ready") {
            if let Some(status) = holder.exited() {
                fail("second node: its mount namespace", status, Some(&holder));
            }
            if Instant::now() >= deadline {
                fail(
                    "second node: its mount namespace within 10 s",
                    "no",
                    Some(&holder),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.namespace = Some(holder);
    }

    /// The kubelet's `cgroupRoot` in every hierarchy (it must exist; `/` does).
    fn make_cgroup_root(&self) {
        if self.identity.cgroup_root == "/" {
            return;
        }
        for hierarchy in cgroup_hierarchies() {
            let dir = hierarchy.join(self.identity.cgroup_root.trim_start_matches('/'));
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot make the cgroup {}: {e}", dir.display()));
        }
    }

    /// Makes the device link `virtio-<id>` (to `/dev/null`), as attaching the volume does.
    pub fn attach(&self, id: &str) {
        symlink("/dev/null", self.volumes.join(format!("virtio-{id}"))).expect("device link");
    }

    /// Removes the device link `virtio-<id>`, as detaching the volume does.
    pub fn detach(&self, id: &str) {
        fs::remove_file(self.volumes.join(format!("virtio-{id}"))).expect("device link");
    }

    /// The node's folder.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("running").path()
    }

    /// The kubelet's log.
    pub fn kubelet_log(&self) -> String {
        self.kubelet
            .as_ref()
            .map(Component::log)
            .unwrap_or_default()
    }

    /// The device plugin's log.
    pub fn device_plugin_log(&self) -> String {
        self.device_plugin
            .as_ref()
            .map(Component::log)
            .unwrap_or_default()
    }

    /// Runs crictl against the node's containerd; returns (success, stdout, stderr).
    pub fn crictl(&self, args: &[&str]) -> (bool, String, String) {
        self.try_crictl(args)
            .unwrap_or_else(|e| panic!("cannot run crictl: {e}"))
    }

    /// [`RealNode::crictl`], with an error when crictl cannot run at all.
    fn try_crictl(&self, args: &[&str]) -> std::io::Result<(bool, String, String)> {
        let out = Command::new(binaries().join("crictl"))
            .arg(format!(
                "--runtime-endpoint=unix://{}",
                self.socket.display()
            ))
            .arg(format!("--image-endpoint=unix://{}", self.socket.display()))
            .arg("--timeout=20s")
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn start_containerd(&mut self, bin: &Path, root: &Path) {
        let c = root.join("containerd");
        let p = |rel: &str| c.join(rel).display().to_string();
        // The bridge, without ipMasq (and no portmap): no iptables.
        let conf = json!({
            "cniVersion": "1.0.0", "name": "volguard-e2e",
            "plugins": [{
                "type": "bridge", "bridge": self.identity.bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.identity.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": root.join("cni/ipam"),
                },
            }],
        });
        write(
            &root.join("cni/net.d/10-bridge.conflist"),
            &serde_json::to_string_pretty(&conf).expect("json"),
        );
        let toml = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
# No NRI socket in /var/run/nri, no /opt/containerd.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # The machine's root cannot lower a process's oom_score_adj (no CAP_SYS_RESOURCE):
  # runc init would fail to write its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
            root = p("root"),
            state = p("state"),
            socket = self.socket.display(),
            runc = bin.join("runc").display(),
            runc_root = p("runc"),
            cni_bin = root.join("cni/bin").display(),
            cni_conf = root.join("cni/net.d").display(),
        );
        let config = c.join("config.toml");
        write(&config, &toml);
        let mut command = self.command(&bin.join("containerd"));
        command
            .arg(format!("--config={}", config.display()))
            // The shim is found next to containerd, or on PATH.
            .env("PATH", path_with(bin))
            .process_group(0);
        let mut containerd = Component::spawn("containerd", command, root.join("containerd.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket.exists() && self.crictl(&["info"]).0 {
                break;
            }
            if let Some(status) = containerd.exited() {
                fail("containerd: start", status, Some(&containerd));
            }
            if Instant::now() >= deadline {
                fail("containerd: CRI ready within 30 s", "no", Some(&containerd));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.containerd = Some(containerd);
    }

    /// Writes the pause and busybox images and imports them.
    fn import_images(&self, root: &Path) {
        let work = root.join("images");
        for image in images::busybox_images(&work, PAUSE_IMAGE, BUSYBOX_IMAGE) {
            self.import_image(&image);
        }
    }

    /// Imports `image` into containerd's `k8s.io` namespace (the CRI's), where the
    /// kubelet finds it without pulling.
    pub fn import_image(&self, image: &Image) {
        let out = Command::new(binaries().join("ctr"))
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace=k8s.io", "images", "import"])
            .arg(format!("--platform=linux/{}", images::oci_arch()))
            .arg(&image.archive)
            .output()
            .expect("ctr");
        if !out.status.success() {
            fail(
                &format!("import {} (ctr images import)", image.archive.display()),
                String::from_utf8_lossy(&out.stderr),
                self.containerd.as_ref(),
            );
        }
    }

    /// Starts the kubelet and waits for its /healthz; its two ports are picked free,
    /// and picked again (up to three times) when another process took one meanwhile.
    async fn start_kubelet(&mut self, cp: &ControlPlane, bin: &Path, root: &Path, ip: &str) {
        let kubeconfig = root.join("kubelet.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            cp.api_port,
            &cp.api_ca,
            (self.identity.token)(),
        );
        for attempt in 1..=3 {
            let healthz = free_port();
            self.kubelet_port = free_port();
            let log = root.join(format!("kubelet-{attempt}.log"));
            let mut kubelet = Component::spawn(
                "kubelet",
                self.kubelet_command(cp, bin, root, ip, healthz),
                log,
            );
            let url = format!("http://127.0.0.1:{healthz}/healthz");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let taken = kubelet.log().contains("address already in use");
                if taken && attempt < 3 {
                    eprintln!("kubelet: a port was taken meanwhile, picking others");
                    stop_group(kubelet, Duration::ZERO);
                    break;
                }
                // Its /healthz, and its API port listening: a socket of the kubelet's own.
                if let Ok((200, _)) = super::http(None).get(&url).await
                    && kubelet
                        .pid()
                        .is_some_and(|pid| host::listens(pid, self.kubelet_port))
                {
                    self.kubelet = Some(kubelet);
                    return;
                }
                if let Some(status) = kubelet.exited() {
                    fail("kubelet: start", status, Some(&kubelet));
                }
                if Instant::now() >= deadline {
                    fail("kubelet: /healthz 200 within 60 s", "no", Some(&kubelet));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The kubelet's command, its configuration written beside it.
    fn kubelet_command(
        &self,
        cp: &ControlPlane,
        bin: &Path,
        root: &Path,
        ip: &str,
        healthz: u16,
    ) -> Command {
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // The machine: cgroup v1, and root without CAP_SYS_RESOURCE.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.identity.cgroup_root,
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": format!("unix://{}", self.socket.display()),
            "address": ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            // Only kube-apiserver (exec, logs), with its client certificate from the
            // test's API CA; whoever holds one may do anything.
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": false},
                "x509": {"clientCAFile": cp.dir().join("api-ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            // Nothing of the host's logs over that open port, and no iptables chains.
            "enableSystemLogHandler": false,
            "makeIPTablesUtilChains": false,
            "podLogsDir": root.join("pod-logs"),
            "volumePluginDir": root.join("volume-plugins"),
            // A shared disk may be nearly full: no evictions, no image GC.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "failSwapOn": false,
            "registerNode": true,
            "nodeStatusReportFrequency": "10s",
            "serializeImagePulls": false,
        });
        let config_path = root.join("kubelet.json");
        write(&config_path, &config.to_string());
        let mut command = self.command(&bin.join("kubelet"));
        command
            .arg(format!("--config={}", config_path.display()))
            .arg(format!(
                "--kubeconfig={}",
                root.join("kubelet.kubeconfig").display()
            ))
            .arg(format!("--root-dir={}", root.join("kubelet").display()))
            .arg(format!("--cert-dir={}", root.join("kubelet-pki").display()))
            .arg(format!("--hostname-override={}", self.identity.name))
            .arg(format!("--node-ip={ip}"))
            .arg("--v=2")
            .env("PATH", path_with(bin))
            .process_group(0);
        command
    }

    fn start_device_plugin(&mut self, bin: &Path, root: &Path, volumes: &[String]) {
        let mut command = self.command(&bin.join("volume-device-plugin"));
        command
            .arg(format!("--dir={}", self.volumes.display()))
            .arg(format!("--kubelet-socket-dir={DEVICE_PLUGINS}"))
            .arg("--poll=200ms")
            .args(volumes)
            .process_group(0);
        self.device_plugin = Some(Component::spawn(
            "device plugin",
            command,
            root.join("device-plugin.log"),
        ));
    }

    /// Stops everything and removes what the node made; returns what it could not
    /// remove (empty when the machine is as before).
    pub fn shutdown(mut self) -> Vec<String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Vec<String> {
        let Some(dir) = self.dir.take() else {
            return Vec::new();
        };
        let root = dir.keep();
        let mut left = Vec::new();
        // The device plugin and the kubelet first: nothing starts pods any more.
        for c in [self.device_plugin.take(), self.kubelet.take()]
            .into_iter()
            .flatten()
        {
            stop_group(c, Duration::ZERO);
        }
        // containerd stops and removes the pods (their processes, mounts and network).
        if self.containerd.is_some() {
            match self.try_crictl(&["rmp", "--force", "--all"]) {
                Ok((true, _, _)) => {}
                Ok((false, _, err)) => {
                    left.push(format!("crictl rmp --force --all: {}", err.trim()));
                }
                Err(e) => left.push(format!("crictl rmp --force --all: {e}")),
            }
        }
        if let Some(c) = self.containerd.take() {
            stop_group(c, Duration::from_secs(5));
        }
        // Whatever survived: the shims (their own process groups), then every process
        // in the pods' cgroups.
        let socket = self.socket.display().to_string();
        let mut killed = processes_with_arg(&socket);
        for &pid in &killed {
            kill_pid(pid);
        }
        // The first node's cgroups are named at each hierarchy's root (shared with any
        // runtime that started meanwhile: then left alone); the second's are all below
        // its cgroup root.
        let foreign = host::foreign_runtimes();
        match self.identity.cgroup_root {
            "/" if !foreign.is_empty() => {
                host::forget();
                left.push(format!(
                    "another runtime started during the run ({}): the cgroups {CGROUPS:?}, \
                     the global paths and the kernel settings left as they are, and the \
                     machine's record forgotten (undoing it would undo that runtime's \
                     changes too)",
                    foreign.join("; ")
                ));
            }
            "/" => remove_cgroups(CGROUPS, &mut killed, &mut left),
            own => remove_cgroups(&[own], &mut killed, &mut left),
        }
        killed.extend(zombie_shims());
        // The mount namespace goes with its last process: its tmpfs mounts with it.
        if let Some(c) = self.namespace.take() {
            if let Some(pid) = c.pid() {
                killed.push(pid as i32);
            }
            stop_group(c, Duration::ZERO);
        }
        reap(&killed);
        if !delete_link(self.identity.bridge) {
            left.push(format!("network interface {}", self.identity.bridge));
        }
        // The mount points the second node made, once its namespace is gone, if nothing
        // of the first node's went in since (the first node removes them then).
        for p in &self.made {
            let _ = fs::remove_dir(p);
        }
        if std::env::var_os("VOLGUARD_E2E_KEEP").is_some() {
            // Renamed out of the prefix, or the next real node would reclaim it.
            for m in unmount_under(&root) {
                left.push(format!("mount {}", m.display()));
            }
            let name = root.file_name().unwrap_or_default().to_string_lossy();
            let kept = root.with_file_name(name.replacen(host::FOLDER_PREFIX, "volguard-kept-", 1));
            match fs::rename(&root, &kept) {
                Ok(()) => eprintln!("real node files kept in {}", kept.display()),
                Err(e) => left.push(format!(
                    "keep {} as {}: {e}",
                    root.display(),
                    kept.display()
                )),
            }
        } else {
            remove_unmounted(&root, &mut left);
        }
        // What the first node added to the machine's global paths, and its kernel
        // settings (the second one writes only its own tmpfs mounts over those paths).
        if let Some(before) = self.before.take()
            && foreign.is_empty()
        {
            before.restore(&mut left);
        }
        if self.identity.cgroup_root == "/" {
            FIRST_RUNNING.store(false, Ordering::SeqCst);
        }
        left
    }
}

/// SIGTERM to the component's process group, SIGKILL after `grace`.
fn stop_group(mut c: Component, grace: Duration) {
    let Some(pid) = c.pid() else {
        return;
    };
    if !grace.is_zero() {
        kill_group(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && c.exited().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    kill_group(pid, libc::SIGKILL);
    drop(c);
}

/// PATH with `bin` first.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut paths = vec![bin.to_owned()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH")
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, c) in [
                ("containerd", &self.containerd),
                ("kubelet", &self.kubelet),
                ("device plugin", &self.device_plugin),
            ] {
                if let Some(c) = c {
                    eprintln!("--- last lines of the {name} log ---\n{}", c.tail(25));
                }
            }
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("real node: cleanup left behind:\n  {}", left.join("\n  "));
        }
    }
}
