//! Volume identity: which managed volume a pod's inline volume or devices annotation
//! names, and whether access modes make a volume single-node. Read by the cluster
//! records (to index who uses what) and by resolution (to answer one pod).

use crate::model::{
    drivers::{Drivers, Mode, VolumeId},
    podview::VolumeView,
};

/// ReadWriteOnce or ReadWriteOncePod among the access modes: one node at a time.
pub fn exclusive(modes: &[String]) -> bool {
    modes
        .iter()
        .any(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod")
}

/// The managed volume an inline csi/flexVolume stands for, ignoring malformed ones.
pub fn inline_volume(v: &VolumeView, drivers: &Drivers) -> Option<VolumeId> {
    inline_volume_checked(v, drivers).ok().flatten()
}

pub fn inline_volume_checked(
    v: &VolumeView,
    drivers: &Drivers,
) -> Result<Option<VolumeId>, String> {
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
