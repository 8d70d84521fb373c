#!/usr/bin/env bash
# Builds lbd of a previous release (a git commit of this repository) into DIR/lbd, for the
# upgrade test from the v1 flow tables (integration/tests/upgrade.rs). Reuses DIR/lbd when it
# was built from the same commit (DIR/commit). Usage: build-previous.sh COMMIT DIR
set -euo pipefail
commit=${1:?commit}
dir=${2:?directory}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -x "$dir/lbd" ] && [ "$(cat "$dir/commit" 2>/dev/null)" = "$commit" ]; then
    exit 0
fi
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "build-previous.sh: commit $commit is not in $root's git history (a clone with history is needed for the upgrade test from the previous release)" >&2
    exit 1
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
git -C "$root" archive "$commit" | tar -x -C "$dir/src"
cargo build --manifest-path "$dir/src/Cargo.toml" -p xdplb --bin lbd --target-dir "$dir/target"
cp "$dir/target/debug/lbd" "$dir/lbd"
echo "$commit" > "$dir/commit"
echo "previous release lbd ($commit) ready: $dir/lbd"
