#!/usr/bin/env bash
# Firewall figures (numbers, never assertions; needs root):
#  1. `lbctl block load` of 100,000 and 1,000,000 prefixes into a running lbd (end to end:
#     file parsing, gRPC streaming, validation, the table writes), a half --replace, `fw list`,
#     and the memory of the firewall maps as bpftool reports it;
#  2. `cargo bench --bench firewall`: load time and memory by capacity, reconciler apply time,
#     and the per-packet cost with 10 vs 1,000,000 prefixes (BPF_PROG_TEST_RUN).
# Everything runs in a private network namespace that the script removes on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "bench-firewall.sh needs root (BPF, network namespaces)"; exit 1; }
cargo build --release -q -p xdplb -p lbctl
LBD=target/release/lbd
LBCTL=target/release/lbctl

NS="xfwb-$$"
PIN="/sys/fs/bpf/xdplb-fwbench-$$"
TMP="$(mktemp -d /tmp/xdplb-fwbench.XXXXXX)"
LBD_PID=""
cleanup() {
	if [ -n "$LBD_PID" ] && kill -0 "$LBD_PID" 2>/dev/null; then
		kill -TERM "$LBD_PID" 2>/dev/null || true
		wait "$LBD_PID" 2>/dev/null || true
	fi
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$PIN" "$TMP"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add fwb0 type veth peer name fwb1
ip -n "$NS" addr add 10.250.0.1/24 dev fwb0
ip -n "$NS" link set fwb0 up
ip -n "$NS" link set fwb1 up

cat >"$TMP/lbd.toml" <<EOF
[dataplane]
interfaces = ["fwb0"]
xdp_mode = "auto"
pin_path = "$PIN"
[nat]
snat_address = "10.250.0.1"
[firewall]
capacity = 1000000
EOF
# nsenter rather than `ip netns exec`, which remounts /sys and hides /sys/fs/bpf.
# A state directory of its own: the bench neither restores nor overwrites a real lbd's state.
nsenter --net="/run/netns/$NS" "$LBD" --config "$TMP/lbd.toml" --socket "$TMP/lbd.sock" \
	--state-dir "$TMP/state" >"$TMP/lbd.log" 2>&1 &
LBD_PID=$!
for _ in $(seq 100); do
	"$LBCTL" --socket "$TMP/lbd.sock" fw list >/dev/null 2>&1 && break
	kill -0 "$LBD_PID" 2>/dev/null || { cat "$TMP/lbd.log"; exit 1; }
	sleep 0.2
done
ctl() { "$LBCTL" --socket "$TMP/lbd.sock" --timeout 60s "$@"; }

# Drop-list-shaped files: half /24, a third /32, the rest /16../23, distinct, with comments.
python3 - "$TMP" <<'EOF'
import random, sys, ipaddress
out = sys.argv[1]
rng = random.Random(7)
def prefixes(n, seen):
    res = []
    while len(res) < n:
        addr = rng.randrange(0x01000000, 0x64000000)
        r = rng.randrange(6)
        length = 24 if r < 3 else 32 if r < 5 else rng.randrange(16, 24)
        net = ipaddress.ip_network((addr, length), strict=False)
        if net not in seen:
            seen.add(net)
            res.append(net)
    return res
seen = set()
million = prefixes(1_000_000, seen)
def write(name, nets):
    with open(f"{out}/{name}", "w") as f:
        f.write("; synthetic DROP list for the firewall bench\n")
        for i, n in enumerate(nets):
            f.write(f"{n} ; SBL{i}\n")
write("100k.txt", million[:100_000])
write("100k-half.txt", million[50_000:100_000] + prefixes(50_000, seen))
write("1m.txt", million)
EOF

timed() { # label, command...
	local label=$1 start end
	shift
	start=$(date +%s.%N)
	"$@" >"$TMP/out.txt"
	end=$(date +%s.%N)
	printf '%-42s %8.2f s   %s\n' "$label" "$(awk -v s="$start" -v e="$end" 'BEGIN { print e - s }')" "$(head -c 160 "$TMP/out.txt")"
}
memory() {
	for m in fw_l2 fw_l3 fw_rules fw_hits; do
		bpftool map show pinned "$PIN/$m" 2>/dev/null | awk -v m="$m" '
			/memlock/ { for (i = 1; i <= NF; i++) if ($i == "memlock") printf "  %-9s memlock %s\n", m, $(i+1) }'
	done
}

# The metrics' map walk (xdplb_map_walk_duration_seconds) as lbd measures it: a walk is reused for
# 50 times as long as it took (at most 10 s), so scrape, wait that long, scrape again.
walk() {
	local scrape took
	scrape() {
		nsenter --net="/run/netns/$NS" curl -sf http://127.0.0.1:9469/metrics |
			awk '/^xdplb_map_walk_duration_seconds / { print $2 }'
	}
	took=$(scrape)
	sleep "$(awk -v t="${took:-0}" 'BEGIN { w = t * 50; if (w > 10) w = 10; print w + 0.2 }')"
	printf '  metrics map walk: %s s\n' "$(scrape)"
}

echo "lbctl block load (lbd with [firewall] capacity = 1000000, $(nproc) CPUs):"
ctl block add 192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 192.0.2.7/32 10.0.0.0/8 \
	172.16.0.0/12 100.64.0.0/10 198.18.0.0/15 192.88.99.0/24 233.252.0.0/24 >/dev/null
echo "10 rules:"
walk
timed "block load 100,000 prefixes" ctl block load "$TMP/100k.txt"
memory
walk
timed "block load --replace (50,000 new, 50,000 gone)" ctl block load --replace "$TMP/100k-half.txt"
timed "fw list --json (100,000 rules)" ctl --json fw list
timed "block load --replace 1,000,000 prefixes" ctl block load --replace "$TMP/1m.txt"
memory
walk
timed "fw list --json (1,000,000 rules)" ctl --json fw list
timed "block load --replace 100,000 (900,000 gone)" ctl block load --replace "$TMP/100k.txt"
echo "lbd's RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$LBD_PID/status")"

echo
cargo bench -q --bench firewall
