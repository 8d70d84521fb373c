/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains packet tracing (`lbctl trace`): at the program's exit,
 * one read of the switch lb_trace.on; only while lbd runs a trace, a filter on
 * the packet as it arrived (VIP address, port, protocol, client prefix), the
 * trace's bounds (records left, deadline: they hold even if lbd dies
 * mid-trace) and one bpf_perf_event_output() of a struct lb_trace_rec with the
 * frame's first bytes, as the program leaves it. Off, it costs one load and
 * one branch: no helper call, no map lookup. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb.h"
#include "maps.h"
#include "parse.h"

/* Its own section (.data.trace, a one-entry array lbd rewrites whole with
 * bpf_map_update_elem): no other global shares its value. Not pinned: a new
 * program starts with the switch off. */
struct lb_trace_cfg lb_trace SEC(".data.trace") = {};

static __always_inline bool trace_match(const struct lb_trace_cfg *t, const struct packet *pkt)
{
	__u32 m = t->match_bits;

	if ((m & LB_TRACE_M_VIP_ADDR) && pkt->key.daddr_be != t->vip_be)
		return false;
	if ((m & LB_TRACE_M_VIP_PORT) && pkt->key.dport_be != t->vport_be)
		return false;
	if ((m & LB_TRACE_M_PROTO) && pkt->key.proto != t->proto)
		return false;
	if ((m & LB_TRACE_M_CLIENT) && (pkt->key.saddr_be & t->client_mask_be) != t->client_be)
		return false;
	return true;
}

static __noinline __attribute__((unused)) void trace_emit(struct xdp_md *ctx, const struct packet *pkt, int action)
{
	struct lb_trace_cfg *t = &lb_trace;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_trace_rec rec = {};
	__u64 len = data_end - data, cap, now;

	if (*(volatile __s64 *)&t->left <= 0 || !trace_match(t, pkt))
		return;
	now = bpf_ktime_get_ns();
	if (now > t->until_ns)
		return;
	if (__sync_fetch_and_add(&t->left, -1) <= 0)
		return;
	cap = t->snaplen;
	if (cap > len)
		cap = len;
	if (cap > LB_TRACE_SNAPLEN_MAX)
		cap = LB_TRACE_SNAPLEN_MAX;
	rec.ts_ns = now;
	rec.key = pkt->key;
	rec.ifindex = ctx->ingress_ifindex;
	rec.rx_queue = ctx->rx_queue_index;
	rec.frame_len = len;
	rec.cap_len = cap;
	rec.reason = pkt->reason;
	rec.verdict = action;
	rec.tcp_flags = pkt->tcp_flags;
	rec.flags = pkt->key.saddr_be || pkt->key.daddr_be ? LB_TRACE_F_IPV4 : 0;
	bpf_perf_event_output(ctx, &trace_events, (cap << 32) | BPF_F_CURRENT_CPU, &rec, sizeof(rec));
}

#ifdef LB_TRACE_HOOK_OFF
/* bench/bpf/lb_notrace.bpf.c only: the same program without the hook, the baseline that
 * `make bench` measures the switched-off hook against. */
static __always_inline void trace_packet(struct xdp_md *ctx, const struct packet *pkt, int action)
{
}
#else
/* At the exit of xdplb(): the whole cost of tracing while it is off. */
static __always_inline void trace_packet(struct xdp_md *ctx, const struct packet *pkt, int action)
{
	if (*(volatile __u32 *)&lb_trace.on)
		trace_emit(ctx, pkt, action);
}
#endif
