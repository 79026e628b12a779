/*
 * vcpu.c - the software vCPU: TLB model, EPT walk with A/D bits and PML,
 * EPT violations to the domain's fault handler (see vcpu.h).
 *
 * Invariants:
 *  - a TLB entry caches the state of a p2m leaf as of generation tlb_gen:
 *    mfn, writable (leaf type ram_rw) and dirty (leaf D set).  Entries are
 *    only trusted while tlb_gen == d->p2m_gen;
 *  - an access writes guest bytes only after the leaf's D bit is set, and
 *    D goes 0 -> 1 only together with a PML append (while log-dirty is on),
 *    after a PML-full exit if the buffer was full: no logged write is lost.
 */
#include "vcpu.h"
#include "pod.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RETRIES 8

void tlb_config_default(struct tlb_config *c)
{
    *c = (struct tlb_config){
        .entries = {1536, 1024, 16},
        .ways = {12, 8, 4},
        .guest_order = PAGE_ORDER_2M,
    };
}

int vcpu_create(struct domain *d, unsigned id, const struct tlb_config *cfg,
                struct vcpu **out)
{
    struct tlb_config def;
    if (!cfg) {
        tlb_config_default(&def);
        cfg = &def;
    }
    if (cfg->guest_order != PAGE_ORDER_4K && cfg->guest_order != PAGE_ORDER_2M &&
        cfg->guest_order != PAGE_ORDER_1G)
        return -EINVAL;
    for (unsigned i = 0; i < 3; i++)
        if (cfg->entries[i] && (!cfg->ways[i] || cfg->entries[i] % cfg->ways[i]))
            return -EINVAL;
    struct vcpu *v = hv_calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->d = d;
    v->id = id;
    v->cfg = *cfg;
    for (unsigned i = 0; i < 3; i++) {
        if (!cfg->entries[i])
            continue;
        v->tlb[i].ways = cfg->ways[i];
        v->tlb[i].sets = cfg->entries[i] / cfg->ways[i];
        v->tlb[i].e = hv_calloc(cfg->entries[i], sizeof(struct tlb_entry));
        if (!v->tlb[i].e) {
            for (unsigned j = 0; j < i; j++)
                free(v->tlb[j].e);
            free(v);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&d->lock);
    v->tlb_gen = d->p2m_gen;
    dirty_pml_register(d, &v->pml);
    pthread_mutex_unlock(&d->lock);
    *out = v;
    return 0;
}

void vcpu_destroy(struct vcpu *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&v->d->lock);
    dirty_pml_unregister(v->d, &v->pml);
    pthread_mutex_unlock(&v->d->lock);
    for (unsigned i = 0; i < 3; i++)
        free(v->tlb[i].e);
    free(v);
}

void vcpu_tlb_flush(struct vcpu *v)
{
    for (unsigned i = 0; i < 3; i++)
        if (v->tlb[i].e)
            memset(v->tlb[i].e, 0,
                   (size_t)v->tlb[i].sets * v->tlb[i].ways * sizeof(struct tlb_entry));
    v->st.tlb_flushes++;
}

/* ---- TLB ------------------------------------------------------------------ */

static struct tlb_entry *tlb_find(struct vcpu *v, gfn_t gfn, unsigned *cls)
{
    for (unsigned c = 0; c < 3; c++) {
        struct tlb_array *a = &v->tlb[c];
        if (!a->e)
            continue;
        uint64_t vpn = gfn >> (9u * c);
        struct tlb_entry *set = &a->e[(vpn % a->sets) * a->ways];
        for (unsigned w = 0; w < a->ways; w++)
            if (set[w].tag == vpn + 1) {
                set[w].lru = ++v->clock;
                *cls = c;
                return &set[w];
            }
    }
    return NULL;
}

/* Cache a translation of class c (order 9c) for gfn; the least recently
 * used way of the set is replaced.  A class with no capacity caches nothing. */
static void tlb_fill(struct vcpu *v, unsigned c, gfn_t gfn, mfn_t mfn, bool writable,
                     bool dirty)
{
    struct tlb_array *a = &v->tlb[c];
    if (!a->e)
        return;
    uint64_t vpn = gfn >> (9u * c);
    struct tlb_entry *set = &a->e[(vpn % a->sets) * a->ways];
    struct tlb_entry *victim = &set[0];
    for (unsigned w = 0; w < a->ways; w++) {
        if (set[w].tag == vpn + 1) {
            victim = &set[w];
            break;
        }
        if (set[w].lru < victim->lru)
            victim = &set[w];
    }
    *victim = (struct tlb_entry){vpn + 1, mfn, ++v->clock, writable, dirty};
}

/* ---- faults ----------------------------------------------------------------- */

int vcpu_handle_violation(struct vcpu *v, gfn_t gfn, bool write, enum p2m_type type)
{
    struct domain *d = v->d;
    switch (type) {
    case p2m_ram_logdirty:
        return write ? dirty_write_fault(d, gfn) : 0;
    case p2m_pod: {
        /* Demand populate (pod.h).  -EAGAIN: the bounded emergency sweep
         * ran out of budget; each call resumes it and a pass over the guest
         * is finite, so this loop ends (in a mapped page or a crash). */
        int rc;
        while ((rc = pod_demand_populate(d, gfn)) == -EAGAIN)
            ;
        return rc;
    }
    case p2m_ram_ro:
        return write ? -EACCES : 0;
    case p2m_mmio:
        return -EFAULT; /* device emulation is not modelled */
    case p2m_ram_rw:
        return 0;
    default:
        return -EFAULT;
    }
}

/* ---- the access ------------------------------------------------------------- */

static int access(struct vcpu *v, uint64_t gpa, bool write, uint64_t *val)
{
    struct domain *d = v->d;
    gfn_t gfn = gpa >> PAGE_SHIFT;
    if (gpa & 7 || gfn >= P2M_GFN_LIMIT)
        return -EINVAL;
    v->st.accesses++;
    if (write)
        v->st.writes++;
    else
        v->st.reads++;
    bool counted = false;
    for (int attempt = 0; attempt <= MAX_RETRIES; attempt++) {
        if (HV_UNLIKELY(v->tlb_gen != d->p2m_gen)) {
            vcpu_tlb_flush(v);
            v->tlb_gen = d->p2m_gen;
        }
        unsigned cls = 0;
        struct tlb_entry *te = tlb_find(v, gfn, &cls);
        mfn_t mfn;
        if (te && (!write || (te->writable && te->dirty))) {
            if (!counted) {
                v->st.tlb_hits++;
                counted = true;
            }
            if (te->mfn == INVALID_MFN) { /* PoD memory read as zero */
                v->st.pod_zero_reads++;
                *val = 0;
                return 0;
            }
            mfn = te->mfn + (gfn & (order_pages(9u * cls) - 1));
        } else {
            if (!counted) {
                v->st.tlb_misses++;
                counted = true;
            }
            unsigned level = 0, refs = 0;
            ept_entry_t *e = p2m_lookup_leaf(d->p2m, gfn, &level, &refs);
            v->st.walks++;
            v->st.ept_refs += refs;
            v->st.walk_refs += vcpu_walk_refs(v->cfg.guest_order, refs);
            enum p2m_type t = e ? ept_type(*e) : p2m_invalid;
            if (t == p2m_pod && !write) {
                /* A PoD gfn has never been written since it was last
                 * populated and reclaimed as zero: a read is served from
                 * the zero page (Linux's zero page for anonymous memory),
                 * cached read-only, without consuming the PoD cache; the
                 * first write faults and populates (pod.h). */
                unsigned order = 9u * (level - 1u);
                unsigned c = order < v->cfg.guest_order ? order : v->cfg.guest_order;
                tlb_fill(v, c / 9u, gfn, INVALID_MFN, false, false);
                v->st.pod_zero_reads++;
                *val = 0;
                return 0;
            }
            bool ok = e && p2m_is_ram(t) && (*e & EPT_R) && (!write || (*e & EPT_W));
            if (!ok) {
                v->st.ept_violations++;
                int rc = vcpu_handle_violation(v, gfn, write, t);
                if (rc < 0)
                    return rc;
                continue; /* retry */
            }
            *e |= EPT_A;
            if (write && !(*e & EPT_D)) {
                if (d->logdirty) {
                    if (v->pml.n == PML_ENTRIES) {
                        v->st.pml_full_exits++;
                        dirty_pml_full(d, &v->pml);
                    }
                    v->pml.gpa[v->pml.n++] = gpa & ~(PAGE_SIZE - 1);
                    v->st.pml_logged++;
                }
                *e |= EPT_D;
                v->st.d_sets++;
            }
            unsigned order = 9u * (level - 1u);
            unsigned c = order < v->cfg.guest_order ? order : v->cfg.guest_order;
            gfn_t leaf_base = gfn & ~(order_pages(order) - 1);
            mfn_t leaf_mfn = ept_mfn(*e);
            gfn_t cbase = gfn & ~(order_pages(c) - 1);
            mfn = leaf_mfn + (gfn - leaf_base);
            tlb_fill(v, c / 9u, gfn, leaf_mfn + (cbase - leaf_base), (*e & EPT_W) != 0,
                     (*e & EPT_D) != 0);
            if (c == PAGE_ORDER_4K)
                v->st.miss_4k++;
            else if (c == PAGE_ORDER_2M)
                v->st.miss_2m++;
            else
                v->st.miss_1g++;
        }
        if (HV_UNLIKELY(d->pc_missing != NULL) && gfn < d->pc_nbits &&
            (__atomic_load_n(&d->pc_missing[gfn / 64], __ATOMIC_ACQUIRE) >> (gfn % 64) & 1)) {
            /* post-copy: the page is not here yet; its bytes come (the
             * wait drops d->lock), then the access goes again */
            int rc = d->pc_wait(d->pc_ctx, gfn);
            if (rc < 0)
                return rc;
            attempt--;
            continue;
        }
        uint8_t *p = (uint8_t *)machine_ptr(d->m, mfn) + (gpa & (PAGE_SIZE - 1));
        if (write) {
            memcpy(p, val, sizeof(*val));
            if (d->logdirty)
                dirty_note_write(d, gfn);
        } else {
            memcpy(val, p, sizeof(*val));
        }
        return 0;
    }
    return -ELOOP;
}

int vcpu_read(struct vcpu *v, uint64_t gpa, uint64_t *val)
{
    return access(v, gpa, false, val);
}

int vcpu_write(struct vcpu *v, uint64_t gpa, uint64_t val)
{
    return access(v, gpa, true, &val);
}
