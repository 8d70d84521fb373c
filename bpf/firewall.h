/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the firewall stage: one longest-prefix-match lookup of
 * the IPv4 source address in fw_v4, one per-CPU hit counter bump, and the
 * verdict. A block rule drops the packet (drop_firewall); an allow rule marks
 * it PKT_F_FW_ALLOWED and hands it on; no rule hands it on unmarked.
 *
 * Which packets the stage sees is fixed at load time (firewall_scope): only
 * those addressed to a VIP (checked after the VIP lookup), or every IPv4
 * packet arriving on the interface (checked right after parsing, fragments
 * and non-TCP/UDP included). */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb.h"
#include "maps.h"
#include "parse.h"

/* Written by lbd before load ([firewall] scope); the verifier prunes the
 * call site of the other scope. */
const volatile enum fw_scope firewall_scope = FW_SCOPE_VIPS;

/**
 * firewall - the firewall stage, if the configured scope is @at
 * @pkt: the packet; pkt->ip is its IPv4 header, or NULL if parsing found none
 * @at: the scope of the call site (FW_SCOPE_ALL right after parsing,
 *      FW_SCOPE_VIPS after a VIP matched)
 *
 * Returns XDP_DROP when the longest prefix matching the source address is a
 * block rule, otherwise LB_CONTINUE (an allow rule sets PKT_F_FW_ALLOWED).
 */
static __always_inline int firewall(struct packet *pkt, enum fw_scope at)
{
	struct lpm_v4_key key = { .prefixlen = 32 };
	struct fw_counters *hits;
	struct fw_rule *rule;

	if (firewall_scope != at || !pkt->ip)
		return LB_CONTINUE;
	/* Network byte order, as on the wire: the trie compares from the first byte. */
	__builtin_memcpy(key.addr, &pkt->ip->saddr, sizeof(key.addr));
	rule = bpf_map_lookup_elem(&fw_v4, &key);
	if (!rule)
		return LB_CONTINUE;
	hits = bpf_map_lookup_elem(&fw_hits, &rule->rule_id);
	if (hits)
		hits->packets += 1;
	if (rule->action == FW_BLOCK)
		return verdict(pkt, LB_REASON_DROP_FIREWALL, XDP_DROP);
	if (rule->action == FW_ALLOW)
		pkt->flags |= PKT_F_FW_ALLOWED;
	return LB_CONTINUE;
}
