/*
 * defrag.h - superpage defragmentation of a running guest (beyond Xen,
 * which never merges).
 *
 * A candidate region is a 2M (or 1G) aligned gfn block wholly mapped by
 * smaller ram_rw leaves, clear of 4K-only ranges, whose frames are not one
 * aligned machine run.  Defrag allocates a free extent of the region's
 * order, copies the region into it leaf by leaf, remaps the region as one
 * leaf and frees the old frames.  A region that already is one aligned run
 * is merged in place (p2m_coalesce), without a copy.
 *
 * Safety while the guest runs (D-bit protocol): before a leaf is copied its
 * D bit is cleared and d->p2m_gen is bumped (vCPU TLBs flush, so the next
 * write sets D again).  Copies are rate-limited: defrag_step() copies at
 * most `budget` pages, and the guest runs between steps.  The last step
 * checks that every leaf still maps the frames it was copied from (else the
 * copy is abandoned and counted), re-copies every leaf whose D bit is set
 * (written during the copy), and only then switches the p2m entry and frees
 * the old frames; that final step runs with no guest access in between
 * (the caller holds d->lock, as the vCPU does for each quantum), so no
 * write is lost.  Never-written 2M source runs (memfd holes, SEEK_DATA) are
 * not copied: the target extent is already zero.
 *
 * While a copy is in flight the target extent is owned by the domain and
 * counted in d->held_pages (domain_audit accounts it).  Refused (-EBUSY)
 * while log-dirty is on: the dirty log owns the D bits then.
 */
#ifndef HUGEVM_DEFRAG_H
#define HUGEVM_DEFRAG_H

#include "common.h"

struct domain;

#define DEFRAG_STAT_FIELDS(X)                                                  \
    X(regions_scanned, "aligned regions examined")                             \
    X(merged_2m, "2M regions copied and remapped as one 2M leaf")              \
    X(merged_1g, "1G regions copied and remapped as one 1G leaf")              \
    X(merged_in_place, "regions already contiguous: merged without a copy")    \
    X(pages_copied, "4K pages copied")                                         \
    X(pages_recopied, "4K pages copied again: written during the copy")        \
    X(holes_skipped, "never-written 2M source runs not copied")                \
    X(no_extent, "candidates skipped: no free extent of the order")            \
    X(aborted, "copies abandoned: the region changed under the copy")

struct defrag_stats {
#define X(name, desc) uint64_t name;
    DEFRAG_STAT_FIELDS(X)
#undef X
};

struct defrag_leaf {
    gfn_t gfn;
    mfn_t mfn;
    unsigned order;
};

struct defrag {
    struct domain *d;
    gfn_t cursor, end; /* scan range, aligned to the order */
    unsigned order;    /* PAGE_ORDER_2M or PAGE_ORDER_1G */
    bool active;       /* a copy is in flight */
    gfn_t rgn;
    mfn_t dst;
    struct defrag_leaf *leaves;
    size_t nleaves, cap, next;
    struct defrag_stats stats;
};

/* Defragment [gfn, gfn + nr) at `order` (9 or 18).  -EINVAL. */
int defrag_init(struct defrag *df, struct domain *d, gfn_t gfn, uint64_t nr,
                unsigned order) HV_MUST_CHECK;
/* Copy at most `budget` pages (0: no limit) and finish a region when its
 * copy is complete.  Returns 1 while work remains, 0 when the range is
 * done, -EBUSY (log-dirty on), -ENOMEM (metadata: nothing changed, the
 * cursor stays on the region, so calling again retries it; a finished copy
 * whose old frames cannot be parked (domain.h, quarantine) stays in
 * flight and is switched by the next call).  No free extent
 * of the order (frame_alloc fails) is not an error: the scan ends there and
 * no_extent counts it.  Caller holds d->lock while a vCPU may run. */
int defrag_step(struct defrag *df, uint64_t budget) HV_MUST_CHECK;
/* Abandon an in-flight copy (target freed) and release memory. */
void defrag_fini(struct defrag *df);

/* Whole range at once, rate-limited to `mib_per_s` of copying (0: no
 * limit; sleeps between steps of 2 MiB).  Takes d->lock around each step.
 * Statistics are added to *st (may be NULL). */
int defrag_run(struct domain *d, gfn_t gfn, uint64_t nr, unsigned order,
               double mib_per_s, struct defrag_stats *st) HV_MUST_CHECK;

#endif
