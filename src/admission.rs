//! The admission adapter: AdmissionReview JSON in, AdmissionReview JSON out, around the
//! pure resolve + mutate core. It decides what counts as bad input (HTTP 400) and what
//! counts as volguard's own trouble (allow with a warning, or deny by config).

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde_json::Value;

use crate::{
    cluster::ClusterState,
    config::{Config, OnError},
    mutate::{Mutation, mutate},
    resolve::{ResolveError, resolve},
};

/// The body is not an AdmissionReview volguard can answer: HTTP 400 with this line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Decodes an AdmissionReview body, insisting on `admission.k8s.io/v1` with a request.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    if body.is_empty() {
        return Err(BadReview(
            "empty body: expected an admission.k8s.io/v1 AdmissionReview".into(),
        ));
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("not an AdmissionReview: {e}")))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion {:?}, kind {:?}",
            review.types.api_version, review.types.kind
        )));
    }
    review
        .try_into()
        .map_err(|_| BadReview("AdmissionReview has no request".into()))
}

/// What the webhook decided for one request.
#[derive(Debug)]
pub enum Decision {
    /// Not a pod CREATE, opted out, or nothing managed: allowed as is.
    Untouched,
    /// Allowed with a patch (possibly empty) and warnings about the pod's own annotations.
    Mutated {
        /// The computed mutation.
        mutation: Mutation,
        /// Problems in what the user wrote.
        warnings: Vec<String>,
    },
    /// volguard could not do its job for this pod.
    Trouble(String),
}

/// The pod a request is about, when volguard should look at it at all.
pub fn pod_of(
    req: &AdmissionRequest<DynamicObject>,
    config: &Config,
) -> Result<Option<(Value, Pod)>, String> {
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let sub = req.sub_resource.as_deref().unwrap_or_default();
    if !is_pod || req.operation != Operation::Create || !sub.is_empty() {
        return Ok(None);
    }
    let Some(object) = &req.object else {
        return Ok(None);
    };
    let raw = serde_json::to_value(object).map_err(|e| format!("cannot re-encode the pod: {e}"))?;
    let pod: Pod = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the object is not a valid Pod: {e}"))?;
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&config.annotation("inject")))
        .is_some_and(|v| v.trim() == "false");
    Ok((!opted_out).then_some((raw, pod)))
}

/// Runs resolve + mutate for a pod against the state.
pub fn decide(
    raw: &Value,
    pod: &Pod,
    namespace: &str,
    state: &ClusterState,
    config: &Config,
) -> Result<Decision, ResolveError> {
    let resolution = resolve(pod, namespace, state, config)?;
    if resolution.volumes.is_empty() && resolution.warnings.is_empty() {
        return Ok(Decision::Untouched);
    }
    let mutation = mutate(raw, pod, &resolution, config, state.drivers());
    Ok(Decision::Mutated {
        mutation,
        warnings: resolution.warnings,
    })
}

/// The namespace of the pod under review: its own, else the request's.
pub fn namespace_of(req: &AdmissionRequest<DynamicObject>, pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| req.namespace.clone())
        .unwrap_or_else(|| "default".into())
}

/// Builds the AdmissionReview answer for a decision, as JSON with the patch in base64.
pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    decision: Decision,
    config: &Config,
) -> Value {
    let review = serde_json::to_value(review_for(req, decision, config)).unwrap_or_else(|e| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": req.uid, "allowed": true, "warnings": [format!("volguard: cannot encode the answer: {e}")]},
        })
    });
    base64_patch(review)
}

/// kube-core serializes `patch` as an array of numbers (kube-rs issue 1781); the
/// documented wire format for `[]byte` is a base64 string, so volguard sends that.
fn base64_patch(mut review: Value) -> Value {
    use base64::Engine;
    if let Some(patch) = review.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array()
    {
        let raw: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect();
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    review
}

fn review_for(
    req: &AdmissionRequest<DynamicObject>,
    decision: Decision,
    config: &Config,
) -> AdmissionReview<DynamicObject> {
    let base = AdmissionResponse::from(req);
    let response = match decision {
        Decision::Untouched => base,
        Decision::Mutated { mutation, warnings } => {
            let mut r = if mutation.patch.0.is_empty() {
                base
            } else {
                match base.clone().with_patch(mutation.patch) {
                    Ok(r) => r,
                    Err(e) => {
                        return review_for(
                            req,
                            Decision::Trouble(format!("cannot encode the patch: {e}")),
                            config,
                        );
                    }
                }
            };
            if !warnings.is_empty() {
                r.warnings = Some(
                    warnings
                        .into_iter()
                        .map(|w| format!("volguard: {w}"))
                        .collect(),
                );
            }
            r
        }
        Decision::Trouble(why) => match config.on_error {
            OnError::Deny => base.deny(format!(
                "volguard could not check this pod's volumes: {why}"
            )),
            OnError::Allow => {
                let mut r = base;
                r.warnings = Some(vec![format!("volguard: pod admitted unchanged: {why}")]);
                r
            }
        },
    };
    response.into_review()
}
