//! `--client-ca`: with a client CA configured, the TLS listener requires a client
//! certificate signed by it. A client without one, with one from another CA, or with a
//! serving certificate from the right CA, is refused during the handshake; a client
//! with a good one is served.

mod common;

use std::sync::Arc;

use common::{TestServer, client_config, client_with, example_app, raw};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes};
use volguard::server::certs::{self, Ca, CertBundle, Leaf};

fn bundle(name: &str) -> CertBundle {
    certs::generate(&[name.to_owned(), "localhost".to_owned()], 1).unwrap()
}

/// A CA for clients (PEM) and a client certificate it issued to `name`.
fn client_ca(name: &str) -> (String, Leaf) {
    let (ca, ca_pem, _) = Ca::generate(1).unwrap();
    (ca_pem, ca.client(name, 1).unwrap())
}

/// The server, trusting clients of `client_ca_pem`.
async fn start(serving: &CertBundle, client_ca_pem: &str) -> TestServer {
    TestServer::launch(example_app(), serving, Some(client_ca_pem)).await
}

/// GET /healthz with `identity`; the status, or the error text when refused.
async fn healthz(server: &TestServer, identity: Option<&Leaf>) -> Result<StatusCode, String> {
    let client = client_with(
        &server.ca_pem,
        identity.map(|b| (b.cert_pem.as_str(), b.key_pem.as_str())),
    );
    let req = Request::get(format!("https://localhost:{}/healthz", server.addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(status)
}

/// What the server says to a TLS 1.3 client that completed its side of the handshake
/// and sent a request: the alert the server answered with, if any.
async fn alert_for(
    server: &TestServer,
    identity: Option<&Leaf>,
) -> Option<rustls::AlertDescription> {
    let config = Arc::new(client_config(
        &server.ca_pem,
        identity.map(|b| (b.cert_pem.as_str(), b.key_pem.as_str())),
    ));
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut tls = raw::connect_with(addr, config).expect("client side of the handshake");
        match raw::get(&mut tls, "/healthz") {
            Ok((status, answer)) => {
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                None
            }
            Err(e) => match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
                _ => panic!("refused without a TLS alert: {e:?}"),
            },
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (clients, _) = client_ca("kube-apiserver");
    let server = start(&bundle("volguard"), &clients).await;
    let refused = healthz(&server, None).await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    assert_eq!(
        alert_for(&server, None).await,
        Some(rustls::AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_client_ca_is_served() {
    let (clients, apiserver) = client_ca("kube-apiserver");
    let server = start(&bundle("volguard"), &clients).await;
    assert_eq!(healthz(&server, Some(&apiserver)).await, Ok(StatusCode::OK));
    assert_eq!(alert_for(&server, Some(&apiserver)).await, None);
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let (clients, _) = client_ca("kube-apiserver");
    let (_, stranger) = client_ca("kube-apiserver");
    let server = start(&bundle("volguard"), &clients).await;
    let refused = healthz(&server, Some(&stranger)).await;
    assert!(refused.is_err(), "served a stranger: {refused:?}");
    // Every generated CA is named "volguard CA": the stranger's issuer is found by name
    // and its signature does not verify (another install's CA), hence DecryptError.
    let alert = alert_for(&server, Some(&stranger)).await;
    assert!(
        matches!(
            alert,
            Some(rustls::AlertDescription::DecryptError | rustls::AlertDescription::UnknownCA)
        ),
        "{alert:?}"
    );
}

#[tokio::test]
async fn a_serving_certificate_is_not_a_client_certificate() {
    // The server trusts the CA that issued `other`'s serving certificate; presenting
    // that certificate as a client is still refused: it is for server authentication.
    let other = bundle("volguard");
    let server = start(&bundle("volguard"), &other.ca_pem).await;
    let serving = Leaf {
        cert_pem: other.cert_pem.clone(),
        key_pem: other.key_pem.clone(),
    };
    assert!(healthz(&server, Some(&serving)).await.is_err());
    assert_eq!(
        alert_for(&server, Some(&serving)).await,
        Some(rustls::AlertDescription::UnsupportedCertificate)
    );
}

#[tokio::test]
async fn without_a_client_ca_no_client_certificate_is_asked_for() {
    let server = TestServer::example().await;
    assert_eq!(healthz(&server, None).await, Ok(StatusCode::OK));
}
