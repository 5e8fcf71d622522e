//! Prometheus metrics served on the plain listener's `/metrics`: what operators alert on
//! (errors, latency, certificate expiry, cache health) and what volguard did (pods
//! mutated, nodes failed). Counters move where things happen; cache gauges and the
//! certificate countdown are computed at scrape time, so nothing polls in the background.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{cluster::ClusterState, decide::judge};

/// The content type of a `/metrics` answer (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: sub-millisecond verdicts up to the scheduler's 5 s timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `i64::MIN` stands for "no serving certificate known" (the gauge is then left at 0).
const UNKNOWN: i64 = i64::MIN;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabels {
    caller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    driver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric family volguard exports, registered once per process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    requests_in_flight: Gauge,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pods_mutated: Family<DriverLabels, Counter>,
    nodes_failed: Family<ReasonLabels, Counter>,
    cache_objects: Family<KindLabels, Gauge>,
    cache_ready: Gauge,
    nodes_at_limit: Family<DriverLabels, Gauge>,
    nodes_one_slot_left: Family<DriverLabels, Gauge>,
    certificate_expiry: Gauge,
    certificate_not_after: AtomicI64,
    certificate_reloads: Counter,
    certificate_reload_failures: Counter,
    connections_refused: Counter,
    requests_abandoned: Counter,
    pods_scheduling: Gauge,
    burst_waits: Family<OutcomeLabels, Counter>,
    catch_up_waits: Family<OutcomeLabels, Counter>,
    direct_gets: Family<OutcomeLabels, Counter>,
    body_bytes_in_flight: Family<CallerLabels, Gauge>,
    remediation_at_risk: Gauge,
    remediation_evictions: Family<OutcomeLabels, Counter>,
    remediation_skipped: Family<SkipLabels, Gauge>,
    remediation_plugins_down: Family<DriverLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered under the `volguard_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("volguard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTPS requests by endpoint (matched route) and outcome",
            requests.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "HTTPS requests received and not answered yet, those waiting for a slot \
             (--max-requests) included",
            requests_in_flight.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to response head, by endpoint",
            Unit::Seconds,
            latency.clone(),
        );
        let pods_mutated = Family::<DriverLabels, Counter>::default();
        registry.register(
            "pods_mutated",
            "Pods the webhook patched, by managed driver",
            pods_mutated.clone(),
        );
        let nodes_failed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "nodes_failed",
            "Nodes the extender filtered out, by kind of reason",
            nodes_failed.clone(),
        );
        let cache_objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cache_objects",
            "Objects in the cluster-state cache, by kind",
            cache_objects.clone(),
        );
        let cache_ready = Gauge::default();
        registry.register(
            "cache_ready",
            "1 once every cached kind has been listed, else 0",
            cache_ready.clone(),
        );
        let nodes_at_limit = Family::<DriverLabels, Gauge>::default();
        registry.register(
            "nodes_at_attach_limit",
            "Nodes with no attach slot left for the driver: its next new volume fails there",
            nodes_at_limit.clone(),
        );
        let nodes_one_slot_left = Family::<DriverLabels, Gauge>::default();
        registry.register(
            "nodes_one_slot_left",
            "Nodes with exactly one attach slot left for the driver",
            nodes_one_slot_left.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register_with_unit(
            "certificate_expiry",
            "Seconds until the serving certificate in use expires (negative: expired)",
            Unit::Seconds,
            certificate_expiry.clone(),
        );
        let certificate_reloads = Counter::default();
        registry.register(
            "certificate_reloads",
            "Serving certificates taken into use after the files changed",
            certificate_reloads.clone(),
        );
        let certificate_reload_failures = Counter::default();
        registry.register(
            "certificate_reload_failures",
            "Changed certificate files refused (unreadable or broken pair); the old one stays",
            certificate_reload_failures.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once by a connection limit (overall or per peer)",
            connections_refused.clone(),
        );
        let requests_abandoned = Counter::default();
        registry.register(
            "requests_abandoned",
            "Extender requests whose judging stopped because their deadline fired or their client went away",
            requests_abandoned.clone(),
        );
        let pods_scheduling = Gauge::default();
        registry.register(
            "extender_pods_in_flight",
            "Pods /filter passed that are not seen bound yet: counted on every node they may land on",
            pods_scheduling.clone(),
        );
        let burst_waits = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "extender_burst_waits",
            "/filter answers that waited for pods in flight to show bound, by outcome (settled, timed_out)",
            burst_waits.clone(),
        );
        let catch_up_waits = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "extender_catch_up_waits",
            "/filter answers about to turn a retried pod away again, with nothing learned since, \
             that waited for the watch, by outcome (caught_up: what arrived let the pod in; \
             settled: nothing that did arrived within the wait)",
            catch_up_waits.clone(),
        );
        let direct_gets = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_direct_gets",
            "Claims and PVs the webhook looked up past its cache, by outcome (fetched, not_found, \
             recently_not_found and limited: not asked, failed)",
            direct_gets.clone(),
        );
        let body_bytes_in_flight = Family::<CallerLabels, Gauge>::default();
        for caller in ["webhook", "extender"] {
            body_bytes_in_flight
                .get_or_create(&CallerLabels { caller })
                .set(0);
        }
        registry.register_with_unit(
            "request_body_in_flight",
            "Request body bytes held by the webhook's or the extender's requests in flight \
             (each bounded by --max-bytes-in-flight)",
            Unit::Bytes,
            body_bytes_in_flight.clone(),
        );
        let remediation_at_risk = Gauge::default();
        registry.register(
            "remediation_pods_at_risk",
            "Pods whose device-plugin volume left their node, waiting out the grace period or the rate limit",
            remediation_at_risk.clone(),
        );
        let remediation_evictions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "remediation_evictions",
            "Evictions remediation started, by outcome (evicted, dry_run, refused, failed)",
            remediation_evictions.clone(),
        );
        let remediation_skipped = Family::<SkipLabels, Gauge>::default();
        registry.register(
            "remediation_pods_skipped",
            "Pods whose device-plugin volume left their node that remediation leaves alone now, by reason",
            remediation_skipped.clone(),
        );
        let remediation_plugins_down = Family::<DriverLabels, Gauge>::default();
        registry.register(
            "remediation_nodes_plugin_down",
            "Nodes on which every volume of the device-plugin driver is below 1 at once: its plugin looks down, and remediation leaves their pods alone",
            remediation_plugins_down.clone(),
        );
        Metrics {
            registry,
            requests,
            requests_in_flight,
            latency,
            pods_mutated,
            nodes_failed,
            cache_objects,
            cache_ready,
            nodes_at_limit,
            nodes_one_slot_left,
            certificate_expiry,
            certificate_not_after: AtomicI64::new(UNKNOWN),
            certificate_reloads,
            certificate_reload_failures,
            connections_refused,
            requests_abandoned,
            pods_scheduling,
            burst_waits,
            catch_up_waits,
            direct_gets,
            body_bytes_in_flight,
            remediation_at_risk,
            remediation_evictions,
            remediation_skipped,
            remediation_plugins_down,
        }
    }

    /// Copies one remediation round into its gauges: pods at risk, skipped by reason,
    /// and nodes whose plugin looks down for each of `device_drivers` (all of them, so
    /// the gauge is 0, not absent, once an episode ends).
    pub fn remediation_round(
        &self,
        plan: &crate::decide::remediate::Plan,
        device_drivers: &[&str],
    ) {
        use crate::decide::remediate::Skip;
        self.remediation_at_risk
            .set(i64::try_from(plan.at_risk()).unwrap_or(i64::MAX));
        for driver in device_drivers {
            let count = plan
                .plugins_down
                .iter()
                .filter(|p| p.driver == *driver)
                .count();
            self.remediation_plugins_down
                .get_or_create(&DriverLabels {
                    driver: (*driver).to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for skip in Skip::ALL {
            let count = plan.skipped.iter().filter(|(_, s)| *s == skip).count();
            self.remediation_skipped
                .get_or_create(&SkipLabels {
                    reason: skip.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Counts one eviction remediation started: `evicted`, `dry_run`, `refused` (a
    /// PodDisruptionBudget said no) or `failed`; or one it did not start, `cancelled`
    /// (the fresh read of the pod, its node or the evidence no longer supported it).
    pub fn remediation_eviction(&self, outcome: &'static str) {
        self.remediation_evictions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one answered HTTPS request and its latency.
    pub fn observe_request(&self, endpoint: &str, status: StatusCode, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                outcome: outcome(status),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Exports 0 for every configured driver, so rates and alerts work before the first pod.
    pub fn expect_drivers<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            let _ = self.pods_mutated.get_or_create(&DriverLabels {
                driver: name.to_owned(),
            });
        }
    }

    /// Counts a pod the webhook patched, once per distinct managed driver it uses.
    pub fn pod_mutated(&self, drivers: &[String]) {
        let mut seen: Vec<&String> = drivers.iter().collect();
        seen.sort();
        seen.dedup();
        for driver in seen {
            self.pods_mutated
                .get_or_create(&DriverLabels {
                    driver: driver.clone(),
                })
                .inc();
        }
    }

    /// Counts `count` nodes the extender filtered out in one request for the same kind of
    /// reason: a short fixed kind such as `device_missing`, `driver_not_registered`,
    /// `volume_in_use` or `attach_limit` (never the free-text message: label values must
    /// stay few).
    pub fn nodes_failed_by(&self, reason: &str, count: u64) {
        self.nodes_failed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    /// Records the serving certificate in use by its notAfter (Unix seconds).
    pub fn certificate_in_use(&self, not_after: i64) {
        self.certificate_not_after
            .store(not_after, Ordering::Relaxed);
    }

    /// Records a successful hot reload of a certificate valid until `not_after`.
    pub fn certificate_reloaded(&self, not_after: i64) {
        self.certificate_in_use(not_after);
        self.certificate_reloads.inc();
    }

    /// Records changed certificate files that were refused.
    pub fn certificate_reload_failed(&self) {
        self.certificate_reload_failures.inc();
    }

    /// Records a connection closed by a connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Records extender work stopped because nobody waits for its answer any more.
    pub fn request_abandoned(&self) {
        self.requests_abandoned.inc();
    }

    /// Sets how many pods are in flight between `/filter` and their binding.
    pub fn pods_in_flight(&self, count: usize) {
        self.pods_scheduling.set(count as i64);
    }

    /// Records a `/filter` that waited for pods in flight: `settled` when they showed
    /// bound in time, `timed_out` when it answered without them.
    pub fn burst_wait(&self, outcome: &'static str) {
        self.burst_waits
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records a `/filter` that waited for the watch to catch up before turning a
    /// retried pod away again: `caught_up` when what arrived let the pod in, `settled`
    /// when nothing did.
    pub fn catch_up_wait(&self, outcome: &'static str) {
        self.catch_up_waits
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records one of the webhook's direct GETs, by outcome.
    pub fn direct_get(&self, outcome: &'static str) {
        self.direct_gets
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Moves the request body bytes held by `caller`'s requests (`webhook` or
    /// `extender`) by `delta` (negative when released).
    pub fn body_bytes_held(&self, caller: &'static str, delta: i64) {
        self.body_bytes_in_flight
            .get_or_create(&CallerLabels { caller })
            .inc_by(delta);
    }

    /// Sets the cache-ready gauge: on every scrape, from the readiness copy, so it
    /// drops to 0 at once even while a slow scan of the state keeps older counts.
    pub fn observe_ready(&self, ready: bool) {
        self.cache_ready.set(i64::from(ready));
    }

    /// Copies the cache's object counts into their gauges.
    pub fn observe_cache(&self, state: &ClusterState) {
        for (kind, count) in state.counts() {
            self.cache_objects
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        // Per driver, not per node: alerting on nodes filling up must not need a series
        // per node. A scan of the nodes, at scrape time only.
        let mut full: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for node in state.node_names() {
            for slots in judge::slots(state, node) {
                let entry = full.entry(slots.driver.clone()).or_default();
                if let Some(max) = slots.limit.max {
                    let free = max - i64::from(slots.used);
                    entry.0 += i64::from(free <= 0);
                    entry.1 += i64::from(free == 1);
                }
            }
        }
        for (driver, (at_limit, one_left)) in full {
            let labels = DriverLabels { driver };
            self.nodes_at_limit.get_or_create(&labels).set(at_limit);
            self.nodes_one_slot_left
                .get_or_create(&labels)
                .set(one_left);
        }
    }

    /// The OpenMetrics text of every family, with the certificate countdown as of now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let not_after = self.certificate_not_after.load(Ordering::Relaxed);
        if not_after != UNKNOWN {
            self.certificate_expiry
                .set(not_after.saturating_sub(unix_now()));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Middleware: counts every request by matched route and outcome, and times it; while
/// it is not answered (queued for a slot, or dropped on the way), it is in flight.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let _in_flight = InFlight::new(&metrics.requests_in_flight);
    let start = Instant::now();
    let response = next.run(req).await;
    metrics.observe_request(&endpoint, response.status(), start.elapsed());
    response
}

/// One request counted in the in-flight gauge until it is dropped, answered or not.
struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A small fixed set of outcomes, so the label never explodes.
fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => "ok",
        400 | 422 => "bad_request",
        413 => "too_large",
        404 | 405 => "not_found",
        503 => "unavailable",
        400..=499 => "client_error",
        _ => "error",
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `name{labels}` in `text`, if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn node_failures_add_up_by_reason_kind() {
        let metrics = Metrics::new();
        metrics.nodes_failed_by("attach_limit", 1);
        metrics.nodes_failed_by("attach_limit", 1);
        metrics.nodes_failed_by("driver_not_registered", 1);
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"volguard_nodes_failed_total{reason="attach_limit"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"volguard_nodes_failed_total{reason="driver_not_registered"}"#
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn pod_mutated_counts_each_driver_once_per_pod() {
        let metrics = Metrics::new();
        metrics.pod_mutated(&["linode".into(), "brightbox".into(), "linode".into()]);
        let text = metrics.encode().unwrap();
        for driver in ["linode", "brightbox"] {
            let series = format!(r#"volguard_pods_mutated_total{{driver="{driver}"}}"#);
            assert_eq!(sample(&text, &series), Some(1.0), "{text}");
        }
    }

    #[test]
    fn outcomes_are_few_and_named() {
        let cases = [
            (200, "ok"),
            (400, "bad_request"),
            (413, "too_large"),
            (404, "not_found"),
            (503, "unavailable"),
            (429, "client_error"),
            (500, "error"),
        ];
        for (code, want) in cases {
            assert_eq!(outcome(StatusCode::from_u16(code).unwrap()), want, "{code}");
        }
    }

    #[test]
    fn certificate_expiry_counts_down_from_not_after() {
        let metrics = Metrics::new();
        let in_a_day = unix_now() + 86_400;
        metrics.certificate_in_use(in_a_day);
        let text = metrics.encode().unwrap();
        let left = sample(&text, "volguard_certificate_expiry_seconds").expect("exported");
        assert!((86_000.0..=86_400.0).contains(&left), "{left}");
    }
}
