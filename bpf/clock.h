/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the data plane's clock: the time in nanoseconds that
 * flows (ct_fwd/ct_rev last_seen_ns) and cached next hops (lb_nexthop.stamp_ns)
 * are stamped with and compared against.
 *
 * It is built from jiffies: bpf_jiffies64() is inlined by the verifier on
 * 64-bit JITs (one load of jiffies_64), where bpf_ktime_get_coarse_ns() is a
 * helper call. Both advance once per tick. The value is
 * (jiffies - INITIAL_JIFFIES) * TICK_NSEC: ticks since boot in nanoseconds,
 * which runs with CLOCK_MONOTONIC_COARSE (the kernel advances jiffies from the
 * monotonic clock) a constant fraction of a second apart (jiffies start a
 * little earlier at boot), so that entries stamped by an older program with
 * the coarse clock keep about their age across an upgrade. It is not that
 * clock: lbd reads this one through lb_clock (lb.bpf.c) when it compares
 * stamps (src/dataplane/telemetry.rs).
 *
 * CONFIG_HZ comes from the kernel configuration (libbpf reads
 * /proc/config.gz); the verifier knows its value, so only one branch below
 * remains. Without a readable configuration it is 0 and the clock falls back
 * to bpf_ktime_get_coarse_ns().
 *
 * Rate limiting needs nanoseconds, not ticks: it keeps bpf_ktime_get_ns()
 * (bpf/ratelimit.h). */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern unsigned int CONFIG_HZ __kconfig __weak;

#define LB_NSEC_PER_SEC 1000000000ull

/* include/linux/jiffies.h: jiffies start 300 s before wrapping 32 bits. */
static __always_inline __u64 lb_initial_jiffies(__u64 hz)
{
	return (__u32)(-300 * (__s64)hz);
}

/* Nanoseconds per tick, rounded as the kernel's TICK_NSEC. */
static __always_inline __u64 lb_tick_nsec(__u64 hz)
{
	return (LB_NSEC_PER_SEC + hz / 2) / hz;
}

#define LB_JIFFIES_NS(hz) ((bpf_jiffies64() - lb_initial_jiffies(hz)) * lb_tick_nsec(hz))

/* The data plane's clock, in nanoseconds (see above). */
static __always_inline __u64 lb_now(void)
{
	/* Constants for the usual rates, so that no division is left. */
	if (CONFIG_HZ == 250)
		return LB_JIFFIES_NS(250);
	if (CONFIG_HZ == 1000)
		return LB_JIFFIES_NS(1000);
	if (CONFIG_HZ == 100)
		return LB_JIFFIES_NS(100);
	if (CONFIG_HZ == 300)
		return LB_JIFFIES_NS(300);
	if (CONFIG_HZ)
		return LB_JIFFIES_NS((__u64)CONFIG_HZ);
	return bpf_ktime_get_coarse_ns();
}
