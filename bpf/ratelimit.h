/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains per-client rate limiting: which policy a client falls
 * under (the longest matching prefix in rl_v4, else the default policy 0),
 * and its token bucket in rl_clients. Two entry points:
 *
 *   ratelimit_packet()   the pipeline stage, after the firewall, on every
 *                        packet to a VIP: charges it under scope "all";
 *   ratelimit_new_flow() called where a flow-table entry is about to be
 *                        created: charges it under scope "new-flows".
 *
 * The bucket is GCRA (the "virtual scheduling" form of a token bucket): one
 * 64-bit theoretical arrival time (TAT) per client. A packet at time now is
 * allowed when max(TAT, now) + interval - now <= burst_time, and then moves
 * TAT to max(TAT, now) + interval; a packet over the limit changes nothing.
 * A fresh (or long idle) client may thus send burst packets at once, then
 * one per interval. Time is bpf_ktime_get_ns() in 1/16 ns (RL_TIME_SHIFT),
 * so interval = ceil(16e9 / rate) is exact to 1/16 ns: the long-run rate is
 * never above the configured one, and at 10M pps at most 0.07 % below it.
 * Nothing accumulates rounding (no "tokens = elapsed * rate / 1e9"), so
 * nothing drifts. Bounds (checked by src/ratelimit.rs, which computes the
 * parameters): rate <= 1e7, burst <= 1e6, so interval <= 1.6e10 and
 * burst_time <= 1.6e16; TAT <= now + burst_time; now < 2^60 for 36 years of
 * uptime: nothing overflows 64 bits.
 *
 * Concurrency: a client's packets may arrive on several CPUs at once (RSS
 * hashes ports, not just addresses). The one word of state is updated with
 * a compare-and-swap, retried RL_CAS_TRIES times. Not a bpf_spin_lock: the
 * kernel refuses spin locks in LRU hash values (EOPNOTSUPP), and the LRU is
 * what bounds memory under a spoofed flood. A lost race means another CPU
 * moved TAT; the check is redone on the new value, so no two CPUs ever spend
 * the same credit. Losing every try (several admitted packets of one client
 * within nanoseconds) drops the packet: never above the rate, rather than
 * never a false drop.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb.h"
#include "maps.h"
#include "parse.h"

/* The policy of the packet's client and its id, or NULL (no policy map). */
static __always_inline struct rl_policy *rl_policy_of(const struct packet *pkt, __u32 *id)
{
	struct lpm_v4_key key = { .prefixlen = 32 };
	struct rl_policy *def;
	__u32 zero = 0, *found;

	def = bpf_map_lookup_elem(&rl_policies, &zero);
	*id = 0;
	if (!def || !(def->flags & RL_POLICY_F_OVERRIDES))
		return def;
	/* Network byte order, as on the wire: the trie compares from the first byte. */
	__builtin_memcpy(key.addr, &pkt->key.saddr_be, sizeof(key.addr));
	found = bpf_map_lookup_elem(&rl_v4, &key);
	if (!found)
		return def;
	*id = *found;
	return bpf_map_lookup_elem(&rl_policies, id);
}

/**
 * gcra_take - spend one packet of the GCRA bucket whose state is @tat
 * @interval, @burst_time: the bucket's parameters (1/16 ns), @now likewise
 *
 * Returns true (allowed: TAT moved on) or false (over the limit, or every
 * compare-and-swap lost to other CPUs: nothing changed).
 */
static __always_inline bool gcra_take(__u64 *tat_p, __u64 interval, __u64 burst_time, __u64 now)
{
	int i;

#pragma unroll
	for (i = 0; i < RL_CAS_TRIES; i++) {
		__u64 tat = *(volatile __u64 *)tat_p;
		__u64 next = (tat > now ? tat : now) + interval;

		if (next - now > burst_time)
			return false;
		if (LB_EXPLAINING)
			return true;
		if (__sync_val_compare_and_swap(tat_p, tat, next) == tat)
			return true;
	}
	return false;
}

static __always_inline int rl_verdict(struct packet *pkt, __u32 id, bool allowed)
{
	struct rl_counters *c = bpf_map_lookup_elem(&rl_stats, &id);

	EXPLAIN(rl_result, allowed ? LB_EX_RL_ALLOWED : LB_EX_RL_LIMITED);
	if (LB_EXPLAINING)
		return allowed ? LB_CONTINUE : verdict(pkt, LB_REASON_DROP_RATELIMIT, XDP_DROP);
	if (allowed) {
		if (c)
			c->allowed += 1;
		return LB_CONTINUE;
	}
	if (c)
		c->dropped += 1;
	return verdict(pkt, LB_REASON_DROP_RATELIMIT, XDP_DROP);
}

/**
 * rl_charge - charge one packet to its client's bucket under policy @p
 * @id: the policy's id, for its counters
 *
 * Returns LB_CONTINUE (allowed) or XDP_DROP (over the limit).
 */
static __always_inline int rl_charge(struct packet *pkt, const struct rl_policy *p, __u32 id)
{
	__u64 now = bpf_ktime_get_ns() << RL_TIME_SHIFT;
	/* Read once: lbd may rewrite the policy while we look at it. */
	__u64 interval = p->interval;
	__u64 burst_time = p->burst_time;
	struct rl_client_key key = {};
	struct rl_client fresh = {};
	struct rl_client *c;

	if (interval == 0)
		return LB_CONTINUE;
	key.addr.v4_be = pkt->key.saddr_be;
	key.family = LB_AF_INET;
	c = bpf_map_lookup_elem(&rl_clients, &key);
	EXPLAIN(rl_interval, interval);
	EXPLAIN(rl_burst_time, burst_time);
	EXPLAIN(rl_now, now);
	EXPLAIN(rl_tat, c ? c->tat : 0);
	if (LB_EXPLAINING && !c)
		return rl_verdict(pkt, id, true); /* a new client's first packet always passes */
	if (!c) {
		/* A new client starts with a full bucket and spends one packet
		 * (burst >= 1, so the first packet always passes). */
		fresh.tat = now + interval;
		if (bpf_map_update_elem(&rl_clients, &key, &fresh, BPF_NOEXIST) == 0)
			return rl_verdict(pkt, id, true);
		/* Another CPU created it first: charge the packet to that entry. */
		c = bpf_map_lookup_elem(&rl_clients, &key);
		if (!c)
			return rl_verdict(pkt, id, true); /* cannot track: fail open */
	}

	if (gcra_take(&c->tat, interval, burst_time, now))
		return rl_verdict(pkt, id, true);
	if (!LB_EXPLAINING)
		__sync_fetch_and_add(&c->dropped, 1);
	return rl_verdict(pkt, id, false);
}

/**
 * ratelimit_packet - the rate-limit stage, for a packet addressed to a VIP
 *
 * Sources the firewall allow-listed (PKT_F_FW_ALLOWED) are exempt. Under a
 * policy of scope "all" the packet is charged here; under "new-flows" the
 * policy is only noted in @pkt for ratelimit_new_flow().
 *
 * Returns LB_CONTINUE, or XDP_DROP (reason drop_ratelimit).
 */
static __always_inline int ratelimit_packet(struct packet *pkt)
{
	struct rl_policy *p;
	__u32 id;

	if (pkt->flags & PKT_F_FW_ALLOWED) {
		EXPLAIN_STAGE(LB_EX_RL_EXEMPT);
		return LB_CONTINUE;
	}
	p = rl_policy_of(pkt, &id);
	if (!p || p->interval == 0)
		return LB_CONTINUE;
	EXPLAIN_STAGE(LB_EX_RATELIMIT);
	EXPLAIN(rl_policy, id);
	EXPLAIN(rl_scope, p->scope);
	if (p->scope == RL_SCOPE_NEW_FLOWS) {
		pkt->flags |= PKT_F_RL_NEW_FLOWS;
		pkt->rl_policy = id;
		return LB_CONTINUE;
	}
	return rl_charge(pkt, p, id);
}

/**
 * ratelimit_new_flow - charge a packet that is about to create a flow entry
 *
 * Called only where the flow table has no live entry for the packet, so the
 * packets of established flows are never charged (nor dropped) under
 * "new-flows". Every packet that would create an entry is charged: a TCP SYN
 * without ACK, a UDP packet of an unknown flow, and also a TCP segment
 * without SYN that finds no live flow (it would take a flow entry and an
 * SNAT port just like a SYN, so an ACK flood is limited like a SYN flood).
 *
 * Returns LB_CONTINUE, or XDP_DROP (reason drop_ratelimit).
 */
static __always_inline int ratelimit_new_flow(struct packet *pkt)
{
	__u32 id = pkt->rl_policy;
	struct rl_policy *p;

	if (!(pkt->flags & PKT_F_RL_NEW_FLOWS))
		return LB_CONTINUE;
	p = bpf_map_lookup_elem(&rl_policies, &id);
	if (!p)
		return LB_CONTINUE;
	return rl_charge(pkt, p, id);
}
