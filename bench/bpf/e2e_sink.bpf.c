// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The end-to-end bench's sink: counts every IPv4 frame (and whether it is
 * plain UDP or IPIP) in per-CPU counters and drops it; passes the rest.
 * Attached to the backends' interfaces, it measures delivered packets;
 * attached to the LB's interface, the generator's own ceiling. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "e2e.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, E2E_SINK_MAX);
	__type(key, __u32);
	__type(value, __u64);
} e2e_sink_counts SEC(".maps");

/* Puts the enum into BTF, so user space reads the indices from the skeleton. */
enum e2e_sink_counter e2e_sink_counter_btf = E2E_SINK_ALL;

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&e2e_sink_counts, &which);

	if (n)
		*n += 1;
}

SEC("xdp")
int e2e_sink(struct xdp_md *ctx)
{
	struct e2e_frame f = e2e_frame(ctx);

	/* ARP (and anything else not IPv4) goes on to the stack: the host must keep
	 * answering its neighbours, or the LB's neighbour entry for it fails after
	 * a while and the LB stops forwarding to it. */
	if (!e2e_is_ipv4(&f))
		return XDP_PASS;
	count(E2E_SINK_ALL);
	if (f.ip->protocol == IPPROTO_UDP)
		count(E2E_SINK_UDP);
	else if (f.ip->protocol == IPPROTO_IPIP)
		count(E2E_SINK_IPIP);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
