//! The remediation controller (docs/remediation.md), run inside `volguard serve` when
//! `remediation.enabled`: each round it asks the pure core which pods lost their
//! device-plugin volume, reads each due pod, its node and the evidence again, and calls
//! the Eviction API (so PodDisruptionBudgets are respected; a refusal is retried later,
//! never forced), with one `VolumeDetached` Event series per pod and cause. Only the
//! replica holding the Lease acts, and only while it knows it still holds it.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, ObjectReference, Pod},
        storage::v1::VolumeAttachment,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::PostParams,
    core::Status,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{
    cluster::{
        SharedState,
        records::{NodeRecord, PodRecord},
    },
    decide::{
        lease::Elector,
        remediate::{self, Detached, Memory, Outcome, Plan, RETRY_AFTER},
    },
    model::{
        config::Config,
        drivers::{Drivers, Mode},
        podview::PodView,
    },
    server::metrics::Metrics,
};

/// The Event reason on the pod, for each eviction, dry-run eviction and refusal.
pub const REASON: &str = "VolumeDetached";

/// The Event reason on a Node whose device plugin looks down.
pub const PLUGIN_DOWN_REASON: &str = "DevicePluginDown";

/// The Events' reporting controller.
pub const COMPONENT: &str = "volguard";

/// The Lease annotation (under the annotation prefix) that carries the start times of
/// the evictions of the last minute, so that the next holder keeps to the same limit.
pub const STARTS_ANNOTATION: &str = "recent-evictions";

/// How often a round runs.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The longest one API call may take: a hung call must not stop the controller (the
/// client's own read timeout is meant for watches, minutes long).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A monotonic clock: the time since some fixed start. Tests pass one they move.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The controller: its API client, what it reads and what it remembers between rounds.
pub struct Remediator {
    client: Client,
    cluster: SharedState,
    config: Arc<Config>,
    drivers: Arc<Drivers>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    elector: Elector,
    clock: Clock,
    memory: Memory,
    /// `(node, driver)` whose device plugin looks down, as of the last round.
    plugins_down: BTreeSet<(String, String)>,
    /// Those of them whose Node Event this replica published in this episode.
    announced: BTreeSet<(String, String)>,
}

/// The controller's own client: without kube's default retry of 429 answers, which
/// would retry a refused eviction inside one call for minutes (respecting the API
/// server's Retry-After) instead of returning the refusal to be recorded.
pub fn client(mut config: kube::Config) -> Result<Client, String> {
    config.default_retry = false;
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// This replica's name in the Lease and in Events: the host (the pod's name in a
/// cluster) and the process id, unique even for two replicas on one host.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "volguard".to_owned());
    format!("{host}_{}", std::process::id())
}

async fn in_time<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer within {}s", CALL_TIMEOUT.as_secs()).into(),
            ))
        })
}

impl Remediator {
    /// A controller with an empty memory, not holding the Lease, timed by this
    /// process's monotonic clock.
    pub fn new(
        client: Client,
        cluster: SharedState,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        identity: String,
    ) -> Self {
        let drivers = cluster.drivers();
        let start = Instant::now();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: COMPONENT.into(),
                instance: Some(identity.clone()),
            },
        );
        Remediator {
            client,
            cluster,
            config,
            drivers,
            metrics,
            recorder,
            elector: Elector::new(identity),
            clock: Arc::new(move || start.elapsed()),
            memory: Memory::default(),
            plugins_down: BTreeSet::new(),
            announced: BTreeSet::new(),
        }
    }

    /// The same controller timed by `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> Duration {
        (self.clock)()
    }

    /// Runs [`Remediator::tick`] every [`PERIOD`] until the task is dropped.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.tick().await;
        }
    }

    /// One round: reads (and takes or renews) the Lease when due; the holder evicts the
    /// pods that are due, the others only keep the gauges and forget what they saw.
    /// Returns the plan.
    pub async fn tick(&mut self) -> Plan {
        let was_leader = self.elector.is_leader(self.now());
        if self.elector.due(self.now()) {
            self.lead().await;
        }
        let now = self.now();
        let leader = self.elector.is_leader(now);
        if leader != was_leader {
            tracing::info!(identity = %self.elector.identity(), leader, "remediation: {}", if leader { "this replica holds the Lease and acts" } else { "this replica does not hold the Lease (or could not renew it) and only watches" });
        }
        let plan = if leader {
            self.round(now).await
        } else {
            self.memory = Memory::default();
            self.decide(now).await
        };
        self.metrics
            .remediation_round(&plan, self.device_drivers().as_slice());
        if plan.halted.is_none() {
            self.plugin_episodes(&plan, leader).await;
        }
        plan
    }

    fn device_drivers(&self) -> Vec<&str> {
        self.drivers
            .iter()
            .filter(|(id, _)| self.drivers.mode(*id) == Mode::DevicePlugin)
            .map(|(_, d)| d.name.as_str())
            .collect()
    }

    /// The plan for this round, made on a blocking thread: it surveys every pod under
    /// the state's lock, which a watcher may hold. A state a writer panicked in halts
    /// the round: no pod is evicted on what may be half an update.
    async fn decide(&self, now: Duration) -> Plan {
        let config = self.config.clone();
        let memory = self.memory.clone();
        self.cluster
            .read_blocking(move |state| remediate::plan(state, &config.remediation, now, &memory))
            .await
            .unwrap_or_else(|unavailable| Plan {
                halted: Some(unavailable.to_string()),
                memory: self.memory.halted(),
                ..Plan::default()
            })
    }

    /// Decides, evicts the pods that are due, records the outcomes, and writes the
    /// evictions started into the Lease at once.
    async fn round(&mut self, now: Duration) -> Plan {
        let plan = self.decide(now).await;
        self.memory = plan.memory.clone();
        for d in &plan.evict {
            let outcome = self.act(d).await;
            self.memory.record(d, outcome, now);
        }
        if !plan.evict.is_empty() && self.elector.is_leader(self.now()) {
            self.lead().await;
        }
        plan
    }

    /// Reads the Lease and, when this replica may, takes or renews it, writing the
    /// evictions of the last minute into it. Any failure stops acting at once; a new
    /// holder starts from the evictions the Lease records.
    async fn lead(&mut self) {
        let sent = self.now();
        let lease = self.config.remediation.lease.clone();
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &lease.namespace);
        let current = match in_time(leases.get_opt(&lease.name)).await {
            Ok(current) => current,
            Err(e) => {
                self.lose(sent, &format!("cannot read it: {e}"));
                return;
            }
        };
        self.elector
            .observe(current.as_ref().and_then(|l| l.spec.as_ref()), sent);
        if !self.elector.may_take(sent) {
            self.lose(sent, "is held by another replica");
            return;
        }
        let key = self.config.annotation(STARTS_ANNOTATION);
        let wall = Timestamp::now();
        let newly = !self.elector.is_leader(sent);
        let memory = if newly {
            let recorded = current
                .as_ref()
                .and_then(|l| l.metadata.annotations.as_ref()?.get(&key))
                .map(|text| remediate::parse_starts(text, wall))
                .unwrap_or_default();
            Memory::with_recent_starts(sent, &recorded)
        } else {
            self.memory.clone()
        };
        let mut next = current.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(lease.name.clone()),
                namespace: Some(lease.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        next.metadata.annotations.get_or_insert_default().insert(
            key,
            remediate::format_starts(&memory.recent_starts(sent), wall),
        );
        next.spec = Some(self.elector.next_spec(next.spec.as_ref(), wall));
        let written = match &current {
            Some(_) => in_time(leases.replace(&lease.name, &PostParams::default(), &next)).await,
            None => in_time(leases.create(&PostParams::default(), &next)).await,
        };
        match written {
            Ok(written) => {
                self.elector.observe(written.spec.as_ref(), sent);
                if self.elector.renewed(sent) {
                    self.memory = memory;
                }
            }
            Err(e) => self.lose(sent, &format!("cannot write it: {e}")),
        }
    }

    fn lose(&mut self, now: Duration, why: &str) {
        if self.elector.is_leader(now) {
            let lease = &self.config.remediation.lease;
            tracing::warn!(lease = %format!("{}/{}", lease.namespace, lease.name), "remediation: stops acting: the Lease {why}");
        }
        self.elector.lost(now);
    }

    /// Whether this replica may act right now; the reason when not.
    fn may_act(&self) -> Result<(), String> {
        if !self.elector.is_leader(self.now()) {
            return Err("this replica no longer knows it holds the Lease".into());
        }
        if self.cluster.is_poisoned() {
            return Err("cluster state is unavailable".into());
        }
        let readiness = self.cluster.readiness();
        match readiness.problem().or_else(|| readiness.failing_now()) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Evicts one pod (or, in a dry run, says it would) after reading it, its node and
    /// the evidence afresh, and records the Event.
    async fn act(&self, d: &Detached) -> Outcome {
        if let Err(why) = self.may_act() {
            return self.cancel(d, &why);
        }
        let (namespace, name) = d.pod_parts();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let pod = match in_time(pods.get_opt(name)).await {
            Ok(Some(p)) => p,
            Ok(None) => return self.cancel(d, "the pod is gone"),
            Err(e) => return self.cancel(d, &format!("cannot read the pod: {e}")),
        };
        let node = match in_time(nodes.get_opt(&d.node)).await {
            Ok(Some(n)) => n,
            Ok(None) => return self.cancel(d, &format!("node {} is gone", d.node)),
            Err(e) => return self.cancel(d, &format!("cannot read node {}: {e}", d.node)),
        };
        let evidence = self.evidence_holds(d).await;
        let pod_record =
            PodRecord::from_pod(&PodView::from(pod.clone()), &self.drivers, &self.config);
        let node_record = NodeRecord::from_node(&node, &self.drivers);
        if let Err(why) = remediate::recheck(
            d,
            &pod_record,
            &node_record,
            evidence,
            &self.drivers,
            &self.config.remediation,
        ) {
            return self.cancel(d, &why);
        }
        // The reads above may have taken most of the Lease's time: act only while this
        // replica still holds it, so that no eviction is sent after another may lead.
        if let Err(why) = self.may_act() {
            return self.cancel(d, &why);
        }
        if self.config.remediation.dry_run {
            let message = format!("Dry run, not evicted: {}", d.whereabouts());
            tracing::info!(pod = %d.pod, "remediation: {message}");
            self.metrics.remediation_eviction("dry_run");
            self.record(&pod, EventType::Normal, "DryRun", message)
                .await;
            return Outcome::Done;
        }
        match in_time(self.evict(&pod)).await {
            Ok(_) => {
                let message = format!("Evicted: {}", d.whereabouts());
                tracing::info!(pod = %d.pod, "remediation: {message}");
                self.metrics.remediation_eviction("evicted");
                self.record(&pod, EventType::Warning, "Evict", message)
                    .await;
                Outcome::Done
            }
            Err(kube::Error::Api(status)) if status.code == 429 => {
                let message = format!(
                    "Eviction refused ({}), tried again in {}s: {}",
                    status.message.trim_end_matches('.'),
                    RETRY_AFTER.as_secs(),
                    d.whereabouts()
                );
                tracing::warn!(pod = %d.pod, "remediation: {message}");
                self.metrics.remediation_eviction("refused");
                self.record(&pod, EventType::Warning, "EvictRefused", message)
                    .await;
                Outcome::Refused
            }
            Err(e) => {
                tracing::warn!(pod = %d.pod, "remediation: eviction failed, tried again in {}s: {e}", RETRY_AFTER.as_secs());
                self.metrics.remediation_eviction("failed");
                match e {
                    kube::Error::Api(_) => Outcome::Failed,
                    _ => Outcome::Unknown,
                }
            }
        }
    }

    fn cancel(&self, d: &Detached, why: &str) -> Outcome {
        tracing::info!(pod = %d.pod, "remediation: not evicted, looked at again in {}s: {why}", RETRY_AFTER.as_secs());
        self.metrics.remediation_eviction("cancelled");
        Outcome::Cancelled
    }

    /// Whether the volume is still seen elsewhere, read afresh: another node Ready and
    /// advertising it with a count of 1 or more, or a VolumeAttachment attaching it to
    /// another node.
    async fn evidence_holds(&self, d: &Detached) -> bool {
        let Some(volume) = self.drivers.volume_of_resource(&d.resource) else {
            return false;
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        for other in d.attached_to.iter().filter(|n| **n != d.node) {
            if let Ok(Some(node)) = in_time(nodes.get_opt(other)).await {
                let record = NodeRecord::from_node(&node, &self.drivers);
                if record.ready && record.devices.get(&volume).is_some_and(|c| *c >= 1) {
                    return true;
                }
            }
        }
        let attachments: Api<VolumeAttachment> = Api::all(self.client.clone());
        for (other, name) in d.attachments.iter().filter(|(n, _)| *n != d.node) {
            if let Ok(Some(va)) = in_time(attachments.get_opt(name)).await
                && va.spec.node_name == *other
                && va.status.as_ref().is_some_and(|s| s.attached)
            {
                return true;
            }
        }
        false
    }

    /// POSTs a policy/v1 Eviction for exactly this pod (its uid as a precondition, so a
    /// pod recreated under the same name is not the one evicted). Written out rather
    /// than through `Api::evict`, whose body carries its delete options under a key the
    /// API server ignores (`delete_options`), which would drop the precondition.
    async fn evict(&self, pod: &Pod) -> Result<Status, kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let body = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": pod.metadata.uid}},
        });
        let request = axum::http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{name}/eviction"
        ))
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string().into_bytes())
        .map_err(kube::Error::HttpError)?;
        self.client.request::<Status>(request).await
    }

    /// Publishes an events.k8s.io Event on the pod through kube's Recorder: the same
    /// pod, type and action again (a refusal retried every 30 s) adds to one series
    /// instead of a new Event each time. A failure is logged, the eviction stands.
    async fn record(&self, pod: &Pod, type_: EventType, action: &str, note: String) {
        // No resourceVersion: the Recorder matches a series on the whole reference, and
        // the pod's version moves with every status update.
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        };
        self.publish(type_, REASON, action, note, &reference).await;
    }

    async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        reference: &ObjectReference,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = in_time(self.recorder.publish(&event, reference)).await {
            tracing::warn!(object = %reference.name.as_deref().unwrap_or_default(), "remediation: cannot record the Event: {e}");
        }
    }

    /// Logs each node whose device plugin starts or stops looking down, once per
    /// episode, and (the Lease holder) records a `DevicePluginDown` Event on the Node.
    async fn plugin_episodes(&mut self, plan: &Plan, leader: bool) {
        let now: BTreeSet<(String, String)> = plan
            .plugins_down
            .iter()
            .map(|p| (p.node.clone(), p.driver.clone()))
            .collect();
        for p in &plan.plugins_down {
            if !self
                .plugins_down
                .contains(&(p.node.clone(), p.driver.clone()))
            {
                tracing::warn!(node = %p.node, driver = %p.driver, "remediation: {}", p.describe());
            }
        }
        for (node, driver) in self.plugins_down.difference(&now) {
            tracing::info!(node = %node, driver = %driver, "remediation: the {driver} device plugin on node {node} no longer looks down");
        }
        self.announced.retain(|k| now.contains(k));
        if leader {
            for p in &plan.plugins_down {
                let key = (p.node.clone(), p.driver.clone());
                if self.announced.contains(&key) {
                    continue;
                }
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(p.node.clone()),
                    ..ObjectReference::default()
                };
                self.publish(
                    EventType::Warning,
                    PLUGIN_DOWN_REASON,
                    "LeavePodsAlone",
                    p.describe(),
                    &reference,
                )
                .await;
                self.announced.insert(key);
            }
        }
        self.plugins_down = now;
    }
}
