// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor of `make bench`: the least an XDP forwarder can do. Swaps the
 * Ethernet source and destination and sends the frame back out (XDP_TX).
 * Every per-path figure of the bench is reported as its difference to this
 * program, measured the same way (one BPF_PROG_TEST_RUN call per packet) in
 * the same run, so that the fixed cost of a test run cancels out. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int floor_tx(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
