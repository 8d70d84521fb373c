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

/**
 * forward - send the rewritten IPv4 packet towards its new destination
 * @ok_reason: the reason counted when the packet leaves through XDP
 *
 * Returns XDP_TX, XDP_REDIRECT, XDP_PASS (neighbour unresolved, no route, or
 * an egress interface lbd is not attached to: the kernel gets the frame with
 * its MAC addresses untouched) or XDP_DROP (blackhole).
 */
static __always_inline int forward(struct xdp_md *ctx, struct packet *pkt, enum lb_reason ok_reason)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip = pkt->ip;
	struct ethhdr *eth = pkt->eth;
	long rc;

	if ((void *)(ip + 1) > pkt->data_end || (void *)(eth + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);

	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return verdict(pkt, LB_REASON_PASS_FIB_NO_NEIGH, XDP_PASS);
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return verdict(pkt, LB_REASON_DROP_FIB_BLACKHOLE, XDP_DROP);
	default:
		return verdict(pkt, LB_REASON_PASS_FIB_FAILED, XDP_PASS);
	}

	/* Choose the way out before touching the frame: a frame handed to the
	 * kernel must keep the MAC addresses it arrived with. */
	if (fib.ifindex != ctx->ingress_ifindex &&
	    bpf_redirect_map(&tx_ports, fib.ifindex, 0) != XDP_REDIRECT)
		return verdict(pkt, LB_REASON_PASS_EGRESS_NOT_ATTACHED, XDP_PASS);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	pkt->reason = ok_reason;
	return fib.ifindex == ctx->ingress_ifindex ? XDP_TX : XDP_REDIRECT;
}
