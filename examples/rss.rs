//! Memory of the cluster-state model for the large synthetic cluster (5,000 nodes,
//! 150,000 pods, 50,000 PVs/PVCs/VolumeAttachments), filled the way the watchers fill
//! it: each object decoded into its Kubernetes type, handed to the kind's feed as a
//! listed object, slimmed on apply and dropped. Prints VmRSS (what stays) and VmHWM
//! (the peak) from /proc/self/status.
//!
//! cargo run --release --example rss

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use kube::runtime::watcher::Event;
use volguard::{
    cluster::{ClusterObject, ClusterState, Kind},
    model::{config::Config, drivers::Drivers},
    sources::{
        synthetic::{self, Size},
        watch::Feed,
    },
};

fn main() {
    let before = memory();
    let started = Instant::now();
    let config = Arc::new(Config::default());
    let mut state = ClusterState::new(config.clone(), Arc::new(Drivers::new(&config)));
    let mut feeds: BTreeMap<Kind, Feed> = Kind::ALL.map(|k| (k, Feed::new(k))).into();
    for feed in feeds.values_mut() {
        feed.handle(&mut state, Event::Init);
    }
    for doc in synthetic::documents(Size::LARGE) {
        let object = match ClusterObject::from_value(doc) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("rss: synthetic document does not decode: {e}");
                std::process::exit(1);
            }
        };
        let feed = feeds.get_mut(&object.kind()).expect("a feed per kind");
        feed.handle(&mut state, Event::InitApply(object));
    }
    for feed in feeds.values_mut() {
        feed.handle(&mut state, Event::InitDone);
    }
    let elapsed = started.elapsed();
    let after = memory();
    assert!(state.is_ready(), "every kind listed");
    for (kind, count) in state.counts() {
        println!("{:>22} {count:>7}", kind.as_str());
    }
    println!("filled in {:.1}s", elapsed.as_secs_f64());
    println!(
        "VmRSS {} (before filling: {}), VmHWM {}",
        after.rss, before.rss, after.hwm
    );
}

struct Memory {
    rss: String,
    hwm: String,
}

/// VmRSS and VmHWM as the kernel prints them, e.g. `123456 kB`.
fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "unknown (no /proc/self/status)".into())
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}
