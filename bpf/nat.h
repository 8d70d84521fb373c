/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the full-NAT header rewrite: new addresses and ports,
 * with the IPv4 and TCP/UDP checksums updated incrementally. */
#pragma once

#include "csum.h"
#include "parse.h"

/**
 * nat_rewrite - rewrite the 4-tuple of @pkt (all arguments in wire order)
 *
 * Returns LB_CONTINUE, or XDP_DROP if the L4 header is not where the parser
 * left it (cannot happen; the bounds are re-checked for the verifier).
 */
static __always_inline int nat_rewrite(struct packet *pkt, __u32 saddr, __u32 daddr, __u16 sport,
				       __u16 dport)
{
	struct iphdr *ip = pkt->ip;
	__u32 old_saddr, old_daddr;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	old_saddr = ip->saddr;
	old_daddr = ip->daddr;
	ip->check = csum_replace4(ip->check, old_saddr, saddr);
	ip->check = csum_replace4(ip->check, old_daddr, daddr);
	ip->saddr = saddr;
	ip->daddr = daddr;

	if (pkt->key.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = pkt->l4;
		__u16 check;

		if ((void *)(tcp + 1) > pkt->data_end)
			return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
		check = csum_replace4(tcp->check, old_saddr, saddr);
		check = csum_replace4(check, old_daddr, daddr);
		check = csum_replace2(check, tcp->source, sport);
		tcp->check = csum_replace2(check, tcp->dest, dport);
		tcp->source = sport;
		tcp->dest = dport;
	} else {
		struct udphdr *udp = pkt->l4;
		__u16 check;

		if ((void *)(udp + 1) > pkt->data_end)
			return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
		/* A zero UDP checksum means "none" and stays zero. */
		if (udp->check) {
			check = csum_replace4(udp->check, old_saddr, saddr);
			check = csum_replace4(check, old_daddr, daddr);
			check = csum_replace2(check, udp->source, sport);
			check = csum_replace2(check, udp->dest, dport);
			udp->check = check ? check : 0xffff;
		}
		udp->source = sport;
		udp->dest = dport;
	}
	return LB_CONTINUE;
}
