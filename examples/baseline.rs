//! The load test's yardstick: the same stack as `volguard serve` (axum on axum-server,
//! rustls with ring, the same TLS config) answering POST /mutate and /filter with a
//! constant body after reading the request, so volguard's throughput can be given as a
//! ratio of what the stack itself can do.
//!
//! `cargo run --release --example baseline -- LISTEN CERT KEY MUTATE_ANSWER FILTER_ANSWER`

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, body::Bytes, extract::DefaultBodyLimit, http::header, routing::post};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, mutate, filter] = args.as_slice() else {
        eprintln!("usage: baseline LISTEN CERT KEY MUTATE_ANSWER FILTER_ANSWER");
        std::process::exit(2);
    };
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let addr: SocketAddr = listen.parse().expect("LISTEN is host:port");
    volguard::server::tls::install_crypto_provider();
    let tls = volguard::server::tls::server_config(&read(cert), &read(key), None, (cert, key))
        .expect("tls");
    let (mutate, filter) = (Bytes::from(read(mutate)), Bytes::from(read(filter)));
    let router = Router::new()
        .route(
            "/mutate",
            post(move |_body: Bytes| constant(mutate.clone())),
        )
        .route(
            "/filter",
            post(move |_body: Bytes| constant(filter.clone())),
        )
        .layer(DefaultBodyLimit::max(128 << 20));
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
