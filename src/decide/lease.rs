//! Leader election for remediation (docs/remediation.md, "One actor"), the decisions
//! only: whether this replica may take or keep the `coordination.k8s.io` Lease, and
//! until when it may act. Time is this process's monotonic clock, passed in: the
//! Lease's `renewTime` is another machine's wall clock, so a Lease is timed from when
//! this process saw it change, as client-go's leader election does. The controller in
//! `server::remediation` reads and writes the Lease.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};

/// Seconds a Lease is valid after its last renewal, written into the Lease and used to
/// time other holders' Leases when they do not say (Kubernetes' usual 15 s).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// How long after sending its last successful renewal the holder still acts: well
/// under [`LEASE_DURATION`], so it has stopped before another replica, timing the same
/// Lease from when it saw it, may take it over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// How often a replica that does not hold the Lease looks at it again.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// What identifies one version of the Lease's record: any change restarts the timer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Record {
        Record {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
            transitions: spec.and_then(|s| s.lease_transitions),
            duration: spec.and_then(|s| s.lease_duration_seconds),
        }
    }
}

/// One replica's view of the Lease between calls.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    /// The record last read and when (this clock) it was first seen as it is.
    observed: Option<(Record, Duration)>,
    /// Acting is allowed before this time; `None`: not leading.
    leading_until: Option<Duration>,
    /// When the Lease was last read or written.
    last_try: Option<Duration>,
}

impl Elector {
    /// A replica named `identity` that has not looked at the Lease yet.
    pub fn new(identity: impl Into<String>) -> Self {
        Elector {
            identity: identity.into(),
            observed: None,
            leading_until: None,
            last_try: None,
        }
    }

    /// This replica's name in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// It is time to read the Lease again at `now`: every [`RENEW_EVERY`] while leading,
    /// every [`RETRY_EVERY`] otherwise.
    pub fn due(&self, now: Duration) -> bool {
        let every = if self.is_leader(now) {
            RENEW_EVERY
        } else {
            RETRY_EVERY
        };
        self.last_try
            .is_none_or(|at| now.saturating_sub(at) >= every)
    }

    /// Notes the Lease as read at `now` (`None` spec: an empty Lease); a record that
    /// changed since the last read is timed from now.
    pub fn observe(&mut self, spec: Option<&LeaseSpec>, now: Duration) {
        self.last_try = Some(now);
        let record = Record::of(spec);
        if self.observed.as_ref().is_none_or(|(r, _)| *r != record) {
            self.observed = Some((record, now));
        }
    }

    /// Whether this replica may write itself as the holder at `now`: nobody holds the
    /// Lease, this replica does, or the holder's record has not changed for its lease
    /// duration as timed here.
    pub fn may_take(&self, now: Duration) -> bool {
        let Some((record, since)) = &self.observed else {
            return true;
        };
        match &record.holder {
            None => true,
            Some(holder) if *holder == self.identity => true,
            Some(_) => {
                let duration = record
                    .duration
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map_or(LEASE_DURATION, Duration::from_secs);
                now.saturating_sub(*since) >= duration
            }
        }
    }

    /// The write sent at `sent` succeeded: acting is allowed until `sent` plus
    /// [`RENEW_DEADLINE`]. Returns whether this replica just became the leader.
    pub fn renewed(&mut self, sent: Duration) -> bool {
        let was = self.is_leader(sent);
        self.last_try = Some(sent);
        self.leading_until = Some(sent.saturating_add(RENEW_DEADLINE));
        !was
    }

    /// A read or a write failed, or another replica holds the Lease: stop acting now.
    pub fn lost(&mut self, now: Duration) {
        self.last_try = Some(now);
        self.leading_until = None;
    }

    /// This replica may act at `now`.
    pub fn is_leader(&self, now: Duration) -> bool {
        self.leading_until.is_some_and(|until| now < until)
    }

    /// The spec to write to take or renew the Lease at `wall_now`: this replica as the
    /// holder, renewed now, acquired now unless it held it already, one more
    /// transition when the holder changes.
    pub fn next_spec(&self, current: Option<&LeaseSpec>, wall_now: Timestamp) -> LeaseSpec {
        let current = current.cloned().unwrap_or_default();
        let holder = current.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let transitions = current.lease_transitions.unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                current.acquire_time.clone()
            } else {
                Some(MicroTime(wall_now))
            },
            renew_time: Some(MicroTime(wall_now)),
            lease_transitions: Some(if ours || holder.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..current
        }
    }
}
