/*
 * dirty.h - log-dirty tracking for live migration, with PML semantics, that
 * keeps superpages.
 *
 * While log-dirty is on, the domain keeps a 4K-granular dirty bitmap over
 * gfns [0, dirty_bitmap_gfns()).  Writes reach it in two ways:
 *  - PML: every vCPU owns a 512-entry buffer (struct pml_buffer) appended
 *    with the 4K-aligned GPA of a write that turns an EPT D bit 0 -> 1, at
 *    whatever level the leaf is.  A full buffer makes the next append a
 *    PML-full exit (dirty_pml_full) that empties it into the bitmap first;
 *    harvest, peek, mode changes and disable flush every buffer.  A flushed
 *    GPA marks its 4K gfn, or the whole leaf when a superpage maps it (PML
 *    does not say which level logged; the whole leaf is the only safe
 *    reading, seed 002).
 *  - write faults on write-protected superpages (dirty_write_fault).
 *
 * Modes (per domain, changeable while enabled):
 *  - DIRTY_SPLIT_ON_WRITE (default): at enable every ram_rw superpage leaf
 *    becomes p2m_ram_logdirty (r-x) and every D bit is cleared; 4K leaves
 *    stay writable.  The first write to a protected superpage faults: the
 *    leaf is split one level at a time along the written path only (a 1G
 *    leaf becomes 512 2M leaves, only the touched 2M becomes 4K leaves), the
 *    512 new 4K leaves become ram_rw with D clear, and the written one gets
 *    D set and is marked dirty.  Later writes go through PML.
 *  - DIRTY_EAGER_SPLIT (KVM): every superpage is split to 4K at enable.
 *  - DIRTY_COARSE: nothing is split or protected; D bits are cleared and a
 *    logged write dirties the whole leaf.  Harvest also scans every leaf's
 *    D bit (a superpage whose D was set may be split afterwards, leaving D
 *    set on children that will never log).  The bytes marked that no write
 *    touched are counted (overmarked_pages).
 *
 * Harvest (CLEAN): flush all PML buffers, copy and clear the bitmap, clear
 * the D bit of every leaf mapping a harvested gfn (so the next write logs
 * again), bump d->p2m_gen (vCPU TLBs drop their cached D state).
 *
 * Disable: flush, hand back the last bitmap (optional), turn every
 * ram_logdirty leaf back into ram_rw, coalesce the whole p2m and switch
 * automatic coalescing back on; every superpage log-dirty split is checked:
 * recovered, or not and why (part unmapped, types differ, frames not
 * contiguous, 4K-only range).
 *
 * Guarantee: every 4K gfn written by a vCPU while log-dirty is on, and
 * every 4K gfn where RAM was mapped or unmapped while it is on, appears in
 * the union of the harvested bitmaps (and the final one of disable), for any
 * number of vCPUs and any interleaving of writes, map changes, harvests,
 * PML-full exits and mode changes.  In split-on-write and eager-split modes
 * nothing else is reported, except after a split that failed for lack of
 * p2m tables: that superpage degrades to coarse tracking (counted in
 * split_nomem), and the whole of a D-set leaf that an unmap cuts.  Proof
 * sketch: a D bit is only set together with a PML append or a direct mark;
 * a PML entry is flushed before any D bit is cleared; a D bit is cleared
 * only for leaves whose gfns are all marked; every map change marks its
 * gfns under the same lock as the change.
 *
 * Threading: every dirty_* call below takes d->lock, except the ones marked
 * "lock held", which the vCPU calls from inside a quantum (vcpu.h).
 *
 * RAM mapped while log-dirty is on (populate, balloon deflate, PoD demand
 * populate, domain_map_extent) is marked dirty, written or not (a live
 * migration must send a gfn that became RAM: its data, or that it is
 * zero), and gets the mode's form through dirty_on_map: split-on-write
 * protects a new superpage (its first write splits only the touched path),
 * eager-split splits it to 4K (protects it when out of tables), coarse
 * leaves it writable.  New leaves never need a p2m_gen bump: their gfns
 * were unmapped or PoD, which no TLB caches.  Unmapping RAM while on
 * (decrease_reservation, PoD zero reclaim) marks every RAM gfn of the range
 * (a migration must send it as a hole, or as the PoD entry it became) and
 * the whole of every leaf in the range whose D bit is set
 * (dirty_on_unmap), so that writes a superpage took without logging are
 * not lost with it.  Map changes count as writes for the over-marking
 * figure.
 */
#ifndef HUGEVM_DIRTY_H
#define HUGEVM_DIRTY_H

#include "common.h"
#include "domain.h"
#include "domain_hooks.h"

enum dirty_mode {
    DIRTY_SPLIT_ON_WRITE = 0,
    DIRTY_EAGER_SPLIT = 1,
    DIRTY_COARSE = 2,
    DIRTY_NR_MODES
};
const char *dirty_mode_name(enum dirty_mode m);
/* "split-on-write", "eager-split", "coarse"; -EINVAL otherwise. */
int dirty_mode_parse(const char *s, enum dirty_mode *out) HV_MUST_CHECK;

#define PML_ENTRIES 512u

/* A vCPU's page-modification log.  n entries are valid (Intel counts an
 * index down from 511; the order does not matter here). */
struct pml_buffer {
    uint64_t gpa[PML_ENTRIES];
    unsigned n;
    struct pml_buffer *next; /* d->pml_buffers list */
};

/* Statistics declared once: name, description. */
#define DIRTY_STAT_FIELDS(X)                                                   \
    X(rounds, "harvests (CLEAN)")                                              \
    X(peeks, "peeks")                                                          \
    X(mode_changes, "mode changes while enabled")                             \
    X(pages_harvested, "dirty 4K pages handed out by harvests")               \
    X(overmarked_pages, "pages reported dirty that no write touched")         \
    X(pml_flushed, "PML entries flushed into the bitmap")                     \
    X(pml_full_exits, "PML-full exits")                                        \
    X(wp_faults, "write faults on write-protected superpages")               \
    X(splits_1g, "1G leaves split by log-dirty")                             \
    X(splits_2m, "2M leaves split by log-dirty")                             \
    X(split_nomem, "superpages degraded to coarse: no table for a split")    \
    X(d_cleared, "D bits cleared by harvests")                                 \
    X(dscan_marked, "pages marked by the coarse D-bit scan")                  \
    X(sp_mapped, "superpages mapped while enabled (populate, balloon, PoD)") \
    X(map_split_nomem, "eager-split: new superpages protected, no table")    \
    X(map_marked, "pages marked because RAM was mapped there")              \
    X(unmap_marked, "pages marked because their RAM was unmapped")           \
    X(unmap_d_marked, "pages of D-set leaves cut by an unmap, marked")

struct dirty_stats {
#define X(name, desc) uint64_t name;
    DIRTY_STAT_FIELDS(X)
#undef X
};

/* Why a superpage split by log-dirty could not be merged back. */
#define DIRTY_LOST_FIELDS(X)                                                   \
    X(unmapped, "part of it is unmapped (ballooned, decreased, PoD)")        \
    X(type, "its pieces have different p2m types")                            \
    X(mfn, "its frames are no longer one aligned contiguous run")            \
    X(only_4k, "it overlaps a 4K-only range")                                 \
    X(other, "no reason found")

struct dirty_disable_result {
    uint64_t split_1g, split_2m;         /* superpages log-dirty split */
    uint64_t recovered_1g, recovered_2m; /* merged back */
    uint64_t lost_1g, lost_2m;           /* not merged back */
#define X(name, desc) uint64_t lost_##name;
    DIRTY_LOST_FIELDS(X)
#undef X
    uint64_t merges;                     /* p2m_coalesce merges done */
    uint64_t pages_4k_before, pages_2m_before, pages_1g_before; /* at enable */
    uint64_t pages_4k_after, pages_2m_after, pages_1g_after;
    uint64_t final_dirty;                /* pages in the final bitmap */
    struct dirty_stats stats;            /* of the whole enabled period */
};

/* One harvest's figures. */
struct dirty_round {
    uint64_t dirty_pages;      /* bits set in the returned bitmap */
    uint64_t overmarked_pages; /* of those, pages no write touched */
    uint64_t pml_flushed;      /* entries flushed by this call */
    uint64_t d_cleared;
    uint64_t ns;               /* time spent in the call */
};

/*
 * Switch log-dirty on in `mode`: the bitmap starts empty.  -EBUSY if it is
 * already on, -ENOMEM (nothing changed: eager-split unwinds its splits).
 */
int dirty_enable(struct domain *d, enum dirty_mode mode) HV_MUST_CHECK;

/* Change the mode while enabled; nothing logged so far is lost (PML and
 * D bits are folded into the bitmap first).  -EINVAL when off, -ENOMEM
 * (eager-split: the domain stays in its old mode, splits done are kept). */
int dirty_set_mode(struct domain *d, enum dirty_mode mode) HV_MUST_CHECK;

bool dirty_enabled(const struct domain *d);
enum dirty_mode dirty_get_mode(const struct domain *d);
/* Number of gfns the bitmap covers (0 when off); harvest buffers need
 * (gfns + 63) / 64 words. */
uint64_t dirty_bitmap_gfns(const struct domain *d);
void dirty_get_stats(const struct domain *d, struct dirty_stats *st);

/*
 * Copy the dirty bitmap into `bitmap` (nr_gfns bits, nr_gfns >=
 * dirty_bitmap_gfns(); bits beyond are zeroed) and, for harvest, clear it
 * and the D bits behind it.  `round` may be NULL.  -EINVAL when off or
 * nr_gfns too small; -ENOMEM when a bitmap growth failed earlier (log-dirty
 * lost track: the caller must treat every page as dirty).
 */
int dirty_harvest(struct domain *d, uint64_t *bitmap, uint64_t nr_gfns,
                  struct dirty_round *round) HV_MUST_CHECK;
int dirty_peek(struct domain *d, uint64_t *bitmap, uint64_t nr_gfns,
               struct dirty_round *round) HV_MUST_CHECK;

/*
 * Switch log-dirty off and merge back.  If `final_bitmap` is non-NULL it
 * receives the pages dirtied since the last harvest (nr_gfns bits, as
 * harvest).  `res` may be NULL.  -EINVAL when off or nr_gfns too small
 * (nothing changed).
 */
int dirty_disable(struct domain *d, uint64_t *final_bitmap, uint64_t nr_gfns,
                  struct dirty_disable_result *res) HV_MUST_CHECK;

/* ---- called by the vCPU (lock held) ------------------------------------- */

/* Write to gfn hit a p2m_ram_logdirty leaf: mark, split, unprotect.  0: the
 * access may retry; -EFAULT when log-dirty is off (stale type), -ENOMEM. */
int dirty_write_fault(struct domain *d, gfn_t gfn) HV_MUST_CHECK;
/* PML-full exit: empty `pml` into the bitmap. */
void dirty_pml_full(struct domain *d, struct pml_buffer *pml);
/* A vCPU wrote gfn (ground truth for the over-marking figure). */
void dirty_note_write(struct domain *d, gfn_t gfn);
/* dirty_on_map and dirty_on_unmap, the domain's calls into log-dirty when
 * it maps or unmaps RAM, are declared in domain_hooks.h. */
/* Register a vCPU's buffer with the domain (vcpu_create / vcpu_destroy). */
void dirty_pml_register(struct domain *d, struct pml_buffer *pml);
void dirty_pml_unregister(struct domain *d, struct pml_buffer *pml);

#endif
