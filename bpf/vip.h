/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the checks that spare packets the vips hash lookup: the
 * destination prefilter (an address that no VIP has passes at once) and the
 * VIP of a tracked flow (a packet whose flow entry names a VIP that is still
 * there goes on with that entry). Both are one inlined ARRAY lookup, kept by
 * lbd next to vips (src/dataplane/maps.rs). */
#pragma once

#include <bpf/bpf_endian.h>
#include "maps.h"
#include "parse.h"

/* The prefilter bit of @daddr (network byte order); mirrored by
 * xdplb::dataplane::maps::vip_filter_bit. */
static __always_inline __u32 vip_filter_bit(__be32 daddr)
{
	return (bpf_ntohl(daddr) * (__u32)LB_VIP_FILTER_MULT) >> (32 - LB_VIP_FILTER_BITS_LOG2);
}

/* False: no VIP has the address @daddr. True: one may have it (or the filter
 * is missing): look it up. lbd sets a VIP address's bit before the VIP goes
 * into vips and clears bits only after a VIP left, so a VIP packet never finds
 * its bit clear; an address sharing a bit with a VIP costs the lookup, never a
 * wrong verdict. */
static __always_inline bool vip_filter_may_match(__be32 daddr)
{
	__u32 zero = 0, bit = vip_filter_bit(daddr);
	struct lb_vip_filter *f = bpf_map_lookup_elem(&vip_filter, &zero);

	if (!f)
		return true;
	return (f->words[(bit >> 6) & (LB_VIP_FILTER_WORDS - 1)] >> (bit & 63)) & 1;
}

/* The VIP @pkt is addressed to, or NULL. */
static __always_inline struct vip_meta *vip_lookup(const struct packet *pkt)
{
	struct vip_key vkey = {};

	vkey.addr.v4_be = pkt->key.daddr_be;
	vkey.port_be = pkt->key.dport_be;
	vkey.proto = pkt->key.proto;
	vkey.family = LB_AF_INET;
	return bpf_map_lookup_elem(&vips, &vkey);
}

/* Whether the VIP @pkt is addressed to still has the id @vip_id that its flow
 * entry recorded (vip_ids): then vips would answer that VIP, and the packet
 * needs no lookup there. lbd writes a VIP's slot after its vips entry and
 * clears it before deleting that entry. */
static __always_inline bool flow_vip_current(const struct packet *pkt, __u32 vip_id)
{
	struct vip_key *k = bpf_map_lookup_elem(&vip_ids, &vip_id);

	return k && k->addr.v4_be == pkt->key.daddr_be && k->port_be == pkt->key.dport_be &&
	       k->proto == pkt->key.proto && k->family == LB_AF_INET;
}
