//! `volguard certs`: a CA, a serving certificate for the webhook Service, a client
//! certificate for the scheduler's extender calls (`serve --client-ca`), and the
//! caBundle to paste into the MutatingWebhookConfiguration. Run again over the same
//! directory, it re-issues only the two leaf certificates from the CA there, so the
//! caBundle already deployed stays valid; replacing the CA takes `--force`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;

use crate::{
    cmd::failure::Failure,
    server::certs::{self, Ca},
};

/// Flags of `volguard certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook Service's name.
    #[arg(long, env = "VOLGUARD_SERVICE")]
    pub service: String,
    /// The webhook Service's namespace.
    #[arg(long, env = "VOLGUARD_NAMESPACE")]
    pub namespace: String,
    /// Directory for ca.crt, ca.key, tls.crt and tls.key. When it holds ca.crt and
    /// ca.key, only tls.crt and tls.key are re-issued from that CA.
    #[arg(long, env = "VOLGUARD_CERTS_OUT", default_value = "certs")]
    pub out: PathBuf,
    /// Validity of the serving certificate in days (the CA lives 10 years).
    #[arg(long, env = "VOLGUARD_CERT_DAYS", default_value_t = 365)]
    pub days: u32,
    /// Replace an existing CA (the caBundle deployed with it stops working).
    #[arg(long, env = "VOLGUARD_CERTS_FORCE")]
    pub force: bool,
    /// Common name of the client certificate (client.crt, client.key) that
    /// kube-scheduler presents to the extender; `serve --client-allowed-names` lists it.
    #[arg(
        long,
        env = "VOLGUARD_CLIENT_NAME",
        default_value = "volguard-scheduler"
    )]
    pub client_name: String,
}

/// Mode of the private keys: readable by their owner only.
const KEY_MODE: u32 = 0o600;
/// Mode of the certificates, which are public.
const CERT_MODE: u32 = 0o644;

/// Runs `volguard certs`.
pub fn run(args: &CertsArgs) -> Result<ExitCode, Failure> {
    if args.days == 0 {
        return Err(Failure::usage(
            "--days 0: a certificate must be valid for at least 1 day",
        ));
    }
    let dir = &args.out;
    let file = |name: &str| dir.join(name);
    let (ca_crt, ca_key) = (file("ca.crt"), file("ca.key"));
    let names = certs::service_names(&args.service, &args.namespace);
    if !args.force && ca_crt.exists() && ca_key.exists() {
        return reissue(args, &names, &ca_crt, &ca_key);
    }
    if !args.force {
        refuse_to_overwrite(dir)?;
    }
    let bundle = certs::generate(&names, args.days)
        .map_err(|e| Failure::runtime(format!("cannot generate certificates: {e}")))?;
    let ca = Ca::from_pem(&bundle.ca_pem, &bundle.ca_key_pem).map_err(Failure::runtime)?;
    let client = client_certificate(&ca, args)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::usage(format!("{}: cannot create: {e}", dir.display())))?;
    for (name, pem, mode) in [
        ("ca.key", &bundle.ca_key_pem, KEY_MODE),
        ("ca.crt", &bundle.ca_pem, CERT_MODE),
        ("tls.key", &bundle.key_pem, KEY_MODE),
        ("tls.crt", &bundle.cert_pem, CERT_MODE),
        ("client.key", &client.key_pem, KEY_MODE),
        ("client.crt", &client.cert_pem, CERT_MODE),
    ] {
        write(&file(name), pem, mode)?;
    }
    eprintln!(
        "wrote {0}/ca.crt {0}/ca.key {0}/tls.crt {0}/tls.key for {1}, {0}/client.crt {0}/client.key for {2}; caBundle for the MutatingWebhookConfiguration:",
        dir.display(),
        names.join(", "),
        args.client_name
    );
    print_ca_bundle(&bundle.ca_pem);
    Ok(ExitCode::SUCCESS)
}

/// A rotation: a new serving certificate from the CA in the directory; the caBundle
/// (printed again) does not change.
fn reissue(
    args: &CertsArgs,
    names: &[String],
    ca_crt: &Path,
    ca_key: &Path,
) -> Result<ExitCode, Failure> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: cannot read: {e}", path.display())))
    };
    let (ca_pem, key_pem) = (read(ca_crt)?, read(ca_key)?);
    let ca = Ca::from_pem(&ca_pem, &key_pem).map_err(|e| {
        Failure::usage(format!(
            "{} with {}: {e}; pass --force to create a new CA (then update the caBundle)",
            ca_crt.display(),
            ca_key.display()
        ))
    })?;
    if ca.not_after <= time::OffsetDateTime::now_utc() {
        return Err(Failure::usage(format!(
            "{} expired on {}; pass --force to create a new CA (then update the caBundle)",
            ca_crt.display(),
            ca.not_after.date()
        )));
    }
    let leaf = ca
        .serving(names, args.days)
        .map_err(|e| Failure::runtime(format!("cannot generate a certificate: {e}")))?;
    let client = client_certificate(&ca, args)?;
    let dir = &args.out;
    write(&dir.join("tls.key"), &leaf.key_pem, KEY_MODE)?;
    write(&dir.join("tls.crt"), &leaf.cert_pem, CERT_MODE)?;
    write(&dir.join("client.key"), &client.key_pem, KEY_MODE)?;
    write(&dir.join("client.crt"), &client.cert_pem, CERT_MODE)?;
    eprintln!(
        "re-issued {0}/tls.crt {0}/tls.key for {1}, {0}/client.crt {0}/client.key for {2} from the CA in {0}/ca.crt; the caBundle is unchanged:",
        dir.display(),
        names.join(", "),
        args.client_name
    );
    print_ca_bundle(&ca_pem);
    Ok(ExitCode::SUCCESS)
}

/// Without a complete CA to re-issue from, files already there would be replaced by
/// ones from a new CA, silently breaking whatever trusts the old one: refused.
fn refuse_to_overwrite(dir: &Path) -> Result<(), Failure> {
    let [ca_crt, ca_key] = ["ca.crt", "ca.key"].map(|f| dir.join(f));
    let new_ca = "pass --force to create a new CA (then update the caBundle)";
    if ca_crt.exists() {
        return Err(Failure::usage(format!(
            "{} exists without {}, so it cannot issue the serving certificate; {new_ca}",
            ca_crt.display(),
            ca_key.display()
        )));
    }
    if ca_key.exists() {
        return Err(Failure::usage(format!(
            "{} exists without {}; {new_ca}",
            ca_key.display(),
            ca_crt.display()
        )));
    }
    for name in ["tls.crt", "tls.key", "client.crt", "client.key"] {
        let path = dir.join(name);
        if path.exists() {
            return Err(Failure::usage(format!(
                "{} exists (from another CA); pass --force to replace it",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The client certificate kube-scheduler presents, valid as long as the serving one.
fn client_certificate(ca: &Ca, args: &CertsArgs) -> Result<certs::Leaf, Failure> {
    if args.client_name.trim().is_empty() {
        return Err(Failure::usage(
            "--client-name is empty: name the client, e.g. volguard-scheduler",
        ));
    }
    ca.client(&args.client_name, args.days)
        .map_err(|e| Failure::runtime(format!("cannot generate a client certificate: {e}")))
}

fn print_ca_bundle(ca_pem: &str) {
    use base64::Engine;
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    );
}

/// Writes `path` atomically with `mode`: a new file in the same directory, created with
/// that mode (so a key is never readable by others, not even for a moment) and renamed
/// over the old one, which therefore never keeps its mode or is left half written.
fn write(path: &Path, data: &str, mode: u32) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = create(&temp, mode).and_then(|mut f| {
        f.write_all(data.as_bytes())?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Failure::usage(format!("{}: cannot write: {e}", path.display()))
    })
}

fn create(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    // A leftover of a run that was killed mid-write.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}
