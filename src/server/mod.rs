//! Adapters that serve the core over HTTP: the shared app state, the router, the
//! admission and extender endpoints with their wire types, and what keeps the server
//! safe to run (limits, TLS and its reload, metrics, graceful shutdown); and the opt-in
//! remediation controller, which runs beside them.

pub mod admission;
pub mod app;
pub mod certs;
pub mod connections;
pub mod extender;
pub mod limits;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod reload;
pub mod remediation;
pub mod reply;
pub mod router;
pub mod shutdown;
pub mod tls;
