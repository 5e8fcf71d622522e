//! The HTTP adapters: the TLS router (webhook, health) and the plain metrics/health
//! listener, over the shared application state.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{
    admission::{self, Decision},
    cluster::SharedState,
    config::Config,
    extender,
    limits::{self, ConnectionSlots, Limits},
    metrics::{self, Metrics},
    podview::PodView,
    watch,
};

/// Largest AdmissionReview accepted: the apiserver caps objects far below this.
pub const MUTATE_BODY_LIMIT: usize = 8 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct App {
    /// The validated config.
    pub config: Arc<Config>,
    /// The cluster-state model.
    pub cluster: SharedState,
    /// The Prometheus families, moved by handlers and middleware.
    pub metrics: Arc<Metrics>,
    /// Request and connection limits of the TLS listener.
    pub limits: Limits,
    /// Set once a stop signal arrived: readiness fails while in-flight requests finish.
    pub draining: Arc<AtomicBool>,
    /// The live API client when watching (not with a snapshot): the webhook GETs a
    /// claim the watch has not delivered yet.
    pub api: Option<kube::Client>,
}

impl App {
    /// An app with fresh metrics, default limits, not draining, no API client.
    pub fn new(config: Arc<Config>, cluster: SharedState) -> Self {
        let metrics = Metrics::new();
        metrics.expect_drivers(config.drivers.iter().map(|d| d.name.as_str()));
        App {
            config,
            cluster,
            metrics: Arc::new(metrics),
            limits: Limits::default(),
            draining: Arc::new(AtomicBool::new(false)),
            api: None,
        }
    }
}

/// The router served over TLS, with its limits and request metrics.
pub fn router(app: App) -> Router {
    let limits = app.limits;
    Router::new()
        .route(
            "/mutate",
            post(mutate).layer(DefaultBodyLimit::max(MUTATE_BODY_LIMIT)),
        )
        .route(
            "/filter",
            post(extender::endpoints::filter_handler).layer(DefaultBodyLimit::max(
                extender::endpoints::EXTENDER_BODY_LIMIT,
            )),
        )
        .route(
            "/prioritize",
            post(extender::endpoints::prioritize_handler).layer(DefaultBodyLimit::max(
                extender::endpoints::EXTENDER_BODY_LIMIT,
            )),
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

/// A one-line plain-text 400.
pub fn bad_request(reason: impl std::fmt::Display) -> Response {
    let line = reason.to_string().replace('\n', " ");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{line}\n"),
    )
        .into_response()
}

async fn mutate(State(app): State<App>, body: Bytes) -> Response {
    let req = match admission::parse_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let decision = match admission::pod_of(&req, &app.config) {
        Ok(None) => Decision::Untouched,
        Err(why) => Decision::Trouble(why),
        Ok(Some(pod)) => {
            let namespace = admission::namespace_of(&req, &pod);
            judge(&app, &pod, &namespace).await
        }
    };
    match &decision {
        Decision::Trouble(why) => {
            tracing::warn!(uid = %req.uid, namespace = ?req.namespace, name = ?req.name, "webhook trouble: {why}");
        }
        Decision::Mutated { mutation, .. } if !mutation.patch.0.is_empty() => {
            app.metrics.pod_mutated(&mutation.drivers);
        }
        _ => {}
    }
    Json(admission::respond(&req, decision, &app.config)).into_response()
}

/// Decides against the cached state; a claim or PV missing from the cache is fetched
/// once with a direct GET (when watching the API) before it becomes a warning.
async fn judge(app: &App, pod: &PodView, namespace: &str) -> Decision {
    let deadline = tokio::time::Instant::now() + watch::DIRECT_GET_TIMEOUT;
    let mut fetched = Vec::new();
    loop {
        let miss = match app.cluster.read() {
            Err(_) => return Decision::Trouble("cluster state is unavailable".into()),
            Ok(state) => {
                if let Some(why) = state.readiness().problem() {
                    return Decision::Trouble(why);
                }
                match admission::decide(pod, namespace, &state, &app.config) {
                    Ok(decision) => return decision,
                    Err(miss) => miss,
                }
            }
        };
        let Some(client) = &app.api else {
            return Decision::Trouble(miss.to_string());
        };
        if fetched.contains(&miss) {
            return Decision::Trouble(format!("{miss} (gone again after a direct GET)"));
        }
        if let Err(why) = watch::fetch_missing(client, &miss, &app.cluster, deadline).await {
            return Decision::Trouble(format!("{miss} (direct GET: {why})"));
        }
        fetched.push(miss);
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
