//! The binary's command line: `certs` output, rotation and refusals, one-line exit-2
//! failures for bad flags, configs, kubeconfigs, certificates and snapshots, and the log
//! lines an operator reads from `serve`.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_volguard");

fn volguard(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
}

/// Runs `volguard serve ARGS` with stderr into a pipe, as a log collector reads it,
/// until a line satisfies `until` (within a minute); returns all stderr read by then.
/// The process is killed.
fn serve_until(args: &[&str], until: impl Fn(&str) -> bool) -> String {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) => {
                text.push_str(&line);
                text.push('\n');
                if until(&line) {
                    break true;
                }
            }
            _ => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the expected line never came; stderr:\n{text}");
    text
}

/// The part of a text log line after its time stamp: `WARN target: message fields`.
fn without_time(line: &str) -> &str {
    line.split_once(' ')
        .map_or(line, |(_, rest)| rest.trim_start())
}

/// Exit code 2 and exactly one line on stderr that contains `says`.
fn assert_usage_failure(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].contains(says), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn certs_writes_a_ca_and_a_serving_cert_for_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = volguard(&[
        "certs",
        "--service",
        "volguard",
        "--namespace",
        "volguard-system",
        "--out",
        out.to_str().unwrap(),
        "--days",
        "30",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ca = std::fs::read(out.join("ca.crt")).unwrap();
    let cert = std::fs::read(out.join("tls.crt")).unwrap();
    let key = std::fs::read(out.join("tls.key")).unwrap();
    use base64::Engine;
    let printed = String::from_utf8(o.stdout).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(printed.trim())
        .expect("caBundle is base64");
    assert_eq!(bundle, ca, "the printed caBundle is ca.crt");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "wrote {0}/ca.crt {0}/ca.key {0}/tls.crt {0}/tls.key for volguard, \
             volguard.volguard-system, volguard.volguard-system.svc, \
             volguard.volguard-system.svc.cluster.local, localhost, 127.0.0.1, \
             {0}/client.crt {0}/client.key for volguard-scheduler; \
             caBundle for the MutatingWebhookConfiguration:\n",
            out.display()
        )
    );
    assert_eq!(mode(&out.join("tls.key")), 0o600, "the key is private");
    assert_eq!(mode(&out.join("ca.key")), 0o600, "the CA key is private");
    assert_eq!(
        server_usages(&cert),
        ["serverAuth"],
        "a serving certificate, not a client one"
    );
    // The scheduler's client certificate: client authentication only, named for the
    // --client-allowed-names of the shipped Deployment.
    let client = std::fs::read(out.join("client.crt")).unwrap();
    assert_eq!(server_usages(&client), ["clientAuth"]);
    assert_eq!(
        mode(&out.join("client.key")),
        0o600,
        "the client key is private"
    );
    verifies_client(&ca, &client).expect("the client certificate verifies under ca.crt");
    let leaf = volguard::server::tls::parse_certs(&client, "client.crt")
        .unwrap()
        .remove(0);
    assert_eq!(
        volguard::server::tls::certificate_names(&leaf),
        ["volguard-scheduler"]
    );
    // The pair loads, and a client trusting ca.crt accepts it for every Service name.
    volguard::server::tls::install_crypto_provider();
    volguard::server::tls::server_config(&cert, &key, None, ("tls.crt", "tls.key"))
        .expect("pair loads");
    let ca_cert = volguard::server::tls::parse_certs(&ca, "ca")
        .unwrap()
        .remove(0);
    let leaf = volguard::server::tls::parse_certs(&cert, "cert")
        .unwrap()
        .remove(0);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    for name in [
        "volguard",
        "volguard.volguard-system",
        "volguard.volguard-system.svc",
        "volguard.volguard-system.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ] {
        let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &server_name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The permission bits of a file.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The extended key usages of the first certificate in `pem`.
fn server_usages(pem: &[u8]) -> Vec<&'static str> {
    let der = volguard::server::tls::parse_certs(pem, "cert")
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let eku = cert.extended_key_usage().unwrap().expect("an EKU").value;
    let mut usages = Vec::new();
    if eku.server_auth {
        usages.push("serverAuth");
    }
    if eku.client_auth {
        usages.push("clientAuth");
    }
    assert!(eku.other.is_empty() && !eku.any, "{eku:?}");
    usages
}

fn certs_into(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "certs",
        "--service",
        "volguard",
        "--namespace",
        "volguard-system",
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    volguard(&args)
}

/// The certificates of the PEM bundle `ca` as trust roots.
fn roots(ca: &[u8]) -> std::sync::Arc<rustls::RootCertStore> {
    volguard::server::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in volguard::server::tls::parse_certs(ca, "ca").unwrap() {
        roots.add(c).unwrap();
    }
    std::sync::Arc::new(roots)
}

/// Whether `leaf` verifies for `volguard.volguard-system.svc` under `ca`.
fn verifies(ca: &[u8], leaf: &[u8]) -> Result<(), String> {
    let roots = roots(ca);
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots,
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    let leaf = volguard::server::tls::parse_certs(leaf, "cert")
        .unwrap()
        .remove(0);
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &rustls_pki_types::ServerName::try_from("volguard.volguard-system.svc").unwrap(),
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether `leaf` verifies as a client certificate under `ca`.
fn verifies_client(ca: &[u8], leaf: &[u8]) -> Result<(), String> {
    let roots = roots(ca);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots,
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = volguard::server::tls::parse_certs(leaf, "cert")
        .unwrap()
        .remove(0);
    verifier
        .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn serve_refuses_inconsistent_limits_and_client_flags() {
    let snapshot = common::repo("examples/cluster");
    let snapshot = snapshot.to_str().unwrap();
    let out = volguard(&[
        "serve",
        "--self-signed",
        "--snapshot",
        snapshot,
        "--max-bytes-in-flight",
        "2MiB",
    ]);
    assert_usage_failure(
        &out,
        "volguard: --max-bytes-in-flight 2097152 is below --extender-body-limit 4194304: such a \
         request could never be read; raise --max-bytes-in-flight",
    );
    let out = volguard(&[
        "serve",
        "--self-signed",
        "--snapshot",
        snapshot,
        "--max-requests",
        "64",
        "--max-requests-per-peer",
        "64",
    ]);
    assert_usage_failure(
        &out,
        "volguard: --max-requests-per-peer 64 is not below --max-requests 64: one peer without a client certificate could take every slot; lower it",
    );
    let out = volguard(&[
        "serve",
        "--self-signed",
        "--snapshot",
        snapshot,
        "--extender-body-limit",
        "4 MB",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("\"4 MB\": unknown unit \" MB\" (use KiB, MiB or GiB)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for flag in [
        ["--client-allowed-names", "volguard-scheduler"],
        ["--client-auth", "extender"],
    ] {
        let mut args = vec!["serve", "--self-signed", "--snapshot", snapshot];
        args.extend(flag);
        let out = volguard(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--client-ca <CLIENT_CA>"), "{stderr}");
    }
}

#[test]
fn certs_again_reissues_the_serving_certificate_under_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let first = certs_into(&out, &[]);
    assert!(first.status.success(), "{first:?}");
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    let (ca, ca_key, cert) = (read("ca.crt"), read("ca.key"), read("tls.crt"));
    // A key left readable by others, by hand or by an older volguard.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out.join("tls.key"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let again = certs_into(&out, &["--days", "30"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        format!(
            "re-issued {0}/tls.crt {0}/tls.key for volguard, volguard.volguard-system, \
             volguard.volguard-system.svc, volguard.volguard-system.svc.cluster.local, \
             localhost, 127.0.0.1, {0}/client.crt {0}/client.key for volguard-scheduler \
             from the CA in {0}/ca.crt; the caBundle is unchanged:\n",
            out.display()
        )
    );
    assert_eq!(again.stdout, first.stdout, "the same caBundle is printed");
    assert_eq!(read("ca.crt"), ca, "the CA stays");
    assert_eq!(read("ca.key"), ca_key, "the CA key stays");
    assert_ne!(read("tls.crt"), cert, "a new serving certificate");
    verifies(&ca, &read("tls.crt")).expect("the new certificate verifies under the old CA");
    volguard::server::tls::server_config(
        &read("tls.crt"),
        &read("tls.key"),
        None,
        ("tls.crt", "tls.key"),
    )
    .expect("the new pair loads");
    assert_eq!(
        mode(&out.join("tls.key")),
        0o600,
        "the re-written key is private"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );

    // --force replaces the CA, and every key ends private.
    std::fs::set_permissions(out.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let forced = certs_into(&out, &["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(read("ca.crt"), ca, "a new CA");
    assert_ne!(forced.stdout, first.stdout, "a new caBundle");
    verifies(&read("ca.crt"), &read("tls.crt")).expect("issued by the new CA");
    assert_eq!(mode(&out.join("ca.key")), 0o600);
    assert_eq!(mode(&out.join("tls.key")), 0o600);
}

#[test]
fn certs_refuses_to_replace_a_ca_it_cannot_reissue_from() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // ca.crt and tls.* as an older volguard left them: no ca.key.
    for (file, text) in [
        ("ca.crt", "deployed CA"),
        ("tls.crt", "cert"),
        ("tls.key", "key"),
    ] {
        std::fs::write(out.join(file), text).unwrap();
    }
    let ca_crt = out.join("ca.crt");
    let o = certs_into(out, &[]);
    assert_usage_failure(
        &o,
        &format!(
            "volguard: {} exists without {}, so it cannot issue the serving certificate; \
             pass --force to create a new CA (then update the caBundle)",
            ca_crt.display(),
            out.join("ca.key").display()
        ),
    );
    assert_eq!(
        std::fs::read_to_string(&ca_crt).unwrap(),
        "deployed CA",
        "untouched"
    );
    assert!(!out.join("ca.key").exists());

    // Serving files from elsewhere, no CA at all.
    std::fs::remove_file(&ca_crt).unwrap();
    let o = certs_into(out, &[]);
    assert_usage_failure(
        &o,
        &format!(
            "volguard: {} exists (from another CA); pass --force to replace it",
            out.join("tls.crt").display()
        ),
    );
    assert_eq!(std::fs::read_to_string(out.join("tls.key")).unwrap(), "key");

    // A CA key that is not the CA's.
    let other = tempfile::tempdir().unwrap();
    assert!(certs_into(other.path(), &[]).status.success());
    assert!(certs_into(out, &["--force"]).status.success());
    std::fs::copy(other.path().join("ca.key"), out.join("ca.key")).unwrap();
    let o = certs_into(out, &[]);
    assert_usage_failure(
        &o,
        &format!(
            "volguard: {} with {}: the key does not belong to this certificate; pass --force \
             to create a new CA (then update the caBundle)",
            ca_crt.display(),
            out.join("ca.key").display()
        ),
    );
}

#[test]
fn certs_refuses_zero_days() {
    let dir = tempfile::tempdir().unwrap();
    let o = certs_into(dir.path(), &["--days", "0"]);
    assert_usage_failure(
        &o,
        "volguard: --days 0: a certificate must be valid for at least 1 day",
    );
    assert!(!dir.path().join("ca.crt").exists(), "nothing written");
}

#[test]
fn broken_config_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown.yaml", "annotationPrefx: x.io\n", "annotationPrefx"),
        (
            "template.yaml",
            "drivers:\n  - name: b\n    resourceTemplate: volumes.example.com/x\n",
            "drivers[0].resourceTemplate",
        ),
        (
            "negative.yaml",
            "drivers:\n  - name: l\n    csiDriver: l.csi\n    attachLimit:\n      default: -2\n",
            "drivers[0].attachLimit.default",
        ),
        (
            "overlap.yaml",
            "drivers:\n  - {name: a, storageClasses: [local-storage]}\n  - {name: b, storageClasses: [local-storage]}\n",
            "overlap.yaml: drivers[1].storageClasses: \"local-storage\" is already selected by drivers[0] (a): a volume belongs to one driver, remove it from one of the two",
        ),
        (
            "selectors.yaml",
            "drivers:\n  - {name: a, csiDriver: x.csi, sourceKinds: [local]}\n",
            "selectors.yaml: drivers[0] (a): select volumes by one of csiDriver/flexDriver, storageClasses or sourceKinds, not several: split it into one entry per selector",
        ),
        (
            "prefix.yaml",
            "annotationPrefix: volguard_io\n",
            "prefix.yaml: annotationPrefix: \"volguard_io\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters), as the prefix of an annotation key must be: use a domain such as volguard.io",
        ),
        (
            "marker.yaml",
            "markerResource: volguard.io/Volumes_\n",
            "marker.yaml: markerResource: \"volguard.io/Volumes_\" is not an extended resource name Kubernetes accepts: \"Volumes_\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit; use domain/name, e.g. volguard.io/volumes, or \"\" for none",
        ),
        (
            "pending.yaml",
            "markerResource: volguard.io/volumes\nscheduling: {schedulerName: volguard-scheduler}\n",
            "pending.yaml: markerResource: \"volguard.io/volumes\" with scheduling.schedulerName \"volguard-scheduler\" would leave every managed pod Pending",
        ),
        ("notyaml.yaml", "drivers: [\n", "notyaml.yaml"),
        ("onerror.yaml", "onError: maybe\n", "onerror.yaml"),
        (
            "grace.yaml",
            "remediation: {enabled: true, gracePeriodSeconds: 0}\n",
            "grace.yaml: remediation.gracePeriodSeconds: 0 is too small: use 1 or more (the default is 60)",
        ),
        (
            "offline.yaml",
            "remediation: {enabled: true}\n",
            "offline.yaml: remediation.enabled: remediation evicts pods through the API and cannot run on a --snapshot: watch the cluster (no --snapshot) or set remediation.enabled: false",
        ),
    ];
    for (file, text, says) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let out = volguard(&[
            "serve",
            "--self-signed",
            "--snapshot",
            common::repo("examples/cluster").to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_usage_failure(&out, says);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(file),
            "names the file"
        );
    }
    let out = volguard(&["serve", "--config", "/nonexistent/volguard.yaml"]);
    assert_usage_failure(&out, "/nonexistent/volguard.yaml");
}

#[test]
fn missing_or_broken_certificates_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = common::repo("examples/cluster");
    let out = volguard(&[
        "serve",
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--tls-cert",
        dir.path().join("missing.crt").to_str().unwrap(),
    ]);
    assert_usage_failure(
        &out,
        &format!(
            "volguard: {}: cannot read: No such file or directory (os error 2); run \
             `volguard certs --service NAME --namespace NS --out {}` to create the certificate \
             files, or pass --self-signed to serve an in-memory certificate",
            dir.path().join("missing.crt").display(),
            dir.path().display()
        ),
    );
    let bad = dir.path().join("bad.crt");
    std::fs::write(&bad, "not a certificate").unwrap();
    let out = volguard(&[
        "serve",
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--tls-cert",
        bad.to_str().unwrap(),
        "--tls-key",
        bad.to_str().unwrap(),
    ]);
    assert_usage_failure(&out, "bad.crt");
}

#[test]
fn broken_snapshot_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodes.yaml");
    for (text, says) in [
        (
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: [oops\n",
            "nodes.yaml",
        ),
        (
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: 7\nstatus: {allocatable: 3}\n",
            "invalid Node",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = volguard(&[
            "serve",
            "--self-signed",
            "--snapshot",
            file.to_str().unwrap(),
        ]);
        assert_usage_failure(&out, says);
    }
}

#[test]
fn bad_flags_exit_2() {
    let out = volguard(&["serve", "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    let out = volguard(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn explain_on_the_local_pv_example_shows_local_and_nfs_slots() {
    let out = volguard(&[
        "explain",
        "--snapshot",
        common::repo("examples/local-cluster").to_str().unwrap(),
        "--config",
        common::repo("examples/local-config.yaml").to_str().unwrap(),
        "--pod",
        common::repo("examples/pods/local-cache.yaml")
            .to_str()
            .unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            r#""volguard.io/volumes": "local=local-pv-bb1049dc,nfs=nfs.internal.example:/exports/media""#
        ),
        "{stdout}"
    );
    for (node, slots) in [
        ("virt-1", "local 1/25, nfs 0/unlimited"),
        ("virt-2", "local 0/25, nfs 0/unlimited"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("a row for {node}: {stdout}"));
        assert!(row.contains("pass") && row.contains(slots), "{row}");
    }
}

#[test]
fn an_unreadable_kubeconfig_is_named_once_without_doubled_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("kubeconfig");
    let out = volguard(&[
        "serve",
        "--self-signed",
        "--kubeconfig",
        missing.to_str().unwrap(),
    ]);
    assert_usage_failure(
        &out,
        &format!(
            "volguard: {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    // No flag, not in a cluster, no ~/.kube/config.
    let out = Command::new(BIN)
        .args(["serve", "--self-signed"])
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_usage_failure(
        &out,
        &format!(
            "{}: cannot read: No such file or directory (os error 2); pass --kubeconfig FILE, \
             or --snapshot PATH to serve from files",
            dir.path().join(".kube/config").display()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("'\""), "{stderr}");
}

#[test]
fn an_unreachable_api_server_is_logged_with_its_url_and_cause() {
    // Bound but not listening: connections to it are refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n"
        ),
    )
    .unwrap();
    let stderr = serve_until(
        &[
            "--self-signed",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
        |line| line.contains("cannot list"),
    );
    let line = stderr.lines().last().unwrap();
    let kind = line
        .split("kind=\"")
        .nth(1)
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or_else(|| panic!("names the kind: {line}"));
    assert_eq!(
        without_time(line),
        format!(
            "WARN volguard::sources::watch: cannot list {kind} at {url}: ServiceError: client \
             error (Connect): tcp connect error: Connection refused (os error 111); retrying, \
             quietly while the error stays the same kind=\"{kind}\""
        )
    );
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes in a pipe: {stderr:?}"
    );
}

#[test]
fn logs_through_a_pipe_carry_no_colour_codes() {
    let snapshot = common::repo("examples/cluster");
    let stderr = serve_until(
        &["--self-signed", "--snapshot", snapshot.to_str().unwrap()],
        |line| line.contains(" serving "),
    );
    assert!(
        stderr
            .lines()
            .any(|l| without_time(l).starts_with("INFO volguard::cmd::serve: serving ")),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// `volguard serve` on a snapshot that must be refused: it never gets to serving, but
/// in case it did, it is stopped rather than left running.
fn serve_snapshot(path: &std::path::Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_volguard"))
        .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--snapshot"])
        .arg(path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// A List with a broken item, a file cut short, a List without `items` or with
/// `items` that is not an array: exit 2 and exactly this one line, from `serve` (which
/// then serves nothing) and from `explain`.
#[test]
fn broken_lists_exit_2_with_one_line_naming_document_and_item() {
    let dir = tempfile::tempdir().unwrap();
    let node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}}"#;
    let list = format!(
        "{{\"apiVersion\": \"v1\", \"items\": [\n  {node},\n  {node},\n  {node}\n], \"kind\": \"List\", \"metadata\": {{}}}}\n"
    );
    let yaml_list = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata:\n    name: a\n- apiVersion: storage.k8s.io/v1\n  kind: CSINode\n  metadata:\n    name: a\n  spec:\n    drivers: 7\nkind: List\nmetadata: {}\n";
    let cases = [
        (
            "item.json",
            list.replacen(
                r#""name": "a"}}"#,
                r#""name": "a"}, "spec": {"taints": 7}}"#,
                2,
            )
            .replacen(
                r#""name": "a"}, "spec": {"taints": 7}}"#,
                r#""name": "a"}}"#,
                1,
            ),
            "document 1, item 2: invalid Node: invalid type: integer `7`, expected a sequence at line 3 column 86",
        ),
        (
            "item.yaml",
            yaml_list.to_owned(),
            "document 1, item 2: invalid CSINode: expected sequence start at line 12, column 14",
        ),
        (
            "syntax.json",
            list.replacen(r#""name": "a"}"#, r#""name": "a",}"#, 3)
                .replacen(r#""name": "a",}"#, r#""name": "a"}"#, 2),
            "document 1, item 3: invalid JSON: trailing comma at line 4 column 65",
        ),
        (
            "mixed.yaml",
            format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: b\n---\n{yaml_list}"),
            "document 2, item 2: invalid CSINode: expected sequence start at line 17, column 14",
        ),
        (
            "truncated.json",
            list[..list.find("\"Node\", \"metadata\"").unwrap() + 100].to_owned(),
            "truncated: the file ends inside document 1, item 2",
        ),
        (
            "truncated.yaml",
            yaml_list[..yaml_list.find("  spec:").unwrap()].to_owned(),
            "document 1: List without kind (kubectl prints it after the items: is the file cut short?)",
        ),
        (
            "noitems.json",
            r#"{"apiVersion": "v1", "kind": "List", "metadata": {}}"#.to_owned(),
            "document 1: List without items",
        ),
        (
            "noitems.yaml",
            "apiVersion: v1\nkind: NodeList\nmetadata: {}\n".to_owned(),
            "document 1: NodeList without items",
        ),
        (
            "notarray.json",
            r#"{"apiVersion": "v1", "items": {"a": 1}, "kind": "List"}"#.to_owned(),
            "document 1: List: items is an object, not an array",
        ),
        (
            "notarray.yaml",
            "apiVersion: v1\nkind: List\nitems: nope\n".to_owned(),
            "document 1: List: items is a string, not an array",
        ),
        (
            "kindless.json",
            format!(
                r#"{{"apiVersion": "v1", "items": [{node}, {{"metadata": {{}}}}], "kind": "List"}}"#
            ),
            "document 1, item 2: no kind, and the List is not of one kind (such as NodeList) that would give it one",
        ),
    ];
    let pod = common::repo("examples/pods/linode-web.yaml");
    for (file, text, message) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let line = format!("volguard: {}: {message}", path.display());
        for out in [
            serve_snapshot(&path),
            volguard(&[
                "explain",
                "--snapshot",
                path.to_str().unwrap(),
                "--pod",
                pod.to_str().unwrap(),
            ]),
        ] {
            assert_usage_failure(&out, &line);
            assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), line);
            assert!(out.stdout.is_empty(), "{file}: nothing served");
        }
    }
}

#[test]
fn version_names_the_commit_and_the_kubernetes_version_the_tests_run() {
    let out = volguard(&["--version"]);
    assert!(out.status.success());
    let go_mod = std::fs::read_to_string(common::repo("e2e/control-plane/go.mod")).unwrap();
    let tested = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("go.mod requires k8s.io/kubernetes");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(common::repo(""))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".to_owned(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "volguard {} (commit {commit}, tested against Kubernetes {tested})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn completions_cover_every_subcommand_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = volguard(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["serve", "certs", "explain", "nodes", "completions"] {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
    }
    let out = volguard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn kubectl_runs_it_as_a_plugin() {
    let bin = env!("CARGO_BIN_EXE_volguard");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin, dir.path().join("kubectl-volguard")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let snapshot = common::repo("examples/cluster");
    let pod = common::repo("examples/pods/seed-000-device.yaml");
    let (snapshot, pod) = (snapshot.to_str().unwrap(), pod.to_str().unwrap());
    for (plugin, direct) in [
        (
            vec!["volguard", "nodes", "--snapshot", snapshot, "-o", "json"],
            vec!["nodes", "--snapshot", snapshot, "--output", "json"],
        ),
        (
            vec!["volguard", "explain", "--snapshot", snapshot, "--pod", pod],
            vec!["explain", "--snapshot", snapshot, "--pod", pod],
        ),
    ] {
        let through_kubectl = std::process::Command::new("kubectl")
            .args(&plugin)
            .env("PATH", &path)
            .output()
            .expect("kubectl on PATH");
        let itself = volguard(&direct);
        assert!(
            through_kubectl.status.success(),
            "kubectl {plugin:?}: {}",
            String::from_utf8_lossy(&through_kubectl.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&through_kubectl.stdout),
            String::from_utf8_lossy(&itself.stdout),
            "kubectl {plugin:?}"
        );
    }
}
