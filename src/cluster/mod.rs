//! Cluster state: the kinds volguard reads, the slices of them it decodes, their slim records, and the indexed model
//! that snapshots and watches fill and that the webhook and extender read.

pub mod deletions;
pub mod missing;
pub mod objects;
pub mod readiness;
pub mod records;
pub mod related;
pub mod shared;
pub mod state;
pub mod views;

pub use missing::Missing;
pub use objects::{ClusterObject, Kind};
pub use readiness::{Readiness, WatchHealth};
pub use shared::SharedState;
pub use state::{ClaimBinding, ClusterState, Fetched, VolumeUser};
