//! The TLS listener's limits, each set small on the real server: a request not
//! answered in time gets a one-line 503, requests beyond the concurrency cap wait for a
//! slot, connections beyond the cap are closed at once, and idle keep-alive connections
//! are closed.

mod common;

use std::{
    io::{Read, Write},
    time::Duration,
};

use common::{TestServer, create_review, example_app, openmetrics, raw, read_doc};
use hyper::StatusCode;
use volguard::server::limits::Limits;

async fn start(limits: Limits) -> TestServer {
    let mut app = example_app();
    app.limits = limits;
    TestServer::with_app(app).await
}

fn review_body() -> Vec<u8> {
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    create_review(&pod, "default").to_string().into_bytes()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn a_request_not_answered_in_time_gets_a_one_line_503_and_serving_goes_on() {
    let server = start(Limits {
        request_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    let (status, body) = blocking(move || {
        let mut conn = raw::connect(addr, &ca);
        // Half a body, and never the rest.
        raw::start_request(&mut conn, "/mutate", &review_body());
        raw::read_response(&mut conn).unwrap()
    })
    .await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not answered within 0.2 s"), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text:?}");

    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, metrics) = server.get_plain("/metrics").await;
    let scraped = openmetrics::parse(&metrics).unwrap();
    assert_eq!(
        scraped.value(
            "volguard_requests_total",
            &[("endpoint", "/mutate"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );
}

/// A complete POST of `body` to `path` on a new connection.
fn post(addr: std::net::SocketAddr, ca: &str, path: &str, body: &[u8]) -> raw::Tls {
    let mut conn = raw::connect(addr, ca);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    conn.flush().unwrap();
    conn
}

#[tokio::test]
async fn requests_beyond_the_concurrency_cap_wait_for_a_slot_which_uploads_do_not_take() {
    let server = start(Limits {
        max_requests: 1,
        ..Limits::default()
    })
    .await;
    let (addr, ca, metrics) = (server.addr, server.ca_pem.clone(), server.metrics_addr);
    let cluster = server.app.cluster.clone();
    blocking(move || {
        let body = review_body();
        // A slow upload: half a body, the rest later.
        let mut slow = raw::connect(addr, &ca);
        raw::start_request(&mut slow, "/mutate", &body);
        // A writer holds the cluster state, so a review that has its slot waits in it.
        let writer = common::hold_for_writing(cluster);
        let mut first = post(addr, &ca, "/mutate", &body);
        until_in_flight(metrics, 2.0);
        // The only slot is taken: a third review is received, and waits.
        let mut second = post(addr, &ca, "/mutate", &body);
        until_in_flight(metrics, 3.0);
        second.sock.set_nonblocking(true).unwrap();
        let waiting = raw::read_response(&mut second);
        let Err(e) = waiting else {
            panic!("answered while the only slot was taken: {waiting:?}")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e:?}");
        second.sock.set_nonblocking(false).unwrap();
        // Health checks take no slot.
        assert_eq!(
            raw::get(&mut raw::connect(addr, &ca), "/healthz")
                .unwrap()
                .0,
            200
        );
        // Both are answered while the slow upload is still unfinished: it held no slot.
        drop(writer);
        assert_eq!(raw::read_response(&mut first).unwrap().0, 200);
        assert_eq!(raw::read_response(&mut second).unwrap().0, 200);
        raw::finish_request(&mut slow, &body);
        assert_eq!(raw::read_response(&mut slow).unwrap().0, 200);
        until_in_flight(metrics, 0.0);
    })
    .await;
}

#[tokio::test]
async fn an_anonymous_peer_beyond_its_requests_in_flight_gets_a_429() {
    let server = start(Limits {
        max_requests_per_peer: 1,
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    let here = raw::socket_from("127.0.0.1", addr).await.unwrap();
    let also_here = raw::socket_from("127.0.0.1", addr).await.unwrap();
    let elsewhere = raw::socket_from("127.0.0.2", addr).await.unwrap();
    let (refused, other_peer) = blocking(move || {
        let body = review_body();
        let mut first = raw::connect_over(here, &ca).unwrap();
        raw::start_request(&mut first, "/mutate", &body);
        let refused = raw::get(&mut raw::connect_over(also_here, &ca).unwrap(), "/healthz");
        let other_peer = raw::get(&mut raw::connect_over(elsewhere, &ca).unwrap(), "/healthz");
        raw::finish_request(&mut first, &body);
        assert_eq!(raw::read_response(&mut first).unwrap().0, 200);
        (refused.unwrap(), other_peer.unwrap())
    })
    .await;
    assert_eq!(
        (refused.0, String::from_utf8(refused.1).unwrap()),
        (
            429,
            "127.0.0.1 has 1 requests in flight without a client certificate, the per-peer \
             limit (--max-requests-per-peer): retry later\n"
                .to_owned()
        )
    );
    assert_eq!(other_peer.0, 200);
    // The slot came back with the answer.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

/// `volguard_requests_in_flight` as the plain listener's /metrics shows it.
fn in_flight(metrics: std::net::SocketAddr) -> f64 {
    let mut conn = std::net::TcpStream::connect(metrics).unwrap();
    let (status, body) = raw::get(&mut conn, "/metrics").unwrap();
    assert_eq!(status, 200);
    openmetrics::parse(&String::from_utf8(body).unwrap())
        .unwrap()
        .value("volguard_requests_in_flight", &[])
        .expect("the in-flight gauge is exported")
}

/// Scrapes /metrics until the in-flight gauge shows `want` (a hang guard bounds it).
fn until_in_flight(metrics: std::net::SocketAddr, want: f64) {
    for _ in 0..3000 {
        if in_flight(metrics) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "volguard_requests_in_flight never showed {want}: {}",
        in_flight(metrics)
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
    let server = start(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    blocking(move || {
        let first = raw::connect(addr, &ca);
        let _second = raw::connect(addr, &ca);
        assert!(
            raw::try_connect(addr, &ca).is_err(),
            "a third connection must be refused"
        );
        drop(first);
        for _ in 0..600 {
            if raw::try_connect(addr, &ca).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the closed connection's slot never came back");
    })
    .await;
    let (_, _, metrics) = server.get_plain("/metrics").await;
    let refused = openmetrics::parse(&metrics)
        .unwrap()
        .value("volguard_connections_refused_total", &[])
        .unwrap();
    assert!(refused >= 1.0, "{refused}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(100),
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    blocking(move || {
        let mut conn = raw::connect(addr, &ca);
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(raw::read_response(&mut conn).unwrap().0, 200);
        // Kept alive, then nothing more is sent: the server closes it, and the read
        // ends instead of running into the client's 30 s read timeout.
        let mut rest = Vec::new();
        let end = conn.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        if let Err(e) = end {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the server kept the idle connection open: {e:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_body_announced_too_large_is_refused_before_it_is_sent() {
    // One request slot: an oversized upload must not hold it.
    let server = start(Limits {
        max_requests: 1,
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    let answers = blocking(move || {
        [
            ("/mutate", 512u64 << 20),
            ("/filter", 129 << 20),
            ("/prioritize", 1 << 40),
        ]
        .map(|(path, length)| {
            let mut conn = raw::connect(addr, &ca);
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                     Content-Length: {length}\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).unwrap();
            conn.flush().unwrap();
            // Not one byte of the body is sent; the answer comes anyway.
            let (status, body) = raw::read_response(&mut conn).unwrap();
            (status, String::from_utf8(body).unwrap())
        })
    })
    .await;
    assert_eq!(
        answers,
        [
            (
                413,
                "request body of 536870912 bytes is over the 8 MiB limit of /mutate\n".to_owned()
            ),
            (
                413,
                "request body of 135266304 bytes is over the 4 MiB limit of /filter\n".to_owned()
            ),
            (
                413,
                "request body of 1099511627776 bytes is over the 4 MiB limit of /prioritize\n"
                    .to_owned()
            ),
        ]
    );
    let (status, _) = server.post("/mutate", review_body()).await;
    assert_eq!(status, StatusCode::OK, "the slot is free");
    let (_, _, metrics) = server.get_plain("/metrics").await;
    let scraped = openmetrics::parse(&metrics).unwrap();
    assert_eq!(
        scraped.value(
            "volguard_requests_total",
            &[("endpoint", "/mutate"), ("outcome", "too_large")]
        ),
        Some(1.0)
    );
}
