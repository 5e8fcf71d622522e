//! The state every handler reaches: config, cluster state, metrics, limits, and the
//! live API client when there is one.

use std::{
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use crate::{
    cluster::SharedState,
    decide::{catch_up::TurnedAway, inflight::InFlight},
    model::config::Config,
    server::{limits::Limits, metrics::Metrics},
    sources::watch,
};

/// What every handler can reach.
#[derive(Clone)]
pub struct App {
    /// The validated config.
    pub config: Arc<Config>,
    /// The cluster-state model.
    pub cluster: SharedState,
    /// The Prometheus families, moved by handlers and middleware.
    pub metrics: Arc<Metrics>,
    /// Request, body and connection limits of the listeners.
    pub limits: Limits,
    /// `/filter` and `/prioritize` need a verified client certificate (client CA set).
    pub extender_needs_client_certificate: bool,
    /// Set once a stop signal arrived: readiness fails while in-flight requests finish.
    pub draining: Arc<AtomicBool>,
    /// The live API client when watching (not with a snapshot): the webhook GETs a
    /// claim the watch has not delivered yet. Set exactly when watchers feed the state,
    /// so it also tells whether a retry may wait for them ([`App::follows_api`]).
    pub api: Option<kube::Client>,
    /// The bounds of the webhook's direct GETs, shared by every review.
    pub direct_gets: Arc<watch::DirectGets>,
    /// The watchers that ended, for liveness (none with a snapshot).
    pub stopped_watches: watch::Stopped,
    /// Pods `/filter` passed that the state does not show bound yet (docs/scheduling.md, "Bursts").
    /// Taken after the cluster state's lock, never before it.
    pub in_flight: Arc<Mutex<InFlight>>,
    /// Pods `/filter` turned away from every node, so that a retry volguard's watch
    /// has not caught up with waits for it (docs/scheduling.md, "Retries").
    pub turned_away: Arc<Mutex<TurnedAway>>,
    /// What placements in flight are timed from.
    pub epoch: Instant,
    /// Held while `/metrics` observes the cache, so that scrapes against a state a
    /// writer holds start no second observation.
    pub cache_observation: Arc<tokio::sync::Mutex<()>>,
}

impl App {
    /// An app with fresh metrics, default limits, not draining, no API client.
    pub fn new(config: Arc<Config>, cluster: SharedState) -> Self {
        let metrics = Metrics::new();
        metrics.expect_drivers(config.drivers.iter().map(|d| d.name.as_str()));
        App {
            config,
            cluster,
            metrics: Arc::new(metrics),
            limits: Limits::default(),
            extender_needs_client_certificate: false,
            draining: Arc::new(AtomicBool::new(false)),
            api: None,
            direct_gets: Arc::default(),
            stopped_watches: watch::Stopped::default(),
            in_flight: Arc::default(),
            turned_away: Arc::default(),
            epoch: Instant::now(),
            cache_observation: Arc::default(),
        }
    }

    /// Whether the state follows the API through watches, which can be behind what
    /// kube-scheduler has seen; a snapshot never changes, so nothing is worth waiting
    /// for.
    pub fn follows_api(&self) -> bool {
        self.api.is_some()
    }

    /// Monotonic time since the app was made: the clock of placements in flight.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}
