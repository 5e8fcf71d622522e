//! Pods the scheduler was told fit but that the cluster state does not show bound yet
//! (docs/scheduling.md, "Bursts: placements in flight").
//!
//! kube-scheduler starts the next pod's cycle as soon as it has assumed the last one,
//! milliseconds before that pod's binding reaches volguard's watch. Judged against the
//! watch alone, a burst would see every node as empty as before it started. Each pod
//! that `/filter` passes is therefore remembered with the nodes it may land on, until
//! the state shows it bound, it is deleted or replaced, it asks again, or it expires.
//! Pure data: the clock is passed in.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{
    cluster::ClusterState,
    model::{
        drivers::{DriverId, VolumeId},
        fast_hash::{FastMap, FastSet},
    },
};

/// How long a placement counts at most without the state accounting for it: longer
/// than kube-scheduler's own binding window (VolumeBinding's `bindTimeoutSeconds`,
/// 600 s, while a WaitForFirstConsumer claim waits for its provisioner). A placement
/// normally ends much sooner, on evidence: see [`InFlight::settle`].
pub const EXPIRY: Duration = Duration::from_secs(660);

/// At most this many pods in flight. Bindings normally show within milliseconds, so
/// a few are in flight at a time; this many means bindings are slow (claims waiting
/// for their provisioner) or the Pod watch lags, and new pods wait (their `/filter`
/// answers `Error`) rather than the set growing (each placement holds the names of the
/// nodes it passed).
pub const MAX_PODS: usize = 512;

/// How long a placement counts while the state has never shown its pod: the watch
/// normally shows a pod before or just after the scheduler places it, so a placement
/// older than this belongs to a pod added and removed between two looks.
pub const UNSEEN_EXPIRY: Duration = Duration::from_secs(30);

/// What a pod puts on the node it lands on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// Per attach-mode driver: the volumes it uses.
    pub attach: Vec<DriverVolumes>,
    /// Its volumes usable on one node at a time (ReadWriteOnce/ReadWriteOncePod).
    pub exclusive: Vec<VolumeId>,
}

impl Needs {
    /// Nothing another pod's verdict could depend on.
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.exclusive.is_empty()
    }
}

/// A pod's volumes of one attach-mode driver.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverVolumes {
    /// The driver.
    pub driver: DriverId,
    /// Volumes with a handle.
    pub known: Vec<VolumeId>,
    /// Unbound claims: one new attachment each, wherever the pod lands.
    pub pending: u32,
}

/// Node names from the cluster state.
type NodeSet = FastSet<Arc<str>>;

/// Where the judge presumes the placements in flight are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presume {
    /// On every node `/filter` passed them for: what `/filter` judges by, so that no
    /// order of bindings can overshoot a limit or split an exclusive volume.
    Anywhere,
    /// On the node `/prioritize` scored highest for them: what scores spread by.
    AtGuess,
}

/// One pod in flight.
#[derive(Debug)]
pub struct Placement {
    /// `namespace/name`.
    pub pod: String,
    /// `metadata.uid` as the scheduler sent it (absent in hand-written requests).
    pub uid: Option<String>,
    /// When `/filter` passed it.
    pub since: Duration,
    /// The uid the state held under this name when the placement was made, when it
    /// was another pod's: an earlier pod of the same name (a StatefulSet's) that the
    /// watch has not shown replaced yet. Seeing it still is no news.
    earlier: Option<String>,
    /// The state has shown this very pod: its disappearance later is a deletion.
    seen: AtomicBool,
    /// The nodes `/filter` passed: the scheduler binds it to one of these or none.
    candidates: NodeSet,
    /// The node `/prioritize` scored highest, once it was asked.
    guess: OnceLock<Arc<str>>,
    /// What it puts on its node.
    pub needs: Needs,
    /// A `/filter` already waited for it in vain: later ones do not wait again.
    waited_out: AtomicBool,
}

impl Placement {
    /// A pod `/filter` passed on `candidates`, as the state shows it (or not) now.
    pub fn new(
        pod: String,
        uid: Option<String>,
        since: Duration,
        state: &ClusterState,
        candidates: impl IntoIterator<Item = Arc<str>>,
        needs: Needs,
    ) -> Self {
        let placement = Placement {
            pod,
            uid,
            since,
            earlier: None,
            seen: AtomicBool::new(false),
            candidates: candidates.into_iter().collect(),
            guess: OnceLock::new(),
            needs,
            waited_out: AtomicBool::new(false),
        };
        let earlier = match placement.in_state(state) {
            Some(rec) if !placement.is_this(rec.uid.as_deref()) => rec.uid.clone(),
            _ => None,
        };
        Placement {
            earlier,
            ..placement
        }
    }

    /// The pod may be bound to `node`.
    pub fn may_be_on(&self, node: &str, presume: Presume) -> bool {
        match presume {
            Presume::Anywhere => self.candidates.contains(node),
            Presume::AtGuess => self.guess.get().is_some_and(|g| &**g == node),
        }
    }

    /// The pod may be bound to a node other than `node`.
    pub fn may_be_elsewhere(&self, node: &str, presume: Presume) -> bool {
        match presume {
            Presume::Anywhere => {
                self.candidates.len() > 1
                    || (self.candidates.len() == 1 && !self.candidates.contains(node))
            }
            Presume::AtGuess => self.guess.get().is_some_and(|g| &**g != node),
        }
    }

    /// A `/filter` waited for it in vain already.
    pub fn waited_out(&self) -> bool {
        self.waited_out.load(Ordering::Relaxed)
    }

    fn in_state<'s>(
        &self,
        state: &'s ClusterState,
    ) -> Option<&'s crate::cluster::records::PodRecord> {
        let (namespace, name) = self.pod.split_once('/').unwrap_or(("", &self.pod));
        state.pod(namespace, name)
    }

    /// A record of this uid is this pod (either uid unknown: the name decides).
    fn is_this(&self, uid: Option<&str>) -> bool {
        match (self.uid.as_deref(), uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// The state accounts for the pod now, or shows it gone or replaced, or the
    /// placement expired.
    fn settled(&self, state: &ClusterState, now: Duration) -> bool {
        matches!(self.status(state, now), Status::Settled)
    }

    /// What the state says of the pod now.
    fn status(&self, state: &ClusterState, now: Duration) -> Status {
        if now.saturating_sub(self.since) >= EXPIRY {
            return Status::Settled;
        }
        let unseen_for = now.saturating_sub(self.since);
        let Some(rec) = self.in_state(state) else {
            // Deleted once seen; not seen yet otherwise (the watch lags), unless for
            // long (added and deleted between two looks).
            let gone = self.seen.load(Ordering::Relaxed) || unseen_for >= UNSEEN_EXPIRY;
            return if gone {
                Status::Settled
            } else {
                Status::InFlight
            };
        };
        if !self.is_this(rec.uid.as_deref()) {
            // Still the earlier pod of this name, or already a later one.
            return match rec.uid == self.earlier {
                true => Status::InFlight,
                false => Status::Settled,
            };
        }
        self.seen.store(true, Ordering::Relaxed);
        if rec.terminal || rec.deleting {
            return Status::Settled;
        }
        // Bound, with every volume it needs counted by the state on its node; or bound
        // while a claim's binding has not reached the state yet: counted there only.
        match &rec.node {
            Some(_) if self.counted(state) => Status::Settled,
            Some(node) if self.candidates.len() > 1 || !self.candidates.contains(node) => {
                Status::BoundTo(node.clone())
            }
            _ => Status::InFlight,
        }
    }

    /// The state counts on the pod's node every volume it needs, driver by driver:
    /// each one it knew, and as many of the driver's as it needed in all (its unbound
    /// claims bound since).
    fn counted(&self, state: &ClusterState) -> bool {
        let (namespace, name) = self.pod.split_once('/').unwrap_or(("", &self.pod));
        let counted = state.pod_volumes(namespace, name);
        self.needs.attach.iter().all(|d| {
            let of_driver = counted.iter().filter(|v| v.driver == d.driver).count();
            d.known.iter().all(|v| counted.contains(v))
                && of_driver >= d.known.len() + d.pending as usize
        })
    }
}

/// What became of a placement.
enum Status {
    /// The state accounts for the pod, or it is gone, or the placement expired.
    Settled,
    /// Bound to this node, its volumes not all counted by the state yet.
    BoundTo(Arc<str>),
    /// Not bound yet, as far as the state shows.
    InFlight,
}

/// Every pod in flight, by `namespace/name`.
#[derive(Debug, Default)]
pub struct InFlight {
    placements: FastMap<String, Arc<Placement>>,
}

impl InFlight {
    /// Forgets the placements the state now accounts for, or that expired; narrows
    /// those the state shows bound, whose volumes it does not count yet, to their node.
    pub fn settle(&mut self, state: &ClusterState, now: Duration) {
        self.placements.retain(|_, p| match p.status(state, now) {
            Status::Settled => false,
            Status::InFlight => true,
            Status::BoundTo(node) => {
                *p = Arc::new(Placement {
                    pod: p.pod.clone(),
                    uid: p.uid.clone(),
                    since: p.since,
                    earlier: p.earlier.clone(),
                    seen: AtomicBool::new(true),
                    candidates: std::iter::once(node.clone()).collect(),
                    guess: OnceLock::from(node.clone()),
                    needs: p.needs.clone(),
                    waited_out: AtomicBool::new(p.waited_out()),
                });
                true
            }
        });
    }

    /// The placements of every pod but `pod` whose needs touch `needs`: a driver or an
    /// exclusive volume in common.
    pub fn touching(&self, pod: &str, needs: &Needs) -> Vec<Arc<Placement>> {
        self.placements
            .values()
            .filter(|p| p.pod != pod && shares(&p.needs, needs))
            .cloned()
            .collect()
    }

    /// Remembers a pod `/filter` passed, replacing its earlier placement (and keeping
    /// that one's wait spent); not when the state accounts for it already (a pod asked
    /// about after it was bound).
    pub fn record(&mut self, placement: Placement, state: &ClusterState) {
        if placement.settled(state, placement.since) {
            self.placements.remove(&placement.pod);
            return;
        }
        if let Some(old) = self.placements.get(&placement.pod)
            && old.uid == placement.uid
            && old.waited_out()
        {
            placement.waited_out.store(true, Ordering::Relaxed);
        }
        self.placements
            .insert(placement.pod.clone(), Arc::new(placement));
    }

    /// Forgets a pod: it asked again and fits nowhere.
    pub fn forget(&mut self, pod: &str) {
        self.placements.remove(pod);
    }

    /// Notes the node `/prioritize` scored highest for `pod` (the first answer stands:
    /// a retry asks `/filter` first, which makes a new placement).
    pub fn guess(&self, pod: &str, node: Arc<str>) {
        if let Some(p) = self.placements.get(pod) {
            let _ = p.guess.set(node);
        }
    }

    /// Marks placements a `/filter` waited for in vain.
    pub fn waited_out<'a>(&self, placements: impl IntoIterator<Item = &'a Arc<Placement>>) {
        for p in placements {
            p.waited_out.store(true, Ordering::Relaxed);
        }
    }

    /// The set is full and `pod` is not in it: see [`MAX_PODS`].
    pub fn is_full_for(&self, pod: &str) -> bool {
        self.placements.len() >= MAX_PODS && !self.placements.contains_key(pod)
    }

    /// How many pods are in flight.
    pub fn len(&self) -> usize {
        self.placements.len()
    }

    /// No pod is in flight.
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
    }
}

fn shares(a: &Needs, b: &Needs) -> bool {
    a.attach
        .iter()
        .any(|x| b.attach.iter().any(|y| x.driver == y.driver))
        || a.exclusive.iter().any(|v| b.exclusive.contains(v))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        cluster::ClusterObject,
        model::{config::Config, drivers::Drivers},
    };

    fn state() -> ClusterState {
        let config = Arc::new(Config::default());
        let drivers = Arc::new(Drivers::new(&config));
        ClusterState::new(config, drivers)
    }

    fn placement(state: &ClusterState, since: Duration) -> Placement {
        let needs = Needs {
            attach: vec![DriverVolumes {
                driver: crate::model::drivers::DriverId(1),
                known: Vec::new(),
                pending: 1,
            }],
            exclusive: Vec::new(),
        };
        let nodes: Vec<Arc<str>> = vec!["n0".into(), "n1".into()];
        Placement::new(
            "shop/p".into(),
            Some("uid-p".into()),
            since,
            state,
            nodes,
            needs,
        )
    }

    /// A pod the state never showed (added and deleted between two looks) stops
    /// counting after [`UNSEEN_EXPIRY`]; one it showed, once it is gone.
    #[test]
    fn a_pod_never_seen_stops_counting_after_a_while() {
        let mut state = state();
        let mut flight = InFlight::default();
        flight.record(placement(&state, Duration::ZERO), &state);
        flight.settle(&state, UNSEEN_EXPIRY - Duration::from_secs(1));
        assert_eq!(flight.len(), 1, "the watch may lag: still counted");
        flight.settle(&state, UNSEEN_EXPIRY);
        assert!(flight.is_empty());

        flight.record(placement(&state, Duration::ZERO), &state);
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop", "uid": "uid-p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        state.apply(&ClusterObject::from_value(pod).unwrap());
        flight.settle(&state, Duration::from_secs(1));
        assert_eq!(flight.len(), 1, "seen, not bound");
        state.delete(crate::cluster::Kind::Pod, "shop/p");
        flight.settle(&state, Duration::from_secs(2));
        assert!(flight.is_empty(), "seen, then deleted");
    }
}
