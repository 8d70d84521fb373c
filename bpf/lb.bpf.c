// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The xdplb XDP program: the pipeline, nothing else.
 *
 *   parse -> prefilter -> VIP lookup -> TTL -> flow tables -> Maglev -> next hop -> NAT rewrite | L2 DSR | IPIP
 *   parse -> prefilter -> flow tables, its VIP unchanged (vip_ids) -> TTL -> next hop -> rewrite
 *   parse -> reply of a tracked NAT flow (its port owned) -> TTL -> next hop -> NAT restore
 *   parse -> ICMP error about a flow (its quote) -> firewall, rate limit, ICMP budget -> its backend (or client)
 *
 * The prefilter and vip_ids (bpf/vip.h) spare the vips hash lookup to packets
 * for no VIP and to tracked flows (TCP SYNs look their VIP up first).
 * The firewall reads the source's verdict once per packet: right after
 * parsing, for every IPv4 packet (scope "all"), or, scope "vips", right after
 * the prefilter, where a blocked source is dropped for anything to a VIP
 * address before any lookup, the other verdicts applied once the VIP is known.
 * Every forwarded packet leaves with its TTL one less (bpf/ttl.h). Rate limiting
 * follows it on VIP packets; a "new-flows" limit is charged only where a
 * flow starts (a SYN or a UDP packet without a flow: ratelimit_new_flow() in
 * flow_new()), never where an established flow lost its entry.
 * The flow tables (bpf/flow.h): a TCP flow waits in the embryonic table until
 * its client proves the handshake, then moves to its mode's established
 * table; only a SYN starts a NAT TCP flow.
 *
 * Each stage returns a verdict or LB_CONTINUE; the reason and the verdict
 * are counted once, on the way out.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb.h"
#include "maps.h"
#include "clock.h"
#include "parse.h"
#include "stats.h"
#include "maglev.h"
#include "flow.h"
#include "nat.h"
#include "nexthop.h"
#include "encap.h"
#include "firewall.h"
#include "ratelimit.h"
#include "icmp.h"
#include "vip.h"
#include "ttl.h"
#include "trace.h"

/* DSR packets that cannot leave through XDP are dropped, not passed: the
 * kernel would route the VIP-addressed packet along the VIP's route, which
 * leads back here. */
static __always_inline int dsr_verdict(struct packet *pkt, int action)
{
	if (action == XDP_PASS)
		return verdict(pkt, LB_REASON_DROP_DSR_NO_NEXTHOP, XDP_DROP);
	return action;
}

/**
 * fwd_nexthop - the next hop of a packet of flow @ct towards its backend
 * @cache: the flow's cached next hop (NULL: look up, store nothing)
 *
 * What is looked up depends on how the flow started: NAT, the SNAT address ->
 * backend; L2 DSR, the client -> backend; IPIP, the outer header (outer source
 * -> backend, protocol 4, 20 bytes longer).
 * Returns as nexthop_resolve().
 */
static __always_inline int fwd_nexthop(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg,
				       const struct flow4 *ct, struct lb_nexthop *cache, __u64 now,
				       struct nexthop_answer *a)
{
	struct iphdr *ip = pkt->ip;
	__u32 src = ct->src_be;
	__u8 proto;
	__u16 len;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	len = bpf_ntohs(ip->tot_len);
	proto = ip->protocol;
	if (ct->mode == LB_MODE_L2DSR)
		src = ip->saddr;
	if (ct->mode == LB_MODE_IPIP) {
		len += IPIP_OVERHEAD;
		proto = IPPROTO_IPIP;
	}
	return nexthop_resolve(ctx, pkt, cfg, cache, src, ct->backend_be, len, ip->tos, proto, now,
			       ct->mode == LB_MODE_L2DSR, a);
}

/**
 * send_nat - full NAT, either direction, once the next hop of the rewritten
 * 4-tuple is known (@action, @a: nexthop_resolve())
 *
 * The next hop is looked up before anything is rewritten, so that a packet
 * too big for the egress MTU can still be answered with ICMP "fragmentation
 * needed" from the address its sender used (the VIP, or the SNAT address
 * towards a backend), and a packet with no way out is dropped as it came
 * (nat_no_pass()): handing a rewritten packet to the kernel would only see it
 * dropped as a martian. The TTL goes one down with the rewrite.
 */
static __always_inline int send_nat(struct xdp_md *ctx, struct packet *pkt, int action,
				    const struct nexthop_answer *a, __u32 saddr, __u32 daddr, __u16 sport,
				    __u16 dport, enum lb_reason ok_reason)
{
	struct iphdr *ip = pkt->ip;
	int rw;

	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	if (action == LB_NEXTHOP_FRAG_NEEDED) {
		if ((ip->frag_off & bpf_htons(IP_DF)) && a->mtu >= 68)
			return icmp_too_big(ctx, pkt, a->mtu);
		return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
	}
	if (action != LB_CONTINUE)
		return nat_no_pass(pkt, action);
	rw = nat_rewrite(pkt, saddr, daddr, sport, dport);
	if (rw != LB_CONTINUE)
		return rw;
	ip_ttl_dec(ip);
	return nat_no_pass(pkt, nexthop_send(ctx, pkt, a, ok_reason));
}

/**
 * send_fwd - send a packet of flow @ct to its backend, the way the flow
 * started, once fwd_nexthop() answered (@action, @a)
 *
 * L2 DSR: only the MAC addresses and the TTL change; too big -> dropped.
 * IPIP: the inner TTL one down, then an outer header to the backend; too big
 * once encapsulated -> with DF, ICMP "fragmentation needed" (never about an
 * ICMP packet) or drop; without DF, encapsulated and passed to the kernel,
 * which fragments the outer packet. NAT: send_nat().
 */
static __always_inline int send_fwd(struct xdp_md *ctx, struct packet *pkt, const struct flow4 *ct,
				    int action, const struct nexthop_answer *a, enum lb_reason ok_reason)
{
	struct iphdr *ip = pkt->ip;

	if (ct->mode == LB_MODE_L2DSR) {
		if (action == LB_NEXTHOP_FRAG_NEEDED)
			return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
		if (action != LB_CONTINUE)
			return dsr_verdict(pkt, action);
		if ((void *)(ip + 1) > pkt->data_end)
			return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
		ip_ttl_dec(ip);
		return dsr_verdict(pkt, nexthop_send(ctx, pkt, a, ok_reason));
	}
	if (ct->mode == LB_MODE_IPIP) {
		bool too_big = action == LB_NEXTHOP_FRAG_NEEDED;

		if ((void *)(ip + 1) > pkt->data_end)
			return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
		if (too_big && (ip->frag_off & bpf_htons(IP_DF))) {
			if (a->mtu > IPIP_OVERHEAD && ip->protocol != IPPROTO_ICMP)
				return icmp_too_big(ctx, pkt, a->mtu - IPIP_OVERHEAD);
			return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
		}
		if (action != LB_CONTINUE && !too_big)
			return dsr_verdict(pkt, action);
		ip_ttl_dec(ip);
		action = encap_ipip(ctx, pkt, ct->src_be, ct->backend_be);
		if (action != LB_CONTINUE)
			return action;
		/* DF clear and too big once encapsulated: the kernel forwards the
		 * outer packet (to the backend, not the VIP: no loop) and
		 * fragments it ("IPIP and the MTU" in docs/ARCHITECTURE.md). */
		if (too_big)
			return verdict(pkt, LB_REASON_PASS_IPIP_TOO_BIG, XDP_PASS);
		return dsr_verdict(pkt, nexthop_send(ctx, pkt, a, ok_reason));
	}
	return send_nat(ctx, pkt, action, a, ct->src_be, ct->backend_be, ct->snat_port_be,
			ct->backend_port_be, ok_reason);
}

/**
 * flow_new - pick a new flow's backend and fill in its entry @fwd (NAT: with
 * its SNAT port claimed); the entry is inserted by flow_insert() once its
 * next hop is cached in it, if @record says so
 *
 * A flow starts with a SYN or a UDP packet: charged by the new-flows limiter.
 * A TCP packet without SYN and without an entry belongs to a flow that lost
 * its entry (evicted, another CPU's DSR table, an older lbd's table): in NAT
 * mode it is dropped (its port is gone: a new one would be one the backend
 * never saw); a DSR VIP chooses by Maglev again, which gives the same backend
 * while the set is unchanged, and records it as embryonic (a closing packet:
 * not recorded). The DSR new-flow guard can leave a new flow unrecorded.
 *
 * Returns LB_CONTINUE or a verdict (no backend, rate limited, no SNAT port).
 */
static __always_inline int flow_new(struct packet *pkt, const struct lb_config *cfg,
				    const struct vip_meta *vip, __u64 now, struct flow4 *fwd, bool *record)
{
	bool starts = pkt->key.proto != IPPROTO_TCP || pkt_is_syn(pkt);
	__u32 hash, backend_id;
	struct backend *be;
	int action;

	if (!starts && vip->mode == LB_MODE_NAT)
		return verdict(pkt, LB_REASON_DROP_NAT_NO_FLOW, XDP_DROP);
	hash = flow_hash_v4(&pkt->key);
	backend_id = maglev_pick(vip, hash);
	if (backend_id == LB_NO_BACKEND)
		return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
	EXPLAIN_STAGE(LB_EX_MAGLEV);
	EXPLAIN(hash, hash);
	EXPLAIN(slot, vip->ring_size ? hash % vip->ring_size : 0);
	be = bpf_map_lookup_elem(&backends, &backend_id);
	if (!be || be->family != LB_AF_INET)
		return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
	EXPLAIN_STAGE(LB_EX_BACKEND);
	EXPLAIN(backend_id, backend_id);
	EXPLAIN(backend_be, be->addr.v4_be);
	EXPLAIN(backend_port_be, be->port_be);
	EXPLAIN(mode, vip->mode);
	if (starts) {
		action = ratelimit_new_flow(pkt);
		if (action != LB_CONTINUE)
			return action;
	} else {
		count_event(LB_EV_DSR_RECHOSEN);
	}
	flow_target(fwd, cfg, be, vip->mode, hash);
	fwd->backend_id = backend_id;
	fwd->vip_id = vip->vip_id;
	if (vip->mode == LB_MODE_NAT) {
		*record = true;
		return ct_claim_port(pkt, cfg, backend_id, vip->vip_id, hash,
				     pkt->key.proto == IPPROTO_TCP ? CT_F_EMBRYONIC : 0, now, fwd);
	}
	*record = !pkt_closes(pkt) && flow_guard_allows(cfg, now);
	return LB_CONTINUE;
}

/* Client -> VIP: the flow's live entry @ref (flow_lookup()), or, if none, a
 * new flow on @vip's ring; then send it the way it started (NAT, L2 DSR or
 * IPIP), whatever the VIP's mode is now. An established flow sends with its
 * cached next hop; a new one looks it up before its entry is inserted, so
 * that the entry goes in with it. A SYN on a closing entry ends that flow
 * and starts a fresh one. */
static __always_inline int lb_to_backend(struct xdp_md *ctx, struct packet *pkt,
					 const struct lb_config *cfg, const struct vip_meta *vip,
					 struct flow_ref *ref, __u64 now)
{
	struct flow4 fresh = {};
	struct flow4 *ct = ref->ct;
	bool new_flow = false, record = false;
	int action;

	if (ct && (ct->flags & CT_F_CLOSING) && pkt_is_syn(pkt)) {
		/* A pure SYN always has its VIP looked up (process_packet()). */
		flow_end(pkt, ref);
		ct = NULL;
	}
	if (ct) {
		EXPLAIN_STAGE(LB_EX_FLOW);
		EXPLAIN(flow_table, ref->where);
		EXPLAIN(flow_flags, ct->flags);
		EXPLAIN(flow_idle_ns, now - ct->last_seen_ns);
		if (!vip) {
			EXPLAIN_STAGE(LB_EX_VIP);
			EXPLAIN(vip_id, ct->vip_id);
		}
		action = flow_seen(cfg, pkt, ref, now);
		if (action != LB_CONTINUE)
			return action;
	} else {
		if (!vip)
			return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
		action = flow_new(pkt, cfg, vip, now, &fresh, &record);
		if (action != LB_CONTINUE)
			return action;
		ct = &fresh;
		new_flow = pkt->key.proto != IPPROTO_TCP || pkt_is_syn(pkt);
	}
	{
		/* Scoped here, after flow_new(), so that it shares stack with
		 * the port claim's entries. */
		struct nexthop_answer a;
		int nh;

		EXPLAIN_STAGE(LB_EX_BACKEND | (record ? LB_EX_RECORD : 0));
		EXPLAIN(backend_id, ct->backend_id);
		EXPLAIN(backend_be, ct->backend_be);
		EXPLAIN(backend_port_be, ct->backend_port_be);
		EXPLAIN(mode, ct->mode);
		EXPLAIN(src_be, ct->src_be);
		EXPLAIN(snat_port_be, ct->snat_port_be);
		nh = fwd_nexthop(ctx, pkt, cfg, ct, &ct->nh, now, &a);
		if (record && !LB_EXPLAINING) {
			action = flow_insert(pkt, ref, now, ct);
			if (action != LB_CONTINUE)
				return action;
		}
		count_flow(&vip_stats, ct->vip_id, pkt, new_flow);
		count_flow(&backend_stats, ct->backend_id, pkt, new_flow);
		if (ct->mode == LB_MODE_L2DSR)
			return send_fwd(ctx, pkt, ct, nh, &a, LB_REASON_TX_L2DSR);
		if (ct->mode == LB_MODE_IPIP)
			return send_fwd(ctx, pkt, ct, nh, &a, LB_REASON_TX_IPIP);
		return send_fwd(ctx, pkt, ct, nh, &a, LB_REASON_TX_NAT_FORWARD);
	}
}

/* Backend -> SNAT address: restore VIP -> client for a tracked flow. A packet
 * whose port no live flow owns is the host's (its own connections, their
 * fragments): passed untouched. */
static __always_inline int lb_to_client(struct xdp_md *ctx, struct packet *pkt,
					const struct lb_config *cfg)
{
	__u64 now = lb_now();
	struct nat4_rev *rev = nat_lookup_rev(cfg, pkt, now);
	struct nexthop_answer a;
	struct iphdr *ip = pkt->ip;
	int nh;

	if (!rev)
		return verdict(pkt, LB_REASON_PASS_NOT_TRACKED, XDP_PASS);
	EXPLAIN_STAGE(LB_EX_REPLY);
	EXPLAIN(backend_id, rev->backend_id);
	nh = vip_packet_sane(pkt);
	if (nh != LB_CONTINUE)
		return nh;
	nh = ttl_expired(ctx, pkt, cfg, false);
	if (nh != LB_CONTINUE)
		return nh;
	reply_seen(cfg, pkt, rev, now);
	count_flow(&backend_stats, rev->backend_id, pkt, false);
	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	nh = nexthop_resolve(ctx, pkt, cfg, &rev->nh, rev->vip_be, rev->client_be, bpf_ntohs(ip->tot_len),
			     ip->tos, ip->protocol, now, false, &a);
	return send_nat(ctx, pkt, nh, &a, rev->vip_be, rev->client_be, rev->vip_port_be, rev->client_port_be,
			LB_REASON_TX_NAT_REPLY);
}

/* An ICMP error about a flow goes where the flow's packets go (bpf/icmp.h).
 * Known ours from its quote alone, it passes the firewall, its sender's rate
 * limit and its VIP's ICMP budget (or the SNAT address's) before any flow
 * lookup, so a flood of forged errors costs no more than that. A NAT error
 * is rewritten only once its next hop is known. */
static __always_inline int lb_icmp(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg)
{
	struct icmp_class c = {};
	struct icmp_target t = {};
	struct nexthop_answer a;
	struct iphdr *ip;
	int action;

	action = icmp_classify(pkt, cfg, &c);
	if (action != LB_CONTINUE)
		return action;
	EXPLAIN_STAGE(LB_EX_ICMP);
	action = firewall(pkt, FW_SCOPE_VIPS);
	if (action != LB_CONTINUE)
		return action;
	action = ratelimit_packet(pkt);
	if (action != LB_CONTINUE)
		return action;
	if (!icmp_budget_take(c.vip ? c.vip->vip_id : LB_ICMP_BUDGET_SNAT, cfg->icmp_error_interval,
			      cfg->icmp_error_burst_time))
		return verdict(pkt, LB_REASON_DROP_ICMP_BUDGET, XDP_DROP);
	action = ttl_expired(ctx, pkt, cfg, true);
	if (action != LB_CONTINUE)
		return action;
	action = icmp_steer(pkt, cfg, &c, &t);
	if (action != LB_CONTINUE)
		return action;
	if (t.ct.mode == LB_MODE_L2DSR || t.ct.mode == LB_MODE_IPIP) {
		action = fwd_nexthop(ctx, pkt, cfg, &t.ct, NULL, 0, &a);
		return send_fwd(ctx, pkt, &t.ct, action, &a, LB_REASON_TX_ICMP_ERROR);
	}
	ip = pkt->ip;
	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	action = nexthop_resolve(ctx, pkt, cfg, NULL, t.o_saddr, t.o_daddr, bpf_ntohs(ip->tot_len), ip->tos,
				 IPPROTO_ICMP, 0, false, &a);
	/* An error is never answered with another: too big is a drop. */
	if (action == LB_NEXTHOP_FRAG_NEEDED)
		return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
	if (action != LB_CONTINUE)
		return nat_no_pass(pkt, action);
	action = icmp_rewrite(pkt, &t);
	if (action != LB_CONTINUE)
		return action;
	ip = pkt->ip;
	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	ip_ttl_dec(ip);
	return nat_no_pass(pkt, nexthop_send(ctx, pkt, &a, LB_REASON_TX_ICMP_ERROR));
}

static __always_inline bool is_snat_reply(const struct packet *pkt, const struct lb_config *cfg)
{
	__u16 port = bpf_ntohs(pkt->key.dport_be);

	return pkt->key.daddr_be == cfg->snat_addr.v4_be && port >= cfg->snat_port_min &&
	       port <= cfg->snat_port_max;
}

/* Neither a VIP nor a tracked reply: the kernel's. */
static __always_inline int not_for_us(struct packet *pkt)
{
	if (pkt->flags & PKT_F_FRAGMENT)
		return verdict(pkt, LB_REASON_PASS_FRAGMENT, XDP_PASS);
	return verdict(pkt, LB_REASON_PASS_NOT_VIP, XDP_PASS);
}

/* A packet to a VIP: firewall (scope "vips"), sanity, rate limit, then its
 * flow: @ref if @looked_up (live, or none: a new flow on @vip; @now the clock
 * it was looked up at), otherwise looked up here, after the stages, so that a
 * packet they drop (a SYN flood from a blocked source) costs no flow-table
 * lookup (nor a clock read). */
static __always_inline int to_vip(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg,
				  const struct vip_meta *vip, struct flow_ref *ref, bool looked_up, __u64 now)
{
	int action;

	if (vip) {
		EXPLAIN_STAGE(LB_EX_VIP);
		EXPLAIN(vip_id, vip->vip_id);
		EXPLAIN(vip_ring_size, vip->ring_size);
		EXPLAIN(vip_mode, vip->mode);
	}
	action = firewall(pkt, FW_SCOPE_VIPS);
	if (action != LB_CONTINUE)
		return action;
	action = vip_packet_sane(pkt);
	if (action != LB_CONTINUE)
		return action;
	action = ratelimit_packet(pkt);
	if (action != LB_CONTINUE)
		return action;
	action = ttl_expired(ctx, pkt, cfg, false);
	if (action != LB_CONTINUE)
		return action;
	if (!looked_up) {
		now = lb_now();
		flow_lookup(cfg, pkt, now, ref);
	}
	return lb_to_backend(ctx, pkt, cfg, vip, ref, now);
}

static __always_inline int process_packet(struct xdp_md *ctx, struct packet *pkt)
{
	struct vip_meta *vip = NULL;
	struct flow_ref ref = {};
	struct flow4 *ct = NULL;
	struct lb_config *cfg;
	__u32 zero = 0;
	int action, fw;
	bool snat, flow_first, maybe_vip;
	__u64 now;

	action = parse_packet(ctx, pkt);
	/* [firewall] scope = "all": every IPv4 packet, fragments included. */
	fw = firewall(pkt, FW_SCOPE_ALL);
	if (fw != LB_CONTINUE)
		return fw;
	/* Scope "vips": a blocked source gets nothing to a VIP address through,
	 * whatever the packet (later fragments and echo requests included), and
	 * before any flow lookup. */
	maybe_vip = pkt->ip && vip_filter_may_match(pkt->ip->daddr);
	if (maybe_vip) {
		fw = firewall_vip_addr(pkt);
		if (fw != LB_CONTINUE)
			return fw;
	}
	if (action != LB_CONTINUE)
		return action;

	cfg = bpf_map_lookup_elem(&lb_config_v2, &zero);
	if (!cfg)
		return verdict(pkt, LB_REASON_DROP_NO_CONFIG, XDP_DROP);
	if (pkt->key.proto == IPPROTO_ICMP)
		return lb_icmp(ctx, pkt, cfg);
	/* Replies to the SNAT ports bypass the prefilter, which holds VIPs only
	 * (the SNAT address is often the host's own, busy with other traffic). */
	snat = is_snat_reply(pkt, cfg);
	if (!snat && !maybe_vip)
		return not_for_us(pkt);

	/* A packet of a tracked flow whose VIP is still there (with the id its
	 * entry recorded) needs no vips lookup, so the flow table comes first;
	 * but not for a TCP SYN, which mostly starts a flow (a SYN flood from a
	 * blocked source must not cost a flow-table miss more), nor for the SNAT
	 * ports (a VIP may share them). */
	flow_first = !snat && (pkt->key.proto != IPPROTO_TCP ||
			       (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN);
	now = 0;
	if (flow_first) {
		now = lb_now();
		ct = flow_lookup(cfg, pkt, now, &ref);
	}
	if (!flow_first || !ct || !flow_vip_current(pkt, ct->vip_id)) {
		vip = vip_lookup(pkt);
		if (!vip) {
			if (!snat)
				return not_for_us(pkt);
			return lb_to_client(ctx, pkt, cfg);
		}
	}
	/* One call site for the stages after it: inlined twice, they would
	 * make the program half as big again. */
	return to_vip(ctx, pkt, cfg, vip, &ref, flow_first, now);
}

#ifndef LB_EXPLAIN /* bpf/explain.bpf.c: the pipeline without its writes */
SEC("xdp")
int xdplb(struct xdp_md *ctx)
{
	struct packet pkt = {};
#ifdef LB_BUILD_VARIANT
	/* Test builds only (build.rs, XDPLB_BPF_VARIANT): one no-op instruction
	 * makes a program with another tag for the upgrade test. */
	asm volatile("r0 = %[v]" : : [v] "i"(LB_BUILD_VARIANT) : "r0");
#endif
	int action = process_packet(ctx, &pkt);

	count_verdict(&pkt, action);
	trace_packet(ctx, &pkt, action);
	return action;
}

/* lbd's reading of the data plane's clock (bpf/clock.h), through
 * BPF_PROG_TEST_RUN: lb_now() goes into the first 8 bytes of the frame
 * (host order), which the test run hands back. Never attached. */
SEC("xdp")
int lb_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *out = data;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	*out = lb_now();
	return XDP_PASS;
}

/* lbd's sweep of the flow tables, run through BPF_PROG_TEST_RUN every few
 * seconds and after a backend change (src/dataplane/sweep.rs); never
 * attached. It deletes
 *  - nat_rev_v2 entries whose flow expired in both directions (the table is
 *    not an LRU: without the sweep, ports of backends no flow goes to any
 *    more would hold entries forever);
 *  - entries, in every table, of flows whose backend is gone (its backends
 *    slot now names another address or port) or ended (LB_BACKEND_F_ENDED).
 * A nat_rev_v2 entry is first tombstoned by a compare-and-swap of its
 * last_seen_ns, so that no CPU takes the port over while it is deleted
 * (nat_rev_live() counts a tombstone as dead, port_take_over() skips it); a CPU that took it over first makes
 * the swap fail and keeps it. The report goes into the frame. */
struct gc_ctx {
	__u64 now;
	struct lb_config *cfg;
	struct lb_gc_report r;
};

static __always_inline bool backend_ended(__u32 id, __u32 addr_be, __u16 port_be)
{
	struct backend *be = bpf_map_lookup_elem(&backends, &id);

	return !be || be->addr.v4_be != addr_be || be->port_be != port_be || (be->flags & LB_BACKEND_F_ENDED);
}

static long gc_rev(void *map, struct flow_key4 *rkey, struct nat4_rev *rev, struct gc_ctx *g)
{
	__u64 seen = rev->last_seen_ns;
	bool ended;

	g->r.seen += 1;
	ended = backend_ended(rev->backend_id, rkey->saddr_be, rkey->sport_be);
	if (!ended && (seen == CT_TOMBSTONE || !ct_expired(g->cfg, rkey->proto, rev->flags, seen, g->now) ||
		       nat_fwd_side_live(g->cfg, rkey, rev, g->now)))
		return 0;
	if (__sync_val_compare_and_swap(&rev->last_seen_ns, seen, CT_TOMBSTONE) != seen)
		return 0;
	bpf_map_delete_elem(map, rkey);
	if (ended)
		g->r.ended += 1;
	else
		g->r.rev_swept += 1;
	return 0;
}

static long gc_fwd(void *map, struct flow_key4 *key, struct flow4 *fwd, struct gc_ctx *g)
{
	g->r.seen += 1;
	if (!backend_ended(fwd->backend_id, fwd->backend_be, fwd->backend_port_be))
		return 0;
	bpf_map_delete_elem(map, key);
	g->r.ended += 1;
	return 0;
}

SEC("xdp")
int lb_flow_gc(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_gc_report *out = data;
	struct gc_ctx g = {};
	__u32 zero = 0, cpu;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	g.cfg = bpf_map_lookup_elem(&lb_config_v2, &zero);
	if (!g.cfg)
		return XDP_ABORTED;
	g.now = lb_now();
	/* Forward entries first: a flow of an ended backend loses its client
	 * side, then its reply side goes with the rest. */
	bpf_for_each_map_elem(&nat_fwd_v2, gc_fwd, &g, 0);
	bpf_for_each_map_elem(&flows_syn_v2, gc_fwd, &g, 0);
	for (cpu = 0; cpu < LB_MAX_CPUS; cpu++) {
		void *dsr = bpf_map_lookup_elem(&dsr_v2, &cpu);

		if (!dsr)
			break;
		bpf_for_each_map_elem(dsr, gc_fwd, &g, 0);
	}
	bpf_for_each_map_elem(&nat_rev_v2, gc_rev, &g, 0);
	bpf_for_each_map_elem(&nat_rev_syn_v2, gc_rev, &g, 0);
	*out = g.r;
	return XDP_PASS;
}
#endif /* LB_EXPLAIN */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never read: anchors the shared enums in BTF so that the skeleton's `types`
 * module carries them to Rust (reason names, modes, families, flags). */
const volatile struct {
	enum lb_reason reason;
	enum lb_mode mode;
	enum lb_family family;
	enum ct_flags ct_flags;
	enum lb_event event;
	enum backend_flags backend_flags;
	struct flow_key v1_key;
	struct ct_fwd v1_fwd;
	struct ct_rev v1_rev;
	enum lb_limits limits;
	enum lb_ring_values ring_values;
	enum fw_action fw_action;
	enum fw_limits fw_limits;
	enum fw_verdict_bits fw_verdict_bits;
	enum rl_limits rl_limits;
	enum rl_scope rl_scope;
	enum rl_policy_flags rl_policy_flags;
	enum lb_vip_filter_params vip_filter_params;
	enum lb_trace_match trace_match;
	enum lb_trace_limits trace_limits;
	enum lb_trace_flags trace_flags;
	struct lb_trace_rec trace_rec;
} lb_btf_anchor;
