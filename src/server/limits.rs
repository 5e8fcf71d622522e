//! Limits of the listeners, so that a flood or a stuck client degrades volguard
//! instead of exhausting it: caps on open connections, overall and per peer (refused
//! at once beyond them, see `connections`), on requests in flight from one peer without
//! a client certificate (`peers`), on requests handled at the same time and the body
//! bytes they hold, for each caller class apart (`pool`), a per-request deadline
//! (queueing and body upload included), idle deadlines, and HTTP/2 stream, window and
//! keep-alive settings.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use crate::server::reply;

/// The limits; flags of `volguard serve` set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time from request head to response head.
    pub request_timeout: Duration,
    /// Longest wait for a request head on an open connection, idle keep-alive time
    /// included: above the 90 s after which Go clients (apiserver, scheduler) drop idle
    /// connections themselves, so they never reuse one volguard is closing.
    pub idle_timeout: Duration,
    /// Requests handled at the same time by the webhook, and as many again by the
    /// extender; more wait (within their deadline).
    pub max_requests: usize,
    /// Requests in flight at once from one IP address whose connection presented no
    /// client certificate; more get a 429. Below `max_requests`, so that one anonymous
    /// peer cannot hold every webhook slot.
    pub max_requests_per_peer: usize,
    /// Open TLS connections; more are closed right after accept.
    pub max_connections: usize,
    /// Open connections from one IP address, on each listener: one client cannot hold
    /// every slot.
    pub max_connections_per_peer: usize,
    /// Open connections to the plain metrics listener (probes and scrapers).
    pub metrics_max_connections: usize,
    /// Request body bytes held at once across the webhook's requests, and as many
    /// again across the extender's; a body that does not fit gets a 503.
    pub max_bytes_in_flight: usize,
    /// Largest `/filter` or `/prioritize` body.
    pub extender_body_limit: usize,
    /// HTTP/2 streams (requests) open at once on one connection.
    pub h2_max_streams: u32,
    /// HTTP/2 flow-control window of a stream and of a whole connection: the body bytes
    /// a peer may send before volguard reads (and charges) them. hyper's default of
    /// 1 MiB would let each connection park 1 MiB outside the body budget; 64 KiB
    /// (about the protocol's own 65,535 bytes) costs a large review a few round trips.
    pub h2_window: u32,
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
            max_requests_per_peer: 128,
            max_connections: 1024,
            max_connections_per_peer: 128,
            metrics_max_connections: 64,
            max_bytes_in_flight: 64 << 20,
            extender_body_limit: EXTENDER_BODY_LIMIT,
            h2_max_streams: 64,
            h2_window: 64 << 10,
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
            reply::line(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "request not answered within {} s (slow upload or overloaded server)",
                    timeout.as_secs_f64()
                ),
            )
        }
    }
}
