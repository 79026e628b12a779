/*
 * bench_util.c - the measuring helpers every benchmark file shares.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

volatile uint64_t bench_sink;

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_dbl);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double bench_read_gbs(const void *buf, size_t len)
{
    const uint64_t *p = buf;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    uint64_t t = hv_now_ns();
    for (size_t i = 0; i < len / 8; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    double gbs = (double)len / (double)(hv_now_ns() - t); /* bytes/ns = GB/s */
    bench_sink += a + b + c + d;
    return gbs;
}

double bench_memcpy_gbs(void *dst, const void *src, size_t len)
{
    uint64_t t = hv_now_ns();
    memcpy(dst, src, len);
    __asm__ volatile("" : : "r"(dst) : "memory"); /* the copy is observed */
    return (double)len / (double)(hv_now_ns() - t); /* bytes/ns = GB/s */
}

void bench_fail_at(const char *file, int line, const char *what, int rc)
{
    if (rc < 0)
        fprintf(stderr, "hugevm-bench: %s:%d: %s failed: %s\n", file, line, what, strerror(-rc));
    else
        fprintf(stderr, "hugevm-bench: %s:%d: %s failed\n", file, line, what);
    exit(1);
}
