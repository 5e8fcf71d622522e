//! Certificate hot reload: the serving certificate and key files, and the client CA
//! bundle when there is one, are re-read on an interval and, when their contents
//! changed, a new TLS config is swapped in for new connections. Comparing contents
//! (not inotify on the files) also catches the kubelet's Secret update, which swaps the
//! directory's `..data` symlink and never writes the files themselves. Files that
//! cannot be used are refused with an error log and a metric, and the certificates in
//! use stay.

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;

use crate::server::{
    metrics::Metrics,
    tls::{self, ClientAuth, ClientAuthScope, TlsError},
};

/// Where the serving certificate comes from, and the client CA verified with it.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// Client-certificate verification, when clients present certificates.
    pub client_auth: Option<ClientAuthFiles>,
}

/// Client-certificate verification with its CA bundle in a file (re-read like the
/// serving pair: a CA rotated in its Secret reaches new connections without a restart).
#[derive(Debug, Clone)]
pub struct ClientAuthFiles {
    /// The client CA bundle (PEM).
    pub ca: PathBuf,
    /// Accepted client names; empty: any.
    pub allowed_names: Vec<String>,
    /// Who must present a certificate.
    pub scope: ClientAuthScope,
}

/// The files' contents, as read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A usable serving config and what the metrics need of it.
pub struct Loaded {
    /// The rustls config for new connections.
    pub config: ServerConfig,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

impl CertFiles {
    /// Reads the files.
    pub fn read(&self) -> Result<Pair, TlsError> {
        Ok(Pair {
            cert: tls::read_pem(&self.cert)?,
            key: tls::read_pem(&self.key)?,
            client_ca: match &self.client_auth {
                Some(auth) => Some(tls::read_pem(&auth.ca)?),
                None => None,
            },
        })
    }

    /// Builds the server config from a pair, naming the files in errors.
    pub fn build(&self, pair: &Pair) -> Result<Loaded, TlsError> {
        let cert_name = self.cert.display().to_string();
        let key_name = self.key.display().to_string();
        let client_auth = match (&self.client_auth, &pair.client_ca) {
            (Some(files), Some(ca_pem)) => Some(ClientAuth {
                ca_pem: ca_pem.clone(),
                ca_name: files.ca.display().to_string(),
                allowed_names: files.allowed_names.clone(),
                scope: files.scope,
            }),
            _ => None,
        };
        let config = tls::server_config(
            &pair.cert,
            &pair.key,
            client_auth.as_ref(),
            (&cert_name, &key_name),
        )?;
        let not_after = tls::not_after(&pair.cert, &cert_name)?;
        Ok(Loaded { config, not_after })
    }
}

/// What one look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Same contents as last time.
    Unchanged,
    /// New contents, now served to new connections.
    Reloaded,
    /// New contents that cannot be used; the previous certificate stays.
    Refused(String),
}

/// Watches the files of the certificate in use and swaps in changed ones.
pub struct Reloader {
    files: CertFiles,
    tls: RustlsConfig,
    metrics: Arc<Metrics>,
    /// The contents last looked at (served or refused), or the last read error.
    last: Result<Pair, String>,
}

impl Reloader {
    /// Starts from the pair `tls` currently serves.
    pub fn new(files: CertFiles, serving: Pair, tls: RustlsConfig, metrics: Arc<Metrics>) -> Self {
        Reloader {
            files,
            tls,
            metrics,
            last: Ok(serving),
        }
    }

    /// Reads the files once and reloads when their contents changed; a refusal is
    /// logged and counted once per distinct change, not on every look. A read that
    /// straddles a symlink swap (old certificate, new key) is refused once and healed by
    /// the next look, which reads the consistent new pair.
    pub fn check(&mut self) -> Check {
        let now = self.files.read().map_err(|e| e.to_string());
        if now == self.last {
            return Check::Unchanged;
        }
        self.last = now.clone();
        let loaded = now.and_then(|pair| self.files.build(&pair).map_err(|e| e.to_string()));
        match loaded {
            Ok(loaded) => {
                self.tls.reload_from_config(Arc::new(loaded.config));
                self.metrics.certificate_reloaded(loaded.not_after);
                tracing::info!(cert = %self.files.cert.display(), not_after = loaded.not_after, "certificate files reloaded (serving pair, and client CA when set)");
                Check::Reloaded
            }
            Err(why) => {
                self.metrics.certificate_reload_failed();
                tracing::error!(
                    "certificate files changed but cannot be used, keeping the ones in use: {why}"
                );
                Check::Refused(why)
            }
        }
    }

    /// Checks every `interval`, forever.
    pub async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.check();
        }
    }
}
