#!/usr/bin/env bash
# make bench: builds lbd, lbctl and the bench in release mode and runs the bench binary, which
# writes bench/results/latest.md and the PNG plots and prints the table. Extra arguments go to
# the bench (e.g. `--quick`, `--only paths,scaling`). Root only; the run is bounded: the bench
# stops itself in well under 10 minutes, and `timeout` ends it at 10 (namespaces a killed run
# leaves behind are swept by the next one).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make bench needs root (BPF, network namespaces)"; exit 1; }
CARGO="${CARGO:-cargo}"
"$CARGO" build --release -p xdplb -p lbctl -p xdplb-backend -p xdplb-bench
export XDPLB_BIN_DIR="$PWD/target/release"
exec timeout -k 30 600 "$XDPLB_BIN_DIR/xdplb-bench" --out bench/results "$@"
