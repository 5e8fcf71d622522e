//! `volguard explain`: an offline what-if over a snapshot. It runs the webhook's
//! decision and the extender's judge on one pod, so an operator sees the patch and,
//! per node, the verdict, the exact reason and the score without a cluster.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::{
    cluster::{ClusterObject, ClusterState},
    cmd::failure::Failure,
    decide::{
        judge::{self, Judge, Judgement, Slots, Verdict},
        resolve::resolve,
        webhook::{Decision, decide},
    },
    model::{
        config::{Config, OnError},
        drivers::Drivers,
        podview::PodView,
    },
    sources::snapshot,
};

/// Flags of `volguard explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Cluster state: a YAML/JSON file or a directory of them.
    #[arg(long, env = "VOLGUARD_SNAPSHOT")]
    pub snapshot: PathBuf,
    /// The pod to place (YAML or JSON, one document).
    #[arg(long, env = "VOLGUARD_POD")]
    pub pod: PathBuf,
    /// Config file (YAML); built-in defaults when absent.
    #[arg(long, env = "VOLGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Report format.
    #[arg(long, env = "VOLGUARD_OUTPUT", value_enum, default_value_t = ExplainOutput::Table)]
    pub output: ExplainOutput,
}

/// Report format of `volguard explain`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExplainOutput {
    /// The patch, then aligned columns for people.
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

/// Runs `volguard explain`: exit 0 when some node fits, 1 when none does, 2 for bad input.
pub fn run(args: &ExplainArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(args.config.as_deref()).map_err(Failure::usage)?;
    let pod = read_pod(&args.pod)?;
    let snap = snapshot::load(&args.snapshot).map_err(Failure::usage)?;
    let config = Arc::new(config);
    let drivers = Arc::new(Drivers::new(&config));
    let state = snapshot::into_state(&snap, ClusterState::new(config.clone(), drivers));
    let mut nodes: Vec<&str> = snap
        .objects
        .iter()
        .filter_map(|o| match o {
            ClusterObject::Node(n) => n.metadata.name.as_deref(),
            _ => None,
        })
        .collect();
    nodes.sort_unstable();
    nodes.dedup();

    let namespace = pod.namespace().unwrap_or("default").to_owned();
    let name = format!("{namespace}/{}", pod.name());
    let webhook = webhook(&pod, &namespace, &state, &config);
    let resolution = resolve(&pod, &namespace, &state, &config);
    let judge = Judge::new(resolution.as_ref(), &state, &config);
    let rows: Vec<Row> = nodes
        .iter()
        .map(|n| Row {
            node: (*n).to_owned(),
            judgement: judge.judge(n),
            slots: judge::slots(&state, n),
        })
        .collect();
    let fits = rows.iter().any(|r| r.judgement.passes());
    let text = match args.output {
        ExplainOutput::Table => table(&name, &webhook, &rows),
        ExplainOutput::Json => json_report(&name, &webhook, &rows, fits),
    };
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::runtime(format!("cannot write to stdout: {e}")))?;
    Ok(if fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

fn table(pod: &str, webhook: &Webhook, rows: &[Row]) -> String {
    let mut out = String::new();
    match webhook {
        Webhook::Denied(why) => out.push_str(&format!("webhook: denies {pod}: {why}\n")),
        Webhook::Allowed { patch, warnings } => {
            if patch.is_empty() {
                out.push_str(&format!("webhook: allows {pod} unchanged (empty patch)\n"));
            } else {
                let pretty = serde_json::to_string_pretty(patch).unwrap_or_default();
                out.push_str(&format!("webhook patch for {pod}:\n{pretty}\n"));
            }
            for w in warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
        }
    }
    out.push('\n');
    let header = ["NODE", "VERDICT", "SCORE", "SLOTS", "REASON"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.node.clone(),
                verdict_word(&r.judgement).to_owned(),
                r.judgement.score.to_string(),
                slots_text(&r.slots),
                r.judgement.describe().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut line = |cols: [&str; 5]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i == cols.len() - 1 {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str("(the snapshot holds no Node)\n");
    }
    out
}

fn json_report(pod: &str, webhook: &Webhook, rows: &[Row], fits: bool) -> String {
    let webhook = match webhook {
        Webhook::Allowed { patch, warnings } => {
            json!({"allowed": true, "patch": patch, "warnings": warnings})
        }
        Webhook::Denied(why) => json!({"allowed": false, "reason": why}),
    };
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
    let report = json!({"pod": pod, "webhook": webhook, "nodes": nodes, "fits": fits});
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}
