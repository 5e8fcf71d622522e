//! Certificate hot reload against a directory laid out like a kubelet Secret volume
//! (`tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`), rotated the way the
//! kubelet does it: a new timestamped directory, then an atomic rename of a fresh
//! `..data` symlink over the old one. New connections must see the new certificate
//! (compared by DER as the TLS client receives it); a broken pair must be refused and
//! the old certificate kept.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{TestServer, client_config, example_app, openmetrics, raw};
use rustls_pki_types::CertificateDer;
use volguard::server::{
    certs::{self, Ca, CertBundle, Leaf},
    reload::{CertFiles, Check, ClientAuthFiles, Reloader},
    tls::{self, ClientAuth, ClientAuthScope},
};

/// A Secret volume directory with the kubelet's atomic-writer layout.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(cert: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = SecretVolume { dir, generation: 0 };
        let first = volume.write_generation(cert, key);
        std::os::unix::fs::symlink(&first, volume.path("..data")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(file), volume.path(file)).unwrap();
        }
        volume
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the files into a new timestamped directory; returns its name.
    fn write_generation(&mut self, cert: &str, key: &str) -> String {
        self.generation += 1;
        let name = format!(
            "..2026_11_21_12_{:02}_00.{:03}",
            self.generation,
            100 + self.generation
        );
        std::fs::create_dir(self.path(&name)).unwrap();
        std::fs::write(self.path(&name).join("tls.crt"), cert).unwrap();
        std::fs::write(self.path(&name).join("tls.key"), key).unwrap();
        name
    }

    /// The kubelet's update: new directory, `..data_tmp` symlink, rename over `..data`,
    /// remove the old directory.
    fn rotate(&mut self, cert: &str, key: &str) {
        let old = std::fs::read_link(self.path("..data")).unwrap();
        let new = self.write_generation(cert, key);
        std::os::unix::fs::symlink(&new, self.path("..data_tmp")).unwrap();
        std::fs::rename(self.path("..data_tmp"), self.path("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
    }

    fn files(&self) -> CertFiles {
        CertFiles {
            cert: self.path("tls.crt"),
            key: self.path("tls.key"),
            client_auth: None,
        }
    }
}

fn bundle(days: u32) -> CertBundle {
    certs::generate(&["localhost".to_owned()], days).unwrap()
}

fn der(bundle: &CertBundle) -> CertificateDer<'static> {
    tls::parse_certs(bundle.cert_pem.as_bytes(), "cert").unwrap()[0].clone()
}

/// The leaf certificate a brand-new TLS connection is served, trusting every CA in
/// `cas` (the bundles' CAs differ).
async fn served_on_new_connection(addr: SocketAddr, cas: &str) -> CertificateDer<'static> {
    let cas = cas.to_owned();
    tokio::task::spawn_blocking(move || {
        let tls = raw::connect(addr, &cas);
        tls.conn.peer_certificates().expect("a server certificate")[0].clone()
    })
    .await
    .unwrap()
}

async fn start(first: &CertBundle) -> TestServer {
    let server = TestServer::launch(example_app(), first, None).await;
    let not_after = tls::not_after(first.cert_pem.as_bytes(), "cert").unwrap();
    server.app.metrics.certificate_in_use(not_after);
    server
}

/// A reloader watching the volume's files, swapping into the server's TLS config.
fn reloader_for(volume: &SecretVolume, server: &TestServer) -> Reloader {
    let files = volume.files();
    let current = files.read().unwrap();
    Reloader::new(
        files,
        current,
        server.tls.clone(),
        server.app.metrics.clone(),
    )
}

async fn scrape(server: &TestServer) -> openmetrics::Exposition {
    let (_, _, body) = server.get_plain("/metrics").await;
    openmetrics::parse(&body).unwrap()
}

#[tokio::test]
async fn symlink_swap_reaches_new_connections_and_broken_pairs_are_refused() {
    let (a, b, c) = (bundle(1), bundle(60), bundle(90));
    let cas = format!("{}{}{}", a.ca_pem, b.ca_pem, c.ca_pem);
    let mut volume = SecretVolume::new(&a.cert_pem, &a.key_pem);
    let server = start(&a).await;
    let mut reloader = reloader_for(&volume, &server);
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&a));
    assert_eq!(reloader.check(), Check::Unchanged);

    volume.rotate(&b.cert_pem, &b.key_pem);
    assert_eq!(reloader.check(), Check::Reloaded);
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&b));
    let expiry = scrape(&server)
        .await
        .value("volguard_certificate_expiry_seconds", &[])
        .unwrap();
    assert!(
        expiry > 59.0 * 86_400.0,
        "the 60-day certificate is counted down: {expiry}"
    );

    // c's certificate with b's key: refused, b stays; looking again does not refuse twice.
    volume.rotate(&c.cert_pem, &b.key_pem);
    let Check::Refused(why) = reloader.check() else {
        panic!("a mismatched pair must be refused")
    };
    assert!(why.contains("do not fit together"), "{why}");
    assert!(why.contains("tls.crt"), "names the file: {why}");
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&b));
    assert_eq!(reloader.check(), Check::Unchanged);

    volume.rotate("not a certificate\n", &c.key_pem);
    assert!(matches!(reloader.check(), Check::Refused(_)));
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&b));

    volume.rotate(&c.cert_pem, &c.key_pem);
    assert_eq!(reloader.check(), Check::Reloaded);
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&c));

    let scraped = scrape(&server).await;
    assert_eq!(
        scraped.value("volguard_certificate_reloads_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        scraped.value("volguard_certificate_reload_failures_total", &[]),
        Some(2.0)
    );
    let expiry = scraped
        .value("volguard_certificate_expiry_seconds", &[])
        .unwrap();
    assert!(
        expiry > 89.0 * 86_400.0,
        "now the 90-day certificate: {expiry}"
    );
}

#[tokio::test]
async fn files_that_vanish_are_refused_and_picked_up_when_back() {
    let (a, b) = (bundle(1), bundle(2));
    let cas = format!("{}{}", a.ca_pem, b.ca_pem);
    let volume = SecretVolume::new(&a.cert_pem, &a.key_pem);
    let server = start(&a).await;
    let mut reloader = reloader_for(&volume, &server);
    let target = std::fs::read_link(volume.path("..data")).unwrap();
    let hidden = volume.path("..hidden");
    std::fs::rename(volume.dir.path().join(&target), &hidden).unwrap();
    let Check::Refused(why) = reloader.check() else {
        panic!("missing files must be refused")
    };
    assert!(why.contains("cannot read"), "{why}");
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&a));

    std::fs::write(hidden.join("tls.crt"), &b.cert_pem).unwrap();
    std::fs::write(hidden.join("tls.key"), &b.key_pem).unwrap();
    std::fs::rename(&hidden, volume.dir.path().join(&target)).unwrap();
    assert_eq!(reloader.check(), Check::Reloaded);
    assert_eq!(served_on_new_connection(server.addr, &cas).await, der(&b));
}

#[tokio::test]
async fn the_polling_loop_picks_up_a_rotation_on_its_own() {
    let (a, b) = (bundle(1), bundle(2));
    let cas = format!("{}{}", a.ca_pem, b.ca_pem);
    let mut volume = SecretVolume::new(&a.cert_pem, &a.key_pem);
    let server = start(&a).await;
    let reloader = reloader_for(&volume, &server);
    tokio::spawn(reloader.run(Duration::from_millis(20)));
    volume.rotate(&b.cert_pem, &b.key_pem);
    for _ in 0..500 {
        if served_on_new_connection(server.addr, &cas).await == der(&b) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the rotated certificate was never served");
}

/// Whether a new connection presenting `identity` gets `/healthz` answered.
async fn served_with(server: &TestServer, identity: &Leaf) -> bool {
    let config = std::sync::Arc::new(client_config(
        &server.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    ));
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        raw::connect_with(addr, config)
            .and_then(|mut tls| raw::get(&mut tls, "/healthz"))
            .is_ok_and(|(status, _)| status == 200)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rotated_client_ca_is_used_for_new_connections() {
    let serving = bundle(1);
    let (old_ca, old_pem, _) = Ca::generate(1).unwrap();
    let (new_ca, new_pem, _) = Ca::generate(1).unwrap();
    let (old_client, new_client) = (
        old_ca.client("volguard-scheduler", 1).unwrap(),
        new_ca.client("volguard-scheduler", 1).unwrap(),
    );
    let volume = SecretVolume::new(&serving.cert_pem, &serving.key_pem);
    let ca_file = volume.path("client-ca.crt");
    std::fs::write(&ca_file, &old_pem).unwrap();
    let auth = ClientAuth {
        ca_pem: old_pem.clone().into_bytes(),
        ca_name: ca_file.display().to_string(),
        allowed_names: Vec::new(),
        scope: ClientAuthScope::All,
    };
    let server = TestServer::launch(example_app(), &serving, Some(&auth)).await;
    let files = CertFiles {
        client_auth: Some(ClientAuthFiles {
            ca: ca_file.clone(),
            allowed_names: Vec::new(),
            scope: ClientAuthScope::All,
        }),
        ..volume.files()
    };
    let current = files.read().unwrap();
    let mut reloader = Reloader::new(
        files,
        current,
        server.tls.clone(),
        server.app.metrics.clone(),
    );
    assert!(served_with(&server, &old_client).await);
    assert!(!served_with(&server, &new_client).await);

    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let Check::Refused(why) = reloader.check() else {
        panic!("a broken client CA must be refused")
    };
    assert_eq!(
        why,
        format!("{}: no CERTIFICATE block found", ca_file.display())
    );
    assert!(served_with(&server, &old_client).await, "the old CA stays");

    std::fs::write(&ca_file, &new_pem).unwrap();
    assert_eq!(reloader.check(), Check::Reloaded);
    assert!(served_with(&server, &new_client).await);
    assert!(!served_with(&server, &old_client).await);
}
