//! The yardstick: the same stack as `volguard serve` (axum on axum-server, rustls with
//! ring, the same TLS config and listener settings) answering as cheaply as it can, so
//! volguard's throughput can be given as a ratio of what the stack itself can do.
//!
//! - POST /mutate answers MUTATE_ANSWER, read once at start, after reading the request.
//! - POST /filter answers FILTER_ANSWER the same way; or, when FILTER_ANSWER is `echo`,
//!   with every node of the request passing (its `NodeNames`, as a `nodeCacheCapable`
//!   extender answers): a null extender kube-scheduler can run with.
//! - POST /prioritize answers `[]`: every node scores 0, the cheapest valid answer
//!   (kube-scheduler gives the nodes an answer leaves out 0); or, when FILTER_ANSWER is
//!   `echo-and-score`, the same score for every node of the request: what any extender
//!   that scores nodes makes kube-scheduler read.
//! - With CLIENT_CA, the TLS handshake requires a client certificate from that CA
//!   named `volguard-scheduler`, as the shipped `volguard serve` asks of the scheduler.
//!
//! `cargo run --release --example baseline -- LISTEN CERT KEY MUTATE_ANSWER FILTER_ANSWER [CLIENT_CA]`

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router, body::Bytes, extract::DefaultBodyLimit, http::StatusCode, http::header, routing::post,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use volguard::server::tls::{ClientAuth, ClientAuthScope};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, cert, key, mutate, filter, client_ca) = match args.as_slice() {
        [l, c, k, m, f] => (l, c, k, m, f, None),
        [l, c, k, m, f, ca] => (l, c, k, m, f, Some(ca)),
        _ => {
            eprintln!(
                "usage: baseline LISTEN CERT KEY MUTATE_ANSWER FILTER_ANSWER|echo|echo-and-score [CLIENT_CA]"
            );
            std::process::exit(2);
        }
    };
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let addr: SocketAddr = listen.parse().expect("LISTEN is host:port");
    volguard::server::tls::install_crypto_provider();
    let client_auth = client_ca.map(|ca| ClientAuth {
        ca_pem: read(ca),
        ca_name: ca.clone(),
        allowed_names: vec!["volguard-scheduler".to_owned()],
        scope: ClientAuthScope::All,
    });
    let tls = volguard::server::tls::server_config(
        &read(cert),
        &read(key),
        client_auth.as_ref(),
        (cert, key),
    )
    .expect("tls");
    let mutate = Bytes::from(read(mutate));
    let router = Router::new().route(
        "/mutate",
        post(move |_body: Bytes| constant(mutate.clone())),
    );
    let router = if filter == "echo" || filter == "echo-and-score" {
        router.route("/filter", post(echo_nodes))
    } else {
        let filter = Bytes::from(read(filter));
        router.route(
            "/filter",
            post(move |_body: Bytes| constant(filter.clone())),
        )
    };
    let router = if filter == "echo-and-score" {
        router.route("/prioritize", post(score_every_node))
    } else {
        router.route(
            "/prioritize",
            post(|_body: Bytes| constant(Bytes::from_static(b"[]"))),
        )
    };
    let router = router.layer(DefaultBodyLimit::max(128 << 20));
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async move {
            let listener = std::net::TcpListener::bind(addr).expect("bind");
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let metrics = Arc::new(volguard::server::metrics::Metrics::new());
            let limits = volguard::server::limits::Limits::default();
            volguard::server::router::serve_tls(
                listener,
                tls,
                router,
                limits,
                metrics,
                axum_server::Handle::new(),
            )
            .await
            .expect("serve");
        });
}

/// The fixed answer, as JSON.
async fn constant(body: Bytes) -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// The part of ExtenderArgs the echo reads: the node names, left as they came.
#[derive(Deserialize)]
struct NodeNames<'a> {
    #[serde(rename = "NodeNames", borrow)]
    node_names: Option<&'a RawValue>,
}

/// Every node passes: the request's `NodeNames`, copied into ExtenderFilterResult.
async fn echo_nodes(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(args) = serde_json::from_slice::<NodeNames>(&body) else {
        return (StatusCode::BAD_REQUEST, "not ExtenderArgs").into_response();
    };
    let names = args.node_names.map_or("null", RawValue::get);
    let answer = format!(r#"{{"NodeNames":{names},"FailedNodes":{{}},"Error":""}}"#);
    ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
}

/// Every node of the request (its `NodeNames`) with the same score, as a
/// `HostPriorityList`.
async fn score_every_node(body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    #[derive(Deserialize)]
    struct Names<'a> {
        #[serde(rename = "NodeNames", borrow, default)]
        node_names: Option<Vec<Name<'a>>>,
    }
    /// Borrowed from the body unless it had to be unescaped.
    #[derive(Deserialize)]
    struct Name<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);
    #[derive(serde::Serialize)]
    struct HostPriority<'a> {
        #[serde(rename = "Host")]
        host: &'a str,
        #[serde(rename = "Score")]
        score: u8,
    }
    let Ok(args) = serde_json::from_slice::<Names>(&body) else {
        return (StatusCode::BAD_REQUEST, "not ExtenderArgs").into_response();
    };
    let list: Vec<HostPriority> = args
        .node_names
        .iter()
        .flatten()
        .map(|n| HostPriority {
            host: &n.0,
            score: 5,
        })
        .collect();
    match serde_json::to_vec(&list) {
        Ok(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
