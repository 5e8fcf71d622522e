//! The kube-scheduler extender (contract sections 2 and 5): `POST /filter` and
//! `POST /prioritize` over the shared cluster state, with a pure judging core.

pub mod endpoints;
pub mod judge;
pub mod wire;
