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
	__u8 flags; /* reserved, 0 */
};

/* A connection 5-tuple as it appears on the wire. */
struct flow_key {
	union lb_addr src;
	union lb_addr dst;
	__u16 sport_be;
	__u16 dport_be;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

enum ct_flags {
	CT_F_CLOSING = 1, /* FIN or RST seen: short timeout applies */
};

/* ct_fwd, the flow table: client 5-tuple (client -> VIP) -> where the flow
 * goes. It holds NAT and DSR flows alike; a flow keeps the mode it started
 * in, so switching a VIP's mode only affects new flows. */
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
	__u64 last_seen_ns; /* coarse monotonic clock */
};

/* ct_rev: reply 5-tuple (backend -> SNAT address) -> how to restore it */
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
};

/* lb_config[0]: run-time settings written by lbd. */
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
	LB_REASON_DROP_TOO_BIG, /* too big once encapsulated, no DF (or cannot quote it) */
	LB_REASON_DROP_ENCAP_FAILED, /* could not grow the frame */
	LB_REASON_DROP_DSR_NO_NEXTHOP, /* DSR next hop unresolved/unattached: passing would loop */
	LB_REASON_MAX,
};

/* decap_stats[0]: the backend-side IPIP decapsulation program. */
struct decap_stats {
	__u64 decapsulated;
	__u64 passed; /* not IPIP, or inner destination not a configured VIP */
};

/* Verdict counters are indexed by XDP action (XDP_ABORTED..XDP_REDIRECT). */
#define LB_VERDICT_MAX 5

/* global_stats[0]: why packets got their verdicts, and the verdicts. */
struct lb_global_stats {
	__u64 reasons[LB_REASON_MAX];
	__u64 verdicts[LB_VERDICT_MAX];
};
