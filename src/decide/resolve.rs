//! Volume resolution: which of a pod's volumes belong to managed drivers, and which
//! volume each one is (PVC -> PV -> handle or, for drivers selected by StorageClass or
//! source kind, the PV's identity; inline csi/flexVolume, generic ephemeral, the devices
//! annotation). Pure: it reads the state and returns data.

use std::{collections::HashSet, sync::Arc};

use crate::{
    cluster::{
        ClusterState, Missing,
        records::{PvRecord, PvcRecord},
    },
    model::{
        config::Config,
        drivers::{DriverId, Drivers, VolumeId},
        podview::PodView,
        volume::{self, inline_volume_checked, parse_devices},
    },
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

/// Resolves the managed volumes of `pod` in `namespace` against the cluster state.
pub fn resolve(
    pod: &PodView,
    namespace: &str,
    state: &ClusterState,
    config: &Config,
) -> Result<Resolution, Missing> {
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
                        let driver = class_driver(state, s.storage_class_name.as_deref()?)?;
                        Some(ManagedVolume {
                            driver,
                            handle: None,
                            pod_volume: None,
                            origin: Origin::EphemeralTemplate(claim.clone()),
                            exclusive: volume::exclusive(&s.access_modes),
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
    // A set, not a list: a pod may name thousands of volumes.
    let mut seen: HashSet<(DriverId, Option<Arc<str>>, Option<String>)> = HashSet::new();
    volumes.retain(|m| {
        let claim = match (&m.handle, &m.origin) {
            (None, Origin::Claim(c) | Origin::EphemeralTemplate(c)) => Some(c.clone()),
            _ => None,
        };
        seen.insert((m.driver, m.handle.clone(), claim))
    });
}

/// The managed driver whose volume a claim of StorageClass `class` will get: the class's
/// provisioner when it is a configured csiDriver (its PVs will name it), else the driver
/// listing `class` in `storageClasses` (known from the name alone, so a StorageClass
/// missing from the cache does not hide the claim).
fn class_driver(state: &ClusterState, class: &str) -> Option<DriverId> {
    state
        .storage_class(class)
        .and_then(|sc| sc.driver)
        .or_else(|| state.drivers().by_class(class))
}

/// The managed volume a claim gets from its PV (`None` for a PV of another driver).
fn volume_of(pv: &PvRecord, pvc: &PvcRecord, origin: Origin) -> Option<ManagedVolume> {
    pv.volume.as_ref().map(|id| ManagedVolume {
        driver: id.driver,
        handle: Some(id.handle.clone()),
        pod_volume: None,
        origin,
        exclusive: pv.exclusive || pvc.exclusive,
    })
}

fn resolve_claim(
    claim: &str,
    namespace: &str,
    state: &ClusterState,
) -> Result<Option<ManagedVolume>, Missing> {
    let pvc = state.pvc(namespace, claim).ok_or_else(|| Missing::Claim {
        namespace: namespace.to_owned(),
        name: claim.to_owned(),
    })?;
    let origin = Origin::Claim(claim.to_owned());
    match &pvc.volume_name {
        Some(pv_name) => {
            let pv = state.pv(pv_name).ok_or_else(|| Missing::Volume {
                namespace: namespace.to_owned(),
                claim: claim.to_owned(),
                pv: pv_name.clone(),
            })?;
            Ok(volume_of(pv, pvc, origin))
        }
        // A PV already names the claim (a static PV reserved for it): the PV binder
        // binds the two, so the claim is that volume.
        None if let Some(pv) = state.reserved_pv(namespace, claim, pvc.uid.as_deref()) => {
            Ok(volume_of(pv, pvc, origin))
        }
        None => {
            let driver = pvc
                .storage_class
                .as_deref()
                .and_then(|c| class_driver(state, c));
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
