/*
 * defrag.c - copy fragmented superpage regions into free extents and remap
 * them as one leaf (see defrag.h for the protocol and its safety argument).
 */
#include "defrag.h"
#include "domain.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct collect {
    struct defrag *df;
    bool ok;
    int rc;
};

static int collect_leaf(void *ctx, gfn_t gfn, mfn_t mfn, unsigned order,
                        enum p2m_type type, ept_entry_t *e)
{
    struct collect *c = ctx;
    struct defrag *df = c->df;
    (void)e;
    if (type != p2m_ram_rw || order >= df->order) {
        c->ok = false;
        return 1;
    }
    if (df->nleaves == df->cap) {
        size_t cap = df->cap ? df->cap * 2 : 512;
        struct defrag_leaf *v = hv_malloc(cap * sizeof(*v));
        if (!v) {
            c->rc = -ENOMEM;
            return 1;
        }
        if (df->nleaves)
            memcpy(v, df->leaves, df->nleaves * sizeof(*v));
        free(df->leaves);
        df->leaves = v;
        df->cap = cap;
    }
    df->leaves[df->nleaves++] = (struct defrag_leaf){gfn, mfn, order};
    return 0;
}

int defrag_init(struct defrag *df, struct domain *d, gfn_t gfn, uint64_t nr,
                unsigned order)
{
    memset(df, 0, sizeof(*df));
    if ((order != PAGE_ORDER_2M && order != PAGE_ORDER_1G) || gfn >= P2M_GFN_LIMIT ||
        nr > P2M_GFN_LIMIT - gfn)
        return -EINVAL;
    df->d = d;
    df->order = order;
    uint64_t sz = order_pages(order);
    df->cursor = (gfn + sz - 1) & ~(sz - 1);
    df->end = (gfn + nr) & ~(sz - 1);
    return 0;
}

static void abandon(struct defrag *df)
{
    struct domain *d = df->d;
    if (!df->active)
        return;
    int rc = frame_free(d->m->frames, df->dst, df->order, d->domid);
    (void)rc;
    d->held_pages -= order_pages(df->order);
    df->active = false;
}

void defrag_fini(struct defrag *df)
{
    abandon(df);
    free(df->leaves);
    df->leaves = NULL;
    df->nleaves = df->cap = 0;
}

/* True when the machine bytes of [mfn, mfn + nr) were never written (a
 * hole of the memfd): reads as zero, nothing to copy. */
static bool machine_hole(const struct machine *m, mfn_t mfn, uint64_t nr)
{
    off_t off = (off_t)machine_offset(mfn);
    off_t data = lseek(m->fd, off, SEEK_DATA);
    if (data < 0)
        return errno == ENXIO; /* no data after off at all */
    return (uint64_t)data >= (uint64_t)off + (nr << PAGE_SHIFT);
}

static uint64_t copy_leaf(struct defrag *df, const struct defrag_leaf *l)
{
    struct domain *d = df->d;
    uint64_t nr = order_pages(l->order);
    if (l->order >= PAGE_ORDER_2M && machine_hole(d->m, l->mfn, nr)) {
        df->stats.holes_skipped++;
        return 0;
    }
    memcpy(machine_ptr(d->m, df->dst + (l->gfn - df->rgn)), machine_ptr(d->m, l->mfn),
           nr << PAGE_SHIFT);
    return nr;
}

/* The leaf still maps what was recorded?  Returns its entry or NULL. */
static ept_entry_t *leaf_unchanged(struct defrag *df, const struct defrag_leaf *l)
{
    unsigned level;
    ept_entry_t *e = p2m_lookup_leaf(df->d->p2m, l->gfn, &level, NULL);
    if (!e || ept_type(*e) != p2m_ram_rw || 9u * (level - 1u) != l->order ||
        ept_mfn(*e) != l->mfn)
        return NULL;
    return e;
}

static void finish(struct defrag *df)
{
    struct domain *d = df->d;
    for (size_t i = 0; i < df->nleaves; i++) {
        if (!leaf_unchanged(df, &df->leaves[i])) {
            df->stats.aborted++;
            abandon(df);
            return;
        }
    }
    /* Written since its copy: copy again (no guest access can happen
     * between here and the switch). */
    for (size_t i = 0; i < df->nleaves; i++) {
        ept_entry_t *e = leaf_unchanged(df, &df->leaves[i]);
        if (*e & EPT_D) {
            struct defrag_leaf *l = &df->leaves[i];
            uint64_t nr = order_pages(l->order);
            memcpy(machine_ptr(d->m, df->dst + (l->gfn - df->rgn)),
                   machine_ptr(d->m, l->mfn), nr << PAGE_SHIFT);
            df->stats.pages_recopied += nr;
        }
    }
    if (p2m_set_entry(d->p2m, df->rgn, df->dst, df->order, p2m_ram_rw) < 0) {
        df->stats.aborted++;
        abandon(df);
        return;
    }
    d->p2m_gen++;
    for (size_t i = 0; i < df->nleaves; i++)
        domain_free_frames(d, df->leaves[i].mfn, order_pages(df->leaves[i].order));
    d->held_pages -= order_pages(df->order);
    df->active = false;
    if (df->order == PAGE_ORDER_1G)
        df->stats.merged_1g++;
    else
        df->stats.merged_2m++;
}

/* Look at the region at the cursor; start a copy if it is a candidate.
 * Returns 1 when a copy started, 0 when not, -ENOMEM, or -ENOSPC when no
 * extent of the order is free (the scan stops). */
static int start_region(struct defrag *df)
{
    struct domain *d = df->d;
    uint64_t sz = order_pages(df->order);
    gfn_t rgn = df->cursor;
    df->cursor += sz;
    df->stats.regions_scanned++;
    enum p2m_type t;
    unsigned o;
    p2m_get_entry(d->p2m, rgn, &t, &o);
    if (t != p2m_ram_rw || o >= df->order || p2m_range_is_4k_only(d->p2m, rgn, df->order))
        return 0;
    df->nleaves = 0;
    struct collect c = {.df = df, .ok = true};
    (void)p2m_for_each_leaf(d->p2m, rgn, sz, collect_leaf, &c);
    if (c.rc < 0) {
        /* Out of metadata: nothing changed; the next step retries here. */
        df->cursor = rgn;
        df->stats.regions_scanned--;
        return c.rc;
    }
    uint64_t covered = 0;
    bool contiguous = c.ok && is_aligned_order(df->leaves[0].mfn, df->order);
    for (size_t i = 0; c.ok && i < df->nleaves; i++) {
        covered += order_pages(df->leaves[i].order);
        if (df->leaves[i].mfn != df->leaves[0].mfn + (df->leaves[i].gfn - rgn))
            contiguous = false;
    }
    if (!c.ok || covered != sz)
        return 0;
    if (contiguous) {
        if (p2m_coalesce(d->p2m, rgn, sz) > 0)
            df->stats.merged_in_place++;
        return 0;
    }
    mfn_t dst;
    if (frame_alloc(d->m->frames, df->order, d->domid, &dst) < 0) {
        df->stats.no_extent++;
        return -ENOSPC;
    }
    d->held_pages += sz;
    df->rgn = rgn;
    df->dst = dst;
    df->next = 0;
    df->active = true;
    return 1;
}

int defrag_step(struct defrag *df, uint64_t budget)
{
    struct domain *d = df->d;
    uint64_t done = 0;
    bool cleared = false;
    if (d->logdirty)
        return -EBUSY;
    while (!budget || done < budget) {
        if (!df->active) {
            if (df->cursor >= df->end)
                break;
            int rc = start_region(df);
            if (rc == -ENOSPC) {
                df->cursor = df->end; /* nothing more can be merged */
                break;
            }
            if (rc < 0)
                return rc;
            done++; /* scanning costs something too */
            continue;
        }
        if (df->next == df->nleaves) {
            /* the old frames may be parked (quarantine, domain.h) */
            int rc = domain_quarantine_reserve(d, df->nleaves);
            if (rc < 0)
                return rc; /* still in flight: the next step finishes it */
            finish(df);
            continue;
        }
        struct defrag_leaf *l = &df->leaves[df->next];
        ept_entry_t *e = leaf_unchanged(df, l);
        if (!e) {
            df->stats.aborted++;
            abandon(df);
            continue;
        }
        *e &= ~EPT_D;
        cleared = true;
        uint64_t n = copy_leaf(df, l);
        df->stats.pages_copied += n;
        done += n ? n : 1;
        df->next++;
    }
    if (cleared)
        d->p2m_gen++; /* D bits cleared: cached dirty translations go */
    return df->active || df->cursor < df->end;
}

int defrag_run(struct domain *d, gfn_t gfn, uint64_t nr, unsigned order,
               double mib_per_s, struct defrag_stats *st)
{
    struct defrag df;
    int rc = defrag_init(&df, d, gfn, nr, order);
    if (rc < 0)
        return rc;
    const uint64_t step = 512; /* 2 MiB per step */
    uint64_t t0 = hv_now_ns();
    do {
        domain_lock(d);
        rc = defrag_step(&df, step);
        domain_unlock(d);
        if (rc > 0 && mib_per_s > 0) {
            /* sleep until the copy rate is back under the limit */
            double mib = (double)(df.stats.pages_copied << PAGE_SHIFT) / MiB;
            double want_ns = mib / mib_per_s * 1e9;
            double have_ns = (double)(hv_now_ns() - t0);
            if (want_ns > have_ns) {
                double s = (want_ns - have_ns) / 1e9;
                struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    } while (rc > 0);
    if (st) {
#define X(name, desc) st->name += df.stats.name;
        DEFRAG_STAT_FIELDS(X)
#undef X
    }
    defrag_fini(&df);
    return rc < 0 ? rc : 0;
}
