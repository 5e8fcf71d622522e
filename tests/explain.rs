//! `volguard explain` run as the built binary on the example snapshot: the patch, one
//! row per node, and the exit code (0 some node fits, 1 none, 2 bad input).

mod common;

use std::process::{Command, Output};

use common::repo;
use serde_json::Value;
use volguard::{
    decide::webhook::{Decision, decide},
    model::podview::PodView,
};

fn explain(pod: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volguard"))
        .arg("explain")
        .arg("--snapshot")
        .arg(repo("examples/cluster"))
        .arg("--config")
        .arg(repo("examples/config.yaml"))
        .arg("--pod")
        .arg(pod)
        .args(extra)
        .env_remove("VOLGUARD_OUTPUT")
        .output()
        .expect("volguard runs")
}

/// The table rows after the header up to the blank line before the legend, split on runs
/// of two or more spaces.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("NODE "));
    let header = lines.next().expect("a table header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NODE", "VERDICT", "SCORE", "SLOTS", "REASON"]
    );
    let reason_at = header.find("REASON").unwrap();
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let mut cols: Vec<String> = l[..reason_at]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            cols.push(l[reason_at..].to_owned());
            cols
        })
        .collect()
}

#[test]
fn linode_web_prints_the_patch_and_one_row_per_node() {
    let out = explain(repo("examples/pods/linode-web.yaml").to_str().unwrap(), &[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let (patch_text, _) = stdout.split_once("\n\n").expect("patch, blank line, table");
    let patch: Vec<Value> =
        serde_json::from_str(patch_text.split_once('\n').unwrap().1).expect("pretty JSON ops");
    assert!(
        patch
            .iter()
            .any(|op| op["value"]["volguard.io/volumes"] == "linode=310200-pvcweb"),
        "{patch_text}"
    );
    // Scores from the documented formula, 1 + 8 × free / limit after placing the pod:
    // worker-1 1 + 8 × 14/16 = 8, worker-2 1 + 8 × 6/8 = 7; failing nodes 0.
    assert_eq!(
        rows(&stdout),
        [
            ["worker-1", "pass", "8", "linode 1/16", "-"],
            ["worker-2", "pass", "7", "linode 1/8", "-"],
            [
                "worker-3",
                "unresolvable",
                "0",
                "linode 8/8",
                "node(s) at the linode attach limit (limit from CSINode): 8 of 8 used, pod needs 1 more"
            ],
            [
                "worker-4",
                "unresolvable",
                "0",
                "linode 0/8",
                "node(s) without CSI driver linodebs.csi.linode.com registered (is its node plugin running, with the kubelet's --root-dir?): its CSINode has no entry for the driver"
            ],
        ]
    );
    // Under the table, what its words and numbers mean.
    assert!(
        stdout.ends_with(
            "worker-4  unresolvable  0      linode 0/8   node(s) without CSI driver linodebs.csi.linode.com registered (is its node plugin running, with the kubelet's --root-dir?): its CSINode has no entry for the driver\n\
             \n\
             legend:\n\
             \x20 pass          the extender keeps the node\n\
             \x20 unresolvable  turned away; preemption cannot help (every rule, the attach limit included)\n\
             \x20 fail          turned away; the scheduler may try preemption there (a node not in volguard's state yet)\n\
             \x20 SCORE         0-10, as /prioritize gives it: 10 = the node holds every managed volume of the pod;\n\
             \x20               else 1 + 8 * free / limit after placing the pod, on the tightest driver (9 = no limit);\n\
             \x20               0 = turned away\n\
             \x20 SLOTS         per driver of the pod: volumes attached to or in use on the node / its attach limit\n\
             \x20 REASON        what kube-scheduler is told (it prints it after a node count), then this node's numbers\n"
        ),
        "{stdout}"
    );
}

#[test]
fn json_output_carries_the_same_verdicts_and_limit_sources() {
    let out = explain(
        repo("examples/pods/linode-web.yaml").to_str().unwrap(),
        &["--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["pod"], "shop/linode-web");
    assert_eq!(report["fits"], true);
    assert_eq!(report["webhook"]["allowed"], true);
    assert!(!report["webhook"]["patch"].as_array().unwrap().is_empty());
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[0]["node"], "worker-1");
    assert_eq!(nodes[0]["reason"], Value::Null);
    assert_eq!(nodes[0]["slots"][0]["limit"], 16);
    assert_eq!(
        nodes[0]["slots"][0]["limitSource"],
        "limit from node annotation volguard.io/attach-limit"
    );
    assert_eq!(nodes[2]["verdict"], "unresolvable");
    assert_eq!(
        nodes[2]["reason"],
        "node(s) at the linode attach limit (limit from CSINode)"
    );
    assert_eq!(nodes[2]["detail"], "8 of 8 used, pod needs 1 more");
    assert_eq!(
        nodes[3]["slots"][0]["limitSource"],
        "limit from config default"
    );
}

#[test]
fn a_pod_that_fits_nowhere_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lost\n  namespace: shop\n  annotations:\n    volguard.io/devices: brightbox=vol-gone1\nspec:\n  containers:\n    - name: app\n      image: busybox\n",
    )
    .unwrap();
    let out = explain(path.to_str().unwrap(), &[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert_eq!(row[1], "unresolvable");
        assert_eq!(
            row[4],
            "node(s) without volume vol-gone1 attached (it is attached to no node)"
        );
    }
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let missing = repo("examples/pods/no-such-pod.yaml");
    let not_a_pod = repo("examples/config.yaml");
    for (pod, says) in [
        (missing.to_str().unwrap(), "no-such-pod.yaml: cannot read"),
        (not_a_pod.to_str().unwrap(), "expected kind Pod"),
    ] {
        let out = explain(pod, &[]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn a_pod_the_extender_is_never_asked_about_says_so() {
    let out = explain(repo("examples/pods/no-volumes.yaml").to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "webhook: allows shop/plain-nginx unchanged (empty patch)\n\n\
         extender: not asked about shop/plain-nginx: it has no volume of a configured driver\n"
    );
    let out = explain(repo("examples/pods/opt-out.yaml").to_str().unwrap(), &[]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with("it opts out (volguard.io/inject: \"false\")\n"),
        "{stdout}"
    );
}

#[test]
fn a_pod_naming_another_scheduler_is_not_judged() {
    let dir = tempfile::tempdir().unwrap();
    // The example config routes to volguard-scheduler, as the manifests do.
    let config = repo("examples/config.yaml");
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        std::fs::read_to_string(repo("examples/pods/seed-000-device.yaml"))
            .unwrap()
            .replace("spec:\n", "spec:\n  schedulerName: gpu-scheduler\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
        .args(["explain", "--snapshot"])
        .arg(repo("examples/cluster"))
        .arg("--config")
        .arg(&config)
        .arg("--pod")
        .arg(&pod)
        .env_remove("VOLGUARD_OUTPUT")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with(
            "extender: not asked about shop/seed-000-device: it is scheduled by gpu-scheduler, \
             not volguard-scheduler (scheduling.schedulerName), which consults volguard\n"
        ),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod that names its node in `spec.nodeName` is placed by no scheduler: the webhook
/// leaves its scheduler alone, and `explain` says the extender is not asked about it,
/// rather than judging nodes for a routing that never happens.
#[test]
fn a_pod_bound_to_its_node_is_not_routed_nor_judged() {
    let config = common::example_config();
    let state = common::example_state(&config);
    let dir = tempfile::tempdir().unwrap();
    for (node, routed) in [(None, true), (Some("worker-2"), false)] {
        let mut pod = common::read_doc("examples/pods/seed-000-device.yaml");
        if let Some(node) = node {
            pod["spec"]["nodeName"] = node.into();
        }
        let view: PodView = serde_json::from_value(pod.clone()).unwrap();
        let Decision::Mutated { mutation, .. } = decide(&view, "shop", &state, &config).unwrap()
        else {
            panic!("the webhook mutates the pod");
        };
        let webhook_patch = serde_json::to_value(&mutation.patch).unwrap();
        let sets_scheduler = |patch: &Value| {
            patch
                .as_array()
                .unwrap()
                .iter()
                .any(|op| op["path"] == "/spec/schedulerName")
        };
        assert_eq!(sets_scheduler(&webhook_patch), routed, "{webhook_patch}");

        let file = dir.path().join("pod.json");
        std::fs::write(&file, pod.to_string()).unwrap();
        let out = explain(file.to_str().unwrap(), &["--output", "json"]);
        assert_eq!(out.status.code(), Some(0));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["webhook"]["patch"], webhook_patch);
        let table = String::from_utf8(explain(file.to_str().unwrap(), &[]).stdout).unwrap();
        if routed {
            assert_eq!(report["extender"], serde_json::json!({"asked": true}));
            assert_eq!(rows(&table).len(), 4, "{table}");
        } else {
            let why = "it is bound to node worker-2 (spec.nodeName), so no scheduler places it";
            assert_eq!(
                report["extender"],
                serde_json::json!({"asked": false, "why": why})
            );
            assert!(
                table.ends_with(&format!(
                    "]\n\nextender: not asked about shop/seed-000-device: {why}\n"
                )),
                "{table}"
            );
        }
    }
}

/// A snapshot of `nodes` synthetic nodes (16 slots each, the pod's claim unbound).
fn synthetic_snapshot(dir: &std::path::Path, nodes: usize) -> std::path::PathBuf {
    use volguard::sources::synthetic::{self, Size};
    let path = dir.join("cluster.json");
    let mut text = String::new();
    let size = Size {
        nodes,
        pods: nodes * 16,
        volumes: nodes * 4,
    };
    for doc in synthetic::documents(size).chain(synthetic::fresh_volumes(1)) {
        text.push_str(&doc.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn large_clusters_get_a_summary_and_the_best_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = synthetic_snapshot(dir.path(), 40);
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        volguard::sources::synthetic::pending_pod(1).to_string(),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
            .args(["explain", "--snapshot"])
            .arg(&snapshot)
            .arg("--pod")
            .arg(&pod)
            .args(extra)
            .env_remove("VOLGUARD_OUTPUT")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let short = run(&[]);
    let summary = short
        .lines()
        .skip_while(|l| !l.ends_with("nodes fit"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>();
    assert!(summary[0].ends_with("/40 nodes fit"), "{short}");
    assert!(
        short.contains("best candidates (10 shown; --all-nodes for every node):"),
        "{short}"
    );
    assert_eq!(rows(&short).len(), 10, "{short}");
    assert_eq!(rows(&run(&["--all-nodes"])).len(), 40);
}

#[test]
fn nodes_shows_every_node_s_slots_and_devices() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
            .args(["nodes", "--snapshot"])
            .arg(repo("examples/cluster"))
            .arg("--config")
            .arg(repo("examples/config.yaml"))
            .args(extra)
            .env_remove("VOLGUARD_OUTPUT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(&[]),
        "NODE      LINODE  LINODE LIMIT FROM                         DEVICES\n\
         worker-1  1/16    node annotation volguard.io/attach-limit  brightbox:vol-x9y8z\n\
         worker-2  1/8     CSINode                                   brightbox:vol-qsk4v\n\
         worker-3  8/8     CSINode                                   -\n\
         worker-4  0/8     config default                            -\n"
    );
    let report: Value = serde_json::from_str(&run(&["--output", "json"])).unwrap();
    assert_eq!(
        report["nodes"][2],
        serde_json::json!({
            "node": "worker-3",
            "slots": [{"driver": "linode", "used": 8, "limit": 8, "limitSource": "limit from CSINode"}],
            "devices": [],
        })
    );
}

#[test]
fn nodes_and_explain_show_a_pod_waiting_for_remediation_and_the_pods_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo("examples/cluster")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    // worker-1 advertises vol-qsk4v with a count of 0, worker-2 with 1. A StatefulSet
    // owns cache-0; nothing owns loner.
    let pod = |name: &str, node: &str, volume: &str, owned: bool| {
        let owner = if owned {
            "  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: cache, uid: u1, controller: true}]\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  uid: uid-{name}\n{owner}  annotations:\n    volguard.io/devices: brightbox={volume}\nspec:\n  nodeName: {node}\n  containers: [{{name: app, image: app}}]\nstatus:\n  phase: Running\n"
        )
    };
    std::fs::write(
        dir.path().join("detached.yaml"),
        pod("cache-0", "worker-1", "vol-qsk4v", true),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("loner.yaml"),
        pod("loner", "worker-1", "vol-qsk4v", false),
    )
    .unwrap();
    // worker-5 lists two brightbox volumes, both below 1: its plugin looks down.
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: worker-5\nstatus:\n  allocatable:\n    volumes.brightbox.com/vol-p1: \"0\"\n    volumes.brightbox.com/vol-p2: \"0\"\n  conditions:\n  - {type: Ready, status: \"True\"}\n";
    std::fs::write(
        dir.path().join("worker-5.yaml"),
        format!("{node}---\n{}", pod("stuck", "worker-5", "vol-p1", true)),
    )
    .unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.yaml");
    let mut text = std::fs::read_to_string(repo("examples/config.yaml")).unwrap();
    text.push_str("remediation: {enabled: true, gracePeriodSeconds: 90}\n");
    std::fs::write(&config, text).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
            .args(args)
            .arg("--snapshot")
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .env_remove("VOLGUARD_OUTPUT")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let line = "shop/cache-0: volume vol-qsk4v is detached from node worker-1 (volumes.brightbox.com/vol-qsk4v is below 1 there); it is attached to worker-2; waiting for remediation: evicted once this has lasted 90s (remediation.gracePeriodSeconds)";
    let bare = "shop/loner: volume vol-qsk4v is detached from node worker-1 (volumes.brightbox.com/vol-qsk4v is below 1 there); it is attached to worker-2; left alone: no controller owns it, so nothing would recreate it once evicted (remediation.evictBarePods: false)";
    let stuck = "shop/stuck: volume vol-p1 is detached from node worker-5 (volumes.brightbox.com/vol-p1 is below 1 there); no other Ready node advertises it and no VolumeAttachment puts it on another node; left alone: every brightbox volume on node worker-5 is below 1 at once, so its device plugin looks down, not the volume";
    let down = "the brightbox device plugin on node worker-5 looks down: all 2 of its volumes there are below 1 at once, so its pods are left alone";
    let nodes = run(&["nodes"]);
    assert!(
        nodes.ends_with(&format!(
            "\ndevice plugins that look down:\n  {down}\n\npods whose device-plugin volume left their node:\n  {line}\n  {bare}\n  {stuck}\n"
        )),
        "{nodes}"
    );
    let json: Value = serde_json::from_str(&run(&["nodes", "--output", "json"])).unwrap();
    assert_eq!(json["detachedPods"], serde_json::json!([line, bare, stuck]));
    assert_eq!(json["pluginsDown"], serde_json::json!([down]));
    for (file, want) in [("detached.yaml", line), ("loner.yaml", bare)] {
        let pod_file = dir.path().join(file);
        let explain = run(&["explain", "--pod", pod_file.to_str().unwrap()]);
        assert!(
            explain.ends_with(&format!("\nremediation: {want}\n")),
            "{explain}"
        );
    }
}

/// The remediation sample in docs/remediation.md ("Seeing it") is what the command shown
/// there prints, line for line, on `examples/remediation-cluster`.
#[test]
fn the_remediation_sample_in_the_docs_is_what_nodes_prints_on_its_example() {
    let page = std::fs::read_to_string(repo("docs/remediation.md")).unwrap();
    let prompt = "$ volguard nodes --snapshot examples/remediation-cluster";
    let sample: Vec<&str> = page
        .lines()
        .skip_while(|l| !l.starts_with(prompt))
        .take_while(|l| *l != "```")
        .collect();
    assert!(
        sample.len() > 3,
        "docs/remediation.md shows `{prompt} ...` and its output"
    );
    let args: Vec<&str> = sample[0]["$ volguard ".len()..].split(' ').collect();
    assert_eq!(
        args,
        [
            "nodes",
            "--snapshot",
            "examples/remediation-cluster",
            "--config",
            "examples/remediation-config.yaml"
        ]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_volguard"))
        .args(&args)
        .current_dir(repo(""))
        .env_remove("VOLGUARD_OUTPUT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, format!("{}\n", sample[1..].join("\n")));
    // What each pod of the example shows, as the pod files say.
    for (pod, says) in [
        ("cache-0", "waiting for remediation"),
        ("loner", "left alone: no controller owns it"),
        ("stuck", "so its device plugin looks down"),
    ] {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("  shop/{pod}: ")))
            .unwrap_or_else(|| panic!("a line for {pod}: {printed}"));
        assert!(line.contains(says), "{line}");
    }
}
