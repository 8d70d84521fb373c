// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The xdplb XDP program: the pipeline, nothing else.
 *
 *   parse -> prefilter -> VIP lookup -> flow table -> Maglev -> NAT rewrite | L2 DSR | IPIP -> next hop
 *   parse -> prefilter -> flow table, its VIP unchanged (vip_ids) -> NAT rewrite | L2 DSR | IPIP -> next hop
 *   parse -> reply of a tracked NAT flow -> NAT restore -> next hop
 *   parse -> ICMP error about a flow -> its backend (or client) -> next hop
 *
 * The prefilter and vip_ids (bpf/vip.h) spare the vips hash lookup to packets
 * for no VIP and to tracked flows (TCP SYNs look their VIP up first).
 * The firewall runs once per packet: after the VIP is known (scope "vips"), or
 * right after parsing, for every IPv4 packet (scope "all"). Rate limiting
 * follows it on VIP packets; a "new-flows" limit is charged only where a
 * flow is about to be created (ratelimit_new_flow() in lb_to_backend()).
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
				       const struct ct_fwd *ct, struct lb_nexthop *cache, __u64 now,
				       struct nexthop_answer *a)
{
	struct iphdr *ip = pkt->ip;
	__u32 src = ct->snat_addr.v4_be;
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
	return nexthop_resolve(ctx, pkt, cfg, cache, src, ct->backend_addr.v4_be, len, ip->tos, proto, now,
			       a);
}

/**
 * send_nat - full NAT, either direction, once the next hop of the rewritten
 * 4-tuple is known (@action, @a: nexthop_resolve())
 *
 * The next hop is looked up before anything is rewritten, so that a packet
 * too big for the egress MTU can still be answered with ICMP "fragmentation
 * needed" from the address its sender used (the VIP, or the SNAT address
 * towards a backend): handing a rewritten packet to the kernel would only see
 * it dropped as a martian.
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
	rw = nat_rewrite(pkt, saddr, daddr, sport, dport);
	if (rw != LB_CONTINUE)
		return rw;
	if (action != LB_CONTINUE)
		return action;
	return nexthop_send(ctx, pkt, a, ok_reason);
}

/**
 * send_fwd - send a packet of flow @ct to its backend, the way the flow
 * started, once fwd_nexthop() answered (@action, @a)
 *
 * L2 DSR: only the MAC addresses change; too big -> dropped. IPIP: an outer
 * header to the backend; too big once encapsulated -> ICMP "fragmentation
 * needed" (DF, never about an ICMP packet) or drop. NAT: send_nat().
 */
static __always_inline int send_fwd(struct xdp_md *ctx, struct packet *pkt, const struct ct_fwd *ct,
				    int action, const struct nexthop_answer *a, enum lb_reason ok_reason)
{
	struct iphdr *ip = pkt->ip;

	if (ct->mode == LB_MODE_L2DSR) {
		if (action == LB_NEXTHOP_FRAG_NEEDED)
			return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
		if (action != LB_CONTINUE)
			return dsr_verdict(pkt, action);
		return dsr_verdict(pkt, nexthop_send(ctx, pkt, a, ok_reason));
	}
	if (ct->mode == LB_MODE_IPIP) {
		if ((void *)(ip + 1) > pkt->data_end)
			return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
		if (action == LB_NEXTHOP_FRAG_NEEDED) {
			if ((ip->frag_off & bpf_htons(IP_DF)) && a->mtu > IPIP_OVERHEAD &&
			    ip->protocol != IPPROTO_ICMP)
				return icmp_too_big(ctx, pkt, a->mtu - IPIP_OVERHEAD);
			return verdict(pkt, LB_REASON_DROP_TOO_BIG, XDP_DROP);
		}
		if (action != LB_CONTINUE)
			return dsr_verdict(pkt, action);
		action = encap_ipip(ctx, pkt, ct->snat_addr.v4_be, ct->backend_addr.v4_be);
		if (action != LB_CONTINUE)
			return action;
		return dsr_verdict(pkt, nexthop_send(ctx, pkt, a, ok_reason));
	}
	return send_nat(ctx, pkt, action, a, ct->snat_addr.v4_be, ct->backend_addr.v4_be, ct->snat_port_be,
			ct->backend_port_be, ok_reason);
}

/**
 * flow_new - pick a new flow's backend and fill in its entry @fwd (NAT: with
 * its SNAT port claimed); the entry is inserted by flow_insert() once its
 * next hop is cached in it
 *
 * Returns LB_CONTINUE or a verdict (no backend, rate limited, no SNAT port).
 */
static __always_inline int flow_new(struct packet *pkt, const struct lb_config *cfg,
				    const struct vip_meta *vip, __u64 now, struct ct_fwd *fwd)
{
	__u32 hash = flow_hash_v4(&pkt->key);
	__u32 backend_id = maglev_pick(vip, hash);
	struct backend *be;
	int action;

	if (backend_id == LB_NO_BACKEND)
		return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
	be = bpf_map_lookup_elem(&backends, &backend_id);
	if (!be || be->family != LB_AF_INET)
		return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
	action = ratelimit_new_flow(pkt);
	if (action != LB_CONTINUE)
		return action;
	flow_target(fwd, cfg, be, vip->mode, hash);
	fwd->backend_id = backend_id;
	fwd->vip_id = vip->vip_id;
	if (vip->mode == LB_MODE_NAT)
		return ct_claim_port(pkt, cfg, backend_id, vip->vip_id, hash, now, fwd);
	return LB_CONTINUE;
}

/* Client -> VIP: the flow's live entry @ct (ct_lookup_fwd()), or, if NULL, a
 * new flow on @vip's ring; then send it the way it started (NAT, L2 DSR or
 * IPIP), whatever the VIP's mode is now. An established flow sends with its
 * cached next hop; a new one looks it up before its entry is inserted, so
 * that the entry goes in with it. */
static __always_inline int lb_to_backend(struct xdp_md *ctx, struct packet *pkt,
					 const struct lb_config *cfg, const struct vip_meta *vip,
					 struct ct_fwd *ct, __u64 now)
{
	struct ct_fwd fresh = {};
	bool new_flow = false;
	int action;

	if (ct) {
		ct_touch(cfg, pkt, &ct->flags, &ct->last_seen_ns, now);
	} else {
		if (!vip)
			return verdict(pkt, LB_REASON_DROP_NO_BACKEND, XDP_DROP);
		action = flow_new(pkt, cfg, vip, now, &fresh);
		if (action != LB_CONTINUE)
			return action;
		ct = &fresh;
		new_flow = true;
	}
	{
		/* Scoped here, after flow_new(), so that it shares stack with
		 * the port claim's entries. */
		struct nexthop_answer a;
		int nh = fwd_nexthop(ctx, pkt, cfg, ct, &ct->nh, now, &a);

		if (new_flow) {
			action = flow_insert(pkt, now, ct);
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

/* Backend -> SNAT address: restore VIP -> client for a tracked flow. */
static __always_inline int lb_to_client(struct xdp_md *ctx, struct packet *pkt,
					const struct lb_config *cfg)
{
	__u64 now = lb_now();
	struct ct_rev *ct = ct_lookup_rev(cfg, pkt, now);
	struct nexthop_answer a;
	struct iphdr *ip = pkt->ip;
	int nh;

	if (!ct)
		return verdict(pkt, LB_REASON_PASS_NOT_TRACKED, XDP_PASS);
	ct_touch(cfg, pkt, &ct->flags, &ct->last_seen_ns, now);
	count_flow(&backend_stats, ct->backend_id, pkt, false);
	if ((void *)(ip + 1) > pkt->data_end)
		return verdict(pkt, LB_REASON_DROP_MALFORMED, XDP_DROP);
	nh = nexthop_resolve(ctx, pkt, cfg, &ct->nh, ct->vip_addr.v4_be, ct->client_addr.v4_be,
			     bpf_ntohs(ip->tot_len), ip->tos, ip->protocol, now, &a);
	return send_nat(ctx, pkt, nh, &a, ct->vip_addr.v4_be, ct->client_addr.v4_be, ct->vip_port_be,
			ct->client_port_be, LB_REASON_TX_NAT_REPLY);
}

/* An ICMP error about a flow goes where the flow's packets go (bpf/icmp.h);
 * from a blocked source, never. */
static __always_inline int lb_icmp(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg)
{
	struct icmp_target t = {};
	int action;

	action = icmp_steer(pkt, cfg, &t);
	if (action != LB_CONTINUE)
		return action;
	action = firewall(pkt, FW_SCOPE_VIPS);
	if (action != LB_CONTINUE)
		return action;
	if (t.ct.mode == LB_MODE_L2DSR || t.ct.mode == LB_MODE_IPIP) {
		struct nexthop_answer a;

		action = fwd_nexthop(ctx, pkt, cfg, &t.ct, NULL, 0, &a);
		return send_fwd(ctx, pkt, &t.ct, action, &a, LB_REASON_TX_ICMP_ERROR);
	}
	action = icmp_rewrite(pkt, &t);
	if (action != LB_CONTINUE)
		return action;
	return forward(ctx, pkt, cfg, LB_REASON_TX_ICMP_ERROR);
}

static __always_inline bool is_snat_reply(const struct packet *pkt, const struct lb_config *cfg)
{
	__u16 port = bpf_ntohs(pkt->key.dport_be);

	return pkt->key.dst.v4_be == cfg->snat_addr.v4_be && port >= cfg->snat_port_min &&
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
 * flow: @ct if @looked_up (live, or NULL: a new flow on @vip; @now the clock
 * it was looked up at), otherwise looked up here, after the stages, so that a
 * packet they drop (a SYN flood from a blocked source) costs no flow-table
 * lookup (nor a clock read). */
static __always_inline int to_vip(struct xdp_md *ctx, struct packet *pkt, const struct lb_config *cfg,
				  const struct vip_meta *vip, struct ct_fwd *ct, bool looked_up, __u64 now)
{
	int action;

	action = firewall(pkt, FW_SCOPE_VIPS);
	if (action != LB_CONTINUE)
		return action;
	action = vip_packet_sane(pkt);
	if (action != LB_CONTINUE)
		return action;
	action = ratelimit_packet(pkt);
	if (action != LB_CONTINUE)
		return action;
	if (!looked_up) {
		now = lb_now();
		ct = ct_lookup_fwd(cfg, pkt, now);
	}
	return lb_to_backend(ctx, pkt, cfg, vip, ct, now);
}

static __always_inline int process_packet(struct xdp_md *ctx, struct packet *pkt)
{
	struct vip_meta *vip = NULL;
	struct ct_fwd *ct = NULL;
	struct lb_config *cfg;
	__u32 zero = 0;
	int action, fw;
	bool snat, flow_first;
	__u64 now;

	action = parse_packet(ctx, pkt);
	/* [firewall] scope = "all": every IPv4 packet, fragments included. */
	fw = firewall(pkt, FW_SCOPE_ALL);
	if (fw != LB_CONTINUE)
		return fw;
	if (action != LB_CONTINUE)
		return action;

	cfg = bpf_map_lookup_elem(&lb_config, &zero);
	if (!cfg)
		return verdict(pkt, LB_REASON_DROP_NO_CONFIG, XDP_DROP);
	if (pkt->key.proto == IPPROTO_ICMP)
		return lb_icmp(ctx, pkt, cfg);
	/* Replies to the SNAT ports bypass the prefilter, which holds VIPs only
	 * (the SNAT address is often the host's own, busy with other traffic). */
	snat = is_snat_reply(pkt, cfg);
	if (!snat && !vip_filter_may_match(pkt->key.dst.v4_be))
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
		ct = ct_lookup_fwd(cfg, pkt, now);
	}
	if (!flow_first || !ct || !flow_vip_current(pkt, ct->vip_id)) {
		vip = vip_lookup(pkt);
		if (!vip) {
			if (!snat)
				return not_for_us(pkt);
			action = vip_packet_sane(pkt);
			if (action != LB_CONTINUE)
				return action;
			return lb_to_client(ctx, pkt, cfg);
		}
	}
	/* One call site for the stages after it: inlined twice, they would
	 * make the program half as big again. */
	return to_vip(ctx, pkt, cfg, vip, ct, flow_first, now);
}

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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never read: anchors the shared enums in BTF so that the skeleton's `types`
 * module carries them to Rust (reason names, modes, families, flags). */
const volatile struct {
	enum lb_reason reason;
	enum lb_mode mode;
	enum lb_family family;
	enum ct_flags ct_flags;
	enum lb_limits limits;
	enum lb_ring_values ring_values;
	enum fw_action fw_action;
	enum fw_limits fw_limits;
	enum fw_verdict_bits fw_verdict_bits;
	enum rl_limits rl_limits;
	enum rl_scope rl_scope;
	enum rl_policy_flags rl_policy_flags;
	enum lb_vip_filter_params vip_filter_params;
} lb_btf_anchor;
