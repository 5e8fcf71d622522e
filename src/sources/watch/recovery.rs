//! When a failing kind's watch counts as working again: a completed list, an applied
//! event, or a bookmark. A 2xx response head proves nothing (the body of a list or watch
//! can break or carry an error right after it), and a watch that keeps reconnecting and
//! failing must not restart the stale clock on every round.
//!
//! Lists and events reach the watcher's loop, which asks [`proves_working`]. Bookmarks do
//! not: the watcher consumes them without a word, which leaves a quiet kind's rewatch
//! with nothing to show. So [`RecoveryLayer`] reads the lines of each watch response as
//! they stream through the API client and records a recovery on a bookmark line.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    http::{Request, Response},
};
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use kube::runtime::watcher::Event;
use tokio::runtime::Handle;
use tower::{Layer, Service};

use super::kinds::collection_path;
use crate::cluster::{ClusterState, Kind, SharedState};

/// Longest watch line read for its type: a bookmark carries only a resourceVersion and
/// an annotation or two, so longer lines are events, skipped without being kept.
const BOOKMARK_LINE_MAX: usize = 4096;

/// The event shows that the API serves the kind again: a list that completed, or an
/// event applied from the watch. A list page (`Init`, `InitApply`) does not: the list
/// can still fail on its next page.
pub fn proves_working<K>(event: &Event<K>) -> bool {
    matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_))
}

/// Records that `kind`'s watch works again; returns how long it had been failing,
/// `None` when it was not. Log the result with [`log_recovered`].
pub fn recovered(state: &mut ClusterState, kind: Kind) -> Option<Duration> {
    state.readiness_mut().watch_recovered(kind, Instant::now())
}

/// Records `kind`'s recovery, seen on a bookmark now, on a blocking thread of `runtime`
/// (the one the client was built on, whose blocking threads have the server's
/// priority): the body is polled on an async worker, which must not wait for a writer
/// to let go of the state.
/// The recovery is logged from a task, which runs where the watchers' own logs are
/// written. It may land after an error the watcher records meanwhile; it is timed, so
/// it does not end a failure that began after the bookmark.
fn record_recovery(runtime: &Handle, state: SharedState, kind: Kind) {
    let at = Instant::now();
    let writing = runtime.spawn_blocking(move || {
        state
            .write()
            .ok()
            .and_then(|mut s| s.readiness_mut().watch_recovered(kind, at))
    });
    runtime.spawn(async move {
        if let Ok(Some(after)) = writing.await {
            log_recovered(kind, after);
        }
    });
}

/// Logs a recovery [`recovered`] reported.
pub fn log_recovered(kind: Kind, after: Duration) {
    tracing::info!(
        kind = kind.as_str(),
        "watch recovered after {:.1}s of failures",
        after.as_secs_f64()
    );
}

/// Watches a watch response's lines for bookmarks, recording recoveries into `state`.
#[derive(Clone)]
pub struct RecoveryLayer {
    state: SharedState,
    /// Where recoveries are written.
    runtime: Handle,
    collections: Arc<Vec<(String, Kind)>>,
}

impl RecoveryLayer {
    /// A layer recording recoveries into `state` on the current runtime's blocking
    /// threads. Must be called inside the tokio runtime.
    pub fn new(state: SharedState) -> Self {
        let collections = Kind::ALL
            .into_iter()
            .map(|k| (collection_path(k), k))
            .collect();
        RecoveryLayer {
            state,
            runtime: Handle::current(),
            collections: Arc::new(collections),
        }
    }

    /// The kind whose watch `req` opens, `None` for any other request.
    fn watched_kind<B>(&self, req: &Request<B>) -> Option<Kind> {
        let watching = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1");
        let path = req.uri().path();
        self.collections
            .iter()
            .find(|(p, _)| watching && p == path)
            .map(|(_, k)| *k)
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
    type Response = Response<BookmarkSpotter<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let watch = self
            .layer
            .watched_kind(&req)
            .map(|kind| (kind, self.layer.state.clone(), self.layer.runtime.clone()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| BookmarkSpotter {
                inner,
                watch: watch.map(|(kind, state, runtime)| Watching {
                    kind,
                    state,
                    runtime,
                    lines: BookmarkLines::default(),
                }),
            }))
        })
    }
}

/// A response body passed through unchanged; on a watch, each complete line is read
/// for a bookmark, and one records the kind's recovery.
pub struct BookmarkSpotter<B> {
    inner: B,
    /// `None` for requests other than watches.
    watch: Option<Watching>,
}

/// The kind a watch response streams, where to record its recovery, and its lines.
struct Watching {
    kind: Kind,
    state: SharedState,
    runtime: Handle,
    lines: BookmarkLines,
}

/// Cuts a stream into lines and tells bookmark lines apart, keeping at most one short
/// line in memory.
#[derive(Default)]
struct BookmarkLines {
    /// The current line so far, while it is short enough to be a bookmark.
    line: Vec<u8>,
    /// The current line is longer than any bookmark.
    overlong: bool,
}

impl BookmarkLines {
    /// Reads one chunk of the stream; true when a bookmark line ended in it.
    fn scan(&mut self, mut data: &[u8]) -> bool {
        let mut bookmark = false;
        while !data.is_empty() {
            let (part, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(at) => (&data[..at], true),
                None => (data, false),
            };
            data = &data[(part.len() + usize::from(ended))..];
            if !self.overlong && self.line.len() + part.len() <= BOOKMARK_LINE_MAX {
                self.line.extend_from_slice(part);
            } else {
                self.overlong = true;
                self.line.clear();
            }
            if ended {
                bookmark |= !self.overlong && is_bookmark(&self.line);
                self.line.clear();
                self.overlong = false;
            }
        }
        bookmark
    }
}

/// The line is a watch event of type BOOKMARK.
fn is_bookmark(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Line>(line).is_ok_and(|l| l.kind == "BOOKMARK")
}

impl<B> Body for BookmarkSpotter<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Some(watch) = &mut self.watch
            && watch.lines.scan(data)
            && watch.state.readiness().is_failing(watch.kind)
        {
            record_recovery(&watch.runtime, watch.state.clone(), watch.kind);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bookmark_line_is_spotted_however_it_is_cut() {
        let stream = concat!(
            r#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"a"}}}"#,
            "\n",
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}"#,
            "\n"
        )
        .as_bytes();
        for cut in 0..stream.len() {
            let mut s = BookmarkLines::default();
            let first = s.scan(&stream[..cut]);
            let second = s.scan(&stream[cut..]);
            assert!(first ^ second, "cut at {cut}");
        }
    }

    #[test]
    fn other_lines_are_no_bookmark() {
        let mut s = BookmarkLines::default();
        let error = r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#;
        assert!(!s.scan(format!("{error}\n").as_bytes()));
        assert!(!s.scan(b"{\"type\":\"BOOKMARK\""), "a line without its end");
        let mut s = BookmarkLines::default();
        let quoted =
            r#"{"type":"ADDED","object":{"metadata":{"annotations":{"type":"BOOKMARK"}}}}"#;
        assert!(!s.scan(format!("{quoted}\n").as_bytes()), "a nested type");
        let mut s = BookmarkLines::default();
        let padding = " ".repeat(BOOKMARK_LINE_MAX);
        let long = format!("{{\"type\":\"BOOKMARK\",\"x\":\"{padding}\"}}\n");
        assert!(!s.scan(long.as_bytes()), "longer than any bookmark");
        assert!(
            s.scan(b"{\"type\":\"BOOKMARK\"}\n"),
            "the next line is read again"
        );
    }
}
