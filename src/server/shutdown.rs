//! Running both listeners until SIGTERM or SIGINT, then stopping without dropping work:
//! readiness fails at once, new connections are still taken for a short delay after
//! SIGTERM (while the endpoint removal reaches the apiservers and schedulers), then the
//! TLS listener stops accepting and in-flight requests get until a deadline to finish.
//! The plain listener goes last, so probes and scrapes see the drain.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use axum_server::tls_rustls::RustlsConfig;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    task::JoinError,
};

use crate::server::{app::App, router};

/// The stop signals, caught from installation on (they no longer kill the process).
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    /// Installs the SIGTERM and SIGINT handlers; needs a running tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next stop signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// How a stop drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Keep accepting new connections this long after SIGTERM (what the kubelet sends),
    /// with readiness failing. SIGINT (Ctrl-C at a terminal) skips it.
    pub delay: Duration,
    /// Then give in-flight requests this long before closing their connections.
    pub timeout: Duration,
}

/// Serves the TLS and plain listeners until a stop signal, then drains; `Ok` after a
/// drain, `Err` with one line when a listener fails on its own.
pub async fn serve_until_stopped(
    app: App,
    tls_listener: std::net::TcpListener,
    plain_listener: std::net::TcpListener,
    tls: RustlsConfig,
    drain: Drain,
    mut signals: StopSignals,
) -> Result<(), String> {
    let handle = axum_server::Handle::new();
    let (stop_plain, plain_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut https = tokio::spawn(router::serve_tls(
        tls_listener,
        tls,
        router::router(app.clone()),
        app.limits,
        app.metrics.clone(),
        handle.clone(),
    ));
    let mut plain = tokio::spawn(router::serve_plain(plain_listener, app.clone(), async {
        let _ = plain_stopped.await;
    }));
    let signal = tokio::select! {
        s = signals.recv() => s,
        r = &mut https => return Err(ended("TLS listener", r)),
        r = &mut plain => return Err(ended("metrics listener", r)),
    };
    app.draining.store(true, Ordering::Relaxed);
    tracing::info!(
        signal,
        delay = ?drain.delay,
        timeout = ?drain.timeout,
        "stop signal: readiness fails from now on; draining"
    );
    if signal == "SIGTERM" {
        tokio::time::sleep(drain.delay).await;
    }
    let started = Instant::now();
    handle.graceful_shutdown(Some(drain.timeout));
    if let Err(e) = flatten(https.await) {
        tracing::error!("TLS listener failed while draining: {e}");
    }
    if started.elapsed() >= drain.timeout {
        tracing::warn!(timeout = ?drain.timeout, "drain deadline reached: the connections still open were closed");
    }
    let _ = stop_plain.send(());
    if let Err(e) = flatten(plain.await) {
        tracing::error!("metrics listener failed while stopping: {e}");
    }
    tracing::info!("stopped");
    Ok(())
}

fn flatten(r: Result<std::io::Result<()>, JoinError>) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn ended(what: &str, r: Result<std::io::Result<()>, JoinError>) -> String {
    match flatten(r) {
        Ok(()) => format!("{what} stopped unexpectedly"),
        Err(e) => format!("{what}: {e}"),
    }
}
