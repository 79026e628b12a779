/*
 * workloads.h - the guest workloads, as one body of code that both sides
 * compile: the guest program (guest/workloads.c, freestanding, memory
 * accessed through the identity map) and the host's replay (src/
 * guest_model.c, memory accessed through a model).  Replaying a vCPU's
 * operations on the host therefore gives exactly the words and checksum the
 * guest produced, which is how the host verifies a run.
 *
 * The includer defines, before including:
 *   HVG_LOAD(ctx, gpa)        -> uint64_t, an 8-byte read
 *   HVG_STORE(ctx, gpa, val)  an 8-byte write
 * and may define HVG_WL_STATIC (default `static inline`).
 *
 * Memory.  The workload memory is the list of extents in the parameter
 * page; page index i is the i-th page of that list.  vCPU v of n owns the
 * slice [pages * v / n, pages * (v + 1) / n) and touches nothing else, so
 * vCPUs never race and the result of a run does not depend on how the
 * host scheduled them.
 *
 * Operations (one step = one operation; `accesses` counts 8-byte accesses):
 *  - seq:     page pos of the slice, word ((pos + pass) * 64) & 0xff8;
 *             write (value_of) with probability write_ppm, else read;
 *  - uniform: a random word of the slice: read, then with probability
 *             write_ppm write it back XOR a random odd key (GUPS);
 *  - chase:   set-up writes, in every page of the slice, a pointer (gpa) to
 *             the next page of a pseudo-random cycle through all of them
 *             (a full-period LCG over the next power of two, out-of-range
 *             values skipped), at a cache-line offset drawn from the page
 *             index; each operation is one dependent load p = *p;
 *  - zipf:    a zipfian rank (Gray et al.'s generator, as YCSB's) scrambled
 *             over the slice; write with probability write_ppm, else read;
 *  - writer:  the first wss_ppm of the slice in order, one word per page,
 *             word (pass * 8) & 0xff8, pass after pass.
 * Reads add the value read to the checksum (chase: the pointer).  Values
 * written (except uniform's) are value_of(seed, gpa, sequence number).
 * Floating point (zipf only) uses the basic IEEE-754 operations and the
 * helpers below, never a libm, so both sides compute the same bits.
 */
#ifndef HUGEVM_GUEST_WORKLOADS_H
#define HUGEVM_GUEST_WORKLOADS_H

#include "hugevm_guest.h"

#ifndef HVG_WL_STATIC
#define HVG_WL_STATIC static inline
#endif

#define HVG_GOLDEN 0x9E3779B97F4A7C15ULL

struct hvg_wl {
    const struct hvg_param *p;
    struct hvg_wl_state *st;
    void *ctx;                /* for HVG_LOAD / HVG_STORE */
    uint64_t pages;           /* the workload memory */
    uint64_t lo, hi;          /* this vCPU's slice (writer: its wss part) */
    uint64_t first[HVG_MAX_EXTENTS];
    uint32_t nr_ext;
    /* zipf */
    double zetan, zeta2, alpha, eta;
    /* chase */
    uint64_t chase_mask;
};

static inline uint64_t hvg_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t hvg_rng_next(uint64_t *s)
{
    return hvg_mix64(*s += HVG_GOLDEN);
}

/* Uniform in [0, n), n > 0. */
static inline uint64_t hvg_rng_below(uint64_t *s, uint64_t n)
{
    __extension__ typedef unsigned __int128 u128;
    return (uint64_t)(((u128)hvg_rng_next(s) * n) >> 64);
}

static inline int hvg_rng_chance(uint64_t *s, uint32_t ppm)
{
    return hvg_rng_below(s, 1000000u) < ppm;
}

/* ---- math without libm (zipf) --------------------------------------------------- */

static inline double hvg_bits_double(uint64_t u)
{
    union {
        uint64_t u;
        double d;
    } b = {u};
    return b.d;
}

static inline uint64_t hvg_double_bits(double d)
{
    union {
        double d;
        uint64_t u;
    } b = {d};
    return b.u;
}

/* Natural logarithm of x > 0 (normal numbers), to about 1e-15. */
static inline double hvg_log(double x)
{
    uint64_t u = hvg_double_bits(x);
    int e = (int)((u >> 52) & 0x7ff) - 1023;
    double m = hvg_bits_double((u & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL);
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e++;
    }
    double s = (m - 1.0) / (m + 1.0), s2 = s * s, t = s, sum = 0;
    for (int k = 1; k <= 39; k += 2) {
        sum += t / (double)k;
        t *= s2;
    }
    return 2.0 * sum + (double)e * 0.69314718055994531;
}

/* e^x; 0 below -700, x at most 700. */
static inline double hvg_exp(double x)
{
    if (x < -700.0)
        return 0.0;
    double kf = x * 1.4426950408889634;
    long k = (long)(kf + (kf >= 0 ? 0.5 : -0.5));
    double r = x - (double)k * 0.69314718055994531;
    double sum = 1.0, t = 1.0;
    for (int i = 1; i <= 22; i++) {
        t *= r / (double)i;
        sum += t;
    }
    return sum * hvg_bits_double((uint64_t)(k + 1023) << 52);
}

/* x^y for x > 0. */
static inline double hvg_pow(double x, double y) { return hvg_exp(y * hvg_log(x)); }

/* ---- memory --------------------------------------------------------------------- */

/* Page index -> gpa of the page. */
static inline uint64_t hvg_wl_page(const struct hvg_wl *w, uint64_t i)
{
    uint32_t lo = 0, hi = w->nr_ext;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (w->first[mid] <= i)
            lo = mid;
        else
            hi = mid;
    }
    return w->p->ext[lo].gpa + ((i - w->first[lo]) << 12);
}

static inline uint64_t hvg_value_of(struct hvg_wl *w, uint64_t gpa)
{
    return hvg_mix64(w->p->seed ^ (gpa * HVG_GOLDEN) ^ (++w->st->seq << 1)) | 1;
}

/* Chase: the successor of slice index i (a cycle through [0, n)). */
static inline uint64_t hvg_chase_next(const struct hvg_wl *w, uint64_t i)
{
    uint64_t n = w->hi - w->lo;
    do
        i = (i * 6364136223846793005ULL + 1442695040888963407ULL) & w->chase_mask;
    while (i >= n);
    return i;
}

static inline uint64_t hvg_chase_gpa(const struct hvg_wl *w, uint64_t i)
{
    return hvg_wl_page(w, w->lo + i) + (hvg_mix64(i ^ w->p->seed) & 0xfc0);
}

/* ---- set-up ------------------------------------------------------------------ */

/*
 * Check the parameters and compute the slice.  With fresh != 0 the state
 * starts from the seed, else *st is a saved state (checked: a position
 * outside the slice is refused).  Returns 0 or a negative number naming
 * the first bad field (-1 magic/abi, -2 vCPU, -3 workload, -4 extents,
 * -5 rates, -6 state, -7 balloon).
 */
HVG_WL_STATIC int hvg_wl_init(struct hvg_wl *w, const struct hvg_param *p,
                              struct hvg_wl_state *st, void *ctx, int fresh)
{
    *w = (struct hvg_wl){.p = p, .st = st, .ctx = ctx};
    if (p->magic != HVG_MAGIC || p->abi != HVG_ABI_VERSION)
        return -1;
    if (p->nr_vcpus == 0 || p->nr_vcpus > HVG_MAX_VCPUS || p->vcpu >= p->nr_vcpus)
        return -2;
    if (p->workload >= HVG_NR_WORKLOADS)
        return -3;
    if (p->nr_extents == 0 || p->nr_extents > HVG_MAX_EXTENTS)
        return -4;
    uint64_t total = 0;
    for (uint32_t i = 0; i < p->nr_extents; i++) {
        const struct hvg_extent *e = &p->ext[i];
        if (e->pages == 0 || (e->gpa & 0xfff) || e->gpa < HVG_SYSTEM_END ||
            e->pages > (1ULL << 40) || (i && e->gpa < p->ext[i - 1].gpa + (p->ext[i - 1].pages << 12)))
            return -4;
        w->first[i] = total;
        total += e->pages;
    }
    w->nr_ext = p->nr_extents;
    /* the balloon's pages come off the top: whole 2M extents of the last
     * extent, 2M aligned */
    const struct hvg_extent *last = &p->ext[p->nr_extents - 1];
    if (p->balloon_pages && ((p->balloon_pages & 511) || p->balloon_pages >= last->pages ||
                             ((last->gpa >> 12) + last->pages) & 511))
        return -7;
    total -= p->balloon_pages;
    w->pages = total;
    if (total < p->nr_vcpus)
        return -4;
    if (p->write_ppm > 1000000u || p->wss_ppm > 1000000u)
        return -5;
    w->lo = total * p->vcpu / p->nr_vcpus;
    w->hi = total * (p->vcpu + 1) / p->nr_vcpus;
    if (p->workload == HVG_WL_WRITER) {
        uint64_t span = (w->hi - w->lo) * (p->wss_ppm ? p->wss_ppm : 1000000u) / 1000000u;
        w->hi = w->lo + (span ? span : 1);
    }
    uint64_t n = w->hi - w->lo;
    w->chase_mask = 0;
    while (w->chase_mask < n - 1)
        w->chase_mask = w->chase_mask * 2 + 1;
    if (p->workload == HVG_WL_ZIPF) {
        double th = hvg_bits_double(p->zipf_theta_bits), z = 0;
        if (!(th > 0.0 && th < 1.0))
            return -5;
        for (uint64_t i = 1; i <= n; i++)
            z += hvg_exp(-th * hvg_log((double)i));
        w->zetan = z;
        w->zeta2 = 1.0 + hvg_pow(0.5, th);
        w->alpha = 1.0 / (1.0 - th);
        w->eta = (1.0 - hvg_pow(2.0 / (double)n, 1.0 - th)) / (1.0 - w->zeta2 / z);
    }
    if (fresh) {
        *st = (struct hvg_wl_state){0};
        st->rng = hvg_mix64(p->seed * HVG_GOLDEN + p->vcpu + 1);
        st->pos = p->workload == HVG_WL_CHASE ? hvg_chase_gpa(w, 0) : w->lo;
    } else if (p->workload != HVG_WL_CHASE && p->workload != HVG_WL_CUSTOM &&
               (st->pos < w->lo || st->pos >= w->hi)) {
        return -6;
    }
    return 0;
}

/* Chase set-up: the cycle's pointers (n writes, not counted as operations;
 * the other workloads need none).  Run once, before the first step. */
HVG_WL_STATIC void hvg_wl_setup(struct hvg_wl *w)
{
    if (w->p->workload != HVG_WL_CHASE)
        return;
    uint64_t n = w->hi - w->lo;
    for (uint64_t i = 0; i < n; i++)
        HVG_STORE(w->ctx, hvg_chase_gpa(w, i), hvg_chase_gpa(w, hvg_chase_next(w, i)));
}

static inline uint64_t hvg_zipf_rank(struct hvg_wl *w)
{
    uint64_t n = w->hi - w->lo, r;
    double u = (double)(hvg_rng_next(&w->st->rng) >> 11) * 0x1.0p-53;
    double uz = u * w->zetan;
    if (uz < 1.0)
        r = 0;
    else if (uz < w->zeta2)
        r = 1;
    else
        r = (uint64_t)((double)n * hvg_pow(w->eta * u - w->eta + 1.0, w->alpha));
    return r < n ? r : n - 1;
}

/* One operation.  Returns the accesses it made (1 or 2). */
HVG_WL_STATIC unsigned hvg_wl_step(struct hvg_wl *w)
{
    struct hvg_wl_state *st = w->st;
    const struct hvg_param *p = w->p;
    uint64_t gpa, v;
    unsigned acc = 1;
    st->ops++;
    switch (p->workload) {
    case HVG_WL_SEQ: {
        uint64_t i = st->pos;
        if (++st->pos == w->hi) {
            st->pos = w->lo;
            st->pass++;
        }
        gpa = hvg_wl_page(w, i) | (((i + st->pass) * 64) & 0xff8);
        if (p->write_ppm && hvg_rng_chance(&st->rng, p->write_ppm)) {
            HVG_STORE(w->ctx, gpa, hvg_value_of(w, gpa));
            st->writes++;
        } else {
            st->checksum += HVG_LOAD(w->ctx, gpa);
        }
        break;
    }
    case HVG_WL_UNIFORM: {
        uint64_t r = hvg_rng_next(&st->rng);
        uint64_t i = w->lo + hvg_rng_below(&st->rng, w->hi - w->lo);
        gpa = hvg_wl_page(w, i) | (r & 0xff8);
        v = HVG_LOAD(w->ctx, gpa);
        st->checksum += v;
        if (hvg_rng_chance(&st->rng, p->write_ppm)) {
            HVG_STORE(w->ctx, gpa, v ^ (r | 1));
            st->writes++;
            acc = 2;
        }
        break;
    }
    case HVG_WL_CHASE:
        v = HVG_LOAD(w->ctx, st->pos);
        st->checksum += v;
        st->pos = v;
        break;
    case HVG_WL_ZIPF: {
        uint64_t rank = hvg_zipf_rank(w);
        uint64_t i = w->lo + hvg_mix64(rank + 0x5bd1e995) % (w->hi - w->lo);
        uint64_t r = hvg_rng_next(&st->rng);
        gpa = hvg_wl_page(w, i) | (r & 0xff8);
        if (hvg_rng_chance(&st->rng, p->write_ppm)) {
            HVG_STORE(w->ctx, gpa, hvg_value_of(w, gpa));
            st->writes++;
        } else {
            st->checksum += HVG_LOAD(w->ctx, gpa);
        }
        break;
    }
    case HVG_WL_WRITER: {
        uint64_t i = st->pos;
        if (++st->pos == w->hi) {
            st->pos = w->lo;
            st->pass++;
        }
        gpa = hvg_wl_page(w, i) | ((st->pass * 8) & 0xff8);
        HVG_STORE(w->ctx, gpa, hvg_value_of(w, gpa));
        st->writes++;
        break;
    }
    default:
        acc = 0;
        break;
    }
    st->accesses += acc;
    return acc;
}

#endif
