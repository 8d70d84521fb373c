/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the incremental Internet checksum updates (RFC 1624),
 * the only place where checksums are touched. Values are raw memory words:
 * the one's-complement sum does not care about byte order as long as the
 * checksum and the data are read the same way. No helper calls. */
#pragma once

#include <linux/types.h>

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* HC' = ~(~HC + ~m + m') for a 32-bit field changing from @from to @to. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from & 0xffff) + (__u16)~(from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	return ~csum_fold(sum);
}

/* The same for a 16-bit field. */
static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from + to;
	return ~csum_fold(sum);
}

/* The checksum of a 20-byte IPv4 header (check field zero) from scratch. */
static __always_inline __u16 csum_ipv4_hdr(const void *hdr)
{
	const __u16 *w = hdr;
	__u32 sum = 0;

	sum += w[0] + w[1] + w[2] + w[3] + w[4];
	sum += w[5] + w[6] + w[7] + w[8] + w[9];
	return ~csum_fold(sum);
}
