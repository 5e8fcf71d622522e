//! Extender speed on the LARGE synthetic cluster (5,000 nodes, 150,000 pods, 50,000
//! attached volumes), for each pod of [`synthetic::bench_pods`]: one that fits every
//! node, and three that make every node fail or be judged on its attach limit. Each is
//! measured as the pure judge and as the full `/filter` and `/prioritize` body
//! handling (parse ExtenderArgs with 5,000 NodeNames, judge, encode).

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use volguard::{
    cluster::SharedState,
    decide::{judge::Judge, resolve::resolve},
    model::{config::Config, podview::PodView},
    server::{app::App, extender::endpoints},
    sources::synthetic::{self, Size},
};

fn extender(c: &mut Criterion) {
    let config = Arc::new(Config::default());
    let state =
        SharedState::new(synthetic::state(Size::LARGE, &config).expect("synthetic cluster"));
    let app = App::new(config.clone(), state.clone());
    let names: Vec<String> = (0..Size::LARGE.nodes).map(synthetic::node_name).collect();

    for case in synthetic::bench_pods() {
        let pod: PodView = serde_json::from_value(case.pod.clone()).expect("bench pod");
        let namespace = pod.namespace().expect("bench pods have a namespace");
        let state = state.read().expect("state");
        c.bench_function(&format!("judge 5000 nodes, {} pod", case.name), |b| {
            b.iter(|| {
                let resolution = resolve(&pod, namespace, &state, &config);
                let judge = Judge::new(resolution.as_ref(), &state, &config);
                black_box(names.iter().filter(|n| judge.judge(n).passes()).count())
            })
        });
        drop(state);

        let body = serde_json::to_vec(&serde_json::json!({
            "Pod": case.pod, "Nodes": null, "NodeNames": names,
        }))
        .expect("body");
        c.bench_function(&format!("/filter 5000 NodeNames, {} pod", case.name), |b| {
            b.iter(|| {
                black_box(
                    endpoints::filter(black_box(&body), &app, &Default::default()).expect("answer"),
                )
            })
        });
        c.bench_function(
            &format!("/prioritize 5000 NodeNames, {} pod", case.name),
            |b| {
                b.iter(|| {
                    black_box(
                        endpoints::prioritize(black_box(&body), &app, &Default::default())
                            .expect("answer"),
                    )
                })
            },
        );
    }
}

criterion_group!(benches, extender);
criterion_main!(benches);
