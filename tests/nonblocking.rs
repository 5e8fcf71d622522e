//! No tokio worker waits for the cluster state's lock: while a writer holds it (a
//! watcher applying a relist, say), the server's workers go on answering probes and
//! scrapes, and a watcher with an event to apply waits for the lock off the workers.

mod common;
mod fake_api;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use common::TestServer;
use fake_api::{FakeApi, example_documents};
use serde_json::json;
use volguard::{
    cluster::{Kind, SharedState},
    server::app::App,
    sources::watch,
};

/// Longer than any answer can take unless it hangs.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// GETs `path` from the plain listener on a thread of its own; the status line and the
/// body, or the error, within [`HANG_GUARD`].
fn get(addr: SocketAddr, path: &str) -> Result<(String, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANG_GUARD))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{path}: no answer: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// Waits (bounded) until `cond` holds.
fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn probes_and_scrapes_are_answered_while_a_writer_holds_the_state() {
    // One worker: a handler or watcher that parks it on the lock stops the server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (fake, server, state, _watchers) = runtime.block_on(async {
        let fake = FakeApi::start(example_documents()).await;
        let config = common::example_config();
        let state = SharedState::new(common::empty_state(&config));
        let client = watch::client(fake.kube_config(), &state).unwrap();
        let mut app = App::new(Arc::new(config), state.clone());
        app.api = Some(client.clone());
        let server = TestServer::with_app(app).await;
        let url = format!("http://{}", fake.addr);
        let watchers = watch::spawn(client, url, state.clone(), &server.app.stopped_watches);
        (fake, server, state, watchers)
    });
    until("every kind is listed", || state.readiness().is_ready());
    let classes = || {
        let counts = state.read().unwrap().counts();
        counts
            .iter()
            .find(|(kind, _)| *kind == Kind::StorageClass)
            .map_or(0, |(_, n)| *n)
    };
    let before = classes();

    let writer = common::hold_for_writing(state.clone());
    // An event for the StorageClass watcher, which must now wait for the lock.
    fake.put(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "arrived-while-locked"},
        "provisioner": "linodebs.csi.linode.com"
    }));
    // Time for the watcher to take the event and start waiting (nothing is timed).
    std::thread::sleep(Duration::from_millis(300));

    for (path, expect) in [
        ("/healthz", "ok"),
        ("/readyz", "ok"),
        ("/metrics", "volguard_cache_ready 1\n"),
    ] {
        let (status, body) = get(server.metrics_addr, path).unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
        assert!(body.contains(expect), "{path}: {body}");
    }
    // A writer that does not let go fails readiness after 5 s: the readiness copy
    // alone would go on saying ok.
    until("readiness notices the writer", || {
        get(server.metrics_addr, "/readyz").is_ok_and(|(status, _)| status.contains(" 503 "))
    });
    let (_, body) = get(server.metrics_addr, "/readyz").unwrap();
    assert!(
        body.starts_with("a writer has held the cluster state for ")
            && body.ends_with(" s: requests that read it wait\n"),
        "{body}"
    );

    drop(writer);
    until("the event is applied", || classes() == before + 1);
    let (status, body) = get(server.metrics_addr, "/metrics").unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
}

/// What holds something an extender call reads, for as long as the guard lives.
enum Holder {
    /// A watch writing the cluster state.
    Writer,
    /// Another call judging against the placements in flight.
    InFlight,
}

/// An extender call polled on an async worker while `holder` holds what it reads: the
/// first poll comes back at once (the call waits on a blocking thread, not on the
/// worker), and the call is answered once the holder lets go.
fn extender_call_while_held(
    path: &'static str,
    holder: Holder,
) -> (bool, axum::body::Bytes, axum::body::Bytes) {
    use axum::{body::Bytes, extract::State};
    use volguard::server::extender::endpoints::{filter_handler, prioritize_handler};

    let app = common::example_app();
    let args = Bytes::from(
        std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).expect("fixture"),
    );
    // The answer with nothing held, from a twin of the app.
    let free = {
        let twin = common::example_app();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let args = args.clone();
        runtime.block_on(async move {
            let response = match path {
                "/filter" => filter_handler(State(twin), None, args).await,
                _ => prioritize_handler(State(twin), None, args).await,
            };
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
        })
    };
    let cluster = app.cluster.clone();
    let in_flight = app.in_flight.clone();
    let writer = matches!(holder, Holder::Writer).then(|| cluster.write().unwrap());
    let placements = matches!(holder, Holder::InFlight).then(|| in_flight.lock().unwrap());
    let common::PolledCall { polled, answered } = common::poll_on_own_thread(move || async move {
        match path {
            "/filter" => filter_handler(State(app), None, args).await,
            _ => prioritize_handler(State(app), None, args).await,
        }
    });
    // Only a hang guard: a call that blocks its worker never comes back from the poll.
    let pending = polled
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("{path} blocked its async worker while its state was held"));
    drop(writer);
    drop(placements);
    let body = answered
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("{path} answered once its state was let go"));
    (pending, body, free)
}

/// A `/filter` or `/prioritize` small enough to be judged on its async worker gives the
/// call to a blocking thread when a watch holds the cluster state or another call holds
/// the placements in flight, and answers then what it would have answered at once.
#[test]
fn extender_calls_leave_their_async_worker_free_while_their_state_is_held() {
    for path in ["/filter", "/prioritize"] {
        for (holder, what) in [
            (Holder::Writer, "a writer holds the cluster state"),
            (
                Holder::InFlight,
                "another call holds the placements in flight",
            ),
        ] {
            let (pending, body, free) = extender_call_while_held(path, holder);
            assert!(pending, "{path} answered on its worker while {what}");
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&free),
                "{path}, once {what} no more, answers as it would have at once"
            );
        }
    }
}
