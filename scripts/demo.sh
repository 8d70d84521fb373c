#!/usr/bin/env bash
# The xdplb demo: builds a small network of namespaces (a client, the load balancer, two
# backends), runs lbd on it for real, and shows full-NAT traffic balanced by the XDP program.
# Everything it creates is removed on exit, even on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${XDPLB_BIN_DIR:-target/debug}
ID="xd$$"
NS_C="$ID-client" NS_LB="$ID-lb" NS_B1="$ID-b1" NS_B2="$ID-b2"
TMP=$(mktemp -d)
PIN="/sys/fs/bpf/xdplb-demo-$$"
LBD_PID=""

cleanup() {
	set +e
	[ -n "$LBD_PID" ] && kill "$LBD_PID" 2>/dev/null && wait "$LBD_PID" 2>/dev/null
	for ns in "$NS_B1" "$NS_B2"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null; done
	for ns in "$NS_C" "$NS_LB" "$NS_B1" "$NS_B2"; do ip netns del "$ns" 2>/dev/null; done
	[ -d "$PIN" ] && rm -rf "$PIN"
	rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
veth() { # veth NS_A IF_A NS_B IF_B
	ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
	for end in "$1 $2" "$3 $4"; do
		set -- $end
		# Up first: veth only enables NAPI (needed to receive XDP_TX/REDIRECT frames) for GRO
		# switched on while the link is up.
		ip -n "$1" link set "$2" up
		ip netns exec "$1" ethtool -K "$2" tx off tso off gro on >/dev/null
	done
}

say "topology: client 10.200.1.2 -- lb (10.200.1.1 | 10.200.11.1, 10.200.12.1) -- backends 10.200.11.2, 10.200.12.2"
for ns in "$NS_C" "$NS_LB" "$NS_B1" "$NS_B2"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
veth "$NS_C" eth0 "$NS_LB" eth0
veth "$NS_LB" eth1 "$NS_B1" eth0
veth "$NS_LB" eth2 "$NS_B2" eth0
ip -n "$NS_C" addr add 10.200.1.2/24 dev eth0 && ip -n "$NS_C" route add default via 10.200.1.1
ip -n "$NS_C" addr add 10.200.1.3/24 dev eth0
ip -n "$NS_LB" addr add 10.200.1.1/24 dev eth0
ip -n "$NS_LB" addr add 10.200.11.1/24 dev eth1
ip -n "$NS_LB" addr add 10.200.12.1/24 dev eth2
i=1; for ns in "$NS_B1" "$NS_B2"; do
	ip -n "$ns" addr add "10.200.1$i.2/24" dev eth0 && ip -n "$ns" route add default via "10.200.1$i.1"
	mkdir -p "$TMP/www$i" && echo "hello from backend $i (10.200.1$i.2)" > "$TMP/www$i/index.html"
	ip netns exec "$ns" python3 -m http.server 8080 --bind "10.200.1$i.2" --directory "$TMP/www$i" >/dev/null 2>&1 &
	i=$((i + 1))
done

cat > "$TMP/lbd.toml" <<TOML
[dataplane]
interfaces = ["eth0", "eth1", "eth2"]
xdp_mode = "native"
pin_path = "$PIN"
[nat]
snat_address = "10.200.1.1"
port_range = [20000, 29999]
TOML
say "starting lbd (XDP attached to the lb's three interfaces)"
nsenter --net="/run/netns/$NS_LB" "$BIN/lbd" --config "$TMP/lbd.toml" --socket "$TMP/lbd.sock" \
	--state-dir "$TMP/state" --detach-on-exit 2>"$TMP/lbd.log" &
LBD_PID=$!
for _ in $(seq 50); do [ -S "$TMP/lbd.sock" ] && break; sleep 0.1; done
LBCTL=("$BIN/lbctl" --socket "$TMP/lbd.sock")
for i in 1 2; do # wait for the backends' web servers
	for _ in $(seq 50); do
		ip netns exec "$NS_C" true && ip netns exec "$NS_LB" curl -s -o /dev/null --max-time 1 "http://10.200.1$i.2:8080/" && break
		sleep 0.1
	done
done

say "lbctl vip add 10.200.100.1:80 --proto tcp ; add two backends"
"${LBCTL[@]}" vip add 10.200.100.1:80 --proto tcp
"${LBCTL[@]}" backend add --vip 10.200.100.1:80 --proto tcp 10.200.11.2:8080
"${LBCTL[@]}" backend add --vip 10.200.100.1:80 --proto tcp 10.200.12.2:8080
"${LBCTL[@]}" vip list

say "20 HTTP requests from the client to the VIP"
for _ in $(seq 20); do ip netns exec "$NS_C" curl -sS --max-time 2 http://10.200.100.1/ || echo "request failed"; done | sort | uniq -c

say "drain backend 1 (weight 0): new connections all go to backend 2"
"${LBCTL[@]}" backend set-weight --vip 10.200.100.1:80 --proto tcp 10.200.11.2:8080 --weight 0
for _ in $(seq 10); do ip netns exec "$NS_C" curl -sS --max-time 2 http://10.200.100.1/ || echo "request failed"; done | sort | uniq -c

say "firewall: lbctl block add 10.200.1.3 -- that client is dropped in XDP, 10.200.1.2 is not"
"${LBCTL[@]}" block add 10.200.1.3
for src in 10.200.1.3 10.200.1.2; do
	printf '%s -> ' "$src"
	ip netns exec "$NS_C" curl -sS --max-time 1 --interface "$src" http://10.200.100.1/ 2>&1 | head -1 || true
done
"${LBCTL[@]}" fw list

say "rate limit: 3 new connections/s, burst 3, for 10.200.1.2 -- 10 quick requests"
"${LBCTL[@]}" ratelimit set --rate 3 --burst 3 --scope new-flows --cidr 10.200.1.2/32
ok=0; for _ in $(seq 10); do
	ip netns exec "$NS_C" curl -s -o /dev/null --max-time 0.5 --interface 10.200.1.2 http://10.200.100.1/ && ok=$((ok + 1))
done
echo "$ok of 10 requests got through (the rest were dropped in XDP; TCP would retry them)"
"${LBCTL[@]}" ratelimit list

say "counters (lbctl stats)"
"${LBCTL[@]}" stats

say "done: removing the namespaces"
