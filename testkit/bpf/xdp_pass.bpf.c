// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* XDP_PASS and nothing else: attached to the veth ends that face the load
 * balancer so that the kernel wakes their NAPI for XDP_TX frames (see
 * testkit/src/xdp_pass.rs). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xlb_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
