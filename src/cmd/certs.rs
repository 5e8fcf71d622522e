//! `volguard certs`: a CA and a serving certificate for the webhook Service, and the
//! caBundle to paste into the MutatingWebhookConfiguration.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{cmd::failure::Failure, server::certs};

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

/// Runs `volguard certs`.
pub fn run(args: &CertsArgs) -> Result<ExitCode, Failure> {
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
