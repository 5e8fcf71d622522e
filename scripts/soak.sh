#!/usr/bin/env bash
# Soak: minutes of mixed /mutate, /filter and /prioritize load on the real TLS server
# while the cluster state churns, then every answer and the memory curve are judged.
#
#   scripts/soak.sh [SECONDS=180] [CLIENTS=8]
#
# Builds release and runs examples/soak.rs: everything in one process on 127.0.0.1,
# stopping by itself. Exits non-zero if any answer was invalid or RSS grew by more
# than 10% after the warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --example soak
exec target/release/examples/soak "${1:-180}" "${2:-8}"
