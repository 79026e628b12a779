/*
 * dirty.c - log-dirty with PML semantics that keeps superpages (dirty.h).
 *
 * State: one struct dirty_log per domain while enabled (d->logdirty): the
 * dirty bitmap, a ground-truth bitmap of the gfns vCPUs really wrote (only
 * used for the over-marking figure), and the list of superpages log-dirty
 * split (to check at disable which were merged back).  Automatic coalescing
 * is off while enabled (d->no_auto_coalesce), so splits stay split and 512
 * writable 4K leaves never re-merge behind the log's back.
 *
 * "Shaping" puts the p2m in the form a mode needs, from any mode's form:
 *   split-on-write: ram_rw superpages -> ram_logdirty;
 *   eager-split:    every RAM superpage split to 4K, then logdirty -> rw;
 *   coarse:         logdirty -> rw.
 * and then clears every D bit.  It is only run after everything logged so
 * far is in the bitmap (PML flushed, coarse D bits scanned), so clearing D
 * loses nothing.
 *
 * Invariants (while enabled, outside a call):
 *  - split-on-write: no ram_rw superpage leaf except ones degraded after a
 *    failed split (whose gfns are all marked, or D clear);
 *  - every RAM leaf with D set has all its 4K gfns marked in the bitmap or
 *    a PML entry pending in some vCPU's buffer (coarse: or is found by the
 *    harvest-time D scan);
 *  - every change of a translation, permission or D bit bumps d->p2m_gen.
 */
#include "dirty.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct split_rec {
    gfn_t gfn;
    unsigned order;
};

struct dirty_log {
    enum dirty_mode mode;
    uint64_t nr_gfns; /* bits in bitmap / written, a multiple of 64 */
    uint64_t *bitmap;
    uint64_t *written;
    bool grow_failed;
    struct split_rec *splits;
    size_t nsplits, cap;
    uint64_t before_4k, before_2m, before_1g;
    struct dirty_stats st;
};

static const char *const mode_names[DIRTY_NR_MODES] = {
    "split-on-write", "eager-split", "coarse",
};

const char *dirty_mode_name(enum dirty_mode m)
{
    return (unsigned)m < DIRTY_NR_MODES ? mode_names[m] : "?";
}

int dirty_mode_parse(const char *s, enum dirty_mode *out)
{
    for (unsigned i = 0; i < DIRTY_NR_MODES; i++)
        if (!strcmp(s, mode_names[i])) {
            *out = (enum dirty_mode)i;
            return 0;
        }
    return -EINVAL;
}

/* ---- bitmaps -------------------------------------------------------------- */

static inline size_t words_of(uint64_t nr_gfns) { return (size_t)((nr_gfns + 63) / 64); }

static void bits_set(uint64_t *bm, uint64_t g, uint64_t nr)
{
    while (nr && (g & 63)) {
        bm[g / 64] |= 1ULL << (g & 63);
        g++;
        nr--;
    }
    for (; nr >= 64; nr -= 64, g += 64)
        bm[g / 64] = ~0ULL;
    for (; nr; nr--, g++)
        bm[g / 64] |= 1ULL << (g & 63);
}

/* First set bit at or after g, or nr. */
static uint64_t next_set(const uint64_t *bm, uint64_t g, uint64_t nr)
{
    while (g < nr) {
        uint64_t w = bm[g / 64] >> (g & 63);
        if (w)
            return g + (uint64_t)__builtin_ctzll(w);
        g = (g | 63) + 1;
    }
    return nr;
}

/* Make the bitmaps cover gfns [0, end).  Sizes grow in 1G steps. */
static int ensure(struct dirty_log *dl, uint64_t end)
{
    if (end <= dl->nr_gfns)
        return 0;
    uint64_t nr = (end + (1ULL << 18) - 1) & ~((1ULL << 18) - 1);
    uint64_t *b = hv_calloc(words_of(nr), sizeof(uint64_t));
    uint64_t *w = hv_calloc(words_of(nr), sizeof(uint64_t));
    if (!b || !w) {
        free(b);
        free(w);
        return -ENOMEM;
    }
    if (dl->nr_gfns) {
        memcpy(b, dl->bitmap, words_of(dl->nr_gfns) * sizeof(uint64_t));
        memcpy(w, dl->written, words_of(dl->nr_gfns) * sizeof(uint64_t));
    }
    free(dl->bitmap);
    free(dl->written);
    dl->bitmap = b;
    dl->written = w;
    dl->nr_gfns = nr;
    return 0;
}

static void mark(struct dirty_log *dl, gfn_t g, uint64_t nr)
{
    if (ensure(dl, g + nr) < 0) {
        dl->grow_failed = true; /* harvest reports -ENOMEM from now on */
        if (g >= dl->nr_gfns)
            return;
        nr = dl->nr_gfns - g < nr ? dl->nr_gfns - g : nr;
    }
    bits_set(dl->bitmap, g, nr);
}

/* RAM came or went at [g, g + nr): the guest-visible content of those gfns
 * changed as surely as if a vCPU had written them, so they are marked and
 * count as written (the over-marking figure is about writes the log
 * reports too widely, not about map changes). */
static void mark_map_change(struct dirty_log *dl, gfn_t g, uint64_t nr)
{
    mark(dl, g, nr);
    if (g >= dl->nr_gfns)
        return;
    bits_set(dl->written, g, dl->nr_gfns - g < nr ? dl->nr_gfns - g : nr);
}

/* ---- PML -------------------------------------------------------------------- */

void dirty_pml_register(struct domain *d, struct pml_buffer *pml)
{
    pml->n = 0;
    pml->next = d->pml_buffers;
    d->pml_buffers = pml;
}

void dirty_pml_unregister(struct domain *d, struct pml_buffer *pml)
{
    for (struct pml_buffer **pp = &d->pml_buffers; *pp; pp = &(*pp)->next)
        if (*pp == pml) {
            /* Its entries must not be lost if the vCPU goes away. */
            if (d->logdirty && pml->n)
                dirty_pml_full(d, pml);
            *pp = pml->next;
            return;
        }
}

/*
 * A flushed GPA marks its gfn, or the whole RAM superpage leaf that maps it
 * now if that leaf's D bit is set.  A superpage with D clear cannot have
 * logged the entry (D is only cleared after a flush): the entry is from an
 * earlier mapping of the gfn (a 4K leaf since unmapped and repopulated as
 * part of a new superpage), so only its own 4K was written.
 */
static void flush_one(struct domain *d, struct dirty_log *dl, struct pml_buffer *pml)
{
    for (unsigned i = 0; i < pml->n; i++) {
        gfn_t g = pml->gpa[i] >> PAGE_SHIFT;
        unsigned level = 0;
        ept_entry_t *e = p2m_lookup_leaf(d->p2m, g, &level, NULL);
        if (e && level > 1 && p2m_is_ram(ept_type(*e)) && (*e & EPT_D)) {
            uint64_t n = order_pages(9u * (level - 1u));
            mark(dl, g & ~(n - 1), n);
        } else {
            mark(dl, g, 1);
        }
    }
    dl->st.pml_flushed += pml->n;
    pml->n = 0;
}

static uint64_t flush_all(struct domain *d, struct dirty_log *dl)
{
    uint64_t before = dl->st.pml_flushed;
    for (struct pml_buffer *b = d->pml_buffers; b; b = b->next)
        flush_one(d, dl, b);
    return dl->st.pml_flushed - before;
}

void dirty_pml_full(struct domain *d, struct pml_buffer *pml)
{
    struct dirty_log *dl = d->logdirty;
    if (!dl) {
        pml->n = 0;
        return;
    }
    dl->st.pml_full_exits++;
    flush_one(d, dl, pml);
}

void dirty_note_write(struct domain *d, gfn_t gfn)
{
    struct dirty_log *dl = d->logdirty;
    if (!dl)
        return;
    if (gfn >= dl->nr_gfns && ensure(dl, gfn + 1) < 0) {
        dl->grow_failed = true;
        return;
    }
    dl->written[gfn / 64] |= 1ULL << (gfn & 63);
}

/* ---- leaf walks ------------------------------------------------------------- */

struct dscan {
    struct dirty_log *dl;
    bool mark; /* mark D-set leaves before clearing */
    uint64_t cleared, marked;
};

static int dscan_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                      enum p2m_type type, ept_entry_t *e)
{
    struct dscan *s = ctx;
    (void)mfn;
    if (!p2m_is_ram(type) || !(*e & EPT_D))
        return 0;
    if (s->mark) {
        mark(s->dl, gfn, order_pages(order));
        s->marked += order_pages(order);
    }
    *e &= ~EPT_D;
    s->cleared++;
    return 0;
}

/* Clear every RAM leaf's D bit, marking the leaf first when `do_mark`. */
static void dscan(struct domain *d, struct dirty_log *dl, bool do_mark)
{
    struct dscan s = {.dl = dl, .mark = do_mark};
    (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, dscan_leaf, &s);
    if (do_mark) {
        dl->st.dscan_marked += s.marked;
        dl->st.d_cleared += s.cleared;
    }
    d->p2m_gen++;
}

struct sp_list {
    struct split_rec *v;
    size_t n, cap;
    bool rw_only;
    int rc;
};

static int collect_sp(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                      enum p2m_type type, ept_entry_t *e)
{
    struct sp_list *l = ctx;
    (void)mfn;
    (void)e;
    if (order == 0 || !p2m_is_ram(type) || type == p2m_ram_ro)
        return 0;
    if (l->rw_only && type != p2m_ram_rw)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct split_rec *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return l->rc = -ENOMEM;
        if (l->n)
            memcpy(v, l->v, l->n * sizeof(*v));
        free(l->v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (struct split_rec){gfn, order};
    return 0;
}

struct extent {
    gfn_t end;
};

static int max_end(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                   enum p2m_type type, ept_entry_t *e)
{
    struct extent *x = ctx;
    (void)mfn;
    (void)e;
    if ((p2m_is_ram(type) || type == p2m_pod) && gfn + order_pages(order) > x->end)
        x->end = gfn + order_pages(order);
    return 0;
}

/* ---- splitting ----------------------------------------------------------- */

static int record_split(struct dirty_log *dl, gfn_t gfn, unsigned order)
{
    if (order == PAGE_ORDER_1G)
        dl->st.splits_1g++;
    else
        dl->st.splits_2m++;
    if (dl->nsplits == dl->cap) {
        size_t cap = dl->cap ? dl->cap * 2 : 64;
        struct split_rec *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return -ENOMEM; /* only the recovery report loses the entry */
        if (dl->nsplits)
            memcpy(v, dl->splits, dl->nsplits * sizeof(*v));
        free(dl->splits);
        dl->splits = v;
        dl->cap = cap;
    }
    dl->splits[dl->nsplits++] = (struct split_rec){gfn, order};
    return 0;
}

/* Split the superpage leaf at gfn (of `order`) all the way to 4K. */
static int split_fully(struct domain *d, struct dirty_log *dl, gfn_t gfn, unsigned order)
{
    int rc = p2m_split(d->p2m, gfn);
    if (rc < 0)
        return rc;
    (void)record_split(dl, gfn, order);
    if (order == PAGE_ORDER_1G) {
        for (unsigned i = 0; i < P2M_ENTRIES; i++) {
            gfn_t g = gfn + ((gfn_t)i << PAGE_ORDER_2M);
            rc = p2m_split(d->p2m, g);
            if (rc < 0)
                return rc;
            (void)record_split(dl, g, PAGE_ORDER_2M);
        }
    }
    return 0;
}

/* Put the p2m in the form `mode` needs (see the file comment). */
static int shape(struct domain *d, struct dirty_log *dl, enum dirty_mode mode)
{
    struct p2m *p = d->p2m;
    int rc = 0;
    struct sp_list l = {.rw_only = mode == DIRTY_SPLIT_ON_WRITE};
    if (mode != DIRTY_COARSE) {
        rc = p2m_for_each_leaf(p, 0, P2M_GFN_LIMIT, collect_sp, &l);
        if (rc < 0)
            goto out;
    }
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        if (mode == DIRTY_SPLIT_ON_WRITE)
            rc = p2m_change_type(p, l.v[i].gfn, order_pages(l.v[i].order), p2m_ram_rw,
                                 p2m_ram_logdirty);
        else
            rc = split_fully(d, dl, l.v[i].gfn, l.v[i].order);
    }
    if (rc == 0 && mode != DIRTY_SPLIT_ON_WRITE) {
        /* Whole leaves only: needs no table, cannot fail. */
        rc = p2m_change_type(p, 0, P2M_GFN_LIMIT, p2m_ram_logdirty, p2m_ram_rw);
        assert(rc == 0);
    }
out:
    free(l.v);
    d->p2m_gen++;
    if (rc == 0) {
        dscan(d, dl, false);
        dl->mode = mode;
    }
    return rc;
}

/* Undo every mode's form: all RAM writable, merged back, auto-coalescing on.
 * Returns the number of merges. */
static long unshape(struct domain *d)
{
    struct p2m *p = d->p2m;
    int rc = p2m_change_type(p, 0, P2M_GFN_LIMIT, p2m_ram_logdirty, p2m_ram_rw);
    assert(rc == 0);
    (void)rc;
    long merges = p2m_coalesce(p, 0, P2M_GFN_LIMIT);
    d->no_auto_coalesce = false;
    p2m_set_auto_coalesce(p, true);
    d->p2m_gen++;
    return merges;
}

static void log_free(struct dirty_log *dl)
{
    if (!dl)
        return;
    free(dl->bitmap);
    free(dl->written);
    free(dl->splits);
    free(dl);
}

/* ---- enable / mode ---------------------------------------------------------- */

int dirty_enable(struct domain *d, enum dirty_mode mode)
{
    int rc;
    if ((unsigned)mode >= DIRTY_NR_MODES)
        return -EINVAL;
    domain_lock(d);
    if (d->logdirty) {
        rc = -EBUSY;
        goto out;
    }
    struct dirty_log *dl = hv_calloc(1, sizeof(*dl));
    if (!dl) {
        rc = -ENOMEM;
        goto out;
    }
    struct extent x = {0};
    (void)p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, max_end, &x);
    rc = ensure(dl, x.end ? x.end : 1);
    if (rc < 0) {
        log_free(dl);
        goto out;
    }
    dl->before_4k = domain_pages_4k(d);
    dl->before_2m = domain_pages_2m(d);
    dl->before_1g = domain_pages_1g(d);
    for (struct pml_buffer *b = d->pml_buffers; b; b = b->next)
        b->n = 0;
    d->no_auto_coalesce = true;
    p2m_set_auto_coalesce(d->p2m, false);
    d->logdirty = dl;
    rc = shape(d, dl, mode);
    if (rc < 0) {
        d->logdirty = NULL;
        (void)unshape(d);
        log_free(dl);
    }
out:
    domain_unlock(d);
    return rc;
}

/* Fold everything logged so far into the bitmap. */
static uint64_t fold(struct domain *d, struct dirty_log *dl)
{
    uint64_t n = flush_all(d, dl);
    if (dl->mode == DIRTY_COARSE)
        dscan(d, dl, true);
    return n;
}

int dirty_set_mode(struct domain *d, enum dirty_mode mode)
{
    int rc = 0;
    if ((unsigned)mode >= DIRTY_NR_MODES)
        return -EINVAL;
    domain_lock(d);
    struct dirty_log *dl = d->logdirty;
    if (!dl) {
        rc = -EINVAL;
    } else if (dl->mode != mode) {
        fold(d, dl);
        rc = shape(d, dl, mode);
        if (rc == 0)
            dl->st.mode_changes++;
    }
    domain_unlock(d);
    return rc;
}

bool dirty_enabled(const struct domain *d) { return d->logdirty != NULL; }

enum dirty_mode dirty_get_mode(const struct domain *d)
{
    return d->logdirty ? d->logdirty->mode : DIRTY_SPLIT_ON_WRITE;
}

uint64_t dirty_bitmap_gfns(const struct domain *d)
{
    return d->logdirty ? d->logdirty->nr_gfns : 0;
}

void dirty_get_stats(const struct domain *d, struct dirty_stats *st)
{
    if (d->logdirty)
        *st = d->logdirty->st;
    else
        memset(st, 0, sizeof(*st));
}

/* ---- the write fault -------------------------------------------------------- */

int dirty_write_fault(struct domain *d, gfn_t gfn)
{
    struct dirty_log *dl = d->logdirty;
    struct p2m *p = d->p2m;
    enum p2m_type t;
    unsigned order;
    if (!dl)
        return -EFAULT;
    p2m_get_entry(p, gfn, &t, &order);
    if (t != p2m_ram_logdirty)
        return 0; /* resolved meanwhile: retry */
    dl->st.wp_faults++;
    while (order > 0) {
        gfn_t base = gfn & ~(order_pages(order) - 1);
        int rc = p2m_split(p, gfn);
        if (rc == -ENOMEM) {
            /* No table: track this superpage coarsely (marked whole, D
             * set; harvest clears D and protects it again). */
            rc = p2m_change_type(p, base, order_pages(order), p2m_ram_logdirty,
                                 p2m_ram_rw);
            assert(rc == 0);
            mark(dl, base, order_pages(order));
            ept_entry_t *e = p2m_lookup_leaf(p, gfn, NULL, NULL);
            *e |= EPT_A | EPT_D;
            dl->st.split_nomem++;
            d->p2m_gen++;
            return 0;
        }
        if (rc < 0)
            return rc;
        (void)record_split(dl, base, order);
        order = (unsigned)rc;
        d->p2m_gen++;
    }
    /* The 2M block around gfn is now 4K leaves: make them writable (D clear,
     * they report through PML); the written one is marked and gets D. */
    int rc = p2m_change_type(p, gfn & ~(gfn_t)(P2M_ENTRIES - 1), P2M_ENTRIES,
                             p2m_ram_logdirty, p2m_ram_rw);
    if (rc < 0)
        return rc;
    mark(dl, gfn, 1);
    ept_entry_t *e = p2m_lookup_leaf(p, gfn, NULL, NULL);
    assert(e);
    *e |= EPT_A | EPT_D;
    d->p2m_gen++;
    return 0;
}

/* ---- RAM mapped or unmapped while enabled (lock held) ----------------------- */

void dirty_on_map(struct domain *d, gfn_t gfn, unsigned order)
{
    struct dirty_log *dl = d->logdirty;
    if (!dl)
        return;
    uint64_t nr = order_pages(order);
    /* Harvest buffers are sized by dirty_bitmap_gfns(): cover new RAM now. */
    if (ensure(dl, gfn + nr) < 0)
        dl->grow_failed = true;
    /* A new PoD entry only needs the bitmap (demand populate calls again
     * with the RAM; the entry itself travels in the migration's tail). */
    enum p2m_type t;
    p2m_get_entry(d->p2m, gfn, &t, NULL);
    if (!p2m_is_ram(t))
        return;
    /* New RAM is dirty whether or not it is ever written: a migration must
     * send it (its data, or that it is zero) in the next round. */
    mark_map_change(dl, gfn, nr);
    dl->st.map_marked += nr;
    /* A new 4K leaf is ram_rw with D clear: it reports through PML in every
     * mode, as the 4K leaves present at enable do. */
    if (order == 0 || t != p2m_ram_rw)
        return;
    assert(is_aligned_order(gfn, order));
    dl->st.sp_mapped++;
    if (dl->mode == DIRTY_COARSE)
        return; /* writable, D clear: a logged write dirties it whole */
    if (dl->mode == DIRTY_EAGER_SPLIT) {
        if (split_fully(d, dl, gfn, order) == 0)
            return;
        /* No table for a split: write-protect what is left of it instead
         * (the pieces already split too); the first write then splits or
         * degrades it as in split-on-write, so nothing is lost. */
        dl->st.map_split_nomem++;
    }
    /* split-on-write: protect it like the superpages present at enable.
     * Whole leaves only: needs no table, cannot fail. */
    int rc = p2m_change_type(d->p2m, gfn, nr, p2m_ram_rw, p2m_ram_logdirty);
    assert(rc == 0);
    (void)rc;
}

struct unmap_scan {
    struct dirty_log *dl;
    gfn_t lo, hi; /* the range being unmapped */
    uint64_t marked, d_marked;
};

static int unmap_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                      enum p2m_type type, ept_entry_t *e)
{
    struct unmap_scan *s = ctx;
    (void)mfn;
    if (!p2m_is_ram(type))
        return 0;
    gfn_t a = gfn > s->lo ? gfn : s->lo;
    gfn_t b = gfn + order_pages(order) < s->hi ? gfn + order_pages(order) : s->hi;
    mark_map_change(s->dl, a, b - a);
    s->marked += b - a;
    if (*e & EPT_D) {
        /* writes this leaf took without logging may lie outside the range
         * too (the rest of the leaf stays mapped, split) */
        mark(s->dl, gfn, order_pages(order));
        s->d_marked += order_pages(order) - (b - a);
    }
    return 0;
}

void dirty_on_unmap(struct domain *d, gfn_t gfn, uint64_t nr)
{
    struct dirty_log *dl = d->logdirty;
    if (!dl || nr == 0)
        return;
    struct unmap_scan s = {.dl = dl, .lo = gfn, .hi = gfn + nr};
    (void)p2m_for_each_leaf(d->p2m, gfn, nr, unmap_leaf, &s);
    dl->st.unmap_marked += s.marked;
    dl->st.unmap_d_marked += s.d_marked;
}

/* ---- harvest ---------------------------------------------------------------- */

static uint64_t popcount_words(const uint64_t *a, const uint64_t *not_b, size_t n)
{
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (uint64_t)__builtin_popcountll(not_b ? a[i] & ~not_b[i] : a[i]);
    return c;
}

/* Clear D on the leaves behind the harvested bits; in split-on-write,
 * protect degraded superpages again. */
static uint64_t clear_dirtied(struct domain *d, struct dirty_log *dl)
{
    struct p2m *p = d->p2m;
    uint64_t cleared = 0;
    for (gfn_t g = next_set(dl->bitmap, 0, dl->nr_gfns); g < dl->nr_gfns;) {
        unsigned level;
        ept_entry_t *e = p2m_lookup_leaf(p, g, &level, NULL);
        gfn_t next = g + 1;
        if (e && p2m_is_ram(ept_type(*e))) {
            unsigned order = 9u * (level - 1u);
            if (*e & EPT_D) {
                *e &= ~EPT_D;
                cleared++;
            }
            if (order > 0) {
                gfn_t base = g & ~(order_pages(order) - 1);
                next = base + order_pages(order);
                if (dl->mode == DIRTY_SPLIT_ON_WRITE && ept_type(*e) == p2m_ram_rw) {
                    int rc = p2m_change_type(p, base, order_pages(order), p2m_ram_rw,
                                             p2m_ram_logdirty);
                    assert(rc == 0);
                    (void)rc;
                }
            }
        }
        g = next_set(dl->bitmap, next, dl->nr_gfns);
    }
    return cleared;
}

static int copy_out(struct domain *d, bool clear, uint64_t *bitmap, uint64_t nr_gfns,
                    struct dirty_round *round)
{
    uint64_t t0 = hv_now_ns();
    struct dirty_log *dl = d->logdirty;
    if (!dl)
        return -EINVAL;
    uint64_t flushed = fold(d, dl);
    if (nr_gfns < dl->nr_gfns || !bitmap)
        return -EINVAL;
    if (dl->grow_failed)
        return -ENOMEM;
    size_t n = words_of(dl->nr_gfns);
    memcpy(bitmap, dl->bitmap, n * sizeof(uint64_t));
    memset(bitmap + n, 0, (words_of(nr_gfns) - n) * sizeof(uint64_t));
    struct dirty_round r = {
        .dirty_pages = popcount_words(dl->bitmap, NULL, n),
        .overmarked_pages = popcount_words(dl->bitmap, dl->written, n),
        .pml_flushed = flushed,
    };
    if (clear) {
        r.d_cleared = clear_dirtied(d, dl);
        memset(dl->bitmap, 0, n * sizeof(uint64_t));
        memset(dl->written, 0, n * sizeof(uint64_t));
        d->p2m_gen++;
        dl->st.rounds++;
        dl->st.pages_harvested += r.dirty_pages;
        dl->st.overmarked_pages += r.overmarked_pages;
        dl->st.d_cleared += r.d_cleared;
    } else {
        dl->st.peeks++;
    }
    r.ns = hv_now_ns() - t0;
    if (round)
        *round = r;
    return 0;
}

int dirty_harvest(struct domain *d, uint64_t *bitmap, uint64_t nr_gfns,
                  struct dirty_round *round)
{
    domain_lock(d);
    int rc = copy_out(d, true, bitmap, nr_gfns, round);
    domain_unlock(d);
    return rc;
}

int dirty_peek(struct domain *d, uint64_t *bitmap, uint64_t nr_gfns,
               struct dirty_round *round)
{
    domain_lock(d);
    int rc = copy_out(d, false, bitmap, nr_gfns, round);
    domain_unlock(d);
    return rc;
}

/* ---- disable ---------------------------------------------------------------- */

struct why {
    gfn_t gfn, end;
    mfn_t mfn0;
    enum p2m_type type0;
    uint64_t ram;
    bool first, type_differs, mfn_differs;
};

static int why_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                    enum p2m_type type, ept_entry_t *e)
{
    struct why *w = ctx;
    (void)e;
    if (!p2m_is_ram(type))
        return 0;
    gfn_t s = gfn > w->gfn ? gfn : w->gfn;
    gfn_t t = gfn + order_pages(order) < w->end ? gfn + order_pages(order) : w->end;
    mfn_t m = mfn + (s - gfn);
    if (w->first) {
        w->first = false;
        w->type0 = type;
        w->mfn0 = m - (s - w->gfn);
        if (!is_aligned_order(w->mfn0, (unsigned)__builtin_ctzll(w->end - w->gfn)))
            w->mfn_differs = true;
    }
    if (type != w->type0)
        w->type_differs = true;
    if (m != w->mfn0 + (s - w->gfn))
        w->mfn_differs = true;
    w->ram += t - s;
    return 0;
}

/* Check one split superpage after the merge: 1 recovered, else counts why. */
static int check_recovered(struct domain *d, const struct split_rec *r,
                           struct dirty_disable_result *res)
{
    enum p2m_type t;
    unsigned order;
    p2m_get_entry(d->p2m, r->gfn, &t, &order);
    if (p2m_is_ram(t) && order >= r->order)
        return 1;
    struct why w = {.gfn = r->gfn, .end = r->gfn + order_pages(r->order), .first = true};
    (void)p2m_for_each_leaf(d->p2m, w.gfn, order_pages(r->order), why_leaf, &w);
    if (p2m_range_is_4k_only(d->p2m, r->gfn, r->order))
        res->lost_only_4k++;
    else if (w.ram != order_pages(r->order))
        res->lost_unmapped++;
    else if (w.type_differs)
        res->lost_type++;
    else if (w.mfn_differs)
        res->lost_mfn++;
    else
        res->lost_other++;
    return 0;
}

int dirty_disable(struct domain *d, uint64_t *final_bitmap, uint64_t nr_gfns,
                  struct dirty_disable_result *out)
{
    int rc = 0;
    struct dirty_disable_result res;
    memset(&res, 0, sizeof(res));
    domain_lock(d);
    struct dirty_log *dl = d->logdirty;
    if (!dl || (final_bitmap && nr_gfns < dl->nr_gfns)) {
        rc = -EINVAL;
        goto out;
    }
    fold(d, dl);
    if (final_bitmap) {
        size_t n = words_of(dl->nr_gfns);
        memcpy(final_bitmap, dl->bitmap, n * sizeof(uint64_t));
        memset(final_bitmap + n, 0, (words_of(nr_gfns) - n) * sizeof(uint64_t));
    }
    res.final_dirty = popcount_words(dl->bitmap, NULL, words_of(dl->nr_gfns));
    if (dl->grow_failed)
        rc = -ENOMEM; /* still switched off below */
    d->logdirty = NULL;
    for (struct pml_buffer *b = d->pml_buffers; b; b = b->next)
        b->n = 0;
    res.merges = (uint64_t)unshape(d);
    for (size_t i = 0; i < dl->nsplits; i++) {
        const struct split_rec *r = &dl->splits[i];
        int ok = check_recovered(d, r, &res);
        if (r->order == PAGE_ORDER_1G) {
            res.split_1g++;
            res.recovered_1g += (uint64_t)ok;
            res.lost_1g += (uint64_t)!ok;
        } else {
            res.split_2m++;
            res.recovered_2m += (uint64_t)ok;
            res.lost_2m += (uint64_t)!ok;
        }
    }
    res.pages_4k_before = dl->before_4k;
    res.pages_2m_before = dl->before_2m;
    res.pages_1g_before = dl->before_1g;
    res.pages_4k_after = domain_pages_4k(d);
    res.pages_2m_after = domain_pages_2m(d);
    res.pages_1g_after = domain_pages_1g(d);
    res.stats = dl->st;
    log_free(dl);
out:
    domain_unlock(d);
    if (out)
        *out = res;
    return rc;
}
