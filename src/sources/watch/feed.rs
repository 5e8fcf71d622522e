//! Watch events into the cluster state, one kind at a time: applies and deletes as they
//! come, and relists that drop whatever vanished while the watch was away.

use std::collections::HashSet;

use kube::runtime::watcher::Event;

use crate::cluster::{ClusterObject, ClusterState, Kind, state::object_key};

/// One kind's event consumer; it remembers the keys of a relist in progress.
#[derive(Debug)]
pub struct Feed {
    kind: Kind,
    listing: Option<HashSet<String>>,
}

impl Feed {
    /// A consumer for `kind`'s events.
    pub fn new(kind: Kind) -> Self {
        Feed {
            kind,
            listing: None,
        }
    }

    /// Applies one event. Listed objects are applied on arrival and only their keys are
    /// kept until the list ends, so relisting 150,000 pods never holds 150,000 pods.
    pub fn handle(&mut self, state: &mut ClusterState, event: Event<ClusterObject>) {
        match event {
            Event::Apply(o) => state.apply(&o),
            Event::Delete(o) => state.delete_reported(&o),
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(o) => {
                if let Some(listing) = &mut self.listing {
                    listing.insert(object_key(&o));
                }
                state.apply(&o);
            }
            Event::InitDone => match self.listing.take() {
                Some(listed) => state.finish_relist(self.kind, &listed),
                None => state.mark_synced(self.kind),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::model::{config::Config, drivers::Drivers};

    fn claim(name: &str) -> ClusterObject {
        ClusterObject::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"storageClassName": "linode-block-storage"}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_keeps_what_it_listed_and_drops_the_rest() {
        let config = Arc::new(Config::default());
        let mut state = ClusterState::new(config.clone(), Arc::new(Drivers::new(&config)));
        let mut feed = Feed::new(Kind::PersistentVolumeClaim);
        feed.handle(&mut state, Event::Apply(claim("kept")));
        feed.handle(&mut state, Event::Apply(claim("vanished")));
        assert!(state.unsynced().contains(&Kind::PersistentVolumeClaim));

        feed.handle(&mut state, Event::Init);
        feed.handle(&mut state, Event::InitApply(claim("kept")));
        feed.handle(&mut state, Event::InitApply(claim("new")));
        assert!(
            state.pvc("shop", "vanished").is_some(),
            "dropped only when the list is complete"
        );
        feed.handle(&mut state, Event::InitDone);
        assert!(state.pvc("shop", "kept").is_some());
        assert!(state.pvc("shop", "new").is_some());
        assert!(state.pvc("shop", "vanished").is_none());
        assert!(!state.unsynced().contains(&Kind::PersistentVolumeClaim));

        feed.handle(&mut state, Event::Delete(claim("new")));
        assert!(state.pvc("shop", "new").is_none());
    }
}
