//! `volguard nodes`: one row per node with the attach slots of every attach-mode driver
//! (used / limit, and where the limit comes from) and the device-plugin volumes it
//! advertises, so an operator sees nodes fill up before pods go Pending.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::{
    cluster::ClusterState,
    cmd::{
        explain::ExplainOutput,
        failure::Failure,
        report,
        state::{self, StateArgs},
    },
    decide::{
        judge::{self, Slots},
        remediate,
    },
    model::{
        config::Config,
        drivers::{Drivers, Mode},
    },
};

/// Flags of `volguard nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Where the cluster state comes from.
    #[command(flatten)]
    pub state: StateArgs,
    /// Report format.
    #[arg(long, env = "VOLGUARD_OUTPUT", value_enum, default_value_t = ExplainOutput::Table)]
    pub output: ExplainOutput,
}

/// One node's view.
struct NodeRow<'s> {
    name: &'s str,
    slots: Vec<Slots>,
    /// (driver, volume handle) advertised with a count of 1 or more, sorted.
    devices: Vec<(String, String)>,
}

/// Runs `volguard nodes`.
pub fn run(args: &NodesArgs) -> Result<ExitCode, Failure> {
    let loaded = state::load(&args.state)?;
    let rows = rows(&loaded.state);
    let survey = remediate::survey(&loaded.state, &loaded.config.remediation);
    let detached = detached_lines(&survey, &loaded.config);
    let plugins_down: Vec<String> = survey.plugins_down.iter().map(|p| p.describe()).collect();
    let text = match args.output {
        ExplainOutput::Table => {
            let mut out = table(&rows, loaded.state.drivers());
            for (title, lines) in [
                ("device plugins that look down", &plugins_down),
                ("pods whose device-plugin volume left their node", &detached),
            ] {
                if !lines.is_empty() {
                    out.push_str(&format!("\n{title}:\n"));
                    for line in lines {
                        out.push_str(&format!("  {line}\n"));
                    }
                }
            }
            out
        }
        ExplainOutput::Json => json_report(&rows, &detached, &plugins_down),
    };
    report::print(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn rows(state: &ClusterState) -> Vec<NodeRow<'_>> {
    let drivers = state.drivers();
    state
        .node_names()
        .into_iter()
        .map(|name| {
            let mut devices: Vec<(String, String)> = state
                .node(name)
                .map(|n| {
                    n.devices
                        .iter()
                        .filter(|(_, count)| **count >= 1)
                        .map(|(id, _)| (drivers.get(id.driver).name.clone(), id.handle.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            devices.sort();
            NodeRow {
                name,
                slots: judge::slots(state, name),
                devices,
            }
        })
        .collect()
}

/// One line per pod whose node advertises its device-plugin volume below 1, saying what
/// remediation does about it.
fn detached_lines(survey: &remediate::Survey, config: &Config) -> Vec<String> {
    survey
        .detached
        .iter()
        .map(|(d, skip)| remediate::status_line(d, *skip, config))
        .collect()
}

/// "limit from CSINode" -> "CSINode".
fn source(slots: &Slots) -> String {
    let text = slots.limit.source.to_string();
    text.strip_prefix("limit from ").unwrap_or(&text).to_owned()
}

fn used_of_limit(slots: &Slots) -> String {
    match slots.limit.max {
        Some(max) => format!("{}/{max}", slots.used),
        None => format!("{}/unlimited", slots.used),
    }
}

fn table(rows: &[NodeRow<'_>], drivers: &Drivers) -> String {
    let attach: Vec<&str> = drivers
        .iter()
        .filter(|(id, _)| drivers.mode(*id) == Mode::Attach)
        .map(|(_, d)| d.name.as_str())
        .collect();
    let mut header = vec!["NODE".to_owned()];
    for d in &attach {
        header.push(d.to_uppercase());
        header.push(format!("{} LIMIT FROM", d.to_uppercase()));
    }
    header.push("DEVICES".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.name.to_owned()];
            for s in &r.slots {
                row.push(used_of_limit(s));
                row.push(source(s));
            }
            row.push(if r.devices.is_empty() {
                "-".into()
            } else {
                r.devices
                    .iter()
                    .map(|(d, h)| format!("{d}:{h}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            row
        })
        .collect();
    let mut out = report::columns(&header, &cells);
    if rows.is_empty() {
        out.push_str("(no Node in the cluster state)\n");
    }
    out
}

fn json_report(rows: &[NodeRow<'_>], detached: &[String], plugins_down: &[String]) -> String {
    let nodes: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "node": r.name,
                "slots": r.slots.iter().map(|s| json!({
                    "driver": s.driver,
                    "used": s.used,
                    "limit": s.limit.max,
                    "limitSource": s.limit.source.to_string(),
                })).collect::<Vec<_>>(),
                "devices": r.devices.iter().map(|(d, h)| json!({"driver": d, "volume": h})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&json!({
        "nodes": nodes, "detachedPods": detached, "pluginsDown": plugins_down,
    }))
    .unwrap_or_default();
    text.push('\n');
    text
}
