/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains every struct, enum and constant shared between the XDP
 * programs and user space. Rust reaches these through the skeleton's
 * generated `types` module: never copy a layout by hand.
 *
 * Byte order: fields named *_be are network byte order (as on the wire);
 * everything else is host order. Addresses are 16-byte unions so that IPv6
 * is an addition, not a rewrite: an IPv4 address lives in v4 (network
 * order) with the remaining 12 bytes zero.
 */
#pragma once

#ifndef __XDPLB_NO_LINUX_TYPES
#include <linux/types.h>
#include <stdbool.h>
#endif

/* Compile-time maximums (an enum, not #defines, so that they reach Rust
 * through BTF). The big tables are resized by lbd at load time. */
enum lb_limits {
	LB_MAX_VIPS = 1024,
	LB_MAX_BACKENDS = 65536,
	LB_DEFAULT_MAGLEV_SIZE = 65537,
	LB_DEFAULT_CT_SIZE = 1048576,
	LB_DEFAULT_SYN_SIZE = 65536, /* flows_syn_v2 */
	LB_MAX_CPUS = 512, /* dsr_v2 slots; lbd fills one per possible CPU */
	LB_MAX_IFACES = 64,
	/* How many SNAT ports a new flow tries before giving up (counted). */
	LB_PORT_RETRIES = 8,
};

/* Maglev ring value of an empty slot. */
enum lb_ring_values {
	LB_NO_BACKEND = 0xffffffffu,
};

enum lb_family {
	LB_AF_INET = 4,
	LB_AF_INET6 = 6,
};

enum lb_mode {
	LB_MODE_NAT = 1,
	LB_MODE_L2DSR = 2,
	LB_MODE_IPIP = 3,
};

union lb_addr {
	__u32 v4_be;
	__u32 v6_be[4];
	__u8 bytes[16];
};

/* vips: (address, port, protocol) -> struct vip_meta */
struct vip_key {
	union lb_addr addr;
	__u16 port_be;
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family; /* enum lb_family */
};

struct vip_meta {
	__u32 vip_id; /* index into maglev_outer, vip_stats */
	__u32 ring_size; /* Maglev table size (prime); 0 = no backends */
	__u8 mode; /* enum lb_mode */
	__u8 flags; /* reserved, 0 */
	__u16 pad;
};

/* backends: backend id -> struct backend */
struct backend {
	union lb_addr addr;
	__u16 port_be;
	__u8 family;
	__u8 flags; /* enum backend_flags */
};

enum backend_flags {
	/* The backend was removed or has been down past the grace: lbd's sweep
	 * (lb_flow_gc) ends its flows. Never read on the packet path. */
	LB_BACKEND_F_ENDED = 1,
};

/* lb_flow_gc's frame (BPF_PROG_TEST_RUN data in and out): what the sweep
 * did. */
struct lb_gc_report {
	__u64 rev_swept; /* expired nat_rev_v2 entries deleted */
	__u64 ended; /* entries of ended backends deleted (every table) */
	__u64 seen; /* entries looked at */
};

/* An IPv4 connection 5-tuple as it appears on the wire: the key of every
 * IPv4 flow table (16 bytes: one jhash round, half a cache line less than
 * the v1 key). IPv6 gets tables of its own, keyed by a flow_key6. */
struct flow_key4 {
	__u32 saddr_be;
	__u32 daddr_be;
	__u16 sport_be;
	__u16 dport_be;
	__u8 proto;
	__u8 pad[3];
};

enum ct_flags {
	CT_F_CLOSING = 1, /* FIN or RST seen: short timeout applies */
	CT_F_EMBRYONIC = 2, /* TCP handshake not completed: tcp_handshake timeout */
	CT_F_SYNACK = 4, /* NAT embryonic forward entry: the backend's SYN-ACK seen, ack_seq recorded */
};

/* A flow's cached next hop (bpf/nexthop.h): what bpf_fib_lookup answered for
 * the packets the flow sends on, reused until lb_config.nexthop_ttl_ns has
 * passed. Only successful lookups are stored. */
struct lb_nexthop {
	__u8 dmac[6];
	__u8 smac[6];
	__u32 ifindex; /* egress interface */
	__u16 max_len; /* largest lookup tot_len that passed the MTU check; 0 = nothing cached */
	__u16 pad;
	__u32 pad2;
	__u64 stamp_ns; /* lb_now() of the lookup that filled it (bpf/clock.h) */
};

/* Where a client flow (client -> VIP, struct flow_key4) goes: the value of
 * flows_syn_v2 (embryonic TCP flows of every mode), nat_fwd_v2 (established
 * NAT flows) and the per-CPU dsr_v2 tables (established DSR flows). A flow
 * keeps the mode it started in, so switching a VIP's mode only affects new
 * flows. One 64-byte cache line. */
struct flow4 {
	__u32 backend_be;
	__u32 src_be; /* NAT: SNAT address; IPIP: outer source; L2 DSR: 0 */
	__u16 backend_port_be;
	__u16 snat_port_be; /* NAT only */
	__u32 backend_id;
	__u16 vip_id;
	__u8 mode; /* enum lb_mode the flow started in */
	__u8 flags; /* enum ct_flags */
	/* NAT embryonic (CT_F_SYNACK): the ack_seq (wire order) that the
	 * client's ACK must carry, the backend's ISN + 1: only a client that
	 * received the SYN-ACK knows it, so blind spoofed ACKs never promote. */
	__u32 ack_seq_be;
	__u64 last_seen_ns; /* lb_now() (bpf/clock.h), not CLOCK_MONOTONIC */
	struct lb_nexthop nh; /* towards the backend (IPIP: of the outer header) */
};

/* nat_rev_v2: reply 5-tuple (backend -> SNAT address and port) -> how to
 * restore it. Its presence is what owns an SNAT port (never evicted). */
struct nat4_rev {
	__u32 client_be;
	__u32 vip_be;
	__u16 client_port_be;
	__u16 vip_port_be;
	__u32 backend_id;
	__u16 vip_id;
	__u16 flags; /* enum ct_flags */
	__u32 pad;
	__u64 last_seen_ns; /* changed by compare-and-swap when an expired entry is taken over */
	struct lb_nexthop nh; /* towards the client (VIP -> client) */
};

/* The v1 flow tables (ct_fwd, ct_rev: one shared LRU each, 40-byte keys) of
 * releases before flow tables v2. No program uses them; their layouts are
 * here so that lbd can read flows out of an older lbd's pinned tables
 * (src/dataplane/migrate.rs) through the skeleton's types. */
struct flow_key {
	union lb_addr src;
	union lb_addr dst;
	__u16 sport_be;
	__u16 dport_be;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct ct_fwd {
	union lb_addr backend_addr;
	union lb_addr snat_addr; /* NAT: SNAT address; IPIP: outer source */
	__u16 backend_port_be;
	__u16 snat_port_be; /* NAT only */
	__u32 backend_id;
	__u32 vip_id;
	__u16 flags; /* enum ct_flags */
	__u8 mode; /* enum lb_mode the flow started in */
	__u8 pad;
	__u64 last_seen_ns;
	struct lb_nexthop nh;
};

struct ct_rev {
	union lb_addr client_addr;
	union lb_addr vip_addr;
	__u16 client_port_be;
	__u16 vip_port_be;
	__u32 backend_id;
	__u32 vip_id;
	__u16 flags; /* enum ct_flags */
	__u16 pad;
	__u64 last_seen_ns;
	struct lb_nexthop nh;
};

/* flow_guard[0] (per CPU): new DSR flows recorded in the current second. */
struct lb_flow_guard {
	__u64 window_ns; /* lb_now() / 1e9 of the window the count is for */
	__u64 count;
};

/* lb_config_v2[0]: run-time settings written by lbd. */
struct lb_config {
	union lb_addr snat_addr;
	__u16 snat_port_min; /* host order, inclusive */
	__u16 snat_port_max; /* host order, inclusive */
	__u32 pad;
	__u64 tcp_timeout_ns; /* idle timeout of an established TCP flow */
	__u64 tcp_closing_timeout_ns; /* after FIN or RST */
	__u64 udp_timeout_ns;
	/* IPIP outer source: ipip_src with the bits of ipip_src_hostmask (host
	 * order) taken from the flow hash, so receivers can spread flows. */
	union lb_addr ipip_src;
	__u32 ipip_src_hostmask;
	__u32 pad2;
	/* How long a flow reuses its cached next hop (struct lb_nexthop) before
	 * asking bpf_fib_lookup again; 0 = no caching, every packet looks up. */
	__u64 nexthop_ttl_ns;
	__u64 tcp_handshake_timeout_ns; /* idle timeout of an embryonic TCP flow */
	/* The DSR new-flow guard: most new DSR flows recorded per second per
	 * CPU; above it packets are still sent by Maglev, unrecorded. 0 = off. */
	__u32 new_flows_per_cpu;
	/* Source of the ICMP time exceeded the balancer sends ([icmp] source). */
	__be32 icmp_src_be;
	/* GCRA parameters (bpf/ratelimit.h units: 1/16 ns) of the per-VIP
	 * budget of relayed ICMP errors and of the time exceeded the balancer
	 * sends; interval 0 = unlimited. */
	__u64 icmp_error_interval;
	__u64 icmp_error_burst_time;
	__u64 time_exceeded_interval;
	__u64 time_exceeded_burst_time;
};

/* icmp_budget[]: the GCRA state (one theoretical arrival time) of each ICMP
 * budget: one per VIP id, one for errors to the SNAT address, one for the
 * time exceeded the balancer sends (bpf/icmp.h). */
enum lb_icmp_budget_slots {
	LB_ICMP_BUDGET_SNAT = LB_MAX_VIPS,
	LB_ICMP_BUDGET_TIME_EXCEEDED,
	LB_ICMP_BUDGET_SLOTS,
};

/* vip_filter[0]: the destination prefilter (bpf/vip.h). One bit per hash of
 * a destination address, set for the address of every VIP: a packet whose bit
 * is clear is for no VIP and skips the vips lookup; a set bit only means "look
 * it up". */
enum lb_vip_filter_params {
	LB_VIP_FILTER_BITS_LOG2 = 16, /* 65,536 bits: ~1.6% false positives with 1,024 VIP addresses */
	LB_VIP_FILTER_WORDS = 1024, /* 64-bit words */
	LB_VIP_FILTER_MULT = 0x9e3779b1u, /* bit = (host-order address * MULT) >> (32 - BITS_LOG2) */
};

struct lb_vip_filter {
	__u64 words[LB_VIP_FILTER_WORDS]; /* bit b: words[b / 64] >> (b % 64) & 1 */
};

/* Per-VIP and per-backend counters (per-CPU; lbd sums the CPUs). */
struct lb_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* Why a packet got its verdict. Index into reason_stats. Append only:
 * lbd reads the names from this enum through BTF. */
enum lb_reason {
	LB_REASON_PASS_NOT_IP = 0, /* not IPv4 (ARP, IPv6, ...) */
	LB_REASON_PASS_NOT_VIP, /* IPv4, but neither a VIP nor a tracked reply */
	LB_REASON_PASS_FRAGMENT, /* IP fragment: no L4 header to balance on */
	LB_REASON_PASS_MALFORMED, /* could not parse L2/L3: left to the kernel */
	LB_REASON_DROP_MALFORMED, /* TCP/UDP header cut short: no receiver would take it */
	LB_REASON_DROP_NO_BACKEND, /* VIP without usable backend */
	LB_REASON_DROP_PORT_EXHAUSTED, /* no free SNAT port after retries */
	LB_REASON_DROP_CT_FULL, /* conntrack insert failed */
	LB_REASON_DROP_NO_CONFIG, /* lb_config not written yet (no SNAT ports) */
	LB_REASON_PASS_FIB_NO_NEIGH, /* next hop unresolved: kernel forwards */
	LB_REASON_PASS_FIB_FAILED, /* no route / other FIB failure */
	LB_REASON_DROP_FIB_BLACKHOLE, /* route says blackhole/unreachable/prohibit */
	LB_REASON_TX_NAT_FORWARD, /* client -> backend, rewritten */
	LB_REASON_TX_NAT_REPLY, /* backend -> client, restored */
	LB_REASON_PASS_NOT_TRACKED, /* to the SNAT address, no live conntrack entry */
	LB_REASON_PASS_EGRESS_NOT_ATTACHED, /* FIB egress is not one of lbd's interfaces */
	LB_REASON_TX_L2DSR, /* client -> backend, MACs rewritten */
	LB_REASON_TX_IPIP, /* client -> backend, IPIP encapsulated */
	LB_REASON_TX_ICMP_FRAG_NEEDED, /* too big once encapsulated, DF: ICMP sent back */
	LB_REASON_DROP_TOO_BIG, /* too big: L2 DSR, NAT without DF, or IPIP with DF that cannot be quoted */
	LB_REASON_DROP_ENCAP_FAILED, /* could not grow the frame */
	LB_REASON_DROP_DSR_NO_NEXTHOP, /* DSR next hop unresolved/unattached: passing would loop */
	LB_REASON_DROP_FIREWALL, /* source matched a firewall block rule */
	LB_REASON_DROP_RATELIMIT, /* client over its rate limit (bpf/ratelimit.h) */
	LB_REASON_DROP_FRAGMENT, /* first fragment of a VIP flow or NAT reply: the rest has no ports */
	LB_REASON_DROP_LAND, /* to a VIP from the VIP's own address: only a spoofer sends it */
	LB_REASON_TX_ICMP_ERROR, /* ICMP error about a NAT flow, rewritten for the other side (bpf/icmp.h) */
	LB_REASON_DROP_ICMP_NO_FLOW, /* ICMP error quoting a VIP flow that no backend owns */
	LB_REASON_DROP_NAT_NO_FLOW, /* TCP non-SYN to a NAT VIP without a flow: only a SYN starts one */
	/* hardening (issue 17) */
	LB_REASON_TX_ICMP_TIME_EXCEEDED, /* TTL 1 (or 0) on arrival: ICMP time exceeded sent back */
	LB_REASON_DROP_TTL_EXCEEDED, /* TTL expired: no ICMP sent (over its rate, or about an ICMP error) */
	LB_REASON_DROP_ICMP_BUDGET, /* ICMP error over its VIP's ICMP budget ([icmp] errors_per_second) */
	LB_REASON_DROP_DSR_NOT_ONLINK, /* L2 DSR backend reached through a gateway: sending would loop */
	LB_REASON_DROP_FIB_NO_NEIGH, /* NAT: next hop unresolved; the rewritten packet would be a martian */
	LB_REASON_DROP_FIB_FAILED, /* NAT: no route / other FIB failure for the rewritten packet */
	LB_REASON_DROP_EGRESS_NOT_ATTACHED, /* NAT: egress is not one of lbd's interfaces */
	/* tunnel: VLANs and IPIP fragmentation (bpf/parse.h, bpf/encap.h) */
	LB_REASON_PASS_VLAN, /* 802.1Q/802.1ad-tagged frame: the kernel's, untouched (no VLAN forwarding in XDP) */
	LB_REASON_PASS_IPIP_TOO_BIG, /* too big once encapsulated, no DF: encapsulated, the kernel fragments the outer packet */
	LB_REASON_MAX,
};

/* Flow-table events (global_stats.events), counted where they happen; not
 * verdicts. Append only: lbd reads the names through BTF. */
enum lb_event {
	LB_EV_EMBRYONIC = 0, /* a TCP flow entered flows_syn_v2 */
	LB_EV_PROMOTED, /* an embryonic flow completed its handshake: established */
	LB_EV_DSR_RECHOSEN, /* a DSR packet of no recorded flow (another CPU's, evicted): Maglev again */
	LB_EV_GUARD_SKIPPED, /* new-flow guard: a new DSR flow sent unrecorded */
	LB_EV_PORT_TAKEOVER, /* an expired SNAT port taken over (compare-and-swap won) */
	LB_EV_PORT_RACE_LOST, /* another CPU took the same expired port first: next candidate */
	LB_EV_REV_FULL, /* nat_rev_v2 full: a port candidate could not be claimed */
	LB_EV_PROMOTE_FAILED, /* the established table refused a promotion: the flow stays embryonic */
	LB_EV_SYN_BAD_ACK, /* an ACK on a NAT embryonic flow with the wrong ack number: not promoted */
	LB_EV_RESTARTED, /* a SYN on a closing entry: the old flow ended, a fresh one started */
	LB_EV_PORT_LOST, /* an embryonic NAT flow whose port another flow took (its entry was evicted): ended */
	LB_EV_MAX,
};

/* decap_stats[0]: the backend-side IPIP decapsulation program. */
struct decap_stats {
	__u64 decapsulated;
	__u64 passed; /* not IPIP, or inner destination not a configured VIP */
	/* IPIP to a VIP from an outer source not among its --lb-source prefixes */
	__u64 dropped_source;
	/* outer CE on a Not-ECT inner packet (RFC 6040 section 4.2) */
	__u64 dropped_ce_not_ect;
};

/* Verdict counters are indexed by XDP action (XDP_ABORTED..XDP_REDIRECT). */
#define LB_VERDICT_MAX 5

/* global_stats[0]: why packets got their verdicts, and the verdicts. */
struct lb_global_stats {
	__u64 reasons[LB_REASON_MAX];
	__u64 verdicts[LB_VERDICT_MAX];
	__u64 events[LB_EV_MAX];
	__u64 fence; /* scratch word of flow_fence() (bpf/flow.h), always 0 */
};

/* Firewall (bpf/firewall.h): fixed-depth tables of verdict words (maps.h). */
enum fw_limits {
	FW_DEFAULT_RULES = 1000000, /* default capacity; lbd sizes the maps from [firewall] */
	FW_L2_ENTRIES = 65536, /* fw_l2: one chunk per /16 */
	FW_L2_SLOTS = 256, /* fw_chunk: one word per /24 of a /16 */
};

enum fw_action {
	FW_BLOCK = 1, /* drop (reason drop_firewall) */
	FW_ALLOW = 2, /* pass on, marked PKT_F_FW_ALLOWED */
};

/* A verdict word (fw_chunk slots, fw_l3 values), written by lbd. The word 0
 * means: no rule, nothing longer below. */
enum fw_verdict_bits {
	FW_VERDICT_ACTION_SHIFT = 30, /* bits 30-31: enum fw_action of the deciding rule, 0 = none */
	/* fw_l2 slot, bit 29: this /24 holds rules longer than /24 (in fw_l3). Bits 24-28:
	 * a filter of the addresses that have an fw_l3 entry (bit 24 + last address byte %
	 * FW_VERDICT_DEEPER_BITS); a source whose bit is clear takes the slot's word without
	 * a hash lookup. A word with bit 29 and an empty filter (written by an lbd older than
	 * the filter) sends every address on, and a program older than the filter reads bit
	 * 29 alone: either side of an upgrade reads the other's words correctly. */
	FW_VERDICT_DEEPER_SHIFT = 24,
	FW_VERDICT_DEEPER_BITS = 5,
	FW_VERDICT_DEEPER_ANY = 1 << 29,
	FW_VERDICT_DEEPER = 0x3f << 24, /* bit 29 and the filter */
	FW_VERDICT_ID_MASK = 0xffffff, /* bits 0-23: the deciding rule's id (index into fw_hits) */
};

/* Which packets the firewall sees (fixed at load time). */
enum fw_scope {
	FW_SCOPE_VIPS = 0, /* only packets addressed to a VIP */
	FW_SCOPE_ALL = 1, /* every IPv4 packet arriving on the interface */
	FW_SCOPE_OFF = 2, /* [firewall] capacity = 0: no call site runs the stage */
};

/* fw_l2 value: the words of the 256 /24s of one /16, by third address byte
 * (each the verdict of the longest rule <= /24 covering that /24). */
struct fw_chunk {
	__u32 slot[FW_L2_SLOTS];
};

/* fw_rules value: one rule as lbd applied it. */
struct fw_rule_def {
	__u8 addr[4]; /* network byte order */
	__u8 prefixlen; /* 0..32 */
	__u8 action; /* enum fw_action; 0 = no rule has this id */
	__u8 pad[2];
};

/* IPv4 LPM trie key (rl_v4), as struct bpf_lpm_trie_key_u8: the address
 * bytes are in network byte order (a host-order key matches the wrong ranges). */
struct lpm_v4_key {
	__u32 prefixlen; /* host order, 0..32 */
	__u8 addr[4];
};

/* fw_v6 key (the IPv6 trie is declared, not yet read). */
struct lpm_v6_key {
	__u32 prefixlen; /* host order, 0..128 */
	__u8 addr[16];
};

/* fw_v6 value. */
struct fw_rule {
	__u32 rule_id; /* index into fw_hits, assigned by lbd */
	__u8 action; /* enum fw_action */
	__u8 pad[3];
};

/* fw_hits[rule_id] (per-CPU; lbd sums the CPUs). */
struct fw_counters {
	__u64 packets; /* packets whose verdict this rule decided */
};

/* Rate limiting (bpf/ratelimit.h): a GCRA token bucket per client source
 * address, the policy from the longest matching prefix in rl_v4 or the
 * default policy (id 0). */
enum rl_limits {
	RL_MAX_POLICIES = 4096, /* policy ids 0..4095; 0 is the default policy */
	RL_DEFAULT_CLIENTS = 1000000, /* rl_clients entries unless [ratelimit] clients says */
	RL_TIME_SHIFT = 4, /* bucket clock: bpf_ktime_get_ns() << 4, i.e. 1/16 ns units */
	RL_CAS_TRIES = 4, /* compare-and-swap attempts on a client's bucket */
};

enum rl_scope {
	RL_SCOPE_ALL = 1, /* every packet of the client to a VIP */
	RL_SCOPE_NEW_FLOWS = 2, /* only packets about to create a flow-table entry */
};

enum rl_policy_flags {
	/* On the default policy (id 0) only: rl_v4 holds at least one prefix,
	 * so the trie must be searched (otherwise the lookup is skipped). */
	RL_POLICY_F_OVERRIDES = 1,
};

/* rl_policies[id]: how the clients of a policy are limited. lbd computes the
 * bucket parameters from rate and burst (src/ratelimit.rs). */
struct rl_policy {
	__u64 interval; /* cost of one packet in clock units: ceil(16e9 / rate); 0 = no limit */
	__u64 burst_time; /* burst * interval: how far a client's TAT may run ahead of now */
	__u32 scope; /* enum rl_scope */
	__u32 flags; /* enum rl_policy_flags */
};

/* rl_clients key: one bucket per client source address. */
struct rl_client_key {
	union lb_addr addr;
	__u32 family; /* enum lb_family */
};

/* rl_clients value. */
struct rl_client {
	__u64 tat; /* GCRA theoretical arrival time (clock units); changed only by cmpxchg */
	__u64 dropped; /* packets dropped since the entry was created (atomic add) */
};

/* rl_stats[id] (per-CPU; lbd sums the CPUs): packets the limiter checked. */
struct rl_counters {
	__u64 allowed;
	__u64 dropped;
};

/* Packet tracing (bpf/trace.h, `lbctl trace`). lbd writes struct lb_trace_cfg
 * (the global lb_trace, section .data.trace) to start and stop a trace; the
 * program sends each matching packet's struct lb_trace_rec, followed by the
 * frame's first cap_len bytes, to trace_events. */
enum lb_trace_match {
	LB_TRACE_M_VIP_ADDR = 1, /* destination address == vip_be */
	LB_TRACE_M_VIP_PORT = 2, /* destination port == vport_be */
	LB_TRACE_M_PROTO = 4, /* IP protocol == proto */
	LB_TRACE_M_CLIENT = 8, /* source address & client_mask_be == client_be */
};

enum lb_trace_limits {
	LB_TRACE_SNAPLEN_MAX = 9216, /* most frame bytes a record carries */
};

enum lb_trace_flags {
	LB_TRACE_F_IPV4 = 1, /* the frame was IPv4 and key holds its addresses */
};

/* The trace switch and filter. on == 0: nothing else is read. The filter
 * fields are written while on == 0 (or rewritten with the same values). */
struct lb_trace_cfg {
	__u32 on;
	__u32 match_bits; /* enum lb_trace_match: which of the fields below must hold */
	__u32 vip_be;
	__u32 client_be; /* already masked */
	__u32 client_mask_be;
	__u16 vport_be;
	__u8 proto;
	__u8 pad;
	__u32 snaplen; /* frame bytes per record, <= LB_TRACE_SNAPLEN_MAX */
	__u32 pad2;
	__s64 left; /* records still to send (decremented atomically) */
	__u64 until_ns; /* bpf_ktime_get_ns() after which nothing is sent */
};

/* One traced packet (a perf sample: this struct, then cap_len frame bytes).
 * The key is the packet as it arrived; the frame is as the program left it
 * (rewritten for XDP_TX / XDP_REDIRECT, untouched for a drop or a pass). */
struct lb_trace_rec {
	__u64 ts_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	struct flow_key4 key; /* wire-order 5-tuple as received (ports 0 for ICMP) */
	__u32 ifindex; /* ingress interface */
	__u32 rx_queue;
	__u32 frame_len; /* frame length at the exit */
	__u32 cap_len; /* frame bytes following this struct */
	__u8 reason; /* enum lb_reason */
	__u8 verdict; /* XDP action */
	__u8 tcp_flags;
	__u8 flags; /* enum lb_trace_flags */
	__u32 pad;
};

/* lb_explain (bpf/explain.bpf.c, never attached): what the pipeline decided
 * for one synthesized packet, run through BPF_PROG_TEST_RUN against the live
 * maps with every map write compiled out (bpf/explain.h). The program's own
 * .bss holds it; lbd reads it after the run (src/dataplane/explain.rs). */
enum lb_explain_stages {
	LB_EX_FIREWALL = 1, /* the firewall judged the source (fw_word) */
	LB_EX_VIP = 2, /* a VIP matched (vip_*) */
	LB_EX_RATELIMIT = 4, /* a rate-limit policy applies (rl_*) */
	LB_EX_FLOW = 8, /* a live flow entry was found (flow_*) */
	LB_EX_MAGLEV = 16, /* a new flow's backend was picked on the ring (hash, slot) */
	LB_EX_BACKEND = 32, /* the backend is known (backend_*) */
	LB_EX_NEXTHOP = 64, /* a next hop was resolved or looked up (nh_*) */
	LB_EX_SNAT = 128, /* a new NAT flow's SNAT port (snat_port_be) */
	LB_EX_FLOW_RESTART = 256, /* a SYN on a closing entry: the old flow would end */
	LB_EX_RECORD = 512, /* the new flow would be recorded in a flow table */
	LB_EX_RL_EXEMPT = 1024, /* the firewall allow-listed the source: no rate limit */
	LB_EX_PORT_LOST = 2048, /* an embryonic NAT flow whose port another flow holds */
	LB_EX_NH_CACHED = 4096, /* the next hop came from the flow's cache, no lookup */
	LB_EX_EGRESS_ATTACHED = 8192, /* the egress is the ingress or in tx_ports */
	LB_EX_REPLY = 16384, /* a reply of a tracked NAT flow (backend -> SNAT address) */
	LB_EX_ICMP = 32768, /* an ICMP error about a flow */
};

enum lb_explain_rl_result {
	LB_EX_RL_NOT_CHARGED = 0, /* no policy charged the packet (no limit, or new-flows and a live flow) */
	LB_EX_RL_ALLOWED = 1,
	LB_EX_RL_LIMITED = 2,
};

struct lb_explain {
	__s32 action; /* the XDP verdict */
	__u32 reason; /* enum lb_reason */
	__u32 stages; /* enum lb_explain_stages */
	__u32 fw_word; /* the source's firewall verdict word (enum fw_verdict_bits) */
	/* rate limit */
	__u32 rl_policy; /* policy id (0: the default policy) */
	__u32 rl_scope; /* enum rl_scope */
	__u32 rl_result; /* enum lb_explain_rl_result */
	__u32 rl_pad;
	__u64 rl_interval; /* the policy's parameters, 1/16 ns */
	__u64 rl_burst_time;
	__u64 rl_tat; /* the client's bucket (0: none yet: a full burst) */
	__u64 rl_now; /* bpf_ktime_get_ns() << RL_TIME_SHIFT of the check */
	/* VIP */
	__u32 vip_id;
	__u32 vip_ring_size;
	__u8 vip_mode; /* enum lb_mode */
	/* flow */
	__u8 flow_table; /* enum flow_table of bpf/flow.h: 1 DSR (this CPU), 2 NAT, 3 embryonic */
	__u8 flow_flags; /* enum ct_flags of the entry */
	__u8 mode; /* enum lb_mode the packet is sent in (the flow's) */
	__u32 flow_cpu; /* the CPU whose DSR table holds the flow (flow_table 1) */
	__u64 flow_idle_ns; /* lb_now() - the entry's last_seen_ns */
	__u32 hash; /* flow hash (new flows) */
	__u32 slot; /* Maglev slot: hash % ring size */
	/* backend */
	__u32 backend_id;
	__u32 backend_be;
	__u16 backend_port_be;
	__u16 snat_port_be; /* NAT: the flow's SNAT port (new: the first candidate free now) */
	__u32 src_be; /* the address the packet leaves with (NAT: SNAT address; IPIP: outer source) */
	/* next hop */
	__s32 fib_rc; /* bpf_fib_lookup's return (enum BPF_FIB_LKUP_RET_*), -1: not looked up */
	__u32 nh_src_be; /* the lookup: source and destination */
	__u32 nh_dst_be;
	__u32 nh_gateway_be; /* the neighbour the packet goes to (bpf_fib_lookup's ipv4_dst) */
	__u32 nh_ifindex; /* egress interface */
	__u32 nh_mtu; /* FRAG_NEEDED: the egress MTU */
	__u16 nh_len; /* tot_len the lookup was made for */
	__u8 nh_dmac[6];
	__u8 nh_smac[6];
	__u16 nh_pad;
};
