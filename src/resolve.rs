//! Volume resolution: which of a pod's volumes belong to managed drivers, and which
//! volume each one is (PVC -> PV -> handle, inline csi/flexVolume, generic ephemeral,
//! the devices annotation). Pure: it reads the state and returns data.

use std::sync::Arc;

use crate::{
    cluster::ClusterState,
    config::Config,
    drivers::{DriverId, Drivers, Mode, VolumeId},
    podview::{PodView, VolumeView},
};

/// One managed volume of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedVolume {
    /// Its driver.
    pub driver: DriverId,
    /// Its handle; `None` while an unbound claim waits for the provisioner.
    pub handle: Option<Arc<str>>,
    /// The pod volume it is mounted as; `None` for an annotated device.
    pub pod_volume: Option<String>,
    /// Where it came from, for messages.
    pub origin: Origin,
    /// ReadWriteOnce/ReadWriteOncePod: usable on one node at a time.
    pub exclusive: bool,
}

/// How a pod names a managed volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A PersistentVolumeClaim (also the claim of a generic ephemeral volume).
    Claim(String),
    /// A generic ephemeral volume whose claim does not exist yet.
    EphemeralTemplate(String),
    /// An inline csi or flexVolume.
    Inline,
    /// The devices annotation.
    Device,
}

impl ManagedVolume {
    /// The volume's identity once it has a handle.
    pub fn id(&self) -> Option<VolumeId> {
        Some(VolumeId {
            driver: self.driver,
            handle: self.handle.clone()?,
        })
    }

    /// `driver=handle` as written to the volumes annotation; unbound claims show
    /// as `driver=pending:<claim>`.
    pub fn label(&self, drivers: &Drivers) -> String {
        let name = &drivers.get(self.driver).name;
        match (&self.handle, &self.origin) {
            (Some(h), _) => format!("{name}={h}"),
            (None, Origin::Claim(c) | Origin::EphemeralTemplate(c)) => {
                format!("{name}=pending:{c}")
            }
            (None, _) => format!("{name}=pending"),
        }
    }
}

/// A pod's managed volumes, plus warnings about what the user wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolution {
    /// Managed volumes, one per pod volume or annotated device, duplicates removed.
    pub volumes: Vec<ManagedVolume>,
    /// Problems in the pod itself (a malformed annotation entry, an unknown driver).
    pub warnings: Vec<String>,
}

/// The cluster state lacks something the pod refers to: volguard's own trouble
/// (often a cache that has not seen a just-created object yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The claim is not in the cache.
    #[error("PersistentVolumeClaim {namespace}/{name} not found")]
    MissingClaim {
        /// The pod's namespace.
        namespace: String,
        /// The claim name.
        name: String,
    },
    /// The claim is bound to a PV that is not in the cache.
    #[error("PersistentVolume {pv} (bound to claim {namespace}/{claim}) not found")]
    MissingVolume {
        /// The pod's namespace.
        namespace: String,
        /// The claim name.
        claim: String,
        /// The PV name.
        pv: String,
    },
}

/// Resolves the managed volumes of `pod` in `namespace` against the cluster state.
pub fn resolve(
    pod: &PodView,
    namespace: &str,
    state: &ClusterState,
    config: &Config,
) -> Result<Resolution, ResolveError> {
    let drivers = state.drivers();
    let mut out = Resolution::default();
    let pod_name = pod.name();
    for v in pod.volumes() {
        let found = if let Some(pvc) = &v.persistent_volume_claim {
            resolve_claim(&pvc.claim_name, namespace, state)?
        } else if let Some(eph) = &v.ephemeral {
            let claim = format!("{pod_name}-{}", v.name);
            match state.pvc(namespace, &claim) {
                Some(_) if !pod_name.is_empty() => resolve_claim(&claim, namespace, state)?,
                _ => {
                    let spec = eph.volume_claim_template.as_ref().map(|t| &t.spec);
                    spec.and_then(|s| {
                        let class = s.storage_class_name.as_deref()?;
                        let driver = state.storage_class(class)?.driver?;
                        Some(ManagedVolume {
                            driver,
                            handle: None,
                            pod_volume: None,
                            origin: Origin::EphemeralTemplate(claim.clone()),
                            exclusive: crate::cluster::records::exclusive(&s.access_modes),
                        })
                    })
                }
            }
        } else {
            match inline_volume_checked(v, drivers) {
                Ok(found) => found.map(|id| ManagedVolume {
                    driver: id.driver,
                    handle: Some(id.handle),
                    pod_volume: None,
                    origin: Origin::Inline,
                    exclusive: false,
                }),
                Err(warning) => {
                    out.warnings.push(warning);
                    None
                }
            }
        };
        if let Some(mut m) = found {
            m.pod_volume = Some(v.name.clone());
            out.volumes.push(m);
        }
    }
    if let Some(devices) = pod.annotation(&config.annotation("devices")) {
        let (ids, problems) = parse_devices(devices, drivers);
        out.warnings.extend(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", config.annotation("devices"))),
        );
        out.volumes.extend(ids.into_iter().map(|id| ManagedVolume {
            driver: id.driver,
            handle: Some(id.handle),
            pod_volume: None,
            origin: Origin::Device,
            exclusive: true,
        }));
    }
    dedup(&mut out.volumes);
    Ok(out)
}

/// Two pod volumes naming the same managed volume are one volume; a device also
/// mounted through a claim keeps its pod volume.
fn dedup(volumes: &mut Vec<ManagedVolume>) {
    let mut seen: Vec<(DriverId, Option<Arc<str>>, Option<String>)> = Vec::new();
    volumes.retain(|m| {
        let claim = match (&m.handle, &m.origin) {
            (None, Origin::Claim(c) | Origin::EphemeralTemplate(c)) => Some(c.clone()),
            _ => None,
        };
        let k = (m.driver, m.handle.clone(), claim);
        if seen.contains(&k) {
            false
        } else {
            seen.push(k);
            true
        }
    });
}

fn resolve_claim(
    claim: &str,
    namespace: &str,
    state: &ClusterState,
) -> Result<Option<ManagedVolume>, ResolveError> {
    let pvc = state
        .pvc(namespace, claim)
        .ok_or_else(|| ResolveError::MissingClaim {
            namespace: namespace.to_owned(),
            name: claim.to_owned(),
        })?;
    let origin = Origin::Claim(claim.to_owned());
    match &pvc.volume_name {
        Some(pv_name) => {
            let pv = state
                .pv(pv_name)
                .ok_or_else(|| ResolveError::MissingVolume {
                    namespace: namespace.to_owned(),
                    claim: claim.to_owned(),
                    pv: pv_name.clone(),
                })?;
            Ok(pv.volume.as_ref().map(|id| ManagedVolume {
                driver: id.driver,
                handle: Some(id.handle.clone()),
                pod_volume: None,
                origin,
                exclusive: pv.exclusive || pvc.exclusive,
            }))
        }
        None => {
            let driver = pvc
                .storage_class
                .as_deref()
                .and_then(|c| state.storage_class(c))
                .and_then(|sc| sc.driver);
            Ok(driver.map(|driver| ManagedVolume {
                driver,
                handle: None,
                pod_volume: None,
                origin,
                exclusive: pvc.exclusive,
            }))
        }
    }
}

/// The managed volume an inline csi/flexVolume stands for, ignoring malformed ones.
pub fn inline_volume(v: &VolumeView, drivers: &Drivers) -> Option<VolumeId> {
    inline_volume_checked(v, drivers).ok().flatten()
}

fn inline_volume_checked(v: &VolumeView, drivers: &Drivers) -> Result<Option<VolumeId>, String> {
    if let Some(csi) = &v.csi {
        let Some(driver) = drivers.by_csi(&csi.driver) else {
            return Ok(None);
        };
        let option = &drivers.get(driver).flex_volume_id_option;
        let handle = csi
            .volume_attributes
            .as_ref()
            .and_then(|a| a.get(option).or_else(|| a.get("volumeHandle")));
        return match handle {
            Some(h) if !h.is_empty() => Ok(Some(VolumeId {
                driver,
                handle: h.as_str().into(),
            })),
            _ => Err(format!(
                "inline csi volume {:?} of {} has no volumeAttributes.{option}: volguard cannot tell which volume it is",
                v.name, csi.driver
            )),
        };
    }
    if let Some(flex) = &v.flex_volume {
        let Some(driver) = drivers.by_flex(&flex.driver) else {
            return Ok(None);
        };
        let option = &drivers.get(driver).flex_volume_id_option;
        return match flex.options.as_ref().and_then(|o| o.get(option)) {
            Some(h) if !h.is_empty() => Ok(Some(VolumeId {
                driver,
                handle: h.as_str().into(),
            })),
            _ => Err(format!(
                "flexVolume {:?} of {} has no option {option}: volguard cannot tell which volume it is",
                v.name, flex.driver
            )),
        };
    }
    Ok(None)
}

/// Parses the devices annotation `driver=volumeId,...`; returns the volumes and a
/// message for each entry that could not be used.
pub fn parse_devices(value: &str, drivers: &Drivers) -> (Vec<VolumeId>, Vec<String>) {
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((driver, handle)) = entry.split_once('=').map(|(d, h)| (d.trim(), h.trim()))
        else {
            problems.push(format!("entry {entry:?} is not driver=volumeId"));
            continue;
        };
        if handle.is_empty() || handle.contains(['/', ' ', '=']) {
            problems.push(format!("entry {entry:?} has no usable volume id"));
            continue;
        }
        match drivers.by_name(driver) {
            Some(id) if drivers.mode(id) == Mode::DevicePlugin => ids.push(VolumeId {
                driver: id,
                handle: handle.into(),
            }),
            Some(_) => problems.push(format!(
                "entry {entry:?}: driver {driver} has no resourceTemplate, so it is not a device-plugin driver"
            )),
            None => problems.push(format!(
                "entry {entry:?}: unknown driver {driver:?} (configured: {})",
                drivers.iter().map(|(_, d)| d.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    (ids, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_annotation_is_parsed_with_problems() {
        let d = Drivers::new(&Config::default());
        let (ids, problems) = parse_devices(
            " brightbox=vol-qsk4v, ,bogus, linode=x, acme=vol-1, brightbox= ",
            &d,
        );
        assert_eq!(ids.len(), 1);
        assert_eq!(&*ids[0].handle, "vol-qsk4v");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown driver \"acme\""))
        );
    }
}
