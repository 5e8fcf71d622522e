//! Remediation (README: "Remediation"): which pods lost their device-plugin volume and
//! should be moved. Pure: given the cluster state, the config, a clock value and what the
//! controller remembers, it returns the pods at risk, the pods to evict now and the pods
//! skipped with why. The controller in `server::remediation` does the API calls.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use crate::{
    cluster::ClusterState,
    model::{
        config::{Config, RemediationConfig},
        drivers::{Mode, VolumeId},
    },
};

/// A non-terminal pod bound to a Ready node that advertises one of the pod's
/// device-plugin volumes with a count below 1: positive evidence that the volume left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The node it is bound to, which has lost the volume.
    pub node: String,
    /// The volume's handle, e.g. `vol-qsk4v`.
    pub volume: String,
    /// The extended resource the node advertises below 1.
    pub resource: String,
    /// Nodes that advertise the volume with a count of 1 or more now, sorted.
    pub attached_to: Vec<String>,
}

impl Detached {
    /// Namespace and name of the pod.
    pub fn pod_parts(&self) -> (&str, &str) {
        self.pod.split_once('/').unwrap_or(("", &self.pod))
    }

    /// Where the volume is and is not, as the Events and `explain` say it.
    pub fn whereabouts(&self) -> String {
        let now = if self.attached_to.is_empty() {
            "no node".to_owned()
        } else {
            self.attached_to.join(", ")
        };
        format!(
            "volume {} is detached from node {} ({} is below 1 there); it is attached to {now}",
            self.volume, self.node, self.resource
        )
    }
}

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
    /// `maxEvictionsPerMinute` is used up: evicted in a later round.
    RateLimited,
}

impl Skip {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted_out",
            Skip::NodeNotReady => "node_not_ready",
            Skip::RateLimited => "rate_limited",
        }
    }
}

/// What happened to an eviction the controller started, reported back into [`Memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The API server accepted the eviction (or, in a dry run, the Event was recorded).
    Done,
    /// Refused (429: a PodDisruptionBudget allows no disruption now): retried after
    /// [`RETRY_AFTER`], never forced.
    Refused,
    /// Any other failure: retried after [`RETRY_AFTER`].
    Failed,
}

/// How long a refused or failed eviction waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// The controller's memory between rounds: when each detachment was first seen, which
/// pods were dealt with, and when the last evictions started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// `(pod, node, volume)` → when the detachment was first seen, and when the pod may
    /// be tried again (`None`: not tried yet; `Duration::MAX`: done).
    seen: BTreeMap<(String, String, String), (Duration, Option<Duration>)>,
    /// Start times of the evictions of the last minute, oldest first.
    started: VecDeque<Duration>,
}

impl Memory {
    /// Records the outcome of the eviction of `d` started at `now`.
    pub fn record(&mut self, d: &Detached, outcome: Outcome, now: Duration) {
        if let Some((_, next)) = self.seen.get_mut(&memory_key(d)) {
            *next = Some(match outcome {
                Outcome::Done => Duration::MAX,
                Outcome::Refused | Outcome::Failed => now.saturating_add(RETRY_AFTER),
            });
        }
    }
}

/// One round's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Why nothing was looked at: the cluster state is not synced or stale.
    pub halted: Option<String>,
    /// Detached pods still within the grace period, with how long they have waited.
    pub waiting: Vec<(Detached, Duration)>,
    /// Pods to evict now (in a dry run: to record as would-be evicted).
    pub evict: Vec<Detached>,
    /// Detached pods left alone, and why.
    pub skipped: Vec<(Detached, Skip)>,
    /// The memory for the next round; evictions in `evict` are counted as started.
    pub memory: Memory,
}

impl Plan {
    /// Pods at risk: detached and neither opted out nor on a node that is not Ready.
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

/// Every pod whose device-plugin volume its Ready node advertises below 1, with the
/// pods on nodes that are not Ready apart. Attach-mode volumes never count: only a
/// device count is positive evidence of a detach.
pub fn detached(state: &ClusterState) -> Vec<(Detached, Option<Skip>)> {
    let drivers = state.drivers();
    let mut found = Vec::new();
    for name in state.node_names() {
        let Some(node) = state.node(name) else {
            continue;
        };
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
                let mut attached_to: Vec<String> =
                    state.device_holders(volume).map(str::to_owned).collect();
                attached_to.sort();
                let d = Detached {
                    pod: user.pod.clone(),
                    node: name.to_owned(),
                    volume: volume.handle.to_string(),
                    resource: drivers.resource_name(volume).unwrap_or_default(),
                    attached_to,
                };
                let skip = if pod.remediation_opt_out {
                    Some(Skip::OptedOut)
                } else if !node.ready {
                    Some(Skip::NodeNotReady)
                } else {
                    None
                };
                found.push((d, skip));
            }
        }
    }
    found.sort_by(|a, b| a.0.pod.cmp(&b.0.pod).then(a.0.volume.cmp(&b.0.volume)));
    found
}

/// Decides one round at time `now` (any monotonic clock, the same in every round).
/// While the state is not synced or stale nothing is decided and the memory is
/// forgotten: a detachment must be seen continuously for the grace period.
pub fn plan(
    state: &ClusterState,
    config: &RemediationConfig,
    now: Duration,
    memory: &Memory,
) -> Plan {
    if let Some(problem) = state.readiness().problem() {
        return Plan {
            halted: Some(problem),
            ..Plan::default()
        };
    }
    let grace = Duration::from_secs(config.grace_period_seconds.max(1).unsigned_abs());
    let minute = Duration::from_secs(60);
    let mut started = memory.started.clone();
    while started
        .front()
        .is_some_and(|t| now.saturating_sub(*t) >= minute)
    {
        started.pop_front();
    }
    let budget = usize::try_from(config.max_evictions_per_minute.max(1)).unwrap_or(usize::MAX);
    let mut plan = Plan::default();
    let mut seen = BTreeMap::new();
    for (d, skip) in detached(state) {
        if let Some(skip) = skip {
            plan.skipped.push((d, skip));
            continue;
        }
        let key = memory_key(&d);
        let (since, next) = memory.seen.get(&key).copied().unwrap_or((now, None));
        seen.insert(key, (since, next));
        let waited = now.saturating_sub(since);
        if waited < grace {
            plan.waiting.push((d, waited));
        } else if next.is_some_and(|at| now < at) {
            // Done, or refused and waiting to be tried again.
            if next != Some(Duration::MAX) {
                plan.waiting.push((d, waited));
            }
        } else if started.len() < budget {
            started.push_back(now);
            plan.evict.push(d);
        } else {
            plan.skipped.push((d, Skip::RateLimited));
        }
    }
    plan.memory = Memory { seen, started };
    plan
}

fn memory_key(d: &Detached) -> (String, String, String) {
    (d.pod.clone(), d.node.clone(), d.volume.clone())
}
