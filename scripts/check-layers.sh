#!/usr/bin/env bash
# The crate layers, checked: fails when a crate depends (directly or through others, normal and
# build dependencies; dev-dependencies are the tests' own business) on a crate its layer forbids.
# The arrows it enforces are drawn in docs/ARCHITECTURE.md ("Crates and arrows"). Run by `make check`.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

# crate: the packages it must never reach (a space-separated list of package names).
RULES=(
	"xdplb-model:tokio tonic prost libbpf-rs libbpf-sys libbpf-cargo xdplb xdplb-proto"
	"xdplb-proto:libbpf-rs libbpf-sys libbpf-cargo xdplb xdplb-backend"
	"lbctl:libbpf-rs libbpf-sys libbpf-cargo xdplb xdplb-backend xdplb-testkit"
	"xdplb-backend:xdplb xdplb-proto tonic"
	"xdplb-bpffs:xdplb xdplb-backend xdplb-model xdplb-proto tokio tonic prost"
	"xdplb-testkit:xdplb lbctl"
	"xdplb-buildkit:xdplb lbctl tokio tonic"
	"xdplb:lbctl xdplb-backend xdplb-testkit xdplb-integration xdplb-bench"
)

# Every package of the workspace must be named by a rule (a new crate needs its arrows first),
# except the test and bench crates at the top, which may use anything.
TOP="xdplb-integration xdplb-bench"
members=$("$CARGO" metadata --no-deps --format-version 1 --offline 2>/dev/null |
	python3 -c 'import json,sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')

failed=0 checked=0
for rule in "${RULES[@]}"; do
	crate=${rule%%:*}
	forbidden=${rule#*:}
	if ! grep -qx "$crate" <<<"$members"; then
		echo "layers: $crate is named by a rule but is not a workspace package"
		failed=1
		continue
	fi
	deps=$("$CARGO" tree --offline -p "$crate" -e normal,build --prefix none --format '{p}' |
		awk '{print $1}' | sort -u)
	for bad in $forbidden; do
		checked=$((checked + 1))
		if grep -qx "$bad" <<<"$deps"; then
			echo "layers: $crate depends on $bad, which its layer forbids; the path:"
			"$CARGO" tree --offline -p "$crate" -e normal,build -i "$bad" | sed 's/^/    /'
			failed=1
		fi
	done
done
for m in $members; do
	grep -qw -- "$m" <<<"$TOP" && continue
	printf '%s\n' "${RULES[@]}" | grep -q "^$m:" || {
		echo "layers: workspace package $m has no rule in scripts/check-layers.sh"
		failed=1
	}
done
if [ "$failed" = 0 ]; then
	echo "layers: $checked forbidden arrows checked over ${#RULES[@]} crates: none present"
else
	exit 1
fi
