//! `volguard explain`: what the webhook and the extender do with one pod, over a
//! snapshot (a what-if before creating it) or the live cluster (why is it Pending?). It
//! runs the webhook's decision and the extender's judge, so an operator sees the patch
//! and, per node, the verdict, the reason the scheduler is given with that node's
//! numbers, and the score.

use std::{collections::BTreeMap, path::Path, process::ExitCode};

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::{
    cluster::ClusterState,
    cmd::{
        failure::Failure,
        report,
        state::{self, Live, StateArgs},
    },
    decide::{
        judge::{self, Judge, Judgement, Slots, Verdict},
        remediate,
        resolve::{Resolution, resolve},
        routing::{DEFAULT_SCHEDULER, Route, route},
        webhook::{Decision, decide},
    },
    model::{
        config::{Config, OnError},
        podview::PodView,
    },
    sources::snapshot,
};

/// What the table's verdicts, scores and columns mean, printed under it (not in JSON).
pub const LEGEND: &str = "\
legend:
  pass          the extender keeps the node
  unresolvable  turned away; preemption cannot help (every rule, the attach limit included)
  fail          turned away; the scheduler may try preemption there (a node not in volguard's state yet)
  SCORE         0-10, as /prioritize gives it: 10 = the node holds every managed volume of the pod;
                else 1 + 8 * free / limit after placing the pod, on the tightest driver (9 = no limit);
                0 = turned away
  SLOTS         per driver of the pod: volumes attached to or in use on the node / its attach limit
  REASON        what kube-scheduler is told (it prints it after a node count), then this node's numbers
";

/// Above this many nodes, the table shows a summary and the best candidates only.
const FULL_TABLE_UP_TO: usize = 20;
/// Candidates shown after the summary.
const BEST: usize = 10;

/// Flags of `volguard explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Where the cluster state comes from.
    #[command(flatten)]
    pub state: StateArgs,
    /// The pod: a YAML or JSON file with --snapshot; NAMESPACE/NAME, or NAME in the
    /// kubeconfig context's namespace, in the live cluster.
    #[arg(long, env = "VOLGUARD_POD")]
    pub pod: String,
    /// Print every node, not a summary and the best candidates, on large clusters.
    #[arg(long, env = "VOLGUARD_ALL_NODES")]
    pub all_nodes: bool,
    /// Report format.
    #[arg(long, env = "VOLGUARD_OUTPUT", value_enum, default_value_t = ExplainOutput::Table)]
    pub output: ExplainOutput,
}

/// Report format of `volguard explain` and `volguard nodes`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExplainOutput {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// What the webhook would answer for the pod.
#[derive(Debug)]
enum Webhook {
    /// Allowed with this patch (possibly empty) and these warnings.
    Allowed {
        patch: Vec<Value>,
        warnings: Vec<String>,
    },
    /// Denied (`onError: deny` and volguard's own trouble).
    Denied(String),
}

/// One row of the report.
#[derive(Debug)]
struct Row {
    node: String,
    judgement: Judgement,
    slots: Vec<Slots>,
}

/// Runs `volguard explain`: exit 0 when some node fits (or the extender is not asked
/// about the pod), 1 when none does, 2 for bad input.
pub fn run(args: &ExplainArgs) -> Result<ExitCode, Failure> {
    let loaded = state::load(&args.state)?;
    let (state, config) = (&loaded.state, &*loaded.config);
    let (pod, admitted) = match &loaded.live {
        None => (read_pod(Path::new(&args.pod))?, false),
        Some(live) => (get_pod(live, &args.pod)?, true),
    };
    let namespace = pod.namespace().unwrap_or("default").to_owned();
    let name = format!("{namespace}/{}", pod.name());
    // A pod already in the cluster went through the webhook when it was created.
    let webhook = (!admitted).then(|| webhook(&pod, &namespace, state, config));
    let resolution = resolve(&pod, &namespace, state, config);
    if let Some(why) = resolution
        .as_ref()
        .ok()
        .and_then(|r| not_for_extender(&pod, r, config, admitted))
    {
        let text = match args.output {
            ExplainOutput::Table => {
                let mut out = webhook_text(&name, webhook.as_ref());
                out.push_str(&format!("extender: not asked about {name}: {why}\n"));
                out.push_str(&remediation_text(&name, state, config));
                out
            }
            ExplainOutput::Json => json_text(&json!({
                "pod": name, "webhook": webhook.as_ref().map(webhook_json),
                "extender": {"asked": false, "why": why},
            })),
        };
        report::print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let judge = Judge::new(resolution.as_ref(), state, config);
    let pod_drivers: Vec<String> = resolution
        .as_ref()
        .map(|r| {
            r.volumes
                .iter()
                .map(|m| state.drivers().get(m.driver).name.clone())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Row> = state
        .node_names()
        .into_iter()
        .map(|n| Row {
            node: n.to_owned(),
            judgement: judge.judge(n),
            slots: judge::slots(state, n)
                .into_iter()
                .filter(|s| pod_drivers.contains(&s.driver))
                .collect(),
        })
        .collect();
    let fits = rows.iter().any(|r| r.judgement.passes());
    let text = match args.output {
        ExplainOutput::Table => {
            let mut out = table(&name, webhook.as_ref(), &rows, args.all_nodes);
            out.push_str(&remediation_text(&name, state, config));
            out.push('\n');
            out.push_str(LEGEND);
            out
        }
        ExplainOutput::Json => json_report(&name, webhook.as_ref(), &rows, fits),
    };
    report::print(&text)?;
    Ok(if fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `remediation: ...` when the pod's node advertises its device-plugin volume below 1:
/// where the volume is and what remediation does about it.
fn remediation_text(pod: &str, state: &ClusterState, config: &Config) -> String {
    remediate::survey(state, &config.remediation)
        .detached
        .iter()
        .filter(|(d, _)| d.pod == pod)
        .map(|(d, skip)| {
            format!(
                "remediation: {}\n",
                remediate::status_line(d, *skip, config)
            )
        })
        .collect()
}

/// Why kube-scheduler would never send this pod to volguard's extender, if so.
fn not_for_extender(
    pod: &PodView,
    resolution: &Resolution,
    config: &Config,
    admitted: bool,
) -> Option<String> {
    if pod.opts_out(&config.annotation("inject")) {
        return Some(format!(
            "it opts out ({}: \"false\")",
            config.annotation("inject")
        ));
    }
    if resolution.volumes.is_empty() {
        return Some("it has no volume of a configured driver".into());
    }
    let scheduler = match route(pod, config) {
        Route::Bound(node) => {
            return Some(format!(
                "it is bound to node {node} (spec.nodeName), so no scheduler places it"
            ));
        }
        // A pod in the cluster went through the webhook already: its scheduler is final.
        _ if admitted => pod.scheduler_name().unwrap_or(DEFAULT_SCHEDULER),
        Route::Kept(s)
        | Route::Already(s)
        | Route::Routed(s)
        | Route::Elsewhere { named: s, .. } => s,
    };
    if let Some(target) = &config.scheduling.scheduler_name
        && scheduler != target
    {
        return Some(format!(
            "it is scheduled by {scheduler}, not {target} (scheduling.schedulerName), which consults volguard"
        ));
    }
    let marker = &config.marker_resource;
    if admitted && !marker.is_empty() && !pod.containers().iter().any(|c| c.claims(marker)) {
        return Some(format!(
            "it carries no {marker} marker resource (created before volguard's webhook, or not sent to it), so the scheduler does not send it"
        ));
    }
    None
}

/// Reads the pod file (YAML or JSON, one Pod document).
fn read_pod(path: &Path) -> Result<PodView, Failure> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("{file}: cannot read: {e}")))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let mut docs = snapshot::parse_documents(&text, json)
        .map_err(|e| Failure::usage(format!("{file}: {e}")))?;
    if docs.len() != 1 {
        return Err(Failure::usage(format!(
            "{file}: expected one Pod, found {} documents",
            docs.len()
        )));
    }
    let raw = docs.remove(0);
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "Pod" {
        return Err(Failure::usage(format!(
            "{file}: expected kind Pod, found {kind:?}"
        )));
    }
    serde_json::from_value(raw).map_err(|e| Failure::usage(format!("{file}: not a valid Pod: {e}")))
}

/// GETs `NAMESPACE/NAME` from the live cluster.
fn get_pod(live: &Live, pod: &str) -> Result<PodView, Failure> {
    let (namespace, name) = match pod.split_once('/') {
        None => (live.client.default_namespace(), pod),
        Some((namespace, name)) => (namespace, name),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(Failure::usage(format!(
            "--pod {pod:?}: in the live cluster give NAMESPACE/NAME or NAME (or pass --snapshot to read a pod file)"
        )));
    }
    let api = kube::Api::<Pod>::namespaced(live.client.clone(), namespace);
    let found = live
        .runtime
        .block_on(api.get_opt(name))
        .map_err(|e| Failure::runtime(format!("cannot read pod {namespace}/{name}: {e}")))?
        .ok_or_else(|| Failure::usage(format!("pod {namespace}/{name} not found")))?;
    Ok(PodView::from(found))
}

/// The webhook's answer, through the same decision the server makes.
fn webhook(pod: &PodView, namespace: &str, state: &ClusterState, config: &Config) -> Webhook {
    let decision =
        decide(pod, namespace, state, config).unwrap_or_else(|e| Decision::Trouble(e.to_string()));
    match decision {
        Decision::Untouched => Webhook::Allowed {
            patch: Vec::new(),
            warnings: Vec::new(),
        },
        Decision::Mutated { mutation, warnings } => Webhook::Allowed {
            patch: mutation
                .patch
                .0
                .iter()
                .map(|op| serde_json::to_value(op).unwrap_or(Value::Null))
                .collect(),
            warnings: warnings
                .into_iter()
                .map(|w| format!("volguard: {w}"))
                .collect(),
        },
        Decision::Trouble(why) => match config.on_error {
            OnError::Allow => Webhook::Allowed {
                patch: Vec::new(),
                warnings: vec![format!("volguard: pod admitted unchanged: {why}")],
            },
            OnError::Deny => Webhook::Denied(format!(
                "volguard could not check this pod's volumes: {why}"
            )),
        },
    }
}

fn verdict_word(j: &Judgement) -> &'static str {
    match j.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail { kind, .. } if kind.resolvable() => "fail",
        Verdict::Fail { .. } => "unresolvable",
    }
}

fn slots_text(slots: &[Slots]) -> String {
    if slots.is_empty() {
        return "-".into();
    }
    slots
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn webhook_text(pod: &str, webhook: Option<&Webhook>) -> String {
    let mut out = String::new();
    match webhook {
        None => {}
        Some(Webhook::Denied(why)) => out.push_str(&format!("webhook: denies {pod}: {why}\n\n")),
        Some(Webhook::Allowed { patch, warnings }) => {
            if patch.is_empty() {
                out.push_str(&format!("webhook: allows {pod} unchanged (empty patch)\n"));
            } else {
                let pretty = serde_json::to_string_pretty(patch).unwrap_or_default();
                out.push_str(&format!("webhook patch for {pod}:\n{pretty}\n"));
            }
            for w in warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            out.push('\n');
        }
    }
    out
}

fn table(pod: &str, webhook: Option<&Webhook>, rows: &[Row], all_nodes: bool) -> String {
    let mut out = webhook_text(pod, webhook);
    let shown: Vec<&Row> = if all_nodes || rows.len() <= FULL_TABLE_UP_TO {
        rows.iter().collect()
    } else {
        out.push_str(&summary(rows));
        let mut best: Vec<&Row> = rows.iter().filter(|r| r.judgement.passes()).collect();
        best.sort_by(|a, b| {
            b.judgement
                .score
                .cmp(&a.judgement.score)
                .then(a.node.cmp(&b.node))
        });
        best.truncate(BEST);
        out.push_str(&format!(
            "\nbest candidates ({} shown; --all-nodes for every node):\n",
            best.len()
        ));
        best
    };
    let header = ["NODE", "VERDICT", "SCORE", "SLOTS", "REASON"].map(str::to_owned);
    let cells: Vec<Vec<String>> = shown
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                verdict_word(&r.judgement).to_owned(),
                r.judgement.score.to_string(),
                slots_text(&r.slots),
                r.judgement.describe().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&report::columns(&header, &cells));
    if rows.is_empty() {
        out.push_str("(the cluster state holds no Node)\n");
    }
    out
}

/// `N/M nodes fit`, then the failing nodes grouped by the reason the scheduler is
/// given, most frequent first, as kube-scheduler's FailedScheduling event counts them.
fn summary(rows: &[Row]) -> String {
    let fit = rows.iter().filter(|r| r.judgement.passes()).count();
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        if let Verdict::Fail { reason, .. } = &r.judgement.verdict {
            *groups.entry(reason).or_default() += 1;
        }
    }
    let mut groups: Vec<(&str, usize)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = format!("{fit}/{} nodes fit\n", rows.len());
    for (reason, count) in groups {
        out.push_str(&format!("  {count} {reason}\n"));
    }
    out
}

fn json_text(report: &Value) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

fn webhook_json(webhook: &Webhook) -> Value {
    match webhook {
        Webhook::Allowed { patch, warnings } => {
            json!({"allowed": true, "patch": patch, "warnings": warnings})
        }
        Webhook::Denied(why) => json!({"allowed": false, "reason": why}),
    }
}

fn json_report(pod: &str, webhook: Option<&Webhook>, rows: &[Row], fits: bool) -> String {
    let webhook = webhook.map(webhook_json);
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| {
            let slots: Vec<Value> = r
                .slots
                .iter()
                .map(|s| {
                    json!({
                        "driver": s.driver,
                        "used": s.used,
                        "limit": s.limit.max,
                        "limitSource": s.limit.source.to_string(),
                    })
                })
                .collect();
            let (reason, detail) = match &r.judgement.verdict {
                Verdict::Pass => (None, None),
                Verdict::Fail { reason, detail, .. } => (
                    Some(reason.to_string()),
                    detail.as_ref().map(ToString::to_string),
                ),
            };
            json!({
                "node": r.node,
                "verdict": verdict_word(&r.judgement),
                "reason": reason,
                "detail": detail,
                "score": r.judgement.score,
                "slots": slots,
            })
        })
        .collect();
    json_text(&json!({
        "pod": pod, "webhook": webhook, "extender": {"asked": true}, "nodes": nodes, "fits": fits,
    }))
}
