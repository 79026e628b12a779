/*
 * shadow.c - see shadow.h.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shadow.h"

/* Slot of gfn, or -1 when the page is not shadowed. */
static int64_t shadow_slot(const struct guest_shadow *w, gfn_t g)
{
    uint64_t idx = 0;
    for (unsigned i = 0; i < w->n; i++) {
        if (g >= w->r[i].gfn && g < w->r[i].gfn + w->r[i].nr) {
            idx += g - w->r[i].gfn;
            return idx % w->stride ? -1 : (int64_t)(idx / w->stride);
        }
        idx += w->r[i].nr;
    }
    return -1;
}

static gfn_t shadow_gfn(const struct guest_shadow *w, uint64_t slot)
{
    uint64_t idx = slot * w->stride;
    for (unsigned i = 0; i < w->n; i++) {
        if (idx < w->r[i].nr)
            return w->r[i].gfn + idx;
        idx -= w->r[i].nr;
    }
    return INVALID_GFN;
}

static void page_bytes(const struct domain *d, gfn_t g, uint8_t *out)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, g, &t, NULL);
    if (p2m_is_ram(t))
        memcpy(out, machine_ptr(d->m, mfn), PAGE_SIZE);
    else
        memset(out, 0, PAGE_SIZE); /* PoD, hole: reads as zero */
}

int guest_shadow_init(struct guest_shadow *w, const struct domain *d, const struct gfn_range *r,
                      unsigned n)
{
    memset(w, 0, sizeof(*w));
    for (unsigned i = 0; i < n; i++) {
        w->r[i] = r[i];
        w->pages += r[i].nr;
    }
    w->n = n;
    w->stride = (w->pages + GUEST_SHADOW_MAX_PAGES - 1) / GUEST_SHADOW_MAX_PAGES;
    if (!w->stride)
        w->stride = 1;
    w->slots = (w->pages + w->stride - 1) / w->stride;
    w->bytes = malloc(w->slots * PAGE_SIZE);
    if (!w->bytes)
        return -ENOMEM;
    for (uint64_t s = 0; s < w->slots; s++)
        page_bytes(d, shadow_gfn(w, s), w->bytes + s * PAGE_SIZE);
    return 0;
}

/* on_write: the runner thread, d->lock held. */
void guest_shadow_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val)
{
    struct guest_shadow *w = ctx;
    (void)vcpu;
    int64_t s = shadow_slot(w, gpa >> PAGE_SHIFT);
    if (s < 0)
        return;
    memcpy(w->bytes + (uint64_t)s * PAGE_SIZE + (gpa & (PAGE_SIZE - 8)), &val, 8);
    w->writes++;
}

/* Pages whose bytes differ from the shadow (guest stopped). */
uint64_t guest_shadow_verify(const struct guest_shadow *w, const struct domain *d)
{
    uint8_t page[PAGE_SIZE];
    uint64_t bad = 0;
    for (uint64_t s = 0; s < w->slots; s++) {
        page_bytes(d, shadow_gfn(w, s), page);
        bad += memcmp(page, w->bytes + s * PAGE_SIZE, PAGE_SIZE) != 0;
    }
    return bad;
}

void cli_sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void guest_shadow_free(struct guest_shadow *w)
{
    free(w->bytes);
    w->bytes = NULL;
}
