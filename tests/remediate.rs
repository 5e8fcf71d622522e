//! Remediation decisions over the state model with a controllable clock: when a pod
//! whose device-plugin volume left its node is evicted, and every case where it is not.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use volguard::{
    cluster::{ClusterObject, ClusterState, Kind},
    decide::remediate::{self, Detached, Memory, Outcome, Plan, Skip},
    model::config::{Config, RemediationConfig},
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

fn pod(name: &str, node: &str, devices: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    if !devices.is_empty() {
        ann.insert("volguard.io/devices".into(), json!(devices));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": ann},
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
    apply(&mut state, node("worker-2", &[("vol-a", "0")], true));
    let again = round(&state, r, 40, &mut memory);
    assert_eq!(again.waiting[0].1, Duration::ZERO);
    assert_eq!(round(&state, r, 99, &mut memory).evict, []);
    let due = round(&state, r, 100, &mut memory);
    assert_eq!(
        due.evict[0].whereabouts(),
        "volume vol-a is detached from node worker-1 (volumes.brightbox.com/vol-a is below 1 there); it is attached to no node"
    );
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
    let found: Vec<String> = remediate::detached(&state)
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
