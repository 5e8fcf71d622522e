//! The hash maps and sets of the cluster state, the driver table and the extender's
//! per-node lookups. Their keys are names only the cluster's authenticated writers and
//! the operator's config choose, looked up per node of every scheduling request and per
//! object at start, so a fast hasher (randomly seeded) beats SipHash's flood resistance.

use std::collections::{HashMap, HashSet};

/// A map with a fast hasher; build it with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A set with a fast hasher; build it with `FastSet::default()`.
pub type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
