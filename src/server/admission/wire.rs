//! The admission wire format: AdmissionReview JSON in, AdmissionReview JSON out, around
//! the webhook's decision. It decides what counts as bad input (HTTP 400) and what
//! counts as volguard's own trouble (allow with a warning, or deny by config).
//!
//! The wire types are volguard's own, with only the fields it reads or writes: the
//! object is kept raw and decoded once into a [`PodView`], and the patch goes out as the
//! base64 string that `admission.k8s.io/v1` specifies for `[]byte`.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    decide::webhook::Decision,
    model::{
        config::{Config, OnError},
        json_shape,
        podview::PodView,
    },
};

/// The body is not an AdmissionReview volguard can answer: HTTP 400 with this line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(
        borrow,
        default,
        deserialize_with = "crate::model::json_shape::object_or_null"
    )]
    request: Option<Request<'a>>,
}

/// The parts of an `AdmissionRequest` volguard reads; the object stays raw JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    /// Echoed in the response.
    pub uid: String,
    /// The kind of the object under review.
    pub kind: GroupVersionKind,
    /// Set for subresource requests, which volguard leaves alone.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// The object's name; empty on a CREATE with generateName.
    #[serde(default)]
    pub name: Option<String>,
    /// The request's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    /// The object as the apiserver would store it.
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
}

/// `{group, version, kind}` of the reviewed object.
#[derive(Debug, Deserialize)]
pub struct GroupVersionKind {
    /// API group; empty for core.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// Decodes an AdmissionReview body, insisting on `admission.k8s.io/v1` with a request.
pub fn parse_review(body: &[u8]) -> Result<Request<'_>, BadReview> {
    if body.is_empty() {
        return Err(BadReview(
            "empty body: expected an admission.k8s.io/v1 AdmissionReview".into(),
        ));
    }
    if !json_shape::is_object(body) {
        return Err(BadReview(
            "not an AdmissionReview: expected a JSON object".into(),
        ));
    }
    let review: ReviewIn = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("not an AdmissionReview: {e}")))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion {:?}, kind {:?}",
            review.api_version, review.kind
        )));
    }
    review
        .request
        .ok_or_else(|| BadReview("AdmissionReview has no request".into()))
}

/// The pod a request is about, when volguard should look at it at all.
pub fn pod_of(req: &Request, config: &Config) -> Result<Option<PodView>, String> {
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let sub = req.sub_resource.as_deref().unwrap_or_default();
    if !is_pod || req.operation != "CREATE" || !sub.is_empty() {
        return Ok(None);
    }
    let Some(object) = req.object else {
        return Ok(None);
    };
    let pod: PodView = serde_json::from_str(object.get())
        .map_err(|e| format!("the object is not a valid Pod: {e}"))?;
    Ok((!pod.opts_out(&config.annotation("inject"))).then_some(pod))
}

/// The namespace of the pod under review: its own, else the request's.
pub fn namespace_of(req: &Request, pod: &PodView) -> String {
    pod.namespace()
        .or(req.namespace.as_deref())
        .unwrap_or("default")
        .to_owned()
}

/// The AdmissionReview answer volguard sends.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    api_version: &'static str,
    kind: &'static str,
    response: Response,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// Builds the AdmissionReview answer for a decision.
pub fn respond(req: &Request, decision: Decision, config: &Config) -> ReviewOut {
    let mut response = Response {
        uid: req.uid.clone(),
        allowed: true,
        status: None,
        patch: None,
        patch_type: None,
        warnings: Vec::new(),
    };
    match decision {
        Decision::Untouched => {}
        Decision::Mutated { mutation, warnings } => {
            if !mutation.patch.0.is_empty() {
                match serde_json::to_vec(&mutation.patch) {
                    Ok(bytes) => {
                        response.patch =
                            Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                        response.patch_type = Some("JSONPatch");
                    }
                    Err(e) => {
                        return respond(
                            req,
                            Decision::Trouble(format!("cannot encode the patch: {e}")),
                            config,
                        );
                    }
                }
            }
            response.warnings = warnings
                .into_iter()
                .map(|w| format!("volguard: {w}"))
                .collect();
        }
        Decision::Trouble(why) => match config.on_error {
            OnError::Deny => {
                response.allowed = false;
                response.status = Some(Status {
                    code: 403,
                    message: format!("volguard could not check this pod's volumes: {why}"),
                });
            }
            OnError::Allow => {
                response.warnings = vec![format!("volguard: pod admitted unchanged: {why}")];
            }
        },
    }
    ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response,
    }
}
