//! Limits of the listeners, so that a flood or a stuck client degrades volguard
//! instead of exhausting it: caps on open connections, overall and per peer (refused
//! at once beyond them, see `connections`), a cap on requests handled at the same time
//! (the rest queue), a per-request deadline (queueing and body upload included), idle
//! deadlines, HTTP/2 stream and keep-alive settings, and bounds on request bodies: per
//! route (a body announced too big by its Content-Length is refused before it is read)
//! and across all requests in flight.

use std::{sync::Arc, time::Duration};

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
    /// Open connections from one IP address, on each listener: one client cannot hold
    /// every slot.
    pub max_connections_per_peer: usize,
    /// Open connections to the plain metrics listener (probes and scrapers).
    pub metrics_max_connections: usize,
    /// Request body bytes held across all requests at once; a request that would go
    /// over gets a 503 before its body is read.
    pub max_bytes_in_flight: usize,
    /// Largest `/filter` or `/prioritize` body.
    pub extender_body_limit: usize,
    /// HTTP/2 streams (requests) open at once on one connection.
    pub h2_max_streams: u32,
    /// HTTP/2 ping interval on a connection; a peer that does not answer within
    /// `h2_keep_alive_timeout` is dropped.
    pub h2_keep_alive_interval: Duration,
    /// See `h2_keep_alive_interval`.
    pub h2_keep_alive_timeout: Duration,
}

/// Largest extender body by default: kube-scheduler with `nodeCacheCapable: true` (the
/// shipped setup) sends node names only, 5,000 of them in about 100 KB, next to a Pod of
/// at most 1.5 MB (etcd's object limit). Full Node objects need far more (about 25 KB
/// each): that mode raises it.
pub const EXTENDER_BODY_LIMIT: usize = 4 << 20;

impl Default for Limits {
    /// Under the apiserver's 10 s webhook cap; far above what two schedulers and a few
    /// apiservers keep open; bodies in flight well inside the shipped 512 MiB container.
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_requests: 256,
            max_connections: 1024,
            max_connections_per_peer: 128,
            metrics_max_connections: 64,
            max_bytes_in_flight: 64 << 20,
            extender_body_limit: EXTENDER_BODY_LIMIT,
            h2_max_streams: 64,
            h2_keep_alive_interval: Duration::from_secs(30),
            h2_keep_alive_timeout: Duration::from_secs(10),
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
    match announced_length(&req) {
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
            "request body of {length} bytes is over the {} limit of {path}\n",
            size(limit)
        ),
    )
        .into_response()
}

/// The request body bytes all requests may hold at once, charged by KiB.
#[derive(Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total: usize,
    metrics: Arc<Metrics>,
}

impl BodyBudget {
    /// A budget of `total` bytes; what is held shows in `metrics`.
    pub fn new(total: usize, metrics: Arc<Metrics>) -> Self {
        BodyBudget {
            kib: Arc::new(Semaphore::new(total.div_ceil(1024))),
            total,
            metrics,
        }
    }

    /// Takes `bytes` from the budget, or `None` when that would go over it.
    fn charge(&self, bytes: u64) -> Option<Charged> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        let permit = self.kib.clone().try_acquire_many_owned(kib).ok()?;
        let held = i64::from(kib) * 1024;
        self.metrics.body_bytes_held(held);
        Some(Charged {
            _permit: permit,
            held,
            metrics: self.metrics.clone(),
        })
    }

    /// Bytes held now.
    fn held(&self) -> usize {
        (self.total.div_ceil(1024) - self.kib.available_permits()) * 1024
    }
}

/// A request's share of the body budget, given back when the last holder drops it: the
/// request's future, and the blocking task that judges its body (which may outlive it).
#[derive(Clone)]
pub struct BodyCharge(pub Arc<Charged>);

/// Bytes taken from the budget.
pub struct Charged {
    _permit: OwnedSemaphorePermit,
    held: i64,
    metrics: Arc<Metrics>,
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.metrics.body_bytes_held(-self.held);
    }
}

/// Route middleware: charges the request's body to the budget before it is read, by
/// its Content-Length, or the route's whole `limit` when it has none (chunked); over
/// the budget, a one-line 503 with `Retry-After`. The charge is handed to the handler
/// as a [`BodyCharge`] extension.
pub async fn charge_body(
    State((budget, limit)): State<(BodyBudget, usize)>,
    mut req: Request,
    next: Next,
) -> Response {
    let bytes = announced_length(&req).unwrap_or(limit as u64);
    let Some(charged) = budget.charge(bytes) else {
        let line = format!(
            "request bodies in flight hold {} of the {} volguard reads at once \
             (--max-bytes-in-flight); this body of {bytes} bytes does not fit: retry later",
            size(budget.held()),
            size(budget.total),
        );
        tracing::warn!(path = req.uri().path(), "{line}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::RETRY_AFTER, "1"),
            ],
            format!("{line}\n"),
        )
            .into_response();
    };
    let charge = BodyCharge(Arc::new(charged));
    req.extensions_mut().insert(charge.clone());
    let response = next.run(req).await;
    drop(charge);
    response
}

fn announced_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `bytes` exactly, in the largest of MiB, KiB and bytes that divides it.
fn size(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}
