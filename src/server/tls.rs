//! TLS for the serving port: PEM files (or a generated bundle) into a rustls server
//! config on the ring provider, with optional client-certificate verification: for
//! every client, or only for the extender's callers, and only for the identities the
//! operator allows.

use std::{path::Path, str::FromStr, sync::Arc};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};

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

/// Which clients must present a certificate signed by the client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthScope {
    /// Every TLS client, refused in the handshake without one (kube-apiserver then needs
    /// an AdmissionConfiguration kubeconfig with a client certificate).
    All,
    /// The handshake asks for a certificate and accepts none; `/filter` and
    /// `/prioritize` answer 403 without one. kube-apiserver calls the webhook with no
    /// client certificate unless configured to, kube-scheduler's extender can present one.
    Extender,
}

impl FromStr for ClientAuthScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(ClientAuthScope::All),
            "extender" => Ok(ClientAuthScope::Extender),
            _ => Err(format!(
                "{text:?}: expected all (every client) or extender (/filter and /prioritize)"
            )),
        }
    }
}

/// Client-certificate verification: the CA bundle, the identities accepted, and who
/// must present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA bundle (PEM) client certificates must chain to.
    pub ca_pem: Vec<u8>,
    /// Where it came from (a file name), for errors.
    pub ca_name: String,
    /// Accepted names (a certificate's CN or one of its DNS SANs); empty: any name the
    /// CA signed.
    pub allowed_names: Vec<String>,
    /// Who must present one.
    pub scope: ClientAuthScope,
}

/// Builds the server config from a certificate chain and key (PEM), and the client
/// certificate verification when there is one.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_auth: Option<&ClientAuth>,
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
    let builder = match client_auth {
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
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
    auth: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let what = auth.ca_name.as_str();
    for c in parse_certs(&auth.ca_pem, what)? {
        roots.add(c).map_err(|e| err(what, e))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.scope {
        ClientAuthScope::All => builder,
        ClientAuthScope::Extender => builder.allow_unauthenticated(),
    };
    let chain = builder.build().map_err(|e| err(what, e))?;
    Ok(Arc::new(AllowedNames {
        chain,
        names: auth.allowed_names.clone(),
    }))
}

/// The names a certificate is known by: its common names, then its DNS SANs.
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// A chain verifier that also refuses certificates whose names are not allowed: the CA
/// may sign for more callers (or serving certificates of other components) than the
/// ones meant to call volguard.
#[derive(Debug)]
struct AllowedNames {
    chain: Arc<dyn ClientCertVerifier>,
    /// Empty: every name.
    names: Vec<String>,
}

impl ClientCertVerifier for AllowedNames {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        let names = certificate_names(end_entity);
        if names.iter().any(|n| self.names.contains(n)) {
            return Ok(verified);
        }
        tracing::warn!(
            "client certificate refused: its names ({}) are not in --client-allowed-names ({})",
            quoted(&names),
            self.names.join(", ")
        );
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    fn a_certificate_is_known_by_its_common_name_then_its_dns_names() {
        let bundle = crate::server::certs::generate(
            &[
                "volguard.volguard-system.svc".to_owned(),
                "localhost".to_owned(),
            ],
            1,
        )
        .unwrap();
        let leaf = &parse_certs(bundle.cert_pem.as_bytes(), "tls.crt").unwrap()[0];
        assert_eq!(
            certificate_names(leaf),
            [
                "volguard.volguard-system.svc",
                "volguard.volguard-system.svc",
                "localhost"
            ]
        );
    }

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
