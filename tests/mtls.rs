//! `--client-ca`: with a client CA configured, the TLS listener requires a client
//! certificate signed by it. A client without one, with one from another CA, or with a
//! serving certificate from the right CA, is refused during the handshake; a client
//! with a good one is served. `--client-allowed-names` narrows the accepted names;
//! `--client-auth extender` asks only the extender's callers for a certificate.

mod common;

use std::sync::Arc;

use common::{TestServer, client_config, client_with, example_app, logs, raw, read_doc};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Bytes};
use volguard::server::{
    certs::{self, Ca, CertBundle, Leaf},
    tls::{ClientAuth, ClientAuthScope},
};

fn bundle(name: &str) -> CertBundle {
    certs::generate(&[name.to_owned(), "localhost".to_owned()], 1).unwrap()
}

/// A CA for clients (PEM) and a client certificate it issued to `name`.
fn client_ca(name: &str) -> (String, Leaf) {
    let (ca, ca_pem, _) = Ca::generate(1).unwrap();
    (ca_pem, ca.client(name, 1).unwrap())
}

/// Verification of clients of `client_ca_pem`, for `scope`, accepting `names`.
fn auth(client_ca_pem: &str, names: &[&str], scope: ClientAuthScope) -> ClientAuth {
    ClientAuth {
        ca_pem: client_ca_pem.as_bytes().to_vec(),
        ca_name: "clients.crt".to_owned(),
        allowed_names: names.iter().map(|n| (*n).to_owned()).collect(),
        scope,
    }
}

/// The server, requiring certificates of `client_ca_pem` from every client.
async fn start(serving: &CertBundle, client_ca_pem: &str) -> TestServer {
    let auth = auth(client_ca_pem, &[], ClientAuthScope::All);
    TestServer::launch(example_app(), serving, Some(&auth)).await
}

/// GET /healthz with `identity`; the status, or the error text when refused.
async fn healthz(server: &TestServer, identity: Option<&Leaf>) -> Result<StatusCode, String> {
    request(server, identity, Request::get("/healthz"), Bytes::new())
        .await
        .map(|(status, _)| status)
}

/// Sends a request to `path` (made by `req`) with `identity`; the status and body, or
/// the error text when refused.
async fn request(
    server: &TestServer,
    identity: Option<&Leaf>,
    req: hyper::http::request::Builder,
    body: Bytes,
) -> Result<(StatusCode, String), String> {
    let client = client_with(
        &server.ca_pem,
        identity.map(|b| (b.cert_pem.as_str(), b.key_pem.as_str())),
    );
    let path = req.uri_ref().map(|u| u.to_string()).unwrap_or_default();
    let req = req
        .uri(format!("https://localhost:{}{path}", server.addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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

#[tokio::test]
async fn a_client_whose_name_is_not_allowed_is_refused_in_the_handshake() {
    logs::capture();
    let (ca, ca_pem, _) = Ca::generate(1).unwrap();
    let scheduler = ca.client("volguard-scheduler", 1).unwrap();
    let apiserver = ca.client("kube-apiserver", 1).unwrap();
    let auth = auth(&ca_pem, &["volguard-scheduler"], ClientAuthScope::All);
    let server = TestServer::launch(example_app(), &bundle("volguard"), Some(&auth)).await;

    assert_eq!(healthz(&server, Some(&scheduler)).await, Ok(StatusCode::OK));
    assert!(healthz(&server, Some(&apiserver)).await.is_err());
    assert_eq!(
        alert_for(&server, Some(&apiserver)).await,
        Some(rustls::AlertDescription::AccessDenied)
    );
    assert!(
        logs::contain(
            "client certificate refused: its names (\"kube-apiserver\") are not in --client-allowed-names (volguard-scheduler)"
        ),
        "{}",
        logs::all()
    );
}

#[tokio::test]
async fn with_extender_scope_only_the_extender_needs_a_client_certificate() {
    let (ca, ca_pem, _) = Ca::generate(1).unwrap();
    let scheduler = ca.client("volguard-scheduler", 1).unwrap();
    let auth = auth(&ca_pem, &["volguard-scheduler"], ClientAuthScope::Extender);
    let server = TestServer::launch(example_app(), &bundle("volguard"), Some(&auth)).await;
    let review = common::create_review(&read_doc("examples/pods/seed-000-device.yaml"), "default");
    let filter = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();

    // kube-apiserver's webhook call carries no certificate: served.
    let (status, _) = request(
        &server,
        None,
        Request::post("/mutate"),
        review.to_string().into(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(healthz(&server, None).await, Ok(StatusCode::OK));
    for path in ["/filter", "/prioritize"] {
        assert_eq!(
            request(&server, None, Request::post(path), filter.clone().into()).await,
            Ok((
                StatusCode::FORBIDDEN,
                format!(
                    "{path} needs a client certificate signed by volguard's client CA (--client-ca): \
                     kube-scheduler presents one with its extender tlsConfig certFile/keyFile or certData/keyData\n"
                )
            ))
        );
        let (status, body) = request(
            &server,
            Some(&scheduler),
            Request::post(path),
            filter.clone().into(),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A certificate that is presented is still checked, on every path.
    let stranger = ca.client("someone-else", 1).unwrap();
    assert!(healthz(&server, Some(&stranger)).await.is_err());
}

#[tokio::test]
async fn the_per_peer_request_limit_counts_only_callers_without_a_certificate() {
    let (ca, ca_pem, _) = Ca::generate(1).unwrap();
    let scheduler = ca.client("volguard-scheduler", 1).unwrap();
    let auth = auth(&ca_pem, &["volguard-scheduler"], ClientAuthScope::Extender);
    let mut app = example_app();
    app.limits.max_requests_per_peer = 1;
    let server = TestServer::launch(app, &bundle("volguard"), Some(&auth)).await;
    let filter = std::fs::read(common::repo("tests/fixtures/extenderargs-nodenames.json")).unwrap();
    let review = common::create_review(&read_doc("examples/pods/seed-000-device.yaml"), "default")
        .to_string()
        .into_bytes();

    // An anonymous review from this address is held in flight: its one slot is taken.
    let (addr, server_ca) = (server.addr, server.ca_pem.clone());
    let (mut held, review) = tokio::task::spawn_blocking(move || {
        let mut conn = raw::connect(addr, &server_ca);
        raw::start_request(&mut conn, "/mutate", &review);
        (conn, review)
    })
    .await
    .unwrap();
    assert_eq!(
        healthz(&server, None).await,
        Ok(StatusCode::TOO_MANY_REQUESTS)
    );
    // The scheduler, from the same address, is not counted.
    let (status, body) = request(
        &server,
        Some(&scheduler),
        Request::post("/filter"),
        filter.into(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = tokio::task::spawn_blocking(move || {
        raw::finish_request(&mut held, &review);
        raw::read_response(&mut held).unwrap().0
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
}
