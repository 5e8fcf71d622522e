#!/usr/bin/env bash
# Starvation load test: can anonymous slow clients of /mutate delay kube-scheduler?
#
#   scripts/starvation.sh [SECONDS=5] [OTHER_VOLGUARD_BINARY]
#
# Starts `volguard serve` on the example cluster as shipped (client CA, `--client-auth
# extender`, the scheduler's name allowed), then runs examples/slow_clients.rs against
# it: /filter with the scheduler's certificate at 100 calls a second, idle and while 8
# and then 256 anonymous clients trickle chunked /mutate bodies from 8 loopback
# addresses. With OTHER_VOLGUARD_BINARY, the same run against that build follows, for
# a side-by-side comparison. Debug profile (the tests' build); everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-5}
other=${2:-}
cargo build --bin volguard --example slow_clients
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin/volguard" certs --service volguard --namespace volguard-system --out "$work/certs" >/dev/null 2>&1

# run BINARY LABEL: serve with BINARY, print LABEL and the table.
run() {
  "$1" serve --snapshot examples/cluster --config examples/config.yaml \
    --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
    --client-ca "$work/certs/ca.crt" --client-auth extender --client-allowed-names volguard-scheduler \
    --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 2>"$work/serve.log" &
  pid=$!
  local ready=
  for _ in $(seq 1 500); do
    curl -sf http://127.0.0.1:19090/readyz >/dev/null 2>&1 && { ready=1; break; }
    sleep 0.02
  done
  if [ -z "$ready" ]; then
    echo "volguard ($1) did not become ready; its log:" >&2
    cat "$work/serve.log" >&2
    exit 1
  fi
  echo
  echo "$2"
  echo
  "$bin/examples/slow_clients" 127.0.0.1:18443 "$work/certs" tests/fixtures/extenderargs-nodenames.json "$secs"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

run "$bin/volguard" "this build ($(git rev-parse --short HEAD))"
if [ -n "$other" ]; then
  run "$other" "other build ($other)"
fi
