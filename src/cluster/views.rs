//! The slices of PersistentVolumes, PersistentVolumeClaims and VolumeAttachments that
//! volguard reads. A snapshot's objects are decoded straight into them, so that the
//! tens of thousands of these in a large cluster cost their few fields at start rather
//! than k8s-openapi's full types; watches deliver the full types, which are converted by
//! moving those fields out. Each field read is read as k8s-openapi reads it (a required
//! field that is absent or null is its default, `apiVersion` and `kind` must be the
//! type's), objects from JSON objects only (see [`json_shape`]): a document is refused
//! for what it holds in these fields exactly when the full type refuses it. The fields
//! not read are skipped unchecked, as for pods, and a key given twice is refused (the
//! full types keep the last; the API server never writes one twice).

use std::collections::BTreeMap;

use k8s_openapi::{
    Resource,
    api::core::v1::{
        CephFSPersistentVolumeSource, HostPathVolumeSource, ISCSIPersistentVolumeSource,
        LocalVolumeSource, RBDPersistentVolumeSource,
    },
};
use k8s_openapi::{
    api::{
        core::v1::{
            CSIPersistentVolumeSource, FlexPersistentVolumeSource, NFSVolumeSource,
            ObjectReference, PersistentVolume, PersistentVolumeClaim,
        },
        storage::v1::VolumeAttachment,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, Unexpected},
};

use crate::model::json_shape;

/// `apiVersion` or `kind`, found to be the full type's (or absent), as k8s-openapi
/// checks them: a VolumeAttachment of another version is refused, not misread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TypeChecked;

/// Reads `apiVersion`, which must be `R`'s.
fn api_version_of<'de, R: Resource, D: Deserializer<'de>>(d: D) -> Result<TypeChecked, D::Error> {
    expect(d, R::API_VERSION)
}

/// Reads `kind`, which must be `R`'s.
fn kind_of<'de, R: Resource, D: Deserializer<'de>>(d: D) -> Result<TypeChecked, D::Error> {
    expect(d, R::KIND)
}

fn expect<'de, D: Deserializer<'de>>(d: D, want: &'static str) -> Result<TypeChecked, D::Error> {
    let got = String::deserialize(d)?;
    if got == want {
        Ok(TypeChecked)
    } else {
        Err(de::Error::invalid_value(Unexpected::Str(&got), &want))
    }
}

/// Whether a PV source of type `T` is there, read in full as k8s-openapi reads it (these
/// are rare, and only their presence matters).
fn source<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<T>::deserialize(d)?.is_some())
}

/// `metadata`: what tells one object, and one read of it, from another.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetaView {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace`, for claims.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.uid`.
    #[serde(default)]
    pub uid: Option<String>,
    /// `metadata.resourceVersion`.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// `metadata.ownerReferences`: a generic ephemeral volume's claim is its pod's only
    /// when that pod controls it.
    #[serde(default, deserialize_with = "json_shape::objects_or_null")]
    pub owner_references: Vec<OwnerRefView>,
}

impl MetaView {
    /// The uid of the owner with `controller: true`, if any.
    pub fn controller_uid(&self) -> Option<&str> {
        self.owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.as_str())
            .filter(|uid| !uid.is_empty())
    }
}

/// `metadata.ownerReferences[]`: who the owner is and whether it controls the object.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct OwnerRefView {
    /// The owner's uid.
    #[serde(default, deserialize_with = "null_or_default")]
    pub uid: String,
    /// `true` for the one owner that manages the object.
    #[serde(default)]
    pub controller: Option<bool>,
}

impl From<ObjectMeta> for MetaView {
    fn from(m: ObjectMeta) -> Self {
        MetaView {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            owner_references: m
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .map(|o| OwnerRefView {
                    uid: o.uid,
                    controller: o.controller,
                })
                .collect(),
        }
    }
}

/// Reads a `T`, or its default from null or absence, as k8s-openapi reads required
/// fields.
fn null_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a `T` from an object, or its default from null or absence, as k8s-openapi
/// reads `metadata` and required objects.
fn object_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(json_shape::object_or_null(d)?.unwrap_or_default())
}

/// A PersistentVolume as volguard reads it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PvView {
    /// `apiVersion`, checked.
    #[serde(
        rename = "apiVersion",
        default,
        deserialize_with = "api_version_of::<PersistentVolume, _>"
    )]
    pub api_version: TypeChecked,
    /// `kind`, checked.
    #[serde(default, deserialize_with = "kind_of::<PersistentVolume, _>")]
    pub kind: TypeChecked,
    /// Its name and versions.
    #[serde(default, deserialize_with = "object_or_default")]
    pub metadata: MetaView,
    /// `spec`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub spec: Option<PvSpecView>,
    /// `status`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub status: Option<PhaseView>,
}

/// The parts of a PersistentVolume's `spec` that name its volume and its claim.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvSpecView {
    /// `accessModes`.
    #[serde(default)]
    pub access_modes: Option<Vec<String>>,
    /// `claimRef`: the claim it is bound or reserved to.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub claim_ref: Option<ClaimRefView>,
    /// `csi`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub csi: Option<CsiView>,
    /// `flexVolume`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub flex_volume: Option<FlexView>,
    /// `storageClassName`.
    #[serde(default)]
    pub storage_class_name: Option<String>,
    /// `nfs`: its export is the volume's identity.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub nfs: Option<NfsView>,
    /// A `local` source is there.
    #[serde(default, deserialize_with = "source::<LocalVolumeSource, _>")]
    pub local: bool,
    /// A `hostPath` source is there.
    #[serde(default, deserialize_with = "source::<HostPathVolumeSource, _>")]
    pub host_path: bool,
    /// An `iscsi` source is there.
    #[serde(default, deserialize_with = "source::<ISCSIPersistentVolumeSource, _>")]
    pub iscsi: bool,
    /// A `cephfs` source is there.
    #[serde(
        default,
        deserialize_with = "source::<CephFSPersistentVolumeSource, _>"
    )]
    pub cephfs: bool,
    /// An `rbd` source is there.
    #[serde(default, deserialize_with = "source::<RBDPersistentVolumeSource, _>")]
    pub rbd: bool,
}

/// `spec.claimRef`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ClaimRefView {
    /// The claim's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The claim's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The claim's uid, when the binding names one claim only.
    #[serde(default)]
    pub uid: Option<String>,
}

/// A CSI source: the driver and the handle that attachments and node status report.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CsiView {
    /// `driver`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub driver: String,
    /// `volumeHandle`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub volume_handle: String,
}

/// A flexVolume source: its driver, and the option that names the volume.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FlexView {
    /// `driver`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub driver: String,
    /// `options`.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
}

/// An NFS source.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct NfsView {
    /// `server`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub server: String,
    /// `path`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub path: String,
}

/// `status.phase`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PhaseView {
    /// `phase`.
    #[serde(default)]
    pub phase: Option<String>,
}

impl From<PersistentVolume> for PvView {
    fn from(pv: PersistentVolume) -> Self {
        PvView {
            api_version: TypeChecked,
            kind: TypeChecked,
            metadata: pv.metadata.into(),
            spec: pv.spec.map(|s| PvSpecView {
                access_modes: s.access_modes,
                claim_ref: s.claim_ref.map(ClaimRefView::from),
                csi: s.csi.map(CsiView::from),
                flex_volume: s.flex_volume.map(FlexView::from),
                storage_class_name: s.storage_class_name,
                nfs: s.nfs.map(NfsView::from),
                local: s.local.is_some(),
                host_path: s.host_path.is_some(),
                iscsi: s.iscsi.is_some(),
                cephfs: s.cephfs.is_some(),
                rbd: s.rbd.is_some(),
            }),
            status: pv.status.map(|s| PhaseView { phase: s.phase }),
        }
    }
}

impl From<ObjectReference> for ClaimRefView {
    fn from(r: ObjectReference) -> Self {
        ClaimRefView {
            name: r.name,
            namespace: r.namespace,
            uid: r.uid,
        }
    }
}

impl From<CSIPersistentVolumeSource> for CsiView {
    fn from(c: CSIPersistentVolumeSource) -> Self {
        CsiView {
            driver: c.driver,
            volume_handle: c.volume_handle,
        }
    }
}

impl From<FlexPersistentVolumeSource> for FlexView {
    fn from(f: FlexPersistentVolumeSource) -> Self {
        FlexView {
            driver: f.driver,
            options: f.options,
        }
    }
}

impl From<NFSVolumeSource> for NfsView {
    fn from(n: NFSVolumeSource) -> Self {
        NfsView {
            server: n.server,
            path: n.path,
        }
    }
}

/// A PersistentVolumeClaim as volguard reads it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PvcView {
    /// `apiVersion`, checked.
    #[serde(
        rename = "apiVersion",
        default,
        deserialize_with = "api_version_of::<PersistentVolumeClaim, _>"
    )]
    pub api_version: TypeChecked,
    /// `kind`, checked.
    #[serde(default, deserialize_with = "kind_of::<PersistentVolumeClaim, _>")]
    pub kind: TypeChecked,
    /// Its namespace, name, uid and version.
    #[serde(default, deserialize_with = "object_or_default")]
    pub metadata: MetaView,
    /// `spec`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub spec: Option<PvcSpecView>,
}

/// The parts of a claim's `spec` that tell its volume.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSpecView {
    /// `volumeName`: the bound PV.
    #[serde(default)]
    pub volume_name: Option<String>,
    /// `storageClassName`.
    #[serde(default)]
    pub storage_class_name: Option<String>,
    /// `accessModes`.
    #[serde(default)]
    pub access_modes: Option<Vec<String>>,
}

impl From<PersistentVolumeClaim> for PvcView {
    fn from(pvc: PersistentVolumeClaim) -> Self {
        PvcView {
            api_version: TypeChecked,
            kind: TypeChecked,
            metadata: pvc.metadata.into(),
            spec: pvc.spec.map(|s| PvcSpecView {
                volume_name: s.volume_name,
                storage_class_name: s.storage_class_name,
                access_modes: s.access_modes,
            }),
        }
    }
}

/// A VolumeAttachment as volguard reads it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct VaView {
    /// `apiVersion`, checked.
    #[serde(
        rename = "apiVersion",
        default,
        deserialize_with = "api_version_of::<VolumeAttachment, _>"
    )]
    pub api_version: TypeChecked,
    /// `kind`, checked.
    #[serde(default, deserialize_with = "kind_of::<VolumeAttachment, _>")]
    pub kind: TypeChecked,
    /// Its name and versions.
    #[serde(default, deserialize_with = "object_or_default")]
    pub metadata: MetaView,
    /// `spec`.
    #[serde(default, deserialize_with = "object_or_default")]
    pub spec: VaSpecView,
    /// `status`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub status: Option<VaStatusView>,
}

/// A VolumeAttachment's `spec`: who attaches what where.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaSpecView {
    /// `attacher`: the CSI driver.
    #[serde(default, deserialize_with = "null_or_default")]
    pub attacher: String,
    /// `nodeName`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub node_name: String,
    /// `source`.
    #[serde(default, deserialize_with = "object_or_default")]
    pub source: VaSourceView,
}

/// `spec.source`: a PV by name, or an inline CSI volume.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaSourceView {
    /// `persistentVolumeName`.
    #[serde(default)]
    pub persistent_volume_name: Option<String>,
    /// `inlineVolumeSpec.csi`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub inline_volume_spec: Option<InlineSpecView>,
}

/// `spec.source.inlineVolumeSpec`: only its CSI source is read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct InlineSpecView {
    /// `csi`.
    #[serde(default, deserialize_with = "json_shape::object_or_null")]
    pub csi: Option<CsiView>,
}

/// `status`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct VaStatusView {
    /// `attached`.
    #[serde(default, deserialize_with = "null_or_default")]
    pub attached: bool,
}

impl From<VolumeAttachment> for VaView {
    fn from(va: VolumeAttachment) -> Self {
        let source = va.spec.source;
        VaView {
            api_version: TypeChecked,
            kind: TypeChecked,
            metadata: va.metadata.into(),
            spec: VaSpecView {
                attacher: va.spec.attacher,
                node_name: va.spec.node_name,
                source: VaSourceView {
                    persistent_volume_name: source.persistent_volume_name,
                    inline_volume_spec: source.inline_volume_spec.map(|s| InlineSpecView {
                        csi: s.csi.map(CsiView::from),
                    }),
                },
            },
            status: va.status.map(|s| VaStatusView {
                attached: s.attached,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every field a view reads, decoded straight and through k8s-openapi's type, gives
    /// the same view: the snapshot and the watch read one object alike.
    #[test]
    fn decoded_straight_or_through_the_full_type_alike() {
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-1", "uid": "u1", "resourceVersion": "7",
                "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "capacity": {"storage": "1Gi"},
                "claimRef": {"namespace": "ns", "name": "data", "uid": "c1", "kind": "PersistentVolumeClaim"},
                "csi": {"driver": "d.csi", "volumeHandle": "h-1", "fsType": "ext4"},
                "nfs": {"server": "nas", "path": "/e"}, "hostPath": {"path": "/srv"},
                "local": {"path": "/mnt"}, "iscsi": {"targetPortal": "t", "iqn": "q", "lun": 0},
                "cephfs": {"monitors": ["m"]}, "rbd": {"monitors": ["m"], "image": "i"},
                "flexVolume": {"driver": "f/d", "options": {"volumeID": "v"}}},
            "status": {"phase": "Bound"}});
        let straight: PvView = serde_json::from_value(pv.clone()).unwrap();
        let full: PersistentVolume = serde_json::from_value(pv).unwrap();
        assert_eq!(straight, PvView::from(full));
        let spec = straight.spec.as_ref().unwrap();
        assert!(spec.local && spec.host_path && spec.iscsi && spec.cephfs && spec.rbd);
        assert_eq!(straight.metadata.resource_version.as_deref(), Some("7"));

        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"namespace": "ns", "name": "data", "uid": "c1", "resourceVersion": "8",
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s", "uid": "s1"},
                    {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "p1", "controller": true}]},
            "spec": {"accessModes": ["ReadWriteOncePod"], "volumeName": "pv-1",
                "storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}});
        let straight: PvcView = serde_json::from_value(pvc.clone()).unwrap();
        let full: PersistentVolumeClaim = serde_json::from_value(pvc).unwrap();
        assert_eq!(straight, PvcView::from(full));
        assert_eq!(straight.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(straight.metadata.controller_uid(), Some("p1"));

        for source in [
            json!({"persistentVolumeName": "pv-1"}),
            json!({"inlineVolumeSpec": {"csi": {"driver": "d.csi", "volumeHandle": "h-2"},
                "accessModes": ["ReadWriteOnce"]}}),
        ] {
            let va = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                "metadata": {"name": "csi-1", "uid": "v1"},
                "spec": {"attacher": "d.csi", "nodeName": "n1", "source": source},
                "status": {"attached": true, "attachmentMetadata": {"k": "v"}}});
            let straight: VaView = serde_json::from_value(va.clone()).unwrap();
            let full: VolumeAttachment = serde_json::from_value(va).unwrap();
            assert_eq!(straight, VaView::from(full));
        }
    }

    /// Odd objects: the view accepts what the full type accepts, and reads the same.
    #[test]
    fn the_views_accept_what_the_full_types_accept() {
        fn alike<Full, View>(cases: &[serde_json::Value])
        where
            Full: serde::de::DeserializeOwned + std::fmt::Debug,
            View: serde::de::DeserializeOwned + From<Full> + PartialEq + std::fmt::Debug,
        {
            for case in cases {
                let full = serde_json::from_value::<Full>(case.clone());
                let view = serde_json::from_value::<View>(case.clone());
                match (full, view) {
                    (Ok(full), Ok(view)) => assert_eq!(View::from(full), view, "{case}"),
                    (Err(_), Err(_)) => {}
                    (full, view) => panic!("{case}: full {full:?}, view {view:?}"),
                }
            }
        }
        alike::<PersistentVolume, PvView>(&[
            json!({}),
            json!({"metadata": null, "spec": null, "status": null}),
            json!({"spec": {"csi": {"driver": "d"}}}),
            json!({"spec": {"csi": {"driver": null, "volumeHandle": "h"}}}),
            json!({"spec": {"nfs": {"server": "s"}, "local": null}}),
            json!({"spec": ["ReadWriteOnce"]}),
            json!({"spec": {"accessModes": "ReadWriteOnce"}}),
            json!({"spec": {"claimRef": {"name": 1}}}),
            json!({"spec": {"flexVolume": {"driver": "f", "options": {"a": 1}}}}),
            json!({"metadata": ["pv-1"]}),
            json!({"apiVersion": "v1", "kind": "PersistentVolume"}),
            json!({"apiVersion": "storage.k8s.io/v1"}),
            json!({"apiVersion": null}),
            json!({"kind": "PersistentVolumeClaim"}),
            json!({"spec": {"hostPath": "/srv"}}),
            json!({"spec": {"local": true}}),
            json!({"spec": {"local": []}}),
            json!({"spec": {"iscsi": {"lun": "0"}}}),
            json!({"spec": {"rbd": {"monitors": "m"}}}),
            json!({"spec": {"cephfs": {"monitors": ["m"]}, "hostPath": {"path": "/x"}}}),
            json!({"metadata": {"name": null, "uid": 5}}),
            json!({"status": {"phase": 1}}),
        ]);
        alike::<PersistentVolumeClaim, PvcView>(&[
            json!({"apiVersion": "v2"}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim"}),
            json!({"metadata": null, "spec": null}),
            json!({"spec": {"volumeName": 3}}),
            json!({"spec": {"accessModes": [1]}}),
            json!({"metadata": {"ownerReferences": null}}),
            json!({"metadata": {"ownerReferences": {}}}),
            json!({"metadata": {"ownerReferences": [["p1", true]]}}),
            json!({"metadata": {"ownerReferences": [{"uid": null, "controller": true}]}}),
            json!({"metadata": {"ownerReferences": [{"uid": "p1", "controller": "yes"}]}}),
        ]);
        alike::<VolumeAttachment, VaView>(&[
            json!({}),
            json!({"spec": null, "status": null}),
            json!({"spec": {"attacher": "d", "nodeName": "n"}}),
            json!({"spec": {"attacher": "d", "source": {"inlineVolumeSpec": {}}}}),
            json!({"spec": {"attacher": null}}),
            json!({"spec": {"source": []}}),
            json!({"status": {}}),
            json!({"status": {"attached": "yes"}}),
            json!({"apiVersion": "storage.k8s.io/v1beta1"}),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment"}),
        ]);
    }

    /// A key given twice: the full types keep the last, the views refuse the document
    /// (as the pod view always has); the API server never writes one twice.
    #[test]
    fn a_key_given_twice_is_refused() {
        let twice = r#"{"spec": {"storageClassName": "a"}, "spec": {"storageClassName": "b"}}"#;
        assert!(serde_json::from_str::<PersistentVolume>(twice).is_ok());
        let e = serde_json::from_str::<PvView>(twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate field `spec`"), "{e}");
    }
}
