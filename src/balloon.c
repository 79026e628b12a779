/*
 * balloon.c - the balloon driver model (see balloon.h).
 *
 * Inflate scans the layout from the top for 2M-aligned blocks with no
 * ballooned gfn, clear of holes and 4K-only ranges, and returns each one
 * whole; the last partial remainder (< 512 pages), or everything when no
 * such block is left, goes 4K at a time, from the top as well.  Deflate
 * pops extents newest first; a 2M extent larger than what is still needed
 * is first cut into 4K extents on the list (counted as 4K when returned).
 */
#include "balloon.h"
#include "domain.h"

#include <stdlib.h>
#include <string.h>

#define SP 512ULL
#define EXT_2M (1ULL << 63)

static bool is_out(const struct balloon *b, gfn_t g)
{
    uint64_t i = g - b->lo;
    return (b->out[i / 64] >> (i % 64)) & 1;
}

static void set_out(struct balloon *b, gfn_t g, uint64_t nr, bool on)
{
    for (uint64_t k = 0; k < nr; k++) {
        uint64_t i = g + k - b->lo;
        if (on)
            b->out[i / 64] |= 1ULL << (i % 64);
        else
            b->out[i / 64] &= ~(1ULL << (i % 64));
    }
}

static int reserve_ext(struct balloon *b, size_t more)
{
    if (b->n + more > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + more)
            cap *= 2;
        gfn_t *nv = hv_malloc(cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        if (b->n)
            memcpy(nv, b->ext, b->n * sizeof(*nv));
        free(b->ext);
        b->ext = nv;
        b->cap = cap;
    }
    return 0;
}

static int push_ext(struct balloon *b, gfn_t v)
{
    int rc = reserve_ext(b, 1);
    if (rc == 0)
        b->ext[b->n++] = v;
    return rc;
}

int balloon_init(struct balloon *b, struct domain *d, uint64_t guest_bytes)
{
    struct gfn_range r[2];
    memset(b, 0, sizeof(*b));
    if (guest_bytes == 0 || guest_bytes % PAGE_SIZE)
        return -EINVAL;
    b->d = d;
    b->nr_layout = domain_guest_layout(d, guest_bytes, r);
    b->lo = r[0].gfn;
    b->hi = r[b->nr_layout - 1].gfn + r[b->nr_layout - 1].nr;
    for (unsigned i = 0; i < b->nr_layout; i++) {
        b->layout[i].gfn = r[i].gfn;
        b->layout[i].nr = r[i].nr;
        for (gfn_t g = r[i].gfn; g < r[i].gfn + r[i].nr; g++)
            b->guest_pages += !domain_gfn_in_hole(d, g);
    }
    b->out = hv_calloc((b->hi - b->lo + 63) / 64, sizeof(uint64_t));
    return b->out ? 0 : -ENOMEM;
}

void balloon_fini(struct balloon *b)
{
    free(b->out);
    free(b->ext);
    memset(b, 0, sizeof(*b));
}

/* A 2M block the driver may give back whole. */
static bool block_ok(const struct balloon *b, gfn_t g)
{
    if (p2m_range_is_4k_only(b->d->p2m, g, PAGE_ORDER_2M))
        return false;
    for (gfn_t x = g; x < g + SP; x++)
        if (is_out(b, x) || domain_gfn_in_hole(b->d, x))
            return false;
    return true;
}

static int give(struct balloon *b, gfn_t g, unsigned order)
{
    int rc = push_ext(b, g | (order ? EXT_2M : 0));
    if (rc < 0)
        return rc;
    long r = domain_decrease_reservation(b->d, g, order_pages(order));
    if (r < 0) {
        b->n--;
        return (int)r;
    }
    set_out(b, g, order_pages(order), true);
    b->pages_out += order_pages(order);
    if (order)
        b->stats.inflated_2m++;
    else
        b->stats.inflated_4k++;
    return 0;
}

static int inflate(struct balloon *b, uint64_t pages)
{
    int rc;
    /* 2M blocks from the top of the layout downwards. */
    for (unsigned i = b->nr_layout; i-- > 0 && pages >= SP;) {
        gfn_t start = b->layout[i].gfn, end = b->layout[i].gfn + b->layout[i].nr;
        for (gfn_t g = (end & ~(SP - 1)); g >= start + SP && pages >= SP;) {
            g -= SP;
            if (g < start || !block_ok(b, g))
                continue;
            if ((rc = give(b, g, PAGE_ORDER_2M)) < 0)
                return rc;
            pages -= SP;
        }
    }
    /* What cannot be done in 2M: 4K pages, from the top. */
    for (unsigned i = b->nr_layout; i-- > 0 && pages;) {
        gfn_t start = b->layout[i].gfn, end = b->layout[i].gfn + b->layout[i].nr;
        for (gfn_t g = end; g > start && pages;) {
            g--;
            if (is_out(b, g) || domain_gfn_in_hole(b->d, g))
                continue;
            if ((rc = give(b, g, PAGE_ORDER_4K)) < 0)
                return rc;
            pages--;
        }
    }
    return 0;
}

static int deflate(struct balloon *b, uint64_t pages)
{
    struct domain *d = b->d;
    int rc;
    while (pages && b->n) {
        gfn_t v = b->ext[b->n - 1];
        gfn_t g = v & ~EXT_2M;
        if ((v & EXT_2M) && pages < SP) {
            /* cut it: 512 4K extents, the lowest on top */
            if ((rc = reserve_ext(b, SP)) < 0)
                return rc;
            b->n--;
            for (uint64_t k = SP; k-- > 0;)
                b->ext[b->n++] = g + k;
            continue;
        }
        unsigned order = (v & EXT_2M) ? PAGE_ORDER_2M : PAGE_ORDER_4K;
        uint64_t fb_before = d->stats.increase_fallback_4k;
        rc = domain_increase_reservation(d, g, 1, order);
        if (rc < 0)
            return rc;
        b->n--;
        set_out(b, g, order_pages(order), false);
        b->pages_out -= order_pages(order);
        pages -= order_pages(order);
        if (!order)
            b->stats.deflated_4k++;
        else if (d->stats.increase_fallback_4k != fb_before)
            b->stats.deflate_2m_as_4k++;
        else
            b->stats.deflated_2m++;
    }
    return 0;
}

int balloon_set_target(struct balloon *b, uint64_t target_pages)
{
    if (target_pages > b->guest_pages)
        target_pages = b->guest_pages;
    uint64_t cur = balloon_current(b);
    if (target_pages < cur)
        return inflate(b, cur - target_pages);
    if (target_pages > cur)
        return deflate(b, target_pages - cur);
    return 0;
}

int balloon_audit(const struct balloon *b)
{
    uint64_t sum = 0, marked = 0;
    uint64_t words = (b->hi - b->lo + 63) / 64;
    for (uint64_t i = 0; i < words; i++)
        marked += (uint64_t)__builtin_popcountll(b->out[i]);
    for (size_t i = 0; i < b->n; i++) {
        gfn_t g = b->ext[i] & ~EXT_2M;
        uint64_t nr = (b->ext[i] & EXT_2M) ? SP : 1;
        if (g < b->lo || g + nr > b->hi || ((b->ext[i] & EXT_2M) && (g & (SP - 1))))
            return hv_audit_fail("balloon: extent %zu (gfn %#llx) outside the layout or "
                                 "misaligned", i, (unsigned long long)g);
        for (gfn_t x = g; x < g + nr; x++) {
            enum p2m_type t;
            if (!is_out(b, x))
                return hv_audit_fail("balloon: gfn %#llx on the list but not in the bitmap",
                                     (unsigned long long)x);
            p2m_get_entry(b->d->p2m, x, &t, NULL);
            if (t != p2m_invalid)
                return hv_audit_fail("balloon: ballooned gfn %#llx is mapped (%s)",
                                     (unsigned long long)x, p2m_type_name(t));
        }
        sum += nr;
    }
    if (sum != b->pages_out || marked != b->pages_out)
        return hv_audit_fail("balloon: pages_out %llu, extents hold %llu, bitmap %llu",
                             (unsigned long long)b->pages_out, (unsigned long long)sum,
                             (unsigned long long)marked);
    if (b->pages_out > b->guest_pages)
        return hv_audit_fail("balloon: pages_out %llu > guest_pages %llu",
                             (unsigned long long)b->pages_out,
                             (unsigned long long)b->guest_pages);
    return 0;
}
