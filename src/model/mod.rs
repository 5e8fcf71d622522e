//! The data everyone reads, lowest in the tree: the config, the compiled driver table,
//! the slice of a Pod volguard decodes, volume identity, and JSON-shape guards.

pub mod config;
pub mod drivers;
pub mod json_shape;
pub mod podview;
pub mod resource_name;
pub mod volume;
