//! Volume identity: which volumes a pod names that volguard may manage, which managed
//! volume an inline volume or the devices annotation stands for, and whether access
//! modes make a volume single-node. Read by the cluster records (to index who uses
//! what) and by resolution (to answer one pod), so that both read a pod alike.

use crate::model::{
    config::Config,
    drivers::{Drivers, Mode, VolumeId},
    podview::{ClaimTemplateSpec, PodView, VolumeView},
};

/// One volume of a pod that volguard may manage, as far as the pod alone tells: a
/// claim still needs the cluster state to say which volume it is.
#[derive(Debug, Clone, PartialEq)]
pub enum PodVolume<'p> {
    /// `persistentVolumeClaim`: a claim in the pod's namespace.
    Claim {
        /// The pod volume.
        volume: &'p str,
        /// The claim's name.
        claim: &'p str,
    },
    /// A generic ephemeral volume: the ephemeral-volume controller creates its claim
    /// from the template, once the pod exists.
    Ephemeral {
        /// The pod volume.
        volume: &'p str,
        /// `<pod>-<volume>`, the name the controller gives the claim.
        claim: String,
        /// The pod has its name, so the claim may exist: on a CREATE with generateName
        /// the name comes after admission.
        named: bool,
        /// The claim's spec, which names the driver before the claim exists.
        template: Option<&'p ClaimTemplateSpec>,
    },
    /// An inline csi or flexVolume of a managed driver.
    Inline {
        /// The pod volume.
        volume: &'p str,
        /// The managed volume it stands for.
        id: VolumeId,
    },
    /// An entry of the devices annotation.
    Device(VolumeId),
}

impl PodVolume<'_> {
    /// The pod volume it is mounted as; `None` for an annotated device.
    pub fn pod_volume(&self) -> Option<&str> {
        match self {
            PodVolume::Claim { volume, .. }
            | PodVolume::Ephemeral { volume, .. }
            | PodVolume::Inline { volume, .. } => Some(volume),
            PodVolume::Device(_) => None,
        }
    }

    /// The claim whose PV says which volume this is; `None` for volumes the pod names
    /// itself and for the ephemeral volume of a pod with no name yet, whose claim cannot
    /// exist.
    pub fn claim(&self) -> Option<&str> {
        match self {
            PodVolume::Claim { claim, .. } => Some(claim),
            PodVolume::Ephemeral {
                claim, named: true, ..
            } => Some(claim),
            _ => None,
        }
    }
}

/// A pod's volumes that volguard may manage, and what is wrong in how the pod names them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodVolumes<'p> {
    /// In the order of `spec.volumes`, then the devices annotation's entries.
    pub volumes: Vec<PodVolume<'p>>,
    /// A managed inline volume without its id, a malformed devices entry: one line each.
    pub warnings: Vec<String>,
}

/// The volumes of `pod` that volguard may manage. The one reading of a pod's volumes,
/// for the cache's record of who uses what and for the webhook's and extender's answer
/// about one pod, so that the two never disagree on which volumes a pod uses.
pub fn pod_volumes<'p>(pod: &'p PodView, drivers: &Drivers, config: &Config) -> PodVolumes<'p> {
    let mut out = PodVolumes::default();
    let pod_name = pod.name();
    for v in pod.volumes() {
        let volume = v.name.as_str();
        let found = if let Some(pvc) = &v.persistent_volume_claim {
            Some(PodVolume::Claim {
                volume,
                claim: &pvc.claim_name,
            })
        } else if let Some(eph) = &v.ephemeral {
            Some(PodVolume::Ephemeral {
                volume,
                claim: format!("{pod_name}-{volume}"),
                named: !pod_name.is_empty(),
                template: eph.volume_claim_template.as_ref().map(|t| &t.spec),
            })
        } else {
            match inline_volume(v, drivers) {
                Ok(id) => id.map(|id| PodVolume::Inline { volume, id }),
                Err(warning) => {
                    out.warnings.push(warning);
                    None
                }
            }
        };
        out.volumes.extend(found);
    }
    let key = config.annotation("devices");
    if let Some(devices) = pod.annotation(&key) {
        let (ids, problems) = parse_devices(devices, drivers);
        out.warnings
            .extend(problems.into_iter().map(|p| format!("{key}: {p}")));
        out.volumes.extend(ids.into_iter().map(PodVolume::Device));
    }
    out
}

/// ReadWriteOnce or ReadWriteOncePod among the access modes: one node at a time.
pub fn exclusive(modes: &[String]) -> bool {
    modes
        .iter()
        .any(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
}

/// The managed volume an inline csi/flexVolume stands for (`None` for another driver's);
/// `Err` says why a managed driver's volume without its id cannot be told.
fn inline_volume(v: &VolumeView, drivers: &Drivers) -> Result<Option<VolumeId>, String> {
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
fn parse_devices(value: &str, drivers: &Drivers) -> (Vec<VolumeId>, Vec<String>) {
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
    use crate::model::config::Config;

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
