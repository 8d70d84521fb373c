/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the next-hop stage: bpf_fib_lookup for the rewritten
 * packet (or a flow's cached answer to it), MAC rewrite, and the choice
 * between XDP_TX (same interface) and XDP_REDIRECT through the tx_ports
 * devmap. A failure is a verdict for the caller to keep or turn into a drop:
 * a packet rewritten for NAT, or sent DSR, must not go to the kernel (the
 * rewritten one is a martian there, the VIP-addressed one would be routed
 * back here); the paths decide before they rewrite. */
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
	EXPLAIN_STAGE(LB_EX_NEXTHOP);
	EXPLAIN(fib_rc, rc);
	EXPLAIN(nh_src_be, src);
	EXPLAIN(nh_dst_be, dst);
	EXPLAIN(nh_len, tot_len);
	EXPLAIN(nh_gateway_be, fib->ipv4_dst);
	EXPLAIN(nh_ifindex, fib->ifindex);
	EXPLAIN(nh_mtu, fib->mtu_result);
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

/* What nexthop_resolve() found: where to send (copied from a flow's cache or
 * from the lookup's answer), or the MTU that the packet exceeds. */
struct nexthop_answer {
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u32 ifindex;
	__u32 mtu; /* LB_NEXTHOP_FRAG_NEEDED: the egress MTU */
};

/**
 * nexthop_resolve - the next hop of a flow's packet of @tot_len bytes @src -> @dst
 * @cache: the flow's cached next hop (in its flow-table entry, or in the entry
 *         about to be inserted), or NULL: look up, store nothing
 * @now: the clock the packet already read (lb_now(); unused without @cache)
 * @onlink: the next hop must be @dst itself (L2 DSR: the backend must be on
 *          the link); a route through a gateway is dropped
 *          (drop_dsr_not_onlink) and never cached
 * @a: filled with the next hop to send with, or the MTU on FRAG_NEEDED
 *
 * The cache answers while it is younger than lb_config.nexthop_ttl_ns (0: never)
 * and the packet is no bigger than max_len: bpf_fib_lookup reports no MTU when
 * it succeeds, so all that is known is that packets up to the length it last
 * let through fit. A bigger packet, or an older cache, asks bpf_fib_lookup,
 * whose success refills the cache (stamp now, max_len this packet's length).
 * Failures are never stored: FRAG_NEEDED leaves the cache to the smaller
 * packets it is good for; any other failure empties it (max_len 0), so that
 * the flow's next packets look up again.
 *
 * The cache is shared between CPUs and written without a lock: CPUs refreshing
 * it at the same time write the same values. A packet reading it while a
 * refresh changes the answer (a new neighbour MAC, another route) may use part
 * of the old and part of the new answer; that takes a next-hop change, and the
 * packets of that instant are all it can concern.
 *
 * Returns LB_CONTINUE (a's next hop set), LB_NEXTHOP_FRAG_NEEDED (a->mtu set), or the
 * verdict of nexthop_lookup().
 */
static __always_inline int nexthop_resolve(struct xdp_md *ctx, struct packet *pkt,
					   const struct lb_config *cfg, struct lb_nexthop *cache,
					   __u32 src, __u32 dst, __u16 tot_len, __u8 tos, __u8 l4_proto,
					   __u64 now, bool onlink, struct nexthop_answer *a)
{
	__u64 ttl = cfg->nexthop_ttl_ns;

	if (cache && tot_len <= cache->max_len && now - cache->stamp_ns < ttl) {
		__builtin_memcpy(a->dmac, cache->dmac, ETH_ALEN);
		__builtin_memcpy(a->smac, cache->smac, ETH_ALEN);
		a->ifindex = cache->ifindex;
		EXPLAIN_STAGE(LB_EX_NEXTHOP | LB_EX_NH_CACHED);
		EXPLAIN(fib_rc, -1);
		EXPLAIN(nh_src_be, src);
		EXPLAIN(nh_dst_be, dst);
		EXPLAIN(nh_len, tot_len);
		EXPLAIN(nh_ifindex, cache->ifindex);
		return LB_CONTINUE;
	}
	{
		struct bpf_fib_lookup fib = {};
		int action = nexthop_lookup(ctx, pkt, &fib, src, dst, tot_len, tos, l4_proto);

		if (action == LB_NEXTHOP_FRAG_NEEDED) {
			a->mtu = fib.mtu_result;
			return action;
		}
		/* bpf_fib_lookup answers a gateway's address in ipv4_dst. */
		if (action == LB_CONTINUE && onlink && fib.ipv4_dst != dst)
			action = verdict(pkt, LB_REASON_DROP_DSR_NOT_ONLINK, XDP_DROP);
		if (action != LB_CONTINUE) {
			if (cache && cache->max_len && !LB_EXPLAINING)
				cache->max_len = 0;
			return action;
		}
		__builtin_memcpy(a->dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(a->smac, fib.smac, ETH_ALEN);
		a->ifindex = fib.ifindex;
		if (cache && ttl && !LB_EXPLAINING) {
			__builtin_memcpy(cache->dmac, fib.dmac, ETH_ALEN);
			__builtin_memcpy(cache->smac, fib.smac, ETH_ALEN);
			cache->ifindex = fib.ifindex;
			cache->max_len = tot_len;
			cache->stamp_ns = now;
		}
		return LB_CONTINUE;
	}
}

/**
 * nexthop_send - write the MACs of the next hop @nh (nexthop_resolve()) and send the frame
 *
 * Reads the frame from @ctx afresh, so it is valid after the head moved.
 * Chooses the way out before touching the frame: a frame handed to the
 * kernel must keep the MAC addresses it arrived with.
 * Returns XDP_TX, XDP_REDIRECT, or XDP_PASS (egress not attached).
 */
static __always_inline int nexthop_send(struct xdp_md *ctx, struct packet *pkt,
					const struct nexthop_answer *nh, enum lb_reason ok_reason)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = nh->ifindex;

	if ((void *)(eth + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	EXPLAIN(nh_ifindex, ifindex);
	EXPLAIN_COPY(nh_dmac, nh->dmac, ETH_ALEN);
	EXPLAIN_COPY(nh_smac, nh->smac, ETH_ALEN);
	/* Explain: a devmap lookup says whether lbd attached to the egress,
	 * leaving the redirect state of this CPU to the packets it is for. */
	if (ifindex != ctx->ingress_ifindex &&
	    (LB_EXPLAINING ? !bpf_map_lookup_elem(&tx_ports, &ifindex) :
			     bpf_redirect_map(&tx_ports, ifindex, 0) != XDP_REDIRECT))
		return verdict(pkt, LB_REASON_PASS_EGRESS_NOT_ATTACHED, XDP_PASS);
	EXPLAIN_STAGE(LB_EX_EGRESS_ATTACHED);
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	pkt->reason = ok_reason;
	return ifindex == ctx->ingress_ifindex ? XDP_TX : XDP_REDIRECT;
}

/**
 * nat_no_pass - a NAT path's verdict @action, with XDP_PASS turned into a
 * drop that keeps its cause: the packet is (or is about to be) rewritten
 * from the SNAT address or a VIP, which the kernel drops as a martian, so
 * passing it would only hide the drop as a "pass"
 */
static __always_inline int nat_no_pass(struct packet *pkt, int action)
{
	if (action != XDP_PASS)
		return action;
	if (pkt->reason == LB_REASON_PASS_FIB_NO_NEIGH)
		return verdict(pkt, LB_REASON_DROP_FIB_NO_NEIGH, XDP_DROP);
	if (pkt->reason == LB_REASON_PASS_EGRESS_NOT_ATTACHED)
		return verdict(pkt, LB_REASON_DROP_EGRESS_NOT_ATTACHED, XDP_DROP);
	return verdict(pkt, LB_REASON_DROP_FIB_FAILED, XDP_DROP);
}
