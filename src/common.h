/*
 * common.h - vocabulary shared by every layer of hugevm.
 *
 * gfn / mfn are frame numbers in 4 KiB units; an "order" is always log2 of a
 * 4 KiB page count (PAGE_ORDER_4K/2M/1G = 0/9/18).  Functions that can fail
 * return a negative errno and are marked HV_MUST_CHECK.  Library code never
 * exits the process.
 */
#ifndef HUGEVM_COMMON_H
#define HUGEVM_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGE_SHIFT 12
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#define PAGE_ORDER_4K 0u
#define PAGE_ORDER_2M 9u
#define PAGE_ORDER_1G 18u
#define MAX_ORDER 18u
#define NR_ORDERS (MAX_ORDER + 1u)

typedef uint64_t gfn_t;
typedef uint64_t mfn_t;
typedef uint16_t domid_t;

#define INVALID_MFN (~(mfn_t)0)
#define INVALID_GFN (~(gfn_t)0)
#define DOMID_INVALID ((domid_t)0xffff)

#define HV_MUST_CHECK __attribute__((warn_unused_result))
#define HV_UNUSED __attribute__((unused))
#define HV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define HV_LIKELY(x) __builtin_expect(!!(x), 1)
#define HV_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define KiB (1ULL << 10)
#define MiB (1ULL << 20)
#define GiB (1ULL << 30)

static inline uint64_t order_pages(unsigned order) { return 1ULL << order; }
static inline bool is_aligned_order(uint64_t fn, unsigned order)
{
    return (fn & (order_pages(order) - 1)) == 0;
}
/* Index of an order among the three leaf orders: 0 -> 0, 9 -> 1, 18 -> 2. */
static inline unsigned order_level(unsigned order) { return order / 9u; }

/*
 * Audit failures: validators (p2m_audit, frames_audit, domain_audit) report
 * the first broken invariant through hv_audit_fail(), which records the
 * message (readable with hv_audit_last()) and returns -EUCLEAN.
 */
int hv_audit_fail(const char *fmt, ...) HV_PRINTF(1, 2);
const char *hv_audit_last(void);

/*
 * Fault injection for allocation sites (tests only; zero cost when unarmed).
 * fault_arm(n) makes the n-th allocation attempt from now (n >= 1) fail, at
 * any site in `sites` (a mask of FAULT_SITE_*).  fault_disarm() cancels it.
 */
enum {
    FAULT_SITE_FRAME = 1u << 0, /* frame_alloc */
    FAULT_SITE_TABLE = 1u << 1, /* p2m table allocation */
    FAULT_SITE_MEM = 1u << 2,   /* other metadata allocations (hv_malloc) */
    FAULT_SITE_ALL = 0x7u,
};
extern long hv_fault_countdown;
extern unsigned hv_fault_sites;
extern unsigned long hv_fault_hits;
void fault_arm(long nth, unsigned sites);
void fault_disarm(void);
/* True when the caller at `site` must pretend its allocation failed. */
static inline bool fault_should_fail(unsigned site)
{
    if (HV_LIKELY(hv_fault_countdown <= 0) || !(hv_fault_sites & site))
        return false;
    if (--hv_fault_countdown == 0) {
        hv_fault_hits++;
        return true;
    }
    return false;
}

/* malloc/calloc wrappers that honour FAULT_SITE_MEM. */
void *hv_malloc(size_t size);
void *hv_calloc(size_t n, size_t size);

/*
 * Bookkeeping that a migration or restore fills as it goes (digest terms,
 * frame metadata) comes from anonymous memory in 2 MiB-aligned runs with
 * MADV_HUGEPAGE: where transparent huge pages are on for madvise (Debian's
 * default), one fault maps 2 MiB instead of 512 faults of 4 KiB each.
 * Under shadow paging (PVM) a 4 KiB first touch costs about 11 us against
 * about 0.2 us per 4 KiB of a huge page, and those touches landed in the
 * middle of the stream and in the downtime.  Both honour FAULT_SITE_MEM.
 *
 * hv_big_alloc: len bytes, zeroed, page aligned; with `huge` and len >= 2
 * MiB, 2 MiB-aligned with MADV_HUGEPAGE (for memory that fills densely: a
 * sparse touch then costs a whole 2 MiB).  NULL when out of memory.  Freed
 * with hv_big_free(p, len), len as allocated.
 */
void *hv_big_alloc(size_t len, bool huge);
void hv_big_free(void *p, size_t len);

/* An arena of zeroed pieces carved from 2 MiB hv_big_alloc blocks, freed
 * all at once: for many small allocations that live as long as one
 * operation.  Zero-initialise the struct; pieces are 64-byte aligned, at
 * most HV_ARENA_MAX bytes. */
struct hv_arena {
    void *block;  /* the newest block; each starts with a pointer to the one before */
    size_t used;  /* bytes of it handed out (the link included) */
    size_t bytes; /* in blocks, all of them */
};
#define HV_ARENA_BLOCK ((size_t)2 << 20)
#define HV_ARENA_MAX (HV_ARENA_BLOCK - 64)
void *hv_arena_alloc(struct hv_arena *a, size_t size);
void hv_arena_free(struct hv_arena *a);

/* Parse "8G", "256M", "4096", "0x1000" etc. into bytes; -EINVAL on junk. */
int hv_parse_size(const char *s, uint64_t *out) HV_MUST_CHECK;
/* Format bytes as "1.5 GiB" into buf (returns buf). */
const char *hv_fmt_size(uint64_t bytes, char *buf, size_t len);

/* splitmix64-based deterministic PRNG used by tests, workloads, scenarios. */
struct hv_rng {
    uint64_t s;
};
static inline uint64_t hv_rng_next(struct hv_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
__extension__ typedef unsigned __int128 hv_u128;
/* Uniform in [0, n), n > 0. */
static inline uint64_t hv_rng_below(struct hv_rng *r, uint64_t n)
{
    return (uint64_t)(((hv_u128)hv_rng_next(r) * n) >> 64);
}

/* Test and stress scale: the HUGEVM_STRESS environment variable (default
 * 1, at most 1000).  Randomised tests multiply their operation counts by it;
 * `make stress` runs the suite with a large value. */
unsigned hv_stress_scale(void);

/* Monotonic clock in nanoseconds. */
uint64_t hv_now_ns(void);

/* Vector instruction sets that zero.c and copy.c dispatch on at run time. */
enum hv_simd { HV_SIMD_SSE2, HV_SIMD_AVX2 };
/* True when this CPU runs them (false on other architectures). */
bool hv_cpu_has(enum hv_simd s);

#endif
