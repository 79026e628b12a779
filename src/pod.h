/*
 * pod.h - populate-on-demand (Xen's p2m-pod), superpage first.
 *
 * A PoD domain is populated with p2m_pod entries (4K, 2M or 1G leaves with
 * no frame) instead of RAM; a PoD target says how much real memory backs it.
 * The frames live in the PoD cache until a guest access to a PoD entry (an
 * EPT violation) maps one:
 *
 *  - cache: a list of 2M chunks (aligned, machine-contiguous runs of 512
 *    frames) and a list of 4K pages, all owned by the domain and all zero.
 *    Taking a 4K page when the 4K list is empty breaks one 2M chunk.  The
 *    cache grows and shrinks in 2M units where it can (4K only for a
 *    remainder below 2M or when no 2M extent is free, counted).
 *  - demand populate: a 1G PoD entry first becomes 512 2M PoD entries; a 2M
 *    PoD entry gets one 2M chunk when the cache has one, else it is
 *    splintered into 512 4K PoD entries and the touched one gets a 4K page.
 *  - reclaim when the cache is short: first the 32 most recently populated
 *    gfns are zero-checked (a 2M one as a superpage), then, if the cache is
 *    empty, a bounded, resumable emergency sweep scans downwards from where
 *    the last one stopped: superpage leaves get a superpage zero check
 *    (quick sample, then full check, then remapped as one 2M PoD entry with
 *    the frames as a 2M chunk), 4K leaves are checked in batches of 16.  A
 *    sweep checks at least POD_SWEEP_LIMIT RAM gfns (unless the pass ends),
 *    stops as soon as it has checked that many and found something, and
 *    never does more than
 *    `sweep_max` units of work per call (a unit: one gfn checked or one
 *    non-RAM leaf skipped).  A call that ran out of budget returns -EAGAIN
 *    (the access is retried and the sweep resumes); when a whole pass over
 *    the guest found nothing, the domain is crashed with the reason in its
 *    event log and stats (never an unbounded scan, never a wrong page).
 *  - reclaimed zero pages become PoD entries again (the guest still reads
 *    zero), so reclaim moves pages from "populated" to "cache" and leaves
 *    tot_pages unchanged; the 4K list is regrouped into 2M chunks whenever
 *    512 of its pages form an aligned machine run.
 *
 * Accounting invariants (Xen's, checked by pod_audit and domain_audit):
 *   entry_count == pages mapped by p2m_pod leaves in the p2m
 *   count       == 512 * nr_chunks + nr_pages  (pages in the cache)
 *   tot_pages   == RAM pages mapped + count;  count <= entry_count
 *   every cache frame is owned by the domain, mapped nowhere, and zero.
 *
 * Concurrency: like every domain operation, the caller guarantees that no
 * vCPU runs the guest during these calls (the soft vCPU calls the fault
 * handler from its own thread of execution), so a page found zero is still
 * zero when it is unmapped.
 */
#ifndef HUGEVM_POD_H
#define HUGEVM_POD_H

#include "common.h"

struct domain;

#define POD_HISTORY_MAX 32      /* recently populated gfns checked first */
#define POD_SWEEP_LIMIT 1024u   /* gfns an emergency sweep covers at least */
#define POD_SWEEP_STRIDE 16u    /* 4K zero checks per batch */
#define POD_SWEEP_MAX 65536u    /* default bound on the work of one sweep */
#define POD_SAMPLES 16u         /* lines sampled before a full 2M check */

/* Statistics declared once: name, description. */
#define POD_STAT_FIELDS(X)                                                     \
    X(demand_2m, "2M chunks mapped on first touch")                            \
    X(demand_4k, "4K pages mapped on first touch")                             \
    X(splinter_1g, "1G PoD entries split to 2M on first touch")                \
    X(splinter_2m, "2M PoD entries split to 4K: no 2M chunk in the cache")     \
    X(chunks_broken, "2M cache chunks broken into 4K pages")                   \
    X(cache_grow_2m, "2M chunks added to the cache (target)")                  \
    X(cache_grow_4k, "4K pages added to the cache (target)")                   \
    X(cache_grow_fallback_4k, "cache 2M allocations that fell back to 4K")     \
    X(cache_shrink_2m, "2M chunks released from the cache")                    \
    X(cache_shrink_4k, "4K pages released from the cache")                     \
    X(cache_regrouped_2m, "2M chunks regrouped from 512 cached 4K pages")      \
    X(eager_checks, "recently populated gfns zero-checked")                    \
    X(sweeps, "emergency sweeps run")                                          \
    X(sweep_again, "emergency sweeps that ran out of budget (-EAGAIN)")        \
    X(sweep_work, "work units of emergency sweeps (gfns checked + leaves skipped)") \
    X(zero_checks_2m, "superpage zero checks")                                 \
    X(zero_sample_rejects, "superpage checks rejected by the quick sample")    \
    X(zero_checks_4k, "4K zero checks")                                        \
    X(reclaimed_2m, "zero 2M superpages reclaimed into the cache")             \
    X(reclaimed_4k, "zero 4K pages reclaimed into the cache")                  \
    X(reclaim_split_2m, "superpages split to reclaim a zero 4K page")          \
    X(decrease_pod, "PoD pages removed by decrease_reservation")               \
    X(decrease_zero_2m, "zero 2M superpages reclaimed whole by decrease_reservation") \
    X(out_of_memory, "crashes: cache empty and nothing reclaimable")

struct pod_stats {
#define X(name, desc) uint64_t name;
    POD_STAT_FIELDS(X)
#undef X
};

/* The PoD state of one domain (embedded in struct domain). */
struct pod {
    mfn_t *chunks;  /* 2M chunks: head mfn of each, aligned to 512 */
    size_t nr_chunks, cap_chunks;
    mfn_t *pages;   /* 4K pages */
    size_t nr_pages, cap_pages;
    uint64_t count;       /* pages in the cache */
    uint64_t entry_count; /* PoD pages in the p2m */
    uint64_t target;      /* last target given to pod_set_target (pages) */
    gfn_t mrp[POD_HISTORY_MAX]; /* recently populated (bit 63: a 2M chunk) */
    unsigned mrp_idx;
    gfn_t max_guest;      /* 1 + highest gfn ever populated (sweep start) */
    gfn_t reclaim_single; /* where the next emergency sweep resumes */
    uint64_t pass_left;   /* gfns left in the current fruitless sweep pass */
    uint64_t sweep_max;   /* work bound of one sweep (0: POD_SWEEP_MAX) */
    struct pod_stats stats;
};

/*
 * Set the domain's memory target in pages (Xen's set_pod_target): the cache
 * is sized to target - populated RAM, clamped to [0, entry_count], growing
 * by 2M extents (4K for a remainder or when no 2M extent is free) and
 * shrinking 2M chunks first.  -EDQUOT past max_pages or -ENOMEM when the
 * machine runs out: the cache keeps what it got and the accounting holds.
 */
int pod_set_target(struct domain *d, uint64_t target_pages) HV_MUST_CHECK;

/* Size the cache to exactly `pages` (same rules, no clamping beyond
 * entry_count).  Used by pod_set_target and decrease_reservation. */
int pod_set_cache_target(struct domain *d, uint64_t pages) HV_MUST_CHECK;

/* Shrink the cache to at most `pages` (2M chunks first; never fails: when
 * no host memory is left to break a chunk, the whole chunk goes).  The
 * frames leave through domain_free_frames, so a domain in quarantine parks
 * them (domain.h): reserve pod_shrink_runs(d) runs first. */
void pod_shrink_cache(struct domain *d, uint64_t pages);
/* Most frame runs one pod_shrink_cache call can free: every chunk, every
 * page, and the pages of one broken chunk. */
size_t pod_shrink_runs(const struct domain *d);

/*
 * The EPT-violation handler for a p2m_pod entry at gfn.  Returns 0 when the
 * access can be retried (gfn is now RAM, or was not PoD any more), -EAGAIN
 * when the cache is empty and the bounded sweep must continue (retry: the
 * sweep resumes), -ESRCH when the domain is (now) crashed: out of PoD
 * memory or out of p2m tables, reason in the domain's event log.
 */
int pod_demand_populate(struct domain *d, gfn_t gfn) HV_MUST_CHECK;

/*
 * The same from the cache alone, never reclaiming (no zero check, no
 * sweep, so nothing but gfn's entry changes): what a program guest's fault
 * server does while the other vCPUs keep running.  -ENOSPC when the cache
 * is empty (the caller stops the vCPUs and calls pod_demand_populate);
 * otherwise as pod_demand_populate.
 */
int pod_demand_populate_cached(struct domain *d, gfn_t gfn) HV_MUST_CHECK;

/* One bounded emergency sweep (also what demand populate runs when the
 * cache is empty).  Returns pages reclaimed (> 0), -EAGAIN (budget spent,
 * pass not finished), or -ENOSPC (a whole pass found nothing). */
long pod_emergency_sweep(struct domain *d);

/*
 * The consolidation sweep (seed 003: a full sweep regardless of the cache
 * level): zero-check every ram_rw gfn of [gfn, gfn + nr), superpages whole,
 * 4K leaves one by one, and reclaim the zero ones into the cache.  Returns
 * pages reclaimed.  Superpages are never split by this sweep: a 2M leaf is
 * reclaimed whole or left alone.
 */
long pod_zero_sweep(struct domain *d, gfn_t gfn, uint64_t nr);

/* Reclaim the 2M block at gfn (aligned) into the cache if it is all RAM
 * (ram_rw) and all zero: quick sample, full check, remap as one 2M PoD
 * entry.  Returns 512 when reclaimed, 0 when not (non-zero, not RAM), or
 * -ENOMEM (tables; nothing changed). */
long pod_reclaim_2m(struct domain *d, gfn_t gfn);

/* Release the cache (domain destruction; entries must be gone). */
void pod_destroy(struct domain *d);

/* Cache structure, alignment, ownership, zero contents of a few frames,
 * counts and count <= entry_count.  0 or -EUCLEAN. */
int pod_audit(const struct domain *d) HV_MUST_CHECK;

/* For domain_audit: mark every cache frame in `seen` (a bitmap over the
 * machine) and fail if one is already marked (mapped) or not owned. */
int pod_audit_frames(const struct domain *d, uint64_t *seen) HV_MUST_CHECK;

/* Cache state for reports. */
static inline uint64_t pod_cache_2m(const struct pod *p) { return p->nr_chunks; }
static inline uint64_t pod_cache_4k(const struct pod *p) { return p->nr_pages; }

#endif
