/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the next-hop stage: bpf_fib_lookup for the rewritten
 * packet, MAC rewrite, and the choice between XDP_TX (same interface) and
 * XDP_REDIRECT through the tx_ports devmap. Failures degrade to XDP_PASS
 * (the kernel forwards the already rewritten packet) and are counted. */
#pragma once

#include <linux/if_ether.h>
#include "maps.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* nexthop_lookup() found that the packet is too big for the egress MTU
 * (fib->mtu_result holds it): the caller decides what to do. */
#define LB_NEXTHOP_FRAG_NEEDED (-2)

/**
 * nexthop_lookup - bpf_fib_lookup for a packet of @tot_len bytes @src -> @dst
 * @fib: filled with the egress interface and MAC addresses
 *
 * Returns LB_CONTINUE, LB_NEXTHOP_FRAG_NEEDED, or a verdict: XDP_PASS when
 * the neighbour is unresolved or the lookup fails otherwise (the kernel gets
 * the packet), XDP_DROP for blackhole, unreachable and prohibit routes.
 */
static __always_inline int nexthop_lookup(struct xdp_md *ctx, struct packet *pkt,
					  struct bpf_fib_lookup *fib, __u32 src, __u32 dst,
					  __u16 tot_len, __u8 tos, __u8 l4_proto)
{
	long rc;

	fib->family = AF_INET;
	fib->tos = tos;
	fib->l4_protocol = l4_proto;
	fib->tot_len = tot_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		return LB_CONTINUE;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return LB_NEXTHOP_FRAG_NEEDED;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return verdict(pkt, LB_REASON_PASS_FIB_NO_NEIGH, XDP_PASS);
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return verdict(pkt, LB_REASON_DROP_FIB_BLACKHOLE, XDP_DROP);
	default:
		return verdict(pkt, LB_REASON_PASS_FIB_FAILED, XDP_PASS);
	}
}

/**
 * nexthop_send - write the MACs found by nexthop_lookup() and send the frame
 *
 * Reads the frame from @ctx afresh, so it is valid after the head moved.
 * Chooses the way out before touching the frame: a frame handed to the
 * kernel must keep the MAC addresses it arrived with.
 * Returns XDP_TX, XDP_REDIRECT, or XDP_PASS (egress not attached).
 */
static __always_inline int nexthop_send(struct xdp_md *ctx, struct packet *pkt,
					const struct bpf_fib_lookup *fib, enum lb_reason ok_reason)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	if (fib->ifindex != ctx->ingress_ifindex &&
	    bpf_redirect_map(&tx_ports, fib->ifindex, 0) != XDP_REDIRECT)
		return verdict(pkt, LB_REASON_PASS_EGRESS_NOT_ATTACHED, XDP_PASS);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	pkt->reason = ok_reason;
	return fib->ifindex == ctx->ingress_ifindex ? XDP_TX : XDP_REDIRECT;
}

/**
 * forward - send the packet, as its IP header now reads, towards its
 * destination (NAT paths: the header was rewritten in place)
 */
static __always_inline int forward(struct xdp_md *ctx, struct packet *pkt, enum lb_reason ok_reason)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip = pkt->ip;
	int action;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	action = nexthop_lookup(ctx, pkt, &fib, ip->saddr, ip->daddr, bpf_ntohs(ip->tot_len), ip->tos,
				ip->protocol);
	if (action == LB_NEXTHOP_FRAG_NEEDED)
		return verdict(pkt, LB_REASON_PASS_FIB_FAILED, XDP_PASS);
	if (action != LB_CONTINUE)
		return action;
	return nexthop_send(ctx, pkt, &fib, ok_reason);
}
