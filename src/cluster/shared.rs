//! The cluster state as the watchers (writers) and the request handlers (readers) share
//! it. Writers apply batches of up to 500 events under the lock, and the extender judges
//! a pod over thousands of nodes under it, so waiting for the lock can take milliseconds:
//! that wait belongs on blocking threads, never on a tokio worker, where it would stall
//! every connection the worker serves (health probes included). Hence two ways in: the
//! lock itself, for blocking threads, and what readers on workers need without it: a
//! readiness snapshot every writer publishes as it lets go, and the driver table, which
//! never changes.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc, LockResult, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        TryLockResult,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{readiness::Readiness, state::ClusterState};
use crate::model::drivers::Drivers;

/// The cluster state, shared. Cloning it shares the same state.
#[derive(Clone)]
pub struct SharedState(Arc<Shared>);

struct Shared {
    state: RwLock<ClusterState>,
    /// A copy of the state's readiness as of the last write: readers on async workers
    /// (`/readyz`, remediation's check before it acts, one-shot commands waiting for
    /// the first list) take it without waiting for a writer. The mutex is held only to
    /// clone or replace the `Arc`, never while anything is computed.
    readiness: Mutex<Arc<Readiness>>,
    drivers: Arc<Drivers>,
    /// Since when (milliseconds after `epoch`, plus one) a writer has held the lock; 0
    /// while none does. A writer that never lets go leaves the readiness copy as it was,
    /// so readiness asks this too.
    writer_since: AtomicU64,
    epoch: Instant,
}

/// A read in a blocking task that could not be made: the state's lock is poisoned, or
/// the task did not finish (the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cluster state is unavailable")]
pub struct Unavailable;

impl SharedState {
    /// Shares `state`.
    pub fn new(state: ClusterState) -> Self {
        let readiness = Mutex::new(Arc::new(state.readiness().clone()));
        let drivers = state.shared_drivers();
        SharedState(Arc::new(Shared {
            state: RwLock::new(state),
            readiness,
            drivers,
            writer_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// Reads the state, waiting for a writer to finish: call it on a blocking thread
    /// (`spawn_blocking`, a plain thread), or use [`SharedState::read_blocking`] from
    /// async code.
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, ClusterState>> {
        self.0.state.read()
    }

    /// Reads the state if no writer holds it: the one read fit for an async worker.
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, ClusterState>> {
        self.0.state.try_read()
    }

    /// Writes the state, waiting for readers and writers to finish: call it on a
    /// blocking thread. The readiness snapshot is published when the guard is dropped.
    pub fn write(&self) -> LockResult<Writing<'_>> {
        let shared = &*self.0;
        let (guard, poisoned) = match shared.state.write() {
            Ok(guard) => (guard, false),
            Err(poisoned) => (poisoned.into_inner(), true),
        };
        let since = shared.epoch.elapsed().as_millis() as u64 + 1;
        shared.writer_since.store(since, Ordering::Relaxed);
        let writing = Writing { guard, shared };
        if poisoned {
            Err(PoisonError::new(writing))
        } else {
            Ok(writing)
        }
    }

    /// How long the current writer has held the state, if one does.
    pub fn written_for(&self) -> Option<Duration> {
        let since = self.0.writer_since.load(Ordering::Relaxed);
        (since > 0).then(|| {
            self.0
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(since - 1))
        })
    }

    /// Runs `read` over the state on a blocking thread, so that the async caller's
    /// worker goes on serving while a writer holds the state.
    pub async fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ClusterState) -> T + Send + 'static,
    ) -> Result<T, Unavailable> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || match shared.read() {
            Ok(state) => Ok(read(&state)),
            Err(_) => Err(Unavailable),
        })
        .await
        .map_err(|_| Unavailable)?
    }

    /// The state's readiness as of the last write, without waiting for a writer. Its
    /// verdicts that depend on time (a watch failing past its grace period) are
    /// computed when asked, so the copy does not go stale between writes.
    pub fn readiness(&self) -> Arc<Readiness> {
        self.0
            .readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The driver table the records were slimmed with, which never changes.
    pub fn drivers(&self) -> Arc<Drivers> {
        self.0.drivers.clone()
    }

    /// A writer panicked while it held the state: every later write is refused, so
    /// the state no longer follows the cluster.
    pub fn is_poisoned(&self) -> bool {
        self.0.state.is_poisoned()
    }
}

/// The state held for writing. Dropping it publishes the state's readiness, so that
/// readers who do not take the lock see every change a writer made.
pub struct Writing<'a> {
    guard: RwLockWriteGuard<'a, ClusterState>,
    shared: &'a Shared,
}

impl Deref for Writing<'_> {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.guard
    }
}

impl DerefMut for Writing<'_> {
    fn deref_mut(&mut self) -> &mut ClusterState {
        &mut self.guard
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let readiness = Arc::new(self.guard.readiness().clone());
        *self
            .shared
            .readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = readiness;
        self.shared.writer_since.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{cluster::Kind, model::config::Config};

    fn shared() -> SharedState {
        let config = Arc::new(Config::default());
        SharedState::new(ClusterState::new(
            config.clone(),
            Arc::new(Drivers::new(&config)),
        ))
    }

    #[test]
    fn readiness_is_published_when_a_write_ends() {
        let shared = shared();
        assert_eq!(shared.readiness().unsynced().len(), Kind::ALL.len());
        let mut writing = shared.write().unwrap();
        for kind in Kind::ALL {
            writing.mark_synced(kind);
        }
        assert!(
            !shared.readiness().unsynced().is_empty(),
            "not while the write goes on"
        );
        assert!(shared.written_for().is_some(), "a writer holds it");
        drop(writing);
        assert!(shared.readiness().is_ready());
        assert_eq!(shared.written_for(), None);
        shared.write().unwrap().readiness_mut().watch_failed(
            Kind::Pod,
            "refused".into(),
            Instant::now(),
        );
        assert!(shared.readiness().is_failing(Kind::Pod));
    }

    #[test]
    fn readiness_and_drivers_are_read_while_a_writer_holds_the_state() {
        let shared = shared();
        let _writing = shared.write().unwrap();
        assert!(!shared.readiness().is_ready());
        assert!(shared.try_read().is_err());
    }
}
