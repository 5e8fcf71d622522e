//! Deletions the watch reported lately, so that an object read by a direct GET that was
//! in flight while it was deleted is not put back into the state. Only the kinds the
//! webhook fetches directly (claims and PersistentVolumes) are remembered, and only the
//! latest few thousand: a GET lasts at most seconds, and pods, which churn far more,
//! never push a claim's deletion out.

use std::collections::{HashMap, VecDeque};

use super::objects::Kind;

/// How many deletions are remembered; the oldest is forgotten first.
pub const REMEMBERED_DELETIONS: usize = 4096;

/// Who was deleted, and at which resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The deleted object's `metadata.uid`.
    pub uid: Option<String>,
    /// The `metadata.resourceVersion` the DELETED event carried.
    pub resource_version: Option<String>,
}

/// The latest deletions per kind and key, bounded by [`REMEMBERED_DELETIONS`].
#[derive(Debug, Default)]
pub struct RecentDeletions {
    by_key: HashMap<(Kind, String), (u64, Deletion)>,
    /// Keys in the order they were recorded, with the sequence number of that record.
    order: VecDeque<(u64, Kind, String)>,
    next: u64,
}

impl RecentDeletions {
    /// Remembers that the object under `key` was deleted; replaces an earlier deletion of
    /// the same key, and forgets the oldest beyond the bound.
    pub fn record(&mut self, kind: Kind, key: &str, deletion: Deletion) {
        let seq = self.next;
        self.next += 1;
        self.by_key.insert((kind, key.to_owned()), (seq, deletion));
        self.order.push_back((seq, kind, key.to_owned()));
        while self.by_key.len() > REMEMBERED_DELETIONS {
            let Some((seq, kind, key)) = self.order.pop_front() else {
                break;
            };
            let entry = (kind, key);
            if self.by_key.get(&entry).is_some_and(|(s, _)| *s == seq) {
                self.by_key.remove(&entry);
            }
        }
        // Replaced records leave their old place in the order behind; drop those too, so
        // the order never grows past twice the bound.
        if self.order.len() > 2 * REMEMBERED_DELETIONS {
            let by_key = &self.by_key;
            self.order.retain(|(seq, kind, key)| {
                by_key
                    .get(&(*kind, key.clone()))
                    .is_some_and(|(s, _)| s == seq)
            });
        }
    }

    /// The latest remembered deletion of `key`.
    pub fn get(&self, kind: Kind, key: &str) -> Option<&Deletion> {
        self.by_key
            .get(&(kind, key.to_owned()))
            .map(|(_, deletion)| deletion)
    }

    /// An object read as `uid` at `resource_version` is known to be older than a deletion
    /// of its key the watch reported: the same object (same uid), or a resourceVersion
    /// not newer than the deletion's. resourceVersions are compared as numbers when both
    /// parse as such (etcd's are); otherwise, as kube itself does, only their equality
    /// means anything, and a different one is taken as a new object.
    pub fn outdates(
        &self,
        kind: Kind,
        key: &str,
        uid: Option<&str>,
        resource_version: Option<&str>,
    ) -> bool {
        let Some(deleted) = self.get(kind, key) else {
            return false;
        };
        if uid.is_some() && uid == deleted.uid.as_deref() {
            return true;
        }
        match (resource_version, deleted.resource_version.as_deref()) {
            (Some(read), Some(gone)) => match (read.parse::<u64>(), gone.parse::<u64>()) {
                (Ok(read), Ok(gone)) => read <= gone,
                _ => read == gone,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVC: Kind = Kind::PersistentVolumeClaim;

    fn deleted(uid: &str, rv: &str) -> Deletion {
        Deletion {
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn versions_compare_as_numbers_when_both_are() {
        let mut d = RecentDeletions::default();
        d.record(PVC, "shop/data", deleted("u1", "100"));
        let outdated = |uid, rv| d.outdates(PVC, "shop/data", Some(uid), Some(rv));
        assert!(
            outdated("u1", "250"),
            "the same object, whatever its version"
        );
        assert!(outdated("u2", "99"), "read before the deletion");
        assert!(outdated("u2", "100"));
        assert!(!outdated("u2", "101"), "created again after the deletion");
        assert!(
            outdated("u2", "20"),
            "20 < 100 as numbers, though not as text"
        );
        assert!(!d.outdates(PVC, "shop/other", Some("u1"), Some("1")));
        assert!(!d.outdates(Kind::PersistentVolume, "shop/data", Some("u1"), Some("1")));
    }

    #[test]
    fn other_versions_compare_only_for_equality() {
        let mut d = RecentDeletions::default();
        d.record(PVC, "shop/data", deleted("u1", "a7"));
        assert!(d.outdates(PVC, "shop/data", Some("u2"), Some("a7")));
        assert!(!d.outdates(PVC, "shop/data", Some("u2"), Some("a6")));
        assert!(!d.outdates(PVC, "shop/data", Some("u2"), Some("100")));
        assert!(!d.outdates(PVC, "shop/data", None, None));
    }

    #[test]
    fn the_latest_deletion_counts_and_the_oldest_are_forgotten() {
        let mut d = RecentDeletions::default();
        d.record(PVC, "shop/data", deleted("u1", "100"));
        d.record(PVC, "shop/data", deleted("u2", "300"));
        assert_eq!(d.get(PVC, "shop/data"), Some(&deleted("u2", "300")));
        assert!(d.outdates(PVC, "shop/data", Some("u3"), Some("200")));
        for i in 0..3 * REMEMBERED_DELETIONS {
            d.record(PVC, &format!("shop/c{i}"), deleted("u", "1"));
            d.record(PVC, "shop/hot", deleted("u", &i.to_string()));
        }
        assert_eq!(d.by_key.len(), REMEMBERED_DELETIONS);
        assert!(d.order.len() <= 2 * REMEMBERED_DELETIONS + 1);
        assert_eq!(d.get(PVC, "shop/data"), None, "forgotten");
        let last = 3 * REMEMBERED_DELETIONS - 1;
        assert!(d.get(PVC, &format!("shop/c{last}")).is_some());
        assert!(
            d.get(PVC, "shop/hot").is_some(),
            "recorded again, not forgotten"
        );
    }
}
