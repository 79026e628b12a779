/*
 * frames.h - the machine-frame allocator.
 *
 * A buddy allocator over mfns [0, nr_frames), orders 0..18, that merges free
 * buddies and records the owning domain of each allocated extent.  It knows
 * nothing about the bytes behind the frames: the machine layer installs a
 * scrub hook that is called for every extent as it becomes free, so that
 * every free frame reads as zero (see machine.h).
 *
 * Two policies share the buddy core and differ only in which free extent a
 * request takes:
 *  - FRAME_POLICY_BUDDY: the classic one: the head of the smallest non-empty
 *    free list of order >= the request.
 *  - FRAME_POLICY_FRAGPOOL (default, seed 001): requests below 2M are carved
 *    from "fragment" 2M blocks (2M blocks already split below order 9), the
 *    fullest one first, so 4K churn stays inside a small set of blocks and
 *    the emptiest ones drain back to whole 2M extents; 2M..512M requests are
 *    likewise taken from the fullest already-split 1G region.  A whole free
 *    2M (1G) extent is split only when no fragment block (region) can serve.
 *
 * Freeing accepts any aligned sub-extent of an allocated extent: the
 * allocated extent is split buddy-style (the other halves stay allocated
 * with the same owner) and the freed piece merges with free buddies.
 *
 * Invariants (checked by frames_audit):
 *  - every frame is covered by exactly one extent, free or allocated, whose
 *    head mfn is aligned to its order;
 *  - free extents are on the free list of their order; no two free buddies
 *    of the same order coexist (they would have merged);
 *  - counters (free frames, free extents per order, fragment-block counts)
 *    equal what a full scan finds.
 */
#ifndef HUGEVM_FRAMES_H
#define HUGEVM_FRAMES_H

#include "common.h"

enum frame_policy {
    FRAME_POLICY_FRAGPOOL = 0,
    FRAME_POLICY_BUDDY = 1,
};
const char *frame_policy_name(enum frame_policy p);
int frame_policy_parse(const char *s, enum frame_policy *out) HV_MUST_CHECK;

struct frames;

/* Called with each extent that has just become free (before it can be
 * handed out again).  Must not call back into the allocator. */
typedef void (*frame_scrub_fn)(void *ctx, mfn_t mfn, unsigned order);

/* nr_frames may be any positive number (need not be a power of two) below
 * 2^32 - 1 (16 TiB); the tail that does not fill an aligned extent is carved
 * into smaller ones.  Metadata is lazily committed (anonymous mmap),
 * so a huge machine with few used frames costs little RSS (about 2 MiB for
 * 64 GiB).  -EINVAL (0 or too many frames, unknown policy), -ENOMEM. */
int frames_create(struct frames **out, uint64_t nr_frames,
                  enum frame_policy policy) HV_MUST_CHECK;
/* As frames_create, the metadata on huge pages when `huge` (a pool that
 * will be used whole, such as a resident machine's: its first allocations
 * then do not fault 4 KiB at a time). */
int frames_create_huge(struct frames **out, uint64_t nr_frames, enum frame_policy policy,
                       bool huge) HV_MUST_CHECK;
void frames_destroy(struct frames *f);
void frames_set_scrub(struct frames *f, frame_scrub_fn fn, void *ctx);
enum frame_policy frames_policy(const struct frames *f);
uint64_t frames_nr(const struct frames *f);

/* Allocate one aligned extent of 2^order frames for `owner` (not
 * DOMID_INVALID).  Returns 0 and *mfn, -ENOMEM (nothing changed; counted in
 * alloc_failures) or -EINVAL (order > MAX_ORDER or owner DOMID_INVALID).
 * Honours FAULT_SITE_FRAME. */
int frame_alloc(struct frames *f, unsigned order, domid_t owner,
                mfn_t *mfn) HV_MUST_CHECK;

/* Free [mfn, mfn + 2^order): it must be aligned and lie inside one allocated
 * extent owned by `owner`.  Returns 0, -EINVAL (misaligned/out of range) or
 * -EPERM (not allocated to owner); on error nothing changes. */
int frame_free(struct frames *f, mfn_t mfn, unsigned order, domid_t owner);

/* Owner of the allocated extent containing mfn, DOMID_INVALID if free or out
 * of range.  If head_order is non-NULL it receives the allocated extent's
 * order (undefined when free). */
domid_t frame_owner(const struct frames *f, mfn_t mfn, unsigned *head_order);

/* Frames currently allocated to `owner` (kept as a counter, O(1)). */
uint64_t frames_owned(const struct frames *f, domid_t owner);

struct frame_stats {
    uint64_t nr_frames;
    uint64_t free_frames;
    uint64_t free_extents[NR_ORDERS]; /* free extents per exact order */
    uint64_t frag_blocks;             /* 2M blocks split below order 9 */
    uint64_t frag_regions;            /* 1G regions split below order 18 */
    uint64_t allocs[NR_ORDERS];       /* successful allocations per order */
    uint64_t alloc_failures[NR_ORDERS];
    uint64_t frees;
};
void frames_get_stats(const struct frames *f, struct frame_stats *st);

/* How many extents of `order` could be allocated right now (free extents of
 * order >= `order`, each counted for the pieces it holds). */
uint64_t frames_allocatable(const struct frames *f, unsigned order);

/* Linux's unusable free space index (0..1): the fraction of free memory
 * that lies in free extents smaller than `order`. */
double frames_unusable_index(const struct frames *f, unsigned order);
/* Linux's extfrag index for `order`: -1.0 when an allocation of that order
 * would succeed; otherwise in [0, 1]: values towards 0 mean failure is from
 * lack of memory, towards 1 from fragmentation; 0 when nothing is free.
 * Both indices are computed in thousandths as mm/vmstat.c does; extfrag is
 * clamped at 0 where Linux's formula would go negative (very few free
 * blocks, e.g. a single free 4K frame asked for order 1). */
double frames_extfrag_index(const struct frames *f, unsigned order);

/* Full consistency check; 0 or -EUCLEAN (see hv_audit_last()). O(nr_frames). */
int frames_audit(const struct frames *f) HV_MUST_CHECK;

/*
 * Fragmentation churn: as domain `owner`, perform random allocations and
 * frees (a fraction `mix_4k` of them at order 0, the rest at order 9) until
 * `owner` holds `target` of the machine in 4K pieces (2M pieces it holds at
 * the end are freed).  Deterministic for a seed.  The 4K pieces stay
 * allocated (this is the pre-fragmented host).  The 4K population grows to
 * 1.5 * target, shrinks to target / 4, churns steadily, then grows to target
 * (see frames.c), about 6 * target * nr_frames / mix_4k operations.
 * Returns 0, -EINVAL (owner DOMID_INVALID, target outside [0, 1], mix_4k
 * outside (0, 1]) or -ENOMEM when the target cannot be reached (then
 * everything allocated by this call has been freed again).  `ops` (may be
 * NULL) receives the number of allocator operations performed.
 */
int frames_fragment(struct frames *f, domid_t owner, double target,
                    double mix_4k, uint64_t seed, uint64_t *ops) HV_MUST_CHECK;

#endif
