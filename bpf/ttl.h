/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains forwarding like a router: every packet the balancer
 * sends on (NAT both ways, L2 DSR, the inner packet of IPIP, relayed ICMP
 * errors) leaves with its TTL one less, the IPv4 checksum patched; one that
 * arrives with TTL 1 (or 0) is answered with ICMP time exceeded from the
 * balancer's address (lb_config.icmp_src_be, [icmp] source), within the
 * time-exceeded budget, so that the balancer shows up in traceroute and a
 * routing loop through it dies out. An expired ICMP error is dropped: no
 * ICMP error is ever sent about one (RFC 1122 3.2.2). */
#pragma once

#include <linux/icmp.h>
#include <linux/ip.h>
#include "csum.h"
#include "encap.h"
#include "maps.h"
#include "parse.h"
#include "ratelimit.h"

/* One less TTL; the checksum patched for the 16-bit word it shares with the
 * protocol. The caller checked that the TTL is above 1. */
static __always_inline void ip_ttl_dec(struct iphdr *ip)
{
	__u16 *word = (__u16 *)&ip->ttl;
	__u16 old = *word;

	ip->ttl -= 1;
	ip->check = csum_replace2(ip->check, old, *word);
}

/* Whether the ICMP budget @slot (enum lb_icmp_budget_slots) lets one more
 * message through, GCRA with @interval/@burst_time (0: unlimited). */
static __always_inline bool icmp_budget_take(__u32 slot, __u64 interval, __u64 burst_time)
{
	__u64 *tat;

	if (interval == 0)
		return true;
	tat = bpf_map_lookup_elem(&icmp_budget, &slot);
	if (!tat)
		return true;
	return gcra_take(tat, interval, burst_time, bpf_ktime_get_ns() << RL_TIME_SHIFT);
}

/**
 * ttl_expired - the TTL stage of a packet the balancer is about to send on
 *
 * TTL above 1: LB_CONTINUE (the sending path decrements it). Otherwise the
 * packet goes no further: an ICMP error about a flow (@is_error) is dropped;
 * anything else is answered with time exceeded from the balancer's address
 * (the packet's destination when lbd set none) while the budget allows,
 * dropped (drop_ttl_exceeded) when it does not.
 */
static __always_inline int ttl_expired(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg,
				       bool is_error)
{
	struct iphdr *ip = pkt->ip;
	__be32 src;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	if (ip->ttl > 1)
		return LB_CONTINUE;
	if (is_error ||
	    !icmp_budget_take(LB_ICMP_BUDGET_TIME_EXCEEDED, cfg->time_exceeded_interval,
			      cfg->time_exceeded_burst_time))
		return verdict(pkt, LB_REASON_DROP_TTL_EXCEEDED, XDP_DROP);
	src = cfg->icmp_src_be ? cfg->icmp_src_be : ip->daddr;
	return icmp_reply(ctx, pkt, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, 0, src, LB_REASON_TX_ICMP_TIME_EXCEEDED,
			  LB_REASON_DROP_TTL_EXCEEDED);
}
