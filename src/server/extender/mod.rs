//! The kube-scheduler extender's HTTP side (README: "The scheduler extender"):
//! `POST /filter` and `POST /prioritize`, their wire types, around the pure judge.

pub mod endpoints;
pub mod wire;
