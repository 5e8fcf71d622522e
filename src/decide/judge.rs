//! The extender's pure core (docs/scheduling.md, "The scheduler extender"): given a pod's resolved
//! volumes and the cluster state, say for each node whether the pod fits, why not, and
//! how well.
//! The pod is planned once per request; judging a node then costs a few index lookups
//! per pod volume, never a scan of the cluster.

use std::{fmt, sync::Arc};

use crate::{
    cluster::{
        ClusterState, Missing,
        records::{CsiNodeRecord, NodeRecord},
        state::{Holdings, NodeFacts},
    },
    decide::{
        inflight::{DriverVolumes, Needs, Placement, Presume},
        resolve::{ManagedVolume, Origin, Resolution},
    },
    model::{
        config::{Config, DriverConfig},
        drivers::{DriverId, Mode, VolumeId},
        fast_hash::FastSet,
    },
};

/// Highest score an extender may give (`MaxExtenderPriority`).
pub const MAX_SCORE: u8 = 10;

/// Whether the pod can go to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every managed volume can be used there.
    Pass,
    /// It cannot, for a reason one line long.
    Fail {
        /// Which rule failed.
        kind: FailKind,
        /// What kube-scheduler prints after a node count (`3 node(s) at the linode
        /// attach limit (limit from CSINode)`): the same text, and the same allocation,
        /// on every node that fails for the same cause, so the scheduler groups them.
        reason: Arc<str>,
        /// This node's own numbers, for `explain` and logs.
        detail: Option<Detail>,
    },
}

/// What differs between nodes failing for the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// The node has no CSINode object at all.
    NoCsiNode,
    /// Its CSINode lists other drivers only.
    NoCsiNodeEntry,
    /// Attach slots: `used` of `max`, and the pod needs `new` more.
    Slots {
        /// Distinct volumes of the driver on the node, `scheduling` included.
        used: u32,
        /// Of those, the volumes of pods the scheduler is placing (not bound yet).
        scheduling: u32,
        /// The node's limit.
        max: i64,
        /// The pod's volumes of the driver the node does not hold yet.
        new: u32,
        /// A node annotation that was set but is not a usable limit: (key, value).
        ignored_annotation: Option<(String, String)>,
    },
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::NoCsiNode => f.write_str("the node has no CSINode object"),
            Detail::NoCsiNodeEntry => f.write_str("its CSINode has no entry for the driver"),
            Detail::Slots {
                used,
                scheduling,
                max,
                new,
                ignored_annotation,
            } => {
                write!(f, "{used} of {max} used")?;
                if *scheduling > 0 {
                    write!(f, " ({scheduling} by pods being scheduled)")?;
                }
                write!(f, ", pod needs {new} more")?;
                match ignored_annotation {
                    Some((key, value)) => write!(
                        f,
                        "; node annotation {key}={value:?} is not a non-negative integer, ignored"
                    ),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Which rule failed a node: decides resolvability and labels the failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The node is not in the cluster state.
    NodeUnknown,
    /// A claim or its volume is missing from the cluster state.
    VolumeUnresolved,
    /// Rule 1: a device-plugin volume is not on the node.
    DeviceMissing,
    /// Rule 2: the CSI driver is not registered on the node.
    DriverNotRegistered,
    /// Rule 3: an exclusive volume is in use on another node.
    VolumeInUse,
    /// Rule 4: the node's attach limit would be exceeded.
    AttachLimit,
}

impl FailKind {
    /// Sent in `FailedNodes` (kube-scheduler may try preemption on the node) rather than
    /// `FailedAndUnresolvableNodes` (it does not). Only for a node missing from volguard's
    /// cache, about which volguard cannot claim that nothing would help. Attach-limit
    /// failures are unresolvable although evicting a pod could free a slot: volguard
    /// serves no `preemptVerb`, so kube-scheduler's preemption would choose victims
    /// without asking volguard which evictions free a slot, and evict pods for nothing.
    /// Such a pod waits and is retried (after its backoff, and on Node, CSINode and
    /// VolumeAttachment changes) until a volume detaches or the limit changes.
    pub fn resolvable(self) -> bool {
        matches!(self, FailKind::NodeUnknown)
    }

    /// A short fixed label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::NodeUnknown => "node_unknown",
            FailKind::VolumeUnresolved => "volume_unresolved",
            FailKind::DeviceMissing => "device_missing",
            FailKind::DriverNotRegistered => "driver_not_registered",
            FailKind::VolumeInUse => "volume_in_use",
            FailKind::AttachLimit => "attach_limit",
        }
    }
}

/// The verdict on one node and its score (0 for failing nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Pass or fail.
    pub verdict: Verdict,
    /// 0..=10: 10 = holds all the pod's volumes already, then more free slots = higher.
    pub score: u8,
}

impl Judgement {
    fn fail(kind: FailKind, reason: &Arc<str>, detail: Option<Detail>) -> Self {
        Judgement {
            verdict: Verdict::Fail {
                kind,
                reason: reason.clone(),
                detail,
            },
            score: 0,
        }
    }

    /// The reason with this node's numbers, for a person reading about one node:
    /// `node(s) at the linode attach limit (limit from CSINode): 8 of 8 used, pod needs
    /// 1 more`. `None` when the node passes.
    pub fn describe(&self) -> Option<String> {
        match &self.verdict {
            Verdict::Pass => None,
            Verdict::Fail {
                reason,
                detail: None,
                ..
            } => Some(reason.to_string()),
            Verdict::Fail {
                reason,
                detail: Some(detail),
                ..
            } => Some(format!("{reason}: {detail}")),
        }
    }

    /// The verdict for a pod with no managed volume: volguard has no opinion.
    pub fn indifferent() -> Self {
        Judgement {
            verdict: Verdict::Pass,
            score: 0,
        }
    }

    /// The node fits.
    pub fn passes(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

/// Where a node's attach limit for a driver comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// The configured node annotation.
    Annotation(String),
    /// CSINode `allocatable.count` (absent count = the driver reports no limit).
    CsiNode,
    /// `attachLimit.default` in the config.
    ConfigDefault,
    /// Nothing sets a limit.
    Nowhere,
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitSource::Annotation(key) => write!(f, "limit from node annotation {key}"),
            LimitSource::CsiNode => f.write_str("limit from CSINode"),
            LimitSource::ConfigDefault => f.write_str("limit from config default"),
            LimitSource::Nowhere => f.write_str("no limit configured"),
        }
    }
}

/// A node's attach limit for one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// At most this many volumes; `None` = unlimited.
    pub max: Option<i64>,
    /// Who said so.
    pub source: LimitSource,
    /// The node annotation was set but unusable: its text, so messages can quote it.
    pub ignored_annotation: Option<(String, String)>,
}

/// The attach limit of `driver` on a node: node annotation > CSINode allocatable count
/// (when `attachLimit.fromCSINode`) > config default > unlimited.
pub fn attach_limit(
    node: &NodeRecord,
    csinode: Option<&CsiNodeRecord>,
    driver: DriverId,
    config: &DriverConfig,
) -> Limit {
    let Some(limits) = &config.attach_limit else {
        return Limit {
            max: None,
            source: LimitSource::Nowhere,
            ignored_annotation: None,
        };
    };
    let mut ignored_annotation = None;
    if let Some(key) = &limits.node_annotation {
        match node.limit_overrides.iter().find(|(d, _)| *d == driver) {
            Some((_, Ok(n))) => {
                return Limit {
                    max: Some(*n),
                    source: LimitSource::Annotation(key.clone()),
                    ignored_annotation: None,
                };
            }
            Some((_, Err(text))) => ignored_annotation = Some((key.clone(), text.clone())),
            None => {}
        }
    }
    let registered = csinode.and_then(|c| c.drivers.get(driver));
    let (max, source) = match (limits.from_csi_node, registered, limits.default) {
        (true, Some(count), _) => (*count, LimitSource::CsiNode),
        (_, _, Some(n)) => (Some(n), LimitSource::ConfigDefault),
        _ => (None, LimitSource::Nowhere),
    };
    Limit {
        max,
        source,
        ignored_annotation,
    }
}

/// Volumes used and the limit for one attach-mode driver on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// The driver's label.
    pub driver: String,
    /// Distinct volumes attached to or used on the node.
    pub used: u32,
    /// Its limit there.
    pub limit: Limit,
}

impl fmt::Display for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit.max {
            Some(max) => write!(f, "{} {}/{max}", self.driver, self.used),
            None => write!(f, "{} {}/unlimited", self.driver, self.used),
        }
    }
}

/// Attach slots of every configured attach-mode driver on `node` (empty for an unknown
/// node): what an operator wants to see next to a verdict.
pub fn slots(state: &ClusterState, node: &str) -> Vec<Slots> {
    let Some(record) = state.node(node) else {
        return Vec::new();
    };
    let csinode = state.csinode(node);
    let drivers = state.drivers();
    drivers
        .iter()
        .filter(|(id, _)| drivers.mode(*id) == Mode::Attach)
        .map(|(id, d)| Slots {
            driver: d.name.clone(),
            used: state.used(node, id),
            limit: attach_limit(record, csinode, id, d),
        })
        .collect()
}

/// Beyond this many nodes holding a volume, a candidate node's own holdings are asked
/// whether it holds it, rather than the list of holders searched per candidate.
const FEW_HOLDERS: usize = 4;

/// A device-plugin volume the node must advertise with a count of 1 or more.
#[derive(Debug)]
struct DeviceNeed {
    id: VolumeId,
    /// `node(s) without volume X attached (it is attached to worker-2)`.
    reason: Arc<str>,
}

/// The pod's volumes of one attach-mode driver.
#[derive(Debug)]
struct DriverNeed {
    id: DriverId,
    /// Set when the CSINode registration of the driver is checked: the reason for
    /// nodes without it.
    unregistered: Option<Arc<str>>,
    /// The reasons for nodes at the limit, by where the limit came from.
    at_limit: LimitReasons,
    /// Volumes with a handle: new on a node unless it holds them already.
    known: Vec<VolumeId>,
    /// Per entry of `known`, the nodes that hold it already when they are at most
    /// [`FEW_HOLDERS`]: read once per request, not once per candidate node. `None` for a
    /// volume on more nodes (a multi-attach volume): each node's holdings are asked.
    known_holders: Vec<Option<Vec<Arc<str>>>>,
    /// Unbound claims: each is one new attachment anywhere.
    pending: u32,
}

/// `node(s) at the linode attach limit (limit from ...)`, one text per limit source.
#[derive(Debug)]
struct LimitReasons {
    annotation: Arc<str>,
    csinode: Arc<str>,
    default: Arc<str>,
}

impl LimitReasons {
    fn new(driver: &str, annotation: Option<&str>) -> Self {
        let text = |source: &LimitSource| -> Arc<str> {
            format!("node(s) at the {driver} attach limit ({source})").into()
        };
        LimitReasons {
            annotation: text(&LimitSource::Annotation(
                annotation.unwrap_or_default().to_owned(),
            )),
            csinode: text(&LimitSource::CsiNode),
            default: text(&LimitSource::ConfigDefault),
        }
    }

    fn of(&self, source: &LimitSource) -> &Arc<str> {
        match source {
            LimitSource::Annotation(_) => &self.annotation,
            LimitSource::CsiNode => &self.csinode,
            LimitSource::ConfigDefault | LimitSource::Nowhere => &self.default,
        }
    }
}

/// An exclusive volume already in use: it fails every node but the one using it.
#[derive(Debug)]
struct Exclusive {
    /// The nodes using it, sorted, each with the reason for the other nodes.
    users: Vec<(String, Arc<str>)>,
}

/// What the pod needs, worked out once per request.
#[derive(Debug)]
struct Plan {
    devices: Vec<DeviceNeed>,
    /// Why no node can hold a device-plugin claim that has no volume yet.
    unprovisioned: Option<Arc<str>>,
    drivers: Vec<DriverNeed>,
    exclusive: Vec<Exclusive>,
    /// Every exclusive volume of the pod (with `scheduling.exclusiveReadWriteOnce`),
    /// in use or not, with its claim: what pods in flight are checked against.
    exclusive_volumes: Vec<(VolumeId, Option<String>)>,
}

/// A pod in flight whose exclusive volume this pod uses too.
#[derive(Debug)]
struct SharedExclusive {
    placement: Arc<Placement>,
    /// `node(s) that cannot use ReadWriteOnce volume X (claim C): pod P is being
    /// scheduled with it`.
    reason: Arc<str>,
}

/// Pods in flight that put volumes of one of this pod's attach-mode drivers on nodes.
#[derive(Debug, Default)]
struct InFlightNeeds {
    /// Per entry of `Plan::drivers`: the placements and their volumes of that driver.
    per_driver: Vec<Vec<(Arc<Placement>, DriverVolumes)>>,
    exclusive: Vec<SharedExclusive>,
    presume: Option<Presume>,
}

/// Judges nodes for one pod. Build it once per request, then ask about each node.
#[derive(Debug)]
pub struct Judge<'s> {
    state: &'s ClusterState,
    config: &'s Config,
    plan: Result<Plan, Arc<str>>,
    /// The reason for a node the state does not know.
    unknown_node: Arc<str>,
    in_flight: InFlightNeeds,
}

impl<'s> Judge<'s> {
    /// Plans the judging of a pod whose volumes were resolved (or failed to resolve).
    pub fn new(
        resolution: Result<&Resolution, &Missing>,
        state: &'s ClusterState,
        config: &'s Config,
    ) -> Self {
        let plan = match resolution {
            Ok(r) => Ok(plan(&r.volumes, state, config)),
            Err(e) => Err(format!(
                "node(s) not judged: {e}, so volguard cannot tell which volumes the pod needs"
            )
            .into()),
        };
        Judge {
            state,
            config,
            plan,
            unknown_node: "node(s) not in volguard's cluster state (yet)".into(),
            in_flight: InFlightNeeds::default(),
        }
    }

    /// What this pod puts on the node it lands on, for other pods judged while it is in
    /// flight. Empty when it could not be planned.
    pub fn needs(&self) -> Needs {
        let Ok(plan) = &self.plan else {
            return Needs::default();
        };
        Needs {
            attach: plan
                .drivers
                .iter()
                .map(|d| DriverVolumes {
                    driver: d.id,
                    known: d.known.clone(),
                    pending: d.pending,
                })
                .collect(),
            exclusive: plan
                .exclusive_volumes
                .iter()
                .map(|(v, _)| v.clone())
                .collect(),
        }
    }

    /// Counts the volumes of these pods in flight (none of them this pod) on the nodes
    /// where `presume` puts them, as if they were bound there.
    pub fn with_in_flight(mut self, placements: &[Arc<Placement>], presume: Presume) -> Self {
        let Ok(plan) = &self.plan else {
            return self;
        };
        let per_driver = plan
            .drivers
            .iter()
            .map(|d| {
                placements
                    .iter()
                    .filter_map(|p| {
                        let theirs = p.needs.attach.iter().find(|a| a.driver == d.id)?;
                        Some((p.clone(), theirs.clone()))
                    })
                    .collect()
            })
            .collect();
        let mut exclusive = Vec::new();
        for (volume, claim) in &plan.exclusive_volumes {
            for p in placements
                .iter()
                .filter(|p| p.needs.exclusive.contains(volume))
            {
                let claim = claim
                    .as_ref()
                    .map(|c| format!(" (claim {c})"))
                    .unwrap_or_default();
                let reason = format!(
                    "node(s) that cannot use ReadWriteOnce volume {}{claim}: pod {} is being scheduled with it",
                    volume.handle, p.pod
                );
                exclusive.push(SharedExclusive {
                    placement: p.clone(),
                    reason: reason.into(),
                });
            }
        }
        self.in_flight = InFlightNeeds {
            per_driver,
            exclusive,
            presume: Some(presume),
        };
        self
    }

    /// The pod has no managed volume: every node passes with the same score.
    pub fn is_indifferent(&self) -> bool {
        self.plan.as_ref().is_ok_and(|p| {
            p.devices.is_empty() && p.unprovisioned.is_none() && p.drivers.is_empty()
        })
    }

    /// The verdict and score for the node named `name`.
    pub fn judge(&self, name: &str) -> Judgement {
        self.judge_named(name).0
    }

    /// [`Judge::judge`], with the state's own copy of the node's name when the node is
    /// known (see [`ClusterState::shared_name`]), taken from the same lookup.
    pub fn judge_named(&self, name: &str) -> (Judgement, Option<&'s Arc<str>>) {
        self.judge_presuming(name, self.in_flight.presume)
    }

    /// The verdict as if no pod were in flight: tells the nodes that pods in flight
    /// alone turn away.
    pub fn judge_unhindered(&self, name: &str) -> Judgement {
        self.judge_presuming(name, None).0
    }

    /// The verdict, and the node's shared name when the node was looked up and known.
    fn judge_presuming(
        &self,
        name: &str,
        presume: Option<Presume>,
    ) -> (Judgement, Option<&'s Arc<str>>) {
        let plan = match &self.plan {
            Ok(p) => p,
            Err(reason) => {
                return (
                    Judgement::fail(FailKind::VolumeUnresolved, reason, None),
                    None,
                );
            }
        };
        if self.is_indifferent() {
            return (Judgement::indifferent(), None);
        }
        let Some(facts) = self.state.node_facts(name) else {
            return (
                Judgement::fail(FailKind::NodeUnknown, &self.unknown_node, None),
                None,
            );
        };
        (
            self.judge_node(plan, name, facts, presume),
            Some(facts.name),
        )
    }

    /// The verdict for a known node.
    fn judge_node(
        &self,
        plan: &Plan,
        name: &str,
        facts: NodeFacts<'s>,
        presume: Option<Presume>,
    ) -> Judgement {
        let (node, csinode, holdings) = (facts.node, facts.csinode, facts.holdings);
        if let Some(reason) = &plan.unprovisioned {
            return Judgement::fail(FailKind::DeviceMissing, reason, None);
        }
        // Rule 1: device-plugin volumes must be advertised with a count of 1 or more.
        for d in &plan.devices {
            if node.devices.get(&d.id).copied().unwrap_or(0) < 1 {
                return Judgement::fail(FailKind::DeviceMissing, &d.reason, None);
            }
        }
        // Rule 2: the CSI driver must be registered on the node.
        for d in plan.drivers.iter() {
            let Some(reason) = &d.unregistered else {
                continue;
            };
            let detail = match csinode {
                None => Detail::NoCsiNode,
                Some(c) if !c.drivers.contains(d.id) => Detail::NoCsiNodeEntry,
                Some(_) => continue,
            };
            return Judgement::fail(FailKind::DriverNotRegistered, reason, Some(detail));
        }
        // Rule 3: an exclusive volume in use on another node, or that a pod in flight
        // may be bound with to another node.
        for e in &plan.exclusive {
            if let Some((_, reason)) = e.users.iter().find(|(n, _)| n != name) {
                return Judgement::fail(FailKind::VolumeInUse, reason, None);
            }
        }
        if let Some(presume) = presume {
            for e in &self.in_flight.exclusive {
                if e.placement.may_be_elsewhere(name, presume) {
                    return Judgement::fail(FailKind::VolumeInUse, &e.reason, None);
                }
            }
        }
        // Rule 4: attach limits, and the score from the tightest driver.
        let mut new_total = 0;
        let mut score = MAX_SCORE - 1;
        for (i, d) in plan.drivers.iter().enumerate() {
            let (scheduling, landing) = match presume {
                Some(presume) => self.landing(i, presume, name, &holdings),
                None => (0, Distinct::default()),
            };
            let held = d
                .known
                .iter()
                .zip(&d.known_holders)
                .filter(|(v, holders)| {
                    let holds = match holders {
                        Some(nodes) => nodes.iter().any(|h| **h == *name),
                        None => holdings.holds(v),
                    };
                    holds || landing.contains(v)
                })
                .count() as u32;
            let new = d.pending + d.known.len() as u32 - held;
            if new == 0 {
                continue;
            }
            new_total += new;
            let limit = attach_limit(node, csinode, d.id, self.config_of(d.id));
            let Some(max) = limit.max else { continue };
            let used = holdings.used(d.id) + scheduling;
            let after = i64::from(used) + i64::from(new);
            if after > max {
                let detail = Detail::Slots {
                    used,
                    scheduling,
                    max,
                    new,
                    ignored_annotation: limit.ignored_annotation,
                };
                return Judgement::fail(
                    FailKind::AttachLimit,
                    d.at_limit.of(&limit.source),
                    Some(detail),
                );
            }
            score = score.min(free_score(max - after, max));
        }
        Judgement {
            verdict: Verdict::Pass,
            score: if new_total == 0 { MAX_SCORE } else { score },
        }
    }

    /// The volumes of `plan.drivers[i]`'s driver that pods in flight put on `node`
    /// beyond what it holds: how many slots they take, and the volumes with a handle.
    fn landing(
        &self,
        i: usize,
        presume: Presume,
        node: &str,
        holdings: &Holdings<'_>,
    ) -> (u32, Distinct<'_>) {
        let mut landing = Distinct::default();
        let mut slots = 0;
        let Some(placements) = self.in_flight.per_driver.get(i) else {
            return (0, landing);
        };
        for (p, volumes) in placements {
            if !p.may_be_on(node, presume) {
                continue;
            }
            slots += volumes.pending;
            for v in &volumes.known {
                if !holdings.holds(v) && landing.insert(v) {
                    slots += 1;
                }
            }
        }
        (slots, landing)
    }

    fn config_of(&self, id: DriverId) -> &'s DriverConfig {
        &self.config.drivers[usize::from(id.0)]
    }
}

/// Distinct volumes: a short list searched in order, a set once it holds more than
/// [`Distinct::LIST`], so that a burst of placements in flight on one node (up to 512)
/// costs each node's judgement a linear time, not a quadratic one.
#[derive(Default)]
struct Distinct<'a> {
    list: Vec<&'a VolumeId>,
    set: Option<FastSet<&'a VolumeId>>,
}

impl<'a> Distinct<'a> {
    const LIST: usize = 16;

    /// Adds `v`; whether it was not there yet.
    fn insert(&mut self, v: &'a VolumeId) -> bool {
        if let Some(set) = &mut self.set {
            return set.insert(v);
        }
        if self.list.contains(&v) {
            return false;
        }
        self.list.push(v);
        if self.list.len() > Self::LIST {
            self.set = Some(self.list.drain(..).collect());
        }
        true
    }

    fn contains(&self, v: &VolumeId) -> bool {
        match &self.set {
            Some(set) => set.contains(v),
            None => self.list.contains(&v),
        }
    }
}

/// 1..=9 by the share of attach slots still free after placing the pod:
/// `1 + 8 * free / limit`, so a node that keeps more room scores higher.
fn free_score(free: i64, max: i64) -> u8 {
    if max <= 0 {
        return 1;
    }
    // In i128: a limit near i64::MAX (a node annotation may say anything) must not
    // overflow.
    let scaled = 1 + 8 * i128::from(free.clamp(0, max)) / i128::from(max);
    scaled as u8
}

/// Works out, once per request, what the pod needs of a node, volume by volume, with
/// the reasons failing nodes will be given: judging a node then only looks things up.
fn plan(volumes: &[ManagedVolume], state: &ClusterState, config: &Config) -> Plan {
    let drivers = state.drivers();
    let mut plan = Plan {
        devices: Vec::new(),
        unprovisioned: None,
        drivers: Vec::new(),
        exclusive: Vec::new(),
        exclusive_volumes: Vec::new(),
    };
    for m in volumes {
        let claim = match &m.origin {
            Origin::Claim(c) | Origin::EphemeralTemplate(c) => Some(c.as_str()),
            Origin::Inline | Origin::Device => None,
        };
        match (drivers.mode(m.driver), m.id()) {
            (Mode::DevicePlugin, Some(id)) => plan.devices.push(DeviceNeed::new(id, state)),
            (Mode::DevicePlugin, None) => {
                plan.unprovisioned.get_or_insert_with(|| {
                    format!(
                        "node(s) without a volume for claim {} of device-plugin driver {} (it has no volume yet)",
                        claim.unwrap_or("?"),
                        drivers.get(m.driver).name
                    )
                    .into()
                });
            }
            (Mode::Attach, None) => plan.driver_need(m.driver, state, config).pending += 1,
            (Mode::Attach, Some(id)) => {
                if m.exclusive && config.scheduling.exclusive_read_write_once {
                    plan.exclusive.extend(Exclusive::in_use(&id, claim, state));
                    plan.exclusive_volumes
                        .push((id.clone(), claim.map(str::to_owned)));
                }
                let need = plan.driver_need(m.driver, state, config);
                let holders = state.holders(&id);
                need.known_holders
                    .push((holders.len() <= FEW_HOLDERS).then(|| holders.to_vec()));
                need.known.push(id);
            }
        }
    }
    plan
}

impl Plan {
    /// The needs of the attach-mode `driver`, added at its first volume: one entry per
    /// driver, as its attach limit counts all its volumes together.
    fn driver_need(
        &mut self,
        driver: DriverId,
        state: &ClusterState,
        config: &Config,
    ) -> &mut DriverNeed {
        let at = match self.drivers.iter().position(|d| d.id == driver) {
            Some(at) => at,
            None => {
                self.drivers
                    .push(DriverNeed::new(driver, state.drivers().get(driver), config));
                self.drivers.len() - 1
            }
        };
        &mut self.drivers[at]
    }
}

impl DeviceNeed {
    /// The device-plugin volume `id`, with the reason for the nodes that do not have it,
    /// which names where it is, so that a user sees where the pod could go.
    fn new(id: VolumeId, state: &ClusterState) -> Self {
        let mut holders: Vec<&str> = state.device_holders(&id).collect();
        holders.sort_unstable();
        let elsewhere = if holders.is_empty() {
            "no node".to_owned()
        } else {
            holders.join(", ")
        };
        let reason = format!(
            "node(s) without volume {} attached (it is attached to {elsewhere})",
            id.handle
        );
        DeviceNeed {
            id,
            reason: reason.into(),
        }
    }
}

impl DriverNeed {
    /// No volume yet, with the texts for the nodes that fail the driver's rules, made
    /// once per request rather than once per node.
    fn new(id: DriverId, driver: &DriverConfig, config: &Config) -> Self {
        let unregistered = config
            .scheduling
            .require_registered_driver
            .then_some(driver.csi_driver.as_ref())
            .flatten()
            .map(|csi| {
                format!(
                    "node(s) without CSI driver {csi} registered (is its node plugin running, with the kubelet's --root-dir?)"
                )
                .into()
            });
        let annotation = driver
            .attach_limit
            .as_ref()
            .and_then(|l| l.node_annotation.as_deref());
        DriverNeed {
            id,
            unregistered,
            at_limit: LimitReasons::new(&driver.name, annotation),
            known: Vec::new(),
            known_holders: Vec::new(),
            pending: 0,
        }
    }
}

impl Exclusive {
    /// The exclusive volume `id` (of claim `claim`) when bound pods use it already, with
    /// the reason for every node but theirs; `None` while no pod uses it.
    fn in_use(id: &VolumeId, claim: Option<&str>, state: &ClusterState) -> Option<Self> {
        let mut users: Vec<(String, String)> = state
            .users(id)
            .iter()
            .map(|u| (u.node.to_string(), u.pod.clone()))
            .collect();
        if users.is_empty() {
            return None;
        }
        users.sort();
        let claim = claim.map(|c| format!(" (claim {c})")).unwrap_or_default();
        let users = users
            .into_iter()
            .map(|(node, pod)| {
                let reason = format!(
                    "node(s) that cannot use ReadWriteOnce volume {}{claim}: in use on {node} by pod {pod}",
                    id.handle
                );
                (node, reason.into())
            })
            .collect();
        Some(Exclusive { users })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_volumes_stay_distinct_past_the_short_list() {
        let volumes: Vec<VolumeId> = (0..40)
            .map(|i| VolumeId {
                driver: DriverId(0),
                handle: format!("vol-{i}").into(),
            })
            .collect();
        let mut distinct = Distinct::default();
        for (i, v) in volumes.iter().enumerate() {
            assert!(distinct.insert(v), "vol-{i} is new");
            assert!(!distinct.insert(&volumes[i / 2]), "vol-{} is there", i / 2);
            assert_eq!(distinct.set.is_some(), i >= Distinct::LIST, "after vol-{i}");
            assert!(volumes[..=i].iter().all(|v| distinct.contains(v)));
            assert!(volumes[i + 1..].iter().all(|v| !distinct.contains(v)));
        }
    }

    #[test]
    fn free_score_scales_from_one_to_nine() {
        assert_eq!(free_score(0, 8), 1);
        assert_eq!(free_score(8, 8), 9);
        assert_eq!(free_score(6, 8), 7);
        assert_eq!(free_score(14, 16), 8);
        assert_eq!(free_score(3, 0), 1);
        assert_eq!(free_score(-2, 8), 1);
        assert_eq!(free_score(i64::MAX - 2, i64::MAX), 8);
        assert_eq!(free_score(i64::MAX, i64::MAX), 9);
        assert_eq!(free_score(3 << 61, (3 << 61) + 1), 8);
    }
}
