//! TLS for the serving port: PEM files (or a generated bundle) into a rustls server
//! config on the ring provider, with optional client-certificate verification.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A certificate, key or CA that cannot be used, naming the file: one line for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct TlsError {
    /// The file (or "generated certificate").
    pub what: String,
    /// The problem.
    pub message: String,
}

fn err(what: impl Into<String>, message: impl ToString) -> TlsError {
    TlsError {
        what: what.into(),
        message: message.to_string(),
    }
}

/// Installs ring as the process-wide rustls provider; harmless when already done.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file, naming it in the error.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))
}

/// Parses every certificate in a PEM buffer; at least one is required.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(what, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err(what, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Builds the server config from a certificate chain and key (PEM), and a client CA
/// bundle (PEM) when client certificates are required.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
    names: (&str, &str),
) -> Result<ServerConfig, TlsError> {
    let (cert_name, key_name) = names;
    let certs = parse_certs(cert_pem, cert_name)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| err(key_name, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert_name, e))?;
    let builder = match client_ca_pem {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        err(
            cert_name,
            format!("certificate and key do not fit together: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn client_verifier(
    ca_pem: &[u8],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem, "client CA")? {
        roots.add(c).map_err(|e| err("client CA", e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| err("client CA", e))
}

/// The notAfter (Unix seconds) of the first certificate in a PEM chain: the serving
/// certificate, whose expiry operators alert on.
pub fn not_after(cert_pem: &[u8], what: &str) -> Result<i64, TlsError> {
    let certs = parse_certs(cert_pem, what)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|e| err(what, format!("not an X.509 certificate: {e}")))?;
    Ok(leaf.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_the_leaf_validity() {
        let bundle = crate::server::certs::generate(&["localhost".to_owned()], 3).unwrap();
        let got = not_after(bundle.cert_pem.as_bytes(), "tls.crt").unwrap();
        let want = (time::OffsetDateTime::now_utc() + time::Duration::days(3)).unix_timestamp();
        assert!((want - 3600..=want).contains(&got), "{got} vs {want}");
        let broken = not_after(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "tls.crt",
        )
        .unwrap_err();
        assert!(broken.to_string().starts_with("tls.crt: "), "{broken}");
    }
}
