/*
 * guest_model.c - the host's replay of the built-in guest workloads
 * (guest/workloads.h compiled for the host) and guest_verify().
 *
 * The model's memory is a hash table of the words the replay wrote (open
 * addressing, key gpa + 1, grown at half load); a word it never wrote reads
 * as zero, as the fresh workload memory did.  Verification then checks,
 * through the p2m and the machine (not through any mirror), that (1) every
 * word the model holds has the model's value in guest memory, and (2) guest
 * memory holds exactly as many non-zero words as the model: no write went
 * astray, none was lost.  Pages in a hole of the machine memfd are zero
 * without being read.
 */
#include "guest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machine.h"
#include "p2m.h"
#include "zero.h"

/* Replay at most this many operations (all vCPUs; time: the host replays
 * some 10^8 a second) and keep at most this many distinct words written
 * (the model keeps 16 bytes per word written, in a table at most half
 * full: 1 GiB). */
#define VERIFY_MAX_OPS (1ULL << 32)
#define VERIFY_MAX_CAP (1ULL << 26)

struct shadow {
    uint64_t *key, *val;
    size_t cap, n;
    int err;
};

static size_t sh_slot(const struct shadow *s, uint64_t k)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 20) & (s->cap - 1);
}

static int sh_grow(struct shadow *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1u << 16;
    if (cap > VERIFY_MAX_CAP)
        return s->err = -E2BIG;
    uint64_t *k = calloc(cap, sizeof(*k)), *v = calloc(cap, sizeof(*v));
    if (!k || !v) {
        free(k);
        free(v);
        return s->err = -ENOMEM;
    }
    struct shadow n = {k, v, cap, 0, 0};
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->key[i])
            continue;
        size_t j = sh_slot(&n, s->key[i]);
        while (n.key[j])
            j = (j + 1) & (cap - 1);
        n.key[j] = s->key[i];
        n.val[j] = s->val[i];
        n.n++;
    }
    free(s->key);
    free(s->val);
    *s = n;
    return 0;
}

static uint64_t *sh_find(const struct shadow *s, uint64_t gpa)
{
    if (!s->cap)
        return NULL;
    uint64_t k = gpa + 1;
    for (size_t j = sh_slot(s, k);; j = (j + 1) & (s->cap - 1)) {
        if (s->key[j] == k)
            return &s->val[j];
        if (!s->key[j])
            return NULL;
    }
}

static uint64_t sh_load(struct shadow *s, uint64_t gpa)
{
    uint64_t *v = sh_find(s, gpa);
    return v ? *v : 0;
}

static void sh_store(struct shadow *s, uint64_t gpa, uint64_t val)
{
    uint64_t *v = sh_find(s, gpa);
    if (v) {
        *v = val;
        return;
    }
    if ((s->n + 1) * 2 > s->cap && sh_grow(s) < 0)
        return;
    uint64_t k = gpa + 1;
    size_t j = sh_slot(s, k);
    while (s->key[j])
        j = (j + 1) & (s->cap - 1);
    s->key[j] = k;
    s->val[j] = val;
    s->n++;
}

#define HVG_WL_STATIC static
#define HVG_LOAD(ctx, gpa) sh_load((struct shadow *)(ctx), (gpa))
#define HVG_STORE(ctx, gpa, v) sh_store((struct shadow *)(ctx), (gpa), (v))
#include "../guest/workloads.h"

/* Guest memory word at gpa, through the p2m and the machine (0 for a hole
 * of the memfd; *ok false when gpa is not RAM). */
static uint64_t guest_word(struct domain *d, struct machine_holes *mh, uint64_t gpa, bool *ok)
{
    enum p2m_type t;
    mfn_t mfn = p2m_get_entry(d->p2m, gpa >> PAGE_SHIFT, &t, NULL);
    *ok = p2m_is_ram(t);
    if (!*ok || machine_offset_in_hole(mh, machine_offset(mfn)))
        return 0;
    uint64_t v;
    memcpy(&v, (const uint8_t *)machine_ptr(d->m, mfn) + (gpa & (PAGE_SIZE - 1)), 8);
    return v;
}

int guest_verify(struct guest *g, char *why, size_t len)
{
    if (g->backend == GUEST_BACKEND_SOFT || g->pc.program || !g->tmpl ||
        g->tmpl->workload >= HVG_WL_CUSTOM) {
        snprintf(why, len, "only the built-in workloads of a program guest can be replayed");
        return -EINVAL;
    }
    if (!g->fresh) {
        snprintf(why, len, "the guest did not start from zeroed memory: nothing to replay from");
        return -EINVAL;
    }
    struct hvg_wl_state got[HVG_MAX_VCPUS];
    uint64_t total = 0;
    for (unsigned i = 0; i < g->nr_vcpus; i++) {
        int rc = guest_vcpu_state(g, i, &got[i]);
        if (rc < 0) {
            snprintf(why, len, "vCPU %u's parameter page is not readable", i);
            return rc;
        }
        total += got[i].ops;
    }
    if (total > VERIFY_MAX_OPS) {
        snprintf(why, len, "%llu operations: the host replays at most %llu",
                 (unsigned long long)total, (unsigned long long)VERIFY_MAX_OPS);
        return -E2BIG;
    }
    struct shadow sh = {0};
    struct hvg_param *p = hv_malloc(sizeof(*p));
    int rc = p ? 0 : -ENOMEM;
    for (unsigned i = 0; rc == 0 && i < g->nr_vcpus; i++) {
        memcpy(p, g->tmpl, sizeof(*p));
        p->vcpu = i;
        struct hvg_wl w;
        struct hvg_wl_state st;
        if (hvg_wl_init(&w, p, &st, &sh, 1) < 0) {
            snprintf(why, len, "the host's own parameter page is refused by the workload");
            rc = -EINVAL;
            break;
        }
        hvg_wl_setup(&w);
        while (st.ops < got[i].ops && !sh.err)
            hvg_wl_step(&w);
        if (sh.err) {
            rc = sh.err;
            if (rc == -E2BIG)
                snprintf(why, len, "more than %llu distinct words written: the host replays "
                         "at most that many", (unsigned long long)VERIFY_MAX_CAP / 2);
            else
                snprintf(why, len, "no memory for the replay");
            break;
        }
        if (st.checksum != got[i].checksum || st.writes != got[i].writes ||
            st.accesses != got[i].accesses || st.rng != got[i].rng || st.pos != got[i].pos) {
            snprintf(why, len, "vCPU %u after %llu operations: checksum %#llx (host replay "
                     "%#llx), writes %llu (%llu), accesses %llu (%llu)", i,
                     (unsigned long long)got[i].ops, (unsigned long long)got[i].checksum,
                     (unsigned long long)st.checksum, (unsigned long long)got[i].writes,
                     (unsigned long long)st.writes, (unsigned long long)got[i].accesses,
                     (unsigned long long)st.accesses);
            rc = -EBADMSG;
        }
    }
    struct domain *d = g->d;
    struct machine_holes mh;
    machine_holes_init(&mh, d->m);
    domain_lock(d);
    /* (1) every word the model wrote */
    uint64_t model_nonzero = 0;
    for (size_t j = 0; rc == 0 && j < sh.cap; j++) {
        if (!sh.key[j])
            continue;
        uint64_t gpa = sh.key[j] - 1;
        bool ok;
        uint64_t v = guest_word(d, &mh, gpa, &ok);
        model_nonzero += sh.val[j] != 0;
        if ((!ok && sh.val[j] != 0) || (ok && v != sh.val[j])) { /* not RAM: reads zero (PoD) */
            snprintf(why, len, "gpa %#llx holds %#llx, the host replay wrote %#llx%s",
                     (unsigned long long)gpa, (unsigned long long)v,
                     (unsigned long long)sh.val[j], ok ? "" : " (not RAM any more)");
            rc = -EBADMSG;
        }
    }
    /* (2) no other word of the workload memory is non-zero */
    uint64_t mem_nonzero = 0;
    for (uint32_t e = 0; rc == 0 && e < p->nr_extents; e++) {
        for (uint64_t k = 0; k < g->tmpl->ext[e].pages; k++) {
            uint64_t gpa = g->tmpl->ext[e].gpa + (k << PAGE_SHIFT);
            enum p2m_type t;
            mfn_t mfn = p2m_get_entry(d->p2m, gpa >> PAGE_SHIFT, &t, NULL);
            if (!p2m_is_ram(t) || machine_offset_in_hole(&mh, machine_offset(mfn)))
                continue;
            const uint64_t *pg = machine_ptr(d->m, mfn);
            if (zero_check(pg, PAGE_SIZE))
                continue;
            for (unsigned x = 0; x < PAGE_SIZE / 8; x++)
                mem_nonzero += pg[x] != 0;
        }
    }
    domain_unlock(d);
    if (rc == 0 && mem_nonzero != model_nonzero) {
        snprintf(why, len, "guest memory holds %llu non-zero words, the host replay %llu: a "
                 "write went astray", (unsigned long long)mem_nonzero,
                 (unsigned long long)model_nonzero);
        rc = -EBADMSG;
    }
    free(sh.key);
    free(sh.val);
    free(p);
    return rc;
}
