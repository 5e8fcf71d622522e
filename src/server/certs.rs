//! Certificate generation for `volguard certs` and `serve --self-signed`: a private CA,
//! a serving certificate for the webhook Service's DNS names, and client certificates
//! for callers that must present one (`--client-ca`). Each certificate carries only the
//! usage it is for, so a leaked serving key cannot be used to log in as a client.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// How long a generated CA lives (unless the leaf asks for longer): long enough that
/// re-running `volguard certs` re-issues serving certificates under the same caBundle
/// for years, as cert-manager's CA in the overlay does.
pub const CA_DAYS: u32 = 3650;

/// A CA and a serving certificate signed by it, all PEM.
#[derive(Debug, Clone)]
pub struct CertBundle {
    /// The CA certificate: the webhook's caBundle and the scheduler's caFile.
    pub ca_pem: String,
    /// The CA's private key (PKCS#8): kept to re-issue certificates under the same CA.
    pub ca_key_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A CA that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's notAfter: nothing it issues outlives it.
    pub not_after: OffsetDateTime,
}

/// The names a serving certificate for Service `service` in `namespace` must carry.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

/// Generates a fresh CA (valid for [`CA_DAYS`], or `days` if longer) and a serving
/// certificate for `names` valid for `days` (at least one).
pub fn generate(names: &[String], days: u32) -> Result<CertBundle, rcgen::Error> {
    let (ca, ca_pem, ca_key_pem) = Ca::generate(days.max(CA_DAYS))?;
    let leaf = ca.serving(names, days)?;
    Ok(CertBundle {
        ca_pem,
        ca_key_pem,
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    })
}

impl Ca {
    /// A new self-signed CA valid for `days`; with its certificate and key PEM.
    pub fn generate(days: u32) -> Result<(Ca, String, String), rcgen::Error> {
        let (not_before, not_after) = validity(days);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name = name("volguard CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let ca = Ca {
            issuer: Issuer::new(params, key),
            not_after,
        };
        Ok((ca, cert_pem, key_pem))
    }

    /// An existing CA from its certificate and key (PEM). The error says what is wrong
    /// (not a certificate, not a CA, a key that does not belong to it), for a line that
    /// names the file.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("not a PEM private key: {e}"))?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !cert.is_ca() {
            return Err("not a CA certificate (no basicConstraints CA:TRUE)".into());
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err("the key does not belong to this certificate".into());
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("cannot issue certificates from it: {e}"))?;
        Ok(Ca { issuer, not_after })
    }

    /// A serving certificate (TLS server authentication only) for `names`, valid for
    /// `days` but never past the CA's own expiry.
    pub fn serving(&self, names: &[String], days: u32) -> Result<Leaf, rcgen::Error> {
        let cn = names.first().map(String::as_str).unwrap_or("volguard");
        self.issue(
            names.to_vec(),
            cn,
            ExtendedKeyUsagePurpose::ServerAuth,
            days,
        )
    }

    /// A client certificate (TLS client authentication only) with common name `cn`,
    /// for callers of a server started with `--client-ca`.
    pub fn client(&self, cn: &str, days: u32) -> Result<Leaf, rcgen::Error> {
        self.issue(Vec::new(), cn, ExtendedKeyUsagePurpose::ClientAuth, days)
    }

    fn issue(
        &self,
        names: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        days: u32,
    ) -> Result<Leaf, rcgen::Error> {
        let (not_before, not_after) = validity(days);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name(cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.not_before = not_before;
        params.not_after = not_after.min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// From an hour ago (clock skew between machines) to `days` (at least one) from now.
fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(1),
        now + Duration::days(i64::from(days.max(1))),
    )
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "volguard");
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usages(pem: &str) -> Vec<String> {
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        let mut out = Vec::new();
        if eku.server_auth {
            out.push("serverAuth".to_owned());
        }
        if eku.client_auth {
            out.push("clientAuth".to_owned());
        }
        out.extend(eku.other.iter().map(|o| o.to_id_string()));
        out
    }

    #[test]
    fn serving_and_client_certificates_have_their_own_usage() {
        let bundle = generate(&["localhost".to_owned()], 1).unwrap();
        assert_eq!(usages(&bundle.cert_pem), ["serverAuth"]);
        let ca = Ca::from_pem(&bundle.ca_pem, &bundle.ca_key_pem).unwrap();
        assert_eq!(
            usages(&ca.client("kube-apiserver", 1).unwrap().cert_pem),
            ["clientAuth"]
        );
    }

    #[test]
    fn a_ca_is_read_back_only_with_its_own_key() {
        let a = generate(&["localhost".to_owned()], 1).unwrap();
        let b = generate(&["localhost".to_owned()], 1).unwrap();
        assert!(Ca::from_pem(&a.ca_pem, &a.ca_key_pem).is_ok());
        assert_eq!(
            Ca::from_pem(&a.ca_pem, &b.ca_key_pem).err().as_deref(),
            Some("the key does not belong to this certificate")
        );
        assert_eq!(
            Ca::from_pem(&a.cert_pem, &a.key_pem).err().as_deref(),
            Some("not a CA certificate (no basicConstraints CA:TRUE)")
        );
    }

    #[test]
    fn nothing_issued_outlives_the_ca() {
        let (ca, _, _) = Ca::generate(2).unwrap();
        let leaf = ca.serving(&["localhost".to_owned()], 365).unwrap();
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert_eq!(
            cert.validity().not_after.timestamp(),
            ca.not_after.unix_timestamp()
        );
    }
}
