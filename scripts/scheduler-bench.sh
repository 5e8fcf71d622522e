#!/usr/bin/env bash
# kube-scheduler's throughput with volguard's extender against the same binary without
# it, and the webhook's latency as kube-apiserver measures it, on the real control
# plane of the end-to-end tests (etcd, kube-apiserver, kube-scheduler, volguard, all on
# loopback).
#
#   scripts/scheduler-bench.sh [NODES=1000] [PODS=2000] [extra scheduler_bench flags]
#   scripts/scheduler-bench.sh 1000 1000 --baseline-volguard /path/to/another/volguard
#                     adds a fourth scheduler, the shipped one with its extender at
#                     that build (of an earlier commit, say): both side by side, one run
#
# Builds release (and, once, the control plane: see scripts/control-plane.sh), then runs
# examples/scheduler_bench.rs: NODES fake nodes, PODS pods per scheduler, three
# schedulers one after the other (stock, shipped configuration without the extender,
# shipped configuration). Progress goes to stderr, the table to stdout. Everything stops
# by itself, also on Ctrl-C. The figures are only meaningful on an otherwise idle
# machine: every component shares its cores.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${1:-1000}
pods=${2:-2000}
shift $(($# < 2 ? $# : 2))

command -v kubectl >/dev/null || {
  echo "scheduler-bench: kubectl is needed (it renders and applies manifests/)" >&2
  exit 1
}
bash scripts/control-plane.sh build >/dev/null
cargo build --release --bin volguard --example scheduler_bench
exec target/release/examples/scheduler_bench --nodes "$nodes" --pods "$pods" "$@"
