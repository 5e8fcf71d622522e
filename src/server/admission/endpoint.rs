//! `POST /mutate`: the AdmissionReview in, the decision against the cached state
//! (with one direct GET for what the cache has not seen yet), the answer out.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use std::sync::{LockResult, RwLockReadGuard, TryLockError};

use tokio::runtime::Handle;

use super::wire;
use crate::{
    cluster::{ClusterState, missing::Missing},
    decide::{
        resolve::resolve,
        webhook::{Decision, finish},
    },
    model::podview::PodView,
    server::{app::App, pool::Ticket, reply::bad_request},
    sources::watch,
};

/// Largest AdmissionReview accepted: the apiserver caps objects far below this.
pub const MUTATE_BODY_LIMIT: usize = 8 << 20;

/// Reviews up to this size are answered on the async worker when the cluster state is
/// free at once and holds everything the pod needs: a few KiB take ~15 µs, less than a
/// hand-off to the blocking pool and back costs.
const INLINE_REVIEW_LIMIT: usize = 64 << 10;

/// The `/mutate` handler. Reading the review, deciding and encoding the answer are CPU
/// work that grows with the pod (an 8 MiB review, 10,000 volumes), and deciding may wait
/// for the cluster state while a watch writes to it, or for a direct GET: a large
/// review, or one that would wait, runs on a blocking thread, so the async workers keep
/// serving every other request meanwhile.
/// The blocking thread holds the request's ticket (its slot and body bytes) until done.
pub async fn mutate(
    State(app): State<App>,
    ticket: Option<Extension<Ticket>>,
    body: Bytes,
) -> Response {
    if body.len() <= INLINE_REVIEW_LIMIT
        && let Some(response) = answer(&app, &body, |pod, namespace| {
            decide_now(&app, pod, namespace)
        })
    {
        return response;
    }
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || {
        let _ticket = ticket;
        answer(&app, &body, |pod, namespace| {
            Some(decide_with_lookups(&app, pod, namespace, &runtime))
        })
        .unwrap_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook: no decision after waiting for the cluster state\n",
            )
                .into_response()
        })
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("webhook task failed: {e}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("webhook task failed: {e}\n"),
        )
            .into_response()
    })
}

/// The whole answer to one review, with the pod's decision from `decide`; `None` when
/// `decide` cannot decide without waiting.
fn answer(
    app: &App,
    body: &[u8],
    decide: impl FnOnce(&PodView, &str) -> Option<Decision>,
) -> Option<Response> {
    let req = match wire::parse_review(body) {
        Ok(r) => r,
        Err(e) => return Some(bad_request(e)),
    };
    let decision = match wire::pod_of(&req, &app.config) {
        Ok(None) => Decision::Untouched,
        Err(why) => Decision::Trouble(why),
        Ok(Some(pod)) => {
            let namespace = wire::namespace_of(&req, &pod);
            decide(&pod, &namespace)?
        }
    };
    match &decision {
        Decision::Trouble(why) => {
            tracing::warn!(uid = %req.uid, namespace = ?req.namespace, name = ?req.name, "webhook trouble: {why}");
        }
        Decision::Mutated { mutation, .. } if !mutation.patch.0.is_empty() => {
            app.metrics.pod_mutated(&mutation.drivers);
        }
        _ => {}
    }
    Some(Json(wire::respond(&req, decision, &app.config)).into_response())
}

/// Decides from one look at the state, held only while the pod's volumes are looked
/// up (the patch is built after): the decision, or what the cache lacks. The state's
/// readiness matters only for a pod with claims: every other pod is decided from its
/// spec, so a cache that is not synced or stale neither warns about nor (with
/// `onError: deny`) refuses a pod it has nothing to say about. The warning names the
/// stale watches, not their errors, which can carry the API server's address and are
/// in the log.
fn decide_from(
    state: RwLockReadGuard<'_, ClusterState>,
    app: &App,
    pod: &PodView,
    namespace: &str,
) -> Result<Decision, Missing> {
    if pod.uses_claims()
        && let Some(why) = state.readiness().problem_without_causes()
    {
        return Ok(Decision::Trouble(why));
    }
    let resolved = resolve(pod, namespace, &state, &app.config);
    let drivers = state.shared_drivers();
    drop(state);
    resolved.map(|resolution| finish(pod, resolution, &app.config, &drivers))
}

/// Why a pod with claims gets no decision once a writer has panicked.
const UNAVAILABLE: &str = "cluster state is unavailable";

/// The state for deciding `pod`. Once a writer has panicked while holding it (the lock
/// is poisoned), a pod without claims is still decided: from its spec and the driver
/// table, which never changes, so that `onError: deny` does not refuse every pod.
fn usable<'a>(
    locked: LockResult<RwLockReadGuard<'a, ClusterState>>,
    pod: &PodView,
) -> Option<RwLockReadGuard<'a, ClusterState>> {
    match locked {
        Ok(state) => Some(state),
        Err(poisoned) if !pod.uses_claims() => Some(poisoned.into_inner()),
        Err(_) => None,
    }
}

/// The decision if it needs no waiting: the state's lock is free and, when watching the
/// API, the cache holds every claim and PV of the pod.
fn decide_now(app: &App, pod: &PodView, namespace: &str) -> Option<Decision> {
    let state = match app.cluster.try_read() {
        Ok(state) => state,
        Err(TryLockError::WouldBlock) => return None,
        Err(TryLockError::Poisoned(poisoned)) => match usable(Err(poisoned), pod) {
            Some(state) => state,
            None => return Some(Decision::Trouble(UNAVAILABLE.into())),
        },
    };
    match decide_from(state, app, pod, namespace) {
        Ok(decision) => Some(decision),
        Err(miss) if app.api.is_none() => Some(Decision::Trouble(miss.to_string())),
        Err(_) => None,
    }
}

/// Decides against the cached state, waiting for its lock. A claim or PV missing from
/// the cache is fetched once with a direct GET (when watching the API) before it becomes
/// a warning.
fn decide_with_lookups(app: &App, pod: &PodView, namespace: &str, runtime: &Handle) -> Decision {
    let deadline = tokio::time::Instant::now() + watch::DIRECT_GET_TIMEOUT;
    let mut fetched = Vec::new();
    loop {
        let Some(state) = usable(app.cluster.read(), pod) else {
            return Decision::Trouble(UNAVAILABLE.into());
        };
        let miss = match decide_from(state, app, pod, namespace) {
            Ok(decision) => return decision,
            Err(miss) => miss,
        };
        let Some(client) = &app.api else {
            return Decision::Trouble(miss.to_string());
        };
        if fetched.contains(&miss) {
            return Decision::Trouble(format!("{miss} (gone again after a direct GET)"));
        }
        let fetch = app.direct_gets.fetch(client, &miss, &app.cluster, deadline);
        let (outcome, fetched_or_not) = runtime.block_on(fetch);
        app.metrics.direct_get(outcome.as_str());
        if let Err(why) = fetched_or_not {
            return Decision::Trouble(format!("{miss} (direct GET: {why})"));
        }
        fetched.push(miss);
    }
}
