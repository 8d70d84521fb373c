// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The load balancer without the trace hook at its exit (bpf/trace.h): what `make bench`
 * (bench/src/tracecost.rs) measures the switched-off hook against, loaded on the same maps as
 * the real program. */
#define LB_TRACE_HOOK_OFF 1
#include "lb.bpf.c"
