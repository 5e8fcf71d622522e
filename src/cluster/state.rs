//! The cluster-state model: slim records plus the indexes the hot paths read, kept
//! current object by object so that no request ever scans the cluster.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use smallvec::SmallVec;

use super::{
    deletions::{Deletion, RecentDeletions},
    objects::{ClusterObject, Kind},
    readiness::Readiness,
    records::{
        CsiNodeRecord, NodeRecord, PodRecord, PodVolumeRef, PvRecord, PvcRecord,
        StorageClassRecord, VaRecord, VaSource, key,
    },
    related::{Names, Related, relate, unrelate},
};
use crate::model::{
    config::Config,
    drivers::{DriverId, Drivers, VolumeId},
    fast_hash::FastMap,
    per_driver::PerDriver,
};

/// Who put a volume on a node in the usage index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Pod(String),
    Attachment(String),
    NodeStatus(Arc<str>),
}

/// Distinct volumes held by one node.
#[derive(Debug, Default)]
struct NodeUsage {
    /// How many sources name each volume on this node.
    refs: FastMap<VolumeId, u32>,
    /// Distinct volumes per driver: what the attach limit is compared with.
    per_driver: PerDriver<u32>,
}

impl NodeUsage {
    fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

/// Everything the state keeps under one node name: its Node, its CSINode and what it
/// holds. One slot per name, so that judging a candidate node costs one lookup (at
/// 5,000 candidates per call, each separate lookup is a cache miss per node).
#[derive(Debug, Default)]
struct NodeSlot {
    node: Option<NodeRecord>,
    csinode: Option<CsiNodeRecord>,
    usage: NodeUsage,
}

impl NodeSlot {
    /// Nothing is kept under the name any more: the slot can go.
    fn is_empty(&self) -> bool {
        self.node.is_none() && self.csinode.is_none() && self.usage.is_empty()
    }
}

/// A known node as the extender judges it, read with one lookup.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    /// The state's own copy of its name (see [`ClusterState::shared_name`]).
    pub name: &'a Arc<str>,
    /// Its Node.
    pub node: &'a NodeRecord,
    /// Its CSINode, if one is cached.
    pub csinode: Option<&'a CsiNodeRecord>,
    /// What it holds.
    pub holdings: Holdings<'a>,
}

/// What one node holds, looked up once to answer several questions about it.
#[derive(Debug, Clone, Copy)]
pub struct Holdings<'a>(Option<&'a NodeUsage>);

impl Holdings<'_> {
    /// Distinct volumes of `driver` attached to or used on the node.
    pub fn used(&self, driver: DriverId) -> u32 {
        self.0
            .and_then(|u| u.per_driver.get(driver))
            .copied()
            .unwrap_or(0)
    }

    /// The volume is attached to, or used on, the node already.
    pub fn holds(&self, volume: &VolumeId) -> bool {
        self.0.is_some_and(|u| u.refs.contains_key(volume))
    }
}

/// A non-terminal pod bound to a node that uses a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUser {
    /// The node it is bound to.
    pub node: Arc<str>,
    /// `namespace/name` of the pod.
    pub pod: String,
}

/// What a claim stands for, as the state shows it: the one reading of a claim for the
/// webhook's and the extender's answer about a pod and for the count of what bound pods
/// use, so that the two never disagree on which volume a claim is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClaimBinding<'s> {
    /// The claim is not in the state.
    Unknown,
    /// Bound to a PV the state does not hold.
    LostVolume {
        /// The PV's name.
        pv: &'s str,
    },
    /// The PV it is bound to, or, while it is unbound, the PV reserved for it (see
    /// [`ClusterState::reserved_pv`]), which the PV binder binds it to: either way, the
    /// volume the pod gets.
    Volume {
        /// The claim.
        pvc: &'s PvcRecord,
        /// Its PV.
        pv: &'s PvRecord,
    },
    /// Unbound with no PV reserved: its volume is still to be provisioned.
    Unbound(&'s PvcRecord),
}

/// The VolumeAttachments reporting one volume attached, as `(name, node)` sorted by
/// name.
type AttachedBy = SmallVec<[(Arc<str>, Arc<str>); 1]>;

/// The indexed cluster state. Build it with [`ClusterState::apply`] as objects arrive.
#[derive(Debug)]
pub struct ClusterState {
    drivers: Arc<Drivers>,
    config: Arc<Config>,
    /// Nodes, CSINodes and what each node holds, by node name (see [`NodeSlot`]).
    nodes: FastMap<Arc<str>, NodeSlot>,
    /// Slots with a Node, and slots with a CSINode.
    node_count: usize,
    csinode_count: usize,
    pvs: FastMap<String, PvRecord>,
    pvcs: FastMap<String, PvcRecord>,
    pods: FastMap<String, PodRecord>,
    vas: FastMap<String, VaRecord>,
    storage_classes: FastMap<String, StorageClassRecord>,

    /// What each source holds on which node, exactly as many volumes as it holds.
    contributions: FastMap<Source, (Arc<str>, Box<[VolumeId]>)>,
    /// Per volume, the nodes whose usage holds it: a request checks its pod's few
    /// volumes against thousands of candidate nodes without a lookup per node.
    holders: FastMap<VolumeId, SmallVec<[Arc<str>; 1]>>,
    /// Per volume, the bound pods using it: nearly always one, held inline.
    users: FastMap<VolumeId, SmallVec<[VolumeUser; 1]>>,
    device_holders: FastMap<VolumeId, BTreeSet<Arc<str>>>,
    /// Per volume, the nodes its VolumeAttachments report it attached to, as
    /// `(VolumeAttachment name, node)` sorted by name: remediation's evidence that a
    /// volume is elsewhere. Nearly always one, held inline: a map per volume cost
    /// about 700 bytes per VolumeAttachment.
    va_attached: FastMap<VolumeId, AttachedBy>,
    /// The volume each VolumeAttachment in `va_attached` is indexed under.
    va_attached_volume: FastMap<Arc<str>, VolumeId>,
    /// Claim -> the pods that use it.
    claim_pods: Related,
    pv_claim: FastMap<String, String>,
    /// Claim -> the PVs whose claimRef names it (a static PV reserved for a claim that
    /// a StatefulSet will create, say), bound or not.
    reserved: Related,
    /// PV -> the VolumeAttachments of it.
    pv_attachments: Related,

    deletions: RecentDeletions,
    readiness: Readiness,
    /// Writes that can change a verdict on a node: see [`ClusterState::changes`].
    changes: u64,
}

/// What became of an object a direct GET read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// It was not cached, and is now.
    Applied,
    /// The watch delivered it meanwhile; the watch's copy is kept.
    Cached,
    /// The watch reported its deletion after the GET read it: not put back.
    DeletedMeanwhile,
}

impl ClusterState {
    /// An empty, not yet synced state for these drivers.
    pub fn new(config: Arc<Config>, drivers: Arc<Drivers>) -> Self {
        ClusterState {
            drivers,
            config,
            nodes: FastMap::default(),
            node_count: 0,
            csinode_count: 0,
            pvs: FastMap::default(),
            pvcs: FastMap::default(),
            pods: FastMap::default(),
            vas: FastMap::default(),
            storage_classes: FastMap::default(),
            contributions: FastMap::default(),
            holders: FastMap::default(),
            users: FastMap::default(),
            device_holders: FastMap::default(),
            va_attached: FastMap::default(),
            va_attached_volume: FastMap::default(),
            claim_pods: FastMap::default(),
            pv_claim: FastMap::default(),
            reserved: FastMap::default(),
            pv_attachments: FastMap::default(),
            deletions: RecentDeletions::default(),
            readiness: Readiness::default(),
            changes: 0,
        }
    }

    /// The driver table the records were slimmed with.
    pub fn drivers(&self) -> &Drivers {
        &self.drivers
    }

    /// The driver table, to keep after the state is released.
    pub fn shared_drivers(&self) -> Arc<Drivers> {
        self.drivers.clone()
    }

    /// How many writes so far changed what volguard keeps of an object (its record):
    /// writes that could change a verdict. A write of a field volguard does not keep (a
    /// pending pod's conditions, which kube-scheduler itself writes, a kubelet's
    /// heartbeat in a Node's status) is not one. Compared across two `/filter` calls for
    /// one pod, it tells whether volguard learned anything in between.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Adds or replaces one object and updates every index it touches.
    pub fn apply(&mut self, object: &ClusterObject) {
        let d = self.drivers.clone();
        match object {
            ClusterObject::Node(n) => {
                let name: Arc<str> = n.metadata.name.as_deref().unwrap_or_default().into();
                let rec = NodeRecord::from_node(n, &d);
                self.count_change(self.node(&name) != Some(&rec));
                self.put_node(name, rec);
            }
            ClusterObject::CsiNode(c) => {
                let name: Arc<str> = c.metadata.name.as_deref().unwrap_or_default().into();
                let rec = CsiNodeRecord::from_csinode(c, &d);
                self.count_change(self.csinode(&name) != Some(&rec));
                let slot = self.slot_mut(&name);
                let added = slot.csinode.replace(rec).is_none();
                self.csinode_count += usize::from(added);
            }
            ClusterObject::PersistentVolume(pv) => {
                let name = pv.metadata.name.clone().unwrap_or_default();
                let rec = PvRecord::from_pv(pv, &d);
                if let Some(claim) = &rec.claim {
                    relate(&mut self.reserved, claim, &name);
                }
                self.count_change(self.pvs.get(&name) != Some(&rec));
                let old = self.pvs.insert(name.clone(), rec);
                if let Some(old) = &old {
                    self.unreserve(&name, old);
                }
                self.pv_changed(&name, old.as_ref());
            }
            ClusterObject::PersistentVolumeClaim(pvc) => {
                let k = key(
                    pvc.metadata.namespace.as_deref().unwrap_or_default(),
                    pvc.metadata.name.as_deref().unwrap_or_default(),
                );
                self.put_pvc(k, PvcRecord::from_pvc(pvc));
            }
            ClusterObject::Pod(p) => {
                let k = key(p.namespace().unwrap_or_default(), p.name());
                let config = self.config.clone();
                let mut rec = PodRecord::from_pod(p, &d, &config);
                rec.node = rec.node.map(|n| self.shared_node_name(n));
                self.put_pod(k, rec);
            }
            ClusterObject::VolumeAttachment(va) => {
                let name = va.metadata.name.clone().unwrap_or_default();
                match VaRecord::from_va(va, &d) {
                    Some(mut rec) => {
                        rec.node = self.shared_node_name(rec.node);
                        self.put_va(name, rec)
                    }
                    None => self.delete(Kind::VolumeAttachment, &name),
                }
            }
            ClusterObject::StorageClass(sc) => {
                let name = sc.metadata.name.clone().unwrap_or_default();
                let rec = StorageClassRecord::from_storage_class(sc, &d);
                self.count_change(self.storage_classes.get(&name) != Some(&rec));
                self.storage_classes.insert(name, rec);
            }
        }
    }

    /// Removes one object by kind and key (`namespace/name` for namespaced kinds).
    pub fn delete(&mut self, kind: Kind, key: &str) {
        let held = match kind {
            Kind::Node | Kind::CsiNode | Kind::PersistentVolume | Kind::PersistentVolumeClaim => {
                self.keys_contain(kind, key)
            }
            Kind::Pod => self.pods.contains_key(key),
            Kind::VolumeAttachment => self.vas.contains_key(key),
            Kind::StorageClass => self.storage_classes.contains_key(key),
        };
        self.count_change(held);
        match kind {
            Kind::Node => {
                if let Some(name) = self.shared_name(key).cloned() {
                    self.set_devices(&name, None);
                    self.node_count -= 1;
                    self.slot_mut(&name).node = None;
                    self.set_contribution(Source::NodeStatus(name.clone()), None);
                    self.drop_slot_if_empty(&name);
                }
            }
            Kind::CsiNode => {
                if let Some(slot) = self.nodes.get_mut(key)
                    && slot.csinode.take().is_some()
                {
                    self.csinode_count -= 1;
                    self.drop_slot_if_empty(key);
                }
            }
            Kind::PersistentVolume => {
                if let Some(old) = self.pvs.remove(key) {
                    self.unreserve(key, &old);
                    self.pv_changed(key, Some(&old));
                }
            }
            Kind::PersistentVolumeClaim => {
                if let Some(old) = self.pvcs.remove(key) {
                    self.unlink_pvc(key, &old);
                    self.claim_changed(key);
                }
            }
            Kind::Pod => {
                if let Some(old) = self.pods.remove(key) {
                    self.unlink_pod(key, &old);
                    self.set_pod_usage(key, None);
                }
            }
            Kind::VolumeAttachment => {
                if let Some(old) = self.vas.remove(key) {
                    if let VaSource::Pv(pv) = &old.source {
                        unrelate(&mut self.pv_attachments, pv, key);
                    }
                    self.set_contribution(Source::Attachment(key.to_owned()), None);
                    self.set_va_attached(key, None);
                }
            }
            Kind::StorageClass => {
                self.storage_classes.remove(key);
            }
        }
    }

    /// Removes an object whose deletion a watch reported. The deletions of claims and
    /// PersistentVolumes, the kinds [`ClusterState::apply_fetched`] takes, are remembered
    /// (the latest few thousand).
    pub fn delete_reported(&mut self, object: &ClusterObject) {
        let kind = object.kind();
        let key = object_key(object);
        if matches!(kind, Kind::PersistentVolumeClaim | Kind::PersistentVolume) {
            let (uid, resource_version) = object.version();
            let deletion = Deletion {
                uid: uid.map(str::to_owned),
                resource_version: resource_version.map(str::to_owned),
            };
            self.deletions.record(kind, &key, deletion);
        }
        self.delete(kind, &key);
    }

    /// Applies an object a direct GET read while the watch had not delivered it, unless
    /// the watch delivered it meanwhile (its copy is as new or newer) or reported its
    /// deletion after the GET read it (see [`RecentDeletions::outdates`]): a GET in
    /// flight never brings a deleted object back.
    pub fn apply_fetched(&mut self, object: &ClusterObject) -> Fetched {
        let kind = object.kind();
        let key = object_key(object);
        if self.keys_contain(kind, &key) {
            return Fetched::Cached;
        }
        let (uid, resource_version) = object.version();
        if self.deletions.outdates(kind, &key, uid, resource_version) {
            return Fetched::DeletedMeanwhile;
        }
        self.apply(object);
        Fetched::Applied
    }

    /// Ends a relist of one kind: objects not in `listed` (keys as [`object_key`] makes
    /// them) vanished while the watch was away and are deleted; the kind counts as synced.
    /// The listed objects themselves were applied one by one as they arrived, so a relist
    /// of a large kind never holds the whole listing.
    pub fn finish_relist(&mut self, kind: Kind, listed: &HashSet<String>) {
        for gone in self.keys(kind).into_iter().filter(|k| !listed.contains(k)) {
            self.delete(kind, &gone);
        }
        self.readiness.mark_synced(kind);
    }

    /// Marks a kind as listed once (a snapshot, or a watch's first complete list).
    pub fn mark_synced(&mut self, kind: Kind) {
        self.readiness.mark_synced(kind);
    }

    /// Every kind has been listed once and no watch has been failing beyond its grace
    /// period: verdicts are meaningful. See [`Readiness::problem`] for the reason when not.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// The kinds not listed yet, for readiness messages.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.readiness.unsynced()
    }

    /// Sync and watch health: why verdicts cannot be trusted, per-kind error counts.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// For the watchers, to record failures and recoveries.
    pub fn readiness_mut(&mut self) -> &mut Readiness {
        &mut self.readiness
    }

    /// How many objects of each kind are cached.
    pub fn counts(&self) -> [(Kind, usize); Kind::ALL.len()] {
        Kind::ALL.map(|k| (k, self.len(k)))
    }

    fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.node_count,
            Kind::CsiNode => self.csinode_count,
            Kind::PersistentVolume => self.pvs.len(),
            Kind::PersistentVolumeClaim => self.pvcs.len(),
            Kind::Pod => self.pods.len(),
            Kind::VolumeAttachment => self.vas.len(),
            Kind::StorageClass => self.storage_classes.len(),
        }
    }

    fn keys_contain(&self, kind: Kind, key: &str) -> bool {
        match kind {
            Kind::Node => self.node(key).is_some(),
            Kind::CsiNode => self.csinode(key).is_some(),
            Kind::PersistentVolume => self.pvs.contains_key(key),
            Kind::PersistentVolumeClaim => self.pvcs.contains_key(key),
            Kind::Pod => self.pods.contains_key(key),
            Kind::VolumeAttachment => self.vas.contains_key(key),
            Kind::StorageClass => self.storage_classes.contains_key(key),
        }
    }

    fn keys(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Node => self.slot_names(|s| s.node.is_some()),
            Kind::CsiNode => self.slot_names(|s| s.csinode.is_some()),
            Kind::PersistentVolume => self.pvs.keys().cloned().collect(),
            Kind::PersistentVolumeClaim => self.pvcs.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::VolumeAttachment => self.vas.keys().cloned().collect(),
            Kind::StorageClass => self.storage_classes.keys().cloned().collect(),
        }
    }

    // ---- reads used by the webhook and the extender ----

    /// The PV the PV binder will bind the unbound claim `namespace/claim` (of uid
    /// `uid`) to: the one PV whose claimRef names it, by name and, when the claimRef
    /// has a uid, by uid, and that is not Released or Failed. `None` when there is no
    /// such PV, or more than one.
    pub fn reserved_pv(
        &self,
        namespace: &str,
        claim: &str,
        uid: Option<&str>,
    ) -> Option<&PvRecord> {
        let mut eligible = self
            .reserved
            .get(&key(namespace, claim))?
            .iter()
            .filter_map(|name| self.pvs.get(name))
            // A claim of unknown uid (a hand-written snapshot): the name decides.
            .filter(|pv| {
                !pv.released && uid.is_none_or(|c| pv.claim_uid.as_deref().is_none_or(|u| u == c))
            });
        let pv = eligible.next()?;
        eligible.next().is_none().then_some(pv)
    }

    /// What the claim `namespace/claim` stands for.
    pub fn claim_binding(&self, namespace: &str, claim: &str) -> ClaimBinding<'_> {
        let Some(pvc) = self.pvc(namespace, claim) else {
            return ClaimBinding::Unknown;
        };
        let pv = match &pvc.volume_name {
            Some(name) => match self.pv(name) {
                Some(pv) => pv,
                None => return ClaimBinding::LostVolume { pv: name },
            },
            None => match self.reserved_pv(namespace, claim, pvc.uid.as_deref()) {
                Some(pv) => pv,
                None => return ClaimBinding::Unbound(pvc),
            },
        };
        ClaimBinding::Volume { pvc, pv }
    }

    /// The volumes the state counts for a bound pod on its node: those of its claims
    /// that have a known PV (see [`ClusterState::claim_binding`]), its inline volumes
    /// and devices.
    pub fn pod_volumes(&self, namespace: &str, name: &str) -> &[VolumeId] {
        self.contributions
            .get(&Source::Pod(key(namespace, name)))
            .map_or(&[], |(_, volumes)| volumes)
    }

    /// A node's record.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name)?.node.as_ref()
    }

    /// A known node's record, CSINode and holdings, with one lookup: what judging a
    /// candidate node reads.
    pub fn node_facts(&self, name: &str) -> Option<NodeFacts<'_>> {
        let (name, slot) = self.nodes.get_key_value(name)?;
        Some(NodeFacts {
            name,
            node: slot.node.as_ref()?,
            csinode: slot.csinode.as_ref(),
            holdings: Holdings(Some(&slot.usage)),
        })
    }

    /// The state's own copy of a known node's name: kept without a new allocation.
    pub fn shared_name(&self, name: &str) -> Option<&Arc<str>> {
        self.nodes
            .get_key_value(name)
            .filter(|(_, slot)| slot.node.is_some())
            .map(|(k, _)| k)
    }

    /// Every node's name, sorted: for reports over the whole cluster (`explain`,
    /// `nodes`, metrics), never for one request.
    pub fn node_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, slot)| slot.node.is_some())
            .map(|(n, _)| &**n)
            .collect();
        names.sort_unstable();
        names
    }

    /// A node's CSINode record.
    pub fn csinode(&self, name: &str) -> Option<&CsiNodeRecord> {
        self.nodes.get(name)?.csinode.as_ref()
    }

    /// A claim by namespace and name.
    pub fn pvc(&self, namespace: &str, name: &str) -> Option<&PvcRecord> {
        self.pvcs.get(&key(namespace, name))
    }

    /// A PersistentVolume by name.
    pub fn pv(&self, name: &str) -> Option<&PvRecord> {
        self.pvs.get(name)
    }

    /// A StorageClass by name.
    pub fn storage_class(&self, name: &str) -> Option<&StorageClassRecord> {
        self.storage_classes.get(name)
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodRecord> {
        self.pods.get(&key(namespace, name))
    }

    /// Distinct volumes of `driver` attached to or used on `node`.
    pub fn used(&self, node: &str, driver: DriverId) -> u32 {
        self.holdings(node).used(driver)
    }

    /// The volume is attached to, or used on, `node` already.
    pub fn holds(&self, node: &str, volume: &VolumeId) -> bool {
        self.holdings(node).holds(volume)
    }

    /// Everything `node` holds, for several questions at the price of one lookup.
    pub fn holdings(&self, node: &str) -> Holdings<'_> {
        Holdings(self.nodes.get(node).map(|slot| &slot.usage))
    }

    /// The nodes that hold the volume: attached there or used by a pod bound there (see
    /// [`Holdings::holds`]).
    pub fn holders(&self, volume: &VolumeId) -> &[Arc<str>] {
        self.holders
            .get(volume)
            .map_or(&[], |nodes| nodes.as_slice())
    }

    /// Non-terminal bound pods using the volume, with their nodes.
    pub fn users(&self, volume: &VolumeId) -> &[VolumeUser] {
        self.users.get(volume).map_or(&[], |users| users.as_slice())
    }

    /// Nodes where a device plugin advertises the volume with a count of 1 or more.
    pub fn device_holders(&self, volume: &VolumeId) -> impl Iterator<Item = &str> {
        self.device_holders
            .get(volume)
            .into_iter()
            .flatten()
            .map(|n| &**n)
    }

    /// The VolumeAttachments that report the volume attached (`status.attached`), as
    /// `(node, VolumeAttachment name)`, sorted by name.
    pub fn attached_by_va(&self, volume: &VolumeId) -> impl Iterator<Item = (&str, &str)> {
        self.va_attached
            .get(volume)
            .into_iter()
            .flatten()
            .map(|(name, node)| (&**node, &**name))
    }

    // ---- index maintenance ----

    /// The cached node's own copy of its name, so that the many pods and attachments
    /// on a node share one allocation (a pod listed before its node keeps its own).
    fn shared_node_name(&self, name: Arc<str>) -> Arc<str> {
        self.shared_name(&name).cloned().unwrap_or(name)
    }

    /// The slot of a node name, made empty if there was none.
    fn slot_mut(&mut self, name: &Arc<str>) -> &mut NodeSlot {
        slot_in(&mut self.nodes, name)
    }

    /// Forgets a slot that keeps nothing any more.
    fn drop_slot_if_empty(&mut self, name: &str) {
        if self.nodes.get(name).is_some_and(NodeSlot::is_empty) {
            self.nodes.remove(name);
        }
    }

    /// The names of the slots that keep `what`.
    fn slot_names(&self, what: impl Fn(&NodeSlot) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, slot)| what(slot))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Counts a write that changed a record (see [`ClusterState::changes`]).
    fn count_change(&mut self, changed: bool) {
        self.changes += u64::from(changed);
    }

    fn put_node(&mut self, name: Arc<str>, rec: NodeRecord) {
        self.set_devices(&name, Some(&rec));
        let attached = rec.attached.clone();
        let added = match self.nodes.get_mut(&*name) {
            Some(slot) => slot.node.replace(rec).is_none(),
            None => {
                let slot = NodeSlot {
                    node: Some(rec),
                    ..NodeSlot::default()
                };
                self.nodes.insert(name.clone(), slot);
                true
            }
        };
        self.node_count += usize::from(added);
        self.set_contribution(Source::NodeStatus(name.clone()), Some((name, attached)));
    }

    fn set_devices(&mut self, node: &Arc<str>, new: Option<&NodeRecord>) {
        if let Some(old) = self.nodes.get(&**node).and_then(|slot| slot.node.as_ref()) {
            for v in old.devices.keys() {
                if let Some(set) = self.device_holders.get_mut(v) {
                    set.remove(node);
                    if set.is_empty() {
                        self.device_holders.remove(v);
                    }
                }
            }
        }
        for (v, count) in new.into_iter().flat_map(|r| &r.devices) {
            if *count >= 1 {
                self.device_holders
                    .entry(v.clone())
                    .or_default()
                    .insert(node.clone());
            }
        }
    }

    /// Drops the reservation `old` (the record `pv` had) made, unless `pv` still makes it.
    fn unreserve(&mut self, pv: &str, old: &PvRecord) {
        let Some(claim) = &old.claim else { return };
        let still = self.pvs.get(pv).and_then(|r| r.claim.as_ref()) == Some(claim);
        if !still {
            unrelate(&mut self.reserved, claim, pv);
        }
    }

    fn put_pvc(&mut self, k: String, rec: PvcRecord) {
        self.count_change(self.pvcs.get(&k) != Some(&rec));
        if let Some(old) = self.pvcs.get(&k).cloned() {
            self.unlink_pvc(&k, &old);
        }
        if let Some(pv) = &rec.volume_name {
            self.pv_claim.insert(pv.clone(), k.clone());
        }
        self.pvcs.insert(k.clone(), rec);
        self.claim_changed(&k);
    }

    fn unlink_pvc(&mut self, k: &str, old: &PvcRecord) {
        if let Some(pv) = &old.volume_name
            && self.pv_claim.get(pv).is_some_and(|c| c == k)
        {
            self.pv_claim.remove(pv);
        }
    }

    fn put_pod(&mut self, k: String, rec: PodRecord) {
        let old = self.pods.get(&k).cloned();
        self.count_change(old.as_ref() != Some(&rec));
        // Most updates (status, labels) leave the pod's claims as they were.
        let relink = old.as_ref().is_none_or(|old| old.uses != rec.uses);
        if relink {
            if let Some(old) = old {
                self.unlink_pod(&k, &old);
            }
            let namespace = k.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
            for u in &rec.uses {
                if let PodVolumeRef::Claim(c) = u {
                    relate(&mut self.claim_pods, &key(namespace, c), &k);
                }
            }
        }
        self.pods.insert(k.clone(), rec);
        self.recompute_pod(&k);
    }

    fn unlink_pod(&mut self, k: &str, old: &PodRecord) {
        let namespace = k.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
        for u in &old.uses {
            if let PodVolumeRef::Claim(c) = u {
                unrelate(&mut self.claim_pods, &key(namespace, c), k);
            }
        }
    }

    fn put_va(&mut self, name: String, rec: VaRecord) {
        self.count_change(self.vas.get(&name) != Some(&rec));
        if let Some(VaRecord {
            source: VaSource::Pv(pv),
            ..
        }) = self.vas.get(&name)
        {
            let pv = pv.clone();
            unrelate(&mut self.pv_attachments, &pv, &name);
        }
        if let VaSource::Pv(pv) = &rec.source {
            relate(&mut self.pv_attachments, pv, &name);
        }
        self.vas.insert(name.clone(), rec);
        self.recompute_va(&name);
    }

    /// A PV was added, changed or removed (`old`: the record it had): the claim bound
    /// to it, and the claims it reserves or reserved, may stand for another volume now.
    fn pv_changed(&mut self, pv: &str, old: Option<&PvRecord>) {
        let mut claims: Vec<String> = self.pv_claim.get(pv).cloned().into_iter().collect();
        let reserving = [
            old.and_then(|r| r.claim.clone()),
            self.pvs.get(pv).and_then(|r| r.claim.clone()),
        ];
        for claim in reserving.into_iter().flatten() {
            if !claims.contains(&claim) {
                claims.push(claim);
            }
        }
        for claim in claims {
            self.claim_changed(&claim);
        }
        for va in self
            .pv_attachments
            .get(pv)
            .map(Names::to_vec)
            .unwrap_or_default()
        {
            self.recompute_va(&va);
        }
    }

    fn claim_changed(&mut self, claim: &str) {
        for pod in self
            .claim_pods
            .get(claim)
            .map(Names::to_vec)
            .unwrap_or_default()
        {
            self.recompute_pod(&pod);
        }
    }

    fn recompute_pod(&mut self, k: &str) {
        let Some(rec) = self.pods.get(k) else {
            return;
        };
        let held = match (&rec.node, rec.terminal) {
            (Some(node), false) => {
                let namespace = k.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
                let mut vols: Vec<VolumeId> = Vec::with_capacity(rec.uses.len());
                vols.extend(rec.uses.iter().filter_map(|u| match u {
                    PodVolumeRef::Claim(c) => match self.claim_binding(namespace, c) {
                        ClaimBinding::Volume { pv, .. } => pv.volume.clone(),
                        _ => None,
                    },
                    PodVolumeRef::Direct(v) => Some(v.clone()),
                }));
                vols.sort();
                vols.dedup();
                Some((node.clone(), vols))
            }
            _ => None,
        };
        self.set_pod_usage(k, held);
    }

    fn set_pod_usage(&mut self, k: &str, held: Option<(Arc<str>, Vec<VolumeId>)>) {
        let source = Source::Pod(k.to_owned());
        if let Some((_, old)) = self.contributions.get(&source) {
            for v in old.iter() {
                if let Some(list) = self.users.get_mut(v) {
                    list.retain(|u| u.pod != k);
                    if list.is_empty() {
                        self.users.remove(v);
                    }
                }
            }
        }
        if let Some((node, vols)) = &held {
            for v in vols {
                self.users.entry(v.clone()).or_default().push(VolumeUser {
                    node: node.clone(),
                    pod: k.to_owned(),
                });
            }
        }
        self.set_contribution(source, held);
    }

    fn recompute_va(&mut self, name: &str) {
        let Some(rec) = self.vas.get(name) else {
            return;
        };
        let volume = match &rec.source {
            VaSource::Inline(v) => Some(v.clone()),
            VaSource::Pv(pv) => self.pvs.get(pv).and_then(|p| p.volume.clone()),
        };
        let attached = volume
            .clone()
            .filter(|_| rec.attached)
            .map(|v| (v, rec.node.clone()));
        let held = volume.map(|v| (rec.node.clone(), vec![v]));
        self.set_contribution(Source::Attachment(name.to_owned()), held);
        self.set_va_attached(name, attached);
    }

    fn set_va_attached(&mut self, name: &str, new: Option<(VolumeId, Arc<str>)>) {
        if let Some(old) = self.va_attached_volume.remove(name)
            && let Some(by_name) = self.va_attached.get_mut(&old)
        {
            by_name.retain(|(n, _)| &**n != name);
            if by_name.is_empty() {
                self.va_attached.remove(&old);
            }
        }
        if let Some((volume, node)) = new {
            let name: Arc<str> = Arc::from(name);
            let by_name = self.va_attached.entry(volume.clone()).or_default();
            let at = by_name.partition_point(|(n, _)| **n < *name);
            by_name.insert(at, (name.clone(), node));
            self.va_attached_volume.insert(name, volume);
        }
    }

    fn set_contribution(&mut self, source: Source, new: Option<(Arc<str>, Vec<VolumeId>)>) {
        if let Some((node, vols)) = self.contributions.remove(&source) {
            let usage = &mut slot_in(&mut self.nodes, &node).usage;
            for v in vols {
                if let Some(n) = usage.refs.get_mut(&v) {
                    *n -= 1;
                    if *n == 0 {
                        usage.refs.remove(&v);
                        if let Some(nodes) = self.holders.get_mut(&v) {
                            nodes.retain(|n| **n != *node);
                            if nodes.is_empty() {
                                self.holders.remove(&v);
                            }
                        }
                        if let Some(c) = usage.per_driver.get_mut(v.driver) {
                            *c -= 1;
                        }
                    }
                }
            }
            self.drop_slot_if_empty(&node);
        }
        if let Some((node, vols)) = new {
            if vols.is_empty() {
                return;
            }
            let usage = &mut slot_in(&mut self.nodes, &node).usage;
            for v in &vols {
                let n = usage.refs.entry(v.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.holders
                        .entry(v.clone())
                        .or_default()
                        .push(node.clone());
                    *usage.per_driver.or_default(v.driver) += 1;
                }
            }
            self.contributions
                .insert(source, (node, vols.into_boxed_slice()));
        }
    }
}

/// The slot of a node name in `nodes`, made empty (keyed by this copy of the name) if
/// there was none.
fn slot_in<'a>(nodes: &'a mut FastMap<Arc<str>, NodeSlot>, name: &Arc<str>) -> &'a mut NodeSlot {
    nodes.entry(name.clone()).or_default()
}

/// The key an object is stored under: `namespace/name`, or the name for cluster-scoped kinds.
pub fn object_key(o: &ClusterObject) -> String {
    let id = o.identity();
    let name = id.name.unwrap_or_default();
    match (o.kind(), id.namespace) {
        (Kind::Pod, ns) => key(ns.unwrap_or_default(), name),
        (Kind::PersistentVolumeClaim, Some(ns)) => key(ns, name),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::synthetic::{self, Size};

    /// An empty state under the default config, whose linode driver the synthetic
    /// cluster uses.
    fn default_state() -> ClusterState {
        let config = Arc::new(Config::default());
        ClusterState::new(config.clone(), Arc::new(Drivers::new(&config)))
    }

    /// The synthetic cluster of this size, as documents.
    fn synthetic_documents(nodes: usize, pods: usize, volumes: usize) -> Vec<serde_json::Value> {
        synthetic::documents(Size {
            nodes,
            pods,
            volumes,
        })
        .collect()
    }

    /// Every (node, volume) the usage holds is in the holders index and back, with no
    /// empty entry left.
    fn assert_holders_mirror_usage(state: &ClusterState) {
        let mut from_usage: BTreeSet<(String, VolumeId)> = BTreeSet::new();
        for (node, slot) in &state.nodes {
            for v in slot.usage.refs.keys() {
                from_usage.insert((node.to_string(), v.clone()));
            }
        }
        let mut from_holders = BTreeSet::new();
        for (v, nodes) in &state.holders {
            assert!(!nodes.is_empty(), "empty holders entry for {v:?}");
            for n in nodes {
                assert!(from_holders.insert((n.to_string(), v.clone())), "{n} twice");
            }
        }
        assert_eq!(from_usage, from_holders);
    }

    #[test]
    fn the_holders_index_follows_pods_nodes_and_their_deletion() {
        let mut state = default_state();
        let objects: Vec<ClusterObject> = synthetic_documents(4, 30, 12)
            .into_iter()
            .map(|d| ClusterObject::from_value(d).expect("synthetic object"))
            .collect();
        for o in &objects {
            state.apply(o);
        }
        assert_holders_mirror_usage(&state);
        assert!(!state.holders.is_empty(), "the synthetic pods hold volumes");
        let node = synthetic::node_name(1);
        let held: Vec<VolumeId> = state.nodes[&*node].usage.refs.keys().cloned().collect();
        assert!(!held.is_empty());
        for v in &held {
            assert!(state.holders(v).iter().any(|n| **n == *node));
        }
        // Pods go one by one, then a node with whatever its status still reports.
        for o in objects.iter().filter(|o| o.kind() == Kind::Pod).take(10) {
            state.delete_reported(o);
            assert_holders_mirror_usage(&state);
        }
        state.delete(Kind::Node, &node);
        state.delete(Kind::CsiNode, &node);
        assert_holders_mirror_usage(&state);
        for o in objects.iter().filter(|o| o.kind() == Kind::Pod) {
            state.delete_reported(o);
        }
        assert_holders_mirror_usage(&state);
        assert!(
            !state.holders.is_empty(),
            "the attachments still hold volumes"
        );
        for o in objects
            .iter()
            .filter(|o| o.kind() == Kind::VolumeAttachment)
        {
            state.delete_reported(o);
        }
        assert_holders_mirror_usage(&state);
        assert!(state.holders.is_empty());
        assert_eq!(state.len(Kind::Node), 3);
        assert_eq!(state.len(Kind::CsiNode), 3);
        assert!(state.node(&node).is_none() && state.csinode(&node).is_none());
        assert!(
            !state.nodes.contains_key(&*node),
            "an empty slot is dropped"
        );
    }

    #[test]
    fn a_pod_updated_with_the_same_claims_still_follows_them() {
        let mut state = default_state();
        let docs = synthetic_documents(2, 6, 4);
        for d in &docs {
            state.apply(&ClusterObject::from_value(d.clone()).expect("synthetic object"));
        }
        let (pod, claim) = docs
            .iter()
            .filter(|d| d["kind"] == "Pod" && d["spec"]["nodeName"].is_string())
            .find_map(|d| {
                let volumes = d["spec"]["volumes"].as_array()?;
                let claim = volumes
                    .iter()
                    .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())?;
                Some((d.clone(), claim.to_owned()))
            })
            .expect("a bound synthetic pod with a claim");
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let counted = state.pod_volumes(namespace, name).len();
        assert!(counted > 0, "its claim's volume is counted");
        let mut relabelled = pod.clone();
        relabelled["metadata"]["labels"] = serde_json::json!({"rollout": "2"});
        state.apply(&ClusterObject::from_value(relabelled).expect("a pod"));
        assert_eq!(state.pod_volumes(namespace, name).len(), counted);
        state.delete(Kind::PersistentVolumeClaim, &key(namespace, &claim));
        assert_eq!(
            state.pod_volumes(namespace, name).len(),
            counted - 1,
            "the claim's deletion reached the relabelled pod"
        );
    }

    #[test]
    fn attachments_reported_attached_are_listed_by_name_until_detached_or_gone() {
        let mut state = default_state();
        let docs = synthetic_documents(3, 0, 1);
        let va = docs
            .iter()
            .find(|d| d["kind"] == "VolumeAttachment")
            .expect("a VolumeAttachment")
            .clone();
        for d in docs.iter().filter(|d| d["kind"] != "VolumeAttachment") {
            state.apply(&ClusterObject::from_value(d.clone()).expect("synthetic object"));
        }
        let attachment = |name: &str, node: usize, attached: bool| {
            let mut v = va.clone();
            v["metadata"]["name"] = serde_json::json!(name);
            v["spec"]["nodeName"] = serde_json::json!(&*synthetic::node_name(node));
            v["status"] = serde_json::json!({ "attached": attached });
            ClusterObject::from_value(v).expect("a VolumeAttachment")
        };
        state.apply(&attachment("va-b", 1, true));
        state.apply(&attachment("va-a", 2, true));
        state.apply(&attachment("va-c", 0, false));
        let volume = state.va_attached.keys().next().expect("indexed").clone();
        let listed = |state: &ClusterState| -> Vec<(String, String)> {
            state
                .attached_by_va(&volume)
                .map(|(node, name)| (node.to_owned(), name.to_owned()))
                .collect()
        };
        let on = |i| synthetic::node_name(i).to_string();
        assert_eq!(
            listed(&state),
            [(on(2), "va-a".to_owned()), (on(1), "va-b".to_owned())]
        );
        state.apply(&attachment("va-c", 0, true));
        state.apply(&attachment("va-b", 1, false));
        // Applied again, on another node: listed once, where it is now.
        state.apply(&attachment("va-a", 0, true));
        state.apply(&attachment("va-a", 2, true));
        assert_eq!(
            listed(&state),
            [(on(2), "va-a".to_owned()), (on(0), "va-c".to_owned())]
        );
        state.delete(Kind::VolumeAttachment, "va-a");
        state.delete(Kind::VolumeAttachment, "va-c");
        assert!(listed(&state).is_empty());
        assert!(state.va_attached.is_empty() && state.va_attached_volume.is_empty());
    }

    #[test]
    fn a_slot_kept_only_for_a_csinode_or_usage_is_no_node() {
        let mut state = default_state();
        let mut objects: Vec<ClusterObject> = synthetic_documents(1, 1, 1)
            .into_iter()
            .map(|d| ClusterObject::from_value(d).expect("synthetic object"))
            .collect();
        let at = objects.iter().position(|o| o.kind() == Kind::Node);
        let ClusterObject::Node(node) = objects.remove(at.expect("a Node")) else {
            unreachable!("a Node")
        };
        for o in &objects {
            state.apply(o);
        }
        let name = synthetic::node_name(0);
        assert_holders_mirror_usage(&state);
        assert!(
            !state.holders.is_empty(),
            "the pod and its attachment hold a volume"
        );
        assert_eq!((state.len(Kind::Node), state.len(Kind::CsiNode)), (0, 1));
        assert!(state.keys(Kind::Node).is_empty());
        assert!(state.shared_name(&name).is_none() && state.node_facts(&name).is_none());
        assert!(state.node_names().is_empty());

        // The Node, its status reporting the volume twice: still one holder.
        let handle = format!("kubernetes.io/csi/{}^000000-vol", synthetic::DRIVER);
        let with_attached = |attached: serde_json::Value| {
            let mut doc = serde_json::to_value(&node).expect("node");
            doc["status"]["volumesAttached"] = attached;
            ClusterObject::from_value(doc).expect("node")
        };
        let twice = serde_json::json!([
            {"name": handle, "devicePath": ""},
            {"name": handle, "devicePath": ""},
        ]);
        state.apply(&with_attached(twice));
        assert_holders_mirror_usage(&state);
        assert_eq!(state.len(Kind::Node), 1);
        assert!(state.shared_name(&name).is_some() && state.node_facts(&name).is_some());
        let volume = state.nodes[&*name].usage.refs.keys().next().cloned();
        assert_eq!(state.holders(&volume.expect("a volume held")).len(), 1);

        state.apply(&with_attached(serde_json::json!([])));
        assert_holders_mirror_usage(&state);
        state.delete(Kind::Node, &name);
        state.delete(Kind::CsiNode, &name);
        for o in &objects {
            state.delete_reported(o);
        }
        assert_holders_mirror_usage(&state);
        assert!(state.nodes.is_empty() && state.holders.is_empty());
        assert_eq!((state.len(Kind::Node), state.len(Kind::CsiNode)), (0, 0));
    }
}
