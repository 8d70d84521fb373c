/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the flow tables v2 (maps.h): lookups, the embryonic ->
 * established promotion, SNAT port claims, the DSR new-flow guard.
 *
 *   flows_syn_v2   TCP flows of every mode until their handshake completes
 *                  (LRU, tcp_handshake timeout): a SYN flood churns only it.
 *   nat_fwd_v2     established NAT flows, client side (shared LRU).
 *   nat_rev_v2     established NAT flows' reply side; owns their SNAT ports
 *                  (HASH: never evicted; expired entries taken over by one
 *                  CPU, swept by lbd).
 *   nat_rev_syn_v2 embryonic NAT flows' reply side and ports (LRU, bounded).
 *   dsr_v2[cpu]    established DSR flows, one LRU per CPU.
 *
 * A TCP flow is promoted to its established table once its client proves
 * the handshake: for DSR, its first packet without SYN; for NAT, an ACK
 * carrying the backend's ISN + 1 (recorded when the backend's SYN-ACK came
 * back through us), which no blind spoofer can send. UDP flows are
 * established from their first packet. In NAT mode only a SYN (or a UDP
 * packet) starts a flow. */
#pragma once

#include "clock.h"
#include "maps.h"
#include "parse.h"

/* last_seen is refreshed at most this often (and at most every eighth of the
 * timeout), to keep shared cache lines from bouncing between CPUs on every
 * packet while an active flow never looks idle. */
#define CT_TOUCH_NS 1000000000ull

/* nat_rev_v2 last_seen_ns of an entry lbd's sweep (lb_flow_gc) is deleting:
 * expired for everyone, and never taken over (the sweep's compare-and-swap
 * won; a claimer that sees it skips the port). */
#define CT_TOMBSTONE 1ull

/* Where a client flow's entry was found. */
enum flow_table {
	FT_NONE = 0,
	FT_DSR, /* this CPU's dsr_v2 table */
	FT_NAT, /* nat_fwd_v2 */
	FT_SYN, /* flows_syn_v2 */
};

struct flow_ref {
	struct flow4 *ct;
	void *dsr; /* this CPU's dsr_v2 table (NULL if lbd has not filled its slot) */
	__u8 where; /* enum flow_table */
};

static __always_inline __u64 ct_timeout(const struct lb_config *cfg, __u8 proto, __u32 flags)
{
	if (proto == IPPROTO_UDP)
		return cfg->udp_timeout_ns;
	if (flags & CT_F_CLOSING)
		return cfg->tcp_closing_timeout_ns;
	if (flags & CT_F_EMBRYONIC)
		return cfg->tcp_handshake_timeout_ns;
	return cfg->tcp_timeout_ns;
}

static __always_inline bool ct_expired(const struct lb_config *cfg, __u8 proto, __u32 flags,
				       __u64 last_seen, __u64 now)
{
	return now > last_seen && now - last_seen > ct_timeout(cfg, proto, flags);
}

/* Refreshes an entry's clock (at most every CT_TOUCH_NS). */
static __always_inline void ct_refresh(const struct lb_config *cfg, __u8 proto, __u32 flags,
				       __u64 *last_seen, __u64 now)
{
	__u64 every = ct_timeout(cfg, proto, flags) >> 3;

	if (every > CT_TOUCH_NS)
		every = CT_TOUCH_NS;
	if (now - *last_seen > every)
		*last_seen = now;
}

static __always_inline bool pkt_closes(const struct packet *pkt)
{
	return pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST);
}

/* A SYN without ACK: a client starting a connection. */
static __always_inline bool pkt_is_syn(const struct packet *pkt)
{
	return pkt->key.proto == IPPROTO_TCP &&
	       (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The reverse key of a NAT flow: backend -> SNAT address and port. */
static __always_inline void nat_rev_key(struct flow_key4 *rkey, __u8 proto, const struct flow4 *fwd)
{
	rkey->saddr_be = fwd->backend_be;
	rkey->daddr_be = fwd->src_be;
	rkey->sport_be = fwd->backend_port_be;
	rkey->dport_be = fwd->snat_port_be;
	rkey->proto = proto;
}

/* The client key of a NAT flow from its reverse entry: client -> VIP. */
static __always_inline void nat_fwd_key(struct flow_key4 *fkey, __u8 proto, const struct nat4_rev *rev)
{
	fkey->saddr_be = rev->client_be;
	fkey->daddr_be = rev->vip_be;
	fkey->sport_be = rev->client_port_be;
	fkey->dport_be = rev->vip_port_be;
	fkey->proto = proto;
}

/* Whether reverse entry @rev (key @rkey) names the forward entry @fwd of
 * client key @key: the port is that flow's. */
static __always_inline bool nat_pair(const struct flow_key4 *key, const struct flow4 *fwd,
				     const struct flow_key4 *rkey, const struct nat4_rev *rev)
{
	return rev->client_be == key->saddr_be && rev->client_port_be == key->sport_be &&
	       rev->vip_be == key->daddr_be && rev->vip_port_be == key->dport_be &&
	       fwd->snat_port_be == rkey->dport_be && fwd->backend_port_be == rkey->sport_be &&
	       fwd->backend_be == rkey->saddr_be && fwd->src_be == rkey->daddr_be;
}

/* The reply table of a NAT flow in state @flags: embryonic or established. */
static __always_inline void *nat_rev_table(__u32 flags)
{
	if (flags & CT_F_EMBRYONIC)
		return &nat_rev_syn_v2;
	return &nat_rev_v2;
}

/* The reverse entry of NAT flow @fwd (client key @key), if it is still this
 * flow's: never another flow's port. */
static __always_inline struct nat4_rev *nat_rev_of(const struct flow_key4 *key, const struct flow4 *fwd)
{
	struct flow_key4 rkey = {};
	struct nat4_rev *rev;

	nat_rev_key(&rkey, key->proto, fwd);
	rev = bpf_map_lookup_elem(nat_rev_table(fwd->flags), &rkey);
	if (rev && nat_pair(key, fwd, &rkey, rev))
		return rev;
	return NULL;
}

/* The forward entry of reverse entry @rev (key @rkey), if it is still that
 * flow's: in flows_syn_v2 while the flow is embryonic, nat_fwd_v2 after. */
static __always_inline struct flow4 *nat_fwd_of(const struct flow_key4 *rkey, const struct nat4_rev *rev)
{
	struct flow_key4 fkey = {};
	struct flow4 *fwd;

	nat_fwd_key(&fkey, rkey->proto, rev);
	if (rev->flags & CT_F_EMBRYONIC)
		fwd = bpf_map_lookup_elem(&flows_syn_v2, &fkey);
	else
		fwd = bpf_map_lookup_elem(&nat_fwd_v2, &fkey);
	if (fwd && fwd->mode == LB_MODE_NAT && nat_pair(&fkey, fwd, rkey, rev))
		return fwd;
	return NULL;
}

/* A flow lives while either direction is live: a one-way flow (a UDP stream
 * either way, a long download's pure ACKs being late...) only refreshes one
 * entry. These two checks run only when an entry has already timed out. */
static __always_inline bool nat_rev_side_live(const struct lb_config *cfg, const struct flow_key4 *key,
					      const struct flow4 *fwd, __u64 now)
{
	struct nat4_rev *rev = nat_rev_of(key, fwd);

	return rev && !ct_expired(cfg, key->proto, rev->flags, rev->last_seen_ns, now);
}

static __always_inline bool nat_fwd_side_live(const struct lb_config *cfg, const struct flow_key4 *rkey,
					      const struct nat4_rev *rev, __u64 now)
{
	struct flow4 *fwd = nat_fwd_of(rkey, rev);

	return fwd && !ct_expired(cfg, rkey->proto, fwd->flags, fwd->last_seen_ns, now);
}

/* This CPU's established DSR table, or NULL (slot not filled by lbd). */
static __always_inline void *dsr_table(void)
{
	__u32 cpu = bpf_get_smp_processor_id();

	EXPLAIN(flow_cpu, cpu);
	return bpf_map_lookup_elem(&dsr_v2, &cpu);
}

#ifdef LB_EXPLAIN
/* Explain only: a DSR flow lives in the table of the CPU its packets reach
 * (RSS), which need not be the one lbd's test run is on: look in every
 * CPU's table (bpf_loop: the verifier checks the callback once). The flow's
 * own packets find it on their CPU. */
struct explain_dsr_ctx {
	struct flow_key4 key;
	__u64 now;
	__u32 cpu; /* found: the CPU; else LB_MAX_CPUS */
};

static long explain_dsr_cb(__u64 i, void *data)
{
	struct explain_dsr_ctx *c = data;
	__u32 cpu = i, zero = 0;
	struct lb_config *cfg = bpf_map_lookup_elem(&lb_config_v2, &zero);
	void *dsr = bpf_map_lookup_elem(&dsr_v2, &cpu);
	struct flow4 *ct;

	if (!dsr || !cfg)
		return 1;
	ct = bpf_map_lookup_elem(dsr, &c->key);
	if (ct && !ct_expired(cfg, c->key.proto, ct->flags, ct->last_seen_ns, c->now)) {
		c->cpu = cpu;
		return 1;
	}
	return 0;
}

static __always_inline struct flow4 *explain_dsr_any_cpu(const struct flow_key4 *key, __u64 now,
							 struct flow_ref *ref)
{
	struct explain_dsr_ctx c = { .key = *key, .now = now, .cpu = LB_MAX_CPUS };
	struct flow4 *ct;
	void *dsr;

	bpf_loop(LB_MAX_CPUS, explain_dsr_cb, &c, 0);
	if (c.cpu >= LB_MAX_CPUS)
		return NULL;
	dsr = bpf_map_lookup_elem(&dsr_v2, &c.cpu);
	if (!dsr)
		return NULL;
	ct = bpf_map_lookup_elem(dsr, key);
	if (!ct)
		return NULL;
	EXPLAIN(flow_cpu, c.cpu);
	ref->dsr = dsr;
	ref->where = FT_DSR;
	ref->ct = ct;
	return ct;
}
#endif

/**
 * flow_lookup - the live entry of this client flow, in @ref (NULL if none)
 *
 * This CPU's DSR table first (no shared cache line), then the NAT
 * established table, then the embryonic one. An expired entry is no entry;
 * an expired NAT forward entry still lives while its reply side does.
 */
static __always_inline struct flow4 *flow_lookup(const struct lb_config *cfg, const struct packet *pkt,
						 __u64 now, struct flow_ref *ref)
{
	const struct flow_key4 *key = &pkt->key;
	struct flow4 *ct;

	ref->dsr = dsr_table();
	ref->ct = NULL;
	ref->where = FT_NONE;
	if (ref->dsr) {
		ct = bpf_map_lookup_elem(ref->dsr, key);
		if (ct && !ct_expired(cfg, key->proto, ct->flags, ct->last_seen_ns, now)) {
			ref->where = FT_DSR;
			ref->ct = ct;
			return ct;
		}
	}
#ifdef LB_EXPLAIN
	ct = explain_dsr_any_cpu(key, now, ref);
	if (ct)
		return ct;
#endif
	ct = bpf_map_lookup_elem(&nat_fwd_v2, key);
	if (ct && (!ct_expired(cfg, key->proto, ct->flags, ct->last_seen_ns, now) ||
		   nat_rev_side_live(cfg, key, ct, now))) {
		ref->where = FT_NAT;
		ref->ct = ct;
		return ct;
	}
	if (key->proto != IPPROTO_TCP)
		return NULL;
	ct = bpf_map_lookup_elem(&flows_syn_v2, key);
	if (ct && !ct_expired(cfg, key->proto, ct->flags, ct->last_seen_ns, now)) {
		ref->where = FT_SYN;
		ref->ct = ct;
		return ct;
	}
	return NULL;
}

/* Whether reverse entry @rev (key @rkey) still owns its port: not a
 * tombstone, and its flow is live in one direction or the other. */
static __always_inline bool nat_rev_live(const struct lb_config *cfg, const struct flow_key4 *rkey,
					 const struct nat4_rev *rev, __u64 now)
{
	__u64 seen = rev->last_seen_ns;

	return seen != CT_TOMBSTONE && (!ct_expired(cfg, rkey->proto, rev->flags, seen, now) ||
					nat_fwd_side_live(cfg, rkey, rev, now));
}

/* The live entry of reply key @rkey in @table, or NULL. */
static __always_inline struct nat4_rev *nat_rev_live_in(void *table, const struct lb_config *cfg,
							 const struct flow_key4 *rkey, __u64 now)
{
	struct nat4_rev *rev = bpf_map_lookup_elem(table, rkey);

	if (rev && nat_rev_live(cfg, rkey, rev, now))
		return rev;
	return NULL;
}

/* Live reverse entry for a reply arriving at the SNAT address, or NULL: a
 * packet to the SNAT address is a reply only when a live flow owns its port.
 * Established flows first; a TCP packet may be the SYN-ACK (or later
 * packet) of an embryonic one. */
static __always_inline struct nat4_rev *nat_lookup_rev(const struct lb_config *cfg, const struct packet *pkt,
						       __u64 now)
{
	struct nat4_rev *rev = nat_rev_live_in(&nat_rev_v2, cfg, &pkt->key, now);

	if (rev || pkt->key.proto != IPPROTO_TCP)
		return rev;
	return nat_rev_live_in(&nat_rev_syn_v2, cfg, &pkt->key, now);
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
static __always_inline void flow_target(struct flow4 *fwd, const struct lb_config *cfg,
					const struct backend *be, __u8 mode, __u32 hash)
{
	fwd->backend_be = be->addr.v4_be;
	fwd->backend_port_be = be->port_be;
	fwd->mode = mode;
	if (mode == LB_MODE_NAT)
		fwd->src_be = cfg->snat_addr.v4_be;
	else if (mode == LB_MODE_IPIP)
		fwd->src_be = ipip_source(cfg, hash);
}

static __always_inline void count_event(__u32 event)
{
	__u32 zero = 0;
	struct lb_global_stats *g;

	if (LB_EXPLAINING)
		return;
	g = bpf_map_lookup_elem(&global_stats, &zero);
	if (g && event < LB_EV_MAX)
		g->events[event] += 1;
}

/* A full memory barrier (a compare-and-swap, fully ordered in BPF): the
 * claim/promotion protocol writes one reply table, then reads the other, and
 * neither side may see the other's read before its own write. */
static __always_inline void flow_fence(void)
{
	__u32 zero = 0;
	struct lb_global_stats *g;

	if (LB_EXPLAINING)
		return;
	g = bpf_map_lookup_elem(&global_stats, &zero);
	if (g)
		__sync_val_compare_and_swap(&g->fence, 0, 0);
}

/**
 * port_take_over - take SNAT port entry @old (key @rkey, in @table) for a
 * new flow
 * @rev: the new flow's reverse entry
 *
 * Only an entry whose flow has expired in both directions is taken, and only
 * by one CPU: the compare-and-swap of last_seen_ns from the value this CPU
 * read decides (another CPU taking it, a reply refreshing it or lbd's sweep
 * tombstoning it makes it fail). The winner then replaces the entry whole.
 * Returns true if the port is now the new flow's.
 */
static __always_inline bool port_take_over(void *table, const struct lb_config *cfg,
					   const struct flow_key4 *rkey, struct nat4_rev *old,
					   const struct nat4_rev *rev, __u64 now)
{
	__u64 seen = old->last_seen_ns;

	if (nat_rev_live(cfg, rkey, old, now))
		return false;
	if (__sync_val_compare_and_swap(&old->last_seen_ns, seen, now) != seen) {
		count_event(LB_EV_PORT_RACE_LOST);
		return false;
	}
	/* Ours: no other CPU can pass the swap above until this entry expires
	 * again. The update swaps in the whole new value for readers. */
	if (bpf_map_update_elem(table, rkey, rev, BPF_EXIST) != 0)
		return false;
	count_event(LB_EV_PORT_TAKEOVER);
	return true;
}

/* Claims reply key @rkey in @table for @rev: a fresh insert, or the take-over
 * of an entry whose flow has expired. */
static __always_inline bool port_claim_in(void *table, const struct lb_config *cfg,
					  const struct flow_key4 *rkey, const struct nat4_rev *rev, __u64 now)
{
	struct nat4_rev *old;

	if (LB_EXPLAINING) {
		/* Free, or held by an expired flow (taken over): the port the
		 * packet would get. */
		old = bpf_map_lookup_elem(table, rkey);
		return !old || !nat_rev_live(cfg, rkey, old, now);
	}
	if (bpf_map_update_elem(table, rkey, rev, BPF_NOEXIST) == 0)
		return true;
	old = bpf_map_lookup_elem(table, rkey);
	if (!old) {
		count_event(LB_EV_REV_FULL);
		return false;
	}
	return port_take_over(table, cfg, rkey, old, rev, now);
}

/**
 * port_claim - claim reply key @rkey (one port candidate) for new flow @rev
 *
 * UDP flows are established at once: one table. An embryonic TCP flow's port
 * goes into nat_rev_syn_v2, and is its only if no live established flow holds
 * it: checked before (cheap refusal) and after a fence (a promotion of
 * another flow into nat_rev_v2 at the same moment: one of the two sees the
 * other and backs out; flow_promote() does the mirror image).
 */
static __always_inline bool port_claim(const struct lb_config *cfg, const struct flow_key4 *rkey,
				       const struct nat4_rev *rev, __u64 now)
{
	if (!(rev->flags & CT_F_EMBRYONIC))
		return port_claim_in(&nat_rev_v2, cfg, rkey, rev, now);
	if (nat_rev_live_in(&nat_rev_v2, cfg, rkey, now))
		return false;
	if (!port_claim_in(&nat_rev_syn_v2, cfg, rkey, rev, now))
		return false;
	if (LB_EXPLAINING)
		return true;
	flow_fence();
	if (nat_rev_live_in(&nat_rev_v2, cfg, rkey, now)) {
		bpf_map_delete_elem(&nat_rev_syn_v2, rkey);
		count_event(LB_EV_PORT_RACE_LOST);
		return false;
	}
	return true;
}

/**
 * ct_claim_port - give a new NAT flow its SNAT port
 * @fwd: the forward entry, its target filled in (flow_target()); gets the port
 * @flags: the reverse entry's flags (CT_F_EMBRYONIC for a TCP flow)
 *
 * Tries LB_PORT_RETRIES candidates of the configured range that start from
 * the flow hash, then as many from a random start, so that a client whose
 * hash candidates are all taken gets other ports on every attempt (a SYN
 * retransmission included); claims one by inserting the reverse entry with
 * BPF_NOEXIST, or by taking over an expired one (port_take_over()): two flows
 * never share (backend, SNAT port). The reverse entry goes in first: a reply
 * can only match a port that is really ours.
 *
 * Returns LB_CONTINUE, or a verdict (port exhaustion, no configuration).
 */
static __always_inline int ct_claim_port(struct packet *pkt, const struct lb_config *cfg, __u32 backend_id,
					 __u32 vip_id, __u32 hash, __u16 flags, __u64 now, struct flow4 *fwd)
{
	__u32 range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;
	struct flow_key4 rkey = {};
	struct nat4_rev rev = {};
	__u32 i, start;

	if (cfg->snat_port_min == 0 || cfg->snat_port_max < cfg->snat_port_min)
		return verdict(pkt, LB_REASON_DROP_NO_CONFIG, XDP_DROP);
	start = hash % range;

	nat_rev_key(&rkey, pkt->key.proto, fwd);

	rev.client_be = pkt->key.saddr_be;
	rev.client_port_be = pkt->key.sport_be;
	rev.vip_be = pkt->key.daddr_be;
	rev.vip_port_be = pkt->key.dport_be;
	rev.backend_id = backend_id;
	rev.vip_id = vip_id;
	rev.flags = flags;
	rev.last_seen_ns = now;

#pragma clang loop unroll(disable)
	for (i = 0; i < 2 * LB_PORT_RETRIES; i++) {
		/* 65537 is prime and larger than any range, so the candidates
		 * are distinct; start < 65536 and i < 8 keep it from wrapping. */
		__u32 step = i & (LB_PORT_RETRIES - 1);
		__u16 port;

		if (i == LB_PORT_RETRIES)
			start = bpf_get_prandom_u32() % range;
		port = cfg->snat_port_min + (start + step * 65537u) % range;
		rkey.dport_be = bpf_htons(port);
		if (port_claim(cfg, &rkey, &rev, now))
			goto claimed;
	}
	return verdict(pkt, LB_REASON_DROP_PORT_EXHAUSTED, XDP_DROP);

claimed:
	fwd->snat_port_be = rkey.dport_be;
	EXPLAIN_STAGE(LB_EX_SNAT);
	EXPLAIN(snat_port_be, rkey.dport_be);
	return LB_CONTINUE;
}

/* Gives back the SNAT port of NAT flow @fwd (client key @key) whose entry
 * could not be stored, or that ended: the reverse entry expires now (lbd's
 * sweep deletes it; a new claim may take it over at once). */
static __always_inline void nat_release(const struct flow_key4 *key, const struct flow4 *fwd)
{
	struct nat4_rev *rev = nat_rev_of(key, fwd);

	if (rev && !LB_EXPLAINING)
		rev->last_seen_ns = 0;
}

/**
 * flow_guard_allows - the DSR new-flow guard: whether this CPU may record
 * one more new flow this second (lb_config.new_flows_per_cpu, 0 = always)
 */
static __always_inline bool flow_guard_allows(const struct lb_config *cfg, __u64 now)
{
	struct lb_flow_guard *g;
	__u32 zero = 0;

	if (cfg->new_flows_per_cpu == 0)
		return true;
	g = bpf_map_lookup_elem(&flow_guard, &zero);
	if (!g)
		return true;
	if (LB_EXPLAINING)
		return now - g->window_ns >= LB_NSEC_PER_SEC || g->count < cfg->new_flows_per_cpu;
	if (now - g->window_ns >= LB_NSEC_PER_SEC) {
		g->window_ns = now;
		g->count = 0;
	}
	if (g->count >= cfg->new_flows_per_cpu) {
		count_event(LB_EV_GUARD_SKIPPED);
		return false;
	}
	g->count += 1;
	return true;
}

/**
 * flow_insert - store a new flow's entry @fwd (its target, ids, NAT port and
 * maybe next hop filled in) in the table it starts in: TCP flows in the
 * embryonic table, UDP flows in their mode's established table
 *
 * A NAT flow whose entry the table refuses gives its SNAT port back.
 * Returns LB_CONTINUE, or a verdict when the table refuses the entry.
 */
static __always_inline int flow_insert(struct packet *pkt, const struct flow_ref *ref, __u64 now,
				       struct flow4 *fwd)
{
	void *table = &flows_syn_v2;

	fwd->last_seen_ns = now;
	if (pkt->key.proto == IPPROTO_TCP) {
		fwd->flags = CT_F_EMBRYONIC;
		count_event(LB_EV_EMBRYONIC);
	} else if (fwd->mode == LB_MODE_NAT) {
		table = &nat_fwd_v2;
	} else {
		table = ref->dsr;
		if (!table)
			return LB_CONTINUE; /* lbd filled no table for this CPU: sent unrecorded */
	}
	if (bpf_map_update_elem(table, &pkt->key, fwd, BPF_ANY) == 0)
		return LB_CONTINUE;
	if (fwd->mode == LB_MODE_NAT)
		nat_release(&pkt->key, fwd);
	return verdict(pkt, LB_REASON_DROP_CT_FULL, XDP_DROP);
}

/**
 * nat_promote_port - move embryonic NAT flow @ct's reply entry (key @rkey)
 * to nat_rev_v2; returns whether the flow still owns its port
 *
 * The mirror image of port_claim(): write nat_rev_v2, fence, then check that
 * the embryonic entry still names this flow (an LRU may have evicted it and
 * another flow claimed the port meanwhile); if not, back out.
 */
static __always_inline bool nat_promote_port(const struct lb_config *cfg, const struct packet *pkt,
					     const struct flow4 *ct, const struct flow_key4 *rkey, __u64 now)
{
	struct nat4_rev *rev = bpf_map_lookup_elem(&nat_rev_syn_v2, rkey);
	struct nat4_rev est;

	if (!rev || !nat_pair(&pkt->key, ct, rkey, rev))
		return false;
	est = *rev;
	est.flags &= ~CT_F_EMBRYONIC;
	est.last_seen_ns = now;
	if (!port_claim_in(&nat_rev_v2, cfg, rkey, &est, now))
		return false;
	flow_fence();
	rev = bpf_map_lookup_elem(&nat_rev_syn_v2, rkey);
	if (!rev || !nat_pair(&pkt->key, ct, rkey, rev)) {
		bpf_map_delete_elem(&nat_rev_v2, rkey);
		return false;
	}
	return true;
}

/**
 * flow_promote - an embryonic flow @ref->ct whose client sent a packet
 * without SYN: move it to its established table if the handshake is proven
 * (DSR: this packet; NAT: an ACK of the backend's ISN, seen on its SYN-ACK)
 *
 * The packet is sent on either way (a wrong ACK reaches the backend, which
 * answers it as TCP does), except when a NAT flow finds its port taken
 * (flow_seen()) or its port was taken meanwhile (nat_promote_port()): then
 * the flow stays embryonic until it expires.
 */
static __always_inline void flow_promote(const struct lb_config *cfg, struct packet *pkt, struct flow_ref *ref,
					 __u64 now)
{
	struct flow4 *ct = ref->ct;
	struct tcphdr *tcp = pkt->l4;
	struct flow_key4 rkey = {};
	void *table = ref->dsr;
	struct flow4 est;

	if (pkt_closes(pkt))
		return;
	if (ct->mode == LB_MODE_NAT) {
		if ((void *)(tcp + 1) > pkt->data_end)
			return;
		if (!(ct->flags & CT_F_SYNACK) || !(pkt->tcp_flags & TCP_FLAG_ACK) ||
		    tcp->ack_seq != ct->ack_seq_be) {
			count_event(LB_EV_SYN_BAD_ACK);
			return;
		}
		nat_rev_key(&rkey, pkt->key.proto, ct);
		if (!nat_promote_port(cfg, pkt, ct, &rkey, now))
			return;
		table = &nat_fwd_v2;
	}
	if (!table)
		return;
	est = *ct;
	est.flags = 0;
	est.ack_seq_be = 0;
	if (bpf_map_update_elem(table, &pkt->key, &est, BPF_ANY) != 0) {
		if (ct->mode == LB_MODE_NAT)
			bpf_map_delete_elem(&nat_rev_v2, &rkey);
		count_event(LB_EV_PROMOTE_FAILED);
		return;
	}
	bpf_map_delete_elem(&flows_syn_v2, &pkt->key);
	if (ct->mode == LB_MODE_NAT)
		bpf_map_delete_elem(&nat_rev_syn_v2, &rkey);
	count_event(LB_EV_PROMOTED);
}

/**
 * flow_end - a flow whose entry @ref->ct is closing gets a new SYN: the old
 * flow is over (its entry deleted, a NAT flow's port given back), so that the
 * SYN starts a fresh one instead of inheriting the closing timeout
 */
static __always_inline void flow_end(struct packet *pkt, struct flow_ref *ref)
{
	struct flow4 *ct = ref->ct;

	EXPLAIN_STAGE(LB_EX_FLOW_RESTART);
	if (LB_EXPLAINING) {
		ref->ct = NULL;
		ref->where = FT_NONE;
		return;
	}
	if (ct->mode == LB_MODE_NAT)
		nat_release(&pkt->key, ct);
	if (ref->where == FT_DSR && ref->dsr)
		bpf_map_delete_elem(ref->dsr, &pkt->key);
	else if (ref->where == FT_NAT)
		bpf_map_delete_elem(&nat_fwd_v2, &pkt->key);
	else
		bpf_map_delete_elem(&flows_syn_v2, &pkt->key);
	count_event(LB_EV_RESTARTED);
	ref->ct = NULL;
	ref->where = FT_NONE;
}

/**
 * flow_seen - a client packet of live flow @ref->ct: refresh it, mark it
 * closing on FIN/RST (both directions: one flow, one life), promote it if it
 * is embryonic and the packet proves the handshake
 *
 * An embryonic NAT flow is sent on only while its reply entry still names it:
 * an LRU may have evicted that entry and another flow claimed the port; then
 * this flow is over (its entry deleted, the packet dropped: the client's
 * next SYN starts afresh). An established NAT flow's port cannot be lost: its
 * reply entry is never evicted, nor taken over while the flow lives.
 *
 * Returns LB_CONTINUE, or a verdict.
 */
static __always_inline int flow_seen(const struct lb_config *cfg, struct packet *pkt, struct flow_ref *ref,
				     __u64 now)
{
	struct flow4 *ct = ref->ct;
	struct nat4_rev *rev = NULL;

	if (ct->mode == LB_MODE_NAT && ref->where == FT_SYN) {
		rev = nat_rev_of(&pkt->key, ct);
		if (!rev) {
			EXPLAIN_STAGE(LB_EX_PORT_LOST);
			if (!LB_EXPLAINING)
				bpf_map_delete_elem(&flows_syn_v2, &pkt->key);
			count_event(LB_EV_PORT_LOST);
			return verdict(pkt, LB_REASON_DROP_NAT_NO_FLOW, XDP_DROP);
		}
	}
	if (LB_EXPLAINING)
		return LB_CONTINUE; /* no refresh, no closing mark, no promotion */
	if (pkt_closes(pkt) && !(ct->flags & CT_F_CLOSING)) {
		ct->flags |= CT_F_CLOSING;
		if (ct->mode == LB_MODE_NAT) {
			if (!rev)
				rev = nat_rev_of(&pkt->key, ct);
			if (rev)
				rev->flags |= CT_F_CLOSING;
		}
	}
	ct_refresh(cfg, pkt->key.proto, ct->flags, &ct->last_seen_ns, now);
	if (ref->where == FT_SYN && !(pkt->tcp_flags & TCP_FLAG_SYN))
		flow_promote(cfg, pkt, ref, now);
	return LB_CONTINUE;
}

/**
 * reply_seen - a backend packet of NAT flow @rev (key: the packet's): refresh
 * it, mark both directions closing on FIN/RST, and on the backend's SYN-ACK
 * of an embryonic flow record the ack number its client must send
 */
static __always_inline void reply_seen(const struct lb_config *cfg, struct packet *pkt, struct nat4_rev *rev,
				       __u64 now)
{
	bool closes = pkt_closes(pkt) && !(rev->flags & CT_F_CLOSING);
	bool synack = (rev->flags & CT_F_EMBRYONIC) && (pkt->tcp_flags & TCP_FLAG_SYN);
	struct tcphdr *tcp = pkt->l4;
	struct flow4 *fwd;

	if (LB_EXPLAINING)
		return;
	if (closes)
		rev->flags |= CT_F_CLOSING;
	ct_refresh(cfg, pkt->key.proto, rev->flags, &rev->last_seen_ns, now);
	if (!closes && !synack)
		return;
	fwd = nat_fwd_of(&pkt->key, rev);
	if (!fwd)
		return;
	if (closes)
		fwd->flags |= CT_F_CLOSING;
	if (synack && (void *)(tcp + 1) <= pkt->data_end) {
		fwd->ack_seq_be = bpf_htonl(bpf_ntohl(tcp->seq) + 1);
		fwd->flags |= CT_F_SYNACK;
	}
}
