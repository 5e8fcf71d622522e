//! Pods the scheduler was told fit but that the cluster state does not show bound yet
//! (README: "Bursts: placements in flight").
//!
//! kube-scheduler starts the next pod's cycle as soon as it has assumed the last one,
//! milliseconds before that pod's binding reaches volguard's watch. Judged against the
//! watch alone, a burst would see every node as empty as before it started. Each pod
//! that `/filter` passes is therefore remembered with the nodes it may land on, until
//! the state shows it bound, it is deleted or replaced, it asks again, or it expires.
//! Pure data: the clock is passed in.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use crate::{
    cluster::ClusterState,
    model::drivers::{DriverId, VolumeId},
};

/// How long a placement counts without being seen bound. A binding normally shows in
/// the watch within milliseconds; one that waits for a provisioner (a
/// WaitForFirstConsumer claim) may take longer, and stops being counted after this.
pub const EXPIRY: Duration = Duration::from_secs(30);

/// At most this many pods in flight. Bindings normally show within milliseconds, so
/// a few are in flight at a time; this many means the Pod watch lags far behind the
/// scheduler, and new pods wait (their `/filter` answers `Error`) rather than the set
/// growing (each placement holds the names of the nodes it passed).
pub const MAX_PODS: usize = 512;

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

/// Node names from the cluster state: trusted, so a fast hasher.
type NodeSet = HashSet<Arc<str>, foldhash::fast::RandomState>;

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
#[derive(Debug, Clone)]
pub struct Placement {
    /// `namespace/name`.
    pub pod: String,
    /// `metadata.uid` as the scheduler sent it (absent in hand-written requests).
    pub uid: Option<String>,
    /// When `/filter` passed it.
    pub since: Duration,
    /// The cluster state knew the pod then: its disappearance later is a deletion.
    pub known_to_state: bool,
    /// The nodes `/filter` passed: the scheduler binds it to one of these or none.
    candidates: NodeSet,
    /// The node `/prioritize` scored highest, once it was asked.
    pub guess: Option<Arc<str>>,
    /// What it puts on its node.
    pub needs: Needs,
    /// A `/filter` already waited for it in vain: later ones do not wait again.
    pub waited_out: bool,
}

impl Placement {
    /// A pod `/filter` passed on `candidates`.
    pub fn new(
        pod: String,
        uid: Option<String>,
        since: Duration,
        known_to_state: bool,
        candidates: impl IntoIterator<Item = Arc<str>>,
        needs: Needs,
    ) -> Self {
        Placement {
            pod,
            uid,
            since,
            known_to_state,
            candidates: candidates.into_iter().collect(),
            guess: None,
            needs,
            waited_out: false,
        }
    }

    /// The pod may be bound to `node`.
    pub fn may_be_on(&self, node: &str, presume: Presume) -> bool {
        match presume {
            Presume::Anywhere => self.candidates.contains(node),
            Presume::AtGuess => self.guess.as_deref() == Some(node),
        }
    }

    /// The pod may be bound to a node other than `node`.
    pub fn may_be_elsewhere(&self, node: &str, presume: Presume) -> bool {
        match presume {
            Presume::Anywhere => {
                self.candidates.len() > 1
                    || (self.candidates.len() == 1 && !self.candidates.contains(node))
            }
            Presume::AtGuess => self.guess.as_deref().is_some_and(|g| g != node),
        }
    }

    /// What became of it, as the cluster state shows it now.
    fn settled(&self, state: &ClusterState, now: Duration) -> bool {
        if now.saturating_sub(self.since) >= EXPIRY {
            return true;
        }
        let (namespace, name) = self.pod.split_once('/').unwrap_or(("", &self.pod));
        match state.pod(namespace, name) {
            // Deleted since.
            None => self.known_to_state,
            Some(rec) => {
                let same = match (&self.uid, &rec.uid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                // Replaced by a pod of the same name, or bound (now counted by the
                // state itself), or done.
                !same || rec.node.is_some() || rec.terminal || rec.deleting
            }
        }
    }
}

/// Every pod in flight, by `namespace/name`.
#[derive(Debug, Default)]
pub struct InFlight {
    placements: HashMap<String, Arc<Placement>>,
}

impl InFlight {
    /// Forgets the placements the state now accounts for, or that expired.
    pub fn settle(&mut self, state: &ClusterState, now: Duration) {
        self.placements.retain(|_, p| !p.settled(state, now));
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

    /// Remembers a pod `/filter` passed, replacing its earlier placement; not when the
    /// state accounts for it already (a pod asked about after it was bound).
    pub fn record(&mut self, placement: Placement, state: &ClusterState) {
        if placement.settled(state, placement.since) {
            self.placements.remove(&placement.pod);
            return;
        }
        self.placements
            .insert(placement.pod.clone(), Arc::new(placement));
    }

    /// Forgets a pod: it asked again and fits nowhere.
    pub fn forget(&mut self, pod: &str) {
        self.placements.remove(pod);
    }

    /// Notes the node `/prioritize` scored highest for `pod`.
    pub fn guess(&mut self, pod: &str, node: Arc<str>) {
        if let Some(p) = self.placements.get_mut(pod) {
            Arc::make_mut(p).guess = Some(node);
        }
    }

    /// Marks placements a `/filter` waited for in vain.
    pub fn waited_out<'a>(&mut self, pods: impl IntoIterator<Item = &'a str>) {
        for pod in pods {
            if let Some(p) = self.placements.get_mut(pod) {
                Arc::make_mut(p).waited_out = true;
            }
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
