/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains NAT connection tracking: the forward (client side) and
 * reverse (backend side) entries, their idle timeouts, and SNAT port
 * allocation. */
#pragma once

#include "clock.h"
#include "maps.h"
#include "parse.h"

/* last_seen is refreshed at most this often (and at most every eighth of the
 * timeout), to keep shared cache lines from bouncing between CPUs on every
 * packet while an active flow never looks idle. */
#define CT_TOUCH_NS 1000000000ull

static __always_inline __u64 ct_timeout(const struct lb_config *cfg, __u8 proto, __u32 flags)
{
	if (proto == IPPROTO_UDP)
		return cfg->udp_timeout_ns;
	if (flags & CT_F_CLOSING)
		return cfg->tcp_closing_timeout_ns;
	return cfg->tcp_timeout_ns;
}

static __always_inline bool ct_expired(const struct lb_config *cfg, __u8 proto, __u32 flags,
				       __u64 last_seen, __u64 now)
{
	return now > last_seen && now - last_seen > ct_timeout(cfg, proto, flags);
}

/* Marks a TCP entry closing on FIN/RST and refreshes its clock. */
static __always_inline void ct_touch(const struct lb_config *cfg, const struct packet *pkt,
				     __u16 *flags, __u64 *last_seen, __u64 now)
{
	__u64 every;

	if (pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) && !(*flags & CT_F_CLOSING))
		*flags |= CT_F_CLOSING;
	every = ct_timeout(cfg, pkt->key.proto, *flags) >> 3;
	if (every > CT_TOUCH_NS)
		every = CT_TOUCH_NS;
	if (now - *last_seen > every)
		*last_seen = now;
}

/* The reverse key of a forward entry: backend -> SNAT address and port. */
static __always_inline void ct_rev_key(struct flow_key *rkey, __u8 proto, const union lb_addr *backend,
				       __u16 backend_port_be, const union lb_addr *snat, __u16 snat_port_be)
{
	rkey->family = LB_AF_INET;
	rkey->proto = proto;
	rkey->src = *backend;
	rkey->sport_be = backend_port_be;
	rkey->dst = *snat;
	rkey->dport_be = snat_port_be;
}

/* A flow lives while either direction is live: a one-way flow (a UDP stream
 * either way, a long download's pure ACKs being late...) only refreshes one
 * entry. These two checks run only when an entry has already timed out. */
static __always_inline bool ct_rev_side_live(const struct lb_config *cfg, const struct flow_key *key,
					     const struct ct_fwd *fwd, __u64 now)
{
	struct flow_key rkey = {};
	struct ct_rev *rev;

	ct_rev_key(&rkey, key->proto, &fwd->backend_addr, fwd->backend_port_be, &fwd->snat_addr,
		   fwd->snat_port_be);
	rev = bpf_map_lookup_elem(&ct_rev, &rkey);
	return rev && rev->client_addr.v4_be == key->src.v4_be && rev->client_port_be == key->sport_be &&
	       !ct_expired(cfg, key->proto, rev->flags, rev->last_seen_ns, now);
}

static __always_inline bool ct_fwd_side_live(const struct lb_config *cfg, const struct flow_key *rkey,
					     const struct ct_rev *rev, __u64 now)
{
	struct flow_key fkey = {};
	struct ct_fwd *fwd;

	fkey.family = LB_AF_INET;
	fkey.proto = rkey->proto;
	fkey.src = rev->client_addr;
	fkey.sport_be = rev->client_port_be;
	fkey.dst = rev->vip_addr;
	fkey.dport_be = rev->vip_port_be;
	fwd = bpf_map_lookup_elem(&ct_fwd, &fkey);
	return fwd && fwd->snat_port_be == rkey->dport_be && fwd->backend_port_be == rkey->sport_be &&
	       fwd->backend_addr.v4_be == rkey->src.v4_be &&
	       !ct_expired(cfg, rkey->proto, fwd->flags, fwd->last_seen_ns, now);
}

/* Live forward entry of this client flow, or NULL. */
static __always_inline struct ct_fwd *ct_lookup_fwd(const struct lb_config *cfg,
						    const struct packet *pkt, __u64 now)
{
	struct ct_fwd *ct = bpf_map_lookup_elem(&ct_fwd, &pkt->key);

	if (!ct)
		return NULL;
	/* Only NAT flows have a reverse entry that can keep them alive. */
	if (ct_expired(cfg, pkt->key.proto, ct->flags, ct->last_seen_ns, now) &&
	    (ct->mode != LB_MODE_NAT || !ct_rev_side_live(cfg, &pkt->key, ct, now)))
		return NULL;
	return ct;
}

/* Live reverse entry for a reply arriving at the SNAT address, or NULL. */
static __always_inline struct ct_rev *ct_lookup_rev(const struct lb_config *cfg,
						    const struct packet *pkt, __u64 now)
{
	struct ct_rev *ct = bpf_map_lookup_elem(&ct_rev, &pkt->key);

	if (!ct)
		return NULL;
	if (ct_expired(cfg, pkt->key.proto, ct->flags, ct->last_seen_ns, now) &&
	    !ct_fwd_side_live(cfg, &pkt->key, ct, now))
		return NULL;
	return ct;
}

/* The IPIP outer source of a flow: the configured prefix with its host bits
 * taken from the flow hash. */
static __always_inline __u32 ipip_source(const struct lb_config *cfg, __u32 hash)
{
	return cfg->ipip_src.v4_be | bpf_htonl(hash & cfg->ipip_src_hostmask);
}

/**
 * flow_target - fill in where a new flow's packets go: @be, the flow's mode
 * and the source its packets leave with (NAT: the SNAT address; IPIP: the
 * outer source); enough for the next-hop lookup, which runs before the entry
 * is inserted so that the entry goes in with its next hop cached
 */
static __always_inline void flow_target(struct ct_fwd *fwd, const struct lb_config *cfg,
					const struct backend *be, __u8 mode, __u32 hash)
{
	fwd->backend_addr = be->addr;
	fwd->backend_port_be = be->port_be;
	fwd->mode = mode;
	if (mode == LB_MODE_NAT)
		fwd->snat_addr = cfg->snat_addr;
	else if (mode == LB_MODE_IPIP)
		fwd->snat_addr.v4_be = ipip_source(cfg, hash);
}

/**
 * ct_claim_port - give a new NAT flow its SNAT port
 * @fwd: the forward entry, its target filled in (flow_target()); gets the port
 *
 * Picks an SNAT port from the configured range (starting from the flow hash,
 * LB_PORT_RETRIES candidates) and claims it by inserting the reverse entry
 * with BPF_NOEXIST, so two flows never share (backend, SNAT port); an entry
 * whose flow has expired in both directions is taken over. The reverse entry
 * goes in first: a reply can only match a port that is really ours. The
 * forward entry follows with flow_insert().
 *
 * Returns LB_CONTINUE, or a verdict (port exhaustion, no configuration).
 */
static __always_inline int ct_claim_port(struct packet *pkt, const struct lb_config *cfg, __u32 backend_id,
					 __u32 vip_id, __u32 hash, __u64 now, struct ct_fwd *fwd)
{
	__u32 range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;
	struct flow_key rkey = {};
	struct ct_rev rev = {};
	__u32 i, start;

	if (cfg->snat_port_min == 0 || cfg->snat_port_max < cfg->snat_port_min)
		return verdict(pkt, LB_REASON_DROP_NO_CONFIG, XDP_DROP);
	start = hash % range;

	ct_rev_key(&rkey, pkt->key.proto, &fwd->backend_addr, fwd->backend_port_be, &fwd->snat_addr, 0);

	rev.client_addr = pkt->key.src;
	rev.client_port_be = pkt->key.sport_be;
	rev.vip_addr = pkt->key.dst;
	rev.vip_port_be = pkt->key.dport_be;
	rev.backend_id = backend_id;
	rev.vip_id = vip_id;
	rev.last_seen_ns = now;

#pragma clang loop unroll(disable)
	for (i = 0; i < LB_PORT_RETRIES; i++) {
		/* 65537 is prime and larger than any range, so the candidates
		 * are distinct; start < 65536 and i < 8 keep it from wrapping. */
		__u16 port = cfg->snat_port_min + (start + i * 65537u) % range;
		struct ct_rev *old;

		rkey.dport_be = bpf_htons(port);
		if (bpf_map_update_elem(&ct_rev, &rkey, &rev, BPF_NOEXIST) == 0)
			goto claimed;
		old = bpf_map_lookup_elem(&ct_rev, &rkey);
		if (old && ct_expired(cfg, rkey.proto, old->flags, old->last_seen_ns, now) &&
		    !ct_fwd_side_live(cfg, &rkey, old, now) &&
		    bpf_map_update_elem(&ct_rev, &rkey, &rev, BPF_EXIST) == 0)
			goto claimed;
	}
	return verdict(pkt, LB_REASON_DROP_PORT_EXHAUSTED, XDP_DROP);

claimed:
	fwd->snat_port_be = rkey.dport_be;
	return LB_CONTINUE;
}

/**
 * flow_insert - store a new flow's forward entry
 * @fwd: the entry, its target, backend and VIP ids (and NAT: its SNAT port,
 *       ct_claim_port()) filled in, maybe its next hop; completed and stored
 *
 * DSR flows only have this entry: replies do not pass the LB. A NAT flow whose
 * entry the table refuses gives its SNAT port back.
 * Returns LB_CONTINUE, or a verdict when the table refuses the entry.
 */
static __always_inline int flow_insert(struct packet *pkt, __u64 now, struct ct_fwd *fwd)
{
	struct flow_key rkey = {};

	fwd->flags = 0;
	fwd->last_seen_ns = now;
	if (bpf_map_update_elem(&ct_fwd, &pkt->key, fwd, BPF_ANY) == 0)
		return LB_CONTINUE;
	if (fwd->mode == LB_MODE_NAT) {
		ct_rev_key(&rkey, pkt->key.proto, &fwd->backend_addr, fwd->backend_port_be, &fwd->snat_addr,
			   fwd->snat_port_be);
		bpf_map_delete_elem(&ct_rev, &rkey);
	}
	return verdict(pkt, LB_REASON_DROP_CT_FULL, XDP_DROP);
}
