//! What fills the cluster state: snapshot files, watches on the Kubernetes API, and a
//! synthetic generator for benchmarks and load tests.

pub mod snapshot;
pub mod synthetic;
pub mod watch;
