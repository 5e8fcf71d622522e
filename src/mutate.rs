//! The mutation: from a pod and its resolved volumes to the JSONPatch the webhook
//! returns. Pure: it edits a copy of the pod's JSON and diffs it against the original,
//! so the patch always applies to exactly what the apiserver sent.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Map, Value, json};

use crate::{
    config::Config,
    drivers::{Drivers, Mode},
    resolve::{Origin, Resolution},
};

/// What the webhook does to one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// RFC 6902 operations; empty when nothing changes.
    pub patch: json_patch::Patch,
    /// One line saying what was injected, as written to the `mutated` annotation.
    pub summary: String,
    /// Managed driver names of the injected volumes, for metrics.
    pub drivers: Vec<String>,
}

/// Computes the patch for `pod` (whose raw JSON is `original`) given its resolved volumes.
/// Existing resource entries and probes are never overwritten; a second pass over the
/// result changes nothing.
pub fn mutate(
    original: &Value,
    pod: &Pod,
    resolution: &Resolution,
    config: &Config,
    drivers: &Drivers,
) -> Mutation {
    let empty = Mutation {
        patch: json_patch::Patch(Vec::new()),
        summary: String::new(),
        drivers: Vec::new(),
    };
    let annotations = pod.metadata.annotations.as_ref();
    let said = |name: &str| {
        annotations
            .and_then(|a| a.get(&config.annotation(name)))
            .map(|v| v.trim())
    };
    if said("inject") == Some("false") || resolution.volumes.is_empty() {
        return empty;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return empty;
    };
    if spec.containers.is_empty() {
        return empty;
    }
    let mut doc = original.clone();
    let mut injected: Vec<String> = Vec::new();

    // Device-plugin resources: one claim per pod, in the first app container that uses it.
    for m in &resolution.volumes {
        let Some(id) = m
            .id()
            .filter(|_| drivers.mode(m.driver) == Mode::DevicePlugin)
        else {
            continue;
        };
        let Some(resource) = drivers.resource_name(&id) else {
            continue;
        };
        let claimed = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| has_resource(c, &resource));
        if claimed {
            continue;
        }
        let target = m
            .pod_volume
            .as_deref()
            .and_then(|name| spec.containers.iter().position(|c| uses_volume(c, name)))
            .unwrap_or(0);
        if set_limit(&mut doc, target, &resource, "1") {
            injected.push(format!("{resource}=1 ({})", spec.containers[target].name));
        }
    }

    // The marker resource routes the pod to the extender.
    if !has_resource(&spec.containers[0], &config.marker_resource) {
        let count = resolution.volumes.len().to_string();
        if set_limit(&mut doc, 0, &config.marker_resource, &count) {
            injected.push(format!(
                "{}={count} ({})",
                config.marker_resource, spec.containers[0].name
            ));
        }
    }

    // Liveness probes on app containers that use managed volumes and have none.
    let mut probed = Vec::new();
    if config.liveness_probe.enabled && said("liveness-probe") != Some("false") {
        for (i, c) in spec.containers.iter().enumerate() {
            if c.liveness_probe.is_some() {
                continue;
            }
            let paths = probe_paths(c, i, resolution, drivers);
            if paths.is_empty() {
                continue;
            }
            if let Some(container) = container_mut(&mut doc, i) {
                container.insert("livenessProbe".into(), probe(&paths, config));
                probed.push(c.name.clone());
            }
        }
    }

    if injected.is_empty() && probed.is_empty() {
        return empty;
    }
    let mut parts = Vec::new();
    if !injected.is_empty() {
        parts.push(format!("limits {}", injected.join(", ")));
    }
    if !probed.is_empty() {
        parts.push(format!("liveness probes on {}", probed.join(", ")));
    }
    let summary = parts.join("; ");
    let labels: Vec<String> = resolution
        .volumes
        .iter()
        .map(|m| m.label(drivers))
        .collect();
    if let Some(ann) = object_at(&mut doc, &["metadata", "annotations"]) {
        ann.insert(
            config.annotation("volumes"),
            Value::String(labels.join(",")),
        );
        ann.insert(config.annotation("mutated"), Value::String(summary.clone()));
    }
    let mut driver_names: Vec<String> = resolution
        .volumes
        .iter()
        .map(|m| drivers.get(m.driver).name.clone())
        .collect();
    driver_names.sort();
    driver_names.dedup();
    Mutation {
        patch: json_patch::diff(original, &doc),
        summary,
        drivers: driver_names,
    }
}

/// Paths the probe of container `index` checks: mount paths and block device paths of
/// managed volumes it uses, plus annotated devices for containers[0].
fn probe_paths(
    c: &Container,
    index: usize,
    resolution: &Resolution,
    drivers: &Drivers,
) -> Vec<String> {
    let mut paths = Vec::new();
    for m in &resolution.volumes {
        if let Some(name) = &m.pod_volume {
            for mount in c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|vm| &vm.name == name)
            {
                paths.push(mount.mount_path.clone());
            }
            for dev in c
                .volume_devices
                .iter()
                .flatten()
                .filter(|vd| &vd.name == name)
            {
                paths.push(dev.device_path.clone());
            }
        } else if index == 0 && m.origin == Origin::Device {
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

fn uses_volume(c: &Container, name: &str) -> bool {
    c.volume_mounts.iter().flatten().any(|m| m.name == name)
        || c.volume_devices.iter().flatten().any(|d| d.name == name)
}

fn has_resource(c: &Container, resource: &str) -> bool {
    c.resources.as_ref().is_some_and(|r| {
        r.limits.as_ref().is_some_and(|l| l.contains_key(resource))
            || r.requests
                .as_ref()
                .is_some_and(|l| l.contains_key(resource))
    })
}

/// Sets `limits[resource]` on container `index` unless present; true when it wrote.
fn set_limit(doc: &mut Value, index: usize, resource: &str, value: &str) -> bool {
    let Some(container) = container_mut(doc, index) else {
        return false;
    };
    let Some(limits) = object_in(container, &["resources", "limits"]) else {
        return false;
    };
    if limits.contains_key(resource) {
        return false;
    }
    limits.insert(resource.to_owned(), Value::String(value.to_owned()));
    true
}

fn container_mut(doc: &mut Value, index: usize) -> Option<&mut Map<String, Value>> {
    doc.get_mut("spec")?
        .get_mut("containers")?
        .get_mut(index)?
        .as_object_mut()
}

fn object_at<'a>(doc: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    object_in(doc.as_object_mut()?, path)
}

/// Walks (creating empty objects where missing or null) to the object at `path`.
fn object_in<'a>(
    mut map: &'a mut Map<String, Value>,
    path: &[&str],
) -> Option<&'a mut Map<String, Value>> {
    for key in path {
        let slot = map
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        map = slot.as_object_mut()?;
    }
    Some(map)
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
