//! The routes and the two listeners: the TLS router (webhook, extender, health) and the
//! plain metrics/health listener, over the shared application state.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};

use crate::server::{
    admission::endpoint::{MUTATE_BODY_LIMIT, mutate},
    app::App,
    extender,
    limits::{self, ConnectionSlots, Limits},
    metrics::{self, Metrics},
};

/// The router served over TLS, with its limits and request metrics.
pub fn router(app: App) -> Router {
    let limits = app.limits;
    Router::new()
        .route("/mutate", limited(post(mutate), MUTATE_BODY_LIMIT))
        .route(
            "/filter",
            limited(
                post(extender::endpoints::filter_handler),
                extender::endpoints::EXTENDER_BODY_LIMIT,
            ),
        )
        .route(
            "/prioritize",
            limited(
                post(extender::endpoints::prioritize_handler),
                extender::endpoints::EXTENDER_BODY_LIMIT,
            ),
        )
        .merge(health_routes())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_requests,
        ))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            limits::deadline,
        ))
        .layer(middleware::from_fn_with_state(
            app.metrics.clone(),
            metrics::track,
        ))
        .with_state(app)
}

/// A route taking bodies of at most `limit` bytes: refused up front when the
/// Content-Length says more, cut off at `limit` while reading otherwise; both 413.
fn limited(route: MethodRouter<App>, limit: usize) -> MethodRouter<App> {
    route
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            limit,
            limits::content_length,
        ))
}

/// `/healthz` and `/readyz`, served on both listeners.
pub fn health_routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(app): State<App>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let problem = match app.cluster.read() {
        Ok(state) => state.readiness().problem(),
        Err(_) => Some("cluster state is unavailable".into()),
    };
    match problem {
        None => "ok".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Serves `router` over TLS on an already bound listener until `handle` shuts it down,
/// within the connection cap and idle deadline of `limits` (refusals counted in
/// `metrics`).
pub async fn serve_tls(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    handle: axum_server::Handle<SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let slots = ConnectionSlots::new(limits.max_connections, metrics);
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(slots);
    let mut server = axum_server::from_tcp(listener)?.acceptor(acceptor);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    server
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

/// Serves `/metrics`, `/healthz` and `/readyz` in plain HTTP on an already bound
/// listener until `stop` resolves.
pub async fn serve_plain(
    listener: std::net::TcpListener,
    app: App,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let routes = health_routes()
        .route("/metrics", get(scrape))
        .with_state(app);
    axum::serve(listener, routes)
        .with_graceful_shutdown(stop)
        .await
}

async fn scrape(State(app): State<App>) -> Response {
    if let Ok(state) = app.cluster.read() {
        app.metrics.observe_cache(&state);
    }
    match app.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}
