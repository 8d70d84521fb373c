/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains every map of the load-balancer program. Sizes here are
 * defaults: lbd resizes the big tables from its configuration before load. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb.h"

/* Run-time settings (one entry), written by lbd at every start. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} lb_config_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
} vips SEC(".maps");

/* In front of vips (bpf/vip.h), both ARRAYs so that their lookups are inlined
 * (no helper call, no hash). vip_filter[0]: the destination prefilter.
 * vip_ids[vip id]: the key of the VIP that has the id (all zero: none), so that
 * a tracked flow's packet finds its VIP from its flow entry. lbd keeps both
 * with vips (src/dataplane/maps.rs) and rebuilds them from vips at load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_vip_filter);
} vip_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32); /* vip id */
	__type(value, struct vip_key);
} vip_ids SEC(".maps");

/* vip_addrs[address]: every address some VIP has (value unused), kept by
 * lbd with vips. The prefilter may match other addresses; this says for
 * sure, for the packets that need it: ones the firewall would block, and
 * ones to a VIP address that no VIP port takes (fragments, echo requests,
 * other protocols), which a blocked source must not get to the host with. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __be32);
	__type(value, __u32);
} vip_addrs SEC(".maps");

/* The ICMP budgets (enum lb_icmp_budget_slots): one GCRA word each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_ICMP_BUDGET_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} icmp_budget SEC(".maps");

/* One Maglev ring per VIP (map-in-map). lbd swaps a new ring in with one
 * update of the outer slot (waits for an RCU grace period) for a VIP's first
 * ring and whenever a backend leaves it; a change that only gives slots to
 * backends is stored in place, slot by slot, through lbd's memory mapping of
 * the live ring (a reader reads one slot: the old or the new owner, both
 * valid). BPF_F_INNER_MAP lets rings differ in size; BPF_F_MMAPABLE lets lbd
 * write a ring through memory instead of one kernel update per slot (a
 * 65,537-slot batch update costs ~28 ms). */
struct maglev_ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_DEFAULT_MAGLEV_SIZE);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32); /* backend id, LB_NO_BACKEND if none */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32); /* vip id */
	__array(values, struct maglev_ring);
} maglev_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32); /* backend id */
	__type(value, struct backend);
} backends SEC(".maps");

/* Flow tables v2 (bpf/flow.h), every key a 16-byte struct flow_key4.
 *
 * flows_syn_v2: TCP flows of every mode whose handshake has not completed,
 * with the short tcp_handshake timeout. An LRU with per-CPU LRU lists
 * (BPF_F_NO_COMMON_LRU: no shared lock), so that a SYN flood churns only
 * this table and can never evict an established flow. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_DEFAULT_SYN_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct flow_key4);
	__type(value, struct flow4);
} flows_syn_v2 SEC(".maps");

/* nat_fwd_v2: established NAT flows, client side. Shared (replies arrive on
 * any CPU); only flows whose client proved the handshake enter it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_DEFAULT_CT_SIZE);
	__type(key, struct flow_key4);
	__type(value, struct flow4);
} nat_fwd_v2 SEC(".maps");

/* The reply side of NAT flows: backend -> SNAT address and port. An entry
 * owns its SNAT port (bpf/flow.h: a port is a flow's only while its entry
 * names that flow).
 *
 * nat_rev_v2: established flows (and UDP flows). A plain HASH, never an LRU:
 * an entry keeps its port until its flow has expired in both directions, so
 * no eviction can hand a live port to another flow. Expired entries are taken
 * over by a compare-and-swap on last_seen_ns (one CPU wins) and swept by lbd.
 *
 * nat_rev_syn_v2: embryonic TCP flows, an LRU the size of flows_syn_v2: the
 * ports a SYN flood holds are bounded by it, and a new SYN always finds one
 * (it evicts the oldest embryonic entry). A port is free only while neither
 * table holds a live entry for it; a claim and a promotion each write their
 * table, fence, then re-check the other (bpf/flow.h), so they never both
 * win. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_DEFAULT_CT_SIZE);
	__type(key, struct flow_key4);
	__type(value, struct nat4_rev);
} nat_rev_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_DEFAULT_SYN_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct flow_key4);
	__type(value, struct nat4_rev);
} nat_rev_syn_v2 SEC(".maps");

/* dsr_v2[cpu]: established DSR flows (L2 DSR, IPIP), one LRU per CPU (no
 * shared cache line, no shared LRU lock), each conntrack_size / CPUs. A flow
 * whose packets move to another CPU misses there and is chosen again by
 * Maglev: the same backend unless the backend set changed. lbd creates the
 * inner tables (one per possible CPU) before attaching. */
struct dsr_table {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_DEFAULT_CT_SIZE);
	__type(key, struct flow_key4);
	__type(value, struct flow4);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_CPUS);
	__type(key, __u32); /* CPU */
	__array(values, struct dsr_table);
} dsr_v2 SEC(".maps");

/* The DSR new-flow guard's window on each CPU (bpf/flow.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_flow_guard);
} flow_guard SEC(".maps");

/* Interfaces lbd attached to, for XDP_REDIRECT: ifindex -> ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, LB_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct lb_counters);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_counters);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_global_stats);
} global_stats SEC(".maps");

/* Packet tracing (bpf/trace.h): lbd opens a perf buffer on it only while a
 * trace runs (its entries go with the process that set them; lbd sizes it to
 * the possible CPUs before load). */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} trace_events SEC(".maps");

/* Firewall (bpf/firewall.h): the IPv4 rules as two fixed-depth tables that
 * lbd computes from the rule list, so that every packet costs the same
 * lookups whatever the number of rules. Every entry is a verdict word (enum
 * fw_verdict_bits): the deciding rule's action and id, and in a slot the
 * FW_VERDICT_DEEPER filter of the addresses that rules longer than /24 cover
 * (they need fw_l3).
 *
 * fw_l2: one chunk of 256 words per /16 (index: source >> 16, host order;
 * slot: third byte): the longest rule of length <= 24 covering the /24, rules
 * <= /16 baked into every slot. A preallocated ARRAY (64 MiB), so the lookup
 * is inlined by the verifier (no helper call, no hash) and a chunk is
 * rewritten in place: each slot is a u32 that a packet reads old or new.
 * lbd sizes it to 1 entry when the firewall is off ([firewall] capacity = 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_L2_ENTRIES);
	__type(key, __u32);
	__type(value, struct fw_chunk);
} fw_l2 SEC(".maps");

/* fw_l3: source address (network byte order, as on the wire) -> the longest
 * rule of length 25..32 covering it (a /25../31 is one entry per address);
 * addresses without one are absent and take their fw_l2 word. lbd sets
 * max_entries from [firewall] capacity. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_DEFAULT_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u32);
} fw_l3 SEC(".maps");

/* fw_rules[rule id]: the rule itself (prefix and action; action 0 = id not in
 * use). Never read by the program: lbd's record of what the tables hold, for
 * the next lbd to adopt and for the metrics to name rules. Sized like fw_hits. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct fw_rule_def);
} fw_rules SEC(".maps");

/* The IPv6 rules, for when IPv6 forwarding lands (an LPM trie for now; not
 * read yet). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, FW_DEFAULT_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct fw_rule);
} fw_v6 SEC(".maps");

/* Per-rule hit counters, indexed by rule id ([firewall] capacity). Per-CPU:
 * a blocked flood hits one rule from every CPU at once. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct fw_counters);
} fw_hits SEC(".maps");

/* Rate limiting: policy id -> policy; id 0 is the default policy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RL_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct rl_policy);
} rl_policies SEC(".maps");

/* Per-CIDR overrides: IPv4 client prefix -> policy id (longest prefix wins). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RL_MAX_POLICIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
} rl_v4 SEC(".maps");

/* One bucket per client. LRU, so that a flood of spoofed sources evicts old
 * buckets instead of exhausting memory; lbd sizes it from [ratelimit]. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RL_DEFAULT_CLIENTS);
	__type(key, struct rl_client_key);
	__type(value, struct rl_client);
} rl_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RL_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct rl_counters);
} rl_stats SEC(".maps");

/* tunnel: the next IPIP outer IPv4 ID of each CPU (bpf/encap.h,
 * ipip_outer_id()); 0 until the CPU's first DF-clear IPIP packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ipip_ids SEC(".maps");
