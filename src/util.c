/*
 * util.c - audit reporting, fault injection, size parsing, clocks.
 */
#include "common.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static char audit_msg[512];

int hv_audit_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(audit_msg, sizeof(audit_msg), fmt, ap);
    va_end(ap);
    return -EUCLEAN;
}

const char *hv_audit_last(void) { return audit_msg; }

long hv_fault_countdown;
unsigned hv_fault_sites;
unsigned long hv_fault_hits;

void fault_arm(long nth, unsigned sites)
{
    hv_fault_countdown = nth;
    hv_fault_sites = sites;
}

void fault_disarm(void)
{
    hv_fault_countdown = 0;
    hv_fault_sites = 0;
}

void *hv_malloc(size_t size)
{
    if (fault_should_fail(FAULT_SITE_MEM))
        return NULL;
    return malloc(size);
}

void *hv_calloc(size_t n, size_t size)
{
    if (fault_should_fail(FAULT_SITE_MEM))
        return NULL;
    return calloc(n, size);
}

#define BIG_ALIGN ((size_t)2 << 20)

void *hv_big_alloc(size_t len, bool huge)
{
    if (fault_should_fail(FAULT_SITE_MEM) || !len)
        return NULL;
    size_t pg = 4096, want = (len + pg - 1) & ~(pg - 1);
    if (want < len)
        return NULL;
    if (want < BIG_ALIGN || !huge) { /* no huge page wanted or to gain */
        void *p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    size_t span = want + BIG_ALIGN;
    if (span < want)
        return NULL;
    uint8_t *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    uintptr_t a = ((uintptr_t)m + BIG_ALIGN - 1) & ~(uintptr_t)(BIG_ALIGN - 1);
    uint8_t *p = (uint8_t *)a;
    if (p > m) /* the unaligned head and tail go back */
        munmap(m, (size_t)(p - m));
    if (m + span > p + want)
        munmap(p + want, (size_t)(m + span - (p + want)));
    (void)madvise(p, want, MADV_HUGEPAGE); /* best effort: 4 KiB faults without it */
    return p;
}

void hv_big_free(void *p, size_t len)
{
    if (p)
        munmap(p, (len + 4095) & ~(size_t)4095);
}

void *hv_arena_alloc(struct hv_arena *a, size_t size)
{
    size = (size + 63) & ~(size_t)63;
    if (!size || size > HV_ARENA_MAX)
        return NULL;
    if (!a->block || a->used + size > HV_ARENA_BLOCK) {
        void **b = hv_big_alloc(HV_ARENA_BLOCK, true);
        if (!b)
            return NULL;
        *b = a->block;
        a->block = b;
        a->used = 64;
        a->bytes += HV_ARENA_BLOCK;
    }
    void *p = (uint8_t *)a->block + a->used;
    a->used += size;
    return p;
}

void hv_arena_free(struct hv_arena *a)
{
    while (a->block) {
        void *next = *(void **)a->block;
        hv_big_free(a->block, HV_ARENA_BLOCK);
        a->block = next;
    }
    a->used = a->bytes = 0;
}

int hv_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -EINVAL;
    unsigned shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        default: return -EINVAL;
        }
        end++;
        if (*end == 'i' || *end == 'I')
            end++;
        if (*end == 'B' || *end == 'b')
            end++;
        if (*end)
            return -EINVAL;
    }
    if (shift && v > (~0ULL >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

const char *hv_fmt_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    unsigned u = 0;
    while (v >= 1024.0 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.*f %s", v == (double)(uint64_t)v ? 0 : 1, v, units[u]);
    return buf;
}

uint64_t hv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

unsigned hv_stress_scale(void)
{
    const char *s = getenv("HUGEVM_STRESS");
    unsigned long v = s ? strtoul(s, NULL, 10) : 1;
    return v < 1 ? 1 : v > 1000 ? 1000 : (unsigned)v;
}

bool hv_cpu_has(enum hv_simd s)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (s) {
    case HV_SIMD_SSE2: return __builtin_cpu_supports("sse2");
    case HV_SIMD_AVX2: return __builtin_cpu_supports("avx2");
    }
#endif
    (void)s;
    return false;
}
