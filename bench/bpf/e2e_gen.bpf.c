// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The end-to-end bench's packet generator, run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES in the client namespace: every frame is rewritten
 * whole (the kernel recycles pages without resetting them) as an IPv4/UDP
 * packet to the VIP from the next (source address, source port) of a fixed
 * set, so the LB sees many flows, then sent out of the client's interface
 * with XDP_TX. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "e2e.h"

/* Set by user space before each run (mmap'd .bss). */
struct e2e_gen_cfg gen_cfg = {};
/* Frames generated so far; picks the flow. One generator thread, so no atomics. */
__u64 gen_seq = 0;

static __always_inline __u16 ip_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

SEC("xdp")
int e2e_gen(struct xdp_md *ctx)
{
	struct e2e_frame f = e2e_frame(ctx);
	struct ethhdr *eth = f.eth;
	struct iphdr *ip = f.ip;
	struct udphdr *udp = (void *)(ip + 1);
	__u32 n_addrs = gen_cfg.n_addrs ? gen_cfg.n_addrs : 1;
	__u32 n_ports = gen_cfg.n_ports ? gen_cfg.n_ports : 1;
	__u64 seq = gen_seq++;
	__u32 flow = (__u32)(seq % ((__u64)n_addrs * n_ports));
	__u16 len;

	if ((void *)(udp + 1) > f.end)
		return XDP_ABORTED;
	len = (__u16)(f.end - (void *)ip);

	__builtin_memcpy(eth->h_dest, gen_cfg.dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gen_cfg.src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(len);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = bpf_htonl(bpf_ntohl(gen_cfg.src_base) + flow / n_ports);
	ip->daddr = gen_cfg.dst_addr;
	ip->check = ip_csum(ip);

	udp->source = bpf_htons((__u16)(gen_cfg.src_port_base + flow % n_ports));
	udp->dest = gen_cfg.dst_port;
	udp->len = bpf_htons((__u16)(len - sizeof(*ip)));
	udp->check = 0; /* no checksum: valid for UDP over IPv4 */
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
