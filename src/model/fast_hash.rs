//! The hash maps and sets of the cluster state, the driver table and the extender's
//! per-node lookups, looked up per node of every scheduling request and per object at
//! start. Their keys come from the operator's config, the snapshot, or objects the
//! authenticated API server delivers (tenants choose pod and claim names, but nothing
//! shows them the hash order), and the hasher is seeded at random per process: a fast
//! hasher beats SipHash's flood resistance here. An extender request's node names are
//! deduplicated with one too: the body limit bounds them and no answer reveals the
//! order. The webhook's per-review sets keep SipHash.

use std::collections::{HashMap, HashSet};

/// A map with a fast hasher; build it with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A set with a fast hasher; build it with `FastSet::default()`.
pub type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
