#!/usr/bin/env bash
# Load benchmark: volguard against the same stack answering a constant body.
#
#   scripts/loadtest.sh [SECONDS=10]
#
# Builds release, generates the large synthetic cluster (5,000 nodes, 150,000 pods,
# 50,000 volumes), starts `volguard serve` on it and the baseline example on loopback,
# and drives both over TLS with oha (keep-alive). Prints a Markdown table: saturation
# throughput for /mutate (as a ratio of the baseline), p50/p99 latency at fixed rates
# (/filter and /prioritize for each bench pod, one connection as kube-scheduler asks:
# one that fits every node and three that make every node fail or be judged on its
# attach limit, with each answer's size and the server's CPU per answer), the server's
# RSS and its time from start to ready; then the time to ready and the memory of the
# same cluster written as one `kind: List` (JSON as `kubectl get -o json` prints it,
# and YAML). Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
command -v oha >/dev/null || cargo install oha --locked
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }

cargo build --release --bin volguard --example loadtest_data --example baseline
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin/examples/loadtest_data" "$work" --lists 2>/dev/null
"$bin/volguard" certs --service volguard --namespace volguard-system --out "$work/certs" >/dev/null 2>&1

start=$(date +%s%N)
"$bin/volguard" serve --snapshot "$work/snapshot.json" --config examples/config.yaml \
  --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19090 2>"$work/serve.log" &
pids+=($!)
server=$!
for _ in $(seq 1 3000); do
  curl -sf http://127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.01
done
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))

# The baseline answers with what volguard answers, so both move the same bytes.
curl -sf --cacert "$work/certs/ca.crt" https://localhost:18443/mutate -d @"$work/mutate.json" >"$work/mutate.answer"
curl -sf --cacert "$work/certs/ca.crt" https://localhost:18443/filter -d @"$work/filter-fresh.json" >"$work/filter.answer"
"$bin/examples/baseline" 127.0.0.1:18444 "$work/certs/tls.crt" "$work/certs/tls.key" \
  "$work/mutate.answer" "$work/filter.answer" &
pids+=($!)
for _ in $(seq 1 500); do curl -sf --cacert "$work/certs/ca.crt" https://localhost:18444/mutate -d '{}' >/dev/null 2>&1 && break; sleep 0.01; done

# run PORT PATH BODY EXTRA...: one oha run, JSON summary on stdout
run() {
  local port=$1 path=$2 body=$3; shift 3
  oha --no-tui --output-format json -z "${secs}s" -m POST -T application/json -D "$body" \
    --cacert "$work/certs/ca.crt" "$@" "https://localhost:$port$path"
}
rps() { jq -r '.summary.requestsPerSec | floor'; }
pct() { jq -r --arg p "$1" '.latencyPercentiles[$p] * 1000 | . * 100 | round / 100'; }
ok() { jq -r '.summary.successRate'; }

m_vol=$(run 18443 /mutate "$work/mutate.json" -c 32)
m_base=$(run 18444 /mutate "$work/mutate.json" -c 32)
m_rate=$(run 18443 /mutate "$work/mutate.json" -c 16 -q 1000 --latency-correction)
f_sat=$(run 18443 /filter "$work/filter-fresh.json" -c 8)
# Every bench pod (pods.tsv: name, what the cluster makes of it) through /filter and
# /prioritize at 200 req/s on one connection, as kube-scheduler asks (its scheduling
# cycle is serial): one that fits everywhere, and those that fail every node. Each row
# gives the answer's size and the server process's CPU (from /proc, whatever it spent
# it on) divided by the answers, which the shared cores' noise moves far less than the
# latency tail.
cpu_ticks() { sed 's/.*) //' "/proc/$server/stat" | awk '{print $12 + $13}'; }
extender_rows=""
while IFS=$'\t' read -r name what; do
  for path in /filter /prioritize; do
    size=$(curl -fsS --cacert "$work/certs/ca.crt" "https://localhost:18443$path" --data-binary @"$work/filter-$name.json" | wc -c)
    before=$(cpu_ticks)
    r=$(run 18443 "$path" "$work/filter-$name.json" -c 1 -q 200 --latency-correction)
    after=$(cpu_ticks)
    answered=$(jq '.statusCodeDistribution["200"] // 0' <<<"$r")
    sent=$(jq '(.statusCodeDistribution | add // 0) + (.errorDistribution | add // 0)' <<<"$r")
    cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$answered" \
      'BEGIN {if (n > 0) printf "%.2f ms", t / hz * 1000 / n; else print "n/a"}')
    extender_rows+="| $path at 200 req/s, 5,000 nodes, $what | p50 $(pct p50 <<<"$r") ms, p99 $(pct p99 <<<"$r") ms ($answered of $sent answered 200); answer $((size / 1024)) KiB, process CPU / answers $cpu | p99 <= 10 ms |"$'\n'
  done
done <"$work/pods.tsv"
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server/status")

# load FILE: `volguard serve` on one snapshot file alone; prints the milliseconds from
# start to ready, then VmRSS and VmHWM (the peak) in MiB once ready, and stops it.
load() {
  local start pid ms
  start=$(date +%s%N)
  "$bin/volguard" serve --snapshot "$1" --config examples/config.yaml --self-signed \
    --listen 127.0.0.1:18445 --metrics-listen 127.0.0.1:19091 >/dev/null 2>"$work/load.log" &
  pid=$!
  for _ in $(seq 1 12000); do
    curl -sf http://127.0.0.1:19091/readyz >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "$1 did not load: $(tail -1 "$work/load.log")" >&2; exit 1; }
    sleep 0.01
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "$ms $(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status") $(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}
mib() { echo $(( $(stat -c %s "$1") / 1048576 )); }
figures=$(load "$work/snapshot.json"); read -r s_ms s_rss s_hwm <<<"$figures"
figures=$(load "$work/list.json"); read -r j_ms j_rss j_hwm <<<"$figures"
figures=$(load "$work/list.yaml"); read -r y_ms y_rss y_hwm <<<"$figures"

vol=$(rps <<<"$m_vol"); base=$(rps <<<"$m_base")
cat <<TABLE
| what | volguard | target |
|---|---|---|
| /mutate saturation (c=32) | $vol req/s = $(awk "BEGIN {printf \"%.2f\", $vol/$base}") x baseline ($base req/s) | >= 0.85 x |
| /mutate at 1,000 req/s | p50 $(pct p50 <<<"$m_rate") ms, p99 $(pct p99 <<<"$m_rate") ms (success $(ok <<<"$m_rate")) | p99 <= 5 ms |
| /filter saturation (c=8, 5,000 nodes) | $(rps <<<"$f_sat") req/s | |
${extender_rows}| RSS after the runs (peak) | $((rss_kb / 1024)) MiB ($((hwm_kb / 1024)) MiB) | <= 256 MiB |
| start to ready on the snapshot | $ready_ms ms | <= 200 ms |

| loading the cluster alone | start to ready | RSS once ready | peak RSS | target |
|---|---|---|---|---|
| separate JSON documents ($(mib "$work/snapshot.json") MiB) | $s_ms ms | $s_rss MiB | $s_hwm MiB | |
| one JSON List, \`kubectl get -o json\` ($(mib "$work/list.json") MiB) | $j_ms ms | $j_rss MiB | $j_hwm MiB | <= 2 s, peak <= 2 x RSS |
| one YAML List, \`-o yaml\` ($(mib "$work/list.yaml") MiB) | $y_ms ms | $y_rss MiB | $y_hwm MiB | loads |
TABLE
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), $(uname -sr); oha $(oha --version | awk '{print $2}'); ${secs}s per run"
