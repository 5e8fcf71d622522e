//! `POST /mutate`: the AdmissionReview in, the decision against the cached state
//! (with one direct GET for what the cache has not seen yet), the answer out.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::runtime::Handle;

use super::wire;
use crate::{
    decide::{
        resolve::resolve,
        webhook::{Decision, finish},
    },
    model::podview::PodView,
    server::{app::App, reply::bad_request},
    sources::watch,
};

/// Largest AdmissionReview accepted: the apiserver caps objects far below this.
pub const MUTATE_BODY_LIMIT: usize = 8 << 20;

/// The `/mutate` handler. Reading the review, deciding and encoding the answer are CPU
/// work that grows with the pod (an 8 MiB review, 10,000 volumes), and deciding waits
/// for the cluster state while a watch writes to it: all of it runs on a blocking
/// thread, so the async workers keep serving every other request meanwhile.
pub async fn mutate(State(app): State<App>, body: Bytes) -> Response {
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || answer(&app, &body, &runtime))
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

/// The whole answer to one review, on a blocking thread.
fn answer(app: &App, body: &[u8], runtime: &Handle) -> Response {
    let req = match wire::parse_review(body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let decision = match wire::pod_of(&req, &app.config) {
        Ok(None) => Decision::Untouched,
        Err(why) => Decision::Trouble(why),
        Ok(Some(pod)) => {
            let namespace = wire::namespace_of(&req, &pod);
            decide_with_lookups(app, &pod, &namespace, runtime)
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
    Json(wire::respond(&req, decision, &app.config)).into_response()
}

/// Decides against the cached state, holding its lock only while the pod's volumes are
/// looked up; the patch is built after. A claim or PV missing from the cache is fetched
/// once with a direct GET (when watching the API) before it becomes a warning.
fn decide_with_lookups(app: &App, pod: &PodView, namespace: &str, runtime: &Handle) -> Decision {
    let deadline = tokio::time::Instant::now() + watch::DIRECT_GET_TIMEOUT;
    let mut fetched = Vec::new();
    loop {
        let (resolved, drivers) = match app.cluster.read() {
            Err(_) => return Decision::Trouble("cluster state is unavailable".into()),
            Ok(state) => {
                if let Some(why) = state.readiness().problem() {
                    return Decision::Trouble(why);
                }
                (
                    resolve(pod, namespace, &state, &app.config),
                    state.shared_drivers(),
                )
            }
        };
        let miss = match resolved {
            Ok(resolution) => return finish(pod, resolution, &app.config, &drivers),
            Err(miss) => miss,
        };
        let Some(client) = &app.api else {
            return Decision::Trouble(miss.to_string());
        };
        if fetched.contains(&miss) {
            return Decision::Trouble(format!("{miss} (gone again after a direct GET)"));
        }
        let fetch = watch::fetch_missing(client, &miss, &app.cluster, deadline);
        if let Err(why) = runtime.block_on(fetch) {
            return Decision::Trouble(format!("{miss} (direct GET: {why})"));
        }
        fetched.push(miss);
    }
}
