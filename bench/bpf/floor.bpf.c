// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor of `make bench`: the least an XDP forwarder can do. Swaps the
 * Ethernet source and destination and sends the frame back out (XDP_TX).
 * Every per-path figure of the bench is reported as its difference to this
 * program, measured the same way (one BPF_PROG_TEST_RUN call per packet) in
 * the same run, so that the fixed cost of a test run cancels out. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "floor.h"

SEC("xdp")
int floor_tx(struct xdp_md *ctx)
{
	return swap_macs_tx(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
