//! The webhook's decision for one pod: resolve its volumes, then build the patch.
//! Shared by `/mutate` and `volguard explain`, so both say the same thing.

use crate::{
    cluster::{ClusterState, Missing},
    decide::{
        mutate::{Mutation, mutate},
        resolve::{Resolution, resolve},
    },
    model::{config::Config, drivers::Drivers, podview::PodView},
};

/// What the webhook decided for one request.
#[derive(Debug)]
pub enum Decision {
    /// Not a pod CREATE, opted out, or nothing managed: allowed as is.
    Untouched,
    /// Allowed with a patch (possibly empty) and warnings about the pod's own annotations.
    Mutated {
        /// The computed mutation.
        mutation: Mutation,
        /// Problems in what the user wrote.
        warnings: Vec<String>,
    },
    /// volguard could not do its job for this pod.
    Trouble(String),
}

/// Runs resolve + mutate for a pod against the state.
pub fn decide(
    pod: &PodView,
    namespace: &str,
    state: &ClusterState,
    config: &Config,
) -> Result<Decision, Missing> {
    let resolution = resolve(pod, namespace, state, config)?;
    Ok(finish(pod, resolution, config, state.drivers()))
}

/// The decision for a pod whose volumes are resolved: the patch, built without the
/// cluster state, so a server can release the state before building it.
pub fn finish(
    pod: &PodView,
    resolution: Resolution,
    config: &Config,
    drivers: &Drivers,
) -> Decision {
    if resolution.volumes.is_empty() && resolution.warnings.is_empty() {
        return Decision::Untouched;
    }
    let mut mutation = mutate(pod, &resolution, config, drivers);
    let mut warnings = resolution.warnings;
    warnings.append(&mut mutation.warnings);
    Decision::Mutated { mutation, warnings }
}
