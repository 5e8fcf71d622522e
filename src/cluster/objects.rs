//! The Kubernetes kinds volguard reads, as one enum: what a snapshot file or a watch
//! delivers before it is slimmed into records.

use k8s_openapi::api::{
    core::v1::Node,
    storage::v1::{CSINode, StorageClass},
};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::views::{PvView, PvcView, VaView};
use crate::model::podview::PodView;

/// The kinds volguard caches; also the unit of readiness and of the object-count metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Node
    Node,
    /// storage.k8s.io/v1 CSINode
    CsiNode,
    /// core/v1 PersistentVolume
    PersistentVolume,
    /// core/v1 PersistentVolumeClaim
    PersistentVolumeClaim,
    /// core/v1 Pod
    Pod,
    /// storage.k8s.io/v1 VolumeAttachment
    VolumeAttachment,
    /// storage.k8s.io/v1 StorageClass
    StorageClass,
}

impl Kind {
    /// Every cached kind, in the order they are listed at start. Not CSIDriver: no
    /// field of it decides anything volguard says, and a watch of it could only make
    /// volguard unready.
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::CsiNode,
        Kind::StorageClass,
        Kind::PersistentVolume,
        Kind::PersistentVolumeClaim,
        Kind::VolumeAttachment,
        Kind::Pod,
    ];

    /// The cached kind a Kubernetes `kind` string names, if any.
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::CsiNode => "CSINode",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::Pod => "Pod",
            Kind::VolumeAttachment => "VolumeAttachment",
            Kind::StorageClass => "StorageClass",
        }
    }
}

/// One object of a cached kind: Nodes, CSINodes and StorageClasses fully typed, the
/// numerous kinds decoded only as far as volguard reads them.
#[derive(Debug, Clone)]
pub enum ClusterObject {
    /// A Node.
    Node(Box<Node>),
    /// A CSINode.
    CsiNode(Box<CSINode>),
    /// A PersistentVolume.
    PersistentVolume(Box<PvView>),
    /// A PersistentVolumeClaim.
    PersistentVolumeClaim(Box<PvcView>),
    /// A Pod, decoded only as far as volguard reads it.
    Pod(Box<PodView>),
    /// A VolumeAttachment.
    VolumeAttachment(Box<VaView>),
    /// A StorageClass.
    StorageClass(Box<StorageClass>),
}

/// The fields of an object's metadata that identify it and its version, whichever
/// type holds them.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// `metadata.name`.
    pub name: Option<&'a str>,
    /// `metadata.namespace`.
    pub namespace: Option<&'a str>,
    /// `metadata.uid`.
    pub uid: Option<&'a str>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<&'a str>,
}

/// Why a document could not become a [`ClusterObject`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `kind` names something volguard does not cache.
    #[error(
        "kind {0:?} is not one volguard reads (Node, CSINode, PersistentVolume, PersistentVolumeClaim, Pod, VolumeAttachment, StorageClass)"
    )]
    UnknownKind(String),
    /// The document has no `kind`.
    #[error("document has no kind")]
    NoKind,
    /// The document does not fit its kind's schema.
    #[error("invalid {kind}: {source}")]
    Invalid {
        /// The kind it claimed to be.
        kind: &'static str,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
}

impl ClusterObject {
    /// Decodes a JSON document by its `kind`.
    pub fn from_value(value: Value) -> Result<Self, ObjectError> {
        let name = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(ObjectError::NoKind)?;
        let Some(kind) = Kind::parse(name) else {
            return Err(ObjectError::UnknownKind(name.to_owned()));
        };
        Self::deserialize_kind(kind, value).map_err(|source| ObjectError::Invalid {
            kind: kind.as_str(),
            source,
        })
    }

    /// Decodes an object of a known kind from any serde deserializer: the snapshot
    /// reader hands it the rest of a YAML or JSON mapping once the `kind` key is read,
    /// so that a List's items go straight into their types without a tree in between.
    pub fn deserialize_kind<'de, D: Deserializer<'de>>(
        kind: Kind,
        deserializer: D,
    ) -> Result<Self, D::Error> {
        fn typed<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Box<T>, D::Error> {
            T::deserialize(d).map(Box::new)
        }
        Ok(match kind {
            Kind::Node => Self::Node(typed(deserializer)?),
            Kind::CsiNode => Self::CsiNode(typed(deserializer)?),
            Kind::PersistentVolume => Self::PersistentVolume(typed(deserializer)?),
            Kind::PersistentVolumeClaim => Self::PersistentVolumeClaim(typed(deserializer)?),
            Kind::Pod => Self::Pod(typed(deserializer)?),
            Kind::VolumeAttachment => Self::VolumeAttachment(typed(deserializer)?),
            Kind::StorageClass => Self::StorageClass(typed(deserializer)?),
        })
    }

    /// The object's `metadata.uid` and `metadata.resourceVersion`, for telling two reads
    /// of one name apart; `None`s for pods, whose slim view keeps neither.
    pub fn version(&self) -> (Option<&str>, Option<&str>) {
        let id = self.identity();
        (id.uid, id.resource_version)
    }

    /// The object's name, namespace and versions as its metadata gives them (a pod's
    /// slim view keeps no versions).
    pub fn identity(&self) -> Identity<'_> {
        macro_rules! of {
            ($m:expr) => {
                Identity {
                    name: $m.name.as_deref(),
                    namespace: $m.namespace.as_deref(),
                    uid: $m.uid.as_deref(),
                    resource_version: $m.resource_version.as_deref(),
                }
            };
        }
        match self {
            Self::Pod(p) => Identity {
                name: Some(p.name()),
                namespace: p.namespace(),
                uid: None,
                resource_version: None,
            },
            Self::Node(x) => of!(x.metadata),
            Self::CsiNode(x) => of!(x.metadata),
            Self::PersistentVolume(x) => of!(x.metadata),
            Self::PersistentVolumeClaim(x) => of!(x.metadata),
            Self::VolumeAttachment(x) => of!(x.metadata),
            Self::StorageClass(x) => of!(x.metadata),
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Node(_) => Kind::Node,
            Self::CsiNode(_) => Kind::CsiNode,
            Self::PersistentVolume(_) => Kind::PersistentVolume,
            Self::PersistentVolumeClaim(_) => Kind::PersistentVolumeClaim,
            Self::Pod(_) => Kind::Pod,
            Self::VolumeAttachment(_) => Kind::VolumeAttachment,
            Self::StorageClass(_) => Kind::StorageClass,
        }
    }
}
