//! The remediation controller (README: "Remediation"), run inside `volguard serve` when
//! `remediation.enabled`: each round it asks the pure core which pods lost their
//! device-plugin volume, and for those due it calls the Eviction API (so
//! PodDisruptionBudgets are respected; a refusal is retried later, never forced) and
//! records a `VolumeDetached` Event on the pod. Only the replica holding the Lease acts.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams, core::Status};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{
    cluster::SharedState,
    decide::remediate::{self, Detached, Memory, Outcome, Plan, RETRY_AFTER},
    model::config::{Config, LeaseConfig},
    server::metrics::Metrics,
};

/// The Event reason on the pod, for each eviction, dry-run eviction and refusal.
pub const REASON: &str = "VolumeDetached";

/// The Event source and reporting controller.
pub const COMPONENT: &str = "volguard";

/// Seconds a Lease is valid after its last renewal (Kubernetes' usual 15 s).
pub const LEASE_DURATION: u64 = 15;

/// The holder renews this long before the Lease expires: every 10 s.
pub const LEASE_RENEW_BEFORE: u64 = 5;

/// How often a round runs.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The controller: its API client, what it reads and what it remembers between rounds.
pub struct Remediator {
    client: Client,
    cluster: SharedState,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    identity: String,
    memory: Memory,
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

/// Starts competing for the Lease; the receiver says whether this replica holds it.
/// kube-lease-manager renews it [`LEASE_RENEW_BEFORE`] seconds before it expires, takes
/// it over once expired, and releases it when the receiver is dropped.
pub async fn elect(
    client: Client,
    lease: &LeaseConfig,
    identity: &str,
) -> Result<watch::Receiver<bool>, String> {
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_RENEW_BEFORE)
        .build()
        .await
        .map_err(|e| {
            format!(
                "remediation: cannot use Lease {}/{}: {e} (does volguard's role in that namespace grant get, create and patch on leases?)",
                lease.namespace, lease.name
            )
        })?;
    let (leader, _task) = manager.watch().await;
    Ok(leader)
}

/// The longest one API call of a round may take: a hung call must not stop the
/// controller (the client's own read timeout is meant for watches, minutes long).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Competes for the Lease until it can (the API may be away at start, which the
/// watchers wait out as well), then runs the controller: the task `serve` spawns.
pub async fn run(remediator: Remediator, lease: LeaseConfig) {
    let leader = loop {
        match elect(remediator.client.clone(), &lease, &remediator.identity).await {
            Ok(leader) => break leader,
            Err(e) => {
                tracing::warn!("{e}; trying again in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    remediator.run(leader).await;
}

impl Remediator {
    /// A controller with an empty memory.
    pub fn new(
        client: Client,
        cluster: SharedState,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        identity: String,
    ) -> Self {
        Remediator {
            client,
            cluster,
            config,
            metrics,
            identity,
            memory: Memory::default(),
        }
    }

    /// Runs a round every [`PERIOD`] while `leader` is true; a replica that is not the
    /// leader only keeps the at-risk gauge and forgets what it saw.
    pub async fn run(mut self, mut leader: watch::Receiver<bool>) {
        let start = Instant::now();
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        loop {
            ticks.tick().await;
            let is_leader = *leader.borrow_and_update();
            if is_leader != was_leader {
                tracing::info!(identity = %self.identity, leader = is_leader, "remediation: {}", if is_leader { "this replica holds the Lease and acts" } else { "this replica does not hold the Lease and only watches" });
                was_leader = is_leader;
            }
            if is_leader {
                self.round(start.elapsed()).await;
            } else {
                self.memory = Memory::default();
                let plan = self.decide(start.elapsed());
                self.metrics.remediation_round(&plan);
            }
            if leader.has_changed().is_err() {
                tracing::warn!("remediation: the Lease task ended; no longer acting");
                return;
            }
        }
    }

    fn decide(&self, now: Duration) -> Plan {
        let state = self.cluster.read().unwrap_or_else(|e| e.into_inner());
        remediate::plan(&state, &self.config.remediation, now, &self.memory)
    }

    /// One round at `now` (a monotonic clock): decide, then evict the pods that are due
    /// and record the outcomes. Returns the plan.
    pub async fn round(&mut self, now: Duration) -> Plan {
        let plan = self.decide(now);
        self.memory = plan.memory.clone();
        self.metrics.remediation_round(&plan);
        for d in &plan.evict {
            let outcome = self.act(d).await;
            self.memory.record(d, outcome, now);
        }
        plan
    }

    /// Evicts one pod (or, in a dry run, says it would) and records the Event.
    async fn act(&self, d: &Detached) -> Outcome {
        let (namespace, name) = d.pod_parts();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // Read afresh: the cache may lag, and the Event must name this pod's uid.
        let pod = match in_time(pods.get_opt(name)).await {
            Ok(Some(p)) => p,
            Ok(None) => return Outcome::Done,
            Err(e) => {
                tracing::warn!(pod = %d.pod, "remediation: cannot read the pod: {e}");
                self.metrics.remediation_eviction("failed");
                return Outcome::Failed;
            }
        };
        let opted_out = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&self.config.annotation("remediate")))
            .is_some_and(|v| v == "false");
        if pod.metadata.deletion_timestamp.is_some() || opted_out {
            return Outcome::Done;
        }
        if self.config.remediation.dry_run {
            let message = format!("Dry run, not evicted: {}", d.whereabouts());
            tracing::info!(pod = %d.pod, "remediation: {message}");
            self.metrics.remediation_eviction("dry_run");
            self.record(&pod, "Normal", "DryRun", message).await;
            return Outcome::Done;
        }
        match in_time(self.evict(&pod)).await {
            Ok(_) => {
                let message = format!("Evicted: {}", d.whereabouts());
                tracing::info!(pod = %d.pod, "remediation: {message}");
                self.metrics.remediation_eviction("evicted");
                self.record(&pod, "Warning", "Evict", message).await;
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
                self.record(&pod, "Warning", "Evict", message).await;
                Outcome::Refused
            }
            Err(e) => {
                tracing::warn!(pod = %d.pod, "remediation: eviction failed, tried again in {}s: {e}", RETRY_AFTER.as_secs());
                self.metrics.remediation_eviction("failed");
                Outcome::Failed
            }
        }
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

    /// Creates a core/v1 Event on the pod; a failure is logged, the eviction stands.
    async fn record(&self, pod: &Pod, type_: &str, action: &str, message: String) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            reason: Some(REASON.into()),
            message: Some(message),
            type_: Some(type_.into()),
            action: Some(action.into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.identity.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = in_time(events.create(&PostParams::default(), &event)).await {
            tracing::warn!(pod = %pod.metadata.name.as_deref().unwrap_or_default(), "remediation: cannot record the Event: {e}");
        }
    }
}
