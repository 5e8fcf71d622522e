//! Volume resolution: which of a pod's volumes belong to managed drivers, and which
//! volume each one is (PVC -> PV -> handle or, for drivers selected by StorageClass or
//! source kind, the PV's identity; inline csi/flexVolume, generic ephemeral, the devices
//! annotation). Pure: it reads the state and returns data.

use std::{collections::HashSet, sync::Arc};

use crate::{
    cluster::{ClaimBinding, ClusterState, Missing},
    model::{
        config::Config,
        drivers::{DriverId, Drivers, VolumeId},
        podview::PodView,
        volume::{self, PodVolume, pod_volumes},
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

/// Resolves the managed volumes of `pod` in `namespace` against the cluster state. The
/// pod's volumes are read by [`pod_volumes`] and each claim by
/// [`ClusterState::claim_binding`], the readings by which the state counts what bound
/// pods use: the pod under review and the pods already placed are seen alike. One
/// difference: a generic ephemeral volume's claim is this pod's only when the pod
/// controls it (on a CREATE the pod has no uid yet, so never), while the state counts a
/// bound pod's `<pod>-<volume>` claim as it finds it: kube-scheduler and the kubelet
/// refuse a pod that does not control its claim, so a bound pod almost always does.
pub fn resolve(
    pod: &PodView,
    namespace: &str,
    state: &ClusterState,
    config: &Config,
) -> Result<Resolution, Missing> {
    let named = pod_volumes(pod, state.drivers(), config);
    let mut out = Resolution {
        volumes: Vec::with_capacity(named.volumes.len()),
        warnings: named.warnings,
    };
    for v in &named.volumes {
        let found = match v {
            PodVolume::Claim { claim, .. } => resolve_claim(claim, namespace, state)?,
            PodVolume::Ephemeral {
                claim, template, ..
            } => match v.claim().filter(|c| {
                state.pvc(namespace, c).is_some_and(|pvc| {
                    pvc.controller.is_some() && pvc.controller.as_deref() == pod.uid()
                })
            }) {
                Some(created) => resolve_claim(created, namespace, state)?,
                None => template.and_then(|t| {
                    Some(ManagedVolume {
                        driver: class_driver(state, t.storage_class_name.as_deref()?)?,
                        handle: None,
                        pod_volume: None,
                        origin: Origin::EphemeralTemplate(claim.clone()),
                        exclusive: volume::exclusive(&t.access_modes),
                    })
                }),
            },
            PodVolume::Inline { id, .. } => Some(ManagedVolume {
                driver: id.driver,
                handle: Some(id.handle.clone()),
                pod_volume: None,
                origin: Origin::Inline,
                exclusive: false,
            }),
            PodVolume::Device(id) => Some(ManagedVolume {
                driver: id.driver,
                handle: Some(id.handle.clone()),
                pod_volume: None,
                origin: Origin::Device,
                exclusive: true,
            }),
        };
        if let Some(mut m) = found {
            m.pod_volume = v.pod_volume().map(str::to_owned);
            out.volumes.push(m);
        }
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

/// The managed volume a claim stands for (`None` for another driver's); what the state
/// lacks to tell.
fn resolve_claim(
    claim: &str,
    namespace: &str,
    state: &ClusterState,
) -> Result<Option<ManagedVolume>, Missing> {
    let origin = Origin::Claim(claim.to_owned());
    match state.claim_binding(namespace, claim) {
        ClaimBinding::Unknown => Err(Missing::Claim {
            namespace: namespace.to_owned(),
            name: claim.to_owned(),
        }),
        ClaimBinding::LostVolume { pv } => Err(Missing::Volume {
            namespace: namespace.to_owned(),
            claim: claim.to_owned(),
            pv: pv.to_owned(),
        }),
        ClaimBinding::Volume { pvc, pv } => Ok(pv.volume.as_ref().map(|id| ManagedVolume {
            driver: id.driver,
            handle: Some(id.handle.clone()),
            pod_volume: None,
            origin,
            exclusive: pv.exclusive || pvc.exclusive,
        })),
        ClaimBinding::Unbound(pvc) => {
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
