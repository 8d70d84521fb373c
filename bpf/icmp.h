/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the steering of ICMP errors (destination unreachable,
 * "fragmentation needed" among them, time exceeded, parameter problem) about
 * flows of the balancer, so that path MTU discovery and friends work through
 * it. An error quotes the IPv4 header and at least 8 bytes of the packet it
 * is about; that packet was one the balancer sent, so its source is ours:
 *
 *   to a VIP          quote VIP:vport -> client:cport. The flow is the quote
 *                     reversed: its flow entry (or, for a DSR VIP without
 *                     one, Maglev of that 5-tuple) names the backend. DSR: the
 *                     error goes to the backend as it is (L2 DSR, IPIP), the
 *                     backend owns the VIP and finds its socket. NAT: outer
 *                     SNAT address -> backend, quote backend:bport ->
 *                     SNAT:sport, i.e. the packet the backend really sent.
 *   to the SNAT addr  quote SNAT:sport -> backend:bport (a router between us
 *                     and a backend). The nat_rev_v2 entry names the client:
 *                     outer VIP -> client, quote client:cport -> VIP:vport.
 *
 * Whether an error is about one of our flows is told from its quote alone
 * (icmp_classify()), so that the firewall, the sender's rate limit and the
 * VIP's ICMP budget judge it before any flow lookup (lb_icmp()).
 *
 * Every rewritten word is patched into the checksums that cover it: the outer
 * IPv4 header, the quoted IPv4 header, the quoted TCP/UDP checksum when the
 * quote holds it, and the ICMP checksum over the whole quote. */
#pragma once

#include <linux/icmp.h>
#include <linux/ip.h>
#include "clock.h"
#include "csum.h"
#include "flow.h"
#include "maglev.h"
#include "maps.h"
#include "parse.h"

/* The packet an ICMP error quotes, bounds-checked: its IPv4 header and the
 * 8 bytes of its TCP/UDP header that carry the ports. */
struct icmp_quote {
	struct iphdr *ip;
	__u16 *ports; /* [0] source, [1] destination, wire order */
	__u16 *l4_check; /* the quoted TCP/UDP checksum, NULL if not quoted */
};

/* Where icmp_steer() found an error must go. */
struct icmp_target {
	struct flow4 ct; /* the flow's entry (mode, backend, IPIP source) */
	/* NAT only (ct.mode == LB_MODE_NAT): the new outer source and
	 * destination, the new quoted source and destination, wire order. */
	__u32 o_saddr, o_daddr, q_saddr, q_daddr;
	__u16 q_sport, q_dport;
};

static __always_inline bool icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/**
 * icmp_parse_quote - find the quoted packet of the ICMP error @pkt
 *
 * The quote must lie inside the outer packet's tot_len and the frame, be an
 * unfragmented (or first-fragment) IPv4 TCP or UDP packet, and hold its ports.
 * Returns true and fills @q, or false (not an error about a flow).
 */
static __always_inline bool icmp_parse_quote(const struct packet *pkt, struct icmp_quote *q)
{
	void *data_end = pkt->data_end;
	struct iphdr *ip = pkt->ip;
	struct icmphdr *icmp = pkt->l4;
	struct iphdr *inner;
	__u32 quote_len, inner_ihl, check_off;
	__u16 *ports;

	if ((void *)(ip + 1) > data_end || (void *)(icmp + 1) > data_end)
		return false;
	if (!icmp_is_error(icmp->type))
		return false;
	inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > data_end)
		return false;
	if (inner->version != 4 || inner->ihl < 5 || (inner->frag_off & bpf_htons(IP_OFFSET)))
		return false;
	if (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP)
		return false;
	/* What the outer packet says it carries after the ICMP header. */
	quote_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4 - sizeof(*icmp);
	inner_ihl = inner->ihl * 4;
	if (quote_len > 0xffff || inner_ihl + 8 > quote_len)
		return false;
	ports = (void *)inner + inner_ihl;
	if ((void *)(ports + 4) > data_end)
		return false;
	q->ip = inner;
	q->ports = ports;
	q->l4_check = NULL;
	check_off = inner->protocol == IPPROTO_TCP ? 16 : 6;
	if (inner_ihl + check_off + 2 <= quote_len) {
		__u16 *check = (void *)ports + check_off;

		if ((void *)(check + 1) <= data_end)
			q->l4_check = check;
	}
	return true;
}

/* @old -> @new in a 32-bit quoted field, patched into the quoted L4 checksum
 * (@l4, pseudo header) when there is one, and always into the ICMP checksum. */
static __always_inline void icmp_quote_set4(struct icmphdr *icmp, struct icmp_quote *q, __be32 *field,
					    __u32 new, bool in_l4)
{
	__u32 old = *field;

	icmp->checksum = csum_replace4(icmp->checksum, old, new);
	if (in_l4 && q->l4_check) {
		__u16 old_check = *q->l4_check;
		__u16 check;

		/* A zero UDP checksum means "none" and stays zero. */
		if (!(old_check == 0 && q->ip->protocol == IPPROTO_UDP)) {
			check = csum_replace4(old_check, old, new);
			if (check == 0 && q->ip->protocol == IPPROTO_UDP)
				check = 0xffff;
			*q->l4_check = check;
			icmp->checksum = csum_replace2(icmp->checksum, old_check, check);
		}
	}
	*field = new;
}

static __always_inline void icmp_quote_set2(struct icmphdr *icmp, struct icmp_quote *q, __u16 *field,
					    __u16 new)
{
	__u16 old = *field;

	icmp->checksum = csum_replace2(icmp->checksum, old, new);
	if (q->l4_check) {
		__u16 old_check = *q->l4_check;
		__u16 check;

		if (!(old_check == 0 && q->ip->protocol == IPPROTO_UDP)) {
			check = csum_replace2(old_check, old, new);
			if (check == 0 && q->ip->protocol == IPPROTO_UDP)
				check = 0xffff;
			*q->l4_check = check;
			icmp->checksum = csum_replace2(icmp->checksum, old_check, check);
		}
	}
	*field = new;
}

/**
 * icmp_nat_rewrite - readdress an ICMP error and its quote (wire order)
 * @o_saddr, @o_daddr: the new outer source and destination
 * @q_saddr, @q_sport, @q_daddr, @q_dport: the new quoted 4-tuple
 *
 * Patches the outer IPv4 checksum, the quoted IPv4 checksum, the quoted L4
 * checksum (if quoted) and the ICMP checksum (which covers the quote,
 * including the two checksums inside it).
 */
static __always_inline void icmp_nat_rewrite(struct packet *pkt, struct icmp_quote *q, __u32 o_saddr,
					     __u32 o_daddr, __u32 q_saddr, __u16 q_sport, __u32 q_daddr,
					     __u16 q_dport)
{
	struct iphdr *ip = pkt->ip;
	struct icmphdr *icmp = pkt->l4;
	struct iphdr *inner = q->ip;
	__u16 old_check, check;

	if ((void *)(ip + 1) > pkt->data_end || (void *)(icmp + 1) > pkt->data_end ||
	    (void *)(inner + 1) > pkt->data_end)
		return;
	ip->check = csum_replace4(ip->check, ip->saddr, o_saddr);
	ip->check = csum_replace4(ip->check, ip->daddr, o_daddr);
	ip->saddr = o_saddr;
	ip->daddr = o_daddr;

	old_check = inner->check;
	check = csum_replace4(old_check, inner->saddr, q_saddr);
	check = csum_replace4(check, inner->daddr, q_daddr);
	inner->check = check;
	icmp->checksum = csum_replace2(icmp->checksum, old_check, check);
	icmp_quote_set4(icmp, q, &inner->saddr, q_saddr, true);
	icmp_quote_set4(icmp, q, &inner->daddr, q_daddr, true);
	icmp_quote_set2(icmp, q, &q->ports[0], q_sport);
	icmp_quote_set2(icmp, q, &q->ports[1], q_dport);
}

/* What icmp_classify() found: the error's quote and, for an error to a VIP,
 * the VIP its quote names. */
struct icmp_class {
	struct icmp_quote q;
	struct vip_meta *vip; /* NULL: an error to the SNAT address */
};

/**
 * icmp_classify - whether the ICMP packet @pkt is an error about one of our
 * flows, from what it quotes alone (no flow lookup, the packet unchanged)
 *
 * It is when it goes to the quoted packet's source and that source is a VIP
 * (VIP:vport of a VIP of the quoted protocol: a tuple the VIP serves) or the
 * SNAT address and one of its ports. pkt->key stays the outer packet's (the
 * firewall and the rate limit see the error's sender).
 *
 * Returns LB_CONTINUE (@c filled), or XDP_PASS (fragments, echo and other
 * non-errors, errors about the host's own traffic).
 */
static __always_inline int icmp_classify(struct packet *pkt, const struct lb_config *cfg,
					 struct icmp_class *c)
{
	struct vip_key vkey = {};
	struct iphdr *ip = pkt->ip;
	struct iphdr *inner;
	__u16 sport;

	if (pkt->flags & PKT_F_FRAGMENT)
		return verdict(pkt, LB_REASON_PASS_FRAGMENT, XDP_PASS);
	if (!icmp_parse_quote(pkt, &c->q))
		return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
	inner = c->q.ip;
	if ((void *)(ip + 1) > pkt->data_end || (void *)(inner + 1) > pkt->data_end ||
	    (void *)(c->q.ports + 2) > pkt->data_end)
		return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
	/* The error goes to the quoted packet's source, which must be ours. */
	if (ip->daddr != inner->saddr)
		return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
	sport = c->q.ports[0];
	vkey.addr.v4_be = inner->saddr;
	vkey.port_be = sport;
	vkey.proto = inner->protocol;
	vkey.family = LB_AF_INET;
	c->vip = bpf_map_lookup_elem(&vips, &vkey);
	if (c->vip)
		return LB_CONTINUE;
	/* An error about a packet we sent to a backend (SNAT address -> backend). */
	if (inner->saddr != cfg->snat_addr.v4_be || bpf_ntohs(sport) < cfg->snat_port_min ||
	    bpf_ntohs(sport) > cfg->snat_port_max)
		return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
	return LB_CONTINUE;
}

/**
 * icmp_steer - find the flow an ICMP error is about; the packet is not changed
 * @cfg: the run-time configuration (SNAT address and ports)
 * @c: what icmp_classify() found
 * @t: filled with where the error goes: a copy of the flow's entry (DSR
 *     modes: sent like the flow's packets) and, mode NAT, the addresses
 *     and ports icmp_rewrite() must write
 *
 * pkt->key becomes the quoted flow seen from its client side (for errors to
 * a VIP). Errors to a VIP with no flow to steer to are dropped: the VIP is not
 * a local address, the kernel could not use them. A DSR VIP keeps no state
 * an error needs: without a flow entry, the quoted tuple (one the VIP serves,
 * icmp_classify()) goes to the backend Maglev names for it, within the
 * VIP's ICMP budget.
 *
 * Returns LB_CONTINUE, or a verdict: XDP_PASS (an error about a port no live
 * flow owns: the host's own traffic), XDP_DROP (drop_icmp_no_flow).
 */
static __always_inline int icmp_steer(struct packet *pkt, const struct lb_config *cfg,
				      const struct icmp_class *c, struct icmp_target *t)
{
	struct flow4 *ct = &t->ct;
	struct vip_meta *vip = c->vip;
	struct iphdr *inner = c->q.ip;
	struct flow_ref ref;
	__u64 now = lb_now();
	struct flow4 *fwd;
	struct nat4_rev *rev;
	__u16 sport, dport;

	if ((void *)(inner + 1) > pkt->data_end || (void *)(c->q.ports + 2) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	sport = c->q.ports[0];
	dport = c->q.ports[1];

	/* The quoted flow, seen from its client: client -> VIP. */
	pkt->key.proto = inner->protocol;
	pkt->key.saddr_be = inner->daddr;
	pkt->key.daddr_be = inner->saddr;
	pkt->key.sport_be = dport;
	pkt->key.dport_be = sport;

	if (vip) {
		fwd = flow_lookup(cfg, pkt, now, &ref);
		if (fwd) {
			*ct = *fwd;
		} else {
			/* Maglev of the quoted flow names the same backend as for
			 * its packets (after a restart, or on another LB behind
			 * the same ECMP). */
			__u32 hash = flow_hash_v4(&pkt->key);
			__u32 backend_id;
			struct backend *be;

			if (vip->mode == LB_MODE_NAT)
				return verdict(pkt, LB_REASON_DROP_ICMP_NO_FLOW, XDP_DROP);
			backend_id = maglev_pick(vip, hash);
			if (backend_id == LB_NO_BACKEND)
				return verdict(pkt, LB_REASON_DROP_ICMP_NO_FLOW, XDP_DROP);
			be = bpf_map_lookup_elem(&backends, &backend_id);
			if (!be || be->family != LB_AF_INET)
				return verdict(pkt, LB_REASON_DROP_ICMP_NO_FLOW, XDP_DROP);
			ct->backend_be = be->addr.v4_be;
			ct->backend_port_be = be->port_be;
			ct->backend_id = backend_id;
			ct->vip_id = vip->vip_id;
			ct->mode = vip->mode;
			if (vip->mode == LB_MODE_IPIP)
				ct->src_be = ipip_source(cfg, hash);
		}
		/* NAT: to the backend from the SNAT address, about the packet the
		 * backend sent (backend -> SNAT address and port). */
		t->o_saddr = ct->src_be;
		t->o_daddr = ct->backend_be;
		t->q_saddr = ct->backend_be;
		t->q_sport = ct->backend_port_be;
		t->q_daddr = ct->src_be;
		t->q_dport = ct->snat_port_be;
		return LB_CONTINUE;
	}

	/* Its reply key: backend -> SNAT address. */
	pkt->key.saddr_be = inner->daddr;
	pkt->key.daddr_be = inner->saddr;
	pkt->key.sport_be = dport;
	pkt->key.dport_be = sport;
	rev = nat_lookup_rev(cfg, pkt, now);
	if (!rev)
		return verdict(pkt, LB_REASON_PASS_NOT_TRACKED, XDP_PASS);
	ct->mode = LB_MODE_NAT;
	ct->backend_id = rev->backend_id;
	ct->vip_id = rev->vip_id;
	/* To the client from the VIP, about the packet the client sent. */
	t->o_saddr = rev->vip_be;
	t->o_daddr = rev->client_be;
	t->q_saddr = rev->client_be;
	t->q_sport = rev->client_port_be;
	t->q_daddr = rev->vip_be;
	t->q_dport = rev->vip_port_be;
	return LB_CONTINUE;
}

/**
 * icmp_rewrite - readdress a NAT flow's error as icmp_steer() found it
 *
 * Returns LB_CONTINUE, or XDP_DROP if the quote is no longer where it was
 * (cannot happen: the frame did not change; re-checked for the verifier).
 */
static __always_inline int icmp_rewrite(struct packet *pkt, const struct icmp_target *t)
{
	struct icmp_quote q = {};

	if (!icmp_parse_quote(pkt, &q))
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	icmp_nat_rewrite(pkt, &q, t->o_saddr, t->o_daddr, t->q_saddr, t->q_sport, t->q_daddr,
			 t->q_dport);
	return LB_CONTINUE;
}
