//! Slim records: the few fields volguard needs of each object, so that a large cluster
//! costs megabytes, not gigabytes. Converting drops everything else on arrival.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim},
    storage::v1::{CSINode, StorageClass, VolumeAttachment},
};

use crate::{
    config::Config,
    drivers::{DriverId, Drivers, VolumeId},
    podview::PodView,
};

/// What volguard keeps of a Node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRecord {
    /// Device-plugin volumes advertised on the node, with their allocatable count
    /// (0 = detached: the plugin cannot remove the name).
    pub devices: HashMap<VolumeId, i64>,
    /// Managed volumes in `status.volumesAttached`.
    pub attached: Vec<VolumeId>,
    /// Per-driver limit overrides read from the configured node annotation;
    /// an unparsable value is kept as its text so the reason can quote it.
    pub limit_overrides: Vec<(DriverId, Result<i64, String>)>,
}

/// What volguard keeps of a CSINode: the managed drivers registered there and their count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsiNodeRecord {
    /// Registered managed drivers; `None` count = the driver reports no limit.
    pub drivers: HashMap<DriverId, Option<i64>>,
}

/// What volguard keeps of a PersistentVolume.
#[derive(Debug, Clone, PartialEq)]
pub struct PvRecord {
    /// The managed volume it is, `None` for other drivers.
    pub volume: Option<VolumeId>,
    /// ReadWriteOnce or ReadWriteOncePod: one node at a time.
    pub exclusive: bool,
}

/// What volguard keeps of a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq)]
pub struct PvcRecord {
    /// The bound PV's name.
    pub volume_name: Option<String>,
    /// The StorageClass, for unbound claims.
    pub storage_class: Option<String>,
    /// ReadWriteOnce or ReadWriteOncePod requested.
    pub exclusive: bool,
}

/// What volguard keeps of a StorageClass.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageClassRecord {
    /// The managed driver that provisions its volumes, `None` for others.
    pub driver: Option<DriverId>,
}

/// A volume a pod uses, as far as it can be known without other objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodVolumeRef {
    /// A claim in the pod's namespace (also a generic ephemeral volume's `<pod>-<volume>`).
    Claim(String),
    /// An inline csi/flexVolume or annotated device of a managed driver.
    Direct(VolumeId),
}

/// What volguard keeps of a Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// The node it is bound to.
    pub node: Option<Arc<str>>,
    /// Succeeded or Failed: it holds no volume any more.
    pub terminal: bool,
    /// Managed (or possibly managed) volumes it uses.
    pub uses: Vec<PodVolumeRef>,
}

/// What volguard keeps of a VolumeAttachment of a managed attacher.
#[derive(Debug, Clone, PartialEq)]
pub struct VaRecord {
    /// Where the volume is (being) attached.
    pub node: Arc<str>,
    /// The attaching driver.
    pub driver: DriverId,
    /// Which volume.
    pub source: VaSource,
}

/// The volume a VolumeAttachment names.
#[derive(Debug, Clone, PartialEq)]
pub enum VaSource {
    /// `spec.source.persistentVolumeName`: the handle comes from the PV.
    Pv(String),
    /// `spec.source.inlineVolumeSpec` with its handle.
    Inline(VolumeId),
}

/// Namespaced key `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// ReadWriteOnce or ReadWriteOncePod among the access modes: one node at a time.
pub fn exclusive(modes: &[String]) -> bool {
    modes
        .iter()
        .any(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
}

impl NodeRecord {
    /// Slims a Node.
    pub fn from_node(node: &Node, drivers: &Drivers) -> Self {
        let mut rec = NodeRecord::default();
        if let Some(status) = &node.status {
            if let Some(alloc) = &status.allocatable {
                for (name, q) in alloc {
                    if let Some(v) = drivers.volume_of_resource(name) {
                        rec.devices.insert(v, parse_count(&q.0).unwrap_or(0));
                    }
                }
            }
            for a in status.volumes_attached.iter().flatten() {
                if let Some(v) = drivers.volume_of_attached_name(&a.name) {
                    rec.attached.push(v);
                }
            }
        }
        if let Some(ann) = &node.metadata.annotations {
            for (id, d) in drivers.iter() {
                let key = d
                    .attach_limit
                    .as_ref()
                    .and_then(|l| l.node_annotation.as_ref());
                if let Some(value) = key.and_then(|k| ann.get(k)) {
                    let parsed = value
                        .trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| value.clone());
                    rec.limit_overrides.push((id, parsed));
                }
            }
        }
        rec
    }
}

/// Reads a Kubernetes quantity as a whole count; device and attach counts are integers.
pub fn parse_count(q: &str) -> Option<i64> {
    let q = q.trim();
    if let Ok(n) = q.parse::<i64>() {
        return Some(n);
    }
    let (digits, mult) = match q.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&q[..i], &q[i..]),
        None => return None,
    };
    let base: i64 = digits.parse().ok()?;
    let factor: i64 = match mult {
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "m" => return Some(base / 1000),
        _ => return None,
    };
    base.checked_mul(factor)
}

impl CsiNodeRecord {
    /// Slims a CSINode to the managed drivers registered on it.
    pub fn from_csinode(csinode: &CSINode, drivers: &Drivers) -> Self {
        let drivers = csinode
            .spec
            .drivers
            .iter()
            .filter_map(|d| {
                let id = drivers.by_csi(&d.name)?;
                let count = d.allocatable.as_ref().and_then(|a| a.count).map(i64::from);
                Some((id, count))
            })
            .collect();
        CsiNodeRecord { drivers }
    }
}

impl PvRecord {
    /// Slims a PersistentVolume.
    pub fn from_pv(pv: &PersistentVolume, drivers: &Drivers) -> Self {
        let spec = pv.spec.as_ref();
        let volume = spec.and_then(|s| {
            if let Some(csi) = &s.csi {
                return Some(VolumeId {
                    driver: drivers.by_csi(&csi.driver)?,
                    handle: csi.volume_handle.as_str().into(),
                });
            }
            let flex = s.flex_volume.as_ref()?;
            let driver = drivers.by_flex(&flex.driver)?;
            let id = flex
                .options
                .as_ref()?
                .get(&drivers.get(driver).flex_volume_id_option)?;
            Some(VolumeId {
                driver,
                handle: id.as_str().into(),
            })
        });
        PvRecord {
            volume,
            exclusive: exclusive(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
        }
    }
}

impl PvcRecord {
    /// Slims a PersistentVolumeClaim.
    pub fn from_pvc(pvc: &PersistentVolumeClaim) -> Self {
        let spec = pvc.spec.as_ref();
        PvcRecord {
            volume_name: spec
                .and_then(|s| s.volume_name.clone())
                .filter(|n| !n.is_empty()),
            storage_class: spec
                .and_then(|s| s.storage_class_name.clone())
                .filter(|n| !n.is_empty()),
            exclusive: exclusive(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
        }
    }
}

impl StorageClassRecord {
    /// Slims a StorageClass.
    pub fn from_storage_class(sc: &StorageClass, drivers: &Drivers) -> Self {
        StorageClassRecord {
            driver: drivers.by_csi(&sc.provisioner),
        }
    }
}

impl PodRecord {
    /// Slims a Pod to its node, phase and possibly-managed volumes.
    pub fn from_pod(pod: &PodView, drivers: &Drivers, config: &Config) -> Self {
        let pod_name = pod.name();
        let mut uses: Vec<PodVolumeRef> = pod
            .volumes()
            .iter()
            .filter_map(|v| {
                if let Some(pvc) = &v.persistent_volume_claim {
                    return Some(PodVolumeRef::Claim(pvc.claim_name.clone()));
                }
                if v.ephemeral.is_some() {
                    return Some(PodVolumeRef::Claim(format!("{pod_name}-{}", v.name)));
                }
                crate::resolve::inline_volume(v, drivers).map(PodVolumeRef::Direct)
            })
            .collect();
        if let Some(devices) = pod.annotation(&config.annotation("devices")) {
            let (parsed, _problems) = crate::resolve::parse_devices(devices, drivers);
            uses.extend(parsed.into_iter().map(PodVolumeRef::Direct));
        }
        PodRecord {
            node: pod.node_name().map(Arc::from),
            terminal: pod.is_terminal(),
            uses,
        }
    }
}

impl VaRecord {
    /// Slims a VolumeAttachment; `None` when another driver attaches it.
    pub fn from_va(va: &VolumeAttachment, drivers: &Drivers) -> Option<Self> {
        let driver = drivers.by_csi(&va.spec.attacher)?;
        let source = if let Some(pv) = &va.spec.source.persistent_volume_name {
            VaSource::Pv(pv.clone())
        } else {
            let csi = va.spec.source.inline_volume_spec.as_ref()?.csi.as_ref()?;
            VaSource::Inline(VolumeId {
                driver: drivers.by_csi(&csi.driver)?,
                handle: csi.volume_handle.as_str().into(),
            })
        };
        Some(VaRecord {
            node: va.spec.node_name.as_str().into(),
            driver,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_parse_like_quantities() {
        assert_eq!(parse_count("1"), Some(1));
        assert_eq!(parse_count("0"), Some(0));
        assert_eq!(parse_count("2k"), Some(2000));
        assert_eq!(parse_count("1000m"), Some(1));
        assert_eq!(parse_count("-3"), Some(-3));
        assert_eq!(parse_count("x"), None);
        assert_eq!(parse_count("99999999999999Gi"), None);
    }
}
