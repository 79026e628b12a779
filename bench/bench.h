/*
 * bench.h - what the benchmark files share: the callback through which every
 * figure is reported, the group entry points, and the measuring helpers
 * (median, read and memcpy bandwidth, a sink, bench_fail) implemented once
 * in bench_util.c.
 */
#ifndef HUGEVM_BENCH_H
#define HUGEVM_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* Reports one figure: value in unit, next to a limit measured in the same run
 * (limit 0: none) and the ratio between them. */
typedef void (*bench_add_fn)(const char *name, double value, const char *unit,
                             double limit, const char *limit_name, double ratio);

/* bench_dirty.c: soft vCPU and log-dirty figures. */
void bench_dirty(bench_add_fn add);
/* bench_pod.c: PoD, zero check, balloon and defrag figures. */
void bench_pod(bench_add_fn add);
/* bench_stream.c: save/restore throughput and restored superpage coverage. */
void bench_stream(bench_add_fn add);
/* bench_migrate.c: live migration over loopback next to plain TCP. */
void bench_migrate(bench_add_fn add);

/* bench_guest.c: real guests on host 2M vs 4K pages (the `kvm` group). */
void bench_guest(bench_add_fn add);
/* bench_postcopy.c: post-copy next to pre-copy of a real guest (processes). */
void bench_postcopy(bench_add_fn add);

/* Results folded in here cannot be optimised away. */
extern volatile uint64_t bench_sink;

/* Sorts v[0..n) and returns its median (the mean of the middle two for even n). */
double bench_median(double *v, int n);

/* Read bandwidth over buf (len a multiple of 32 bytes), GB/s. */
double bench_read_gbs(const void *buf, size_t len);

/* Bandwidth of one memcpy of len bytes, GB/s. */
double bench_memcpy_gbs(void *dst, const void *src, size_t len);

/* A setup (or measured) step failed: say which, where, and why (rc: a
 * negative errno, or 0 when there is none) on stderr, then exit(1). */
_Noreturn void bench_fail_at(const char *file, int line, const char *what, int rc);
#define bench_fail(what) bench_fail_at(__FILE__, __LINE__, (what), 0)
#define bench_fail_rc(what, rc) bench_fail_at(__FILE__, __LINE__, (what), (rc))

#endif
