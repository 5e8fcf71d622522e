//! One direct GET for what the webhook's cache lacks: a StatefulSet creates a pod's
//! claim a moment before the pod, so the watch may not have delivered it yet.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Client};
use tokio::time::Instant;

use super::kinds::Watched;
use crate::cluster::{Fetched, Missing, SharedState};

/// How long the webhook waits for direct GETs of one pod, in total: well inside the
/// webhook's own timeout, so a slow API costs a warning, not a failed admission.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(2);

/// GETs the one object `miss` names (the claim, or the PV bound to it) and applies it
/// to the state, unless the watch delivered it meanwhile or reported its deletion
/// after the GET read it; the error says why not, in words fit for a webhook warning
/// (a failed request's whole cause is logged).
pub async fn fetch_missing(
    client: &Client,
    miss: &Missing,
    state: &SharedState,
    deadline: Instant,
) -> Result<(), String> {
    let object = match miss {
        Missing::Claim { namespace, name } => {
            let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
            get(&api, name, deadline).await?.into_object()
        }
        Missing::Volume { pv, .. } => {
            let api = Api::<PersistentVolume>::all(client.clone());
            get(&api, pv, deadline).await?.into_object()
        }
    };
    let mut state = state
        .write()
        .map_err(|_| "cluster state is unavailable".to_owned())?;
    match state.apply_fetched(&object) {
        Fetched::Applied | Fetched::Cached => Ok(()),
        Fetched::DeletedMeanwhile => Err("deleted while the GET was in flight".into()),
    }
}

async fn get<K: Watched>(api: &Api<K>, name: &str, deadline: Instant) -> Result<K, String> {
    match tokio::time::timeout_at(deadline, api.get_opt(name)).await {
        Err(_) => Err(format!(
            "no answer within {}s",
            DIRECT_GET_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => {
            tracing::warn!(
                kind = K::KIND.as_str(),
                name,
                "direct GET failed: {}",
                super::cause::chain(&e)
            );
            Err(super::cause::brief(&e))
        }
        Ok(Ok(None)) => Err("not found either".into()),
        Ok(Ok(Some(object))) => Ok(object),
    }
}
