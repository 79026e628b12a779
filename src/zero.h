/*
 * zero.h - all-zero detection for guest frames (the PoD zero sweep).
 *
 * zero_check() is the one primitive: "are these bytes all zero?".  It is
 * vectorised with run-time CPU dispatch: on first use it picks the AVX2
 * path when the CPU has AVX2 (__builtin_cpu_supports), else the SSE2 path
 * (baseline on x86-64), else a portable 64-bit-word path.  Each path ORs a
 * block of loads together and tests once per 256 bytes, so it runs at read
 * bandwidth on zero memory and stops within 256 bytes of the first non-zero
 * byte.  All paths return the same answer (tests compare them).
 *
 * zero_sample() is the cheap pre-check of a superpage zero check: it reads
 * one 64-byte line from each of a few spread 4K pages; a non-zero sample
 * proves the range is not zero without reading it all (seed 003: "quick
 * sample first, then full check").
 */
#ifndef HUGEVM_ZERO_H
#define HUGEVM_ZERO_H

#include "common.h"

enum zero_impl {
    ZERO_IMPL_AUTO = 0, /* best the CPU supports */
    ZERO_IMPL_PORTABLE,
    ZERO_IMPL_SSE2,
    ZERO_IMPL_AVX2,
};

/* True when [p, p + len) is all zero.  p must be 64-byte aligned and len a
 * multiple of 256 (every frame and superpage qualifies). */
bool zero_check(const void *p, size_t len);

/* Quick sample of a range of `pages` 4K pages: checks one 64-byte line in
 * up to `samples` pages spread over the range (first, last, and evenly in
 * between).  False means "certainly not zero"; true means "maybe zero". */
bool zero_sample(const void *p, uint64_t pages, unsigned samples);

/* Force one implementation (tests, benchmarks).  -ENOTSUP when the CPU
 * lacks it; ZERO_IMPL_AUTO restores the automatic choice. */
int zero_set_impl(enum zero_impl impl) HV_MUST_CHECK;
/* The implementation in use and its name ("avx2", "sse2", "portable"). */
enum zero_impl zero_get_impl(void);
const char *zero_impl_name(enum zero_impl impl);
/* True when this CPU can run `impl`. */
bool zero_impl_supported(enum zero_impl impl);

#endif
