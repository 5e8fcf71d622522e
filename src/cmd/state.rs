//! Where a one-shot command (`explain`, `nodes`) gets the cluster state: snapshot files,
//! or one list of every kind from the live API server, through the same code that
//! fills `volguard serve`'s cache.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;

use crate::{
    cluster::{ClusterState, SharedState},
    cmd::failure::Failure,
    model::{config::Config, drivers::Drivers},
    sources::{snapshot, watch},
};

/// How long a live command waits for the API server to list every kind.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the cluster state comes from: files, or the API server.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// Cluster state from these files (YAML/JSON, or a directory); without it, the live
    /// cluster (in-cluster config, $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "VOLGUARD_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,
    /// Kubeconfig of the live cluster.
    #[arg(long, env = "VOLGUARD_KUBECONFIG", conflicts_with = "snapshot")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, env = "VOLGUARD_CONTEXT", conflicts_with = "snapshot")]
    pub context: Option<String>,
    /// Config file (YAML); built-in defaults when absent.
    #[arg(long, env = "VOLGUARD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The live API: a runtime to drive it and a client, for the reads a command adds.
pub struct Live {
    /// Runs the client's requests.
    pub runtime: tokio::runtime::Runtime,
    /// Authenticated as the kubeconfig or service account says.
    pub client: kube::Client,
}

/// A synced cluster state, and the live API when it came from there.
pub struct Loaded {
    /// The validated config.
    pub config: Arc<Config>,
    /// Every kind listed.
    pub state: ClusterState,
    /// Set when the state came from the API server.
    pub live: Option<Live>,
}

/// Loads the config, then the state from the snapshot or the live API server.
pub fn load(args: &StateArgs) -> Result<Loaded, Failure> {
    let config = Arc::new(Config::load(args.config.as_deref()).map_err(Failure::usage)?);
    let drivers = Arc::new(Drivers::new(&config));
    let mut state = ClusterState::new(config.clone(), drivers.clone());
    if let Some(path) = &args.snapshot {
        snapshot::load_into(path, &mut state).map_err(Failure::usage)?;
        return Ok(Loaded {
            config,
            state,
            live: None,
        });
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::runtime(format!("cannot start the runtime: {e}")))?;
    let (kube_config, origin) = runtime
        .block_on(watch::kube_config(
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
        ))
        .map_err(Failure::usage)?;
    let api = kube_config.cluster_url.to_string();
    let shared = SharedState::new(state);
    let client = runtime.block_on(async {
        let client = watch::client(kube_config, &shared)
            .map_err(|e| Failure::usage(format!("{origin}: {e}")))?;
        watch::list_once(client.clone(), &api, shared.clone(), LIST_TIMEOUT)
            .await
            .map_err(|e| Failure::runtime(format!("{api} ({origin}): {e}")))?;
        Ok::<_, Failure>(client)
    })?;
    let state = {
        let mut guard = shared
            .write()
            .map_err(|_| Failure::runtime("cluster state lock poisoned"))?;
        std::mem::replace(&mut *guard, ClusterState::new(config.clone(), drivers))
    };
    Ok(Loaded {
        config,
        state,
        live: Some(Live { runtime, client }),
    })
}
