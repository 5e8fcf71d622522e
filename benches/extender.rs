//! Extender speed on the LARGE synthetic cluster (5,000 nodes, 150,000 pods, 50,000
//! attached volumes): a pod with 2 fresh managed volumes judged against all 5,000
//! nodes, as the pure judge and as the full `/filter` and `/prioritize` body handling
//! (parse ExtenderArgs with 5,000 NodeNames, judge, encode).

use std::{
    hint::black_box,
    sync::{Arc, RwLock},
};

use criterion::{Criterion, criterion_group, criterion_main};
use volguard::{
    cluster::{ClusterObject, ClusterState},
    decide::{judge::Judge, resolve::resolve},
    model::{config::Config, drivers::Drivers, podview::PodView},
    server::{app::App, extender::endpoints},
    sources::{
        snapshot::{self, Snapshot},
        synthetic::{self, Size},
    },
};

const CLAIMS: usize = 2;

fn large_state(config: &Arc<Config>) -> ClusterState {
    let mut objects = synthetic::objects(Size::LARGE).expect("synthetic objects");
    for doc in synthetic::fresh_volumes(CLAIMS) {
        objects.push(ClusterObject::from_value(doc).expect("fresh volume"));
    }
    let snap = Snapshot {
        objects,
        skipped: Vec::new(),
    };
    let empty = ClusterState::new(config.clone(), Arc::new(Drivers::new(config)));
    snapshot::into_state(&snap, empty)
}

fn extender(c: &mut Criterion) {
    let config = Arc::new(Config::default());
    let state = large_state(&config);
    let names: Vec<String> = (0..Size::LARGE.nodes).map(synthetic::node_name).collect();
    let pod_json = synthetic::pending_pod(CLAIMS);
    let pod: PodView = serde_json::from_value(pod_json.clone()).expect("pending pod");

    c.bench_function("judge 5000 nodes, pod with 2 volumes", |b| {
        b.iter(|| {
            let resolution = resolve(&pod, "bench", &state, &config);
            let judge = Judge::new(resolution.as_ref(), &state, &config);
            let passing = names.iter().filter(|n| judge.judge(n).passes()).count();
            assert_eq!(passing, names.len());
            black_box(passing)
        })
    });

    let body = serde_json::to_vec(&serde_json::json!({
        "Pod": pod_json, "Nodes": null, "NodeNames": names,
    }))
    .expect("body");
    let app = App::new(config.clone(), Arc::new(RwLock::new(state)));
    c.bench_function("/filter body, 5000 NodeNames", |b| {
        b.iter(|| black_box(endpoints::filter(black_box(&body), &app).expect("answer")))
    });
    c.bench_function("/prioritize body, 5000 NodeNames", |b| {
        b.iter(|| black_box(endpoints::prioritize(black_box(&body), &app).expect("answer")))
    });
}

criterion_group!(benches, extender);
criterion_main!(benches);
