//! Request bodies are bounded across requests, not only one by one: bodies in flight
//! are charged to one budget before they are read (503 beyond it), and the extender's
//! blocking work stops once its request is abandoned, giving its body back.

mod common;

use std::{io::Write, time::Duration};

use common::{TestServer, create_review, example_app, openmetrics, raw, read_doc};
use hyper::StatusCode;
use volguard::server::limits::Limits;

async fn start(limits: Limits) -> TestServer {
    let mut app = example_app();
    app.limits = limits;
    TestServer::with_app(app).await
}

/// An AdmissionReview padded with trailing blanks (valid JSON) to exactly `size` bytes.
fn review_of_size(size: usize) -> Vec<u8> {
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    let mut body = create_review(&pod, "default").to_string().into_bytes();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

async fn scrape(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, _, text) = server.get_plain("/metrics").await;
    openmetrics::parse(&text).unwrap().value(name, labels)
}

/// Writes one chunk of a chunked body.
fn send_chunk(conn: &mut raw::Tls, chunk: &[u8]) {
    write!(conn, "{:x}\r\n", chunk.len()).unwrap();
    conn.write_all(chunk).unwrap();
    conn.write_all(b"\r\n").unwrap();
    conn.flush().unwrap();
}

/// `volguard_request_body_in_flight_bytes` of `caller`, read until it shows `want`.
fn until_held(metrics: std::net::SocketAddr, caller: &str, want: f64) {
    let mut seen = None;
    for _ in 0..3000 {
        let mut conn = std::net::TcpStream::connect(metrics).unwrap();
        let (_, text) = raw::get(&mut conn, "/metrics").unwrap();
        seen = openmetrics::parse(&String::from_utf8(text).unwrap())
            .unwrap()
            .value(
                "volguard_request_body_in_flight_bytes",
                &[("caller", caller)],
            );
        if seen == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{caller} bodies in flight never showed {want}: {seen:?}");
}

#[tokio::test]
async fn bodies_are_charged_to_their_class_budget_as_they_arrive() {
    let server = start(Limits {
        max_bytes_in_flight: 64 << 10,
        ..Limits::default()
    })
    .await;
    let (addr, ca, metrics) = (server.addr, server.ca_pem.clone(), server.metrics_addr);
    let body = review_of_size(48 << 10);
    let filter = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();
    let (refused, cut_off, filtered) = tokio::task::spawn_blocking({
        let body = body.clone();
        move || {
            // Half of a 48 KiB body in flight holds 24 KiB ...
            let mut first = raw::connect(addr, &ca);
            raw::start_request(&mut first, "/mutate", &body);
            until_held(metrics, "webhook", 24576.0);
            // ... so another 48 KiB does not fit into the 40 KiB left: refused before it
            // is sent.
            let mut second = raw::connect(addr, &ca);
            let head = format!(
                "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            second.write_all(head.as_bytes()).unwrap();
            second.flush().unwrap();
            let refused = raw::read_response(&mut second).unwrap();
            // A body of unknown length holds what it has sent, not the route's 8 MiB ...
            let mut third = raw::connect(addr, &ca);
            third
                .write_all(
                    b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                )
                .unwrap();
            send_chunk(&mut third, &[b' '; 10 << 10]);
            until_held(metrics, "webhook", 34816.0);
            // ... and is cut off once the next bytes do not fit: the byte past 40 KiB.
            send_chunk(&mut third, &[b' '; (30 << 10) + 1]);
            let cut_off = raw::read_response(&mut third).unwrap();
            // The extender's budget is its own: a body as large fits beside them.
            let mut padded = filter.clone();
            padded.resize(40 << 10, b' ');
            let mut scheduler = raw::connect(addr, &ca);
            let head = format!(
                "POST /filter HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                padded.len()
            );
            scheduler.write_all(head.as_bytes()).unwrap();
            scheduler.write_all(&padded).unwrap();
            scheduler.flush().unwrap();
            let filtered = raw::read_response(&mut scheduler).unwrap().0;
            raw::finish_request(&mut first, &body);
            assert_eq!(raw::read_response(&mut first).unwrap().0, 200);
            (refused, cut_off, filtered)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (refused.0, String::from_utf8(refused.1).unwrap()),
        (
            503,
            "other webhook request bodies hold 24 KiB of the 64 KiB volguard reads at once \
             (--max-bytes-in-flight); this body of 49152 bytes does not fit: retry later\n"
                .to_owned()
        )
    );
    assert_eq!(
        (cut_off.0, String::from_utf8(cut_off.1).unwrap()),
        (
            503,
            "other webhook request bodies hold 24 KiB of the 64 KiB volguard reads at once \
             (--max-bytes-in-flight); this body does not fit after 40961 bytes: retry later\n"
                .to_owned()
        )
    );
    assert_eq!(filtered, 200);
    // Every share came back with its answer.
    let (status, _) = server.post("/mutate", body).await;
    assert_eq!(status, StatusCode::OK);
    for caller in ["webhook", "extender"] {
        assert_eq!(
            scrape(
                &server,
                "volguard_request_body_in_flight_bytes",
                &[("caller", caller)]
            )
            .await,
            Some(0.0)
        );
    }
}

#[tokio::test]
async fn the_extender_body_limit_is_a_setting() {
    let args = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();
    let mut padded = args.clone();
    padded.resize(5 << 20, b' ');
    // The default fits node names, not a 5 MiB body ...
    let server = TestServer::example().await;
    let (status, body) = server.post("/filter", padded.clone()).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body of 5242880 bytes is over the 4 MiB limit of /filter\n".to_owned()
        )
    );
    // ... which a server set up for full Node objects takes.
    let server = start(Limits {
        extender_body_limit: 128 << 20,
        max_bytes_in_flight: 256 << 20,
        ..Limits::default()
    })
    .await;
    let (status, body) = server.post("/filter", padded).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn extender_work_stops_when_its_request_is_abandoned() {
    let server = start(Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let args = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();
    // A writer holds the cluster state: the judging waits for it on its blocking thread
    // while the request's deadline fires.
    let cluster = server.app.cluster.clone();
    let writer = common::hold_for_writing(cluster);
    let (status, body) = server.post("/filter", args).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "request not answered within 0.3 s (slow upload or overloaded server)\n".to_owned()
        )
    );
    drop(writer);
    // The judging gets the state, sees that nobody waits, and stops: nothing judged,
    // its body given back.
    let mut abandoned = None;
    for _ in 0..600 {
        abandoned = scrape(&server, "volguard_requests_abandoned_total", &[]).await;
        if abandoned == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(abandoned, Some(1.0), "the abandoned judging never stopped");
    let (_, _, text) = server.get_plain("/metrics").await;
    let scraped = openmetrics::parse(&text).unwrap();
    assert_eq!(
        scraped.value(
            "volguard_request_body_in_flight_bytes",
            &[("caller", "extender")]
        ),
        Some(0.0)
    );
    assert!(
        !text.contains("volguard_nodes_failed_total{"),
        "no node was judged: {text}"
    );
}

#[test]
fn an_abandoned_request_is_not_started() {
    use volguard::server::extender::endpoints::{self, Abandoned, ExtenderError};
    let app = example_app();
    let args = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();
    let abandoned = Abandoned::default();
    abandoned.set();
    assert!(matches!(
        endpoints::filter(&args, &app, &abandoned),
        Err(ExtenderError::Abandoned)
    ));
    assert!(matches!(
        endpoints::prioritize(&args, &app, &abandoned),
        Err(ExtenderError::Abandoned)
    ));
    // Not abandoned: answered.
    assert!(endpoints::filter(&args, &app, &Abandoned::default()).is_ok());
}
