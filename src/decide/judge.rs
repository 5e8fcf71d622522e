//! The extender's pure core (README: "The scheduler extender"): given a pod's resolved
//! volumes and the cluster state, say for each node whether the pod fits, why not, and
//! how well.
//! The pod is planned once per request; judging a node then costs a few index lookups
//! per pod volume, never a scan of the cluster.

use std::fmt;

use crate::{
    cluster::{
        ClusterState, Missing,
        records::{CsiNodeRecord, NodeRecord},
    },
    decide::resolve::{ManagedVolume, Origin, Resolution},
    model::{
        config::{Config, DriverConfig},
        drivers::{DriverId, Mode, VolumeId},
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
        /// What is wrong, with the numbers.
        reason: String,
    },
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
    /// Preemption or time can help (`FailedNodes`); otherwise `FailedAndUnresolvableNodes`.
    pub fn resolvable(self) -> bool {
        matches!(self, FailKind::NodeUnknown | FailKind::AttachLimit)
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
    fn fail(kind: FailKind, reason: String) -> Self {
        Judgement {
            verdict: Verdict::Fail { kind, reason },
            score: 0,
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

impl Limit {
    /// "(limit from CSINode)", plus a note when an annotation was ignored.
    fn explain(&self) -> String {
        match &self.ignored_annotation {
            None => format!("({})", self.source),
            Some((key, value)) => format!(
                "({}; node annotation {key}={value:?} is not a non-negative integer, ignored)",
                self.source
            ),
        }
    }
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
    let registered = csinode.and_then(|c| c.drivers.get(&driver));
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

/// A device-plugin volume the node must advertise with a count of 1 or more.
#[derive(Debug)]
struct DeviceNeed {
    id: VolumeId,
    /// "attached to worker-2" or "attached to no node", computed once.
    elsewhere: String,
}

/// The pod's volumes of one attach-mode driver.
#[derive(Debug)]
struct DriverNeed {
    id: DriverId,
    /// Check the CSINode registration of this CSI driver name.
    registration: Option<String>,
    /// Volumes with a handle: new on a node unless it holds them already.
    known: Vec<VolumeId>,
    /// Unbound claims: each is one new attachment anywhere.
    pending: u32,
}

/// An exclusive volume already in use: it fails every other node.
#[derive(Debug)]
struct Exclusive {
    handle: String,
    claim: Option<String>,
    /// (node, pod) using it, sorted.
    users: Vec<(String, String)>,
}

/// What the pod needs, worked out once per request.
#[derive(Debug)]
struct Plan {
    devices: Vec<DeviceNeed>,
    /// Why no node can hold a device-plugin claim that has no volume yet.
    unprovisioned: Option<String>,
    drivers: Vec<DriverNeed>,
    exclusive: Vec<Exclusive>,
}

/// Judges nodes for one pod. Build it once per request, then ask about each node.
#[derive(Debug)]
pub struct Judge<'s> {
    state: &'s ClusterState,
    config: &'s Config,
    plan: Result<Plan, String>,
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
                "{e}: volguard cannot tell which volumes the pod needs"
            )),
        };
        Judge {
            state,
            config,
            plan,
        }
    }

    /// The pod has no managed volume: every node passes with the same score.
    pub fn is_indifferent(&self) -> bool {
        self.plan.as_ref().is_ok_and(|p| {
            p.devices.is_empty() && p.unprovisioned.is_none() && p.drivers.is_empty()
        })
    }

    /// The verdict and score for the node named `name`.
    pub fn judge(&self, name: &str) -> Judgement {
        let plan = match &self.plan {
            Ok(p) => p,
            Err(reason) => return Judgement::fail(FailKind::VolumeUnresolved, reason.clone()),
        };
        if self.is_indifferent() {
            return Judgement::indifferent();
        }
        let state = self.state;
        let Some(node) = state.node(name) else {
            return Judgement::fail(
                FailKind::NodeUnknown,
                format!("node {name} is not in volguard's cluster state"),
            );
        };
        if let Some(why) = &plan.unprovisioned {
            return Judgement::fail(FailKind::DeviceMissing, why.clone());
        }
        // Rule 1: device-plugin volumes must be advertised with a count of 1 or more.
        for d in &plan.devices {
            if node.devices.get(&d.id).copied().unwrap_or(0) < 1 {
                return Judgement::fail(
                    FailKind::DeviceMissing,
                    format!(
                        "volume {} is not attached to this node ({})",
                        d.id.handle, d.elsewhere
                    ),
                );
            }
        }
        // Rule 2: the CSI driver must be registered on the node.
        let csinode = state.csinode(name);
        for d in plan.drivers.iter() {
            let Some(csi) = &d.registration else { continue };
            let why = match csinode {
                None => "the node has no CSINode object",
                Some(c) if !c.drivers.contains_key(&d.id) => "no CSINode entry",
                Some(_) => continue,
            };
            return Judgement::fail(
                FailKind::DriverNotRegistered,
                format!(
                    "CSI driver {csi} is not registered on this node ({why}: is the node plugin running, and does it use the kubelet's --root-dir?)"
                ),
            );
        }
        // Rule 3: an exclusive volume in use on another node.
        for e in &plan.exclusive {
            if let Some((other, pod)) = e.users.iter().find(|(n, _)| n != name) {
                let claim = e
                    .claim
                    .as_ref()
                    .map(|c| format!(" (claim {c})"))
                    .unwrap_or_default();
                return Judgement::fail(
                    FailKind::VolumeInUse,
                    format!(
                        "volume {}{claim} is ReadWriteOnce and in use on {other} by pod {pod}",
                        e.handle
                    ),
                );
            }
        }
        // Rule 4: attach limits, and the score from the tightest driver.
        let holdings = state.holdings(name);
        let mut new_total = 0;
        let mut score = MAX_SCORE - 1;
        for d in &plan.drivers {
            let held = d.known.iter().filter(|v| holdings.holds(v)).count() as u32;
            let new = d.pending + d.known.len() as u32 - held;
            if new == 0 {
                continue;
            }
            new_total += new;
            let limit = attach_limit(node, csinode, d.id, self.config_of(d.id));
            let Some(max) = limit.max else { continue };
            let used = holdings.used(d.id);
            let after = i64::from(used) + i64::from(new);
            if after > max {
                return Judgement::fail(
                    FailKind::AttachLimit,
                    format!(
                        "attach limit reached for {}: {used} of {max} used, pod needs {new} more {}",
                        self.config_of(d.id).name,
                        limit.explain()
                    ),
                );
            }
            score = score.min(free_score(max - after, max));
        }
        Judgement {
            verdict: Verdict::Pass,
            score: if new_total == 0 { MAX_SCORE } else { score },
        }
    }

    fn config_of(&self, id: DriverId) -> &'s DriverConfig {
        &self.config.drivers[usize::from(id.0)]
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

fn plan(volumes: &[ManagedVolume], state: &ClusterState, config: &Config) -> Plan {
    let drivers = state.drivers();
    let mut plan = Plan {
        devices: Vec::new(),
        unprovisioned: None,
        drivers: Vec::new(),
        exclusive: Vec::new(),
    };
    for m in volumes {
        let claim = match &m.origin {
            Origin::Claim(c) | Origin::EphemeralTemplate(c) => Some(c.clone()),
            Origin::Inline | Origin::Device => None,
        };
        match (drivers.mode(m.driver), m.id()) {
            (Mode::DevicePlugin, Some(id)) => {
                let mut holders: Vec<&str> = state.device_holders(&id).collect();
                holders.sort_unstable();
                let elsewhere = if holders.is_empty() {
                    "attached to no node".to_owned()
                } else {
                    format!("attached to {}", holders.join(", "))
                };
                plan.devices.push(DeviceNeed { id, elsewhere });
            }
            (Mode::DevicePlugin, None) => {
                plan.unprovisioned.get_or_insert_with(|| {
                    format!(
                        "claim {} of device-plugin driver {} has no volume yet, so no node holds it",
                        claim.as_deref().unwrap_or("?"),
                        drivers.get(m.driver).name
                    )
                });
            }
            (Mode::Attach, id) => {
                let need = match plan.drivers.iter_mut().find(|d| d.id == m.driver) {
                    Some(n) => n,
                    None => {
                        let registration = config
                            .scheduling
                            .require_registered_driver
                            .then(|| drivers.get(m.driver).csi_driver.clone())
                            .flatten();
                        plan.drivers.push(DriverNeed {
                            id: m.driver,
                            registration,
                            known: Vec::new(),
                            pending: 0,
                        });
                        plan.drivers.last_mut().expect("just pushed")
                    }
                };
                match id {
                    None => need.pending += 1,
                    Some(id) => {
                        if m.exclusive && config.scheduling.exclusive_read_write_once {
                            let mut users: Vec<(String, String)> = state
                                .users(&id)
                                .iter()
                                .map(|u| (u.node.to_string(), u.pod.clone()))
                                .collect();
                            if !users.is_empty() {
                                users.sort();
                                plan.exclusive.push(Exclusive {
                                    handle: id.handle.to_string(),
                                    claim,
                                    users,
                                });
                            }
                        }
                        need.known.push(id);
                    }
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

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
