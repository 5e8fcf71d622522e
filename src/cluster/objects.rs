//! The Kubernetes kinds volguard reads, as one enum: what a snapshot file or a watch
//! delivers before it is slimmed into records.

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim},
    storage::v1::{CSIDriver, CSINode, StorageClass, VolumeAttachment},
};
use std::borrow::Cow;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

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
    /// storage.k8s.io/v1 CSIDriver
    CsiDriver,
}

impl Kind {
    /// Every cached kind, in the order they are listed at start.
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::CsiNode,
        Kind::StorageClass,
        Kind::CsiDriver,
        Kind::PersistentVolume,
        Kind::PersistentVolumeClaim,
        Kind::VolumeAttachment,
        Kind::Pod,
    ];

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
            Kind::CsiDriver => "CSIDriver",
        }
    }
}

/// One object of a cached kind, fully typed.
#[derive(Debug, Clone)]
pub enum ClusterObject {
    /// A Node.
    Node(Box<Node>),
    /// A CSINode.
    CsiNode(Box<CSINode>),
    /// A PersistentVolume.
    PersistentVolume(Box<PersistentVolume>),
    /// A PersistentVolumeClaim.
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
    /// A Pod, decoded only as far as volguard reads it.
    Pod(Box<PodView>),
    /// A VolumeAttachment.
    VolumeAttachment(Box<VolumeAttachment>),
    /// A StorageClass.
    StorageClass(Box<StorageClass>),
    /// A CSIDriver.
    CsiDriver(Box<CSIDriver>),
}

/// Why a document could not become a [`ClusterObject`].
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `kind` names something volguard does not cache.
    #[error(
        "kind {0:?} is not one volguard reads (Node, CSINode, PersistentVolume, PersistentVolumeClaim, Pod, VolumeAttachment, StorageClass, CSIDriver)"
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

/// Where a document is decoded from: an already parsed value, or JSON text (faster:
/// no intermediate tree).
trait Source {
    fn decode<T: DeserializeOwned>(self) -> serde_json::Result<T>;
}

impl Source for Value {
    fn decode<T: DeserializeOwned>(self) -> serde_json::Result<T> {
        serde_json::from_value(self)
    }
}

impl Source for &str {
    fn decode<T: DeserializeOwned>(self) -> serde_json::Result<T> {
        serde_json::from_str(self)
    }
}

impl ClusterObject {
    /// Decodes a JSON document by its `kind`.
    pub fn from_value(value: Value) -> Result<Self, ObjectError> {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(ObjectError::NoKind)?
            .to_owned();
        Self::decode(&kind, value)
    }

    /// Decodes one JSON document given as text, by its `kind`.
    pub fn from_json(text: &str) -> Result<Self, ObjectError> {
        #[derive(Deserialize)]
        struct KindOnly<'a> {
            #[serde(borrow, default)]
            kind: Option<Cow<'a, str>>,
        }
        let probe: KindOnly =
            serde_json::from_str(text).map_err(|source| ObjectError::Invalid {
                kind: "object",
                source,
            })?;
        let kind = probe.kind.ok_or(ObjectError::NoKind)?;
        Self::decode(&kind, text)
    }

    fn decode(kind: &str, source: impl Source) -> Result<Self, ObjectError> {
        fn typed<T: DeserializeOwned>(
            kind: Kind,
            source: impl Source,
        ) -> Result<Box<T>, ObjectError> {
            source
                .decode()
                .map(Box::new)
                .map_err(|source| ObjectError::Invalid {
                    kind: kind.as_str(),
                    source,
                })
        }
        Ok(match kind {
            "Node" => Self::Node(typed(Kind::Node, source)?),
            "CSINode" => Self::CsiNode(typed(Kind::CsiNode, source)?),
            "PersistentVolume" => Self::PersistentVolume(typed(Kind::PersistentVolume, source)?),
            "PersistentVolumeClaim" => {
                Self::PersistentVolumeClaim(typed(Kind::PersistentVolumeClaim, source)?)
            }
            "Pod" => Self::Pod(typed(Kind::Pod, source)?),
            "VolumeAttachment" => Self::VolumeAttachment(typed(Kind::VolumeAttachment, source)?),
            "StorageClass" => Self::StorageClass(typed(Kind::StorageClass, source)?),
            "CSIDriver" => Self::CsiDriver(typed(Kind::CsiDriver, source)?),
            _ => return Err(ObjectError::UnknownKind(kind.to_owned())),
        })
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
            Self::CsiDriver(_) => Kind::CsiDriver,
        }
    }
}
