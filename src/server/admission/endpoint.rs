//! `POST /mutate`: the AdmissionReview in, the decision against the cached state
//! (with one direct GET for what the cache has not seen yet), the answer out.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};

use super::wire;
use crate::{
    decide::webhook::{Decision, decide},
    model::podview::PodView,
    server::{app::App, reply::bad_request},
    sources::watch,
};

/// Largest AdmissionReview accepted: the apiserver caps objects far below this.
pub const MUTATE_BODY_LIMIT: usize = 8 << 20;

/// The `/mutate` handler.
pub async fn mutate(State(app): State<App>, body: Bytes) -> Response {
    let req = match wire::parse_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let decision = match wire::pod_of(&req, &app.config) {
        Ok(None) => Decision::Untouched,
        Err(why) => Decision::Trouble(why),
        Ok(Some(pod)) => {
            let namespace = wire::namespace_of(&req, &pod);
            decide_with_lookups(&app, &pod, &namespace).await
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

/// Decides against the cached state; a claim or PV missing from the cache is fetched
/// once with a direct GET (when watching the API) before it becomes a warning.
async fn decide_with_lookups(app: &App, pod: &PodView, namespace: &str) -> Decision {
    let deadline = tokio::time::Instant::now() + watch::DIRECT_GET_TIMEOUT;
    let mut fetched = Vec::new();
    loop {
        let miss = match app.cluster.read() {
            Err(_) => return Decision::Trouble("cluster state is unavailable".into()),
            Ok(state) => {
                if let Some(why) = state.readiness().problem() {
                    return Decision::Trouble(why);
                }
                match decide(pod, namespace, &state, &app.config) {
                    Ok(decision) => return decision,
                    Err(miss) => miss,
                }
            }
        };
        let Some(client) = &app.api else {
            return Decision::Trouble(miss.to_string());
        };
        if fetched.contains(&miss) {
            return Decision::Trouble(format!("{miss} (gone again after a direct GET)"));
        }
        if let Err(why) = watch::fetch_missing(client, &miss, &app.cluster, deadline).await {
            return Decision::Trouble(format!("{miss} (direct GET: {why})"));
        }
        fetched.push(miss);
    }
}
