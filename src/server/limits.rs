//! Limits of the TLS listener, so that a flood or a stuck client degrades volguard
//! instead of exhausting it: a cap on open connections (refused at once beyond it), a
//! cap on requests handled at the same time (the rest queue), a per-request deadline
//! (queueing and body upload included), and an idle deadline for request heads. Body sizes
//! are limited per route (the limits live next to the handlers): a body announced too
//! big by its Content-Length is refused here before it is read.

use std::{
    future::{Ready, ready},
    io,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::metrics::Metrics;

/// The limits; flags of `volguard serve` set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time from request head to response head.
    pub request_timeout: Duration,
    /// Longest wait for a request head on an open connection, idle keep-alive time
    /// included: above the 90 s after which Go clients (apiserver, scheduler) drop idle
    /// connections themselves, so they never reuse one volguard is closing.
    pub idle_timeout: Duration,
    /// Requests handled at the same time; more wait (within their deadline).
    pub max_requests: usize,
    /// Open TLS connections; more are closed right after accept.
    pub max_connections: usize,
}

impl Default for Limits {
    /// Under the apiserver's 10 s webhook cap; far above what two schedulers and a few
    /// apiservers keep open.
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_requests: 256,
            max_connections: 1024,
        }
    }
}

/// Middleware: a request not answered within `timeout` gets a one-line 503.
pub async fn deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?timeout, "request not answered in time: 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!(
                    "request not answered within {} s (slow upload or overloaded server)\n",
                    timeout.as_secs_f64()
                ),
            )
                .into_response()
        }
    }
}

/// Route middleware: a request whose Content-Length is above `limit` gets a one-line
/// 413 at once, before any of its body is read. Without it the body extractor would
/// wait for the announced bytes (a client announcing 512 MiB and sending 1 MiB holds a
/// connection and a request slot until the deadline) only to refuse them. Bodies with
/// no length (chunked) are still cut off by the route's body limit as they arrive.
pub async fn content_length(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limit as u64 => {
            tracing::debug!(
                length,
                limit,
                path = req.uri().path(),
                "body too large: 413"
            );
            too_large(req.uri().path(), length, limit)
        }
        _ => next.run(req).await,
    }
}

/// The 413 for a body of `length` bytes on a route that takes at most `limit`.
fn too_large(path: &str, length: u64, limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "request body of {length} bytes is over the {} MiB limit of {path}\n",
            limit >> 20
        ),
    )
        .into_response()
}

/// An axum-server acceptor that holds one slot per open connection and closes
/// connections beyond the limit before the TLS handshake.
#[derive(Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl ConnectionSlots {
    /// `max` slots; refusals are counted in `metrics`.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for ConnectionSlots {
    type Stream = I;
    type Service = Held<S>;
    type Future = Ready<io::Result<(I, Held<S>)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        ready(match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok((
                stream,
                Held {
                    inner: service,
                    _slot: Arc::new(permit),
                },
            )),
            Err(_) => {
                self.metrics.connection_refused();
                tracing::warn!("connection limit reached: closing a new connection");
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

/// A connection's service, holding its slot until the connection and every request
/// on it are done.
#[derive(Clone)]
pub struct Held<S> {
    inner: S,
    _slot: Arc<OwnedSemaphorePermit>,
}

impl<S: tower::Service<R>, R> tower::Service<R> for Held<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.inner.call(req)
    }
}
