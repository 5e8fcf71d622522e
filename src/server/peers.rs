//! What one peer address holds, under a cap: its open connections (see `connections`)
//! and its requests in flight when it has not authenticated. A client certificate is
//! the only identity volguard can trust; without one, the address is what tells one
//! caller from another, so a single anonymous peer cannot take every slot that
//! kube-apiserver's reviews need.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use crate::server::{
    connections::{ClientCertificate, Peer},
    reply,
};

/// Counts per peer address, shared by everything one cap covers.
#[derive(Clone, Default)]
pub struct PerPeer(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerPeer {
    /// One more for `ip`, or `Err` with how many it holds when that is `max` already.
    pub fn take(&self, ip: IpAddr, max: usize) -> Result<PeerSlot, usize> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.entry(ip).or_default();
        if *held >= max {
            return Err(*held);
        }
        *held += 1;
        Ok(PeerSlot {
            ip,
            counts: self.clone(),
        })
    }
}

/// One unit of what a peer holds, given back on drop.
pub struct PeerSlot {
    ip: IpAddr,
    counts: PerPeer,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Middleware: a request on a connection without a client certificate takes one of its
/// peer's `max` request slots until it is answered; beyond them, a one-line 429 with
/// `Retry-After`. Authenticated requests are not counted: their pool bounds them.
pub async fn limit_anonymous(
    State((requests, max)): State<(PerPeer, usize)>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<ClientCertificate>().is_some() {
        return next.run(req).await;
    }
    let Some(&Peer(ip)) = req.extensions().get::<Peer>() else {
        return next.run(req).await;
    };
    match requests.take(ip, max) {
        Ok(slot) => {
            let response = next.run(req).await;
            drop(slot);
            response
        }
        Err(held) => {
            let line = format!(
                "{ip} has {held} requests in flight without a client certificate, the per-peer \
                 limit (--max-requests-per-peer): retry later"
            );
            tracing::debug!(path = req.uri().path(), "{line}");
            reply::retry_later(StatusCode::TOO_MANY_REQUESTS, line)
        }
    }
}
