//! Shared test harness: the real TLS server on a loopback port, a client that trusts
//! its generated CA, and the shipped example cluster.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use volguard::{
    certs,
    cluster::ClusterState,
    config::Config,
    drivers::Drivers,
    server::{self, App},
    snapshot, tls,
};

/// Path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The example config shipped in examples/.
pub fn example_config() -> Config {
    Config::load(Some(&repo("examples/config.yaml"))).expect("examples/config.yaml is valid")
}

/// A synced state built from the shipped example snapshot.
pub fn example_state(config: &Config) -> ClusterState {
    let snap = snapshot::load(&repo("examples/cluster")).expect("examples/cluster loads");
    snapshot::into_state(&snap, empty_state(config))
}

/// An empty state for `config`.
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
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that signed its certificate.
    pub ca_pem: String,
    /// Its application state, to change the cluster between requests.
    pub app: App,
    client: HttpsClient,
}

impl TestServer {
    /// Starts the real router over TLS on 127.0.0.1 with the example cluster.
    pub async fn example() -> Self {
        let config = example_config();
        let state = example_state(&config);
        Self::start(config, state).await
    }

    /// Starts the real router over TLS with the given config and state.
    pub async fn start(config: Config, state: ClusterState) -> Self {
        tls::install_crypto_provider();
        let bundle =
            certs::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()], 1).expect("certs");
        let server_config = tls::server_config(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            None,
            ("cert", "key"),
        )
        .expect("tls config");
        let app = App {
            config: Arc::new(config),
            cluster: Arc::new(RwLock::new(state)),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_config));
        let router = server::router(app.clone());
        tokio::spawn(server::serve_tls(
            listener,
            tls,
            router,
            axum_server::Handle::new(),
        ));
        let client = client_for(&bundle.ca_pem);
        TestServer {
            addr,
            ca_pem: bundle.ca_pem,
            app,
            client,
        }
    }

    /// POSTs a JSON body over TLS; returns status and body.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
        let req = Request::post(format!("https://localhost:{}{path}", self.addr.port()))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        self.send(req).await
    }

    /// GETs a path over TLS.
    pub async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        let req = Request::get(format!("https://localhost:{}{path}", self.addr.port()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        let resp = self.client.request(req).await.expect("request over TLS");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }
}

/// A keep-alive HTTPS client trusting only `ca_pem`.
pub fn client_for(ca_pem: &str) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::parse_certs(ca_pem.as_bytes(), "ca").expect("ca") {
        roots.add(c).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
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
