//! Soak: minutes of mixed load on the real TLS server while the cluster state keeps
//! changing, then the verdict on every answer and on memory.
//!
//! The server runs in-process on 127.0.0.1 over a medium synthetic cluster (1,000
//! nodes, 30,000 pods, 10,000 volumes). A writer applies and deletes objects the way a
//! watch does (decoded outside the lock, applied under it): pods with their claims,
//! volumes and VolumeAttachments come and go in a ring, and nodes' attach-limit
//! annotations and device counts change. Client tasks send a mix of `/mutate`,
//! `/filter` and `/prioritize` over keep-alive HTTPS; every answer is checked against
//! its request by the same oracle as the fuzz (tests/common/answers.rs), and the
//! process's VmRSS is sampled throughout.
//!
//! Exits non-zero if any answer was invalid (every request is valid, so a 4xx counts
//! too) or if RSS grew by more than 10% from the first sample after the warm-up (the
//! first 20% of the run) to the last.
//!
//! `cargo run --release --example soak -- [SECONDS=180] [CLIENTS=8]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    TestServer,
    answers::{self, Answer, Endpoint},
};
use hyper::body::Bytes;
use serde_json::{Value, json};
use volguard::{
    cluster::{ClusterObject, state::object_key},
    sources::{
        snapshot::{self, Snapshot},
        synthetic::{self, Size},
    },
};

const SIZE: Size = Size {
    nodes: 1_000,
    pods: 30_000,
    volumes: 10_000,
};
/// Churned volumes alive at once: each is a PV, a claim, an attachment and a pod.
const RING: usize = 2_000;
/// Churned volumes are numbered modulo this, so a claim a request names is alive a
/// quarter of the time.
const IDS: usize = 4 * RING;
/// Churn steps per writer batch, and the pause between batches.
const BATCH: usize = 10;
const PAUSE: Duration = Duration::from_millis(10);
/// Fresh claims the pending pods of the mix use.
const FRESH: usize = 4;
/// Largest RSS growth allowed after the warm-up.
const RSS_MARGIN: f64 = 0.10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> u64 {
        match args.get(i).map(|a| a.parse()) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                eprintln!("usage: soak [SECONDS=180] [CLIENTS=8]");
                std::process::exit(2);
            }
        }
    };
    let (secs, clients) = (arg(0, 180), arg(1, 8));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ok = runtime.block_on(soak(Duration::from_secs(secs), clients as usize));
    std::process::exit(if ok { 0 } else { 1 });
}

/// Counts of one endpoint.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    invalid: AtomicU64,
    /// Answers that say something: a patch, a failed node, a non-zero score.
    telling: AtomicU64,
}

/// What [`Tally::telling`] counts, by endpoint.
const TELLING: [&str; 3] = ["with a patch", "failing some node", "scoring some node"];

/// What every task shares.
struct Run {
    server: TestServer,
    bodies: Vec<(Endpoint, Bytes)>,
    tallies: [Tally; 3],
    /// The first few invalid answers, for the report.
    problems: Mutex<Vec<String>>,
    deadline: Instant,
}

async fn soak(length: Duration, clients: usize) -> bool {
    let started = Instant::now();
    let state = synthetic_state();
    let load_time = started.elapsed();
    println!(
        "soak: {} nodes, {} pods, {} volumes loaded in {:.1}s; {}s, {clients} clients, churn ring {RING}",
        SIZE.nodes,
        SIZE.pods,
        SIZE.volumes,
        load_time.as_secs_f64(),
        length.as_secs()
    );
    let run = Arc::new(Run {
        server: TestServer::start(common::example_config(), state).await,
        bodies: bodies(),
        tallies: Default::default(),
        problems: Mutex::default(),
        deadline: Instant::now() + length,
    });
    let writer = tokio::task::spawn_blocking({
        let run = run.clone();
        move || write(&run)
    });
    let sampler = tokio::spawn(sample_rss(run.clone(), length));
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(run.clone(), c as u64)))
        .collect();
    let mut crashed = 0;
    for t in tasks {
        crashed += u64::from(t.await.is_err());
    }
    let changes = writer.await.expect("writer");
    let rss = sampler.await.expect("sampler");
    report(&run, length, changes, crashed, &rss)
}

/// The synthetic cluster plus the fresh claims of the pending pods, synced.
fn synthetic_state() -> volguard::cluster::ClusterState {
    let config = common::example_config();
    let docs = synthetic::documents(SIZE).chain(synthetic::fresh_volumes(FRESH));
    let objects = docs
        .map(ClusterObject::from_value)
        .collect::<Result<Vec<_>, _>>()
        .expect("synthetic objects decode");
    snapshot::into_state(
        &Snapshot {
            objects,
            skipped: Vec::new(),
        },
        common::empty_state(&config),
    )
}

/// A small deterministic generator: the run is the same every time.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A pod using the churned claim `i` (alive or not, depending on when it is asked).
fn churn_user(i: usize) -> Value {
    let mut pod = synthetic::pending_pod(1);
    pod["metadata"]["namespace"] = "churn".into();
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = format!("churn-{i}").into();
    pod
}

/// The request pool: CREATE reviews and ExtenderArgs (all nodes by name, a sample by
/// name, all nodes as objects) for pods with 0 to 4 fresh claims or a churned claim.
fn bodies() -> Vec<(Endpoint, Bytes)> {
    let mut rng = Rng(0x5eed);
    let names: Vec<String> = (0..SIZE.nodes).map(synthetic::node_name).collect();
    let nodes: Vec<Value> = synthetic::documents(SIZE)
        .take(2 * SIZE.nodes)
        .filter(|d| d["kind"] == "Node")
        .collect();
    let mut pool = Vec::new();
    for b in 0..64 {
        let pod = if b % 4 == 3 {
            churn_user(rng.below(IDS))
        } else {
            synthetic::pending_pod(b % (FRESH + 1))
        };
        let review = common::create_review(&pod, "bench");
        pool.push((Endpoint::Mutate, Bytes::from(review.to_string())));
        let args = match b % 8 {
            0 => json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}),
            1 | 2 => {
                let sample: Vec<&String> =
                    (0..100).map(|_| &names[rng.below(names.len())]).collect();
                json!({"Pod": pod, "Nodes": null, "NodeNames": sample})
            }
            _ => json!({"Pod": pod, "Nodes": null, "NodeNames": names}),
        };
        let args = Bytes::from(args.to_string());
        pool.push((Endpoint::Filter, args.clone()));
        pool.push((Endpoint::Prioritize, args));
    }
    pool
}

async fn client(run: Arc<Run>, seed: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
    while Instant::now() < run.deadline {
        let (endpoint, body) = &run.bodies[rng.below(run.bodies.len())];
        let verdict = match run.server.try_post(endpoint.path(), body.clone()).await {
            Err(e) => Err(format!("transport: {e}")),
            Ok((status, answer)) => judge(*endpoint, body, status.as_u16(), &answer),
        };
        let tally = &run.tallies[*endpoint as usize];
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Ok(telling) => {
                tally
                    .telling
                    .fetch_add(u64::from(telling), Ordering::Relaxed);
            }
            Err(why) => {
                tally.invalid.fetch_add(1, Ordering::Relaxed);
                let mut problems = run.problems.lock().expect("problems");
                if problems.len() < 10 {
                    problems.push(format!("{}: {why}", endpoint.path()));
                }
            }
        }
    }
}

/// What the extender says of a claim its cache does not hold: a churned claim the pool's
/// pods name is gone three quarters of the time, and the scheduler is told to retry.
const CACHE_MISS: &str = "not found in volguard's cluster state";

/// Whether the answer to a valid request is valid (a 4xx is not; a retry for a claim
/// the churn deleted is), and whether it says something (see [`TELLING`]).
fn judge(endpoint: Endpoint, body: &[u8], status: u16, answer: &[u8]) -> Result<bool, String> {
    match answers::check(endpoint, body, status, answer)? {
        Answer::Refused(503, why) if why.contains(CACHE_MISS) => Ok(false),
        Answer::Refused(status, why) => Err(format!("HTTP {status}: {why}")),
        Answer::Review(r) if r["allowed"] != true => Err(format!("denied: {r}")),
        Answer::Review(r) => Ok(r.get("patch").is_some()),
        Answer::Filter(f) if f.error.contains(CACHE_MISS) => Ok(false),
        Answer::Filter(f) if !f.error.is_empty() => Err(format!("Error: {}", f.error)),
        Answer::Filter(f) => Ok(!f.failed.is_empty() || !f.unresolvable.is_empty()),
        Answer::Priorities(p) => Ok(p.iter().any(|(_, s)| *s > 0)),
    }
}

/// The objects of churned volume `i`: PV, claim, attachment, and the pod using it.
fn churned(i: usize) -> [Value; 4] {
    let node = synthetic::node_name(i % SIZE.nodes);
    let (claim, pv) = (format!("churn-{i}"), format!("churn-pv-{i}"));
    [
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
               "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"},
                        "csi": {"driver": synthetic::DRIVER, "volumeHandle": format!("churn-{i:07}")},
                        "claimRef": {"namespace": "churn", "name": claim}},
               "status": {"phase": "Bound"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": claim, "namespace": "churn"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": pv,
                        "storageClassName": "linode-block-storage",
                        "resources": {"requests": {"storage": "10Gi"}}},
               "status": {"phase": "Bound"}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
               "metadata": {"name": format!("churn-va-{i}")},
               "spec": {"attacher": synthetic::DRIVER, "nodeName": node,
                        "source": {"persistentVolumeName": pv}},
               "status": {"attached": true}}),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("churn-pod-{i}"), "namespace": "churn"},
               "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
               "status": {"phase": if i.is_multiple_of(5) { "Succeeded" } else { "Running" }}}),
    ]
}

/// Node `n` with an attach-limit annotation (absent, or 8 to 32) and a device count.
fn changed_node(n: usize, step: usize) -> Value {
    let name = synthetic::node_name(n);
    let mut node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110",
                                   "volumes.brightbox.com/vol-soak": (step % 3).to_string()}}});
    if !step.is_multiple_of(4) {
        node["metadata"]["annotations"] =
            json!({"volguard.io/attach-limit": (8 + step % 25).to_string()});
    }
    node
}

fn decode(doc: Value) -> ClusterObject {
    ClusterObject::from_value(doc).expect("churn objects decode")
}

/// Churns the state until the deadline, as a watch would; returns the changes made.
fn write(run: &Run) -> u64 {
    let mut changes = 0;
    let mut step = 0;
    while Instant::now() < run.deadline {
        let mut applied = Vec::with_capacity(BATCH * 5);
        let mut deleted = Vec::with_capacity(BATCH * 4);
        for _ in 0..BATCH {
            applied.extend(churned(step % IDS).map(decode));
            applied.push(decode(changed_node(step % SIZE.nodes, step)));
            if step >= RING {
                let gone = churned((step - RING) % IDS).map(decode);
                deleted.extend(gone.map(|o| (o.kind(), object_key(&o))));
            }
            step += 1;
        }
        {
            let mut state = run.server.app.cluster.write().expect("state lock");
            for o in &applied {
                state.apply(o);
            }
            for (kind, key) in &deleted {
                state.delete(*kind, key);
            }
        }
        changes += (applied.len() + deleted.len()) as u64;
        std::thread::sleep(PAUSE);
    }
    changes
}

/// VmRSS in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// RSS samples (seconds since start, KiB) every few seconds until the deadline.
async fn sample_rss(run: Arc<Run>, length: Duration) -> Vec<(f64, u64)> {
    let every = (length / 36).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let start = Instant::now();
    let mut samples = vec![(0.0, rss_kib())];
    while Instant::now() < run.deadline {
        tokio::time::sleep(every.min(run.deadline.saturating_duration_since(Instant::now()))).await;
        samples.push((start.elapsed().as_secs_f64(), rss_kib()));
    }
    samples
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report(run: &Run, length: Duration, changes: u64, crashed: u64, rss: &[(f64, u64)]) -> bool {
    let secs = length.as_secs_f64();
    println!(
        "writer: {changes} object changes ({:.0}/s)",
        changes as f64 / secs
    );
    let mut invalid = crashed;
    for e in Endpoint::ALL {
        let t = &run.tallies[e as usize];
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (n, bad) = (load(&t.requests), load(&t.invalid));
        invalid += bad;
        println!(
            "{:<12} {n:>9} requests ({:>5.0}/s), {bad} invalid, {} {}",
            e.path(),
            n as f64 / secs,
            load(&t.telling),
            TELLING[e as usize]
        );
    }
    if crashed > 0 {
        println!("client tasks that panicked: {crashed}");
    }
    for p in run.problems.lock().expect("problems").iter() {
        println!("  {p}");
    }
    let series: Vec<String> = rss.iter().map(|(_, k)| format!("{:.0}", mib(*k))).collect();
    println!("RSS MiB: {}", series.join(" "));
    let warm = rss
        .iter()
        .find(|(t, _)| *t >= secs * 0.2)
        .map_or(0, |(_, k)| *k);
    let last = rss.last().map_or(0, |(_, k)| *k);
    let max = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let growth = if warm == 0 {
        f64::INFINITY
    } else {
        last as f64 / warm as f64 - 1.0
    };
    println!(
        "RSS first {:.1} MiB, after warm-up {:.1}, last {:.1}, max {:.1}: {:+.1}% after warm-up (limit {:.0}%)",
        mib(rss[0].1),
        mib(warm),
        mib(last),
        mib(max),
        growth * 100.0,
        RSS_MARGIN * 100.0
    );
    let ok = invalid == 0 && growth <= RSS_MARGIN;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    ok
}
