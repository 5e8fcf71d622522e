//! The slice of a Pod that volguard reads, decoded straight from JSON: everything else
//! is skipped by the parser instead of being built into a full object. This is what
//! keeps the webhook, the extender and cache loading fast. The parts the patch points
//! into (metadata, spec, containers, resources) are read from JSON objects only, so that
//! every patch addresses what the object really holds.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, Pod, Volume},
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Deserialize, Deserializer, de::IgnoredAny};

use crate::model::json_shape;

/// A Pod as volguard needs it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    /// `None` when the object has no `metadata` at all.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub metadata: Option<MetaView>,
    /// `None` when the object has no `spec`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub spec: Option<SpecView>,
    /// `status.phase` is all that is read.
    #[serde(default)]
    pub status: Option<StatusView>,
}

/// Pod metadata: identity and annotations.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetaView {
    /// Empty on a CREATE with generateName.
    #[serde(default)]
    pub name: Option<String>,
    /// The pod's namespace, when the object carries it.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `None` when absent or null: the patch must then create the map.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Set once the pod is being deleted (an eviction went through): nothing to remediate.
    #[serde(default)]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
    /// The pod's uid: remediation evicts the very pod it judged, never a successor
    /// created under the same name.
    #[serde(default)]
    pub uid: Option<String>,
    /// Its owners; only whether one is its controller is read.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub owner_references: Vec<OwnerView>,
}

/// `metadata.ownerReferences[]`: only the controller flag matters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OwnerView {
    /// `true` for the owner that manages the pod (a ReplicaSet, StatefulSet, Job, ...),
    /// which recreates it once evicted.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// The parts of `spec` volguard reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    /// The node the pod is bound to.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The scheduler that places it; the API server defaults it to `default-scheduler`.
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// The pod's volumes.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub volumes: Vec<VolumeView>,
    /// App containers.
    #[serde(default, deserialize_with = "json_shape::objects_or_null")]
    pub containers: Vec<ContainerView>,
    /// Init containers: only their resource claims matter.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub init_containers: Vec<ContainerView>,
}

/// `status.phase`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StatusView {
    /// Pending, Running, Succeeded, Failed, Unknown.
    #[serde(default)]
    pub phase: Option<String>,
}

/// One pod volume and the sources volguard can manage.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    /// The volume's name in the pod.
    #[serde(default)]
    pub name: String,
    /// A claim in the pod's namespace.
    #[serde(default)]
    pub persistent_volume_claim: Option<ClaimSource>,
    /// A generic ephemeral volume.
    #[serde(default)]
    pub ephemeral: Option<EphemeralSource>,
    /// An inline CSI volume.
    #[serde(default)]
    pub csi: Option<CsiSource>,
    /// An inline flexVolume.
    #[serde(default)]
    pub flex_volume: Option<FlexSource>,
}

/// `persistentVolumeClaim`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSource {
    /// The claim's name.
    #[serde(default)]
    pub claim_name: String,
}

/// `ephemeral`: only the claim template's class and access modes matter.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralSource {
    /// The template the claim will be created from.
    #[serde(default)]
    pub volume_claim_template: Option<ClaimTemplate>,
}

/// `ephemeral.volumeClaimTemplate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ClaimTemplate {
    /// The claim spec.
    #[serde(default)]
    pub spec: ClaimTemplateSpec,
}

/// The claim spec of an ephemeral volume's template.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTemplateSpec {
    /// The StorageClass whose provisioner names the driver.
    #[serde(default)]
    pub storage_class_name: Option<String>,
    /// ReadWriteOnce and friends.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub access_modes: Vec<String>,
}

/// Inline `csi`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsiSource {
    /// The CSI driver name.
    #[serde(default)]
    pub driver: String,
    /// Driver-specific attributes; the volume id is read from one of them.
    #[serde(default)]
    pub volume_attributes: Option<BTreeMap<String, String>>,
}

/// Inline `flexVolume`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FlexSource {
    /// The flexVolume driver name.
    #[serde(default)]
    pub driver: String,
    /// Driver options; the volume id is read from one of them.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// A container: its mounts, its resource claims and whether it has a liveness probe.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Filesystem mounts.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub volume_mounts: Vec<MountView>,
    /// Raw block devices.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub volume_devices: Vec<DeviceView>,
    /// `None` when absent or null.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub resources: Option<ResourcesView>,
    /// Present: the user's probe, never touched.
    #[serde(default, deserialize_with = "json_shape::present")]
    pub liveness_probe: bool,
}

/// `volumeMounts[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MountView {
    /// The pod volume.
    #[serde(default)]
    pub name: String,
    /// Where it is mounted.
    #[serde(default)]
    pub mount_path: String,
}

/// `volumeDevices[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The pod volume.
    #[serde(default)]
    pub name: String,
    /// The block device's path in the container.
    #[serde(default)]
    pub device_path: String,
}

/// `resources`: which names are claimed, and whether `limits` exists.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ResourcesView {
    /// Limit names; `None` when absent or null.
    #[serde(default, deserialize_with = "keys")]
    pub limits: Option<Vec<String>>,
    /// Request names.
    #[serde(default, deserialize_with = "keys")]
    pub requests: Option<Vec<String>>,
}

impl PodView {
    /// `metadata.name`, empty when not set yet.
    pub fn name(&self) -> &str {
        self.metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or_default()
    }

    /// `metadata.namespace`, when set.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.namespace.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// A controller (an owner with `controller: true`) manages the pod and recreates it
    /// elsewhere once it is evicted; a bare pod evicted is simply gone.
    pub fn has_controller(&self) -> bool {
        self.metadata.as_ref().is_some_and(|m| {
            m.owner_references
                .iter()
                .any(|o| o.controller == Some(true))
        })
    }

    /// `metadata.uid`, when set.
    pub fn uid(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.uid.as_deref())
            .filter(|u| !u.is_empty())
    }

    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The pod carries the opt-out annotation `key` (see [`says_false`]).
    pub fn opts_out(&self, key: &str) -> bool {
        self.annotation(key).is_some_and(says_false)
    }

    /// The pod's volumes (none without a spec).
    pub fn volumes(&self) -> &[VolumeView] {
        self.spec
            .as_ref()
            .map(|s| s.volumes.as_slice())
            .unwrap_or_default()
    }

    /// The pod uses a PersistentVolumeClaim, its own or a generic ephemeral volume's:
    /// which volume that is, and whether volguard manages it, only the cluster state can
    /// say. Every other volume volguard could manage (inline csi and flexVolume, annotated
    /// devices) is known from the pod spec alone.
    pub fn uses_claims(&self) -> bool {
        self.volumes()
            .iter()
            .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
    }

    /// The app containers (none without a spec).
    pub fn containers(&self) -> &[ContainerView] {
        self.spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
    }

    /// App and init containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerView> {
        self.spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(&s.init_containers))
    }

    /// The node it is bound to, when bound.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .as_ref()?
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// The scheduler it names; `None` when it names none.
    pub fn scheduler_name(&self) -> Option<&str> {
        self.spec
            .as_ref()?
            .scheduler_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// Succeeded or Failed: it holds no volume any more.
    pub fn is_terminal(&self) -> bool {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
    }
}

/// Whether the value of an opt-out annotation (`inject`, `liveness-probe`, `route`,
/// `remediate`) turns its behaviour off: `false` in any case, spaces around it ignored.
/// One reading for every opt-out and every reader (webhook, explain, the cache,
/// remediation), so a value that opts a pod out of one thing cannot be ignored by another.
pub fn says_false(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("false")
}

/// A watched Pod arrives fully typed; keep only the view.
impl From<Pod> for PodView {
    fn from(pod: Pod) -> Self {
        let keys = |m: Option<BTreeMap<String, Quantity>>| m.map(|m| m.into_keys().collect());
        let container = |c: Container| ContainerView {
            name: c.name,
            volume_mounts: c
                .volume_mounts
                .unwrap_or_default()
                .into_iter()
                .map(|m| MountView {
                    name: m.name,
                    mount_path: m.mount_path,
                })
                .collect(),
            volume_devices: c
                .volume_devices
                .unwrap_or_default()
                .into_iter()
                .map(|d| DeviceView {
                    name: d.name,
                    device_path: d.device_path,
                })
                .collect(),
            resources: c.resources.map(|r| ResourcesView {
                limits: keys(r.limits),
                requests: keys(r.requests),
            }),
            liveness_probe: c.liveness_probe.is_some(),
        };
        let volume = |v: Volume| VolumeView {
            name: v.name,
            persistent_volume_claim: v.persistent_volume_claim.map(|c| ClaimSource {
                claim_name: c.claim_name,
            }),
            ephemeral: v.ephemeral.map(|e| EphemeralSource {
                volume_claim_template: e.volume_claim_template.map(|t| ClaimTemplate {
                    spec: ClaimTemplateSpec {
                        storage_class_name: t.spec.storage_class_name,
                        access_modes: t.spec.access_modes.unwrap_or_default(),
                    },
                }),
            }),
            csi: v.csi.map(|c| CsiSource {
                driver: c.driver,
                volume_attributes: c.volume_attributes,
            }),
            flex_volume: v.flex_volume.map(|f| FlexSource {
                driver: f.driver,
                options: f.options,
            }),
        };
        PodView {
            metadata: Some(MetaView {
                name: pod.metadata.name,
                namespace: pod.metadata.namespace,
                annotations: pod.metadata.annotations,
                deletion_timestamp: pod
                    .metadata
                    .deletion_timestamp
                    .map(|_| serde::de::IgnoredAny),
                uid: pod.metadata.uid,
                owner_references: pod
                    .metadata
                    .owner_references
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| OwnerView {
                        controller: o.controller,
                    })
                    .collect(),
            }),
            spec: pod.spec.map(|s| SpecView {
                node_name: s.node_name,
                scheduler_name: s.scheduler_name,
                volumes: s
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(volume)
                    .collect(),
                containers: s.containers.into_iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .unwrap_or_default()
                    .into_iter()
                    .map(container)
                    .collect(),
            }),
            status: pod.status.map(|s| StatusView { phase: s.phase }),
        }
    }
}

impl ContainerView {
    /// The container claims `resource` in its limits or requests.
    pub fn claims(&self, resource: &str) -> bool {
        self.resources.as_ref().is_some_and(|r| {
            [&r.limits, &r.requests]
                .into_iter()
                .flatten()
                .any(|names| names.iter().any(|n| n == resource))
        })
    }

    /// The container mounts or maps the pod volume `name`.
    pub fn uses_volume(&self, name: &str) -> bool {
        self.volume_mounts.iter().any(|m| m.name == name)
            || self.volume_devices.iter().any(|d| d.name == name)
    }
}

/// A missing list and `null` both mean empty.
fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The keys of an object; its values are skipped.
fn keys<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let map = Option::<BTreeMap<String, IgnoredAny>>::deserialize(d)?;
    Ok(map.map(|m| m.into_keys().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_absences_are_told_apart_where_the_patch_needs_it() {
        let p: PodView = serde_json::from_str(
            r#"{"metadata":{"name":"p","annotations":null},"spec":{"volumes":null,
                "containers":[{"name":"a","resources":{"limits":{"cpu":"1"}},"livenessProbe":{"exec":{}}},
                              {"name":"b","resources":null,"livenessProbe":null}]},"extra":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(p.name(), "p");
        assert!(p.metadata.as_ref().unwrap().annotations.is_none());
        assert!(p.volumes().is_empty());
        let [a, b] = p.containers() else { panic!() };
        assert!(a.liveness_probe && a.claims("cpu") && !a.claims("memory"));
        assert!(!b.liveness_probe && b.resources.is_none());
    }
}
