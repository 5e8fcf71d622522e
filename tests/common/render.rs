//! The deployment manifests as operators render them: `kubectl kustomize manifests/...`
//! and helm (`charts/volguard`), as JSON documents to compare. helm is built from its Go
//! module by `scripts/helm.sh`, once per version, as the control plane is.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use super::repo;

/// `kubectl kustomize <rel>`, offline.
pub fn kustomize(rel: &str) -> String {
    let dir = repo(rel);
    let output = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`kubectl` is not on PATH: this test renders the manifests with \
             `kubectl kustomize`; install kubectl (any version with kustomize v5)"
        ),
        Err(e) => panic!("could not run `kubectl kustomize {}`: {e}", dir.display()),
    };
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed ({}):\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize printed non-UTF-8 output")
}

/// The documents of a multi-document YAML stream, empty ones dropped.
pub fn documents(yaml: &str, source: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("the output of {source} is not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The first place where `a` and `b` (called `names`) differ, as a JSON path.
pub fn first_difference(a: &Value, b: &Value, path: &str, names: (&str, &str)) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => first_difference(v, w, &p, names),
                    (Some(_), None) => Some(format!("{p} is only in the {}", names.0)),
                    (None, Some(_)) => Some(format!("{p} is only in the {}", names.1)),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"), names)),
        _ if a == b => None,
        _ => Some(format!(
            "{path}: {a} in the {} vs {b} in the {}",
            names.0, names.1
        )),
    }
}

/// The helm binary: `$VOLGUARD_HELM`, else the one `scripts/helm.sh` builds (minutes
/// the first time, then at once). Panics, with what to do, when it cannot be built: the
/// chart's tests fail rather than skip.
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        super::built_by(
            "helm.sh",
            "VOLGUARD_HELM",
            "the chart tests need Go and the Go module proxy to build helm; see \
             e2e/helm/README.md",
        )
    })
}

/// Runs helm with `args` (and nothing from the environment's helm settings).
pub fn helm_output(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("volguard-helm-home");
    Command::new(helm())
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm().display()))
}

/// `helm template volguard charts/volguard` with `args` (values), as documents.
pub fn helm_template(args: &[&str]) -> Vec<Value> {
    let chart = repo("charts/volguard");
    let mut all = vec!["template", "volguard", chart.to_str().expect("UTF-8 path")];
    all.extend_from_slice(args);
    let out = helm_output(&all);
    assert!(
        out.status.success(),
        "helm {}: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(
        &String::from_utf8(out.stdout).expect("UTF-8"),
        &format!("helm {}", all.join(" ")),
    )
}
