//! The command line: parse the flags (each also a `VOLGUARD_*` variable), set up logging,
//! dispatch to the subcommand's module, and turn its failure into one line on stderr
//! with a meaningful exit code. Each subcommand owns its flags.

pub mod certs;
pub mod explain;
pub mod failure;
pub mod nodes;
pub mod plugin;
pub mod report;
pub mod serve;
pub mod state;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::cmd::{certs::CertsArgs, explain::ExplainArgs, nodes::NodesArgs, serve::ServeArgs};

/// What `--version` prints: the crate version, the commit and the Kubernetes version the
/// tests run against, so a bug report names exactly what was running.
pub const VERSION: &str = env!("VOLGUARD_VERSION_LINE");

/// volguard: storage-aware admission webhook and scheduler extender.
#[derive(Debug, Parser)]
#[command(name = "volguard", version = VERSION, about, long_about = None)]
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
    /// Show what the webhook and the extender would do with a pod (snapshot or live).
    Explain(ExplainArgs),
    /// Show every node's attach slots and advertised devices (snapshot or live).
    Nodes(NodesArgs),
    /// Print a shell completion script (e.g. `volguard completions bash > /etc/bash_completion.d/volguard`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Parses the command line, runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(plugin::rewrite(std::env::args_os().collect()));
    init_logging(cli.log_format);
    crate::server::tls::install_crypto_provider();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Certs(args) => certs::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Nodes(args) => nodes::run(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "volguard",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            eprintln!("volguard: {}", f.message.replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

/// The log filter when `RUST_LOG` is not set (the shipped Deployment sets the same).
/// kube's client logs every failed request at ERROR, and its watcher every 403 at WARN
/// as a debug dump, on every retry; volguard's watchers log each failure themselves,
/// once, with the kind, the server and the whole cause.
pub const DEFAULT_LOG_FILTER: &str =
    "info,kube_client::client::builder=off,kube_runtime::watcher=error";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour codes only for a person at a terminal: in a file, a pipe or a log
    // collector they are noise bytes around every level.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
