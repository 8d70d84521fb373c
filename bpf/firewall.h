/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the firewall stage: the verdict word of the IPv4 source
 * address from two fixed-depth tables that lbd computes from the rules (fw_l2
 * by /16 and /24, fw_l3 by address; maps.h), one per-CPU hit counter bump,
 * and the verdict. The cost does not depend on how many rules there are. A block rule drops the packet (drop_firewall); an allow
 * rule marks it PKT_F_FW_ALLOWED and hands it on; no rule hands it on
 * unmarked.
 *
 * Which packets the stage sees is fixed at load time (firewall_scope): only
 * those addressed to a VIP (checked after the VIP lookup), or every IPv4
 * packet arriving on the interface (checked right after parsing, fragments
 * and non-TCP/UDP included), or none ([firewall] capacity = 0). */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xdplb.h"
#include "maps.h"
#include "parse.h"

/* Written by lbd before load ([firewall] scope, FW_SCOPE_OFF when the
 * capacity is 0); the verifier prunes the call sites of the other scopes. */
const volatile enum fw_scope firewall_scope = FW_SCOPE_VIPS;

/**
 * fw_verdict_v4 - the verdict word of the longest rule covering @saddr
 * @saddr: the source address, network byte order
 *
 * Every packet pays one fw_l2 lookup (an ARRAY: inlined, no helper call);
 * only a source of a /24 that holds rules longer than /24, and whose bit of
 * the slot's filter is set (FW_VERDICT_DEEPER), goes on to fw_l3: the other
 * addresses of such a /24 skip the hash lookup (a hash bucket of its own per
 * address, a page each in a large table). lbd
 * writes an fw_l3 entry before the slot that sends packets to it, and clears
 * that slot (then waits for a grace period) before deleting the entry; a
 * missing address therefore never happens to a packet, and would only mean
 * the slot's word, which is its verdict anyway.
 *
 * Returns the word without FW_VERDICT_DEEPER (0: no rule covers @saddr).
 */
static __always_inline __u32 fw_verdict_v4(__be32 saddr)
{
	__u32 addr = bpf_ntohl(saddr);
	__u32 net16 = addr >> 16;
	struct fw_chunk *chunk;
	__u32 *entry, word, filter;

	chunk = bpf_map_lookup_elem(&fw_l2, &net16);
	if (!chunk)
		return 0;
	/* (addr >> 8) & 0xff < FW_L2_SLOTS: always inside the chunk. */
	word = chunk->slot[(addr >> 8) & (FW_L2_SLOTS - 1)];
	if (!(word & FW_VERDICT_DEEPER_ANY))
		return word;
	filter = word & (FW_VERDICT_DEEPER & ~FW_VERDICT_DEEPER_ANY);
	if (filter && !(filter & (1u << (FW_VERDICT_DEEPER_SHIFT + (addr & 0xff) % FW_VERDICT_DEEPER_BITS))))
		return word & ~FW_VERDICT_DEEPER;
	entry = bpf_map_lookup_elem(&fw_l3, &saddr);
	if (!entry)
		return word & ~FW_VERDICT_DEEPER;
	return *entry;
}

/* The verdict word of @pkt's source (pkt->ip set), looked up once. */
static __always_inline __u32 fw_word(struct packet *pkt)
{
	if (!(pkt->flags & PKT_F_FW_WORD)) {
		pkt->fw_word = fw_verdict_v4(pkt->ip->saddr);
		pkt->flags |= PKT_F_FW_WORD;
	}
	return pkt->fw_word;
}

/**
 * firewall - the firewall stage, if the configured scope is @at
 * @pkt: the packet; pkt->ip is its IPv4 header, or NULL if parsing found none
 * @at: the scope of the call site (FW_SCOPE_ALL right after parsing,
 *      FW_SCOPE_VIPS after a VIP matched)
 *
 * Returns XDP_DROP when the longest prefix matching the source address is a
 * block rule, otherwise LB_CONTINUE (an allow rule sets PKT_F_FW_ALLOWED).
 */
static __always_inline int firewall(struct packet *pkt, enum fw_scope at)
{
	struct fw_counters *hits;
	__u32 word, action, id;

	if (firewall_scope != at || !pkt->ip)
		return LB_CONTINUE;
	word = fw_word(pkt);
	EXPLAIN_STAGE(LB_EX_FIREWALL);
	EXPLAIN(fw_word, word);
	action = word >> FW_VERDICT_ACTION_SHIFT;
	if (!action)
		return LB_CONTINUE;
	id = word & FW_VERDICT_ID_MASK;
	hits = bpf_map_lookup_elem(&fw_hits, &id);
	if (hits && !LB_EXPLAINING)
		hits->packets += 1;
	if (action == FW_BLOCK)
		return verdict(pkt, LB_REASON_DROP_FIREWALL, XDP_DROP);
	if (action == FW_ALLOW)
		pkt->flags |= PKT_F_FW_ALLOWED;
	return LB_CONTINUE;
}

/**
 * firewall_vip_addr - scope "vips": drop a packet from a blocked source to
 * any address a VIP has, whatever it is (a later fragment, an echo request,
 * another protocol, a port no VIP serves, an ICMP error), before any flow
 * lookup
 *
 * Called on every IPv4 packet whose destination passes the prefilter. Only
 * a blocked source pays the vip_addrs lookup that tells a VIP address from a
 * prefilter false positive (the host's own traffic, never blocked under
 * scope "vips"); any other source is left to firewall() at its VIP, which
 * reuses the word looked up here.
 *
 * Returns XDP_DROP (drop_firewall, the rule's hit counted) or LB_CONTINUE.
 */
static __always_inline int firewall_vip_addr(struct packet *pkt)
{
	struct iphdr *ip = pkt->ip;
	__be32 daddr;

	if (firewall_scope != FW_SCOPE_VIPS || !ip)
		return LB_CONTINUE;
	if ((fw_word(pkt) >> FW_VERDICT_ACTION_SHIFT) != FW_BLOCK)
		return LB_CONTINUE;
	if ((void *)(ip + 1) > pkt->data_end)
		return LB_CONTINUE;
	daddr = ip->daddr;
	if (!bpf_map_lookup_elem(&vip_addrs, &daddr))
		return LB_CONTINUE;
	return firewall(pkt, FW_SCOPE_VIPS);
}
