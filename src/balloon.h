/*
 * balloon.h - a guest-side balloon driver model, in 2 MiB units (seed 001).
 *
 * The driver owns a list of extents it has given back to the hypervisor.
 * Given a target (guest-visible pages), it inflates by taking 2M-aligned
 * blocks of guest RAM from the top of the guest layout downwards and
 * returning each with one decrease_reservation of order 9; it deflates by
 * handing its extents back with increase_reservation at order 9, newest
 * first.  4K is used only for what cannot be done in 2M: a remainder below
 * 2M, blocks cut by holes or 4K-only ranges, and deflates whose 2M request
 * the machine served as 4K pages (domain stat increase_fallback_4k).  Every
 * 4K extent is counted and shown.
 *
 * Invariants: pages_out == sum of the sizes of the extents on the list;
 * guest_pages - pages_out == the guest-visible size; no gfn is on the list
 * twice (a bitmap over the layout); a ballooned gfn is mapped nowhere
 * (balloon_audit checks them all).  A failed call (-ENOMEM, -EDQUOT) stops
 * between two extents: every invariant holds and the call can be retried.
 *
 * Concurrency: like any domain operation, the caller holds d->lock while a
 * vCPU may run (the driver runs inside the guest, between its quanta); a
 * large move is best made as a series of smaller targets so the guest runs
 * in between (hugevm balloon --step).
 */
#ifndef HUGEVM_BALLOON_H
#define HUGEVM_BALLOON_H

#include "common.h"

struct domain;

#define BALLOON_STAT_FIELDS(X)                                                 \
    X(inflated_2m, "2M extents returned (decrease_reservation, order 9)")      \
    X(inflated_4k, "4K extents returned (no 2M block left, or remainder)")     \
    X(deflated_2m, "2M extents taken back (increase_reservation, order 9)")    \
    X(deflated_4k, "4K extents taken back")                                    \
    X(deflate_2m_as_4k, "2M deflates the machine served as 4K pages")

struct balloon_stats {
#define X(name, desc) uint64_t name;
    BALLOON_STAT_FIELDS(X)
#undef X
};

struct balloon {
    struct domain *d;
    uint64_t guest_pages;  /* the guest's size without the balloon */
    uint64_t pages_out;    /* pages currently in the balloon */
    gfn_t lo, hi;          /* gfn span of the layout (bitmap bounds) */
    struct { gfn_t gfn; uint64_t nr; } layout[2];
    unsigned nr_layout;
    uint64_t *out;         /* bitmap over [lo, hi): gfn is ballooned */
    gfn_t *ext;            /* extents, gfn | (order 9 ? 1 : 0) << 63 */
    size_t n, cap;
    struct balloon_stats stats;
};

/* A balloon for a guest laid out by domain_guest_layout(d, guest_bytes). */
int balloon_init(struct balloon *b, struct domain *d, uint64_t guest_bytes) HV_MUST_CHECK;
void balloon_fini(struct balloon *b);

/* Guest-visible pages now. */
static inline uint64_t balloon_current(const struct balloon *b)
{
    return b->guest_pages - b->pages_out;
}

/* Inflate or deflate to `target_pages` (clamped to [0, guest_pages]).
 * Returns 0; -ENOMEM / -EDQUOT when a deflate cannot get memory (the
 * balloon stops where it is, consistent); -ENOMEM on metadata. */
int balloon_set_target(struct balloon *b, uint64_t target_pages) HV_MUST_CHECK;

/* The driver's invariants against the domain: pages_out equals the sum of
 * the extents, the bitmap marks exactly the gfns of the extents (each once,
 * 2M extents aligned), and no ballooned gfn is mapped in the p2m (RAM or
 * PoD).  0 or -EUCLEAN (message in hv_audit_last()). */
int balloon_audit(const struct balloon *b) HV_MUST_CHECK;

#endif
