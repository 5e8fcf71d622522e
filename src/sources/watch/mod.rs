//! Live cluster state from the Kubernetes API: one reflector-style watcher per cached
//! kind (list, then watch from the list's resourceVersion, relist on 410 Gone, backoff
//! on errors) feeds the same indexed [`ClusterState`](crate::cluster::ClusterState) a
//! snapshot fills. Failures are logged, counted and turn readiness off once they outlast
//! the grace period; they never stop the server.

mod client;
mod direct_get;
mod feed;
mod kinds;
mod recovery;

use std::{
    pin::pin,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::{CSIDriver, CSINode, StorageClass, VolumeAttachment},
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::task::JoinSet;

pub use client::{client, kube_config};
pub use direct_get::{DIRECT_GET_TIMEOUT, fetch_missing};
pub use feed::Feed;
pub use kinds::{Watched, collection_path};

use crate::cluster::{Kind, SharedState};

/// Most events applied under one write lock: a list page at a time, so readers wait
/// at most a fraction of a millisecond while a large kind is listed.
const BATCH: usize = 500;

/// Starts one watcher per kind on the current runtime; dropping the set stops them.
pub fn spawn(client: Client, state: SharedState) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for kind in Kind::ALL {
        let (client, state) = (client.clone(), state.clone());
        match kind {
            Kind::Node => set.spawn(run::<Node>(client, state)),
            Kind::CsiNode => set.spawn(run::<CSINode>(client, state)),
            Kind::PersistentVolume => set.spawn(run::<PersistentVolume>(client, state)),
            Kind::PersistentVolumeClaim => set.spawn(run::<PersistentVolumeClaim>(client, state)),
            Kind::Pod => set.spawn(run::<Pod>(client, state)),
            Kind::VolumeAttachment => set.spawn(run::<VolumeAttachment>(client, state)),
            Kind::StorageClass => set.spawn(run::<StorageClass>(client, state)),
            Kind::CsiDriver => set.spawn(run::<CSIDriver>(client, state)),
        };
    }
    set
}

/// Lists every kind once into `state`, through the watchers' own path, for one-shot
/// commands against a live cluster (`explain`, `nodes`); the watchers stop on return.
/// The error names the kinds not listed within `timeout`, with their last error.
pub async fn list_once(
    client: Client,
    state: SharedState,
    timeout: Duration,
) -> Result<(), String> {
    let _watchers = spawn(client, state.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<String> = {
            let state = state
                .read()
                .map_err(|_| "cluster state lock poisoned".to_owned())?;
            state
                .unsynced()
                .into_iter()
                .map(|kind| match state.readiness().watch(kind).last_error {
                    Some(e) => format!("{} ({e})", kind.as_str()),
                    None => kind.as_str().to_owned(),
                })
                .collect()
        };
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

/// Watches one kind for as long as the process runs. The watcher recovers by itself
/// (rewatch, or relist after 410 Gone) with exponential backoff between failures.
/// Lists use the defaults on purpose: pages of 500 bound the full objects alive at once
/// (each is slimmed into a record on apply and dropped), and most-recent semantics keep
/// a relist from going back in time after a disconnect.
async fn run<K: Watched>(client: Client, state: SharedState) {
    let kind = K::KIND;
    let mut feed = Feed::new(kind);
    let events = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .ready_chunks(BATCH);
    let mut events = pin!(events);
    while let Some(batch) = events.next().await {
        let mut errors = Vec::new();
        {
            let Ok(mut state) = state.write() else {
                tracing::error!(
                    kind = kind.as_str(),
                    "cluster state lock poisoned; watch stopped"
                );
                return;
            };
            for item in batch {
                match item {
                    Ok(event) => feed.handle(&mut state, convert(event)),
                    Err(e) => {
                        let e = e.to_string();
                        state
                            .readiness_mut()
                            .watch_failed(kind, e.clone(), Instant::now());
                        errors.push(e);
                    }
                }
            }
        }
        for e in errors {
            tracing::warn!(kind = kind.as_str(), "watch failed, retrying: {e}");
        }
    }
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
