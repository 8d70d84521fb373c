// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The backend-side IPIP decapsulation program (for hosts without the ipip
 * module): an IPIP packet whose inner destination is a configured VIP loses
 * its outer header and goes to the stack as the client's original packet.
 * Everything else passes untouched. Installed by `lbctl backend-setup`. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "xdplb.h"
#include "parse.h"

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
} decap_stats SEC(".maps");

static __always_inline int decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer, *inner;
	__u32 l2_len = sizeof(struct ethhdr);
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = data + l2_len;

		if ((void *)(vlan + 1) > data_end)
			return -1;
		proto = vlan->encap_proto;
		l2_len += sizeof(struct vlan_hdr);
	}
	if (proto != bpf_htons(ETH_P_IP))
		return -1;
	outer = data + l2_len;
	if ((void *)(outer + 1) > data_end)
		return -1;
	/* Our LB writes 20-byte outer headers and never fragments them. */
	if (outer->version != 4 || outer->ihl != 5 || outer->protocol != IPPROTO_IPIP ||
	    (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return -1;
	/* The frame must hold all the outer header says it carries. */
	if ((void *)outer + bpf_ntohs(outer->tot_len) > data_end)
		return -1;
	inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > data_end || inner->version != 4)
		return -1;
	if (!bpf_map_lookup_elem(&decap_vips, &inner->daddr))
		return -1;

	/* Slide the L2 header over the outer IP header, then drop the gap. */
	if (l2_len == 18) {
		if (data + sizeof(struct iphdr) + 18 > data_end)
			return -1;
		__builtin_memmove(data + sizeof(struct iphdr), data, 18);
	} else {
		if (data + sizeof(struct iphdr) + 14 > data_end)
			return -1;
		__builtin_memmove(data + sizeof(struct iphdr), data, 14);
	}
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return -1;
	return 0;
}

SEC("xdp")
int xdplb_decap(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct decap_stats *st = bpf_map_lookup_elem(&decap_stats, &zero);
	int done = decap(ctx);

	if (st) {
		if (done == 0)
			st->decapsulated += 1;
		else
			st->passed += 1;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
