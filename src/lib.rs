//! volguard: a storage-aware mutating admission webhook and kube-scheduler extender for
//! block volumes. The pure core (`resolve`, `mutate`) reads the cluster-state model
//! (`cluster`); thin adapters feed it (`snapshot`, `watch`) and serve it (`admission`, `server`).

pub mod admission;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod drivers;
pub mod explain;
pub mod extender;
pub mod json_shape;
pub mod limits;
pub mod metrics;
pub mod mutate;
pub mod podview;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod synthetic;
pub mod tls;
pub mod watch;
