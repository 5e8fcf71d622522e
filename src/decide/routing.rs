//! Routing: which scheduler places a pod once the webhook has admitted it. One rule for
//! the webhook, which writes it into the pod, and for `volguard explain`, which says
//! whether the extender will be asked about the pod, so that the two never disagree.

use crate::model::{config::Config, podview::PodView};

/// The scheduler the API server gives a pod that names none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What becomes of a pod's scheduler at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `spec.nodeName` is set: the pod goes to that node and no scheduler places it, so
    /// there is nothing to route.
    Bound(&'a str),
    /// It keeps the scheduler it names (the default one when none): no
    /// `scheduling.schedulerName` is configured, or it opts out (`route: "false"`).
    Kept(&'a str),
    /// It names the configured scheduler already.
    Already(&'a str),
    /// It names none, or the default one: the webhook sets the configured scheduler.
    Routed(&'a str),
    /// It names another scheduler, which its author chose: left there, with a warning
    /// that volguard's extender will not check its nodes.
    Elsewhere {
        /// The scheduler it names.
        named: &'a str,
        /// The configured one.
        target: &'a str,
    },
}

/// What becomes of `pod`'s scheduler at admission under `config`.
pub fn route<'a>(pod: &'a PodView, config: &'a Config) -> Route<'a> {
    if let Some(node) = pod.node_name() {
        return Route::Bound(node);
    }
    let named = pod.scheduler_name();
    let target = match &config.scheduling.scheduler_name {
        Some(target) if !pod.opts_out(&config.annotation("route")) => target.as_str(),
        _ => return Route::Kept(named.unwrap_or(DEFAULT_SCHEDULER)),
    };
    match named {
        Some(name) if name == target => Route::Already(target),
        None | Some(DEFAULT_SCHEDULER) => Route::Routed(target),
        Some(other) => Route::Elsewhere {
            named: other,
            target,
        },
    }
}
