//! A real control plane for tests: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler built from their Go modules (`scripts/control-plane.sh`), and the
//! volguard binary, all on loopback on free ports with generated certificates (but
//! kube-apiserver, which listens on every address when pods on a real node must reach
//! it: [`Options::pods_reach_apiserver`]).
//!
//! - kube-apiserver: secure port only, `--authorization-mode=Node,RBAC`, the default
//!   admission plugins. An admin identity (token, `system:masters`) sets the scene.
//! - `manifests/` is rendered with `kubectl kustomize` and applied as shipped, so
//!   volguard and the scheduler run under the ServiceAccounts and RBAC it grants (their
//!   tokens come from the TokenRequest API). Two changes only, because there is no
//!   kube-proxy and no Secret volume here: the webhook's `clientConfig` is a loopback
//!   `url` with the caBundle `volguard certs` printed, and the scheduler's extender
//!   `urlPrefix` is the loopback address with that CA as `caData` and the client
//!   certificate `volguard certs` wrote as `certData`/`keyData`. volguard runs with the
//!   shipped Deployment's client-certificate flags, its file paths mapped to those files.
//! - Or `charts/volguard` is installed with helm (`Options::chart`), its webhook given
//!   volguard's loopback url and caBundle as values; volguard and the scheduler run from
//!   the release's objects as from `manifests/`.
//! - kube-controller-manager runs the controllers volguard's scenarios meet, each under
//!   its own ServiceAccount as in a real cluster: ServiceAccounts and their tokens,
//!   namespaces, garbage collection, ReplicaSets, Deployments, StatefulSets, the PV
//!   binder and the claim/volume protection, ephemeral volumes, disruption budgets,
//!   attach/detach, EndpointSlices. Not the node lifecycle controller: there is no kubelet to
//!   heartbeat, and it would taint every node unreachable.
//! - There is no kubelet: Nodes and CSINodes, device counts in the node status,
//!   VolumeAttachments' `status.attached`, and a pod's Running/Ready status are written
//!   through the API, as a kubelet or a CSI attacher would; claims are bound by the real
//!   PV binder.
//!
//! - A real node (containerd, the kubelet and a device plugin) can join it: see
//!   [`node`].
//!
//! Every step names itself when it fails, with the last lines of the component's log.
//! Dropping the [`ControlPlane`] kills every process and removes its files, whether the
//! test passed or not. Tests in one binary take turns (one control plane at a time), as
//! two of them would compete for the machine's cores.
#![allow(dead_code)]

pub mod host;
pub mod images;
pub mod node;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use volguard::server::certs;

/// A bearer token for `who`, random for each test process: kube-apiserver listens on
/// every address when pods must reach it ([`Options::pods_reach_apiserver`]), so its
/// tokens must not be guessable from this source.
fn random_token(cell: &'static OnceLock<String>, who: &str) -> &'static str {
    cell.get_or_init(|| {
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(
            &mut fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut bytes,
        )
        .expect("random bytes");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("volguard-e2e-{who}-{hex}")
    })
}

/// The admin's bearer token (group `system:masters`).
fn admin_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    random_token(&T, "admin")
}

/// The stock scheduler's bearer token (user `system:kube-scheduler`).
fn scheduler_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    random_token(&T, "kube-scheduler")
}

/// kube-controller-manager's bearer token (user `system:kube-controller-manager`).
fn controller_manager_token() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    random_token(&T, "kube-controller-manager")
}
/// The controllers kube-controller-manager runs here (see the module docs).
const CONTROLLERS: &str = "serviceaccount-token-controller,serviceaccount-controller,\
namespace-controller,garbage-collector-controller,replicaset-controller,\
deployment-controller,statefulset-controller,disruption-controller,\
persistentvolume-binder-controller,persistentvolume-attach-detach-controller,\
persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,\
ephemeral-volume-controller,root-ca-certificate-publisher-controller,endpointslice-controller";
/// volguard's namespace in `manifests/`.
pub const NAMESPACE: &str = "volguard-system";
/// The namespace that holds helm's record of the release (the chart makes
/// [`NAMESPACE`] itself, with its objects).
pub const HELM_NAMESPACE: &str = "default";
/// The scheduler name the shipped profile uses.
pub const SCHEDULER: &str = "volguard-scheduler";

/// One control plane at a time per test binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the built kube-apiserver, kube-scheduler, kube-controller-manager and etcd are:
/// `VOLGUARD_CONTROL_PLANE_BIN` when set (a folder of the four binaries, at the versions
/// of `e2e/control-plane/go.mod`), else built by `scripts/control-plane.sh`.
fn binaries() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        crate::common::built_by(
            "control-plane.sh",
            "VOLGUARD_CONTROL_PLANE_BIN",
            "the control-plane tests need Go and the Go module proxy to build kube-apiserver, \
             kube-scheduler, kube-controller-manager and etcd (see e2e/control-plane/README.md), \
             or VOLGUARD_CONTROL_PLANE_BIN naming a folder that holds them. Without Go, \
             `cargo test --features skip-e2e` runs every other test and reports these as \
             ignored (docs/testing.md)",
        )
    })
}

pub use crate::common::repo;

/// A port nothing listens on right now. Components bind it themselves a moment later;
/// a start that loses the race is retried on another port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process with its log file.
pub struct Component {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Component {
    /// Starts `command` with its output appended to `log`; killed when dropped.
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Component {
        let file = fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", command.get_program()));
        Component {
            name,
            child: Some(child),
            log,
        }
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited, with its status.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The example config, with its marker resource, for the webhook's own scenarios.
pub fn example_config() -> Option<String> {
    Some(fs::read_to_string(repo("examples/config.yaml")).expect("examples/config.yaml"))
}

/// What to start.
#[derive(Clone)]
pub struct Options {
    /// volguard's config file (YAML); `None`: the one `manifests/` ships in its
    /// ConfigMap.
    pub volguard_config: Option<String>,
    /// The kustomization applied, e.g. `manifests/overlays/remediation`.
    pub manifests: &'static str,
    /// Install `charts/volguard` with helm instead of applying `manifests`, with these
    /// extra helm arguments (`--set ...`): the release `volguard` in the namespace
    /// `default`, its webhook called at volguard's loopback address (`webhook.url`,
    /// `tls.caBundle`). See [`ControlPlane::helm`].
    pub chart: Option<Vec<String>>,
    /// Start volguard (and register its webhook).
    pub volguard: bool,
    /// Start kube-scheduler with the shipped profile.
    pub scheduler: bool,
    /// Extra `volguard serve` flags.
    pub volguard_flags: Vec<String>,
    /// Changes to the shipped KubeSchedulerConfiguration (merged into it).
    pub scheduler_config: Option<Value>,
    /// Also start a stock kube-scheduler with the default profile (`default-scheduler`),
    /// as the identity `system:kube-scheduler`, without volguard.
    pub default_scheduler: bool,
    /// Start kube-controller-manager.
    pub controller_manager: bool,
    /// Run the shipped Deployment's two replicas behind stand-ins for its Services
    /// (see [`ServiceStandIn`]): kube-apiserver reaches them through `volguard`,
    /// kube-scheduler through `volguard-extender` with its ClientIP affinity.
    pub two_replicas: bool,
    /// Let pods on a real node reach kube-apiserver, and kube-apiserver reach Services
    /// through their endpoints: it listens on every address, its certificate names the
    /// machine's address, and it runs with `--enable-aggregator-routing` (webhook
    /// Services resolve to a ready endpoint from the EndpointSlices; there is no
    /// kube-proxy here).
    pub pods_reach_apiserver: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            volguard_config: None,
            manifests: "manifests",
            chart: None,
            volguard: true,
            scheduler: true,
            volguard_flags: Vec::new(),
            scheduler_config: None,
            default_scheduler: false,
            controller_manager: true,
            two_replicas: false,
            pods_reach_apiserver: false,
        }
    }
}

/// etcd, kube-apiserver, volguard and kube-scheduler, torn down on drop.
pub struct ControlPlane {
    // Dropped first: processes die before their directory goes.
    pub etcd: Component,
    pub apiserver: Component,
    pub controller_manager: Option<Component>,
    pub volguard: Option<Component>,
    pub scheduler: Option<Component>,
    pub default_scheduler: Option<Component>,
    /// The API server's secure port.
    pub api_port: u16,
    /// volguard's TLS and plain ports.
    pub volguard_port: u16,
    pub volguard_metrics_port: u16,
    /// The second replica (with `two_replicas`) and its TLS and plain ports.
    pub replica: Option<(Component, u16, u16)>,
    /// The stand-ins for the two Services (with `two_replicas`): webhook, extender.
    pub services: Vec<ServiceStandIn>,
    /// The CA of volguard's serving certificate (from `volguard certs`).
    pub volguard_ca: String,
    /// The scheduler's client certificate and key (PEM, from `volguard certs`), which
    /// the extender paths require.
    pub volguard_client: (String, String),
    /// The shipped Deployment's client-certificate flags, paths mapped to this run's files.
    volguard_auth_flags: Vec<String>,
    /// An admin client.
    pub admin: Client,
    options: Options,
    /// The machine's address, where pods reach kube-apiserver
    /// ([`Options::pods_reach_apiserver`]).
    pub node_ip: Option<String>,
    api_ca: String,
    etcd_url: String,
    dir: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Fails the named step, with the component's last log lines.
fn fail(step: &str, why: impl std::fmt::Display, component: Option<&Component>) -> ! {
    match component {
        Some(c) => panic!(
            "control plane: step `{step}` failed: {why}\n--- last lines of the {} log ({}) ---\n{}",
            c.name,
            c.log.display(),
            c.tail(40)
        ),
        None => panic!("control plane: step `{step}` failed: {why}"),
    }
}

/// Polls `check` every 100 ms until it gives a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// volguard's config file in the ConfigMap `volguard-config` of `manifests`.
fn shipped_volguard_config(manifests: &[Value]) -> String {
    manifests
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "volguard-config")
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .unwrap_or_else(|| fail("find volguard's ConfigMap", "absent", None))
        .to_owned()
}

/// The client-certificate flags of the shipped volguard Deployment, with the Secret
/// volume's paths (`/etc/volguard/tls/ca.crt`) mapped to the files `volguard certs`
/// wrote into `certs_dir`.
fn shipped_auth_flags(manifests: &[Value], certs_dir: &Path) -> Vec<String> {
    const SECRET_DIR: &str = "/etc/volguard/tls/";
    let deployment = manifests
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "volguard")
        .unwrap_or_else(|| fail("find the volguard Deployment", "absent", None));
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap_or_else(|| fail("read the volguard Deployment's args", "absent", None))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut flags = Vec::new();
    for pair in args.windows(2) {
        if let [
            "--client-ca" | "--client-auth" | "--client-allowed-names",
            value,
        ] = pair
        {
            let value = match value.strip_prefix(SECRET_DIR) {
                Some(file) => certs_dir.join(file).display().to_string(),
                None => (*value).to_owned(),
            };
            flags.extend([pair[0].to_owned(), value]);
        }
    }
    flags
}

/// A plain HTTP client for loopback health checks, trusting `ca_pem` for HTTPS.
pub fn http(ca_pem: Option<&str>) -> loopback_http::Client {
    loopback_http::Client::new(ca_pem)
}

impl ControlPlane {
    /// Starts everything with the default options.
    pub async fn start() -> ControlPlane {
        Self::start_with(Options::default()).await
    }

    /// Starts etcd, kube-apiserver, applies `manifests/`, then volguard and its webhook,
    /// then kube-scheduler, as `options` say.
    pub async fn start_with(options: Options) -> ControlPlane {
        let turn = TURN.lock().await;
        volguard::server::tls::install_crypto_provider();
        let bin = binaries().to_owned();
        let dir = tempfile::Builder::new()
            .prefix("volguard-e2e-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_owned();

        // Certificates and identities for the API server; its client certificate for
        // the kubelet's API.
        let node_ip = options.pods_reach_apiserver.then(node::host_ip);
        let names: Vec<String> = ["localhost", "127.0.0.1"]
            .into_iter()
            .map(str::to_owned)
            .chain(node_ip.clone())
            .collect();
        let api_certs = certs::generate(&names, 2)
            .unwrap_or_else(|e| fail("generate the API server certificate", e, None));
        write(&root.join("api-ca.crt"), &api_certs.ca_pem);
        write(&root.join("api.crt"), &api_certs.cert_pem);
        write(&root.join("api.key"), &api_certs.key_pem);
        let kubelet_client = certs::Ca::from_pem(&api_certs.ca_pem, &api_certs.ca_key_pem)
            .and_then(|ca| {
                ca.client("kube-apiserver-kubelet-client", 2)
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| {
                fail(
                    "generate the API server's kubelet client certificate",
                    e,
                    None,
                )
            });
        write(&root.join("kubelet-client.crt"), &kubelet_client.cert_pem);
        write(&root.join("kubelet-client.key"), &kubelet_client.key_pem);
        let sa_key = rcgen::KeyPair::generate()
            .unwrap_or_else(|e| fail("generate the service-account key", e, None));
        write(&root.join("sa.key"), &sa_key.serialize_pem());
        write(&root.join("sa.pub"), &sa_key.public_key_pem());
        write(
            &root.join("tokens.csv"),
            &format!(
                "{admin},admin,admin-uid,\"system:masters\"\n\
                 {scheduler},system:kube-scheduler,kube-scheduler-uid\n\
                 {controller_manager},system:kube-controller-manager,kube-controller-manager-uid\n\
                 {node_token},system:node:{real_node},real-node-uid,\"system:nodes\"\n\
                 {node_b_token},system:node:{real_node_b},real-node-b-uid,\"system:nodes\"\n",
                admin = admin_token(),
                scheduler = scheduler_token(),
                controller_manager = controller_manager_token(),
                node_token = node::node_token(),
                real_node = node::REAL_NODE,
                node_b_token = node::node_b_token(),
                real_node_b = node::REAL_NODE_B,
            ),
        );

        let (etcd, etcd_url) = start_etcd(&bin, &root).await;
        let (apiserver, api_port) =
            start_apiserver(&bin, &root, &etcd_url, None, node_ip.as_deref()).await;
        let admin_kubeconfig = root.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            api_port,
            &api_certs.ca_pem,
            admin_token(),
        );
        let admin = client(&admin_kubeconfig).await;

        let mut cp = ControlPlane {
            etcd,
            apiserver,
            controller_manager: None,
            volguard: None,
            scheduler: None,
            default_scheduler: None,
            api_port,
            volguard_port: 0,
            volguard_metrics_port: 0,
            replica: None,
            services: Vec::new(),
            volguard_ca: String::new(),
            volguard_client: (String::new(), String::new()),
            volguard_auth_flags: Vec::new(),
            admin,
            options: options.clone(),
            node_ip,
            api_ca: api_certs.ca_pem,
            etcd_url,
            dir,
            _turn: turn,
        };
        if options.controller_manager {
            cp.start_controller_manager().await;
        }
        let manifests = match &options.chart {
            Some(values) => cp.install_chart(values),
            None => {
                let manifests = cp.rendered_manifests();
                cp.apply_manifests(&manifests).await;
                manifests
            }
        };
        if options.volguard {
            cp.start_volguard(&manifests).await;
            if options.two_replicas {
                let (replica, port, metrics) = cp.spawn_replica().await;
                cp.replica = Some((replica, port, metrics));
                let backends = vec![cp.volguard_port, port];
                cp.services = vec![
                    ServiceStandIn::start(backends.clone(), false).await,
                    ServiceStandIn::start(backends, true).await,
                ];
            }
            cp.register_webhook(&manifests).await;
        }
        if options.scheduler {
            cp.start_scheduler(&manifests).await;
        }
        if options.default_scheduler {
            cp.start_default_scheduler().await;
        }
        cp
    }

    /// kube-controller-manager with [`CONTROLLERS`], each under its own ServiceAccount
    /// (`--use-service-account-credentials`, tokens from the TokenRequest API); ready
    /// once the ServiceAccount controller has made `default/default`.
    async fn start_controller_manager(&mut self) {
        let root = self.dir().to_owned();
        let kubeconfig = root.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            self.api_port,
            &self.api_ca,
            controller_manager_token(),
        );
        let mut command = Command::new(binaries().join("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(serving_flags(&kubeconfig))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                root.join("sa.key").display()
            ))
            .arg(format!(
                "--root-ca-file={}",
                root.join("api-ca.crt").display()
            ))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--v=1");
        self.controller_manager = Some(Component::spawn(
            "kube-controller-manager",
            command,
            root.join("controller-manager.log"),
        ));
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.admin.clone(), "default");
        let ready = wait_for(Duration::from_secs(60), || async {
            accounts.get_opt("default").await.ok()?.map(|_| ())
        })
        .await;
        if ready.is_none() {
            fail(
                "kube-controller-manager: ServiceAccount default/default within 60 s",
                "not made",
                self.controller_manager.as_ref(),
            );
        }
    }

    /// A stock kube-scheduler with the default profile and no extender.
    async fn start_default_scheduler(&mut self) {
        let root = self.dir().to_owned();
        let kubeconfig = root.join("default-scheduler.kubeconfig");
        write_kubeconfig(&kubeconfig, self.api_port, &self.api_ca, scheduler_token());
        let config = json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "leaderElection": {"leaderElect": false},
        });
        let path = root.join("default-scheduler.json");
        write(&path, &config.to_string());
        self.default_scheduler = Some(Component::spawn(
            "default kube-scheduler",
            scheduler_command(&path, &kubeconfig),
            root.join("default-scheduler.log"),
        ));
    }

    /// The folder of this control plane's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig, for `kubectl`.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir().join("admin.kubeconfig")
    }

    /// Runs kubectl as the admin; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        kubectl(&self.admin_kubeconfig(), args, stdin)
    }

    /// `kubectl kustomize manifests/`, as documents.
    pub fn rendered_manifests(&self) -> Vec<Value> {
        let step = format!("render {} (kubectl kustomize)", self.options.manifests);
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo(self.options.manifests))
            .output()
            .unwrap_or_else(|e| fail(&step, e, None));
        if !out.status.success() {
            fail(&step, String::from_utf8_lossy(&out.stderr), None);
        }
        volguard::sources::snapshot::parse_documents(&String::from_utf8_lossy(&out.stdout), false)
            .unwrap_or_else(|e| fail("parse the rendered manifests", e, None))
    }

    /// Applies every rendered object but the webhook registration, which waits until
    /// volguard answers.
    async fn apply_manifests(&self, manifests: &[Value]) {
        let items: Vec<&Value> = manifests
            .iter()
            .filter(|d| d["kind"] != "MutatingWebhookConfiguration")
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let (ok, _, err) = self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        if !ok {
            fail("kubectl apply manifests/", err, Some(&self.apiserver));
        }
    }

    /// Runs helm as the admin on the release's namespace; returns (success, stdout,
    /// stderr).
    pub fn helm(&self, args: &[&str]) -> (bool, String, String) {
        let kubeconfig = self.admin_kubeconfig();
        let mut all = vec![
            "--kubeconfig",
            kubeconfig.to_str().expect("UTF-8 path"),
            "--namespace",
            HELM_NAMESPACE,
        ];
        all.extend_from_slice(args);
        let out = crate::common::render::helm_output(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the release `volguard` holds now (`helm get manifest`), as documents.
    pub fn release_manifests(&self) -> Vec<Value> {
        let (ok, out, err) = self.helm(&["get", "manifest", "volguard"]);
        if !ok {
            fail("helm get manifest volguard", err, None);
        }
        crate::common::render::documents(&out, "helm get manifest volguard")
    }

    /// `helm install` of `charts/volguard` with `values`, the webhook pointed at the
    /// loopback port volguard will listen on and trusting its CA (so volguard's
    /// certificates and ports are made first); the release's objects.
    fn install_chart(&mut self, values: &[String]) -> Vec<Value> {
        use base64::Engine;
        assert!(
            !self.options.two_replicas,
            "the chart's webhook calls one volguard"
        );
        self.volguard_certs();
        let url = format!(
            "webhook.url=https://localhost:{}/mutate",
            self.volguard_port
        );
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.volguard_ca);
        let ca = format!("tls.caBundle={ca}");
        let chart = repo("charts/volguard");
        let mut args = vec!["install", "volguard", chart.to_str().expect("UTF-8 path")];
        args.extend(["--set", &url, "--set", &ca]);
        args.extend(values.iter().map(String::as_str));
        let (ok, _, err) = self.helm(&args);
        if !ok {
            fail(
                "helm install volguard charts/volguard",
                err,
                Some(&self.apiserver),
            );
        }
        self.release_manifests()
    }

    /// Where [`ControlPlane::volguard_certs`] writes.
    pub fn volguard_certs_dir(&self) -> PathBuf {
        self.dir().join("volguard-certs")
    }

    /// `volguard certs` into the run's folder, and the ports volguard will listen on;
    /// once.
    pub fn volguard_certs(&mut self) {
        if !self.volguard_ca.is_empty() {
            return;
        }
        let certs_dir = self.volguard_certs_dir();
        let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
            .args(["certs", "--service", "volguard", "--namespace", NAMESPACE])
            .arg("--out")
            .arg(&certs_dir)
            .output()
            .unwrap_or_else(|e| fail("volguard certs", e, None));
        if !out.status.success() {
            fail("volguard certs", String::from_utf8_lossy(&out.stderr), None);
        }
        self.volguard_ca = fs::read_to_string(certs_dir.join("ca.crt")).expect("ca.crt");
        self.volguard_client = (
            fs::read_to_string(certs_dir.join("client.crt")).expect("client.crt"),
            fs::read_to_string(certs_dir.join("client.key")).expect("client.key"),
        );
        self.volguard_port = free_port();
        self.volguard_metrics_port = free_port();
    }

    /// A token for a ServiceAccount of volguard's namespace, from the TokenRequest API.
    fn token(&self, account: &str) -> String {
        let (ok, out, err) = self.kubectl(
            &["create", "token", account, "-n", NAMESPACE, "--duration=2h"],
            None,
        );
        if !ok {
            fail(
                &format!("create a token for ServiceAccount {account}"),
                err,
                Some(&self.apiserver),
            );
        }
        out.trim().to_owned()
    }

    /// `volguard certs`, then `volguard serve` under its ServiceAccount; waits for /readyz.
    async fn start_volguard(&mut self, manifests: &[Value]) {
        let root = self.dir().to_owned();
        let certs_dir = root.join("volguard-certs");
        self.volguard_certs();
        self.volguard_auth_flags = shipped_auth_flags(manifests, &certs_dir);
        let token = self.token("volguard");
        let kubeconfig = root.join("volguard.kubeconfig");
        write_kubeconfig(&kubeconfig, self.api_port, &self.api_ca, &token);
        let config = match &self.options.volguard_config {
            Some(config) => config.clone(),
            None => shipped_volguard_config(manifests),
        };
        write(&root.join("volguard.yaml"), &config);
        self.launch_volguard().await;
    }

    /// Restarts volguard with the config in `manifests`' ConfigMap, as the pods a
    /// Deployment rolls out after a config change start with it.
    pub async fn restart_volguard_with(&mut self, manifests: &[Value]) {
        self.stop_volguard();
        write(
            &self.dir().join("volguard.yaml"),
            &shipped_volguard_config(manifests),
        );
        self.launch_volguard().await;
    }

    /// `volguard serve` with the files `start_volguard` wrote, on these ports.
    fn volguard_command(&self, port: u16, metrics_port: u16) -> Command {
        self.volguard_command_of(
            Path::new(env!("CARGO_BIN_EXE_volguard")),
            port,
            metrics_port,
        )
    }

    /// The same `volguard serve` with another build of volguard.
    fn volguard_command_of(&self, binary: &Path, port: u16, metrics_port: u16) -> Command {
        let root = self.dir().to_owned();
        let certs_dir = root.join("volguard-certs");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(root.join("volguard.yaml"))
            .arg("--kubeconfig")
            .arg(root.join("volguard.kubeconfig"))
            .arg("--tls-cert")
            .arg(certs_dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs_dir.join("tls.key"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(["--shutdown-delay", "0s"])
            .args(&self.volguard_auth_flags)
            .args(&self.options.volguard_flags)
            .env("RUST_LOG", "info");
        command
    }

    /// Starts (or restarts) `volguard serve` with the files `start_volguard` wrote.
    pub async fn launch_volguard(&mut self) {
        let root = self.dir().to_owned();
        let command = self.volguard_command(self.volguard_port, self.volguard_metrics_port);
        let volguard = Component::spawn("volguard", command, root.join("volguard.log"));
        self.volguard = Some(volguard);
        let ready = wait_for(Duration::from_secs(60), || async {
            (self.volguard_readyz().await.0 == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            fail(
                "volguard serve: /readyz 200 within 60 s",
                format!("last answer {:?}", self.volguard_readyz().await),
                self.volguard.as_ref(),
            );
        }
    }

    /// A second replica of volguard (same config and identity, its own ports), once
    /// its /readyz answers 200; with its metrics port.
    pub async fn volguard_replica(&self) -> (Component, u16) {
        let (replica, _, metrics_port) = self.spawn_replica().await;
        (replica, metrics_port)
    }

    /// Where kube-apiserver sends the webhook's calls: the `volguard` Service's
    /// stand-in with two replicas, else volguard itself.
    fn webhook_port(&self) -> u16 {
        self.services.first().map_or(self.volguard_port, |s| s.port)
    }

    /// Where kube-scheduler sends the extender's calls: the `volguard-extender`
    /// Service's stand-in with two replicas, else volguard itself.
    fn extender_port(&self) -> u16 {
        self.services.get(1).map_or(self.volguard_port, |s| s.port)
    }

    /// A second replica: the component, its TLS and its plain port.
    async fn spawn_replica(&self) -> (Component, u16, u16) {
        self.spawn_volguard(Path::new(env!("CARGO_BIN_EXE_volguard")))
            .await
    }

    /// Another volguard process of `binary` (same config and identity, its own ports),
    /// once its /readyz answers 200: the component, its TLS and its plain port.
    pub async fn spawn_volguard(&self, binary: &Path) -> (Component, u16, u16) {
        let metrics_port = free_port();
        let port = free_port();
        let command = self.volguard_command_of(binary, port, metrics_port);
        let replica = Component::spawn(
            "volguard replica",
            command,
            self.dir().join("volguard-replica.log"),
        );
        let ready = wait_for(Duration::from_secs(60), || async {
            let url = format!("http://127.0.0.1:{metrics_port}/readyz");
            (http(None).get(&url).await.ok()?.0 == 200).then_some(())
        })
        .await;
        if ready.is_none() {
            fail(
                "volguard replica: /readyz 200 within 60 s",
                "",
                Some(&replica),
            );
        }
        (replica, port, metrics_port)
    }

    /// `/metrics` of the volguard whose plain listener is on `port`.
    pub async fn metrics_at(&self, port: u16) -> String {
        http(None)
            .get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Stops volguard (SIGTERM).
    pub fn stop_volguard(&mut self) {
        if let Some(v) = self.volguard.as_mut() {
            v.stop(Duration::from_secs(10));
        }
    }

    /// `/readyz` of volguard's plain listener: (status, body); status 0 when unreachable.
    pub async fn volguard_readyz(&self) -> (u16, String) {
        http(None)
            .get(&format!(
                "http://127.0.0.1:{}/readyz",
                self.volguard_metrics_port
            ))
            .await
            .unwrap_or((0, String::new()))
    }

    /// `/metrics` of volguard.
    pub async fn volguard_metrics(&self) -> String {
        http(None)
            .get(&format!(
                "http://127.0.0.1:{}/metrics",
                self.volguard_metrics_port
            ))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// POSTs to volguard's TLS port, trusting its CA, as the scheduler (with its client
    /// certificate); (status, body).
    pub async fn volguard_post(&self, path: &str, body: &Value) -> (u16, String) {
        loopback_http::Client::with_identity(&self.volguard_ca, &self.volguard_client)
            .post(
                &format!("https://localhost:{}{path}", self.volguard_port),
                body.to_string(),
            )
            .await
            .unwrap_or_else(|e| panic!("POST {path} to volguard: {e}"))
    }

    /// POSTs to volguard's TLS port, trusting its CA, without a client certificate (as
    /// kube-apiserver calls the webhook); (status, body).
    pub async fn volguard_post_anonymous(&self, path: &str, body: &Value) -> (u16, String) {
        http(Some(&self.volguard_ca))
            .post(
                &format!("https://localhost:{}{path}", self.volguard_port),
                body.to_string(),
            )
            .await
            .unwrap_or_else(|e| panic!("POST {path} to volguard: {e}"))
    }

    /// Applies the shipped MutatingWebhookConfiguration with a loopback `url` and the
    /// caBundle of volguard's CA.
    fn apply_loopback_webhook(&self, manifests: &[Value]) {
        use base64::Engine;
        let mut hook = manifests
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .cloned()
            .unwrap_or_else(|| fail("find the MutatingWebhookConfiguration", "absent", None));
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.volguard_ca);
        for webhook in hook["webhooks"].as_array_mut().expect("webhooks") {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap_or("/mutate")
                .to_owned();
            webhook["clientConfig"] = json!({
                "url": format!("https://localhost:{}{path}", self.webhook_port()),
                "caBundle": ca,
            });
        }
        let (ok, _, err) = self.kubectl(&["apply", "-f", "-"], Some(&hook.to_string()));
        if !ok {
            fail("register the webhook", err, Some(&self.apiserver));
        }
    }

    /// Registers the shipped MutatingWebhookConfiguration with a loopback `url`, then
    /// waits until the API server calls it (a dry-run pod comes back mutated).
    async fn register_webhook(&self, manifests: &[Value]) {
        // The chart was installed with the loopback url already.
        if self.options.chart.is_none() {
            self.apply_loopback_webhook(manifests);
        }
        self.wait_for_webhook().await;
    }

    /// Waits until the API server calls the webhook: a dry-run pod comes back mutated
    /// (30 s at most).
    pub async fn wait_for_webhook(&self) {
        self.namespace("volguard-canary").await;
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), "volguard-canary");
        let canary: Pod = serde_json::from_value(json!({
            "metadata": {"name": "canary", "annotations": {"volguard.io/devices": "brightbox=vol-canary"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .expect("canary pod");
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let called = wait_for(Duration::from_secs(30), || async {
            let pod = pods.create(&dry_run, &canary).await.ok()?;
            pod.metadata
                .annotations
                .is_some_and(|a| a.contains_key("volguard.io/mutated"))
                .then_some(())
        })
        .await;
        if called.is_none() {
            fail(
                "the API server calls the webhook within 30 s",
                "dry-run pods come back unmutated",
                Some(&self.apiserver),
            );
        }
    }

    /// kube-scheduler with the shipped KubeSchedulerConfiguration, under the shipped
    /// ServiceAccount; waits until it holds its leader Lease.
    async fn start_scheduler(&mut self, manifests: &[Value]) {
        let root = self.dir().to_owned();
        let url = format!("https://127.0.0.1:{}", self.extender_port());
        let mut config = self.scheduler_config_for(manifests, &url);
        let kubeconfig = root.join("scheduler.kubeconfig");
        let token = self.token("volguard-scheduler");
        write_kubeconfig(&kubeconfig, self.api_port, &self.api_ca, &token);
        config["clientConnection"] = json!({"kubeconfig": kubeconfig});
        if let Some(changes) = &self.options.scheduler_config {
            merge(&mut config, changes);
        }
        let path = root.join("scheduler-config.json");
        write(&path, &config.to_string());
        self.scheduler = Some(Component::spawn(
            "kube-scheduler",
            scheduler_command(&path, &kubeconfig),
            root.join("scheduler.log"),
        ));
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.admin.clone(), NAMESPACE);
        let leader = wait_for(Duration::from_secs(60), || async {
            let lease = leases.get_opt(SCHEDULER).await.ok()??;
            lease.spec?.holder_identity.filter(|h| !h.is_empty())
        })
        .await;
        if leader.is_none() {
            fail(
                "kube-scheduler holds its leader Lease within 60 s",
                "no holder",
                self.scheduler.as_ref(),
            );
        }
    }

    /// The shipped KubeSchedulerConfiguration with its extender at `url_prefix`
    /// (its `serverName` kept), volguard's CA and the client certificate as data.
    pub fn scheduler_config_at(&self, url_prefix: &str) -> Value {
        self.scheduler_config_for(&self.rendered_manifests(), url_prefix)
    }

    fn scheduler_config_for(&self, manifests: &[Value], url_prefix: &str) -> Value {
        use base64::Engine;
        let mut config = shipped_scheduler_config_in(manifests);
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.volguard_ca);
        for extender in config["extenders"].as_array_mut().expect("extenders") {
            extender["urlPrefix"] = json!(url_prefix);
            let tls = extender["tlsConfig"].as_object_mut().expect("tlsConfig");
            tls.remove("caFile");
            tls.insert("caData".into(), json!(ca));
            for (file, data, pem) in [
                ("certFile", "certData", &self.volguard_client.0),
                ("keyFile", "keyData", &self.volguard_client.1),
            ] {
                if tls.remove(file).is_some() {
                    let pem = base64::engine::general_purpose::STANDARD.encode(pem);
                    tls.insert(data.into(), json!(pem));
                }
            }
        }
        config
    }

    /// Stops the API server (SIGTERM); etcd keeps its data.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop(Duration::from_secs(20));
    }

    /// Starts the API server again on its port.
    pub async fn restart_apiserver(&mut self) {
        let root = self.dir().to_owned();
        let (apiserver, _) = start_apiserver(
            binaries(),
            &root,
            &self.etcd_url,
            Some(self.api_port),
            self.node_ip.as_deref(),
        )
        .await;
        self.apiserver = apiserver;
    }

    /// A second API server over the same etcd, on another port, with an admin client:
    /// changes made through it are invisible to volguard's watches on the first.
    pub async fn second_apiserver(&self) -> (Component, Client) {
        let root = self.dir().to_owned();
        let (apiserver, port) = start_apiserver(
            binaries(),
            &root,
            &self.etcd_url,
            None,
            self.node_ip.as_deref(),
        )
        .await;
        let kubeconfig = root.join("second.kubeconfig");
        write_kubeconfig(&kubeconfig, port, &self.api_ca, admin_token());
        (apiserver, client(&kubeconfig).await)
    }

    /// Creates a namespace, and waits for the ServiceAccount controller to give it the
    /// `default` ServiceAccount (the ServiceAccount admission plugin refuses pods
    /// until then); without kube-controller-manager, makes it.
    pub async fn namespace(&self, name: &str) {
        let (ok, _, err) = self.kubectl(&["create", "namespace", name], None);
        if !ok && !err.contains("AlreadyExists") {
            fail(
                &format!("create namespace {name}"),
                err,
                Some(&self.apiserver),
            );
        }
        if self.controller_manager.is_none() {
            // Nobody else makes it without kube-controller-manager.
            let (ok, _, err) =
                self.kubectl(&["create", "serviceaccount", "default", "-n", name], None);
            if !ok && !err.contains("AlreadyExists") {
                fail(
                    &format!("create ServiceAccount {name}/default"),
                    err,
                    Some(&self.apiserver),
                );
            }
        }
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.admin.clone(), name);
        let made = wait_for(Duration::from_secs(30), || async {
            accounts.get_opt("default").await.ok()?.map(|_| ())
        })
        .await;
        if made.is_none() {
            fail(
                &format!("ServiceAccount {name}/default made within 30 s"),
                "absent",
                self.controller_manager.as_ref(),
            );
        }
    }

    /// Creates any object through the API as the admin (namespaced when the object
    /// says so); returns it as stored.
    pub async fn create(&self, object: Value) -> Value {
        let (ok, out, err) = self.kubectl(
            &["create", "-o", "json", "-f", "-"],
            Some(&object.to_string()),
        );
        if !ok {
            fail(
                &format!(
                    "create {} {}",
                    object["kind"].as_str().unwrap_or("?"),
                    object["metadata"]["name"].as_str().unwrap_or("?")
                ),
                err,
                Some(&self.apiserver),
            );
        }
        serde_json::from_str(&out).expect("kubectl -o json")
    }

    /// A schedulable Node: `allocatable` (with cpu, memory, pods defaults) and Ready in
    /// its status, and without the not-ready taint the API server's admission adds.
    pub async fn node(&self, name: &str, annotations: Value, allocatable: Value) {
        self.node_with(name, annotations, allocatable, &[]).await;
    }

    /// A schedulable Node, as [`Self::node`], with CSI volumes attached to it.
    pub async fn node_with(
        &self,
        name: &str,
        annotations: Value,
        allocatable: Value,
        attached: &[(&str, &str)],
    ) {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                "annotations": annotations,
            },
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| fail(&format!("create Node {name}"), e, Some(&self.apiserver)));
        self.node_status_with(name, allocatable, attached).await;
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await
            .unwrap_or_else(|e| fail(&format!("untaint Node {name}"), e, Some(&self.apiserver)));
    }

    /// Sets a node's capacity and allocatable (cpu, memory and pods added) and Ready.
    pub async fn node_status(&self, name: &str, allocatable: Value) {
        self.node_status_with(name, allocatable, &[]).await;
    }

    /// Like [`Self::node_status`], with CSI volumes the attach/detach controller lists
    /// in `status.volumesAttached`: (driver, volume handle).
    pub async fn node_status_with(
        &self,
        name: &str,
        allocatable: Value,
        attached: &[(&str, &str)],
    ) {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let mut resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
        merge(&mut resources, &allocatable);
        let attached: Vec<Value> = attached
            .iter()
            .map(|(driver, handle)| {
                json!({"name": format!("kubernetes.io/csi/{driver}^{handle}"), "devicePath": ""})
            })
            .collect();
        let status = json!({"status": {
            "capacity": resources,
            "allocatable": resources,
            "volumesAttached": attached,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "no kubelet: a test node",
                "lastHeartbeatTime": now(), "lastTransitionTime": now(),
            }],
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap_or_else(|e| fail(&format!("status of Node {name}"), e, Some(&self.apiserver)));
    }

    /// A CSINode registering `driver` on `node`, with an attach limit when given.
    pub async fn csinode(&self, node: &str, driver: &str, count: Option<i32>) {
        let mut entry = json!({"name": driver, "nodeID": node});
        if let Some(count) = count {
            entry["allocatable"] = json!({"count": count});
        }
        let csinode: k8s_openapi::api::storage::v1::CSINode = serde_json::from_value(json!({
            "metadata": {"name": node},
            "spec": {"drivers": [entry]},
        }))
        .expect("CSINode");
        Api::all(self.admin.clone())
            .create(&PostParams::default(), &csinode)
            .await
            .unwrap_or_else(|e| fail(&format!("create CSINode {node}"), e, Some(&self.apiserver)));
    }

    /// A PV of CSI `driver` with `handle` and a new claim `namespace/claim` naming each
    /// other, as a static provisioner leaves them; the real PV binder binds them.
    pub async fn bound_claim(
        &self,
        namespace: &str,
        claim: &str,
        pv: &str,
        driver: &str,
        handle: &str,
        access_mode: &str,
    ) {
        self.claim_and_volume(
            namespace,
            claim,
            access_mode,
            json!({"name": pv, "csi": {"driver": driver, "volumeHandle": handle}}),
        )
        .await;
    }

    /// Creates the PV that `pv` describes (`name` plus its source and node affinity),
    /// reserved for `namespace/claim` by its claimRef, then the claim naming it, and
    /// waits until the PV binder has bound them. The PV goes first: the binder binds a
    /// new claim to the PV reserved for it at once, where a PV arriving after its claim
    /// waits for the binder's next resync (15 s).
    async fn claim_and_volume(&self, namespace: &str, claim: &str, access_mode: &str, pv: Value) {
        let name = pv["name"].as_str().expect("a PV name").to_owned();
        let mut spec = json!({
            "capacity": {"storage": "10Gi"},
            "accessModes": [access_mode],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": namespace, "name": claim,
            },
        });
        let mut source = pv;
        source.as_object_mut().expect("an object").remove("name");
        merge(&mut spec, &source);
        self.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .await;
        self.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": [access_mode],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "",
                "volumeName": name,
            },
        }))
        .await;
        self.claim_bound(namespace, claim).await;
    }

    /// Waits until the PV binder has bound `namespace/claim` (status `Bound`, with the
    /// annotation kube-scheduler's VolumeBinding looks for).
    pub async fn claim_bound(&self, namespace: &str, claim: &str) {
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(self.admin.clone(), namespace);
        let bound = wait_for(Duration::from_secs(60), || async {
            let c = claims.get(claim).await.ok()?;
            let done = c
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("pv.kubernetes.io/bind-completed"));
            (done && c.status?.phase.as_deref() == Some("Bound")).then_some(())
        })
        .await;
        if bound.is_none() {
            fail(
                &format!("the PV binder binds {namespace}/{claim} within 60 s"),
                "not bound",
                self.controller_manager.as_ref(),
            );
        }
    }

    /// A local PersistentVolume `pv` at `path` on `node` (node affinity on the hostname
    /// label, as the local static provisioner writes it), bound to `namespace/claim`,
    /// ReadWriteOnce, without a StorageClass. kube-scheduler's VolumeBinding enforces
    /// the affinity.
    pub async fn bound_local_claim(
        &self,
        namespace: &str,
        claim: &str,
        pv: &str,
        node: &str,
        path: &str,
    ) {
        self.claim_and_volume(
            namespace,
            claim,
            "ReadWriteOnce",
            json!({
                "name": pv,
                "local": {"path": path},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]},
                ]}]}},
            }),
        )
        .await;
    }

    /// A VolumeAttachment of `pv` to `node` by `attacher`, attached.
    pub async fn attachment(&self, name: &str, attacher: &str, node: &str, pv: &str) {
        self.create(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {"attacher": attacher, "nodeName": node, "source": {"persistentVolumeName": pv}},
        }))
        .await;
        let (ok, _, err) = self.kubectl(
            &[
                "patch",
                "volumeattachment",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"attached":true}}"#,
            ],
            None,
        );
        if !ok {
            fail(&format!("attach {name}"), err, Some(&self.apiserver));
        }
    }

    /// Creates a pod; returns it as stored (after admission).
    pub async fn pod(&self, namespace: &str, pod: Value) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| fail("create a pod", e, Some(&self.apiserver)))
    }

    /// Deletes an object by kind and name with kubectl.
    pub fn delete(&self, args: &[&str]) {
        let mut all = vec!["delete", "--wait=false"];
        all.extend_from_slice(args);
        let (ok, _, err) = self.kubectl(&all, None);
        if !ok {
            fail(
                &format!("kubectl {}", all.join(" ")),
                err,
                Some(&self.apiserver),
            );
        }
    }

    /// The node the pod is bound to, once the scheduler binds it within `timeout`.
    pub async fn bound_node(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        wait_for(timeout, || async {
            pods.get(name).await.ok()?.spec?.node_name
        })
        .await
    }

    /// The pod's PodScheduled=False message once the scheduler reports it.
    pub async fn unschedulable_message(&self, namespace: &str, name: &str) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        wait_for(Duration::from_secs(60), || async {
            let pod = pods.get(name).await.ok()?;
            pod.status?.conditions?.into_iter().find_map(|c| {
                (c.type_ == "PodScheduled" && c.status == "False")
                    .then_some(c.message)
                    .flatten()
            })
        })
        .await
    }

    /// The events in `namespace` matching the field `selector`, oldest first; fails
    /// when they cannot be read (an empty list must mean no such event).
    fn event_items(&self, namespace: &str, selector: &str) -> Vec<Value> {
        let (ok, out, err) = self.kubectl(
            &[
                "get",
                "events",
                "-n",
                namespace,
                "-o",
                "json",
                &format!("--field-selector={selector}"),
            ],
            None,
        );
        let list: Option<Value> = ok.then(|| serde_json::from_str(&out).ok()).flatten();
        match list {
            Some(Value::Object(mut o)) => match o.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => panic!("kubectl get events --field-selector={selector}: {err} {out}"),
        }
    }

    /// The messages of the pod's events with `reason`, oldest first (of every pod that
    /// had that name).
    pub async fn events(&self, namespace: &str, pod: &str, reason: &str) -> Vec<String> {
        let selector = format!("involvedObject.name={pod},reason={reason}");
        messages(self.event_items(namespace, &selector))
    }

    /// The messages of `pod`'s own events with `reason` (by its uid: not those of an
    /// earlier pod of the same name), oldest first.
    pub async fn events_of(&self, pod: &Pod, reason: &str) -> Vec<String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let selector = format!("involvedObject.uid={uid},reason={reason}");
        messages(self.event_items(namespace, &selector))
    }

    /// The pod's events with `reason`: (the scheduler or controller that reported it,
    /// message), oldest first.
    pub async fn events_from(
        &self,
        namespace: &str,
        pod: &str,
        reason: &str,
    ) -> Vec<(String, String)> {
        let selector = format!("involvedObject.name={pod},reason={reason}");
        self.event_items(namespace, &selector)
            .iter()
            .map(|e| {
                let by = e["reportingComponent"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .or(e["source"]["component"].as_str())
                    .unwrap_or_default();
                (
                    by.to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// What the kubelets of the API-only nodes would do for the pods of `namespace`,
    /// until the guard is dropped: a pod bound to a node becomes Running and Ready, and a
    /// pod being deleted is removed (a kubelet confirms a graceful deletion once its
    /// containers stopped). Controllers then see their pods come and go as in a cluster.
    pub fn kubelets(&self, namespace: &str) -> StandIn {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        StandIn(tokio::spawn(async move {
            loop {
                for p in pods.list(&Default::default()).await.into_iter().flatten() {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if p.metadata.deletion_timestamp.is_some() {
                        let _ = pods
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                        continue;
                    }
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    if bound && !ready {
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}});
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }

    /// What the external-provisioner of CSI `driver` would do, until the guard is
    /// dropped: for each claim kube-scheduler picked a node for (the annotation
    /// `volume.kubernetes.io/selected-node`) and that has no volume yet, a PV of the
    /// driver reserved for it; the real PV binder then binds the two.
    pub fn provisioner(&self, driver: &'static str) -> StandIn {
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::all(self.admin.clone());
        let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(self.admin.clone());
        StandIn(tokio::spawn(async move {
            loop {
                for c in claims.list(&Default::default()).await.into_iter().flatten() {
                    let selected = c
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key("volume.kubernetes.io/selected-node"));
                    let spec = c.spec.clone().unwrap_or_default();
                    if !selected || spec.volume_name.is_some() {
                        continue;
                    }
                    let uid = c.metadata.uid.clone().unwrap_or_default();
                    let pv: k8s_openapi::api::core::v1::PersistentVolume =
                        serde_json::from_value(json!({
                            "metadata": {"name": format!("pvc-{uid}")},
                            "spec": {
                                "capacity": {"storage": "10Gi"},
                                "accessModes": spec.access_modes,
                                "persistentVolumeReclaimPolicy": "Delete",
                                "storageClassName": spec.storage_class_name,
                                "csi": {"driver": driver, "volumeHandle": format!("gen-{uid}")},
                                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "namespace": c.metadata.namespace, "name": c.metadata.name,
                                    "uid": uid},
                            },
                        }))
                        .expect("a PV");
                    let _ = pvs.create(&PostParams::default(), &pv).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }

    /// Deletes a pod at once (no kubelet will confirm a graceful delete).
    pub async fn delete_pod_now(&self, namespace: &str, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), namespace);
        let _ = pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
    }
}

/// A Service's stand-in (there is no kube-proxy): a TCP proxy on loopback over the
/// replicas' ports. Each connection goes to the next replica in turn, or, with
/// `affinity` (`sessionAffinity: ClientIP`), to the replica its client's address was
/// first sent to; a replica that refuses connections is skipped, as kube-proxy drops an
/// endpoint that is gone.
pub struct ServiceStandIn {
    /// Where it listens.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ServiceStandIn {
    async fn start(backends: Vec<u16>, affinity: bool) -> ServiceStandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let task = tokio::spawn(async move {
            let mut sticky: std::collections::HashMap<std::net::IpAddr, usize> = Default::default();
            let mut next = 0;
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let first = match affinity {
                    true => *sticky.entry(peer.ip()).or_insert(next),
                    false => next,
                };
                next = (next + 1) % backends.len();
                for k in 0..backends.len() {
                    let i = (first + k) % backends.len();
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backends[i])).await
                    else {
                        continue;
                    };
                    if affinity {
                        sticky.insert(peer.ip(), i);
                    }
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    break;
                }
            }
        });
        ServiceStandIn { port, task }
    }
}

impl Drop for ServiceStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A task playing a component that does not run here (the kubelets, a CSI
/// provisioner); it stops when dropped.
pub struct StandIn(tokio::task::JoinHandle<()>);

impl Drop for StandIn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for ControlPlane {
    /// On a failed test, the last lines of every component's log; with
    /// `VOLGUARD_E2E_KEEP=1`, the folder (logs, certificates, kubeconfigs) is kept.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let components = [Some(&self.etcd), Some(&self.apiserver)]
                .into_iter()
                .chain([
                    self.controller_manager.as_ref(),
                    self.volguard.as_ref(),
                    self.scheduler.as_ref(),
                    self.default_scheduler.as_ref(),
                ])
                .flatten();
            for c in components {
                eprintln!("--- last lines of the {} log ---\n{}", c.name, c.tail(25));
            }
        }
        if std::env::var_os("VOLGUARD_E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("control plane files kept in {}", dir.keep().display());
        }
    }
}

/// The KubeSchedulerConfiguration in the rendered `manifests`' scheduler ConfigMap.
fn shipped_scheduler_config_in(manifests: &[Value]) -> Value {
    let shipped = manifests
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "volguard-scheduler-config")
        .and_then(|d| d["data"]["scheduler-config.yaml"].as_str())
        .unwrap_or_else(|| fail("find the scheduler ConfigMap", "absent", None));
    volguard::sources::snapshot::parse_documents(shipped, false)
        .ok()
        .and_then(|mut d| d.pop())
        .unwrap_or_else(|| fail("parse the shipped scheduler config", "not YAML", None))
}

/// The remediation overlay's volguard config, with a grace period short enough for a
/// test (3 s instead of 60 s).
pub fn remediation_overlay_config() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo("manifests/overlays/remediation"))
        .output()
        .expect("kubectl kustomize");
    let docs =
        volguard::sources::snapshot::parse_documents(&String::from_utf8_lossy(&out.stdout), false)
            .expect("rendered overlay");
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "volguard-config")
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .expect("the overlay's volguard-config")
        .to_owned();
    assert!(config.contains("gracePeriodSeconds: 60"), "{config}");
    config.replace("gracePeriodSeconds: 60", "gracePeriodSeconds: 3")
}

/// A control-plane component's own HTTPS server: on a free loopback port, checking
/// its callers as `kubeconfig`'s identity.
fn serving_flags(kubeconfig: &Path) -> [String; 4] {
    [
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", free_port()),
        format!("--authentication-kubeconfig={}", kubeconfig.display()),
        format!("--authorization-kubeconfig={}", kubeconfig.display()),
    ]
}

/// kube-scheduler with `config`, on a free loopback port, as `kubeconfig`'s identity.
fn scheduler_command(config: &Path, kubeconfig: &Path) -> Command {
    let mut command = Command::new(binaries().join("kube-scheduler"));
    command
        .arg(format!("--config={}", config.display()))
        .args(serving_flags(kubeconfig))
        .arg("--v=2");
    command
}

async fn start_etcd(bin: &Path, root: &Path) -> (Component, String) {
    let mut last = None;
    for _ in 0..3 {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let mut command = Command::new(bin.join("etcd"));
        command
            .arg("--name=e2e")
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=e2e=http://127.0.0.1:{peer}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let mut etcd = Component::spawn("etcd", command, root.join("etcd.log"));
        let health = format!("{url}/health");
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd.exited().is_none() && Instant::now() < deadline {
            if let Ok((200, body)) = http(None).get(&health).await
                && body.contains("true")
            {
                return (etcd, url);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last = Some(etcd);
    }
    let etcd = last.expect("an attempt");
    fail(
        "etcd: healthy within 30 s",
        "it did not answer /health",
        Some(&etcd),
    )
}

async fn start_apiserver(
    bin: &Path,
    root: &Path,
    etcd_url: &str,
    port: Option<u16>,
    node_ip: Option<&str>,
) -> (Component, u16) {
    let mut last = None;
    for _ in 0..3 {
        let port = port.unwrap_or_else(free_port);
        let file = |name: &str| root.join(name).display().to_string();
        let mut command = Command::new(bin.join("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--secure-port={port}"))
            // The kubernetes Service endpoint cannot be a loopback address; nothing here
            // uses it (pods are given the machine's address instead: there is no
            // kube-proxy to route the Service's ClusterIP).
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--tls-cert-file={}", file("api.crt")))
            .arg(format!("--tls-private-key-file={}", file("api.key")))
            .arg(format!("--token-auth-file={}", file("tokens.csv")))
            .arg("--authorization-mode=Node,RBAC")
            // Watchers (volguard, the scheduler) would hold a stop for 60 s.
            .arg("--shutdown-watch-termination-grace-period=2s")
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa.key")
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // A real node (node.rs) is reached at its machine address, not its name.
            .arg("--kubelet-preferred-address-types=InternalIP")
            // The real node's kubelet takes only certificates from the API CA.
            .arg(format!(
                "--kubelet-client-certificate={}",
                file("kubelet-client.crt")
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                file("kubelet-client.key")
            ))
            .arg("--v=1");
        match node_ip {
            Some(ip) => command
                .arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={ip}"))
                .arg("--enable-aggregator-routing=true"),
            None => command
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1"),
        };
        let mut apiserver = Component::spawn(
            "kube-apiserver",
            command,
            root.join(format!("apiserver-{port}.log")),
        );
        let readyz = format!("https://127.0.0.1:{port}/readyz");
        let ca = fs::read_to_string(root.join("api-ca.crt")).expect("api CA");
        let deadline = Instant::now() + Duration::from_secs(90);
        while apiserver.exited().is_none() && Instant::now() < deadline {
            if let Ok((200, _)) = http(Some(&ca)).get_with_token(&readyz, admin_token()).await {
                return (apiserver, port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last = Some(apiserver);
    }
    let apiserver = last.expect("an attempt");
    fail(
        "kube-apiserver: /readyz 200 within 90 s",
        "not ready",
        Some(&apiserver),
    )
}

fn write(path: &Path, text: &str) {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A kubeconfig (JSON, which every client reads) for a bearer token.
fn write_kubeconfig(path: &Path, port: u16, ca_pem: &str, token: &str) {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "e2e", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
        "current-context": "e2e",
    });
    write(path, &config.to_string());
}

async fn client(kubeconfig: &Path) -> Client {
    let file = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new("kubectl");
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl on PATH");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Merges `changes` into `target`, object keys recursively; anything else replaces.
pub fn merge(target: &mut Value, changes: &Value) {
    match (target, changes) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// Now, in the API's time format.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Labels of a pod, for lookups.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The events' messages.
fn messages(events: Vec<Value>) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// A tiny HTTP(S) client over hyper for health checks and volguard's endpoints.
mod loopback_http {
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, body::Bytes};
    use hyper_util::{client::legacy::Client as Hyper, rt::TokioExecutor};

    pub struct Client {
        ca_pem: Option<String>,
        identity: Option<(String, String)>,
    }

    impl Client {
        pub fn new(ca_pem: Option<&str>) -> Self {
            Client {
                ca_pem: ca_pem.map(str::to_owned),
                identity: None,
            }
        }

        /// An HTTPS client trusting `ca_pem` that presents `identity` (certificate and
        /// key, PEM).
        pub fn with_identity(ca_pem: &str, identity: &(String, String)) -> Self {
            Client {
                ca_pem: Some(ca_pem.to_owned()),
                identity: Some(identity.clone()),
            }
        }

        pub async fn get(&self, url: &str) -> Result<(u16, String), String> {
            self.send(Request::get(url), Bytes::new()).await
        }

        pub async fn get_with_token(
            &self,
            url: &str,
            token: &str,
        ) -> Result<(u16, String), String> {
            self.send(
                Request::get(url).header("authorization", format!("Bearer {token}")),
                Bytes::new(),
            )
            .await
        }

        pub async fn post(&self, url: &str, body: String) -> Result<(u16, String), String> {
            self.send(
                Request::post(url).header("content-type", "application/json"),
                Bytes::from(body),
            )
            .await
        }

        async fn send(
            &self,
            builder: hyper::http::request::Builder,
            body: Bytes,
        ) -> Result<(u16, String), String> {
            let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
            let resp = match &self.ca_pem {
                None => Hyper::builder(TokioExecutor::new())
                    .build_http()
                    .request(req)
                    .await
                    .map_err(|e| e.to_string())?,
                Some(ca) => crate::common::client_with(
                    ca,
                    self.identity
                        .as_ref()
                        .map(|(cert, key)| (cert.as_str(), key.as_str())),
                )
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?,
            };
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
    }
}

/// Helpers for measurements (`examples/scheduler_bench.rs`) and later scenarios.
impl ControlPlane {
    /// The admin's bearer token (group `system:masters`), e.g. for the components'
    /// own `/metrics`, which they authorize through the API server.
    pub fn admin_token(&self) -> &'static str {
        admin_token()
    }

    /// The API server's `/metrics` (Prometheus text), scraped as the admin.
    pub async fn apiserver_metrics(&self) -> String {
        let url = format!("https://127.0.0.1:{}/metrics", self.api_port);
        match http(Some(&self.api_ca))
            .get_with_token(&url, admin_token())
            .await
        {
            Ok((200, body)) => body,
            Ok((status, body)) => fail(
                "scrape the API server's /metrics",
                format!("{status}: {body}"),
                Some(&self.apiserver),
            ),
            Err(e) => fail("scrape the API server's /metrics", e, Some(&self.apiserver)),
        }
    }

    /// The KubeSchedulerConfiguration `manifests/` ships, as written there (before the
    /// harness points it at this control plane).
    pub fn shipped_scheduler_config(&self) -> Value {
        shipped_scheduler_config_in(&self.rendered_manifests())
    }

    /// Starts kube-scheduler with the shipped profile now, for a control plane started
    /// with `scheduler: false`; waits until it holds its leader Lease.
    pub async fn start_shipped_scheduler(&mut self) {
        let manifests = self.rendered_manifests();
        self.start_scheduler(&manifests).await;
    }

    /// Another kube-scheduler process with `config` (a KubeSchedulerConfiguration; its
    /// `clientConnection.kubeconfig` is set here, to a token of the shipped scheduler
    /// ServiceAccount), logging to `<name>.log`. Not waited for: it schedules once its
    /// informers have synced.
    pub fn extra_scheduler(&self, name: &'static str, mut config: Value) -> Component {
        let root = self.dir().to_owned();
        let kubeconfig = root.join(format!("{name}.kubeconfig"));
        let token = self.token("volguard-scheduler");
        write_kubeconfig(&kubeconfig, self.api_port, &self.api_ca, &token);
        merge(
            &mut config,
            &json!({"clientConnection": {"kubeconfig": kubeconfig}}),
        );
        let path = root.join(format!("{name}.json"));
        write(&path, &config.to_string());
        Component::spawn(
            name,
            scheduler_command(&path, &kubeconfig),
            root.join(format!("{name}.log")),
        )
    }
}

impl Component {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}
