//! The binary's command line: `certs` output, and one-line exit-2 failures for bad
//! flags, configs, certificates and snapshots.

mod common;

use std::process::{Command, Output};

fn volguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volguard"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
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
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
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
        ("notyaml.yaml", "drivers: [\n", "notyaml.yaml"),
        ("onerror.yaml", "onError: maybe\n", "onerror.yaml"),
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
    assert_usage_failure(&out, "missing.crt");
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
