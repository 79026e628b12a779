/*
 * copy.h - bulk copies of guest memory that bypass the cache.
 *
 * Save, restore and migration copy GiBs that nobody reads again soon.  A
 * plain memcpy in page-sized pieces uses ordinary stores: every destination
 * line is first read for ownership and then evicts something useful, which
 * costs about 40% of the bandwidth of one large memcpy (which glibc does
 * with non-temporal stores).  copy_bulk() uses non-temporal stores for
 * every size from 4 KiB up.  `make bench` (the limits group) prints memcpy
 * in 4K pieces and copy_bulk in 4 MiB pieces next to one large memcpy
 * (0.61 and 0.79 of it on the development host).  Each call ends with a
 * fence, so callers should copy whole runs, not page after page.
 *
 * Run-time dispatch as in zero.c: AVX2 when the CPU has it, else SSE2
 * (baseline on x86-64), else memcpy; copies below COPY_BULK_MIN are plain
 * memcpy.  copy_bulk() ends with a store fence, so its stores are ordered
 * before any later store (a flag another thread polls, a write() of the
 * buffer).  Any alignment is accepted.
 */
#ifndef HUGEVM_COPY_H
#define HUGEVM_COPY_H

#include "common.h"

#define COPY_BULK_MIN 4096u

enum copy_impl {
    COPY_IMPL_AUTO = 0, /* best the CPU supports */
    COPY_IMPL_MEMCPY,
    COPY_IMPL_SSE2,
    COPY_IMPL_AVX2,
};

void copy_bulk(void *restrict dst, const void *restrict src, size_t len);

/* Force one implementation (tests, benchmarks): -ENOTSUP when the CPU lacks
 * it; COPY_IMPL_AUTO restores the automatic choice. */
int copy_set_impl(enum copy_impl impl) HV_MUST_CHECK;
enum copy_impl copy_get_impl(void);
const char *copy_impl_name(enum copy_impl impl);
bool copy_impl_supported(enum copy_impl impl);

#endif
