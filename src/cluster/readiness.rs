//! Whether the cluster state can be trusted: every kind listed once, and no watch
//! failing for longer than a grace period. Verdicts from a state that is known to be
//! stale must say so (readiness 503, the webhook's warning, the extender's `Error`).

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use super::objects::Kind;

/// How long a watch may fail before the state counts as stale: long enough to ride out
/// an API server restart or a watch reconnect, short enough that decisions from a
/// lost connection are not made silently for long.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// How one kind's watch is doing; plain data for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchHealth {
    /// Watch errors seen since start (lost connections, refused requests, 410 Gone).
    pub errors: u64,
    /// Set while the watch is failing: the first error since it last worked.
    pub failing_since: Option<Instant>,
    /// The latest error, for the readiness message.
    pub last_error: Option<String>,
    /// When the latest error was seen: a recovery observed before it does not end the
    /// failure.
    pub last_failed_at: Option<Instant>,
}

/// Sync and staleness bookkeeping of a [`super::ClusterState`]. Cloned for readers
/// that must not wait for the state's lock (see [`super::SharedState::readiness`]).
#[derive(Debug, Clone)]
pub struct Readiness {
    synced: HashSet<Kind>,
    watches: BTreeMap<Kind, WatchHealth>,
    stale_after: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            synced: HashSet::new(),
            watches: BTreeMap::new(),
            stale_after: DEFAULT_STALE_AFTER,
        }
    }
}

impl Readiness {
    /// Marks a kind as listed once (a snapshot, or a watch's first complete list).
    pub fn mark_synced(&mut self, kind: Kind) {
        self.synced.insert(kind);
    }

    /// The kinds not listed yet.
    pub fn unsynced(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.synced.contains(k))
            .collect()
    }

    /// Records a failed watch request or a broken watch stream of `kind`, and says
    /// whether the error is news: no watch (this kind's or another's) is failing with
    /// the same text right now. Unreachable or refusing API servers fail every kind on
    /// every retry with one cause; the caller logs it when it is news, so an operator
    /// reads each cause once per failure episode, and again once it changed or after
    /// the watch recovered.
    pub fn watch_failed(&mut self, kind: Kind, error: String, at: Instant) -> bool {
        let news = !self
            .watches
            .values()
            .any(|h| h.failing_since.is_some() && h.last_error.as_deref() == Some(&error));
        let health = self.watches.entry(kind).or_default();
        health.errors += 1;
        health.failing_since.get_or_insert(at);
        health.last_failed_at = Some(health.last_failed_at.map_or(at, |last| last.max(at)));
        health.last_error = Some(error);
        news
    }

    /// Records that the API answered `kind`'s list or watch again at `at`; returns how
    /// long it had been failing, `None` when it was not. A failure with an error seen
    /// after `at` stands: a bookmark seen on the API client's thread may be recorded
    /// after the watcher recorded a later error.
    pub fn watch_recovered(&mut self, kind: Kind, at: Instant) -> Option<Duration> {
        let health = self.watches.get_mut(&kind)?;
        if health.last_failed_at.is_some_and(|last| last > at) {
            return None;
        }
        let since = health.failing_since.filter(|since| *since <= at)?;
        health.failing_since = None;
        Some(at.saturating_duration_since(since))
    }

    /// The kind's watch is failing right now (within the grace period or not).
    pub fn is_failing(&self, kind: Kind) -> bool {
        self.watches
            .get(&kind)
            .is_some_and(|h| h.failing_since.is_some())
    }

    /// One kind's watch health; all zero for a kind that never failed (or a snapshot).
    pub fn watch(&self, kind: Kind) -> WatchHealth {
        self.watches.get(&kind).cloned().unwrap_or_default()
    }

    /// Sets how long a watch may fail before the state counts as stale.
    pub fn set_stale_after(&mut self, grace: Duration) {
        self.stale_after = grace;
    }

    /// The kinds whose watch has been failing for longer than the grace period at `now`.
    pub fn stale_at(&self, now: Instant) -> Vec<Kind> {
        self.watches
            .iter()
            .filter(|(_, h)| {
                h.failing_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= self.stale_after)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Why verdicts cannot be trusted at `now`, as one line; `None` when they can.
    pub fn problem_at(&self, now: Instant) -> Option<String> {
        self.describe(now, true)
    }

    /// Why verdicts cannot be trusted now, without the watches' errors: what the webhook
    /// tells everyone who creates a pod. A client error can name the API server's address
    /// (a certificate not valid for `10.96.0.1`, ...), which is for volguard's log (the
    /// watchers log every error once per failure episode) and `/readyz`, not for users.
    pub fn problem_without_causes(&self) -> Option<String> {
        self.describe(Instant::now(), false)
    }

    /// The problem at `now`; with each stale watch's last error when `causes`, else
    /// pointing at the log.
    fn describe(&self, now: Instant, causes: bool) -> Option<String> {
        let unsynced = self.unsynced();
        if !unsynced.is_empty() {
            let kinds: Vec<&str> = unsynced.iter().map(|k| k.as_str()).collect();
            return Some(format!(
                "cluster state not synced yet: {}",
                kinds.join(", ")
            ));
        }
        let stale = self.stale_at(now);
        let parts: Vec<String> = stale
            .iter()
            .map(|k| {
                let h = &self.watches[k];
                let secs = h
                    .failing_since
                    .map_or(0, |s| now.saturating_duration_since(s).as_secs());
                let error = match (causes, h.last_error.as_deref()) {
                    (false, _) => "the cause is in volguard's log",
                    (true, error) => error.unwrap_or("unknown error"),
                };
                format!("{} watch failing for {secs}s ({error})", k.as_str())
            })
            .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "cluster state is stale: {}",
                parts.join("; ").replace('\n', " ")
            )
        })
    }

    /// The watches failing right now, grace period or not, as one line; `None` when
    /// none is. Remediation, which evicts pods, acts on nothing less than a state every
    /// watch keeps current: it stops at the first failure, not once the state is stale.
    pub fn failing_now(&self) -> Option<String> {
        let parts: Vec<String> = self
            .watches
            .iter()
            .filter(|(_, h)| h.failing_since.is_some())
            .map(|(k, h)| {
                let error = h.last_error.as_deref().unwrap_or("unknown error");
                format!("{} watch failing ({error})", k.as_str())
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; ").replace('\n', " "))
    }

    /// Why verdicts cannot be trusted now; `None` when they can.
    pub fn problem(&self) -> Option<String> {
        self.problem_at(Instant::now())
    }

    /// Every kind is listed and no watch has been failing beyond the grace period.
    pub fn is_ready(&self) -> bool {
        self.synced.len() == Kind::ALL.len() && self.stale_at(Instant::now()).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced() -> Readiness {
        let mut r = Readiness::default();
        for k in Kind::ALL {
            r.mark_synced(k);
        }
        r
    }

    #[test]
    fn unsynced_kinds_are_named() {
        let mut r = Readiness::default();
        r.mark_synced(Kind::Node);
        assert_eq!(
            r.problem().as_deref(),
            Some(
                "cluster state not synced yet: CSINode, StorageClass, PersistentVolume, \
                 PersistentVolumeClaim, VolumeAttachment, Pod"
            )
        );
        assert!(!r.is_ready());
    }

    #[test]
    fn a_failing_watch_is_stale_only_after_the_grace_period() {
        let mut r = synced();
        let t0 = Instant::now();
        r.watch_failed(Kind::Pod, "connection refused".into(), t0);
        r.watch_failed(
            Kind::Pod,
            "connection reset".into(),
            t0 + Duration::from_secs(5),
        );
        assert!(r.is_failing(Kind::Pod));
        assert_eq!(r.problem_at(t0 + Duration::from_secs(29)), None);
        assert_eq!(
            r.problem_at(t0 + Duration::from_secs(31)).as_deref(),
            Some("cluster state is stale: Pod watch failing for 31s (connection reset)")
        );
        assert_eq!(
            r.watch_recovered(Kind::Pod, t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(40))
        );
        assert_eq!(r.problem_at(t0 + Duration::from_secs(41)), None);
        assert_eq!(
            r.watch(Kind::Pod).errors,
            2,
            "errors are counted, not reset"
        );
        assert_eq!(r.watch_recovered(Kind::Pod, t0), None, "already recovered");
    }

    #[test]
    fn a_recovery_seen_before_a_failure_does_not_end_it() {
        let mut r = synced();
        let t0 = Instant::now();
        r.watch_failed(
            Kind::Pod,
            "connection reset".into(),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(r.watch_recovered(Kind::Pod, t0), None);
        assert!(r.is_failing(Kind::Pod));
    }

    #[test]
    fn a_recovery_recorded_after_a_later_error_of_the_same_failure_does_not_end_it() {
        let mut r = synced();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // Failing since 0; a bookmark at 5; the stream fails again at 6, and that error
        // is recorded before the bookmark's recovery.
        r.watch_failed(Kind::Pod, "connection reset".into(), at(0));
        r.watch_failed(Kind::Pod, "connection reset".into(), at(6));
        assert_eq!(r.watch_recovered(Kind::Pod, at(5)), None);
        assert!(r.is_failing(Kind::Pod));
        // A recovery after the last error ends it.
        assert_eq!(
            r.watch_recovered(Kind::Pod, at(7)),
            Some(Duration::from_secs(7))
        );
        assert!(!r.is_failing(Kind::Pod));
    }

    #[test]
    fn the_problem_users_read_leaves_the_causes_to_the_log() {
        let mut r = synced();
        r.set_stale_after(Duration::ZERO);
        let cause =
            "cannot list: invalid peer certificate: certificate not valid for name \"10.96.0.1\"";
        r.watch_failed(Kind::Pod, cause.into(), Instant::now());
        let detailed = r.problem().unwrap();
        assert!(detailed.contains("10.96.0.1"), "{detailed}");
        assert_eq!(
            r.problem_without_causes().as_deref(),
            Some(
                "cluster state is stale: Pod watch failing for 0s (the cause is in volguard's log)"
            )
        );
    }

    #[test]
    fn an_error_is_news_once_per_failure_episode() {
        let mut r = synced();
        let t0 = Instant::now();
        let refused = || "cannot list: connection refused".to_owned();
        assert!(r.watch_failed(Kind::Pod, refused(), t0), "first failure");
        assert!(!r.watch_failed(Kind::Pod, refused(), t0), "the next retry");
        assert!(!r.watch_failed(Kind::Node, refused(), t0), "another kind");
        assert!(
            r.watch_failed(Kind::Pod, "cannot list: 401 Unauthorized".into(), t0),
            "a changed error"
        );
        assert!(
            !r.watch_failed(Kind::Pod, refused(), t0),
            "Node still fails with it"
        );
        r.watch_recovered(Kind::Pod, t0);
        r.watch_recovered(Kind::Node, t0);
        assert!(
            r.watch_failed(Kind::Node, refused(), t0),
            "a new episode after the recovery"
        );
    }

    #[test]
    fn a_snapshot_never_goes_stale() {
        let r = synced();
        assert!(r.is_ready());
        assert_eq!(r.watch(Kind::Node), WatchHealth::default());
    }
}
