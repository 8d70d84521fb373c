// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The end-to-end bench's floor: the least an XDP forwarder on the LB must do.
 * Bounds-check Ethernet, IPv4 and UDP, pick one of the targets by the source
 * port, write its MACs and redirect through a devmap (as the LB does). No
 * tables, no rewrite of L3/L4, no counters. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "e2e.h"

#define E2E_FWD_MAX_TARGETS 8

/* Number of targets in use, set before load. */
const volatile __u32 n_targets = 1;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, E2E_FWD_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct e2e_fwd_target);
} e2e_fwd_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, E2E_FWD_MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u32);
} e2e_fwd_ports SEC(".maps");

SEC("xdp")
int e2e_fwd(struct xdp_md *ctx)
{
	struct e2e_frame f = e2e_frame(ctx);
	struct udphdr *udp;
	struct e2e_fwd_target *t;
	__u32 slot;

	if (!e2e_is_ipv4(&f))
		return XDP_PASS;
	if (f.ip->ihl != 5 || f.ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	udp = (void *)(f.ip + 1);
	if ((void *)(udp + 1) > f.end)
		return XDP_PASS;
	slot = bpf_ntohs(udp->source) % (n_targets ? n_targets : 1);
	t = bpf_map_lookup_elem(&e2e_fwd_targets, &slot);
	if (!t)
		return XDP_PASS;
	__builtin_memcpy(f.eth->h_dest, t->dst_mac, ETH_ALEN);
	__builtin_memcpy(f.eth->h_source, t->src_mac, ETH_ALEN);
	return bpf_redirect_map(&e2e_fwd_ports, slot, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
