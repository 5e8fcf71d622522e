//! The configured drivers, compiled into lookups: which driver a CSI name, a flexVolume
//! driver or a node's extended resource belongs to. Built once from the config.

use std::{fmt, sync::Arc};

use super::fast_hash::FastMap;

use crate::model::config::{Config, DriverConfig, HANDLE_PLACEHOLDER};

/// Index of a driver in the config's `drivers` list: cheap to copy and hash in indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverId(pub u16);

/// One volume of a managed driver, as the cluster knows it across objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    /// The managed driver.
    pub driver: DriverId,
    /// The CSI volume handle, flexVolume id or device-plugin volume id.
    pub handle: Arc<str>,
}

/// How a node comes to hold a driver's volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A device plugin advertises one extended resource per attached volume.
    DevicePlugin,
    /// Volumes are attached by a controller (or, for drivers selected by StorageClass or
    /// source kind, used by pods on the node) and count against a per-node limit, when
    /// one is configured.
    Attach,
}

/// The compiled driver table.
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    list: Vec<DriverConfig>,
    by_csi: FastMap<String, DriverId>,
    by_flex: FastMap<String, DriverId>,
    by_class: FastMap<String, DriverId>,
    by_kind: FastMap<String, DriverId>,
    by_name: FastMap<String, DriverId>,
}

impl Drivers {
    /// Compiles the config's driver list.
    pub fn new(config: &Config) -> Self {
        let mut d = Drivers {
            list: config.drivers.clone(),
            ..Default::default()
        };
        for (i, driver) in config.drivers.iter().enumerate() {
            let id = DriverId(i as u16);
            d.by_name.insert(driver.name.clone(), id);
            if let Some(csi) = &driver.csi_driver {
                d.by_csi.insert(csi.clone(), id);
            }
            if let Some(flex) = &driver.flex_driver {
                d.by_flex.insert(flex.clone(), id);
            }
            for class in &driver.storage_classes {
                d.by_class.insert(class.clone(), id);
            }
            for kind in &driver.source_kinds {
                d.by_kind.insert(kind.clone(), id);
            }
        }
        d
    }

    /// The driver's config entry.
    pub fn get(&self, id: DriverId) -> &DriverConfig {
        &self.list[id.0 as usize]
    }

    /// Every driver with its id.
    pub fn iter(&self) -> impl Iterator<Item = (DriverId, &DriverConfig)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, d)| (DriverId(i as u16), d))
    }

    /// The driver whose `csiDriver` is `name` (PV, inline volume, CSINode, VolumeAttachment).
    pub fn by_csi(&self, name: &str) -> Option<DriverId> {
        self.by_csi.get(name).copied()
    }

    /// The driver whose `flexDriver` is `name`.
    pub fn by_flex(&self, name: &str) -> Option<DriverId> {
        self.by_flex.get(name).copied()
    }

    /// The driver whose `storageClasses` list `class` (a PV's or an unbound claim's).
    pub fn by_class(&self, class: &str) -> Option<DriverId> {
        self.by_class.get(class).copied()
    }

    /// The driver whose `sourceKinds` list `kind` (`local`, `nfs`, ...).
    pub fn by_kind(&self, kind: &str) -> Option<DriverId> {
        self.by_kind.get(kind).copied()
    }

    /// The driver labelled `name` in the config (as the devices annotation names it).
    pub fn by_name(&self, name: &str) -> Option<DriverId> {
        self.by_name.get(name).copied()
    }

    /// Device-plugin or attach mode.
    pub fn mode(&self, id: DriverId) -> Mode {
        if self.get(id).resource_template.is_some() {
            Mode::DevicePlugin
        } else {
            Mode::Attach
        }
    }

    /// The extended resource a device-plugin volume is advertised as.
    pub fn resource_name(&self, volume: &VolumeId) -> Option<String> {
        let t = self.get(volume.driver).resource_template.as_ref()?;
        Some(t.replace(HANDLE_PLACEHOLDER, &volume.handle))
    }

    /// The block device path of a device-plugin volume inside the container.
    pub fn device_path(&self, volume: &VolumeId) -> Option<String> {
        let t = self.get(volume.driver).device_path_template.as_ref()?;
        Some(t.replace(HANDLE_PLACEHOLDER, &volume.handle))
    }

    /// The volume a node resource name stands for, when it matches a device-plugin template.
    pub fn volume_of_resource(&self, resource: &str) -> Option<VolumeId> {
        self.iter().find_map(|(id, d)| {
            let (prefix, suffix) = d
                .resource_template
                .as_ref()?
                .split_once(HANDLE_PLACEHOLDER)?;
            let handle = resource.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!handle.is_empty()).then(|| VolumeId {
                driver: id,
                handle: handle.into(),
            })
        })
    }

    /// The volume a node's `status.volumesAttached` name stands for
    /// (`kubernetes.io/csi/<driver>^<handle>`).
    pub fn volume_of_attached_name(&self, name: &str) -> Option<VolumeId> {
        let (driver, handle) = name.strip_prefix("kubernetes.io/csi/")?.split_once('^')?;
        Some(VolumeId {
            driver: self.by_csi(driver)?,
            handle: handle.into(),
        })
    }
}

impl fmt::Display for DriverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "driver#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_round_trip() {
        let d = Drivers::new(&Config::default());
        let v = d
            .volume_of_resource("volumes.brightbox.com/vol-qsk4v")
            .unwrap();
        assert_eq!(&*v.handle, "vol-qsk4v");
        assert_eq!(
            d.resource_name(&v).unwrap(),
            "volumes.brightbox.com/vol-qsk4v"
        );
        assert!(d.volume_of_resource("volumes.brightbox.com/").is_none());
        assert!(d.volume_of_resource("nvidia.com/gpu").is_none());
    }

    #[test]
    fn attached_names_are_parsed() {
        let d = Drivers::new(&Config::default());
        let v = d
            .volume_of_attached_name("kubernetes.io/csi/linodebs.csi.linode.com^310001-pvc3a1b2c")
            .unwrap();
        assert_eq!(d.get(v.driver).name, "linode");
        assert_eq!(&*v.handle, "310001-pvc3a1b2c");
        assert!(
            d.volume_of_attached_name("kubernetes.io/csi/other^x")
                .is_none()
        );
    }
}
