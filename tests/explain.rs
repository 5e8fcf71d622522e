//! `volguard explain` run as the built binary on the example snapshot: the patch, one
//! row per node, and the exit code (0 some node fits, 1 none, 2 bad input).

mod common;

use std::process::{Command, Output};

use common::repo;
use serde_json::Value;

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

/// The table rows after the header, split on runs of two or more spaces.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("NODE "));
    let header = lines.next().expect("a table header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NODE", "VERDICT", "SCORE", "SLOTS", "REASON"]
    );
    let reason_at = header.find("REASON").unwrap();
    lines
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
    assert_eq!(
        rows(&stdout),
        [
            ["worker-1", "pass", "8", "linode 1/16", "-"],
            ["worker-2", "pass", "7", "linode 1/8", "-"],
            [
                "worker-3",
                "fail",
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
    assert_eq!(nodes[2]["verdict"], "fail");
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
