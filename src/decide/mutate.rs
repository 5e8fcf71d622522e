//! The mutation: from a pod and its resolved volumes to the JSONPatch the webhook
//! returns. Pure: the operations are built from what the pod view says exists, so each
//! one adds at a path whose parent is there, and applying the patch twice is harmless.

use std::collections::{BTreeMap, HashSet};

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use serde_json::{Map, Value, json};

use crate::{
    decide::{
        resolve::{Origin, Resolution},
        routing::{Route, route},
    },
    model::{
        config::Config,
        drivers::{Drivers, Mode},
        names,
        podview::{ContainerView, PodView},
    },
};

/// What the webhook does to one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// RFC 6902 operations; empty when nothing changes.
    pub patch: Patch,
    /// One line saying what was injected, as written to the `mutated` annotation.
    pub summary: String,
    /// Managed driver names of the injected volumes, for metrics.
    pub drivers: Vec<String>,
    /// What the user should know about the pod as written (a scheduler volguard will
    /// not route it away from).
    pub warnings: Vec<String>,
}

/// Computes the patch for `pod` given its resolved volumes. Existing resource entries
/// and probes are never overwritten; a second pass over the result changes nothing.
pub fn mutate(
    pod: &PodView,
    resolution: &Resolution,
    config: &Config,
    drivers: &Drivers,
) -> Mutation {
    let containers = pod.containers();
    if pod.opts_out(&config.annotation("inject"))
        || resolution.volumes.is_empty()
        || containers.is_empty()
    {
        return unchanged(Vec::new());
    }
    let mut warnings = Vec::new();
    let devices = device_containers(pod, resolution, config, drivers, &mut warnings);
    let mut limits = device_limits(pod, resolution, &devices, drivers, &mut warnings);
    marker_limit(&mut limits, pod, resolution, config);
    let mut ops = Vec::new();
    for (index, entries) in limits.by_container {
        add_limits(&mut ops, index, &containers[index], entries);
    }
    let probed = add_probes(&mut ops, pod, resolution, &devices, config, drivers);
    let routed = add_route(&mut ops, pod, config, &mut warnings);
    if ops.is_empty() {
        return unchanged(warnings);
    }
    let summary = summary(&limits.injected, &probed, routed);
    annotate(&mut ops, pod, resolution, config, drivers, &summary);
    Mutation {
        patch: Patch(ops),
        summary,
        drivers: driver_names(resolution, drivers),
        warnings,
    }
}

/// No patch: the pod is admitted as written, with what the user should know about it.
fn unchanged(warnings: Vec<String>) -> Mutation {
    Mutation {
        patch: Patch(Vec::new()),
        summary: String::new(),
        drivers: Vec::new(),
        warnings,
    }
}

/// Limits to inject, kept apart from the operations until every one is known: a
/// container gets one operation for all its limits when it has no `limits` map yet.
#[derive(Debug, Default)]
struct Limits {
    /// App container index -> the limits it gets, in order.
    by_container: BTreeMap<usize, Vec<(String, String)>>,
    /// `resource=value (container)` per limit, for the summary.
    injected: Vec<String>,
}

impl Limits {
    /// One more limit for app container `index`, named `container` in the summary.
    fn add(&mut self, index: usize, container: &str, resource: String, value: String) {
        self.injected
            .push(format!("{resource}={value} ({container})"));
        self.by_container
            .entry(index)
            .or_default()
            .push((resource, value));
    }
}

/// Device-plugin resources, so that the pod is placed only where its volume is: one
/// claim per pod, in the first app container that uses the volume; an annotated device
/// in the container [`device_containers`] chose for it. A resource some container
/// already claims is left alone; one whose name the API server would refuse is skipped
/// with a warning, since it would make the whole pod rejected.
fn device_limits(
    pod: &PodView,
    resolution: &Resolution,
    devices: &[Option<usize>],
    drivers: &Drivers,
    warnings: &mut Vec<String>,
) -> Limits {
    let containers = pod.containers();
    let mut limits = Limits::default();
    // Resources already given a container: a set, as a pod may name thousands.
    let mut planned: HashSet<String> = HashSet::new();
    for (m, device_at) in resolution.volumes.iter().zip(devices) {
        let Some(id) = m
            .id()
            .filter(|_| drivers.mode(m.driver) == Mode::DevicePlugin)
        else {
            continue;
        };
        let Some(resource) = drivers.resource_name(&id) else {
            continue;
        };
        if let Err(why) = names::extended_resource(&resource) {
            warnings.push(format!(
                "volume {} of driver {}: {resource:?} is not a valid resource name ({why}), so no limit was injected for it and no node can advertise it: the pod cannot use the volume until its handle or the driver's resourceTemplate makes a valid name",
                id.handle,
                drivers.get(id.driver).name
            ));
            continue;
        }
        if !planned.insert(resource.clone()) || pod.all_containers().any(|c| c.claims(&resource)) {
            continue;
        }
        let target = match (m.origin == Origin::Device, device_at) {
            (true, Some(at)) => *at,
            (true, None) => continue,
            (false, _) => m
                .pod_volume
                .as_deref()
                .and_then(|name| containers.iter().position(|c| c.uses_volume(name)))
                .unwrap_or(0),
        };
        limits.add(target, &containers[target].name, resource, "1".into());
    }
    limits
}

/// The marker resource, when one is configured, in the first container, valued with the
/// number of managed volumes: an existing scheduler sends the pods that claim it to the
/// extender.
fn marker_limit(limits: &mut Limits, pod: &PodView, resolution: &Resolution, config: &Config) {
    let marker = &config.marker_resource;
    let Some(first) = pod.containers().first() else {
        return;
    };
    if marker.is_empty() || first.claims(marker) {
        return;
    }
    let count = resolution.volumes.len().to_string();
    limits.add(0, &first.name, marker.clone(), count);
}

/// Liveness probes on the app containers that use managed volumes and have none, so that
/// a volume gone from under a container restarts it; none when probes are off or the
/// pod opts out. Returns the names of the containers probed.
fn add_probes(
    ops: &mut Vec<PatchOperation>,
    pod: &PodView,
    resolution: &Resolution,
    devices: &[Option<usize>],
    config: &Config,
    drivers: &Drivers,
) -> Vec<String> {
    let mut probed = Vec::new();
    if !config.liveness_probe.enabled || pod.opts_out(&config.annotation("liveness-probe")) {
        return probed;
    }
    for (i, c) in pod.containers().iter().enumerate() {
        let paths = probe_paths(c, i, resolution, devices, drivers);
        if c.liveness_probe || paths.is_empty() {
            continue;
        }
        ops.push(add(
            &["spec", "containers", &i.to_string(), "livenessProbe"],
            probe(&paths, config),
        ));
        probed.push(c.name.clone());
    }
    probed
}

/// Sends the pod to the configured scheduler, whose extender is volguard, as [`route`]
/// decides; a pod that names another scheduler gets a warning instead. Returns the
/// scheduler set, if any.
fn add_route<'a>(
    ops: &mut Vec<PatchOperation>,
    pod: &'a PodView,
    config: &'a Config,
    warnings: &mut Vec<String>,
) -> Option<&'a str> {
    match route(pod, config) {
        Route::Routed(target) => {
            ops.push(add(&["spec", "schedulerName"], json!(target)));
            Some(target)
        }
        Route::Elsewhere { named, target } => {
            warnings.push(format!(
                "the pod names scheduler {named:?}, so {target:?} will not schedule it and volguard's extender will not check its nodes"
            ));
            None
        }
        Route::Bound(_) | Route::Kept(_) | Route::Already(_) => None,
    }
}

/// One line saying what was injected, for the `mutated` annotation and the logs.
fn summary(injected: &[String], probed: &[String], routed: Option<&str>) -> String {
    let mut parts = Vec::new();
    if !injected.is_empty() {
        parts.push(format!("limits {}", injected.join(", ")));
    }
    if !probed.is_empty() {
        parts.push(format!("liveness probes on {}", probed.join(", ")));
    }
    if let Some(scheduler) = routed {
        parts.push(format!("scheduler {scheduler}"));
    }
    parts.join("; ")
}

/// Writes the managed volumes and the summary into the pod's annotations, so that an
/// operator reading the pod sees what volguard took it to use and did.
fn annotate(
    ops: &mut Vec<PatchOperation>,
    pod: &PodView,
    resolution: &Resolution,
    config: &Config,
    drivers: &Drivers,
    summary: &str,
) {
    let labels: Vec<String> = resolution
        .volumes
        .iter()
        .map(|m| m.label(drivers))
        .collect();
    let annotations = [
        (config.annotation("volumes"), labels.join(",")),
        (config.annotation("mutated"), summary.to_owned()),
    ];
    add_annotations(ops, pod, annotations);
}

/// The drivers of the pod's managed volumes, each once, sorted: the labels of the
/// mutation metric.
fn driver_names(resolution: &Resolution, drivers: &Drivers) -> Vec<String> {
    let mut names: Vec<String> = resolution
        .volumes
        .iter()
        .map(|m| drivers.get(m.driver).name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

fn object(entries: impl IntoIterator<Item = (String, String)>) -> Value {
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Adds limits to a container, creating `resources` or `limits` when they are missing.
fn add_limits(
    ops: &mut Vec<PatchOperation>,
    index: usize,
    c: &ContainerView,
    entries: Vec<(String, String)>,
) {
    let i = index.to_string();
    match c.resources.as_ref().map(|r| r.limits.is_some()) {
        None => ops.push(add(
            &["spec", "containers", &i, "resources"],
            json!({ "limits": object(entries) }),
        )),
        Some(false) => ops.push(add(
            &["spec", "containers", &i, "resources", "limits"],
            object(entries),
        )),
        Some(true) => {
            for (k, v) in entries {
                ops.push(add(
                    &["spec", "containers", &i, "resources", "limits", &k],
                    Value::String(v),
                ));
            }
        }
    }
}

/// Sets annotations, creating `metadata` or `metadata.annotations` when missing.
fn add_annotations(ops: &mut Vec<PatchOperation>, pod: &PodView, entries: [(String, String); 2]) {
    match pod.metadata.as_ref().map(|m| m.annotations.is_some()) {
        None => ops.push(add(
            &["metadata"],
            json!({ "annotations": object(entries) }),
        )),
        Some(false) => ops.push(add(&["metadata", "annotations"], object(entries))),
        Some(true) => {
            for (k, v) in entries {
                ops.push(add(&["metadata", "annotations", &k], Value::String(v)));
            }
        }
    }
}

/// The app container each annotated device of `resolution` goes to, its limit and its
/// probe alike (index-aligned with `resolution.volumes`; `None` for other volumes). A
/// device plugin passes the device only into the container whose resources claim it, so
/// a probe anywhere else fails forever: the container that already claims the device's
/// resource; else the one the `devices-container` annotation names; else containers[0].
/// `None` too when only an init container claims it, or when its resource name is not
/// valid (no limit is injected): no app container sees the device.
/// A named container the pod does not have is a warning.
fn device_containers(
    pod: &PodView,
    resolution: &Resolution,
    config: &Config,
    drivers: &Drivers,
    warnings: &mut Vec<String>,
) -> Vec<Option<usize>> {
    let containers = pod.containers();
    let has_devices = resolution
        .volumes
        .iter()
        .any(|m| m.origin == Origin::Device);
    let key = config.annotation("devices-container");
    let named = match pod.annotation(&key).map(str::trim) {
        Some(name) if has_devices => {
            let found = containers.iter().position(|c| c.name == name);
            if found.is_none() {
                warnings.push(format!(
                    "{key}: the pod has no container {name:?}, so its devices went to {:?}, its first container",
                    containers[0].name
                ));
            }
            found
        }
        _ => None,
    };
    resolution
        .volumes
        .iter()
        .map(|m| {
            if m.origin != Origin::Device {
                return None;
            }
            // Without a valid resource name no limit is injected, so the device plugin
            // passes the device to no container: a probe of it could never pass.
            let resource = m
                .id()
                .and_then(|id| drivers.resource_name(&id))
                .filter(|r| names::extended_resource(r).is_ok())?;
            if let Some(holder) = containers.iter().position(|c| c.claims(&resource)) {
                return Some(holder);
            }
            if pod.all_containers().any(|c| c.claims(&resource)) {
                return None;
            }
            Some(named.unwrap_or(0))
        })
        .collect()
}

/// Paths the probe of container `index` checks: mount paths and block device paths of
/// managed volumes it uses, plus the annotated devices `devices` puts into it.
fn probe_paths(
    c: &ContainerView,
    index: usize,
    resolution: &Resolution,
    devices: &[Option<usize>],
    drivers: &Drivers,
) -> Vec<String> {
    let mut paths = Vec::new();
    for (m, device_at) in resolution.volumes.iter().zip(devices) {
        if let Some(name) = &m.pod_volume {
            for mount in c.volume_mounts.iter().filter(|vm| &vm.name == name) {
                paths.push(mount.mount_path.clone());
            }
            for dev in c.volume_devices.iter().filter(|vd| &vd.name == name) {
                paths.push(dev.device_path.clone());
            }
        } else if *device_at == Some(index) {
            paths.extend(m.id().and_then(|id| drivers.device_path(&id)));
        }
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    paths
}

fn probe(paths: &[String], config: &Config) -> Value {
    let p = &config.liveness_probe;
    let checks: Vec<String> = paths
        .iter()
        .map(|path| p.check.replace("{path}", &shell_quote(path)))
        .collect();
    let mut command = p.shell.clone();
    command.push(checks.join(" && "));
    json!({
        "exec": { "command": command },
        "initialDelaySeconds": p.initial_delay_seconds,
        "periodSeconds": p.period_seconds,
        "timeoutSeconds": p.timeout_seconds,
        "failureThreshold": p.failure_threshold,
    })
}

/// Quotes a path for a POSIX shell: `'...'` with embedded quotes escaped.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_survive_the_shell() {
        assert_eq!(shell_quote("/data"), "'/data'");
        assert_eq!(shell_quote("/it's"), r"'/it'\''s'");
    }
}
