//! What every accepted connection goes through before HTTP sees it, on both listeners:
//! a slot under the listener's connection cap and one under the per-peer cap (closed
//! at once beyond either, with a log line naming the peer), and an idle deadline that
//! closes a connection with no request in flight, for HTTP/1 and HTTP/2 alike (hyper's
//! own keep-alive limits only cover HTTP/1 request heads). Every request on a
//! connection is handed its peer's address and, on the TLS listener, the fact that the
//! connection presented a verified client certificate.

use std::{
    future::{Future, Ready, ready},
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::http::Request;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::server::{
    metrics::Metrics,
    peers::{PeerSlot, PerPeer},
};

/// The connection caps and idle deadline of one listener.
#[derive(Clone)]
pub struct ConnectionSlots {
    /// The listener's name in log lines.
    listener: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    /// What `max` is, for the refusal's log line ("the limit (--max-connections)").
    max_set_by: &'static str,
    peers: PerPeer,
    max_per_peer: usize,
    idle: Duration,
    metrics: Arc<Metrics>,
    /// When a refusal was last logged, and how many were not logged since.
    logged: Arc<Mutex<(Option<Instant>, u64)>>,
}

/// Refusals are logged at most this often (each is counted in the metrics): a flood
/// must not turn into a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl ConnectionSlots {
    /// At most `max` connections (named `max_set_by` in the log),
    /// `max_per_peer` from one IP address, each closed after `idle` without a request in
    /// flight; refusals counted in `metrics`.
    pub fn new(
        listener: &'static str,
        (max, max_set_by): (usize, &'static str),
        max_per_peer: usize,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        ConnectionSlots {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            max_set_by,
            peers: PerPeer::default(),
            max_per_peer,
            idle,
            metrics,
            logged: Arc::new(Mutex::new((None, 0))),
        }
    }

    fn refuse(&self, why: String) -> io::Error {
        self.metrics.connection_refused();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match logged.0 {
            Some(last) if now < last + REFUSAL_LOG_INTERVAL => logged.1 += 1,
            _ => {
                let unlogged = std::mem::take(&mut logged.1);
                logged.0 = Some(now);
                if unlogged == 0 {
                    tracing::warn!(listener = self.listener, "{why}");
                } else {
                    tracing::warn!(
                        listener = self.listener,
                        "{why} ({unlogged} more refused since the last such line)"
                    );
                }
            }
        }
        io::Error::other(why)
    }

    /// The two slots of a new connection from `peer`, or why it is refused.
    fn take(&self, peer: Option<IpAddr>) -> io::Result<Slot> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let who = peer.map_or_else(|| "an unknown peer".to_owned(), |ip| ip.to_string());
            return Err(self.refuse(format!(
                "connection from {who} refused: {} connections are open, {}",
                self.max, self.max_set_by
            )));
        };
        let Some(ip) = peer else {
            return Ok(Slot {
                _permit: permit,
                _peer: None,
            });
        };
        match self.peers.take(ip, self.max_per_peer) {
            Ok(peer) => Ok(Slot {
                _permit: permit,
                _peer: Some(peer),
            }),
            Err(open) => Err(self.refuse(format!(
                "connection from {ip} refused: it has {open} connections open, the per-peer limit (--max-connections-per-peer)"
            ))),
        }
    }
}

/// A connection's place under both caps, given back when the connection and every
/// request on it are done.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
}

impl<S> axum_server::accept::Accept<TcpStream, S> for ConnectionSlots {
    type Stream = IdleClose<TcpStream>;
    type Service = Held<S>;
    type Future = Ready<io::Result<(IdleClose<TcpStream>, Held<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        // Answers are written whole. With Nagle's algorithm the last partial segment of
        // a large one (a 5,000-node /prioritize list) waits for the client's delayed
        // ACK: 40 ms on Linux, a p99 of 50 ms at 200 req/s instead of a few.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        ready(self.take(peer).map(|slot| {
            let activity = Arc::new(Activity::default());
            (
                IdleClose {
                    inner: stream,
                    activity: activity.clone(),
                    idle: self.idle,
                    timer: Box::pin(tokio::time::sleep(self.idle)),
                },
                Held {
                    inner: service,
                    _slot: Arc::new(slot),
                    peer,
                    activity,
                },
            )
        }))
    }
}

/// Requests in flight on one connection, and when that count last changed.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    changed: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            changed: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    fn touch(&self) {
        *self.changed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection counts as idle from, if no request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        let changed = *self.changed.lock().unwrap_or_else(|e| e.into_inner());
        (self.in_flight.load(Ordering::SeqCst) == 0).then_some(changed)
    }
}

/// One request in flight; its end starts the idle clock again.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's byte stream that reads as closed once the connection has had no
/// request in flight for the idle time. Bytes alone (HTTP/2 pings, a request head
/// trickling in) do not keep it open: only requests do.
pub struct IdleClose<I> {
    inner: I,
    activity: Arc<Activity>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleClose<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(done) = Pin::new(&mut self.inner).poll_read(cx, buf) {
            return Poll::Ready(done);
        }
        // Busy: the end of the request comes with a write, after which the reader
        // polls again and the clock is set from then.
        let Some(since) = self.activity.idle_since() else {
            return Poll::Pending;
        };
        let deadline = since + self.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("closing a connection idle for {:?}", self.idle);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleClose<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service: holds its slots until the connection and every request on
/// it are done, and counts its requests in flight for the idle deadline.
#[derive(Clone)]
pub struct Held<S> {
    inner: S,
    _slot: Arc<Slot>,
    peer: Option<IpAddr>,
    activity: Arc<Activity>,
}

/// The address of the peer a request came from, for per-peer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// A response future boxed with what it holds.
type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<Request<B>> for Held<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Boxed<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(ip) = self.peer {
            req.extensions_mut().insert(Peer(ip));
        }
        let in_flight = self.activity.start();
        let response = self.inner.call(req);
        Box::pin(async move {
            let answer = response.await;
            drop(in_flight);
            answer
        })
    }
}

/// Marks a request whose connection presented a client certificate, verified (chain
/// and allowed names) in the handshake; absent when the client presented none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate;

/// An acceptor around the TLS one that hands the connection's verified client
/// certificate, if any, to each of its requests as a [`ClientCertificate`] extension.
#[derive(Clone)]
pub struct Identified<A>(pub A);

impl<A, I, S, T> axum_server::accept::Accept<I, S> for Identified<A>
where
    A: axum_server::accept::Accept<I, S, Stream = tokio_rustls::server::TlsStream<T>>,
    A::Future: Send + 'static,
{
    type Stream = A::Stream;
    type Service = WithCertificate<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(A::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let handshake = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty())
                .then_some(ClientCertificate);
            Ok((
                stream,
                WithCertificate {
                    inner: service,
                    certificate,
                },
            ))
        })
    }
}

/// A connection's service that adds its client certificate to every request.
#[derive(Clone)]
pub struct WithCertificate<S> {
    inner: S,
    certificate: Option<ClientCertificate>,
}

impl<S, B> tower::Service<Request<B>> for WithCertificate<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(certificate) = self.certificate {
            req.extensions_mut().insert(certificate);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum_server::accept::Accept;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(!stream.nodelay().unwrap(), "Linux accepts with Nagle on");
        let slots = ConnectionSlots::new(
            "test",
            (1, "--max-connections"),
            1,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        );
        let (stream, _) = slots.accept(stream, ()).await.unwrap();
        assert!(stream.inner.nodelay().unwrap());
    }
}
