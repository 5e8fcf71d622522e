//! Request slots and request body bytes, held apart for each caller class: the
//! extender's calls (`/filter`, `/prioritize`, from kube-scheduler, which presents a
//! client certificate in the shipped setup) and the webhook's reviews (`/mutate`, which
//! any pod reaches unless every client must authenticate). Each class has its own
//! slots and its own byte budget, so no number of slow or large requests of one class
//! delays the other. A body is charged as its bytes arrive (all at once, before it is
//! read, when its Content-Length announces them): a chunked upload trickling in holds
//! what it has sent, not what its route could take at most.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::Response,
};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::{metrics::Metrics, reply};

/// Who a pool serves, named in its refusals and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/mutate`: kube-apiserver's reviews, and whoever else can reach the port.
    Webhook,
    /// `/filter` and `/prioritize`: kube-scheduler.
    Extender,
}

impl Class {
    /// The class's name in metrics and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Webhook => "webhook",
            Class::Extender => "extender",
        }
    }
}

/// One class's request slots and body budget, and the largest body one request of it
/// may send.
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

struct Inner {
    class: Class,
    slots: Arc<Semaphore>,
    /// The body budget, in KiB.
    kib: Arc<Semaphore>,
    total: usize,
    body_limit: usize,
    metrics: Arc<Metrics>,
}

/// A request's slot and its body's bytes in its pool, given back when the last holder
/// drops it: the request's future, or the blocking task that works on its body (which
/// may outlive it, and must keep the slot while it runs).
#[derive(Clone)]
pub struct Ticket {
    _held: Arc<Held>,
}

struct Held {
    /// Taken once the body is in.
    _slot: Option<OwnedSemaphorePermit>,
    body: Option<OwnedSemaphorePermit>,
    class: Class,
    metrics: Arc<Metrics>,
}

impl Held {
    fn body_kib(&self) -> u32 {
        self.body.as_ref().map_or(0, |p| p.num_permits() as u32)
    }

    /// Adds `kib` more of the budget to what the request holds.
    fn add(&mut self, permit: OwnedSemaphorePermit) {
        let kib = i64::from(permit.num_permits() as u32);
        self.metrics
            .body_bytes_held(self.class.as_str(), kib * 1024);
        match &mut self.body {
            Some(held) => held.merge(permit),
            None => self.body = Some(permit),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let bytes = i64::from(self.body_kib()) * 1024;
        self.metrics.body_bytes_held(self.class.as_str(), -bytes);
    }
}

impl Pool {
    /// `slots` requests at once, `budget` body bytes across them, at most `body_limit`
    /// bytes in one body; what is held shows in `metrics`.
    pub fn new(
        class: Class,
        slots: usize,
        budget: usize,
        body_limit: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pool(Arc::new(Inner {
            class,
            slots: Arc::new(Semaphore::new(slots)),
            kib: Arc::new(Semaphore::new(budget.div_ceil(1024))),
            total: budget,
            body_limit,
            metrics,
        }))
    }

    /// The budget's KiB that `bytes` take, or `None` when that would go over it.
    fn charge(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.0.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes held now by requests other than one holding `own`.
    fn held_by_others(&self, own: &Held) -> usize {
        let held = self.0.total.div_ceil(1024) - self.0.kib.available_permits();
        (held - own.body_kib() as usize) * 1024
    }

    /// The 503 for a body that does not fit the budget, `bytes` long or more, of a
    /// request holding `own`.
    fn over_budget(&self, path: &str, bytes: u64, announced: bool, own: &Held) -> Response {
        let what = if announced {
            format!("this body of {bytes} bytes does not fit")
        } else {
            format!("this body does not fit after {bytes} bytes")
        };
        let line = format!(
            "other {} request bodies hold {} of the {} volguard reads at once \
             (--max-bytes-in-flight); {what}: retry later",
            self.0.class.as_str(),
            size(self.held_by_others(own)),
            size(self.0.total),
        );
        tracing::warn!(path, "{line}");
        reply::retry_later(StatusCode::SERVICE_UNAVAILABLE, line)
    }

    /// The 413 for a body over the route's limit: `length` when announced.
    fn too_large(&self, path: &str, length: Option<u64>) -> Response {
        let limit = size(self.0.body_limit);
        let line = match length {
            Some(length) => {
                format!("request body of {length} bytes is over the {limit} limit of {path}")
            }
            None => format!("request body is over the {limit} limit of {path}"),
        };
        tracing::debug!(path, "{line}: 413");
        reply::line(StatusCode::PAYLOAD_TOO_LARGE, line)
    }
}

/// Route middleware: admits a request into `pool`. A body announced over the limit gets
/// a one-line 413 at once (without it, the server would wait for bytes it will refuse),
/// and one announced over what the budget has free a 503. The body is then read here
/// and charged as its bytes arrive: 503 with `Retry-After`
/// once it does not fit, 413 once it passes the limit. Only then does the request wait
/// for a slot (within its deadline): a slow upload holds the bytes it has sent, never a
/// slot that work needs. The handler gets the whole body and the request's [`Ticket`]
/// as an extension.
pub async fn admit(State(pool): State<Pool>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let announced = announced_length(&req);
    let mut held = Held {
        _slot: None,
        body: None,
        class: pool.0.class,
        metrics: pool.0.metrics.clone(),
    };
    if let Some(length) = announced {
        if length > pool.0.body_limit as u64 {
            return pool.too_large(&path, Some(length));
        }
        if length > pool.0.kib.available_permits() as u64 * 1024 {
            return pool.over_budget(&path, length, true, &held);
        }
    }
    let (parts, body) = req.into_parts();
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let chunk = match frame {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::debug!(path, "request body not received: {e}");
                return reply::bad_request(format!("request body not received: {e}"));
            }
        };
        let total = bytes.len() + chunk.len();
        if total > pool.0.body_limit {
            return pool.too_large(&path, announced);
        }
        if bytes.capacity() < total {
            // Exactly the announced length; otherwise the Vec's own growth.
            match announced {
                Some(length) => bytes.reserve_exact((length as usize).max(total) - bytes.len()),
                None => bytes.reserve(chunk.len()),
            }
        }
        let owed = (total as u64)
            .div_ceil(1024)
            .saturating_sub(u64::from(held.body_kib()));
        if owed > 0 {
            let Some(permit) = pool.charge(owed * 1024) else {
                return pool.over_budget(&path, total as u64, false, &held);
            };
            held.add(permit);
        }
        bytes.extend_from_slice(&chunk);
    }
    let Ok(slot) = pool.0.slots.clone().acquire_owned().await else {
        return reply::line(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    held._slot = Some(slot);
    let mut req = Request::from_parts(parts, Body::from(Bytes::from(bytes)));
    req.extensions_mut().insert(Ticket {
        _held: Arc::new(held),
    });
    next.run(req).await
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, middleware, routing::post};
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    /// A router whose `/webhook` and `/extender` routes sit in pools of one slot each;
    /// `/webhook` answers once `go` is notified.
    fn router(go: Arc<Notify>) -> Router {
        let metrics = Arc::new(Metrics::new());
        let pool = |class| Pool::new(class, 1, 64 << 10, 16 << 10, metrics.clone());
        let (webhook, extender) = (pool(Class::Webhook), pool(Class::Extender));
        Router::new()
            .route(
                "/webhook",
                post(move || async move { go.notified().await })
                    .layer(middleware::from_fn_with_state(webhook, admit)),
            )
            .route(
                "/extender",
                post(|| async {}).layer(middleware::from_fn_with_state(extender, admit)),
            )
    }

    fn request(path: &str) -> Request {
        Request::post(path).body(Body::from("{}")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_class_waits_for_its_own_slots_only() {
        let go = Arc::new(Notify::new());
        let app = router(go.clone());
        let first = tokio::spawn(app.clone().oneshot(request("/webhook")));
        tokio::task::yield_now().await;
        // The webhook's one slot is held: another review waits (paused time only moves
        // on when every task waits) ...
        let second = tokio::time::timeout(
            Duration::from_secs(60),
            app.clone().oneshot(request("/webhook")),
        )
        .await;
        assert!(second.is_err(), "a second review got the only slot");
        // ... while the extender's slot is free.
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            app.clone().oneshot(request("/extender")),
        )
        .await
        .expect("the extender answers while the webhook's slot is held")
        .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        go.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
