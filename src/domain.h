/*
 * domain.h - a guest: its p2m, the frames it owns, its accounting.
 *
 * Populate (populate_physmap) gives a gfn range machine frames with the
 * largest order that fits: 1G where the gfn is 1G-aligned, the rest of the
 * range covers the whole 1G, it is clear of holes and 4K-only ranges and a
 * 1G extent can be allocated; else 2M likewise; else 4K.  Every time a
 * superpage that the layout allowed could not be allocated the request falls
 * back, and the fallback is counted (seed 001: never silent).
 *
 * Holes: the VGA hole (gfn 0xa0-0xbf) and the MMIO hole below 4 GiB
 * (default 256 MiB) are never populated; ranges given as 4K-only are mapped
 * with 4K leaves only (seed 004).
 *
 * Populate-on-demand (pod.h): populating with DOMAIN_POPULATE_POD writes
 * p2m_pod leaves (same order choice, no frames); decrease_reservation over
 * PoD entries just removes them.
 *
 * Accounting: tot_pages = RAM frames mapped + PoD cache pages (Xen's);
 * pod.entry_count = pages of PoD leaves; tot_pages <= max_pages always
 * (checked by domain_audit).
 *
 * Crashing: domain_crash() marks the domain dead with a reason (kept in the
 * event log); a crashed domain's vCPUs stop, its memory stays inspectable.
 *
 * Quarantine (while a migration sender reads the guest): the sender
 * translates a batch of gfns under d->lock and reads the frames after
 * dropping it, so a frame the guest gives back in between must not reach
 * another domain before the read is over (Xen holds a page reference for
 * its foreign mappings; this is the same guarantee without per-frame
 * counts).  With quarantine on, every frame the domain frees after it was
 * mapped (decrease_reservation, PoD cache shrink, defrag's old frames) is
 * parked instead of freed: still allocated to the domain in the frame
 * allocator (nobody can be handed it, its bytes stay as they were), but no
 * longer the guest's: not in tot_pages (the guest gave it back, as in Xen's
 * accounting; it does not count against max_pages), counted in
 * quarantine.pages.  domain_quarantine_release() frees the parked frames
 * for real (scrubbed); the sender calls it, under d->lock, only where it
 * holds no translation whose frames it has not finished reading.  Frames a
 * call allocated and frees again before it returns (an unwound populate,
 * an abandoned defrag target) were never visible outside d->lock and are
 * freed at once.  Parking never allocates when the caller reserved room
 * first (domain_quarantine_reserve: decrease_reservation, pod_set_cache_target
 * and defrag_step do, and fail with -ENOMEM, nothing changed); without room
 * and without memory for more, a run is freed at once and counted in
 * quarantine.overflow (and the event log): never a leak of accounting.
 * Invariant (domain_audit): frames owned == RAM mapped + pod.count +
 * held_pages + quarantine.pages, and every parked frame is owned, mapped
 * nowhere and not in the PoD cache.  domain_destroy releases everything.
 */
#ifndef HUGEVM_DOMAIN_H
#define HUGEVM_DOMAIN_H

#include <pthread.h>

#include "common.h"
#include "machine.h"
#include "p2m.h"
#include "pod_state.h"

struct dirty_log;
struct pml_buffer;

#define VGA_HOLE_GFN 0xa0ULL
#define VGA_HOLE_NR 0x20ULL
#define DEFAULT_MMIO_HOLE (256ULL * MiB)
#define GFN_4G (4ULL * GiB >> PAGE_SHIFT)
#define DOMAIN_MAX_4K_RANGES P2M_MAX_4K_RANGES

/* Statistics declared once: name, description. */
#define DOMAIN_STAT_FIELDS(X)                                                  \
    X(populated_1g, "1G extents populated")                                    \
    X(populated_2m, "2M extents populated")                                    \
    X(populated_4k, "4K pages populated")                                      \
    X(fallback_1g_nomem, "1G requests that fell back: no free 1G extent")     \
    X(fallback_2m_nomem, "2M requests that fell back: no free 2M extent")     \
    X(fallback_1g_layout, "1G not tried: unaligned, hole or 4K-only range")   \
    X(fallback_2m_layout, "2M not tried: unaligned, hole or 4K-only range")   \
    X(decreased_1g, "1G extents released by decrease_reservation")            \
    X(decreased_2m, "2M extents released by decrease_reservation")            \
    X(decreased_4k, "4K pages released by decrease_reservation")              \
    X(increased_2m, "2M extents added by increase_reservation")               \
    X(increased_4k, "4K pages added by increase_reservation")                 \
    X(increase_fallback_4k, "balloon 2M requests served as 4K pages")        \
    X(guest_2m_refused, "2M populate_physmap extents a guest was refused (it was told)") \
    X(pod_entries_1g, "1G PoD entries written by populate")                  \
    X(pod_entries_2m, "2M PoD entries written by populate")                  \
    X(pod_entries_4k, "4K PoD entries written by populate")                  \
    X(decreased_pod, "PoD pages removed by decrease_reservation")

struct domain_stats {
#define X(name, desc) uint64_t name;
    DOMAIN_STAT_FIELDS(X)
#undef X
};

struct gfn_range {
    gfn_t gfn;
    uint64_t nr;
};

struct domain_config {
    uint64_t max_pages;       /* 0: no limit beyond the machine */
    uint64_t mmio_hole_bytes; /* below 4 GiB; 0 = none; multiple of 2M */
    bool no_vga_hole;
    unsigned nr_4k_ranges;
    struct gfn_range ranges_4k[DOMAIN_MAX_4K_RANGES];
    uint64_t max_tables;      /* p2m table pool bound; 0 = derived from max_pages */
};
/* Defaults: 256 MiB MMIO hole, VGA hole, no 4K ranges, no limit. */
void domain_config_default(struct domain_config *c);

/* Event log: the last DOMAIN_EVENTS messages (crash reasons and the like). */
#define DOMAIN_EVENTS 16
struct domain_event {
    uint64_t ns; /* hv_now_ns() when logged */
    char msg[160];
};

/* A machine run parked by the quarantine (see the top of this file). */
struct parked_run {
    mfn_t mfn;
    uint64_t nr;
};

struct domain_quarantine {
    bool on;               /* frees are parked (a migration sender reads) */
    struct parked_run *runs;
    size_t n, cap;         /* runs[0, n) parked; room for cap */
    uint64_t pages;        /* frames parked now: sum of runs[].nr */
    uint64_t parked;       /* frames ever parked */
    uint64_t released;     /* frames ever released from the quarantine */
    uint64_t overflow;     /* frames freed at once: no room to park them */
};

struct domain {
    domid_t domid;
    struct machine *m;
    struct p2m *p2m;
    uint64_t tot_pages;
    uint64_t max_pages;
    gfn_t mmio_hole_start, mmio_hole_end; /* [start, end) in gfns */
    bool vga_hole;
    bool no_auto_coalesce; /* set while log-dirty tracks 4K writes */
    /*
     * vCPUs and log-dirty (vcpu.h, dirty.h).  `lock` serializes vCPU quanta
     * with log-dirty enable/harvest/disable (which may come from another
     * thread, e.g. a migration sender).  p2m_gen must be bumped (under the
     * lock) by every change of the p2m that can alter a cached translation,
     * permission or D bit (unmap, remap, split, type change, D clear); vCPU
     * TLBs flush when it moved.  Populating unmapped gfns needs no bump.
     */
    pthread_mutex_t lock;
    unsigned lock_waiters;           /* in domain_lock (atomic) */
    uint64_t p2m_gen;
    struct dirty_log *logdirty;      /* non-NULL while log-dirty is on */
    struct pml_buffer *pml_buffers;  /* one per vCPU, linked by vcpu_create */
    struct domain_stats stats;
    bool crashed;          /* see domain_crash() */
    /* Post-copy (postcopy.h) for soft vCPUs: while pc_missing is set, an
     * access to a gfn whose bit is set there waits in pc_wait(pc_ctx, gfn),
     * called with d->lock held (it drops it while it waits, and returns
     * with it held: 0, or -errno when the page will never come). */
    const uint64_t *pc_missing;
    gfn_t pc_nbits;
    int (*pc_wait)(void *pc_ctx, gfn_t gfn);
    void *pc_ctx;
    struct pod pod;        /* populate-on-demand state (pod.h) */
    uint64_t held_pages;   /* owned, neither mapped nor cached: defrag copy targets */
    struct domain_quarantine quarantine; /* frames freed while a sender reads */
    uint64_t nr_events;    /* events ever logged; ring index nr % DOMAIN_EVENTS */
    struct domain_event events[DOMAIN_EVENTS];
};

int domain_create(struct machine *m, const struct domain_config *c,
                  struct domain **out) HV_MUST_CHECK;
/* Return every frame to the machine (scrubbed) and free the p2m. */
void domain_destroy(struct domain *d);

/* True when gfn lies in the VGA or MMIO hole. */
bool domain_gfn_in_hole(const struct domain *d, gfn_t gfn);

struct populate_result {
    uint64_t pages; /* 4K pages populated */
    uint64_t nr_1g, nr_2m, nr_4k;
};

/*
 * Populate every non-hole gfn of [gfn, gfn + nr) that is not yet mapped,
 * largest order first.  All or nothing: on error (-ENOMEM from frames or
 * tables, -EDQUOT past max_pages, -EINVAL) nothing of this call stays
 * allocated or mapped.  `res` may be NULL.
 */
int domain_populate(struct domain *d, gfn_t gfn, uint64_t nr,
                    struct populate_result *res) HV_MUST_CHECK;

/* Flags of domain_populate_flags / domain_populate_guest_flags. */
#define DOMAIN_POPULATE_POD 1u /* write PoD entries instead of frames */
/* domain_populate with flags; with DOMAIN_POPULATE_POD the result counts
 * PoD leaves per order, and already-present PoD entries are skipped. */
int domain_populate_flags(struct domain *d, gfn_t gfn, uint64_t nr,
                          unsigned flags, struct populate_result *res) HV_MUST_CHECK;

/* Lay out and populate `bytes` of guest RAM as an HVM builder does: below
 * the MMIO hole first, the remainder above 4 GiB. */
int domain_populate_guest(struct domain *d, uint64_t bytes,
                          struct populate_result *res) HV_MUST_CHECK;
int domain_populate_guest_flags(struct domain *d, uint64_t bytes, unsigned flags,
                                struct populate_result *res) HV_MUST_CHECK;
/* The gfn ranges domain_populate_guest uses for `bytes` (up to 2 ranges). */
unsigned domain_guest_layout(const struct domain *d, uint64_t bytes,
                             struct gfn_range out[2]);

/*
 * Release the frames of every RAM gfn in [gfn, gfn + nr) (balloon inflate).
 * Superpage leaves cut by the range are split along the boundary only; the
 * frames stay with the domain outside the range.  Unmapped gfns are skipped.
 * PoD entries in the range are just removed (entry_count drops, and the
 * cache is trimmed to entry_count).  When the PoD cache is short and the
 * range cuts a RAM superpage, the enclosing 2M is first reclaimed into the
 * cache if it is zero (seed 003; invisible to the guest), and only then
 * split.  Returns the number of 4K pages released (RAM + PoD), or -ENOMEM
 * (tables) with nothing visible changed.
 */
long domain_decrease_reservation(struct domain *d, gfn_t gfn, uint64_t nr);

/*
 * Balloon deflate: map `nr_extents` extents of `order` (0 or 9) at gfn
 * (aligned), skipping already-mapped gfns.  A 2M request that cannot get a
 * 2M extent is served as 4K pages and counted (increase_fallback_4k).
 */
int domain_increase_reservation(struct domain *d, gfn_t gfn,
                                uint64_t nr_extents,
                                unsigned order) HV_MUST_CHECK;

/*
 * Map exactly one new extent of `order` (0, 9, 18) of RAM at gfn (aligned,
 * wholly unmapped, clear of holes; order > 0 not over a 4K-only range), with
 * no fallback: for callers that decide orders themselves (restore, PoD,
 * defrag).  *mfn (may be NULL) receives the frame.  -EINVAL, -EEXIST (something
 * mapped there), -EDQUOT, -ENOMEM; nothing changes on error.
 */
int domain_map_extent(struct domain *d, gfn_t gfn, unsigned order,
                      mfn_t *mfn) HV_MUST_CHECK;

/* Return the machine run [mfn, mfn + nr) owned by d to the allocator, cut
 * at allocated-extent borders (for pod/defrag: the run must be owned by d
 * and mapped nowhere); with quarantine on it is parked instead (the caller
 * has already taken it out of tot_pages / held_pages as usual). */
void domain_free_frames(struct domain *d, mfn_t mfn, uint64_t nr);

/*
 * Quarantine (see the top of this file); the caller holds d->lock when
 * other threads may use the domain.  begin: park every later free.
 * reserve: room to park `runs` more runs without allocating (0 when
 * quarantine is off; -ENOMEM, nothing changed).  release: free every
 * parked frame (scrubbed) and return how many.  end: release, stop parking
 * and drop the metadata (idempotent; domain_destroy calls it).
 */
void domain_quarantine_begin(struct domain *d);
int domain_quarantine_reserve(struct domain *d, size_t runs) HV_MUST_CHECK;
uint64_t domain_quarantine_release(struct domain *d);
void domain_quarantine_end(struct domain *d);

/* Append a message to the event log (also copied to stderr when the
 * environment variable HUGEVM_EVENTS is set). */
void domain_log(struct domain *d, const char *fmt, ...) HV_PRINTF(2, 3);
/* Crash the domain: crashed = true and the reason goes to the event log.
 * Only the first crash is logged as such. */
void domain_crash(struct domain *d, const char *fmt, ...) HV_PRINTF(2, 3);
/* The most recent event (NULL if none). */
const char *domain_last_event(const struct domain *d);

/* Leaf counts (KVM names). */
static inline uint64_t domain_pages_4k(const struct domain *d) { return p2m_pages_at(d->p2m, 0); }
static inline uint64_t domain_pages_2m(const struct domain *d) { return p2m_pages_at(d->p2m, 9); }
static inline uint64_t domain_pages_1g(const struct domain *d) { return p2m_pages_at(d->p2m, 18); }

/* p2m_audit + accounting: tot_pages equals mapped RAM + PoD cache, tot <=
 * max, no RAM in holes, every frame owned by the domain is mapped exactly
 * once, sits in the PoD cache, is held by defrag or is parked (each parked
 * frame owned, once), entry_count equals the PoD leaves, and pod_audit
 * holds. */
int domain_audit(const struct domain *d) HV_MUST_CHECK;

/*
 * d->lock for everyone but the vCPUs: a mutex is not fair, and a vCPU
 * thread running quanta back to back re-takes it before a waiter wakes, so
 * a migration or harvest thread could wait for seconds.  domain_lock
 * announces itself in lock_waiters; vcpu_unlock then yields until the
 * waiters have had the lock.
 */
static inline void domain_lock(struct domain *d)
{
    __atomic_add_fetch(&d->lock_waiters, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&d->lock);
    __atomic_sub_fetch(&d->lock_waiters, 1, __ATOMIC_ACQ_REL);
}
static inline void domain_unlock(struct domain *d) { pthread_mutex_unlock(&d->lock); }

#endif
