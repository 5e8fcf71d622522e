//! The config file (docs/configuration.md): typed, defaulted and validated once at
//! start, so that every later component can trust it.

use std::path::Path;

use serde::Deserialize;

use crate::model::names;

/// What volguard does when its own machinery fails (cache miss, API error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Admit the pod unchanged with a warning: volguard must never block a cluster.
    #[default]
    Allow,
    /// Reject the pod: for clusters where an unguarded pod is worse than no pod.
    Deny,
}

/// The whole configuration; every key is optional and falls back to the documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Prefix of the pod annotations volguard reads and writes.
    pub annotation_prefix: String,
    /// Policy for volguard's own errors in the webhook.
    pub on_error: OnError,
    /// Extended resource injected into `containers[0]` so that an existing scheduler
    /// whose extender lists it in `managedResources` sends the pod to volguard. Empty (the
    /// default): not injected, as the shipped second scheduler sends volguard every pod,
    /// counts a marker it does not ignore as a resource no node has, and requeues pods
    /// that carry one late (docs/scheduling.md, "Which scheduler asks volguard").
    pub marker_resource: String,
    /// The volume drivers volguard manages; volumes of any other driver are left alone.
    pub drivers: Vec<DriverConfig>,
    /// Shape of the injected exec liveness probes.
    pub liveness_probe: ProbeConfig,
    /// Switches for the extender's rules.
    pub scheduling: SchedulingConfig,
    /// The opt-in controller that evicts pods whose device-plugin volume left their node.
    pub remediation: RemediationConfig,
}

/// One managed driver: how to recognise its volumes and how a node holds them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriverConfig {
    /// Short label used in annotations, messages and metrics.
    pub name: String,
    /// CSI driver name as in PV `.spec.csi.driver`, inline csi volumes and CSINode.
    #[serde(default)]
    pub csi_driver: Option<String>,
    /// flexVolume driver name, inline or in a PV.
    #[serde(default)]
    pub flex_driver: Option<String>,
    /// PersistentVolumes of these StorageClasses (PV `.spec.storageClassName`), and
    /// unbound claims of them: for volumes no CSI or flexVolume driver names, such as
    /// local PVs published by the local static provisioner.
    #[serde(default)]
    pub storage_classes: Vec<String>,
    /// PersistentVolumes whose source is one of these kinds (`local`, `nfs`,
    /// `hostPath`, ...; see [`SOURCE_KINDS`]): their hung mounts are what the probes are
    /// for, and they carry no StorageClass one could select them by.
    #[serde(default)]
    pub source_kinds: Vec<String>,
    /// flexVolume option that carries the volume id.
    #[serde(default = "default_flex_option")]
    pub flex_volume_id_option: String,
    /// Set: device-plugin mode, one extended resource per volume.
    #[serde(default)]
    pub resource_template: Option<String>,
    /// Path of the block device inside the container, for probes of annotated devices.
    #[serde(default)]
    pub device_path_template: Option<String>,
    /// Attach-mode limit per node; absent means unlimited.
    #[serde(default)]
    pub attach_limit: Option<AttachLimitConfig>,
}

/// Where a node's attach limit for a driver comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachLimitConfig {
    /// Read CSINode `.spec.drivers[].allocatable.count` (only a `csiDriver` has an entry
    /// there; for other drivers it is ignored).
    #[serde(default = "yes", rename = "fromCSINode")]
    pub from_csi_node: bool,
    /// Node annotation whose integer value overrides everything else.
    #[serde(default)]
    pub node_annotation: Option<String>,
    /// Limit when neither the node nor the CSINode says anything.
    #[serde(default)]
    pub default: Option<i64>,
}

/// Liveness probe template; `check` is rendered once per path.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Off: inject resources only.
    pub enabled: bool,
    /// Command prefix that runs the joined checks.
    pub shell: Vec<String>,
    /// Check for one path; `{path}` is replaced by the shell-quoted path.
    pub check: String,
    /// Probe timing, copied into every injected probe.
    pub initial_delay_seconds: i32,
    /// See `initial_delay_seconds`.
    pub period_seconds: i32,
    /// See `initial_delay_seconds`.
    pub timeout_seconds: i32,
    /// See `initial_delay_seconds`.
    pub failure_threshold: i32,
}

/// Which extender rules are active, and which scheduler managed pods are sent to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Fail nodes whose CSINode lacks the driver.
    pub require_registered_driver: bool,
    /// A RWO/RWOP volume in use on node M fails other nodes.
    pub exclusive_read_write_once: bool,
    /// When set, the webhook routes pods with managed volumes that name no scheduler (or
    /// `default-scheduler`) to this one, so users need not write it in every workload.
    pub scheduler_name: Option<String>,
}

/// When and how fast pods whose device-plugin volume was detached from their node are
/// evicted (docs/remediation.md). Off by default: it is the only part of volguard
/// that writes to the API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RemediationConfig {
    /// Run the controller inside `volguard serve`.
    pub enabled: bool,
    /// How long a node must advertise the volume with a count below 1, without a break,
    /// before its pod is evicted: a device plugin re-registering must not move pods.
    pub grace_period_seconds: i64,
    /// Evictions started per minute at most, across the cluster: a mass detach moves
    /// pods gradually.
    pub max_evictions_per_minute: i64,
    /// Record the Event and the metric, evict nothing: to see what it would do first.
    pub dry_run: bool,
    /// Also evict pods no controller owns (no owner with `controller: true`). Off by
    /// default, as `kubectl drain` without `--force`: nothing recreates an evicted bare
    /// pod, so moving it means losing it.
    pub evict_bare_pods: bool,
    /// The Lease that elects the one replica that acts.
    pub lease: LeaseConfig,
}

/// The coordination.k8s.io Lease held by the acting replica.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// Its namespace: volguard's own, where the overlay grants access to Leases.
    pub namespace: String,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            grace_period_seconds: 60,
            max_evictions_per_minute: 10,
            dry_run: false,
            evict_bare_pods: false,
            lease: LeaseConfig::default(),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            name: "volguard-remediation".into(),
            namespace: "volguard-system".into(),
        }
    }
}

fn default_flex_option() -> String {
    "volumeID".into()
}

fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Self {
            annotation_prefix: "volguard.io".into(),
            on_error: OnError::Allow,
            marker_resource: String::new(),
            drivers: vec![
                DriverConfig {
                    name: "brightbox".into(),
                    csi_driver: Some("csi.brightbox.com".into()),
                    flex_driver: Some("brightbox/volume".into()),
                    storage_classes: Vec::new(),
                    source_kinds: Vec::new(),
                    flex_volume_id_option: default_flex_option(),
                    resource_template: Some("volumes.brightbox.com/{volumeHandle}".into()),
                    device_path_template: Some("/dev/disk/by-id/virtio-{volumeHandle}".into()),
                    attach_limit: None,
                },
                DriverConfig {
                    name: "linode".into(),
                    csi_driver: Some("linodebs.csi.linode.com".into()),
                    flex_driver: None,
                    storage_classes: Vec::new(),
                    source_kinds: Vec::new(),
                    flex_volume_id_option: default_flex_option(),
                    resource_template: None,
                    device_path_template: None,
                    attach_limit: Some(AttachLimitConfig {
                        from_csi_node: true,
                        node_annotation: Some("volguard.io/attach-limit".into()),
                        default: Some(8),
                    }),
                },
            ],
            liveness_probe: ProbeConfig::default(),
            scheduling: SchedulingConfig::default(),
            remediation: RemediationConfig::default(),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            shell: vec!["/bin/sh".into(), "-c".into()],
            check: "ls {path} >/dev/null".into(),
            initial_delay_seconds: 5,
            period_seconds: 10,
            timeout_seconds: 5,
            failure_threshold: 3,
        }
    }
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            require_registered_driver: true,
            exclusive_read_write_once: true,
            scheduler_name: None,
        }
    }
}

/// PersistentVolume source kinds a driver may select with `sourceKinds`, spelled as the
/// PV spec's field. A fixed list, so that a typo is an error at start and not a driver
/// that silently manages nothing.
pub const SOURCE_KINDS: [&str; 6] = ["local", "nfs", "hostPath", "iscsi", "cephfs", "rbd"];

/// Placeholder every resource and device path template must contain.
pub const HANDLE_PLACEHOLDER: &str = "{volumeHandle}";

/// A typical volume id, rendered into `resourceTemplate` at load to check the names it
/// makes: a template that fails with it fails for every volume.
const SAMPLE_HANDLE: &str = "vol-qsk4v";

/// A config that could not be used, with the file it came from: printed as one line.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file that was read.
    pub file: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Config {
    /// Reads and validates a config file; `None` means the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let file = path.display().to_string();
        let fail = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let config = Self::parse(&text).map_err(fail)?;
        Ok(config)
    }

    /// Parses and validates config text; the error is one line naming the key and the fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| one_line(&e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks everything at load that would otherwise fail later, pod by pod: above
    /// all every name volguard writes into pods, since kube-apiserver refuses a whole
    /// pod (422) for one invalid name, and a setting that would fail every pod must stop
    /// volguard at start, with one line saying what to change.
    fn validate(&self) -> Result<(), String> {
        // The annotation names are fixed, short and lower case: with a valid prefix,
        // every `<prefix>/<name>` volguard reads or writes is a qualified name.
        if let Err(why) = names::dns_subdomain(&self.annotation_prefix) {
            return Err(format!(
                "annotationPrefix: {why}, as the prefix of an annotation key must be: use a domain such as volguard.io"
            ));
        }
        if !self.marker_resource.is_empty()
            && let Err(why) = names::extended_resource(&self.marker_resource)
        {
            return Err(format!(
                "markerResource: {:?} is not an extended resource name Kubernetes accepts: {why}; use domain/name, e.g. volguard.io/volumes, or \"\" for none",
                self.marker_resource
            ));
        }
        if let Some(name) = &self.scheduling.scheduler_name {
            if names::dns_subdomain(name).is_err() {
                return Err(format!(
                    "scheduling.schedulerName: {name:?} is not a scheduler name (lowercase letters, digits, '-' and '.'), e.g. volguard-scheduler"
                ));
            }
            if !self.marker_resource.is_empty() {
                return Err(format!(
                    "markerResource: {marker:?} with scheduling.schedulerName {name:?} would leave every managed pod Pending with \"Insufficient {marker}\" (that scheduler sends volguard every pod and, as shipped, counts the marker as a resource no node has): set markerResource: \"\", or remove schedulerName when volguard is added to an existing scheduler",
                    marker = self.marker_resource
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        // (key, value) -> (index, name) of the entry that selects it: a volume must
        // belong to one driver, or counts and labels would depend on list order.
        let mut selected = std::collections::HashMap::new();
        for (i, d) in self.drivers.iter().enumerate() {
            let at = format!("drivers[{i}]");
            if d.name.is_empty() || d.name.contains([',', '=', ' ']) {
                return Err(format!(
                    "{at}.name: {:?} must be non-empty without ',', '=' or spaces",
                    d.name
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!(
                    "{at}.name: {:?} is used twice: driver names must be unique",
                    d.name
                ));
            }
            let selectors = [
                d.csi_driver.is_some() || d.flex_driver.is_some(),
                !d.storage_classes.is_empty(),
                !d.source_kinds.is_empty(),
            ];
            if selectors.iter().filter(|s| **s).count() > 1 {
                return Err(format!(
                    "{at} ({}): select volumes by one of csiDriver/flexDriver, storageClasses or sourceKinds, not several: split it into one entry per selector",
                    d.name
                ));
            }
            if !selectors.contains(&true) && d.resource_template.is_none() {
                return Err(format!(
                    "{at} ({}): set csiDriver, flexDriver, storageClasses, sourceKinds or resourceTemplate, or volguard cannot recognise its volumes",
                    d.name
                ));
            }
            for (key, value) in [("csiDriver", &d.csi_driver), ("flexDriver", &d.flex_driver)] {
                if let Some(v) = value {
                    claim(&mut selected, (key, v.clone()), i, &d.name)?;
                }
            }
            for class in &d.storage_classes {
                if class.is_empty() {
                    return Err(format!(
                        "{at}.storageClasses: an empty name selects nothing: name a StorageClass, e.g. local-storage"
                    ));
                }
                claim(&mut selected, ("storageClasses", class.clone()), i, &d.name)?;
            }
            for kind in &d.source_kinds {
                if !SOURCE_KINDS.contains(&kind.as_str()) {
                    return Err(format!(
                        "{at}.sourceKinds: {kind:?} is not a volume source kind volguard knows: use one of {}",
                        SOURCE_KINDS.join(", ")
                    ));
                }
                claim(&mut selected, ("sourceKinds", kind.clone()), i, &d.name)?;
            }
            for (key, template) in [
                ("resourceTemplate", &d.resource_template),
                ("devicePathTemplate", &d.device_path_template),
            ] {
                if let Some(t) = template
                    && t.matches(HANDLE_PLACEHOLDER).count() != 1
                {
                    return Err(format!(
                        "{at}.{key}: {t:?} must contain {HANDLE_PLACEHOLDER} exactly once, e.g. \"volumes.example.com/{HANDLE_PLACEHOLDER}\""
                    ));
                }
            }
            if let Some(t) = &d.resource_template {
                let sample = t.replace(HANDLE_PLACEHOLDER, SAMPLE_HANDLE);
                if let Err(why) = names::extended_resource(&sample) {
                    return Err(format!(
                        "{at}.resourceTemplate: {t:?} makes resource names such as {sample:?} that Kubernetes refuses: {why}; use a lower-case domain/name, e.g. \"volumes.example.com/{HANDLE_PLACEHOLDER}\""
                    ));
                }
                for (other, earlier) in self.drivers[..i].iter().enumerate() {
                    if let Some(shared) = earlier
                        .resource_template
                        .as_deref()
                        .and_then(|e| name_both_make(e, t))
                    {
                        return Err(format!(
                            "{at}.resourceTemplate: {t:?} and the one of drivers[{other}] ({}) both match resource names such as {shared:?}, so a node's resource could stand for a volume of either: give each driver a template of its own, e.g. another domain",
                            earlier.name
                        ));
                    }
                }
            }
            if let Some(key) = d
                .attach_limit
                .as_ref()
                .and_then(|l| l.node_annotation.as_ref())
                // Kubernetes checks annotation keys in lower case.
                && let Err(why) = names::qualified_name(&key.to_ascii_lowercase())
            {
                return Err(format!(
                    "{at}.attachLimit.nodeAnnotation: {key:?} is not an annotation key, so no node can carry it: {why}; use e.g. volguard.io/attach-limit"
                ));
            }
            if d.resource_template.is_some() && d.attach_limit.is_some() {
                return Err(format!(
                    "{at}.attachLimit: a device-plugin driver (resourceTemplate set) has no attach limit: remove one of the two"
                ));
            }
            if let Some(limit) = &d.attach_limit
                && let Some(n) = limit.default
                && n < 0
            {
                return Err(format!(
                    "{at}.attachLimit.default: {n} is negative: use 0 or more, or remove the key for no limit"
                ));
            }
        }
        let p = &self.liveness_probe;
        if p.enabled {
            if p.shell.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(format!(
                    "livenessProbe.shell: {:?} names no command, so every injected probe would fail and restart its container: use e.g. [\"/bin/sh\", \"-c\"]",
                    p.shell
                ));
            }
            if !p.check.contains("{path}") {
                return Err(format!(
                    "livenessProbe.check: {:?} must contain {{path}}",
                    p.check
                ));
            }
        }
        for (key, v, min) in [
            ("initialDelaySeconds", p.initial_delay_seconds, 0),
            ("periodSeconds", p.period_seconds, 1),
            ("timeoutSeconds", p.timeout_seconds, 1),
            ("failureThreshold", p.failure_threshold, 1),
        ] {
            if v < min {
                return Err(format!(
                    "livenessProbe.{key}: {v} is too small: use {min} or more"
                ));
            }
        }
        self.remediation.validate()
    }

    /// The annotation `<prefix>/<name>`.
    pub fn annotation(&self, name: &str) -> String {
        format!("{}/{name}", self.annotation_prefix)
    }
}

impl RemediationConfig {
    fn validate(&self) -> Result<(), String> {
        for (key, v, default) in [
            ("gracePeriodSeconds", self.grace_period_seconds, 60),
            ("maxEvictionsPerMinute", self.max_evictions_per_minute, 10),
        ] {
            if v < 1 {
                return Err(format!(
                    "remediation.{key}: {v} is too small: use 1 or more (the default is {default})"
                ));
            }
        }
        for (key, v) in [
            ("lease.name", &self.lease.name),
            ("lease.namespace", &self.lease.namespace),
        ] {
            let dns_label = !v.is_empty()
                && v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !v.starts_with('-')
                && !v.ends_with('-');
            if !dns_label {
                return Err(format!(
                    "remediation.{key}: {v:?} is not a Kubernetes name (lowercase letters, digits and '-', at most 63), e.g. volguard-remediation"
                ));
            }
        }
        Ok(())
    }
}

/// A resource name both templates match, each with a non-empty handle, if there is
/// one: when one prefix starts the other and one suffix ends the other, the longer
/// prefix, a handle and the longer suffix make one.
fn name_both_make(a: &str, b: &str) -> Option<String> {
    let (a_prefix, a_suffix) = a.split_once(HANDLE_PLACEHOLDER)?;
    let (b_prefix, b_suffix) = b.split_once(HANDLE_PLACEHOLDER)?;
    let prefix = longer_of(a_prefix, b_prefix, |long, short| long.starts_with(short))?;
    let suffix = longer_of(a_suffix, b_suffix, |long, short| long.ends_with(short))?;
    Some(format!("{prefix}{SAMPLE_HANDLE}{suffix}"))
}

/// The longer of `a` and `b` when it `extends` the shorter one.
fn longer_of<'a>(a: &'a str, b: &'a str, extends: fn(&str, &str) -> bool) -> Option<&'a str> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    extends(long, short).then_some(long)
}

/// Records that entry `index` selects `key: value`, refusing a value another entry (or
/// the same one) selects already.
fn claim(
    selected: &mut std::collections::HashMap<(&'static str, String), (usize, String)>,
    (key, value): (&'static str, String),
    index: usize,
    name: &str,
) -> Result<(), String> {
    match selected.get(&(key, value.clone())) {
        Some((other, _)) if *other == index => Err(format!(
            "drivers[{index}].{key}: {value:?} is listed twice: list it once"
        )),
        Some((other, other_name)) => Err(format!(
            "drivers[{index}].{key}: {value:?} is already selected by drivers[{other}] ({other_name}): a volume belongs to one driver, remove it from one of the two"
        )),
        None => {
            selected.insert((key, value), (index, name.to_owned()));
            Ok(())
        }
    }
}

/// Folds a multi-line parser message into one line for the operator's terminal,
/// dropping the source excerpt the YAML parser appends after its location.
pub fn one_line(message: &str) -> String {
    let folded = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match folded.split_once(" --> ") {
        Some((head, _)) => head.to_owned(),
        None => folded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.annotation_prefix, "volguard.io");
        assert_eq!(c.drivers.len(), 2);
        assert!(c.liveness_probe.enabled);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse("onError: deny\n").unwrap();
        assert_eq!(c.on_error, OnError::Deny);
        assert_eq!(c.marker_resource, "", "no marker unless asked for");
    }

    #[test]
    fn marker_resource_is_a_resource_name_or_empty() {
        assert_eq!(
            Config::parse("markerResource: \"\"\n")
                .unwrap()
                .marker_resource,
            ""
        );
        assert_eq!(
            Config::parse("markerResource: volguard.io/volumes\n")
                .unwrap()
                .marker_resource,
            "volguard.io/volumes"
        );
        let e = Config::parse("markerResource: volumes\n").unwrap_err();
        assert_eq!(
            e,
            "markerResource: \"volumes\" is not an extended resource name Kubernetes accepts: it has no domain prefix (domain/name); use domain/name, e.g. volguard.io/volumes, or \"\" for none"
        );
    }

    #[test]
    fn every_name_written_into_pods_is_one_kube_apiserver_accepts() {
        let cases = [
            (
                "annotationPrefix: volguard_io\n",
                "annotationPrefix: \"volguard_io\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters), as the prefix of an annotation key must be: use a domain such as volguard.io",
            ),
            (
                "annotationPrefix: Volguard.io\n",
                "annotationPrefix: \"Volguard.io\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters), as the prefix of an annotation key must be: use a domain such as volguard.io",
            ),
            (
                "markerResource: volguard.io/Volumes_\n",
                "markerResource: \"volguard.io/Volumes_\" is not an extended resource name Kubernetes accepts: \"Volumes_\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit; use domain/name, e.g. volguard.io/volumes, or \"\" for none",
            ),
            (
                "markerResource: kubernetes.io/volumes\n",
                "markerResource: \"kubernetes.io/volumes\" is not an extended resource name Kubernetes accepts: the kubernetes.io domain is reserved; use domain/name, e.g. volguard.io/volumes, or \"\" for none",
            ),
            (
                "markerResource: requests.volguard.io/volumes\n",
                "markerResource: \"requests.volguard.io/volumes\" is not an extended resource name Kubernetes accepts: names starting with \"requests.\" are reserved for quotas; use domain/name, e.g. volguard.io/volumes, or \"\" for none",
            ),
            (
                "drivers:\n  - {name: b, resourceTemplate: \"Volumes.example.com/{volumeHandle}\"}\n",
                "drivers[0].resourceTemplate: \"Volumes.example.com/{volumeHandle}\" makes resource names such as \"Volumes.example.com/vol-qsk4v\" that Kubernetes refuses: its prefix \"Volumes.example.com\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters); use a lower-case domain/name, e.g. \"volumes.example.com/{volumeHandle}\"",
            ),
            (
                "drivers:\n  - {name: b, resourceTemplate: \"example.com/disks/{volumeHandle}\"}\n",
                "drivers[0].resourceTemplate: \"example.com/disks/{volumeHandle}\" makes resource names such as \"example.com/disks/vol-qsk4v\" that Kubernetes refuses: it has more than one '/'; use a lower-case domain/name, e.g. \"volumes.example.com/{volumeHandle}\"",
            ),
            (
                "drivers:\n  - {name: b, resourceTemplate: \"vol-{volumeHandle}\"}\n",
                "drivers[0].resourceTemplate: \"vol-{volumeHandle}\" makes resource names such as \"vol-vol-qsk4v\" that Kubernetes refuses: it has no domain prefix (domain/name); use a lower-case domain/name, e.g. \"volumes.example.com/{volumeHandle}\"",
            ),
            (
                "drivers:\n  - {name: l, csiDriver: l.csi, attachLimit: {nodeAnnotation: \"volguard.io/attach limit\"}}\n",
                "drivers[0].attachLimit.nodeAnnotation: \"volguard.io/attach limit\" is not an annotation key, so no node can carry it: \"attach limit\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit; use e.g. volguard.io/attach-limit",
            ),
            (
                "livenessProbe: {shell: [\"\", \"-c\"]}\n",
                "livenessProbe.shell: [\"\", \"-c\"] names no command, so every injected probe would fail and restart its container: use e.g. [\"/bin/sh\", \"-c\"]",
            ),
            (
                "livenessProbe: {shell: []}\n",
                "livenessProbe.shell: [] names no command, so every injected probe would fail and restart its container: use e.g. [\"/bin/sh\", \"-c\"]",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(text).unwrap_err(), want, "{text}");
        }
        // Upper case is fine after the prefix, and a node annotation key is compared
        // in lower case, as Kubernetes does.
        let ok = Config::parse(
            "markerResource: volguard.io/Volumes\ndrivers:\n  - {name: l, csiDriver: l.csi, attachLimit: {nodeAnnotation: Example.com/Limit}}\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_marker_with_the_second_scheduler_is_refused() {
        let e = Config::parse(
            "markerResource: volguard.io/volumes\nscheduling: {schedulerName: volguard-scheduler}\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "markerResource: \"volguard.io/volumes\" with scheduling.schedulerName \"volguard-scheduler\" would leave every managed pod Pending with \"Insufficient volguard.io/volumes\" (that scheduler sends volguard every pod and, as shipped, counts the marker as a resource no node has): set markerResource: \"\", or remove schedulerName when volguard is added to an existing scheduler"
        );
    }

    #[test]
    fn scheduler_name_must_be_a_name() {
        let c = Config::parse("scheduling:\n  schedulerName: volguard-scheduler\n").unwrap();
        assert_eq!(
            c.scheduling.scheduler_name.as_deref(),
            Some("volguard-scheduler")
        );
        let e = Config::parse("scheduling:\n  schedulerName: Volguard Scheduler\n").unwrap_err();
        assert_eq!(
            e,
            "scheduling.schedulerName: \"Volguard Scheduler\" is not a scheduler name (lowercase letters, digits, '-' and '.'), e.g. volguard-scheduler"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("annotationPrefx: x.io\n").unwrap_err();
        assert!(e.contains("annotationPrefx"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn template_without_handle_is_rejected() {
        let e =
            Config::parse("drivers:\n  - name: b\n    resourceTemplate: volumes.example.com/x\n")
                .unwrap_err();
        assert!(
            e.contains("drivers[0].resourceTemplate") && e.contains("{volumeHandle}"),
            "{e}"
        );
    }

    #[test]
    fn negative_limit_is_rejected() {
        let e = Config::parse(
            "drivers:\n  - name: l\n    csiDriver: l.csi\n    attachLimit:\n      default: -1\n",
        )
        .unwrap_err();
        assert!(e.contains("drivers[0].attachLimit.default"), "{e}");
    }

    #[test]
    fn duplicate_driver_names_are_rejected() {
        let e =
            Config::parse("drivers:\n  - {name: a, csiDriver: x}\n  - {name: a, csiDriver: y}\n")
                .unwrap_err();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn drivers_may_select_by_storage_class_or_source_kind() {
        let c = Config::parse(
            "drivers:\n  - {name: local, storageClasses: [local-storage], attachLimit: {default: 25}}\n  - {name: shared, sourceKinds: [nfs, hostPath]}\n",
        )
        .unwrap();
        assert_eq!(c.drivers[0].storage_classes, ["local-storage"]);
        assert_eq!(c.drivers[1].source_kinds, ["nfs", "hostPath"]);
    }

    #[test]
    fn an_entry_selects_by_one_kind_of_selector() {
        let cases = [
            (
                "drivers:\n  - {name: l, csiDriver: l.csi, storageClasses: [local-storage]}\n",
                "drivers[0] (l): select volumes by one of csiDriver/flexDriver, storageClasses or sourceKinds, not several: split it into one entry per selector",
            ),
            (
                "drivers:\n  - {name: l, storageClasses: [local-storage], sourceKinds: [local]}\n",
                "drivers[0] (l): select volumes by one of csiDriver/flexDriver, storageClasses or sourceKinds, not several: split it into one entry per selector",
            ),
            (
                "drivers:\n  - {name: l, storageClasses: []}\n",
                "drivers[0] (l): set csiDriver, flexDriver, storageClasses, sourceKinds or resourceTemplate, or volguard cannot recognise its volumes",
            ),
            (
                "drivers:\n  - {name: l, storageClasses: [\"\"]}\n",
                "drivers[0].storageClasses: an empty name selects nothing: name a StorageClass, e.g. local-storage",
            ),
            (
                "drivers:\n  - {name: l, sourceKinds: [nfs4]}\n",
                "drivers[0].sourceKinds: \"nfs4\" is not a volume source kind volguard knows: use one of local, nfs, hostPath, iscsi, cephfs, rbd",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let cases = [
            (
                "drivers:\n  - {name: a, storageClasses: [local-storage]}\n  - {name: b, storageClasses: [fast, local-storage]}\n",
                "drivers[1].storageClasses: \"local-storage\" is already selected by drivers[0] (a): a volume belongs to one driver, remove it from one of the two",
            ),
            (
                "drivers:\n  - {name: a, sourceKinds: [local, nfs]}\n  - {name: b, sourceKinds: [nfs]}\n",
                "drivers[1].sourceKinds: \"nfs\" is already selected by drivers[0] (a): a volume belongs to one driver, remove it from one of the two",
            ),
            (
                "drivers:\n  - {name: a, csiDriver: x.csi}\n  - {name: b, csiDriver: x.csi}\n",
                "drivers[1].csiDriver: \"x.csi\" is already selected by drivers[0] (a): a volume belongs to one driver, remove it from one of the two",
            ),
            (
                "drivers:\n  - {name: a, sourceKinds: [local, local]}\n",
                "drivers[0].sourceKinds: \"local\" is listed twice: list it once",
            ),
            (
                "drivers:\n  - {name: a, resourceTemplate: \"volumes.example.com/{volumeHandle}\"}\n  - {name: b, resourceTemplate: \"volumes.example.com/ssd-{volumeHandle}\"}\n",
                "drivers[1].resourceTemplate: \"volumes.example.com/ssd-{volumeHandle}\" and the one of drivers[0] (a) both match resource names such as \"volumes.example.com/ssd-vol-qsk4v\", so a node's resource could stand for a volume of either: give each driver a template of its own, e.g. another domain",
            ),
            (
                "drivers:\n  - {name: a, resourceTemplate: \"example.com/{volumeHandle}-disk\"}\n  - {name: b, resourceTemplate: \"example.com/{volumeHandle}\"}\n",
                "drivers[1].resourceTemplate: \"example.com/{volumeHandle}\" and the one of drivers[0] (a) both match resource names such as \"example.com/vol-qsk4v-disk\", so a node's resource could stand for a volume of either: give each driver a template of its own, e.g. another domain",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Config::parse(text).unwrap_err(), want, "{text}");
        }
        for apart in [
            "drivers:\n  - {name: a, resourceTemplate: \"a.example.com/{volumeHandle}\"}\n  - {name: b, resourceTemplate: \"b.example.com/{volumeHandle}\"}\n",
            "drivers:\n  - {name: a, resourceTemplate: \"example.com/{volumeHandle}-a\"}\n  - {name: b, resourceTemplate: \"example.com/{volumeHandle}-b\"}\n",
        ] {
            assert_eq!(Config::parse(apart).unwrap().drivers.len(), 2, "{apart}");
        }
        assert_eq!(
            name_both_make("x/{volumeHandle}", "x/{volumeHandle}-a"),
            Some("x/vol-qsk4v-a".into())
        );
        assert_eq!(
            name_both_make("x/a-{volumeHandle}", "x/b-{volumeHandle}"),
            None
        );
        assert_eq!(
            name_both_make("x/{volumeHandle}-a", "x/{volumeHandle}-b"),
            None
        );
    }

    #[test]
    fn remediation_is_off_by_default_and_its_keys_are_checked() {
        let r = Config::parse("").unwrap().remediation;
        assert_eq!(r, RemediationConfig::default());
        assert!(!r.enabled);
        assert_eq!(
            (r.grace_period_seconds, r.max_evictions_per_minute),
            (60, 10)
        );
        assert_eq!(r.lease.name, "volguard-remediation");
        assert_eq!(r.lease.namespace, "volguard-system");
        assert!(!r.evict_bare_pods, "bare pods are left alone by default");
        let on = Config::parse(
            "remediation: {enabled: true, gracePeriodSeconds: 5, dryRun: true, evictBarePods: true, lease: {namespace: ops}}\n",
        )
        .unwrap()
        .remediation;
        assert!(on.enabled && on.dry_run && on.evict_bare_pods);
        assert_eq!(
            (on.grace_period_seconds, on.lease.namespace.as_str()),
            (5, "ops")
        );
        assert_eq!(on.lease.name, "volguard-remediation");
        for (text, error) in [
            (
                "remediation: {gracePeriodSeconds: 0}",
                "remediation.gracePeriodSeconds: 0 is too small: use 1 or more (the default is 60)",
            ),
            (
                "remediation: {maxEvictionsPerMinute: -1}",
                "remediation.maxEvictionsPerMinute: -1 is too small: use 1 or more (the default is 10)",
            ),
            (
                "remediation: {lease: {name: Leader_1}}",
                "remediation.lease.name: \"Leader_1\" is not a Kubernetes name (lowercase letters, digits and '-', at most 63), e.g. volguard-remediation",
            ),
        ] {
            assert_eq!(Config::parse(text).unwrap_err(), error, "{text}");
        }
        let unknown = Config::parse("remediation: {grace: 5}").unwrap_err();
        assert!(unknown.contains("unknown field `grace`"), "{unknown}");
    }
}
