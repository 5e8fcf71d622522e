//! The routes and the two listeners: the TLS router (webhook, extender, health) and the
//! plain metrics/health listener, over the shared application state.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};

use crate::server::{
    admission::endpoint::{MUTATE_BODY_LIMIT, mutate},
    app::App,
    connections::{ClientCertificate, ConnectionSlots, Identified},
    extender,
    limits::{self, Limits},
    metrics::{self, Metrics},
    peers::{self, PerPeer},
    pool::{self, Class, Pool},
    reply,
};

/// The router served over TLS, with its limits and request metrics. The webhook and
/// the extender each have their own pool of request slots and body bytes; the extender
/// checks its caller's certificate before its pool is touched, so callers that may not
/// use it never hold any of it.
pub fn router(app: App) -> Router {
    let limits = app.limits;
    let pool = |class, body_limit| {
        Pool::new(
            class,
            limits.max_requests,
            limits.max_bytes_in_flight,
            body_limit,
            app.metrics.clone(),
        )
    };
    let webhook = pool(Class::Webhook, MUTATE_BODY_LIMIT);
    let extender = pool(Class::Extender, limits.extender_body_limit);
    let extender_route = |handler| {
        let route = pooled(handler, &extender);
        if app.extender_needs_client_certificate {
            route.layer(middleware::from_fn(client_certificate_required))
        } else {
            route
        }
    };
    Router::new()
        .route("/mutate", pooled(post(mutate), &webhook))
        .route(
            "/filter",
            extender_route(post(extender::endpoints::filter_handler)),
        )
        .route(
            "/prioritize",
            extender_route(post(extender::endpoints::prioritize_handler)),
        )
        .merge(health_routes())
        .layer(middleware::from_fn_with_state(
            (PerPeer::default(), limits.max_requests_per_peer),
            peers::limit_anonymous,
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

/// A route admitted through `pool`: its slots, its body budget and its body limit (the
/// pool reads the body, so axum's own limit is lifted to the pool's).
fn pooled(route: MethodRouter<App>, pool: &Pool) -> MethodRouter<App> {
    route
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(pool.clone(), pool::admit))
}

/// Route middleware: a one-line 403 for a request whose connection presented no client
/// certificate (one that was presented has been verified in the handshake).
async fn client_certificate_required(req: Request, next: Next) -> Response {
    if req.extensions().get::<ClientCertificate>().is_some() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    tracing::warn!(path, "refused a request without a client certificate: 403");
    reply::line(
        StatusCode::FORBIDDEN,
        format!(
            "{path} needs a client certificate signed by volguard's client CA (--client-ca): \
             kube-scheduler presents one with its extender tlsConfig certFile/keyFile or certData/keyData"
        ),
    )
}

/// `/healthz` and `/readyz`, served on both listeners.
pub fn health_routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: 503 once the cluster state can no longer follow the cluster, which only a
/// restart mends (a lost API connection is not such a case: the watchers reconnect).
async fn healthz(State(app): State<App>) -> Response {
    match liveness_problem(&app) {
        None => "ok".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Why volguard must be restarted, if it must: the state's lock was poisoned by a
/// panic while it was written (every later write is refused, so watchers stop), or a
/// watcher ended.
fn liveness_problem(app: &App) -> Option<String> {
    if app.cluster.is_poisoned() {
        return Some(
            "cluster state lock poisoned (a panic while it was written): the cache can no longer be updated; restart volguard".into(),
        );
    }
    let stopped = app.stopped_watches.kinds();
    (!stopped.is_empty()).then(|| {
        let kinds: Vec<&str> = stopped.iter().map(|k| k.as_str()).collect();
        format!(
            "watchers stopped: {}: the cache no longer follows the cluster; restart volguard",
            kinds.join(", ")
        )
    })
}

/// Readiness, from the copy writers publish: a probe is answered at once while a
/// watcher applies a relist, instead of queueing behind it on the worker.
/// How long one writer may hold the cluster state before readiness fails: a batch of
/// 500 events takes milliseconds; a writer this slow stalls every verdict.
const WRITER_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

async fn readyz(State(app): State<App>) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let problem = if app.cluster.is_poisoned() {
        Some("cluster state is unavailable".into())
    } else if let Some(held) = app
        .cluster
        .written_for()
        .filter(|held| *held >= WRITER_STUCK_AFTER)
    {
        Some(format!(
            "a writer has held the cluster state for {} s: requests that read it wait",
            held.as_secs()
        ))
    } else {
        app.cluster.readiness().problem()
    };
    match problem {
        None => "ok".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Serves `router` over TLS on an already bound listener until `handle` shuts it down,
/// within the connection caps, idle deadlines and HTTP/2 settings of `limits`
/// (refusals counted in `metrics`).
pub async fn serve_tls(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    handle: axum_server::Handle<SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let slots = ConnectionSlots::new(
        "https",
        (limits.max_connections, "the limit (--max-connections)"),
        limits.max_connections_per_peer,
        limits.idle_timeout,
        metrics,
    );
    let acceptor = Identified(axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(slots));
    let mut server = axum_server::from_tcp(listener)?.acceptor(acceptor);
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .initial_stream_window_size(limits.h2_window)
        .initial_connection_window_size(limits.h2_window)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    server
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

/// Largest request head over HTTP/2 (hyper's default is 16 MiB); volguard's callers
/// send a handful of short headers.
const H2_MAX_HEADER_LIST: u32 = 64 << 10;

/// Serves `/metrics`, `/healthz` and `/readyz` in plain HTTP/1 on an already bound
/// listener until `stop` resolves, within its own connection caps and the idle
/// deadline of the app's limits.
pub async fn serve_plain(
    listener: std::net::TcpListener,
    app: App,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let limits = app.limits;
    let slots = ConnectionSlots::new(
        "metrics",
        (
            limits.metrics_max_connections,
            "the metrics listener's limit",
        ),
        limits.max_connections_per_peer,
        limits.idle_timeout,
        app.metrics.clone(),
    );
    let routes = health_routes()
        .route("/metrics", get(scrape))
        .with_state(app);
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        stop.await;
        stopping.graceful_shutdown(Some(PLAIN_DRAIN));
    });
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(slots)
        .http1_only();
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    server
        .handle(handle)
        .serve(routes.into_make_service())
        .await
}

/// How long a scrape waits for the cache's figures before it answers with the last
/// ones: well inside Prometheus's default scrape timeout of 10 s.
const OBSERVE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long scrapes and probes in flight get once the plain listener stops.
const PLAIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The metrics, with the cache's figures observed on a blocking thread: they scan
/// every node for every driver under the state's lock, which a watcher may hold. A
/// scrape waits at most [`OBSERVE_WAIT`] for them and otherwise answers with the
/// figures last observed (the observation lands for the next scrape); one observation
/// runs at a time, so scrapes against a held lock do not pile up threads.
async fn scrape(State(app): State<App>) -> Response {
    if let Ok(turn) = app.cache_observation.clone().try_lock_owned() {
        let metrics = app.metrics.clone();
        let observed = app.cluster.read_blocking(move |state| {
            metrics.observe_cache(state);
            drop(turn);
        });
        // Not observed in time, or the state is unavailable: the last figures stand.
        let _ = tokio::time::timeout(OBSERVE_WAIT, observed).await;
    }
    app.metrics
        .observe_ready(app.cluster.readiness().is_ready() && !app.cluster.is_poisoned());
    match app.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}
