//! `volguard serve`: load config and cluster state, build TLS, and run the TLS and
//! plain listeners until the process is told to stop.

use std::{
    process::ExitCode,
    sync::{Arc, RwLock},
};

use crate::{
    certs,
    cli::{Failure, ServeArgs},
    cluster::ClusterState,
    config::Config,
    drivers::Drivers,
    server::{self, App},
    snapshot, tls,
};

/// Runs the server; returns only on a startup failure or when both listeners end.
pub fn run(args: ServeArgs) -> Result<ExitCode, Failure> {
    let config = Arc::new(Config::load(args.config.as_deref()).map_err(Failure::usage)?);
    let drivers = Arc::new(Drivers::new(&config));
    let mut state = ClusterState::new(config.clone(), drivers);
    let (tls_config, generated_ca) = server_tls(&args)?;
    match &args.snapshot {
        Some(path) => {
            let (objects, skipped) =
                snapshot::load_into(path, &mut state).map_err(Failure::usage)?;
            if !skipped.is_empty() {
                tracing::info!(
                    count = skipped.len(),
                    "snapshot documents of kinds volguard does not read were skipped"
                );
            }
            tracing::info!(path = %path.display(), objects, "cluster state loaded from snapshot");
        }
        None => {
            return Err(Failure::usage(
                "no --snapshot given and live API watching is not available in this build: pass --snapshot PATH",
            ));
        }
    }
    if let Some(ca) = generated_ca {
        print!("{ca}");
        tracing::info!(
            "self-signed: the CA certificate is on stdout; with it saved as ca.pem: curl --cacert ca.pem https://localhost:{}/readyz",
            args.listen.port()
        );
    }
    let app = App {
        config,
        cluster: Arc::new(RwLock::new(state)),
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls_config));
        let router = server::router(app.clone());
        tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "serving");
        let listener = std::net::TcpListener::bind(args.listen)
            .map_err(|e| Failure::runtime(format!("{}: {e}", args.listen)))?;
        let https = server::serve_tls(listener, tls, router, axum_server::Handle::new());
        let plain = server::serve_plain(args.metrics_listen, app);
        tokio::select! {
            r = https => r.map_err(|e| Failure::runtime(format!("{}: {e}", args.listen))),
            r = plain => r.map_err(|e| Failure::runtime(format!("{}: {e}", args.metrics_listen))),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The TLS server config from files, or from a generated bundle (with its CA PEM).
fn server_tls(args: &ServeArgs) -> Result<(rustls::ServerConfig, Option<String>), Failure> {
    let client_ca = match &args.client_ca {
        Some(p) => Some(tls::read_pem(p).map_err(Failure::usage)?),
        None => None,
    };
    if args.self_signed {
        let bundle = certs::generate(&certs::service_names("volguard", "volguard-system"), 30)
            .map_err(|e| Failure::runtime(format!("cannot generate a certificate: {e}")))?;
        let config = tls::server_config(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            client_ca.as_deref(),
            ("generated certificate", "generated key"),
        )
        .map_err(Failure::usage)?;
        return Ok((config, Some(bundle.ca_pem)));
    }
    let cert = tls::read_pem(&args.tls_cert).map_err(Failure::usage)?;
    let key = tls::read_pem(&args.tls_key).map_err(Failure::usage)?;
    let cert_name = args.tls_cert.display().to_string();
    let key_name = args.tls_key.display().to_string();
    let config = tls::server_config(&cert, &key, client_ca.as_deref(), (&cert_name, &key_name))
        .map_err(Failure::usage)?;
    Ok((config, None))
}
