//! The command line: flags (each also a `VOLGUARD_*` variable), dispatch, and the rule
//! that every failure is one line on stderr with a meaningful exit code.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{certs, daemon, explain};

/// volguard: storage-aware admission webhook and scheduler extender.
#[derive(Debug, Parser)]
#[command(name = "volguard", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "VOLGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook and extender over TLS.
    Serve(Box<ServeArgs>),
    /// Write a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
    /// Show offline what the webhook and the extender would do with a pod.
    Explain(ExplainArgs),
}

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
    /// CA bundle (PEM) for client certificates; when set, clients must present one.
    #[arg(long, env = "VOLGUARD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
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
    /// HTTPS requests handled at the same time; more wait within their timeout.
    #[arg(long, env = "VOLGUARD_MAX_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests: u32,
    /// Open HTTPS connections; more are closed at once.
    #[arg(long, env = "VOLGUARD_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// Parses `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
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

/// Flags of `volguard certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook Service's name.
    #[arg(long, env = "VOLGUARD_SERVICE")]
    pub service: String,
    /// The webhook Service's namespace.
    #[arg(long, env = "VOLGUARD_NAMESPACE")]
    pub namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key.
    #[arg(long, env = "VOLGUARD_CERTS_OUT", default_value = "certs")]
    pub out: PathBuf,
    /// Validity in days.
    #[arg(long, env = "VOLGUARD_CERT_DAYS", default_value_t = 365)]
    pub days: u32,
}

/// Flags of `volguard explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Cluster state: a YAML/JSON file or a directory of them.
    #[arg(long, env = "VOLGUARD_SNAPSHOT")]
    pub snapshot: PathBuf,
    /// The pod to place (YAML or JSON, one document).
    #[arg(long, env = "VOLGUARD_POD")]
    pub pod: PathBuf,
    /// Config file (YAML); built-in defaults when absent.
    #[arg(long, env = "VOLGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Report format.
    #[arg(long, env = "VOLGUARD_OUTPUT", value_enum, default_value_t = ExplainOutput::Table)]
    pub output: ExplainOutput,
}

/// Report format of `volguard explain`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExplainOutput {
    /// The patch, then aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// A command failed: print `message` as one line and exit with `code`.
#[derive(Debug)]
pub struct Failure {
    /// 2 for bad input (flags, config, certificates, snapshot), 1 for runtime failures.
    pub code: u8,
    /// What went wrong, naming the file.
    pub message: String,
}

impl Failure {
    /// Bad input from the operator: exit code 2.
    pub fn usage(message: impl ToString) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// A failure while running: exit code 1.
    pub fn runtime(message: impl ToString) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    crate::tls::install_crypto_provider();
    let outcome = match cli.command {
        Command::Serve(args) => daemon::run(*args),
        Command::Certs(args) => write_certs(&args),
        Command::Explain(args) => explain::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            eprintln!("volguard: {}", f.message.replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(format: LogFormat) {
    // kube's client logs every failed request at ERROR; the watchers already log each
    // failure once, with the kind, at WARN.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn write_certs(args: &CertsArgs) -> Result<ExitCode, Failure> {
    let names = certs::service_names(&args.service, &args.namespace);
    let bundle = certs::generate(&names, args.days)
        .map_err(|e| Failure::runtime(format!("cannot generate certificates: {e}")))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Failure::usage(format!("{}: cannot create: {e}", args.out.display())))?;
    for (file, pem) in [
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
    ] {
        let path = args.out.join(file);
        write_private(&path, pem.as_bytes(), file == "tls.key")
            .map_err(|e| Failure::usage(format!("{}: cannot write: {e}", path.display())))?;
    }
    use base64::Engine;
    eprintln!(
        "wrote {0}/ca.crt {0}/tls.crt {0}/tls.key for {1}; caBundle for the MutatingWebhookConfiguration:",
        args.out.display(),
        names.join(", ")
    );
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(&bundle.ca_pem)
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a file; private keys get mode 0600.
fn write_private(path: &std::path::Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(data)
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
}
