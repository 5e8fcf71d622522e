//! Shared test harness: the real TLS server on a loopback port, a client that trusts
//! its generated CA, and the shipped example cluster.
#![allow(dead_code)]

pub mod answers;
pub mod dockerfile;
pub mod logs;
pub mod openmetrics;
pub mod raw;
pub mod render;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum_server::tls_rustls::RustlsConfig;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use volguard::{
    cluster::{ClusterState, SharedState},
    model::{config::Config, drivers::Drivers},
    server::{app::App, certs, router, tls},
    sources::snapshot,
};

/// Path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A test tool that `scripts/<script> build` builds from its Go module, once per
/// version (minutes the first time, then at once): the path it prints, or `$env` when
/// set. Panics with `needs` (what the build takes, and the way around it) when the build
/// fails: the tests that use the tool fail rather than skip.
pub fn built_by(script: &str, env: &str, needs: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let script = repo(&format!("scripts/{script}"));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("build")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} build failed ({}): {needs}",
        script.display(),
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The example config shipped in examples/.
pub fn example_config() -> Config {
    Config::load(Some(&repo("examples/config.yaml"))).expect("examples/config.yaml is valid")
}

/// The example config in the existing-scheduler setup: the marker resource
/// `volguard.io/volumes` is injected, and pods are not routed to a second scheduler.
pub fn marker_config() -> Config {
    let mut config = example_config();
    config.marker_resource = "volguard.io/volumes".into();
    config.scheduling.scheduler_name = None;
    config
}

/// A synced state built from the shipped example snapshot.
pub fn example_state(config: &Config) -> ClusterState {
    let snap = snapshot::load(&repo("examples/cluster")).expect("examples/cluster loads");
    snapshot::into_state(&snap, empty_state(config))
}

/// An app over the example config and cluster, to adjust before serving it.
pub fn example_app() -> App {
    let config = example_config();
    let state = example_state(&config);
    App::new(Arc::new(config), SharedState::new(state))
}

/// An empty state for `config`.
/// Poisons the state's lock as a writer that panics while it holds the state does.
pub fn poison(state: &SharedState) {
    let held = state.clone();
    let panicked = std::thread::spawn(move || {
        let _writing = held.write().unwrap();
        panic!("a writer panics while it holds the state");
    })
    .join();
    assert!(panicked.is_err() && state.is_poisoned());
}

pub fn empty_state(config: &Config) -> ClusterState {
    let config = Arc::new(config.clone());
    let drivers = Arc::new(Drivers::new(&config));
    ClusterState::new(config, drivers)
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The server under test and a client for it.
pub struct TestServer {
    /// Where the TLS listener is.
    pub addr: SocketAddr,
    /// Where the plain listener (/metrics, /healthz, /readyz) is.
    pub metrics_addr: SocketAddr,
    /// The CA that signed its certificate.
    pub ca_pem: String,
    /// Its application state, to change the cluster between requests.
    pub app: App,
    /// Its TLS config, to swap certificates.
    pub tls: RustlsConfig,
    client: HttpsClient,
}

impl TestServer {
    /// Starts the real router over TLS on 127.0.0.1 with the example cluster.
    pub async fn example() -> Self {
        Self::with_app(example_app()).await
    }

    /// Starts the real router over TLS with the example cluster and [`marker_config`].
    pub async fn with_marker() -> Self {
        let config = marker_config();
        let state = example_state(&config);
        Self::start(config, state).await
    }

    /// Starts the real router over TLS with the given config and state.
    pub async fn start(config: Config, state: ClusterState) -> Self {
        Self::with_app(App::new(Arc::new(config), SharedState::new(state))).await
    }

    /// Serves `app` over TLS with a fresh certificate for localhost.
    pub async fn with_app(app: App) -> Self {
        let bundle =
            certs::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()], 1).expect("certs");
        Self::launch(app, &bundle, None).await
    }

    /// Serves `app` over TLS with `bundle`'s certificate, verifying client certificates
    /// as `client_auth` says when given (the extender then needs one), plus the plain
    /// listener.
    pub async fn launch(
        mut app: App,
        bundle: &certs::CertBundle,
        client_auth: Option<&tls::ClientAuth>,
    ) -> Self {
        tls::install_crypto_provider();
        app.extender_needs_client_certificate = client_auth.is_some();
        let server_config = tls::server_config(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            client_auth,
            ("cert", "key"),
        )
        .expect("tls config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let metrics_addr = plain.local_addr().expect("addr");
        let tls = RustlsConfig::from_config(Arc::new(server_config));
        tokio::spawn(router::serve_tls(
            listener,
            tls.clone(),
            router::router(app.clone()),
            app.limits,
            app.metrics.clone(),
            axum_server::Handle::new(),
        ));
        tokio::spawn(router::serve_plain(
            plain,
            app.clone(),
            std::future::pending(),
        ));
        let client = client_for(&bundle.ca_pem);
        TestServer {
            addr,
            metrics_addr,
            ca_pem: bundle.ca_pem.clone(),
            app,
            tls,
            client,
        }
    }

    /// GETs a path from the plain listener; returns status, content type and body.
    pub async fn get_plain(&self, path: &str) -> (StatusCode, String, String) {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let req = Request::get(format!("http://{}{path}", self.metrics_addr))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client.request(req).await.expect("plain request");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// POSTs a JSON body over TLS; returns status and body.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        self.try_post(path, body).await.expect("request over TLS")
    }

    /// Like `post`, with a transport failure returned instead of panicking (the soak
    /// counts it as an invalid answer and goes on).
    pub async fn try_post(
        &self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let req = Request::post(format!("https://localhost:{}{path}", self.addr.port()))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        self.try_send(req).await
    }

    /// GETs a path over TLS.
    pub async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        let req = Request::get(format!("https://localhost:{}{path}", self.addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        self.try_send(req).await.expect("request over TLS")
    }

    async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    }
}

/// A keep-alive HTTPS client trusting only `ca_pem`.
pub fn client_for(ca_pem: &str) -> HttpsClient {
    client_with(ca_pem, None)
}

/// A keep-alive HTTPS client trusting only `ca_pem`, presenting `identity`
/// (certificate chain PEM, key PEM) when asked for a client certificate.
pub fn client_with(ca_pem: &str, identity: Option<(&str, &str)>) -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca_pem, identity))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A rustls client config trusting only `ca_pem`, with an optional client identity.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::parse_certs(ca_pem.as_bytes(), "ca").expect("ca") {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
            let chain = tls::parse_certs(cert.as_bytes(), "client cert").expect("client cert");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    }
}

/// Reads a YAML or JSON file of the repository into JSON.
pub fn read_doc(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(repo(path)).expect("fixture readable");
    let json = path.ends_with(".json");
    let mut docs = snapshot::parse_documents(&text, json).expect("fixture parses");
    assert_eq!(docs.len(), 1, "{path} holds one document");
    docs.remove(0)
}

/// An `admission.k8s.io/v1` AdmissionReview for creating `pod`, as kube-apiserver sends it.
pub fn create_review(pod: &serde_json::Value, namespace: &str) -> serde_json::Value {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    serde_json::json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The `response` of an AdmissionReview answer, checked for the v1 envelope and uid.
pub fn response_of(body: &[u8], uid: &str) -> serde_json::Value {
    let review: serde_json::Value = serde_json::from_slice(body).expect("answer is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    let response = review["response"].clone();
    assert_eq!(response["uid"], uid, "uid is echoed");
    response
}

/// Decodes the base64 JSONPatch of a response; `None` when there is no patch.
pub fn patch_of(response: &serde_json::Value) -> Option<json_patch::Patch> {
    use base64::Engine;
    let b64 = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is base64");
    Some(serde_json::from_slice(&bytes).expect("patch is a JSONPatch"))
}

/// The first admission `warnings` entry of a response; fails the test when there is none.
pub fn first_warning(response: &serde_json::Value) -> &str {
    response["warnings"][0]
        .as_str()
        .unwrap_or_else(|| panic!("expected a warning in {response}"))
}

/// The verdict on one node with its own numbers, as `volguard explain` prints it:
/// judged in-process over the server's state (the wire carries the shared reason only).
pub fn per_node(server: &TestServer, pod: &serde_json::Value, node: &str) -> String {
    let pod: volguard::model::podview::PodView =
        serde_json::from_value(pod.clone()).expect("a pod");
    let state = server.app.cluster.read().unwrap();
    let namespace = pod.namespace().unwrap_or("default");
    let resolution =
        volguard::decide::resolve::resolve(&pod, namespace, &state, &server.app.config);
    volguard::decide::judge::Judge::new(resolution.as_ref(), &state, &server.app.config)
        .judge(node)
        .describe()
        .unwrap_or_default()
}

/// A writer holding the cluster state on a thread of its own, as a watcher applying a
/// long relist does, until dropped: handlers that read the state wait meanwhile.
pub struct HeldForWriting {
    release: Option<std::sync::mpsc::Sender<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Takes the write lock of `cluster` on another thread; returns once it is held.
pub fn hold_for_writing(cluster: volguard::cluster::SharedState) -> HeldForWriting {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let _state = cluster.write().unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
    });
    is_locked.recv().unwrap();
    HeldForWriting {
        release: Some(release),
        writer: Some(writer),
    }
}

impl Drop for HeldForWriting {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(writer) = self.writer.take() {
            let held = writer.join();
            if !std::thread::panicking() {
                held.unwrap();
            }
        }
    }
}

/// A handler call run on a current-thread runtime of its own thread, so a test can
/// tell whether it gives its async worker back: `polled` says whether the first poll
/// was pending, `answered` then carries the response body.
pub struct PolledCall {
    pub polled: std::sync::mpsc::Receiver<bool>,
    pub answered: std::sync::mpsc::Receiver<hyper::body::Bytes>,
}

/// Starts `call` (a handler's future, made on the new thread) as a [`PolledCall`].
pub fn poll_on_own_thread<F, Fut>(call: F) -> PolledCall
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = axum::response::Response>,
{
    let (polled_tx, polled) = std::sync::mpsc::channel();
    let (answered_tx, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut call = std::pin::pin!(call());
            let first = futures::poll!(call.as_mut());
            let _ = polled_tx.send(first.is_pending());
            let body = axum::body::to_bytes(call.await.into_body(), usize::MAX).await;
            let _ = answered_tx.send(body.expect("response body"));
        });
    });
    PolledCall { polled, answered }
}
