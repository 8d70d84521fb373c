/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains IPIP encapsulation (IPIP DSR) and the ICMP "fragmentation
 * needed" reply for a packet that would be too big once encapsulated. Both
 * grow the frame at its head; every pointer is re-read from the context and
 * re-checked afterwards. */
#pragma once

#include <linux/icmp.h>
#include <linux/ip.h>
#include "csum.h"
#include "parse.h"

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

#define IPIP_OVERHEAD ((int)sizeof(struct iphdr))
/* What an ICMP error quotes of the offending packet: its IPv4 header (no
 * options) and the first 8 bytes of its payload. */
#define ICMP_QUOTE_LEN (sizeof(struct iphdr) + 8)
/* IPv4 header + ICMP header + quote. */
#define ICMP_TOO_BIG_LEN (sizeof(struct iphdr) + sizeof(struct icmphdr) + ICMP_QUOTE_LEN)

/* Copies the L2 header (14 bytes, 18 with a VLAN tag) from @from bytes
 * further on to the front of the frame. Returns false if out of bounds. */
static __always_inline bool move_l2_to_front(void *data, void *data_end, __u32 from, __u8 l2_len)
{
	if (l2_len == 18) {
		if (data + from + 18 > data_end)
			return false;
		__builtin_memcpy(data, data + from, 18);
		return true;
	}
	if (data + from + 14 > data_end)
		return false;
	__builtin_memcpy(data, data + from, 14);
	return true;
}

/**
 * encap_ipip - put an outer IPv4 header (@saddr -> @daddr, protocol 4, TTL
 * 64) in front of the packet's IP header; the inner packet stays byte for byte
 *
 * Returns LB_CONTINUE or a verdict (the frame could not grow).
 */
static __always_inline int encap_ipip(struct xdp_md *ctx, struct packet *pkt, __u32 saddr, __u32 daddr)
{
	struct iphdr *inner = pkt->ip;
	__u8 l2_len = pkt->l2_len;
	void *data, *data_end;
	struct iphdr *outer;
	__u16 inner_len, df;
	__u8 tos;

	if ((void *)(inner + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	inner_len = bpf_ntohs(inner->tot_len);
	tos = inner->tos;
	df = inner->frag_off & bpf_htons(IP_DF);

	if (bpf_xdp_adjust_head(ctx, -IPIP_OVERHEAD))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (!move_l2_to_front(data, data_end, IPIP_OVERHEAD, l2_len))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	outer = data + (l2_len == 18 ? 18 : 14);
	if ((void *)(outer + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);

	*(__u8 *)outer = 0x45; /* version 4, ihl 5 */
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + IPIP_OVERHEAD);
	outer->id = 0;
	outer->frag_off = df;
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = saddr;
	outer->daddr = daddr;
	outer->check = csum_ipv4_hdr(outer);
	return LB_CONTINUE;
}

/**
 * icmp_too_big - turn the packet into an ICMP "fragmentation needed" (type 3
 * code 4) to its sender, from the address it was sent to, quoting its IPv4
 * header and 8 bytes, with next-hop MTU @mtu; sent back with XDP_TX
 *
 * A packet with IP options is dropped instead (counted as too big).
 */
static __always_inline int icmp_too_big(struct xdp_md *ctx, struct packet *pkt, __u16 mtu)
{
	struct ethhdr *eth = pkt->eth;
	struct iphdr *ip = pkt->ip;
	__u8 l2_len = pkt->l2_len;
	__u8 client_mac[ETH_ALEN], our_mac[ETH_ALEN];
	__u32 client, vip, sum = 0;
	void *data, *data_end;
	struct icmphdr *icmp;
	__u16 *w;
	int grow = (int)(sizeof(struct iphdr) + sizeof(struct icmphdr));
	int i, cut;

	if ((void *)(eth + 1) > pkt->data_end || (void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	if (ip->ihl != 5)
		return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(our_mac, eth->h_dest, ETH_ALEN);
	client = ip->saddr;
	vip = ip->daddr;

	if (bpf_xdp_adjust_head(ctx, -grow))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (!move_l2_to_front(data, data_end, grow, l2_len))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	__builtin_memcpy(eth->h_dest, client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);

	/* Cut everything after the quote. */
	cut = (int)(l2_len + ICMP_TOO_BIG_LEN) - (int)(data_end - data);
	if (cut > 0 || bpf_xdp_adjust_tail(ctx, cut))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip = data + (l2_len == 18 ? 18 : 14);
	if ((void *)ip + ICMP_TOO_BIG_LEN > data_end)
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);

	*(__u8 *)ip = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(ICMP_TOO_BIG_LEN);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = vip;
	ip->daddr = client;
	ip->check = csum_ipv4_hdr(ip);

	icmp = (void *)(ip + 1);
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);
	w = (void *)icmp;
#pragma unroll
	for (i = 0; i < (int)(sizeof(struct icmphdr) + ICMP_QUOTE_LEN) / 2; i++)
		sum += w[i];
	icmp->checksum = ~csum_fold(sum);
	pkt->reason = LB_REASON_TX_ICMP_FRAG_NEEDED;
	return XDP_TX;
}
