//! kube-scheduler's throughput with volguard's extender against the same binary
//! without it, on the real control plane of `tests/control_plane/` (etcd,
//! kube-apiserver, volguard under the shipped RBAC, ConfigMap and webhook), and the
//! admission latency volguard adds as kube-apiserver measures it.
//!
//! 1. `--nodes` fake Nodes (Ready, untainted) with a CSINode registering the linode
//!    driver (`allocatable.count` 16), and a bound linode PV/PVC pair per pod, all
//!    written concurrently through the API; volguard's cache is waited for.
//! 2. `--pods` pods for each scheduler, identical but for `schedulerName`,
//!    each mounting its own claim and annotated `volguard.io/route: "false"` (so that
//!    the webhook leaves `schedulerName` alone), all created through the webhook (the first
//!    `--sequential` one at a time, the rest `--concurrency` at a time); the API
//!    server's webhook histogram is scraped around each part.
//! 3. kube-scheduler processes of the same binary, one after the other, each alone:
//!    the stock configuration (profile `default-scheduler`); the shipped configuration
//!    without its extender (`percentageOfNodesToScore: 100`, profile `no-extender`);
//!    with a null extender answering `/prioritize` with `[]` (`null-extender`), and
//!    with one scoring every node alike (`null-scoring`); with TopoLVM's extender
//!    (`--topolvm-scheduler`); with the `--baseline-volguard` build; and the shipped
//!    configuration as the harness runs it (extender at volguard, profile
//!    `volguard-scheduler`). All run as the shipped scheduler's ServiceAccount with
//!    the same `clientConnection` rate limits.
//!    Throughput is (pods − 1) / (last bind − first bind), bind times taken from a
//!    watch.
//!
//! Prints a table; nothing is asserted. `scripts/scheduler-bench.sh` builds and runs it.
//!
//! cargo run --release --example scheduler_bench -- --nodes 1000 --pods 2000

/// The harness finds the volguard binary through `CARGO_BIN_EXE_volguard`, which cargo
/// sets for tests and benches only; for this example it is the binary of the same
/// profile, `target/<profile>/volguard`, beside `examples/`. Every other `env!` is
/// the standard one.
macro_rules! env {
    ("CARGO_BIN_EXE_volguard") => {
        crate::volguard_binary()
    };
    ($name:literal) => {
        std::env!($name)
    };
}

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/control_plane/mod.rs"]
mod control_plane;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use clap::Parser;
use control_plane::{Component, ControlPlane, Options, merge, wait_for};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::{
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::CSINode,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const LINODE: &str = "linodebs.csi.linode.com";
const NAMESPACE: &str = "bench";
/// The webhook's name in `manifests/base/webhook.yaml`.
const WEBHOOK: &str = "pods.volguard.io";

fn volguard_binary() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the example's path");
        let profile = exe
            .parent()
            .and_then(|examples| examples.parent())
            .expect("target/<profile>/examples/");
        let bin = profile.join("volguard");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --release --bin volguard)",
            bin.display()
        );
        bin.display().to_string()
    })
}

#[derive(Parser)]
struct Args {
    /// Fake nodes, each with a CSINode registering the linode driver.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods per scheduler, each with its own bound linode claim.
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// API requests in flight while setting the scene and creating most pods.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Pods created one at a time first (the webhook's latency without queueing).
    #[arg(long, default_value_t = 200)]
    sequential: usize,
    /// kube-scheduler's clientConnection.qps (and burst), for every scheduler. The
    /// default of 50 would make the client's rate limiter the bottleneck of all three.
    #[arg(long, default_value_t = 1000.0)]
    scheduler_qps: f64,
    /// Another build of volguard (say, of an earlier commit) to run one more scheduler
    /// against, in the same run: the shipped configuration with its extender at that
    /// build, profile `volguard-baseline`.
    #[arg(long)]
    baseline_volguard: Option<std::path::PathBuf>,
    /// TopoLVM's `topolvm-scheduler` binary: adds a phase with the shipped
    /// configuration and TopoLVM's extender instead of volguard's.
    #[arg(long)]
    topolvm_scheduler: Option<std::path::PathBuf>,
    /// Writes a CPU profile of each scheduler to `DIR/<scheduler name>.pprof`: Go's
    /// `/debug/pprof/profile` for `--pprof-seconds`, from a second after the
    /// scheduler's first bind (`go tool pprof -top -diff_base A.pprof B.pprof`).
    #[arg(long, value_name = "DIR")]
    pprof: Option<std::path::PathBuf>,
    /// How long each `--pprof` profile runs.
    #[arg(long, default_value_t = 8)]
    pprof_seconds: u64,
    /// The schedulers to run, in this order, by scheduler name (default: all, stock
    /// first and volguard's last): to see whether a phase's place in the run moves
    /// its figures, run them in another order.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    phases: Vec<String>,
}

/// One scheduler run: its pods' name prefix and scheduler name, and what it is.
struct Phase {
    prefix: &'static str,
    scheduler_name: &'static str,
    what: &'static str,
}

/// The phase run with `--baseline-volguard`, before the last one.
const BASELINE: Phase = Phase {
    prefix: "vb",
    scheduler_name: "volguard-baseline",
    what: "shipped configuration, extender at the --baseline-volguard build",
};

const STOCK: Phase = Phase {
    prefix: "st",
    scheduler_name: "default-scheduler",
    what: "stock configuration, no extender",
};
const PROFILE: Phase = Phase {
    prefix: "nx",
    scheduler_name: "no-extender",
    what: "shipped configuration without the extender",
};
/// The mechanism's limit: the shipped configuration with an extender that does no work.
const NULL: Phase = Phase {
    prefix: "nl",
    scheduler_name: "null-extender",
    what: "shipped configuration, null extender (same TLS stack and client certificate)",
};
/// The limit for an extender that scores: the null extender answering `/prioritize`
/// with every node and one score, which kube-scheduler reads and adds up per node.
const NULL_SCORING: Phase = Phase {
    prefix: "ns",
    scheduler_name: "null-scoring",
    what: "shipped configuration, null extender scoring every node alike",
};
/// A peer: TopoLVM's scheduler extender, doing its real work.
const TOPOLVM: Phase = Phase {
    prefix: "tl",
    scheduler_name: "topolvm",
    what: "shipped configuration, extender at TopoLVM's topolvm-scheduler",
};
const VOLGUARD: Phase = Phase {
    prefix: "vg",
    scheduler_name: control_plane::SCHEDULER,
    what: "shipped configuration, extender at volguard",
};
/// Every phase, in the default order.
const ALL_PHASES: [&Phase; 7] = [
    &STOCK,
    &PROFILE,
    &NULL,
    &NULL_SCORING,
    &TOPOLVM,
    &BASELINE,
    &VOLGUARD,
];

/// The phases to run: `--phases` in its order, or every phase whose extender is
/// there (TopoLVM's and the baseline build only when given); exits on a name that is
/// no phase, or a phase whose binary is missing.
fn phases(args: &Args) -> Vec<&'static Phase> {
    let available = |p: &Phase| {
        (p.scheduler_name != TOPOLVM.scheduler_name || args.topolvm_scheduler.is_some())
            && (p.scheduler_name != BASELINE.scheduler_name || args.baseline_volguard.is_some())
    };
    if args.phases.is_empty() {
        return ALL_PHASES.into_iter().filter(|p| available(p)).collect();
    }
    let mut chosen: Vec<&'static Phase> = Vec::new();
    for name in &args.phases {
        let Some(phase) = ALL_PHASES.into_iter().find(|p| p.scheduler_name == name) else {
            let names: Vec<&str> = ALL_PHASES.iter().map(|p| p.scheduler_name).collect();
            eprintln!(
                "--phases: no phase {name:?}; the phases: {}",
                names.join(", ")
            );
            std::process::exit(2);
        };
        if !available(phase) {
            let flag = if phase.scheduler_name == TOPOLVM.scheduler_name {
                "--topolvm-scheduler"
            } else {
                "--baseline-volguard"
            };
            eprintln!("--phases: {name} needs {flag}");
            std::process::exit(2);
        }
        if chosen
            .iter()
            .any(|c| c.scheduler_name == phase.scheduler_name)
        {
            eprintln!("--phases: {name} is named twice");
            std::process::exit(2);
        }
        chosen.push(phase);
    }
    chosen
}

/// TopoLVM's capacity annotation (device class `00default`): each node offers 1 TiB,
/// each pod of the TopoLVM phase asks 1 GiB, so every node passes its filter.
const TOPOLVM_CAPACITY: &str = "capacity.topolvm.io/00default";

fn main() {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            // Interrupted, the run is dropped, and with it every process it started.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                () = run(args) => {}
                _ = tokio::signal::ctrl_c() => eprintln!("interrupted"),
                _ = term.recv() => eprintln!("terminated"),
            }
        });
}

async fn run(args: Args) {
    let started = Instant::now();
    // Checked before anything starts.
    let phases = phases(&args);
    let qps = json!({"clientConnection": {
        "qps": args.scheduler_qps, "burst": args.scheduler_qps as i64}});
    let mut cp = ControlPlane::start_with(Options {
        scheduler: false,
        scheduler_config: Some(qps.clone()),
        // The bench writes its PV/PVC pairs bound, as the binder leaves them, thousands
        // at once; no controller competes with the schedulers for the machine.
        controller_manager: false,
        ..Options::default()
    })
    .await;
    step(
        started,
        "control plane up (etcd, kube-apiserver, volguard, webhook)",
    );

    // The scene.
    let t = Instant::now();
    cp.namespace(NAMESPACE).await;
    populate_nodes(&cp.admin, args.nodes, args.concurrency).await;
    let pods: Vec<(String, &'static str)> = phases
        .iter()
        .flat_map(|p| (0..args.pods).map(|i| (format!("{}-{i:05}", p.prefix), p.scheduler_name)))
        .collect();
    let claims: Vec<String> = pods.iter().map(|(name, _)| name.clone()).collect();
    populate_claims(&cp.admin, &claims, args.concurrency).await;
    let cached = wait_for(Duration::from_secs(600), || async {
        let metrics = cp.volguard_metrics().await;
        let count = |kind: &str| {
            sample(&metrics, "volguard_cache_objects", &[("kind", kind)]).unwrap_or(0.0) as usize
        };
        (count("Node") >= args.nodes
            && count("CSINode") >= args.nodes
            && count("PersistentVolume") >= claims.len()
            && count("PersistentVolumeClaim") >= claims.len())
        .then_some(())
    })
    .await;
    assert!(cached.is_some(), "volguard's cache never held every object");
    step(
        t,
        &format!(
            "{} nodes + CSINodes, {} bound PV/PVC pairs written and in volguard's cache",
            args.nodes,
            claims.len()
        ),
    );

    // The pods, all through the webhook: some one at a time, then the rest.
    let sequential = args.sequential.min(pods.len());
    let scrape = || async {
        Scrape {
            apiserver: cp.apiserver_metrics().await,
            volguard: cp.volguard_metrics().await,
            at: Instant::now(),
            busy: machine_busy(),
        }
    };
    let t = Instant::now();
    let at_start = scrape().await;
    create_pods(&cp.admin, &pods[..sequential], 1).await;
    let after_sequential = scrape().await;
    step(t, &format!("{sequential} pods created one at a time"));
    let t = Instant::now();
    create_pods(&cp.admin, &pods[sequential..], args.concurrency).await;
    let after_all = scrape().await;
    step(
        t,
        &format!(
            "{} pods created, {} at a time ({:.0}/s)",
            pods.len() - sequential,
            args.concurrency,
            (pods.len() - sequential) as f64 / t.elapsed().as_secs_f64()
        ),
    );

    // The schedulers, one after the other.
    let baseline = match &args.baseline_volguard {
        Some(binary) => {
            // What earlier builds watched beyond today's ClusterRole: granted for this
            // run, so that the baseline becomes ready too.
            cp.create(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "volguard-baseline"},
                "rules": [{"apiGroups": ["storage.k8s.io"], "resources": ["csidrivers"],
                    "verbs": ["get", "list", "watch"]}]}),
            )
            .await;
            cp.create(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "volguard-baseline"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "volguard-baseline"},
                "subjects": [{"kind": "ServiceAccount", "name": "volguard",
                    "namespace": control_plane::NAMESPACE}]}),
            )
            .await;
            Some(cp.spawn_volguard(binary).await)
        }
        None => None,
    };
    let null = null_extender(&cp, "echo");
    let null_scoring = null_extender(&cp, "echo-and-score");
    let topolvm = args
        .topolvm_scheduler
        .as_deref()
        .map(|binary| topolvm_scheduler(&cp, binary));
    let binds = BindWatch::start(cp.admin.clone());
    let mut runs = Vec::new();
    for phase in phases.iter().copied() {
        let volguard_metrics_port = match (&baseline, phase.scheduler_name) {
            (Some((_, _, port)), "volguard-baseline") => *port,
            _ => cp.volguard_metrics_port,
        };
        let volguard_before = cp.metrics_at(volguard_metrics_port).await;
        let mut extra = None;
        let scheduler: &Component = if phase.scheduler_name == control_plane::SCHEDULER {
            cp.start_shipped_scheduler().await;
            cp.scheduler.as_ref().expect("the shipped scheduler")
        } else {
            // The shipped configuration with its extender elsewhere.
            let at = |url: &str| {
                let mut config = cp.scheduler_config_at(url);
                config["profiles"] = json!([{"schedulerName": phase.scheduler_name}]);
                config["leaderElection"] = json!({"leaderElect": false});
                config
            };
            let config = if let (Some((_, port, _)), "volguard-baseline") =
                (&baseline, phase.scheduler_name)
            {
                at(&format!("https://127.0.0.1:{port}"))
            } else if phase.scheduler_name == NULL.scheduler_name {
                at(&format!("https://127.0.0.1:{}", null.1))
            } else if phase.scheduler_name == NULL_SCORING.scheduler_name {
                at(&format!("https://127.0.0.1:{}", null_scoring.1))
            } else if phase.scheduler_name == TOPOLVM.scheduler_name {
                let (_, port) = topolvm.as_ref().expect("--topolvm-scheduler");
                let mut config = at("");
                // As TopoLVM's documentation configures it: plain HTTP, its verbs,
                // full Node objects.
                config["extenders"] = json!([{
                    "urlPrefix": format!("http://127.0.0.1:{port}"),
                    "filterVerb": "predicate",
                    "prioritizeVerb": "prioritize",
                    "weight": 1,
                    "nodeCacheCapable": false,
                }]);
                config
            } else if phase.scheduler_name == "default-scheduler" {
                json!({
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "leaderElection": {"leaderElect": false},
                })
            } else {
                let mut config = cp.shipped_scheduler_config();
                config
                    .as_object_mut()
                    .expect("a KubeSchedulerConfiguration")
                    .remove("extenders");
                config["profiles"] = json!([{"schedulerName": phase.scheduler_name}]);
                config["leaderElection"] = json!({"leaderElect": false});
                config
            };
            let mut config = config;
            merge(&mut config, &qps);
            extra.insert(cp.extra_scheduler(phase.scheduler_name, config))
        };
        let processes = Processes {
            scheduler: scheduler.pid(),
            apiserver: cp.apiserver.pid(),
            etcd: cp.etcd.pid(),
            // The extender's process, whichever it is.
            volguard: match (&baseline, phase.scheduler_name) {
                (Some((process, _, _)), "volguard-baseline") => process.pid(),
                (_, "null-extender") => null.0.pid(),
                (_, "null-scoring") => null_scoring.0.pid(),
                (_, "topolvm") => topolvm.as_ref().and_then(|(p, _)| p.pid()),
                _ => cp.volguard.as_ref().and_then(Component::pid),
            },
        };
        let (mut run, ()) = tokio::join!(
            measure(&binds, phase, args.pods, &processes, || scheduler.tail(20)),
            profile(&args, &binds, phase, scheduler, cp.admin_token()),
        );
        run.scheduler_metrics = component_metrics(scheduler, cp.admin_token()).await;
        run.volguard_metrics = (volguard_before, cp.metrics_at(volguard_metrics_port).await);
        runs.push(run);
        if let Some(mut extra) = extra {
            extra.stop(Duration::from_secs(10));
        }
        if phase.scheduler_name != phases[phases.len() - 1].scheduler_name {
            // The shipped scheduler would otherwise follow the later phases' pods in its
            // informers, on their cores.
            if phase.scheduler_name == control_plane::SCHEDULER
                && let Some(mut shipped) = cp.scheduler.take()
            {
                shipped.stop(Duration::from_secs(10));
            }
            // The next scheduler starts from the same cluster: no pod bound yet.
            let t = Instant::now();
            delete_pods(&cp, phase, args.pods, args.concurrency).await;
            step(t, &format!("{} pods deleted", phase.scheduler_name));
        }
    }
    let rss = cp
        .volguard
        .as_ref()
        .and_then(Component::pid)
        .map(memory)
        .unwrap_or_default();
    let round_trips = extender_round_trips(&cp, args.nodes, &phases).await;

    report(
        &args,
        &runs,
        &at_start,
        &after_sequential,
        &after_all,
        rss,
        round_trips,
    );
    step(started, "total");
}

/// A null extender: `examples/baseline` (beside this program) answering `/filter` with
/// every node passing and `/prioritize` with `[]` (`mode` `echo`) or every node scored
/// alike (`echo-and-score`), over volguard's TLS certificate and asking the scheduler for
/// the same client certificate; the process and its port.
fn null_extender(cp: &ControlPlane, mode: &str) -> (Component, u16) {
    let exe = std::env::current_exe().expect("the example's path");
    let baseline = exe.with_file_name("baseline");
    assert!(
        baseline.exists(),
        "{} is missing: build it first (cargo build --release --example baseline)",
        baseline.display()
    );
    let port = control_plane::free_port();
    let certs = cp.volguard_certs_dir();
    let mut command = std::process::Command::new(baseline);
    command
        .arg(format!("127.0.0.1:{port}"))
        .arg(certs.join("tls.crt"))
        .arg(certs.join("tls.key"))
        .arg("/dev/null")
        .arg(mode)
        .arg(certs.join("ca.crt"));
    let process = Component::spawn(
        "null extender",
        command,
        cp.dir().join(format!("null-extender-{mode}.log")),
    );
    (process, port)
}

/// TopoLVM's `topolvm-scheduler` on a free loopback port (its `listen:` config); the
/// process and its port. It logs every request, as shipped.
fn topolvm_scheduler(cp: &ControlPlane, binary: &std::path::Path) -> (Component, u16) {
    let port = control_plane::free_port();
    let config = cp.dir().join("topolvm-scheduler.yaml");
    std::fs::write(&config, format!("listen: 127.0.0.1:{port}\n")).expect("TopoLVM config");
    let mut command = std::process::Command::new(binary);
    command.arg(format!("--config={}", config.display()));
    let process = Component::spawn(
        "topolvm-scheduler",
        command,
        cp.dir().join("topolvm-scheduler.log"),
    );
    (process, port)
}

/// The API server's and volguard's `/metrics` at one moment, with the machine's busy
/// CPU time then.
struct Scrape {
    apiserver: String,
    volguard: String,
    at: Instant,
    busy: f64,
}

/// The table, to stdout.
fn report(
    args: &Args,
    runs: &[Run],
    at_start: &Scrape,
    after_sequential: &Scrape,
    after_all: &Scrape,
    rss: (f64, f64),
    round_trips: Vec<(&'static str, Vec<f64>)>,
) {
    println!();
    println!(
        "{} nodes, {} pods per scheduler, one run; kube-scheduler clientConnection qps {}",
        args.nodes, args.pods, args.scheduler_qps
    );
    println!();
    println!(
        "| scheduler | pods bound per second | first to last bind | scheduling algorithm per pod: mean, p99 | attempts: scheduled / unschedulable / error | CPU s per 1,000 pods: scheduler / kube-apiserver / etcd / volguard | cores busy: all, other processes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for run in runs {
        let algorithm = Histogram::of(
            &run.scheduler_metrics,
            "scheduler_scheduling_algorithm_duration_seconds",
            &[],
        );
        let (busy, others) = run.cores_busy();
        let attempts = |result: &str| {
            total(
                &run.scheduler_metrics,
                "scheduler_schedule_attempts_total",
                &[("result", result)],
            ) as u64
        };
        println!(
            "| {} ({}) | {:.1} | {:.1} s | {:.1} ms, {:.0} ms | {} / {} / {} | {} | {busy:.2}, {others:.2} |",
            run.phase.scheduler_name,
            run.phase.what,
            run.rate(),
            run.span.as_secs_f64(),
            algorithm.mean() * 1000.0,
            algorithm.quantile(0.99) * 1000.0,
            attempts("scheduled"),
            attempts("unschedulable"),
            attempts("error"),
            run.cpu_per_thousand()
        );
    }
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.phase.scheduler_name == name)
            .map_or(f64::NAN, Run::rate)
    };
    println!();
    // The headline: each extender against the null extender, the mechanism's limit
    // with this profile; then what the profile and the mechanism cost against stock.
    let null = rate(NULL.scheduler_name);
    println!(
        "ratio to the null extender: {} {:.2} (target >= 0.95), {} {:.2}",
        VOLGUARD.scheduler_name,
        rate(VOLGUARD.scheduler_name) / null,
        TOPOLVM.scheduler_name,
        rate(TOPOLVM.scheduler_name) / null,
    );
    let null_scoring = rate(NULL_SCORING.scheduler_name);
    println!(
        "ratio to the null extender that scores every node: {} {:.2}, {} {:.2}; \
         null-scoring to null {:.2}",
        VOLGUARD.scheduler_name,
        rate(VOLGUARD.scheduler_name) / null_scoring,
        TOPOLVM.scheduler_name,
        rate(TOPOLVM.scheduler_name) / null_scoring,
        null_scoring / null,
    );
    println!(
        "against stock (default-scheduler): no-extender {:.2}, null-extender {:.2}, {} {:.2}, {} {:.2}",
        rate(PROFILE.scheduler_name) / rate(STOCK.scheduler_name),
        null / rate(STOCK.scheduler_name),
        VOLGUARD.scheduler_name,
        rate(VOLGUARD.scheduler_name) / rate(STOCK.scheduler_name),
        TOPOLVM.scheduler_name,
        rate(TOPOLVM.scheduler_name) / rate(STOCK.scheduler_name),
    );
    if runs
        .iter()
        .any(|r| r.phase.scheduler_name == BASELINE.scheduler_name)
    {
        println!(
            "ratio {} / volguard-baseline: {:.2}",
            control_plane::SCHEDULER,
            rate(control_plane::SCHEDULER) / rate(BASELINE.scheduler_name)
        );
    }
    println!();
    for (what, before, after) in [
        ("one at a time", at_start, after_sequential),
        ("concurrently", after_sequential, after_all),
    ] {
        let admission = Histogram::delta(
            &before.apiserver,
            &after.apiserver,
            "apiserver_admission_webhook_admission_duration_seconds",
            &[("name", WEBHOOK), ("type", "admit")],
        );
        let create = Histogram::delta(
            &before.apiserver,
            &after.apiserver,
            "apiserver_request_duration_seconds",
            &[("verb", "POST"), ("resource", "pods"), ("subresource", "")],
        );
        let mutate = Histogram::delta(
            &before.volguard,
            &after.volguard,
            "volguard_request_duration_seconds",
            &[("endpoint", "/mutate")],
        );
        let cores = (after.busy - before.busy) / (after.at - before.at).as_secs_f64();
        println!(
            "webhook, pods created {what} ({} calls, {cores:.2} cores busy): kube-apiserver's apiserver_admission_webhook_admission_duration_seconds: {}; the whole create (apiserver_request_duration_seconds): mean {:.2} ms; volguard's /mutate: {}",
            admission.count(),
            admission.summary(),
            create.mean() * 1000.0,
            mutate.summary()
        );
    }
    if let Some(run) = runs
        .iter()
        .find(|r| r.phase.scheduler_name == control_plane::SCHEDULER)
    {
        for endpoint in ["/filter", "/prioritize"] {
            let h = Histogram::delta(
                &run.volguard_metrics.0,
                &run.volguard_metrics.1,
                "volguard_request_duration_seconds",
                &[("endpoint", endpoint)],
            );
            println!(
                "extender {endpoint}, as volguard measures it ({} requests): {}",
                h.count(),
                h.summary()
            );
        }
    }
    for (endpoint, times) in round_trips {
        println!(
            "extender {endpoint}, one request at a time from a keep-alive Rust client with kube-scheduler's body ({} requests, scheduler idle): mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms",
            times.len(),
            mean(&times) * 1000.0,
            exact_quantile(&times, 0.5) * 1000.0,
            exact_quantile(&times, 0.99) * 1000.0,
        );
    }
    println!(
        "volguard RSS watching this cluster: VmRSS {:.0} MiB (peak VmHWM {:.0} MiB)",
        rss.0, rss.1
    );
}

/// The extender's round trip without kube-scheduler: the body it sends for a pending pod
/// (a stored pod of the run, unbound, on a free claim; every node's name), posted one
/// at a time over one keep-alive TLS connection; client-side seconds per request. The
/// pod is the last phase's (the one whose pods are still there), its claim the first
/// phase's (free again once that phase's pods are deleted).
async fn extender_round_trips(
    cp: &ControlPlane,
    nodes: usize,
    phases: &[&Phase],
) -> Vec<(&'static str, Vec<f64>)> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let api: Api<Pod> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let mut pod = serde_json::to_value(
        api.get(&format!("{}-00000", phases[phases.len() - 1].prefix))
            .await
            .expect("a pod of the run"),
    )
    .expect("pod JSON");
    pod["metadata"]["name"] = json!("round-trip");
    pod["spec"]["nodeName"] = json!(null);
    pod["status"] = json!({"phase": "Pending"});
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] =
        json!(format!("{}-00000", phases[0].prefix));
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let body = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
    let (cert, key) = &cp.volguard_client;
    let client = common::client_with(&cp.volguard_ca, Some((cert, key)));
    let mut out = Vec::new();
    for endpoint in ["/filter", "/prioritize"] {
        let url = format!("https://localhost:{}{endpoint}", cp.volguard_port);
        let mut times = Vec::new();
        for i in 0..220 {
            let request = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .expect("request");
            let t = Instant::now();
            let response = client.request(request).await.expect("extender request");
            let status = response.status();
            let answer = response
                .into_body()
                .collect()
                .await
                .expect("answer")
                .to_bytes();
            let took = t.elapsed().as_secs_f64();
            assert!(status.is_success(), "{endpoint}: {status}");
            if i == 0 && endpoint == "/filter" {
                let answer: serde_json::Value =
                    serde_json::from_slice(&answer).expect("ExtenderFilterResult");
                let passing = answer["NodeNames"].as_array().map_or(0, Vec::len);
                if passing != nodes {
                    eprintln!("round trip: {passing} of {nodes} nodes pass: {answer}");
                }
            }
            // The first 20 warm the connection up.
            if i >= 20 {
                times.push(took);
            }
        }
        out.push((endpoint, times));
    }
    out
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The nearest-rank `q` quantile.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

/// A component's own `/metrics` over HTTPS on its `--secure-port` (read from its
/// command line), as the admin; its serving certificate is self-signed, so any is taken
/// (loopback only).
async fn component_metrics(component: &Component, token: &str) -> String {
    let body = component_get(component, token, "/metrics").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// A GET of `path` on a control-plane component's secure port (from its
/// `--secure-port` flag), as the admin; the body, or nothing when it cannot be had.
async fn component_get(component: &Component, token: &str, path: &str) -> Vec<u8> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let Some(pid) = component.pid() else {
        return Vec::new();
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let Some(port) = cmdline
        .split(|b| *b == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok())
        .find_map(|arg| arg.strip_prefix("--secure-port="))
        .map(str::to_owned)
    else {
        return Vec::new();
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<Bytes>>(connector);
    let request = hyper::Request::get(format!("https://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .expect("request");
    match client.request(request).await {
        Ok(response) if response.status().is_success() => response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default(),
        Ok(response) => {
            eprintln!("GET {path} from port {port}: {}", response.status());
            Vec::new()
        }
        Err(e) => {
            eprintln!("cannot GET {path} from port {port}: {e}");
            Vec::new()
        }
    }
}

/// Takes any server certificate (signatures still checked), for a component's
/// self-signed serving certificate on loopback.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Prints how long a step took, to stderr (the table goes to stdout).
fn step(since: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", since.elapsed().as_secs_f64());
}

/// Runs `make(i)` for every `i` with `concurrency` in flight; fails on the first error.
async fn each<F, Fut>(count: usize, concurrency: usize, what: &str, make: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    stream::iter((0..count).map(make))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

async fn populate_nodes(admin: &Client, count: usize, concurrency: usize) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let csinodes: Api<CSINode> = Api::all(admin.clone());
    let resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
    each(count, concurrency, "create the nodes", |i| {
        let (nodes, csinodes, resources) = (nodes.clone(), csinodes.clone(), resources.clone());
        async move {
            let name = format!("node-{i:05}");
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                    "annotations": {TOPOLVM_CAPACITY: "1099511627776"}},
            }))
            .expect("node");
            nodes.create(&PostParams::default(), &node).await?;
            let status = json!({"status": {
                "capacity": resources, "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "no kubelet: a benchmark node"}],
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
            // The not-ready taint the API server's admission adds on create.
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"taints": null}})),
                )
                .await?;
            let csinode: CSINode = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"drivers": [{"name": LINODE, "nodeID": name, "allocatable": {"count": 16}}]},
            }))
            .expect("CSINode");
            csinodes.create(&PostParams::default(), &csinode).await?;
            Ok(())
        }
    })
    .await;
}

/// A linode PV `pv-<claim>` with handle `bench-<claim>`, bound to the claim, both
/// `Bound` through their status as the PV controller would leave them.
async fn populate_claims(admin: &Client, claims: &[String], concurrency: usize) {
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NAMESPACE);
    each(claims.len(), concurrency, "create the claims", |i| {
        let (pvs, pvcs) = (pvs.clone(), pvcs.clone());
        let claim = claims[i].clone();
        async move {
            let pv_name = format!("pv-{claim}");
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "csi": {"driver": LINODE, "volumeHandle": format!("bench-{claim}")},
                    "claimRef": {"namespace": NAMESPACE, "name": claim},
                },
            }))
            .expect("PV");
            pvs.create(&PostParams::default(), &pv).await?;
            let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
                // What the PV controller writes when it binds; kube-scheduler's volume
                // binding counts a claim as bound only with it.
                "metadata": {"name": claim, "annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                }},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "10Gi"}},
                    "storageClassName": "",
                    "volumeName": pv_name,
                },
            }))
            .expect("PVC");
            pvcs.create(&PostParams::default(), &pvc).await?;
            pvs.patch_status(
                &pv_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Bound"}})),
            )
            .await?;
            pvcs.patch_status(
                &claim,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Bound",
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": "10Gi"},
                }})),
            )
            .await?;
            Ok(())
        }
    })
    .await;
}

/// The pods `(name, schedulerName)`, each mounting the claim of its name, created
/// `concurrency` at a time.
async fn create_pods(admin: &Client, pods: &[(String, &'static str)], concurrency: usize) {
    let api: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    each(pods.len(), concurrency, "create the pods", |i| {
        let api = api.clone();
        let (name, scheduler) = &pods[i];
        // The shipped webhook would send a default-scheduler pod with a managed volume
        // to volguard-scheduler; each pod here stays with its scheduler.
        let mut annotations = json!({"volguard.io/route": "false"});
        if *scheduler == TOPOLVM.scheduler_name {
            annotations[TOPOLVM_CAPACITY] = json!("1073741824");
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {"bench": name.split('-').next()},
                "annotations": annotations,
            },
            "spec": {
                "schedulerName": scheduler,
                "containers": [{
                    "name": "app", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
            },
        }))
        .expect("pod");
        async move {
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await;
}

/// Deletes the pods of `phase` at once (no kubelet would confirm a graceful delete);
/// waits until the API and volguard's cache have none of them left.
async fn delete_pods(cp: &ControlPlane, phase: &Phase, pods: usize, concurrency: usize) {
    let api: Api<Pod> = Api::namespaced(cp.admin.clone(), NAMESPACE);
    let pods_cached = || async {
        sample(
            &cp.volguard_metrics().await,
            "volguard_cache_objects",
            &[("kind", "Pod")],
        )
        .unwrap_or(0.0) as usize
    };
    let cached_before = pods_cached().await;
    each(pods, concurrency, "delete the pods", |i| {
        let api = api.clone();
        let name = format!("{}-{i:05}", phase.prefix);
        async move {
            api.delete(&name, &DeleteParams::default().grace_period(0))
                .await?;
            Ok(())
        }
    })
    .await;
    let selector = ListParams::default()
        .labels(&format!("bench={}", phase.prefix))
        .limit(1);
    let gone = wait_for(Duration::from_secs(300), || async {
        let left = api.list(&selector).await.ok()?;
        (left.items.is_empty() && pods_cached().await + pods <= cached_before).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the pods of {} are not gone",
        phase.scheduler_name
    );
}

/// When each pod of the namespace was first seen bound, from a watch.
struct BindWatch {
    bound: Arc<Mutex<HashMap<String, Instant>>>,
}

impl BindWatch {
    fn start(admin: Client) -> BindWatch {
        let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = bound.clone();
        let pods: Api<Pod> = Api::namespaced(admin, NAMESPACE);
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(pod) = event else { continue };
                let now = Instant::now();
                if pod.spec.and_then(|s| s.node_name).is_some()
                    && let Some(name) = pod.metadata.name
                {
                    seen.lock().unwrap().entry(name).or_insert(now);
                }
            }
        });
        BindWatch { bound }
    }

    /// Bind times of the pods whose name starts with `prefix`.
    fn times(&self, prefix: &str) -> Vec<Instant> {
        let mut times: Vec<Instant> = self
            .bound
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        times
    }
}

/// The processes whose CPU time a run accounts.
struct Processes {
    scheduler: Option<u32>,
    apiserver: Option<u32>,
    etcd: Option<u32>,
    volguard: Option<u32>,
}

impl Processes {
    /// CPU seconds so far of the scheduler, kube-apiserver, etcd, volguard, this
    /// program, and of the whole machine (busy time of every core).
    fn cpu(&self) -> [f64; 6] {
        let [scheduler, apiserver, etcd, volguard, me] = [
            self.scheduler,
            self.apiserver,
            self.etcd,
            self.volguard,
            Some(std::process::id()),
        ]
        .map(|p| p.map_or(0.0, cpu_seconds));
        [scheduler, apiserver, etcd, volguard, me, machine_busy()]
    }
}

/// Busy CPU seconds of the whole machine (user, nice, system, irq, softirq, steal of
/// every core), from /proc/stat.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(total) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<f64> = total
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum::<f64>()
        / clock_ticks()
}

struct Run {
    phase: &'static Phase,
    span: Duration,
    pods: usize,
    /// CPU seconds during the run: scheduler, kube-apiserver, etcd, volguard, this
    /// program, the whole machine.
    cpu: [f64; 6],
    /// The scheduler's own `/metrics` after the run.
    scheduler_metrics: String,
    /// volguard's `/metrics` before and after.
    volguard_metrics: (String, String),
}

impl Run {
    fn rate(&self) -> f64 {
        (self.pods.saturating_sub(1)) as f64 / self.span.as_secs_f64()
    }

    /// Scheduler / kube-apiserver / etcd / volguard, in CPU seconds per 1,000 pods.
    fn cpu_per_thousand(&self) -> String {
        self.cpu[..4]
            .iter()
            .map(|c| format!("{:.1}", c * 1000.0 / self.pods as f64))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Cores busy on average during the run: all, and those of processes other than the
    /// control plane's and this program (another workload skews the figures).
    fn cores_busy(&self) -> (f64, f64) {
        let secs = self.span.as_secs_f64().max(1e-9);
        let ours: f64 = self.cpu[..5].iter().sum();
        (self.cpu[5] / secs, (self.cpu[5] - ours).max(0.0) / secs)
    }
}

/// With `--pprof`: a CPU profile of `scheduler` while it binds `phase`'s pods, from a
/// second after its first bind, written to `<dir>/<scheduler name>.pprof`.
async fn profile(
    args: &Args,
    binds: &BindWatch,
    phase: &'static Phase,
    scheduler: &Component,
    token: &str,
) {
    let Some(dir) = &args.pprof else { return };
    let prefix = format!("{}-", phase.prefix);
    while binds.times(&prefix).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let path = format!("/debug/pprof/profile?seconds={}", args.pprof_seconds);
    let profile = component_get(scheduler, token, &path).await;
    if profile.is_empty() {
        return;
    }
    let file = dir.join(format!("{}.pprof", phase.scheduler_name));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, profile)) {
        eprintln!("cannot write {}: {e}", file.display());
    }
}

/// Waits until every pod of `phase` is bound; the span from the first bind to the
/// last, and the CPU each process used meanwhile (sampled within 50 ms of each).
async fn measure(
    binds: &BindWatch,
    phase: &'static Phase,
    pods: usize,
    processes: &Processes,
    log: impl Fn() -> String,
) -> Run {
    let prefix = format!("{}-", phase.prefix);
    let mut cpu_before = None;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut progress = (0, Instant::now());
    loop {
        let times = binds.times(&prefix);
        if !times.is_empty() && cpu_before.is_none() {
            cpu_before = Some(processes.cpu());
        }
        if times.len() >= pods {
            let cpu_after = processes.cpu();
            let span = times[times.len() - 1] - times[0];
            eprintln!(
                "[{:>6.1}s] {}: all {pods} bound; first bind {:.1}s after the scheduler started",
                started.elapsed().as_secs_f64(),
                phase.scheduler_name,
                (times[0] - started).as_secs_f64()
            );
            let mut cpu = [0.0; 6];
            for (i, c) in cpu.iter_mut().enumerate() {
                *c = cpu_after[i] - cpu_before.unwrap_or(cpu_after)[i];
            }
            return Run {
                phase,
                span,
                pods,
                cpu,
                scheduler_metrics: String::new(),
                volguard_metrics: Default::default(),
            };
        }
        if times.len() > progress.0 {
            progress = (times.len(), Instant::now());
        } else if progress.1.elapsed() > Duration::from_secs(120) {
            panic!(
                "{}: {} of {pods} bound, none for 2 min; scheduler log:\n{}",
                phase.scheduler_name,
                times.len(),
                log()
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[{:>6.1}s] {}: {} of {pods} bound",
                started.elapsed().as_secs_f64(),
                phase.scheduler_name,
                times.len()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; fields count from after its closing paren.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the first after the name is
    // field 3 (the state).
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks()
}

/// The kernel's clock ticks per second (USER_HZ), from `getconf CLK_TCK`.
fn clock_ticks() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One sample line `name{labels} value` of a Prometheus or OpenMetrics text.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, "", rest)
        }
    };
    let mut map = BTreeMap::new();
    let mut inside = labels;
    while let Some((key, after)) = inside.split_once("=\"") {
        // Label values here hold no escaped quotes.
        let end = after.find('"')?;
        map.insert(key.trim_start_matches(','), &after[..end]);
        inside = &after[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, map, value))
}

/// The values of the samples `name` with `labels` among their labels.
fn samples<'t>(
    text: &'t str,
    name: &'t str,
    labels: &'t [(&str, &str)],
) -> impl Iterator<Item = f64> + 't {
    text.lines().filter_map(move |line| {
        let (n, map, value) = parse_line(line)?;
        (n == name && labels.iter().all(|(k, v)| map.get(k) == Some(v))).then_some(value)
    })
}

/// The sum of every sample `name` with `labels` among its labels.
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).sum()
}

/// The value of the first sample `name` with `labels` among its labels.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// A cumulative histogram: (upper bound, count) with +Inf last, and the sum of the
/// observations.
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
}

impl Histogram {
    /// The buckets of `name` summed over every series with `labels` among its labels.
    fn of(text: &str, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let (bucket, sum_name) = (format!("{name}_bucket"), format!("{name}_sum"));
        let mut sums: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let mut sum = 0.0;
        for line in text.lines() {
            let Some((n, map, value)) = parse_line(line) else {
                continue;
            };
            if !labels.iter().all(|(k, v)| map.get(k) == Some(v)) {
                continue;
            }
            if n == sum_name {
                sum += value;
                continue;
            }
            if n != bucket {
                continue;
            }
            let le: f64 = match map.get("le") {
                Some(&"+Inf") => f64::INFINITY,
                Some(le) => le.parse().unwrap_or(f64::NAN),
                None => continue,
            };
            sums.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
        }
        let mut buckets: Vec<(f64, f64)> = sums.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets, sum }
    }

    /// What was observed between two scrapes.
    fn delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let old = Histogram::of(before, name, labels);
        let new = Histogram::of(after, name, labels);
        let buckets = new
            .buckets
            .iter()
            .map(|&(le, n)| {
                let was = old
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |b| b.1);
                (le, n - was)
            })
            .collect();
        Histogram {
            buckets,
            sum: new.sum - old.sum,
        }
    }

    fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1 as u64)
    }

    /// The exact mean (sum / count).
    fn mean(&self) -> f64 {
        self.sum / self.count().max(1) as f64
    }

    /// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does; the highest finite bound when it falls in +Inf.
    fn quantile(&self, q: f64) -> f64 {
        let total = self.count() as f64;
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let width = n - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return lower.0 + (le - lower.0) * within;
            }
            lower = (le, n);
        }
        lower.0
    }

    /// The share of observations at or below `bound` (a bucket bound).
    fn share_at_most(&self, bound: f64) -> f64 {
        let n = self
            .buckets
            .iter()
            .find(|(le, _)| *le == bound)
            .map_or(0.0, |b| b.1);
        n / self.count().max(1) as f64
    }

    /// `mean … ms, p50 … ms, p99 … ms, …% <= 5 ms (finest buckets …)`.
    fn summary(&self) -> String {
        let finest: Vec<String> = self
            .buckets
            .iter()
            .take(4)
            .map(|(le, _)| format!("{}", le * 1000.0))
            .collect();
        format!(
            "mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, {:.1}% <= 5 ms (finest buckets, ms: {})",
            self.mean() * 1000.0,
            self.quantile(0.5) * 1000.0,
            self.quantile(0.99) * 1000.0,
            self.share_at_most(0.005) * 100.0,
            finest.join(", ")
        )
    }
}
