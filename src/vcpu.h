/*
 * vcpu.h - the software vCPU backend (`soft`): guest memory accesses with
 * EPT semantics.
 *
 * An access to guest-physical address gpa (8 bytes, naturally aligned):
 *  1. TLB lookup (gpa -> machine frame, with the leaf's W and D state);
 *  2. on a miss, a walk of the domain's p2m (p2m_lookup_leaf): the A bit of
 *     the leaf is set; a read of a PoD leaf is served from the zero page
 *     (cached read-only: the PoD cache is not touched until a write); a
 *     non-present, PoD (on a write), MMIO, read-only (on a write) or
 *     write-protected (ram_logdirty, on a write) leaf raises an EPT
 *     violation to the domain's fault handler (vcpu_handle_violation), which
 *     resolves it or fails, and the access retries from step 1;
 *  3. a write whose leaf has D clear sets D at whatever level the leaf is
 *     and, while log-dirty is on, appends the 4K-aligned GPA to the vCPU's
 *     512-entry PML buffer; a full buffer first causes a PML-full exit that
 *     empties it into the domain's dirty bitmap (dirty.h);
 *  4. the guest's bytes are really read or written in machine memory.
 *
 * TLB model: three set-associative arrays with LRU replacement, for 4K, 2M
 * and 1G translations (separate capacities; defaults shaped like a Skylake
 * server core's STLB: 1536 4K entries 12-way, 1024 2M entries 8-way, 16 1G
 * entries 4-way).  A translation is cached at the size min(guest page size,
 * EPT leaf size): the guest's own paging is not simulated, its page size is
 * a parameter (default 2M, a Linux guest with THP).  A write that hits an
 * entry cached with D clear (or not writable) re-walks, as hardware does to
 * set D; it counts as a miss.  hits + misses == accesses.
 *
 * Walk references (two-dimensional walk): with g guest paging levels
 * (4K pages: 4, 2M: 3, 1G: 2) and an EPT walk that reads e entries (4 for
 * a 4K leaf, 3 for 2M, 2 for 1G), a TLB miss costs (g + 1)(e + 1) - 1
 * memory references: each of the g guest entries and the final gpa need an
 * EPT walk of e references, plus the g guest entries themselves.  4K guest
 * pages: 24 / 19 / 14 for 4K / 2M / 1G EPT leaves; 2M guest pages: 19 / 15
 * / 11.  (Guest page tables are assumed mapped by leaves of the same size.)
 *
 * Invalidation: the TLB is flushed whole (INVEPT single-context) whenever
 * d->p2m_gen moved since the vCPU last looked; every p2m change that can
 * alter a cached translation, permission or D bit bumps it (domain.h).
 *
 * Threading contract: a vCPU is used by one thread at a time, and every
 * access must be made with d->lock held (vcpu_lock/vcpu_unlock around a
 * quantum of accesses, as workload_run does), so that log-dirty harvest,
 * enable and disable, which take the same lock, can run from another thread
 * between quanta.
 */
#ifndef HUGEVM_VCPU_H
#define HUGEVM_VCPU_H

#include <sched.h>

#include "common.h"
#include "dirty.h"
#include "domain.h"

struct tlb_config {
    unsigned entries[3]; /* 4K, 2M, 1G; 0 disables that size */
    unsigned ways[3];
    unsigned guest_order; /* guest page size: PAGE_ORDER_4K/2M/1G */
};
void tlb_config_default(struct tlb_config *c);

/* Statistics declared once: name, description. */
#define VCPU_STAT_FIELDS(X)                                                    \
    X(accesses, "guest memory accesses")                                       \
    X(reads, "reads")                                                          \
    X(writes, "writes")                                                        \
    X(tlb_hits, "TLB hits")                                                    \
    X(tlb_misses, "TLB misses (walks started by an access)")                  \
    X(walks, "p2m walks, retries and D-bit walks included")                   \
    X(walk_refs, "memory references of the 2-D walks")                        \
    X(ept_refs, "p2m entries read by the walks")                              \
    X(ept_violations, "EPT violations")                                        \
    X(d_sets, "D bits set 0 -> 1")                                             \
    X(pml_logged, "GPAs appended to the PML buffer")                          \
    X(pml_full_exits, "PML-full exits")                                        \
    X(tlb_flushes, "TLB flushes after a p2m change")                          \
    X(miss_4k, "misses filled at 4K")                                          \
    X(miss_2m, "misses filled at 2M")                                          \
    X(miss_1g, "misses filled at 1G")                                          \
    X(pod_zero_reads, "reads of PoD memory served from the zero page (no cache used)")

struct vcpu_stats {
#define X(name, desc) uint64_t name;
    VCPU_STAT_FIELDS(X)
#undef X
};

struct tlb_entry {
    uint64_t tag; /* (gfn >> order) + 1; 0 = empty */
    mfn_t mfn;    /* first frame of the cached region */
    uint64_t lru;
    bool writable, dirty;
};

struct tlb_array {
    unsigned sets, ways;
    struct tlb_entry *e; /* sets * ways */
};

struct vcpu {
    struct domain *d;
    unsigned id;
    struct tlb_config cfg;
    struct tlb_array tlb[3];
    uint64_t tlb_gen; /* d->p2m_gen the TLB content belongs to */
    uint64_t clock;   /* LRU clock */
    struct pml_buffer pml;
    struct vcpu_stats st;
};

/* A vCPU of d (cfg NULL: defaults).  Registers its PML buffer with the
 * domain.  -EINVAL (bad geometry: entries must be a multiple of ways),
 * -ENOMEM. */
int vcpu_create(struct domain *d, unsigned id, const struct tlb_config *cfg,
                struct vcpu **out) HV_MUST_CHECK;
/* Flushes its PML buffer into the dirty log first (takes d->lock). */
void vcpu_destroy(struct vcpu *v);

static inline void vcpu_lock(struct vcpu *v) { pthread_mutex_lock(&v->d->lock); }
static inline void vcpu_unlock(struct vcpu *v)
{
    pthread_mutex_unlock(&v->d->lock);
    while (__atomic_load_n(&v->d->lock_waiters, __ATOMIC_ACQUIRE)) /* domain_lock */
        sched_yield();
}

/*
 * One 8-byte access at gpa (must be 8-aligned); d->lock held.  Returns 0,
 * -EINVAL (misaligned / beyond the gfn space), or the fault handler's error
 * when a violation cannot be resolved: -EFAULT (nothing mapped, or MMIO:
 * not emulated), -EACCES (write to ram_ro), -ESRCH (domain crashed, e.g.
 * out of PoD memory: see the event log),
 * -ENOMEM, -ELOOP (the handler made no progress).
 */
int vcpu_read(struct vcpu *v, uint64_t gpa, uint64_t *val) HV_MUST_CHECK;
int vcpu_write(struct vcpu *v, uint64_t gpa, uint64_t val) HV_MUST_CHECK;

/* Flush the TLB (also done automatically on a p2m generation change). */
void vcpu_tlb_flush(struct vcpu *v);

/* The domain's EPT-violation handler: resolve the fault of an access to gfn
 * that found a leaf of `type` (p2m_invalid: none).  0 = retry the access.
 * Dispatch point for log-dirty (dirty_write_fault) and, later, PoD. */
int vcpu_handle_violation(struct vcpu *v, gfn_t gfn, bool write,
                          enum p2m_type type) HV_MUST_CHECK;

/* 2-D walk references for one TLB miss (see the file comment). */
static inline unsigned vcpu_walk_refs(unsigned guest_order, unsigned ept_refs)
{
    unsigned g = 4u - guest_order / 9u;
    return (g + 1u) * (ept_refs + 1u) - 1u;
}

#endif
