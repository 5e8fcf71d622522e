//! Remediation (docs/remediation.md): which pods lost their device-plugin volume and
//! should be moved. Pure: given the cluster state, the config, a clock value and what the
//! controller remembers, it returns the pods at risk, the pods to evict now and the pods
//! skipped with why, and checks a fresh read of a pod and its node before each eviction.
//! The controller in `server::remediation` does the API calls.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    cluster::{
        ClusterState,
        records::{NodeRecord, PodRecord},
    },
    model::{
        config::{Config, RemediationConfig},
        drivers::{DriverId, Drivers, Mode, VolumeId},
    },
};

/// A non-terminal pod bound to a node that advertises one of the pod's device-plugin
/// volumes with a count below 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The uid of the pod judged: the eviction names it, so a pod recreated under the
    /// same name meanwhile is not the one evicted.
    pub uid: Option<String>,
    /// The node it is bound to, which has lost the volume.
    pub node: String,
    /// The volume's driver, as configured (`brightbox`).
    pub driver: String,
    /// The volume's handle, e.g. `vol-qsk4v`.
    pub volume: String,
    /// The extended resource the node advertises below 1.
    pub resource: String,
    /// Other Ready nodes that advertise the volume with a count of 1 or more, sorted.
    pub attached_to: Vec<String>,
    /// Other nodes a VolumeAttachment reports the volume attached to, as
    /// `(node, VolumeAttachment name)`, sorted by name.
    pub attachments: Vec<(String, String)>,
}

impl Detached {
    /// Namespace and name of the pod.
    pub fn pod_parts(&self) -> (&str, &str) {
        self.pod.split_once('/').unwrap_or(("", &self.pod))
    }

    /// Positive evidence that the volume left: it is seen on another node. A count
    /// below 1 alone is not: a device plugin restarting shows the same.
    pub fn has_evidence(&self) -> bool {
        !self.attached_to.is_empty() || !self.attachments.is_empty()
    }

    /// Where the volume is and is not, as the Events and `explain` say it.
    pub fn whereabouts(&self) -> String {
        let mut places = self.attached_to.clone();
        for (node, _) in &self.attachments {
            if !self.attached_to.contains(node) {
                places.push(format!("{node} (VolumeAttachment)"));
            }
        }
        let now = if places.is_empty() {
            "no other Ready node advertises it and no VolumeAttachment puts it on another node"
                .to_owned()
        } else {
            format!("it is attached to {}", places.join(", "))
        };
        format!(
            "volume {} is detached from node {} ({} is below 1 there); {now}",
            self.volume, self.node, self.resource
        )
    }
}

/// A node on which every volume of a device-plugin driver is below 1 at once: the
/// device plugin went away (the kubelet marks all its devices unhealthy), not the
/// volumes. Its pods are left alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginDown {
    /// The node.
    pub node: String,
    /// The driver, as configured.
    pub driver: String,
    /// How many of its volumes the node lists, all below 1.
    pub volumes: usize,
}

impl PluginDown {
    /// One line for logs, the Node's Event, `explain` and `nodes`.
    pub fn describe(&self) -> String {
        format!(
            "the {} device plugin on node {} looks down: all {} of its volumes there are below 1 at once, so its pods are left alone",
            self.driver, self.node, self.volumes
        )
    }
}

/// The fewest volumes of a driver a node must list, all below 1, for a drop to read as
/// the plugin going away. With one volume, a plugin gone and the volume gone look alike:
/// the evidence rule (the volume seen on another node) then decides.
pub const PLUGIN_DOWN_MIN_VOLUMES: usize = 2;

/// One line for `volguard explain` and `volguard nodes`: the pod, where its volume is,
/// and what remediation will do about it under `config`.
pub fn status_line(d: &Detached, skip: Option<Skip>, config: &Config) -> String {
    let r = &config.remediation;
    let then = match skip {
        Some(Skip::OptedOut) => format!(
            "left alone: it opts out ({}: \"false\")",
            config.annotation("remediate")
        ),
        Some(Skip::NodeNotReady) => format!("left alone: node {} is not Ready", d.node),
        Some(Skip::PluginDown) => format!(
            "left alone: every {} volume on node {} is below 1 at once, so its device plugin looks down, not the volume",
            d.driver, d.node
        ),
        Some(Skip::NoEvidence) => {
            "left alone: a count below 1 alone does not prove the volume left (a device plugin restarting shows the same)".to_owned()
        }
        Some(Skip::BarePod) => {
            "left alone: no controller owns it, so nothing would recreate it once evicted (remediation.evictBarePods: false)".to_owned()
        }
        Some(Skip::RateLimited) | None if !r.enabled => {
            "not evicted: remediation is off (remediation.enabled: false)".to_owned()
        }
        Some(Skip::RateLimited) | None => format!(
            "waiting for remediation: {} once this has lasted {}s (remediation.gracePeriodSeconds)",
            if r.dry_run {
                "a dry-run Event"
            } else {
                "evicted"
            },
            r.grace_period_seconds
        ),
    };
    format!("{}: {}; {then}", d.pod, d.whereabouts())
}

/// Why a detached pod is not evicted in this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// The pod carries `<prefix>/remediate: "false"`.
    OptedOut,
    /// The node's `Ready` condition is not `True`: not volguard's case to act on.
    NodeNotReady,
    /// Every volume of the driver on the node is below 1: the plugin, not the volume.
    PluginDown,
    /// No other Ready node advertises the volume and no VolumeAttachment puts it on
    /// another node: nothing proves it left.
    NoEvidence,
    /// No controller owns the pod and `remediation.evictBarePods` is off.
    BarePod,
    /// `maxEvictionsPerMinute` is used up: evicted in a later round.
    RateLimited,
}

impl Skip {
    /// Every reason, for metrics that export each one.
    pub const ALL: [Skip; 6] = [
        Skip::OptedOut,
        Skip::NodeNotReady,
        Skip::PluginDown,
        Skip::NoEvidence,
        Skip::BarePod,
        Skip::RateLimited,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted_out",
            Skip::NodeNotReady => "node_not_ready",
            Skip::PluginDown => "plugin_down",
            Skip::NoEvidence => "no_evidence",
            Skip::BarePod => "bare_pod",
            Skip::RateLimited => "rate_limited",
        }
    }
}

/// What happened to an eviction the controller started, reported back into [`Memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The API server accepted the eviction (or, in a dry run, it was recorded).
    Done,
    /// Refused (429: a PodDisruptionBudget allows no disruption now): retried after
    /// [`RETRY_AFTER`], never forced, and not counted against the rate limit.
    Refused,
    /// The API server answered with another error: nothing was evicted; retried after
    /// [`RETRY_AFTER`], not counted.
    Failed,
    /// No answer (a timeout, a lost connection): the eviction may have happened, so it
    /// counts against the rate limit; retried after [`RETRY_AFTER`].
    Unknown,
    /// Not attempted: the fresh read of the pod or its node no longer supports it, or
    /// the controller stopped acting. Not counted; looked at again after [`RETRY_AFTER`].
    Cancelled,
}

/// How long a refused, failed or cancelled eviction waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The window of `maxEvictionsPerMinute`.
const MINUTE: Duration = Duration::from_secs(60);

/// What the memory knows of one detachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// When it was first seen, without a break.
    since: Duration,
    /// When the pod may be tried again: `None` not tried yet, `Duration::MAX` done.
    next: Option<Duration>,
}

/// `(pod, uid, node, volume)`: a pod recreated under the same name is a new case.
type Key = (String, Option<String>, String, String);

/// The controller's memory between rounds: when each detachment was first seen, which
/// pods were dealt with, and when the evictions of the last minute started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    seen: BTreeMap<Key, Seen>,
    /// Starts of the last minute, with the pod (empty for starts restored from the
    /// Lease, made by an earlier holder).
    started: Vec<(Duration, String)>,
}

impl Memory {
    /// What a halted round keeps: the evictions started (the rate limit holds across the
    /// halt), not the detachments, each of which must then be seen again for a whole
    /// grace period: nothing was observed while halted.
    pub fn halted(&self) -> Memory {
        Memory {
            seen: BTreeMap::new(),
            started: self.started.clone(),
        }
    }

    /// Records the outcome of the eviction of `d` that the round at `now` started.
    /// Refused, failed and cancelled ones give their rate-limit slot back.
    pub fn record(&mut self, d: &Detached, outcome: Outcome, now: Duration) {
        if matches!(
            outcome,
            Outcome::Refused | Outcome::Failed | Outcome::Cancelled
        ) && let Some(i) = self
            .started
            .iter()
            .rposition(|(at, pod)| *at == now && *pod == d.pod)
        {
            self.started.remove(i);
        }
        if let Some(seen) = self.seen.get_mut(&key(d)) {
            seen.next = Some(match outcome {
                Outcome::Done => Duration::MAX,
                _ => now.saturating_add(RETRY_AFTER),
            });
        }
    }

    /// How long ago, at `now`, each eviction of the last minute started: what the Lease
    /// carries so that the next holder keeps to the same limit.
    pub fn recent_starts(&self, now: Duration) -> Vec<Duration> {
        let mut ages: Vec<Duration> = self
            .started
            .iter()
            .map(|(at, _)| now.saturating_sub(*at))
            .filter(|age| *age < MINUTE)
            .collect();
        ages.sort();
        ages
    }

    /// A memory that knows only the evictions an earlier holder started `ages` ago (as
    /// [`Memory::recent_starts`] gives them): what a new holder starts from.
    pub fn with_recent_starts(now: Duration, ages: &[Duration]) -> Memory {
        Memory {
            seen: BTreeMap::new(),
            started: ages
                .iter()
                .filter(|age| **age < MINUTE)
                .map(|age| (now.saturating_sub(*age), String::new()))
                .collect(),
        }
    }
}

/// The evictions of the last minute as the Lease annotation holds them: their start
/// times, wall clock, comma-separated. Wall clock because the next holder, another
/// process, reads them.
pub fn format_starts(ages: &[Duration], wall_now: Timestamp) -> String {
    ages.iter()
        .filter_map(|age| {
            let age = SignedDuration::try_from(*age).ok()?;
            wall_now.checked_sub(age).ok()
        })
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`format_starts`]'s text back as ages at `wall_now`. A time in the future (a
/// clock ahead of this one) counts as just now; text that is no time is skipped.
pub fn parse_starts(text: &str, wall_now: Timestamp) -> Vec<Duration> {
    text.split(',')
        .filter_map(|t| t.trim().parse::<Timestamp>().ok())
        .map(|t| {
            let age = wall_now.duration_since(t);
            Duration::try_from(age).unwrap_or(Duration::ZERO)
        })
        .filter(|age| *age < MINUTE)
        .collect()
}

/// One round's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Why nothing was looked at: the cluster state is not synced, or a watch is failing.
    pub halted: Option<String>,
    /// Nodes whose device plugin looks down, sorted.
    pub plugins_down: Vec<PluginDown>,
    /// Detached pods within the grace period or waiting for a retry, with how long
    /// they have been detached.
    pub waiting: Vec<(Detached, Duration)>,
    /// Pods to evict now, oldest detachment first (in a dry run: to record as would-be
    /// evicted).
    pub evict: Vec<Detached>,
    /// Detached pods left alone, and why.
    pub skipped: Vec<(Detached, Skip)>,
    /// The memory for the next round; evictions in `evict` are counted as started.
    pub memory: Memory,
}

impl Plan {
    /// Pods at risk: detached, proven gone, and only waiting (grace period, retry, rate
    /// limit) to be evicted.
    pub fn at_risk(&self) -> usize {
        self.waiting.len()
            + self.evict.len()
            + self
                .skipped
                .iter()
                .filter(|(_, s)| *s == Skip::RateLimited)
                .count()
    }
}

/// What the cluster state says, before any timing: every detached pod with why it is
/// left alone (if it is), and the nodes whose device plugin looks down.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Survey {
    /// Detached pods, sorted by pod and volume; `Some` skip: left alone whatever the
    /// clock says.
    pub detached: Vec<(Detached, Option<Skip>)>,
    /// Nodes whose device plugin looks down, sorted.
    pub plugins_down: Vec<PluginDown>,
}

/// The device-plugin drivers whose every volume `node` lists is below 1, with how many
/// it lists (at least [`PLUGIN_DOWN_MIN_VOLUMES`]).
pub fn drivers_down(node: &NodeRecord, drivers: &Drivers) -> Vec<(DriverId, usize)> {
    let mut per_driver: HashMap<DriverId, (usize, usize)> = HashMap::new();
    for (v, count) in &node.devices {
        if drivers.mode(v.driver) != Mode::DevicePlugin {
            continue;
        }
        let (listed, below) = per_driver.entry(v.driver).or_default();
        *listed += 1;
        *below += usize::from(*count < 1);
    }
    let mut down: Vec<(DriverId, usize)> = per_driver
        .into_iter()
        .filter(|(_, (listed, below))| *listed >= PLUGIN_DOWN_MIN_VOLUMES && below == listed)
        .map(|(d, (listed, _))| (d, listed))
        .collect();
    down.sort();
    down
}

/// Every pod whose device-plugin volume its node advertises below 1, each with why it
/// is left alone if it is, and the nodes whose device plugin looks down. Attach-mode
/// volumes never count: only a device count says a volume left a node.
pub fn survey(state: &ClusterState, config: &RemediationConfig) -> Survey {
    let drivers = state.drivers();
    let mut survey = Survey::default();
    for name in state.node_names() {
        let Some(node) = state.node(name) else {
            continue;
        };
        let down = drivers_down(node, drivers);
        survey
            .plugins_down
            .extend(down.iter().map(|(d, volumes)| PluginDown {
                node: name.to_owned(),
                driver: drivers.get(*d).name.clone(),
                volumes: *volumes,
            }));
        let mut lost: Vec<&VolumeId> = node
            .devices
            .iter()
            .filter(|(v, count)| **count < 1 && drivers.mode(v.driver) == Mode::DevicePlugin)
            .map(|(v, _)| v)
            .collect();
        lost.sort();
        for volume in lost {
            for user in state.users(volume).iter().filter(|u| &*u.node == name) {
                let (namespace, pod_name) = user.pod.split_once('/').unwrap_or_default();
                let Some(pod) = state.pod(namespace, pod_name) else {
                    continue;
                };
                if pod.terminal || pod.deleting {
                    continue;
                }
                let mut attached_to: Vec<String> = state
                    .device_holders(volume)
                    .filter(|n| *n != name && state.node(n).is_some_and(|r| r.ready))
                    .map(str::to_owned)
                    .collect();
                attached_to.sort();
                let attachments: Vec<(String, String)> = state
                    .attached_by_va(volume)
                    .filter(|(n, _)| *n != name)
                    .map(|(n, va)| (n.to_owned(), va.to_owned()))
                    .collect();
                let d = Detached {
                    pod: user.pod.clone(),
                    uid: pod.uid.clone(),
                    node: name.to_owned(),
                    driver: drivers.get(volume.driver).name.clone(),
                    volume: volume.handle.to_string(),
                    resource: drivers.resource_name(volume).unwrap_or_default(),
                    attached_to,
                    attachments,
                };
                let skip = if pod.remediation_opt_out {
                    Some(Skip::OptedOut)
                } else if !node.ready {
                    Some(Skip::NodeNotReady)
                } else if down.iter().any(|(driver, _)| *driver == volume.driver) {
                    Some(Skip::PluginDown)
                } else if !d.has_evidence() {
                    Some(Skip::NoEvidence)
                } else if !pod.controlled && !config.evict_bare_pods {
                    Some(Skip::BarePod)
                } else {
                    None
                };
                survey.detached.push((d, skip));
            }
        }
    }
    survey
        .detached
        .sort_by(|a, b| a.0.pod.cmp(&b.0.pod).then(a.0.volume.cmp(&b.0.volume)));
    survey
}

/// Decides one round at time `now` (any monotonic clock, the same in every round).
/// While the state is not synced or any watch is failing nothing is decided and the
/// detachments are forgotten (one must be seen continuously for the grace period);
/// the evictions of the last minute are kept, so the rate limit holds across it.
pub fn plan(
    state: &ClusterState,
    config: &RemediationConfig,
    now: Duration,
    memory: &Memory,
) -> Plan {
    let mut started: Vec<(Duration, String)> = memory
        .started
        .iter()
        .filter(|(at, _)| now.saturating_sub(*at) < MINUTE)
        .cloned()
        .collect();
    let readiness = state.readiness();
    if let Some(problem) = readiness.problem().or_else(|| readiness.failing_now()) {
        return Plan {
            halted: Some(problem),
            memory: Memory {
                seen: BTreeMap::new(),
                started,
            },
            ..Plan::default()
        };
    }
    let grace = Duration::from_secs(config.grace_period_seconds.max(1).unsigned_abs());
    let budget = usize::try_from(config.max_evictions_per_minute.max(1)).unwrap_or(usize::MAX);
    let survey = survey(state, config);
    let mut plan = Plan {
        plugins_down: survey.plugins_down,
        ..Plan::default()
    };
    let mut seen = BTreeMap::new();
    let mut due = Vec::new();
    for (d, skip) in survey.detached {
        if let Some(skip) = skip {
            plan.skipped.push((d, skip));
            continue;
        }
        let k = key(&d);
        let entry = memory.seen.get(&k).copied().unwrap_or(Seen {
            since: now,
            next: None,
        });
        seen.insert(k, entry);
        let waited = now.saturating_sub(entry.since);
        match entry.next {
            Some(Duration::MAX) => {} // evicted: on its way out
            _ if waited < grace => plan.waiting.push((d, waited)),
            Some(at) if now < at => plan.waiting.push((d, waited)),
            _ => due.push((entry.since, d)),
        }
    }
    // Oldest detachment first: a pod waiting for its retry holds no slot, and one that
    // keeps being refused gives its slot back, so none of them starves the others.
    due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.pod.cmp(&b.1.pod)));
    for (_, d) in due {
        if started.len() < budget {
            started.push((now, d.pod.clone()));
            plan.evict.push(d);
        } else {
            plan.skipped.push((d, Skip::RateLimited));
        }
    }
    plan.memory = Memory { seen, started };
    plan
}

/// Checks a fresh read of the pod and its node, just before evicting it: the same pod
/// (uid), still bound to the node, still not opted out, owned as required, the node
/// still Ready with the volume below 1 and its plugin not looking down, and
/// `evidence_holds`: the volume was seen again on another node. `Err` says why not.
pub fn recheck(
    d: &Detached,
    pod: &PodRecord,
    node: &NodeRecord,
    evidence_holds: bool,
    drivers: &Drivers,
    config: &RemediationConfig,
) -> Result<(), String> {
    let volume = drivers
        .volume_of_resource(&d.resource)
        .ok_or_else(|| format!("{} is no configured device resource", d.resource))?;
    match (&d.uid, &pod.uid) {
        (Some(judged), Some(now)) if judged == now => {}
        (judged, now) => {
            return Err(format!(
                "the pod is not the one judged (uid {} then, {} now)",
                judged.as_deref().unwrap_or("unknown"),
                now.as_deref().unwrap_or("unknown")
            ));
        }
    }
    if pod.deleting || pod.terminal {
        return Err("the pod is already on its way out".into());
    }
    if pod.node.as_deref() != Some(d.node.as_str()) {
        return Err(format!(
            "the pod is bound to {} now, not {}",
            pod.node.as_deref().unwrap_or("no node"),
            d.node
        ));
    }
    if pod.remediation_opt_out {
        return Err("the pod opts out now".into());
    }
    if !pod.controlled && !config.evict_bare_pods {
        return Err("no controller owns the pod".into());
    }
    if !node.ready {
        return Err(format!("node {} is not Ready now", d.node));
    }
    match node.devices.get(&volume) {
        Some(count) if *count < 1 => {}
        Some(_) => return Err(format!("node {} advertises {} again", d.node, d.resource)),
        None => {
            return Err(format!("node {} no longer lists {}", d.node, d.resource));
        }
    }
    if drivers_down(node, drivers)
        .iter()
        .any(|(driver, _)| *driver == volume.driver)
    {
        return Err(format!(
            "every {} volume on node {} is below 1 now: its device plugin looks down",
            d.driver, d.node
        ));
    }
    if !evidence_holds {
        return Err("no other node holds the volume now".into());
    }
    Ok(())
}

fn key(d: &Detached) -> Key {
    (
        d.pod.clone(),
        d.uid.clone(),
        d.node.clone(),
        d.volume.clone(),
    )
}
