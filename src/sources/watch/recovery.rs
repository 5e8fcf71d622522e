//! Notices when the API answers a kind's list or watch again after failures. The
//! watcher reports errors but not a quiet reconnect (a re-established watch with no
//! events yet), so recovery is read off the client's responses instead.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::http::{Request, Response};
use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::kinds::collection_path;
use crate::cluster::{Kind, SharedState};

/// Marks a kind's watch as recovered when its collection is answered with a 2xx.
#[derive(Clone)]
pub struct RecoveryLayer {
    state: SharedState,
    collections: Arc<Vec<(String, Kind)>>,
}

impl RecoveryLayer {
    /// A layer recording recoveries into `state`.
    pub fn new(state: SharedState) -> Self {
        let collections = Kind::ALL
            .into_iter()
            .map(|k| (collection_path(k), k))
            .collect();
        RecoveryLayer {
            state,
            collections: Arc::new(collections),
        }
    }
}

impl<S> Layer<S> for RecoveryLayer {
    type Service = Recovery<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recovery {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RecoveryLayer`].
#[derive(Clone)]
pub struct Recovery<S> {
    inner: S,
    layer: RecoveryLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Recovery<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let kind = self
            .layer
            .collections
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, k)| *k);
        let state = self.layer.state.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(kind) = kind
                && response.status().is_success()
            {
                recovered(&state, kind);
            }
            Ok(response)
        })
    }
}

fn recovered(state: &SharedState, kind: Kind) {
    let failing = state.read().is_ok_and(|s| s.readiness().is_failing(kind));
    if !failing {
        return;
    }
    let after = state
        .write()
        .ok()
        .and_then(|mut s| s.readiness_mut().watch_recovered(kind, Instant::now()));
    if let Some(after) = after {
        tracing::info!(
            kind = kind.as_str(),
            "watch recovered after {:.1}s of failures",
            after.as_secs_f64()
        );
    }
}
