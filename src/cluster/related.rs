//! The names of the objects related to one key, as the cluster state indexes them: a
//! claim's pods, the PVs reserved for a claim, a PV's VolumeAttachments.

use smallvec::SmallVec;

use crate::model::fast_hash::{FastMap, FastSet};

/// Up to this many names are held inline and searched in order; more go to a hash set.
const FEW: usize = 8;

/// Distinct names related to one key. Nearly always one, held inline in the index (a
/// hash set per key cost about 130 bytes, a B-tree set about 280); up to [`FEW`] in a
/// short list; past it (a ReadWriteMany claim of thousands of pods) a hash set, so that
/// adding or removing one stays cheap however many there are, until they are few
/// again. In no particular order.
#[derive(Debug, Clone)]
pub enum Names {
    /// At most [`FEW`], inline.
    Few(SmallVec<[String; 1]>),
    /// More than [`FEW`], until half as many are left.
    Many(FastSet<String>),
}

impl Default for Names {
    fn default() -> Self {
        Names::Few(SmallVec::new())
    }
}

impl Names {
    /// Each name once.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (few, many) = match self {
            Names::Few(names) => (Some(names.iter()), None),
            Names::Many(names) => (None, Some(names.iter())),
        };
        few.into_iter()
            .flatten()
            .chain(many.into_iter().flatten())
            .map(String::as_str)
    }

    /// A copy, for walking the names while the index changes.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }

    fn insert(&mut self, name: &str) {
        match self {
            Names::Few(names) if names.iter().any(|n| n == name) => {}
            Names::Few(names) if names.len() < FEW => names.push(name.to_owned()),
            Names::Few(names) => {
                let mut set: FastSet<String> = names.drain(..).collect();
                set.insert(name.to_owned());
                *self = Names::Many(set);
            }
            Names::Many(names) => {
                if !names.contains(name) {
                    names.insert(name.to_owned());
                }
            }
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Names::Few(names) => {
                if let Some(at) = names.iter().position(|n| n == name) {
                    names.swap_remove(at);
                }
            }
            Names::Many(names) => {
                names.remove(name);
                if names.len() <= FEW / 2 {
                    *self = Names::Few(names.drain().collect());
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Names::Few(names) => names.is_empty(),
            Names::Many(names) => names.is_empty(),
        }
    }
}

/// An index from a key to the names related to it; no key is kept without one.
pub type Related = FastMap<String, Names>;

/// Relates `name` to `key`.
pub fn relate(index: &mut Related, key: &str, name: &str) {
    match index.get_mut(key) {
        Some(names) => names.insert(name),
        None => index.entry(key.to_owned()).or_default().insert(name),
    }
}

/// Unrelates `name` from `key`, dropping `key` once nothing is related to it.
pub fn unrelate(index: &mut Related, key: &str, name: &str) {
    if let Some(names) = index.get_mut(key) {
        names.remove(name);
        if names.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(index: &Related, key: &str) -> Vec<String> {
        let mut names = index[key].to_vec();
        names.sort();
        names
    }

    #[test]
    fn names_stay_distinct_and_a_key_without_names_goes() {
        let mut index = Related::default();
        for pod in ["ns/web-2", "ns/web-0", "ns/web-1", "ns/web-0"] {
            relate(&mut index, "ns/data", pod);
        }
        assert_eq!(
            sorted(&index, "ns/data"),
            ["ns/web-0", "ns/web-1", "ns/web-2"]
        );
        // The first one added, not the last: the others stay.
        unrelate(&mut index, "ns/data", "ns/web-2");
        unrelate(&mut index, "ns/data", "ns/absent");
        unrelate(&mut index, "ns/other", "ns/web-0");
        assert_eq!(sorted(&index, "ns/data"), ["ns/web-0", "ns/web-1"]);
        unrelate(&mut index, "ns/data", "ns/web-0");
        unrelate(&mut index, "ns/data", "ns/web-1");
        assert!(index.is_empty(), "{index:?}");
    }

    #[test]
    fn many_names_move_to_a_set_and_back_keeping_every_one_once() {
        let mut index = Related::default();
        let pods: Vec<String> = (0..FEW * 3).map(|i| format!("ns/pod-{i:03}")).collect();
        for (i, pod) in pods.iter().enumerate() {
            relate(&mut index, "ns/shared", pod);
            assert_eq!(sorted(&index, "ns/shared"), pods[..=i], "after {pod}");
        }
        assert!(matches!(index["ns/shared"], Names::Many(_)));
        for pod in &pods {
            relate(&mut index, "ns/shared", pod);
        }
        assert_eq!(sorted(&index, "ns/shared"), pods);
        for (i, pod) in pods.iter().enumerate().skip(1) {
            unrelate(&mut index, "ns/shared", pod);
            let left: Vec<String> = pods[..1].iter().chain(&pods[i + 1..]).cloned().collect();
            assert_eq!(sorted(&index, "ns/shared"), left, "after {pod}");
        }
        assert!(matches!(index["ns/shared"], Names::Few(_)), "few again");
        unrelate(&mut index, "ns/shared", "ns/pod-000");
        assert!(index.is_empty(), "{index:?}");
    }
}
