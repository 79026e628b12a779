/*
 * pod.c - populate-on-demand: the PoD cache, demand populate, zero reclaim
 * and the bounded emergency sweep (see pod.h for the model and invariants).
 *
 * Layering: PoD is part of the domain layer.  domain.c writes PoD entries
 * (populate with DOMAIN_POPULATE_POD), removes them (decrease_reservation)
 * and calls pod_audit; this file owns everything about the cache.
 *
 * Cache lists are plain arrays used as stacks.  Every path that moves a
 * frame into the cache first reserves room in the array (the only
 * allocation that can fail), then changes the p2m (which fails, if at all,
 * before changing anything), then commits the counters, so an error leaves
 * the accounting exact.
 *
 * Reclaim order of preference (superpages first):
 *  1. a 2M block wholly RAM and zero becomes one 2M PoD entry; its frames
 *     become a 2M chunk when they form an aligned machine run, else 512 4K
 *     pages (which cache_regroup() may later turn back into a chunk);
 *  2. a zero 4K page becomes a 4K PoD entry (512 adjacent ones coalesce back
 *     into a 2M PoD entry by the p2m's automatic coalescing).
 * Reclaiming unmaps a translation, so it bumps d->p2m_gen (vCPU TLBs
 * flush); mapping a frame over a PoD entry or splitting a PoD entry changes
 * no cached translation (PoD entries are never cached) and does not.
 */
#include "pod.h"
#include "dirty.h"
#include "domain.h"
#include "zero.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define SP_PAGES (order_pages(PAGE_ORDER_2M))
#define SP_MASK (SP_PAGES - 1)
#define MRP_SUPER (1ULL << 63) /* mrp entry is a 2M populate */

/* ---- cache arrays ------------------------------------------------------ */

static int vec_reserve(mfn_t **v, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap *= 2;
    mfn_t *nv = hv_malloc(ncap * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    if (*v)
        memcpy(nv, *v, *cap * sizeof(*nv));
    free(*v);
    *v = nv;
    *cap = ncap;
    return 0;
}

static int reserve_chunks(struct pod *p, size_t more)
{
    return vec_reserve(&p->chunks, &p->cap_chunks, p->nr_chunks + more);
}

static int reserve_pages(struct pod *p, size_t more)
{
    return vec_reserve(&p->pages, &p->cap_pages, p->nr_pages + more);
}

/* Room must have been reserved. */
static void push_chunk(struct pod *p, mfn_t mfn)
{
    assert(p->nr_chunks < p->cap_chunks && is_aligned_order(mfn, PAGE_ORDER_2M));
    p->chunks[p->nr_chunks++] = mfn;
    p->count += SP_PAGES;
}

static void push_page(struct pod *p, mfn_t mfn)
{
    assert(p->nr_pages < p->cap_pages);
    p->pages[p->nr_pages++] = mfn;
    p->count++;
}

/* Break the last chunk into 4K pages (room for 512 must be reserved).  The
 * pages are pushed high to low so that they are taken low to high. */
static void break_chunk(struct pod *p)
{
    assert(p->nr_chunks > 0 && p->nr_pages + SP_PAGES <= p->cap_pages);
    mfn_t base = p->chunks[--p->nr_chunks];
    for (uint64_t i = SP_PAGES; i-- > 0;)
        p->pages[p->nr_pages++] = base + i;
    p->stats.chunks_broken++;
}

static int cmp_mfn(const void *a, const void *b)
{
    mfn_t x = *(const mfn_t *)a, y = *(const mfn_t *)b;
    return x < y ? -1 : x > y;
}

/* Turn every aligned run of 512 cached 4K pages into a 2M chunk. */
static void cache_regroup(struct pod *p)
{
    if (p->nr_pages < SP_PAGES)
        return;
    qsort(p->pages, p->nr_pages, sizeof(*p->pages), cmp_mfn);
    size_t out = 0;
    for (size_t i = 0; i < p->nr_pages;) {
        mfn_t m = p->pages[i];
        if (is_aligned_order(m, PAGE_ORDER_2M) && i + SP_PAGES <= p->nr_pages &&
            p->pages[i + SP_PAGES - 1] == m + SP_PAGES - 1 && reserve_chunks(p, 1) == 0) {
            p->chunks[p->nr_chunks++] = m; /* count unchanged: same pages */
            p->stats.cache_regrouped_2m++;
            i += SP_PAGES;
            continue;
        }
        p->pages[out++] = p->pages[i++];
    }
    p->nr_pages = out;
}

/* ---- target -------------------------------------------------------------- */

int pod_set_cache_target(struct domain *d, uint64_t pages)
{
    struct pod *p = &d->pod;
    struct frames *f = d->m->frames;
    bool no_2m = false;
    int rc;
    while (p->count < pages) {
        uint64_t need = pages - p->count;
        mfn_t mfn;
        if (need >= SP_PAGES && !no_2m) {
            if (d->tot_pages + SP_PAGES > d->max_pages)
                return -EDQUOT;
            if ((rc = reserve_chunks(p, 1)) < 0)
                return rc;
            rc = frame_alloc(f, PAGE_ORDER_2M, d->domid, &mfn);
            if (rc == 0) {
                push_chunk(p, mfn);
                d->tot_pages += SP_PAGES;
                p->stats.cache_grow_2m++;
                continue;
            }
            if (rc != -ENOMEM)
                return rc;
            no_2m = true; /* seed 001: never silent */
            p->stats.cache_grow_fallback_4k++;
        }
        if (d->tot_pages + 1 > d->max_pages)
            return -EDQUOT;
        if ((rc = reserve_pages(p, 1)) < 0)
            return rc;
        if ((rc = frame_alloc(f, PAGE_ORDER_4K, d->domid, &mfn)) < 0)
            return rc;
        push_page(p, mfn);
        d->tot_pages++;
        p->stats.cache_grow_4k++;
    }
    /* Quarantine (domain.h): room to park what leaves the cache. */
    if (p->count > pages && (rc = domain_quarantine_reserve(d, pod_shrink_runs(d))) < 0)
        return rc;
    pod_shrink_cache(d, pages);
    return 0;
}

size_t pod_shrink_runs(const struct domain *d)
{
    return d->pod.nr_chunks + d->pod.nr_pages + SP_PAGES;
}

void pod_shrink_cache(struct domain *d, uint64_t pages)
{
    struct pod *p = &d->pod;
    while (p->count > pages) {
        uint64_t excess = p->count - pages;
        /* A whole chunk when 2M or more must go, or when the 4K list is
         * empty and cannot take a broken chunk (out of host memory): the
         * cache then ends below `pages`, which is always allowed. */
        if (p->nr_chunks &&
            (excess >= SP_PAGES || (!p->nr_pages && reserve_pages(p, SP_PAGES) < 0))) {
            mfn_t mfn = p->chunks[--p->nr_chunks];
            domain_free_frames(d, mfn, SP_PAGES);
            p->count -= SP_PAGES;
            d->tot_pages -= SP_PAGES;
            p->stats.cache_shrink_2m++;
            continue;
        }
        if (!p->nr_pages)
            break_chunk(p);
        mfn_t mfn = p->pages[--p->nr_pages];
        domain_free_frames(d, mfn, 1);
        p->count--;
        d->tot_pages--;
        p->stats.cache_shrink_4k++;
    }
}

int pod_set_target(struct domain *d, uint64_t target_pages)
{
    struct pod *p = &d->pod;
    uint64_t populated = d->tot_pages - p->count;
    uint64_t want = target_pages > populated ? target_pages - populated : 0;
    if (want > p->entry_count)
        want = p->entry_count; /* never more cache than liabilities */
    p->target = target_pages;
    return pod_set_cache_target(d, want);
}

void pod_destroy(struct domain *d)
{
    struct pod *p = &d->pod;
    /* Entries are gone by now; release what the cache still holds. */
    while (p->nr_chunks) {
        domain_free_frames(d, p->chunks[--p->nr_chunks], SP_PAGES);
        p->count -= SP_PAGES;
        d->tot_pages -= SP_PAGES;
    }
    while (p->nr_pages) {
        domain_free_frames(d, p->pages[--p->nr_pages], 1);
        p->count--;
        d->tot_pages--;
    }
    free(p->chunks);
    free(p->pages);
    p->chunks = p->pages = NULL;
    p->cap_chunks = p->cap_pages = 0;
}

/* ---- reclaim --------------------------------------------------------------- */

static void mrp_add(struct pod *p, gfn_t gfn, bool super)
{
    p->mrp[p->mrp_idx] = (gfn + 1) | (super ? MRP_SUPER : 0);
    p->mrp_idx = (p->mrp_idx + 1) % POD_HISTORY_MAX;
}

/* Reclaim the 4K page at gfn if it is ram_rw and zero.  Returns 1, 0 or
 * -ENOMEM (nothing changed).  A superpage leaf around it is split. */
static int reclaim_4k(struct domain *d, gfn_t gfn)
{
    struct pod *p = &d->pod;
    enum p2m_type t;
    unsigned o;
    mfn_t mfn = p2m_get_entry(d->p2m, gfn, &t, &o);
    if (t != p2m_ram_rw)
        return 0;
    p->stats.zero_checks_4k++;
    if (!zero_check(machine_ptr(d->m, mfn), PAGE_SIZE))
        return 0;
    int rc = reserve_pages(p, 1);
    if (rc < 0)
        return rc;
    dirty_on_unmap(d, gfn, 1); /* log-dirty: marked (RAM -> PoD) */
    rc = p2m_set_entry(d->p2m, gfn, 0, PAGE_ORDER_4K, p2m_pod);
    if (rc < 0)
        return rc;
    if (o > 0)
        p->stats.reclaim_split_2m++;
    push_page(p, mfn);
    p->entry_count++;
    p->stats.reclaimed_4k++;
    d->p2m_gen++;
    return 1;
}

long pod_reclaim_2m(struct domain *d, gfn_t gfn)
{
    struct pod *p = &d->pod;
    enum p2m_type t;
    unsigned o;
    if (!is_aligned_order(gfn, PAGE_ORDER_2M))
        return -EINVAL;
    mfn_t mfn = p2m_get_entry(d->p2m, gfn, &t, &o);
    if (t != p2m_ram_rw)
        return 0;
    bool contiguous = true;
    if (o >= PAGE_ORDER_2M) {
        /* One leaf: a contiguous machine run; sample, then full check. */
        const uint8_t *ptr = machine_ptr(d->m, mfn);
        p->stats.zero_checks_2m++;
        if (!zero_sample(ptr, SP_PAGES, POD_SAMPLES)) {
            p->stats.zero_sample_rejects++;
            return 0;
        }
        if (!zero_check(ptr, SP_PAGES << PAGE_SHIFT))
            return 0;
    } else {
        /* 4K leaves: every gfn must be ram_rw; sample a line of every
         * 32nd page first, then check each page. */
        mfn_t first = mfn;
        for (uint64_t i = 0; i < SP_PAGES; i += 32) {
            mfn_t m = p2m_get_entry(d->p2m, gfn + i, &t, NULL);
            if (t != p2m_ram_rw)
                return 0;
            if (!zero_sample(machine_ptr(d->m, m), 1, 1)) {
                p->stats.zero_sample_rejects++;
                return 0;
            }
        }
        p->stats.zero_checks_2m++;
        for (uint64_t i = 0; i < SP_PAGES; i++) {
            mfn_t m = p2m_get_entry(d->p2m, gfn + i, &t, NULL);
            if (t != p2m_ram_rw || !zero_check(machine_ptr(d->m, m), PAGE_SIZE))
                return 0;
            if (m != first + i)
                contiguous = false;
        }
        contiguous = contiguous && is_aligned_order(first, PAGE_ORDER_2M);
    }
    int rc = contiguous ? reserve_chunks(p, 1) : reserve_pages(p, SP_PAGES);
    if (rc < 0)
        return rc;
    /* Collect the frames before the p2m forgets them (4K case). */
    mfn_t *tmp = NULL;
    if (!contiguous) {
        tmp = hv_malloc(SP_PAGES * sizeof(*tmp));
        if (!tmp)
            return -ENOMEM;
        for (uint64_t i = 0; i < SP_PAGES; i++)
            tmp[i] = p2m_get_entry(d->p2m, gfn + i, NULL, NULL);
    }
    dirty_on_unmap(d, gfn, SP_PAGES); /* log-dirty: marked (RAM -> PoD) */
    /* set_range: one 2M PoD leaf, or 4K ones inside a 4K-only range. */
    rc = p2m_set_range(d->p2m, gfn, 0, SP_PAGES, p2m_pod);
    if (rc < 0) {
        free(tmp);
        return rc;
    }
    if (contiguous) {
        push_chunk(p, mfn);
    } else {
        for (uint64_t i = SP_PAGES; i-- > 0;)
            push_page(p, tmp[i]);
        free(tmp);
    }
    p->entry_count += SP_PAGES;
    p->stats.reclaimed_2m++;
    d->p2m_gen++;
    return (long)SP_PAGES;
}

/* Xen's pod_eager_reclaim: check one recently populated gfn, or all of
 * them until something is found when the cache is empty. */
static void eager_reclaim(struct domain *d)
{
    struct pod *p = &d->pod;
    unsigned i = 0;
    do {
        unsigned idx = (p->mrp_idx + i++) % POD_HISTORY_MAX;
        gfn_t v = p->mrp[idx];
        if (!v)
            continue;
        p->mrp[idx] = 0;
        p->stats.eager_checks++;
        if (v & MRP_SUPER)
            (void)pod_reclaim_2m(d, (v & ~MRP_SUPER) - 1);
        else
            (void)reclaim_4k(d, v - 1);
    } while (p->count == 0 && i < POD_HISTORY_MAX);
}

static void check_batch(struct domain *d, gfn_t *batch, unsigned *n)
{
    for (unsigned i = 0; i < *n; i++)
        (void)reclaim_4k(d, batch[i]);
    *n = 0;
}

long pod_emergency_sweep(struct domain *d)
{
    struct pod *p = &d->pod;
    gfn_t batch[POD_SWEEP_STRIDE];
    unsigned n = 0;
    p->stats.sweeps++;
    if (p->max_guest == 0)
        return -ENOSPC;
    if (p->reclaim_single == 0 || p->reclaim_single > p->max_guest)
        p->reclaim_single = p->max_guest;
    if (p->pass_left == 0)
        p->pass_left = p->max_guest; /* a new pass over the whole guest */
    uint64_t budget = p->sweep_max ? p->sweep_max : POD_SWEEP_MAX;
    uint64_t work = 0, checked = 0, before = p->count;
    gfn_t g = p->reclaim_single; /* next gfn to look at is g - 1 */
    while (work < budget && p->pass_left > 0) {
        if (checked >= POD_SWEEP_LIMIT && p->count > before)
            break;
        if (g == 0)
            g = p->max_guest; /* wrap: the pass continues from the top */
        gfn_t x = g - 1;
        enum p2m_type t;
        unsigned o;
        p2m_get_entry(d->p2m, x, &t, &o);
        uint64_t step;
        if (t != p2m_ram_rw) {
            /* Skip the whole leaf or empty region below x. */
            step = x - (x & ~(order_pages(o) - 1)) + 1;
            work++;
        } else if (o >= PAGE_ORDER_2M) {
            gfn_t b = x & ~SP_MASK;
            step = x - b + 1;
            check_batch(d, batch, &n);
            if (pod_reclaim_2m(d, b) <= 0) {
                /* Not zero as a whole: its zero 4K pages (splits it). */
                for (gfn_t k = x + 1; k-- > b;) {
                    batch[n++] = k;
                    if (n == POD_SWEEP_STRIDE)
                        check_batch(d, batch, &n);
                }
                check_batch(d, batch, &n);
            }
            work += step;
            checked += step;
        } else {
            batch[n++] = x;
            if (n == POD_SWEEP_STRIDE)
                check_batch(d, batch, &n);
            step = 1;
            work++;
            checked++;
        }
        g -= step;
        p->pass_left -= step < p->pass_left ? step : p->pass_left;
    }
    check_batch(d, batch, &n);
    p->reclaim_single = g;
    p->stats.sweep_work += work;
    uint64_t got = p->count - before;
    if (got) {
        p->pass_left = 0;
        cache_regroup(p);
        return (long)got;
    }
    if (p->pass_left == 0)
        return -ENOSPC;
    p->stats.sweep_again++;
    return -EAGAIN;
}

long pod_zero_sweep(struct domain *d, gfn_t gfn, uint64_t nr)
{
    struct pod *p = &d->pod;
    uint64_t before = p->count;
    if (gfn >= P2M_GFN_LIMIT)
        return 0;
    if (nr > P2M_GFN_LIMIT - gfn)
        nr = P2M_GFN_LIMIT - gfn;
    gfn_t end = gfn + nr;
    for (gfn_t g = gfn; g < end;) {
        enum p2m_type t;
        unsigned o;
        p2m_get_entry(d->p2m, g, &t, &o);
        gfn_t leaf_end = (g & ~(order_pages(o) - 1)) + order_pages(o);
        if (t != p2m_ram_rw) {
            g = leaf_end;
            continue;
        }
        gfn_t b = g & ~SP_MASK;
        if (b == g && b + SP_PAGES <= end) {
            long r = pod_reclaim_2m(d, b);
            if (r > 0 || o >= PAGE_ORDER_2M) {
                g = b + SP_PAGES; /* reclaimed, or a superpage kept whole */
                continue;
            }
        } else if (o >= PAGE_ORDER_2M) {
            g = leaf_end < end ? leaf_end : end; /* partial superpage: keep */
            continue;
        }
        /* 4K leaves of a block that is not zero as a whole. */
        gfn_t lim = b + SP_PAGES < end ? b + SP_PAGES : end;
        for (; g < lim; g++)
            (void)reclaim_4k(d, g);
    }
    cache_regroup(p);
    return (long)(p->count - before);
}

/* ---- demand populate --------------------------------------------------------- */

static int demand_populate(struct domain *d, gfn_t gfn, bool reclaim);

int pod_demand_populate(struct domain *d, gfn_t gfn)
{
    return demand_populate(d, gfn, true);
}

int pod_demand_populate_cached(struct domain *d, gfn_t gfn)
{
    return demand_populate(d, gfn, false);
}

static int demand_populate(struct domain *d, gfn_t gfn, bool reclaim)
{
    struct pod *p = &d->pod;
    enum p2m_type t;
    unsigned o;
    int rc;
    if (d->crashed)
        return -ESRCH;
    p2m_get_entry(d->p2m, gfn, &t, &o);
    if (t != p2m_pod)
        return p2m_is_ram(t) ? 0 : -EINVAL;
    if (!reclaim && p->count == 0)
        return -ENOSPC; /* the caller stops the vCPUs and reclaims */

    if (reclaim && p->entry_count > p->count)
        eager_reclaim(d);
    if (p->count == 0) {
        long r = pod_emergency_sweep(d);
        if (r == -EAGAIN)
            return -EAGAIN;
        if (p->count == 0) {
            p->stats.out_of_memory++;
            domain_crash(d, "out of PoD memory at gfn %#llx: cache empty, %llu PoD "
                            "pages outstanding, no zero page in a full sweep",
                         (unsigned long long)gfn, (unsigned long long)p->entry_count);
            return -ESRCH;
        }
    }
    /* Reclaim may have merged PoD entries around gfn: look again. */
    p2m_get_entry(d->p2m, gfn, &t, &o);
    assert(t == p2m_pod);
    if (o == PAGE_ORDER_1G) {
        if ((rc = p2m_split(d->p2m, gfn)) < 0)
            goto err_tables;
        p->stats.splinter_1g++;
        o = PAGE_ORDER_2M;
    }
    if (o == PAGE_ORDER_2M) {
        gfn_t b = gfn & ~SP_MASK;
        if (p->nr_chunks) {
            mfn_t mfn = p->chunks[p->nr_chunks - 1];
            if ((rc = p2m_set_entry(d->p2m, b, mfn, PAGE_ORDER_2M, p2m_ram_rw)) < 0)
                goto err_tables;
            dirty_on_map(d, b, PAGE_ORDER_2M); /* log-dirty: marked, and its form */
            p->nr_chunks--;
            p->count -= SP_PAGES;
            p->entry_count -= SP_PAGES;
            p->stats.demand_2m++;
            mrp_add(p, b, true);
            return 0;
        }
        /* Only 4K pages: splinter the entry and map the touched page. */
        if ((rc = p2m_split(d->p2m, gfn)) < 0)
            goto err_tables;
        p->stats.splinter_2m++;
    }
    if (!p->nr_pages) {
        if (reserve_pages(p, SP_PAGES) < 0) {
            domain_crash(d, "out of host memory for the PoD cache lists");
            return -ESRCH;
        }
        break_chunk(p);
    }
    mfn_t mfn = p->pages[p->nr_pages - 1];
    if ((rc = p2m_set_entry(d->p2m, gfn, mfn, PAGE_ORDER_4K, p2m_ram_rw)) < 0)
        goto err_tables;
    dirty_on_map(d, gfn, PAGE_ORDER_4K); /* log-dirty: new RAM is dirty */
    p->nr_pages--;
    p->count--;
    p->entry_count--;
    p->stats.demand_4k++;
    mrp_add(p, gfn, false);
    return 0;

err_tables:
    domain_crash(d, "PoD populate of gfn %#llx failed: %s", (unsigned long long)gfn,
                 rc == -ENOMEM ? "p2m table pool exhausted" : "p2m error");
    return -ESRCH;
}

/* ---- audit ------------------------------------------------------------------ */

int pod_audit_frames(const struct domain *d, uint64_t *seen)
{
    const struct pod *p = &d->pod;
    const struct frames *f = d->m->frames;
    for (size_t list = 0; list < 2; list++) {
        size_t n = list ? p->nr_pages : p->nr_chunks;
        uint64_t len = list ? 1 : SP_PAGES;
        for (size_t i = 0; i < n; i++) {
            mfn_t mfn = list ? p->pages[i] : p->chunks[i];
            if (mfn + len > d->m->nr_frames)
                return hv_audit_fail("domain %u: PoD cache mfn %#llx beyond the machine",
                                     d->domid, (unsigned long long)mfn);
            for (mfn_t x = mfn; x < mfn + len; x++) {
                if (seen[x / 64] & (1ULL << (x % 64)))
                    return hv_audit_fail("domain %u: PoD cache mfn %#llx is also mapped "
                                         "or cached twice", d->domid,
                                         (unsigned long long)x);
                seen[x / 64] |= 1ULL << (x % 64);
                if (frame_owner(f, x, NULL) != d->domid)
                    return hv_audit_fail("domain %u: PoD cache mfn %#llx not owned",
                                         d->domid, (unsigned long long)x);
            }
        }
    }
    return 0;
}

int pod_audit(const struct domain *d)
{
    const struct pod *p = &d->pod;
    if (p->count != p->nr_chunks * SP_PAGES + p->nr_pages)
        return hv_audit_fail("domain %u: pod.count %llu but cache holds %zu chunks + %zu pages",
                             d->domid, (unsigned long long)p->count, p->nr_chunks,
                             p->nr_pages);
    if (p->count > p->entry_count)
        return hv_audit_fail("domain %u: pod.count %llu > entry_count %llu", d->domid,
                             (unsigned long long)p->count,
                             (unsigned long long)p->entry_count);
    if (p->count > d->tot_pages)
        return hv_audit_fail("domain %u: pod.count %llu > tot_pages %llu", d->domid,
                             (unsigned long long)p->count,
                             (unsigned long long)d->tot_pages);
    for (size_t i = 0; i < p->nr_chunks; i++)
        if (!is_aligned_order(p->chunks[i], PAGE_ORDER_2M))
            return hv_audit_fail("domain %u: PoD chunk mfn %#llx not 2M-aligned",
                                 d->domid, (unsigned long long)p->chunks[i]);
    /* Zero contents: only a few frames, reading commits host memory. */
    for (size_t i = 0; i < p->nr_pages && i < 4; i++)
        if (!zero_check(machine_ptr(d->m, p->pages[p->nr_pages - 1 - i]), PAGE_SIZE))
            return hv_audit_fail("domain %u: PoD cache page mfn %#llx is not zero",
                                 d->domid, (unsigned long long)p->pages[p->nr_pages - 1 - i]);
    for (size_t i = 0; i < p->nr_chunks && i < 2; i++)
        if (!zero_check(machine_ptr(d->m, p->chunks[p->nr_chunks - 1 - i]), PAGE_SIZE))
            return hv_audit_fail("domain %u: PoD chunk mfn %#llx is not zero", d->domid,
                                 (unsigned long long)p->chunks[p->nr_chunks - 1 - i]);
    return 0;
}
