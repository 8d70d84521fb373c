/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the structs the end-to-end bench programs (e2e_gen, e2e_sink, e2e_fwd)
 * share with user space (bench/src/e2e/progs.rs reads them through the skeletons' types), and
 * the frame access the three programs share. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

/* What the generator writes into every frame. Addresses and ports in network order. */
struct e2e_gen_cfg {
	__u8 dst_mac[6];	/* the LB's client-facing interface */
	__u8 src_mac[6];	/* the client's interface */
	__u32 dst_addr;		/* the VIP */
	__u32 src_base;		/* first source address; host order is added to it */
	__u16 dst_port;		/* the VIP's port */
	__u16 src_port_base;	/* host order: first source port */
	__u32 n_addrs;		/* source addresses used (>= 1) */
	__u32 n_ports;		/* source ports per address (>= 1) */
	__u32 pad;
};

/* The sink's per-CPU counters (index into e2e_sink_counts). */
enum e2e_sink_counter {
	E2E_SINK_ALL = 0,	/* every IPv4 frame (the rest is passed) */
	E2E_SINK_UDP,		/* IPv4 UDP, not encapsulated */
	E2E_SINK_IPIP,		/* IPv4 carrying IPv4 (IPIP) */
	E2E_SINK_MAX,
};

/* One floor-forwarder target: the MACs to write and the devmap slot to send through. */
struct e2e_fwd_target {
	__u8 dst_mac[6];
	__u8 src_mac[6];
};

/* Where an Ethernet + IPv4 frame has its headers, and where the frame ends (the headers are not
 * bounds-checked yet). */
struct e2e_frame {
	struct ethhdr *eth;
	struct iphdr *ip;
	void *end;
};

static __always_inline struct e2e_frame e2e_frame(struct xdp_md *ctx)
{
	struct e2e_frame f;

	f.eth = (void *)(long)ctx->data;
	f.ip = (void *)(f.eth + 1);
	f.end = (void *)(long)ctx->data_end;
	return f;
}

/* Whether the frame holds an Ethernet header of type IPv4 and a whole IPv4 header. */
static __always_inline int e2e_is_ipv4(const struct e2e_frame *f)
{
	return (void *)(f->ip + 1) <= f->end && f->eth->h_proto == bpf_htons(ETH_P_IP);
}
