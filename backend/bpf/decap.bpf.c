// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The backend-side IPIP decapsulation program (for hosts without the ipip
 * module): an IPIP packet whose inner destination is a configured VIP and
 * whose outer source is one of that VIP's load balancers (`--lb-source`)
 * loses its outer header and goes to the stack as the client's original
 * packet, its ECN field merged with the outer one by RFC 6040 (normal mode).
 * IPIP to a VIP from any other outer source is dropped and counted: it would
 * bypass the balancer's firewall and rate limits. Everything else passes
 * untouched. Installed by `lbctl backend-setup`. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xdplb.h"
#include "parse.h"
#include "csum.h"

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

/* VIPs this host serves: IPv4 address (wire order) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);
} decap_vips SEC(".maps");

/* The load balancers each VIP accepts IPIP from (their `[ipip] source`
 * prefixes): an LPM trie over (VIP, outer source), so one lookup with
 * prefixlen 64 answers "is this source allowed for this VIP". Filled by
 * `lbctl backend-setup --lb-source`. */
struct decap_source_key {
	__u32 prefixlen; /* host order: 32 (the VIP) + the source prefix length */
	__u32 vip_be;
	__u32 src_be;
};

enum decap_limits {
	/* Entries of decap_sources: (VIP, prefix) pairs over all VIPs. */
	DECAP_MAX_SOURCES = 4096,
};

/* Never read: anchors the limit in BTF so that the skeleton's `types` module
 * carries it to Rust (as lb.bpf.c's lb_btf_anchor does). */
const volatile struct {
	enum decap_limits limits;
} decap_btf_anchor;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DECAP_MAX_SOURCES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct decap_source_key);
	__type(value, __u32);
} decap_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
} decap_stats SEC(".maps");

/* ECN codepoints (RFC 3168). */
enum {
	ECN_NOT_ECT = 0,
	ECN_ECT1 = 1,
	ECN_ECT0 = 2,
	ECN_CE = 3,
};

/* What decap() did. */
enum decap_result {
	DECAP_PASSED,     /* not for us: untouched */
	DECAP_DONE,       /* decapsulated */
	DECAP_BAD_SOURCE, /* IPIP to a VIP from an outer source not allowed */
	DECAP_CE_NOT_ECT, /* outer CE on a Not-ECT inner packet (RFC 6040) */
};

/* The inner ECN field after decapsulation by RFC 6040 section 4.2 (normal
 * mode), or -1 for "drop": outer CE marks an ECT or CE inner CE, and drops a
 * Not-ECT one; outer ECT(1) turns an ECT(0) inner into ECT(1); otherwise the
 * inner field stays. */
static __always_inline int ecn_decap(__u8 outer, __u8 inner)
{
	if (outer == ECN_CE)
		return inner == ECN_NOT_ECT ? -1 : ECN_CE;
	if (outer == ECN_ECT1 && inner == ECN_ECT0)
		return ECN_ECT1;
	return inner;
}

static __always_inline enum decap_result decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer, *inner;
	struct decap_source_key src;
	__u32 l2_len = sizeof(struct ethhdr);
	__u16 proto;
	int ecn;

	if ((void *)(eth + 1) > data_end)
		return DECAP_PASSED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = data + l2_len;

		if ((void *)(vlan + 1) > data_end)
			return DECAP_PASSED;
		proto = vlan->encap_proto;
		l2_len += sizeof(struct vlan_hdr);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return DECAP_PASSED;
	outer = data + l2_len;
	if ((void *)(outer + 1) > data_end)
		return DECAP_PASSED;
	/* Our LB writes 20-byte outer headers and never fragments them. */
	if (outer->version != 4 || outer->ihl != 5 || outer->protocol != IPPROTO_IPIP ||
	    (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return DECAP_PASSED;
	/* The frame must hold all the outer header says it carries. */
	if ((void *)outer + bpf_ntohs(outer->tot_len) > data_end)
		return DECAP_PASSED;
	inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > data_end || inner->version != 4)
		return DECAP_PASSED;
	if (!bpf_map_lookup_elem(&decap_vips, &inner->daddr))
		return DECAP_PASSED;
	/* Only the VIP's load balancers may hand us its packets. */
	src.prefixlen = 64;
	src.vip_be = inner->daddr;
	src.src_be = outer->saddr;
	if (!bpf_map_lookup_elem(&decap_sources, &src))
		return DECAP_BAD_SOURCE;

	ecn = ecn_decap(outer->tos & 3, inner->tos & 3);
	if (ecn < 0)
		return DECAP_CE_NOT_ECT;
	if (ecn != (inner->tos & 3)) {
		/* tos is the second byte of the first 16-bit word (version/ihl, tos). */
		__u16 *word = (__u16 *)inner;
		__u16 old = *word;

		inner->tos = (inner->tos & ~3) | ecn;
		inner->check = csum_replace2(inner->check, old, *word);
	}

	/* Slide the L2 header over the outer IP header, then drop the gap. */
	if (l2_len == 18) {
		if (data + sizeof(struct iphdr) + 18 > data_end)
			return DECAP_PASSED;
		__builtin_memmove(data + sizeof(struct iphdr), data, 18);
	} else {
		if (data + sizeof(struct iphdr) + 14 > data_end)
			return DECAP_PASSED;
		__builtin_memmove(data + sizeof(struct iphdr), data, 14);
	}
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return DECAP_PASSED;
	return DECAP_DONE;
}

SEC("xdp")
int xdplb_decap(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct decap_stats *st = bpf_map_lookup_elem(&decap_stats, &zero);
	enum decap_result done = decap(ctx);

	switch (done) {
	case DECAP_DONE:
		if (st)
			st->decapsulated += 1;
		return XDP_PASS;
	case DECAP_BAD_SOURCE:
		if (st)
			st->dropped_source += 1;
		return XDP_DROP;
	case DECAP_CE_NOT_ECT:
		if (st)
			st->dropped_ce_not_ect += 1;
		return XDP_DROP;
	default:
		if (st)
			st->passed += 1;
		return XDP_PASS;
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
