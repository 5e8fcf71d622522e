//! The API client: where its config comes from (in-cluster, a kubeconfig file) and the
//! middleware that lets the watchers' bookmarks be seen.

use std::path::Path;

use kube::{
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError, LoadDataError},
};

use super::recovery::RecoveryLayer;
use crate::cluster::SharedState;

/// The API server to watch, with where its config came from (for messages): the given
/// kubeconfig file; else the in-cluster service account; else `$KUBECONFIG` or
/// `~/.kube/config`. The error is one line naming the file.
pub async fn kube_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Config, String), String> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    if let Some(path) = kubeconfig {
        let origin = path.display().to_string();
        let file = Kubeconfig::read_from(path).map_err(|e| match e {
            KubeconfigError::ReadConfig(io, _) => format!("{origin}: cannot read: {io}"),
            e => format!("{origin}: cannot read kubeconfig: {}", problem(&e)),
        })?;
        return kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .map(|config| (config, origin.clone()))
            .map_err(|e| format!("{origin}: unusable kubeconfig: {}", problem(&e)));
    }
    let in_cluster = match (context, kube::Config::incluster()) {
        (None, Ok(config)) => return Ok((config, "in-cluster service account".into())),
        (Some(_), _) => None,
        (None, Err(e)) => Some(e),
    };
    let file = std::env::var("KUBECONFIG")
        .ok()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "~/.kube/config".into());
    kube::Config::from_kubeconfig(&options)
        .await
        .map(|config| (config, file.clone()))
        .map_err(|e| {
            let (file, why) = match e {
                KubeconfigError::ReadConfig(io, path) => {
                    (path.display().to_string(), format!("cannot read: {io}"))
                }
                e => (file, problem(&e)),
            };
            let in_cluster = in_cluster.map_or_else(
                || "a --context names a kubeconfig's context".to_owned(),
                |e| format!("not in a cluster ({})", first_line(&e)),
            );
            format!(
                "no Kubernetes API to watch: {in_cluster} and {file}: {why}; \
                 pass --kubeconfig FILE, or --snapshot PATH to serve from files"
            )
        })
}

/// What is wrong with a kubeconfig, in one line. kube's own text for a file it cannot
/// read quotes the path twice (`failed to read file '"/etc/ca.crt"'`), so those are
/// written here with the path as it is.
fn problem(e: &KubeconfigError) -> String {
    let file = |what: &str, load: &LoadDataError| match load {
        LoadDataError::ReadFile(io, path) => {
            format!("cannot read the {what} {}: {io}", path.display())
        }
        other => format!("cannot load the {what}: {}", first_line(other)),
    };
    match e {
        KubeconfigError::ReadConfig(io, path) => format!("cannot read {}: {io}", path.display()),
        KubeconfigError::LoadCertificateAuthority(load) => file("certificate authority", load),
        KubeconfigError::LoadClientCertificate(load) => file("client certificate", load),
        KubeconfigError::LoadClientKey(load) => file("client key", load),
        other => first_line(other),
    }
}

/// The YAML parser appends a source excerpt on further lines; the first says it all.
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A client for `config` whose watch streams mark a failing kind as recovered in
/// `state` when a bookmark arrives. Must be called inside the tokio runtime.
pub fn client(config: kube::Config, state: &SharedState) -> Result<kube::Client, String> {
    let builder = ClientBuilder::try_from(config)
        .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
    Ok(builder
        .with_layer(&RecoveryLayer::new(state.clone()))
        .build())
}
