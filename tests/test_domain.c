/*
 * test_domain.c - populate / decrease / increase reservation against a model,
 * with audits after every step, fault injection at every allocation site,
 * superpage coverage, fallback accounting and cross-domain scrubbing.
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



/* ---- a dump of the p2m, to compare whole states ------------------------- */

struct leaf {
    gfn_t gfn;
    mfn_t mfn;
    unsigned order;
    enum p2m_type type;
};
struct dump {
    struct leaf *v;
    size_t n, cap;
};

static int dump_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                     enum p2m_type type, ept_entry_t *e)
{
    struct dump *d = ctx;
    (void)e;
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 256;
        d->v = realloc(d->v, d->cap * sizeof(*d->v));
        assert_non_null(d->v);
    }
    d->v[d->n++] = (struct leaf){gfn, mfn, order, type};
    return 0;
}

static struct dump take_dump(struct domain *d)
{
    struct dump du = {0};
    assert_int_equal(p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, dump_leaf, &du), 0);
    return du;
}

static void assert_same_dump(const struct dump *a, const struct dump *b)
{
    assert_int_equal(a->n, b->n);
    if (a->n)
        assert_memory_equal(a->v, b->v, a->n * sizeof(*a->v));
}

/* ---- fixtures ---------------------------------------------------------- */


static struct domain *new_domain_max(struct machine *m, uint64_t max_pages)
{
    struct domain_config c;
    struct domain *d;
    domain_config_default(&c);
    c.max_pages = max_pages;
    assert_int_equal(domain_create(m, &c, &d), 0);
    return d;
}

/* The tag every populated page carries in its first 8 bytes. */
static uint64_t tag_of(const struct domain *d, gfn_t gfn)
{
    return (gfn * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)d->domid << 56) ^ 1;
}

/* ---- superpage coverage ------------------------------------------------- */

/* An 8 GiB guest on an unfragmented host: every 2M-aligned block of the
 * layout that is clear of holes is mapped by a 2M or 1G leaf, every such 1G
 * block by a 1G leaf, holes are unmapped, and nothing fell back. */
static void test_coverage_unfragmented(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(9 * GiB, FRAME_POLICY_FRAGPOOL);
    struct domain *d = new_domain_max(m, 0);
    struct populate_result res;
    assert_int_equal(domain_populate_guest(d, 8 * GiB, &res), 0);
    audit_all(d);

    struct gfn_range r[2];
    unsigned n = domain_guest_layout(d, 8 * GiB, r);
    assert_int_equal(n, 2);
    uint64_t expect_pages = 0, expect_1g = 0;
    for (unsigned i = 0; i < n; i++) {
        for (gfn_t g = r[i].gfn; g < r[i].gfn + r[i].nr; g += 512) {
            bool hole = false;
            for (gfn_t x = g; x < g + 512; x++)
                hole |= domain_gfn_in_hole(d, x);
            enum p2m_type t;
            unsigned order;
            p2m_get_entry(d->p2m, g, &t, &order);
            if (!hole) {
                assert_int_equal(t, p2m_ram_rw);
                assert_true(order >= PAGE_ORDER_2M);
            }
            for (gfn_t x = g; x < g + 512; x++)
                expect_pages += !domain_gfn_in_hole(d, x);
        }
        for (gfn_t g = r[i].gfn; g + (1u << 18) <= r[i].gfn + r[i].nr; g += 1u << 18) {
            if (!is_aligned_order(g, 18))
                continue;
            bool hole = false;
            for (gfn_t x = g; x < g + (1u << 18) && !hole; x += 1)
                hole |= domain_gfn_in_hole(d, x);
            if (hole)
                continue;
            unsigned order;
            p2m_get_entry(d->p2m, g, NULL, &order);
            assert_int_equal(order, PAGE_ORDER_1G);
            expect_1g++;
        }
    }
    /* holes are unmapped */
    enum p2m_type t;
    p2m_get_entry(d->p2m, VGA_HOLE_GFN, &t, NULL);
    assert_int_equal(t, p2m_invalid);
    p2m_get_entry(d->p2m, d->mmio_hole_start, &t, NULL);
    assert_int_equal(t, p2m_invalid);
    assert_int_equal(d->tot_pages, expect_pages);
    assert_int_equal(res.pages, expect_pages);
    assert_int_equal(domain_pages_1g(d), expect_1g);
    assert_int_equal(d->stats.fallback_1g_nomem + d->stats.fallback_2m_nomem, 0);
    /* the first 2M is 4K because of the VGA hole */
    assert_int_equal(domain_pages_4k(d), 512 - VGA_HOLE_NR);
    print_message("# 8 GiB guest: pages_1g %llu pages_2m %llu pages_4k %llu\n",
                  (unsigned long long)domain_pages_1g(d),
                  (unsigned long long)domain_pages_2m(d),
                  (unsigned long long)domain_pages_4k(d));
    down_guest(d, m);
}

/* On a fragmented host, fallbacks match what the allocator could give:
 * a 1G (2M) request fell back only if no 1G (2M) extent was left, and the
 * guest got no more superpages than were allocatable before. */
static void test_coverage_fragmented(void **state)
{
    (void)state;
    static const enum frame_policy pols[] = {FRAME_POLICY_FRAGPOOL, FRAME_POLICY_BUDDY};
    for (size_t p = 0; p < ARRAY_SIZE(pols); p++) {
        struct machine *m = new_machine_policy(4 * GiB, pols[p]);
        domid_t churner = ++m->next_domid;
        uint64_t ops;
        assert_int_equal(frames_fragment(m->frames, churner, 0.3, 0.7, 7, &ops), 0);
        uint64_t a1 = frames_allocatable(m->frames, PAGE_ORDER_1G);
        uint64_t a2 = frames_allocatable(m->frames, PAGE_ORDER_2M);
        struct domain *d = new_domain_max(m, 0);
        struct populate_result res;
        assert_int_equal(domain_populate_guest(d, 2 * GiB, &res), 0);
        audit_all(d);
        assert_true(res.nr_1g <= a1);
        assert_true(res.nr_2m + 512 * res.nr_1g <= a2);
        if (d->stats.fallback_1g_nomem)
            assert_int_equal(frames_allocatable(m->frames, PAGE_ORDER_1G), 0);
        if (d->stats.fallback_2m_nomem)
            assert_int_equal(frames_allocatable(m->frames, PAGE_ORDER_2M), 0);
        /* every layout-eligible 1G block was either populated or fell back */
        assert_int_equal(d->stats.populated_1g, res.nr_1g);
        print_message("# %s: allocatable before 1G %llu 2M %llu; got 1G %llu 2M %llu 4K %llu; "
                      "fallbacks 1G %llu 2M %llu\n",
                      frame_policy_name(pols[p]), (unsigned long long)a1,
                      (unsigned long long)a2, (unsigned long long)res.nr_1g,
                      (unsigned long long)res.nr_2m, (unsigned long long)res.nr_4k,
                      (unsigned long long)d->stats.fallback_1g_nomem,
                      (unsigned long long)d->stats.fallback_2m_nomem);
        domain_destroy(d);
        machine_destroy(m);
    }
}

/* ---- differential random test -------------------------------------------- */

#define SPACE (1ULL << 20) /* 4 GiB of gfn space: 1G leaves occur */

struct model {
    uint8_t *mapped; /* per gfn */
    uint64_t pages;
};

static void check_against_model(struct domain *d, const struct model *md,
                                gfn_t lo, gfn_t hi)
{
    for (gfn_t g = lo; g < hi;) {
        enum p2m_type t;
        unsigned order;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &order);
        gfn_t base = g & ~(order_pages(order) - 1);
        gfn_t end = base + order_pages(order);
        for (gfn_t x = g; x < end && x < hi; x++) {
            if (md->mapped[x] != (t == p2m_ram_rw))
                fail_msg("gfn %#llx: model %d, p2m type %d order %u",
                         (unsigned long long)x, md->mapped[x], t, order);
            if (t == p2m_ram_rw) {
                /* the bytes followed the page: data never moves */
                uint64_t v;
                memcpy(&v, machine_ptr(d->m, mfn + (x - g)), sizeof(v));
                if (v != tag_of(d, x))
                    fail_msg("gfn %#llx: tag %#llx, expected %#llx",
                             (unsigned long long)x, (unsigned long long)v,
                             (unsigned long long)tag_of(d, x));
            }
        }
        g = end;
    }
    assert_int_equal(d->tot_pages, md->pages);
}

/* After a successful populate of [lo, hi): update the model, tag new pages. */
static void model_populated(struct domain *d, struct model *md, gfn_t lo, gfn_t hi)
{
    for (gfn_t g = lo; g < hi; g++) {
        if (md->mapped[g] || domain_gfn_in_hole(d, g))
            continue;
        enum p2m_type t;
        unsigned order;
        mfn_t mfn = p2m_get_entry(d->p2m, g, &t, &order);
        assert_int_equal(t, p2m_ram_rw);
        uint64_t *p = machine_ptr(d->m, mfn); /* get_entry translates g itself */
        if (*p != 0) /* fresh frames read as zero */
            fail_msg("gfn %#llx (mfn %#llx, leaf order %u): fresh frame holds %#llx%s",
                     (unsigned long long)g, (unsigned long long)mfn, order,
                     (unsigned long long)*p,
                     *p == tag_of(d, g) ? " (its own tag: mapped already)" : "");
        *p = tag_of(d, g);
        md->mapped[g] = 1;
        md->pages++;
    }
}

static void random_range(struct hv_rng *r, gfn_t *lo, uint64_t *nr)
{
    /* mostly small and 2M-scale ranges; 1G-scale ones (every page of which
     * the test touches) one time in 16 */
    static const uint64_t sizes[] = {1, 7, 512, 700, 1u << 12, 1u << 14};
    uint64_t n = hv_rng_below(r, 16) == 0 ? (1u << 18) + hv_rng_below(r, 1u << 18)
                                          : 1 + hv_rng_below(r, sizes[hv_rng_below(r, ARRAY_SIZE(sizes))]);
    gfn_t g = hv_rng_below(r, SPACE - n);
    if (hv_rng_below(r, 2))
        g &= ~511ULL; /* often aligned */
    *lo = g;
    *nr = n;
}

static void test_differential(void **state)
{
    (void)state;
    struct hv_rng r = {42};
    for (unsigned round = 0; round < 2 * hv_stress_scale(); round++) {
        enum frame_policy pol = round % 2 ? FRAME_POLICY_BUDDY : FRAME_POLICY_FRAGPOOL;
        struct machine *m = new_machine_policy(5 * GiB, pol);
        struct domain_config c;
        domain_config_default(&c);
        c.nr_4k_ranges = 1;
        c.ranges_4k[0] = (struct gfn_range){0x40000 + 1000, 3000};
        struct domain *d;
        assert_int_equal(domain_create(m, &c, &d), 0);
        struct model md = {calloc(SPACE, 1), 0};
        for (int op = 0; op < 400; op++) {
            gfn_t lo;
            uint64_t nr;
            random_range(&r, &lo, &nr);
            unsigned what = (unsigned)hv_rng_below(&r, 10);
            if (what < 4) {
                struct populate_result res;
                int rc = domain_populate(d, lo, nr, &res);
                if (rc == 0)
                    model_populated(d, &md, lo, lo + nr);
                else
                    assert_int_equal(rc, -ENOMEM); /* machine full */
            } else if (what < 8) {
                long n = domain_decrease_reservation(d, lo, nr);
                assert_true(n >= 0);
                long expect = 0;
                for (gfn_t g = lo; g < lo + nr; g++) {
                    expect += md.mapped[g];
                    if (md.mapped[g])
                        md.pages--;
                    md.mapped[g] = 0;
                }
                assert_int_equal(n, expect);
            } else {
                unsigned order = what == 8 ? PAGE_ORDER_2M : PAGE_ORDER_4K;
                gfn_t g = lo & ~(order_pages(order) - 1);
                uint64_t cnt = 1 + hv_rng_below(&r, 8);
                if (g + (cnt << order) > SPACE)
                    continue;
                int rc = domain_increase_reservation(d, g, cnt, order);
                if (rc == 0)
                    model_populated(d, &md, g, g + (cnt << order));
                else
                    assert_int_equal(rc, -ENOMEM);
            }
            audit_all(d);
            gfn_t clo = lo > 1024 ? lo - 1024 : 0;
            gfn_t chi = lo + nr + 1024 < SPACE ? lo + nr + 1024 : SPACE;
            check_against_model(d, &md, clo, chi);
            if (op % 100 == 99)
                check_against_model(d, &md, 0, SPACE);
        }
        /* nothing inside the 4K-only range is bigger than 4K */
        for (gfn_t g = 0x40000 + 1000; g < 0x40000 + 4000; g++) {
            unsigned order;
            enum p2m_type t;
            p2m_get_entry(d->p2m, g, &t, &order);
            if (t != p2m_invalid)
                assert_int_equal(order, 0);
        }
        domain_destroy(d);
        AUDIT_OK(frames_audit(m->frames));
        assert_int_equal(frames_owned(m->frames, 1), 0);
        free(md.mapped);
        machine_destroy(m);
    }
}

/* ---- allocation failure at every site -------------------------------------- */

static void faulty_op(struct domain *d, int kind, gfn_t lo, uint64_t nr)
{
    struct frame_stats before_st, after_st;
    for (long nth = 1;; nth++) {
        struct dump before = take_dump(d);
        uint64_t tot = d->tot_pages;
        frames_get_stats(d->m->frames, &before_st);
        unsigned long hits = hv_fault_hits;
        fault_arm(nth, FAULT_SITE_ALL);
        long rc;
        if (kind == 0)
            rc = domain_populate(d, lo, nr, NULL);
        else if (kind == 1)
            rc = domain_decrease_reservation(d, lo, nr);
        else
            rc = domain_increase_reservation(d, lo & ~511ULL, 2, PAGE_ORDER_2M);
        fault_disarm();
        audit_all(d);
        bool injected = hv_fault_hits != hits;
        if (rc < 0) {
            assert_true(injected);
            assert_int_equal(rc, -ENOMEM);
            struct dump after = take_dump(d);
            assert_same_dump(&before, &after);
            free(after.v);
            assert_int_equal(d->tot_pages, tot);
            frames_get_stats(d->m->frames, &after_st);
            assert_int_equal(after_st.free_frames, before_st.free_frames);
        }
        free(before.v);
        if (!injected) {
            assert_true(rc >= 0);
            return; /* every site up to the end of the op has been failed once */
        }
        if (rc >= 0 && kind != 0) {
            /* fallback absorbed the failure (e.g. 2M -> 4K); state changed,
             * so stop here: the op has been exercised with this failure. */
            return;
        }
        if (rc >= 0) {
            /* populate succeeded via fallback: undo and keep going */
            (void)domain_decrease_reservation(d, lo, nr);
        }
    }
}

static void test_fault_injection(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(2 * GiB, FRAME_POLICY_FRAGPOOL);
    struct hv_rng r = {9};
    struct domain *d = new_domain_max(m, 0);
    /* some existing state: a 1G leaf and scattered 4K */
    assert_int_equal(domain_populate(d, 1u << 18, 1u << 18, NULL), 0);
    assert_int_equal(domain_populate(d, 5000, 300, NULL), 0);
    for (int i = 0; i < 12; i++) {
        gfn_t lo = hv_rng_below(&r, 1u << 19);
        uint64_t nr = 1 + hv_rng_below(&r, 3000);
        faulty_op(d, i % 3, lo, nr);
    }
    domain_destroy(d);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
}

/* ---- splits keep data, freed frames are reusable ----------------------------- */

static void test_decrease_splits_one_path(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(2 * GiB, FRAME_POLICY_FRAGPOOL);
    struct domain *d = new_domain_max(m, 0);
    gfn_t base = 1u << 18;
    assert_int_equal(domain_populate(d, base, 1u << 18, NULL), 0);
    assert_int_equal(domain_pages_1g(d), 1);
    gfn_t victim = base + 3 * 512 + 77;
    assert_int_equal(domain_decrease_reservation(d, victim, 1), 1);
    audit_all(d);
    assert_int_equal(domain_pages_1g(d), 0);
    assert_int_equal(domain_pages_2m(d), 511);
    assert_int_equal(domain_pages_4k(d), 511);
    assert_int_equal(d->tot_pages, (1u << 18) - 1);
    struct p2m_stats ps;
    p2m_get_stats(d->p2m, &ps);
    assert_int_equal(ps.splits[2], 1);
    assert_int_equal(ps.splits[1], 1);
    /* repopulating the gfn brings the frame back; the run is contiguous
     * again only if the same frame returns, in which case it re-merges */
    assert_int_equal(domain_populate(d, victim, 1, NULL), 0);
    audit_all(d);
    assert_int_equal(d->tot_pages, 1u << 18);
    domain_destroy(d);
    machine_destroy(m);
}

static void test_max_pages(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(1 * GiB, FRAME_POLICY_FRAGPOOL);
    struct domain *d = new_domain_max(m, 1000);
    assert_int_equal(domain_populate(d, 0x100, 900, NULL), 0);
    struct dump before = take_dump(d);
    assert_int_equal(domain_populate(d, 0x1000, 200, NULL), -EDQUOT);
    struct dump after = take_dump(d);
    assert_same_dump(&before, &after);
    free(before.v);
    free(after.v);
    assert_int_equal(d->tot_pages, 900);
    audit_all(d);
    assert_int_equal(domain_populate(d, 0, 1ULL << 40, NULL), -EINVAL);
    domain_destroy(d);
    machine_destroy(m);
}

/* A new domain never reads another domain's bytes. */
static void test_scrub_between_domains(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(64 * MiB, FRAME_POLICY_FRAGPOOL);
    struct domain *a = new_domain_max(m, 0);
    assert_int_equal(domain_populate(a, 0, 12000, NULL), 0); /* 4K and 2M */
    for (mfn_t x = 0; x < m->nr_frames; x++)
        if (frame_owner(m->frames, x, NULL) == a->domid)
            memset(machine_ptr(m, x), 0xA5, PAGE_SIZE);
    /* give back a few 4K pieces while a is alive, then destroy it */
    assert_true(domain_decrease_reservation(a, 100, 50) > 0);
    domain_destroy(a);
    struct domain *b = new_domain_max(m, 0);
    uint64_t avail = m->nr_frames;
    assert_int_equal(domain_populate(b, 0, avail, NULL) == 0 ||
                         domain_populate(b, 0, avail - 2048, NULL) == 0,
                     1);
    uint64_t checked = 0;
    for (mfn_t x = 0; x < m->nr_frames; x++) {
        if (frame_owner(m->frames, x, NULL) != b->domid)
            continue;
        const uint8_t *p = machine_ptr(m, x);
        for (size_t i = 0; i < PAGE_SIZE; i++)
            if (p[i])
                fail_msg("mfn %#llx byte %zu = %#x leaked from another domain",
                         (unsigned long long)x, i, p[i]);
        checked++;
    }
    assert_true(checked > 12000);
    domain_destroy(b);
    machine_destroy(m);
}

/* Balloon in 2M units: the 2M requests that could not be served are 4K and
 * counted. */
static void test_increase_reservation_fallback(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(64 * MiB, FRAME_POLICY_FRAGPOOL);
    struct domain *hog = new_domain_max(m, 0);
    /* leave exactly 1 free 2M block plus 4K holes */
    assert_int_equal(domain_populate(hog, 0, m->nr_frames, NULL) == 0 ||
                         domain_populate(hog, 0, m->nr_frames - 512, NULL) == 0,
                     1);
    /* punch 4K holes into two 2M regions of the hog, free one 2M */
    assert_int_equal(domain_decrease_reservation(hog, 4096 + 1, 400), 400);
    assert_int_equal(domain_decrease_reservation(hog, 8192 + 3, 400), 400);
    assert_int_equal(domain_decrease_reservation(hog, 2048 * 6, 512), 512);
    uint64_t free2m = frames_allocatable(m->frames, PAGE_ORDER_2M);
    struct domain *d = new_domain_max(m, 0);
    assert_int_equal(domain_increase_reservation(d, 0x10000, free2m, PAGE_ORDER_2M), 0);
    assert_int_equal(d->stats.increased_2m, free2m);
    assert_int_equal(d->stats.increase_fallback_4k, 0);
    assert_int_equal(frames_allocatable(m->frames, PAGE_ORDER_2M), 0);
    /* one more 2M: only 4K pieces (832) are left, so it falls back to 4K */
    uint64_t before = d->tot_pages;
    assert_int_equal(domain_increase_reservation(d, 512 * 100, 1, PAGE_ORDER_2M), 0);
    assert_int_equal(d->stats.increase_fallback_4k, 1);
    assert_int_equal(d->stats.fallback_2m_nomem, 1);
    assert_int_equal(d->tot_pages, before + 512);
    /* and a third finds too little memory: fails, nothing changes */
    assert_int_equal(domain_increase_reservation(d, 512 * 200, 1, PAGE_ORDER_2M), -ENOMEM);
    assert_int_equal(d->tot_pages, before + 512);
    assert_int_equal(d->stats.increase_fallback_4k, 1);
    audit_all(d);
    audit_all(hog);
    domain_destroy(d);
    domain_destroy(hog);
    machine_destroy(m);
}

/* ---- quarantine: frames freed while a reader may hold translations ---------- */

static uint8_t q_byte(gfn_t g) { return (uint8_t)(1 + g % 251); }

/* Is mfn inside one of d's parked runs? */
static bool q_parked(const struct domain *d, mfn_t mfn)
{
    for (size_t i = 0; i < d->quarantine.n; i++)
        if (mfn >= d->quarantine.runs[i].mfn &&
            mfn < d->quarantine.runs[i].mfn + d->quarantine.runs[i].nr)
            return true;
    return false;
}

static bool q_page_is(const struct machine *m, mfn_t mfn, uint8_t byte)
{
    const uint8_t *p = machine_ptr(m, mfn);
    for (size_t i = 0; i < PAGE_SIZE; i++)
        if (p[i] != byte)
            return false;
    return true;
}

/*
 * With quarantine on, a 2M and two 4K pages freed by decrease_reservation
 * stay the domain's (parked, bytes intact, out of tot_pages) while another
 * domain allocates everything it can: none of its frames is parked, and the
 * parked ones cannot be had even by their own domain.  After release they
 * are scrubbed and the other domain gets them.  Audits after every step.
 */
static void test_quarantine(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(64 * MiB, FRAME_POLICY_FRAGPOOL);
    struct domain *a = new_domain_max(m, 0), *b = new_domain_max(m, 0);
    assert_int_equal(domain_populate(a, 0, 8192, NULL), 0); /* 4K below 2M, then 2M */
    for (gfn_t g = 0; g < 8192; g++) {
        enum p2m_type t;
        mfn_t x = p2m_get_entry(a->p2m, g, &t, NULL);
        if (p2m_is_ram(t))
            memset(machine_ptr(m, x), q_byte(g), PAGE_SIZE);
    }
    /* b takes all but 2M + 4K of what is free */
    struct frame_stats fs;
    frames_get_stats(m->frames, &fs);
    assert_int_equal(domain_populate(b, GFN_4G, fs.free_frames - 513, NULL), 0);
    audit_all(a);
    audit_all(b);

    domain_quarantine_begin(a);
    enum p2m_type t;
    unsigned o;
    mfn_t m2 = p2m_get_entry(a->p2m, 2048, &t, &o);
    assert_int_equal(o, PAGE_ORDER_2M);
    mfn_t m4a = p2m_get_entry(a->p2m, 0x10, &t, &o), m4b = p2m_get_entry(a->p2m, 0x11, NULL, NULL);
    assert_int_equal(o, PAGE_ORDER_4K);
    uint64_t tot0 = a->tot_pages;
    assert_int_equal(domain_decrease_reservation(a, 2048, 512), 512);
    assert_int_equal(domain_decrease_reservation(a, 0x10, 2), 2);
    assert_int_equal(a->quarantine.pages, 514);
    assert_int_equal(a->quarantine.parked, 514);
    assert_int_equal(a->tot_pages, tot0 - 514); /* the guest gave them back */
    assert_int_equal(frames_owned(m->frames, a->domid), a->tot_pages + 514);
    assert_true(q_parked(a, m2) && q_parked(a, m2 + 511) && q_parked(a, m4a) &&
                q_parked(a, m4b));
    assert_int_equal(frame_owner(m->frames, m2, NULL), a->domid);
    audit_all(a);
    audit_all(b);

    /* b allocates all that is free (513 frames), then finds nothing more */
    uint64_t b0 = b->tot_pages;
    assert_int_equal(domain_populate(b, 2 * GFN_4G, 513, NULL), 0);
    assert_int_equal(domain_populate(b, 3 * GFN_4G, 1, NULL), -ENOMEM);
    assert_int_equal(b->tot_pages, b0 + 513);
    for (gfn_t g = 2 * GFN_4G; g < 2 * GFN_4G + 513; g++)
        assert_false(q_parked(a, p2m_get_entry(b->p2m, g, NULL, NULL)));
    /* nor does a get its parked frames back */
    assert_int_equal(domain_populate(a, 2048, 512, NULL), -ENOMEM);
    assert_int_equal(frames_owned(m->frames, b->domid), b->tot_pages);
    for (uint64_t i = 0; i < 512; i++)
        assert_true(q_page_is(m, m2 + i, q_byte(2048 + i)));
    assert_true(q_page_is(m, m4a, q_byte(0x10)) && q_page_is(m, m4b, q_byte(0x11)));
    audit_all(a);
    audit_all(b);

    /* release: scrubbed, free, and b can have them */
    assert_int_equal(domain_quarantine_release(a), 514);
    assert_int_equal(a->quarantine.pages, 0);
    assert_int_equal(a->quarantine.released, 514);
    assert_true(a->quarantine.on); /* still parking later frees */
    assert_int_equal(frame_owner(m->frames, m2, NULL), DOMID_INVALID);
    assert_int_equal(frame_owner(m->frames, m4a, NULL), DOMID_INVALID);
    for (uint64_t i = 0; i < 512; i++)
        assert_true(q_page_is(m, m2 + i, 0));
    assert_true(q_page_is(m, m4a, 0) && q_page_is(m, m4b, 0));
    audit_all(a);
    assert_int_equal(domain_populate(b, 3 * GFN_4G, 514, NULL), 0);
    assert_int_equal(frame_owner(m->frames, m2, NULL), b->domid);
    assert_int_equal(frame_owner(m->frames, m4a, NULL), b->domid);
    frames_get_stats(m->frames, &fs);
    assert_int_equal(fs.free_frames, 0);
    audit_all(a);
    audit_all(b);

    /* parked frames at destroy: released with everything else */
    assert_int_equal(domain_decrease_reservation(a, 4096, 1024), 1024);
    assert_int_equal(a->quarantine.pages, 1024);
    audit_all(a);
    domain_destroy(a);
    domain_destroy(b);
    frames_get_stats(m->frames, &fs);
    assert_int_equal(fs.free_frames, m->nr_frames);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
}

/*
 * The PoD cache shrinking parks its frames too; a decrease that cannot get
 * room to park fails with nothing changed; end releases and stops parking.
 */
static void test_quarantine_pod_and_nomem(void **state)
{
    (void)state;
    struct machine *m = new_machine_policy(64 * MiB, FRAME_POLICY_FRAGPOOL);
    struct domain *d = new_domain_max(m, 0);
    assert_int_equal(domain_populate_flags(d, 0x1000, 4096, DOMAIN_POPULATE_POD, NULL), 0);
    assert_int_equal(domain_populate(d, 0x4000, 1024, NULL), 0);
    assert_int_equal(pod_set_target(d, 1024 + 2048), 0); /* cache 2048 */
    assert_int_equal(d->pod.count, 2048);
    audit_all(d);
    domain_quarantine_begin(d);
    assert_int_equal(pod_set_target(d, 1024 + 512), 0); /* cache shrinks by 1536 */
    assert_int_equal(d->pod.count, 512);
    assert_int_equal(d->quarantine.pages, 1536);
    assert_int_equal(d->tot_pages, 1024 + 512);
    audit_all(d);

    /* no memory for parking metadata: nothing changes */
    domain_quarantine_end(d);
    domain_quarantine_begin(d);
    struct dump before = take_dump(d);
    uint64_t tot = d->tot_pages;
    fault_arm(2, FAULT_SITE_MEM); /* the leaf journal, then the parking room */
    assert_int_equal(domain_decrease_reservation(d, 0x4000, 512), -ENOMEM);
    fault_disarm();
    struct dump after = take_dump(d);
    assert_same_dump(&before, &after);
    free(before.v);
    free(after.v);
    assert_int_equal(d->tot_pages, tot);
    assert_int_equal(d->quarantine.pages, 0);
    audit_all(d);
    assert_int_equal(domain_decrease_reservation(d, 0x4000, 512), 512);
    assert_int_equal(d->quarantine.pages, 512);
    assert_int_equal(d->quarantine.overflow, 0);
    audit_all(d);
    domain_quarantine_end(d);
    assert_false(d->quarantine.on);
    assert_int_equal(d->quarantine.pages, 0);
    assert_int_equal(frames_owned(m->frames, d->domid), d->tot_pages);
    assert_int_equal(domain_decrease_reservation(d, 0x4200, 512), 512); /* freed at once */
    assert_int_equal(d->quarantine.pages, 0);
    audit_all(d);
    domain_destroy(d);
    AUDIT_OK(frames_audit(m->frames));
    machine_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coverage_unfragmented),
        cmocka_unit_test(test_coverage_fragmented),
        cmocka_unit_test(test_differential),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_decrease_splits_one_path),
        cmocka_unit_test(test_max_pages),
        cmocka_unit_test(test_scrub_between_domains),
        cmocka_unit_test(test_increase_reservation_fallback),
        cmocka_unit_test(test_quarantine),
        cmocka_unit_test(test_quarantine_pod_and_nomem),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
