/*
 * shadow.h - a sampled shadow of a running guest's memory, fed by its
 * workloads' writes, so a command that changes the guest's memory layout
 * while it runs (balloon, defrag) can prove afterwards that no byte was lost.
 * At most GUEST_SHADOW_MAX_PAGES pages are shadowed, evenly spaced.
 */
#ifndef HUGEVM_SHADOW_H
#define HUGEVM_SHADOW_H

#include "domain.h"

#define GUEST_SHADOW_MAX_PAGES 8192u /* pages shadowed (32 MiB) */

struct guest_shadow {
    struct gfn_range r[2];
    unsigned n;
    uint64_t pages, stride, slots;
    uint8_t *bytes;
    uint64_t writes; /* writes that hit a shadowed page */
};

/* Snapshot the sampled pages of ranges r[0..n) (n <= 2) of d.  -ENOMEM. */
int guest_shadow_init(struct guest_shadow *w, const struct domain *d,
                      const struct gfn_range *r, unsigned n) HV_MUST_CHECK;
/* A workload's on_write callback (ctx = the shadow); runner thread, d->lock held. */
void guest_shadow_write(void *ctx, unsigned vcpu, uint64_t gpa, uint64_t val);
/* Pages whose bytes differ from the shadow; the guest must be stopped. */
uint64_t guest_shadow_verify(const struct guest_shadow *w, const struct domain *d);
void guest_shadow_free(struct guest_shadow *w);

void cli_sleep_ms(uint64_t ms);

#endif
