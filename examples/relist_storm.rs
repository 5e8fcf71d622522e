//! `/healthz` and `/filter` latency over TLS with and without a relist storm, in one
//! process: the large synthetic cluster (5,000 nodes, 150,000 pods) served by the real
//! router on a 2-worker runtime, with the real watchers fed by the scripted API server of
//! `tests/fake_api/` (on a runtime of its own) serving the same cluster in pages of 500.
//! The storm makes the pod watch relist, again and again: each time its watch is ended
//! after a compaction, so it gets 410 Gone and lists all 150,000 pods, which the watcher
//! applies 500 at a time under the state's write lock, exactly as in a cluster.
//!
//! One client, one request at a time, alternates `/healthz` and a `/filter` of all
//! 5,000 node names (the `fresh` bench pod) for `--seconds` quiet, then as long again
//! during the storm, and prints p50/p99/max of each. Nothing is asserted.
//!
//! The watchers run on a runtime of their own, as `volguard serve` runs them;
//! `--watchers-on-server-runtime` runs them on the server's workers instead, to compare.
//!
//! cargo run --release --example relist_storm -- --seconds 20

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fake_api/mod.rs"]
mod fake_api;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::TestServer;
use fake_api::FakeApi;
use hyper::StatusCode;
use serde_json::json;
use volguard::{
    cluster::{Kind, SharedState},
    model::config::Config,
    server::app::App,
    sources::{
        synthetic::{self, Size},
        watch,
    },
};

/// Latencies of one endpoint in one phase.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(at).copied().unwrap_or_default()
    }

    fn row(&self, what: &str) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        format!(
            "| {what} | {} | {} | {} | {} |",
            self.0.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0))
        )
    }
}

/// One phase: alternating `/healthz` and `/filter` for `length`.
async fn measure(server: &TestServer, filter: &str, length: Duration) -> (Latencies, Latencies) {
    let (mut health, mut filtered) = (Latencies::default(), Latencies::default());
    let end = Instant::now() + length;
    while Instant::now() < end {
        let start = Instant::now();
        let (status, _) = server.get("/healthz").await;
        health.0.push(start.elapsed());
        assert_eq!(status, StatusCode::OK);
        let start = Instant::now();
        let (status, body) = server.post("/filter", filter.to_owned()).await;
        filtered.0.push(start.elapsed());
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    (health, filtered)
}

fn pod_watches(fake: &FakeApi) -> usize {
    fake.seen()
        .iter()
        .filter(|s| s.verb == "watch" && s.kind == Kind::Pod)
        .count()
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let length = Duration::from_secs(seconds);
    let shared_runtime = std::env::args().any(|a| a == "--watchers-on-server-runtime");

    let config = Arc::new(Config::default());
    let started = Instant::now();
    let state = synthetic::state(Size::LARGE, &config).expect("synthetic cluster");
    eprintln!("state built in {:.1}s", started.elapsed().as_secs_f64());
    let shared = SharedState::new(state);

    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = api_runtime.block_on(async {
        FakeApi::start(synthetic::documents(Size::LARGE).chain(synthetic::bench_volumes())).await
    });

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let watch_runtime = watch::runtime().expect("runtime");
    let (server, _watchers) = server_runtime.block_on(async {
        let app = App::new(config.clone(), shared.clone());
        let server = TestServer::with_app(app).await;
        let client = watch::client(fake.kube_config(), &shared).expect("client");
        let url = format!("http://{}", fake.addr);
        let on = match shared_runtime {
            true => tokio::runtime::Handle::current(),
            false => watch_runtime.handle().clone(),
        };
        let watchers = watch::spawn_on(
            &on,
            client,
            url,
            shared.clone(),
            &server.app.stopped_watches,
        );
        (server, watchers)
    });
    // The watchers' first lists: the pod watch starts once its list is applied.
    let deadline = Instant::now() + Duration::from_secs(600);
    while pod_watches(&fake) == 0 {
        assert!(Instant::now() < deadline, "the pods were never listed");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "watchers synced after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let names: Vec<String> = (0..Size::LARGE.nodes).map(synthetic::node_name).collect();
    let pod = &synthetic::bench_pods()[0].pod;
    let filter = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let quiet = client_runtime.block_on(measure(&server, &filter, length));

    let storming = Arc::new(AtomicBool::new(true));
    let relists = Arc::new(AtomicUsize::new(0));
    let fake = Arc::new(fake);
    let storm = {
        let (storming, relists, fake) = (storming.clone(), relists.clone(), fake.clone());
        std::thread::spawn(move || {
            let mut bump = 0u64;
            while storming.load(Ordering::Relaxed) {
                let before = pod_watches(&fake);
                // A change, then a compaction past it: the pod watch resumes too late.
                bump += 1;
                fake.put(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                "metadata": {"name": "storm", "labels": {"round": bump.to_string()}},
                                "provisioner": synthetic::DRIVER}));
                fake.go_online_compacted();
                fake.end_watches(Kind::Pod);
                // Rewatch (410 Gone), relist, watch again.
                while storming.load(Ordering::Relaxed) && pod_watches(&fake) < before + 2 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if pod_watches(&fake) >= before + 2 {
                    relists.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let stormy = client_runtime.block_on(measure(&server, &filter, length));
    storming.store(false, Ordering::Relaxed);
    storm.join().expect("storm");

    let watchers = if shared_runtime {
        "on the server's runtime"
    } else {
        "on their own runtime"
    };
    println!(
        "watchers {watchers}; {seconds} s per phase; {} full pod relists (150,000 pods each) during the storm\n",
        relists.load(Ordering::Relaxed)
    );
    println!("| endpoint, phase | requests | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!("{}", quiet.0.row("/healthz, quiet"));
    println!("{}", stormy.0.row("/healthz, relist storm"));
    println!("{}", quiet.1.row("/filter, quiet"));
    println!("{}", stormy.1.row("/filter, relist storm"));
    drop(server_runtime);
    watch_runtime.shutdown_background();
    drop(api_runtime);
}
