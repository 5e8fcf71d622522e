//! `/metrics` on the plain listener, scraped and parsed as OpenMetrics, before and after
//! real requests over TLS: the families exist with their types and labels, and the
//! values move with what was served.

mod common;

use common::{
    TestServer, create_review,
    openmetrics::{self, Exposition},
    patch_of, read_doc, response_of,
};
use hyper::StatusCode;
use volguard::cluster::Kind;

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

async fn scrape(server: &TestServer) -> Exposition {
    let (status, content_type, body) = server.get_plain("/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    openmetrics::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[tokio::test]
async fn families_exist_from_the_start_with_their_types_and_units() {
    let server = TestServer::example().await;
    let scraped = scrape(&server).await;
    let want = [
        ("volguard_pods_mutated", "counter"),
        ("volguard_cache_objects", "gauge"),
        ("volguard_cache_ready", "gauge"),
        ("volguard_certificate_expiry_seconds", "gauge"),
        ("volguard_certificate_reloads", "counter"),
        ("volguard_certificate_reload_failures", "counter"),
        ("volguard_connections_refused", "counter"),
    ];
    for (family, kind) in want {
        assert_eq!(
            scraped.types.get(family).map(String::as_str),
            Some(kind),
            "{family}: {:?}",
            scraped.types
        );
    }
    assert_eq!(
        scraped
            .units
            .get("volguard_certificate_expiry_seconds")
            .map(String::as_str),
        Some("seconds")
    );
    for driver in &server.app.config.drivers {
        assert_eq!(
            scraped.value("volguard_pods_mutated_total", &[("driver", &driver.name)]),
            Some(0.0),
            "every configured driver starts at 0"
        );
    }
    for counter in [
        "volguard_certificate_reloads_total",
        "volguard_certificate_reload_failures_total",
        "volguard_connections_refused_total",
    ] {
        assert_eq!(scraped.value(counter, &[]), Some(0.0), "{counter}");
    }
}

#[tokio::test]
async fn cache_gauges_are_read_from_the_state_at_scrape_time() {
    let server = TestServer::example().await;
    let scraped = scrape(&server).await;
    // Counted in the files of examples/cluster, not asked of volguard.
    let in_the_files = [
        ("Node", 4.0),
        ("CSINode", 4.0),
        ("PersistentVolume", 13.0),
        ("PersistentVolumeClaim", 13.0),
        ("Pod", 12.0),
        ("VolumeAttachment", 10.0),
        ("StorageClass", 2.0),
    ];
    assert_eq!(in_the_files.len(), Kind::ALL.len(), "every cached kind");
    assert_eq!(
        scraped.value("volguard_cache_objects", &[("kind", "CSIDriver")]),
        None,
        "the files' CSIDrivers are skipped: volguard reads no field of them"
    );
    for (kind, count) in in_the_files {
        assert_eq!(
            scraped.value("volguard_cache_objects", &[("kind", kind)]),
            Some(count),
            "{kind}"
        );
    }
    assert_eq!(scraped.value("volguard_cache_ready", &[]), Some(1.0));

    server
        .app
        .cluster
        .write()
        .unwrap()
        .delete(Kind::Node, "worker-4");
    let scraped = scrape(&server).await;
    assert_eq!(
        scraped.value("volguard_cache_objects", &[("kind", "Node")]),
        Some(3.0)
    );
}

#[tokio::test]
async fn requests_latency_and_mutated_pods_move_with_traffic() {
    let server = TestServer::example().await;
    let before = scrape(&server).await;

    let pod = read_doc("examples/pods/seed-000-device.yaml");
    let (status, body) = server
        .post("/mutate", create_review(&pod, "default").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = response_of(&body, UID);
    let patch = patch_of(&response).expect("the device pod is patched");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let (status, body) = server
        .post("/mutate", create_review(&patched, "default").to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        patch_of(&response_of(&body, UID)).is_none(),
        "second pass is empty"
    );
    let (status, _) = server.post("/mutate", "{\"kind\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.post("/mutate", vec![b' '; 20 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get("/no-such-path").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let after = scrape(&server).await;
    assert_eq!(after.types["volguard_requests"], "counter");
    assert_eq!(
        after.types["volguard_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(after.units["volguard_request_duration_seconds"], "seconds");
    let moved = |labels: &[(&str, &str)]| {
        after.count("volguard_requests_total", labels)
            - before.count("volguard_requests_total", labels)
    };
    assert_eq!(moved(&[("endpoint", "/mutate"), ("outcome", "ok")]), 2.0);
    assert_eq!(
        moved(&[("endpoint", "/mutate"), ("outcome", "bad_request")]),
        1.0
    );
    assert_eq!(
        moved(&[("endpoint", "/mutate"), ("outcome", "too_large")]),
        1.0
    );
    assert_eq!(moved(&[("endpoint", "/healthz"), ("outcome", "ok")]), 1.0);
    assert_eq!(
        moved(&[("endpoint", "unmatched"), ("outcome", "not_found")]),
        1.0
    );

    let mutate = [("endpoint", "/mutate")];
    let observed = after.count("volguard_request_duration_seconds_count", &mutate)
        - before.count("volguard_request_duration_seconds_count", &mutate);
    assert_eq!(observed, 4.0, "every /mutate request is timed");
    let inf = after.value(
        "volguard_request_duration_seconds_bucket",
        &[("endpoint", "/mutate"), ("le", "+Inf")],
    );
    assert_eq!(
        inf,
        after.value("volguard_request_duration_seconds_count", &mutate)
    );
    let buckets: Vec<f64> = after
        .series("volguard_request_duration_seconds_bucket")
        .filter(|s| s.labels["endpoint"] == "/mutate")
        .map(|s| s.value)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets: {buckets:?}"
    );

    let brightbox = [("driver", "brightbox")];
    assert_eq!(
        after.count("volguard_pods_mutated_total", &brightbox)
            - before.count("volguard_pods_mutated_total", &brightbox),
        1.0,
        "one pod patched; the empty second pass is not counted"
    );
    let linode = [("driver", "linode")];
    assert_eq!(
        after.count("volguard_pods_mutated_total", &linode),
        before.count("volguard_pods_mutated_total", &linode),
        "no linode volume was involved"
    );
}

#[tokio::test]
async fn node_failures_of_a_filter_request_are_exported_by_kind() {
    let server = TestServer::example().await;
    // linode-web: worker-3 is at its attach limit, worker-4 lacks the CSI driver.
    let pod = read_doc("examples/pods/linode-web.yaml");
    let args = serde_json::json!({"Pod": pod, "NodeNames": ["worker-1", "worker-2", "worker-3", "worker-4"]});
    for _ in 0..2 {
        let (status, _) = server.post("/filter", args.to_string()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let scraped = scrape(&server).await;
    assert_eq!(scraped.types["volguard_nodes_failed"], "counter");
    assert_eq!(
        scraped.value("volguard_nodes_failed_total", &[("reason", "attach_limit")]),
        Some(2.0)
    );
    assert_eq!(
        scraped.value(
            "volguard_nodes_failed_total",
            &[("reason", "driver_not_registered")]
        ),
        Some(2.0)
    );
    assert_eq!(
        scraped.value(
            "volguard_nodes_failed_total",
            &[("reason", "volume_in_use")]
        ),
        None,
        "no other kind appears"
    );
}

#[tokio::test]
async fn nodes_at_or_near_their_attach_limit_are_counted_per_driver() {
    let server = TestServer::example().await;
    // examples/cluster, linode: worker-1 1/16, worker-2 1/8, worker-3 8/8, worker-4 0/8.
    let scraped = scrape(&server).await;
    assert_eq!(scraped.types["volguard_nodes_at_attach_limit"], "gauge");
    let linode = [("driver", "linode")];
    assert_eq!(
        scraped.value("volguard_nodes_at_attach_limit", &linode),
        Some(1.0)
    );
    assert_eq!(
        scraped.value("volguard_nodes_one_slot_left", &linode),
        Some(0.0)
    );
    // worker-2 (1 used) with its limit lowered to 2: one slot left.
    let mut worker2 = common::read_doc("examples/cluster/nodes.yaml")["items"][1].clone();
    worker2["metadata"]["annotations"]["volguard.io/attach-limit"] = "2".into();
    server
        .app
        .cluster
        .write()
        .unwrap()
        .apply(&volguard::cluster::ClusterObject::from_value(worker2).unwrap());
    let scraped = scrape(&server).await;
    assert_eq!(
        scraped.value("volguard_nodes_one_slot_left", &linode),
        Some(1.0)
    );
    assert_eq!(
        scraped.value("volguard_nodes_at_attach_limit", &linode),
        Some(1.0)
    );
}
