//! The Kubernetes types behind each cached [`Kind`], for the typed watchers and GETs.

use std::fmt::Debug;

use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::{CSINode, StorageClass, VolumeAttachment},
};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::cluster::{ClusterObject, Kind};

/// A type volguard watches: which [`Kind`] it is and how it enters the state.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The kind it is cached as.
    const KIND: Kind;
    /// Wraps it for [`crate::cluster::ClusterState::apply`], which slims it into a record
    /// (pods become a [`crate::model::podview::PodView`] first).
    fn into_object(self) -> ClusterObject;
}

macro_rules! watched {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Watched for $ty {
            const KIND: Kind = Kind::$variant;
            fn into_object(self) -> ClusterObject {
                ClusterObject::$variant(Box::new(self.into()))
            }
        }
    )*};
}

watched! {
    Node => Node,
    CSINode => CsiNode,
    PersistentVolume => PersistentVolume,
    PersistentVolumeClaim => PersistentVolumeClaim,
    Pod => Pod,
    VolumeAttachment => VolumeAttachment,
    StorageClass => StorageClass,
}

/// The all-namespaces collection a kind is listed and watched at, e.g. `/api/v1/pods`.
pub fn collection_path(kind: Kind) -> String {
    fn path<K: Watched>() -> String {
        K::url_path(&(), None)
    }
    match kind {
        Kind::Node => path::<Node>(),
        Kind::CsiNode => path::<CSINode>(),
        Kind::PersistentVolume => path::<PersistentVolume>(),
        Kind::PersistentVolumeClaim => path::<PersistentVolumeClaim>(),
        Kind::Pod => path::<Pod>(),
        Kind::VolumeAttachment => path::<VolumeAttachment>(),
        Kind::StorageClass => path::<StorageClass>(),
    }
}
