//! Graceful shutdown of the real binary: requests in flight when SIGTERM arrives are
//! all answered in full, /readyz turns 503 meanwhile, new connections stop being
//! accepted, and the process exits 0. A request that never completes does not hold the
//! process past the drain deadline. SIGTERM keeps serving for the shutdown delay first;
//! SIGINT does not.
//!
//! Requests are put in flight with `raw::start_request` (see there).

mod common;
mod fake_api;

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{
    create_review,
    raw::{self, Tls, finish_request, read_response, start_request},
    read_doc, repo, response_of,
};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";
const BIN: &str = env!("CARGO_BIN_EXE_volguard");
/// Bounded waits: attempts of `STEP`, about 30 s in all.
const STEP: Duration = Duration::from_millis(50);
const ATTEMPTS: usize = 600;

/// The binary serving the example cluster with certificates from `volguard certs`.
struct Daemon {
    child: Child,
    tls: SocketAddr,
    plain: SocketAddr,
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &[&str]) -> Self {
        let snapshot = repo("examples/cluster");
        Self::start_from(&["--snapshot", snapshot.to_str().unwrap()], extra)
    }

    /// The binary reading the cluster from `source` (`--snapshot DIR` or
    /// `--kubeconfig FILE`).
    fn start_from(source: &[&str], extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Command::new(BIN)
            .args([
                "certs",
                "--service",
                "volguard",
                "--namespace",
                "volguard-system",
            ])
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(certs.status.success(), "{certs:?}");
        let log = File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .args(source)
            .arg("--config")
            .arg(repo("examples/config.yaml"))
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        // The system picks both ports, so no other process can take them first; the
        // log line `serving` names them.
        let unbound: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut daemon = Daemon {
            child,
            tls: unbound,
            plain: unbound,
            ca_pem,
            dir,
        };
        daemon.wait_for("serving", |d| d.bound().is_some());
        (daemon.tls, daemon.plain) = daemon.bound().unwrap();
        daemon.wait_for("ready", |d| d.readyz().is_some_and(|(s, _)| s == 200));
        daemon
    }

    /// The TLS and plain addresses the `serving` log line names, once it is written.
    fn bound(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.log().lines().find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &entry["fields"];
            if fields["message"] != "serving" {
                return None;
            }
            let addr = |key: &str| fields[key].as_str()?.parse::<SocketAddr>().ok();
            Some((addr("listen")?, addr("metrics")?))
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Polls `done` within the bounded wait; panics with the server log otherwise.
    fn wait_for(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..ATTEMPTS {
            if done(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("volguard exited ({status}) before {what}:\n{}", self.log());
            }
            sleep(STEP);
        }
        panic!("never {what}:\n{}", self.log());
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    fn exit_status(&mut self) -> ExitStatus {
        for _ in 0..ATTEMPTS {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            sleep(STEP);
        }
        let _ = self.child.kill();
        panic!("volguard did not exit:\n{}", self.log());
    }

    /// GET /readyz on the plain listener: status and body, or None when not listening.
    fn readyz(&self) -> Option<(u16, String)> {
        let mut sock = TcpStream::connect(self.plain).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let (status, body) = raw::get(&mut sock, "/readyz").ok()?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A TLS connection with its handshake done.
    fn connect(&self) -> Tls {
        raw::connect(self.tls, &self.ca_pem)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn review_body() -> Vec<u8> {
    let pod = read_doc("examples/pods/seed-000-device.yaml");
    create_review(&pod, "default").to_string().into_bytes()
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits_0() {
    let mut daemon = Daemon::start(&["--shutdown-delay", "0s"]);
    let body = review_body();
    let mut in_flight: Vec<Tls> = (0..4).map(|_| daemon.connect()).collect();
    for conn in &mut in_flight {
        start_request(conn, "/mutate", &body);
    }

    daemon.signal("TERM");
    daemon.wait_for("reported shutting down on /readyz", |d| {
        d.readyz()
            .is_some_and(|(s, b)| s == 503 && b.contains("shutting down"))
    });
    let tls = daemon.tls;
    daemon.wait_for("stopped accepting TLS connections", |_| {
        TcpStream::connect(tls).is_err()
    });

    for (i, conn) in in_flight.iter_mut().enumerate() {
        finish_request(conn, &body);
        let (status, answer) = read_response(conn)
            .unwrap_or_else(|e| panic!("request {i} not answered: {e}\n{}", daemon.log()));
        assert_eq!(
            status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&answer)
        );
        let response = response_of(&answer, UID);
        assert_eq!(response["allowed"], true, "request {i}: {response}");
        assert!(
            response["patch"].is_string(),
            "request {i} got its patch: {response}"
        );
    }

    let status = daemon.exit_status();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn a_stalled_request_does_not_hold_sigint_past_the_drain_deadline() {
    let mut daemon = Daemon::start(&[
        "--shutdown-delay",
        "0s",
        "--shutdown-timeout",
        "1s",
        "--request-timeout",
        "10m",
    ]);
    let body = review_body();
    let mut stalled = daemon.connect();
    start_request(&mut stalled, "/mutate", &body);

    daemon.signal("INT");
    let status = daemon.exit_status();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(
        read_response(&mut stalled).is_err(),
        "the stalled request is cut, not answered"
    );
    let log = daemon.log();
    assert!(log.contains("SIGINT"), "{log}");
    assert!(log.contains("drain deadline reached"), "{log}");
}

#[test]
fn readiness_fails_during_the_shutdown_delay_while_requests_are_still_served() {
    let mut daemon = Daemon::start(&["--shutdown-delay", "10m"]);
    daemon.signal("TERM");
    daemon.wait_for("reported shutting down on /readyz", |d| {
        d.readyz().is_some_and(|(s, _)| s == 503)
    });
    // Still accepting and answering during the delay, over TLS too.
    let body = review_body();
    let mut conn = daemon.connect();
    start_request(&mut conn, "/mutate", &body);
    finish_request(&mut conn, &body);
    let (status, answer) = read_response(&mut conn).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let mut conn = daemon.connect();
    let (status, answer) = raw::get(&mut conn, "/readyz").unwrap();
    assert_eq!(
        status,
        503,
        "/readyz over TLS too: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn sigint_skips_the_shutdown_delay() {
    let mut daemon = Daemon::start(&["--shutdown-delay", "10m"]);
    daemon.signal("INT");
    let status = daemon.exit_status();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
}

/// A kubeconfig for the scripted API server at `addr`, written into `dir`.
fn kubeconfig(dir: &std::path::Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// Watching an API server rather than reading a snapshot, the watchers run on a runtime
/// of their own, which is shut down after the server's: SIGTERM still ends in exit 0,
/// and a startup failure still exits 1 with its message, not a panic.
#[test]
fn watching_an_api_server_sigterm_exits_0_and_a_taken_port_exits_1_naming_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(fake_api::FakeApi::start(fake_api::example_documents()));
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), api.addr);
    let config = config.to_str().unwrap();

    let mut daemon = Daemon::start_from(&["--kubeconfig", config], &["--shutdown-delay", "0s"]);
    daemon.signal("TERM");
    let status = daemon.exit_status();
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--kubeconfig", config, "--self-signed"])
        .arg("--config")
        .arg(repo("examples/config.yaml"))
        .args(["--listen", &addr, "--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{addr}: Address already in use")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
