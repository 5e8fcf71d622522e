//! `volguard serve`: load config and cluster state (a snapshot, or watchers on the
//! Kubernetes API), build TLS (hot-reloaded from files), and run the TLS and plain
//! listeners until a stop signal drains them.

use std::{
    net::SocketAddr, path::PathBuf, process::ExitCode, str::FromStr, sync::Arc, time::Duration,
};

use axum_server::tls_rustls::RustlsConfig;
use clap::Args;

use crate::{
    cluster::{ClusterState, SharedState},
    cmd::failure::Failure,
    model::{config::Config, drivers::Drivers},
    server::{
        admission::endpoint::MUTATE_BODY_LIMIT,
        app::App,
        certs,
        limits::Limits,
        reload::{CertFiles, ClientAuthFiles, Loaded, Pair, Reloader},
        remediation::{self, Remediator},
        shutdown::{self, Drain, StopSignals},
        tls::{self, ClientAuth, ClientAuthScope},
    },
    sources::{snapshot, watch},
};

/// Flags of `volguard serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (YAML); built-in defaults when absent.
    #[arg(long, env = "VOLGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// TLS listen address for the webhook and extender.
    #[arg(long, env = "VOLGUARD_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM).
    #[arg(long, env = "VOLGUARD_TLS_CERT", default_value = "certs/tls.crt")]
    pub tls_cert: PathBuf,
    /// Serving private key (PEM).
    #[arg(long, env = "VOLGUARD_TLS_KEY", default_value = "certs/tls.key")]
    pub tls_key: PathBuf,
    /// CA bundle (PEM) for client certificates; when set, clients must present one
    /// (see --client-auth). Re-read with the serving certificate.
    #[arg(long, env = "VOLGUARD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Who must present a client certificate: `all` (refused in the handshake without
    /// one) or `extender` (/filter and /prioritize answer 403 without one; the webhook
    /// takes kube-apiserver's calls, which carry none by default). Default: all.
    #[arg(long, env = "VOLGUARD_CLIENT_AUTH", requires = "client_ca", value_parser = ClientAuthScope::from_str)]
    pub client_auth: Option<ClientAuthScope>,
    /// Client certificate names accepted (CN or a DNS SAN), comma-separated; others are
    /// refused in the handshake. Default: any certificate the client CA signed.
    #[arg(
        long,
        env = "VOLGUARD_CLIENT_ALLOWED_NAMES",
        requires = "client_ca",
        value_delimiter = ','
    )]
    pub client_allowed_names: Vec<String>,
    /// Plain-HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "VOLGUARD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Cluster state from these files instead of the API server.
    #[arg(long, env = "VOLGUARD_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,
    /// Kubeconfig of the API server to watch; default: in-cluster, else
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "VOLGUARD_KUBECONFIG", conflicts_with = "snapshot")]
    pub kubeconfig: Option<PathBuf>,
    /// Generate an in-memory certificate and print its CA on stdout, instead of reading files.
    #[arg(long, env = "VOLGUARD_SELF_SIGNED")]
    pub self_signed: bool,
    /// How often the certificate and key files are checked for changes (0s: never).
    #[arg(long, env = "VOLGUARD_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// After SIGTERM, keep accepting connections this long with /readyz failing
    /// (SIGINT skips it).
    #[arg(long, env = "VOLGUARD_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Then give in-flight requests this long to finish (keep delay + timeout under the
    /// pod's terminationGracePeriodSeconds).
    #[arg(long, env = "VOLGUARD_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Longest time for one HTTPS request, upload included; later: 503.
    #[arg(long, env = "VOLGUARD_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long a watch of the API may keep failing before the cluster state counts as
    /// stale: /readyz turns 503, /filter answers Error, the webhook warns.
    #[arg(long, env = "VOLGUARD_STALE_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// HTTPS requests handled at the same time by the webhook, and as many again by the
    /// extender; more wait within their timeout.
    #[arg(long, env = "VOLGUARD_MAX_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests: u32,
    /// Requests in flight at once from one IP address without a client certificate;
    /// more get a 429, which kube-apiserver takes as the webhook's failure. Below
    /// --max-requests; default: half of it.
    #[arg(long, env = "VOLGUARD_MAX_REQUESTS_PER_PEER", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_per_peer: Option<u32>,
    /// Open HTTPS connections; more are closed at once.
    #[arg(long, env = "VOLGUARD_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections from one IP address (on each listener); more are closed at once.
    #[arg(long, env = "VOLGUARD_MAX_CONNECTIONS_PER_PEER", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,
    /// Request body bytes held at once across the webhook's requests, and as many again
    /// across the extender's (e.g. 64MiB); a body that does not fit gets a 503.
    #[arg(long, env = "VOLGUARD_MAX_BYTES_IN_FLIGHT", default_value = "64MiB", value_parser = parse_size)]
    pub max_bytes_in_flight: usize,
    /// Largest /filter and /prioritize body (e.g. 4MiB). Enough for nodeCacheCapable:
    /// true (node names); an extender sent full Node objects needs about 128MiB.
    #[arg(long, env = "VOLGUARD_EXTENDER_BODY_LIMIT", default_value = "4MiB", value_parser = parse_size)]
    pub extender_body_limit: usize,
}

/// Splits `4MiB` into `4` and `MiB`; a bare number gets `default` as its unit.
fn number_and_unit<'a>(text: &'a str, default: &'a str) -> (&'a str, &'a str) {
    match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, default),
    }
}

/// Parses `512KiB`, `4MiB`, `1GiB`, or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text, "");
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 512KiB, 4MiB or 1GiB"))?;
    let shift = match unit {
        "" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{text:?}: must be above 0 and fit in memory"))
}

/// Parses `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text, "s");
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

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
    let limits = limits(&args)?;
    let config = load_config(&args)?;
    let drivers = Arc::new(Drivers::new(&config));
    let mut state = ClusterState::new(config.clone(), drivers);
    state.readiness_mut().set_stale_after(args.stale_after);
    let (serving, source) = serving_tls(&args)?;
    // Each request slot of the webhook and of the extender may hold a blocking thread;
    // with room for the rest (watch writes, DNS), one class's work never queues behind
    // the other's for a thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(2 * limits.max_requests + 64)
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    let live = fill_or_find_api(&args, &runtime, &mut state)?;
    let watch_runtime =
        match live {
            Some(_) => Some(watch::runtime().map_err(|e| {
                Failure::runtime(format!("cannot start the watchers' runtime: {e}"))
            })?),
            None => None,
        };
    let watchers = watch_runtime.as_ref().map(|r| r.handle().clone());
    if let Source::Generated(ca) = &source {
        hand_out_ca(ca, args.listen);
    }
    let mut app = App::new(config, SharedState::new(state));
    app.limits = limits;
    app.extender_needs_client_certificate = args.client_ca.is_some();
    app.metrics.certificate_in_use(serving.not_after);
    let drain = Drain {
        delay: args.shutdown_delay,
        timeout: args.shutdown_timeout,
    };
    let served = runtime.block_on(async move {
        let signals = StopSignals::install()
            .map_err(|e| Failure::runtime(format!("cannot catch stop signals: {e}")))?;
        // Dropped when serving ends, which stops the watchers.
        let _watchers = match live {
            None => None,
            Some((kube_config, origin)) => {
                Some(watch_api(&mut app, kube_config, &origin, watchers)?)
            }
        };
        let tls = RustlsConfig::from_config(Arc::new(serving.config));
        reload_certificates(source, &tls, &app, args.tls_reload_interval);
        let (listener, plain) = bind_listeners(&args)?;
        shutdown::serve_until_stopped(app, listener, plain, tls, drain, signals)
            .await
            .map_err(Failure::runtime)
    });
    // The watchers were stopped when serving ended; a DNS lookup or a batch still
    // running on their blocking threads is not waited for past this.
    if let Some(watch_runtime) = watch_runtime {
        watch_runtime.shutdown_timeout(Duration::from_secs(1));
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The listener limits from the flags; a body budget too small for the largest body a
/// route accepts is refused, as such a request could never be read.
fn limits(args: &ServeArgs) -> Result<Limits, Failure> {
    for (flag, largest) in [
        ("--extender-body-limit", args.extender_body_limit),
        ("the /mutate body limit", MUTATE_BODY_LIMIT),
    ] {
        if args.max_bytes_in_flight < largest {
            return Err(Failure::usage(format!(
                "--max-bytes-in-flight {} is below {flag} {}: such a request could never be read; raise --max-bytes-in-flight",
                args.max_bytes_in_flight, largest
            )));
        }
    }
    let per_peer = args
        .max_requests_per_peer
        .unwrap_or(args.max_requests.div_ceil(2));
    if args.max_requests > 1 && per_peer >= args.max_requests {
        return Err(Failure::usage(format!(
            "--max-requests-per-peer {per_peer} is not below --max-requests {}: one peer without a client certificate could take every slot; lower it",
            args.max_requests
        )));
    }
    Ok(Limits {
        request_timeout: args.request_timeout,
        max_requests: args.max_requests as usize,
        max_requests_per_peer: per_peer as usize,
        max_connections: args.max_connections as usize,
        max_connections_per_peer: args.max_connections_per_peer as usize,
        max_bytes_in_flight: args.max_bytes_in_flight,
        extender_body_limit: args.extender_body_limit,
        ..Limits::default()
    })
}

/// The serving certificate from files (which the reloader then watches, client CA
/// included), or from a generated bundle.
fn serving_tls(args: &ServeArgs) -> Result<(Loaded, Source), Failure> {
    let client_files = args.client_ca.as_ref().map(|ca| ClientAuthFiles {
        ca: ca.clone(),
        allowed_names: args.client_allowed_names.clone(),
        scope: args.client_auth.unwrap_or(ClientAuthScope::All),
    });
    if args.self_signed {
        let client_ca = match &client_files {
            Some(files) => Some(ClientAuth {
                ca_pem: tls::read_pem(&files.ca).map_err(Failure::usage)?,
                ca_name: files.ca.display().to_string(),
                allowed_names: files.allowed_names.clone(),
                scope: files.scope,
            }),
            None => None,
        };
        let bundle = certs::generate(&certs::service_names("volguard", "volguard-system"), 30)
            .map_err(|e| Failure::runtime(format!("cannot generate a certificate: {e}")))?;
        let names = ("generated certificate", "generated key");
        let config = tls::server_config(
            bundle.cert_pem.as_bytes(),
            bundle.key_pem.as_bytes(),
            client_ca.as_ref(),
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
        client_auth: client_files,
    };
    let pair = files.read().map_err(|e| {
        let missing_pair = [&args.tls_cert, &args.tls_key]
            .iter()
            .any(|p| e.what == p.display().to_string() && !p.exists());
        if !missing_pair {
            return Failure::usage(e);
        }
        let dir = match args.tls_cert.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
            _ => ".".to_owned(),
        };
        Failure::usage(format!(
            "{e}; run `volguard certs --service NAME --namespace NS --out {dir}` to create \
             the certificate files, or pass --self-signed to serve an in-memory certificate"
        ))
    })?;
    let loaded = files.build(&pair).map_err(Failure::usage)?;
    Ok((loaded, Source::Files(files, pair)))
}

/// The config file, or the defaults; refused when it enables remediation over a
/// snapshot, as evicting pods needs the API.
fn load_config(args: &ServeArgs) -> Result<Arc<Config>, Failure> {
    let config = Config::load(args.config.as_deref()).map_err(Failure::usage)?;
    if config.remediation.enabled && args.snapshot.is_some() {
        let file = args
            .config
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
            .display();
        return Err(Failure::usage(format!(
            "{file}: remediation.enabled: remediation evicts pods through the API and cannot run on a --snapshot: watch the cluster (no --snapshot) or set remediation.enabled: false"
        )));
    }
    Ok(Arc::new(config))
}

/// Fills the state from `--snapshot`, or finds the API server to watch, before anything
/// is served, so that a bad snapshot or kubeconfig fails at startup: `None` for a
/// snapshot, else the client config and where it came from.
fn fill_or_find_api(
    args: &ServeArgs,
    runtime: &tokio::runtime::Runtime,
    state: &mut ClusterState,
) -> Result<Option<(kube::Config, String)>, Failure> {
    let Some(path) = &args.snapshot else {
        return runtime
            .block_on(watch::kube_config(args.kubeconfig.as_deref(), None))
            .map(Some)
            .map_err(Failure::usage);
    };
    let (objects, skipped) = snapshot::load_into(path, state).map_err(Failure::usage)?;
    if !skipped.is_empty() {
        tracing::info!(
            count = skipped.len(),
            "snapshot documents of kinds volguard does not read were skipped"
        );
    }
    tracing::info!(path = %path.display(), objects, "cluster state loaded from snapshot");
    Ok(None)
}

/// Prints a generated certificate's CA on stdout: clients need it to trust the server,
/// and it exists nowhere else.
fn hand_out_ca(ca: &str, listen: SocketAddr) {
    print!("{ca}");
    tracing::info!(
        "self-signed: the CA certificate is on stdout; with it saved as ca.pem: curl --cacert ca.pem https://localhost:{}/readyz",
        listen.port()
    );
}

/// Starts the watchers that keep the state current on `watchers` (their connections'
/// I/O and decoding run there), and remediation when enabled; the app gets a client of
/// its own, for the direct reads of objects the cache has not seen yet. The watchers
/// stop when the returned set is dropped.
fn watch_api(
    app: &mut App,
    kube_config: kube::Config,
    origin: &str,
    watchers: Option<tokio::runtime::Handle>,
) -> Result<tokio::task::JoinSet<()>, Failure> {
    tracing::info!(api = %kube_config.cluster_url, config = %origin, "watching the Kubernetes API; /readyz is 503 until every kind is listed");
    let server = kube_config.cluster_url.clone();
    let remediation_client = app
        .config
        .remediation
        .enabled
        .then(|| remediation::client(kube_config.clone()))
        .transpose()
        .map_err(|e| Failure::usage(format!("{origin}: {e}")))?;
    let cluster = app.cluster.clone();
    let client = |config| {
        watch::client(config, &cluster).map_err(|e| Failure::usage(format!("{origin}: {e}")))
    };
    app.api = Some(client(kube_config.clone())?);
    if let Some(remediation_client) = remediation_client {
        start_remediation(app, remediation_client);
    }
    let client = client(kube_config)?;
    let watchers = watchers.unwrap_or_else(tokio::runtime::Handle::current);
    Ok(watch::spawn_on(
        &watchers,
        client,
        server,
        app.cluster.clone(),
        &app.stopped_watches,
    ))
}

/// Runs the remediation controller beside the server, with a client of its own (see
/// [`remediation::client`]): a refused eviction comes back to be recorded rather than
/// being retried inside the call.
fn start_remediation(app: &App, client: kube::Client) {
    let remediator = Remediator::new(
        client,
        app.cluster.clone(),
        app.config.clone(),
        app.metrics.clone(),
        remediation::identity(),
    );
    let lease = &app.config.remediation.lease;
    tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), dry_run = app.config.remediation.dry_run, "remediation enabled");
    tokio::spawn(remediator.run());
}

/// Re-reads the certificate files every `interval` (never at 0s), so that a rotated
/// certificate is served without a restart; a generated one has no files to watch.
fn reload_certificates(source: Source, tls: &RustlsConfig, app: &App, interval: Duration) {
    if let Source::Files(files, pair) = source
        && !interval.is_zero()
    {
        let reloader = Reloader::new(files, pair, tls.clone(), app.metrics.clone());
        tokio::spawn(reloader.run(interval));
    }
}

/// Binds the TLS and the plain listener, and logs the addresses bound: with port 0 the
/// system picks one, and the log line says which.
fn bind_listeners(
    args: &ServeArgs,
) -> Result<(std::net::TcpListener, std::net::TcpListener), Failure> {
    let bind = |addr| {
        std::net::TcpListener::bind(addr).map_err(|e| Failure::runtime(format!("{addr}: {e}")))
    };
    let listener = bind(args.listen)?;
    let plain = bind(args.metrics_listen)?;
    let bound = |l: &std::net::TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    tracing::info!(
        listen = %bound(&listener, args.listen),
        metrics = %bound(&plain, args.metrics_listen),
        "serving"
    );
    Ok((listener, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "1h", "-1s", "1.5s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units_or_as_bytes() {
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "0", "0MiB", "4MB", "4 MiB", "-1", "1.5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
