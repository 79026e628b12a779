/*
 * test_p2m.c - p2m unit tests: a differential test against a flat model
 * array, split/merge paths, table-pool exhaustion and fault injection at
 * every allocation index, error cases, frame-ownership audit.
 *
 * Built by meson with the whole library.  For a standalone build before
 * frames.c exists, define P2M_TEST_FRAMES_STUB to get a minimal
 * frame_owner() stub (meson never sets it).
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
#include "common.h"
#include "frames.h"
#include "p2m.h"

/* ---- frames stub ----------------------------------------------------- */

#ifdef P2M_TEST_FRAMES_STUB
/* mfns below stub_owned_limit are owned by domain 1 in 2M extents. */
static mfn_t stub_owned_limit = 1ULL << 30;
domid_t frame_owner(const struct frames *f, mfn_t mfn, unsigned *head_order)
{
    (void)f;
    if (head_order)
        *head_order = 9;
    return mfn < stub_owned_limit ? 1 : DOMID_INVALID;
}
#endif

/* ---- helpers ----------------------------------------------------------- */

#define P2M_AUDIT_OK(p)                                                        \
    do {                                                                       \
        int arc_ = p2m_audit(p);                                               \
        if (arc_ != 0)                                                         \
            fail_msg("audit failed: %s", hv_audit_last());                     \
    } while (0)

static struct p2m *mk(uint64_t max_tables)
{
    struct p2m *p = NULL;
    assert_int_equal(p2m_create(&p, 1, NULL, max_tables), 0);
    assert_non_null(p);
    return p;
}

static unsigned order_at(struct p2m *p, gfn_t g)
{
    unsigned o = 99;
    (void)p2m_get_entry(p, g, NULL, &o);
    return o;
}

/* Full dump of the leaves, for before/after comparison. */
struct leafrec {
    gfn_t gfn;
    ept_entry_t e;
    unsigned order;
};
struct dump {
    struct leafrec *v;
    size_t n, cap;
    struct p2m_stats st;
};

static int dump_cb(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                   ept_entry_t *entry)
{
    struct dump *d = ctx;
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 256;
        d->v = realloc(d->v, d->cap * sizeof(*d->v));
        assert_non_null(d->v);
    }
    d->v[d->n++] = (struct leafrec){ gfn, *entry, order };
    return 0;
}

static void take_dump(struct p2m *p, struct dump *d)
{
    d->n = 0;
    assert_int_equal(p2m_for_each_leaf(p, 0, P2M_GFN_LIMIT, dump_cb, d), 0);
    p2m_get_stats(p, &d->st);
}

static void assert_same_dump(const struct dump *a, const struct dump *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->v[i].gfn, b->v[i].gfn);
        assert_int_equal(a->v[i].e, b->v[i].e);
        assert_int_equal(a->v[i].order, b->v[i].order);
    }
    assert_memory_equal(a->st.leaves, b->st.leaves, sizeof(a->st.leaves));
    assert_int_equal(a->st.tables, b->st.tables);
}

/* ---- model ------------------------------------------------------------- */

/* The model keeps one key per gfn: type << 56 | (mfn - gfn) mod 2^56, so a
 * contiguous run of one type is a run of equal keys. */
#define SPACE_ORDER 20u
#define SPACE (1ULL << SPACE_ORDER)
#define DELTA_MASK ((1ULL << 56) - 1)
static uint64_t *model;

static inline uint64_t mkey(enum p2m_type t, mfn_t m, gfn_t g)
{
    if (t == p2m_invalid)
        return 0;
    if (!p2m_has_mfn(t))
        return (uint64_t)t << 56;
    return ((uint64_t)t << 56) | ((m - g) & DELTA_MASK);
}
static inline enum p2m_type key_type(uint64_t k) { return (enum p2m_type)(k >> 56); }
static inline mfn_t key_mfn(uint64_t k, gfn_t g)
{
    if (!p2m_has_mfn(key_type(k)))
        return INVALID_MFN;
    int64_t d = (int64_t)(k << 8) >> 8;
    return g + (uint64_t)d;
}

static void model_set(gfn_t g, mfn_t m, uint64_t nr, enum p2m_type t)
{
    for (uint64_t i = 0; i < nr; i++)
        model[g + i] = mkey(t, m + i, g + i);
}

static void model_chtype(gfn_t g, uint64_t nr, enum p2m_type from, enum p2m_type to)
{
    for (uint64_t i = 0; i < nr; i++) {
        uint64_t k = model[g + i];
        if (key_type(k) != from)
            continue;
        if (to == p2m_invalid || from == p2m_invalid)
            model[g + i] = mkey(to, 0, g + i);
        else
            model[g + i] = (k & DELTA_MASK) | ((uint64_t)to << 56);
    }
}

struct chk {
    gfn_t s, e, next;
    struct hv_rng *rng;
    bool full;
};

static void check_gap(gfn_t a, gfn_t b)
{
    for (gfn_t g = a; g < b; g++)
        if (model[g] != 0)
            fail_msg("gfn %#llx: p2m empty, model type %u", (unsigned long long)g,
                     (unsigned)key_type(model[g]));
}

static int chk_cb(void *ctx, gfn_t lg, mfn_t mfn, unsigned order, enum p2m_type type,
                  ept_entry_t *entry)
{
    struct chk *c = ctx;
    uint64_t n = order_pages(order);
    assert_true(is_aligned_order(lg, order));
    assert_true(lg + n <= SPACE);
    gfn_t gs = c->next > c->s ? c->next : c->s;
    if (lg > gs)
        check_gap(gs, lg);
    uint64_t k0 = mkey(type, mfn, lg);
    assert_int_equal(ept_type(*entry), type);
    /* The whole leaf must be the model's run, except that only samples of a
     * 1G leaf are checked outside a full comparison. */
    if (order < PAGE_ORDER_1G || c->full) {
        for (uint64_t i = 0; i < n; i++)
            if (model[lg + i] != k0)
                fail_msg("gfn %#llx in order-%u leaf at %#llx (type %u mfn %#llx): model "
                         "type %u mfn %#llx",
                         (unsigned long long)(lg + i), order, (unsigned long long)lg, type,
                         (unsigned long long)mfn, (unsigned)key_type(model[lg + i]),
                         (unsigned long long)key_mfn(model[lg + i], lg + i));
    } else {
        gfn_t a = c->s > lg ? c->s : lg, b = c->e < lg + n ? c->e : lg + n;
        if (b - a > 4096)
            b = a + 4096;
        for (gfn_t g = a; g < b; g++)
            assert_int_equal(model[g], k0);
        for (unsigned j = 0; j < 64; j++) {
            gfn_t g = lg + hv_rng_below(c->rng, n);
            assert_int_equal(model[g], k0);
        }
        assert_int_equal(model[lg], k0);
        assert_int_equal(model[lg + n - 1], k0);
    }
    c->next = lg + n;
    return 0;
}

/* Compare [s, e) (extended to whole leaves) with the model. */
static void compare(struct p2m *p, gfn_t s, gfn_t e, bool full, struct hv_rng *rng)
{
    if (e > SPACE)
        e = SPACE;
    if (s >= e)
        return;
    if (!full && e - s > 16384) { /* long ranges: both ends; full compares do the rest */
        compare(p, s, s + 8192, false, rng);
        compare(p, e - 8192, e, false, rng);
        return;
    }
    struct chk c = { .s = s, .e = e, .next = 0, .rng = rng, .full = full };
    assert_int_equal(p2m_for_each_leaf(p, s, e - s, chk_cb, &c), 0);
    gfn_t gs = c.next > s ? c.next : s;
    if (gs < e)
        check_gap(gs, e);
    /* spot checks of get_entry / lookup_leaf */
    for (int j = 0; j < 4; j++) {
        gfn_t g = j == 0 ? s : s + hv_rng_below(rng, e - s);
        enum p2m_type t;
        unsigned o;
        mfn_t m = p2m_get_entry(p, g, &t, &o);
        assert_int_equal(t, key_type(model[g]));
        assert_int_equal(m, key_mfn(model[g], g));
        unsigned lv = 0, refs = 0;
        ept_entry_t *le = p2m_lookup_leaf(p, g, &lv, &refs);
        if (t == p2m_invalid) {
            assert_null(le);
        } else {
            assert_non_null(le);
            assert_int_equal(o, 9 * (lv - 1));
            assert_int_equal(refs, 5 - lv);
        }
    }
}

/* Would the model's aligned region [r, r + 2^order) be one leaf? */
static bool model_mergeable(struct p2m *p, gfn_t r, unsigned order)
{
    uint64_t k0 = model[r], n = order_pages(order);
    if (k0 == 0 || model[r + n - 1] != k0)
        return false;
    enum p2m_type t = key_type(k0);
    if (p2m_has_mfn(t) && !is_aligned_order(key_mfn(k0, r), order))
        return false;
    if (p2m_range_is_4k_only(p, r, order))
        return false;
    for (uint64_t i = 1; i < n; i++)
        if (model[r + i] != k0)
            return false;
    return true;
}

/* Every mergeable 2M / 1G region overlapping [s, e) is mapped at that order. */
static void check_maximal(struct p2m *p, gfn_t s, gfn_t e)
{
    if (e > SPACE)
        e = SPACE;
    if (s >= e)
        return;
    static const unsigned orders[2] = { PAGE_ORDER_2M, PAGE_ORDER_1G };
    for (unsigned k = 0; k < 2; k++) {
        unsigned ord = orders[k];
        gfn_t a = s & ~(order_pages(ord) - 1);
        uint64_t nreg = (e - a + order_pages(ord) - 1) >> ord;
        for (uint64_t j = 0; j < nreg; j++) {
            if (nreg > 32 && j == 16)
                j = nreg - 16; /* bound the cost: ends of long ranges only */
            gfn_t r = a + (j << ord);
            if (order_at(p, r) >= ord)
                continue;
            if (model_mergeable(p, r, ord))
                fail_msg("region %#llx order %u is mergeable but mapped at order %u",
                         (unsigned long long)r, ord, order_at(p, r));
        }
    }
}

/* ---- 1. differential test ---------------------------------------------- */

struct run_cfg {
    uint64_t seed;
    unsigned ops;
    bool auto_on;
    bool splits;  /* use p2m_split (pins tables: no per-op maximality) */
    bool toggle;  /* toggle automatic coalescing now and then */
    bool ranges4k;
};

static const enum p2m_type all_types[] = {
    p2m_invalid, p2m_ram_rw, p2m_ram_ro, p2m_ram_logdirty, p2m_pod, p2m_mmio,
};

static enum p2m_type rnd_type(struct hv_rng *r)
{
    /* invalid a bit more often, so that mappings also go away */
    uint64_t x = hv_rng_below(r, 8);
    return x >= 6 ? p2m_invalid : all_types[x];
}

static uint64_t rnd_delta(struct hv_rng *r)
{
    switch (hv_rng_below(r, 8)) {
    case 0: case 1: case 2: return 1ULL << 18;            /* 1G-aligned */
    case 3: return 5ULL << 18;
    case 4: case 5: return (1ULL << 18) + (3ULL << 9);    /* 2M-aligned only */
    case 6: return (1ULL << 18) + 7;                      /* unaligned */
    default: return (1ULL << 20) + (hv_rng_below(r, 1ULL << 20) << 9);
    }
}

static uint64_t diff_splits[3], diff_merges[3];

static void run_differential(const struct run_cfg *cfg)
{
    struct hv_rng rng = { cfg->seed };
    struct hv_rng chk_rng = { cfg->seed ^ 0xabcdef };
    memset(model, 0, SPACE * sizeof(*model));
    struct p2m *p = mk(0);
    bool auto_on = cfg->auto_on;
    p2m_set_auto_coalesce(p, auto_on);
    if (cfg->ranges4k) {
        for (int i = 0; i < 2; i++) {
            gfn_t g = hv_rng_below(&rng, SPACE - 64);
            assert_int_equal(p2m_add_4k_range(p, g, 1 + hv_rng_below(&rng, 40)), 0);
        }
    }
    /* Four windows of 4 MiB keep the number of tables (and audit cost) low. */
    gfn_t win[4];
    for (int i = 0; i < 4; i++)
        win[i] = hv_rng_below(&rng, (SPACE >> 9) - 8) << 9;
    win[3] = ((uint64_t)hv_rng_below(&rng, 4) << 18) + (1ULL << 18) - 1024; /* 1G edge */

    for (unsigned n = 0; n < cfg->ops; n++) {
        gfn_t base = win[hv_rng_below(&rng, 4)];
        gfn_t g = base + hv_rng_below(&rng, 2048);
        if (g >= SPACE)
            g = SPACE - 1;
        gfn_t s = g, e = g + 1;
        uint64_t x = hv_rng_below(&rng, 100);
        int rc;
        if (x < 30) { /* set_entry 4K */
            enum p2m_type t = rnd_type(&rng);
            mfn_t m = g + rnd_delta(&rng);
            rc = p2m_set_entry(p, g, m, 0, t);
            assert_int_equal(rc, 0);
            model_set(g, m, 1, t);
        } else if (x < 45 || (x < 47 && hv_rng_below(&rng, 4) == 0)) { /* set_entry 2M/1G */
            unsigned ord = x < 45 ? PAGE_ORDER_2M : PAGE_ORDER_1G;
            g &= ~(order_pages(ord) - 1);
            s = g;
            e = g + order_pages(ord);
            enum p2m_type t = rnd_type(&rng);
            mfn_t m = g + rnd_delta(&rng);
            rc = p2m_set_entry(p, g, m, ord, t);
            bool misaligned = p2m_has_mfn(t) && !is_aligned_order(m, ord);
            if (misaligned || p2m_range_is_4k_only(p, g, ord)) {
                assert_int_equal(rc, -EINVAL);
            } else {
                assert_int_equal(rc, 0);
                model_set(g, m, order_pages(ord), t);
            }
        } else if (x < 65) { /* set_range */
            uint64_t y = hv_rng_below(&rng, 100), nr;
            mfn_t m = g + rnd_delta(&rng);
            if (y < 70) {
                nr = 1 + hv_rng_below(&rng, 600);
            } else if (y < 99) {
                nr = 1 + hv_rng_below(&rng, 2048);
            } else { /* large: aligned, so that it does not create 1000 tables */
                nr = 1 + hv_rng_below(&rng, 1ULL << 19);
                m = g + (1ULL << 18);
            }
            if (g + nr > SPACE)
                nr = SPACE - g;
            enum p2m_type t = rnd_type(&rng);
            rc = p2m_set_range(p, g, m, nr, t);
            assert_int_equal(rc, 0);
            model_set(g, m, nr, t);
            e = g + nr;
        } else if (x < 77) { /* change_type */
            static const enum p2m_type pairs[][2] = {
                { p2m_ram_rw, p2m_ram_logdirty }, { p2m_ram_logdirty, p2m_ram_rw },
                { p2m_ram_rw, p2m_ram_ro },       { p2m_ram_ro, p2m_ram_rw },
                { p2m_pod, p2m_invalid },         { p2m_invalid, p2m_pod },
            };
            unsigned k = (unsigned)hv_rng_below(&rng, ARRAY_SIZE(pairs));
            uint64_t nr = 1 + hv_rng_below(&rng, hv_rng_below(&rng, 32) == 0 ? 1ULL << 19 : 1500);
            if (g + nr > SPACE)
                nr = SPACE - g;
            rc = p2m_change_type(p, g, nr, pairs[k][0], pairs[k][1]);
            assert_int_equal(rc, 0);
            model_chtype(g, nr, pairs[k][0], pairs[k][1]);
            e = g + nr;
        } else if (x < 85) { /* split */
            if (cfg->splits) {
                enum p2m_type t;
                unsigned before;
                (void)p2m_get_entry(p, g, &t, &before);
                rc = p2m_split(p, g);
                if (t == p2m_invalid || before == 0) {
                    assert_int_equal(rc, 0);
                } else {
                    assert_int_equal(rc, before - 9);
                    assert_int_equal(order_at(p, g), (unsigned)rc);
                }
            }
        } else if (x < 90) { /* coalesce */
            uint64_t nr = 1 + hv_rng_below(&rng, 1ULL << 12);
            long merged = p2m_coalesce(p, g, nr);
            assert_true(merged >= 0);
            if (auto_on && !cfg->splits)
                assert_int_equal(merged, 0);
            e = g + nr;
        } else if (x < 93) { /* A/D bits through the raw pointer */
            unsigned lv;
            ept_entry_t *le = p2m_lookup_leaf(p, g, &lv, NULL);
            if (le)
                *le |= hv_rng_below(&rng, 2) ? EPT_A : (EPT_A | EPT_D);
        } else if (x < 95 && cfg->toggle) {
            auto_on = !auto_on;
            p2m_set_auto_coalesce(p, auto_on);
        } else { /* errors: nothing may change */
            switch (hv_rng_below(&rng, 4)) {
            case 0: assert_int_equal(p2m_set_entry(p, g | 1, 0, 9, p2m_ram_rw), -EINVAL); break;
            case 1: assert_int_equal(p2m_set_entry(p, g & ~511ULL, 1, 9, p2m_ram_rw), -EINVAL); break;
            case 2: assert_int_equal(p2m_set_entry(p, g, 0, 3, p2m_ram_rw), -EINVAL); break;
            default:
                assert_int_equal(p2m_change_type(p, g, 10, p2m_ram_rw, p2m_mmio), -EINVAL);
            }
        }
        P2M_AUDIT_OK(p);
        compare(p, s, e, false, &chk_rng);
        if (auto_on && !cfg->splits)
            check_maximal(p, s, e);
        if (n % 1000 == 999) {
            compare(p, 0, SPACE, true, &chk_rng);
            if (n % 2000 == 1999) {
                (void)p2m_coalesce(p, 0, SPACE);
                P2M_AUDIT_OK(p);
                check_maximal(p, 0, SPACE);
            }
        }
    }
    compare(p, 0, SPACE, true, &chk_rng);
    (void)p2m_coalesce(p, 0, P2M_GFN_LIMIT);
    P2M_AUDIT_OK(p);
    compare(p, 0, SPACE, true, &chk_rng);
    /* everything removed: only the root is left once coalesced */
    assert_int_equal(p2m_set_range(p, 0, 0, SPACE, p2m_invalid), 0);
    (void)p2m_coalesce(p, 0, SPACE);
    P2M_AUDIT_OK(p);
    struct p2m_stats st;
    p2m_get_stats(p, &st);
    if (auto_on)
        assert_int_equal(st.tables, 1);
    for (unsigned l = 0; l < 3; l++) {
        diff_splits[l] += st.splits[l];
        diff_merges[l] += st.merges[l];
    }
    p2m_destroy(p);
}

static int model_setup(void **state)
{
    model = calloc(SPACE, sizeof(*model));
    return model ? 0 : -1;
}
static int model_teardown(void **state)
{
    free(model);
    model = NULL;
    return 0;
}

static void test_differential(void **state)
{
    unsigned total = 0;
    for (unsigned i = 0; i < 24 * hv_stress_scale(); i++) {
        struct run_cfg cfg = {
            .seed = 0x5eed0000ULL + i * 7919,
            .ops = 4200,
            .auto_on = (i % 2) == 0,
            .splits = (i % 4) >= 2,
            .toggle = (i % 3) == 2,
            .ranges4k = (i % 5) >= 3,
        };
        run_differential(&cfg);
        total += cfg.ops;
    }
    assert_true(total >= 100000);
    print_message("# differential: %u ops, splits 2M %llu 1G %llu, merges 2M %llu 1G %llu\n",
                  total, (unsigned long long)diff_splits[1], (unsigned long long)diff_splits[2],
                  (unsigned long long)diff_merges[1], (unsigned long long)diff_merges[2]);
    /* the sequences must really exercise both directions at both orders */
    assert_true(diff_splits[1] > 100 && diff_splits[2] > 10);
    assert_true(diff_merges[1] > 100 && diff_merges[2] >= 5);
}

/* ---- 2. split path ------------------------------------------------------ */

static void test_split_path(void **state)
{
    struct p2m *p = mk(0);
    const gfn_t g1 = 3ULL << 18;
    const mfn_t m1 = 7ULL << 18;
    struct p2m_stats st;
    assert_int_equal(p2m_set_entry(p, g1, m1, PAGE_ORDER_1G, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 2);
    assert_int_equal(st.leaves[2][p2m_ram_rw], 1);
    assert_int_equal(p2m_pages_at(p, PAGE_ORDER_1G), 1);
    unsigned lv, refs;
    ept_entry_t *le = p2m_lookup_leaf(p, g1 + 5, &lv, &refs);
    assert_non_null(le);
    assert_int_equal(lv, 3);
    assert_int_equal(refs, 2);
    *le |= EPT_A | EPT_D;

    /* one 4K change: exactly two new tables */
    const gfn_t g = g1 + 5 * 512 + 7;
    assert_int_equal(p2m_set_entry(p, g, 12345, 0, p2m_ram_ro), 0);
    P2M_AUDIT_OK(p);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 4);
    assert_int_equal(st.leaves[2][p2m_ram_rw], 0);
    assert_int_equal(st.leaves[1][p2m_ram_rw], 511);
    assert_int_equal(st.leaves[0][p2m_ram_rw], 511);
    assert_int_equal(st.leaves[0][p2m_ram_ro], 1);
    assert_int_equal(st.splits[2], 1);
    assert_int_equal(st.splits[1], 1);
    assert_int_equal(st.splits[0], 0);
    assert_int_equal(p2m_table_bytes(p), 4 * 4096);
    assert_int_equal(p2m_pages_at(p, PAGE_ORDER_2M), 511);
    assert_int_equal(p2m_pages_at(p, PAGE_ORDER_4K), 512);
    /* data never moves; children inherit A/D */
    for (gfn_t i = 0; i < (1ULL << 18); i++) {
        enum p2m_type t;
        unsigned o;
        mfn_t m = p2m_get_entry(p, g1 + i, &t, &o);
        if (g1 + i == g) {
            assert_int_equal(m, 12345);
            assert_int_equal(t, p2m_ram_ro);
            assert_int_equal(o, 0);
            continue;
        }
        assert_int_equal(m, m1 + i);
        assert_int_equal(t, p2m_ram_rw);
        assert_int_equal(o, (i >> 9) == 5 ? 0u : 9u);
    }
    le = p2m_lookup_leaf(p, g1 + 100 * 512, &lv, &refs);
    assert_int_equal(lv, 2);
    assert_int_equal(refs, 3);
    assert_int_equal(*le & (EPT_A | EPT_D), EPT_A | EPT_D);
    le = p2m_lookup_leaf(p, g + 1, &lv, &refs);
    assert_int_equal(lv, 1);
    assert_int_equal(refs, 4);
    assert_int_equal(*le & (EPT_A | EPT_D), EPT_A | EPT_D);
    le = p2m_lookup_leaf(p, g, &lv, NULL);
    assert_int_equal(*le & (EPT_A | EPT_D), 0);

    /* putting it back merges all the way up (A/D OR-ed) */
    assert_int_equal(p2m_set_entry(p, g, m1 + (g - g1), 0, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 2);
    assert_int_equal(st.merges[1], 1);
    assert_int_equal(st.merges[2], 1);
    assert_int_equal(st.leaves[2][p2m_ram_rw], 1);
    le = p2m_lookup_leaf(p, g, &lv, NULL);
    assert_int_equal(lv, 3);
    assert_int_equal(*le & (EPT_A | EPT_D), EPT_A | EPT_D);
    assert_int_equal(st.tables_peak, 4);

    /* explicit split: one level, pinned against auto-merge */
    assert_int_equal(p2m_split(p, g), 9);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, g), 9);
    assert_int_equal(p2m_split(p, g), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, g), 0);
    assert_int_equal(p2m_split(p, g), 0); /* level 1: no-op */
    assert_int_equal(p2m_split(p, 1ULL << 30), 0); /* unmapped */
    assert_int_equal(p2m_split(p, P2M_GFN_LIMIT), -EINVAL);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 4);
    /* explicit coalesce undoes it */
    assert_int_equal(p2m_coalesce(p, g, 1), 2);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, g), 18);

    /* pod leaves split without mfn */
    assert_int_equal(p2m_set_entry(p, 0, 0, PAGE_ORDER_1G, p2m_pod), 0);
    assert_int_equal(p2m_set_entry(p, 513, 99, 0, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    enum p2m_type t;
    unsigned o;
    assert_int_equal(p2m_get_entry(p, 512, &t, &o), INVALID_MFN);
    assert_int_equal(t, p2m_pod);
    assert_int_equal(o, 0);
    assert_int_equal(p2m_get_entry(p, 1024, &t, &o), INVALID_MFN);
    assert_int_equal(t, p2m_pod);
    assert_int_equal(o, 9);
    /* removing 4K from a 1G leaf also splits; pod <-> invalid change */
    assert_int_equal(p2m_change_type(p, 513, 1, p2m_ram_rw, p2m_ram_ro), 0);
    assert_int_equal(p2m_change_type(p, 0, 1ULL << 18, p2m_pod, p2m_invalid), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(p2m_get_entry(p, 513, &t, &o), 99);
    assert_int_equal(t, p2m_ram_ro);
    assert_int_equal(p2m_get_entry(p, 514, &t, &o), INVALID_MFN);
    assert_int_equal(t, p2m_invalid);
    assert_int_equal(p2m_set_entry(p, 513, 0, 0, p2m_invalid), 0);
    P2M_AUDIT_OK(p);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 2); /* empty tables freed */
    assert_int_equal(p2m_change_type(p, 0, 1ULL << 18, p2m_invalid, p2m_pod), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, 77), 18);
    p2m_destroy(p);
}

/* change_type splits only where the range boundary cuts a superpage */
static void test_change_type_boundaries(void **state)
{
    struct p2m *p = mk(0);
    const gfn_t g1 = 1ULL << 18;
    assert_int_equal(p2m_set_entry(p, g1, 1ULL << 19, 18, p2m_ram_rw), 0);
    const gfn_t s = g1 + 3 * 512 + 5, e = g1 + 40 * 512 + 17;
    assert_int_equal(p2m_change_type(p, s, e - s, p2m_ram_rw, p2m_ram_logdirty), 0);
    P2M_AUDIT_OK(p);
    struct p2m_stats st;
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, 5); /* L2 + two L1 */
    assert_int_equal(st.leaves[1][p2m_ram_logdirty], 36);
    assert_int_equal(st.leaves[0][p2m_ram_logdirty], 507 + 17);
    for (gfn_t g = g1; g < g1 + 64 * 512; g++) {
        enum p2m_type t;
        mfn_t m = p2m_get_entry(p, g, &t, NULL);
        assert_int_equal(m, (1ULL << 19) + g - g1);
        assert_int_equal(t, g >= s && g < e ? p2m_ram_logdirty : p2m_ram_rw);
    }
    /* back: everything merges into the 1G leaf again */
    assert_int_equal(p2m_change_type(p, g1, 1ULL << 18, p2m_ram_logdirty, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, g1 + 5), 18);
    assert_int_equal(p2m_change_type(p, g1, 10, p2m_mmio, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_change_type(p, g1, 10, p2m_ram_rw, p2m_pod), -EINVAL);
    assert_int_equal(p2m_change_type(p, g1, 10, p2m_ram_rw, p2m_ram_rw), 0);
    p2m_destroy(p);
}

/* ---- 3. merges ------------------------------------------------------------ */

static void shuffle(unsigned *v, unsigned n, struct hv_rng *r)
{
    for (unsigned i = 0; i < n; i++)
        v[i] = i;
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)hv_rng_below(r, i + 1), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Fill the 2M region at g with 4K entries in random order; returns the
 * order the region ends up at.  delta_at(i) perturbs entry i. */
static unsigned fill_2m(struct p2m *p, gfn_t g, mfn_t m, enum p2m_type t, unsigned odd,
                        mfn_t odd_mfn, enum p2m_type odd_type, struct hv_rng *r)
{
    unsigned perm[512];
    shuffle(perm, 512, r);
    for (unsigned k = 0; k < 512; k++) {
        unsigned i = perm[k];
        assert_int_equal(order_at(p, g), 0u + (k == 0 ? order_at(p, g) : 0u));
        int rc = i == odd ? p2m_set_entry(p, g + i, odd_mfn, 0, odd_type)
                          : p2m_set_entry(p, g + i, m + i, 0, t);
        assert_int_equal(rc, 0);
        if (k % 64 == 0)
            P2M_AUDIT_OK(p);
    }
    P2M_AUDIT_OK(p);
    return order_at(p, g);
}

static void test_merge(void **state)
{
    struct hv_rng r = { 42 };
    struct p2m *p = mk(0);
    struct p2m_stats st;
    const mfn_t M = 1ULL << 20;

    /* 4K -> 2M, automatically */
    assert_int_equal(fill_2m(p, 0, M, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 9);
    p2m_get_stats(p, &st);
    assert_int_equal(st.merges[1], 1);
    assert_int_equal(st.tables, 3);
    /* pod: no mfn needed */
    assert_int_equal(fill_2m(p, 512, 0, p2m_pod, 999, 0, p2m_pod, &r), 9);
    /* not merged: one mfn off, one type different, misaligned base */
    assert_int_equal(fill_2m(p, 1024, M + 1024, p2m_ram_rw, 77, M + 5000, p2m_ram_rw, &r), 0);
    assert_int_equal(fill_2m(p, 1536, M + 1536, p2m_ram_rw, 300, M + 1536 + 300, p2m_ram_ro, &r),
                     0);
    assert_int_equal(fill_2m(p, 2048, M + 2048 + 1, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 0);
    /* not merged inside a 4K-only range */
    assert_int_equal(p2m_add_4k_range(p, 2560 + 100, 1), 0);
    assert_int_equal(fill_2m(p, 2560, M + 2560, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 0);
    p2m_get_stats(p, &st);
    assert_int_equal(st.merges[1], 2);
    /* fixing the odd entries merges */
    assert_int_equal(p2m_set_entry(p, 1024 + 77, M + 1024 + 77, 0, p2m_ram_rw), 0);
    assert_int_equal(order_at(p, 1024), 9);
    assert_int_equal(p2m_set_entry(p, 1536 + 300, M + 1536 + 300, 0, p2m_ram_rw), 0);
    assert_int_equal(order_at(p, 1536), 9);
    P2M_AUDIT_OK(p);

    /* 2M -> 1G from 2M leaves in random order */
    const gfn_t G = 1ULL << 18;
    unsigned perm[512];
    shuffle(perm, 512, &r);
    for (unsigned k = 0; k < 512; k++) {
        assert_int_equal(order_at(p, G), k == 0 ? 18u : 9u);
        assert_int_equal(p2m_set_entry(p, G + perm[k] * 512ULL, (3ULL << 18) + perm[k] * 512ULL,
                                       9, p2m_ram_logdirty),
                         0);
        if (k % 64 == 0)
            P2M_AUDIT_OK(p);
    }
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, G + 12345), 18);
    p2m_get_stats(p, &st);
    assert_int_equal(st.merges[2], 1);
    /* 2M leaves whose base is 2M- but not 1G-aligned: no 1G */
    const gfn_t G2 = 2ULL << 18;
    assert_int_equal(p2m_set_range(p, G2, (3ULL << 18) + 512, 1ULL << 18, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, G2), 9);
    /* set_range with 1G-aligned mfn: a 1G leaf straight away */
    assert_int_equal(p2m_set_range(p, 3ULL << 18, 5ULL << 18, 1ULL << 18, p2m_mmio), 0);
    assert_int_equal(order_at(p, 3ULL << 18), 18);
    p2m_get_stats(p, &st);
    uint64_t tables = st.tables;
    /* a 1G leaf over a populated subtree frees its tables */
    assert_int_equal(p2m_set_entry(p, G2, 0, 18, p2m_ram_ro), 0);
    P2M_AUDIT_OK(p);
    p2m_get_stats(p, &st);
    assert_int_equal(st.tables, tables - 1);
    assert_int_equal(st.leaves[1][p2m_ram_rw], 3); /* 0, 1024, 1536 */
    p2m_destroy(p);

    /* explicit coalesce with automatic coalescing off */
    p = mk(0);
    p2m_set_auto_coalesce(p, false);
    assert_int_equal(fill_2m(p, 0, M, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 0);
    assert_int_equal(fill_2m(p, 512, M + 512, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 0);
    for (gfn_t i = 2; i < 512; i++)
        assert_int_equal(p2m_set_entry(p, i * 512, M + i * 512, 9, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, 0), 0);
    /* coalescing a sub-range merges the table that overlaps it */
    assert_int_equal(p2m_coalesce(p, 5, 1), 1);
    assert_int_equal(order_at(p, 0), 9);
    assert_int_equal(order_at(p, 512), 0);
    assert_int_equal(p2m_coalesce(p, 0, 1ULL << 18), 2); /* 512.. and the 1G */
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, 600), 18);
    assert_int_equal(p2m_coalesce(p, 0, 1ULL << 18), 0);
    /* empty tables are freed by coalesce but not counted */
    assert_int_equal(p2m_set_entry(p, 1ULL << 30, M, 0, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 30, 0, 0, p2m_invalid), 0);
    struct p2m_stats st2;
    p2m_get_stats(p, &st2);
    assert_int_equal(st2.tables, 2 + 3);
    assert_int_equal(p2m_coalesce(p, 0, P2M_GFN_LIMIT), 0);
    p2m_get_stats(p, &st2);
    assert_int_equal(st2.tables, 2);
    /* turning automatic coalescing on merges what is left */
    assert_int_equal(fill_2m(p, 1ULL << 18, M, p2m_ram_rw, 999, 0, p2m_ram_rw, &r), 0);
    p2m_set_auto_coalesce(p, true);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, 1ULL << 18), 9);
    p2m_destroy(p);
}

/* ---- 4. pool exhaustion and fault injection ------------------------------ */

/* A random mutating op (deterministic for rng state); returns its rc. */
static int random_op(struct p2m *p, struct hv_rng *r, gfn_t span)
{
    gfn_t g = hv_rng_below(r, span);
    enum p2m_type t = all_types[hv_rng_below(r, 6)];
    switch (hv_rng_below(r, 7)) {
    case 0: return p2m_set_entry(p, g, g + (1ULL << 18), 0, t);
    case 1: {
        g &= ~511ULL;
        return p2m_set_entry(p, g, g + (1ULL << 18), 9, t);
    }
    case 2: {
        g &= ~((1ULL << 18) - 1);
        return p2m_set_entry(p, g, g + (1ULL << 18), 18, t);
    }
    case 3: {
        uint64_t nr = 1 + hv_rng_below(r, hv_rng_below(r, 4) ? 3000 : 1ULL << 19);
        if (g + nr > span)
            nr = span - g;
        return p2m_set_range(p, g, g + (hv_rng_below(r, 2) ? (1ULL << 18) : 3), nr, t);
    }
    case 4: {
        uint64_t nr = 1 + hv_rng_below(r, 5000);
        if (g + nr > span)
            nr = span - g;
        return hv_rng_below(r, 2) ? p2m_change_type(p, g, nr, p2m_ram_rw, p2m_ram_logdirty)
                                  : p2m_change_type(p, g, nr, p2m_invalid, p2m_pod);
    }
    case 5: {
        int rc = p2m_split(p, g);
        return rc < 0 ? rc : 0;
    }
    default: return p2m_set_range(p, g & ~511ULL, 0, 1 + hv_rng_below(r, 2000), p2m_invalid);
    }
}

static void test_fault_injection(void **state)
{
    struct dump before = { 0 }, after = { 0 };
    const gfn_t span = 1ULL << 20;
    unsigned failures_seen = 0, multi = 0;
    for (unsigned run = 0; run < 2; run++) {
        struct p2m *p = mk(0);
        p2m_set_auto_coalesce(p, run == 0);
        struct hv_rng r = { 1000 + run };
        for (unsigned n = 0; n < 400; n++) {
            struct hv_rng saved = r;
            take_dump(p, &before);
            unsigned k;
            int rc = -ENOMEM;
            /* every allocation index; sparser beyond 32 for huge ops */
            for (k = 1; k < 4096; k += k < 32 ? 1 : k / 8) {
                r = saved;
                p2m_trim(p); /* every table must be a fresh allocation */
                struct p2m_stats s0, s1;
                p2m_get_stats(p, &s0);
                fault_arm((long)k, FAULT_SITE_TABLE);
                rc = random_op(p, &r, span);
                bool hit = hv_fault_countdown == 0 && hv_fault_sites;
                fault_disarm();
                if (rc != -ENOMEM) {
                    assert_false(hit);
                    break;
                }
                assert_true(hit);
                failures_seen++;
                p2m_get_stats(p, &s1);
                assert_int_equal(s1.table_alloc_failures, s0.table_alloc_failures + 1);
                take_dump(p, &after);
                assert_same_dump(&before, &after);
                P2M_AUDIT_OK(p);
            }
            assert_true(k < 4096);
            if (k > 2)
                multi++;
            assert_int_equal(rc, 0);
            P2M_AUDIT_OK(p);
        }
        p2m_destroy(p);
    }
    assert_true(failures_seen > 100);
    assert_true(multi > 10); /* ops needing several tables were exercised */

    /* a small pool: ops fail with -ENOMEM and change nothing */
    for (unsigned run = 0; run < 4; run++) {
        struct p2m *p = mk(3 + run * 3);
        p2m_set_auto_coalesce(p, run % 2 == 0);
        struct hv_rng r = { 77 + run };
        unsigned fails = 0, oks = 0;
        for (unsigned n = 0; n < 1500; n++) {
            take_dump(p, &before);
            int rc = random_op(p, &r, span);
            if (rc == -ENOMEM) {
                fails++;
                take_dump(p, &after);
                assert_same_dump(&before, &after);
            } else {
                assert_int_equal(rc, 0);
                oks++;
            }
            P2M_AUDIT_OK(p);
            struct p2m_stats st;
            p2m_get_stats(p, &st);
            assert_true(st.tables <= st.max_tables);
            assert_true(st.tables_peak <= st.max_tables);
        }
        assert_true(fails > 10);
        assert_true(oks > 100);
        p2m_destroy(p);
    }
    /* exact reservation: a 4K change in a 1G leaf needs exactly 2 tables */
    struct p2m *p = mk(4);
    assert_int_equal(p2m_set_entry(p, 0, 0, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 18, 1ULL << 18, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 5, 1, 0, p2m_ram_rw), 0); /* tables 2 + 2 = 4 */
    assert_int_equal(p2m_set_entry(p, (1ULL << 18) + 5, 1, 0, p2m_ram_rw), -ENOMEM);
    assert_int_equal(p2m_split(p, (1ULL << 18) + 5), -ENOMEM);
    P2M_AUDIT_OK(p);
    p2m_destroy(p);
    /* creation honours the fault site */
    struct p2m *q = NULL;
    fault_arm(1, FAULT_SITE_TABLE);
    assert_int_equal(p2m_create(&q, 1, NULL, 0), -ENOMEM);
    fault_arm(1, FAULT_SITE_MEM);
    assert_int_equal(p2m_create(&q, 1, NULL, 0), -ENOMEM);
    fault_disarm();
    free(before.v);
    free(after.v);
}

/* ---- 5. errors ----------------------------------------------------------- */

static void test_errors(void **state)
{
    struct p2m *p = mk(0);
    struct dump before = { 0 }, after = { 0 };
    assert_int_equal(p2m_set_entry(p, 0, 1ULL << 18, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_add_4k_range(p, 1ULL << 20, 10), 0);
    take_dump(p, &before);
    assert_int_equal(p2m_set_entry(p, 1, 0, 9, p2m_ram_rw), -EINVAL);       /* gfn */
    assert_int_equal(p2m_set_entry(p, 512, 1, 9, p2m_ram_rw), -EINVAL);     /* mfn */
    assert_int_equal(p2m_set_entry(p, 512, 512, 18, p2m_ram_rw), -EINVAL);  /* gfn for 1G */
    assert_int_equal(p2m_set_entry(p, 0, 512, 18, p2m_mmio), -EINVAL);      /* mfn for 1G */
    assert_int_equal(p2m_set_entry(p, 0, 0, 1, p2m_ram_rw), -EINVAL);       /* order */
    assert_int_equal(p2m_set_entry(p, 0, 0, 27, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_entry(p, 0, 0, 0, P2M_NR_TYPES), -EINVAL);     /* type */
    assert_int_equal(p2m_set_entry(p, P2M_GFN_LIMIT, 0, 0, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_entry(p, P2M_GFN_LIMIT - 512, 0, 18, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_entry(p, 0, 1ULL << 40, 0, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_entry(p, 1ULL << 20, 0, 9, p2m_ram_rw), -EINVAL);    /* 4K-only */
    assert_int_equal(p2m_set_entry(p, 1ULL << 20, 0, 9, p2m_pod), -EINVAL);
    assert_int_equal(p2m_set_entry(p, 1ULL << 20, 1ULL << 18, 18, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_range(p, P2M_GFN_LIMIT - 5, 0, 6, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_range(p, 5, 0, UINT64_MAX, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_set_range(p, 5, (1ULL << 40) - 2, 3, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_change_type(p, 0, 10, p2m_ram_rw, p2m_mmio), -EINVAL);
    assert_int_equal(p2m_change_type(p, 0, 10, p2m_pod, p2m_ram_rw), -EINVAL);
    assert_int_equal(p2m_change_type(p, P2M_GFN_LIMIT, 1, p2m_ram_rw, p2m_ram_ro), -EINVAL);
    assert_int_equal(p2m_add_4k_range(p, 0, 0), -EINVAL);
    assert_int_equal(p2m_add_4k_range(p, P2M_GFN_LIMIT - 1, 2), -EINVAL);
    take_dump(p, &after);
    assert_same_dump(&before, &after);
    P2M_AUDIT_OK(p);
    /* gfn beyond the limit reads as unmapped */
    enum p2m_type t = p2m_ram_rw;
    unsigned o = 5;
    assert_int_equal(p2m_get_entry(p, P2M_GFN_LIMIT, &t, &o), INVALID_MFN);
    assert_int_equal(t, p2m_invalid);
    assert_null(p2m_lookup_leaf(p, P2M_GFN_LIMIT, NULL, NULL));
    /* unmapped: order of the empty region, capped */
    (void)p2m_get_entry(p, 1ULL << 30, &t, &o);
    assert_int_equal(t, p2m_invalid);
    assert_int_equal(o, 18);
    /* set_range cuts 4K pieces in 4K-only ranges, valid to the last gfn */
    assert_int_equal(p2m_set_range(p, 1ULL << 20, 1ULL << 21, 1ULL << 18, p2m_ram_rw), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, (1ULL << 20) + 5), 0);
    assert_int_equal(order_at(p, (1ULL << 20) + 512), 9);
    assert_int_equal(p2m_set_range(p, P2M_GFN_LIMIT - 512, 0, 512, p2m_ram_rw), 0);
    assert_int_equal(order_at(p, P2M_GFN_LIMIT - 1), 9);
    /* adding a 4K-only range over a 1G leaf splits it down to 4K */
    assert_int_equal(p2m_add_4k_range(p, 1000, 3), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(order_at(p, 1001), 0);
    assert_int_equal(order_at(p, 600), 0);
    assert_int_equal(order_at(p, 1500), 9);
    assert_int_equal(order_at(p, 512 * 9), 9);
    assert_int_equal(p2m_get_entry(p, 1001, NULL, NULL), (1ULL << 18) + 1001);
    assert_true(p2m_range_is_4k_only(p, 512, 9));
    assert_false(p2m_range_is_4k_only(p, 1024, 9));
    for (int i = 2; i < P2M_MAX_4K_RANGES; i++)
        assert_int_equal(p2m_add_4k_range(p, (1ULL << 30) + i * 4096ULL, 1), 0);
    assert_int_equal(p2m_add_4k_range(p, 1ULL << 31, 1), -ENOSPC);
    P2M_AUDIT_OK(p);
    free(before.v);
    free(after.v);
    p2m_destroy(p);
}

/* ---- iteration and statistics -------------------------------------------- */

struct iter_ctx {
    unsigned n;
    gfn_t last;
    unsigned stop_at;
};
static int iter_cb(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order, enum p2m_type type,
                   ept_entry_t *e)
{
    struct iter_ctx *c = ctx;
    assert_true(c->n == 0 || gfn > c->last);
    c->last = gfn;
    if (++c->n == c->stop_at)
        return 42;
    return 0;
}

static void test_iteration(void **state)
{
    struct p2m *p = mk(0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 18, 0, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 512, 512, 9, p2m_mmio), 0);
    assert_int_equal(p2m_set_entry(p, 7, 0, 0, p2m_pod), 0);
    assert_int_equal(p2m_set_entry(p, 9, 3, 0, p2m_ram_ro), 0);
    struct iter_ctx c = { 0, 0, 0 };
    assert_int_equal(p2m_for_each_leaf(p, 0, P2M_GFN_LIMIT, iter_cb, &c), 0);
    assert_int_equal(c.n, 4);
    c = (struct iter_ctx){ 0, 0, 2 };
    assert_int_equal(p2m_for_each_leaf(p, 0, P2M_GFN_LIMIT, iter_cb, &c), 42);
    c = (struct iter_ctx){ 0, 0, 0 };
    assert_int_equal(p2m_for_each_leaf(p, (1ULL << 18) + 100, 1, iter_cb, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.last, 1ULL << 18);
    assert_int_equal(p2m_pages_at(p, 18), 1);
    assert_int_equal(p2m_pages_at(p, 9), 1);
    assert_int_equal(p2m_pages_at(p, 0), 1); /* pod not counted */
    assert_int_equal(p2m_pages_at(p, 3), 0);
    struct p2m_stats st;
    p2m_get_stats(p, &st);
    assert_int_equal(p2m_table_bytes(p), st.tables * 4096);
    assert_int_equal(st.leaves[0][p2m_pod], 1);
    assert_string_equal(p2m_type_name(p2m_ram_logdirty), "ram_logdirty");
    P2M_AUDIT_OK(p);
    /* corruption is caught */
    unsigned lv;
    ept_entry_t *le = p2m_lookup_leaf(p, 9, &lv, NULL);
    ept_entry_t saved = *le;
    *le |= EPT_W; /* ram_ro must be r-x */
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    *le = saved | (1ULL << 7); /* SP at level 1 */
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    *le = saved | (1ULL << 10); /* reserved bit */
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    *le = saved;
    le = p2m_lookup_leaf(p, 512, &lv, NULL);
    saved = *le;
    *le += 1ULL << EPT_MFN_SHIFT; /* misaligned 2M mfn */
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    *le = saved;
    P2M_AUDIT_OK(p);
    p2m_destroy(p);
}

/* ---- frame ownership ------------------------------------------------------- */

#ifdef P2M_TEST_FRAMES_STUB
static void test_frames_owner(void **state)
{
    struct p2m *p = NULL;
    const struct frames *fake = (const struct frames *)&stub_owned_limit;
    assert_int_equal(p2m_create(&p, 1, fake, 0), 0);
    assert_int_equal(p2m_set_entry(p, 0, 1ULL << 18, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 18, (1ULL << 30) - 512, 9, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 19, 1ULL << 35, 0, p2m_mmio), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(p2m_set_entry(p, 1ULL << 20, 1ULL << 30, 0, p2m_ram_rw), 0);
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    p2m_destroy(p);
}
#else
static void test_frames_owner(void **state)
{
    struct frames *f = NULL;
    assert_int_equal(frames_create(&f, 1ULL << 20, FRAME_POLICY_BUDDY), 0);
    struct p2m *p = NULL;
    assert_int_equal(p2m_create(&p, 1, f, 0), 0);
    mfn_t m1g, m2m, m4k[512], other;
    assert_int_equal(frame_alloc(f, 18, 1, &m1g), 0);
    assert_int_equal(frame_alloc(f, 9, 1, &m2m), 0);
    for (int i = 0; i < 512; i++)
        assert_int_equal(frame_alloc(f, 0, 1, &m4k[i]), 0);
    assert_int_equal(frame_alloc(f, 0, 2, &other), 0);
    assert_int_equal(p2m_set_entry(p, 0, m1g, 18, p2m_ram_rw), 0);
    assert_int_equal(p2m_set_entry(p, 1ULL << 18, m2m, 9, p2m_ram_rw), 0);
    for (int i = 0; i < 512; i++)
        assert_int_equal(p2m_set_entry(p, (1ULL << 18) + 512 + i, m4k[i], 0, p2m_ram_ro), 0);
    P2M_AUDIT_OK(p);
    /* a 2M leaf over 4K extents is checked extent by extent */
    assert_int_equal(frame_free(f, m1g + 4096, 0, 1), 0);
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    assert_int_equal(p2m_set_entry(p, 0, 0, 18, p2m_invalid), 0);
    P2M_AUDIT_OK(p);
    assert_int_equal(p2m_set_entry(p, 5, other, 0, p2m_ram_rw), 0);
    assert_int_equal(p2m_audit(p), -EUCLEAN);
    assert_int_equal(p2m_set_entry(p, 5, other, 0, p2m_mmio), 0); /* not RAM */
    P2M_AUDIT_OK(p);
    p2m_destroy(p);
    frames_destroy(f);
}
#endif

/* ---- hot path sanity (not a benchmark: just that it is not absurd) ------- */

static void test_lookup_speed(void **state)
{
    struct p2m *p = mk(0);
    const uint64_t n = 1ULL << 20;
    assert_int_equal(p2m_set_range(p, 0, 1ULL << 18, n, p2m_ram_rw), 0);
    struct hv_rng r = { 9 };
    uint64_t sum = 0;
    uint64_t t0 = hv_now_ns();
    for (unsigned i = 0; i < 1000000; i++) {
        gfn_t g = hv_rng_below(&r, n);
        sum += p2m_get_entry(p, g, NULL, NULL) - g;
    }
    uint64_t t1 = hv_now_ns();
    assert_int_equal(sum, 1000000ULL << 18);
    print_message("# get_entry: %.1f ns/lookup (1G-mapped, this build)\n",
                  (double)(t1 - t0) / 1e6);
    p2m_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_path),
        cmocka_unit_test(test_change_type_boundaries),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_iteration),
        cmocka_unit_test(test_frames_owner),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_lookup_speed),
        cmocka_unit_test_setup_teardown(test_differential, model_setup, model_teardown),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
