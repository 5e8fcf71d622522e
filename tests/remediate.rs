//! Remediation decisions over the state model with a controllable clock: when a pod
//! whose device-plugin volume left its node is evicted, and every case where it is not.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use serde_json::{Value, json};
use volguard::{
    cluster::{
        ClusterObject, ClusterState, Kind,
        records::{NodeRecord, PodRecord},
    },
    decide::{
        lease::{Elector, LEASE_DURATION, RENEW_DEADLINE},
        remediate::{self, Detached, Memory, Outcome, Plan, PluginDown, Skip},
    },
    model::{
        config::{Config, RemediationConfig},
        drivers::Drivers,
        podview::PodView,
    },
};

fn node(name: &str, devices: &[(&str, &str)], ready: bool) -> Value {
    let allocatable: serde_json::Map<String, Value> = devices
        .iter()
        .map(|(v, n)| (format!("volumes.brightbox.com/{v}"), json!(n)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "Unknown" }}]}})
}

/// A pod a StatefulSet controls, with uid `uid-<name>`.
fn pod(name: &str, node: &str, devices: &str, annotations: &[(&str, &str)]) -> Value {
    let mut pod = bare_pod(name, node, devices, annotations);
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
        "kind": "StatefulSet", "name": "web", "uid": "uid-web", "controller": true}]);
    pod
}

/// A pod no controller owns.
fn bare_pod(name: &str, node: &str, devices: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    if !devices.is_empty() {
        ann.insert("volguard.io/devices".into(), json!(devices));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "annotations": ann},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}],
            "volumes": [{"name": "db", "csi": {"driver": "linodebs.csi.linode.com",
                "volumeHandle": format!("310-{name}")}}]},
        "status": {"phase": "Running"}})
}

fn apply(state: &mut ClusterState, object: Value) {
    state.apply(&ClusterObject::from_value(object).expect("a valid object"));
}

/// worker-1 lost vol-a (count 0), worker-2 has it now; shop/web-0 on worker-1 uses it.
fn detached_cluster(config: &Config) -> ClusterState {
    let mut state = common::empty_state(config);
    apply(&mut state, node("worker-1", &[("vol-a", "0")], true));
    apply(&mut state, node("worker-2", &[("vol-a", "1")], true));
    apply(&mut state, pod("web-0", "worker-1", "brightbox=vol-a", &[]));
    for kind in Kind::ALL {
        state.mark_synced(kind);
    }
    state
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn pods(list: &[Detached]) -> Vec<&str> {
    list.iter().map(|d| d.pod.as_str()).collect()
}

/// Runs a round and carries its memory forward, as the controller does.
fn round(state: &ClusterState, config: &RemediationConfig, now: u64, memory: &mut Memory) -> Plan {
    let plan = remediate::plan(state, config, secs(now), memory);
    *memory = plan.memory.clone();
    plan
}

#[test]
fn a_pod_is_evicted_once_the_grace_period_is_over_and_not_before() {
    let config = Config::default();
    let state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    let first = round(&state, r, 100, &mut memory);
    assert_eq!(first.waiting.len(), 1);
    assert_eq!(first.waiting[0].1, Duration::ZERO);
    assert!(first.evict.is_empty());
    let at_59 = round(&state, r, 159, &mut memory);
    assert_eq!(at_59.waiting[0].1, secs(59));
    assert!(at_59.evict.is_empty());
    assert_eq!(at_59.at_risk(), 1);
    let at_60 = round(&state, r, 160, &mut memory);
    assert!(at_60.waiting.is_empty());
    assert_eq!(pods(&at_60.evict), ["shop/web-0"]);
    assert_eq!(
        at_60.evict[0].whereabouts(),
        "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2"
    );
    // Evicted: not again, while the pod is still there on its way out.
    memory.record(&at_60.evict[0], Outcome::Done, secs(160));
    let later = round(&state, r, 300, &mut memory);
    assert!(later.evict.is_empty() && later.waiting.is_empty());
}

#[test]
fn after_a_halt_a_detachment_waits_the_whole_grace_period_again() {
    let config = Config::default();
    let state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 100, &mut memory);
    // A round that observed nothing (the state unavailable) forgets the detachment ...
    memory = memory.halted();
    // ... so at 160 the grace period starts over instead of ending.
    let at_160 = round(&state, r, 160, &mut memory);
    assert!(at_160.evict.is_empty(), "{:?}", pods(&at_160.evict));
    assert_eq!(at_160.waiting[0].1, Duration::ZERO);
}

#[test]
fn a_count_back_to_1_cancels_and_a_new_detach_waits_the_whole_grace_period() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    apply(&mut state, node("worker-1", &[("vol-a", "1")], true));
    let back = round(&state, r, 30, &mut memory);
    assert_eq!(back, Plan::default());
    apply(&mut state, node("worker-1", &[("vol-a", "0")], true));
    let again = round(&state, r, 40, &mut memory);
    assert_eq!(again.waiting[0].1, Duration::ZERO);
    assert_eq!(round(&state, r, 99, &mut memory).evict, []);
    let due = round(&state, r, 100, &mut memory);
    assert_eq!(pods(&due.evict), ["shop/web-0"]);
}

#[test]
fn opted_out_pods_and_nodes_not_ready_are_skipped_and_attach_mode_volumes_never_count() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    apply(
        &mut state,
        pod(
            "keep-me",
            "worker-1",
            "brightbox=vol-a",
            &[("volguard.io/remediate", "false")],
        ),
    );
    apply(&mut state, node("worker-3", &[("vol-b", "0")], false));
    apply(&mut state, pod("sick", "worker-3", "brightbox=vol-b", &[]));
    // Only an attach-mode volume (its inline csi volume), on the node that lost vol-a.
    apply(&mut state, pod("attach-only", "worker-1", "", &[]));
    let mut memory = Memory::default();
    let plan = round(&state, &config.remediation, 1000, &mut memory);
    let skipped: Vec<(&str, Skip)> = plan
        .skipped
        .iter()
        .map(|(d, s)| (d.pod.as_str(), *s))
        .collect();
    assert_eq!(
        skipped,
        [
            ("shop/keep-me", Skip::OptedOut),
            ("shop/sick", Skip::NodeNotReady)
        ]
    );
    let plan = round(&state, &config.remediation, 5000, &mut memory);
    assert_eq!(pods(&plan.evict), ["shop/web-0"]);
    assert_eq!(plan.skipped.len(), 2);
    assert_eq!(plan.at_risk(), 1);
}

#[test]
fn an_opt_out_is_read_as_every_other_opt_out_spaces_and_case_aside() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    for (name, value) in [
        ("spaced", " false"),
        ("shouting", "FALSE\n"),
        ("kept", "no"),
    ] {
        apply(
            &mut state,
            pod(
                name,
                "worker-1",
                "brightbox=vol-a",
                &[("volguard.io/remediate", value)],
            ),
        );
    }
    let plan = round(&state, &config.remediation, 1000, &mut Memory::default());
    let skipped: Vec<(&str, Skip)> = plan
        .skipped
        .iter()
        .map(|(d, s)| (d.pod.as_str(), *s))
        .collect();
    assert_eq!(
        skipped,
        [
            ("shop/shouting", Skip::OptedOut),
            ("shop/spaced", Skip::OptedOut)
        ]
    );
    assert_eq!(
        plan.waiting
            .iter()
            .map(|(d, _)| d.pod.as_str())
            .collect::<Vec<_>>(),
        ["shop/kept", "shop/web-0"]
    );
}

#[test]
fn terminal_and_deleting_pods_are_left_alone() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    let mut done = pod("done", "worker-1", "brightbox=vol-a", &[]);
    done["status"]["phase"] = json!("Succeeded");
    apply(&mut state, done);
    let mut going = pod("going", "worker-1", "brightbox=vol-a", &[]);
    going["metadata"]["deletionTimestamp"] = json!("2026-12-04T16:00:00Z");
    apply(&mut state, going);
    let found: Vec<String> = remediate::survey(&state, &config.remediation)
        .detached
        .into_iter()
        .map(|(d, _)| d.pod)
        .collect();
    assert_eq!(found, ["shop/web-0"]);
}

#[test]
fn evictions_per_minute_are_capped_and_the_rest_wait_for_the_next_minute() {
    let config = Config::parse(
        "remediation: {enabled: true, maxEvictionsPerMinute: 2, gracePeriodSeconds: 10}",
    )
    .unwrap();
    let mut state = detached_cluster(&config);
    for name in ["web-1", "web-2"] {
        apply(&mut state, pod(name, "worker-1", "brightbox=vol-a", &[]));
    }
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let due = round(&state, r, 10, &mut memory);
    assert_eq!(pods(&due.evict), ["shop/web-0", "shop/web-1"]);
    assert_eq!(due.skipped.len(), 1);
    assert_eq!(due.skipped[0].0.pod, "shop/web-2");
    assert_eq!(due.skipped[0].1, Skip::RateLimited);
    assert_eq!(due.at_risk(), 3);
    for d in &due.evict {
        memory.record(d, Outcome::Done, secs(10));
    }
    assert_eq!(round(&state, r, 69, &mut memory).skipped.len(), 1);
    assert_eq!(
        pods(&round(&state, r, 70, &mut memory).evict),
        ["shop/web-2"]
    );
}

#[test]
fn a_refused_eviction_is_tried_again_30_seconds_later() {
    let config = Config::default();
    let state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let due = round(&state, r, 60, &mut memory);
    memory.record(&due.evict[0], Outcome::Refused, secs(60));
    let refused = round(&state, r, 89, &mut memory);
    assert!(refused.evict.is_empty());
    assert_eq!(refused.at_risk(), 1);
    assert_eq!(
        pods(&round(&state, r, 90, &mut memory).evict),
        ["shop/web-0"]
    );
}

#[test]
fn a_state_not_synced_or_stale_decides_nothing_and_restarts_the_clock() {
    let config = Config::default();
    let state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let mut unsynced = common::empty_state(&config);
    apply(&mut unsynced, node("worker-1", &[("vol-a", "0")], true));
    apply(
        &mut unsynced,
        pod("web-0", "worker-1", "brightbox=vol-a", &[]),
    );
    let halted = round(&unsynced, r, 100, &mut memory);
    assert_eq!(
        halted.halted.as_deref(),
        Some(
            "cluster state not synced yet: Node, CSINode, StorageClass, PersistentVolume, PersistentVolumeClaim, VolumeAttachment, Pod"
        )
    );
    assert!(halted.evict.is_empty() && halted.waiting.is_empty());
    // Synced again: the detachment is timed from now on, not from before.
    let resumed = round(&state, r, 101, &mut memory);
    assert_eq!(resumed.waiting[0].1, Duration::ZERO);
}

fn skipped(plan: &Plan) -> Vec<(&str, Skip)> {
    plan.skipped
        .iter()
        .map(|(d, s)| (d.pod.as_str(), *s))
        .collect()
}

/// An inline-source VolumeAttachment of vol-a on `node`.
fn attachment(name: &str, node: &str, attached: bool) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": "csi.brightbox.com", "nodeName": node,
            "source": {"inlineVolumeSpec": {"csi": {"driver": "csi.brightbox.com",
                "volumeHandle": "vol-a"}}}},
        "status": {"attached": attached}})
}

#[test]
fn a_count_below_1_alone_is_no_evidence_the_volume_left() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    // Nobody else advertises it: a plugin re-registering looks like this.
    apply(&mut state, node("worker-2", &[("vol-a", "0")], true));
    let r = &config.remediation;
    let mut memory = Memory::default();
    for now in [0, 1000] {
        let plan = round(&state, r, now, &mut memory);
        assert_eq!(skipped(&plan), [("shop/web-0", Skip::NoEvidence)]);
        assert!(plan.evict.is_empty() && plan.waiting.is_empty());
        assert_eq!(plan.at_risk(), 0);
    }
    // A node that is not Ready is no evidence either.
    apply(&mut state, node("worker-2", &[("vol-a", "1")], false));
    let plan = round(&state, r, 2000, &mut memory);
    assert_eq!(skipped(&plan), [("shop/web-0", Skip::NoEvidence)]);
    // Nor a VolumeAttachment not attached yet, nor one on the pod's own node.
    apply(&mut state, attachment("va-2", "worker-2", false));
    apply(&mut state, attachment("va-1", "worker-1", true));
    let plan = round(&state, r, 3000, &mut memory);
    assert_eq!(skipped(&plan), [("shop/web-0", Skip::NoEvidence)]);
    assert_eq!(
        plan.skipped[0].0.whereabouts(),
        "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); no other Ready node advertises it and no VolumeAttachment puts it on another node"
    );
    // A VolumeAttachment attached elsewhere is.
    apply(&mut state, attachment("va-2", "worker-2", true));
    round(&state, r, 4000, &mut memory);
    let plan = round(&state, r, 4060, &mut memory);
    assert_eq!(pods(&plan.evict), ["shop/web-0"]);
    assert_eq!(
        plan.evict[0].whereabouts(),
        "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2 (VolumeAttachment)"
    );
}

#[test]
fn every_volume_of_a_driver_below_1_on_a_node_is_the_plugin_gone_not_the_volumes() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    // worker-1 lists vol-a and vol-b, both below 1 at once: its plugin went away,
    // even though vol-a shows up on worker-2.
    apply(
        &mut state,
        node("worker-1", &[("vol-a", "0"), ("vol-b", "0")], true),
    );
    apply(&mut state, pod("web-1", "worker-1", "brightbox=vol-b", &[]));
    let r = &config.remediation;
    let mut memory = Memory::default();
    for now in [0, 1000] {
        let plan = round(&state, r, now, &mut memory);
        assert_eq!(
            skipped(&plan),
            [
                ("shop/web-0", Skip::PluginDown),
                ("shop/web-1", Skip::PluginDown)
            ]
        );
        assert!(plan.evict.is_empty());
        assert_eq!(
            plan.plugins_down,
            [PluginDown {
                node: "worker-1".into(),
                driver: "brightbox".into(),
                volumes: 2
            }]
        );
    }
    assert_eq!(
        remediate::status_line(
            &memory_less(&state, &config, "shop/web-0"),
            Some(Skip::PluginDown),
            &config
        ),
        "shop/web-0: volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2; left alone: every brightbox volume on node worker-1 is below 1 at once, so its device plugin looks down, not the volume"
    );
    // One of them back at 1: the plugin is up, and vol-a really left.
    apply(
        &mut state,
        node("worker-1", &[("vol-a", "0"), ("vol-b", "1")], true),
    );
    round(&state, r, 2000, &mut memory);
    let plan = round(&state, r, 2060, &mut memory);
    assert!(plan.plugins_down.is_empty());
    assert_eq!(pods(&plan.evict), ["shop/web-0"]);
}

fn memory_less(state: &ClusterState, config: &Config, pod: &str) -> Detached {
    remediate::survey(state, &config.remediation)
        .detached
        .into_iter()
        .find(|(d, _)| d.pod == pod)
        .expect("detached")
        .0
}

#[test]
fn a_pod_no_controller_owns_is_left_alone_unless_the_config_opts_in() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    apply(
        &mut state,
        bare_pod("web-0", "worker-1", "brightbox=vol-a", &[]),
    );
    let mut memory = Memory::default();
    let plan = round(&state, &config.remediation, 1000, &mut memory);
    assert_eq!(skipped(&plan), [("shop/web-0", Skip::BarePod)]);
    assert_eq!(plan.at_risk(), 0);
    assert_eq!(
        remediate::status_line(&plan.skipped[0].0, Some(Skip::BarePod), &config),
        "shop/web-0: volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to worker-2; left alone: no controller owns it, so nothing would recreate it once evicted (remediation.evictBarePods: false)"
    );
    let forced = Config::parse("remediation: {evictBarePods: true}").unwrap();
    let mut state = detached_cluster(&forced);
    apply(
        &mut state,
        bare_pod("web-0", "worker-1", "brightbox=vol-a", &[]),
    );
    let mut memory = Memory::default();
    round(&state, &forced.remediation, 0, &mut memory);
    let plan = round(&state, &forced.remediation, 60, &mut memory);
    assert_eq!(pods(&plan.evict), ["shop/web-0"]);
}

#[test]
fn a_failing_watch_stops_everything_at_once_not_after_the_stale_grace() {
    let config = Config::default();
    let mut state = detached_cluster(&config);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    state
        .readiness_mut()
        .watch_failed(Kind::Pod, "connection refused".into(), Instant::now());
    let halted = round(&state, r, 60, &mut memory);
    assert_eq!(
        halted.halted.as_deref(),
        Some("Pod watch failing (connection refused)")
    );
    assert!(halted.evict.is_empty());
    state
        .readiness_mut()
        .watch_recovered(Kind::Pod, Instant::now());
    // Back: the detachment is timed again from now.
    let resumed = round(&state, r, 61, &mut memory);
    assert_eq!(resumed.waiting[0].1, Duration::ZERO);
}

/// worker-1 lost vol-a; `names` all use it, with a grace period of 10 s and one
/// eviction a minute.
fn one_a_minute(names: &[&str]) -> (Config, ClusterState) {
    let config = Config::parse(
        "remediation: {enabled: true, maxEvictionsPerMinute: 1, gracePeriodSeconds: 10}",
    )
    .unwrap();
    let mut state = detached_cluster(&config);
    for name in names {
        apply(&mut state, pod(name, "worker-1", "brightbox=vol-a", &[]));
    }
    (config, state)
}

#[test]
fn a_refused_eviction_gives_its_slot_back_so_the_next_pod_goes_at_once() {
    let (config, state) = one_a_minute(&["web-1"]);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let due = round(&state, r, 10, &mut memory);
    assert_eq!(pods(&due.evict), ["shop/web-0"]);
    assert_eq!(skipped(&due), [("shop/web-1", Skip::RateLimited)]);
    memory.record(&due.evict[0], Outcome::Refused, secs(10));
    let next = round(&state, r, 11, &mut memory);
    assert_eq!(pods(&next.evict), ["shop/web-1"]);
    // web-0, refused, waits for its retry and holds no slot meanwhile; web-1's
    // eviction holds the minute's one.
    memory.record(&next.evict[0], Outcome::Done, secs(11));
    assert!(round(&state, r, 40, &mut memory).evict.is_empty());
    assert_eq!(
        skipped(&round(&state, r, 41, &mut memory)),
        [("shop/web-0", Skip::RateLimited)]
    );
    assert_eq!(
        pods(&round(&state, r, 71, &mut memory).evict),
        ["shop/web-0"]
    );
}

#[test]
fn the_rate_limit_holds_across_a_round_with_the_state_not_synced() {
    let (config, mut state) = one_a_minute(&["web-1"]);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let due = round(&state, r, 10, &mut memory);
    memory.record(&due.evict[0], Outcome::Done, secs(10));
    let mut going = pod("web-0", "worker-1", "brightbox=vol-a", &[]);
    going["metadata"]["deletionTimestamp"] = json!("2026-12-04T16:00:00Z");
    apply(&mut state, going);
    let unsynced = common::empty_state(&config);
    assert!(round(&unsynced, r, 20, &mut memory).halted.is_some());
    round(&state, r, 21, &mut memory);
    // web-1 waited out a new grace period, but web-0's eviction still holds the minute.
    let plan = round(&state, r, 31, &mut memory);
    assert!(plan.evict.is_empty(), "{plan:?}");
    assert_eq!(skipped(&plan), [("shop/web-1", Skip::RateLimited)]);
    assert_eq!(
        pods(&round(&state, r, 70, &mut memory).evict),
        ["shop/web-1"]
    );
}

#[test]
fn the_oldest_detachment_goes_first_whatever_the_names() {
    let config = Config::parse(
        "remediation: {enabled: true, maxEvictionsPerMinute: 1, gracePeriodSeconds: 10}",
    )
    .unwrap();
    let mut state = detached_cluster(&config);
    apply(&mut state, node("worker-3", &[("vol-z", "0")], true));
    apply(&mut state, node("worker-4", &[("vol-z", "1")], true));
    apply(
        &mut state,
        pod("zz-old", "worker-3", "brightbox=vol-z", &[]),
    );
    // Only zz-old's volume left at first; web-0's follows 5 s later.
    apply(&mut state, node("worker-1", &[("vol-a", "1")], true));
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    apply(&mut state, node("worker-1", &[("vol-a", "0")], true));
    round(&state, r, 5, &mut memory);
    let plan = round(&state, r, 15, &mut memory);
    assert_eq!(pods(&plan.evict), ["shop/zz-old"]);
    assert_eq!(skipped(&plan), [("shop/web-0", Skip::RateLimited)]);
}

#[test]
fn the_evictions_of_the_last_minute_survive_a_change_of_holder() {
    let (config, state) = one_a_minute(&[]);
    let r = &config.remediation;
    let mut memory = Memory::default();
    round(&state, r, 0, &mut memory);
    let due = round(&state, r, 10, &mut memory);
    memory.record(&due.evict[0], Outcome::Done, secs(10));
    // The holder writes its starts into the Lease; the next one reads them back.
    let wall = Timestamp::now();
    let text = remediate::format_starts(&memory.recent_starts(secs(25)), wall);
    let ages = remediate::parse_starts(&text, wall);
    assert_eq!(ages, [secs(15)]);
    assert!(remediate::parse_starts("not a time,", wall).is_empty());
    // A new holder, 15 s after that eviction by its clock (500 here): the minute is
    // still taken until 545.
    let mut next = Memory::with_recent_starts(secs(500), &ages);
    round(&state, r, 500, &mut next);
    let plan = round(&state, r, 510, &mut next);
    assert!(plan.evict.is_empty(), "{plan:?}");
    assert_eq!(skipped(&plan), [("shop/web-0", Skip::RateLimited)]);
    assert_eq!(
        pods(&round(&state, r, 545, &mut next).evict),
        ["shop/web-0"]
    );
}

fn records(config: &Config, pod_json: Value, node_json: Value) -> (PodRecord, NodeRecord) {
    let drivers = Drivers::new(config);
    let view: PodView = serde_json::from_value(pod_json).unwrap();
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(node_json).unwrap();
    (
        PodRecord::from_pod(&view, &drivers, config),
        NodeRecord::from_node(&node, &drivers),
    )
}

#[test]
fn the_fresh_read_before_an_eviction_must_still_show_the_same_pod_and_the_loss() {
    let config = Config::default();
    let state = detached_cluster(&config);
    let d = memory_less(&state, &config, "shop/web-0");
    assert_eq!(d.uid.as_deref(), Some("uid-web-0"));
    let drivers = Drivers::new(&config);
    let r = &config.remediation;
    let check = |pod: Value, node: Value, evidence: bool| {
        let (p, n) = records(&config, pod, node);
        remediate::recheck(&d, &p, &n, evidence, &drivers, r)
    };
    let same = || pod("web-0", "worker-1", "brightbox=vol-a", &[]);
    let lost = || node("worker-1", &[("vol-a", "0")], true);
    assert_eq!(check(same(), lost(), true), Ok(()));
    let mut successor = same();
    successor["metadata"]["uid"] = json!("uid-web-0-new");
    let cases = [
        (
            successor,
            lost(),
            true,
            "the pod is not the one judged (uid uid-web-0 then, uid-web-0-new now)",
        ),
        (
            pod("web-0", "worker-2", "brightbox=vol-a", &[]),
            lost(),
            true,
            "the pod is bound to worker-2 now, not worker-1",
        ),
        (
            same(),
            node("worker-1", &[("vol-a", "1")], true),
            true,
            "node worker-1 advertises volumes.brightbox.com/vol-a again",
        ),
        (
            same(),
            node("worker-1", &[("vol-a", "0"), ("vol-b", "0")], true),
            true,
            "every brightbox volume on node worker-1 is below 1 now: its device plugin looks down",
        ),
        (
            same(),
            node("worker-1", &[("vol-a", "0")], false),
            true,
            "node worker-1 is not Ready now",
        ),
        (same(), lost(), false, "no other node holds the volume now"),
        (
            pod(
                "web-0",
                "worker-1",
                "brightbox=vol-a",
                &[("volguard.io/remediate", "false")],
            ),
            lost(),
            true,
            "the pod opts out now",
        ),
        (
            bare_pod("web-0", "worker-1", "brightbox=vol-a", &[]),
            lost(),
            true,
            "no controller owns the pod",
        ),
    ];
    for (pod, node, evidence, why) in cases {
        assert_eq!(check(pod, node, evidence), Err(why.to_owned()));
    }
}

fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        renew_time: Some(MicroTime(renewed.parse().unwrap())),
        lease_duration_seconds: Some(15),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }
}

#[test]
fn a_lease_is_timed_from_when_this_process_saw_it_not_from_its_renew_time() {
    let mut e = Elector::new("me");
    // Renewed "long ago" by another machine's clock: still held until it has not
    // changed for its duration here.
    let other = held_by("other", "2000-01-01T00:00:00Z");
    e.observe(Some(&other), secs(100));
    assert!(!e.may_take(secs(100)));
    e.observe(Some(&other), secs(114));
    assert!(!e.may_take(secs(114)));
    // A renewal seen at 110 restarts the timer, whatever time it carries.
    let renewed = held_by("other", "1999-01-01T00:00:00Z");
    e.observe(Some(&renewed), secs(110));
    assert!(!e.may_take(secs(124)));
    assert!(e.may_take(secs(110) + LEASE_DURATION));
    let spec = e.next_spec(Some(&renewed), Timestamp::now());
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(spec.lease_duration_seconds, Some(15));
}

#[test]
fn the_holder_acts_only_until_its_renew_deadline_and_stops_when_a_renewal_fails() {
    let mut e = Elector::new("me");
    e.observe(None, secs(0));
    assert!(e.may_take(secs(0)) && !e.is_leader(secs(0)));
    assert!(e.renewed(secs(0)), "newly leading");
    assert!(e.is_leader(secs(9)));
    assert!(!e.is_leader(RENEW_DEADLINE), "no renewal for 10 s: stop");
    assert!(RENEW_DEADLINE < LEASE_DURATION);
    assert!(e.renewed(secs(12)));
    assert!(!e.renewed(secs(17)), "a renewal, not a new term");
    e.lost(secs(18));
    assert!(!e.is_leader(secs(18)), "a failed renewal stops it at once");
}
