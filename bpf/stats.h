/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the per-CPU counters: per VIP, per backend, and the
 * global reason/verdict counters bumped once per packet at the exit. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline void count_flow(void *map, __u32 id, const struct packet *pkt, bool new_flow)
{
	struct lb_counters *c;

	if (LB_EXPLAINING)
		return;
	c = bpf_map_lookup_elem(map, &id);
	if (!c)
		return;
	c->packets += 1;
	c->bytes += pkt->len;
	if (new_flow)
		c->new_flows += 1;
}

static __always_inline void count_verdict(const struct packet *pkt, int action)
{
	__u32 zero = 0;
	struct lb_global_stats *g = bpf_map_lookup_elem(&global_stats, &zero);

	if (!g)
		return;
	if (pkt->reason < LB_REASON_MAX)
		g->reasons[pkt->reason] += 1;
	if (action >= 0 && action < LB_VERDICT_MAX)
		g->verdicts[action] += 1;
}
