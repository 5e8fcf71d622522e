//! `volguard serve`: load config and cluster state (a snapshot, or watchers on the
//! Kubernetes API), build TLS (hot-reloaded from files), and run the TLS and plain
//! listeners until a stop signal drains them.

use std::{
    process::ExitCode,
    sync::{Arc, RwLock},
};

use axum_server::tls_rustls::RustlsConfig;

use crate::{
    certs,
    cli::{Failure, ServeArgs},
    cluster::ClusterState,
    config::Config,
    drivers::Drivers,
    limits::Limits,
    reload::{CertFiles, Loaded, Pair, Reloader},
    server::App,
    shutdown::{self, Drain, StopSignals},
    snapshot, tls, watch,
};

/// Where the serving certificate came from.
enum Source {
    /// Files, watched for changes; with the pair now served.
    Files(CertFiles, Pair),
    /// `--self-signed`: generated in memory; with its CA (PEM) for the operator.
    Generated(String),
}

/// Runs the server; returns on a startup or listener failure, or after a stop signal
/// drained it.
pub fn run(args: ServeArgs) -> Result<ExitCode, Failure> {
    let config = Arc::new(Config::load(args.config.as_deref()).map_err(Failure::usage)?);
    let drivers = Arc::new(Drivers::new(&config));
    let mut state = ClusterState::new(config.clone(), drivers);
    let (serving, source) = serving_tls(&args)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    let live = match &args.snapshot {
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
            None
        }
        None => Some(
            runtime
                .block_on(watch::kube_config(args.kubeconfig.as_deref()))
                .map_err(Failure::usage)?,
        ),
    };
    if let Source::Generated(ca) = &source {
        print!("{ca}");
        tracing::info!(
            "self-signed: the CA certificate is on stdout; with it saved as ca.pem: curl --cacert ca.pem https://localhost:{}/readyz",
            args.listen.port()
        );
    }
    let mut app = App::new(config, Arc::new(RwLock::new(state)));
    app.limits = Limits {
        request_timeout: args.request_timeout,
        max_requests: args.max_requests as usize,
        max_connections: args.max_connections as usize,
        ..Limits::default()
    };
    app.metrics.certificate_in_use(serving.not_after);
    let drain = Drain {
        delay: args.shutdown_delay,
        timeout: args.shutdown_timeout,
    };
    runtime.block_on(async move {
        let signals = StopSignals::install()
            .map_err(|e| Failure::runtime(format!("cannot catch stop signals: {e}")))?;
        // Dropped when serving ends, which stops the watchers.
        let _watchers = match live {
            None => None,
            Some((kube_config, origin)) => {
                tracing::info!(api = %kube_config.cluster_url, config = %origin, "watching the Kubernetes API; /readyz is 503 until every kind is listed");
                let client = watch::client(kube_config, &app.cluster)
                    .map_err(|e| Failure::usage(format!("{origin}: {e}")))?;
                app.api = Some(client.clone());
                Some(watch::spawn(client, app.cluster.clone()))
            }
        };
        let tls = RustlsConfig::from_config(Arc::new(serving.config));
        if let Source::Files(files, pair) = source
            && !args.tls_reload_interval.is_zero()
        {
            let reloader = Reloader::new(files, pair, tls.clone(), app.metrics.clone());
            tokio::spawn(reloader.run(args.tls_reload_interval));
        }
        let bind = |addr| {
            std::net::TcpListener::bind(addr).map_err(|e| Failure::runtime(format!("{addr}: {e}")))
        };
        let listener = bind(args.listen)?;
        let plain = bind(args.metrics_listen)?;
        tracing::info!(listen = %args.listen, metrics = %args.metrics_listen, "serving");
        shutdown::serve_until_stopped(app, listener, plain, tls, drain, signals)
            .await
            .map_err(Failure::runtime)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The serving certificate from files (which the reloader then watches), or from a
/// generated bundle.
fn serving_tls(args: &ServeArgs) -> Result<(Loaded, Source), Failure> {
    let client_ca = match &args.client_ca {
        Some(p) => Some(tls::read_pem(p).map_err(Failure::usage)?),
        None => None,
    };
    if args.self_signed {
        let bundle = certs::generate(&certs::service_names("volguard", "volguard-system"), 30)
            .map_err(|e| Failure::runtime(format!("cannot generate a certificate: {e}")))?;
        let names = ("generated certificate", "generated key");
        let config = tls::server_config(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            client_ca.as_deref(),
            names,
        )
        .map_err(Failure::usage)?;
        let not_after =
            tls::not_after(bundle.cert_pem.as_bytes(), names.0).map_err(Failure::usage)?;
        return Ok((
            Loaded { config, not_after },
            Source::Generated(bundle.ca_pem),
        ));
    }
    let files = CertFiles {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca,
    };
    let pair = files.read().map_err(Failure::usage)?;
    let loaded = files.build(&pair).map_err(Failure::usage)?;
    Ok((loaded, Source::Files(files, pair)))
}
