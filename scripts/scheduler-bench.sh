#!/usr/bin/env bash
# kube-scheduler's throughput with volguard's extender against the mechanism's limit and
# a peer, and the webhook's latency as kube-apiserver measures it, on the real control
# plane of the end-to-end tests (etcd, kube-apiserver, kube-scheduler, volguard, all on
# loopback).
#
#   scripts/scheduler-bench.sh [NODES=1000] [PODS=2000] [extra scheduler_bench flags]
#   scripts/scheduler-bench.sh 1000 1000 --baseline-volguard /path/to/another/volguard
#                     adds one more scheduler, the shipped one with its extender at
#                     that build (of an earlier commit, say): both side by side, one run
#
# Builds release (and, once, the control plane: see scripts/control-plane.sh; and
# TopoLVM's topolvm-scheduler from e2e/topolvm), then runs examples/scheduler_bench.rs:
# NODES fake nodes, PODS pods per scheduler, six schedulers one after the other: stock;
# the shipped configuration without an extender; with a null extender (examples/baseline:
# same TLS stack and client certificate as volguard, every node passes, no scores); with
# the null extender scoring every node alike (what kube-scheduler reads from any extender
# that scores); with TopoLVM's extender; with volguard's. Progress goes to stderr, the table to stdout.
# Everything stops by itself, also on Ctrl-C. The figures are only meaningful on an
# otherwise idle machine: every component shares its cores.
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

# TopoLVM's scheduler extender, once per version (e2e/topolvm/README.md).
root=$(pwd)
mod="$root/e2e/topolvm"
version=$(awk '$1 == "github.com/topolvm/topolvm" && $2 ~ /^v[0-9]/ { print $2; exit }' "$mod/go.mod")
topolvm="$root/target/topolvm/$version/bin/topolvm-scheduler"
# shellcheck source=lib/build-once.sh
. "$root/scripts/lib/build-once.sh"
topolvm_built() { [[ -x $topolvm ]]; }
topolvm_compile() {
  local tmp=$1 t
  need_go topolvm "TopoLVM's topolvm-scheduler"
  mkdir "$tmp/bin"
  echo "topolvm: building topolvm-scheduler $version (cold Go caches: about 90 s on 2 cores)" >&2
  t=$(now)
  (cd "$mod" && GOWORK=off CGO_ENABLED=0 run go build -mod=readonly -trimpath -buildvcs=false \
    -o "$tmp/bin/topolvm-scheduler" github.com/topolvm/topolvm/cmd/topolvm-scheduler)
  echo "topolvm: compiled in $(since "$t")" >&2
}
build_once topolvm "$root/target/topolvm" "$version" topolvm_built topolvm_compile

cargo build --release --bin volguard --example scheduler_bench --example baseline
exec target/release/examples/scheduler_bench --nodes "$nodes" --pods "$pods" \
  --topolvm-scheduler "$topolvm" "$@"
