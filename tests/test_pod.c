/*
 * test_pod.c - populate-on-demand against a model: accounting invariants
 * after random operation sequences (audits after every step), 2M leaves
 * from 2M cache chunks under random touch order, 1G splintering, the
 * load/delete/reload pattern, decrease over PoD (seed 003), the
 * out-of-PoD-memory crash path, the sweep bound, the zero-check paths, and
 * allocation failure at every site (fault_arm) for target changes, demand
 * populate and reclaim.
 *
 * Guest accesses are made by touch(), which does what the soft vCPU does on
 * an EPT violation of a PoD entry: call pod_demand_populate and retry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testutil.h"

#include "domain.h"
#include "pod.h"
#include "vcpu.h"
#include "zero.h"




/* Guest access to one byte of gfn, as the vCPU makes it.  Returns 0 or the
 * handler's error (-ESRCH: crashed). */
static int touch(struct domain *d, gfn_t gfn, unsigned off, bool write, uint8_t val,
                 uint8_t *out)
{
    for (int spins = 0; spins < 100000; spins++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, gfn, &t, NULL);
        if (p2m_is_ram(t)) {
            uint8_t *p = (uint8_t *)machine_ptr(d->m, mfn) + off;
            if (write) {
                unsigned level;
                ept_entry_t *e = p2m_lookup_leaf(d->p2m, gfn, &level, NULL);
                *e |= EPT_A | EPT_D;
                *p = val;
            } else if (out) {
                *out = *p;
            }
            return 0;
        }
        if (t != p2m_pod)
            return -EFAULT;
        int rc = pod_demand_populate(d, gfn);
        if (rc == -EAGAIN)
            continue; /* the sweep resumes */
        if (rc < 0)
            return rc;
    }
    return -ELOOP;
}

/* Break every 2M chunk of the cache into 4K pages (what taking 4K pages
 * does one chunk at a time), to build caches of 4K pages only. */
static void break_all_chunks(struct domain *d)
{
    struct pod *p = &d->pod;
    size_t need = p->nr_pages + 512 * p->nr_chunks;
    if (need > p->cap_pages) {
        p->pages = realloc(p->pages, need * sizeof(*p->pages));
        assert_non_null(p->pages);
        p->cap_pages = need;
    }
    while (p->nr_chunks) {
        mfn_t base = p->chunks[--p->nr_chunks];
        for (unsigned i = 512; i-- > 0;)
            p->pages[p->nr_pages++] = base + i;
    }
}

/* ---- zero checks ------------------------------------------------------- */

static void test_zero_impls(void **state)
{
    (void)state;
    size_t len = 2 * MiB;
    uint8_t *buf = aligned_alloc(4096, len);
    assert_non_null(buf);
    memset(buf, 0, len);
    struct hv_rng r = {5};
    static const enum zero_impl impls[] = {ZERO_IMPL_PORTABLE, ZERO_IMPL_SSE2, ZERO_IMPL_AVX2};
    for (size_t i = 0; i < ARRAY_SIZE(impls); i++) {
        if (!zero_impl_supported(impls[i])) {
            print_message("# %s not supported here\n", zero_impl_name(impls[i]));
            continue;
        }
        assert_int_equal(zero_set_impl(impls[i]), 0);
        assert_int_equal(zero_get_impl(), impls[i]);
        assert_true(zero_check(buf, len));
        assert_true(zero_check(buf, 256));
        for (int k = 0; k < 2000; k++) {
            size_t pos = hv_rng_below(&r, len);
            uint8_t v = (uint8_t)(1u << hv_rng_below(&r, 8));
            buf[pos] = v;
            assert_false(zero_check(buf, len));
            /* a range that ends just before the byte is still zero */
            size_t below = pos & ~(size_t)255;
            if (below)
                assert_true(zero_check(buf, below));
            assert_false(zero_check(buf + below, 256));
            buf[pos] = 0;
        }
    }
    assert_int_equal(zero_set_impl(ZERO_IMPL_AUTO), 0);
    print_message("# zero check in use: %s\n", zero_impl_name(zero_get_impl()));
    /* the sample sees data at a sampled line, never reports data in zeros */
    assert_true(zero_sample(buf, 512, POD_SAMPLES));
    buf[0] = 1;
    assert_false(zero_sample(buf, 512, POD_SAMPLES));
    buf[0] = 0;
    buf[len - 4096 + 1] = 1; /* last page, sample i = samples-1 reads line 15 */
    buf[len - 4096 + (POD_SAMPLES - 1) * 64] = 1;
    assert_false(zero_sample(buf, 512, POD_SAMPLES));
    free(buf);
}

/* ---- populate with the PoD flag ------------------------------------------ */

static void test_populate_pod_entries(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    struct populate_result res;
    /* 1 GiB at 4G (1G entry) + 64 MiB low (4K around the VGA hole, 2M) */
    assert_int_equal(domain_populate_flags(d, GFN_4G, 1ULL << 18, DOMAIN_POPULATE_POD, &res), 0);
    assert_int_equal(res.nr_1g, 1);
    assert_int_equal(domain_populate_flags(d, 0, 16384, DOMAIN_POPULATE_POD, &res), 0);
    assert_int_equal(res.nr_4k, 512 - VGA_HOLE_NR);
    assert_int_equal(res.nr_2m, 31);
    assert_int_equal(d->pod.entry_count, (1ULL << 18) + 16384 - VGA_HOLE_NR);
    assert_int_equal(d->tot_pages, 0);
    assert_int_equal(d->stats.pod_entries_1g, 1);
    audit_all(d);
    /* populating again skips the PoD entries */
    assert_int_equal(domain_populate_flags(d, 0, 16384, DOMAIN_POPULATE_POD, &res), 0);
    assert_int_equal(res.pages, 0);
    /* all or nothing under allocation failure at every site */
    uint64_t ec = d->pod.entry_count;
    for (long nth = 1; nth < 200; nth++) {
        p2m_trim(d->p2m);
        fault_arm(nth, FAULT_SITE_ALL);
        int rc = domain_populate_flags(d, 20000, 3000, DOMAIN_POPULATE_POD, &res);
        fault_disarm();
        audit_all(d);
        if (rc == 0) {
            assert_int_equal(d->pod.entry_count, ec + 3000);
            assert_int_equal(domain_decrease_reservation(d, 20000, 3000), 3000);
            audit_all(d);
            break;
        }
        assert_int_equal(rc, -ENOMEM);
        assert_int_equal(d->pod.entry_count, ec);
    }
    assert_int_equal(d->pod.entry_count, ec);
    down_guest(d, m);
}

/* ---- random touch order: 2M chunks give 2M leaves ------------------------ */

static void test_random_touch_2m(void **state)
{
    (void)state;
    struct machine *m = new_machine(512 * MiB);
    /* Fragment the host: only some 2M extents remain for the cache. */
    struct domain *d = new_domain(m);
    uint64_t guest = 128 * MiB >> PAGE_SHIFT;
    gfn_t base = GFN_4G + 512; /* 2M-aligned, not 1G-aligned: 2M entries */
    assert_int_equal(domain_populate_flags(d, base, guest, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(d->pod.entry_count, guest);
    assert_int_equal(pod_set_target(d, guest), 0);
    audit_all(d);
    uint64_t chunks = pod_cache_2m(&d->pod);
    assert_int_equal(chunks, guest / 512);
    /* A mixed cache: a quarter of the target as 4K pages. */
    assert_int_equal(pod_set_cache_target(d, d->pod.count - guest / 4), 0);
    break_all_chunks(d);
    assert_int_equal(pod_set_cache_target(d, guest), 0);
    audit_all(d);
    uint64_t c2 = pod_cache_2m(&d->pod);
    print_message("# cache: %llu 2M chunks + %llu 4K pages\n", (unsigned long long)c2,
                  (unsigned long long)pod_cache_4k(&d->pod));
    /* Touch every page once, in random order. */
    gfn_t *order = malloc(guest * sizeof(*order));
    for (uint64_t i = 0; i < guest; i++)
        order[i] = base + i;
    struct hv_rng r = {11};
    shuffle_gfns(order, guest, &r);
    for (uint64_t i = 0; i < guest; i++) {
        assert_int_equal(touch(d, order[i], 8, true, 0x5a, NULL), 0);
        if (i % 8192 == 0)
            audit_all(d);
    }
    audit_all(d);
    assert_false(d->crashed);
    assert_int_equal(d->pod.entry_count, 0);
    /* Every 2M chunk of the cache became a 2M leaf, no more sweeps needed. */
    assert_int_equal(d->pod.stats.demand_2m, c2);
    assert_true(domain_pages_2m(d) >= c2);
    assert_int_equal(d->pod.stats.sweeps, 0);
    print_message("# after random touch: pages_2m %llu pages_4k %llu (splinters %llu)\n",
                  (unsigned long long)domain_pages_2m(d),
                  (unsigned long long)domain_pages_4k(d),
                  (unsigned long long)d->pod.stats.splinter_2m);
    /* the data is where the guest wrote it */
    for (uint64_t i = 0; i < guest; i += 97) {
        uint8_t v;
        assert_int_equal(touch(d, base + i, 8, false, 0, &v), 0);
        assert_int_equal(v, 0x5a);
    }
    free(order);
    down_guest(d, m);
}

/* A 1G PoD entry becomes 2M PoD entries on first touch. */
static void test_1g_splinter(void **state)
{
    (void)state;
    struct machine *m = new_machine(64 * MiB);
    struct domain *d = new_domain(m);
    assert_int_equal(domain_populate_flags(d, GFN_4G, 1ULL << 18, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, 8 * 512), 0);
    assert_int_equal(pod_cache_2m(&d->pod), 8);
    audit_all(d);
    assert_int_equal(touch(d, GFN_4G + 5 * 512 + 3, 0, true, 1, NULL), 0);
    audit_all(d);
    assert_int_equal(d->pod.stats.splinter_1g, 1);
    assert_int_equal(d->pod.stats.demand_2m, 1);
    unsigned o;
    enum p2m_type t;
    p2m_get_entry(d->p2m, GFN_4G + 5 * 512, &t, &o);
    assert_int_equal(t, p2m_ram_rw);
    assert_int_equal(o, PAGE_ORDER_2M);
    p2m_get_entry(d->p2m, GFN_4G + 100 * 512, &t, &o);
    assert_int_equal(t, p2m_pod);
    assert_int_equal(o, PAGE_ORDER_2M);
    domain_destroy(d);
    machine_destroy(m);
}

/* ---- model-based random sequences ------------------------------------------ */

#define LO_NR 16384u          /* 64 MiB low */
#define HI_NR (1u << 18)      /* 1 GiB PoD at 4G */
#define NR (LO_NR + HI_NR)

struct model {
    uint8_t present[NR]; /* RAM or PoD */
    uint8_t val[NR];     /* byte at off_of(gfn); rest of the page zero */
};

static gfn_t gfn_of(uint32_t i) { return i < LO_NR ? i : GFN_4G + (i - LO_NR); }
static unsigned off_of(gfn_t g) { return (unsigned)((g * 67) % PAGE_SIZE); }

static void model_fill(struct domain *d, struct model *md, uint32_t i0, uint32_t n)
{
    for (uint32_t i = i0; i < i0 + n; i++)
        if (!domain_gfn_in_hole(d, gfn_of(i)))
            md->present[i] = 1;
}

static void model_check_one(struct domain *d, const struct model *md, uint32_t i, bool full)
{
    gfn_t g = gfn_of(i);
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
    if (!md->present[i]) {
        if (t != p2m_invalid)
            fail_msg("gfn %#llx: model empty, p2m type %s", (unsigned long long)g,
                     p2m_type_name(t));
        return;
    }
    if (t == p2m_pod) {
        if (md->val[i])
            fail_msg("gfn %#llx holds %u but became PoD", (unsigned long long)g, md->val[i]);
        return;
    }
    if (t != p2m_ram_rw)
        fail_msg("gfn %#llx: model present, p2m type %s", (unsigned long long)g,
                 p2m_type_name(t));
    const uint8_t *p = machine_ptr(d->m, mfn);
    if (p[off_of(g)] != md->val[i])
        fail_msg("gfn %#llx: byte %u, model %u", (unsigned long long)g, p[off_of(g)],
                 md->val[i]);
    if (full) {
        for (unsigned k = 0; k < PAGE_SIZE; k++)
            if (k != off_of(g) && p[k])
                fail_msg("gfn %#llx: stray byte at %u", (unsigned long long)g, k);
    }
}

static void random_range(struct hv_rng *r, uint32_t *i0, uint32_t *n)
{
    bool hi = hv_rng_below(r, 3) == 0;
    uint32_t base = hi ? LO_NR : 0, lim = hi ? HI_NR : LO_NR;
    uint32_t len = (uint32_t)(hv_rng_below(r, 4) == 0 ? 512 : 1 + hv_rng_below(r, 2048));
    uint32_t start = (uint32_t)hv_rng_below(r, lim);
    if (hv_rng_below(r, 2))
        start &= ~511u;
    if (start + len > lim)
        len = lim - start;
    *i0 = base + start;
    *n = len;
}

static void run_sequence(uint64_t seed, unsigned ops)
{
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    struct model *md = calloc(1, sizeof(*md));
    struct hv_rng r = {seed};
    uint32_t *written = malloc(ops * sizeof(*written));
    unsigned nwritten = 0;
    unsigned counts[10] = {0};
    /* start: the low 64 MiB and 1 GiB at 4G as PoD, 24 MiB of target */
    assert_int_equal(domain_populate_flags(d, 0, LO_NR, DOMAIN_POPULATE_POD, NULL), 0);
    model_fill(d, md, 0, LO_NR);
    assert_int_equal(domain_populate_flags(d, GFN_4G, HI_NR, DOMAIN_POPULATE_POD, NULL), 0);
    model_fill(d, md, LO_NR, HI_NR);
    assert_int_equal(pod_set_target(d, 24 * MiB >> PAGE_SHIFT), 0);
    audit_all(d);
    d->pod.sweep_max = 4096;

    for (unsigned step = 0; step < ops && !d->crashed; step++) {
        unsigned op = (unsigned)hv_rng_below(&r, 100);
        uint32_t i0, n;
        if (op < 45) { /* guest write (0 a third of the time) */
            uint32_t i = 0;
            for (int tries = 0; tries < 20; tries++) {
                random_range(&r, &i0, &n);
                i = i0 + (uint32_t)hv_rng_below(&r, n);
                if (md->present[i])
                    break;
            }
            if (!md->present[i])
                continue;
            uint8_t v = hv_rng_below(&r, 3) == 0 ? 0 : (uint8_t)(1 + hv_rng_below(&r, 255));
            int rc = touch(d, gfn_of(i), off_of(gfn_of(i)), true, v, NULL);
            if (rc == -ESRCH)
                break;
            assert_int_equal(rc, 0);
            md->val[i] = v;
            written[nwritten++] = i;
            counts[0]++;
        } else if (op < 52) { /* guest read */
            random_range(&r, &i0, &n);
            if (!md->present[i0])
                continue;
            uint8_t v;
            int rc = touch(d, gfn_of(i0), off_of(gfn_of(i0)), false, 0, &v);
            if (rc == -ESRCH)
                break;
            assert_int_equal(rc, 0);
            assert_int_equal(v, md->val[i0]);
            counts[1]++;
        } else if (op < 58) { /* populate PoD */
            random_range(&r, &i0, &n);
            int rc = domain_populate_flags(d, gfn_of(i0), n, DOMAIN_POPULATE_POD, NULL);
            assert_int_equal(rc, 0);
            model_fill(d, md, i0, n);
            counts[2]++;
        } else if (op < 68) { /* decrease reservation (balloon inflate) */
            random_range(&r, &i0, &n);
            long rel = domain_decrease_reservation(d, gfn_of(i0), n);
            assert_true(rel >= 0);
            long expect = 0;
            for (uint32_t i = i0; i < i0 + n; i++) {
                expect += md->present[i];
                md->present[i] = 0;
                md->val[i] = 0;
            }
            assert_int_equal(rel, expect);
            counts[3]++;
        } else if (op < 73) { /* increase reservation (balloon deflate), low only */
            gfn_t g = hv_rng_below(&r, LO_NR) & ~511ULL;
            int rc = domain_increase_reservation(d, g, 1, PAGE_ORDER_2M);
            assert_true(rc == 0 || rc == -ENOMEM || rc == -EDQUOT);
            if (rc == 0)
                model_fill(d, md, (uint32_t)g, 512);
            counts[4]++;
        } else if (op < 80) { /* consolidation sweep */
            random_range(&r, &i0, &n);
            assert_true(pod_zero_sweep(d, gfn_of(i0), n) >= 0);
            counts[5]++;
        } else if (op < 84) { /* emergency sweep */
            long rc = pod_emergency_sweep(d);
            assert_true(rc > 0 || rc == -EAGAIN || rc == -ENOSPC);
            counts[6]++;
        } else { /* target change */
            uint64_t populated = d->tot_pages - d->pod.count;
            uint64_t t = populated / 2 + hv_rng_below(&r, 8192);
            int rc = pod_set_target(d, t);
            assert_true(rc == 0 || rc == -ENOMEM);
            counts[7]++;
        }
        audit_all(d);
        /* spot checks: recent writes and random gfns */
        for (unsigned k = 0; k < 16 && nwritten; k++)
            model_check_one(d, md, written[hv_rng_below(&r, nwritten)], k == 0);
        for (unsigned k = 0; k < 16; k++)
            model_check_one(d, md, (uint32_t)hv_rng_below(&r, NR), false);
        if (step % 256 == 0)
            for (uint32_t i = 0; i < LO_NR; i++)
                model_check_one(d, md, i, false);
    }
    if (d->crashed) {
        /* A crash is only allowed when nothing was reclaimable: no ram_rw
         * page of the guest is zero. */
        counts[8]++;
        assert_non_null(domain_last_event(d));
        assert_non_null(strstr(domain_last_event(d), "out of PoD memory"));
        for (uint32_t i = 0; i < NR; i++) {
            enum p2m_type t;
            mfn_t mfn = p2m_get_entry(d->p2m, gfn_of(i), &t, NULL);
            if (t == p2m_ram_rw && zero_check(machine_ptr(d->m, mfn), PAGE_SIZE))
                fail_msg("crashed with zero page at gfn %#llx", (unsigned long long)gfn_of(i));
        }
    }
    for (uint32_t i = 0; i < NR; i++)
        model_check_one(d, md, i, false);
    audit_all(d);
    print_message("# seed %llu: writes %u reads %u populate %u decrease %u increase %u "
                  "zero-sweep %u emergency %u target %u crashed %u; demand 2M %llu 4K %llu, "
                  "reclaimed 2M %llu 4K %llu, sweeps %llu\n",
                  (unsigned long long)seed, counts[0], counts[1], counts[2], counts[3],
                  counts[4], counts[5], counts[6], counts[7], counts[8],
                  (unsigned long long)d->pod.stats.demand_2m,
                  (unsigned long long)d->pod.stats.demand_4k,
                  (unsigned long long)d->pod.stats.reclaimed_2m,
                  (unsigned long long)d->pod.stats.reclaimed_4k,
                  (unsigned long long)d->pod.stats.sweeps);
    free(written);
    free(md);
    down_guest(d, m);
}

static void test_random_sequences(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++)
        run_sequence(seed, 1200);
}

/* ---- decrease reservation and PoD -------------------------------------------- */

static void test_decrease_pod(void **state)
{
    (void)state;
    struct machine *m = new_machine(128 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = 2048; /* 8 MiB, 2M-aligned */
    /* RAM 2M leaf (zero) next to PoD entries; the cache is short. */
    assert_int_equal(domain_populate(d, base, 512, NULL), 0);
    assert_int_equal(domain_populate_flags(d, base + 512, 4096, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, 512 + 1024), 0);
    audit_all(d);
    assert_true(d->pod.entry_count > d->pod.count);
    struct p2m_stats before;
    p2m_get_stats(d->p2m, &before);
    /* Balloon out 16 pages in the middle of the zero RAM superpage: the
     * whole 2M is reclaimed into the cache first (seed 003). */
    long rel = domain_decrease_reservation(d, base + 100, 16);
    assert_int_equal(rel, 16);
    audit_all(d);
    assert_int_equal(d->pod.stats.decrease_zero_2m, 1);
    assert_int_equal(domain_pages_2m(d), 0); /* no RAM 4K pieces either: */
    assert_int_equal(domain_pages_4k(d), 0);
    /* the same on a non-zero superpage: split, frames released */
    assert_int_equal(domain_populate(d, base + 8192, 512, NULL), 0);
    *(uint8_t *)machine_ptr(d->m, p2m_get_entry(d->p2m, base + 8192 + 7, NULL, NULL)) = 1;
    rel = domain_decrease_reservation(d, base + 8192 + 200, 8);
    assert_int_equal(rel, 8);
    audit_all(d);
    assert_int_equal(d->pod.stats.decrease_zero_2m, 1);
    assert_int_equal(domain_pages_4k(d), 512 - 8);
    /* PoD entries are just removed; the cache never exceeds them */
    uint64_t ec = d->pod.entry_count;
    rel = domain_decrease_reservation(d, base + 512, 4096);
    assert_int_equal(rel, 4096);
    assert_int_equal(d->pod.entry_count, ec - 4096);
    assert_true(d->pod.count <= d->pod.entry_count);
    audit_all(d);
    down_guest(d, m);
}

/* ---- load / delete / reload ----------------------------------------------------- */

static void test_load_delete_reload(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    uint64_t nr = 64 * MiB >> PAGE_SHIFT;
    gfn_t base = GFN_4G + 512;
    /* PoD guest whose cache holds only 4K pages: every touch is a 4K piece */
    assert_int_equal(domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, nr), 0);
    break_all_chunks(d);
    assert_int_equal(pod_cache_2m(&d->pod), 0);
    audit_all(d);
    /* load: fill 4K at a time, 2M block after 2M block, in random order
     * inside each block: each block ends up as 512 4K leaves (a permuted
     * machine run that cannot merge) */
    struct hv_rng r = {77};
    gfn_t perm[512];
    for (uint64_t b = 0; b < nr / 512; b++) {
        for (unsigned i = 0; i < 512; i++)
            perm[i] = base + b * 512 + i;
        shuffle_gfns(perm, 512, &r);
        for (unsigned i = 0; i < 512; i++)
            assert_int_equal(touch(d, perm[i], 16, true, 0xee, NULL), 0);
    }
    audit_all(d);
    print_message("# loaded: pages_2m %llu pages_4k %llu\n",
                  (unsigned long long)domain_pages_2m(d), (unsigned long long)domain_pages_4k(d));
    assert_int_equal(domain_pages_4k(d) + 512 * domain_pages_2m(d), nr);
    /* delete: zero 80% of the pages at random: whole 2M blocks for some,
     * scattered pages (60%) for the others */
    uint8_t *zeroed = calloc(nr, 1);
    uint8_t *whole = calloc(nr / 512, 1);
    uint64_t nzero = 0, whole_blocks = 0;
    for (uint64_t b = 0; b < nr / 512; b++) {
        whole[b] = hv_rng_below(&r, 2) == 0;
        whole_blocks += whole[b];
        for (uint64_t k = 0; k < 512; k++) {
            if (!whole[b] && hv_rng_below(&r, 100) >= 60)
                continue;
            gfn_t g = base + b * 512 + k;
            assert_int_equal(touch(d, g, 16, true, 0, NULL), 0);
            zeroed[b * 512 + k] = 1;
            nzero++;
        }
    }
    audit_all(d);
    print_message("# deleted %.1f%% (%llu pages, %llu whole 2M blocks)\n",
                  100.0 * (double)nzero / (double)nr, (unsigned long long)nzero,
                  (unsigned long long)whole_blocks);
    /* the consolidation sweep reclaims every zero page and nothing else */
    long got = pod_zero_sweep(d, base, nr);
    audit_all(d);
    assert_int_equal((uint64_t)got, nzero);
    for (uint64_t i = 0; i < nr; i++) {
        enum p2m_type t;
        unsigned o;
        p2m_get_entry(d->p2m, base + i, &t, &o);
        assert_int_equal(t, zeroed[i] ? p2m_pod : p2m_ram_rw);
        if (whole[i / 512])
            assert_int_equal(o, PAGE_ORDER_2M); /* one 2M PoD entry again */
    }
    /* the frames of each wholly zero block were one machine 2M block: they
     * are regrouped into a 2M chunk (superpage recovered) */
    print_message("# reclaimed %ld pages: cache %llu 2M chunks (%llu regrouped) + %llu 4K\n",
                  got, (unsigned long long)pod_cache_2m(&d->pod),
                  (unsigned long long)d->pod.stats.cache_regrouped_2m,
                  (unsigned long long)pod_cache_4k(&d->pod));
    assert_int_equal(pod_cache_2m(&d->pod), whole_blocks);
    /* reload, large allocations first: each zeroed block is a 2M leaf again */
    uint64_t sp_before = domain_pages_2m(d);
    for (uint64_t b = 0; b < nr / 512; b++)
        if (whole[b])
            assert_int_equal(touch(d, base + b * 512 + 3, 16, true, 0x11, NULL), 0);
    audit_all(d);
    assert_int_equal(domain_pages_2m(d), sp_before + whole_blocks);
    /* then the scattered ones, 4K each */
    for (uint64_t i = 0; i < nr; i++)
        if (zeroed[i] && !whole[i / 512])
            assert_int_equal(touch(d, base + i, 16, true, 0x22, NULL), 0);
    audit_all(d);
    assert_false(d->crashed);
    assert_int_equal(d->pod.entry_count, 0);
    free(zeroed);
    free(whole);
    down_guest(d, m);
}

/* ---- out of PoD memory ------------------------------------------------------------ */

static void test_out_of_pod_memory(void **state)
{
    (void)state;
    struct machine *m = new_machine(128 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = 32 * MiB >> PAGE_SHIFT;
    assert_int_equal(domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, 4 * MiB >> PAGE_SHIFT), 0); /* 1024 pages */
    audit_all(d);
    /* Zero-read touches cost nothing: the sweep hands zero pages back. */
    for (uint64_t i = 0; i < 4096; i++) {
        uint8_t v;
        assert_int_equal(touch(d, base + i * 7 % nr, 0, false, 0, &v), 0);
        assert_int_equal(v, 0);
    }
    audit_all(d);
    assert_false(d->crashed);
    assert_true(d->pod.stats.reclaimed_2m + d->pod.stats.reclaimed_4k +
                d->pod.stats.eager_checks > 0);
    /* Now the guest writes non-zero data everywhere it touches: after
     * 1024 pages nothing is reclaimable and the domain is crashed. */
    uint64_t i = 0;
    int rc = 0;
    for (; i < nr && rc == 0; i++)
        rc = touch(d, base + i, 100, true, 0x77, NULL);
    assert_int_equal(rc, -ESRCH);
    assert_true(d->crashed);
    assert_int_equal(d->pod.stats.out_of_memory, 1);
    assert_int_equal(d->pod.count, 0);
    print_message("# crashed after %llu writes: %s\n", (unsigned long long)i,
                  domain_last_event(d));
    assert_non_null(strstr(domain_last_event(d), "out of PoD memory"));
    assert_true(i <= 1024 + 1);
    audit_all(d); /* the accounting still holds */
    /* every populated page holds what was written: no corruption */
    for (uint64_t k = 0; k + 1 < i; k++) {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, base + k, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        assert_int_equal(((uint8_t *)machine_ptr(d->m, mfn))[100], 0x77);
    }
    /* a crashed domain's faults fail fast */
    assert_int_equal(pod_demand_populate(d, base + nr - 1), -ESRCH);
    down_guest(d, m);
}

/* ---- the sweep bound ---------------------------------------------------------------- */

static void test_sweep_bound(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    struct domain_config c;
    (void)c;
    gfn_t base = GFN_4G;
    uint64_t nr = 64 * MiB >> PAGE_SHIFT; /* 16384 gfns */
    /* RAM in 4K leaves (interleaved PoD keeps them from merging): */
    assert_int_equal(domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, nr / 2 + 64), 0);
    for (uint64_t i = 0; i < nr; i += 2)
        assert_int_equal(touch(d, base + i, 0, true, 1, NULL), 0);
    audit_all(d);
    /* every RAM page is non-zero except one near the bottom */
    gfn_t zero_gfn = base + 40;
    {
        enum p2m_type t;
        mfn_t mfn = p2m_get_entry(d->p2m, zero_gfn, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        *(uint8_t *)machine_ptr(d->m, mfn) = 0;
    }
    /* drain the cache */
    uint64_t left = d->pod.count;
    for (uint64_t i = 1, k = 0; k < left; i += 2, k++)
        assert_int_equal(touch(d, base + i, 0, true, 1, NULL), 0);
    assert_int_equal(d->pod.count, 0);
    memset(d->pod.mrp, 0, sizeof(d->pod.mrp)); /* no eager luck */
    d->pod.sweep_max = 2048;
    uint64_t work0 = d->pod.stats.sweep_work;
    unsigned calls = 0;
    long rc;
    do {
        uint64_t w = d->pod.stats.sweep_work;
        rc = pod_emergency_sweep(d);
        calls++;
        assert_true(d->pod.stats.sweep_work - w <= 2048 + 512); /* bounded */
        audit_all(d);
    } while (rc == -EAGAIN && calls < 1000);
    assert_int_equal(rc, 1);
    print_message("# found the one zero page after %u bounded sweeps, %llu work units\n",
                  calls, (unsigned long long)(d->pod.stats.sweep_work - work0));
    assert_true(calls >= 2); /* it really was resumed */
    enum p2m_type t;
    p2m_get_entry(d->p2m, zero_gfn, &t, NULL);
    assert_int_equal(t, p2m_pod);
    /* a full fruitless pass reports -ENOSPC, and the next fault crashes */
    calls = 0;
    do {
        rc = pod_emergency_sweep(d);
        calls++;
    } while (rc == -EAGAIN && calls < 1000);
    assert_int_equal(rc, -ENOSPC);
    audit_all(d);
    /* A sweep that finds plenty stops after POD_SWEEP_LIMIT gfns */
    for (uint64_t i = 0; i < nr; i++) {
        mfn_t mfn = p2m_get_entry(d->p2m, base + i, &t, NULL);
        if (t == p2m_ram_rw)
            *(uint8_t *)machine_ptr(d->m, mfn) = 0;
    }
    d->pod.sweep_max = 0;
    rc = pod_emergency_sweep(d);
    assert_true(rc >= (long)POD_SWEEP_LIMIT / 2 && rc <= (long)POD_SWEEP_LIMIT + 512);
    print_message("# a sweep over zero memory reclaimed %ld pages and stopped\n", rc);
    audit_all(d);
    down_guest(d, m);
}

/* Through the soft vCPU: EPT violations of PoD entries are dispatched to
 * pod_demand_populate; reclaim bumps p2m_gen so stale TLB entries go; the
 * crash surfaces as -ESRCH from the access. */
static void test_vcpu_dispatch(void **state)
{
    (void)state;
    struct machine *m = new_machine(64 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = 8 * MiB >> PAGE_SHIFT;
    assert_int_equal(domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(pod_set_target(d, 2 * MiB >> PAGE_SHIFT), 0);
    struct vcpu *v;
    assert_int_equal(vcpu_create(d, 0, NULL, &v), 0);
    vcpu_lock(v);
    uint64_t val;
    /* reads of never-written memory everywhere, 4x the target: served from
     * the zero page, the cache untouched, nothing reclaimed (before, every
     * read populated and the sweeps recycled zero pages over and over) */
    uint64_t count0 = d->pod.count, entries0 = d->pod.entry_count;
    for (uint64_t i = 0; i < nr; i += 1) {
        val = 1;
        assert_int_equal(vcpu_read(v, (base + i) << PAGE_SHIFT, &val), 0);
        assert_int_equal(val, 0);
    }
    audit_all(d);
    assert_int_equal(v->st.pod_zero_reads, nr);
    assert_int_equal(d->pod.count, count0);
    assert_int_equal(d->pod.entry_count, entries0);
    assert_int_equal(d->pod.stats.reclaimed_2m + d->pod.stats.reclaimed_4k, 0);
    /* writes: 512 pages fit, then the domain crashes */
    int rc = 0;
    uint64_t i = 0;
    for (; i < nr && rc == 0; i++)
        rc = vcpu_write(v, ((base + i) << PAGE_SHIFT) + 8, i + 1);
    assert_int_equal(rc, -ESRCH);
    assert_true(d->crashed);
    audit_all(d);
    for (uint64_t k = 0; k + 1 < i; k++) {
        assert_int_equal(vcpu_read(v, ((base + k) << PAGE_SHIFT) + 8, &val), 0);
        assert_int_equal(val, k + 1);
    }
    print_message("# vCPU: %llu EPT violations, %llu TLB flushes; crashed after %llu writes\n",
                  (unsigned long long)v->st.ept_violations,
                  (unsigned long long)v->st.tlb_flushes, (unsigned long long)i);
    vcpu_unlock(v);
    vcpu_destroy(v);
    domain_destroy(d);
    machine_destroy(m);
}


/* ---- fault injection at every allocation site ---------------------------------- */

/* Target changes: a failed grow returns -ENOMEM with the cache holding what
 * it got (accounting exact); a shrink never fails. */
static void test_fault_target(void **state)
{
    (void)state;
    struct machine *m = new_machine(256 * MiB);
    struct domain *d = new_domain(m);
    gfn_t base = GFN_4G;
    uint64_t nr = 64 * MiB >> PAGE_SHIFT;
    assert_int_equal(domain_populate_flags(d, base, nr, DOMAIN_POPULATE_POD, NULL), 0);
    const uint64_t big = 17 * 512 + 296, small = 3 * 512 + 100;
    long n;
    unsigned failed = 0;
    bool fired = true;
    int rc;
    for (n = 1; fired; n++) {
        assert_int_equal(pod_set_target(d, 0), 0);
        audit_all(d);
        assert_int_equal(d->pod.count, 0);
        UNDER_FAULT(n, fired, rc, pod_set_target(d, big));
        audit_all(d);
        assert_true(d->pod.count <= big);
        assert_int_equal(d->tot_pages, d->pod.count); /* nothing populated */
        if (rc < 0) {
            assert_int_equal(rc, -ENOMEM);
            failed++;
            /* retrying without the fault completes it */
            assert_int_equal(pod_set_target(d, big), 0);
            audit_all(d);
        }
        assert_int_equal(d->pod.count, big);
    }
    assert_int_equal(rc, 0);
    print_message("# target grow: %ld allocation sites, %u calls failed cleanly, "
                  "%llu 2M fallbacks\n", n - 1, failed,
                  (unsigned long long)d->pod.stats.cache_grow_fallback_4k);
    assert_true(failed > 0);
    /* shrinking (a 2M chunk broken for the remainder) never fails */
    for (n = 1, fired = true; fired; n++) {
        assert_int_equal(pod_set_target(d, big), 0);
        UNDER_FAULT(n, fired, rc, pod_set_target(d, small));
        assert_int_equal(rc, 0);
        audit_all(d);
        assert_true(d->pod.count <= small);
    }
    domain_destroy(d);
    AUDIT_OK(frames_audit(m->frames));
    assert_int_equal(frames_owned(m->frames, 1), 0);
    machine_destroy(m);
}

/* A guest's first touches on a PoD guest: 1G splinter, 2M chunks, 2M
 * splinter to 4K, cache exhaustion, eager reclaim and the emergency sweep
 * (which splits a written superpage to reclaim its zero pages).  Returns
 * the first error. */
static int demand_scenario(struct domain *d, gfn_t base, unsigned *step)
{
    int rc;
    uint8_t v;
    *step = 0;
    if ((rc = touch(d, base + 5, 1, true, 0x11, NULL)) < 0) /* 1G split, chunk */
        return rc;
    *step = 1;
    if ((rc = touch(d, base + 3 * 512 + 7, 0, false, 0, &v)) < 0) /* chunk, zero */
        return rc;
    *step = 2;
    for (unsigned i = 0; i < 300; i++) /* 2M split, 4K pages: cache empties */
        if ((rc = touch(d, base + 9 * 512 + i, 2, true, 0x22, NULL)) < 0)
            return rc;
    *step = 3;
    for (unsigned i = 0; i < 600; i++) /* reclaim: mrp, then the sweep */
        if ((rc = touch(d, base + 20 * 512 + i, 3, true, 0x33, NULL)) < 0)
            return rc;
    *step = 4;
    return 0;
}

static void check_scenario_bytes(struct domain *d, gfn_t base, unsigned step)
{
    enum p2m_type t;
    mfn_t mfn;
    if (step >= 1) {
        mfn = p2m_get_entry(d->p2m, base + 5, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        assert_int_equal(((uint8_t *)machine_ptr(d->m, mfn))[1], 0x11);
    }
    for (unsigned i = 0; step >= 3 && i < 300; i++) {
        mfn = p2m_get_entry(d->p2m, base + 9 * 512 + i, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        assert_int_equal(((uint8_t *)machine_ptr(d->m, mfn))[2], 0x22);
    }
    for (unsigned i = 0; step >= 4 && i < 600; i++) {
        mfn = p2m_get_entry(d->p2m, base + 20 * 512 + i, &t, NULL);
        assert_int_equal(t, p2m_ram_rw);
        assert_int_equal(((uint8_t *)machine_ptr(d->m, mfn))[3], 0x33);
    }
}

/* Demand populate and reclaim with the n-th allocation failing: the fault
 * handler either gets past it (reclaim skips what it cannot take) or
 * crashes the domain with the reason in its event log (Xen's behaviour on
 * a failed p2m update); the accounting holds either way and nothing
 * written is lost. */
static void test_fault_demand(void **state)
{
    (void)state;
    struct machine *m = new_machine(128 * MiB);
    gfn_t base = GFN_4G;
    unsigned crashed = 0, survived = 0, step = 0;
    bool fired = true;
    long n;
    int rc = 0;
    for (n = 1; fired; n++) {
        struct domain *d = new_domain(m);
        assert_int_equal(domain_populate_flags(d, base, 1ULL << 18, DOMAIN_POPULATE_POD, NULL),
                         0);
        assert_int_equal(pod_set_target(d, 2 * 512 + 300), 0);
        assert_int_equal(d->pod.nr_chunks, 2);
        audit_all(d);
        p2m_trim(d->p2m);
        UNDER_FAULT(n, fired, rc, demand_scenario(d, base, &step));
        audit_all(d);
        if (rc < 0) {
            assert_int_equal(rc, -ESRCH);
            assert_true(d->crashed);
            assert_non_null(domain_last_event(d));
            if (crashed++ == 0)
                print_message("# n=%ld: %s\n", n, domain_last_event(d));
            check_scenario_bytes(d, base, step);
        } else {
            assert_false(d->crashed);
            check_scenario_bytes(d, base, 4);
            survived += fired;
        }
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
    }
    assert_int_equal(rc, 0);
    print_message("# demand populate: %ld allocation sites; %u crashed cleanly, %u got "
                  "past the failure\n", n - 1, crashed, survived);
    assert_true(crashed > 0);
    machine_destroy(m);
}

/* Reclaim (the consolidation sweep and pod_reclaim_2m) under allocation
 * failure: what cannot be reclaimed stays RAM with its bytes, the rest
 * moves to the cache; a second sweep without faults gets everything. */
static void test_fault_reclaim(void **state)
{
    (void)state;
    struct machine *m = new_machine(128 * MiB);
    gfn_t base = GFN_4G;
    bool fired = true;
    long n;
    uint64_t partial = 0;
    for (n = 1; fired; n++) {
        struct domain *d = new_domain(m);
        /* block 0: zero 4K frames, not contiguous; block 1: the same with
         * one written page; block 2: one zero 2M leaf */
        for (uint64_t i = 1024; i-- > 0;)
            assert_int_equal(domain_map_extent(d, base + i, PAGE_ORDER_4K, NULL), 0);
        assert_int_equal(domain_map_extent(d, base + 1024, PAGE_ORDER_2M, NULL), 0);
        assert_int_equal(touch(d, base + 512 + 77, 9, true, 0x5a, NULL), 0);
        audit_all(d);
        p2m_trim(d->p2m);
        long r;
        UNDER_FAULT(n, fired, r, pod_zero_sweep(d, base, 3 * 512));
        audit_all(d);
        assert_true(r >= 0 && r <= 1535);
        partial += fired && r < 1535;
        long r2 = pod_zero_sweep(d, base, 3 * 512);
        audit_all(d);
        assert_int_equal(r + r2, 1535);
        uint8_t v;
        assert_int_equal(touch(d, base + 512 + 77, 9, false, 0, &v), 0);
        assert_int_equal(v, 0x5a);
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
    }
    print_message("# zero sweep: %ld allocation sites, %llu partial sweeps\n", n - 1,
                  (unsigned long long)partial);
    assert_true(partial > 0);
    /* pod_reclaim_2m: -ENOMEM and nothing changed */
    unsigned failed = 0;
    for (n = 1, fired = true; fired; n++) {
        struct domain *d = new_domain(m);
        for (uint64_t i = 512; i-- > 0;)
            assert_int_equal(domain_map_extent(d, base + i, PAGE_ORDER_4K, NULL), 0);
        long r;
        UNDER_FAULT(n, fired, r, pod_reclaim_2m(d, base));
        audit_all(d);
        if (r < 0) {
            assert_int_equal(r, -ENOMEM);
            assert_int_equal(d->pod.count, 0);
            assert_int_equal(domain_pages_4k(d), 512);
            failed++;
        } else {
            assert_int_equal(r, 512);
        }
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
    }
    assert_true(failed > 0);
    machine_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_impls),
        cmocka_unit_test(test_populate_pod_entries),
        cmocka_unit_test(test_random_touch_2m),
        cmocka_unit_test(test_1g_splinter),
        cmocka_unit_test(test_decrease_pod),
        cmocka_unit_test(test_load_delete_reload),
        cmocka_unit_test(test_out_of_pod_memory),
        cmocka_unit_test(test_sweep_bound),
        cmocka_unit_test(test_random_sequences),
        cmocka_unit_test(test_vcpu_dispatch),
        cmocka_unit_test(test_fault_target),
        cmocka_unit_test(test_fault_demand),
        cmocka_unit_test(test_fault_reclaim),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
