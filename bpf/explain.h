/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* This file contains the switch between the two builds of the pipeline:
 *
 *   lb.bpf.c       LB_EXPLAIN undefined: xdplb, the attached program. Every
 *                  macro below expands to nothing, LB_EXPLAINING is 0: the
 *                  program is the same, instruction for instruction, as
 *                  without this file.
 *   explain.bpf.c  LB_EXPLAIN defined: lb_explain, never attached, run by lbd
 *                  through BPF_PROG_TEST_RUN on a synthesized packet against
 *                  the live maps (their fds reused). Every map write of the
 *                  pipeline sits under `if (!LB_EXPLAINING)` (or has a
 *                  read-only twin under `if (LB_EXPLAINING)`), so the
 *                  preprocessor and the compiler remove it from this build;
 *                  the stages record their decisions with EXPLAIN() into
 *                  lb_explain_out, the object's own .bss: the only memory the
 *                  program writes besides its frame and stack.
 *
 * tests/explain.rs dumps every map (keys and values, per-CPU, inner maps)
 * before and after a series of explains and checks they are identical. */
#pragma once

#include "xdplb.h"

#ifdef LB_EXPLAIN
#define LB_EXPLAINING 1
struct lb_explain lb_explain_out;
#define EXPLAIN(field, value) ((void)(lb_explain_out.field = (value)))
#define EXPLAIN_STAGE(bits) ((void)(lb_explain_out.stages |= (bits)))
#define EXPLAIN_COPY(field, src, len) __builtin_memcpy(lb_explain_out.field, (src), (len))
#else
#define LB_EXPLAINING 0
#define EXPLAIN(field, value) ((void)0)
#define EXPLAIN_STAGE(bits) ((void)0)
#define EXPLAIN_COPY(field, src, len) ((void)0)
#endif
