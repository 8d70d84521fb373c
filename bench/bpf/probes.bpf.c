// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Cost probes of `make bench`: each program does one operation the `lb`
 * program does on its paths (a FIB lookup, a hash or LRU lookup, an LRU
 * insert, an LPM lookup, the coarse clock, a per-CPU counter) and then what
 * the floor program does (swap MACs, XDP_TX). Measured like the floor, their
 * difference to it is the price of that one operation on this machine, which
 * the closing note uses to say where the time of a path goes. A probe whose
 * operation does not give the expected result returns XDP_PASS, so the bench
 * can check that every timed call did the work.
 *
 * probe_page_reads is the memory baseline of the firewall's scaling points:
 * the reads a frame names, in a 128 MiB array of 4 KiB pages (vmalloc'd, like
 * every BPF map), and nothing else. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "floor.h"

#define AF_INET 2

/* Shaped like the lb program's keys: flow_key is 40 bytes, vip_key 20. */
struct probe_flow_key {
	__u32 words[10];
};

struct probe_flow_value {
	__u64 words[8];
};

struct probe_vip_key {
	__u32 words[5];
};

struct probe_lpm_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct probe_vip_key);
	__type(value, __u64);
} probe_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct probe_flow_key);
	__type(value, struct probe_flow_value);
} probe_lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct probe_lpm_key);
	__type(value, __u64);
} probe_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} probe_counter SEC(".maps");

/* probe_page_reads: PROBE_PAGES page-aligned elements of one 4 KiB page each
 * (BPF_F_MMAPABLE aligns the values to pages), 64 cache lines of 8 words. */
enum probe_pages_limits {
	PROBE_PAGES = 32768,
	PROBE_READS = 6, /* reads per frame at most */
	PROBE_LINES = 64, /* cache lines per page */
};

struct probe_page {
	__u64 words[512];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PROBE_PAGES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct probe_page);
} probe_pages SEC(".maps");

/* Set by the bench before load: the FIB lookup's source and destination. */
const volatile __u32 fib_src_be = 0;
const volatile __u32 fib_dst_be = 0;

static __always_inline int tx(struct xdp_md *ctx)
{
	return swap_macs_tx(ctx);
}

/* The flow key of a frame: its IPv4 source address and TCP source port. */
static __always_inline int frame_key(struct xdp_md *ctx, struct probe_flow_key *key)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u16 *ports = (void *)(ip + 1);

	if ((void *)(ports + 2) > data_end)
		return -1;
	key->words[0] = ip->saddr;
	key->words[4] = ip->daddr;
	key->words[8] = ports[0] | ((__u32)ports[1] << 16);
	key->words[9] = 0x0406;
	return 0;
}

SEC("xdp")
int probe_fib(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};

	fib.family = AF_INET;
	fib.l4_protocol = 6;
	fib.tot_len = 60;
	fib.ipv4_src = fib_src_be;
	fib.ipv4_dst = fib_dst_be;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_hash_lookup(struct xdp_md *ctx)
{
	struct probe_vip_key key = { .words = { 1, 2, 3, 4, 5 } };

	if (!bpf_map_lookup_elem(&probe_hash, &key))
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_lru_lookup(struct xdp_md *ctx)
{
	struct probe_flow_key key = {};

	if (frame_key(ctx, &key) || !bpf_map_lookup_elem(&probe_lru, &key))
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_lru_insert(struct xdp_md *ctx)
{
	struct probe_flow_key key = {};
	struct probe_flow_value value = {};

	if (frame_key(ctx, &key) || bpf_map_update_elem(&probe_lru, &key, &value, BPF_NOEXIST))
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_lpm_miss(struct xdp_md *ctx)
{
	struct probe_lpm_key key = { .prefixlen = 32, .addr = { 10, 1, 0, 50 } };

	if (bpf_map_lookup_elem(&probe_lpm, &key))
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_clock(struct xdp_md *ctx)
{
	if (bpf_ktime_get_coarse_ns() == 0)
		return XDP_PASS;
	return tx(ctx);
}

SEC("xdp")
int probe_percpu(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&probe_counter, &zero);

	if (!c)
		return XDP_PASS;
	*c += 1;
	return tx(ctx);
}

/* The frame after its Ethernet header: how many reads (<= PROBE_READS), then
 * one line index per read (page * PROBE_LINES + line). Each read's index
 * depends on the value the previous read returned (always 0: the array is
 * never written), so the reads are a chain of dependent loads like the
 * firewall's (fw_l2 word -> fw_l3 / fw_hits), not overlapping ones. */
struct probe_reads {
	__u32 count;
	__u32 line[PROBE_READS];
};

SEC("xdp")
int probe_page_reads(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct probe_reads *r = data + sizeof(struct ethhdr);
	struct probe_page *page;
	__u64 prev = 0;
	__u32 i, idx, key;

	if ((void *)(r + 1) > data_end)
		return XDP_PASS;
	for (i = 0; i < PROBE_READS; i++) {
		if (i >= r->count)
			break;
		idx = r->line[i] + (__u32)prev;
		key = idx / PROBE_LINES;
		page = bpf_map_lookup_elem(&probe_pages, &key);
		if (!page)
			return XDP_PASS;
		prev = page->words[(idx % PROBE_LINES) * 8];
	}
	if (prev)
		return XDP_PASS;
	return tx(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
