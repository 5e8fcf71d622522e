//! The starvation load test: while anonymous clients trickle chunked `/mutate` bodies
//! (one byte a second, from 8 loopback addresses, each reconnecting when its request is
//! cut off), kube-scheduler's `/filter` calls, with its client certificate, are timed.
//! Prints one Markdown row per number of slow clients: /filter p50, p99 and the share
//! answered 200, first with none (idle).
//!
//! `cargo run --release --example slow_clients -- ADDR CERTS_DIR FILTER_BODY [SECONDS] [COUNTS]`
//!
//! ADDR is volguard's TLS address (127.0.0.1:PORT), CERTS_DIR what `volguard certs`
//! wrote (ca.crt, client.crt, client.key), FILTER_BODY an ExtenderArgs file; each phase
//! runs SECONDS (default 5) at 100 /filter calls a second; COUNTS defaults to `8,256`.
//! `scripts/starvation.sh` runs it against a server it starts.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// /filter calls a second while measuring.
const RATE: u32 = 100;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, dir, filter) = match args.as_slice() {
        [addr, dir, filter, ..] => (addr, dir, filter),
        _ => {
            eprintln!("usage: slow_clients ADDR CERTS_DIR FILTER_BODY [SECONDS] [COUNTS]");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is 127.0.0.1:PORT");
    let seconds: u64 = args.get(3).map_or(5, |s| s.parse().expect("SECONDS"));
    let counts: Vec<usize> = args
        .get(4)
        .map_or("8,256", String::as_str)
        .split(',')
        .map(|c| c.parse().expect("COUNTS: numbers, comma-separated"))
        .collect();
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let filter = Arc::new(std::fs::read(filter).expect("FILTER_BODY"));
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read("ca.crt")) {
            roots.add(cert.expect("ca.crt")).expect("ca.crt");
        }
        Arc::new(roots)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots.clone())
    };
    let chain = CertificateDer::pem_slice_iter(&read("client.crt"))
        .collect::<Result<Vec<_>, _>>()
        .expect("client.crt");
    let key = PrivateKeyDer::from_pem_slice(&read("client.key")).expect("client.key");
    let scheduler = TlsConnector::from(Arc::new(
        builder()
            .with_client_auth_cert(chain, key)
            .expect("client pair"),
    ));
    let anonymous = TlsConnector::from(Arc::new(builder().with_no_client_auth()));

    println!(
        "| slow anonymous /mutate clients | /filter p50 | /filter p99 | /filter answered 200 |"
    );
    println!("|---|---|---|---|");
    let idle = measure(&scheduler, addr, &filter, seconds).await;
    println!("| 0 (idle) | {idle} |");
    for count in counts {
        let flood: Vec<_> = (0..count)
            .map(|i| {
                let from: IpAddr = format!("127.0.0.{}", 2 + i % 8).parse().unwrap();
                tokio::spawn(trickle(anonymous.clone(), from, addr))
            })
            .collect();
        // Give every slow client time to connect and start its body.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let row = measure(&scheduler, addr, &filter, seconds).await;
        println!("| {count} | {row} |");
        for client in flood {
            client.abort();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One slow client: a chunked POST to /mutate that sends a byte a second until the
/// server cuts it off, then again, until aborted.
async fn trickle(tls: TlsConnector, from: IpAddr, addr: SocketAddr) {
    loop {
        if let Ok(mut conn) = connect(&tls, from, addr).await {
            let head = "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let mut sent = conn.write_all(head.as_bytes()).await;
            while sent.is_ok() {
                sent = conn.write_all(b"1\r\n \r\n").await;
                if sent.is_ok() {
                    sent = conn.flush().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(
    tls: &TlsConnector,
    from: IpAddr,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    tls.connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
}

/// /filter at `RATE` a second for `seconds` on one keep-alive connection (reconnecting
/// after a failure): "p50 | p99 | share of 200s", each call timed until its answer or
/// the scheduler's 5 s timeout.
async fn measure(tls: &TlsConnector, addr: SocketAddr, body: &[u8], seconds: u64) -> String {
    let calls = RATE as u64 * seconds;
    let mut times = Vec::with_capacity(calls as usize);
    let mut ok = 0;
    let mut conn = None;
    let start = Instant::now();
    for i in 0..calls {
        let due = start + Duration::from_secs(1) * i as u32 / RATE;
        tokio::time::sleep_until(due.into()).await;
        let began = Instant::now();
        if conn.is_none() {
            conn = connect(tls, "127.0.0.1".parse().unwrap(), addr).await.ok();
        }
        let status = match conn.as_mut() {
            Some(c) => tokio::time::timeout(Duration::from_secs(5), filter(c, body))
                .await
                .unwrap_or(Ok(0))
                .unwrap_or(0),
            None => 0,
        };
        times.push(began.elapsed());
        if status == 200 {
            ok += 1;
        } else {
            conn = None;
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    format!(
        "{:.2} ms | {:.2} ms | {:.0} %",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        ok as f64 * 100.0 / calls as f64
    )
}

/// One POST /filter; the status, the answer read whole.
async fn filter(conn: &mut TlsStream<tokio::net::TcpStream>, body: &[u8]) -> std::io::Result<u16> {
    let head = format!(
        "POST /filter HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}
