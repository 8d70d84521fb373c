#!/usr/bin/env bash
# Placeholder until the benchmark suite lands (issue 8): runs the data-plane tests in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "make bench: the per-path benchmark suite is not written yet (see the issue tracker)."
