//! Where the time to ready on a JSON snapshot goes, step by step: reading the whole
//! file into memory; that and scanning its JSON with nothing built (serde's
//! `IgnoredAny`, the least any JSON decoder of the file can do); decoding every object
//! volguard reads into its slim view and keeping them all; filling the cluster state as
//! `volguard serve --snapshot` does. The last two read the file 4 MiB at a time, as
//! serving does, so each includes reading and scanning, not the first two steps. Each step runs in a fresh process, as a start
//! does (a heap that has not grown yet), and the steps alternate for ROUNDS rounds, so
//! a busy machine slows all of them alike; the best and the median of each are printed.
//!
//! cargo run --release --example snapshot_load -- FILE.json [ROUNDS=5]
//! (`cargo run --release --example loadtest_data -- DIR` writes the large cluster's
//! `DIR/snapshot.json`.)

use std::{
    any::Any,
    path::Path,
    process::{Command, Stdio, exit},
    sync::Arc,
    time::Instant,
};

use serde::de::IgnoredAny;
use volguard::{
    cluster::ClusterState,
    model::{config::Config, drivers::Drivers},
    sources::snapshot,
};

/// What a step built, never freed: serving never frees its state.
type Built = Box<dyn Any>;

/// One step: its name and what it does to the file, failing with a line.
type Step = (&'static str, fn(&Path) -> Result<Built, String>);

const STEPS: [Step; 4] = [
    ("read the whole file", read),
    ("read it and scan its JSON, nothing built", scan),
    ("decode the objects (4 MiB reads)", decode),
    ("fill the state, ready (4 MiB reads)", fill),
];

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--step") {
        child(args);
    }
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: snapshot_load FILE.json [ROUNDS=5]");
        exit(2);
    };
    let rounds: usize = match args.next().map(|r| r.parse()) {
        None => 5,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("snapshot_load: ROUNDS must be a whole number above 0");
            exit(2);
        }
    };
    let Ok(me) = std::env::current_exe() else {
        eprintln!("snapshot_load: cannot find its own executable to run each step");
        exit(1);
    };
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
    for _ in 0..rounds {
        for (index, spent) in times.iter_mut().enumerate() {
            let output = Command::new(&me)
                .args(["--step", &index.to_string(), &file])
                .stderr(Stdio::inherit())
                .output();
            let ms = match output {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok(),
                _ => None,
            };
            let Some(ms) = ms else { exit(1) };
            spent.push(ms);
        }
    }
    println!("| step | best, ms | median, ms |");
    println!("|---|---|---|");
    for ((name, _), spent) in STEPS.iter().zip(&mut times) {
        spent.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.0} | {:.0} |",
            spent[0],
            spent[spent.len() / 2]
        );
    }
}

/// `--step INDEX FILE`: one step in this fresh process, as a start has a fresh heap;
/// prints its milliseconds.
fn child(mut args: impl Iterator<Item = String>) -> ! {
    let (Some(Ok(index)), Some(file)) = (args.next().map(|i| i.parse::<usize>()), args.next())
    else {
        exit(2)
    };
    let Some((name, step)) = STEPS.get(index) else {
        exit(2)
    };
    let started = Instant::now();
    match step(Path::new(&file)) {
        Ok(built) => {
            println!("{}", started.elapsed().as_secs_f64() * 1000.0);
            std::mem::forget(built);
            exit(0)
        }
        Err(why) => {
            eprintln!("snapshot_load: {name}: {why}");
            exit(1)
        }
    }
}

fn read(path: &Path) -> Result<Built, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    Ok(Box::new(text))
}

/// Every top-level document of the file (one `kind: List`, or concatenated objects).
fn scan(path: &Path) -> Result<Built, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    for document in serde_json::Deserializer::from_slice(&text).into_iter::<IgnoredAny>() {
        document.map_err(|e| format!("not JSON: {e}"))?;
    }
    Ok(Box::new(text))
}

/// Every object kept, as the tests load small snapshots; serving hands each to the
/// state and drops it instead.
fn decode(path: &Path) -> Result<Built, String> {
    let objects = snapshot::load(path).map_err(|e| e.to_string())?;
    Ok(Box::new(objects))
}

fn fill(path: &Path) -> Result<Built, String> {
    let config = Arc::new(Config::default());
    let mut state = ClusterState::new(config.clone(), Arc::new(Drivers::new(&config)));
    snapshot::load_into(path, &mut state).map_err(|e| e.to_string())?;
    Ok(Box::new(state))
}
