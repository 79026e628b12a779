/*
 * test_dirty.c - log-dirty against a trivially correct model: random
 * multi-vCPU writes with harvests, peeks, PML-full exits and mode changes at
 * random points (every written gfn reported; in split modes nothing else),
 * KVM's dirty_log_page_splitting_test checks, split-on-write splitting only
 * what was written, PML semantics, coarse over-marking, merge-back
 * accounting with its reasons, and harvest from another thread.
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

#include "dirty.h"
#include "pod.h"
#include "vcpu.h"
#include "workload.h"



/* Guest: gfns [0, 2^19) = 2 GiB: the first 1G holds the VGA hole (4K in the
 * first 2M, then 2M leaves), the second 1G is one 1G leaf. */
#define GUEST_GFNS (1ULL << 19)

struct env {
    struct machine *m;
    struct domain *d;
    struct vcpu *v[4];
    unsigned nv;
    gfn_t limit; /* guest gfns the random writers pick from: [0, limit) */
};

static void env_init_sized(struct env *e, unsigned nv, bool all_4k, uint64_t machine_bytes)
{
    memset(e, 0, sizeof(*e));
    e->limit = GUEST_GFNS;
    assert_int_equal(machine_create(&e->m, machine_bytes, FRAME_POLICY_FRAGPOOL), 0);
    struct domain_config c;
    domain_config_default(&c);
    if (all_4k) {
        c.nr_4k_ranges = 1;
        c.ranges_4k[0] = (struct gfn_range){0, GUEST_GFNS};
    }
    assert_int_equal(domain_create(e->m, &c, &e->d), 0);
    assert_int_equal(domain_populate(e->d, 0, GUEST_GFNS, NULL), 0);
    e->nv = nv;
    for (unsigned i = 0; i < nv; i++)
        assert_int_equal(vcpu_create(e->d, i, NULL, &e->v[i]), 0);
}

static void env_init(struct env *e, unsigned nv, bool all_4k)
{
    env_init_sized(e, nv, all_4k, 3 * GiB);
}

static void env_fini(struct env *e)
{
    for (unsigned i = 0; i < e->nv; i++)
        vcpu_destroy(e->v[i]);
    domain_destroy(e->d);
    AUDIT_OK(frames_audit(e->m->frames));
    machine_destroy(e->m);
}

static bool bit(const uint64_t *bm, uint64_t g) { return (bm[g / 64] >> (g & 63)) & 1; }
static void set_bit(uint64_t *bm, uint64_t g) { bm[g / 64] |= 1ULL << (g & 63); }

static void write_gfn(struct env *e, unsigned vi, gfn_t g, uint64_t val)
{
    struct vcpu *v = e->v[vi];
    vcpu_lock(v);
    int rc = vcpu_write(v, (g << PAGE_SHIFT) | ((val & 511) * 8), val);
    vcpu_unlock(v);
    assert_int_equal(rc, 0);
    /* the guest's bytes really changed */
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(e->d->p2m, g, &t, NULL);
    assert_true(p2m_is_ram(t));
    uint64_t got;
    memcpy(&got, (uint8_t *)machine_ptr(e->m, mfn) + (val & 511) * 8, 8);
    assert_int_equal(got, val);
}

static bool guest_gfn(const struct domain *d, gfn_t g)
{
    return g < GUEST_GFNS && !domain_gfn_in_hole(d, g);
}

/* Mapped now (RAM or PoD): decrease_reservation may have taken it away. */
static bool mapped_gfn(const struct env *e, gfn_t g)
{
    enum p2m_type t;
    if (g >= e->limit || domain_gfn_in_hole(e->d, g))
        return false;
    p2m_get_entry(e->d->p2m, g, &t, NULL);
    return p2m_is_ram(t) || t == p2m_pod;
}

static gfn_t random_gfn(struct env *e, struct hv_rng *r)
{
    for (;;) {
        gfn_t g;
        if (hv_rng_below(r, 4) == 0)
            g = hv_rng_below(r, e->limit);
        else /* locality: a few hot 2M blocks */
            g = (hv_rng_below(r, 24) * 21 % (e->limit >> 9)) * 512 + hv_rng_below(r, 512);
        if (mapped_gfn(e, g))
            return g;
    }
}

/* ---- the shape each mode keeps the p2m in ----------------------------------- */

struct form {
    enum dirty_mode mode;
    uint64_t bad;
    gfn_t first_bad;
    unsigned bad_order;
    enum p2m_type bad_type;
};

static int form_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type t,
                     ept_entry_t *e)
{
    struct form *f = ctx;
    (void)mfn;
    (void)e;
    bool bad;
    if (f->mode == DIRTY_SPLIT_ON_WRITE)
        bad = order > 0 && t == p2m_ram_rw; /* superpages write-protected */
    else if (f->mode == DIRTY_EAGER_SPLIT)
        bad = order > 0 && p2m_is_ram(t);   /* no RAM superpage at all */
    else
        bad = t == p2m_ram_logdirty;        /* coarse protects nothing */
    if (bad && !f->bad++) {
        f->first_bad = gfn;
        f->bad_order = order;
        f->bad_type = t;
    }
    return 0;
}

/* The mode's form holds (no p2m table ever runs out in these tests, so no
 * superpage is degraded). */
static void assert_form(struct domain *d, enum dirty_mode mode)
{
    struct form f = {.mode = mode};
    assert_int_equal(p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, form_leaf, &f), 0);
    if (f.bad)
        fail_msg("%s: %llu leaves out of form, first gfn %#llx order %u type %d",
                 dirty_mode_name(mode), (unsigned long long)f.bad,
                 (unsigned long long)f.first_bad, f.bad_order, (int)f.bad_type);
}

/*
 * After disable: every aligned 2M (1G) block of [0, limit) that could be one
 * leaf (all ram_rw, one aligned contiguous machine run) is one, i.e. every
 * superpage log-dirty split, and every new one, came back.
 */
static void assert_coalesced(struct domain *d, gfn_t limit)
{
    for (gfn_t b = 0; b < limit; b += 512) {
        enum p2m_type t;
        unsigned o;
        mfn_t m0 = p2m_get_entry(d->p2m, b, &t, &o);
        if (o >= PAGE_ORDER_2M || t != p2m_ram_rw || !is_aligned_order(m0, PAGE_ORDER_2M))
            continue;
        bool can = true;
        for (gfn_t g = b + 1; g < b + 512 && can; g++) {
            mfn_t m = p2m_get_entry(d->p2m, g, &t, NULL);
            can = t == p2m_ram_rw && m == m0 + (g - b);
        }
        if (can)
            fail_msg("2M block at gfn %#llx could be one leaf but is not",
                     (unsigned long long)b);
    }
    for (gfn_t b = 0; b < limit; b += 1u << 18) {
        enum p2m_type t;
        unsigned o;
        mfn_t m0 = p2m_get_entry(d->p2m, b, &t, &o);
        if (o >= PAGE_ORDER_1G || t != p2m_ram_rw || !is_aligned_order(m0, PAGE_ORDER_1G))
            continue;
        bool can = true;
        for (gfn_t g = b; g < b + (1u << 18) && can; g += 512) {
            mfn_t m = p2m_get_entry(d->p2m, g, &t, &o);
            can = t == p2m_ram_rw && o >= PAGE_ORDER_2M && m == m0 + (g - b);
        }
        if (can)
            fail_msg("1G block at gfn %#llx could be one leaf but is not",
                     (unsigned long long)b);
    }
}

/* ---- populate / decrease / increase while log-dirty is on ------------------- */

/* RAM-ness of [g, g + nr) before a map change (one byte per gfn). */
static uint8_t *ram_snapshot(struct env *e, gfn_t g, uint64_t nr)
{
    uint8_t *v = malloc(nr);
    assert_non_null(v);
    for (uint64_t i = 0; i < nr; i++) {
        enum p2m_type t;
        p2m_get_entry(e->d->p2m, g + i, &t, NULL);
        v[i] = p2m_is_ram(t);
    }
    return v;
}

/* The model's side of a map change: every gfn of [g, g + nr) whose RAM-ness
 * changed since `before` must be reported as if written (dirty.h). */
static void note_map_changes(struct env *e, gfn_t g, uint64_t nr, uint8_t *before,
                             uint64_t *model, uint64_t *ever)
{
    uint8_t *after = ram_snapshot(e, g, nr);
    for (uint64_t i = 0; i < nr; i++)
        if (before[i] != after[i]) {
            set_bit(model, g + i);
            set_bit(ever, g + i);
        }
    free(after);
    free(before);
}

/* One random balloon step over [0, e->limit); marks the 2M blocks a
 * decrease touched in `cut` (one byte per block) and the gfns whose RAM came
 * or went in `model` and `ever`. */
static void balloon_step(struct env *e, struct hv_rng *r, uint8_t *cut, gfn_t *recent,
                         unsigned *nrecent, uint64_t *model, uint64_t *ever)
{
    struct domain *d = e->d;
    uint64_t blocks = e->limit >> 9;
    unsigned k = (unsigned)hv_rng_below(r, 6);
    if (k < 3) {
        gfn_t g;
        uint64_t nr;
        if (k == 0) { /* a whole 2M block (kept to refill it as one extent) */
            g = (1 + hv_rng_below(r, blocks - 1)) * 512;
            nr = 512;
            if (*nrecent < 64)
                recent[(*nrecent)++] = g;
        } else if (k == 1) { /* a few 4K pages */
            g = hv_rng_below(r, e->limit - 64);
            nr = 1 + hv_rng_below(r, 40);
        } else { /* across a 2M border */
            uint64_t half = 1 + hv_rng_below(r, 300);
            g = (1 + hv_rng_below(r, blocks - 1)) * 512 - half;
            nr = 2 * half;
        }
        uint8_t *before = ram_snapshot(e, g, nr);
        long rel = domain_decrease_reservation(d, g, nr);
        assert_true(rel >= 0);
        note_map_changes(e, g, nr, before, model, ever);
        for (gfn_t b = g >> 9; b <= (g + nr - 1) >> 9; b++)
            cut[b] = 1;
    } else if (k == 3) { /* balloon deflate by 2M extents */
        gfn_t g = *nrecent ? recent[--(*nrecent)]
                           : (1 + hv_rng_below(r, blocks - 1)) * 512;
        uint8_t *before = ram_snapshot(e, g, 512);
        assert_int_equal(domain_increase_reservation(d, g, 1, PAGE_ORDER_2M), 0);
        note_map_changes(e, g, 512, before, model, ever);
    } else if (k == 4) { /* by 4K pages */
        gfn_t g = hv_rng_below(r, e->limit - 64);
        uint64_t n = 1 + hv_rng_below(r, 40);
        uint8_t *before = ram_snapshot(e, g, n);
        assert_int_equal(domain_increase_reservation(d, g, n, 0), 0);
        note_map_changes(e, g, n, before, model, ever);
    } else { /* populate_physmap over a range: refills with the largest orders */
        gfn_t g = hv_rng_below(r, e->limit - 4096);
        uint64_t n = 1 + hv_rng_below(r, 4096);
        uint8_t *before = ram_snapshot(e, g, n);
        assert_int_equal(domain_populate(d, g, n, NULL), 0);
        note_map_changes(e, g, n, before, model, ever);
    }
}

/* ---- the random differential test --------------------------------------- */

/*
 * With `balloon`, RAM also comes and goes while log-dirty is on: a new 1G
 * is populated right after enable, and random decrease_reservation (whole
 * 2M blocks, a few 4K pages, ranges across a 2M border), increase_reservation
 * (2M and 4K extents) and populate steps follow, each audited and checked
 * against the mode's form; the guarantees stay the same, and after disable
 * every superpage that can be one leaf again is one.
 */
static void random_run_ex(enum dirty_mode mode0, unsigned nv, uint64_t seed, bool modes_change,
                          bool balloon)
{
    struct env e;
    env_init_sized(&e, nv, false, balloon ? 5 * GiB : 3 * GiB);
    struct hv_rng r = {seed};
    uint64_t b4k = domain_pages_4k(e.d), b2m = domain_pages_2m(e.d), b1g = domain_pages_1g(e.d);
    const gfn_t limit_max = GUEST_GFNS + (balloon ? 1u << 18 : 0);
    uint8_t *pre = calloc(limit_max >> 9, 1); /* leaf order of each 2M block */
    uint8_t *cut = calloc(limit_max >> 9, 1); /* a decrease touched it */
    gfn_t recent[64];
    unsigned nrecent = 0, balloon_steps = 0;
    for (gfn_t b = 0; b < GUEST_GFNS >> 9; b++) {
        unsigned o;
        p2m_get_entry(e.d->p2m, b << 9, NULL, &o);
        pre[b] = (uint8_t)o;
    }
    assert_int_equal(dirty_enable(e.d, mode0), 0);
    audit_all(e.d);
    assert_form(e.d, mode0);
    if (balloon) {
        /* a new 1G while enabled: protected, split or left whole */
        struct populate_result pr;
        assert_int_equal(domain_populate(e.d, GUEST_GFNS, 1u << 18, &pr), 0);
        e.limit = limit_max;
        audit_all(e.d);
        assert_form(e.d, mode0);
        enum p2m_type t;
        unsigned o;
        p2m_get_entry(e.d->p2m, GUEST_GFNS, &t, &o);
        if (pr.nr_1g == 1) {
            assert_int_equal(o, mode0 == DIRTY_EAGER_SPLIT ? 0 : PAGE_ORDER_1G);
            assert_int_equal(t, mode0 == DIRTY_SPLIT_ON_WRITE ? p2m_ram_logdirty : p2m_ram_rw);
        }
        for (gfn_t b = GUEST_GFNS >> 9; b < limit_max >> 9; b++)
            pre[b] = pr.nr_1g == 1 ? PAGE_ORDER_1G : pr.nr_2m == 512 ? PAGE_ORDER_2M : 0;
    }
    uint64_t nr = dirty_bitmap_gfns(e.d);
    assert_true(nr >= e.limit);
    size_t words = (size_t)((nr + 63) / 64);
    uint64_t *model = calloc(words, 8);     /* written since the last harvest */
    uint64_t *ever = calloc(words, 8);      /* written while enabled */
    uint64_t *uni = calloc(words, 8);       /* union of harvests */
    uint64_t *out = calloc(words, 8);
    /* the new 1G is reported as if written: RAM came there (dirty.h) */
    for (gfn_t g = GUEST_GFNS; g < e.limit; g++) {
        set_bit(model, g);
        set_bit(ever, g);
    }
    bool coarse_seen = mode0 == DIRTY_COARSE; /* in this round */
    enum dirty_mode mode = mode0;
    uint64_t harvests = 0, writes = 0;
    /* balloon: fewer writes, a balloon step in 25 of 1000 ops */
    const unsigned w_end = balloon ? 930 : 960, b_end = w_end + 15, h_end = b_end + 15,
                   bl_end = h_end + (balloon ? 25 : 0);
    for (int op = 0; op < 6000; op++) {
        unsigned what = (unsigned)hv_rng_below(&r, 1000);
        if (what < w_end) {
            gfn_t g = random_gfn(&e, &r);
            write_gfn(&e, (unsigned)hv_rng_below(&r, nv), g, hv_rng_next(&r));
            set_bit(model, g);
            set_bit(ever, g);
            writes++;
        } else if (what < b_end) {
            /* a burst that fills a PML buffer past 512 */
            unsigned vi = (unsigned)hv_rng_below(&r, nv);
            gfn_t base = 512 * (1 + hv_rng_below(&r, 1000));
            for (gfn_t g = base; g < base + 700; g++) {
                if (!mapped_gfn(&e, g))
                    continue;
                write_gfn(&e, vi, g, g * 3 + 1);
                set_bit(model, g);
                set_bit(ever, g);
            }
        } else if (what < h_end) {
            struct dirty_round rd;
            assert_true(dirty_bitmap_gfns(e.d) <= nr);
            bool peek = hv_rng_below(&r, 4) == 0;
            int rc = peek ? dirty_peek(e.d, out, nr, &rd) : dirty_harvest(e.d, out, nr, &rd);
            assert_int_equal(rc, 0);
            uint64_t cnt = 0;
            for (gfn_t g = 0; g < nr; g++) {
                if (bit(model, g) && !bit(out, g))
                    fail_msg("%s: gfn %#llx written but not reported",
                             dirty_mode_name(mode), (unsigned long long)g);
                if (bit(out, g) && !bit(model, g)) {
                    if (!coarse_seen)
                        fail_msg("%s: gfn %#llx reported but not written",
                                 dirty_mode_name(mode), (unsigned long long)g);
                    /* coarse: only inside a superpage that was written */
                }
                cnt += bit(out, g);
            }
            assert_int_equal(rd.dirty_pages, cnt);
            if (!coarse_seen)
                assert_int_equal(rd.overmarked_pages, 0);
            if (!peek) {
                for (size_t i = 0; i < words; i++)
                    uni[i] |= out[i];
                memset(model, 0, words * 8);
                coarse_seen = mode == DIRTY_COARSE;
                harvests++;
            }
        } else if (what < bl_end) {
            balloon_step(&e, &r, cut, recent, &nrecent, model, ever);
            balloon_steps++;
            audit_all(e.d);
            assert_form(e.d, mode);
        } else if (modes_change) {
            enum dirty_mode nm = (enum dirty_mode)hv_rng_below(&r, DIRTY_NR_MODES);
            assert_int_equal(dirty_set_mode(e.d, nm), 0);
            assert_int_equal(dirty_get_mode(e.d), nm);
            mode = nm;
            coarse_seen |= nm == DIRTY_COARSE;
        }
        if (op % 500 == 0) {
            audit_all(e.d);
            /* split-on-write: no writable superpage; eager-split: no RAM
             * superpage; coarse: nothing protected */
            assert_form(e.d, mode);
        }
    }
    struct dirty_disable_result res;
    assert_int_equal(dirty_disable(e.d, out, nr, &res), 0);
    for (size_t i = 0; i < words; i++)
        uni[i] |= out[i];
    for (gfn_t g = 0; g < nr; g++) {
        if (bit(ever, g) && !bit(uni, g))
            fail_msg("gfn %#llx written but in no harvest", (unsigned long long)g);
        if (!modes_change && mode0 != DIRTY_COARSE && bit(uni, g) && !bit(ever, g))
            fail_msg("gfn %#llx never written but reported", (unsigned long long)g);
    }
    audit_all(e.d);
    if (!balloon) {
        /* nothing was unmapped: every superpage came back */
        assert_int_equal(res.lost_1g + res.lost_2m, 0);
        assert_int_equal(domain_pages_4k(e.d), b4k);
        assert_int_equal(domain_pages_2m(e.d), b2m);
        assert_int_equal(domain_pages_1g(e.d), b1g);
        assert_int_equal(res.pages_2m_after, b2m);
    } else {
        /* lost only where a decrease cut the superpage (or its frames
         * came back elsewhere) */
        assert_int_equal(res.lost_type + res.lost_only_4k + res.lost_other, 0);
        assert_int_equal(res.lost_1g + res.lost_2m, res.lost_unmapped + res.lost_mfn);
        assert_true(res.stats.sp_mapped > 0);
        assert_coalesced(e.d, e.limit);
        /* blocks no decrease touched are the superpages they were */
        for (gfn_t b = 0; b < e.limit >> 9; b++) {
            if (cut[b] || pre[b] == 0)
                continue;
            gfn_t g1 = b & ~(gfn_t)511;
            bool cut1g = false;
            for (gfn_t x = g1; x < g1 + 512 && !cut1g; x++)
                cut1g = cut[x];
            unsigned want = pre[b] == PAGE_ORDER_1G && cut1g ? PAGE_ORDER_2M : pre[b];
            unsigned o;
            p2m_get_entry(e.d->p2m, b << 9, NULL, &o);
            if (o < want)
                fail_msg("%s: 2M block %#llx was order %u, is %u after disable",
                         dirty_mode_name(mode0), (unsigned long long)b, want, o);
        }
    }
    print_message("# %s vcpus %u%s%s: %llu writes, %llu harvests, %u balloon steps, "
                  "superpages mapped while on %llu, split 1G %llu 2M %llu, "
                  "recovered 1G %llu 2M %llu, lost 1G %llu 2M %llu, pml full exits %llu, "
                  "overmarked %llu\n",
                  dirty_mode_name(mode0), nv, modes_change ? " (mode changes)" : "",
                  balloon ? " (balloon)" : "",
                  (unsigned long long)writes, (unsigned long long)harvests, balloon_steps,
                  (unsigned long long)res.stats.sp_mapped,
                  (unsigned long long)res.split_1g, (unsigned long long)res.split_2m,
                  (unsigned long long)res.recovered_1g, (unsigned long long)res.recovered_2m,
                  (unsigned long long)res.lost_1g, (unsigned long long)res.lost_2m,
                  (unsigned long long)res.stats.pml_full_exits,
                  (unsigned long long)res.stats.overmarked_pages);
    free(pre);
    free(cut);
    free(model);
    free(ever);
    free(uni);
    free(out);
    env_fini(&e);
}

static void random_run(enum dirty_mode mode0, unsigned nv, uint64_t seed, bool modes_change)
{
    random_run_ex(mode0, nv, seed, modes_change, false);
}

static void test_random_split_on_write(void **state)
{
    (void)state;
    random_run(DIRTY_SPLIT_ON_WRITE, 1, 11, false);
    random_run(DIRTY_SPLIT_ON_WRITE, 3, 12, false);
}

static void test_random_eager_split(void **state)
{
    (void)state;
    random_run(DIRTY_EAGER_SPLIT, 2, 13, false);
}

static void test_random_coarse(void **state)
{
    (void)state;
    random_run(DIRTY_COARSE, 3, 14, false);
}

static void test_random_mode_changes(void **state)
{
    (void)state;
    random_run(DIRTY_SPLIT_ON_WRITE, 4, 15, true);
    random_run(DIRTY_COARSE, 2, 16, true);
}

static void test_random_balloon(void **state)
{
    (void)state;
    random_run_ex(DIRTY_SPLIT_ON_WRITE, 2, 21, false, true);
    random_run_ex(DIRTY_EAGER_SPLIT, 2, 22, false, true);
    random_run_ex(DIRTY_COARSE, 3, 23, false, true);
    random_run_ex(DIRTY_SPLIT_ON_WRITE, 3, 24, true, true);
}

/*
 * RAM mapped while enabled gets the mode's form: a new 1G (populate), a 2M
 * balloon extent (increase_reservation) and a 2M PoD chunk (demand
 * populate) are write-protected in split-on-write (the first write splits
 * only its path), 4K in eager-split, whole and writable in coarse; the
 * harvest is exact in the split modes, and disable merges everything back.
 */
static void test_populate_while_enabled(void **state)
{
    (void)state;
    const gfn_t new1g = GUEST_GFNS, pod = GUEST_GFNS + (1u << 18), blk = 20 * 512;
    for (unsigned mode = 0; mode < DIRTY_NR_MODES; mode++) {
        struct env e;
        env_init_sized(&e, 1, false, 5 * GiB);
        struct domain *d = e.d;
        assert_int_equal(domain_decrease_reservation(d, blk, 512), 512);
        assert_int_equal(dirty_enable(d, (enum dirty_mode)mode), 0);
        uint64_t b4k = domain_pages_4k(d), b2m = domain_pages_2m(d), b1g = domain_pages_1g(d);
        struct populate_result pr;
        assert_int_equal(domain_populate(d, new1g, 1u << 18, &pr), 0);
        assert_int_equal(pr.nr_1g, 1);
        assert_int_equal(domain_increase_reservation(d, blk, 1, PAGE_ORDER_2M), 0);
        assert_int_equal(d->stats.increased_2m, 1);
        assert_int_equal(domain_populate_flags(d, pod, 1024, DOMAIN_POPULATE_POD, NULL), 0);
        assert_int_equal(pod_set_target(d, d->tot_pages + 1024), 0);
        assert_int_equal(d->pod.nr_chunks, 2);
        e.limit = pod + 1024;
        uint64_t nr = dirty_bitmap_gfns(d);
        assert_true(nr >= e.limit);
        audit_all(d);
        assert_form(d, (enum dirty_mode)mode);
        enum p2m_type t;
        unsigned o;
        p2m_get_entry(d->p2m, new1g, &t, &o);
        p2m_get_entry(d->p2m, blk, &t, &o);
        if (mode == DIRTY_EAGER_SPLIT) {
            assert_int_equal(domain_pages_1g(d), b1g);
            assert_int_equal(domain_pages_2m(d), b2m);
            assert_int_equal(domain_pages_4k(d), b4k + (1u << 18) + 512);
        } else {
            assert_int_equal(domain_pages_1g(d), b1g + 1);
            assert_int_equal(domain_pages_2m(d), b2m + 1);
            assert_int_equal(o, PAGE_ORDER_2M);
            assert_int_equal(t, mode == DIRTY_SPLIT_ON_WRITE ? p2m_ram_logdirty : p2m_ram_rw);
        }
        /* nothing written yet: the new RAM is reported all the same (a
         * migration must send it), the new PoD entries are not */
        uint64_t *out = calloc((nr + 63) / 64, 8);
        struct dirty_round rd;
        assert_int_equal(dirty_harvest(d, out, nr, &rd), 0);
        assert_int_equal(rd.dirty_pages, (1u << 18) + 512);
        assert_int_equal(rd.overmarked_pages, 0);
        assert_true(bit(out, new1g) && bit(out, new1g + (1u << 18) - 1));
        assert_true(bit(out, blk) && bit(out, blk + 511));
        assert_false(bit(out, pod) || bit(out, blk - 1));
        /* one write into each new superpage, one into the PoD range */
        const gfn_t w[3] = {new1g + 5 * 512 + 7, blk + 300, pod + 512 + 9};
        for (unsigned i = 0; i < 3; i++)
            write_gfn(&e, 0, w[i], 100 + i);
        assert_int_equal(d->pod.stats.demand_2m, 1);
        audit_all(d);
        assert_form(d, (enum dirty_mode)mode);
        /* the writes, and the 2M PoD chunk demand populate mapped */
        uint64_t want = 2 + 512, want_next = 3;
        if (mode == DIRTY_SPLIT_ON_WRITE) {
            /* the 1G became 2M leaves, only the touched 2M is 4K */
            p2m_get_entry(d->p2m, new1g + 6 * 512, &t, &o);
            assert_int_equal(o, PAGE_ORDER_2M);
            assert_int_equal(t, p2m_ram_logdirty);
            for (unsigned i = 0; i < 3; i++) {
                p2m_get_entry(d->p2m, w[i], &t, &o);
                assert_int_equal(o, 0);
                assert_int_equal(t, p2m_ram_rw);
            }
            assert_int_equal(domain_pages_1g(d), b1g);
            assert_int_equal(domain_pages_2m(d), b2m + 511);
            assert_int_equal(domain_pages_4k(d), b4k + 3 * 512);
            struct dirty_stats st;
            dirty_get_stats(d, &st);
            assert_int_equal(st.wp_faults, 3);
        } else if (mode == DIRTY_COARSE) {
            want = want_next = (1u << 18) + 2 * 512; /* covered whole */
            assert_int_equal(domain_pages_1g(d), b1g + 1);
        }
        assert_int_equal(dirty_harvest(d, out, nr, &rd), 0);
        assert_int_equal(rd.dirty_pages, want);
        for (unsigned i = 0; i < 3; i++)
            assert_true(bit(out, w[i]));
        assert_true(bit(out, pod + 512) && bit(out, pod + 1023));
        /* a write next to each in a new round: PML (coarse: whole leaf again) */
        for (unsigned i = 0; i < 3; i++)
            write_gfn(&e, 0, w[i] + 1, 200 + i);
        assert_int_equal(dirty_harvest(d, out, nr, &rd), 0);
        assert_int_equal(rd.dirty_pages, want_next);
        struct dirty_disable_result res;
        assert_int_equal(dirty_disable(d, NULL, 0, &res), 0);
        audit_all(d);
        assert_int_equal(res.lost_1g + res.lost_2m, 0);
        assert_int_equal(res.stats.sp_mapped, 3);
        assert_int_equal(domain_pages_1g(d), 2);
        assert_coalesced(d, e.limit);
        p2m_get_entry(d->p2m, blk, &t, &o);
        assert_int_equal(o, PAGE_ORDER_2M);
        p2m_get_entry(d->p2m, pod + 512, &t, &o);
        assert_int_equal(o, PAGE_ORDER_2M);
        assert_int_equal(t, p2m_ram_rw);
        print_message("# %s: new superpages split 1G %llu 2M %llu, recovered 1G %llu 2M %llu\n",
                      dirty_mode_name((enum dirty_mode)mode), (unsigned long long)res.split_1g,
                      (unsigned long long)res.split_2m, (unsigned long long)res.recovered_1g,
                      (unsigned long long)res.recovered_2m);
        free(out);
        env_fini(&e);
    }
}

/* ---- KVM dirty_log_page_splitting_test, adapted ---------------------------- */

static void test_eager_split_counts(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 1, false);
    uint64_t p2m_2m = domain_pages_2m(e.d), p1g = domain_pages_1g(e.d);
    assert_true(p2m_2m > 0 && p1g == 1);
    assert_int_equal(dirty_enable(e.d, DIRTY_EAGER_SPLIT), 0);
    audit_all(e.d);
    assert_int_equal(domain_pages_2m(e.d), 0);
    assert_int_equal(domain_pages_1g(e.d), 0);
    assert_int_equal(domain_pages_4k(e.d), e.d->tot_pages);
    /* dirty every page once */
    for (gfn_t g = 0; g < GUEST_GFNS; g += 1) {
        if (!guest_gfn(e.d, g) || (g & 7))
            continue;
        write_gfn(&e, 0, g, g);
    }
    struct dirty_disable_result res;
    assert_int_equal(dirty_disable(e.d, NULL, 0, &res), 0);
    audit_all(e.d);
    /* re-touch after disable */
    for (gfn_t g = 512; g < GUEST_GFNS; g += 512)
        write_gfn(&e, 0, g, g + 1);
    assert_int_equal(domain_pages_2m(e.d), p2m_2m);
    assert_int_equal(domain_pages_1g(e.d), p1g);
    assert_int_equal(res.split_1g, 1);
    assert_int_equal(res.recovered_1g, 1);
    assert_int_equal(res.recovered_2m, res.split_2m);
    env_fini(&e);
}

/* Split-on-write splits exactly the superpages written, one level at a time. */
static void test_split_on_write_only_written(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 2, false);
    uint64_t b2m = domain_pages_2m(e.d), b4k = domain_pages_4k(e.d);
    assert_int_equal(dirty_enable(e.d, DIRTY_SPLIT_ON_WRITE), 0);
    assert_int_equal(domain_pages_2m(e.d), b2m);
    assert_int_equal(domain_pages_1g(e.d), 1);
    struct hv_rng r = {5};
    uint8_t written2m[1024] = {0};
    for (int i = 0; i < 40; i++) {
        gfn_t g = random_gfn(&e, &r);
        write_gfn(&e, (unsigned)i & 1, g, (uint64_t)i);
        written2m[g >> 9] = 1;
    }
    unsigned n_written_2m = 0, n_written_1g_blocks = 0;
    for (unsigned b = 0; b < 1024; b++) {
        enum p2m_type t;
        unsigned order;
        p2m_get_entry(e.d->p2m, (gfn_t)b << 9, &t, &order);
        if (b == 0)
            continue; /* the VGA-hole 2M was 4K from the start */
        if (written2m[b]) {
            n_written_2m++;
            n_written_1g_blocks += b >= 512;
            assert_int_equal(order, 0);
            assert_int_equal(t, p2m_ram_rw);
        } else {
            assert_true(order >= PAGE_ORDER_2M);
            assert_int_equal(t, p2m_ram_logdirty);
        }
    }
    bool touched_1g = n_written_1g_blocks > 0;
    assert_int_equal(domain_pages_1g(e.d), touched_1g ? 0 : 1);
    assert_int_equal(domain_pages_2m(e.d),
                     b2m - (n_written_2m - n_written_1g_blocks) +
                         (touched_1g ? 512 - n_written_1g_blocks : 0));
    assert_int_equal(domain_pages_4k(e.d), b4k + 512ull * n_written_2m);
    audit_all(e.d);
    struct dirty_disable_result res;
    assert_int_equal(dirty_disable(e.d, NULL, 0, &res), 0);
    assert_int_equal(res.split_2m, n_written_2m);
    assert_int_equal(res.recovered_2m, n_written_2m);
    assert_int_equal(domain_pages_2m(e.d), b2m);
    env_fini(&e);
}

/* ---- PML ----------------------------------------------------------------- */

static void test_pml_first_write_only(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 1, true); /* all 4K: every write goes through PML */
    struct vcpu *v = e.v[0];
    assert_int_equal(dirty_enable(e.d, DIRTY_SPLIT_ON_WRITE), 0);
    uint64_t nr = dirty_bitmap_gfns(e.d);
    uint64_t *out = calloc((nr + 63) / 64, 8);
    for (int i = 0; i < 10; i++)
        write_gfn(&e, 0, 1000, (uint64_t)i);
    for (int i = 0; i < 5; i++)
        write_gfn(&e, 0, 2000, (uint64_t)i);
    assert_int_equal(v->st.pml_logged, 2);
    assert_int_equal(v->pml.n, 2);
    struct dirty_round rd;
    assert_int_equal(dirty_harvest(e.d, out, nr, &rd), 0);
    assert_int_equal(rd.dirty_pages, 2);
    assert_true(bit(out, 1000) && bit(out, 2000));
    assert_int_equal(rd.pml_flushed, 2);
    assert_int_equal(v->pml.n, 0);
    /* a new round logs the first write again, once */
    write_gfn(&e, 0, 1000, 99);
    write_gfn(&e, 0, 1000, 98);
    assert_int_equal(v->st.pml_logged, 3);
    /* reads never log */
    uint64_t val;
    vcpu_lock(v);
    assert_int_equal(vcpu_read(v, 3000 << PAGE_SHIFT, &val), 0);
    vcpu_unlock(v);
    assert_int_equal(v->st.pml_logged, 3);
    assert_int_equal(dirty_harvest(e.d, out, nr, &rd), 0);
    assert_int_equal(rd.dirty_pages, 1);
    assert_int_equal(dirty_disable(e.d, NULL, 0, NULL), 0);
    free(out);
    env_fini(&e);
}

static void test_pml_full_exit(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 2, true);
    struct vcpu *v = e.v[1];
    assert_int_equal(dirty_enable(e.d, DIRTY_EAGER_SPLIT), 0);
    uint64_t nr = dirty_bitmap_gfns(e.d);
    uint64_t *out = calloc((nr + 63) / 64, 8);
    gfn_t base = 4096;
    for (gfn_t g = base; g < base + PML_ENTRIES; g++)
        write_gfn(&e, 1, g, g);
    assert_int_equal(v->pml.n, PML_ENTRIES);
    assert_int_equal(v->st.pml_full_exits, 0);
    write_gfn(&e, 1, base + PML_ENTRIES, 1);
    assert_int_equal(v->st.pml_full_exits, 1);
    assert_int_equal(v->pml.n, 1);
    /* 3 more full buffers, and 7 entries: the appends 1025, 1537 and 2049
     * exit */
    for (gfn_t g = base + PML_ENTRIES + 1; g < base + 4 * PML_ENTRIES + 7; g++)
        write_gfn(&e, 1, g, g);
    assert_int_equal(v->st.pml_full_exits, 4);
    assert_int_equal(v->pml.n, 7);
    struct dirty_round rd;
    assert_int_equal(dirty_harvest(e.d, out, nr, &rd), 0);
    assert_int_equal(rd.dirty_pages, 4 * PML_ENTRIES + 7);
    for (gfn_t g = 0; g < nr; g++)
        assert_int_equal(bit(out, g), g >= base && g < base + 4 * PML_ENTRIES + 7);
    struct dirty_stats st;
    dirty_get_stats(e.d, &st);
    assert_int_equal(st.pml_full_exits, 4);
    assert_int_equal(st.pml_flushed, 4 * PML_ENTRIES + 7);
    assert_int_equal(dirty_disable(e.d, NULL, 0, NULL), 0);
    free(out);
    env_fini(&e);
}

/* ---- coarse ---------------------------------------------------------------- */

static void test_coarse_overmark(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 1, false);
    assert_int_equal(dirty_enable(e.d, DIRTY_COARSE), 0);
    uint64_t nr = dirty_bitmap_gfns(e.d);
    uint64_t *out = calloc((nr + 63) / 64, 8);
    uint64_t b2m = domain_pages_2m(e.d);
    write_gfn(&e, 0, 512 * 7 + 3, 1);       /* inside a 2M leaf */
    write_gfn(&e, 0, 512 * 7 + 9, 2);       /* same leaf: not logged again */
    write_gfn(&e, 0, (1u << 18) + 77, 3);   /* inside the 1G leaf */
    write_gfn(&e, 0, 5, 4);                 /* a 4K leaf */
    assert_int_equal(e.v[0]->st.pml_logged, 3);
    struct dirty_round rd;
    assert_int_equal(dirty_harvest(e.d, out, nr, &rd), 0);
    assert_int_equal(rd.dirty_pages, 512 + (1u << 18) + 1);
    assert_int_equal(rd.overmarked_pages, 512 + (1u << 18) + 1 - 4);
    assert_int_equal(domain_pages_2m(e.d), b2m); /* nothing split */
    assert_int_equal(domain_pages_1g(e.d), 1);
    /* a D-set superpage split behind the log's back still reports whole */
    write_gfn(&e, 0, 512 * 9 + 1, 5);
    assert_true(domain_decrease_reservation(e.d, 512 * 9 + 100, 1) == 1);
    write_gfn(&e, 0, 512 * 9 + 300, 6); /* child inherited D: no PML entry */
    assert_int_equal(dirty_harvest(e.d, out, nr, &rd), 0);
    assert_true(bit(out, 512 * 9 + 1) && bit(out, 512 * 9 + 300));
    audit_all(e.d);
    struct dirty_disable_result res;
    assert_int_equal(dirty_disable(e.d, NULL, 0, &res), 0);
    assert_int_equal(res.split_2m + res.split_1g, 0);
    free(out);
    env_fini(&e);
}

/* ---- merge-back accounting --------------------------------------------------- */

static void test_disable_recovery_reasons(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 1, false);
    uint64_t b2m = domain_pages_2m(e.d);
    assert_int_equal(dirty_enable(e.d, DIRTY_SPLIT_ON_WRITE), 0);
    write_gfn(&e, 0, 512 * 10 + 1, 1);   /* split 2M block 10 */
    write_gfn(&e, 0, 512 * 11 + 1, 1);   /* split 2M block 11 */
    write_gfn(&e, 0, 512 * 12 + 1, 1);   /* split 2M block 12 */
    write_gfn(&e, 0, (1u << 18) + 5, 1); /* split the 1G, then its first 2M */
    /* balloon one page of block 10 out; make one page of block 11 ro */
    assert_int_equal(domain_decrease_reservation(e.d, 512 * 10 + 7, 1), 1);
    vcpu_lock(e.v[0]);
    assert_int_equal(p2m_change_type(e.d->p2m, 512 * 11 + 8, 1, p2m_ram_rw, p2m_ram_ro), 0);
    e.d->p2m_gen++;
    vcpu_unlock(e.v[0]);
    /* the ro page now refuses writes, through a stale TLB or not */
    vcpu_lock(e.v[0]);
    assert_int_equal(vcpu_write(e.v[0], (512 * 11 + 8) << PAGE_SHIFT, 1), -EACCES);
    vcpu_unlock(e.v[0]);
    struct dirty_disable_result res;
    assert_int_equal(dirty_disable(e.d, NULL, 0, &res), 0);
    audit_all(e.d);
    assert_int_equal(res.split_1g, 1);
    assert_int_equal(res.recovered_1g, 1);
    assert_int_equal(res.split_2m, 4);
    assert_int_equal(res.recovered_2m, 2);
    assert_int_equal(res.lost_2m, 2);
    assert_int_equal(res.lost_unmapped, 1);
    assert_int_equal(res.lost_type, 1);
    assert_int_equal(domain_pages_2m(e.d), b2m - 2);
    env_fini(&e);
}

/* ---- harvest from another thread ------------------------------------------- */

struct harvester {
    struct domain *d;
    uint64_t *uni;
    uint64_t nr;
    volatile int stop;
    int rc;
    unsigned rounds;
};

static void *harvest_thread(void *arg)
{
    struct harvester *h = arg;
    uint64_t *out = calloc((h->nr + 63) / 64, 8);
    while (!h->stop) {
        int rc = dirty_harvest(h->d, out, h->nr, NULL);
        if (rc) {
            h->rc = rc;
            break;
        }
        for (size_t i = 0; i < (h->nr + 63) / 64; i++)
            h->uni[i] |= out[i];
        h->rounds++;
    }
    free(out);
    return NULL;
}

struct written {
    uint64_t *bm;
};

static void note_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct written *w = ctx;
    (void)vcpu;
    (void)val;
    set_bit(w->bm, gpa >> PAGE_SHIFT);
}

static void test_concurrent_harvest(void **state)
{
    (void)state;
    static const enum dirty_mode modes[] = {DIRTY_SPLIT_ON_WRITE, DIRTY_COARSE};
    for (size_t k = 0; k < ARRAY_SIZE(modes); k++) {
        struct env e;
        env_init(&e, 3, false);
        assert_int_equal(dirty_enable(e.d, modes[k]), 0);
        uint64_t nr = dirty_bitmap_gfns(e.d);
        struct written wr = {calloc((nr + 63) / 64, 8)};
        struct harvester h = {.d = e.d, .uni = calloc((nr + 63) / 64, 8), .nr = nr};
        struct workload *w[3];
        for (unsigned i = 0; i < 3; i++) {
            struct workload_config c;
            workload_config_default(&c, i == 0 ? WL_WRITER : WL_ZIPF);
            c.seed = 7 + k;
            c.quantum = 0;
            c.wss = 0.05;
            c.on_write = note_write;
            c.ctx = &wr;
            assert_int_equal(workload_create(e.d, &c, i, 3, &w[i]), 0);
        }
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, harvest_thread, &h), 0);
        struct workload_result res;
        assert_int_equal(workload_run(e.v, w, 3, 400000, 0, &res), 0);
        h.stop = 1;
        pthread_join(th, NULL);
        assert_int_equal(h.rc, 0);
        uint64_t *out = calloc((nr + 63) / 64, 8);
        assert_int_equal(dirty_disable(e.d, out, nr, NULL), 0);
        for (gfn_t g = 0; g < nr; g++) {
            bool reported = bit(h.uni, g) || bit(out, g);
            if (bit(wr.bm, g) && !reported)
                fail_msg("gfn %#llx written but not harvested", (unsigned long long)g);
            if (modes[k] != DIRTY_COARSE && reported && !bit(wr.bm, g))
                fail_msg("gfn %#llx harvested but not written", (unsigned long long)g);
        }
        print_message("# concurrent %s: %llu accesses, %u harvest rounds\n",
                      dirty_mode_name(modes[k]), (unsigned long long)res.accesses, h.rounds);
        audit_all(e.d);
        for (unsigned i = 0; i < 3; i++)
            workload_destroy(w[i]);
        free(out);
        free(wr.bm);
        free(h.uni);
        env_fini(&e);
    }
}

static void test_api_errors(void **state)
{
    (void)state;
    struct env e;
    env_init(&e, 1, false);
    uint64_t bm[4];
    enum dirty_mode m;
    assert_int_equal(dirty_mode_parse("nope", &m), -EINVAL);
    assert_int_equal(dirty_mode_parse("eager-split", &m), 0);
    assert_int_equal(m, DIRTY_EAGER_SPLIT);
    assert_int_equal(dirty_harvest(e.d, bm, 256, NULL), -EINVAL);
    assert_int_equal(dirty_disable(e.d, NULL, 0, NULL), -EINVAL);
    assert_int_equal(dirty_set_mode(e.d, DIRTY_COARSE), -EINVAL);
    assert_int_equal(dirty_enable(e.d, DIRTY_SPLIT_ON_WRITE), 0);
    assert_int_equal(dirty_enable(e.d, DIRTY_COARSE), -EBUSY);
    assert_int_equal(dirty_harvest(e.d, bm, 256, NULL), -EINVAL); /* too small */
    /* eager split that runs out of p2m tables leaves everything as before */
    assert_int_equal(dirty_disable(e.d, NULL, 0, NULL), 0);
    uint64_t b2m = domain_pages_2m(e.d);
    fault_arm(3, FAULT_SITE_TABLE);
    int rc = dirty_enable(e.d, DIRTY_EAGER_SPLIT);
    fault_disarm();
    assert_int_equal(rc, -ENOMEM);
    assert_false(dirty_enabled(e.d));
    assert_int_equal(domain_pages_2m(e.d), b2m);
    audit_all(e.d);
    env_fini(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_errors),
        cmocka_unit_test(test_pml_first_write_only),
        cmocka_unit_test(test_pml_full_exit),
        cmocka_unit_test(test_split_on_write_only_written),
        cmocka_unit_test(test_eager_split_counts),
        cmocka_unit_test(test_coarse_overmark),
        cmocka_unit_test(test_disable_recovery_reasons),
        cmocka_unit_test(test_random_split_on_write),
        cmocka_unit_test(test_random_eager_split),
        cmocka_unit_test(test_random_coarse),
        cmocka_unit_test(test_random_mode_changes),
        cmocka_unit_test(test_populate_while_enabled),
        cmocka_unit_test(test_random_balloon),
        cmocka_unit_test(test_concurrent_harvest),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
