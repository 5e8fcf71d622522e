//! Renders the deployment manifests with `kubectl kustomize` and checks them
//! against the external contract: every object must deserialize into its
//! Kubernetes type with no unknown field, and the webhook, RBAC, Deployments
//! and scheduler configuration must have the properties operators rely on.
//!
//! Needs `kubectl` (with its bundled kustomize) on PATH; no cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::Resource;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use common::render::{documents, first_difference, kustomize};
use common::repo;

const NAMESPACE: &str = "volguard-system";
const MARKER_RESOURCE: &str = "volguard.io/volumes";
const IMAGE: &str = "ghcr.io/volguard/volguard:0.1.0";

/// Every object of a rendered kustomization, by kind.
#[derive(Default)]
struct Rendered {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    deployments: Vec<Deployment>,
    pdbs: Vec<PodDisruptionBudget>,
    services: Vec<Service>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    /// cert-manager objects (no Rust types for these CRDs).
    cert_manager: Vec<Value>,
}

/// Deserializes `doc` into `T` and re-serializes it: any field the typed
/// object drops (a typo, a wrong nesting level) fails the test.
fn typed<T: Resource + DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not deserialize as {}: {e}", T::KIND));
    let back = serde_json::to_value(&object)
        .unwrap_or_else(|e| panic!("{what} does not serialize back to JSON: {e}"));
    if let Some(diff) = first_difference(doc, &back, "", ("manifest", "typed object")) {
        panic!("{what}: unknown or malformed field ({diff})");
    }
    object
}

fn parse(yaml: &str, source: &str) -> Rendered {
    let mut r = Rendered::default();
    for doc in documents(yaml, &format!("`kubectl kustomize {source}`")) {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{source}: {kind} {name}");
        macro_rules! is {
            ($t:ty) => {
                api_version == <$t>::API_VERSION && kind == <$t>::KIND
            };
        }
        if is!(Namespace) {
            r.namespaces.push(typed(&doc, &what));
        } else if is!(ServiceAccount) {
            r.service_accounts.push(typed(&doc, &what));
        } else if is!(ClusterRole) {
            r.cluster_roles.push(typed(&doc, &what));
        } else if is!(ClusterRoleBinding) {
            r.cluster_role_bindings.push(typed(&doc, &what));
        } else if is!(Role) {
            r.roles.push(typed(&doc, &what));
        } else if is!(RoleBinding) {
            r.role_bindings.push(typed(&doc, &what));
        } else if is!(ConfigMap) {
            r.config_maps.push(typed(&doc, &what));
        } else if is!(Deployment) {
            r.deployments.push(typed(&doc, &what));
        } else if is!(PodDisruptionBudget) {
            r.pdbs.push(typed(&doc, &what));
        } else if is!(Service) {
            r.services.push(typed(&doc, &what));
        } else if is!(MutatingWebhookConfiguration) {
            r.webhooks.push(typed(&doc, &what));
        } else if api_version == "cert-manager.io/v1"
            && matches!(kind.as_str(), "Issuer" | "ClusterIssuer" | "Certificate")
        {
            r.cert_manager.push(doc);
        } else {
            panic!("{what}: unexpected apiVersion/kind {api_version:?}/{kind:?}");
        }
    }
    r
}

fn by_name<'a, T: Resource>(items: &'a [T], name: &str, meta: impl Fn(&T) -> &str) -> &'a T {
    let found: Vec<&T> = items.iter().filter(|o| meta(o) == name).collect();
    match found.as_slice() {
        [one] => one,
        [] => panic!("no {} named {name:?}", T::KIND),
        _ => panic!("{} {name:?} appears more than once", T::KIND),
    }
}

fn webhook(r: &Rendered) -> &MutatingWebhook {
    let config = by_name(&r.webhooks, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let hooks = config.webhooks.as_deref().unwrap_or_default();
    assert_eq!(
        hooks.len(),
        1,
        "MutatingWebhookConfiguration volguard: one webhook"
    );
    &hooks[0]
}

fn config_map<'a>(r: &'a Rendered, name: &str) -> &'a ConfigMap {
    by_name(&r.config_maps, name, |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    })
}

fn deployment<'a>(r: &'a Rendered, name: &str) -> &'a Deployment {
    by_name(&r.deployments, name, |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    })
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Deployment has a pod template spec")
}

fn yaml_value(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

/// The parsed volguard config.yaml.
fn volguard_config(r: &Rendered) -> Value {
    let cm = config_map(r, "volguard-config");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("ConfigMap volguard-config has the key config.yaml");
    yaml_value(text, "volguard-config config.yaml")
}

/// The parsed KubeSchedulerConfiguration of the second scheduler.
fn scheduler_config(r: &Rendered) -> Value {
    let cm = config_map(r, "volguard-scheduler-config");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("scheduler-config.yaml"))
        .expect("ConfigMap volguard-scheduler-config has the key scheduler-config.yaml");
    yaml_value(text, "KubeSchedulerConfiguration")
}

fn the_extender(config: &Value, what: &str) -> Value {
    let extenders = config["extenders"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no `extenders` list"));
    assert_eq!(extenders.len(), 1, "{what}: exactly one extender");
    extenders[0].clone()
}

/// The value after `flag` in a container's args.
fn flag_value<'a>(container: &'a Container, flag: &str) -> Option<&'a str> {
    let args = container.args.as_deref().unwrap_or_default();
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The Secret volume of `pod` mounted at the longest prefix of `file` in `container`.
fn secret_holding<'a>(
    pod: &'a PodSpec,
    container: &Container,
    file: &str,
) -> &'a SecretVolumeSource {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(file).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("{file} is not mounted"));
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .unwrap_or_else(|| panic!("{file} does not come from a Secret"))
}

fn strings(v: &Option<Vec<String>>) -> BTreeSet<&str> {
    v.iter().flatten().map(String::as_str).collect()
}

fn check_webhook(r: &Rendered) {
    let hook = webhook(r);
    assert_eq!(hook.name, "pods.volguard.io");
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, ["v1"]);
    let timeout = hook.timeout_seconds.expect("webhook sets timeoutSeconds");
    assert!(
        (1..=10).contains(&timeout),
        "timeoutSeconds {timeout} not in 1..=10"
    );
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));

    let service = hook
        .client_config
        .service
        .as_ref()
        .expect("webhook clientConfig uses a service");
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str()),
        ("volguard", NAMESPACE)
    );
    assert_eq!(service.path.as_deref(), Some("/mutate"));
    assert_eq!(service.port, Some(443));

    let rules = hook.rules.as_deref().unwrap_or_default();
    assert!(
        rules.iter().any(|rule| {
            strings(&rule.operations).contains("CREATE")
                && strings(&rule.api_groups).contains("")
                && strings(&rule.api_versions).contains("v1")
                && strings(&rule.resources).contains("pods")
        }),
        "webhook has no rule for CREATE on core v1 pods"
    );

    let selector = hook
        .namespace_selector
        .as_ref()
        .expect("webhook has a namespaceSelector");
    let excluded: BTreeSet<&str> = selector
        .match_expressions
        .iter()
        .flatten()
        .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .flat_map(|e| e.values.iter().flatten().map(String::as_str))
        .collect();
    for ns in ["kube-system", NAMESPACE] {
        assert!(
            excluded.contains(ns),
            "namespaceSelector must exclude {ns} (a webhook admitting its own pods deadlocks)"
        );
    }

    // Fail is only coherent with onError: deny (see the comment in webhook.yaml).
    match hook.failure_policy.as_deref() {
        Some("Ignore") => {}
        Some("Fail") => assert_eq!(
            volguard_config(r)["onError"],
            "deny",
            "failurePolicy Fail requires onError: deny"
        ),
        other => panic!("webhook failurePolicy must be set explicitly, got {other:?}"),
    }
}

fn check_cluster_role(r: &Rendered) {
    let role = by_name(&r.cluster_roles, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let mut resources = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for verb in &rule.verbs {
            assert!(
                matches!(verb.as_str(), "get" | "list" | "watch"),
                "ClusterRole volguard grants {verb:?}; it must stay read-only"
            );
        }
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                resources.insert((group.as_str(), resource.as_str()));
            }
        }
    }
    let expected: BTreeSet<(&str, &str)> = [
        ("", "nodes"),
        ("", "pods"),
        ("", "persistentvolumes"),
        ("", "persistentvolumeclaims"),
        ("storage.k8s.io", "csinodes"),
        ("storage.k8s.io", "volumeattachments"),
        ("storage.k8s.io", "storageclasses"),
    ]
    .into_iter()
    .collect();
    assert_eq!(resources, expected, "ClusterRole volguard resources");

    let binding = by_name(&r.cluster_role_bindings, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    assert_eq!(binding.role_ref.name, "volguard");
    assert!(binding.subjects.iter().flatten().any(|s| {
        s.kind == "ServiceAccount"
            && s.name == "volguard"
            && s.namespace.as_deref() == Some(NAMESPACE)
    }));
}

fn check_hardening(name: &str, pod: &PodSpec, container: &Container) {
    let pod_sc = pod.security_context.as_ref();
    let sc: Option<&SecurityContext> = container.security_context.as_ref();
    let what = format!("Deployment {name}, container {}", container.name);

    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    assert!(
        matches!(uid, Some(u) if u > 0),
        "{what}: needs a numeric non-zero runAsUser"
    );
    let sc = sc.unwrap_or_else(|| panic!("{what}: no securityContext"));
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    let drops_all = sc
        .capabilities
        .as_ref()
        .is_some_and(|c| strings(&c.drop).contains("ALL"));
    assert!(drops_all, "{what}: capabilities must drop ALL");
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()))
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{what}: seccompProfile");

    let resources = container
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no resources"));
    for (kind, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        assert!(
            map.as_ref().is_some_and(|m| m.contains_key("memory")),
            "{what}: resources.{kind}.memory"
        );
    }
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|m| m.contains_key("cpu")),
        "{what}: resources.requests.cpu"
    );
}

fn http_probe_path(probe: &Option<Probe>) -> Option<(&str, &IntOrString)> {
    let get = probe.as_ref()?.http_get.as_ref()?;
    Some((get.path.as_deref()?, &get.port))
}

/// The directory mounted at a prefix of `file`, if any.
fn mounted(container: &Container, file: &str) -> bool {
    container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| Path::new(file).starts_with(&m.mount_path))
}

fn check_volguard_deployment(r: &Rendered) {
    let d = deployment(r, "volguard");
    assert_eq!(d.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = d.spec.as_ref().expect("Deployment volguard has a spec");
    assert!(
        spec.replicas.unwrap_or(1) >= 2,
        "volguard needs >= 2 replicas"
    );
    let pod = pod_spec(d);
    assert_eq!(pod.service_account_name.as_deref(), Some("volguard"));
    let [container] = pod.containers.as_slice() else {
        panic!("Deployment volguard: expected one container");
    };
    check_hardening("volguard", pod, container);
    assert_eq!(container.image.as_deref(), Some(IMAGE));

    let ports: BTreeMap<&str, i32> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
        .collect();
    assert_eq!(ports.get("https"), Some(&8443));
    assert_eq!(ports.get("metrics"), Some(&9090));

    let metrics_port = IntOrString::String("metrics".into());
    assert_eq!(
        http_probe_path(&container.readiness_probe),
        Some(("/readyz", &metrics_port)),
        "readinessProbe: GET /readyz on the metrics port"
    );
    assert_eq!(
        http_probe_path(&container.liveness_probe),
        Some(("/healthz", &metrics_port)),
        "livenessProbe: GET /healthz on the metrics port"
    );
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let scheme = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref()?.scheme.as_deref());
        assert!(
            matches!(scheme, None | Some("HTTP")),
            "metrics port is plain HTTP"
        );
    }

    let args = container.args.as_deref().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    for flag in ["--config", "--tls-cert", "--tls-key"] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("volguard args lack {flag}"));
        let file = args.get(i + 1).expect("flag has a value");
        assert!(
            mounted(container, file),
            "{flag} {file} is not under any volumeMount"
        );
    }
    // mTLS for the extender: the CA of the serving Secret, the scheduler's name only;
    // the webhook path takes kube-apiserver's calls, which carry no certificate.
    let client_ca = flag_value(container, "--client-ca").expect("volguard args lack --client-ca");
    assert_eq!(
        secret_holding(pod, container, client_ca)
            .secret_name
            .as_deref(),
        Some("volguard-tls")
    );
    assert_eq!(flag_value(container, "--client-auth"), Some("extender"));
    assert_eq!(
        flag_value(container, "--client-allowed-names"),
        Some("volguard-scheduler")
    );
    let log_format = args.iter().position(|a| a == "--log-format");
    assert_eq!(
        log_format.and_then(|i| args.get(i + 1)).map(String::as_str),
        Some("json"),
        "volguard logs JSON for the cluster's log pipeline: {args:?}"
    );
    let env: BTreeMap<&str, &str> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    assert_eq!(
        env.get("RUST_LOG").copied(),
        Some(volguard::cmd::DEFAULT_LOG_FILTER),
        "RUST_LOG is the binary's default filter (info, kube's per-retry errors off)"
    );
    let tls = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| {
            v.secret
                .as_ref()
                .filter(|s| s.secret_name.as_deref() == Some("volguard-tls"))
        })
        .expect("TLS comes from Secret volguard-tls");
    assert_eq!(
        tls.default_mode,
        Some(0o400),
        "the TLS Secret's files (the private key) are readable by their owner only"
    );
    let pod_sc = pod.security_context.as_ref();
    assert_eq!(
        pod_sc.and_then(|s| s.fs_group),
        pod_sc.and_then(|s| s.run_as_group),
        "fsGroup is volguard's group, so the kubelet lets it read the 0400 Secret files"
    );

    // The Service and the PDB select these pods.
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let labels = labels.expect("pod template has labels");
    let selects = |selector: &BTreeMap<String, String>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let service = by_name(&r.services, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let service_spec = service.spec.as_ref().expect("Service volguard has a spec");
    assert!(selects(
        service_spec
            .selector
            .as_ref()
            .expect("Service has a selector")
    ));
    let https = service_spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == 443)
        .expect("Service volguard has port 443");
    assert_eq!(https.target_port, Some(IntOrString::String("https".into())));
    assert!(service_spec.ports.iter().flatten().any(|p| p.port == 9090));
    assert_eq!(
        service_spec.session_affinity.as_deref(),
        None,
        "the webhook's Service balances"
    );

    // The extender's Service: the same pods, one replica per client (docs/scheduling.md, "Bursts").
    let extender = by_name(&r.services, "volguard-extender", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let extender_spec = extender
        .spec
        .as_ref()
        .expect("Service volguard-extender has a spec");
    assert_eq!(extender_spec.selector, service_spec.selector);
    assert_eq!(extender_spec.session_affinity.as_deref(), Some("ClientIP"));
    let https = extender_spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == 443)
        .expect("Service volguard-extender has port 443");
    assert_eq!(https.target_port, Some(IntOrString::String("https".into())));

    let pdb = by_name(&r.pdbs, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let pdb_spec = pdb.spec.as_ref().expect("PDB volguard has a spec");
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb_spec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow"),
        "PDB volguard: replicas that are not Ready must stay evictable, or an unready \
         volguard blocks every node drain"
    );
    let pdb_selector = pdb_spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref());
    assert!(selects(pdb_selector.expect("PDB has matchLabels")));
}

fn check_extender(extender: &Value, what: &str) {
    assert_eq!(
        extender["urlPrefix"],
        format!("https://volguard-extender.{NAMESPACE}.svc:443"),
        "{what}: urlPrefix (the Service with ClientIP affinity)"
    );
    assert_eq!(extender["filterVerb"], "filter", "{what}: filterVerb");
    assert_eq!(
        extender["prioritizeVerb"], "prioritize",
        "{what}: prioritizeVerb"
    );
    assert_eq!(extender["enableHTTPS"], true, "{what}: enableHTTPS");
    assert_eq!(
        extender["nodeCacheCapable"], true,
        "{what}: nodeCacheCapable"
    );
    assert_eq!(
        extender["tlsConfig"]["serverName"],
        format!("volguard.{NAMESPACE}.svc"),
        "{what}: tlsConfig.serverName"
    );
}

/// An extender added to a scheduler that also schedules other pods routes on the
/// marker resource.
fn check_marker_routing(extender: &Value, what: &str) {
    let managed = extender["managedResources"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no managedResources"));
    assert!(
        managed
            .iter()
            .any(|m| m["name"] == MARKER_RESOURCE && m["ignoredByScheduler"] == true),
        "{what}: managedResources needs {{name: {MARKER_RESOURCE}, ignoredByScheduler: true}}"
    );
}

fn check_scheduler(r: &Rendered) {
    let config = scheduler_config(r);
    assert_eq!(config["apiVersion"], "kubescheduler.config.k8s.io/v1");
    assert_eq!(config["kind"], "KubeSchedulerConfiguration");
    let profiles = config["profiles"].as_array().expect("scheduler profiles");
    assert!(
        profiles
            .iter()
            .any(|p| p["schedulerName"] == "volguard-scheduler")
    );
    assert_eq!(
        config["leaderElection"]["resourceName"],
        "volguard-scheduler"
    );
    let extender = the_extender(&config, "volguard-scheduler-config");
    check_extender(&extender, "volguard-scheduler-config");

    // The second scheduler sends volguard every pod it schedules: no marker resource,
    // which kube-scheduler would otherwise count against pods' requeueing (docs/scheduling.md).
    assert_eq!(extender["managedResources"], Value::Null);
    assert_eq!(volguard_config(r)["markerResource"], "");
    // ... and the webhook routes managed pods to it.
    assert_eq!(
        volguard_config(r)["scheduling"]["schedulerName"],
        "volguard-scheduler"
    );
    // The extender sees every node that passed the in-tree filters, not a sample.
    assert_eq!(config["percentageOfNodesToScore"], 100);

    let d = deployment(r, "volguard-scheduler");
    let pod = pod_spec(d);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("volguard-scheduler")
    );
    let [container] = pod.containers.as_slice() else {
        panic!("Deployment volguard-scheduler: expected one container");
    };
    check_hardening("volguard-scheduler", pod, container);
    let command_line: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    let config_file = command_line
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("kube-scheduler gets --config=FILE");
    assert!(
        mounted(container, config_file),
        "{config_file} is not mounted"
    );
    let ca_file = extender["tlsConfig"]["caFile"]
        .as_str()
        .expect("tlsConfig.caFile");
    assert!(mounted(container, ca_file), "{ca_file} is not mounted");
    // The client certificate volguard's extender paths require, from its own Secret,
    // readable by the scheduler's user only.
    for key in ["certFile", "keyFile"] {
        let file = extender["tlsConfig"][key]
            .as_str()
            .unwrap_or_else(|| panic!("tlsConfig.{key}"));
        let secret = secret_holding(pod, container, file);
        assert_eq!(
            secret.secret_name.as_deref(),
            Some("volguard-scheduler-client")
        );
        assert_eq!(secret.default_mode, Some(0o400), "{key}: 0400");
    }
    let pod_sc = pod.security_context.as_ref();
    assert_eq!(
        pod_sc.and_then(|s| s.fs_group),
        pod_sc.and_then(|s| s.run_as_group),
        "fsGroup is the scheduler's group, so it can read the 0400 client key"
    );

    let bound: BTreeSet<&str> = r
        .cluster_role_bindings
        .iter()
        .filter(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.name == "volguard-scheduler" && s.namespace.as_deref() == Some(NAMESPACE)
            })
        })
        .map(|b| b.role_ref.name.as_str())
        .collect();
    for role in ["system:kube-scheduler", "system:volume-scheduler"] {
        assert!(
            bound.contains(role),
            "volguard-scheduler is not bound to {role}"
        );
    }
    assert!(
        r.role_bindings.iter().any(|b| {
            b.metadata.namespace.as_deref() == Some("kube-system")
                && b.role_ref.name == "extension-apiserver-authentication-reader"
        }),
        "volguard-scheduler needs extension-apiserver-authentication-reader in kube-system"
    );
    assert!(
        r.cluster_roles
            .iter()
            .flat_map(|c| c.rules.iter().flatten())
            .any(|rule| {
                strings(&rule.resources).contains("leases")
                    && strings(&rule.resource_names).contains("volguard-scheduler")
                    && rule.verbs.iter().any(|v| v == "update")
            }),
        "volguard-scheduler cannot renew its leader-election Lease"
    );
}

fn check_base(r: &Rendered) {
    assert!(
        r.namespaces
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(NAMESPACE))
    );
    for sa in ["volguard", "volguard-scheduler"] {
        by_name(&r.service_accounts, sa, |o| {
            o.metadata.name.as_deref().unwrap_or_default()
        });
    }
    check_webhook(r);
    check_cluster_role(r);
    check_volguard_deployment(r);
    check_scheduler(r);
}

#[test]
fn base_renders_and_matches_the_contract() {
    let r = parse(&kustomize("manifests"), "manifests");
    check_base(&r);
    assert!(
        r.cert_manager.is_empty(),
        "the base must not need cert-manager"
    );
    let hook = webhook(&r);
    assert!(
        hook.client_config
            .ca_bundle
            .as_ref()
            .is_none_or(|b| b.0.is_empty()),
        "the base leaves caBundle empty"
    );
}

#[test]
fn cert_manager_overlay_injects_the_ca() {
    let r = parse(
        &kustomize("manifests/overlays/cert-manager"),
        "manifests/overlays/cert-manager",
    );
    check_base(&r);

    let config = by_name(&r.webhooks, "volguard", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    let annotation = config
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("cert-manager.io/inject-ca-from"))
        .map(String::as_str);
    assert_eq!(annotation, Some("volguard-system/volguard-tls"));

    let certificate = r
        .cert_manager
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == "volguard-tls")
        .expect("Certificate volguard-tls");
    assert_eq!(certificate["metadata"]["namespace"], NAMESPACE);
    assert_eq!(certificate["spec"]["secretName"], "volguard-tls");
    let dns: BTreeSet<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "volguard",
        "volguard.volguard-system",
        "volguard.volguard-system.svc",
        "volguard.volguard-system.svc.cluster.local",
    ] {
        assert!(
            dns.contains(name),
            "Certificate volguard-tls lacks dnsName {name}"
        );
    }
    // The serving certificate cannot log in as a client; the scheduler's client
    // certificate is issued to the one name volguard accepts.
    let usages = |name: &str| -> BTreeSet<String> {
        let certificate = r
            .cert_manager
            .iter()
            .find(|o| o["kind"] == "Certificate" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("Certificate {name}"));
        certificate["spec"]["usages"]
            .as_array()
            .unwrap_or_else(|| panic!("Certificate {name} lists its usages"))
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect()
    };
    assert!(usages("volguard-tls").contains("server auth"));
    assert!(!usages("volguard-tls").contains("client auth"));
    assert!(usages("volguard-scheduler-client").contains("client auth"));
    assert!(!usages("volguard-scheduler-client").contains("server auth"));
    let client = r
        .cert_manager
        .iter()
        .find(|o| o["metadata"]["name"] == "volguard-scheduler-client")
        .expect("Certificate volguard-scheduler-client");
    assert_eq!(client["spec"]["secretName"], "volguard-scheduler-client");
    assert_eq!(client["spec"]["issuerRef"]["name"], "volguard-ca");
    let allowed = flag_value(
        &pod_spec(deployment(&r, "volguard")).containers[0],
        "--client-allowed-names",
    );
    assert_eq!(client["spec"]["commonName"].as_str(), allowed);

    // serverName of the scheduler extender must be covered by the certificate.
    let extender = the_extender(&scheduler_config(&r), "volguard-scheduler-config");
    let server_name = extender["tlsConfig"]["serverName"]
        .as_str()
        .expect("serverName");
    assert!(dns.contains(server_name));
}

#[test]
fn extender_snippet_matches_the_scheduler_config() {
    let path = repo("manifests/docs/extender-snippet.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let snippet = the_extender(
        &yaml_value(&text, "extender-snippet.yaml"),
        "extender-snippet.yaml",
    );
    check_extender(&snippet, "extender-snippet.yaml");
    check_marker_routing(&snippet, "extender-snippet.yaml");

    let r = parse(&kustomize("manifests"), "manifests");
    let mut deployed = the_extender(&scheduler_config(&r), "volguard-scheduler-config");
    // The one difference: an existing scheduler schedules other pods too.
    deployed["managedResources"] = snippet["managedResources"].clone();
    let names = ("scheduler ConfigMap", "snippet");
    if let Some(diff) = first_difference(&deployed, &snippet, "extenders[0]", names) {
        panic!("docs/extender-snippet.yaml drifted from the scheduler ConfigMap: {diff}");
    }
}

/// `(group, resource, verb)` of every rule, to compare grants as sets.
/// Each rule's (group, resource, verb, resourceNames joined by ","; "" for any name).
fn grants(rules: &Option<Vec<PolicyRule>>) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.iter().flatten() {
        assert!(rule.non_resource_urls.is_none());
        let names = rule.resource_names.clone().unwrap_or_default().join(",");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone(), names.clone()));
                }
            }
        }
    }
    out
}

fn grant(group: &str, resource: &str, verb: &str) -> (String, String, String, String) {
    named(group, resource, verb, "")
}

fn named(group: &str, resource: &str, verb: &str, names: &str) -> (String, String, String, String) {
    (group.into(), resource.into(), verb.into(), names.into())
}

#[test]
fn remediation_overlay_turns_it_on_with_exactly_the_permissions_it_needs() {
    let base = parse(&kustomize("manifests"), "manifests");
    assert!(
        base.cluster_roles
            .iter()
            .all(|c| c.metadata.name.as_deref() != Some("volguard-remediation"))
            && base.roles.is_empty(),
        "the base must stay read-only: remediation's roles belong in the overlay"
    );
    assert_eq!(volguard_config(&base)["remediation"], Value::Null);

    let r = parse(
        &kustomize("manifests/overlays/remediation"),
        "manifests/overlays/remediation",
    );
    check_base(&r);
    let name = |o: &ClusterRole| o.metadata.name.as_deref().unwrap_or_default().to_owned();
    let role = by_name(&r.cluster_roles, "volguard-remediation", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    assert_eq!(
        grants(&role.rules),
        [
            grant("", "pods/eviction", "create"),
            grant("events.k8s.io", "events", "create"),
            grant("events.k8s.io", "events", "patch"),
        ]
        .into_iter()
        .collect(),
        "ClusterRole {} grants",
        name(role)
    );
    let binding = by_name(&r.cluster_role_bindings, "volguard-remediation", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    assert_eq!(binding.role_ref.name, "volguard-remediation");
    let lease_role = by_name(&r.roles, "volguard-remediation-lease", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    assert_eq!(lease_role.metadata.namespace.as_deref(), Some(NAMESPACE));
    // Reads and writes of the one Lease by name; create cannot be limited by name.
    assert_eq!(
        grants(&lease_role.rules),
        [
            grant("coordination.k8s.io", "leases", "create"),
            named(
                "coordination.k8s.io",
                "leases",
                "get",
                "volguard-remediation"
            ),
            named(
                "coordination.k8s.io",
                "leases",
                "update",
                "volguard-remediation"
            ),
        ]
        .into_iter()
        .collect()
    );
    let lease_binding = by_name(&r.role_bindings, "volguard-remediation-lease", |o| {
        o.metadata.name.as_deref().unwrap_or_default()
    });
    assert_eq!(lease_binding.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(lease_binding.role_ref.kind, "Role");
    for subjects in [&binding.subjects, &lease_binding.subjects] {
        assert!(subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == "volguard"
                && s.namespace.as_deref() == Some(NAMESPACE)
        }));
    }

    // The config: the base's, plus remediation turned on, valid for volguard.
    let mut config = volguard_config(&r);
    let remediation = config["remediation"].take();
    assert_eq!(remediation["enabled"], true);
    assert_eq!(
        remediation["lease"],
        serde_json::json!({"name": "volguard-remediation", "namespace": NAMESPACE})
    );
    config.as_object_mut().unwrap().remove("remediation");
    if let Some(diff) = first_difference(
        &volguard_config(&base),
        &config,
        "config.yaml",
        ("base", "remediation overlay"),
    ) {
        panic!("the remediation overlay's config drifted from the base's: {diff}");
    }
    let text = config_map(&r, "volguard-config").data.as_ref().unwrap()["config.yaml"].clone();
    let parsed = volguard::model::config::Config::parse(&text).expect("a valid volguard config");
    assert!(parsed.remediation.enabled && !parsed.remediation.dry_run);
    assert!(!parsed.remediation.evict_bare_pods);
    assert_eq!(parsed.remediation.lease.name, "volguard-remediation");
}

#[test]
fn the_network_policy_example_admits_the_scheduler_to_volguard() {
    let path = repo("manifests/docs/networkpolicy.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let policy: NetworkPolicy = typed(
        &yaml_value(&text, "networkpolicy.yaml"),
        "networkpolicy.yaml",
    );
    assert_eq!(policy.metadata.namespace.as_deref(), Some(NAMESPACE));
    let r = parse(&kustomize("manifests"), "manifests");
    let labels_of = |name: &str| {
        deployment(&r, name)
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref()?.labels.clone())
            .unwrap_or_default()
    };
    let selects = |selector: &Option<BTreeMap<String, String>>,
                   labels: &BTreeMap<String, String>| {
        selector
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let spec = policy.spec.as_ref().expect("spec");
    let applies_to = spec
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone());
    assert!(
        selects(&applies_to, &labels_of("volguard")),
        "the policy applies to volguard's pods"
    );
    assert!(
        !selects(&applies_to, &labels_of("volguard-scheduler")),
        "... not to the scheduler's"
    );
    let scheduler = labels_of("volguard-scheduler");
    let https = IntOrString::String("https".into());
    let admitted = spec.ingress.iter().flatten().any(|rule| {
        rule.ports
            .iter()
            .flatten()
            .any(|p| p.port.as_ref() == Some(&https))
            && rule.from.iter().flatten().any(|peer| {
                peer.namespace_selector.is_none()
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_some_and(|s| selects(&s.match_labels, &scheduler))
            })
    });
    assert!(admitted, "the scheduler's pods reach port https");
}

/// The `k8s.io/kubernetes` version the real control plane of the tests is built from.
fn tested_kubernetes_version() -> String {
    let path = repo("e2e/control-plane/go.mod");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let module = words.next()?;
            let version = words.next()?;
            (module == "k8s.io/kubernetes" && version.starts_with('v')).then(|| version.to_owned())
        })
        .unwrap_or_else(|| panic!("{} requires no k8s.io/kubernetes version", path.display()))
}

#[test]
fn the_shipped_kube_scheduler_is_the_version_the_tests_run() {
    let r = parse(&kustomize("manifests"), "manifests");
    let pod = pod_spec(deployment(&r, "volguard-scheduler"));
    let image = pod.containers[0].image.as_deref().unwrap_or_default();
    let tag = image.rsplit_once(':').map(|(_, tag)| tag);
    let tested = tested_kubernetes_version();
    assert_eq!(
        tag,
        Some(tested.as_str()),
        "manifests/base/scheduler/deployment.yaml ships {image}, but the tests run \
         kube-scheduler {tested} (e2e/control-plane/go.mod): ship the version that is tested"
    );
}

#[test]
fn the_quickstart_config_is_the_one_the_manifests_deploy() {
    let r = parse(&kustomize("manifests"), "manifests");
    let path = repo("examples/config.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let example = yaml_value(&text, "examples/config.yaml");
    if let Some(diff) = first_difference(
        &example,
        &volguard_config(&r),
        "",
        ("examples/config.yaml", "ConfigMap volguard-config"),
    ) {
        panic!(
            "the quickstart config and the one manifests/base/configmap.yaml deploys differ: {diff}"
        );
    }
}
