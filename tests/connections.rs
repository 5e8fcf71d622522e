//! Connection limits on the real listeners, set small: an idle HTTP/2 connection is
//! closed (hyper's own idle limit covers HTTP/1 request heads only), one peer cannot
//! take more than its share of connections while another peer is still served, and
//! the plain metrics listener has a connection cap and an idle deadline of its own.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{TestServer, client_config, example_app, logs, raw};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Version, body::Bytes};
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use volguard::server::limits::Limits;

async fn start(limits: Limits) -> TestServer {
    let mut app = example_app();
    app.limits = limits;
    TestServer::with_app(app).await
}

/// Waits for `done`, failing the test instead of hanging forever when it never ends.
async fn ends<T>(what: &str, done: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .unwrap_or_else(|_| panic!("{what}: still going after 30 s"))
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(&server.ca_pem, None))
        .https_only()
        .enable_http2()
        .build();
    let uri: hyper::Uri = format!("https://localhost:{}", server.addr.port())
        .parse()
        .unwrap();
    let stream = connector.oneshot(uri).await.expect("TLS connection");
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), stream)
            .await
            .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let req = Request::get("/healthz")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("answered");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    // Nothing more is asked: the server ends the connection.
    let _ = ends("the idle HTTP/2 connection", connection).await;
    assert!(send.is_closed());
}

/// A TLS connection from the loopback address `from`, handshake done: the server has
/// then taken (or refused) its connection slot.
async fn tls_from(from: &str, server: &TestServer) -> std::io::Result<raw::Tls> {
    let sock = raw::socket_from(from, server.addr).await?;
    let ca = server.ca_pem.clone();
    tokio::task::spawn_blocking(move || raw::connect_over(sock, &ca))
        .await
        .unwrap()
}

async fn healthz(mut conn: raw::Tls) -> u16 {
    tokio::task::spawn_blocking(move || raw::get(&mut conn, "/healthz").unwrap().0)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_peer_over_its_connection_cap_is_refused_while_another_is_served() {
    logs::capture();
    let server = start(Limits {
        max_connections_per_peer: 2,
        ..Limits::default()
    })
    .await;
    let first = tls_from("127.0.0.1", &server)
        .await
        .expect("first connection");
    let _second = tls_from("127.0.0.1", &server)
        .await
        .expect("second connection");
    assert!(
        tls_from("127.0.0.1", &server).await.is_err(),
        "a third connection from the same peer must be refused"
    );
    let other = tls_from("127.0.0.2", &server).await.expect("another peer");
    assert_eq!(healthz(other).await, 200);
    assert!(
        logs::contain(
            "connection from 127.0.0.1 refused: it has 2 connections open, the per-peer limit (--max-connections-per-peer)"
        ),
        "{}",
        logs::all()
    );
    // The closed connection's slot comes back.
    drop(first);
    for _ in 0..600 {
        if let Ok(conn) = tls_from("127.0.0.1", &server).await {
            assert_eq!(healthz(conn).await, 200);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the closed connection's slot never came back");
}

/// Reads a plain connection to its end; the bytes read.
fn read_to_end(mut conn: TcpStream) -> Vec<u8> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut all = Vec::new();
    match conn.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept the connection open: {e:?}"
        ),
    }
    all
}

#[tokio::test]
async fn the_metrics_listener_caps_connections_and_closes_idle_ones() {
    let server = start(Limits {
        metrics_max_connections: 2,
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let addr = server.metrics_addr;
    tokio::task::spawn_blocking(move || {
        // Two kept-alive connections, each answered once: both hold a slot.
        let held = [0, 1].map(|_| {
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(raw::read_response(&mut conn).unwrap().0, 200);
            conn
        });
        // Beyond the cap: closed without an answer.
        let mut third = TcpStream::connect(addr).unwrap();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(String::from_utf8_lossy(&read_to_end(third)), "");
        // Nothing more is asked on the two: the idle deadline closes them.
        for conn in held {
            assert_eq!(String::from_utf8_lossy(&read_to_end(conn)), "");
        }
    })
    .await
    .unwrap();
    let (status, _, _) = server.get_plain("/healthz").await;
    assert_eq!(status, 200);
}

/// One HTTP/2 frame: its type, flags, stream and payload.
fn read_frame(tls: &mut impl Read) -> (u8, u8, u32, Vec<u8>) {
    try_read_frame(tls).expect("an HTTP/2 frame")
}

/// The next HTTP/2 frame, or `None` when none comes before the socket's read timeout.
fn try_read_frame(tls: &mut impl Read) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0u8; 9];
    tls.read_exact(&mut header).ok()?;
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    tls.read_exact(&mut payload).ok()?;
    Some((header[3], header[4], stream, payload))
}

#[tokio::test]
async fn http2_settings_limit_streams_windows_and_request_heads() {
    let server = start(Limits {
        h2_max_streams: 7,
        ..Limits::default()
    })
    .await;
    let (addr, ca) = (server.addr, server.ca_pem.clone());
    let (settings, connection_window) = tokio::task::spawn_blocking(move || {
        let mut config = client_config(&ca, None);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let mut tls = raw::connect_with(addr, std::sync::Arc::new(config)).unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        // The client preface and an empty SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        tls.flush().unwrap();
        // The server's first frame is its SETTINGS (6-byte entries) ...
        let (kind, _, _, payload) = read_frame(&mut tls);
        assert_eq!(kind, 0x4, "a SETTINGS frame first");
        let settings = payload
            .chunks(6)
            .map(|e| {
                (
                    u16::from_be_bytes([e[0], e[1]]),
                    u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                )
            })
            .collect::<std::collections::BTreeMap<u16, u32>>();
        // ... then any WINDOW_UPDATE of the connection (stream 0) raising the
        // protocol's initial 65,535 bytes, sent with or soon after its acknowledgement
        // of ours (the reads give up half a second after the last frame).
        let mut connection_window = 65_535u32;
        tls.sock
            .set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
        while let Some(frame) = try_read_frame(&mut tls) {
            if let (0x8, _, 0, increment) = frame {
                connection_window += u32::from_be_bytes(increment[..4].try_into().unwrap());
            }
        }
        (settings, connection_window)
    })
    .await
    .unwrap();
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3), SETTINGS_INITIAL_WINDOW_SIZE (0x4) and
    // SETTINGS_MAX_HEADER_LIST_SIZE (0x6). The windows bound what a peer can send before
    // volguard reads (and charges) it: 64 KiB, not hyper's 1 MiB.
    assert_eq!(settings.get(&0x3), Some(&7), "{settings:?}");
    assert_eq!(settings.get(&0x4), Some(&(64 << 10)), "{settings:?}");
    assert_eq!(settings.get(&0x6), Some(&(64 << 10)), "{settings:?}");
    // (h2 grants the one byte between 65,535 and 64 KiB only once data flows.)
    assert!(
        connection_window <= 64 << 10,
        "the connection window is {connection_window} bytes"
    );
}
