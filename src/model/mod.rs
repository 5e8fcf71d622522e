//! The data everyone reads, lowest in the tree: the config, the compiled driver table,
//! the fast hash maps and the inline per-driver map, the slice of a Pod volguard decodes, volume identity, the names Kubernetes accepts,
//! and JSON-shape guards.

pub mod config;
pub mod drivers;
pub mod fast_hash;
pub mod json_shape;
pub mod names;
pub mod per_driver;
pub mod podview;
pub mod volume;
