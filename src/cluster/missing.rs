//! What the cluster state lacks when a pod refers to it: often a cache that has not
//! seen a just-created object yet, so the webhook may fetch it directly.

/// An object a pod refers to that the state does not hold: volguard's own trouble,
/// never the pod's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Missing {
    /// The claim is not in the cache.
    #[error("PersistentVolumeClaim {namespace}/{name} not found")]
    Claim {
        /// The pod's namespace.
        namespace: String,
        /// The claim name.
        name: String,
    },
    /// The claim is bound to a PV that is not in the cache.
    #[error("PersistentVolume {pv} (bound to claim {namespace}/{claim}) not found")]
    Volume {
        /// The pod's namespace.
        namespace: String,
        /// The claim name.
        claim: String,
        /// The PV name.
        pv: String,
    },
}
