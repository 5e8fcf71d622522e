//! volguard: a storage-aware mutating admission webhook and kube-scheduler extender for
//! block volumes. Layers, lowest first; each imports only those below it:
//! - [`model`]: config, drivers, the pod view, volume identity;
//! - [`cluster`]: the indexed cluster-state model;
//! - [`sources`]: what fills it (snapshots, API watches, a synthetic generator);
//! - [`decide`]: the pure core (resolve, mutate, judge);
//! - [`server`]: the HTTP adapters around the core;
//! - [`cmd`]: one module per subcommand.

pub mod cluster;
pub mod cmd;
pub mod decide;
pub mod model;
pub mod server;
pub mod sources;
