// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lb_explain: what xdplb would do with one packet, now.
 *
 * The pipeline of lb.bpf.c built a second time with LB_EXPLAIN defined
 * (bpf/explain.h): every map write of the stages is compiled out (or
 * replaced by a read-only twin that answers what the write would have
 * found), and the stages record their decisions in lb_explain_out, this
 * object's .bss. lbd loads this object on the first explain with every map
 * of the loaded data plane reused by fd (src/dataplane/explain.rs), so the
 * program reads the live tables, and runs it through BPF_PROG_TEST_RUN on a
 * synthesized frame whose ingress is the interface the client's packets
 * arrive on. Never attached; xdplb is not changed by any of this. */
#define LB_EXPLAIN 1
#include "lb.bpf.c"

SEC("xdp")
int lb_explain(struct xdp_md *ctx)
{
	struct packet pkt = {};
	int action;

	__builtin_memset(&lb_explain_out, 0, sizeof(lb_explain_out));
	lb_explain_out.fib_rc = -1;
	action = process_packet(ctx, &pkt);
	lb_explain_out.action = action;
	lb_explain_out.reason = pkt.reason;
	return action;
}

/* Never read: anchors the record's enums in BTF for the skeleton's types. */
const volatile struct {
	enum lb_explain_stages stages;
	enum lb_explain_rl_result rl_result;
	enum flow_table flow_table;
} lb_explain_anchor;
