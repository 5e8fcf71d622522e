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
