/*
 * domain.c - populate, decrease/increase reservation, accounting, audit.
 *
 * Populate walks the requested gfn range once.  At each gfn g that is not a
 * hole and not mapped it tries, in order, a 1G then a 2M extent when the
 * layout allows it (g aligned to the order, the aligned block inside the
 * request, clear of holes and 4K-only ranges, and wholly unmapped) and falls
 * back to the next order when the frame allocator has no such extent
 * (counted as fallback_*_nomem; blocks the layout forbids count as
 * fallback_*_layout, once per aligned block).  Every piece is journalled;
 * on any error the journal is unwound in reverse, so a failed populate
 * leaves the p2m, the frames and the accounting exactly as before.  During
 * populate the p2m's automatic coalescing is off (so that unwinding never has
 * to split a merged leaf and never needs a table); switching it back on
 * merges the range that changed.
 *
 * Frames are freed by machine runs: a p2m leaf may map a run made of several
 * allocated extents (after coalescing), so frees are cut at extent borders.
 * Every free of frames that were mapped goes through free_run(), the one
 * place that parks them instead while the quarantine is on (domain.h); a
 * parked run is kept whole (runs freed back to back that continue each
 * other are merged into one) and cut only when it is released.
 *
 * PoD (pod.c holds the cache, demand populate and sweeps): populate with
 * DOMAIN_POPULATE_POD journals PoD leaves (mfn INVALID_MFN in the journal)
 * and counts them in pod.entry_count; decrease_reservation removes PoD
 * leaves in its range with the same single p2m change as RAM ones.
 */
#include "domain.h"
#include "domain_hooks.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void domain_config_default(struct domain_config *c)
{
    memset(c, 0, sizeof(*c));
    c->mmio_hole_bytes = DEFAULT_MMIO_HOLE;
}

bool domain_gfn_in_hole(const struct domain *d, gfn_t gfn)
{
    if (d->vga_hole && gfn >= VGA_HOLE_GFN && gfn < VGA_HOLE_GFN + VGA_HOLE_NR)
        return true;
    return gfn >= d->mmio_hole_start && gfn < d->mmio_hole_end;
}

/* First hole gfn at or after gfn (INVALID_GFN if none). */
static gfn_t next_hole(const struct domain *d, gfn_t gfn)
{
    gfn_t best = INVALID_GFN;
    if (d->vga_hole && gfn < VGA_HOLE_GFN + VGA_HOLE_NR)
        best = gfn > VGA_HOLE_GFN ? gfn : VGA_HOLE_GFN;
    if (d->mmio_hole_end > d->mmio_hole_start && gfn < d->mmio_hole_end) {
        gfn_t h = gfn > d->mmio_hole_start ? gfn : d->mmio_hole_start;
        if (h < best)
            best = h;
    }
    return best;
}

/* End (exclusive) of the hole containing gfn. */
static gfn_t hole_end(const struct domain *d, gfn_t gfn)
{
    if (d->vga_hole && gfn >= VGA_HOLE_GFN && gfn < VGA_HOLE_GFN + VGA_HOLE_NR)
        return VGA_HOLE_GFN + VGA_HOLE_NR;
    return d->mmio_hole_end;
}

static bool block_clear_of_holes(const struct domain *d, gfn_t gfn, unsigned order)
{
    gfn_t h = next_hole(d, gfn);
    return h == INVALID_GFN || h >= gfn + order_pages(order);
}

int domain_create(struct machine *m, const struct domain_config *c,
                  struct domain **out)
{
    int rc;
    if (c->mmio_hole_bytes % (2 * MiB) || c->mmio_hole_bytes > 4 * GiB ||
        c->nr_4k_ranges > DOMAIN_MAX_4K_RANGES)
        return -EINVAL;
    struct domain *d = hv_calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->m = m;
    d->domid = ++m->next_domid;
    if (d->domid == DOMID_INVALID) {
        rc = -ENOSPC;
        goto err_free;
    }
    d->max_pages = c->max_pages ? c->max_pages : m->nr_frames;
    d->vga_hole = !c->no_vga_hole;
    d->mmio_hole_end = GFN_4G;
    d->mmio_hole_start = GFN_4G - (c->mmio_hole_bytes >> PAGE_SHIFT);

    /* Worst case every page is 4K in a table of its own along sparse
     * ranges; the bound only has to stop runaway growth. */
    uint64_t max_tables = c->max_tables;
    if (!max_tables)
        max_tables = d->max_pages / 128 + 4096;
    rc = p2m_create(&d->p2m, d->domid, m->frames, max_tables);
    if (rc < 0)
        goto err_free;
    for (unsigned i = 0; i < c->nr_4k_ranges; i++) {
        rc = p2m_add_4k_range(d->p2m, c->ranges_4k[i].gfn, c->ranges_4k[i].nr);
        if (rc < 0)
            goto err_p2m;
    }
    pthread_mutex_init(&d->lock, NULL);
    *out = d;
    return 0;

err_p2m:
    p2m_destroy(d->p2m);
err_free:
    free(d);
    return rc;
}

/*
 * Free the machine run [mfn, mfn + nr) owned by d, cut at allocated-extent
 * borders into aligned chunks.  The run must be owned by d (audited).
 */
static void free_run_now(struct domain *d, mfn_t mfn, uint64_t nr)
{
    struct frames *f = d->m->frames;
    mfn_t end = mfn + nr;
    while (mfn < end) {
        unsigned ho = 0;
        domid_t owner = frame_owner(f, mfn, &ho);
        assert(owner == d->domid);
        if (owner != d->domid)
            break; /* cannot happen while the audit holds */
        mfn_t ext_end = (mfn & ~(order_pages(ho) - 1)) + order_pages(ho);
        mfn_t lim = ext_end < end ? ext_end : end;
        unsigned o = MAX_ORDER;
        while (o > 0 && (!is_aligned_order(mfn, o) || mfn + order_pages(o) > lim))
            o--;
        int rc = frame_free(f, mfn, o, d->domid);
        assert(rc == 0);
        (void)rc;
        mfn += order_pages(o);
    }
}

/* ---- quarantine ---------------------------------------------------------- */

static int park_grow(struct domain_quarantine *q, size_t need)
{
    if (need <= q->cap)
        return 0;
    size_t cap = q->cap ? q->cap : 64;
    while (cap < need)
        cap *= 2;
    struct parked_run *v = hv_malloc(cap * sizeof(*v));
    if (!v)
        return -ENOMEM;
    if (q->n)
        memcpy(v, q->runs, q->n * sizeof(*v));
    free(q->runs);
    q->runs = v;
    q->cap = cap;
    return 0;
}

void domain_quarantine_begin(struct domain *d)
{
    d->quarantine.on = true;
}

int domain_quarantine_reserve(struct domain *d, size_t runs)
{
    struct domain_quarantine *q = &d->quarantine;
    if (!q->on)
        return 0;
    return park_grow(q, q->n + runs);
}

/* Park [mfn, mfn + nr) (quarantine on): merged into the last run when it
 * continues it, else a new run; freed at once (counted) when there is no
 * room and no memory for more. */
static void park_run(struct domain *d, mfn_t mfn, uint64_t nr)
{
    struct domain_quarantine *q = &d->quarantine;
    struct parked_run *last = q->n ? &q->runs[q->n - 1] : NULL;
    if (last && last->mfn + last->nr == mfn) {
        last->nr += nr;
    } else if (park_grow(q, q->n + 1) == 0) {
        q->runs[q->n++] = (struct parked_run){mfn, nr};
    } else {
        if (!q->overflow)
            domain_log(d, "quarantine: no memory to park freed frames: freed at once");
        q->overflow += nr;
        free_run_now(d, mfn, nr);
        return;
    }
    q->pages += nr;
    q->parked += nr;
}

uint64_t domain_quarantine_release(struct domain *d)
{
    struct domain_quarantine *q = &d->quarantine;
    uint64_t pages = q->pages;
    for (size_t i = 0; i < q->n; i++)
        free_run_now(d, q->runs[i].mfn, q->runs[i].nr);
    q->n = 0;
    q->pages = 0;
    q->released += pages;
    return pages;
}

void domain_quarantine_end(struct domain *d)
{
    struct domain_quarantine *q = &d->quarantine;
    (void)domain_quarantine_release(d);
    q->on = false;
    free(q->runs);
    q->runs = NULL;
    q->cap = 0;
}

/* Free (or, with quarantine on, park) a run the domain had mapped. */
static void free_run(struct domain *d, mfn_t mfn, uint64_t nr)
{
    if (d->quarantine.on)
        park_run(d, mfn, nr);
    else
        free_run_now(d, mfn, nr);
}

void domain_free_frames(struct domain *d, mfn_t mfn, uint64_t nr)
{
    free_run(d, mfn, nr);
}

void domain_log(struct domain *d, const char *fmt, ...)
{
    struct domain_event *ev = &d->events[d->nr_events++ % DOMAIN_EVENTS];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev->msg, sizeof(ev->msg), fmt, ap);
    va_end(ap);
    ev->ns = hv_now_ns();
    if (getenv("HUGEVM_EVENTS"))
        fprintf(stderr, "hugevm: domain %u: %s\n", d->domid, ev->msg);
}

void domain_crash(struct domain *d, const char *fmt, ...)
{
    char msg[144];
    va_list ap;
    if (d->crashed)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    d->crashed = true;
    domain_log(d, "crashed: %s", msg);
}

const char *domain_last_event(const struct domain *d)
{
    if (!d->nr_events)
        return NULL;
    return d->events[(d->nr_events - 1) % DOMAIN_EVENTS].msg;
}

void domain_destroy(struct domain *d)
{
    if (!d)
        return;
    domain_quarantine_end(d); /* nobody reads any more: free what is parked, park no more */
    (void)domain_decrease_reservation(d, 0, P2M_GFN_LIMIT);
    pod_destroy(d);
    p2m_destroy(d->p2m);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* ---- populate ---------------------------------------------------------- */

/* A run of gfns mapped to a machine run (mfn unused when nothing is mapped). */
struct run {
    gfn_t gfn;
    mfn_t mfn;
    uint64_t nr;
};

struct journal {
    struct run *v;
    size_t n, cap;
    bool pod; /* this populate writes PoD entries (mfn INVALID_MFN) */
};

static int journal_push(struct journal *j, gfn_t gfn, mfn_t mfn, uint64_t nr)
{
    if (j->n == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 64;
        struct run *v = hv_malloc(cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        if (j->n)
            memcpy(v, j->v, j->n * sizeof(*v));
        free(j->v);
        j->v = v;
        j->cap = cap;
    }
    j->v[j->n++] = (struct run){gfn, mfn, nr};
    return 0;
}

/* Undo every journalled piece in reverse order.  With auto-coalescing off,
 * each piece is still exactly one leaf, so removing it needs no table. */
static void journal_unwind(struct domain *d, struct journal *j)
{
    while (j->n) {
        struct run *pc = &j->v[--j->n];
        unsigned order = (unsigned)__builtin_ctzll(pc->nr);
        int rc = p2m_set_entry(d->p2m, pc->gfn, INVALID_MFN, order, p2m_invalid);
        assert(rc == 0);
        if (pc->mfn == INVALID_MFN) {
            d->pod.entry_count -= pc->nr;
            continue;
        }
        rc = frame_free(d->m->frames, pc->mfn, order, d->domid);
        assert(rc == 0);
        (void)rc;
        d->tot_pages -= pc->nr;
    }
}

/* Is the aligned block [gfn, gfn + 2^order) wholly unmapped? */
static bool block_unmapped(const struct domain *d, gfn_t gfn, unsigned order)
{
    enum p2m_type t;
    unsigned lo;
    p2m_get_entry(d->p2m, gfn, &t, &lo);
    if (t != p2m_invalid)
        return false;
    if (lo >= order)
        return true;
    /* The empty region is smaller than the block: look at every leaf. */
    for (gfn_t g = gfn; g < gfn + order_pages(order);) {
        p2m_get_entry(d->p2m, g, &t, &lo);
        if (t != p2m_invalid)
            return false;
        g = (g & ~(order_pages(lo) - 1)) + order_pages(lo);
    }
    return true;
}

static int map_piece(struct domain *d, struct journal *j, gfn_t g,
                     unsigned order, struct populate_result *res)
{
    mfn_t mfn;
    int rc;
    if (g + order_pages(order) > d->pod.max_guest)
        d->pod.max_guest = g + order_pages(order);
    if (j->pod) {
        /* A PoD entry: no frame, not in tot_pages (Xen's accounting). */
        rc = journal_push(j, g, INVALID_MFN, order_pages(order));
        if (rc < 0)
            return rc;
        rc = p2m_set_entry(d->p2m, g, 0, order, p2m_pod);
        if (rc < 0) {
            j->n--;
            return rc;
        }
        d->pod.entry_count += order_pages(order);
        goto counted;
    }
    if (d->tot_pages + order_pages(order) > d->max_pages)
        return -EDQUOT;
    rc = frame_alloc(d->m->frames, order, d->domid, &mfn);
    if (rc < 0)
        return rc;
    rc = journal_push(j, g, mfn, order_pages(order));
    if (rc < 0)
        goto err_frame;
    rc = p2m_set_entry(d->p2m, g, mfn, order, p2m_ram_rw);
    if (rc < 0) {
        j->n--;
        goto err_frame;
    }
    d->tot_pages += order_pages(order);
counted:
    res->pages += order_pages(order);
    if (order == PAGE_ORDER_1G)
        res->nr_1g++;
    else if (order == PAGE_ORDER_2M)
        res->nr_2m++;
    else
        res->nr_4k++;
    return 0;
err_frame:
    frame_free(d->m->frames, mfn, order, d->domid);
    return rc;
}

/*
 * Populate the unmapped non-hole gfns of [gfn, gfn + nr) with leaves of at
 * most max_order, journalling every piece.  Statistics of fallbacks are
 * accumulated in *fb (copied to the domain only on success).
 */
static int populate_range(struct domain *d, struct journal *j, gfn_t gfn,
                          uint64_t nr, unsigned max_order,
                          struct populate_result *res, struct domain_stats *fb)
{
    gfn_t end = gfn + nr;
    gfn_t g = gfn;
    while (g < end) {
        if (domain_gfn_in_hole(d, g)) {
            g = hole_end(d, g);
            continue;
        }
        enum p2m_type t;
        unsigned lo;
        p2m_get_entry(d->p2m, g, &t, &lo);
        if (t != p2m_invalid) {
            g = (g & ~(order_pages(lo) - 1)) + order_pages(lo);
            continue;
        }
        static const unsigned orders[] = {PAGE_ORDER_1G, PAGE_ORDER_2M};
        unsigned done = 0;
        for (size_t i = 0; i < ARRAY_SIZE(orders) && !done; i++) {
            unsigned o = orders[i];
            if (o > max_order || !is_aligned_order(g, o))
                continue;
            bool layout_ok = g + order_pages(o) <= end &&
                             block_clear_of_holes(d, g, o) &&
                             !p2m_range_is_4k_only(d->p2m, g, o) &&
                             block_unmapped(d, g, o);
            if (!layout_ok) {
                if (j->pod)
                    continue;
                if (o == PAGE_ORDER_1G)
                    fb->fallback_1g_layout++;
                else
                    fb->fallback_2m_layout++;
                continue;
            }
            int rc = map_piece(d, j, g, o, res);
            if (rc == 0) {
                done = o;
                if (o == PAGE_ORDER_1G && j->pod)
                    fb->pod_entries_1g++;
                else if (o == PAGE_ORDER_1G)
                    fb->populated_1g++;
                else if (j->pod)
                    fb->pod_entries_2m++;
                else
                    fb->populated_2m++;
                g += order_pages(o);
                break;
            }
            if (rc != -ENOMEM || j->pod)
                return rc;
            /* No free extent of this order: fall back, counted. */
            if (o == PAGE_ORDER_1G)
                fb->fallback_1g_nomem++;
            else
                fb->fallback_2m_nomem++;
        }
        if (done)
            continue;
        int rc = map_piece(d, j, g, PAGE_ORDER_4K, res);
        if (rc < 0)
            return rc;
        if (j->pod)
            fb->pod_entries_4k++;
        else
            fb->populated_4k++;
        g++;
    }
    return 0;
}

static void stats_add(struct domain_stats *to, const struct domain_stats *from)
{
#define X(name, desc) to->name += from->name;
    DOMAIN_STAT_FIELDS(X)
#undef X
}

/* Run populate_range calls with coalescing deferred; commit or unwind. */
static int populate_begin(struct domain *d)
{
    p2m_set_auto_coalesce(d->p2m, false);
    return 0;
}

static int populate_end(struct domain *d, struct journal *j, int rc,
                        const struct domain_stats *fb)
{
    if (rc < 0)
        journal_unwind(d, j);
    else
        stats_add(&d->stats, fb);
    if (rc == 0 && d->logdirty) /* committed: give new RAM the log-dirty form */
        for (size_t i = 0; i < j->n; i++)
            dirty_on_map(d, j->v[i].gfn, (unsigned)__builtin_ctzll(j->v[i].nr));
    /* Turning it back on merges exactly the range changed meanwhile. */
    if (!d->no_auto_coalesce)
        p2m_set_auto_coalesce(d->p2m, true);
    free(j->v);
    j->v = NULL;
    j->n = j->cap = 0;
    return rc;
}

int domain_populate(struct domain *d, gfn_t gfn, uint64_t nr,
                    struct populate_result *res)
{
    return domain_populate_flags(d, gfn, nr, 0, res);
}

int domain_populate_flags(struct domain *d, gfn_t gfn, uint64_t nr,
                          unsigned flags, struct populate_result *res)
{
    struct populate_result local = {0};
    struct domain_stats fb = {0};
    struct journal j = {.pod = (flags & DOMAIN_POPULATE_POD) != 0};
    if (flags & ~DOMAIN_POPULATE_POD)
        return -EINVAL;
    if (nr == 0 || gfn >= P2M_GFN_LIMIT || nr > P2M_GFN_LIMIT - gfn)
        return -EINVAL;
    populate_begin(d);
    int rc = populate_range(d, &j, gfn, nr, MAX_ORDER, &local, &fb);
    rc = populate_end(d, &j, rc, &fb);
    if (res)
        *res = rc == 0 ? local : (struct populate_result){0};
    return rc;
}

unsigned domain_guest_layout(const struct domain *d, uint64_t bytes,
                             struct gfn_range out[2])
{
    uint64_t pages = bytes >> PAGE_SHIFT;
    uint64_t low_limit = d->mmio_hole_start;
    unsigned n = 0;
    uint64_t low = pages < low_limit ? pages : low_limit;
    if (low)
        out[n++] = (struct gfn_range){0, low};
    if (pages > low)
        out[n++] = (struct gfn_range){GFN_4G, pages - low};
    return n;
}

int domain_populate_guest(struct domain *d, uint64_t bytes,
                          struct populate_result *res)
{
    return domain_populate_guest_flags(d, bytes, 0, res);
}

int domain_populate_guest_flags(struct domain *d, uint64_t bytes, unsigned flags,
                                struct populate_result *res)
{
    struct gfn_range r[2];
    struct populate_result local = {0};
    struct domain_stats fb = {0};
    struct journal j = {.pod = (flags & DOMAIN_POPULATE_POD) != 0};
    if (bytes == 0 || bytes % PAGE_SIZE || (flags & ~DOMAIN_POPULATE_POD))
        return -EINVAL;
    unsigned n = domain_guest_layout(d, bytes, r);
    populate_begin(d);
    int rc = 0;
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = populate_range(d, &j, r[i].gfn, r[i].nr, MAX_ORDER, &local, &fb);
    rc = populate_end(d, &j, rc, &fb);
    if (res)
        *res = rc == 0 ? local : (struct populate_result){0};
    return rc;
}

int domain_increase_reservation(struct domain *d, gfn_t gfn,
                                uint64_t nr_extents, unsigned order)
{
    struct populate_result local = {0};
    struct domain_stats fb = {0};
    struct journal j = {0};
    if (order != PAGE_ORDER_4K && order != PAGE_ORDER_2M)
        return -EINVAL;
    if (!is_aligned_order(gfn, order) || nr_extents == 0 ||
        nr_extents > (P2M_GFN_LIMIT >> order) ||
        gfn > P2M_GFN_LIMIT - (nr_extents << order))
        return -EINVAL;
    populate_begin(d);
    int rc = 0;
    for (uint64_t i = 0; i < nr_extents && rc == 0; i++) {
        gfn_t g = gfn + (i << order);
        uint64_t before_4k = local.nr_4k, before_2m = local.nr_2m;
        rc = populate_range(d, &j, g, order_pages(order), order, &local, &fb);
        if (order == PAGE_ORDER_2M) {
            fb.increased_2m += local.nr_2m - before_2m;
            fb.increased_4k += local.nr_4k - before_4k;
            if (local.nr_4k > before_4k && local.nr_2m == before_2m)
                fb.increase_fallback_4k++;
        } else {
            fb.increased_4k += local.nr_4k - before_4k;
        }
    }
    return populate_end(d, &j, rc, &fb);
}

int domain_map_extent(struct domain *d, gfn_t gfn, unsigned order, mfn_t *mfn)
{
    if ((order != PAGE_ORDER_4K && order != PAGE_ORDER_2M && order != PAGE_ORDER_1G) ||
        !is_aligned_order(gfn, order) || gfn >= P2M_GFN_LIMIT ||
        order_pages(order) > P2M_GFN_LIMIT - gfn)
        return -EINVAL;
    if (!block_clear_of_holes(d, gfn, order) ||
        (order > 0 && p2m_range_is_4k_only(d->p2m, gfn, order)))
        return -EINVAL;
    if (!block_unmapped(d, gfn, order))
        return -EEXIST;
    struct journal j = {0};
    struct populate_result res = {0};
    int rc = map_piece(d, &j, gfn, order, &res);
    if (rc == 0)
        dirty_on_map(d, gfn, order);
    if (rc == 0 && mfn)
        *mfn = j.v[0].mfn;
    free(j.v);
    return rc;
}

/* ---- decrease reservation ---------------------------------------------- */

struct leafvec {
    struct journal runs;
    gfn_t lo, hi;       /* clip window */
    uint64_t pod_pages; /* PoD pages inside the window */
};

/* Collect the RAM part of each leaf, clipped to [lo, hi); count PoD. */
static int collect_ram_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                            enum p2m_type type, ept_entry_t *e)
{
    struct leafvec *lv = ctx;
    (void)e;
    if (!p2m_is_ram(type) && type != p2m_pod)
        return 0;
    gfn_t s = gfn > lv->lo ? gfn : lv->lo;
    gfn_t t = gfn + order_pages(order);
    if (t > lv->hi)
        t = lv->hi;
    if (type == p2m_pod) {
        lv->pod_pages += t - s;
        return 0;
    }
    return journal_push(&lv->runs, s, mfn + (s - gfn), t - s);
}

/*
 * Seed 003: with the PoD cache short, a decrease that cuts a RAM superpage
 * first tries to reclaim the enclosing 2M whole if it is zero (it becomes a
 * 2M PoD entry, the frames a cache chunk), so that no superpage is split
 * for nothing.  Only the (at most two) 2M blocks at the ends of the range
 * can be cut.  Returns -ENOMEM or 0.
 */
static int decrease_reclaim_ends(struct domain *d, gfn_t gfn, uint64_t nr)
{
    gfn_t ends[2] = {gfn, gfn + nr - 1};
    for (unsigned i = 0; i < 2; i++) {
        if (d->pod.entry_count <= d->pod.count)
            return 0;
        gfn_t block = ends[i] & ~(order_pages(PAGE_ORDER_2M) - 1);
        if (i == 1 && block == (ends[0] & ~(order_pages(PAGE_ORDER_2M) - 1)))
            break;
        if (block >= gfn && block + order_pages(PAGE_ORDER_2M) <= gfn + nr)
            continue; /* covered whole: released whole, nothing split */
        enum p2m_type t;
        unsigned lo;
        p2m_get_entry(d->p2m, ends[i], &t, &lo);
        if (t != p2m_ram_rw || lo < PAGE_ORDER_2M)
            continue;
        long r = pod_reclaim_2m(d, block);
        if (r < 0)
            return (int)r;
        if (r > 0)
            d->pod.stats.decrease_zero_2m++;
    }
    return 0;
}

static void count_decreased(struct domain *d, uint64_t pages, unsigned order)
{
    if (order == PAGE_ORDER_1G)
        d->stats.decreased_1g++;
    else if (order == PAGE_ORDER_2M)
        d->stats.decreased_2m++;
    else
        d->stats.decreased_4k += pages;
}

long domain_decrease_reservation(struct domain *d, gfn_t gfn, uint64_t nr)
{
    if (nr == 0 || gfn >= P2M_GFN_LIMIT)
        return -EINVAL;
    if (nr > P2M_GFN_LIMIT - gfn)
        nr = P2M_GFN_LIMIT - gfn;
    struct leafvec lv = {.lo = gfn, .hi = gfn + nr};
    int rc = 0;
    if (d->pod.entry_count > d->pod.count) {
        rc = decrease_reclaim_ends(d, gfn, nr);
        if (rc < 0)
            goto out;
    }
    rc = p2m_for_each_leaf(d->p2m, gfn, nr, collect_ram_leaf, &lv);
    if (rc < 0 || (lv.runs.n == 0 && lv.pod_pages == 0))
        goto out;
    /* Quarantine: room to park every run, and whatever the PoD cache may
     * shrink by below (each chunk, each page, a broken chunk's pages). */
    rc = domain_quarantine_reserve(d, lv.runs.n + (lv.pod_pages ? pod_shrink_runs(d) : 0));
    if (rc < 0)
        goto out;
    dirty_on_unmap(d, gfn, nr); /* log-dirty: the RAM going away is marked */
    /* One atomic p2m change: splits only where the range cuts a leaf. */
    rc = p2m_set_range(d->p2m, gfn, INVALID_MFN, nr, p2m_invalid);
    if (rc < 0)
        goto out;
    d->p2m_gen++; /* translations went away: vCPU TLBs must flush */
    long released = 0;
    for (size_t i = 0; i < lv.runs.n; i++) {
        uint64_t len = lv.runs.v[i].nr;
        gfn_t g = lv.runs.v[i].gfn;
        mfn_t mfn = lv.runs.v[i].mfn;
        /* Account by the aligned pieces the guest gave back. */
        for (uint64_t off = 0; off < len;) {
            unsigned o = MAX_ORDER;
            while (o > 0 && (!is_aligned_order(g + off, o) || off + order_pages(o) > len))
                o--;
            count_decreased(d, order_pages(o), o);
            off += order_pages(o);
        }
        free_run(d, mfn, len);
        d->tot_pages -= len;
        released += (long)len;
    }
    if (lv.pod_pages) {
        d->pod.entry_count -= lv.pod_pages;
        d->stats.decreased_pod += lv.pod_pages;
        released += (long)lv.pod_pages;
        /* Fewer liabilities than assets: give the surplus back (Xen). */
        if (d->pod.count > d->pod.entry_count)
            pod_shrink_cache(d, d->pod.entry_count);
    }
    free(lv.runs.v);
    return released;
out:
    free(lv.runs.v);
    return rc;
}

/* ---- audit ------------------------------------------------------------- */

struct audit_ctx {
    const struct domain *d;
    uint64_t *seen; /* bitmap over machine frames */
    uint64_t ram_pages;
    uint64_t pod_pages;
    int rc;
};

static int audit_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                      enum p2m_type type, ept_entry_t *e)
{
    struct audit_ctx *a = ctx;
    (void)e;
    if (type == p2m_pod) {
        if (!block_clear_of_holes(a->d, gfn, order))
            return hv_audit_fail("domain %u: PoD leaf at gfn %#llx order %u covers a hole",
                                 a->d->domid, (unsigned long long)gfn, order);
        a->pod_pages += order_pages(order);
        return 0;
    }
    if (!p2m_is_ram(type))
        return 0;
    if (!block_clear_of_holes(a->d, gfn, order))
        return hv_audit_fail("domain %u: RAM leaf at gfn %#llx order %u covers a hole",
                             a->d->domid, (unsigned long long)gfn, order);
    if (mfn + order_pages(order) > a->d->m->nr_frames)
        return hv_audit_fail("domain %u: gfn %#llx maps mfn %#llx beyond the machine",
                             a->d->domid, (unsigned long long)gfn,
                             (unsigned long long)mfn);
    for (mfn_t x = mfn; x < mfn + order_pages(order); x++) {
        if (a->seen[x / 64] & (1ULL << (x % 64)))
            return hv_audit_fail("domain %u: mfn %#llx mapped twice (gfn %#llx)",
                                 a->d->domid, (unsigned long long)x,
                                 (unsigned long long)gfn);
        a->seen[x / 64] |= 1ULL << (x % 64);
    }
    a->ram_pages += order_pages(order);
    return 0;
}

/* Every parked frame is owned by d, in the machine, and not mapped, cached
 * or parked twice (marked in `seen`); the runs add up to quarantine.pages. */
static int audit_parked(const struct domain *d, uint64_t *seen)
{
    const struct domain_quarantine *q = &d->quarantine;
    uint64_t pages = 0;
    if (q->n > q->cap || (q->n && !q->on))
        return hv_audit_fail("domain %u: %zu parked runs (room %zu) with quarantine %s",
                             d->domid, q->n, q->cap, q->on ? "on" : "off");
    for (size_t i = 0; i < q->n; i++) {
        const struct parked_run *r = &q->runs[i];
        if (!r->nr || r->mfn >= d->m->nr_frames || r->nr > d->m->nr_frames - r->mfn)
            return hv_audit_fail("domain %u: parked run %#llx+%llu outside the machine",
                                 d->domid, (unsigned long long)r->mfn,
                                 (unsigned long long)r->nr);
        for (mfn_t x = r->mfn; x < r->mfn + r->nr; x++) {
            if (seen[x / 64] & (1ULL << (x % 64)))
                return hv_audit_fail("domain %u: parked mfn %#llx is also mapped, cached "
                                     "or parked twice", d->domid, (unsigned long long)x);
            seen[x / 64] |= 1ULL << (x % 64);
            if (frame_owner(d->m->frames, x, NULL) != d->domid)
                return hv_audit_fail("domain %u: parked mfn %#llx not owned", d->domid,
                                     (unsigned long long)x);
        }
        pages += r->nr;
    }
    if (pages != q->pages)
        return hv_audit_fail("domain %u: quarantine.pages %llu but the runs hold %llu",
                             d->domid, (unsigned long long)q->pages,
                             (unsigned long long)pages);
    return 0;
}

int domain_audit(const struct domain *d)
{
    int rc = p2m_audit(d->p2m);
    if (rc < 0)
        return rc;
    struct audit_ctx a = {.d = d};
    a.seen = calloc((d->m->nr_frames + 63) / 64, sizeof(uint64_t));
    if (!a.seen)
        return -ENOMEM;
    rc = p2m_for_each_leaf(d->p2m, 0, P2M_GFN_LIMIT, audit_leaf, &a);
    if (rc == 0)
        rc = pod_audit_frames(d, a.seen); /* cache frames: owned, unmapped */
    if (rc == 0)
        rc = audit_parked(d, a.seen); /* parked: owned, unmapped, uncached */
    free(a.seen);
    if (rc < 0)
        return rc;
    if (a.pod_pages != d->pod.entry_count)
        return hv_audit_fail("domain %u: pod.entry_count %llu but %llu PoD pages mapped",
                             d->domid, (unsigned long long)d->pod.entry_count,
                             (unsigned long long)a.pod_pages);
    if (a.ram_pages + d->pod.count != d->tot_pages)
        return hv_audit_fail("domain %u: tot_pages %llu but %llu RAM pages mapped "
                             "+ %llu in the PoD cache",
                             d->domid, (unsigned long long)d->tot_pages,
                             (unsigned long long)a.ram_pages,
                             (unsigned long long)d->pod.count);
    if (d->tot_pages > d->max_pages)
        return hv_audit_fail("domain %u: tot_pages %llu > max_pages %llu", d->domid,
                             (unsigned long long)d->tot_pages,
                             (unsigned long long)d->max_pages);
    uint64_t owned = frames_owned(d->m->frames, d->domid);
    if (owned != a.ram_pages + d->pod.count + d->held_pages + d->quarantine.pages)
        return hv_audit_fail("domain %u: owns %llu frames but maps %llu (+ %llu cached, "
                             "%llu held by defrag, %llu parked)",
                             d->domid, (unsigned long long)owned,
                             (unsigned long long)a.ram_pages,
                             (unsigned long long)d->pod.count,
                             (unsigned long long)d->held_pages,
                             (unsigned long long)d->quarantine.pages);
    return pod_audit(d);
}
