/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the flow hash and the Maglev slot lookup. The rings
 * themselves are built in user space (src/maglev.rs). */
#pragma once

#include "maps.h"
#include "parse.h"

#define FNV32_OFFSET 2166136261u
#define FNV32_PRIME 16777619u

#define FNV1A_BYTE(h, b) (((h) ^ (__u8)(b)) * FNV32_PRIME)

/* FNV-1a (32 bit) over saddr, daddr, sport, dport (wire order) and proto:
 * 13 bytes, unrolled by hand so that the verifier sees straight-line code.
 * The bytes are taken from three host-order words (byte 0 of the wire is
 * bits 31..24), not loaded one by one: fewer loads, and no 13 byte values
 * kept live (spilled to the stack) across the hash. Maglev indexes rings by
 * hash % prime, which uses every bit of the hash, so FNV-1a's weak low bits
 * do not matter. Mirrored by xdplb::maglev::flow_hash_v4. */
static __always_inline __u32 flow_hash_v4(const struct flow_key4 *k)
{
	__u32 s = bpf_ntohl(k->saddr_be);
	__u32 d = bpf_ntohl(k->daddr_be);
	__u32 p = (__u32)bpf_ntohs(k->sport_be) << 16 | bpf_ntohs(k->dport_be);
	__u32 h = FNV32_OFFSET;

	h = FNV1A_BYTE(h, s >> 24);
	h = FNV1A_BYTE(h, s >> 16);
	h = FNV1A_BYTE(h, s >> 8);
	h = FNV1A_BYTE(h, s);
	h = FNV1A_BYTE(h, d >> 24);
	h = FNV1A_BYTE(h, d >> 16);
	h = FNV1A_BYTE(h, d >> 8);
	h = FNV1A_BYTE(h, d);
	h = FNV1A_BYTE(h, p >> 24);
	h = FNV1A_BYTE(h, p >> 16);
	h = FNV1A_BYTE(h, p >> 8);
	h = FNV1A_BYTE(h, p);
	h = FNV1A_BYTE(h, k->proto);
	return h;
}

/* Returns the backend id for @hash on the VIP's ring, or LB_NO_BACKEND. */
static __always_inline __u32 maglev_pick(const struct vip_meta *vip, __u32 hash)
{
	__u32 vip_id = vip->vip_id;
	__u32 slot, *backend_id;
	void *ring;

	if (vip->ring_size == 0)
		return LB_NO_BACKEND;
	ring = bpf_map_lookup_elem(&maglev_rings, &vip_id);
	if (!ring)
		return LB_NO_BACKEND;
	slot = hash % vip->ring_size;
	backend_id = bpf_map_lookup_elem(ring, &slot);
	if (!backend_id)
		return LB_NO_BACKEND;
	return *backend_id;
}
