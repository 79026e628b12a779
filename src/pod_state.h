/*
 * pod_state.h - the populate-on-demand state one domain embeds (struct pod
 * in struct domain): the PoD cache, its counters and statistics.  The
 * algorithm and its invariants are in pod.h; this header holds only the
 * data, so that domain.h can embed it without including the PoD layer above
 * it (dependencies point down: pod -> domain -> pod_state).
 */
#ifndef HUGEVM_POD_STATE_H
#define HUGEVM_POD_STATE_H

#include "common.h"

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

/* Cache state for reports. */
static inline uint64_t pod_cache_2m(const struct pod *p) { return p->nr_chunks; }
static inline uint64_t pod_cache_4k(const struct pod *p) { return p->nr_pages; }

#endif
