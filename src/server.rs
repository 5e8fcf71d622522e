//! The HTTP adapters: the TLS router (webhook, health) and the plain metrics/health
//! listener, over the shared application state.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{
    admission::{self, Decision},
    cluster::SharedState,
    config::Config,
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
}

/// The router served over TLS.
pub fn router(app: App) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(mutate).layer(DefaultBodyLimit::max(MUTATE_BODY_LIMIT)),
        )
        .merge(health_routes())
        .with_state(app)
}

/// `/healthz` and `/readyz`, served on both listeners.
pub fn health_routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(app): State<App>) -> Response {
    let unsynced = app.cluster.read().map(|s| s.unsynced()).unwrap_or_default();
    if unsynced.is_empty() {
        "ok".into_response()
    } else {
        let kinds: Vec<&str> = unsynced.iter().map(|k| k.as_str()).collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster state not synced yet: {}\n", kinds.join(", ")),
        )
            .into_response()
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
        Ok(Some((raw, pod))) => {
            let namespace = admission::namespace_of(&req, &pod);
            match app.cluster.read() {
                Err(_) => Decision::Trouble("cluster state is unavailable".into()),
                Ok(state) if !state.is_ready() => {
                    Decision::Trouble("cluster state is not synced yet".into())
                }
                Ok(state) => admission::decide(&raw, &pod, &namespace, &state, &app.config)
                    .unwrap_or_else(|e| Decision::Trouble(e.to_string())),
            }
        }
    };
    if let Decision::Trouble(why) = &decision {
        tracing::warn!(uid = %req.uid, namespace = ?req.namespace, name = %req.name, "webhook trouble: {why}");
    }
    Json(admission::respond(&req, decision, &app.config)).into_response()
}

/// Serves `router` over TLS on an already bound listener until `handle` shuts it down.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    handle: axum_server::Handle<SocketAddr>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, tls)?
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

/// Serves the plain-HTTP health listener until the process stops.
pub async fn serve_plain(addr: SocketAddr, app: App) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, health_routes().with_state(app)).await
}
