//! The mutating admission webhook's HTTP side: its wire format and its endpoint.

pub mod endpoint;
pub mod wire;
