//! The Helm chart `charts/volguard`, rendered by helm built from its Go module
//! (`scripts/helm.sh`; these tests fail, not skip, when it cannot be built):
//!
//! - `helm lint --strict` passes with the default values and each documented value set
//!   (`charts/volguard/ci/*-values.yaml`);
//! - the default values render exactly the objects of `kubectl kustomize manifests/`, and
//!   the value sets those of the matching overlay or example, apart from Helm's own labels
//!   and the config checksum on the pod templates;
//! - the checksum follows the config, so `helm upgrade` rolls the pods when the drivers
//!   change, and only then;
//! - bad values fail the render with one line naming the value.
//!
//! Needs `kubectl` (for kustomize) and Go; no cluster.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use common::render::{documents, first_difference, helm_output, helm_template, kustomize};
use common::repo;

/// Helm's standard labels, which only the chart's objects carry.
const HELM_LABELS: [(&str, &str); 4] = [
    ("helm.sh/chart", "volguard-0.1.0"),
    ("app.kubernetes.io/managed-by", "Helm"),
    ("app.kubernetes.io/instance", "volguard"),
    ("app.kubernetes.io/version", "0.1.0"),
];
/// The pod-template annotation holding the checksum of the config the pods read.
const CHECKSUM: &str = "checksum/config";

/// A documented value set, `charts/volguard/ci/<name>-values.yaml`.
fn values(name: &str) -> PathBuf {
    repo(&format!("charts/volguard/ci/{name}-values.yaml"))
}

/// `helm template` with the value set `name`.
fn template_with(name: &str) -> Vec<Value> {
    let file = values(name);
    helm_template(&["-f", file.to_str().expect("UTF-8 path")])
}

/// `kind namespace/name`, the key objects are compared by.
fn identity(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{} {} {}/{}",
        object["apiVersion"].as_str().unwrap_or_default(),
        object["kind"].as_str().unwrap_or_default(),
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

/// Removes `key` from the map at `map`, and the map when that leaves it empty.
fn remove_key(parent: &mut Value, map: &str, key: &str) -> Option<Value> {
    let object = parent.as_object_mut()?;
    let entries = object.get_mut(map)?.as_object_mut()?;
    let removed = entries.remove(key);
    if entries.is_empty() {
        object.remove(map);
    }
    removed
}

/// The chart's objects by identity, without Helm's labels (checked to be there, with
/// their values) and the pod templates' config checksum (checked to be there).
fn chart_objects(docs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for mut doc in docs {
        let id = identity(&doc);
        for (label, value) in HELM_LABELS {
            let found = remove_key(&mut doc["metadata"], "labels", label);
            assert_eq!(found, Some(json!(value)), "{id}: label {label}");
        }
        if doc["kind"] == "Deployment" {
            let found = remove_key(
                &mut doc["spec"]["template"]["metadata"],
                "annotations",
                CHECKSUM,
            );
            let found = found.unwrap_or_else(|| panic!("{id}: no {CHECKSUM} on the pod template"));
            assert!(
                found.as_str().is_some_and(|s| s.len() == 64),
                "{id}: {CHECKSUM} is a sha256 in hex, not {found}"
            );
        }
        assert!(objects.insert(id.clone(), doc).is_none(), "{id} twice");
    }
    objects
}

/// Objects by identity.
fn by_identity(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter().map(|d| (identity(&d), d)).collect()
}

/// Panics at the first difference between the chart's objects and `expected`.
fn assert_same_objects(
    chart: &BTreeMap<String, Value>,
    expected: &BTreeMap<String, Value>,
    what: &str,
) {
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the chart and {what} render different objects"
    );
    for (id, object) in chart {
        if let Some(diff) = first_difference(object, &expected[id], "", ("chart", what)) {
            panic!("{id}: the chart and {what} differ: {diff}");
        }
    }
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn helm_lint_passes_with_the_default_values_and_each_documented_value_set() {
    let chart = repo("charts/volguard");
    let chart = chart.to_str().expect("UTF-8 path");
    for set in [
        None,
        Some("cert-manager"),
        Some("remediation"),
        Some("snippet"),
        Some("networkpolicy"),
    ] {
        let file = set.map(values);
        let mut args = vec!["lint", "--strict", chart];
        if let Some(file) = &file {
            args.extend(["-f", file.to_str().expect("UTF-8 path")]);
        }
        let out = helm_output(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm {}:\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        // Lint's only remark is the missing icon (informational).
        let remarks: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
        assert_eq!(
            remarks,
            ["[INFO] Chart.yaml: icon is recommended"],
            "{set:?}: {stdout}"
        );
        assert_eq!(
            stdout.lines().last(),
            Some("1 chart(s) linted, 0 chart(s) failed"),
            "{set:?}"
        );
    }
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn the_default_values_render_what_kustomize_renders() {
    let chart = chart_objects(helm_template(&[]));
    let kustomized = by_identity(documents(
        &kustomize("manifests"),
        "kubectl kustomize manifests",
    ));
    assert_same_objects(&chart, &kustomized, "kubectl kustomize manifests/");
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn the_cert_manager_values_render_the_cert_manager_overlay() {
    let chart = chart_objects(template_with("cert-manager"));
    let overlay = "manifests/overlays/cert-manager";
    let kustomized = by_identity(documents(&kustomize(overlay), overlay));
    assert_same_objects(&chart, &kustomized, overlay);
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn the_remediation_values_render_the_remediation_overlay() {
    let chart = chart_objects(template_with("remediation"));
    let overlay = "manifests/overlays/remediation";
    let kustomized = by_identity(documents(&kustomize(overlay), overlay));
    assert_same_objects(&chart, &kustomized, overlay);
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn the_network_policy_values_add_the_documented_example() {
    let chart = chart_objects(template_with("networkpolicy"));
    let mut expected = by_identity(documents(
        &kustomize("manifests"),
        "kubectl kustomize manifests",
    ));
    let example = repo("manifests/docs/networkpolicy.yaml");
    let text = std::fs::read_to_string(&example).expect("manifests/docs/networkpolicy.yaml");
    expected.extend(by_identity(documents(
        &text,
        "manifests/docs/networkpolicy.yaml",
    )));
    assert_same_objects(&chart, &expected, "manifests/ plus docs/networkpolicy.yaml");
}

/// volguard's config file in a ConfigMap `volguard-config`, parsed.
fn volguard_config(objects: &BTreeMap<String, Value>) -> Value {
    let map = &objects["v1 ConfigMap volguard-system/volguard-config"];
    let text = map["data"]["config.yaml"].as_str().expect("config.yaml");
    documents(text, "config.yaml").remove(0)
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn snippet_mode_leaves_out_the_second_scheduler_and_prints_the_documented_stanza() {
    let chart = chart_objects(template_with("snippet"));
    let mut expected = by_identity(documents(
        &kustomize("manifests"),
        "kubectl kustomize manifests",
    ));
    let second_scheduler: Vec<String> = expected
        .keys()
        .filter(|id| id.contains("volguard-scheduler"))
        .cloned()
        .collect();
    assert_eq!(
        second_scheduler,
        [
            "apps/v1 Deployment volguard-system/volguard-scheduler",
            "rbac.authorization.k8s.io/v1 ClusterRole /volguard-scheduler:leader-election",
            "rbac.authorization.k8s.io/v1 ClusterRoleBinding /volguard-scheduler:kube-scheduler",
            "rbac.authorization.k8s.io/v1 ClusterRoleBinding /volguard-scheduler:volume-scheduler",
            "rbac.authorization.k8s.io/v1 RoleBinding kube-system/volguard-scheduler:extension-apiserver-authentication-reader",
            "rbac.authorization.k8s.io/v1 RoleBinding volguard-system/volguard-scheduler:leader-election",
            "v1 ConfigMap volguard-system/volguard-scheduler-config",
            "v1 ServiceAccount volguard-system/volguard-scheduler",
        ]
    );
    for id in &second_scheduler {
        expected.remove(id);
    }
    // The config: the marker the stanza routes on, and no routing to a second scheduler.
    let mut config = volguard_config(&expected);
    config["markerResource"] = json!("volguard.io/volumes");
    config["scheduling"]
        .as_object_mut()
        .expect("scheduling")
        .remove("schedulerName");
    if let Some(diff) =
        first_difference(&volguard_config(&chart), &config, "", ("chart", "expected"))
    {
        panic!("snippet mode's config: {diff}");
    }
    // Everything else as kustomize renders it (the ConfigMap compared above).
    let id = "v1 ConfigMap volguard-system/volguard-config";
    let (mut chart, mut expected) = (chart, expected);
    chart.remove(id);
    expected.remove(id);
    assert_same_objects(&chart, &expected, "manifests/ without the second scheduler");

    // The install notes print the stanza of docs/extender-snippet.yaml.
    let chart_dir = repo("charts/volguard");
    let file = values("snippet");
    let out = helm_output(&[
        "install",
        "volguard",
        chart_dir.to_str().unwrap(),
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release: Value = serde_json::from_slice(&out.stdout).expect("helm -o json");
    let notes = release["info"]["notes"].as_str().expect("notes");
    let start = notes
        .find("\nextenders:\n")
        .expect("the notes print an extenders: stanza");
    let stanza = &notes[start..];
    let stanza = &stanza[..stanza.find("\n\n").expect("a blank line after the stanza")];
    let printed = documents(stanza, "the install notes").remove(0);
    let path = repo("manifests/docs/extender-snippet.yaml");
    let text = std::fs::read_to_string(&path).expect("extender-snippet.yaml");
    let documented = documents(&text, "extender-snippet.yaml").remove(0);
    if let Some(diff) = first_difference(
        &printed,
        &documented,
        "",
        ("notes", "docs/extender-snippet.yaml"),
    ) {
        panic!("the stanza the install notes print: {diff}");
    }
}

/// The `checksum/config` of the Deployment `name`, and its pod template without it.
fn pod_template(docs: &[Value], name: &str) -> (String, Value) {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"));
    let mut template = deployment["spec"]["template"].clone();
    let checksum = remove_key(&mut template["metadata"], "annotations", CHECKSUM)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("Deployment {name}: no {CHECKSUM}"));
    (checksum, template)
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn changing_the_drivers_changes_the_config_checksum_so_an_upgrade_rolls_the_pods() {
    let defaults = helm_template(&[]);
    let drivers =
        r#"drivers=[{"name":"ebs","csiDriver":"ebs.csi.aws.com","attachLimit":{"default":25}}]"#;
    let changed = helm_template(&["--set-json", drivers]);
    let (before, template) = pod_template(&defaults, "volguard");
    let (after, changed_template) = pod_template(&changed, "volguard");
    assert_ne!(
        before, after,
        "new drivers, same checksum: helm upgrade would not restart volguard"
    );
    assert_eq!(
        template, changed_template,
        "only the checksum changes in the pod template"
    );
    let config = changed
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "volguard-config")
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .expect("volguard-config");
    assert!(
        config.contains(
            "drivers:\n  - name: ebs\n    csiDriver: ebs.csi.aws.com\n    \
             # Attach mode. Limit precedence: node annotation > CSINode > default.\n    \
             attachLimit:\n      default: 25\nlivenessProbe:\n"
        ),
        "{config}"
    );
    // The second scheduler's config did not change: its pods stay.
    assert_eq!(
        pod_template(&defaults, "volguard-scheduler"),
        pod_template(&changed, "volguard-scheduler")
    );
    // Neither does volguard's checksum when something other than its config changes.
    let scaled = helm_template(&["--set", "replicas=3"]);
    assert_eq!(pod_template(&scaled, "volguard").0, before);
    // The same values give the same checksum: an upgrade without changes rolls nothing.
    assert_eq!(pod_template(&helm_template(&[]), "volguard").0, before);
}

#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn bad_values_fail_the_render_with_one_line_naming_the_value() {
    let chart = repo("charts/volguard");
    let cases: [(&[&str], &str); 9] = [
        (
            &["--set-json", r#"drivers=[{"name":"x","csiDrive":"y"}]"#],
            "drivers[0]: unknown key \"csiDrive\" (known: name, csiDriver, flexDriver, \
             flexVolumeIdOption, storageClasses, sourceKinds, resourceTemplate, \
             devicePathTemplate, attachLimit)",
        ),
        (
            &["--set", "scheduler.mode=both"],
            "scheduler.mode must be second or snippet, not \"both\"",
        ),
        (
            &["--set", "networkPolicy.enabled=true"],
            "networkPolicy.apiServerCIDRs: list the addresses kube-apiserver calls webhooks \
             from (else the policy stops the webhook)",
        ),
        (
            &["--set", "webhook.url=https://10.0.0.1:8443/mutate"],
            "webhook.url needs tls.caBundle: the API server must trust volguard's certificate",
        ),
        (
            &["--set", "config.onError=warn"],
            "config.onError must be allow or deny, not \"warn\"",
        ),
        (
            &[
                "--set",
                "webhook.failurePolicy=Fail",
                "--set",
                "config.onError=deny",
            ],
            "webhook.failurePolicy Fail needs tls.caBundle or tls.certManager: without a CA \
             the API server cannot call volguard, and every pod creation in the selected \
             namespaces would be refused",
        ),
        (
            &[
                "--set",
                "webhook.failurePolicy=Fail",
                "--set",
                "tls.caBundle=Q0E=",
            ],
            "webhook.failurePolicy Fail goes with config.onError deny: with allow, volguard \
             admits unchanged what Fail is meant to refuse",
        ),
        (
            &[
                "--set",
                "tls.certManager=true",
                "--set",
                "tls.caBundle=Q0E=",
            ],
            "tls.caBundle and tls.certManager both set: cert-manager's CA injector and helm \
             would overwrite each other's caBundle on every upgrade; set one",
        ),
        (
            &[
                "--set-json",
                "webhook.namespaceSelector.matchExpressions=[]",
            ],
            "webhook.namespaceSelector must exclude volguard's own namespace volguard-system \
             with a matchExpressions entry {key: kubernetes.io/metadata.name, operator: NotIn}: \
             a webhook that must admit its own pods cannot restart",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["template", "volguard", chart.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = helm_output(&all);
        assert!(!out.status.success(), "{args:?} rendered");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        // "Error: execution error at (volguard/templates/<file>:<line>:<col>): <message>"
        let (place, said) = first
            .split_once("): ")
            .unwrap_or_else(|| panic!("{args:?}: {stderr}"));
        assert!(
            place.starts_with("Error: execution error at (volguard/templates/"),
            "{first}"
        );
        assert_eq!(said, message, "{args:?}");
    }
}

#[test]
fn the_chart_deploys_the_volguard_this_repository_builds() {
    let path = repo("charts/volguard/Chart.yaml");
    let text = std::fs::read_to_string(&path).expect("Chart.yaml");
    let chart = documents(&text, "Chart.yaml").remove(0);
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion"
    );
    assert_eq!(
        chart["version"], "0.1.0",
        "Chart.yaml version (HELM_LABELS here)"
    );
}

/// volguard's own namespace is always out of the webhook's reach, whatever it is
/// called: a webhook that must admit its own pods cannot restart.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn the_webhook_never_reaches_volguards_own_namespace() {
    let docs = helm_template(&["--set", "namespace.name=storage"]);
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["kube-system", "volguard-system", "storage"])
    );
}

/// One replica gets no PodDisruptionBudget: `minAvailable: 1` would block every drain
/// of its node.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn one_replica_gets_no_disruption_budget() {
    let budgets = |docs: Vec<Value>| {
        docs.iter()
            .filter(|d| d["kind"] == "PodDisruptionBudget")
            .count()
    };
    assert_eq!(budgets(helm_template(&["--set", "replicas=1"])), 0);
    assert_eq!(budgets(helm_template(&[])), 1);
}

/// kube-scheduler reads the CA it trusts volguard with only at start: a new CA rolls the
/// second scheduler.
#[cfg_attr(
    feature = "skip-e2e",
    ignore = "NOT RUN: needs helm, built from its Go module (Go); built with --features skip-e2e"
)]
#[test]
fn a_new_ca_rolls_the_second_scheduler() {
    let before = pod_template(&helm_template(&[]), "volguard-scheduler").0;
    let with_ca = pod_template(
        &helm_template(&["--set", "tls.caBundle=Q0E="]),
        "volguard-scheduler",
    )
    .0;
    let cert_manager = pod_template(
        &helm_template(&["--set", "tls.certManager=true"]),
        "volguard-scheduler",
    )
    .0;
    assert_ne!(before, with_ca);
    assert_ne!(before, cert_manager);
    assert_ne!(with_ca, cert_manager);
}
