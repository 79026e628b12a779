/*
 * test_frames.c - the machine-frame allocator against a flat model.
 *
 * The model is one owner per frame (DOMID_INVALID = free) plus the list of
 * allocated extents the contract implies (alloc adds one; freeing a piece
 * splits its extent buddy-style).  Because free buddies always merge, the
 * free extents are a function of the set of free frames (each free run is
 * cut into maximal aligned blocks), so free-extent counts, allocatable
 * counts and the Linux indices are all derived from the model by brute
 * force and compared with the allocator's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "frames.h"

#define NOWN 9u /* model owners 0..8; owner 8 never allocates */

struct ext {
    mfn_t mfn;
    unsigned order;
    domid_t owner;
};

struct model {
    uint64_t nr;
    domid_t *own;
    uint8_t *scrubbed;
    uint32_t *prefix; /* prefix[i] = free frames in [0, i) (refreshed) */
    uint64_t scrub_frames;
    unsigned scrub_calls;
    bool scrub_bad;
    struct ext *held;
    size_t nheld, cap;
    uint64_t owned[NOWN];
    unsigned n_alloc, n_nomem, n_free, n_einval, n_eperm; /* coverage */
};

static void scrub_cb(void *ctx, mfn_t mfn, unsigned order)
{
    struct model *m = ctx;
    m->scrub_calls++;
    if (mfn + order_pages(order) > m->nr) {
        m->scrub_bad = true;
        return;
    }
    for (uint64_t i = mfn; i < mfn + order_pages(order); i++) {
        /* model not yet updated: the frame must still be allocated */
        if (m->own[i] == DOMID_INVALID || m->scrubbed[i])
            m->scrub_bad = true;
        m->scrubbed[i] = 1;
    }
    m->scrub_frames += order_pages(order);
}

static void model_init(struct model *m, uint64_t nr)
{
    memset(m, 0, sizeof(*m));
    m->nr = nr;
    m->own = malloc(nr * sizeof(*m->own));
    m->scrubbed = calloc(nr, 1);
    m->prefix = malloc((nr + 1) * sizeof(*m->prefix));
    assert_non_null(m->own);
    assert_non_null(m->scrubbed);
    assert_non_null(m->prefix);
    for (uint64_t i = 0; i < nr; i++)
        m->own[i] = DOMID_INVALID;
}

static void model_fini(struct model *m)
{
    free(m->own);
    free(m->scrubbed);
    free(m->prefix);
    free(m->held);
}

static void held_push(struct model *m, mfn_t mfn, unsigned order, domid_t owner)
{
    if (m->nheld == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->held = realloc(m->held, m->cap * sizeof(*m->held));
        assert_non_null(m->held);
    }
    m->held[m->nheld++] = (struct ext){mfn, order, owner};
}

/* Free extents per order derived from the free frames of the model. */
static void model_free_extents(struct model *m, uint64_t cnt[NR_ORDERS])
{
    memset(cnt, 0, NR_ORDERS * sizeof(cnt[0]));
    m->prefix[0] = 0;
    for (uint64_t i = 0; i < m->nr; i++)
        m->prefix[i + 1] = m->prefix[i] + (m->own[i] == DOMID_INVALID);
    for (uint64_t i = 0; i < m->nr;) {
        if (m->own[i] != DOMID_INVALID) {
            i++;
            continue;
        }
        unsigned k = 0;
        while (k < MAX_ORDER && is_aligned_order(i, k + 1) &&
               i + order_pages(k + 1) <= m->nr &&
               m->prefix[i + order_pages(k + 1)] - m->prefix[i] == order_pages(k + 1))
            k++;
        cnt[k]++;
        i += order_pages(k);
    }
}

/* Is there an aligned, entirely free block of 2^order frames in the model? */
static bool model_can_alloc(const struct model *m, unsigned order)
{
    for (uint64_t b = 0; b + order_pages(order) <= m->nr; b += order_pages(order)) {
        uint64_t i;
        for (i = b; i < b + order_pages(order); i++)
            if (m->own[i] != DOMID_INVALID)
                break;
        if (i == b + order_pages(order))
            return true;
    }
    return false;
}

static void check_audit(const struct frames *f)
{
    int rc = frames_audit(f);
    if (rc)
        print_message("audit: %s\n", hv_audit_last());
    assert_int_equal(rc, 0);
}

/* Full comparison of counters, indices and audit against the model. */
static void check_full(struct frames *f, struct model *m)
{
    check_audit(f);
    uint64_t cnt[NR_ORDERS], free_pages = 0, blocks = 0;
    model_free_extents(m, cnt);
    struct frame_stats st;
    frames_get_stats(f, &st);
    for (unsigned k = 0; k < NR_ORDERS; k++) {
        assert_int_equal(st.free_extents[k], cnt[k]);
        free_pages += cnt[k] << k;
        blocks += cnt[k];
    }
    assert_int_equal(st.free_frames, free_pages);
    assert_int_equal(st.nr_frames, m->nr);
    for (unsigned k = 0; k < NR_ORDERS; k++) {
        uint64_t suitable = 0;
        for (unsigned j = k; j < NR_ORDERS; j++)
            suitable += cnt[j] << (j - k);
        assert_int_equal(frames_allocatable(f, k), suitable);
        /* Linux mm/vmstat.c, in thousandths */
        double unusable = free_pages
            ? (double)((free_pages - (suitable << k)) * 1000 / free_pages) / 1000.0
            : 0.0;
        double extfrag;
        if (!blocks)
            extfrag = 0.0;
        else if (suitable)
            extfrag = -1.0;
        else {
            /* Linux's value, clamped at 0 as frames.c documents */
            double t = (double)((1000 + free_pages * 1000 / order_pages(k)) / blocks);
            extfrag = t >= 1000.0 ? 0.0 : (1000.0 - t) / 1000.0;
        }
        assert_true(frames_unusable_index(f, k) == unusable);
        assert_true(frames_extfrag_index(f, k) == extfrag);
        assert_true(unusable >= 0.0 && unusable <= 1.0);
        assert_true(extfrag == -1.0 || (extfrag >= 0.0 && extfrag <= 1.0));
    }
}

static void check_owned(struct frames *f, struct model *m)
{
    uint64_t used = 0;
    for (unsigned d = 0; d < NOWN; d++) {
        assert_int_equal(frames_owned(f, d), m->owned[d]);
        used += m->owned[d];
    }
    struct frame_stats st;
    frames_get_stats(f, &st);
    assert_int_equal(st.free_frames, m->nr - used);
}

/* Expected result of frame_free() by the model. */
static int model_free_expect(const struct model *m, mfn_t mfn, unsigned order,
                             domid_t owner, size_t *idx)
{
    if (order > MAX_ORDER || !is_aligned_order(mfn, order) || mfn >= m->nr ||
        mfn + order_pages(order) > m->nr)
        return -EINVAL;
    for (size_t i = 0; i < m->nheld; i++) {
        const struct ext *e = &m->held[i];
        if (mfn >= e->mfn && mfn < e->mfn + order_pages(e->order)) {
            if (e->owner != owner || e->order < order)
                return -EPERM;
            *idx = i;
            return 0;
        }
    }
    return -EPERM;
}

/* Apply a successful free of [mfn, 2^order) inside held[idx] to the model. */
static void model_apply_free(struct model *m, size_t idx, mfn_t mfn, unsigned order)
{
    struct ext e = m->held[idx];
    m->held[idx] = m->held[--m->nheld];
    while (e.order > order) {
        e.order--;
        mfn_t upper = e.mfn + order_pages(e.order);
        if (mfn >= upper) {
            held_push(m, e.mfn, e.order, e.owner);
            e.mfn = upper;
        } else {
            held_push(m, upper, e.order, e.owner);
        }
    }
    assert_int_equal(e.mfn, mfn);
    for (uint64_t i = mfn; i < mfn + order_pages(order); i++) {
        assert_int_not_equal(m->own[i], DOMID_INVALID);
        assert_true(m->scrubbed[i]); /* the hook saw every freed frame */
        m->scrubbed[i] = 0;
        m->own[i] = DOMID_INVALID;
    }
    m->owned[e.owner] -= order_pages(order);
}

/* Do frame_free and compare with the model's expectation. */
static void do_free(struct frames *f, struct model *m, mfn_t mfn, unsigned order,
                    domid_t owner)
{
    size_t idx = 0;
    int want = model_free_expect(m, mfn, order, owner, &idx);
    struct frame_stats before, after;
    frames_get_stats(f, &before);
    m->scrub_frames = 0;
    m->scrub_calls = 0;
    int rc = frame_free(f, mfn, order, owner);
    assert_int_equal(rc, want);
    assert_false(m->scrub_bad);
    m->n_free += rc == 0;
    m->n_einval += rc == -EINVAL;
    m->n_eperm += rc == -EPERM;
    if (rc) {
        frames_get_stats(f, &after);
        assert_memory_equal(&before, &after, sizeof(before));
        assert_int_equal(m->scrub_calls, 0);
        return;
    }
    assert_int_equal(m->scrub_frames, order_pages(order));
    model_apply_free(m, idx, mfn, order);
}

static unsigned random_order(struct hv_rng *r, unsigned max_order)
{
    uint64_t d = hv_rng_below(r, 100);
    unsigned o;
    if (d < 55)
        o = 0;
    else if (d < 70)
        o = 1 + (unsigned)hv_rng_below(r, 3);
    else if (d < 85)
        o = PAGE_ORDER_2M;
    else if (d < 93)
        o = 4 + (unsigned)hv_rng_below(r, 5);
    else if (d < 98)
        o = 10 + (unsigned)hv_rng_below(r, 8);
    else
        o = PAGE_ORDER_1G;
    return o > max_order ? (unsigned)hv_rng_below(r, max_order + 1) : o;
}

/* One random operation; returns nothing, asserts everything. */
static void random_op(struct frames *f, struct model *m, struct hv_rng *r,
                      unsigned max_order, uint64_t opno, bool thorough)
{
    bool grow = (opno / 700) % 2 == 0;
    uint64_t d = hv_rng_below(r, 100);
    if (d < 5) {
        /* arbitrary (mostly bogus) free */
        mfn_t mfn = hv_rng_below(r, m->nr + 64);
        unsigned order = (unsigned)hv_rng_below(r, NR_ORDERS + 1);
        if (hv_rng_below(r, 2))
            mfn &= ~(order_pages(order) - 1);
        do_free(f, m, mfn, order, (domid_t)hv_rng_below(r, NOWN));
    } else if (m->nheld && d < (grow ? 40u : 70u)) {
        size_t i = hv_rng_below(r, m->nheld);
        struct ext e = m->held[i];
        unsigned s = hv_rng_below(r, 2) ? e.order : (unsigned)hv_rng_below(r, e.order + 1);
        mfn_t mfn = e.mfn + (hv_rng_below(r, order_pages(e.order - s)) << s);
        domid_t who = e.owner;
        if (hv_rng_below(r, 10) == 0)
            who = (domid_t)((e.owner + 1 + hv_rng_below(r, NOWN - 1)) % NOWN);
        do_free(f, m, mfn, s, who);
    } else {
        unsigned order = random_order(r, max_order);
        domid_t who = (domid_t)hv_rng_below(r, NOWN - 1);
        mfn_t mfn = INVALID_MFN;
        struct frame_stats before, after;
        frames_get_stats(f, &before);
        m->scrub_calls = 0;
        int rc = frame_alloc(f, order, who, &mfn);
        assert_int_equal(m->scrub_calls, 0);
        if (rc) {
            m->n_nomem++;
            assert_int_equal(rc, -ENOMEM);
            frames_get_stats(f, &after);
            assert_int_equal(after.alloc_failures[order], before.alloc_failures[order] + 1);
            after.alloc_failures[order]--;
            assert_memory_equal(&before, &after, sizeof(before));
            assert_int_equal(frames_allocatable(f, order), 0);
            if (thorough)
                assert_false(model_can_alloc(m, order));
            return;
        }
        assert_true(mfn < m->nr && is_aligned_order(mfn, order));
        assert_true(mfn + order_pages(order) <= m->nr);
        for (uint64_t i = mfn; i < mfn + order_pages(order); i++) {
            assert_int_equal(m->own[i], DOMID_INVALID);
            m->own[i] = who;
        }
        unsigned ho = 99;
        assert_int_equal(frame_owner(f, mfn, &ho), who);
        assert_int_equal(ho, order);
        assert_int_equal(frame_owner(f, mfn + order_pages(order) - 1, &ho), who);
        assert_int_equal(ho, order);
        held_push(m, mfn, order, who);
        m->owned[who] += order_pages(order);
        m->n_alloc++;
    }
    check_owned(f, m);
    for (int s = 0; s < 4; s++) {
        mfn_t x = hv_rng_below(r, m->nr);
        assert_int_equal(frame_owner(f, x, NULL), m->own[x]);
    }
    assert_int_equal(frame_owner(f, m->nr, NULL), DOMID_INVALID);
}

static void run_random(enum frame_policy pol, uint64_t nr, unsigned max_order,
                       unsigned nops, unsigned audit_every, uint64_t seed)
{
    struct frames *f;
    assert_int_equal(frames_create(&f, nr, pol), 0);
    struct model m;
    model_init(&m, nr);
    frames_set_scrub(f, scrub_cb, &m);
    struct hv_rng r = {seed};
    check_full(f, &m);
    for (unsigned op = 0; op < nops; op++) {
        bool thorough = op % audit_every == 0;
        random_op(f, &m, &r, max_order, op, thorough);
        if (thorough)
            check_full(f, &m);
    }
    struct frame_stats st;
    frames_get_stats(f, &st);
    print_message("%s %llu frames: %u allocs, %u -ENOMEM, %u frees, %u -EINVAL, "
                  "%u -EPERM; %llu frag blocks, %llu frag regions\n",
                  frame_policy_name(pol), (unsigned long long)nr, m.n_alloc, m.n_nomem,
                  m.n_free, m.n_einval, m.n_eperm, (unsigned long long)st.frag_blocks,
                  (unsigned long long)st.frag_regions);
    /* Free everything that is left: the machine is whole again. */
    while (m.nheld)
        do_free(f, &m, m.held[m.nheld - 1].mfn, m.held[m.nheld - 1].order,
                m.held[m.nheld - 1].owner);
    check_full(f, &m);
    frames_get_stats(f, &st);
    assert_int_equal(st.free_frames, nr);
    assert_int_equal(st.frag_regions, (nr & (order_pages(18) - 1)) ? 1 : 0);
    model_fini(&m);
    frames_destroy(f);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_create_invalid(void **state)
{
    struct frames *f = NULL;
    assert_int_equal(frames_create(&f, 0, FRAME_POLICY_FRAGPOOL), -EINVAL);
    assert_int_equal(frames_create(&f, 0, FRAME_POLICY_BUDDY), -EINVAL);
    assert_int_equal(frames_create(&f, 16, (enum frame_policy)7), -EINVAL);
    assert_null(f);
    enum frame_policy p;
    assert_int_equal(frame_policy_parse("buddy", &p), 0);
    assert_int_equal(p, FRAME_POLICY_BUDDY);
    assert_int_equal(frame_policy_parse("fragpool", &p), 0);
    assert_int_equal(p, FRAME_POLICY_FRAGPOOL);
    assert_int_equal(frame_policy_parse("slab", &p), -EINVAL);
    assert_string_equal(frame_policy_name(FRAME_POLICY_BUDDY), "buddy");
    assert_string_equal(frame_policy_name(FRAME_POLICY_FRAGPOOL), "fragpool");
    /* fault injection on metadata allocation */
    fault_arm(1, FAULT_SITE_MEM);
    assert_int_equal(frames_create(&f, 1000, FRAME_POLICY_FRAGPOOL), -ENOMEM);
    fault_arm(4, FAULT_SITE_MEM);
    assert_int_equal(frames_create(&f, 1000, FRAME_POLICY_FRAGPOOL), -ENOMEM);
    fault_disarm();
}

/* Odd sizes are carved into maximal aligned extents (binary decomposition). */
static void test_create_layout(void **state)
{
    const uint64_t sizes[] = {1, 3, 511, 513, 262143, 3 * 262144 + 12345, 5 * 262144};
    for (int pol = 0; pol < 2; pol++)
        for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
            struct frames *f;
            uint64_t nr = sizes[i];
            assert_int_equal(frames_create(&f, nr, (enum frame_policy)pol), 0);
            assert_int_equal(frames_nr(f), nr);
            assert_int_equal(frames_policy(f), (enum frame_policy)pol);
            struct frame_stats st;
            frames_get_stats(f, &st);
            assert_int_equal(st.free_frames, nr);
            uint64_t big = nr >> MAX_ORDER;
            assert_int_equal(st.free_extents[MAX_ORDER], big);
            for (unsigned k = 0; k < MAX_ORDER; k++)
                assert_int_equal(st.free_extents[k], (nr >> k) & 1);
            /* blocks / regions containing a sub-order extent */
            assert_int_equal(st.frag_blocks, (nr & 511) ? 1 : 0);
            assert_int_equal(st.frag_regions, (nr & (order_pages(18) - 1)) ? 1 : 0);
            check_audit(f);
            frames_destroy(f);
        }
}

static void test_bad_args(void **state)
{
    for (int pol = 0; pol < 2; pol++) {
        struct frames *f;
        assert_int_equal(frames_create(&f, 4096 + 100, (enum frame_policy)pol), 0);
        mfn_t mfn = 0;
        assert_int_equal(frame_alloc(f, MAX_ORDER + 1, 1, &mfn), -EINVAL);
        assert_int_equal(frame_alloc(f, 0, DOMID_INVALID, &mfn), -EINVAL);
        /* too big for the machine */
        assert_int_equal(frame_alloc(f, 13, 1, &mfn), -ENOMEM);
        struct frame_stats st;
        frames_get_stats(f, &st);
        assert_int_equal(st.alloc_failures[13], 1);
        assert_int_equal(frame_alloc(f, 12, 1, &mfn), 0);
        assert_int_equal(mfn, 0);
        assert_int_equal(frame_alloc(f, 12, 1, &mfn), -ENOMEM);
        /* free errors: nothing changes */
        struct frame_stats a, b;
        frames_get_stats(f, &a);
        assert_int_equal(frame_free(f, 1, 1, 1), -EINVAL);       /* misaligned */
        assert_int_equal(frame_free(f, 4196, 0, 1), -EINVAL);    /* out of range */
        assert_int_equal(frame_free(f, 4096, 7, 1), -EINVAL);    /* runs past end */
        assert_int_equal(frame_free(f, 0, MAX_ORDER + 1, 1), -EINVAL);
        assert_int_equal(frame_free(f, 0, 13, 1), -EINVAL);      /* past end */
        assert_int_equal(frame_free(f, 0, 12, 2), -EPERM);       /* wrong owner */
        assert_int_equal(frame_free(f, 4096, 0, 1), -EPERM);     /* free frame */
        assert_int_equal(frame_free(f, 0, 12, DOMID_INVALID), -EPERM);
        frames_get_stats(f, &b);
        assert_memory_equal(&a, &b, sizeof(a));
        check_audit(f);
        /* double free */
        assert_int_equal(frame_free(f, 2048, 11, 1), 0);
        assert_int_equal(frame_free(f, 2048, 11, 1), -EPERM);
        assert_int_equal(frame_free(f, 2048, 0, 1), -EPERM);
        assert_int_equal(frames_owned(f, 1), 2048);
        /* two separate extents of the same owner cannot be freed as one */
        mfn_t x, y;
        assert_int_equal(frame_free(f, 0, 11, 1), 0);
        assert_int_equal(frame_alloc(f, 0, 3, &x), 0);
        assert_int_equal(frame_alloc(f, 0, 3, &y), 0);
        assert_true((x ^ y) == 1);
        assert_int_equal(frame_free(f, x & ~1ULL, 1, 3), -EPERM);
        assert_int_equal(frame_free(f, x, 0, 3), 0);
        assert_int_equal(frame_free(f, y, 0, 3), 0);
        frames_get_stats(f, &st);
        assert_int_equal(st.free_frames, 4196);
        assert_int_equal(frame_owner(f, 5000, NULL), DOMID_INVALID);
        check_audit(f);
        frames_destroy(f);
    }
}

struct scrub_log {
    uint64_t frames;
    unsigned calls;
};
static void count_scrub(void *ctx, mfn_t mfn, unsigned order)
{
    struct scrub_log *l = ctx;
    l->frames += order_pages(order);
    l->calls++;
}

/* A 4K freed inside an allocated 1G splits it; freeing the rest piece by
 * piece (random order) merges it back into one free 1G. */
static void test_split_1g_and_merge(void **state)
{
    for (int pol = 0; pol < 2; pol++) {
        struct frames *f;
        assert_int_equal(frames_create(&f, 2 * order_pages(18) + 7, (enum frame_policy)pol), 0);
        struct scrub_log log = {0};
        frames_set_scrub(f, count_scrub, &log);
        mfn_t g;
        assert_int_equal(frame_alloc(f, MAX_ORDER, 5, &g), 0);
        assert_true(is_aligned_order(g, MAX_ORDER));
        struct hv_rng r = {42 + (uint64_t)pol};
        mfn_t hole = g + hv_rng_below(&r, order_pages(18));
        assert_int_equal(frame_free(f, hole, 0, 5), 0);
        assert_int_equal(log.frames, 1);
        assert_int_equal(frames_owned(f, 5), order_pages(18) - 1);
        assert_int_equal(frame_owner(f, hole, NULL), DOMID_INVALID);
        check_audit(f);
        /* the remaining pieces: one of each order 0..17, all still owner 5 */
        mfn_t pieces[MAX_ORDER];
        for (unsigned k = 0; k < MAX_ORDER; k++) {
            mfn_t p = (hole ^ order_pages(k)) & ~(order_pages(k) - 1);
            unsigned ho;
            assert_int_equal(frame_owner(f, p, &ho), 5);
            assert_int_equal(ho, k);
            assert_int_equal(frame_owner(f, p + order_pages(k) - 1, &ho), 5);
            assert_int_equal(ho, k);
            pieces[k] = p;
        }
        /* a range across two pieces is refused */
        assert_int_equal(frame_free(f, g, MAX_ORDER, 5), -EPERM);
        for (unsigned i = MAX_ORDER; i > 1; i--) {
            unsigned j = (unsigned)hv_rng_below(&r, i); /* shuffle */
            mfn_t tmp = pieces[j];
            pieces[j] = pieces[i - 1];
            pieces[i - 1] = tmp;
        }
        for (unsigned i = 0; i < MAX_ORDER; i++) {
            unsigned ho;
            assert_int_equal(frame_owner(f, pieces[i], &ho), 5);
            assert_int_equal(frame_free(f, pieces[i], ho, 5), 0);
            check_audit(f);
        }
        assert_int_equal(log.frames, order_pages(18));
        assert_int_equal(frames_owned(f, 5), 0);
        struct frame_stats st;
        frames_get_stats(f, &st);
        assert_int_equal(st.free_extents[MAX_ORDER], 2);
        assert_int_equal(frames_allocatable(f, MAX_ORDER), 2);
        frames_destroy(f);
    }
}

static void test_fault_injection(void **state)
{
    for (int pol = 0; pol < 2; pol++) {
        struct frames *f;
        assert_int_equal(frames_create(&f, 3 * 512 + 5, (enum frame_policy)pol), 0);
        mfn_t m;
        assert_int_equal(frame_alloc(f, 0, 1, &m), 0);
        struct frame_stats a, b;
        frames_get_stats(f, &a);
        fault_arm(1, FAULT_SITE_FRAME);
        assert_int_equal(frame_alloc(f, 3, 1, &m), -ENOMEM);
        check_audit(f);
        frames_get_stats(f, &b);
        assert_int_equal(b.alloc_failures[3], a.alloc_failures[3] + 1);
        b.alloc_failures[3]--;
        assert_memory_equal(&a, &b, sizeof(a));
        assert_int_equal(frames_owned(f, 1), 1);
        /* other sites do not hit frame_alloc; the n-th attempt fails */
        fault_arm(1, FAULT_SITE_TABLE);
        assert_int_equal(frame_alloc(f, 0, 1, &m), 0);
        fault_arm(3, FAULT_SITE_FRAME);
        assert_int_equal(frame_alloc(f, 0, 1, &m), 0);
        assert_int_equal(frame_alloc(f, 0, 1, &m), 0);
        assert_int_equal(frame_alloc(f, 0, 1, &m), -ENOMEM);
        assert_int_equal(frame_alloc(f, 0, 1, &m), 0);
        fault_disarm();
        assert_int_equal(frames_owned(f, 1), 5);
        check_audit(f);
        frames_destroy(f);
    }
}

static void test_random_small_fragpool(void **state)
{
    run_random(FRAME_POLICY_FRAGPOOL, 5 * 512 + 77, 12, 6000, 1, 1);
    run_random(FRAME_POLICY_FRAGPOOL, 700, 9, 3000, 1, 2);
}

static void test_random_small_buddy(void **state)
{
    run_random(FRAME_POLICY_BUDDY, 5 * 512 + 77, 12, 6000, 1, 1);
    run_random(FRAME_POLICY_BUDDY, 700, 9, 3000, 1, 2);
}

static void test_random_large_fragpool(void **state)
{
    run_random(FRAME_POLICY_FRAGPOOL, 3 * order_pages(18) + 12345, MAX_ORDER, 6000, 200, 3);
}

static void test_random_large_buddy(void **state)
{
    run_random(FRAME_POLICY_BUDDY, 3 * order_pages(18) + 12345, MAX_ORDER, 6000, 200, 3);
}

/* Indices in a hand-checkable state, derived from the model as well. */
static void test_indices(void **state)
{
    for (int pol = 0; pol < 2; pol++) {
        struct frames *f;
        assert_int_equal(frames_create(&f, 1024, (enum frame_policy)pol), 0);
        struct model m;
        model_init(&m, 1024);
        check_full(f, &m);
        /* allocate everything in 4K, then free every other frame: 512 free
         * order-0 extents, nothing at order >= 1 */
        for (unsigned i = 0; i < 1024; i++) {
            mfn_t x;
            assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
            m.own[x] = 1;
        }
        assert_int_equal(frames_extfrag_index(f, 0), 0.0); /* nothing free */
        assert_int_equal(frames_unusable_index(f, 0), 0.0);
        for (unsigned i = 0; i < 1024; i += 2) {
            assert_int_equal(frame_free(f, i, 0, 1), 0);
            m.own[i] = DOMID_INVALID;
        }
        check_full(f, &m);
        assert_true(frames_unusable_index(f, 0) == 0.0);
        assert_true(frames_unusable_index(f, 1) == 1.0);
        assert_true(frames_extfrag_index(f, 0) == -1.0);
        /* 1000 - (1000 + 512 * 1000 / 2) / 512 = 499 thousandths */
        assert_true(frames_extfrag_index(f, 1) == 0.499);
        assert_int_equal(frames_allocatable(f, 0), 512);
        assert_int_equal(frames_allocatable(f, 1), 0);
        /* random churn, compare at every step */
        struct hv_rng r = {77};
        for (unsigned op = 0; op < 400; op++) {
            mfn_t x = hv_rng_below(&r, 1024);
            if (m.own[x] == DOMID_INVALID) {
                unsigned o = (unsigned)hv_rng_below(&r, 4);
                mfn_t y;
                if (frame_alloc(f, o, 1, &y) == 0)
                    for (uint64_t i = y; i < y + order_pages(o); i++)
                        m.own[i] = 1;
            } else {
                unsigned ho;
                assert_int_equal(frame_owner(f, x, &ho), 1);
                assert_int_equal(frame_free(f, x, 0, 1), 0);
                m.own[x] = DOMID_INVALID;
            }
            check_full(f, &m);
        }
        model_fini(&m);
        frames_destroy(f);
    }
}

/*
 * Directed fragpool behaviour: 4K goes to the fullest fragment block that
 * can serve it; 2M goes to the already-split 1G region.
 */
static void test_fragpool_fullest(void **state)
{
    struct frames *f;
    assert_int_equal(frames_create(&f, 3 * order_pages(18), FRAME_POLICY_FRAGPOOL), 0);
    mfn_t x, first;
    assert_int_equal(frame_alloc(f, 0, 1, &first), 0);
    mfn_t blk0 = first >> 9;
    for (unsigned i = 1; i < 512; i++) {
        assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
        assert_int_equal(x >> 9, blk0); /* fills the same block */
    }
    assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
    mfn_t blk1 = x >> 9;
    assert_int_not_equal(blk1, blk0);
    assert_int_equal(x >> 18, first >> 18); /* same 1G region */
    for (unsigned i = 1; i < 100; i++) {
        assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
        assert_int_equal(x >> 9, blk1);
    }
    /* block 0: free 40 even frames (free count 40, only order 0);
     * block 1: 412 free, with big extents */
    for (unsigned i = 0; i < 80; i += 2)
        assert_int_equal(frame_free(f, (blk0 << 9) + 100 + i, 0, 1), 0);
    struct frame_stats st;
    frames_get_stats(f, &st);
    assert_int_equal(st.frag_blocks, 2);
    assert_int_equal(st.frag_regions, 1);
    assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
    assert_int_equal(x >> 9, blk0); /* the fullest block */
    assert_int_equal(frame_alloc(f, 1, 1, &x), 0);
    assert_int_equal(x >> 9, blk1); /* block 0 has no free pair */
    /* make block 1 fuller than block 0 (39 free): free block-0 pairs */
    assert_int_equal(frame_free(f, (blk0 << 9) + 300, 0, 1), 0);
    assert_int_equal(frame_free(f, (blk0 << 9) + 301, 0, 1), 0);
    assert_int_equal(frame_alloc(f, 1, 1, &x), 0);
    assert_int_equal(x, (blk0 << 9) + 300); /* best fit inside the fullest */
    /* 2M requests stay in the split region; 1G takes a whole region */
    mfn_t g;
    assert_int_equal(frame_alloc(f, MAX_ORDER, 2, &g), 0);
    assert_int_not_equal(g >> 18, first >> 18);
    for (unsigned i = 0; i < 100; i++) {
        assert_int_equal(frame_alloc(f, 9, 2, &x), 0);
        assert_int_equal(x >> 18, first >> 18);
    }
    frames_get_stats(f, &st);
    assert_int_equal(st.frag_regions, 1);
    check_audit(f);
    frames_destroy(f);
}

/* Buddy: head of the smallest non-empty list, LIFO. */
static void test_buddy_lifo(void **state)
{
    struct frames *f;
    assert_int_equal(frames_create(&f, 4096, FRAME_POLICY_BUDDY), 0);
    mfn_t a[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(frame_alloc(f, 0, 1, &a[i]), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(a[i], (mfn_t)i); /* lowest half first */
    assert_int_equal(frame_free(f, 2, 0, 1), 0);
    assert_int_equal(frame_free(f, 5, 0, 1), 0);
    mfn_t x;
    assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
    assert_int_equal(x, 5); /* last freed first */
    assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
    assert_int_equal(x, 2);
    check_audit(f);
    frames_destroy(f);
}

/*
 * Seeded churn of 4K allocations (domain 1) whose population grows, shrinks
 * well below its peak, churns steadily and grows again, interleaved with 2M
 * allocations of domain 2 (superpages coming and going).  Then the 2M
 * pieces are freed.  The op sequence depends only on the seed as long as no
 * allocation fails (asserted), so both policies see the same workload.
 */
static void churn(struct frames *f, uint64_t seed, unsigned scale)
{
    static const struct {
        unsigned ops, pfree; /* ops (x scale), percent of 4K steps that free */
    } phases[] = {{10, 20}, {10, 70}, {20, 50}, {3, 20}};
    unsigned nops = 0;
    for (size_t p = 0; p < ARRAY_SIZE(phases); p++)
        nops += phases[p].ops * scale;
    struct hv_rng r = {seed};
    mfn_t *p4 = malloc(nops * sizeof(*p4)), *p2 = malloc(nops * sizeof(*p2));
    assert_non_null(p4);
    assert_non_null(p2);
    size_t n4 = 0, n2 = 0;
    uint64_t cap2 = frames_nr(f) * 2 / 5 / 512;
    for (size_t p = 0; p < ARRAY_SIZE(phases); p++)
        for (unsigned op = 0; op < phases[p].ops * scale; op++) {
            if (hv_rng_below(&r, 10) < 8) {
                if (n4 && hv_rng_below(&r, 100) < phases[p].pfree) {
                    size_t i = hv_rng_below(&r, n4);
                    assert_int_equal(frame_free(f, p4[i], 0, 1), 0);
                    p4[i] = p4[--n4];
                } else {
                    assert_int_equal(frame_alloc(f, 0, 1, &p4[n4]), 0);
                    n4++;
                }
            } else {
                if (n2 && (n2 >= cap2 || hv_rng_below(&r, 100) < 45)) {
                    size_t i = hv_rng_below(&r, n2);
                    assert_int_equal(frame_free(f, p2[i], 9, 2), 0);
                    p2[i] = p2[--n2];
                } else {
                    assert_int_equal(frame_alloc(f, 9, 2, &p2[n2]), 0);
                    n2++;
                }
            }
        }
    while (n2)
        assert_int_equal(frame_free(f, p2[--n2], 9, 2), 0);
    free(p4);
    free(p2);
}

static void test_policy_comparison(void **state)
{
    const uint64_t nr = 4 * order_pages(18) + 3 * 512;
    const uint64_t seeds[] = {1, 2};
    for (size_t s = 0; s < ARRAY_SIZE(seeds); s++) {
        uint64_t a9[2], a18[2], owned[2];
        for (int pol = 0; pol < 2; pol++) {
            struct frames *f;
            assert_int_equal(frames_create(&f, nr, (enum frame_policy)pol), 0);
            churn(f, seeds[s], 10000);
            check_audit(f);
            a9[pol] = frames_allocatable(f, 9);
            a18[pol] = frames_allocatable(f, 18);
            owned[pol] = frames_owned(f, 1);
            assert_int_equal(frames_owned(f, 2), 0);
            frames_destroy(f);
        }
        assert_int_equal(owned[0], owned[1]); /* same workload */
        print_message("churn seed %llu: %llu 4K held; allocatable 2M fragpool %llu "
                      "buddy %llu, 1G fragpool %llu buddy %llu\n",
                      (unsigned long long)seeds[s], (unsigned long long)owned[0],
                      (unsigned long long)a9[0], (unsigned long long)a9[1],
                      (unsigned long long)a18[0], (unsigned long long)a18[1]);
        assert_true(a9[0] > a9[1]);
        assert_true(a18[0] >= a18[1]);
    }
}

static void test_fragment(void **state)
{
    const uint64_t nr = order_pages(20);
    uint64_t a9[2], a18[2];
    for (int pol = 0; pol < 2; pol++) {
        struct frames *f, *g;
        assert_int_equal(frames_create(&f, nr, (enum frame_policy)pol), 0);
        assert_int_equal(frames_create(&g, nr, (enum frame_policy)pol), 0);
        uint64_t ops = 0, ops2 = 0, t0 = hv_now_ns();
        assert_int_equal(frames_fragment(f, 7, 0.25, 0.5, 99, &ops), 0);
        uint64_t t1 = hv_now_ns();
        assert_int_equal(frames_fragment(g, 7, 0.25, 0.5, 99, &ops2), 0);
        assert_int_equal(ops, ops2);
        assert_int_equal(frames_owned(f, 7), nr / 4);
        check_audit(f);
        struct frame_stats sf, sg;
        frames_get_stats(f, &sf);
        frames_get_stats(g, &sg);
        assert_memory_equal(&sf, &sg, sizeof(sf)); /* deterministic */
        a9[pol] = frames_allocatable(f, 9);
        a18[pol] = frames_allocatable(f, 18);
        print_message("fragment %s: %llu ops in %.1f ms, allocatable 2M %llu 1G %llu, "
                      "unusable(9) %.3f extfrag(18) %.3f\n",
                      frame_policy_name((enum frame_policy)pol), (unsigned long long)ops,
                      (double)(t1 - t0) / 1e6, (unsigned long long)a9[pol],
                      (unsigned long long)a18[pol], frames_unusable_index(f, 9),
                      frames_extfrag_index(f, 18));
        frames_destroy(g);
        /* an unreachable target fails and gives back what it took */
        assert_int_equal(frames_create(&g, 16 * 512, (enum frame_policy)pol), 0);
        mfn_t x;
        assert_int_equal(frames_fragment(g, 7, 0.25, 0.5, 99, NULL), 0);
        assert_int_equal(frame_alloc(g, 0, 3, &x), 0);
        uint64_t before = frames_owned(g, 7);
        assert_int_equal(frames_fragment(g, 8, 1.0, 0.9, 5, NULL), -ENOMEM);
        assert_int_equal(frames_owned(g, 8), 0);
        assert_int_equal(frames_owned(g, 7), before);
        check_audit(g);
        assert_int_equal(frames_fragment(g, DOMID_INVALID, 0.1, 0.5, 1, NULL), -EINVAL);
        frames_destroy(f);
        frames_destroy(g);
    }
    assert_true(a9[0] > a9[1]);
    assert_true(a18[0] >= a18[1]);
}

/* A big machine must not commit metadata for untouched frames. */
static void test_big_machine_lazy(void **state)
{
    struct frames *f;
    const uint64_t nr = 16 * order_pages(20) + 3; /* 64 GiB + 12K */
    assert_int_equal(frames_create(&f, nr, FRAME_POLICY_FRAGPOOL), 0);
    mfn_t x, y;
    assert_int_equal(frame_alloc(f, 0, 1, &x), 0);
    assert_int_equal(frame_alloc(f, 18, 1, &y), 0);
    assert_int_equal(frame_free(f, y + 12345, 0, 1), 0);
    assert_int_equal(frame_owner(f, y + 12344, NULL), 1);
    assert_int_equal(frame_free(f, x, 0, 1), 0);
    assert_int_equal(frames_owned(f, 1), order_pages(18) - 1);
    check_audit(f);
    frames_destroy(f);
}

static uint64_t t_start;
static int timer_start(void **state)
{
    t_start = hv_now_ns();
    return 0;
}
static int timer_stop(void **state)
{
    print_message("(%.0f ms)\n", (double)(hv_now_ns() - t_start) / 1e6);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_invalid, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_create_layout, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_bad_args, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_split_1g_and_merge, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_fault_injection, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_buddy_lifo, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_fragpool_fullest, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_indices, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_random_small_fragpool, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_random_small_buddy, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_random_large_fragpool, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_random_large_buddy, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_policy_comparison, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_fragment, timer_start, timer_stop),
        cmocka_unit_test_setup_teardown(test_big_machine_lazy, timer_start, timer_stop),
    };
    hv_test_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
