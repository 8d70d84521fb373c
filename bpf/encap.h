/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains IPIP encapsulation (IPIP DSR) and the ICMP replies built
 * in XDP (icmp_reply(): "fragmentation needed" for a packet that would be too
 * big, time exceeded in bpf/ttl.h). Both grow the frame at its head; every
 * pointer is re-read from the context and re-checked afterwards. */
#pragma once

#include <linux/icmp.h>
#include <linux/ip.h>
#include "csum.h"
#include "maps.h"
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

/* ipip_ids: a CPU's counter starts at its number times 2^16 / golden ratio
 * (mod 2^16), which keeps the starts of any few CPUs far apart; the bit above
 * the 16-bit ID marks the counter as started. */
#define IPIP_ID_SPREAD 40503u
#define IPIP_ID_STARTED (1ull << 32)

/**
 * ipip_outer_id - the outer IPv4 ID of an IPIP packet that may be fragmented
 * (DF clear), network byte order
 *
 * RFC 6864: the ID of a datagram that may be fragmented must not repeat for
 * one (source, destination, protocol) within its lifetime. A per-CPU counter
 * (a PERCPU_ARRAY lookup, inlined; no atomic) gives the packets of one CPU
 * 65536 distinct IDs in a row, whatever flow they belong to, and a flow's
 * packets stay on one CPU (RSS) unless the queues are reconfigured. So that
 * a flow moved to another CPU does not meet its recent IDs again, each CPU's
 * counter starts far from the others' (IPIP_ID_SPREAD); the one helper call
 * (the CPU number) is paid once per CPU. DF-set packets keep ID 0 (atomic
 * datagrams, RFC 6864 section 4.1): the common path pays nothing.
 */
static __always_inline __be16 ipip_outer_id(void)
{
	__u32 zero = 0;
	__u64 *next = bpf_map_lookup_elem(&ipip_ids, &zero);
	__u64 id;

	if (!next)
		return 0;
	id = *next;
	if (!(id & IPIP_ID_STARTED))
		id = IPIP_ID_STARTED | ((bpf_get_smp_processor_id() * IPIP_ID_SPREAD) & 0xffff);
	if (!LB_EXPLAINING)
		*next = id + 1;
	return bpf_htons((__u16)id);
}

/**
 * encap_ipip - put an outer IPv4 header (@saddr -> @daddr, protocol 4, TTL
 * 64, TOS and DF of the inner header, ID by ipip_outer_id() if DF is clear)
 * in front of the packet's IP header; the inner packet stays byte for byte
 *
 * Returns LB_CONTINUE or a verdict (the frame could not grow).
 */
static __always_inline int encap_ipip(struct xdp_md *ctx, struct packet *pkt, __u32 saddr, __u32 daddr)
{
	struct iphdr *inner = pkt->ip;
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
	outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	/* The Ethernet header to the front (the frames here are untagged). */
	__builtin_memcpy(data, data + IPIP_OVERHEAD, sizeof(struct ethhdr));

	*(__u8 *)outer = 0x45; /* version 4, ihl 5 */
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + IPIP_OVERHEAD);
	outer->id = df ? 0 : ipip_outer_id();
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
 * icmp_reply - turn the packet into ICMP @type/@code (@rest: the 4 bytes
 * after the checksum, wire order) to its sender, from @src, quoting its IPv4
 * header and 8 bytes; sent back with XDP_TX (reason @ok_reason)
 *
 * A packet with IP options is dropped instead, counted as @fail_reason.
 */
static __always_inline int icmp_reply(struct xdp_md *ctx, struct packet *pkt, __u8 type, __u8 code,
				      __u32 rest, __be32 src, enum lb_reason ok_reason,
				      enum lb_reason fail_reason)
{
	struct ethhdr *eth = pkt->eth;
	struct iphdr *ip = pkt->ip;
	__u8 sender_mac[ETH_ALEN], our_mac[ETH_ALEN];
	__u32 sender, sum = 0;
	void *data, *data_end;
	struct icmphdr *icmp;
	__u16 *w;
	int grow = (int)(sizeof(struct iphdr) + sizeof(struct icmphdr));
	int i, cut;

	if ((void *)(eth + 1) > pkt->data_end || (void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	if (ip->ihl != 5)
		return verdict(pkt, fail_reason, XDP_DROP);
	__builtin_memcpy(sender_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(our_mac, eth->h_dest, ETH_ALEN);
	sender = ip->saddr;

	if (bpf_xdp_adjust_head(ctx, -grow))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	__builtin_memcpy(eth->h_dest, sender_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	/* Cut everything after the quote. */
	cut = (int)(sizeof(struct ethhdr) + ICMP_TOO_BIG_LEN) - (int)(data_end - data);
	if (cut > 0 || bpf_xdp_adjust_tail(ctx, cut))
		return verdict(pkt, LB_REASON_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip = data + sizeof(struct ethhdr);
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
	ip->saddr = src;
	ip->daddr = sender;
	ip->check = csum_ipv4_hdr(ip);

	icmp = (void *)(ip + 1);
	icmp->type = type;
	icmp->code = code;
	icmp->checksum = 0;
	icmp->un.gateway = rest;
	w = (void *)icmp;
#pragma unroll
	for (i = 0; i < (int)(sizeof(struct icmphdr) + ICMP_QUOTE_LEN) / 2; i++)
		sum += w[i];
	icmp->checksum = ~csum_fold(sum);
	pkt->reason = ok_reason;
	return XDP_TX;
}

/**
 * icmp_too_big - turn the packet into an ICMP "fragmentation needed" (type 3
 * code 4) to its sender, from the address it was sent to, with next-hop MTU
 * @mtu (icmp_reply()); a packet with IP options is dropped (drop_too_big)
 */
static __always_inline int icmp_too_big(struct xdp_md *ctx, struct packet *pkt, __u16 mtu)
{
	struct iphdr *ip = pkt->ip;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	return icmp_reply(ctx, pkt, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, bpf_htonl(mtu), ip->daddr,
			  LB_REASON_TX_ICMP_FRAG_NEEDED, LB_REASON_DROP_TOO_BIG);
}
