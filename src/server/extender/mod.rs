//! The kube-scheduler extender's HTTP side (docs/scheduling.md, "The scheduler extender"):
//! `POST /filter` and `POST /prioritize`, their wire types, around the pure judge.

pub mod endpoints;
pub mod wire;
