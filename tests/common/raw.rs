//! Raw HTTP/1.1 over TLS for tests that need control over when bytes are sent: a
//! request put in flight and held there, a response read byte by byte.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

/// A client TLS stream over a blocking socket.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` trusting `ca_pem`, handshake done (so the server's
/// connection task runs); reads give up after 30 s.
pub fn connect(addr: SocketAddr, ca_pem: &str) -> Tls {
    try_connect(addr, ca_pem).expect("TLS connection")
}

/// Like `connect`, but a refused connection or handshake is an error.
pub fn try_connect(addr: SocketAddr, ca_pem: &str) -> std::io::Result<Tls> {
    connect_with(addr, Arc::new(super::client_config(ca_pem, None)))
}

/// A TLS connection to `addr` with a given client config, handshake done (from the
/// client's side: in TLS 1.3 the server may still refuse the client's certificate).
pub fn connect_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    handshake(TcpStream::connect(addr)?, config)
}

/// A TLS connection over an open socket, trusting `ca_pem`, handshake done.
pub fn connect_over(sock: TcpStream, ca_pem: &str) -> std::io::Result<Tls> {
    handshake(sock, Arc::new(super::client_config(ca_pem, None)))
}

/// A blocking socket connected to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8), so that one test can be several peers.
pub async fn socket_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    let stream = socket.connect(addr).await?.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn handshake(mut sock: TcpStream, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let mut conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Sends the second half of a body begun with `start_request`.
pub fn finish_request(conn: &mut Tls, body: &[u8]) {
    conn.write_all(&body[body.len() / 2..]).unwrap();
    conn.flush().unwrap();
}

/// GET `path` with `Connection: close`; the response.
pub fn get(conn: &mut (impl Read + Write), path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes())?;
    conn.flush()?;
    read_response(conn)
}

/// Reads one HTTP/1.1 response (after any 1xx) with a Content-Length body.
pub fn read_response(stream: &mut impl Read) -> std::io::Result<(u16, Vec<u8>)> {
    loop {
        let head = read_head(stream)?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
        if (100..200).contains(&status) {
            continue;
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| std::io::Error::other(format!("no content-length: {head:?}")))?;
        let mut body = vec![0; length];
        stream.read_exact(&mut body)?;
        return Ok((status, body));
    }
}

/// Reads up to and including the blank line that ends a response head.
pub fn read_head(stream: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Sends a POST head with `Expect: 100-continue` and half of `body`, and returns once
/// the server said `100 Continue`. hyper sends that only when the handler starts reading
/// the body, so the request is then known to be in flight; the caller sends the rest
/// (`finish_request`) or not.
pub fn start_request(conn: &mut Tls, path: &str, body: &[u8]) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.flush().unwrap();
    let interim = read_head(conn).expect("an interim answer");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    conn.write_all(&body[..body.len() / 2]).unwrap();
    conn.flush().unwrap();
}
