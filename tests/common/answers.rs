//! Whether an answer is one kube-apiserver or kube-scheduler can use, judged against the
//! request it answers: the oracle of the fuzz (tests/robustness.rs), the adversarial
//! tests and the soak (examples/soak.rs). It reads the wire formats on its own, without
//! volguard's types, so that it cannot share their mistakes.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

/// The endpoints that take a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The admission webhook.
    Mutate,
    /// The extender's filter.
    Filter,
    /// The extender's prioritize.
    Prioritize,
}

impl Endpoint {
    /// Every endpoint, in the order reports list them.
    pub const ALL: [Endpoint; 3] = [Endpoint::Mutate, Endpoint::Filter, Endpoint::Prioritize];

    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Mutate => "/mutate",
            Endpoint::Filter => "/filter",
            Endpoint::Prioritize => "/prioritize",
        }
    }
}

/// A filter answer split into its parts.
#[derive(Debug)]
pub struct Filtered {
    /// Passing nodes by name, in answer order.
    pub passing: Vec<String>,
    /// `FailedNodes`: reasons by node.
    pub failed: BTreeMap<String, String>,
    /// `FailedAndUnresolvableNodes`: reasons by node.
    pub unresolvable: BTreeMap<String, String>,
    /// `Error`: non-empty when volguard could not judge at all.
    pub error: String,
}

/// A checked answer.
#[derive(Debug)]
pub enum Answer {
    /// 200 from /mutate: the AdmissionReview's `response`.
    Review(Value),
    /// 200 from /filter.
    Filter(Filtered),
    /// 200 from /prioritize: (host, score) in answer order.
    Priorities(Vec<(String, i64)>),
    /// A 4xx with its one-line reason.
    Refused(u16, String),
}

/// Checks the answer `endpoint` gave to `request`: a 4xx with a one-line reason (or a
/// 503 from `/prioritize`, whose errors the scheduler ignores, when volguard cannot
/// judge yet), or a 200 whose body is a well-formed answer to that very request. Anything else (5xx,
/// malformed bodies, names that were not asked, a patch that does not apply) is an
/// `Err` saying what is wrong.
pub fn check(
    endpoint: Endpoint,
    request: &[u8],
    status: u16,
    body: &[u8],
) -> Result<Answer, String> {
    match status {
        200 => match endpoint {
            Endpoint::Mutate => review(request, body).map(Answer::Review),
            Endpoint::Filter => filter(request, body).map(Answer::Filter),
            Endpoint::Prioritize => priorities(request, body).map(Answer::Priorities),
        },
        400..=499 | 503 if status != 503 || matches!(endpoint, Endpoint::Prioritize) => {
            let text = String::from_utf8_lossy(body);
            let line = text.trim_end();
            if line.is_empty() || line.contains('\n') {
                return Err(format!("HTTP {status} without a one-line reason: {text:?}"));
            }
            Ok(Answer::Refused(status, line.to_owned()))
        }
        _ => Err(format!("HTTP {status}: {}", excerpt(body))),
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// A 200 from /mutate: the v1 envelope, the request's uid, `allowed`, a denial's
/// message, string warnings, and a base64 JSONPatch that applies to the request's
/// object when that is a JSON object. Returns the `response`.
pub fn review(request: &[u8], body: &[u8]) -> Result<Value, String> {
    // serde_json does not check the UTF-8 of strings it skips (fields nobody reads):
    // such a body is answered, so read it the same way.
    let sent: Value = serde_json::from_str(&String::from_utf8_lossy(request))
        .map_err(|e| format!("200 to a request that is not JSON ({e})"))?;
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| format!("answer is not JSON ({e}): {}", excerpt(body)))?;
    ensure(
        answer["apiVersion"] == "admission.k8s.io/v1" && answer["kind"] == "AdmissionReview",
        || format!("not an admission.k8s.io/v1 AdmissionReview: {answer}"),
    )?;
    let response = &answer["response"];
    let uid = &sent["request"]["uid"];
    ensure(uid.is_string() && response["uid"] == *uid, || {
        format!("response uid {} for request uid {uid}", response["uid"])
    })?;
    let allowed = response["allowed"]
        .as_bool()
        .ok_or_else(|| format!("allowed is not a boolean: {response}"))?;
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        ensure(!message.is_empty(), || {
            format!("a denial without a message: {response}")
        })?;
    }
    if let Some(warnings) = response.get("warnings") {
        let strings = warnings
            .as_array()
            .is_some_and(|w| w.iter().all(Value::is_string));
        ensure(strings, || format!("warnings are not strings: {warnings}"))?;
    }
    match response.get("patch") {
        None => ensure(response.get("patchType").is_none(), || {
            format!("patchType without a patch: {response}")
        })?,
        Some(patch) => {
            ensure(response["patchType"] == "JSONPatch", || {
                format!("patch without patchType JSONPatch: {response}")
            })?;
            let text = patch
                .as_str()
                .ok_or_else(|| format!("patch is not a string: {patch}"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("patch is not base64 ({e}): {text}"))?;
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "patch is not a JSONPatch ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?;
            let object = &sent["request"]["object"];
            if object.is_object() {
                let mut patched = object.clone();
                json_patch::patch(&mut patched, &patch)
                    .map_err(|e| format!("patch does not apply to the object ({e}): {patch}"))?;
            }
        }
    }
    Ok(response.clone())
}

/// The candidates of an ExtenderArgs, read the way kube-scheduler writes them: names
/// when `NodeNames` is set, else the names of the `Nodes` items with their raw text.
#[derive(Deserialize)]
struct Args<'a> {
    #[serde(rename = "NodeNames", default)]
    node_names: Option<Vec<String>>,
    #[serde(rename = "Nodes", borrow, default)]
    nodes: Option<Items<'a>>,
}

#[derive(Deserialize)]
struct Items<'a> {
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Named {
    metadata: Meta,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
}

fn name_of(item: &RawValue) -> Result<String, String> {
    serde_json::from_str::<Named>(item.get())
        .map(|n| n.metadata.name)
        .map_err(|e| format!("a node item without a name ({e})"))
}

/// What a request asked about: names in order, and by name the first raw item sent
/// (`Nodes` mode only).
struct Asked<'a> {
    names: Vec<String>,
    items: Option<BTreeMap<String, &'a RawValue>>,
}

fn asked(request: &[u8]) -> Result<Asked<'_>, String> {
    let args: Args = serde_json::from_slice(request)
        .map_err(|e| format!("200 to a request whose candidates cannot be read ({e})"))?;
    match (args.node_names, args.nodes) {
        (Some(names), _) => Ok(Asked { names, items: None }),
        (None, Some(list)) => {
            let mut names = Vec::with_capacity(list.items.len());
            let mut items = BTreeMap::new();
            for item in list.items {
                let name = name_of(item)?;
                items.entry(name.clone()).or_insert(item);
                names.push(name);
            }
            Ok(Asked {
                names,
                items: Some(items),
            })
        }
        (None, None) => Err("200 to a request without candidates".into()),
    }
}

fn part<'a, T: Deserialize<'a>>(
    parts: &BTreeMap<String, &'a RawValue>,
    key: &str,
) -> Result<T, String> {
    let raw = parts
        .get(key)
        .ok_or_else(|| format!("no {key} in the answer"))?;
    serde_json::from_str(raw.get()).map_err(|e| format!("{key} is malformed ({e}): {raw}"))
}

/// A 200 from /filter: exactly the Go field names; an `Error` answer carries no verdict;
/// otherwise the answer is in the request's mode, every distinct asked node is answered
/// exactly once (passing, failed or unresolvable), nothing else is, reasons are single
/// non-empty lines, and passing `Nodes` items are echoed byte for byte.
pub fn filter(request: &[u8], body: &[u8]) -> Result<Filtered, String> {
    let asked = asked(request)?;
    let parts: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| format!("answer is not a JSON object ({e}): {}", excerpt(body)))?;
    let keys: Vec<&str> = parts.keys().map(String::as_str).collect();
    ensure(
        keys == [
            "Error",
            "FailedAndUnresolvableNodes",
            "FailedNodes",
            "NodeNames",
            "Nodes",
        ],
        || format!("not the ExtenderFilterResult keys: {keys:?}"),
    )?;
    let error: String = part(&parts, "Error")?;
    let failed: BTreeMap<String, String> = part(&parts, "FailedNodes")?;
    let unresolvable: BTreeMap<String, String> = part(&parts, "FailedAndUnresolvableNodes")?;
    let names: Option<Vec<String>> = part(&parts, "NodeNames")?;
    let nodes: Option<Items> = part(&parts, "Nodes")?;
    if !error.is_empty() {
        ensure(
            names.is_none() && nodes.is_none() && failed.is_empty() && unresolvable.is_empty(),
            || format!("an Error answer with a verdict: {}", excerpt(body)),
        )?;
        return Ok(Filtered {
            passing: Vec::new(),
            failed,
            unresolvable,
            error,
        });
    }
    let passing = match (&asked.items, names, nodes) {
        (None, Some(names), None) => names,
        (Some(sent), None, Some(list)) => {
            let mut names = Vec::with_capacity(list.items.len());
            for item in list.items {
                let name = name_of(item)?;
                let original = sent
                    .get(&name)
                    .ok_or_else(|| format!("node {name:?} returned but not asked"))?;
                ensure(original.get() == item.get(), || {
                    format!("node {name:?} not echoed unchanged")
                })?;
                names.push(name);
            }
            names
        }
        _ => {
            return Err(format!(
                "answer not in the request's mode: {}",
                excerpt(body)
            ));
        }
    };
    for (node, reason) in failed.iter().chain(&unresolvable) {
        ensure(!reason.trim().is_empty() && !reason.contains('\n'), || {
            format!("reason for {node:?} is not one line: {reason:?}")
        })?;
    }
    let answered = passing
        .iter()
        .chain(failed.keys())
        .chain(unresolvable.keys());
    exactly_the_asked(&asked.names, answered)?;
    Ok(Filtered {
        passing,
        failed,
        unresolvable,
        error,
    })
}

/// Every distinct asked name is answered once, and nothing else is.
fn exactly_the_asked<'a>(
    asked: &[String],
    answered: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    let want: HashSet<&str> = asked.iter().map(String::as_str).collect();
    let mut seen = HashSet::with_capacity(want.len());
    for name in answered {
        ensure(want.contains(name.as_str()), || {
            format!("node {name:?} answered but not asked")
        })?;
        ensure(seen.insert(name.as_str()), || {
            format!("node {name:?} answered twice")
        })?;
    }
    ensure(seen.len() == want.len(), || {
        let missing: Vec<&&str> = want.difference(&seen).take(5).collect();
        format!("asked nodes left unanswered, e.g. {missing:?}")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPriority {
    #[serde(rename = "Host")]
    host: String,
    #[serde(rename = "Score")]
    score: i64,
}

/// A 200 from /prioritize: a list of `{Host, Score}` with integer scores in 0..=10,
/// every distinct asked node exactly once and no other.
pub fn priorities(request: &[u8], body: &[u8]) -> Result<Vec<(String, i64)>, String> {
    let asked = asked(request)?;
    let list: Vec<HostPriority> = serde_json::from_slice(body)
        .map_err(|e| format!("not a HostPriorityList ({e}): {}", excerpt(body)))?;
    for p in &list {
        ensure((0..=10).contains(&p.score), || {
            format!("score {} for {:?} is outside 0..=10", p.score, p.host)
        })?;
    }
    exactly_the_asked(&asked.names, list.iter().map(|p| &p.host))?;
    Ok(list.into_iter().map(|p| (p.host, p.score)).collect())
}
