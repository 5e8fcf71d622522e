//! Live cluster state from the Kubernetes API: one reflector-style watcher per cached
//! kind (list, then watch from the list's resourceVersion, relist on 410 Gone, backoff
//! on errors) feeds the same indexed [`ClusterState`](crate::cluster::ClusterState) a
//! snapshot fills. Failures are logged (with their whole cause, once per failure
//! episode), counted and turn readiness off once they outlast the grace period; they
//! never stop the server.

mod cause;
mod client;
mod direct_get;
mod feed;
mod kinds;
mod recovery;

use std::{
    collections::BTreeSet,
    pin::pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::{CSINode, StorageClass, VolumeAttachment},
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{runtime::Handle, task::JoinSet};

pub use client::{client, kube_config};
pub use direct_get::{DIRECT_GET_TIMEOUT, DirectGets, Outcome};
pub use feed::Feed;
pub use kinds::{Watched, collection_path};

use self::cause::WatchFailure;
use crate::cluster::{Kind, SharedState};

/// Most events applied under one write lock: a list page at a time, so readers wait
/// at most a fraction of a millisecond while a large kind is listed.
const BATCH: usize = 500;

/// The kinds whose watcher has ended. A watcher runs as long as the process and ends
/// only when it cannot go on (the state lock poisoned, a panic): from then on the cache
/// no longer follows the cluster, which only a restart mends, so liveness fails.
#[derive(Debug, Clone, Default)]
pub struct Stopped(Arc<Mutex<BTreeSet<Kind>>>);

impl Stopped {
    /// The kinds whose watcher has ended, in order.
    pub fn kinds(&self) -> Vec<Kind> {
        let kinds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kinds.iter().copied().collect()
    }
}

/// Records its kind in [`Stopped`] when the watcher holding it ends, however it ends:
/// returned, panicked or aborted.
struct Ending(Kind, Stopped);

impl Drop for Ending {
    fn drop(&mut self) {
        let mut kinds = self.1.0.lock().unwrap_or_else(|p| p.into_inner());
        kinds.insert(self.0);
    }
}

/// A runtime for the watchers alone, one worker: a relist decodes pages for seconds,
/// CPU work that on the server's workers would queue requests behind it. Here it takes
/// turns with them in the kernel's scheduler instead, at a lower priority
/// ([`WATCH_NICENESS`]), so that requests go first when both want the CPU. Start the
/// watchers on it with [`spawn_on`]; the batches they decode are still applied on the
/// server's blocking threads, at its priority, since they hold the state's write lock.
/// Shut it down outside any runtime.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let niceness = lower_by(WATCH_NICENESS);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("volguard-watch")
        .on_thread_start(niceness)
        .enable_all()
        .build()
}

/// How much nicer than the thread that makes it the watchers' runtime's threads are: a
/// CPU share of about a third of a request thread's when both are busy, enough to keep
/// up with a relist, which then takes longer.
pub const WATCH_NICENESS: i32 = 5;

/// Gives each thread it is called on the caller's nice value plus `by`, as an absolute
/// value: a thread inherits the nice value of the thread that starts it, so a relative
/// step would compound. Being nicer needs no privilege; should it fail all the same,
/// the thread keeps its priority. Linux keeps a nice value per thread, `who` 0 is the
/// calling thread.
fn lower_by(by: i32) -> impl Fn() + Send + Sync + 'static {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority reads only its integer arguments.
        let target = (unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } + by).min(19);
        move || {
            // SAFETY: setpriority reads only its integer arguments.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, target);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = by;
        || {}
    }
}

/// Starts one watcher per kind on the current runtime: [`spawn_on`] it. A
/// watcher that ends is recorded in `stopped`. `server` is the API server's URL
/// (`kube::Config::cluster_url`), named in every failure logged, since the client's
/// errors do not say where they tried to go.
pub fn spawn(
    client: Client,
    server: impl std::fmt::Display,
    state: SharedState,
    stopped: &Stopped,
) -> JoinSet<()> {
    spawn_on(&Handle::current(), client, server, state, stopped)
}

/// Starts one watcher per kind on `watchers` (a [`runtime`]); each batch a watcher
/// decodes is applied on a blocking thread of the current runtime. Dropping the set
/// stops them. A watcher that ends is recorded in `stopped`. `server` is the API
/// server's URL (`kube::Config::cluster_url`), named in every failure logged, since the
/// client's errors do not say where they tried to go.
pub fn spawn_on(
    watchers: &Handle,
    client: Client,
    server: impl std::fmt::Display,
    state: SharedState,
    stopped: &Stopped,
) -> JoinSet<()> {
    let server: Arc<str> = server.to_string().trim_end_matches('/').into();
    let applier = Handle::current();
    let mut set = JoinSet::new();
    for kind in Kind::ALL {
        let w = Watcher {
            client: client.clone(),
            server: server.clone(),
            state: state.clone(),
            applier: applier.clone(),
            ending: Ending(kind, stopped.clone()),
        };
        match kind {
            Kind::Node => set.spawn_on(run::<Node>(w), watchers),
            Kind::CsiNode => set.spawn_on(run::<CSINode>(w), watchers),
            Kind::PersistentVolume => set.spawn_on(run::<PersistentVolume>(w), watchers),
            Kind::PersistentVolumeClaim => set.spawn_on(run::<PersistentVolumeClaim>(w), watchers),
            Kind::Pod => set.spawn_on(run::<Pod>(w), watchers),
            Kind::VolumeAttachment => set.spawn_on(run::<VolumeAttachment>(w), watchers),
            Kind::StorageClass => set.spawn_on(run::<StorageClass>(w), watchers),
        };
    }
    set
}

/// Lists every kind once into `state`, through the watchers' own path, for one-shot
/// commands against a live cluster (`explain`, `nodes`); the watchers stop on return.
/// The error names the kinds not listed within `timeout`, with their last error.
pub async fn list_once(
    client: Client,
    server: impl std::fmt::Display,
    state: SharedState,
    timeout: Duration,
) -> Result<(), String> {
    let _watchers = spawn(client, server, state.clone(), &Stopped::default());
    let deadline = Instant::now() + timeout;
    loop {
        let readiness = state.readiness();
        let missing: Vec<String> = readiness
            .unsynced()
            .into_iter()
            .map(|kind| match readiness.watch(kind).last_error {
                Some(e) => format!("{} ({e})", kind.as_str()),
                None => kind.as_str().to_owned(),
            })
            .collect();
        if state.is_poisoned() {
            return Err("cluster state lock poisoned".to_owned());
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the API server did not list {} within {}s",
                missing.join(", "),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one kind's watcher works with.
struct Watcher {
    client: Client,
    /// The API server's URL, for the log.
    server: Arc<str>,
    state: SharedState,
    /// Where decoded batches are applied: blocking threads at the server's priority.
    applier: Handle,
    /// Records the kind as stopped when the watcher ends.
    ending: Ending,
}

/// Watches one kind for as long as the process runs. The watcher recovers by itself
/// (rewatch, or relist after 410 Gone) with exponential backoff between failures.
/// Lists use the defaults on purpose: pages of 500 bound the full objects alive at once
/// (each is slimmed into a record on apply and dropped), and most-recent semantics keep
/// a relist from going back in time after a disconnect.
///
/// A failure is logged at WARN only when it is news (see
/// [`Readiness::watch_failed`](crate::cluster::readiness::Readiness::watch_failed)):
/// an API server that cannot be reached fails all seven kinds on every retry round with
/// one cause, which an operator needs to read once, not once per kind and round. A
/// failing kind recovers on proof that the API serves it again: a completed list or an
/// applied event here, a bookmark in the [`recovery`] layer; never on a response head.
async fn run<K: Watched>(
    Watcher {
        client,
        server,
        state,
        applier,
        ending: _ending,
    }: Watcher,
) {
    let kind = K::KIND;
    let mut feed = Feed::new(kind);
    let events = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .ready_chunks(BATCH);
    let mut events = pin!(events);
    while let Some(batch) = events.next().await {
        let writer = state.clone();
        let applied = applier
            .spawn_blocking(move || apply(&writer, kind, feed, batch))
            .await;
        let (fed, notes) = match applied {
            Ok(Some(applied)) => applied,
            Ok(None) => {
                tracing::error!(
                    kind = kind.as_str(),
                    "cluster state lock poisoned; watch stopped"
                );
                return;
            }
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                tracing::error!(
                    kind = kind.as_str(),
                    "applying a watch batch panicked ({why}); watch stopped"
                );
                return;
            }
            // The runtime is shutting down.
            Err(_) => return,
        };
        feed = fed;
        for note in notes {
            match note {
                Note::Recovered(after) => recovery::log_recovered(kind, after),
                Note::Failed(failure, news) => {
                    let line = failure.line(kind.as_str(), &server);
                    if news {
                        tracing::warn!(kind = kind.as_str(), "{line}");
                    } else {
                        tracing::debug!(kind = kind.as_str(), "{line}");
                    }
                }
            }
        }
    }
}

/// Applies one batch of watch results under one write lock, on the blocking thread it
/// is called on: a batch of a relist takes milliseconds, and waiting for readers to let
/// go can take longer, neither of which may hold up an async worker. Hands the feed
/// back with what to log; `None` when the state's lock is poisoned.
fn apply<K: Watched>(
    state: &SharedState,
    kind: Kind,
    mut feed: Feed,
    batch: Vec<Result<watcher::Event<K>, watcher::Error>>,
) -> Option<(Feed, Vec<Note>)> {
    let mut notes = Vec::new();
    let mut state = state.write().ok()?;
    for item in batch {
        match item {
            Ok(event) => {
                let works = recovery::proves_working(&event);
                feed.handle(&mut state, convert(event));
                if works && let Some(after) = recovery::recovered(&mut state, kind) {
                    notes.push(Note::Recovered(after));
                }
            }
            Err(e) => {
                let failure = WatchFailure::of(&e);
                let news =
                    state
                        .readiness_mut()
                        .watch_failed(kind, failure.summary(), Instant::now());
                notes.push(Note::Failed(failure, news));
            }
        }
    }
    Some((feed, notes))
}

/// What a batch of watch results left to log once the state lock is released, in order.
enum Note {
    /// The kind works again after failing this long.
    Recovered(Duration),
    /// A failure, and whether it is news.
    Failed(WatchFailure, bool),
}

fn convert<K: Watched>(event: watcher::Event<K>) -> watcher::Event<crate::cluster::ClusterObject> {
    use watcher::Event;
    match event {
        Event::Apply(o) => Event::Apply(o.into_object()),
        Event::Delete(o) => Event::Delete(o.into_object()),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.into_object()),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn niceness() -> i32 {
        // SAFETY: getpriority reads only its integer arguments; `who` 0 is the caller.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn the_watchers_threads_yield_to_the_servers_by_one_step() {
        let server = niceness();
        let runtime = runtime().expect("runtime");
        // Blocking threads are started by the worker, whose nice value they inherit:
        // they must not end up nicer still.
        let (worker, blocking) = runtime.block_on(async {
            tokio::spawn(async {
                let blocking = tokio::task::spawn_blocking(niceness).await.expect("task");
                (niceness(), blocking)
            })
            .await
            .expect("task")
        });
        let expected = (server + WATCH_NICENESS).min(19);
        assert_eq!((worker, blocking), (expected, expected));
        runtime.shutdown_background();
    }
}
