//! The pure core: decisions that take data (a pod, the cluster state, the config) and
//! return data. Nothing here does I/O or knows about HTTP.

pub mod catch_up;
pub mod inflight;
pub mod judge;
pub mod lease;
pub mod mutate;
pub mod remediate;
pub mod resolve;
pub mod routing;
pub mod webhook;
